// LayerNormGRU on the CPU (haste's layer-normalised GRU; the equations in
// fusedrnn/layer_norm_gru.py): its row kernels, forward and backward, and its CpuCell. The GRU
// step (gate_math.h) with γ_hh ⊙ LN(W_hh h) + b_hh in place of W_hh h + b_hh. A normalised step
// takes whole rows (n == H). Listed at the end of csrc/cpu/row_kernels.h.
#pragma once

#include "../cpu/row_kernels.h"

namespace fusedrnn {
namespace cpu {

// One whole row (H units): gh is W_hh h (3 gates r, z, n, gh_stride apart), params the step
// parameters (b_hh, γ_hh: 3H each). Writes h' (to h_next and out) and ws (r, z, n and
// hn = γ_hn LN(W_hh h)_n + b_hn, 4H); the product before its layer norm to `recurrent` (3H)
// unless null (not saved).
template <typename T>
FUSEDRNN_CPU_CLONES void layer_norm_gru_forward_row(
    const T* __restrict x, const T* __restrict params, const T* __restrict gh,
    const T* __restrict h_cur, T* __restrict h_next, T* __restrict out, T* __restrict ws,
    T* __restrict recurrent, int64_t H, int64_t gh_stride) {
  const int64_t S = gh_stride;
  const T *b_hh = params, *gamma_r = params + 3 * H;
  const auto [mean_r, rstd_r] = row_moments(gh, 3, H, S);
  // γ_hh ⊙ LN(W_hh h) + b_hh of gate k, unit j
  auto hpart = [&](int64_t k, int64_t j) __attribute__((always_inline)) {
    const int64_t i = k * H + j;
    return gamma_r[i] * ((gh[k * S + j] - mean_r) * rstd_r) + b_hh[i];
  };
  for (int64_t j = 0; j < H; ++j) {
    T h;
    const auto g = gates::gru_forward<T>(x[j], x[H + j], x[2 * H + j], hpart(0, j), hpart(1, j),
                                         hpart(2, j), h_cur[j], &h);
    store_gru_unit(g, h, h_next, out, ws, j, H);
  }
  if (recurrent) {
    for (int64_t k = 0; k < 3; ++k) copy_units(recurrent + k * H, gh + k * S, H);
  }
}

// Its backward, one whole row: d h' = grad_out + dh. Writes d xproj (3H) to grad_x,
// d(W_hh h) (3H) to grad_step, the direct part of d h_{t-1} (z d h') to dh_prev, and the row's
// share of d params to grad_params (6H, as params: d b_hh = d(γ_hh ⊙ LN(W_hh h) + b_hh),
// d γ_hh = that ⊙ LN(W_hh h)).
template <typename T>
FUSEDRNN_CPU_CLONES void layer_norm_gru_backward_row(
    const T* __restrict ws, const T* __restrict recurrent, const T* __restrict h_prev,
    const T* __restrict params, const T* __restrict grad_out, const T* __restrict dh,
    T* __restrict grad_x, T* __restrict grad_step, T* __restrict dh_prev,
    T* __restrict grad_params, int64_t H) {
  const T* gamma_r = params + 3 * H;
  T *grad_b_hh = grad_params, *grad_gamma_r = grad_params + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const gates::GruGates<T> g{ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j]};
    const auto d = gates::gru_backward<T>(g, h_prev[j], grad_out[j] + dh[j]);
    grad_x[j] = grad_b_hh[j] = d.r;
    grad_x[H + j] = grad_b_hh[H + j] = d.z;
    grad_x[2 * H + j] = d.n;
    grad_b_hh[2 * H + j] = d.hn;
    dh_prev[j] = d.h_prev;
  }
  // Through γ_hh ⊙ LN(W_hh h).
  recurrent_norm_backward(grad_b_hh, recurrent, gamma_r, 3 * H, grad_gamma_r, grad_step);
}

// Whole rows only (n == H); not projectable, so grad_out and dh are always given. Its step
// always saves what backward reads beyond GRU's: the product before its norm.
template <>
struct CpuCell<Cell::LayerNormGru> {
  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    layer_norm_gru_forward_row(r.x, r.params, r.gh, r.h_cur, r.h_new, r.out, r.ws[0],
                               r.save ? r.ws[1] : nullptr, r.H, r.gh_stride);
  }
  template <typename T>
  static void backward(const BackwardRow<T>& r) {
    layer_norm_gru_backward_row(r.ws[0], r.ws[1], r.ws[2], r.params, r.grad_out, r.dh, r.grad_x,
                                r.grad_step, r.dh_prev, r.grad_params, r.H);
  }
};

}  // namespace cpu
}  // namespace fusedrnn
