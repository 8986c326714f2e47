// Row-major GEMM on raw pointers for the per-step recurrent products. Calls the BLAS that torch
// ships (MKL on x86 wheels) directly: going through the dispatcher costs microseconds a call,
// which at small sizes is more than the arithmetic of a whole step.
#pragma once

#include <ATen/ATen.h>

#include <climits>
#include <cstdlib>
#include <type_traits>

extern "C" {
// Fortran BLAS as exported by libtorch_cpu on common wheels. Weak, so the extension still loads
// where they are not exported; then gemm_rowmajor falls back to at::mm.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace fusedrnn {
namespace cpu {

// FUSEDRNN_DISABLE_DIRECT_BLAS=1 forces the at::mm fallback (tests use it to cover that path).
inline bool direct_blas_available() {
  static const bool available = sgemm_ != nullptr && dgemm_ != nullptr &&
                                std::getenv("FUSEDRNN_DISABLE_DIRECT_BLAS") == nullptr;
  return available;
}

// C[M,N] = op(A) · op(B) + beta · C, all row-major with leading dimensions lda/ldb/ldc.
// op(A) = A^T when A is stored as [K,M] (a_is_km), else A stored as [M,K];
// op(B) = B^T when B is stored as [N,K] (b_is_nk), else B stored as [K,N].
template <typename T>
void gemm_rowmajor(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, bool a_is_km,
                   const T* B, int64_t ldb, bool b_is_nk, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: BLAS would reject the zero leading dimensions
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == T(0) ? T(0) : beta * C[m * ldc + n];
    }
    return;
  }
  const bool fits_int = M < INT_MAX && N < INT_MAX && K < INT_MAX && lda < INT_MAX &&
                        ldb < INT_MAX && ldc < INT_MAX;
  if (direct_blas_available() && fits_int) {
    // Column-major view of the same memory: C^T[N,M] = op(B)^T[N,K] · op(A)^T[K,M].
    const char trans_b = b_is_nk ? 'T' : 'N', trans_a = a_is_km ? 'T' : 'N';
    const int m = N, n = M, k = K, ld_b = ldb, ld_a = lda, ld_c = ldc;
    const T alpha = 1;
    if constexpr (std::is_same_v<T, float>) {
      sgemm_(&trans_b, &trans_a, &m, &n, &k, &alpha, B, &ld_b, A, &ld_a, &beta, C, &ld_c);
    } else {
      static_assert(std::is_same_v<T, double>, "gemm_rowmajor: float or double");
      dgemm_(&trans_b, &trans_a, &m, &n, &k, &alpha, B, &ld_b, A, &ld_a, &beta, C, &ld_c);
    }
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = a_is_km ? at::from_blob(const_cast<T*>(A), {K, M}, {lda, 1}, options).t()
                         : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, options);
  at::Tensor b = b_is_nk ? at::from_blob(const_cast<T*>(B), {N, K}, {ldb, 1}, options).t()
                         : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, options);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, options);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b, beta, 1);
  }
}

}  // namespace cpu
}  // namespace fusedrnn
