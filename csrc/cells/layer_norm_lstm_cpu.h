// LayerNormLSTM on the CPU (haste's layer-normalised LSTM; the equations in
// fusedrnn/layer_norm_lstm.py): its row kernels, forward and backward, and its CpuCell. A
// normalised step takes whole rows (n == H). Listed at the end of csrc/cpu/row_kernels.h.
#pragma once

#include "../cpu/row_kernels.h"

namespace fusedrnn {
namespace cpu {

// LayerNormLSTM (gate_math.h), one whole row (H units): gh is W_hh h (4 gates, gh_stride apart),
// params the step parameters (bias, γ_hh: 4H each; γ_c, β_c: H each). Writes c', h' and the
// activated gates; the product before its layer norm to `recurrent` unless null (not saved).
template <typename T>
FUSEDRNN_CPU_CLONES void layer_norm_lstm_forward_row(
    const T* __restrict x, const T* __restrict params, const T* __restrict gh,
    const T* __restrict c_cur, T* __restrict c_next, T* __restrict h_out, T* __restrict gates,
    T* __restrict recurrent, int64_t H, int64_t gh_stride) {
  const int64_t S = gh_stride;
  const T *bias = params, *gamma_r = params + 4 * H, *gamma_c = params + 8 * H,
          *beta_c = params + 9 * H;
  const auto [mean_r, rstd_r] = row_moments(gh, 4, H, S);
  auto pre = [&](int64_t k, int64_t j) __attribute__((always_inline)) {
    return x[k * H + j] + bias[k * H + j] + gamma_r[k * H + j] * ((gh[k * S + j] - mean_r) * rstd_r);
  };
  for (int64_t j = 0; j < H; ++j) {
    const auto a = gates::lstm_gates<T>(pre(0, j), pre(1, j), pre(2, j), pre(3, j));
    c_next[j] = a.f * c_cur[j] + a.i * a.g;
    gates[j] = a.i;
    gates[H + j] = a.f;
    gates[2 * H + j] = a.g;
    gates[3 * H + j] = a.o;
  }
  const auto [mean_c, rstd_c] = row_moments(c_next, 1, H, H);
  for (int64_t j = 0; j < H; ++j) {
    const T c_norm = gamma_c[j] * ((c_next[j] - mean_c) * rstd_c) + beta_c[j];
    h_out[j] = gates[3 * H + j] * gates::tanh_(c_norm);
  }
  if (recurrent) {
    for (int64_t k = 0; k < 4; ++k) copy_units(recurrent + k * H, gh + k * S, H);
  }
}

// Its backward, one whole row: grad_h = grad_h_a + grad_h_b is d h'; dc holds d c' on entry and
// d c_{t-1} on exit. Writes d xproj (= d of the pre-activations v, 4H) to grad_x, d(W_hh h) to
// grad_step, and the row's share of d params after the bias to grad_params (6H: d γ_hh =
// d v ⊙ LN(W_hh h), d γ_c = d(γ_c ⊙ LN(c') + β_c) ⊙ LN(c'), d β_c; the bias's is d v's sum).
template <typename T>
FUSEDRNN_CPU_CLONES void layer_norm_lstm_backward_row(
    const T* __restrict gates, const T* __restrict recurrent, const T* __restrict c_new,
    const T* __restrict c_prev, const T* __restrict params, const T* __restrict grad_h_a,
    const T* __restrict grad_h_b, T* __restrict dc, T* __restrict grad_x,
    T* __restrict grad_step, T* __restrict grad_params, int64_t H) {
  const T *gamma_r = params + 4 * H, *gamma_c = params + 8 * H, *beta_c = params + 9 * H;
  T *grad_gamma_r = grad_params, *grad_gamma_c = grad_params + 4 * H,
    *grad_c_norm = grad_params + 5 * H;  // = d β_c
  // Through h' = o tanh(γ_c ĉ + β_c): d of the norm's output, and the row means its backward
  // needs.
  const auto [mean_c, rstd_c] = row_moments(c_new, 1, H, H);
  auto c_hat = [&](int64_t j) __attribute__((always_inline)) { return (c_new[j] - mean_c) * rstd_c; };
  double sum_d = 0, sum_d_hat = 0;
  for (int64_t j = 0; j < H; ++j) {
    const T t = gates::tanh_(gamma_c[j] * c_hat(j) + beta_c[j]);
    const T d_norm = (grad_h_a[j] + grad_h_b[j]) * gates[3 * H + j] * (T(1) - t * t);
    grad_c_norm[j] = d_norm;
    grad_gamma_c[j] = d_norm * c_hat(j);
    sum_d += d_norm * gamma_c[j];
    sum_d_hat += d_norm * gamma_c[j] * c_hat(j);
  }
  const T mean_d = static_cast<T>(sum_d / H), mean_d_hat = static_cast<T>(sum_d_hat / H);
  for (int64_t j = 0; j < H; ++j) {
    const gates::LstmGates<T> a{gates[j], gates[H + j], gates[2 * H + j], gates[3 * H + j]};
    const T t = gates::tanh_(gamma_c[j] * c_hat(j) + beta_c[j]);
    const T dc_total = dc[j] + gates::layer_norm_grad(grad_c_norm[j] * gamma_c[j], c_hat(j),
                                                      mean_d, mean_d_hat, rstd_c);
    const auto d = gates::lstm_gate_grads<T>(a, c_prev[j], dc_total,
                                             (grad_h_a[j] + grad_h_b[j]) * t);
    grad_x[j] = d.i;
    grad_x[H + j] = d.f;
    grad_x[2 * H + j] = d.g;
    grad_x[3 * H + j] = d.o;
    dc[j] = d.c_prev;
  }
  // Through v's γ_hh ⊙ LN(W_hh h).
  recurrent_norm_backward(grad_x, recurrent, gamma_r, 4 * H, grad_gamma_r, grad_step);
}

// LayerNormLSTM: whole rows only (the loops give a normalised step every unit of a row; n == H).
// Its step always saves what backward reads beyond LSTM's: the product before its norm.
template <>
struct CpuCell<Cell::LayerNormLstm> {
  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    layer_norm_lstm_forward_row(r.x, r.params, r.gh, r.c_cur, r.c_new, r.h_new, r.ws[0],
                                r.save ? r.ws[1] : nullptr, r.H, r.gh_stride);
    finish_lstm_forward_row(r, /*cells=*/2);
  }
  template <typename T>
  static void backward(const BackwardRow<T>& r) {
    layer_norm_lstm_backward_row(r.ws[0], r.ws[1], r.ws[2], r.ws[3], r.params, r.grad_out, r.dh,
                                 r.dc, r.grad_x, r.grad_step, r.grad_params, r.H);
    finish_lstm_backward_row(r);
  }
};

}  // namespace cpu
}  // namespace fusedrnn
