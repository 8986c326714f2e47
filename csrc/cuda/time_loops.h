// CUDA time loops of one layer and one direction, forward and backward, for RNN, GRU and LSTM:
// the per-step design. Per step: one GEMM through at::mm_out / addmm_ (on a GPU: torch's current
// cuBLAS handle and stream and its TF32 settings), then ONE fused pointwise kernel
// (step_kernels.cu). Backward likewise, with the weight gradients as one GEMM at the end. No
// host synchronisation, no private stream or handle. The loops mirror csrc/cpu/recurrent_cpu.cpp
// step for step; shapes and workspaces are documented with the schemas in csrc/ops.cpp.
//
// Written once for two drivers, the `Device` template argument:
//   CudaDevice (recurrent_cuda.cpp): CUDA tensors, real launches on the current stream;
//   EmulatedDevice (csrc/emulation/emulated_ops.cpp, tests only): CPU tensors, the same kernels
//     run by the SIMT emulation and the GEMMs by torch on the CPU.
// A Device is constructed from a tensor of the op (device guard), and has stream() and
// check(cudaError_t) (raises with the error's text).
//
// fp16/bf16 storage: h, c, d h, d c, the recurrent GEMMs and the workspaces saved for backward
// are float ("state" buffers of step_kernels.h), with W_hh / W_hr cast to float once per call;
// inputs, outputs and returned gradients are stored in the half type.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "../op_helpers.h"
#include "../time_loop_op.h"
#include "step_kernels.h"

