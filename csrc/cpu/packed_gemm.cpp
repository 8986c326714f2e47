// PackedWeight: W packed once into 16-column panels, multiplied by an 8x16 AVX-512 kernel where
// the CPU has AVX-512F, else by a 6x16 AVX2+FMA kernel.
#include "packed_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/autocast_mode.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include "isa.h"

namespace fusedrnn {
namespace cpu {

namespace {
constexpr int64_t kPanelWidth = kBlockUnits;  // output columns per panel: two 8-float registers
constexpr int kRowBlock = 6;         // AVX2 rows of A per kernel call: 12 accumulators + 2 + 1 regs
constexpr int kRowBlock512 = 8;      // AVX-512 rows per kernel call: 8 zmm accumulators + 1 + 1
constexpr int64_t kDepthBlock = 256;  // K slice: keeps one panel slice (16 KiB) in L1
// Multiply-adds a parallel task should have before the thread pool is worth waking.
constexpr int64_t kMinTaskMacs = 32768;
// Bytes of A a chunk of multiply_rows keeps in L2 (512 KiB on Zen 3, 1 MiB on Zen 4 and 5)
// while the packed panels of every block stream past it.
constexpr int64_t kRowChunkBytes = 256 << 10;

}  // namespace

bool packed_gemm_available() {
  static const bool available =
      cpu_has_avx2_fma() && std::getenv("FUSEDRNN_DISABLE_PACKED_GEMM") == nullptr;
  return available;
}

// The 16-column panel fits one zmm register: with AVX-512 each row of A needs one accumulator,
// so calls of 8 rows run at the FMA rate where AVX2 holds 6 (calls of fewer rows have fewer
// independent chains; a product of 1-2 rows in all takes the split-k kernel). Measured on the
// project's 2-vCPU Zen 4 (one thread, GFLOP/s, AVX2 6x16 vs AVX-512 8x16): M=8 K=64 N=64 85 vs
// 114; M=32 K=256 N=1024 111 vs 117.
bool packed_gemm_avx512() {
  return packed_gemm_available() && use_avx512();
}

#if FUSEDRNN_X86_KERNELS
namespace {

// Stores one row of accumulators (lo: columns 0-7, hi: 8-15) into C, adding C when accumulating.
FUSEDRNN_AVX2 inline void store_row(float* c, __m256 lo, __m256 hi, int64_t ncols,
                                    bool accumulate) {
  if (ncols == kPanelWidth) {
    if (accumulate) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(c));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(c + 8));
    }
    _mm256_storeu_ps(c, lo);
    _mm256_storeu_ps(c + 8, hi);
    return;
  }
  alignas(32) float tile[kPanelWidth];
  _mm256_store_ps(tile, lo);
  _mm256_store_ps(tile + 8, hi);
  for (int64_t j = 0; j < ncols; ++j) c[j] = accumulate ? c[j] + tile[j] : tile[j];
}

// C[MR, ncols] (+)= A[MR, kc] · panel[kc, 16]. ncols < 16 only in the last panel of a row.
// Accumulators are named variables, not an array: gcc spills an array of __m256 to the stack
// on every iteration, which made this kernel 2.5x slower.
template <int MR>
FUSEDRNN_AVX2 void kernel_6x16(int64_t kc, const float* A, int64_t lda, const float* panel,
                               float* C, int64_t ldc, int64_t ncols, bool accumulate) {
  static_assert(MR >= 1 && MR <= kRowBlock, "kernel_6x16: 1..6 rows");
  __m256 lo0 = _mm256_setzero_ps(), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0, hi2 = lo0,
         lo3 = lo0, hi3 = lo0, lo4 = lo0, hi4 = lo0, lo5 = lo0, hi5 = lo0;
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b_lo = _mm256_load_ps(panel + k * kPanelWidth);
    const __m256 b_hi = _mm256_load_ps(panel + k * kPanelWidth + 8);
#define FUSEDRNN_ROW_FMA(r)                                         \
    if constexpr (MR > r) {                                         \
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);        \
      lo##r = _mm256_fmadd_ps(a, b_lo, lo##r);                      \
      hi##r = _mm256_fmadd_ps(a, b_hi, hi##r);                      \
    }
    FUSEDRNN_ROW_FMA(0)
    FUSEDRNN_ROW_FMA(1)
    FUSEDRNN_ROW_FMA(2)
    FUSEDRNN_ROW_FMA(3)
    FUSEDRNN_ROW_FMA(4)
    FUSEDRNN_ROW_FMA(5)
