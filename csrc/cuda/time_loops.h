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
// of a persistent kernel are resident at once), max_shared_bytes() (a block's dynamic shared
// memory at most) and compute_capability() (10 major + minor).
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
// With tensor_cores > 0 (16-bit storage, a dense recurrence on sm_80 on: the terms a state value
// enters the products in) W_hh's part is TensorCoreTiles in the storage type instead where they
// fit (their rows padded to 32: a block of a few units may need more than the float layout).
// A normalised cell's blocks have kPersistentMaxThreads threads (its row reductions), and that
// many doubles of static shared memory besides.
struct PersistentShape {
  int64_t blocks = 0, units = 0, proj_units = 0;
  int threads = 0;
  size_t shared_bytes = 0;
  bool tensor_cores = false;
};
template <Cell C>
PersistentShape persistent_shape(const LayerSizes& sz, bool proj, bool backward,
                                 size_t state_bytes, int64_t tensor_cores, int64_t max_blocks,
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
  size_t shared = static_cast<size_t>(values) * state_bytes;
  const size_t reserved = cell.normalized() ? kPersistentMaxThreads * sizeof(double) : 0;
  bool on_tensor_cores = false;
  if (tensor_cores > 0) {  // W_hh's part as tiles in the 16-bit storage type, where they fit
    const TensorCoreTiles tiles = backward ? TensorCoreTiles(proj_units, G * H, tensor_cores)
                                           : TensorCoreTiles(G * units, P, tensor_cores);
    const int64_t w_r = proj ? (backward ? units * P : proj_units * H) : 0;
    const size_t tiled = tiles.bytes() + static_cast<size_t>(w_r) * state_bytes;
    on_tensor_cores = tiled + reserved <= max_shared_bytes;
    if (on_tensor_cores) shared = tiled;
  }
  if (shared + reserved > max_shared_bytes) return {};
  // A block's warp elements per step (b, unit): a warp each, up to kPersistentMaxThreads.
  const int64_t elements = sz.B * std::max(units, proj_units);
  const int threads = cell.normalized()
                          ? kPersistentMaxThreads
                          : static_cast<int>(std::min<int64_t>(kPersistentMaxThreads,
                                                               32 * elements));
  return {blocks, units, proj_units, threads, shared, on_tensor_cores};
}

// Loops run persistently so far, forward and backward (each direction of a two-direction launch
// counts), the launches that ran a layer's two directions at once, and the loops whose products
// ran on tensor cores (the emulation's tests and bench read them: the path they check ran).
inline std::atomic<int64_t> persistent_launches{0};
inline std::atomic<int64_t> bidirectional_persistent_launches{0};
inline std::atomic<int64_t> tensor_core_loops{0};  // of those loops, the ones on tensor cores

// Whether a persistent launch of `directions` loops ran (its error checked), or left them to
// their own launches: a cooperative grid the device cannot keep resident (MPS limits, SMs another
// context holds) is not an error of the op.
template <typename Device>
bool persistent_ran(const Device& device, cudaError_t err, int directions, bool tensor_cores) {
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // cleared: the loops run otherwise
    return false;
  }
  device.check(err);
  persistent_launches.fetch_add(directions, std::memory_order_relaxed);
  if (directions > 1) bidirectional_persistent_launches.fetch_add(1, std::memory_order_relaxed);
  if (tensor_cores) tensor_core_loops.fetch_add(directions, std::memory_order_relaxed);
  return true;
}

// Whether a call asks for the persistent loop: by its cuda_loop, else (the default) by
// FUSEDRNN_CUDA_PERSISTENT=1 (opt-in until timed on a GPU).
inline bool persistent_enabled(CudaLoop loop) {
  if (loop != CudaLoop::kDefault) return loop == CudaLoop::kPersistent;
  const char* value = std::getenv("FUSEDRNN_CUDA_PERSISTENT");
  return value != nullptr && std::string_view(value) == "1";
}

