// Fused CPU time loops of one layer and one direction, forward and backward, for RNN, GRU and LSTM.
//
// Every step is one recurrent GEMM into a preallocated buffer (W_hh packed once per call,
// packed_gemm.h) followed by ONE pass over the batch rows doing all gate pointwise work
// (gate_math.h). Backward runs the same way in reverse; weight gradients are one GEMM over all
// steps at the end.
// Shapes and workspaces are documented with the schemas in csrc/ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>

#include "../gate_math.h"
#include "../op_checks.h"
#include "../op_helpers.h"
#include "packed_gemm.h"
#include "row_kernels.h"

namespace fusedrnn {
namespace cpu {
namespace {

using at::Tensor;

// Runs fn(b) for every batch row, in parallel when a step has enough work to pay for threads.
template <typename Fn>
void for_each_row(int64_t B, int64_t work_per_row, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_row));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) fn(b);
  });
}

template <typename T>
void copy_row(T* dst, const T* src, int64_t n) {
  std::memcpy(dst, src, sizeof(T) * n);
}
template <typename T>
void zero_row(T* dst, int64_t n) {
  std::fill(dst, dst + n, T(0));
}

// ============================================================================ RNN (tanh / relu)

std::tuple<Tensor, Tensor, Tensor> rnn_forward(const Tensor& xproj_in, const Tensor& h0_in,
                                               const Tensor& w_hh_in,
                                               const std::optional<Tensor>& lengths, bool reverse,
                                               bool relu, bool save_workspace) {
  const LayerSizes sz = check_forward_inputs(xproj_in, 1, h0_in, w_hh_in, std::nullopt, lengths);
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor hprev = workspace(save_workspace, xproj, T, B, H);
  Tensor state = at::empty({2, B, H}, xproj.options());  // ping-pong h_{t-1} / h_t
  state[0].copy_(h0_in);
  Tensor pre_h = at::empty({B, H}, xproj.options());  // W_hh h_{t-1}

  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fusedrnn::rnn_forward", [&] {
    const scalar_t* x = xproj.data_ptr<scalar_t>();
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), H, H, /*transposed=*/true);
    scalar_t* out = output.data_ptr<scalar_t>();
    scalar_t* hp_ws = save_workspace ? hprev.data_ptr<scalar_t>() : nullptr;
    scalar_t* gh = pre_h.data_ptr<scalar_t>();
    scalar_t* state_data = state.data_ptr<scalar_t>();  // data_ptr once: ~20 ns a call
    for (int64_t s = 0; s < T; ++s) {
      const scalar_t* h_cur = state_data + (s & 1) * B * H;
      scalar_t* h_next = state_data + ((s + 1) & 1) * B * H;
      w.multiply(B, h_cur, H, 0, gh, H);
      for_each_row(B, H, [&](int64_t b) {
        const int64_t t = sched.slot(s, b);
        scalar_t* out_row = out + (t * B + b) * H;
        if (!sched.active(s, b)) {
          copy_row(h_next + b * H, h_cur + b * H, H);
          zero_row(out_row, H);
          if (hp_ws) zero_row(hp_ws + (t * B + b) * H, H);
          return;
        }
        rnn_forward_row(x + (t * B + b) * H, gh + b * H, h_next + b * H, out_row, H, relu);
        if (hp_ws) copy_row(hp_ws + (t * B + b) * H, h_cur + b * H, H);
      });
    }
  });
  return {output, state[T & 1].clone(), hprev};
}