#undef FUSEDRNN_ROW_FMA
  }
  if constexpr (MR > 0) store_row(C + 0 * ldc, lo0, hi0, ncols, accumulate);
  if constexpr (MR > 1) store_row(C + 1 * ldc, lo1, hi1, ncols, accumulate);
  if constexpr (MR > 2) store_row(C + 2 * ldc, lo2, hi2, ncols, accumulate);
  if constexpr (MR > 3) store_row(C + 3 * ldc, lo3, hi3, ncols, accumulate);
  if constexpr (MR > 4) store_row(C + 4 * ldc, lo4, hi4, ncols, accumulate);
  if constexpr (MR > 5) store_row(C + 5 * ldc, lo5, hi5, ncols, accumulate);
}

// One row: C[1, ncols] (+)= A[1, kc] · panel[kc, 16], with the k sum split four ways. With one
// row, kernel_6x16<1> has only 2 independent FMA chains and runs at FMA latency, not throughput
// (4x slower at B=1, the seeds' size); 4 partial sums give 8 chains.
FUSEDRNN_AVX2 void kernel_1x16_split_k(int64_t kc, const float* A, const float* panel, float* C,
                                       int64_t ncols, bool accumulate) {
  __m256 lo0 = _mm256_setzero_ps(), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0, hi2 = lo0,
         lo3 = lo0, hi3 = lo0;
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
#define FUSEDRNN_SPLIT_FMA(i)                                                             \
    {                                                                                     \
      const __m256 a = _mm256_broadcast_ss(A + k + i);                                    \
      lo##i = _mm256_fmadd_ps(a, _mm256_load_ps(panel + (k + i) * kPanelWidth), lo##i);     \
      hi##i = _mm256_fmadd_ps(a, _mm256_load_ps(panel + (k + i) * kPanelWidth + 8), hi##i); \
    }
    FUSEDRNN_SPLIT_FMA(0)
    FUSEDRNN_SPLIT_FMA(1)
    FUSEDRNN_SPLIT_FMA(2)
    FUSEDRNN_SPLIT_FMA(3)
#undef FUSEDRNN_SPLIT_FMA
  }
  for (; k < kc; ++k) {
    const __m256 a = _mm256_broadcast_ss(A + k);
    lo0 = _mm256_fmadd_ps(a, _mm256_load_ps(panel + k * kPanelWidth), lo0);
    hi0 = _mm256_fmadd_ps(a, _mm256_load_ps(panel + k * kPanelWidth + 8), hi0);
  }
  const __m256 lo = _mm256_add_ps(_mm256_add_ps(lo0, lo1), _mm256_add_ps(lo2, lo3));
  const __m256 hi = _mm256_add_ps(_mm256_add_ps(hi0, hi1), _mm256_add_ps(hi2, hi3));
  store_row(C, lo, hi, ncols, accumulate);
}

// One row against all G gate panels of a block (panel g at panel0 + g * panel_stride): C[g *
// group_stride + c] (+)= A[1, kc] · panel_g[kc, 16]. For G = 3 or 4 (GRU, LSTM) one pass over k
// broadcasts each A value once for every gate and keeps 2G accumulator chains busy without
// splitting the k sum: per k, 2G + 1 loads for 2G FMAs, against 3 loads per 2 FMAs (and four
// partial sums to add) gate by gate with kernel_1x16_split_k.
template <int G>
FUSEDRNN_AVX2 void kernel_1x16_all_gates(int64_t kc, const float* A, const float* panel0,
                                         int64_t panel_stride, float* C, int64_t group_stride,
                                         int64_t ncols, bool accumulate) {
  static_assert(G >= 3 && G <= 4, "kernel_1x16_all_gates: GRU (3) or LSTM (4) gates");
  __m256 lo0 = _mm256_setzero_ps(), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0, hi2 = lo0,
         lo3 = lo0, hi3 = lo0;
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 a = _mm256_broadcast_ss(A + k);
    const float* p = panel0 + k * kPanelWidth;
#define FUSEDRNN_GATE_FMA(g)                                                          \
    if constexpr (G > g) {                                                            \
      lo##g = _mm256_fmadd_ps(a, _mm256_load_ps(p + g * panel_stride), lo##g);       \
      hi##g = _mm256_fmadd_ps(a, _mm256_load_ps(p + g * panel_stride + 8), hi##g);   \
    }
    FUSEDRNN_GATE_FMA(0)
    FUSEDRNN_GATE_FMA(1)
    FUSEDRNN_GATE_FMA(2)
    FUSEDRNN_GATE_FMA(3)
#undef FUSEDRNN_GATE_FMA
  }
  store_row(C, lo0, hi0, ncols, accumulate);
  store_row(C + group_stride, lo1, hi1, ncols, accumulate);
  store_row(C + 2 * group_stride, lo2, hi2, ncols, accumulate);
  if constexpr (G > 3) store_row(C + 3 * group_stride, lo3, hi3, ncols, accumulate);
}

