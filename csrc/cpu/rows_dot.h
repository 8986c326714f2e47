// The product of a few rows of A with rows of an unpacked row-major W, C = A · Wᵀ, one dot
// product per (row of A, row of W): a cell's one step at a small batch.
//
// A BLAS call on such a product (M = 1-4 rows) reads W at ~77 GB/s on one Zen 5 core wherever W
// lies (L2 or L3), and each call costs its own setup; here W's rows stream through vector
// registers against A's rows held in L1, and a caller can hand disjoint row ranges to different
// threads, so each core keeps its share of a weight in its own L2 across calls.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace cpu {

// The most rows of A one call takes (a cell step's batch at most, for this path).
constexpr int64_t kMaxDotRows = 4;

// True where the vector kernels run here (AVX-512F, else AVX2+FMA; not where
// FUSEDRNN_DISABLE_ROWS_DOT is set): otherwise callers use BLAS.
bool rows_dot_available();

// C[m, r] (+)= Σ_k A[m, k] · W[r, k] for m < M (≤ kMaxDotRows), r < rows; A (M, K) with row
// stride lda, W (rows, K) with ldw, C (M, rows) with ldc; adds to C when `accumulate`.
void rows_dot(int64_t M, int64_t rows, int64_t K, const float* A, int64_t lda, const float* W,
              int64_t ldw, float* C, int64_t ldc, bool accumulate);

}  // namespace cpu
}  // namespace fusedrnn