std::tuple<Tensor, Tensor, Tensor> rnn_backward(const Tensor& grad_output_in,
                                                const Tensor& grad_h_n, const Tensor& w_hh_in,
                                                const Tensor& output_in, const Tensor& hprev_in,
                                                const std::optional<Tensor>& lengths,
                                                bool reverse, bool relu) {
  const LayerSizes sz =
      check_rnn_backward_inputs(grad_output_in, grad_h_n, w_hh_in, output_in, hprev_in, lengths);
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Schedule sched = make_schedule(T, reverse, lengths, w_hh_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               output = output_in.contiguous(), hprev = hprev_in.contiguous();

  Tensor grad_xproj = at::zeros({T, B, H}, output.options());
  Tensor carry = at::empty({2, B, H}, output.options());  // ping-pong d h_t / d h_{t-1}
  carry[0].copy_(grad_h_n);
  Tensor grad_pre = at::empty({B, H}, output.options());  // this step's d(pre-activation)

  AT_DISPATCH_FLOATING_TYPES(output.scalar_type(), "fusedrnn::rnn_backward", [&] {
    const scalar_t* gout = grad_output.data_ptr<scalar_t>();
    const scalar_t* out = output.data_ptr<scalar_t>();
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), H, H, /*transposed=*/false);
    scalar_t* gx = grad_xproj.data_ptr<scalar_t>();
    scalar_t* gp = grad_pre.data_ptr<scalar_t>();
    scalar_t* carry_data = carry.data_ptr<scalar_t>();
    for (int64_t step = 0; step < T; ++step) {
      const int64_t s = T - 1 - step;
      const scalar_t* dh = carry_data + (step & 1) * B * H;
      scalar_t* dh_prev = carry_data + ((step + 1) & 1) * B * H;
      for_each_row(B, H, [&](int64_t b) {
        if (!sched.active(s, b)) {
          zero_row(gp + b * H, H);
          copy_row(dh_prev + b * H, dh + b * H, H);
          return;
        }
        const int64_t row = sched.slot(s, b) * B + b;
        rnn_backward_row(out + row * H, gout + row * H, dh + b * H, gp + b * H, dh_prev + b * H,
                         H, relu);
        copy_row(gx + row * H, gp + b * H, H);
      });
      // d h_{t-1} += d pre · W_hh   (inactive rows have d pre = 0 and pass d h through)
      w.multiply(B, gp, H, 1, dh_prev, H);
    }
  });
  return {grad_xproj, carry[T & 1].clone(), weight_grad(grad_xproj, hprev)};
}

// ============================================================================ GRU

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& xproj_in, const Tensor& h0_in,
                                                       const Tensor& w_hh_in,
                                                       const std::optional<Tensor>& b_hh_in,
                                                       const std::optional<Tensor>& lengths,
                                                       bool reverse, bool save_workspace) {
  const LayerSizes sz = check_forward_inputs(xproj_in, 3, h0_in, w_hh_in, std::nullopt, lengths);
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  if (b_hh_in.has_value()) check_tensor(*b_hh_in, xproj_in, "b_hh", {3 * H});
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous()
                                          : at::zeros({3 * H}, xproj.options());

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor gates_ws = workspace(save_workspace, xproj, T, B, 4 * H);
  Tensor hprev = workspace(save_workspace, xproj, T, B, H);
  Tensor state = at::empty({2, B, H}, xproj.options());
  state[0].copy_(h0_in);
  Tensor pre_h = at::empty({B, 3 * H}, xproj.options());  // W_hh h_{t-1} (bias added below)
  Tensor gates_scratch = at::empty({save_workspace ? 0 : B, 4 * H}, xproj.options());

  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fusedrnn::gru_forward", [&] {
    const scalar_t* x = xproj.data_ptr<scalar_t>();
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), 3 * H, H, /*transposed=*/true);
    const scalar_t* bias = b_hh.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    scalar_t* g_ws = save_workspace ? gates_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* hp_ws = save_workspace ? hprev.data_ptr<scalar_t>() : nullptr;
    scalar_t* gh = pre_h.data_ptr<scalar_t>();
    scalar_t* state_data = state.data_ptr<scalar_t>();
    scalar_t* scratch = gates_scratch.data_ptr<scalar_t>();
    for (int64_t s = 0; s < T; ++s) {
      const scalar_t* h_cur = state_data + (s & 1) * B * H;
      scalar_t* h_next = state_data + ((s + 1) & 1) * B * H;
      w.multiply(B, h_cur, H, 0, gh, 3 * H);
      for_each_row(B, 3 * H, [&](int64_t b) {
        const int64_t t = sched.slot(s, b);
        const int64_t row = t * B + b;
        if (!sched.active(s, b)) {
          copy_row(h_next + b * H, h_cur + b * H, H);
          zero_row(out + row * H, H);
          if (g_ws) zero_row(g_ws + row * 4 * H, 4 * H);
          if (hp_ws) zero_row(hp_ws + row * H, H);
          return;
        }
        gru_forward_row(x + row * 3 * H, gh + b * 3 * H, bias, h_cur + b * H, h_next + b * H,
                        out + row * H,
                        g_ws ? g_ws + row * 4 * H : scratch + b * 4 * H, H);
        if (hp_ws) copy_row(hp_ws + row * H, h_cur + b * H, H);
      });
    }
  });
  return {output, state[T & 1].clone(), gates_ws, hprev};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n, const Tensor& w_hh_in,
    const Tensor& gates_in, const Tensor& hprev_in, const std::optional<Tensor>& lengths,
    bool reverse) {
  const LayerSizes sz =
      check_gru_backward_inputs(grad_output_in, grad_h_n, w_hh_in, gates_in, hprev_in, lengths);
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Schedule sched = make_schedule(T, reverse, lengths, w_hh_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               gates_ws = gates_in.contiguous(), hprev = hprev_in.contiguous();

  Tensor grad_xproj = at::zeros({T, B, 3 * H}, hprev.options());  // d(W_ih x + b_ih)
  Tensor grad_hproj = at::zeros({T, B, 3 * H}, hprev.options());  // d(W_hh h + b_hh)
  Tensor carry = at::empty({2, B, H}, hprev.options());
  carry[0].copy_(grad_h_n);
  Tensor grad_step = at::empty({B, 3 * H}, hprev.options());  // this step's d(W_hh h + b_hh)

  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "fusedrnn::gru_backward", [&] {
    const scalar_t* gout = grad_output.data_ptr<scalar_t>();
    const scalar_t* g_ws = gates_ws.data_ptr<scalar_t>();
    const scalar_t* hp_ws = hprev.data_ptr<scalar_t>();
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), H, 3 * H, /*transposed=*/false);
    scalar_t* gx = grad_xproj.data_ptr<scalar_t>();
    scalar_t* gh = grad_hproj.data_ptr<scalar_t>();
    scalar_t* gs = grad_step.data_ptr<scalar_t>();
    scalar_t* carry_data = carry.data_ptr<scalar_t>();
    for (int64_t step = 0; step < T; ++step) {
      const int64_t s = T - 1 - step;
      const scalar_t* dh = carry_data + (step & 1) * B * H;
      scalar_t* dh_prev = carry_data + ((step + 1) & 1) * B * H;
      for_each_row(B, 3 * H, [&](int64_t b) {
        if (!sched.active(s, b)) {
          zero_row(gs + b * 3 * H, 3 * H);
          copy_row(dh_prev + b * H, dh + b * H, H);
          return;
        }
        const int64_t row = sched.slot(s, b) * B + b;
        gru_backward_row(g_ws + row * 4 * H, hp_ws + row * H, gout + row * H, dh + b * H,
                         gx + row * 3 * H, gh + row * 3 * H, dh_prev + b * H, H);
        copy_row(gs + b * 3 * H, gh + row * 3 * H, 3 * H);
      });
      w.multiply(B, gs, 3 * H, 1, dh_prev, H);
    }
  });
  return {grad_xproj, carry[T & 1].clone(), weight_grad(grad_hproj, hprev),
          grad_hproj.sum({0, 1})};
}

