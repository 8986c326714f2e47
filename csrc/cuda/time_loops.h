// CUDA time loops of one layer and one direction, forward and backward, one of each for every
// cell (the cell's step kernels and the cell table, csrc/cell_table.h, make the difference):
// the per-step design. Per step: one GEMM through at::mm_out / addmm_ (on a GPU: torch's current
// cuBLAS handle and stream and its TF32 settings; for a diagonal recurrence one elementwise
// product instead), then ONE fused pointwise kernel (step_kernels.cu). Backward likewise, with
// the weight gradients as one GEMM at the end (a sum of products for a diagonal recurrence). No
// host synchronisation, no private stream or handle. The loops mirror csrc/cpu/recurrent_cpu.cpp
// step for step; shapes and workspaces are documented with the schemas in csrc/ops.cpp.
//
// Written once for two drivers, the `Device` template argument:
//   CudaDevice (recurrent_cuda.cpp): CUDA tensors, real launches on the current stream;
//   EmulatedDevice (csrc/emulation/emulated_ops.cpp, tests only): CPU tensors, the same kernels
//     run by the SIMT emulation and the GEMMs by torch on the CPU.
// A Device is constructed from a tensor of the op (device guard), and has stream(),
// check(cudaError_t) (raises with the error's text), max_cooperative_blocks() (how many blocks
// of a persistent kernel are resident at once) and max_shared_bytes() (a block's dynamic shared
// memory at most).
//
// fp16/bf16 storage: h, c, d h, d c, the recurrent GEMMs and the workspaces saved for backward
// are float ("state" buffers of step_kernels.h), with W_hh / W_hr cast to float once per call;
// inputs, outputs and returned gradients are stored in the half type.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <optional>
#include <string_view>
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

// gh (B, G*H) = the recurrent product of h (B, P) for the cell's recurrence: W_hh h (a GEMM),
// or u ⊙ h for each gate block (w_hh = u (G*H); P = H).
template <Recurrence R>
void recurrent_product(Tensor gh, const Tensor& h, const Tensor& w_hh) {
  if constexpr (R == Recurrence::Dense) {
    step_gemm(gh, h, w_hh, /*transposed=*/true, /*accumulate=*/false);
  } else {
    const int64_t B = h.size(0), H = h.size(1);
    Tensor gates = gh.view({B, -1, H});
    at::mul_out(gates, h.unsqueeze(1), w_hh.view({-1, H}));
  }
}