// The persistent launch for a loop over these sizes (storage like `like`) where one is asked
// for and applies, on 1 / `share` of the blocks the device keeps resident (2: a layer's two
// directions at once), else none (blocks 0).
template <Cell C, typename Device>
PersistentShape persistent_plan(const Device& device, const LayerSizes& sz, bool proj,
                                bool backward, const Tensor& like, CudaLoop loop,
                                int64_t share = 1) {
  if (sz.T == 0 || !persistent_enabled(loop)) return {};
  // (half types' wmma need sm_80, in the device and in the code that runs on it:
  // step_kernels.cu, kTensorCores)
  static const int code_arch = persistent_code_arch();
  const Dtype storage = dtype_of(like);
  const int64_t tensor_cores = !spec(C).diagonal() &&
                                       (storage == Dtype::Half || storage == Dtype::BFloat16) &&
                                       device.compute_capability() >= 80 && code_arch >= 80
                                   ? tensor_core_terms(storage)
                                   : 0;
  return persistent_shape<C>(sz, proj, backward, state_options(like).dtype().itemsize(),
                             tensor_cores, device.max_cooperative_blocks() / share,
                             device.max_shared_bytes());
}

// A loop's persistent launch (forward or backward) for one direction, or for both at once.
template <Cell C, typename Device, typename Persistent>
bool launch_persistent_loops(const Device& device, const Persistent* loops, int directions,
                             const PersistentShape& shape, Dtype dtype) {
  cudaError_t err;
  if constexpr (std::is_same_v<Persistent, PersistentForward>) {
    err = persistent_forward<C>(loops, directions, shape.blocks, shape.threads,
                                shape.shared_bytes, dtype, device.stream());
  } else {
    err = persistent_backward<C>(loops, directions, shape.blocks, shape.threads,
                                 shape.shared_bytes, dtype, device.stream());
  }
  return persistent_ran(device, err, directions, shape.tensor_cores);
}

// One layer and direction of cell C, forward: its buffers (made by the constructor), then (run,
// run_both) one persistent launch for every step, alone or beside the other direction's, or per
// step the recurrent product (recurrent_product), the cell's step kernel, and where h is
// projected the W_hr GEMM and the projection kernel.
template <typename Device, Cell C>
class ForwardLoop {
  static constexpr CellSpec cell = spec(C);
  static constexpr int64_t G = cell.gates;

 public:
  static constexpr Cell kCell = C;

  explicit ForwardLoop(const ForwardArgs& a)
      : a_(a), sz_(a.sz), proj_(a.w_hr.has_value()), device_(a.xproj),
        sched_(make_schedule(sz_.T, a.reverse, a.lengths, a.xproj)),
        xproj_(a.xproj.contiguous()), dtype_(dtype_of(xproj_)), state_(state_options(xproj_)),
        w_hh_(state_weight(a.w_hh, state_)),
        w_hr_(proj_ ? state_weight(*a.w_hr, state_) : Tensor()),
        // The step parameters (the bias first); zeros when absent (never for a normalized
        // cell, whose gains the checks require), so the kernels add the bias without a branch.
        params_(a.step_params.has_value() ? a.step_params->contiguous()
                                          : at::zeros({G * sz_.H}, xproj_.options())),
        output_(at::empty({sz_.T, sz_.B, sz_.P}, xproj_.options())),
        h_(a.h0, state_),  // h_{t-1} / h_t
        c_(cell.has_cell_state() ? std::optional<PingPong>(std::in_place, *a.c0, state_)
                                 : std::nullopt),
        pre_h_(at::empty({sz_.B, G * sz_.H}, state_)),  // W_hh h_{t-1} (u ⊙ h_{t-1}: diagonal)
        // h before W_hr; zeros, as the kernel writes active rows only and the GEMM reads all.
        unprojected_(at::zeros({proj_ ? sz_.B : 0, sz_.H}, state_)) {
    for (int i = 0; i < cell.workspace_parts; ++i) {
      saved_.push_back(state_workspace(a.save_workspace, state_, sz_.T, sz_.B,
                                       workspace_width(cell.workspace[i], sz_)));
    }
    step_.at = {sched_, 0, sz_.B, sz_.H, sz_.P};
    step_.proj = proj_;
    step_.x = xproj_.data_ptr();
    step_.gh = pre_h_.data_ptr();
    step_.params = params_.data_ptr();
    step_.out = output_.data_ptr();
    step_.unprojected = data_or_null(unprojected_);
    step_.ws = step_workspace(cell, saved_);
  }

  // The persistent plan of this loop on 1 / share of the device's blocks (none: blocks 0).
  PersistentShape plan(int64_t share = 1) const {
    return persistent_plan<C>(device_, sz_, proj_, /*backward=*/false, xproj_, a_.cuda_loop,
                              share);
  }