// ============================================================================ LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& xproj_in, const Tensor& h0_in, const Tensor& c0_in, const Tensor& w_hh_in,
    const std::optional<Tensor>& w_hr_in, const std::optional<Tensor>& lengths, bool reverse,
    bool save_workspace) {
  const LayerSizes sz = check_forward_inputs(xproj_in, 4, h0_in, w_hh_in, w_hr_in, lengths);
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  check_tensor(c0_in, xproj_in, "c0", {B, H});
  const bool proj = w_hr_in.has_value();
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor w_hr = proj ? w_hr_in->contiguous() : Tensor();

  Tensor output = at::empty({T, B, P}, xproj.options());
  Tensor gates_ws = workspace(save_workspace, xproj, T, B, 4 * H);
  Tensor cells_ws = workspace(save_workspace, xproj, T, B, H);
  Tensor prev_cells_ws = workspace(save_workspace, xproj, T, B, H);
  Tensor hprev = workspace(save_workspace, xproj, T, B, P);
  Tensor h_state = at::empty({2, B, P}, xproj.options());
  Tensor c_state = at::empty({2, B, H}, xproj.options());
  h_state[0].copy_(h0_in);
  c_state[0].copy_(c0_in);
  Tensor pre_h = at::empty({B, 4 * H}, xproj.options());  // W_hh h_{t-1}
  Tensor gates_scratch = at::empty({save_workspace ? 0 : B, 4 * H}, xproj.options());
  Tensor unprojected = at::zeros({proj ? B : 0, H}, xproj.options());  // o*tanh(c) before W_hr

  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fusedrnn::lstm_forward", [&] {
    const scalar_t* x = xproj.data_ptr<scalar_t>();
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), 4 * H, P, /*transposed=*/true);
    const PackedWeight<scalar_t> w_r(proj ? w_hr.data_ptr<scalar_t>() : nullptr, proj ? P : 0, H,
                                     /*transposed=*/true);
    scalar_t* out = output.data_ptr<scalar_t>();
    scalar_t* g_ws = save_workspace ? gates_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* c_ws = save_workspace ? cells_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* cp_ws = save_workspace ? prev_cells_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* hp_ws = save_workspace ? hprev.data_ptr<scalar_t>() : nullptr;
    scalar_t* gh = pre_h.data_ptr<scalar_t>();
    scalar_t* unproj = proj ? unprojected.data_ptr<scalar_t>() : nullptr;
    scalar_t* h_state_data = h_state.data_ptr<scalar_t>();
    scalar_t* c_state_data = c_state.data_ptr<scalar_t>();
    scalar_t* scratch = gates_scratch.data_ptr<scalar_t>();
    for (int64_t s = 0; s < T; ++s) {
      const scalar_t* h_cur = h_state_data + (s & 1) * B * P;
      scalar_t* h_next = h_state_data + ((s + 1) & 1) * B * P;
      const scalar_t* c_cur = c_state_data + (s & 1) * B * H;
      scalar_t* c_next = c_state_data + ((s + 1) & 1) * B * H;
      w.multiply(B, h_cur, P, 0, gh, 4 * H);
      for_each_row(B, 4 * H, [&](int64_t b) {
        const int64_t t = sched.slot(s, b);
        const int64_t row = t * B + b;
        if (!sched.active(s, b)) {
          copy_row(c_next + b * H, c_cur + b * H, H);
          if (!proj) copy_row(h_next + b * P, h_cur + b * P, P);  // with proj: after the GEMM
          zero_row(out + row * P, P);
          if (save_workspace) {
            zero_row(g_ws + row * 4 * H, 4 * H);
            zero_row(c_ws + row * H, H);
            zero_row(cp_ws + row * H, H);
            zero_row(hp_ws + row * P, P);
          }
          return;
        }
        scalar_t* h_out = proj ? unproj + b * H : h_next + b * P;
        lstm_forward_row(x + row * 4 * H, gh + b * 4 * H, c_cur + b * H, c_next + b * H, h_out,
                         save_workspace ? g_ws + row * 4 * H : scratch + b * 4 * H, H);
        if (!proj) copy_row(out + row * P, h_out, P);
        if (save_workspace) {
          copy_row(c_ws + row * H, c_next + b * H, H);
          copy_row(cp_ws + row * H, c_cur + b * H, H);
          copy_row(hp_ws + row * P, h_cur + b * P, P);
        }
      });
      if (proj) {
        // h_t = W_hr (o*tanh(c_t)); inactive rows keep h_{t-1}.
        w_r.multiply(B, unproj, H, 0, h_next, P);
        for_each_row(B, P, [&](int64_t b) {
          if (sched.active(s, b)) {
            copy_row(out + (sched.slot(s, b) * B + b) * P, h_next + b * P, P);
          } else {
            copy_row(h_next + b * P, h_cur + b * P, P);
          }
        });
      }
    }
  });
  return {output, h_state[T & 1].clone(), c_state[T & 1].clone(), gates_ws, cells_ws,
          prev_cells_ws, hprev};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_output_in, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in, const Tensor& gates_in,
    const Tensor& cells_in, const Tensor& prev_cells_in, const Tensor& hprev_in,
    const std::optional<Tensor>& lengths, bool reverse) {
  const LayerSizes sz = check_lstm_backward_inputs(grad_output_in, grad_h_n, grad_c_n, w_hh_in,
                                                   w_hr_in, gates_in, cells_in, prev_cells_in,
                                                   hprev_in, lengths);
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = w_hr_in.has_value();
  const Schedule sched = make_schedule(T, reverse, lengths, w_hh_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               gates_ws = gates_in.contiguous(), cells = cells_in.contiguous(),
               prev_cells = prev_cells_in.contiguous(), hprev = hprev_in.contiguous();
  const Tensor w_hr = proj ? w_hr_in->contiguous() : Tensor();

  Tensor grad_xproj = at::zeros({T, B, 4 * H}, hprev.options());
  Tensor carry = at::empty({2, B, P}, hprev.options());  // ping-pong d h_t / d h_{t-1}
  carry[0].copy_(grad_h_n);
  Tensor grad_c = grad_c_n.contiguous().clone();  // d c, updated in place row by row
  Tensor grad_step = at::empty({B, 4 * H}, hprev.options());  // this step's d(gate pre-activations)
  // With proj_size: d h_t and o*tanh(c_t) for every slot (zero where inactive), for d W_hr.
  Tensor grad_h_all = at::zeros({proj ? T : 0, B, P}, hprev.options());
  Tensor unprojected_all = at::zeros({proj ? T : 0, B, H}, hprev.options());
  Tensor grad_h_step = at::empty({proj ? B : 0, P}, hprev.options());  // d h_t of this step
  Tensor grad_unproj = at::empty({proj ? B : 0, H}, hprev.options());  // d h_t · W_hr

  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "fusedrnn::lstm_backward", [&] {
    const scalar_t* gout = grad_output.data_ptr<scalar_t>();
    const scalar_t* g_ws = gates_ws.data_ptr<scalar_t>();
    const scalar_t* c_ws = cells.data_ptr<scalar_t>();
    const scalar_t* cp_ws = prev_cells.data_ptr<scalar_t>();
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), P, 4 * H, /*transposed=*/false);
    const PackedWeight<scalar_t> w_r(proj ? w_hr.data_ptr<scalar_t>() : nullptr, proj ? H : 0, P,
                                     /*transposed=*/false);
    scalar_t* gx = grad_xproj.data_ptr<scalar_t>();
    scalar_t* dc = grad_c.data_ptr<scalar_t>();
    scalar_t* gs = grad_step.data_ptr<scalar_t>();
    scalar_t* dh_all = proj ? grad_h_all.data_ptr<scalar_t>() : nullptr;
    scalar_t* r_all = proj ? unprojected_all.data_ptr<scalar_t>() : nullptr;
    scalar_t* dh_step = proj ? grad_h_step.data_ptr<scalar_t>() : nullptr;
    scalar_t* dr = proj ? grad_unproj.data_ptr<scalar_t>() : nullptr;
    scalar_t* carry_data = carry.data_ptr<scalar_t>();
    for (int64_t step = 0; step < T; ++step) {
      const int64_t s = T - 1 - step;
      const scalar_t* dh = carry_data + (step & 1) * B * P;
      scalar_t* dh_prev = carry_data + ((step + 1) & 1) * B * P;
      if (proj) {
        // d(o*tanh(c_t)) = d h_t · W_hr, with d h_t = d output_t + carried d h (zero if inactive).
        for_each_row(B, P, [&](int64_t b) {
          if (!sched.active(s, b)) {
            zero_row(dh_step + b * P, P);
            return;
          }
          const int64_t row = sched.slot(s, b) * B + b;
          for (int64_t p = 0; p < P; ++p) dh_step[b * P + p] = gout[row * P + p] + dh[b * P + p];
          copy_row(dh_all + row * P, dh_step + b * P, P);
        });
        w_r.multiply(B, dh_step, P, 0, dr, H);
      }
      for_each_row(B, 4 * H, [&](int64_t b) {
        if (!sched.active(s, b)) {
          zero_row(gs + b * 4 * H, 4 * H);
          copy_row(dh_prev + b * P, dh + b * P, P);
          return;
        }
        const int64_t row = sched.slot(s, b) * B + b;
        scalar_t* g_row = gs + b * 4 * H;
        // Without proj, d(o*tanh(c)) is d output_t + carried d h_t (P == H).
        lstm_backward_row(g_ws + row * 4 * H, c_ws + row * H, cp_ws + row * H,
                          proj ? dr + b * H : gout + row * P, proj ? nullptr : dh + b * P,
                          dc + b * H, g_row, proj ? r_all + row * H : nullptr, H);
        copy_row(gx + row * 4 * H, g_row, 4 * H);
        zero_row(dh_prev + b * P, P);
      });
      // d h_{t-1} += d gates · W_hh   (inactive rows have zero gate grads and pass d h through)
      w.multiply(B, gs, 4 * H, 1, dh_prev, P);
    }
  });
  Tensor grad_w_hr = proj ? weight_grad(grad_h_all, unprojected_all)
                          : at::empty({0}, hprev.options());
  return {grad_xproj, carry[T & 1].clone(), grad_c, weight_grad(grad_xproj, hprev), grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}

}  // namespace cpu
}  // namespace fusedrnn
