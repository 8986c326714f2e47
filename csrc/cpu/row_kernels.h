// Pointwise work of one batch row for one step: the fused gate pass of each cell, forward and
// backward. Plain loops over the hidden units that the compiler vectorizes; on x86-64 each is
// built three times (x86-64-v4: AVX-512, x86-64-v3: AVX2+FMA, and baseline SSE2) and picked at
// load time by CPU features (v4 over v3: 0.92 -> 0.86 us per RNN step at B=8 H=64 on Zen 4).
// Each call covers n units starting at the pointers given (a block of a row, or all of it).
// Gate rows hold G gate blocks in torch's order, `stride` apart (H for rows of xproj, workspaces
// and gradients); the recurrent product gh may have its own gate stride (a per-block tile).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "../cell_table.h"
#include "../gate_math.h"
#include "blocking.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSEDRNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FUSEDRNN_CPU_CLONES
#endif

namespace fusedrnn {
namespace cpu {

// body(j) for j in [0, n). n is a worker's whole unit range; when that is one full block
// (n == 16: a worker owning a single block) the loop gets a constant trip count: two straight
// 8-float vectors, no remainder loop or trip-count checks, which otherwise cost as much as the
// gate math at 16 units. Wider ranges take the general loop.
template <typename Body>
inline __attribute__((always_inline)) void for_units(int64_t n, const Body& body) {
  if (n == kBlockUnits) {
    for (int64_t j = 0; j < kBlockUnits; ++j) body(j);
  } else {
    for (int64_t j = 0; j < n; ++j) body(j);
  }
}

// n units from src to dst (memcpy with a null pointer is undefined even for 0 bytes).
template <typename T>
inline void copy_units(T* dst, const T* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(T) * n);
}

// h' = act(x + bias + W_hh h); writes h' to the state and the output.
template <typename T>
FUSEDRNN_CPU_CLONES void rnn_forward_row(const T* __restrict x, const T* __restrict bias,
                                         const T* __restrict gh, T* __restrict h_next,
                                         T* __restrict out, int64_t n, bool relu) {
  for_units(n, [&](int64_t j) __attribute__((always_inline)) {
    const T h = gates::rnn_activation(x[j] + bias[j] + gh[j], relu);
    h_next[j] = h;
    out[j] = h;
  });
}

// grad_pre = act'(h') * (grad_out + dh), h' read from `h_new` (the forward's activations
// workspace); also zeroes dh_prev (the GEMM adds W_hh^T grad_pre).
template <typename T>
FUSEDRNN_CPU_CLONES void rnn_backward_row(const T* __restrict h_new, const T* __restrict grad_out,
                                          const T* __restrict dh, T* __restrict grad_pre,
                                          T* __restrict dh_prev, int64_t n, bool relu) {
  for_units(n, [&](int64_t j) __attribute__((always_inline)) {
    grad_pre[j] = gates::rnn_activation_grad(h_new[j], grad_out[j] + dh[j], relu);
    dh_prev[j] = T(0);
  });
}

// A GRU step's h' at unit j, to the state and the output, and its gates to ws (4 blocks H apart:
// r, z, n, hn). Inlined into the calling row kernel (built for its instruction set).
template <typename T>
inline __attribute__((always_inline)) void store_gru_unit(const gates::GruGates<T>& g, T h,
                                                          T* __restrict h_next,
                                                          T* __restrict out, T* __restrict ws,
                                                          int64_t j, int64_t H) {
  h_next[j] = h;
  out[j] = h;
  ws[j] = g.r;
  ws[H + j] = g.z;
  ws[2 * H + j] = g.n;
  ws[3 * H + j] = g.hn;
}

// gh: W_hh h (3 gates, bias not yet added); writes ws (4 blocks: r, z, n, hn). ws is always written (a
// scratch row when nothing is saved): a branch in the loop would stop it vectorizing.
template <typename T>
FUSEDRNN_CPU_CLONES void gru_forward_row(const T* __restrict x, const T* __restrict gh,
                                         const T* __restrict b_hh, const T* __restrict h_cur,
                                         T* __restrict h_next, T* __restrict out,
                                         T* __restrict ws, int64_t n, int64_t H,
                                         int64_t gh_stride) {
  const int64_t S = gh_stride;
  for_units(n, [&](int64_t j) __attribute__((always_inline)) {
    T h;
    const auto g = gates::gru_forward<T>(x[j], x[H + j], x[2 * H + j], gh[j] + b_hh[j],
                                         gh[S + j] + b_hh[H + j], gh[2 * S + j] + b_hh[2 * H + j],
                                         h_cur[j], &h);
    store_gru_unit(g, h, h_next, out, ws, j, H);
  });
}

// Writes d(input projection) grad_x (3H), d(W_hh h + b_hh) grad_h (3H) and the direct part of
// dh_prev (the GEMM adds W_hh^T grad_h).
template <typename T>
FUSEDRNN_CPU_CLONES void gru_backward_row(const T* __restrict ws, const T* __restrict h_prev,
                                          const T* __restrict grad_out, const T* __restrict dh,
                                          T* __restrict grad_x, T* __restrict grad_h,
                                          T* __restrict dh_prev, int64_t n, int64_t H) {
  for_units(n, [&](int64_t j) __attribute__((always_inline)) {
    const gates::GruGates<T> g{ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j]};
    const auto d = gates::gru_backward<T>(g, h_prev[j], grad_out[j] + dh[j]);
    grad_x[j] = d.r;
    grad_x[H + j] = d.z;
    grad_x[2 * H + j] = d.n;
    grad_h[j] = d.r;
    grad_h[H + j] = d.z;
    grad_h[2 * H + j] = d.hn;
    dh_prev[j] = d.h_prev;
  });
}

