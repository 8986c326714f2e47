// CUDA time loops of one layer and one direction, forward and backward, for RNN, GRU and LSTM:
// the simple design. Per step: one GEMM through at::mm_out / addmm_ (torch's current cuBLAS handle
// and stream, torch's TF32 / reduced-precision settings, fp32 accumulation for half types;
// at::cuda::blas::gemm is not exported to extensions), then ONE fused pointwise kernel
// (step_kernels.cu). Backward likewise, with
// weight gradients as one GEMM at the end. No host synchronisation, no private stream or handle.
// Shapes and workspaces are documented with the schemas in csrc/ops.cpp; the loops mirror
// csrc/cpu/recurrent_cpu.cpp step for step.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "../op_checks.h"
#include "../op_helpers.h"
#include "step_kernels.h"

namespace fusedrnn {
namespace cuda {
namespace {

using at::Tensor;

Dtype dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::Float;
    case at::kDouble: return Dtype::Double;
    case at::kHalf: return Dtype::Half;
    case at::kBFloat16: return Dtype::BFloat16;
    default: TORCH_CHECK(false, "fusedrnn: CUDA ops support float32, float64, float16 and "
                         "bfloat16, got ", t.scalar_type());
  }
}

// C (+)= A · op(W) on torch's current stream; op(W) = W^T when transposed. C may be a view.
void step_gemm(Tensor C, const Tensor& A, const Tensor& W, bool transposed, bool accumulate) {
  const Tensor w = transposed ? W.t() : W;
  if (accumulate) {
    C.addmm_(A, w);
  } else {
    at::mm_out(C, A, w);
  }
}

// Both halves of a ping-pong pair (2, rows, width) as views, made once per op rather than per
// step: step s reads [s & 1] and writes [(s + 1) & 1].
std::array<Tensor, 2> halves(const Tensor& pair) { return {pair[0], pair[1]}; }

template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

#define FUSEDRNN_DISPATCH(tensor, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (tensor).scalar_type(), name, \
                                  __VA_ARGS__)

// ============================================================================ RNN (tanh / relu)