// Stores one row of 16 accumulators into C under a column mask, adding C when accumulating.
FUSEDRNN_AVX512 inline void store_row_avx512(float* c, __m512 v, __mmask16 mask,
                                             bool accumulate) {
  if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, c));
  _mm512_mask_storeu_ps(c, mask, v);
}

// C[MR, ncols] (+)= A[MR, kc] · panel[kc, 16] with AVX-512: one zmm accumulator per row, the A
// value broadcast straight into the FMA. ncols < 16 (last panel of a row) stores under a mask.
template <int MR>
FUSEDRNN_AVX512 void kernel_8x16_avx512(int64_t kc, const float* A, int64_t lda,
                                        const float* panel, float* C, int64_t ldc, int64_t ncols,
                                        bool accumulate) {
  static_assert(MR >= 1 && MR <= kRowBlock512, "kernel_8x16_avx512: 1..8 rows");
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b = _mm512_load_ps(panel + k * kPanelWidth);
#define FUSEDRNN_ROW_FMA(r) \
    if constexpr (MR > r) c##r = _mm512_fmadd_ps(_mm512_set1_ps(A[r * lda + k]), b, c##r);
    FUSEDRNN_ROW_FMA(0)
    FUSEDRNN_ROW_FMA(1)
    FUSEDRNN_ROW_FMA(2)
    FUSEDRNN_ROW_FMA(3)
    FUSEDRNN_ROW_FMA(4)
    FUSEDRNN_ROW_FMA(5)
    FUSEDRNN_ROW_FMA(6)
    FUSEDRNN_ROW_FMA(7)
#undef FUSEDRNN_ROW_FMA
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << ncols) - 1u);  // ncols is 1..16
  if constexpr (MR > 0) store_row_avx512(C + 0 * ldc, c0, mask, accumulate);
  if constexpr (MR > 1) store_row_avx512(C + 1 * ldc, c1, mask, accumulate);
  if constexpr (MR > 2) store_row_avx512(C + 2 * ldc, c2, mask, accumulate);
  if constexpr (MR > 3) store_row_avx512(C + 3 * ldc, c3, mask, accumulate);
  if constexpr (MR > 4) store_row_avx512(C + 4 * ldc, c4, mask, accumulate);
  if constexpr (MR > 5) store_row_avx512(C + 5 * ldc, c5, mask, accumulate);
  if constexpr (MR > 6) store_row_avx512(C + 6 * ldc, c6, mask, accumulate);
  if constexpr (MR > 7) store_row_avx512(C + 7 * ldc, c7, mask, accumulate);
}