  PersistentForward persistent(const PersistentShape& shape) const {
    return {step_,
            sz_.T,
            pre_h_.data_ptr(),
            w_hh_.data_ptr(),
            proj_ ? w_hr_.data_ptr() : nullptr,
            {h_.data(0), h_.data(1)},
            {c_ ? c_->data(0) : nullptr, c_ ? c_->data(1) : nullptr},
            shape.units,
            shape.proj_units,
            shape.tensor_cores};
  }

  void run_per_step() {
    ForwardStep p = step_;
    for (int64_t s = 0; s < sz_.T; ++s) {
      recurrent_product<cell.recurrence>(pre_h_, h_.slot(s), w_hh_);
      p.at.s = s;
      p.h_cur = h_.data(s);
      p.h_next = h_.data(s + 1);
      p.c_cur = c_ ? c_->data(s) : nullptr;
      p.c_next = c_ ? c_->data(s + 1) : nullptr;
      device_.check(forward_step<C>(p, dtype_, device_.stream()));
      if (proj_) {
        // h_t = W_hr (h before W_hr); inactive rows keep h_{t-1}.
        step_gemm(h_.slot(s + 1), unprojected_, w_hr_, /*transposed=*/true,
                  /*accumulate=*/false);
        const ProjectionStep q{{sched_, s, sz_.B, sz_.H, sz_.P}, h_.data(s), h_.data(s + 1),
                               output_.data_ptr()};
        device_.check(projection_step(q, dtype_, device_.stream()));
      }
    }
  }

  TimeLoopForwardResult result() const {
    Tensor c_n = c_ ? returned(c_->slot(sz_.T), xproj_) : at::empty({0}, xproj_.options());
    return {output_, returned(h_.slot(sz_.T), xproj_), c_n,
            a_.save_workspace ? saved_ : std::vector<Tensor>{}};
  }

  const Device& device() const { return device_; }
  Dtype dtype() const { return dtype_; }

 private:
  const ForwardArgs& a_;
  const LayerSizes& sz_;
  const bool proj_;
  const Device device_;
  const Schedule sched_;
  const Tensor xproj_;
  const Dtype dtype_;
  const at::TensorOptions state_;
  const Tensor w_hh_, w_hr_, params_;
  Tensor output_;
  std::vector<Tensor> saved_;
  const PingPong h_;
  const std::optional<PingPong> c_;
  Tensor pre_h_, unprojected_;
  ForwardStep step_{};
};

// One layer and direction of cell C, backward: its buffers, then (run, run_both) one persistent
// launch, alone or beside the other direction's, or per step: where h is projected the d h_t
// kernel and the W_hr GEMM; the cell's step kernel; d h_{t-1} += d(W_hh h_{t-1}) · W_hh
// (accumulate_recurrent_grad). The weight gradients are one GEMM over all steps at the end
// (recurrent_weight_grad).
template <typename Device, Cell C>
class BackwardLoop {
  static constexpr CellSpec cell = spec(C);
  static constexpr int64_t G = cell.gates;
  static constexpr bool own_recurrent_grad = cell.own_recurrent_grad();
  // Each row's share of d step_params where the cell's step writes it (zero where inactive).
  static constexpr int64_t U = cell.step_param_row_units();

 public:
  static constexpr Cell kCell = C;

