// The per-step recurrent product C = A · W with W fixed for a whole time loop.
//
// A general BLAS call repacks W into its internal panel layout on every call (for an LSTM step at
// B=32 H=256 MKL spends a third of the GEMM doing that). PackedWeight packs W once per op call
// into 16-column panels and multiplies with an AVX2+FMA register-blocked kernel; where that kernel
// cannot run (no AVX2/FMA, double precision, FUSEDRNN_DISABLE_PACKED_GEMM set) it keeps a plain
// pointer and calls gemm_rowmajor, so callers have one code path.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "blas.h"

namespace fusedrnn {
namespace cpu {

// True when the packed float kernel runs on this machine (AVX2 + FMA, not disabled by env).
bool packed_gemm_available();

// Packs row-major W[rows, cols] as the right operand of C[M, N] = A[M, K] · op(W):
//   transposed = true : op(W) = W^T, W is [N, K] (weight_hh used in the forward step);
//   transposed = false: op(W) = W,   W is [K, N] (weight_hh used in the backward step).
// Panel layout: panel p holds, for k = 0..K-1, the 16 values op(W)[k, 16p .. 16p+15]
// (zero-padded past N), so the kernel streams it with two aligned 8-float loads per k.
template <typename T>
class PackedWeight {
 public:
  PackedWeight(const T* w, int64_t N, int64_t K, bool transposed);

  // C[M, N] = A[M, K] · op(W) + beta · C with beta 0 or 1; lda/ldc are row strides.
  // Runs on the intra-op thread pool, split over column panels.
  void multiply(int64_t M, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const;

 private:
  int64_t N_, K_;
  bool transposed_;
  const T* w_;       // unpacked W, used when packed_ is undefined
  at::Tensor packed_;  // (ceil(N/16), K, 16) float when the packed kernel is used
  const float* packed_data_ = nullptr;  // packed_'s data (data_ptr costs ~20 ns: once, not per step)
};

}  // namespace cpu
}  // namespace fusedrnn