// dh (B, P) += grad_gh (B, G*H) back through that product: grad_gh · W_hh, or the sum over gate
// blocks of grad_gh ⊙ u.
template <Recurrence R>
void accumulate_recurrent_grad(Tensor dh, const Tensor& grad_gh, const Tensor& w_hh) {
  if constexpr (R == Recurrence::Dense) {
    step_gemm(dh, grad_gh, w_hh, /*transposed=*/false, /*accumulate=*/true);
  } else if (grad_gh.size(1) == dh.size(1)) {  // one gate block
    dh.addcmul_(grad_gh, w_hh);
  } else {
    const int64_t B = dh.size(0), H = dh.size(1);
    dh.add_((grad_gh.view({B, -1, H}) * w_hh.view({-1, H})).sum(1));
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

// The cell's workspace as the step kernels see it, from the op's saved tensors (or none).
inline StepWorkspace step_workspace(const CellSpec& cell, const std::vector<Tensor>& parts) {
  StepWorkspace ws{};
  ws.cell_parts = cell.workspace_parts - 1;
  for (int i = 0; i < ws.cell_parts; ++i) {
    ws.parts[i] = data_or_null(parts[i]);
    ws.units[i] = cell.workspace[i].units;
  }
  ws.hprev = data_or_null(parts[ws.cell_parts]);
  return ws;
}

// ============================================================================ forward

// The launch shape of a persistent loop (PersistentForward / PersistentBackward), none (blocks 0)
// where what its blocks keep does not fit their shared memory (max_shared_bytes each). As many
// blocks as the device keeps resident at once (max_blocks), each owning `units` hidden units and
// `proj_units` of the P units of a projection (= units without one), and keeping (state values):
//   forward:  W_hh's rows of its units, G * units * P (G * units: a diagonal recurrence), and
//             W_hr's rows of its P units, proj_units * H, where projected;
//   backward: W_hh's columns of its P units, proj_units * G*H (G * units: diagonal), and W_hr's
//             columns of its units, units * P, where projected.
// A normalised cell's blocks have kPersistentMaxThreads threads (its row reductions), and that
// many doubles of static shared memory besides.
struct PersistentShape {
  int64_t blocks = 0, units = 0, proj_units = 0;
  int threads = 0;
  size_t shared_bytes = 0;
};
template <Cell C>
PersistentShape persistent_shape(const LayerSizes& sz, bool proj, bool backward,
                                 size_t state_bytes, int64_t max_blocks,
                                 size_t max_shared_bytes) {
  constexpr CellSpec cell = spec(C);
  constexpr int64_t G = cell.gates;
  const int64_t H = sz.H, P = sz.P;
  if (sz.B == 0 || H == 0 || max_blocks < 1) return {};
  const int64_t units = (H + max_blocks - 1) / max_blocks;
  const int64_t blocks = (H + units - 1) / units;
  const int64_t proj_units = proj ? (P + blocks - 1) / blocks : units;
  int64_t values = G * units;  // a diagonal recurrence's u
  if (!cell.diagonal()) {
    values = backward ? proj_units * G * H + (proj ? units * P : 0)
                      : G * units * P + (proj ? proj_units * H : 0);
  }
  const size_t reserved = cell.normalized() ? kPersistentMaxThreads * sizeof(double) : 0;
  const size_t shared = static_cast<size_t>(values) * state_bytes;
  if (shared + reserved > max_shared_bytes) return {};
  // A block's warp elements per step (b, unit): a warp each, up to kPersistentMaxThreads.
  const int64_t elements = sz.B * std::max(units, proj_units);
  const int threads = cell.normalized()
                          ? kPersistentMaxThreads
                          : static_cast<int>(std::min<int64_t>(kPersistentMaxThreads,
                                                               32 * elements));
  return {blocks, units, proj_units, threads, shared};
}

// Persistent launches so far, forward and backward (the emulation's tests read it: the path
// they check ran).
inline std::atomic<int64_t> persistent_launches{0};

// Whether a persistent launch ran (its error checked), or left the loop to the per-step path:
// a cooperative grid the device cannot keep resident (MPS limits, SMs another context holds) is
// not an error of the op.
template <typename Device>
bool persistent_ran(const Device& device, cudaError_t err) {
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // cleared: the per-step path runs instead
    return false;
  }
  device.check(err);
  persistent_launches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// Whether a call asks for the persistent loop: by its cuda_loop, else (the default) by
// FUSEDRNN_CUDA_PERSISTENT=1 (opt-in until timed on a GPU).
inline bool persistent_enabled(CudaLoop loop) {
  if (loop != CudaLoop::kDefault) return loop == CudaLoop::kPersistent;
  const char* value = std::getenv("FUSEDRNN_CUDA_PERSISTENT");
  return value != nullptr && std::string_view(value) == "1";
}

// The persistent launch for this loop where one is asked for and applies, else none (blocks 0).
template <Cell C, typename Device>
PersistentShape persistent_plan(const Device& device, const LayerSizes& sz, bool proj,
                                bool backward, const at::TensorOptions& state, CudaLoop loop) {
  if (!persistent_enabled(loop)) return {};
  return persistent_shape<C>(sz, proj, backward, state.dtype().itemsize(),
                             device.max_cooperative_blocks(), device.max_shared_bytes());
}

// One layer and direction of cell C: per step the recurrent product (recurrent_product), the
// cell's step kernel, and where h is projected the W_hr GEMM and the projection kernel.
template <typename Device, Cell C>
TimeLoopForwardResult forward(const ForwardArgs& a) {
  constexpr CellSpec cell = spec(C);
  constexpr int64_t G = cell.gates;
  const LayerSizes& sz = a.sz;
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = a.w_hr.has_value(), save_workspace = a.save_workspace;
  const Device device(a.xproj);
  const Schedule sched = make_schedule(T, a.reverse, a.lengths, a.xproj);
  const Tensor xproj = a.xproj.contiguous();
  const Dtype dtype = dtype_of(xproj);
  const at::TensorOptions state = state_options(xproj);
  const Tensor w_hh = state_weight(a.w_hh, state);
  const Tensor w_hr = proj ? state_weight(*a.w_hr, state) : Tensor();
  // The step parameters (the bias first); zeros when absent (never for a normalized cell,
  // whose gains the checks require), so the kernels add the bias without a branch.
  const Tensor params = a.step_params.has_value() ? a.step_params->contiguous()
                                                  : at::zeros({G * H}, xproj.options());

  Tensor output = at::empty({T, B, P}, xproj.options());
  std::vector<Tensor> saved;
  for (int i = 0; i < cell.workspace_parts; ++i) {
    saved.push_back(
        state_workspace(save_workspace, state, T, B, workspace_width(cell.workspace[i], sz)));
  }
  const PingPong h(a.h0, state);  // h_{t-1} / h_t
  const std::optional<PingPong> c =
      cell.has_cell_state() ? std::optional<PingPong>(std::in_place, *a.c0, state)
                            : std::nullopt;
  Tensor pre_h = at::empty({B, G * H}, state);  // W_hh h_{t-1} (u ⊙ h_{t-1}: diagonal)
  // h before W_hr; zeros, as the kernel writes active rows only and the GEMM reads all.
  Tensor unprojected = at::zeros({proj ? B : 0, H}, state);

  ForwardStep p{};
  p.at = {sched, 0, B, H, P};
  p.proj = proj;
  p.x = xproj.data_ptr();
  p.gh = pre_h.data_ptr();
  p.params = params.data_ptr();
  p.out = output.data_ptr();
  p.unprojected = data_or_null(unprojected);
  p.ws = step_workspace(cell, saved);
  const PersistentShape persistent =
      persistent_plan<C>(device, sz, proj, /*backward=*/false, state, a.cuda_loop);
  bool ran = false;  // the persistent loop
  if (persistent.blocks > 0 && T > 0) {  // one launch for every step
    const PersistentForward q{p,
                              T,
                              pre_h.data_ptr(),
                              w_hh.data_ptr(),
                              proj ? w_hr.data_ptr() : nullptr,
                              {h.data(0), h.data(1)},
                              {c ? c->data(0) : nullptr, c ? c->data(1) : nullptr},
                              persistent.units,
                              persistent.proj_units};
    ran = persistent_ran(device, persistent_forward<C>(q, persistent.blocks, persistent.threads,
                                                       persistent.shared_bytes, dtype,
                                                       device.stream()));
  }
  for (int64_t s = 0; s < T && !ran; ++s) {
    recurrent_product<cell.recurrence>(pre_h, h.slot(s), w_hh);
    p.at.s = s;
    p.h_cur = h.data(s);
    p.h_next = h.data(s + 1);
    p.c_cur = c ? c->data(s) : nullptr;
    p.c_next = c ? c->data(s + 1) : nullptr;
    device.check(forward_step<C>(p, dtype, device.stream()));
    if (proj) {
      // h_t = W_hr (h before W_hr); inactive rows keep h_{t-1}.
      step_gemm(h.slot(s + 1), unprojected, w_hr, /*transposed=*/true, /*accumulate=*/false);
      const ProjectionStep q{{sched, s, B, H, P}, h.data(s), h.data(s + 1), output.data_ptr()};
      device.check(projection_step(q, dtype, device.stream()));
    }
  }
  Tensor c_n = c ? returned(c->slot(T), xproj) : at::empty({0}, xproj.options());
  return {output, returned(h.slot(T), xproj), c_n,
          save_workspace ? saved : std::vector<Tensor>{}};
}

// ============================================================================ backward

// One layer and direction of cell C, backward: per step, where h is projected, the d h_t kernel
// and the W_hr GEMM; the cell's step kernel; d h_{t-1} += d(W_hh h_{t-1}) · W_hh
// (accumulate_recurrent_grad). The weight gradients are one GEMM over all steps at the end
// (recurrent_weight_grad).
template <typename Device, Cell C>
TimeLoopBackwardResult backward(const BackwardArgs& a) {
  constexpr CellSpec cell = spec(C);
  constexpr int64_t G = cell.gates;
  constexpr bool own_recurrent_grad = cell.own_recurrent_grad();
  const LayerSizes& sz = a.sz;
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = a.w_hr.has_value();
  const Device device(a.grad_output);
  const Schedule sched = make_schedule(T, a.reverse, a.lengths, a.grad_output);
  const Tensor grad_output = a.grad_output.contiguous();
  std::vector<Tensor> saved;
  for (const Tensor& t : a.workspace) saved.push_back(t.contiguous());
  const Tensor& hprev = saved.back();
  const Dtype dtype = dtype_of(grad_output);
  const at::TensorOptions state = state_options(grad_output);
  const at::TensorOptions storage = grad_output.options();
  const Tensor w_hh = state_weight(a.w_hh, state);
  const Tensor w_hr = proj ? state_weight(*a.w_hr, state) : Tensor();

  Tensor grad_xproj = at::empty({T, B, G * H}, storage);  // every row written
  Tensor grad_hproj = at::empty({own_recurrent_grad ? T : 0, B, G * H}, storage);
  const PingPong carry(a.grad_h_n, state);  // d h_t / d h_{t-1}
  Tensor grad_c = cell.has_cell_state()  // d c, updated in place
                      ? a.grad_c_n->to(state.dtype(), /*non_blocking=*/false, /*copy=*/true)
                            .contiguous()
                      : at::empty({0}, state);
  Tensor grad_step = at::empty({B, G * H}, state);
  // Each row's share of d step_params where the cell's step writes it (zero where inactive).
  constexpr int64_t U = cell.step_param_row_units();
  Tensor grad_param_rows = at::empty({U > 0 ? T : 0, B, U * H}, state);
  const Tensor params = a.step_params.has_value() ? a.step_params->contiguous() : Tensor();
  // Where h is projected: d h_t and the h before W_hr for every slot (zero where inactive), for
  // d W_hr; this step's d h_t and d(h before W_hr).
  Tensor grad_h_all = at::empty({proj ? T : 0, B, P}, state);
  Tensor unprojected_all = at::empty({proj ? T : 0, B, H}, state);
  Tensor grad_h_step = at::empty({proj ? B : 0, P}, state);
  Tensor grad_unproj = at::empty({proj ? B : 0, H}, state);

  BackwardStep p{};
  p.at = {sched, 0, B, H, P};
  p.proj = proj;
  p.ws = step_workspace(cell, saved);
  p.params = params.defined() ? params.data_ptr() : nullptr;
  p.grad_params = data_or_null(grad_param_rows);
  p.grad_out = grad_output.data_ptr();
  p.grad_unproj = data_or_null(grad_unproj);
  p.dc = data_or_null(grad_c);
  p.grad_step = grad_step.data_ptr();
  p.grad_x = grad_xproj.data_ptr();
  p.grad_hproj = data_or_null(grad_hproj);
  p.unprojected_all = data_or_null(unprojected_all);
  const PersistentShape persistent =
      persistent_plan<C>(device, sz, proj, /*backward=*/true, state, a.cuda_loop);
  bool ran = false;  // the persistent loop
  if (persistent.blocks > 0 && T > 0) {  // one launch for every step
    Tensor grad_steps = at::empty({2, B, G * H}, state);  // by step parity
    const PersistentBackward q{p,
                               T,
                               w_hh.data_ptr(),
                               proj ? w_hr.data_ptr() : nullptr,
                               {carry.data(0), carry.data(1)},
                               {grad_steps[0].data_ptr(), grad_steps[1].data_ptr()},
                               data_or_null(grad_h_step),
                               data_or_null(grad_h_all),
                               data_or_null(grad_unproj),
                               persistent.units,
                               persistent.proj_units};
    ran = persistent_ran(device, persistent_backward<C>(q, persistent.blocks, persistent.threads,
                                                        persistent.shared_bytes, dtype,
                                                        device.stream()));
  }
  for (int64_t step = 0; step < T && !ran; ++step) {
    const int64_t s = T - 1 - step;
    if (proj) {
      const BackwardProjectionStep q{{sched, s, B, H, P}, grad_output.data_ptr(),
                                     carry.data(step), grad_h_step.data_ptr(),
                                     grad_h_all.data_ptr()};
      device.check(backward_projection_step(q, dtype, device.stream()));
      // d(h before W_hr) = d h_t · W_hr
      step_gemm(grad_unproj, grad_h_step, w_hr, /*transposed=*/false, /*accumulate=*/false);
    }
    p.at.s = s;
    p.dh = carry.data(step);
    p.dh_prev = carry.data(step + 1);
    device.check(backward_step<C>(p, dtype, device.stream()));
    // d h_{t-1} += d gates · W_hh   (inactive rows have zero gate grads and pass d h through)
    accumulate_recurrent_grad<cell.recurrence>(carry.slot(step + 1), grad_step, w_hh);
  }
  const Tensor& recurrent_grad = own_recurrent_grad ? grad_hproj : grad_xproj;
  const auto none = [&] { return at::empty({0}, storage); };  // one per output: no aliases
  return {grad_xproj,
          returned(carry.slot(T), grad_output),
          cell.has_cell_state() ? returned(grad_c, grad_output) : none(),
          recurrent_weight_grad(cell, recurrent_grad, as_storage(hprev, grad_output)),
          step_param_grads(cell, grad_xproj, recurrent_grad, grad_param_rows),
          proj ? as_storage(weight_grad(grad_h_all, unprojected_all), grad_output) : none()};
}

// The loops above as TimeLoopOps (csrc/time_loop_op.h) calls them.
template <typename Device>
struct DeviceLoops {
  template <Cell C>
  static TimeLoopForwardResult forward(const ForwardArgs& a) {
    return loops::forward<Device, C>(a);
  }
  template <Cell C>
  static TimeLoopBackwardResult backward(const BackwardArgs& a) {
    return loops::backward<Device, C>(a);
  }
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