// MR rows of A against the G gate panels of one block (panel g at panel0 + g * panel_stride):
// C[m, g * group_stride + c] (+)= A[m, :kc] · panel_g[kc, 16]. G * MR zmm accumulators (24 for
// LSTM's 4x6 and GRU's 3x8): per k, G panel loads and MR broadcasts feed G * MR FMAs, where gate
// by gate (kernel_8x16_avx512) 9 loads fed 8 FMAs. The loops over G and MR are unrolled at
// compile time, so the accumulator array lives in registers.
// bias (or null): gate g's 16 values at bias + g * bias_stride, the accumulators' start (with
// accumulate false: C = bias + A · panels).
template <int G, int MR>
FUSEDRNN_AVX512 void kernel_gates_avx512(int64_t kc, const float* A, int64_t lda,
                                         const float* panel0, int64_t panel_stride, float* C,
                                         int64_t ldc, int64_t group_stride, int64_t ncols,
                                         bool accumulate, const float* bias,
                                         int64_t bias_stride) {
  static_assert(G * MR + G + 1 <= 32, "kernel_gates_avx512: more accumulators than registers");
  const __mmask16 mask = static_cast<__mmask16>((1u << ncols) - 1u);  // ncols is 1..16
  __m512 acc[G][MR];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    const __m512 start = bias != nullptr ? _mm512_maskz_loadu_ps(mask, bias + g * bias_stride)
                                         : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[g][r] = start;
  }
  for (int64_t k = 0; k < kc; ++k) {
    __m512 b[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) b[g] = _mm512_load_ps(panel0 + g * panel_stride + k * kPanelWidth);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[g][r] = _mm512_fmadd_ps(a, b[g], acc[g][r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      store_row_avx512(C + r * ldc + g * group_stride, acc[g][r], mask, accumulate);
    }
  }
}

// Runs call(m, rows) over rows [0, M) in calls of at most MR rows spread evenly (M = 32 with
// MR = 6: 6,6,5,5,5,5, not 6x5 and a latency-bound 2). From M >= 3 on every call has 3 rows or
// more, so no row is left to a latency-bound one- or two-row kernel.
template <int MR, typename Call>
inline void for_row_calls(int64_t M, const Call& call) {
  const int64_t calls = (M + MR - 1) / MR;
  for (int64_t i = 0; i < calls; ++i) {
    const int64_t m = M * i / calls;
    call(m, M * (i + 1) / calls - m);
  }
}

// fn(std::integral_constant<int, rows>{}) for a run-time rows in 1..MR: the kernels take their
// row count as a template argument, so their accumulators are named registers.
template <int MR, typename Fn>
inline void with_rows(int64_t rows, const Fn& fn) {
  if constexpr (MR >= 1) {
    if (rows == MR) return fn(std::integral_constant<int, MR>{});
    with_rows<MR - 1>(rows, fn);
  }
}

// Every row of A against the G gate panels of one block, in kernel calls of at most MR rows.
template <int G, int MR>
FUSEDRNN_AVX512 void multiply_gates_avx512(int64_t M, int64_t kc, const float* A, int64_t lda,
                                           const float* panel0, int64_t panel_stride, float* C,
                                           int64_t ldc, int64_t group_stride, int64_t ncols,
                                           bool accumulate, const float* bias,
                                           int64_t bias_stride) {
  for_row_calls<MR>(M, [&](int64_t m, int64_t rows) {
    with_rows<MR>(rows, [&](auto r) {
      kernel_gates_avx512<G, decltype(r)::value>(kc, A + m * lda, lda, panel0, panel_stride,
                                                 C + m * ldc, ldc, group_stride, ncols,
                                                 accumulate, bias, bias_stride);
    });
  });
}

// All rows of A against one panel slice. One or two rows in all take the split-k kernel (few
// rows are latency-bound either way); more go in calls of 3 rows or more (for_row_calls), so a
// row's arithmetic (a plain k sum) is the same whichever rows share its call: a time loop may
// split a step's rows among workers (team.h) and still give one worker's result.
FUSEDRNN_AVX512 void multiply_panel_avx512(int64_t M, int64_t kc, const float* A, int64_t lda,
                                           const float* panel, float* C, int64_t ldc,
                                           int64_t ncols, bool accumulate) {
  if (M <= 2) {
    for (int64_t m = 0; m < M; ++m) {
      kernel_1x16_split_k(kc, A + m * lda, panel, C + m * ldc, ncols, accumulate);
    }
    return;
  }
  for_row_calls<kRowBlock512>(M, [&](int64_t m, int64_t rows) {
    with_rows<kRowBlock512>(rows, [&](auto r) {
      kernel_8x16_avx512<decltype(r)::value>(kc, A + m * lda, lda, panel, C + m * ldc, ldc,
                                             ncols, accumulate);
    });
  });
}

