// LayerNormGRU's CUDA step (haste's layer-normalised GRU; the equations in
// fusedrnn/layer_norm_gru.py): its DeviceCell, a row at a time as the CPU's
// layer_norm_gru_forward_row / _backward_row, and its kernels' instantiation. Not a header of
// its own: included at the end of csrc/cuda/step_kernels.cu, inside namespace fusedrnn::cuda,
// whose kernel helpers (block_row_moments, WorkspaceRows, ...) it uses.

namespace {

// Its threads share the row's units (FUSEDRNN_FOR_EACH_UNIT). Not projectable (the cell
// table), so P = H and h is indexed by H.
template <>
struct DeviceCell<Cell::LayerNormGru> {
  // Batch row b (slot `row` of the step's outputs), active. params: b_hh, γ_hh (3H each).
  template <typename T, typename S>
  __device__ static void forward_row(const ForwardStep& p, int64_t b, int64_t row,
                                     const WorkspaceRows<S>& ws) {
    const int64_t H = p.at.H;
    const T *b_hh = in<T>(p.params), *gamma_r = b_hh + 3 * H;
    const T* x = in<T>(p.x) + row * 3 * H;
    const S* gh = in<S>(p.gh) + b * 3 * H;
    const RowMoments<S> r = block_row_moments(gh, 3 * H);
    auto hpart = [&](int k, int64_t j) {
      const int64_t i = k * H + j;
      return to_state(gamma_r[i]) * ((gh[i] - r.mean) * r.rstd) + to_state(b_hh[i]);
    };
    S* hprev = static_cast<S*>(p.ws.hprev);
    FUSEDRNN_FOR_EACH_UNIT(H, j) {
      const S h_cur = in<S>(p.h_cur)[b * H + j];
      S h;
      const auto g = gates::gru_forward<S>(to_state(x[j]), to_state(x[H + j]),
                                           to_state(x[2 * H + j]), hpart(0, j), hpart(1, j),
                                           hpart(2, j), h_cur, &h);
      out<S>(p.h_next)[b * H + j] = h;
      out<T>(p.out)[row * H + j] = stored<T>(h);
      if (S* w = ws.parts[0]) {  // saved: r, z, n, hn and W_hh h
        w[j] = g.r;
        w[H + j] = g.z;
        w[2 * H + j] = g.n;
        w[3 * H + j] = g.hn;
        for (int k = 0; k < 3; ++k) ws.parts[1][k * H + j] = gh[k * H + j];
      }
      if (hprev) hprev[row * H + j] = h_cur;
    }
  }

  template <typename T, typename S>
  __device__ static void backward_row(const BackwardStep& p, int64_t b, int64_t row,
                                      const WorkspaceRows<S>& ws) {
    const int64_t H = p.at.H;
    const T* gamma_r = in<T>(p.params) + 3 * H;
    const S *acts = ws.parts[0], *recurrent = ws.parts[1];  // r, z, n, hn; W_hh h
    const S* hprev = in<S>(p.ws.hprev) + row * H;
    S* gs = out<S>(p.grad_step) + b * 3 * H;  // d(γ_hh LN(W_hh h) + b_hh) first, then d(W_hh h)
    // The row's share of d params: d b_hh, then d γ_hh = d b_hh ⊙ LN(W_hh h).
    S* grad_b_hh = out<S>(p.grad_params) + row * 6 * H;
    S* grad_gamma_r = grad_b_hh + 3 * H;
    T* gx = out<T>(p.grad_x) + row * 3 * H;
    FUSEDRNN_FOR_EACH_UNIT(H, j) {
      const gates::GruGates<S> g{acts[j], acts[H + j], acts[2 * H + j], acts[3 * H + j]};
      const S grad_h = to_state(in<T>(p.grad_out)[row * H + j]) + in<S>(p.dh)[b * H + j];
      const auto d = gates::gru_backward<S>(g, hprev[j], grad_h);
      gx[j] = stored<T>(d.r);
      gx[H + j] = stored<T>(d.z);
      gx[2 * H + j] = stored<T>(d.n);
      const S d_post[3] = {d.r, d.z, d.hn};
      for (int k = 0; k < 3; ++k) gs[k * H + j] = grad_b_hh[k * H + j] = d_post[k];
      out<S>(p.dh_prev)[b * H + j] = d.h_prev;
    }
    // Through γ_hh ⊙ LN(W_hh h): gs becomes d(W_hh h) in place.
    block_recurrent_norm_backward(gs, recurrent, gamma_r, 3 * H, grad_gamma_r,
                                  out<T>(p.grad_hproj) + row * 3 * H);
  }
};

}  // namespace

FUSEDRNN_CELL_STEPS(Cell::LayerNormGru);
