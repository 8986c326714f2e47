// rows_dot: several rows of W at a time against up to four rows of A (AVX2: two a pass), K in
// vector-width slices with a masked tail, each accumulator summed across its lanes at the end.
#include "rows_dot.h"

#include <algorithm>
#include <cstdlib>

#include "isa.h"

namespace fusedrnn {
namespace cpu {

namespace {

#if FUSEDRNN_X86_KERNELS

// The lane sums of R vectors at once (R = 8, 4 or 1), written to (or added to) c[0..R): a
// transposing tree of horizontal adds, ~1 instruction a sum where one reduction per vector
// takes ~8, which at K = 64 would cost more than the products.
template <int R>
FUSEDRNN_AVX2 inline void store_sums(const __m256 (&v)[R], float* c, bool accumulate) {
  if constexpr (R == 1) {
    const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v[0]), _mm256_extractf128_ps(v[0], 1));
    const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    const float sum = _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
    c[0] = accumulate ? c[0] + sum : sum;
  } else {
    // hadd(hadd(v0, v1), hadd(v2, v3)): lane i < 4 holds the sum of v_i's lanes 0-3, lane
    // 4 + i of its lanes 4-7.
    const __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    if constexpr (R == 4) {
      __m128 sums = _mm_add_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
      if (accumulate) sums = _mm_add_ps(sums, _mm_loadu_ps(c));
      _mm_storeu_ps(c, sums);
    } else {
      static_assert(R == 8, "store_sums: 1, 4 or 8 vectors");
      const __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
      __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20),
                                  _mm256_permute2f128_ps(lo, hi, 0x31));
      if (accumulate) sums = _mm256_add_ps(sums, _mm256_loadu_ps(c));
      _mm256_storeu_ps(c, sums);
    }
  }
}

// (gcc 12's own intrinsics for the 512 -> 256-bit halves start from _mm256_undefined_pd(), which
// its -Wuninitialized then reports inside the header: a false report, silenced here.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// R rows of W against M rows of A, AVX-512: R x M accumulators; the FMAs read W from memory.
template <int R, int M>
FUSEDRNN_AVX512 void dot_avx512(int64_t K, const float* A, int64_t lda, const float* W,
                                int64_t ldw, float* C, int64_t ldc, bool accumulate) {
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 a[M];
    for (int m = 0; m < M; ++m) a[m] = _mm512_loadu_ps(A + m * lda + k);
    for (int r = 0; r < R; ++r) {
      const __m512 w = _mm512_loadu_ps(W + r * ldw + k);
      for (int m = 0; m < M; ++m) acc[m][r] = _mm512_fmadd_ps(w, a[m], acc[m][r]);
    }
  }
  if (k < K) {  // the last K % 16 columns, masked
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 a[M];
    for (int m = 0; m < M; ++m) a[m] = _mm512_maskz_loadu_ps(mask, A + m * lda + k);
    for (int r = 0; r < R; ++r) {
      const __m512 w = _mm512_maskz_loadu_ps(mask, W + r * ldw + k);
      for (int m = 0; m < M; ++m) acc[m][r] = _mm512_fmadd_ps(w, a[m], acc[m][r]);
    }
  }
  for (int m = 0; m < M; ++m) {
    __m256 halves[R];  // each accumulator's two 8-lane halves added
    for (int r = 0; r < R; ++r) {
      const __m512 v = acc[m][r];
      halves[r] = _mm256_add_ps(
          _mm512_castps512_ps256(v),
          _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    }
    store_sums<R>(halves, C + m * ldc, accumulate);
  }
}
#pragma GCC diagnostic pop

// The same with AVX2+FMA (16 registers: R x M + M at most).
template <int R, int M>
FUSEDRNN_AVX2 void dot_avx2(int64_t K, const float* A, int64_t lda, const float* W, int64_t ldw,
                            float* C, int64_t ldc, bool accumulate) {
  __m256 acc[M][R];
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 a[M];
    for (int m = 0; m < M; ++m) a[m] = _mm256_loadu_ps(A + m * lda + k);
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_loadu_ps(W + r * ldw + k);
      for (int m = 0; m < M; ++m) acc[m][r] = _mm256_fmadd_ps(w, a[m], acc[m][r]);
    }
  }
  if (k < K) {  // the last K % 8 columns, masked (lanes below K - k)
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(K - k)), lanes);
    __m256 a[M];
    for (int m = 0; m < M; ++m) a[m] = _mm256_maskload_ps(A + m * lda + k, mask);
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_maskload_ps(W + r * ldw + k, mask);
      for (int m = 0; m < M; ++m) acc[m][r] = _mm256_fmadd_ps(w, a[m], acc[m][r]);
    }
  }
  for (int m = 0; m < M; ++m) store_sums<R>(acc[m], C + m * ldc, accumulate);
}

using DotKernel = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t,
                           bool);

// A kernel for M rows of A: how many rows of W it reads at once (enough independent FMA chains
// to cover the FMA latency, as the registers allow: R x M accumulators, M rows of A, W's values
// taken from memory by the FMAs), and it, and its one-row form for the tail.
struct Kernel {
  int64_t rows;
  DotKernel block, single;
};
template <int R, int M>
constexpr Kernel avx512_kernel() {
  return {R, &dot_avx512<R, M>, &dot_avx512<1, M>};
}
template <int R, int M>
constexpr Kernel avx2_kernel() {
  return {R, &dot_avx2<R, M>, &dot_avx2<1, M>};
}
// Indexed by the rows of A less one (AVX2 takes at most 2 a call).
constexpr Kernel kAvx512[kMaxDotRows] = {avx512_kernel<8, 1>(), avx512_kernel<8, 2>(),
                                         avx512_kernel<8, 3>(), avx512_kernel<4, 4>()};
constexpr Kernel kAvx2[2] = {avx2_kernel<8, 1>(), avx2_kernel<4, 2>()};

#endif  // FUSEDRNN_X86_KERNELS

}  // namespace

bool rows_dot_available() {
  static const bool available =
      cpu_has_avx2_fma() && std::getenv("FUSEDRNN_DISABLE_ROWS_DOT") == nullptr;
  return available;
}

void rows_dot(int64_t M, int64_t rows, int64_t K, const float* A, int64_t lda, const float* W,
              int64_t ldw, float* C, int64_t ldc, bool accumulate) {
#if FUSEDRNN_X86_KERNELS
  const bool wide = use_avx512();
  const int64_t per_call = wide ? kMaxDotRows : 2;  // rows of A a kernel call takes
  for (int64_t m0 = 0; m0 < M; m0 += per_call) {
    const int64_t m = std::min<int64_t>(per_call, M - m0);
    const Kernel& kernel = wide ? kAvx512[m - 1] : kAvx2[m - 1];
    const float* a = A + m0 * lda;
    float* c = C + m0 * ldc;
    int64_t r = 0;
    for (; r + kernel.rows <= rows; r += kernel.rows) {
      kernel.block(K, a, lda, W + r * ldw, ldw, c + r, ldc, accumulate);
    }
    for (; r < rows; ++r) kernel.single(K, a, lda, W + r * ldw, ldw, c + r, ldc, accumulate);
  }
#else
  (void)M, (void)rows, (void)K, (void)A, (void)lda, (void)W, (void)ldw, (void)C, (void)ldc,
      (void)accumulate;
  std::abort();  // callers check rows_dot_available() first
#endif
}

}  // namespace cpu
}  // namespace fusedrnn