// The same with AVX2, in calls of at most kRowBlock rows.
FUSEDRNN_AVX2 void multiply_panel_avx2(int64_t M, int64_t kc, const float* A, int64_t lda,
                                       const float* panel, float* C, int64_t ldc, int64_t ncols,
                                       bool accumulate) {
  if (M <= 2) {
    for (int64_t m = 0; m < M; ++m) {
      kernel_1x16_split_k(kc, A + m * lda, panel, C + m * ldc, ncols, accumulate);
    }
    return;
  }
  for_row_calls<kRowBlock>(M, [&](int64_t m, int64_t rows) {
    with_rows<kRowBlock>(rows, [&](auto r) {
      kernel_6x16<decltype(r)::value>(kc, A + m * lda, lda, panel, C + m * ldc, ldc, ncols,
                                      accumulate);
    });
  });
}

}  // namespace
#endif  // FUSEDRNN_X86_KERNELS

#if FUSEDRNN_X86_KERNELS
namespace {

// 12 independent chains of a = a * m + c on registers, `iters` times; returns the flops done.
// Writes the chains' sum to the volatile *sink so the compiler keeps them.
#define FUSEDRNN_FMA_CHAINS(Vec, set1, fmadd, add, lanes)                                       \
  Vec a0 = set1(1.f), a1 = set1(1.1f), a2 = set1(1.2f), a3 = set1(1.3f), a4 = set1(1.4f),    \
      a5 = set1(1.5f), a6 = set1(1.6f), a7 = set1(1.7f), a8 = set1(1.8f), a9 = set1(1.9f),   \
      a10 = set1(2.f), a11 = set1(2.1f);                                                       \
  const Vec m = set1(0.9999999f), c = set1(1e-7f);                                             \
  for (int64_t i = 0; i < iters; ++i) {                                                        \
    a0 = fmadd(a0, m, c); a1 = fmadd(a1, m, c); a2 = fmadd(a2, m, c); a3 = fmadd(a3, m, c);   \
    a4 = fmadd(a4, m, c); a5 = fmadd(a5, m, c); a6 = fmadd(a6, m, c); a7 = fmadd(a7, m, c);   \
    a8 = fmadd(a8, m, c); a9 = fmadd(a9, m, c); a10 = fmadd(a10, m, c); a11 = fmadd(a11, m, c); \
  }                                                                                            \
  const Vec sum = add(add(add(add(a0, a1), add(a2, a3)), add(add(a4, a5), add(a6, a7))),       \
                      add(add(a8, a9), add(a10, a11)));                                        \
  float lanes_out[lanes];                                                                      \
  std::memcpy(lanes_out, &sum, sizeof(lanes_out));                                             \
  *sink = lanes_out[0];                                                                        \
  return double(iters) * 12 * lanes * 2;

FUSEDRNN_AVX512 double fma_chains_avx512(int64_t iters, volatile float* sink) {
  FUSEDRNN_FMA_CHAINS(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, 16)
}
FUSEDRNN_AVX2 double fma_chains_avx2(int64_t iters, volatile float* sink) {
  FUSEDRNN_FMA_CHAINS(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, 8)
}
#undef FUSEDRNN_FMA_CHAINS

}  // namespace
#endif  // FUSEDRNN_X86_KERNELS

double fma_peak_gflops(double seconds) {
  TORCH_CHECK(std::isfinite(seconds) && seconds >= 0 && seconds <= 60,
              "fma_peak_gflops: seconds must be in [0, 60], got ", seconds);
#if FUSEDRNN_X86_KERNELS
  if (!packed_gemm_available()) return 0.0;
  const auto chains = packed_gemm_avx512() ? fma_chains_avx512 : fma_chains_avx2;
  using Clock = std::chrono::steady_clock;
  const auto elapsed = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  volatile float sink = 0.f;
  // Calibrate on one thread: iterations that take about `seconds`.
  int64_t iters = 1 << 14;
  for (;;) {
    const auto t0 = Clock::now();
    chains(iters, &sink);
    const double t = elapsed(t0);
    if (t >= seconds / 8 || iters > (int64_t{1} << 40)) {
      iters = std::max<int64_t>(iters, static_cast<int64_t>(iters * seconds / std::max(t, 1e-9)));
      break;
    }
    iters *= 4;
  }
  // Then every intra-op thread at once, one task each; best of three.
  const int64_t threads = at::get_num_threads();
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> flops(threads, 0.0);
    std::vector<float> sinks(threads, 0.f);  // one each: no two threads write the same float
    const auto t0 = Clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) flops[t] = chains(iters, &sinks[t]);
    });
    const double t = elapsed(t0);
    double total = 0.0;
    for (double f : flops) total += f;
    best = std::max(best, total / t / 1e9);
  }
  return best;