// gh: W_hh h (4 gates), added to x + bias; writes c', the unprojected hidden o*tanh(c') and ws
// (i, f, g, o; always written, as for the GRU).
template <typename T>
FUSEDRNN_CPU_CLONES void lstm_forward_row(const T* __restrict x, const T* __restrict bias,
                                          const T* __restrict gh, const T* __restrict c_cur,
                                          T* __restrict c_next, T* __restrict h_out,
                                          T* __restrict ws, int64_t n, int64_t H,
                                          int64_t gh_stride) {
  const int64_t S = gh_stride;
  auto pre = [&](int64_t k, int64_t j) __attribute__((always_inline)) {
    return x[k * H + j] + bias[k * H + j] + gh[k * S + j];
  };
  for_units(n, [&](int64_t j) __attribute__((always_inline)) {
    const auto a = gates::lstm_forward<T>(pre(0, j), pre(1, j), pre(2, j), pre(3, j), c_cur[j],
                                          &c_next[j], &h_out[j]);
    ws[j] = a.i;
    ws[H + j] = a.f;
    ws[2 * H + j] = a.g;
    ws[3 * H + j] = a.o;
  });
}

// grad_h = grad_h_a (+ grad_h_b when not null) is d(o*tanh(c')); dc holds d c' on entry and
// d c_{t-1} on exit; writes the gate pre-activation grads (4H) and, if unprojected is not null,
// o*tanh(c') (for d W_hr).
template <typename T>
FUSEDRNN_CPU_CLONES void lstm_backward_row(const T* __restrict ws, const T* __restrict c_new,
                                           const T* __restrict c_prev,
                                           const T* __restrict grad_h_a,
                                           const T* __restrict grad_h_b, T* __restrict dc,
                                           T* __restrict grad_gates, T* __restrict unprojected,
                                           int64_t n, int64_t H) {
  for_units(n, [&](int64_t j) __attribute__((always_inline)) {
    const gates::LstmGates<T> a{ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j]};
    const T grad_h = grad_h_b ? grad_h_a[j] + grad_h_b[j] : grad_h_a[j];
    const auto d = gates::lstm_backward<T>(a, c_new[j], c_prev[j], grad_h, dc[j]);
    grad_gates[j] = d.i;
    grad_gates[H + j] = d.f;
    grad_gates[2 * H + j] = d.g;
    grad_gates[3 * H + j] = d.o;
    dc[j] = d.c_prev;
    if (unprojected) unprojected[j] = d.h_unprojected;
  });
}