  explicit BackwardLoop(const BackwardArgs& a)
      : a_(a), sz_(a.sz), proj_(a.w_hr.has_value()), device_(a.grad_output),
        sched_(make_schedule(sz_.T, a.reverse, a.lengths, a.grad_output)),
        grad_output_(a.grad_output.contiguous()), dtype_(dtype_of(grad_output_)),
        state_(state_options(grad_output_)), storage_(grad_output_.options()),
        w_hh_(state_weight(a.w_hh, state_)),
        w_hr_(proj_ ? state_weight(*a.w_hr, state_) : Tensor()),
        params_(a.step_params.has_value() ? a.step_params->contiguous() : Tensor()) {
    const int64_t T = sz_.T, B = sz_.B, H = sz_.H, P = sz_.P;
    for (const Tensor& t : a.workspace) saved_.push_back(t.contiguous());
    grad_xproj_ = at::empty({T, B, G * H}, storage_);  // every row written
    grad_hproj_ = at::empty({own_recurrent_grad ? T : 0, B, G * H}, storage_);
    carry_.emplace(a.grad_h_n, state_);  // d h_t / d h_{t-1}
    grad_c_ = cell.has_cell_state()  // d c, updated in place
                  ? a.grad_c_n->to(state_.dtype(), /*non_blocking=*/false, /*copy=*/true)
                        .contiguous()
                  : at::empty({0}, state_);
    grad_steps_ = at::empty({2, B, G * H}, state_);  // by step parity (the persistent loop's)
    grad_param_rows_ = at::empty({U > 0 ? T : 0, B, U * H}, state_);
    // Where h is projected: d h_t and the h before W_hr for every slot (zero where inactive),
    // for d W_hr; this step's d h_t and d(h before W_hr).
    grad_h_all_ = at::empty({proj_ ? T : 0, B, P}, state_);
    unprojected_all_ = at::empty({proj_ ? T : 0, B, H}, state_);
    grad_h_step_ = at::empty({proj_ ? B : 0, P}, state_);
    grad_unproj_ = at::empty({proj_ ? B : 0, H}, state_);

    step_.at = {sched_, 0, B, H, P};
    step_.proj = proj_;
    step_.ws = step_workspace(cell, saved_);
    step_.params = params_.defined() ? params_.data_ptr() : nullptr;
    step_.grad_params = data_or_null(grad_param_rows_);
    step_.grad_out = grad_output_.data_ptr();
    step_.grad_unproj = data_or_null(grad_unproj_);
    step_.dc = data_or_null(grad_c_);
    step_.grad_step = grad_steps_[0].data_ptr();
    step_.grad_x = grad_xproj_.data_ptr();
    step_.grad_hproj = data_or_null(grad_hproj_);
    step_.unprojected_all = data_or_null(unprojected_all_);
  }

  PersistentShape plan(int64_t share = 1) const {
    return persistent_plan<C>(device_, sz_, proj_, /*backward=*/true, grad_output_,
                              a_.cuda_loop, share);
  }

  PersistentBackward persistent(const PersistentShape& shape) const {
    return {step_,
            sz_.T,
            w_hh_.data_ptr(),
            proj_ ? w_hr_.data_ptr() : nullptr,
            {carry_->data(0), carry_->data(1)},
            {grad_steps_[0].data_ptr(), grad_steps_[1].data_ptr()},
            data_or_null(grad_h_step_),
            data_or_null(grad_h_all_),
            data_or_null(grad_unproj_),
            shape.units,
            shape.proj_units,
            shape.tensor_cores};
  }

  void run_per_step() {
    BackwardStep p = step_;
    const Tensor grad_step = grad_steps_[0];
    const PingPong& carry = *carry_;
    for (int64_t step = 0; step < sz_.T; ++step) {
      const int64_t s = sz_.T - 1 - step;
      if (proj_) {
        const BackwardProjectionStep q{{sched_, s, sz_.B, sz_.H, sz_.P},
                                       grad_output_.data_ptr(), carry.data(step),
                                       grad_h_step_.data_ptr(), grad_h_all_.data_ptr()};
        device_.check(backward_projection_step(q, dtype_, device_.stream()));
        // d(h before W_hr) = d h_t · W_hr
        step_gemm(grad_unproj_, grad_h_step_, w_hr_, /*transposed=*/false,
                  /*accumulate=*/false);
      }
      p.at.s = s;
      p.dh = carry.data(step);
      p.dh_prev = carry.data(step + 1);
      device_.check(backward_step<C>(p, dtype_, device_.stream()));
      // d h_{t-1} += d gates · W_hh   (inactive rows have zero gate grads and pass d h through)
      accumulate_recurrent_grad<cell.recurrence>(carry.slot(step + 1), grad_step, w_hh_);
    }
  }

  TimeLoopBackwardResult result() const {
    const Tensor& recurrent_grad = own_recurrent_grad ? grad_hproj_ : grad_xproj_;
    const auto none = [&] { return at::empty({0}, storage_); };  // one per output: no aliases
    const Tensor& hprev = saved_.back();
    return {grad_xproj_,
            returned(carry_->slot(sz_.T), grad_output_),
            cell.has_cell_state() ? returned(grad_c_, grad_output_) : none(),
            recurrent_weight_grad(cell, recurrent_grad, as_storage(hprev, grad_output_)),
            step_param_grads(cell, grad_xproj_, recurrent_grad, grad_param_rows_),
            proj_ ? as_storage(weight_grad(grad_h_all_, unprojected_all_), grad_output_)
                  : none()};
  }

