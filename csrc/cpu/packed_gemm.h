// The per-step recurrent product C = A · W with W fixed for a whole time loop.
//
// A general BLAS call repacks W into its internal panel layout on every call (for an LSTM step at
// B=32 H=256 MKL spends a third of the GEMM doing that). PackedWeight packs W once per op call
// into 16-column panels and multiplies with an AVX2+FMA register-blocked kernel; where that kernel
// cannot run (no AVX2/FMA, double precision, FUSEDRNN_DISABLE_PACKED_GEMM set) it keeps a plain
// pointer and calls gemm_rowmajor, so callers have one code path.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "blas.h"
#include "blocking.h"

namespace fusedrnn {
namespace cpu {

// True when the packed float kernel runs on this machine (AVX2 + FMA, not disabled by env).
bool packed_gemm_available();

// True when that kernel runs in its AVX-512 form (AVX-512F, FUSEDRNN_DISABLE_AVX512 not set).
bool packed_gemm_avx512();

// The cores' multiply-add rate in the vector form the packed kernel uses (AVX-512, else AVX2+FMA),
// in GFLOP/s over every intra-op thread: each runs 12 independent register-only FMA chains for
// about `seconds`, best of three (the call takes ~4x `seconds` with calibration). The hardware ceiling the packed kernel can approach, which on some CPUs is
// above the best rate torch's BLAS reaches (AMD Zen 4: MKL runs its AVX2 path). 0 when neither
// form runs here.
double fma_peak_gflops(double seconds);

// Packs row-major W[rows, cols] as the right operand of C[M, N] = A[M, K] · op(W):
//   transposed = true : op(W) = W^T, W is [N, K] (weight_hh used in the forward step);
//   transposed = false: op(W) = W,   W is [K, N] (weight_hh used in the backward step).
// The N columns are `groups` gate blocks of U = N / groups units each (forward: G gates of H).
// Block u is units [16u, 16u + 16) of every group, so one block gives all the gates of 16
// hidden units: a time loop can split its work over blocks and finish those units' gate math
// while the product is still in L1 (see multiply_block).
// Panel layout: panel u*groups + g holds, for k = 0..K-1, the 16 values
// op(W)[k, g*U + 16u .. g*U + 16u + 15] (zero-padded past U), so the kernel streams it with two
// aligned 8-float loads per k.
template <typename T>
class PackedWeight {
 public:
  PackedWeight(const T* w, int64_t N, int64_t K, bool transposed, int64_t groups = 1);

  // True when the packed AVX2 kernel runs (float, AVX2+FMA, not disabled); otherwise every
  // product is a BLAS call, which must not run inside a parallel region of ours.
  bool packed() const { return packed_.defined(); }
  int64_t num_blocks() const { return (U_ + kBlockUnits - 1) / kBlockUnits; }
  int64_t block_units(int64_t u) const { return std::min(kBlockUnits, U_ - u * kBlockUnits); }

  // C[M, N] = A[M, K] · op(W) + beta · C with beta 0 or 1; lda/ldc are row strides.
  // Runs on the intra-op thread pool, split over blocks.
  void multiply(int64_t M, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const;

  // C[M, N] = A[M, K] · op(W) + bias (bias: N values added to every row, or null) for a large
  // M (a layer's input projection, M = T*B): rows in chunks that stay in L2 while every block's
  // panels stream past them, (chunk, block) tiles split over the intra-op threads, the bias the
  // gate kernel's starting value (copied into the tile first for the other kernels).
  void multiply_rows(int64_t M, const T* A, int64_t lda, const T* bias, T* C, int64_t ldc) const;

  // Block u only, on the calling thread: for every group g and unit c < block_units(u),
  // C[m, g*group_stride + c] (+)= (A[M, K] · op(W))[m, g*U + 16u + c]. The result does not depend
  // on which thread runs which block (the block's arithmetic is fixed), nor, from M = 3 rows on,
  // on which other rows of A share the call (a loop may split the rows among workers).
  // bias: null, or N values (op(W)'s columns') added to every row, and then beta must be 0.
  void multiply_block(int64_t u, int64_t M, const T* A, int64_t lda, T beta, T* C, int64_t ldc,
                      int64_t group_stride, const T* bias = nullptr) const;

 private:
  int64_t N_, K_, groups_, U_;
  bool transposed_;
  const T* w_;       // unpacked W, used when packed_ is undefined
  at::Tensor packed_;  // (num_blocks * groups, K, 16) float when the packed kernel is used
  const float* packed_data_ = nullptr;  // packed_'s data (data_ptr costs ~20 ns: once, not per step)
};

// x (..., K) · op(w) + bias with w packed for this call and multiplied by multiply_rows: a layer's
// input projection (all its steps at once; w_is_nk: w (N, K), op(w) = wᵀ) or the d x of its
// backward (w (K, N), op(w) = w) on the time loops' kernels, in float32. torch's CPU GEMM (MKL's
// in the pip wheels) runs its AVX2 path on AMD CPUs: on the project's Zen 5 with 2 threads, 166
// GFLOP/s at 6400x512x2048 where this reaches ~300 (6400x512x512: 202 vs ~450, the FMA peak
// ~520). csrc/host_linear.h says where it runs; no autograd here.
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& bias, bool w_is_nk);

}  // namespace cpu
}  // namespace fusedrnn