// Mean and 1 / sqrt(var + eps) (the biased variance, as torch's layer_norm) of G blocks of n
// values `stride` apart: a layer-norm step's row statistics. Two passes, summed in double.
template <typename T>
inline std::pair<T, T> row_moments(const T* v, int64_t G, int64_t n, int64_t stride) {
  double sum = 0;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t j = 0; j < n; ++j) sum += v[g * stride + j];
  }
  const double count = static_cast<double>(G * n), mean = sum / count;
  double squares = 0;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t j = 0; j < n; ++j) {
      const double d = v[g * stride + j] - mean;
      squares += d * d;
    }
  }
  return {static_cast<T>(mean), static_cast<T>(1.0 / std::sqrt(squares / count + kLayerNormEps))};
}

// The backward of a normalised step's γ_hh ⊙ LN(W_hh h) over a row's n = G*H values: from
// grad_post = d(γ_hh ⊙ LN(W_hh h) + bias) and the product before its norm (`recurrent`), writes
// the row's share of d γ_hh (grad_post ⊙ LN(W_hh h)) to grad_gamma and d(W_hh h) to grad_step.
// Inlined into the calling row kernel, so built for its instruction set.
template <typename T>
inline __attribute__((always_inline)) void recurrent_norm_backward(
    const T* __restrict grad_post, const T* __restrict recurrent, const T* __restrict gamma,
    int64_t n, T* __restrict grad_gamma, T* __restrict grad_step) {
  const auto [mean, rstd] = row_moments(recurrent, 1, n, n);
  double sum_d = 0, sum_d_hat = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T d_hat = grad_post[i] * gamma[i];
    sum_d += d_hat;
    sum_d_hat += d_hat * ((recurrent[i] - mean) * rstd);
  }
  const T mean_d = static_cast<T>(sum_d / n), mean_d_hat = static_cast<T>(sum_d_hat / n);
  for (int64_t i = 0; i < n; ++i) {
    const T r_hat = (recurrent[i] - mean) * rstd;
    grad_gamma[i] = grad_post[i] * r_hat;
    grad_step[i] = gates::layer_norm_grad(grad_post[i] * gamma[i], r_hat, mean_d, mean_d_hat, rstd);
  }
}

// ============================================================================ cells

// One batch row of one step as the time loops (recurrent_cpu.cpp) hand it to a cell: the
// worker's units [j0, j0 + n) of the row, every pointer already at unit j0, gate blocks H apart
// (gh: gh_stride apart).
template <typename T>
struct ForwardRow {
  const T* x;         // xproj (G blocks)
  const T* gh;        // W_hh h_{t-1} (G blocks)
  int64_t gh_stride;
  // The step parameters (csrc/ops.cpp) from the row's unit j0 on: the bias (G blocks, H apart;
  // zeros where absent), then for a layer-norm step γ_hh (G blocks), γ_c, β_c.
  const T* params;
  const T* h_cur;     // h_{t-1}
  T* h_new;           // h_t (before W_hr where h is projected)
  T* out;             // the output row (h_new again where h is projected: the loop writes it)
  const T* c_cur;     // c_{t-1}, cells with a cell state
  T* c_new;           // c_t
  // The cell's workspace parts but hprev (csrc/cell_table.h), this row: nullptr when not
  // saved, but part 0 is then a scratch row (the row kernels write it unconditionally to
  // vectorize).
  T* ws[kMaxWorkspaceParts];
  bool save;  // whether the workspace is saved (else part 0 need not be written)
  int64_t n, H;
};

