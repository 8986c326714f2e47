// The layer op pair, time_loop_forward / time_loop_backward (schemas in csrc/op_schemas.h), over
// one backend's time loops: the checks every backend shares, the cell's loop, and the workspace
// as the list the schema returns. Each backend registers TimeLoopOps<its loops>:
//   csrc/cpu/recurrent_cpu.cpp (CPU), csrc/cuda/time_loops.h (CUDA and its SIMT emulation).
// `Loops` has the backend's loops as static function templates over the cell,
// Loops::forward<Cell>(const ForwardArgs&) and Loops::backward<Cell>(const BackwardArgs&).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cell.h"
#include "op_checks.h"

namespace fusedrnn {

// output (T, B, P), h_n (B, P), c_n (B, H) or (0), workspace (the cell's parts, or none).
using TimeLoopForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>;
// grad_xproj, grad_h0, grad_c0 ((0) without a cell state), grad_w_hh, grad_step_params ((0)
// unless the cell's own_step_param_grad), grad_w_hr ((0) without w_hr).
using TimeLoopBackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// How a CUDA backend runs a layer's steps (the ops' cuda_loop; the CPU has one way): its default
// (per step, or persistent where FUSEDRNN_CUDA_PERSISTENT=1), a launch or two per step, or one
// persistent launch for all steps wherever the loop fits one (csrc/cuda/time_loops.h).
// fusedrnn.dispatch chooses it per call from a table `fusedrnn tune` measured.
enum class CudaLoop : int64_t { kDefault = 0, kPerStep = 1, kPersistent = 2 };

inline CudaLoop checked_cuda_loop(int64_t value) {
  TORCH_CHECK(value >= 0 && value <= 2,
              "fusedrnn: cuda_loop must be 0 (default), 1 (per step) or 2 (persistent), got ",
              value);
  return static_cast<CudaLoop>(value);
}

// The ops' arguments (shapes in csrc/ops.cpp) as the backends' loops receive them: checked, with
// the sizes the checks read.
struct ForwardArgs {
  const at::Tensor& xproj;
  const at::Tensor& h0;
  const std::optional<at::Tensor>& c0;
  const at::Tensor& w_hh;
  const std::optional<at::Tensor>& step_params;  // csrc/ops.cpp
  const std::optional<at::Tensor>& w_hr;
  const std::optional<at::Tensor>& lengths;
  bool reverse, save_workspace;
  CudaLoop cuda_loop;
  LayerSizes sz;
};

struct BackwardArgs {
  const at::Tensor& grad_output;
  const at::Tensor& grad_h_n;
  const std::optional<at::Tensor>& grad_c_n;
  const at::Tensor& w_hh;
  const std::optional<at::Tensor>& w_hr;
  const std::optional<at::Tensor>& step_params;
  at::TensorList workspace;
  const std::optional<at::Tensor>& lengths;
  bool reverse;
  CudaLoop cuda_loop;
  LayerSizes sz;
};

template <typename Loops>
struct TimeLoopOps {
  using Tensor = at::Tensor;
  using OptTensor = std::optional<at::Tensor>;

  static TimeLoopForwardResult forward(c10::string_view cell_name, const Tensor& xproj,
                                       const Tensor& h0, const OptTensor& c0, const Tensor& w_hh,
                                       const OptTensor& step_params, const OptTensor& w_hr,
                                       const OptTensor& lengths, bool reverse,
                                       bool save_workspace, int64_t cuda_loop) {
    const CellSpec& cell = spec(parse_cell(cell_name));
    const ForwardArgs args{
        xproj, h0, c0, w_hh, step_params, w_hr, lengths, reverse, save_workspace,
        checked_cuda_loop(cuda_loop),
        check_time_loop_forward(cell, xproj, h0, c0, w_hh, step_params, w_hr, lengths)};
    return visit_cell(cell.cell,
                      [&](auto c) { return Loops::template forward<decltype(c)::value>(args); });
  }

  static TimeLoopBackwardResult backward(c10::string_view cell_name, const Tensor& grad_output,
                                         const Tensor& grad_h_n, const OptTensor& grad_c_n,
                                         const Tensor& w_hh, const OptTensor& w_hr,
                                         const OptTensor& step_params, at::TensorList ws,
                                         const OptTensor& lengths, bool reverse,
                                         int64_t cuda_loop) {
    const CellSpec& cell = spec(parse_cell(cell_name));
    const BackwardArgs args{grad_output, grad_h_n, grad_c_n, w_hh, w_hr, step_params, ws,
                            lengths, reverse, checked_cuda_loop(cuda_loop),
                            check_time_loop_backward(cell, grad_output, grad_h_n, grad_c_n, w_hh,
                                                     w_hr, step_params, ws, lengths)};
    return visit_cell(cell.cell,
                      [&](auto c) { return Loops::template backward<decltype(c)::value>(args); });
  }
};

}  // namespace fusedrnn