namespace fusedrnn {
namespace cuda {
namespace loops {

using at::Tensor;

inline Dtype dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::Float;
    case at::kDouble: return Dtype::Double;
    case at::kHalf: return Dtype::Half;
    case at::kBFloat16: return Dtype::BFloat16;
    default: TORCH_CHECK(false, "fusedrnn: CUDA ops support float32, float64, float16 and "
                         "bfloat16, got ", t.scalar_type());
  }
}

// The options of the state buffers and workspaces for storage like `t` (float for half types).
inline at::TensorOptions state_options(const Tensor& t) {
  return t.options().dtype(state_dtype(t.scalar_type()));
}

// A weight in the state type, contiguous (a copy for half types, else the weight itself).
inline Tensor state_weight(const Tensor& w, const at::TensorOptions& state) {
  return w.to(state.dtype()).contiguous();
}

// A state buffer as the op returns it: storage dtype, never aliasing the loop's buffers.
inline Tensor returned(const Tensor& state, const Tensor& like) {
  return state.to(like.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

// A state-dtype tensor in the storage dtype of `like` (itself unless half types).
inline Tensor as_storage(const Tensor& t, const Tensor& like) { return t.to(like.scalar_type()); }

// A workspace output in the state dtype: (T, B, width) when saved, (0) otherwise.
inline Tensor state_workspace(bool save, const at::TensorOptions& state, int64_t T, int64_t B,
                              int64_t width) {
  return at::empty(save ? at::IntArrayRef{T, B, width} : at::IntArrayRef{0}, state);
}

// C (+)= A · op(W); op(W) = W^T when transposed. C may be a view.
inline void step_gemm(Tensor C, const Tensor& A, const Tensor& W, bool transposed,
                      bool accumulate) {
  const Tensor w = transposed ? W.t() : W;
  if (accumulate) {
    C.addmm_(A, w);
  } else {
    at::mm_out(C, A, w);
  }
}

// A ping-pong pair (2, rows, width) of state buffers, slot 0 holding `initial`: step s reads
// slot s & 1 and writes (s + 1) & 1, so slot T & 1 holds the result.
struct PingPong {
  Tensor pair;
  std::array<Tensor, 2> slots;  // views made once per op rather than per step

  PingPong(const Tensor& initial, const at::TensorOptions& state)
      : pair(at::empty({2, initial.size(0), initial.size(1)}, state)),
        slots{pair[0], pair[1]} {
    slots[0].copy_(initial);
  }
  void* data(int64_t s) const { return slots[s & 1].data_ptr(); }
  const Tensor& slot(int64_t s) const { return slots[s & 1]; }
};

inline void* data_or_null(const Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }

// ============================================================================ RNN (tanh / relu)

// The loops take arguments checked by csrc/time_loop_op.h, with the sizes it read.

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_forward(const LayerSizes& sz, const Tensor& xproj_in,
                                                       const Tensor& h0_in, const Tensor& w_hh_in,
                                                       const std::optional<Tensor>& lengths,
                                                       bool reverse, bool relu,
                                                       bool save_workspace) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Device device(xproj_in);
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous();
  const Dtype dtype = dtype_of(xproj);
  const at::TensorOptions state = state_options(xproj);
  const Tensor w_hh = state_weight(w_hh_in, state);

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor activations = state_workspace(save_workspace, state, T, B, H);
  Tensor hprev = state_workspace(save_workspace, state, T, B, H);
  const PingPong h(h0_in, state);            // h_{t-1} / h_t
  Tensor pre_h = at::empty({B, H}, state);  // W_hh h_{t-1}

  for (int64_t s = 0; s < T; ++s) {
    step_gemm(pre_h, h.slot(s), w_hh, /*transposed=*/true, /*accumulate=*/false);
    const RnnForwardStep p{{sched, s, B, H}, relu, xproj.data_ptr(), pre_h.data_ptr(),
                           h.data(s), h.data(s + 1), output.data_ptr(),
                           data_or_null(activations), data_or_null(hprev)};
    device.check(rnn_forward_step(p, dtype, device.stream()));
  }
  return {output, returned(h.slot(T), xproj), activations, hprev};
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor> rnn_backward(const LayerSizes& sz,
                                                const Tensor& grad_output_in,
                                                const Tensor& grad_h_n, const Tensor& w_hh_in,
                                                const Tensor& activations_in,
                                                const Tensor& hprev_in,
                                                const std::optional<Tensor>& lengths,
                                                bool reverse, bool relu) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Device device(grad_output_in);
  const Schedule sched = make_schedule(T, reverse, lengths, grad_output_in);
  const Tensor grad_output = grad_output_in.contiguous(),
               activations = activations_in.contiguous(), hprev = hprev_in.contiguous();
  const Dtype dtype = dtype_of(grad_output);
  const at::TensorOptions state = state_options(grad_output);
  const Tensor w_hh = state_weight(w_hh_in, state);

  Tensor grad_xproj = at::empty({T, B, H}, grad_output.options());  // every row written
  const PingPong carry(grad_h_n, state);                         // d h_t / d h_{t-1}
  Tensor grad_pre = at::empty({B, H}, state);

  for (int64_t step = 0; step < T; ++step) {
    const RnnBackwardStep p{{sched, T - 1 - step, B, H}, relu, activations.data_ptr(),
                            grad_output.data_ptr(), carry.data(step), carry.data(step + 1),
                            grad_pre.data_ptr(), grad_xproj.data_ptr()};
    device.check(rnn_backward_step(p, dtype, device.stream()));
    // d h_{t-1} += d pre · W_hh   (inactive rows have d pre = 0 and pass d h through)
    step_gemm(carry.slot(step + 1), grad_pre, w_hh, /*transposed=*/false, /*accumulate=*/true);
  }
  return {grad_xproj, returned(carry.slot(T), grad_output),
          weight_grad(grad_xproj, as_storage(hprev, grad_output))};
}

// ============================================================================ GRU

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const LayerSizes& sz,
                                                       const Tensor& xproj_in, const Tensor& h0_in,
                                                       const Tensor& w_hh_in,
                                                       const std::optional<Tensor>& b_hh_in,
                                                       const std::optional<Tensor>& lengths,
                                                       bool reverse, bool save_workspace) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Device device(xproj_in);
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous();
  const Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous()
                                          : at::zeros({3 * H}, xproj.options());
  const Dtype dtype = dtype_of(xproj);
  const at::TensorOptions state = state_options(xproj);
  const Tensor w_hh = state_weight(w_hh_in, state);

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor gates_ws = state_workspace(save_workspace, state, T, B, 4 * H);
  Tensor hprev = state_workspace(save_workspace, state, T, B, H);
  const PingPong h(h0_in, state);
  Tensor pre_h = at::empty({B, 3 * H}, state);  // W_hh h_{t-1} (b_hh added in-kernel)