#else
  (void)seconds;
  return 0.0;
#endif
}

template <typename T>
PackedWeight<T>::PackedWeight(const T* w, int64_t N, int64_t K, bool transposed, int64_t groups)
    : N_(N), K_(K), groups_(groups), U_(groups > 0 ? N / groups : 0), transposed_(transposed),
      w_(w) {
  TORCH_INTERNAL_ASSERT(groups > 0 && N % groups == 0, "PackedWeight: N not a multiple of groups");
  if (!std::is_same_v<T, float> || !packed_gemm_available() || N == 0 || K == 0) return;
  const int64_t panels = num_blocks() * groups_;
  packed_ = at::empty({panels, K, kPanelWidth}, at::kFloat);
  float* dst = packed_.data_ptr<float>();
  packed_data_ = dst;
  const float* src = reinterpret_cast<const float*>(w);
  at::parallel_for(0, panels, std::max<int64_t>(1, kMinTaskMacs / (K * kPanelWidth)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t u = q / groups_, g = q % groups_;
      float* panel = dst + q * K * kPanelWidth;
      for (int64_t c = 0; c < kPanelWidth; ++c) {
        const int64_t unit = u * kBlockUnits + c;
        const int64_t n = g * U_ + unit;
        for (int64_t k = 0; k < K; ++k) {
          // op(W)[k, n]: W[n, k] when transposed (W is [N, K]), else W[k, n] (W is [K, N]).
          const float value = unit >= U_ ? 0.f : transposed ? src[n * K + k] : src[k * N + n];
          panel[k * kPanelWidth + c] = value;
        }
      }
    }
  });
}

template <typename T>
void PackedWeight<T>::multiply_block(int64_t u, int64_t M, const T* A, int64_t lda, T beta, T* C,
                                     int64_t ldc, int64_t group_stride, const T* bias) const {
  TORCH_INTERNAL_ASSERT(beta == T(0) || beta == T(1), "PackedWeight: beta must be 0 or 1");
  TORCH_INTERNAL_ASSERT(bias == nullptr || beta == T(0), "PackedWeight: a bias replaces C");
  if (M == 0) return;
  const int64_t ncols = block_units(u);
  // Three rows or more with AVX-512: the gates of the block together, rows in register blocks.
  static const bool gate_kernel = std::getenv("FUSEDRNN_DISABLE_GATE_KERNEL") == nullptr;
  const bool gates_avx512 = packed() && M > 2 && (groups_ == 3 || groups_ == 4) && gate_kernel &&
                            packed_gemm_avx512();
  if (bias != nullptr && !gates_avx512) {
    // The other kernels accumulate onto C: the bias goes there first.
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < groups_; ++g) {
        const T* b = bias + g * U_ + u * kBlockUnits;
        std::copy(b, b + ncols, C + m * ldc + g * group_stride);
      }
    }
    beta = T(1);
  }
  if (!packed()) {
    const int64_t ldw = transposed_ ? K_ : N_;
    for (int64_t g = 0; g < groups_; ++g) {
      const int64_t n0 = g * U_ + u * kBlockUnits;
      const T* w_cols = transposed_ ? w_ + n0 * K_ : w_ + n0;
      gemm_rowmajor<T>(M, ncols, K_, A, lda, false, w_cols, ldw, transposed_, beta,
                       C + g * group_stride, ldc);
    }
    return;
  }
