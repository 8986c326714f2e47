// The recurrent "product" of a diagonal recurrence (csrc/cell_table.h, Recurrence::Diagonal;
// IndRNN): u ⊙ h for each gate block, with the interface of PackedWeight (packed_gemm.h) that
// the CPU time loops use, so they run either recurrence unchanged. No packing and no BLAS:
// multiply_block touches only its own block's units, which is all the loops hand a worker.
#pragma once

#include <algorithm>
#include <cstdint>

#include "blocking.h"

namespace fusedrnn {
namespace cpu {

// Built with PackedWeight's arguments for w_hh = u (groups * U):
//   transposed = true : C[M, N] = A[M, K] -> gates; N = groups * U, K = U (the forward step:
//     C[m, g*U + j] = u[g*U + j] * A[m, j]);
//   transposed = false: C[M, N] = gates A[M, K] -> h; N = U, K = groups * U (the backward step:
//     C[m, j] = sum over g of A[m, g*U + j] * u[g*U + j]).
template <typename T>
class DiagonalWeight {
 public:
  DiagonalWeight(const T* u, int64_t N, int64_t K, bool transposed, int64_t groups = 1)
      : u_(u),
        to_gates_(transposed),
        U_(transposed ? N / groups : N),
        groups_(transposed ? groups : (N > 0 ? K / N : 1)) {}

  // Always "packed": the loops may split it over a team (it never calls BLAS).
  bool packed() const { return true; }
  int64_t num_blocks() const { return (U_ + kBlockUnits - 1) / kBlockUnits; }

  void multiply(int64_t M, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
    for (int64_t u = 0; u < num_blocks(); ++u) {
      multiply_block(u, M, A, lda, beta, C + u * kBlockUnits, ldc, U_);
    }
  }

  // Block u as PackedWeight::multiply_block (beta 0 or 1): C (at the block's first unit) (+)=
  // the block's units, gate g at C + g * group_stride (forward).
  void multiply_block(int64_t u, int64_t M, const T* A, int64_t lda, T beta, T* C, int64_t ldc,
                      int64_t group_stride) const {
    const int64_t j0 = u * kBlockUnits, n = std::min(kBlockUnits, U_ - j0);
    const bool beta_one = beta != T(0);  // beta 0 overwrites (C may hold garbage, even NaN)
    for (int64_t m = 0; m < M; ++m) {
      const T* a = A + m * lda;
      T* c = C + m * ldc;
      if (to_gates_) {
        for (int64_t g = 0; g < groups_; ++g) {
          const T* ug = u_ + g * U_ + j0;
          T* cg = c + g * group_stride;
          for (int64_t j = 0; j < n; ++j) cg[j] = ug[j] * a[j0 + j] + (beta_one ? cg[j] : T(0));
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          T sum = T(0);
          for (int64_t g = 0; g < groups_; ++g) sum += a[g * U_ + j0 + j] * u_[g * U_ + j0 + j];
          c[j] = sum + (beta_one ? c[j] : T(0));
        }
      }
    }
  }

 private:
  const T* u_;
  bool to_gates_;
  int64_t U_, groups_;
};

}  // namespace cpu
}  // namespace fusedrnn