  const Device& device() const { return device_; }
  Dtype dtype() const { return dtype_; }

 private:
  const BackwardArgs& a_;
  const LayerSizes& sz_;
  const bool proj_;
  const Device device_;
  const Schedule sched_;
  const Tensor grad_output_;
  const Dtype dtype_;
  const at::TensorOptions state_, storage_;
  const Tensor w_hh_, w_hr_, params_;
  std::vector<Tensor> saved_;
  Tensor grad_xproj_, grad_hproj_, grad_c_, grad_steps_, grad_param_rows_;
  Tensor grad_h_all_, unprojected_all_, grad_h_step_, grad_unproj_;
  std::optional<PingPong> carry_;
  BackwardStep step_{};
};

// A loop's every step (Loop: ForwardLoop or BackwardLoop): one persistent launch where planned
// and the device takes it, else per step.
template <typename Loop>
void run(Loop& loop) {
  const PersistentShape shape = loop.plan();
  if (shape.blocks > 0) {
    const auto q = loop.persistent(shape);
    if (launch_persistent_loops<Loop::kCell>(loop.device(), &q, 1, shape, loop.dtype())) return;
  }
  loop.run_per_step();
}

template <typename Device, Cell C>
TimeLoopForwardResult forward(const ForwardArgs& a) {
  ForwardLoop<Device, C> loop(a);
  run(loop);
  return loop.result();
}

template <typename Device, Cell C>
TimeLoopBackwardResult backward(const BackwardArgs& a) {
  BackwardLoop<Device, C> loop(a);
  run(loop);
  return loop.result();
}

// A layer's two directions (the same cell, sizes, dtype, device and cuda_loop: the pair ops
// check it, so one plan is both's): one persistent launch for both, each on half the device's
// blocks, where the loops are planned on that half and the device takes the grid; else each its
// own way (run).
template <typename Loop>
void run_both(Loop& forward_direction, Loop& reverse_direction) {
  const PersistentShape shape = forward_direction.plan(/*share=*/2);
  if (shape.blocks > 0) {
    const std::array loops{forward_direction.persistent(shape),
                           reverse_direction.persistent(shape)};
    if (launch_persistent_loops<Loop::kCell>(forward_direction.device(), loops.data(), 2, shape,
                                             forward_direction.dtype())) {
      return;
    }
  }
  run(forward_direction);
  run(reverse_direction);
}

template <typename Device, Cell C>
std::array<TimeLoopForwardResult, 2> forward_both(const ForwardArgs& a0, const ForwardArgs& a1) {
  ForwardLoop<Device, C> d0(a0), d1(a1);
  run_both(d0, d1);
  return {d0.result(), d1.result()};
}

template <typename Device, Cell C>
std::array<TimeLoopBackwardResult, 2> backward_both(const BackwardArgs& a0,
                                                   const BackwardArgs& a1) {
  BackwardLoop<Device, C> d0(a0), d1(a1);
  run_both(d0, d1);
  return {d0.result(), d1.result()};
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
  template <Cell C>
  static std::array<TimeLoopForwardResult, 2> forward_both(const ForwardArgs& a0,
                                                           const ForwardArgs& a1) {
    return loops::forward_both<Device, C>(a0, a1);
  }
  template <Cell C>
  static std::array<TimeLoopBackwardResult, 2> backward_both(const BackwardArgs& a0,
                                                             const BackwardArgs& a1) {
    return loops::backward_both<Device, C>(a0, a1);
  }
};

// Registers the layer ops of a library (fusedrnn's CUDA kernels, or the emulation's) as these
// loops (DeviceLoops<Device>, or on CUDA graphs::CapturedLoops<Device> over them).
template <typename Loops>
void register_time_loops(torch::Library& m) {
  m.impl("time_loop_forward", &TimeLoopOps<Loops>::forward);
  m.impl("time_loop_backward", &TimeLoopOps<Loops>::backward);
  m.impl("time_loop_pair_forward", &TimeLoopPairOps<Loops>::forward);
  m.impl("time_loop_pair_backward", &TimeLoopPairOps<Loops>::backward);
}

}  // namespace loops
}  // namespace cuda
}  // namespace fusedrnn