  for (int64_t s = 0; s < T; ++s) {
    step_gemm(pre_h, h.slot(s), w_hh, /*transposed=*/true, /*accumulate=*/false);
    const GruForwardStep p{{sched, s, B, H}, xproj.data_ptr(), pre_h.data_ptr(),
                           b_hh.data_ptr(), h.data(s), h.data(s + 1), output.data_ptr(),
                           data_or_null(gates_ws), data_or_null(hprev)};
    device.check(gru_forward_step(p, dtype, device.stream()));
  }
  return {output, returned(h.slot(T), xproj), gates_ws, hprev};
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const LayerSizes& sz, const Tensor& grad_output_in, const Tensor& grad_h_n,
    const Tensor& w_hh_in, const Tensor& gates_in, const Tensor& hprev_in,
    const std::optional<Tensor>& lengths, bool reverse) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Device device(grad_output_in);
  const Schedule sched = make_schedule(T, reverse, lengths, grad_output_in);
  const Tensor grad_output = grad_output_in.contiguous(), gates_ws = gates_in.contiguous(),
               hprev = hprev_in.contiguous();
  const Dtype dtype = dtype_of(grad_output);
  const at::TensorOptions state = state_options(grad_output);
  const Tensor w_hh = state_weight(w_hh_in, state);

  Tensor grad_xproj = at::empty({T, B, 3 * H}, grad_output.options());  // every row written
  Tensor grad_hproj = at::empty({T, B, 3 * H}, grad_output.options());  // every row written
  const PingPong carry(grad_h_n, state);
  Tensor grad_step = at::empty({B, 3 * H}, state);

  for (int64_t step = 0; step < T; ++step) {
    const GruBackwardStep p{{sched, T - 1 - step, B, H}, gates_ws.data_ptr(), hprev.data_ptr(),
                            grad_output.data_ptr(), carry.data(step), carry.data(step + 1),
                            grad_xproj.data_ptr(), grad_hproj.data_ptr(), grad_step.data_ptr()};
    device.check(gru_backward_step(p, dtype, device.stream()));
    step_gemm(carry.slot(step + 1), grad_step, w_hh, /*transposed=*/false, /*accumulate=*/true);
  }
  return {grad_xproj, returned(carry.slot(T), grad_output),
          weight_grad(grad_hproj, as_storage(hprev, grad_output)),
          grad_hproj.sum(at::IntArrayRef{0, 1})};
}

