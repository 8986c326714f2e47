// LayerNormLSTM's CUDA step (haste's layer-normalised LSTM; the equations in
// fusedrnn/layer_norm_lstm.py): its DeviceCell, a row at a time, and its kernels' instantiation.
// Not a header of its own: included at the end of csrc/cuda/step_kernels.cu, inside namespace
// fusedrnn::cuda, whose kernel helpers (block_row_moments, WorkspaceRows, ...) it uses.

namespace {

// LayerNormLSTM (gate_math.h): a row at a time, as the CPU's layer_norm_lstm_forward_row /
// _backward_row. Its threads share the row's units (FUSEDRNN_FOR_EACH_UNIT). Not projectable
// (the cell table), so P = H and h is indexed by H.
template <>
struct DeviceCell<Cell::LayerNormLstm> {
  // The step parameters (ForwardStep::params), in storage type.
  template <typename T>
  struct Params {
    const T *bias, *gamma_r, *gamma_c, *beta_c;
    __device__ Params(const void* params, int64_t H)
        : bias(in<T>(params)), gamma_r(bias + 4 * H), gamma_c(bias + 8 * H),
          beta_c(bias + 9 * H) {}
  };

  // Batch row b (slot `row` of the step's outputs), active.
  template <typename T, typename S>
  __device__ static void forward_row(const ForwardStep& p, int64_t b, int64_t row,
                                     const WorkspaceRows<S>& ws) {
    const int64_t H = p.at.H;
    const Params<T> w(p.params, H);
    const T* x = in<T>(p.x) + row * 4 * H;
    const S* gh = in<S>(p.gh) + b * 4 * H;
    const S* c_cur = in<S>(p.c_cur) + b * H;
    S* c_next = out<S>(p.c_next) + b * H;
    const RowMoments<S> r = block_row_moments(gh, 4 * H);
    auto pre = [&](int k, int64_t j) {
      const int64_t i = k * H + j;
      return to_state(x[i]) + to_state(w.bias[i]) +
             to_state(w.gamma_r[i]) * ((gh[i] - r.mean) * r.rstd);
    };
    FUSEDRNN_FOR_EACH_UNIT(H, j) {
      const auto a = gates::lstm_gates<S>(pre(0, j), pre(1, j), pre(2, j), pre(3, j));
      c_next[j] = a.f * c_cur[j] + a.i * a.g;
      if (S* g = ws.parts[0]) {  // saved: the gates, W_hh h, c_t and c_{t-1}
        g[j] = a.i;
        g[H + j] = a.f;
        g[2 * H + j] = a.g;
        g[3 * H + j] = a.o;
        for (int k = 0; k < 4; ++k) ws.parts[1][k * H + j] = gh[k * H + j];
        ws.parts[2][j] = c_next[j];
        ws.parts[3][j] = c_cur[j];
      }
    }
    const RowMoments<S> c = block_row_moments(c_next, H);
    S* hprev = static_cast<S*>(p.ws.hprev);
    FUSEDRNN_FOR_EACH_UNIT(H, j) {
      const S o = gates::sigmoid(pre(3, j));  // the output gate, as lstm_gates computed it
      const S c_norm =
          to_state(w.gamma_c[j]) * ((c_next[j] - c.mean) * c.rstd) + to_state(w.beta_c[j]);
      const S h = o * gates::tanh_(c_norm);
      out<S>(p.h_next)[b * H + j] = h;
      out<T>(p.out)[row * H + j] = stored<T>(h);
      if (hprev) hprev[row * H + j] = in<S>(p.h_cur)[b * H + j];
    }
  }

  template <typename T, typename S>
  __device__ static void backward_row(const BackwardStep& p, int64_t b, int64_t row,
                                      const WorkspaceRows<S>& ws) {
    const int64_t H = p.at.H;
    const Params<T> w(p.params, H);
    const S *acts = ws.parts[0], *recurrent = ws.parts[1], *cells = ws.parts[2],
            *prev_cells = ws.parts[3];  // the activated gates, W_hh h, c_t, c_{t-1}
    S* dc = out<S>(p.dc) + b * H;
    S* gs = out<S>(p.grad_step) + b * 4 * H;  // d v first, then d(W_hh h)
    // The row's share of d params after the bias (the bias's is d v's sum): d γ_hh =
    // d v ⊙ LN(W_hh h), d γ_c = d(γ_c ⊙ LN(c_t) + β_c) ⊙ LN(c_t), d β_c = d(γ_c ⊙ LN(c_t) + β_c).
    S* grad_gamma_r = out<S>(p.grad_params) + row * 6 * H;
    S *grad_gamma_c = grad_gamma_r + 4 * H, *grad_c_norm = grad_gamma_r + 5 * H;
    auto grad_h = [&](int64_t j) {
      return to_state(in<T>(p.grad_out)[row * H + j]) + in<S>(p.dh)[b * H + j];
    };
    // Through h' = o tanh(γ_c ĉ + β_c): d of the norm's output, and the row means its backward
    // needs.
    const RowMoments<S> c = block_row_moments(cells, H);
    auto c_hat = [&](int64_t j) { return (cells[j] - c.mean) * c.rstd; };
    auto tanh_c_norm = [&](int64_t j) {
      return gates::tanh_(to_state(w.gamma_c[j]) * c_hat(j) + to_state(w.beta_c[j]));
    };
    double sum_d = 0, sum_d_hat = 0;
    FUSEDRNN_FOR_EACH_UNIT(H, j) {
      const S t = tanh_c_norm(j);
      const S d_norm = grad_h(j) * acts[3 * H + j] * (S(1) - t * t);
      grad_c_norm[j] = d_norm;
      grad_gamma_c[j] = d_norm * c_hat(j);
      sum_d += d_norm * to_state(w.gamma_c[j]);
      sum_d_hat += d_norm * to_state(w.gamma_c[j]) * c_hat(j);
    }
    const S mean_d = S(block_sum(sum_d) / H), mean_d_hat = S(block_sum(sum_d_hat) / H);
    T* gx = out<T>(p.grad_x) + row * 4 * H;
    FUSEDRNN_FOR_EACH_UNIT(H, j) {
      const gates::LstmGates<S> a{acts[j], acts[H + j], acts[2 * H + j], acts[3 * H + j]};
      const S dc_total = dc[j] + gates::layer_norm_grad(grad_c_norm[j] * to_state(w.gamma_c[j]),
                                                        c_hat(j), mean_d, mean_d_hat, c.rstd);
      const auto d =
          gates::lstm_gate_grads<S>(a, prev_cells[j], dc_total, grad_h(j) * tanh_c_norm(j));
      const S dv[4] = {d.i, d.f, d.g, d.o};
      for (int k = 0; k < 4; ++k) {
        gs[k * H + j] = dv[k];
        gx[k * H + j] = stored<T>(dv[k]);
      }
      dc[j] = d.c_prev;
      out<S>(p.dh_prev)[b * H + j] = S(0);  // h_{t-1} enters through W_hh h only
    }
    // Through v's γ_hh ⊙ LN(W_hh h): d v (gs) becomes d(W_hh h) in place.
    block_recurrent_norm_backward(gs, recurrent, w.gamma_r, 4 * H, grad_gamma_r,
                                  out<T>(p.grad_hproj) + row * 4 * H);
  }
};

}  // namespace

FUSEDRNN_CELL_STEPS(Cell::LayerNormLstm);