#if FUSEDRNN_X86_KERNELS
  if constexpr (std::is_same_v<T, float>) {
    // One or two rows of a GRU/LSTM step (batch 1-2): every gate in one pass, row by row.
    const bool all_gates = M <= 2 && (groups_ == 3 || groups_ == 4);
    for (int64_t k0 = 0; k0 < K_; k0 += kDepthBlock) {
      const int64_t kc = std::min(kDepthBlock, K_ - k0);
      const bool accumulate = beta != 0.f || k0 > 0;
      if (all_gates) {
        const float* panel0 = packed_data_ + (u * groups_ * K_ + k0) * kPanelWidth;
        const auto kernel = groups_ == 4 ? kernel_1x16_all_gates<4> : kernel_1x16_all_gates<3>;
        for (int64_t m = 0; m < M; ++m) {
          kernel(kc, A + m * lda + k0, panel0, K_ * kPanelWidth, C + m * ldc, group_stride, ncols,
                 accumulate);
        }
        continue;
      }
      if (gates_avx512) {
        const auto kernel = groups_ == 4 ? multiply_gates_avx512<4, 6> : multiply_gates_avx512<3, 8>;
        kernel(M, kc, A + k0, lda, packed_data_ + (u * groups_ * K_ + k0) * kPanelWidth,
               K_ * kPanelWidth, C, ldc, group_stride, ncols, accumulate,
               k0 == 0 && bias != nullptr ? bias + u * kBlockUnits : nullptr, U_);
        continue;
      }
      const auto multiply_panel =
          packed_gemm_avx512() ? multiply_panel_avx512 : multiply_panel_avx2;
      for (int64_t g = 0; g < groups_; ++g) {
        const int64_t q = u * groups_ + g;
        multiply_panel(M, kc, A + k0, lda, packed_data_ + (q * K_ + k0) * kPanelWidth,
                       C + g * group_stride, ldc, ncols, accumulate);
      }
    }
  }
#endif
}

template <typename T>
void PackedWeight<T>::multiply(int64_t M, const T* A, int64_t lda, T beta, T* C,
                               int64_t ldc) const {
  if (M == 0 || N_ == 0) return;
  if (!packed()) {
    const int64_t ldw = transposed_ ? K_ : N_;
    gemm_rowmajor<T>(M, N_, K_, A, lda, false, w_, ldw, transposed_, beta, C, ldc);
    return;
  }
  const int64_t macs_per_block = M * K_ * kPanelWidth * groups_;
  const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / macs_per_block);
  at::parallel_for(0, num_blocks(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      multiply_block(u, M, A, lda, beta, C + u * kBlockUnits, ldc, U_);
    }
  });
}