// ============================================================================ LSTM

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const LayerSizes& sz, const Tensor& xproj_in, const Tensor& h0_in, const Tensor& c0_in,
    const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in,
    const std::optional<Tensor>& lengths, bool reverse, bool save_workspace) {
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = w_hr_in.has_value();
  const Device device(xproj_in);
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous();
  const Dtype dtype = dtype_of(xproj);
  const at::TensorOptions state = state_options(xproj);
  const Tensor w_hh = state_weight(w_hh_in, state);
  const Tensor w_hr = proj ? state_weight(*w_hr_in, state) : Tensor();

  Tensor output = at::empty({T, B, P}, xproj.options());
  Tensor gates_ws = state_workspace(save_workspace, state, T, B, 4 * H);
  Tensor cells_ws = state_workspace(save_workspace, state, T, B, H);
  Tensor prev_cells_ws = state_workspace(save_workspace, state, T, B, H);
  Tensor hprev = state_workspace(save_workspace, state, T, B, P);
  const PingPong h(h0_in, state), c(c0_in, state);
  Tensor pre_h = at::empty({B, 4 * H}, state);  // W_hh h_{t-1}
  // o*tanh(c) before W_hr; zeros, as the kernel writes active rows only and the GEMM reads all.
  Tensor unprojected = at::zeros({proj ? B : 0, H}, state);

  for (int64_t s = 0; s < T; ++s) {
    step_gemm(pre_h, h.slot(s), w_hh, /*transposed=*/true, /*accumulate=*/false);
    const LstmForwardStep p{{sched, s, B, H}, P, proj, xproj.data_ptr(), pre_h.data_ptr(),
                            h.data(s), h.data(s + 1), c.data(s), c.data(s + 1),
                            output.data_ptr(), data_or_null(unprojected),
                            data_or_null(gates_ws), data_or_null(cells_ws),
                            data_or_null(prev_cells_ws), data_or_null(hprev)};
    device.check(lstm_forward_step(p, dtype, device.stream()));
    if (proj) {
      // h_t = W_hr (o*tanh(c_t)); inactive rows keep h_{t-1}.
      step_gemm(h.slot(s + 1), unprojected, w_hr, /*transposed=*/true, /*accumulate=*/false);
      const LstmProjectionStep q{{sched, s, B, H}, P, h.data(s), h.data(s + 1),
                                 output.data_ptr()};
      device.check(lstm_projection_step(q, dtype, device.stream()));
    }
  }
  return {output, returned(h.slot(T), xproj), returned(c.slot(T), xproj), gates_ws, cells_ws,
          prev_cells_ws, hprev};
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const LayerSizes& sz, const Tensor& grad_output_in, const Tensor& grad_h_n,
    const Tensor& grad_c_n, const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in,
    const Tensor& gates_in, const Tensor& cells_in, const Tensor& prev_cells_in,
    const Tensor& hprev_in, const std::optional<Tensor>& lengths, bool reverse) {
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = w_hr_in.has_value();
  const Device device(grad_output_in);
  const Schedule sched = make_schedule(T, reverse, lengths, grad_output_in);
  const Tensor grad_output = grad_output_in.contiguous(), gates_ws = gates_in.contiguous(),
               cells = cells_in.contiguous(), prev_cells = prev_cells_in.contiguous(),
               hprev = hprev_in.contiguous();
  const Dtype dtype = dtype_of(grad_output);
  const at::TensorOptions state = state_options(grad_output);
  const Tensor w_hh = state_weight(w_hh_in, state);
  const Tensor w_hr = proj ? state_weight(*w_hr_in, state) : Tensor();

  const at::TensorOptions storage = grad_output.options();
  Tensor grad_xproj = at::empty({T, B, 4 * H}, storage);  // every row written
  const PingPong carry(grad_h_n, state);                            // d h_t / d h_{t-1}
  Tensor grad_c = grad_c_n.to(state.dtype(), /*non_blocking=*/false, /*copy=*/true)
                      .contiguous();                                // d c, updated in place
  Tensor grad_step = at::empty({B, 4 * H}, state);
  // With proj_size: d h_t and o*tanh(c_t) for every slot (zero where inactive), for d W_hr.
  Tensor grad_h_all = at::empty({proj ? T : 0, B, P}, state);
  Tensor unprojected_all = at::empty({proj ? T : 0, B, H}, state);
  Tensor grad_h_step = at::empty({proj ? B : 0, P}, state);
  Tensor grad_unproj = at::empty({proj ? B : 0, H}, state);

  for (int64_t step = 0; step < T; ++step) {
    const int64_t s = T - 1 - step;
    if (proj) {
      const LstmBackwardProjectionStep q{{sched, s, B, H}, P, grad_output.data_ptr(),
                                         carry.data(step), grad_h_step.data_ptr(),
                                         grad_h_all.data_ptr()};
      device.check(lstm_backward_projection_step(q, dtype, device.stream()));
      // d(o*tanh(c_t)) = d h_t · W_hr
      step_gemm(grad_unproj, grad_h_step, w_hr, /*transposed=*/false, /*accumulate=*/false);
    }
    const LstmBackwardStep p{{sched, s, B, H}, P, proj, gates_ws.data_ptr(), cells.data_ptr(),
                             prev_cells.data_ptr(), grad_output.data_ptr(), carry.data(step),
                             data_or_null(grad_unproj), grad_c.data_ptr(), grad_step.data_ptr(),
                             grad_xproj.data_ptr(), data_or_null(unprojected_all),
                             carry.data(step + 1)};
    device.check(lstm_backward_step(p, dtype, device.stream()));
    // d h_{t-1} += d gates · W_hh   (inactive rows have zero gate grads and pass d h through)
    step_gemm(carry.slot(step + 1), grad_step, w_hh, /*transposed=*/false, /*accumulate=*/true);
  }
  Tensor grad_w_hr = proj ? as_storage(weight_grad(grad_h_all, unprojected_all), grad_output)
                          : at::empty({0}, storage);
  return {grad_xproj, returned(carry.slot(T), grad_output), returned(grad_c, grad_output),
          weight_grad(grad_xproj, as_storage(hprev, grad_output)), grad_w_hr};
}

template <typename Device>
struct DeviceLoops {
  static constexpr auto rnn_forward = &loops::rnn_forward<Device>;
  static constexpr auto rnn_backward = &loops::rnn_backward<Device>;
  static constexpr auto gru_forward = &loops::gru_forward<Device>;
  static constexpr auto gru_backward = &loops::gru_backward<Device>;
  static constexpr auto lstm_forward = &loops::lstm_forward<Device>;
  static constexpr auto lstm_backward = &loops::lstm_backward<Device>;
};

// Registers the layer op pair of a library (fusedrnn's CUDA kernels, or the emulation's) as
// these loops on `Device`.
template <typename Device>
void register_time_loops(torch::Library& m) {
  m.impl("time_loop_forward", &TimeLoopOps<DeviceLoops<Device>>::forward);
  m.impl("time_loop_backward", &TimeLoopOps<DeviceLoops<Device>>::backward);
}

}  // namespace loops
}  // namespace cuda
}  // namespace fusedrnn