template <typename T>
struct BackwardRow {
  const T* ws[kMaxWorkspaceParts];  // the forward's workspace, this row (hprev last)
  // d h_t = grad_out + dh; where h is projected (dh == nullptr) grad_out is d h_t · W_hr,
  // d(h before W_hr).
  const T* grad_out;
  const T* dh;
  T* dc;              // d c_t on entry, d c_{t-1} on exit (cells with a cell state)
  T* grad_step;       // d(W_hh h_{t-1} (+ b_hh)): the GEMM operand for d h_{t-1}
  T* grad_x;          // d xproj (G blocks), where it differs from grad_step, else nullptr
  T* dh_prev;         // d h_{t-1}: its direct part (the GEMM adds the rest); nullptr where h is
                      // projected (the loop sets it)
  T* unprojected;     // o*tanh(c_t) for d W_hr where h is projected, else nullptr
  const T* params;    // the step parameters from unit j0 on (as ForwardRow's)
  // This row's share of d step_params (as params) where the cell's step writes it
  // (csrc/cell_table.h: step_param_row_units), else nullptr.
  T* grad_params;
  int64_t n, H;
};

// A cell's pointwise step on the CPU: CpuCell<C>::forward(row) / backward(row), from the row
// kernels above.
template <Cell C>
struct CpuCell;

template <bool Relu>
struct CpuRnn {
  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    rnn_forward_row(r.x, r.params, r.gh, r.h_new, r.out, r.n, Relu);
    if (r.save) copy_units(r.ws[0], r.out, r.n);  // the activations: backward's derivative
  }
  template <typename T>
  static void backward(const BackwardRow<T>& r) {
    rnn_backward_row(r.ws[0], r.grad_out, r.dh, r.grad_step, r.dh_prev, r.n, Relu);
  }
};
template <>
struct CpuCell<Cell::RnnTanh> : CpuRnn<false> {};
template <>
struct CpuCell<Cell::RnnRelu> : CpuRnn<true> {};
// IndRNN: the RNN step; the loop's recurrent product is u ⊙ h_{t-1} (a diagonal recurrence).
template <>
struct CpuCell<Cell::IndrnnTanh> : CpuRnn<false> {};
template <>
struct CpuCell<Cell::IndrnnRelu> : CpuRnn<true> {};

template <>
struct CpuCell<Cell::Gru> {
  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    gru_forward_row(r.x, r.gh, r.params, r.h_cur, r.h_new, r.out, r.ws[0], r.n, r.H, r.gh_stride);
  }
  template <typename T>
  static void backward(const BackwardRow<T>& r) {
    gru_backward_row(r.ws[0], r.ws[1], r.grad_out, r.dh, r.grad_x, r.grad_step, r.dh_prev, r.n,
                     r.H);
  }
};

// What the LSTM cells' rows do after their kernels. Forward: the output where it is not h itself,
// and when saving c_t and c_{t-1} into the workspace parts `cells` and `cells + 1`.
template <typename T>
void finish_lstm_forward_row(const ForwardRow<T>& r, int cells) {
  if (r.out != r.h_new) copy_units(r.out, r.h_new, r.n);
  if (r.save) {
    copy_units(r.ws[cells], r.c_new, r.n);
    copy_units(r.ws[cells + 1], r.c_cur, r.n);
  }
}
// Backward: h_{t-1} enters the step through W_hh h only, so its direct gradient is zero.
template <typename T>
void finish_lstm_backward_row(const BackwardRow<T>& r) {
  if (r.dh_prev != nullptr) std::fill(r.dh_prev, r.dh_prev + r.n, T(0));
}

template <>
struct CpuCell<Cell::Lstm> {
  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    lstm_forward_row(r.x, r.params, r.gh, r.c_cur, r.c_new, r.h_new, r.ws[0], r.n, r.H,
                     r.gh_stride);
    finish_lstm_forward_row(r, /*cells=*/1);
  }
  template <typename T>
  static void backward(const BackwardRow<T>& r) {
    lstm_backward_row(r.ws[0], r.ws[1], r.ws[2], r.grad_out, r.dh, r.dc, r.grad_step,
                      r.unprojected, r.n, r.H);
    finish_lstm_backward_row(r);
  }
};

}  // namespace cpu
}  // namespace fusedrnn

// Cells with files of their own (csrc/cells/), one line each: their row kernels and CpuCell.
#include "../cells/layer_norm_lstm_cpu.h"
#include "../cells/layer_norm_gru_cpu.h"
