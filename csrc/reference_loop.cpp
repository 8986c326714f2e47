// The time-loop ops' computation in differentiable ATen ops, step by step: what a backward with
// create_graph=True differentiates (csrc/autograd.cpp). Slow (a few ops a step) and used only
// there. Semantics as the fused ops (csrc/ops.cpp): lengths freeze a row's state and zero its
// outputs past its length, reverse runs time backwards, the step's bias adds to W_hh h (GRU's
// b_hh so sits inside r * (...)), LSTM's w_hr projects h, a diagonal recurrence multiplies h by
// u elementwise, a normalised step (bias = its step parameters) takes γ_hh ⊙ LN(W_hh h) + bias
// for W_hh h, then its base cell's step (LayerNormLSTM's normalising c as well).
#include <ATen/ATen.h>

#include <vector>

#include "autograd.h"

namespace fusedrnn {

using at::Tensor;

std::vector<Tensor> reference_time_loop(Cell cell, const Tensor& xproj, const Tensor& h0,
                                        const Tensor& c0, const Tensor& w_hh, const Tensor& bias,
                                        const Tensor& w_hr, const Tensor& lengths, bool reverse) {
  const int64_t T = xproj.size(0);
  Tensor h = h0, c = c0;
  std::vector<Tensor> outputs(T);
  for (int64_t step = 0; step < T; ++step) {
    const int64_t t = reverse ? T - 1 - step : step;
    const Tensor x_t = xproj[t];  // (B, G*H)
    Tensor h_new, c_new;
    // (B, G*H): W_hh h, or u ⊙ h for every gate block (a diagonal recurrence)
    Tensor recurrent = spec(cell).diagonal() ? h.repeat({1, spec(cell).gates}) * w_hh
                                             : at::matmul(h, w_hh.t());
    if (spec(cell).normalized()) {  // γ_hh ⊙ LN(W_hh h) + the step's bias (csrc/cell_table.h)
      const int64_t GH = recurrent.size(1);
      recurrent = bias.narrow(0, GH, GH) *
                      at::layer_norm(recurrent, {GH}, {}, {}, kLayerNormEps) +
                  bias.narrow(0, 0, GH);
    } else if (bias.defined()) {  // the step's bias (csrc/ops.cpp)
      recurrent = recurrent + bias;
    }
    switch (cell) {
      case Cell::RnnTanh:
      case Cell::IndrnnTanh: h_new = at::tanh(x_t + recurrent); break;
      case Cell::RnnRelu:
      case Cell::IndrnnRelu: h_new = at::relu(x_t + recurrent); break;
      case Cell::Gru:
      case Cell::LayerNormGru: {
        const auto xs = x_t.chunk(3, 1), hs = recurrent.chunk(3, 1);
        const Tensor r = at::sigmoid(xs[0] + hs[0]), z = at::sigmoid(xs[1] + hs[1]);
        const Tensor n = at::tanh(xs[2] + r * hs[2]);
        h_new = (1 - z) * n + z * h;
        break;
      }
      case Cell::Lstm:
      case Cell::LayerNormLstm: {
        const auto g = (x_t + recurrent).chunk(4, 1);
        c_new = at::sigmoid(g[1]) * c + at::sigmoid(g[0]) * at::tanh(g[2]);
        Tensor c_out = c_new;
        if (cell == Cell::LayerNormLstm) {  // LN(c; γ_c, β_c): the step parameters' last 2H
          const int64_t H = c.size(1), GH = recurrent.size(1);
          c_out = at::layer_norm(c_new, {H}, bias.narrow(0, 2 * GH, H),
                                 bias.narrow(0, 2 * GH + H, H), kLayerNormEps);
        }
        h_new = at::sigmoid(g[3]) * at::tanh(c_out);
        if (w_hr.defined()) h_new = at::matmul(h_new, w_hr.t());
        break;
      }
    }
    if (lengths.defined()) {  // rows past their length keep their state and output zeros
      const Tensor active = (lengths.to(h.device()) > t).unsqueeze(1);  // (B, 1)
      outputs[t] = at::where(active, h_new, at::zeros_like(h_new));
      h = at::where(active, h_new, h);
      if (c_new.defined()) c = at::where(active, c_new, c);
    } else {
      outputs[t] = h_new;
      h = h_new;
      if (c_new.defined()) c = c_new;
    }
  }
  Tensor output = T > 0 ? at::stack(outputs)
                        : at::empty({0, h0.size(0), h0.size(1)}, xproj.options());
  return {output, h, spec(cell).has_cell_state() ? c : Tensor()};
}

}  // namespace fusedrnn