template <typename T>
void PackedWeight<T>::multiply_rows(int64_t M, const T* A, int64_t lda, const T* bias, T* C,
                                    int64_t ldc) const {
  if (M == 0 || N_ == 0) return;
  if (!packed()) {  // one BLAS call
    const int64_t ldw = transposed_ ? K_ : N_;
    if (bias != nullptr) {
      for (int64_t m = 0; m < M; ++m) std::copy(bias, bias + N_, C + m * ldc);
    }
    gemm_rowmajor<T>(M, N_, K_, A, lda, false, w_, ldw, transposed_, bias != nullptr ? 1 : 0, C,
                     ldc);
    return;
  }
  // Chunks of about kRowChunkBytes of A (chunk_rows, at least 48; the rows spread evenly, so a
  // chunk may hold fewer):
  // from M = 3 on no chunk is left one or two rows (multiply_block's other kernels), so a row's
  // arithmetic does not depend on M.
  const int64_t chunk_rows =
      std::max<int64_t>(48, kRowChunkBytes / (K_ * static_cast<int64_t>(sizeof(T))));
  const int64_t chunks = (M + chunk_rows - 1) / chunk_rows, blocks = num_blocks();
  const int64_t tile_macs = M / chunks * K_ * kPanelWidth * groups_;
  const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / std::max<int64_t>(1, tile_macs));
  // Consecutive tiles share a chunk: a thread's range of tiles keeps its chunk of A in its L2.
  // (Measured no faster: the panels of a few blocks kept in L2 while the chunks stream past,
  // streaming stores of C, one k slice of 512.)
  at::parallel_for(0, chunks * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t chunk = t / blocks, u = t % blocks;
      const int64_t m0 = M * chunk / chunks, m1 = M * (chunk + 1) / chunks;
      multiply_block(u, m1 - m0, A + m0 * lda, lda, T(0), C + m0 * ldc + u * kBlockUnits, ldc,
                     U_, bias);
    }
  });
}

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& bias, bool w_is_nk) {
  TORCH_CHECK(packed_gemm_available(), "fusedrnn: the packed kernels do not run on this CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && x.is_cpu() &&
                  w.is_cpu() && x.dim() >= 1 && w.dim() == 2,
              "fusedrnn: packed product: float32 CPU x (..., K) and w of 2 dimensions expected");
  const int64_t N = w.size(w_is_nk ? 0 : 1), K = w.size(w_is_nk ? 1 : 0);
  TORCH_CHECK(x.size(-1) == K && K > 0, "fusedrnn: packed product: x has ", x.size(-1),
              " columns, w takes ", K);
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->is_cpu() &&
                                    bias->dim() == 1 && bias->size(0) == N),
              "fusedrnn: packed product: the bias must be float32 (", N, ")");
  const at::Tensor rows = x.reshape({-1, K}).contiguous(), weight = w.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x.options());
  // The columns as the gate kernels take them (any split of N into equal groups gives the same
  // product): four groups (LSTM's gates; GRU's 3H and RNN's H too where 4 divide them), else
  // three, else one.
  const int64_t groups = N % 4 == 0 && N / 4 >= kBlockUnits ? 4
                         : N % 3 == 0 && N / 3 >= kBlockUnits ? 3
                                                              : 1;
  const PackedWeight<float> packed(weight.data_ptr<float>(), N, K, /*transposed=*/w_is_nk,
                                   groups);
  packed.multiply_rows(rows.size(0), rows.data_ptr<float>(), K,
                       b.defined() ? b.data_ptr<float>() : nullptr, out.data_ptr<float>(), N);
  return out;
}

}  // namespace cpu

namespace host_linear {

// Rows below which packing w costs more than the packed kernels save (2 threads, Zen 5, vs
// torch's linear: 16x512x2048 0.94x, 32x512x2048 1.15x, 64x64x1024 1.6x, 100x64x1024 3x).
constexpr int64_t kMinRows = 64;

namespace {

// A real, strided float32 CPU tensor of `dim` dimensions: no tracing, functionalization or
// functorch wrapper, no Python subclass (their kernels must see torch's ops).
bool fits(const at::Tensor& t, int64_t dim) {
  static const c10::DispatchKeySet allowed{c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                           c10::DispatchKey::AutogradCPU,
                                           c10::DispatchKey::AutocastCPU};
  return t.scalar_type() == at::kFloat && t.is_cpu() && t.dim() == dim &&
         t.layout() == at::kStrided && allowed.isSupersetOf(t.key_set());
}

// Whether x (..., K) times a (K-deep) w is for the packed kernels: not while a Python dispatch
// mode (FakeTensorMode, FlopCounterMode, ...) or CPU autocast should see torch's linear.
bool product_runs(const at::Tensor& x, const at::Tensor& w, int64_t K) {
  return cpu::packed_gemm_avx512() && c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
         !at::autocast::is_autocast_enabled(at::kCPU) && x.dim() >= 1 && fits(x, x.dim()) &&
         fits(w, 2) && x.size(-1) == K && K > 0 && x.numel() >= kMinRows * K;
}

}  // namespace

// (Anything torch would refuse goes to torch, for its error.)
bool runs(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  return w.dim() == 2 && product_runs(x, w, w.size(1)) &&
         (!bias.has_value() || (fits(*bias, 1) && bias->size(0) == w.size(0)));
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w,
                  const std::optional<at::Tensor>& bias) {
  return cpu::packed_linear(x, w, bias, /*w_is_nk=*/true);
}

bool runs_matmul(const at::Tensor& x, const at::Tensor& w) {
  return w.dim() == 2 && product_runs(x, w, w.size(0));
}

at::Tensor matmul(const at::Tensor& x, const at::Tensor& w) {
  return cpu::packed_linear(x, w, std::nullopt, /*w_is_nk=*/false);
}

}  // namespace host_linear

namespace cpu {

template class PackedWeight<float>;
template class PackedWeight<double>;

}  // namespace cpu
}  // namespace fusedrnn