std::tuple<Tensor, Tensor, Tensor> rnn_forward(const Tensor& xproj_in, const Tensor& h0_in,
                                               const Tensor& w_hh_in,
                                               const std::optional<Tensor>& lengths, bool reverse,
                                               bool relu, bool save_workspace) {
  const LayerSizes sz = check_forward_inputs(xproj_in, 1, h0_in, w_hh_in, std::nullopt, lengths);
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const c10::cuda::CUDAGuard guard(xproj_in.device());
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Dtype dtype = dtype_of(xproj);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor hprev = workspace(save_workspace, xproj, T, B, H);
  Tensor state = at::empty({2, B, H}, xproj.options());  // ping-pong h_{t-1} / h_t
  state[0].copy_(h0_in);
  Tensor pre_h = at::empty({B, H}, xproj.options());  // W_hh h_{t-1}

  const std::array<Tensor, 2> state_halves = halves(state);
  FUSEDRNN_DISPATCH(xproj, "fusedrnn::rnn_forward_cuda", [&] {
    for (int64_t s = 0; s < T; ++s) {
      const Tensor& h_cur = state_halves[s & 1];
      step_gemm(pre_h, h_cur, w_hh, /*transposed=*/true, /*accumulate=*/false);
      const RnnForwardStep p{{sched, s, B, H}, relu, xproj.data_ptr<scalar_t>(),
                             pre_h.data_ptr<scalar_t>(), h_cur.data_ptr<scalar_t>(),
                             state_halves[(s + 1) & 1].data_ptr<scalar_t>(),
                             output.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(hprev)};
      C10_CUDA_CHECK(rnn_forward_step(p, dtype, stream));
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
  const c10::cuda::CUDAGuard guard(output_in.device());
  const Schedule sched = make_schedule(T, reverse, lengths, output_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               output = output_in.contiguous(), hprev = hprev_in.contiguous();
  const Dtype dtype = dtype_of(output);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor grad_xproj = at::zeros({T, B, H}, output.options());
  Tensor carry = at::empty({2, B, H}, output.options());  // ping-pong d h_t / d h_{t-1}
  carry[0].copy_(grad_h_n);
  Tensor grad_pre = at::empty({B, H}, output.options());

  const std::array<Tensor, 2> carry_halves = halves(carry);
  FUSEDRNN_DISPATCH(output, "fusedrnn::rnn_backward_cuda", [&] {
    for (int64_t step = 0; step < T; ++step) {
      const Tensor& dh_prev = carry_halves[(step + 1) & 1];
      const RnnBackwardStep p{{sched, T - 1 - step, B, H}, relu, output.data_ptr<scalar_t>(),
                              grad_output.data_ptr<scalar_t>(),
                              carry_halves[step & 1].data_ptr<scalar_t>(),
                              dh_prev.data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>(),
                              grad_xproj.data_ptr<scalar_t>()};
      C10_CUDA_CHECK(rnn_backward_step(p, dtype, stream));
      // d h_{t-1} += d pre · W_hh   (inactive rows have d pre = 0 and pass d h through)
      step_gemm(dh_prev, grad_pre, w_hh, /*transposed=*/false, /*accumulate=*/true);
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
  const c10::cuda::CUDAGuard guard(xproj_in.device());
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous()
                                          : at::zeros({3 * H}, xproj.options());
  const Dtype dtype = dtype_of(xproj);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor gates_ws = workspace(save_workspace, xproj, T, B, 4 * H);
  Tensor hprev = workspace(save_workspace, xproj, T, B, H);
  Tensor state = at::empty({2, B, H}, xproj.options());
  state[0].copy_(h0_in);
  Tensor pre_h = at::empty({B, 3 * H}, xproj.options());  // W_hh h_{t-1} (bias added in-kernel)

  const std::array<Tensor, 2> state_halves = halves(state);
  FUSEDRNN_DISPATCH(xproj, "fusedrnn::gru_forward_cuda", [&] {
    for (int64_t s = 0; s < T; ++s) {
      const Tensor& h_cur = state_halves[s & 1];
      step_gemm(pre_h, h_cur, w_hh, /*transposed=*/true, /*accumulate=*/false);
      const GruForwardStep p{{sched, s, B, H}, xproj.data_ptr<scalar_t>(),
                             pre_h.data_ptr<scalar_t>(), b_hh.data_ptr<scalar_t>(),
                             h_cur.data_ptr<scalar_t>(),
                             state_halves[(s + 1) & 1].data_ptr<scalar_t>(),
                             output.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(gates_ws),
                             ptr_or_null<scalar_t>(hprev)};
      C10_CUDA_CHECK(gru_forward_step(p, dtype, stream));
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
  const c10::cuda::CUDAGuard guard(hprev_in.device());
  const Schedule sched = make_schedule(T, reverse, lengths, hprev_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               gates_ws = gates_in.contiguous(), hprev = hprev_in.contiguous();
  const Dtype dtype = dtype_of(hprev);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor grad_xproj = at::zeros({T, B, 3 * H}, hprev.options());
  Tensor grad_hproj = at::zeros({T, B, 3 * H}, hprev.options());
  Tensor carry = at::empty({2, B, H}, hprev.options());
  carry[0].copy_(grad_h_n);
  Tensor grad_step = at::empty({B, 3 * H}, hprev.options());

  const std::array<Tensor, 2> carry_halves = halves(carry);
  FUSEDRNN_DISPATCH(hprev, "fusedrnn::gru_backward_cuda", [&] {
    for (int64_t step = 0; step < T; ++step) {
      const Tensor& dh_prev = carry_halves[(step + 1) & 1];
      const GruBackwardStep p{{sched, T - 1 - step, B, H}, gates_ws.data_ptr<scalar_t>(),
                              hprev.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
                              carry_halves[step & 1].data_ptr<scalar_t>(),
                              dh_prev.data_ptr<scalar_t>(), grad_xproj.data_ptr<scalar_t>(),
                              grad_hproj.data_ptr<scalar_t>(), grad_step.data_ptr<scalar_t>()};
      C10_CUDA_CHECK(gru_backward_step(p, dtype, stream));
      step_gemm(dh_prev, grad_step, w_hh, /*transposed=*/false, /*accumulate=*/true);
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
  const c10::cuda::CUDAGuard guard(xproj_in.device());
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor w_hr = proj ? w_hr_in->contiguous() : Tensor();
  const Dtype dtype = dtype_of(xproj);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor output = at::empty({T, B, P}, xproj.options());
  Tensor gates_ws = workspace(save_workspace, xproj, T, B, 4 * H);
  Tensor cells_ws = workspace(save_workspace, xproj, T, B, H);
  Tensor prev_cells_ws = workspace(save_workspace, xproj, T, B, H);
  Tensor hprev = workspace(save_workspace, xproj, T, B, P);
  Tensor h_state = at::empty({2, B, P}, xproj.options());
  Tensor c_state = at::empty({2, B, H}, xproj.options());
  h_state[0].copy_(h0_in);
  c_state[0].copy_(c0_in);
  Tensor pre_h = at::empty({B, 4 * H}, xproj.options());              // W_hh h_{t-1}
  Tensor unprojected = at::zeros({proj ? B : 0, H}, xproj.options());  // o*tanh(c) before W_hr

  const std::array<Tensor, 2> h_state_halves = halves(h_state);
  const std::array<Tensor, 2> c_state_halves = halves(c_state);
  FUSEDRNN_DISPATCH(xproj, "fusedrnn::lstm_forward_cuda", [&] {
    for (int64_t s = 0; s < T; ++s) {
      const Tensor& h_cur = h_state_halves[s & 1];
      const Tensor& h_next = h_state_halves[(s + 1) & 1];
      step_gemm(pre_h, h_cur, w_hh, /*transposed=*/true, /*accumulate=*/false);
      const LstmForwardStep p{{sched, s, B, H}, P, proj, xproj.data_ptr<scalar_t>(),
                              pre_h.data_ptr<scalar_t>(), h_cur.data_ptr<scalar_t>(),
                              h_next.data_ptr<scalar_t>(),
                              c_state_halves[s & 1].data_ptr<scalar_t>(),
                              c_state_halves[(s + 1) & 1].data_ptr<scalar_t>(),
                              output.data_ptr<scalar_t>(),
                              ptr_or_null<scalar_t>(unprojected), ptr_or_null<scalar_t>(gates_ws),
                              ptr_or_null<scalar_t>(cells_ws), ptr_or_null<scalar_t>(prev_cells_ws),
                              ptr_or_null<scalar_t>(hprev)};
      C10_CUDA_CHECK(lstm_forward_step(p, dtype, stream));
      if (proj) {
        // h_t = W_hr (o*tanh(c_t)); inactive rows keep h_{t-1}.
        step_gemm(h_next, unprojected, w_hr, /*transposed=*/true, /*accumulate=*/false);
        const LstmProjectionStep q{{sched, s, B, H}, P, h_cur.data_ptr<scalar_t>(),
                                   h_next.data_ptr<scalar_t>(), output.data_ptr<scalar_t>()};
        C10_CUDA_CHECK(lstm_projection_step(q, dtype, stream));
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
  const c10::cuda::CUDAGuard guard(gates_in.device());
  const Schedule sched = make_schedule(T, reverse, lengths, gates_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               gates_ws = gates_in.contiguous(), cells = cells_in.contiguous(),
               prev_cells = prev_cells_in.contiguous(), hprev = hprev_in.contiguous();
  const Tensor w_hr = proj ? w_hr_in->contiguous() : Tensor();
  const Dtype dtype = dtype_of(hprev);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  Tensor grad_xproj = at::zeros({T, B, 4 * H}, hprev.options());
  Tensor carry = at::empty({2, B, P}, hprev.options());  // ping-pong d h_t / d h_{t-1}
  carry[0].copy_(grad_h_n);
  Tensor grad_c = grad_c_n.contiguous().clone();  // d c, updated in place
  Tensor grad_step = at::empty({B, 4 * H}, hprev.options());
  // With proj_size: d h_t and o*tanh(c_t) for every slot (zero where inactive), for d W_hr.
  Tensor grad_h_all = at::zeros({proj ? T : 0, B, P}, hprev.options());
  Tensor unprojected_all = at::zeros({proj ? T : 0, B, H}, hprev.options());
  Tensor grad_h_step = at::empty({proj ? B : 0, P}, hprev.options());
  Tensor grad_unproj = at::empty({proj ? B : 0, H}, hprev.options());

  const std::array<Tensor, 2> carry_halves = halves(carry);
  FUSEDRNN_DISPATCH(hprev, "fusedrnn::lstm_backward_cuda", [&] {
    for (int64_t step = 0; step < T; ++step) {
      const int64_t s = T - 1 - step;
      scalar_t* dh = carry_halves[step & 1].data_ptr<scalar_t>();
      const Tensor& dh_prev = carry_halves[(step + 1) & 1];
      if (proj) {
        const LstmBackwardProjectionStep q{{sched, s, B, H}, P, grad_output.data_ptr<scalar_t>(),
                                           dh, grad_h_step.data_ptr<scalar_t>(),
                                           grad_h_all.data_ptr<scalar_t>()};
        C10_CUDA_CHECK(lstm_backward_projection_step(q, dtype, stream));
        // d(o*tanh(c_t)) = d h_t · W_hr
        step_gemm(grad_unproj, grad_h_step, w_hr, /*transposed=*/false, /*accumulate=*/false);
      }
      const LstmBackwardStep p{{sched, s, B, H}, P, proj, gates_ws.data_ptr<scalar_t>(),
                               cells.data_ptr<scalar_t>(), prev_cells.data_ptr<scalar_t>(),
                               grad_output.data_ptr<scalar_t>(), dh,
                               ptr_or_null<scalar_t>(grad_unproj), grad_c.data_ptr<scalar_t>(),
                               grad_step.data_ptr<scalar_t>(), grad_xproj.data_ptr<scalar_t>(),
                               ptr_or_null<scalar_t>(unprojected_all),
                               dh_prev.data_ptr<scalar_t>()};
      C10_CUDA_CHECK(lstm_backward_step(p, dtype, stream));
      // d h_{t-1} += d gates · W_hh   (inactive rows have zero gate grads and pass d h through)
      step_gemm(dh_prev, grad_step, w_hh, /*transposed=*/false, /*accumulate=*/true);
    }
  });
  Tensor grad_w_hr = proj ? weight_grad(grad_h_all, unprojected_all)
                          : at::empty({0}, hprev.options());
  return {grad_xproj, carry[T & 1].clone(), grad_c, weight_grad(grad_xproj, hprev), grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}

}  // namespace cuda
}  // namespace fusedrnn
