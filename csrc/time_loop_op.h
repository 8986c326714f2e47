// The layer ops, time_loop_forward / time_loop_backward (schemas in csrc/op_schemas.h), over
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

// The two-direction form (time_loop_pair_forward / _backward) over a backend whose `Loops` also
// has forward_both<Cell>(args of direction 0, of direction 1) and backward_both (the CUDA
// backend and its emulation): each direction's arguments checked as the one-direction op checks
// them; results as lists, direction 0's then direction 1's (workspaces: 0's parts, then 1's).
using TimeLoopPairForwardResult = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>,
                                             std::vector<at::Tensor>, std::vector<at::Tensor>>;
using TimeLoopPairBackwardResult =
    std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// A pair op's list argument: two tensors, or (where `optional`) none.
inline void check_pair_list(at::TensorList list, const char* name, bool optional) {
  TORCH_CHECK(list.size() == 2 || (optional && list.empty()), "fusedrnn: ", name,
              " must hold 2 tensors (one per direction)", optional ? " or none" : "", ", got ",
              list.size());
}
// The two directions run as one (one launch on one device, one storage type).
inline void check_pair_alike(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.device() == b.device(), "fusedrnn: ",
              name, " of the two directions must share a dtype and a device, got ",
              a.scalar_type(), " on ", a.device(), " and ", b.scalar_type(), " on ", b.device());
}
inline std::optional<at::Tensor> pair_item(at::TensorList list, size_t d) {
  return list.empty() ? std::nullopt : std::optional<at::Tensor>(list[d]);
}

template <typename Loops>
struct TimeLoopPairOps {
  using Tensor = at::Tensor;
  using OptTensor = std::optional<at::Tensor>;

  static TimeLoopPairForwardResult forward(c10::string_view cell_name, at::TensorList xproj,
                                           at::TensorList h0, at::TensorList c0,
                                           at::TensorList w_hh, at::TensorList step_params,
                                           at::TensorList w_hr, const OptTensor& lengths,
                                           bool save_workspace, int64_t cuda_loop) {
    const CellSpec& cell = spec(parse_cell(cell_name));
    check_pair_list(xproj, "xproj", false);
    check_pair_list(h0, "h0", false);
    check_pair_list(c0, "c0", true);
    check_pair_list(w_hh, "w_hh", false);
    check_pair_list(step_params, "step_params", true);
    check_pair_list(w_hr, "w_hr", true);
    const CudaLoop loop = checked_cuda_loop(cuda_loop);
    const OptTensor c0s[2] = {pair_item(c0, 0), pair_item(c0, 1)};
    const OptTensor params[2] = {pair_item(step_params, 0), pair_item(step_params, 1)};
    const OptTensor w_hrs[2] = {pair_item(w_hr, 0), pair_item(w_hr, 1)};
    auto args = [&](size_t d) {
      return ForwardArgs{xproj[d], h0[d], c0s[d], w_hh[d], params[d], w_hrs[d], lengths,
                         /*reverse=*/d == 1, save_workspace, loop,
                         check_time_loop_forward(cell, xproj[d], h0[d], c0s[d], w_hh[d],
                                                 params[d], w_hrs[d], lengths)};
    };
    check_pair_alike(xproj[0], xproj[1], "xproj");
    const ForwardArgs a0 = args(0), a1 = args(1);
    TORCH_CHECK(a0.sz == a1.sz, "fusedrnn: the two directions' sizes differ");
    return visit_cell(cell.cell, [&](auto c) {
      auto [r0, r1] = Loops::template forward_both<decltype(c)::value>(a0, a1);
      auto& [out0, h0n, c0n, ws0] = r0;
      auto& [out1, h1n, c1n, ws1] = r1;
      ws0.insert(ws0.end(), ws1.begin(), ws1.end());
      return TimeLoopPairForwardResult{{out0, out1}, {h0n, h1n}, {c0n, c1n}, ws0};
    });
  }

  static TimeLoopPairBackwardResult backward(c10::string_view cell_name,
                                             at::TensorList grad_output, at::TensorList grad_h_n,
                                             at::TensorList grad_c_n, at::TensorList w_hh,
                                             at::TensorList w_hr, at::TensorList step_params,
                                             at::TensorList workspace, const OptTensor& lengths,
                                             int64_t cuda_loop) {
    const CellSpec& cell = spec(parse_cell(cell_name));
    check_pair_list(grad_output, "grad_output", false);
    check_pair_list(grad_h_n, "grad_h_n", false);
    check_pair_list(grad_c_n, "grad_c_n", true);
    check_pair_list(w_hh, "w_hh", false);
    check_pair_list(w_hr, "w_hr", true);
    check_pair_list(step_params, "step_params", true);
    TORCH_CHECK(workspace.size() % 2 == 0, "fusedrnn: workspace must hold both directions' "
                "parts, got ", workspace.size(), " tensors");
    const size_t parts = workspace.size() / 2;
    const CudaLoop loop = checked_cuda_loop(cuda_loop);
    const OptTensor grad_c[2] = {pair_item(grad_c_n, 0), pair_item(grad_c_n, 1)};
    const OptTensor params[2] = {pair_item(step_params, 0), pair_item(step_params, 1)};
    const OptTensor w_hrs[2] = {pair_item(w_hr, 0), pair_item(w_hr, 1)};
    auto args = [&](size_t d) {
      const at::TensorList ws = workspace.slice(d * parts, parts);
      return BackwardArgs{grad_output[d], grad_h_n[d], grad_c[d], w_hh[d], w_hrs[d], params[d],
                          ws, lengths, /*reverse=*/d == 1, loop,
                          check_time_loop_backward(cell, grad_output[d], grad_h_n[d], grad_c[d],
                                                   w_hh[d], w_hrs[d], params[d], ws, lengths)};
    };
    check_pair_alike(grad_output[0], grad_output[1], "grad_output");
    const BackwardArgs a0 = args(0), a1 = args(1);
    TORCH_CHECK(a0.sz == a1.sz, "fusedrnn: the two directions' sizes differ");
    return visit_cell(cell.cell, [&](auto c) {
      const auto [r0, r1] = Loops::template backward_both<decltype(c)::value>(a0, a1);
      const auto& [gx0, gh0, gc0, gw0, gp0, gr0] = r0;
      const auto& [gx1, gh1, gc1, gw1, gp1, gr1] = r1;
      return TimeLoopPairBackwardResult{{gx0, gx1}, {gh0, gh1}, {gc0, gc1},
                                        {gw0, gw1}, {gp0, gp1}, {gr0, gr1}};
    });
  }
};

}  // namespace fusedrnn
