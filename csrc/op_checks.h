// Argument checks shared by every backend's host glue, so a bad call from torch.ops.fusedrnn
// fails with a clear message instead of reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "cell.h"

namespace fusedrnn {

inline void check_shape(const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "fusedrnn: ", name, " has shape ", t.sizes(),
              " but expected ", at::IntArrayRef(shape));
}

inline void check_tensor(const at::Tensor& t, const at::Tensor& ref, const char* name,
                         std::vector<int64_t> shape) {
  TORCH_CHECK(t.dtype() == ref.dtype(), "fusedrnn: ", name, " has dtype ", t.dtype(),
              " but expected ", ref.dtype());
  TORCH_CHECK(t.device() == ref.device(), "fusedrnn: ", name, " is on ", t.device(),
              " but expected ", ref.device());
  check_shape(t, name, std::move(shape));
}

inline void check_lengths(const std::optional<at::Tensor>& lengths, int64_t B) {
  if (!lengths.has_value()) return;
  TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 && lengths->size(0) == B &&
                  lengths->is_contiguous(),
              "fusedrnn: lengths must be a contiguous int64 tensor of shape (B,) = (", B, ")");
}

// Sizes of one recurrent layer/direction; see csrc/ops.cpp for what each means.
struct LayerSizes {
  int64_t T, B, H, P;
  bool operator==(const LayerSizes&) const = default;
};

// The dtype the recurrence is carried in and the workspaces are saved in, for a storage dtype:
// float for fp16/bf16 (CUDA ops; see csrc/cuda/step_kernels.h), else the storage dtype itself.
inline at::ScalarType state_dtype(at::ScalarType storage) {
  return storage == at::kHalf || storage == at::kBFloat16 ? at::kFloat : storage;
}

// A workspace argument of a backward op: the state dtype of `storage`'s dtype, on its device.
inline void check_workspace(const at::Tensor& t, const at::Tensor& storage, const char* name,
                            std::vector<int64_t> shape) {
  const at::ScalarType want = state_dtype(storage.scalar_type());
  TORCH_CHECK(t.scalar_type() == want, "fusedrnn: ", name, " has dtype ", t.scalar_type(),
              " but expected ", want);
  TORCH_CHECK(t.device() == storage.device(), "fusedrnn: ", name, " is on ", t.device(),
              " but expected ", storage.device());
  check_shape(t, name, std::move(shape));
}

// w_hh's rank for the cell's recurrence: (G*H, P) dense, (G*H) diagonal.
inline void check_w_hh_rank(const CellSpec& cell, const at::Tensor& w_hh) {
  if (cell.diagonal()) {
    TORCH_CHECK(w_hh.dim() == 1, "fusedrnn: ", cell.name, " has a diagonal recurrence: w_hh must ",
                "be (", cell.gates, "*H), got ", w_hh.sizes());
  } else {
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % cell.gates == 0, "fusedrnn: w_hh must be (",
                cell.gates, "*H, P), got ", w_hh.sizes());
  }
}

// Checks w_hh ((G*H, P), or (G*H) for a diagonal recurrence) and w_hr (P, H), when the cell may
// project h, against H and `storage`'s dtype and device; returns P.
inline int64_t check_recurrent_weights(const CellSpec& cell, int64_t H, const at::Tensor& storage,
                                       const at::Tensor& w_hh,
                                       const std::optional<at::Tensor>& w_hr) {
  TORCH_CHECK(!w_hr.has_value() || cell.projectable, "fusedrnn: ", cell.name,
              " does not project h (w_hr is only for lstm)");
  check_w_hh_rank(cell, w_hh);
  if (cell.diagonal()) {
    check_tensor(w_hh, storage, "w_hh", {cell.gates * H});
    return H;
  }
  const int64_t P = w_hh.size(1);
  check_tensor(w_hh, storage, "w_hh", {cell.gates * H, P});
  if (w_hr.has_value()) {
    check_tensor(*w_hr, storage, "w_hr", {P, H});
    // As torch.nn requires (proj_size < hidden_size); the kernels write h rows within H lanes.
    TORCH_CHECK(P < H, "fusedrnn: w_hr must project to fewer than H = ", H,
                " features, got P = ", P);
  } else {
    TORCH_CHECK(P == H, "fusedrnn: w_hh must be (G*H, H) without w_hr, got ", w_hh.sizes());
  }
  return P;
}

// The time-loop ops' step parameters (csrc/ops.cpp): (U*H), U the cell's step_param_units;
// optional but for a normalised step, which scales by some of them.
inline void check_step_params(const CellSpec& cell, const std::optional<at::Tensor>& step_params,
                              const at::Tensor& storage, int64_t H) {
  TORCH_CHECK(step_params.has_value() || !cell.normalized(), "fusedrnn: step_params are needed by ",
              cell.name);
  if (step_params.has_value()) {
    check_tensor(*step_params, storage, "step_params", {cell.step_param_units() * H});
  }
}

// The layer op's forward arguments (csrc/op_schemas.h) for `cell`: sizes from xproj (T, B, G*H),
// whose dtype is the storage dtype; c0 exactly for cells with a cell state.
inline LayerSizes check_time_loop_forward(const CellSpec& cell, const at::Tensor& xproj,
                                          const at::Tensor& h0,
                                          const std::optional<at::Tensor>& c0,
                                          const at::Tensor& w_hh,
                                          const std::optional<at::Tensor>& step_params,
                                          const std::optional<at::Tensor>& w_hr,
                                          const std::optional<at::Tensor>& lengths) {
  const int64_t G = cell.gates;
  TORCH_CHECK(xproj.dim() == 3, "fusedrnn: xproj must be (T, B, G*H), got ", xproj.sizes());
  TORCH_CHECK(xproj.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(xproj.size(2) % G == 0 && xproj.size(2) > 0,
              "fusedrnn: xproj.size(2) must be a positive multiple of ", G);
  TORCH_CHECK(at::isFloatingType(xproj.scalar_type()), "fusedrnn: xproj must be floating point");
  LayerSizes s{xproj.size(0), xproj.size(1), xproj.size(2) / G, 0};
  s.P = check_recurrent_weights(cell, s.H, xproj, w_hh, w_hr);
  check_tensor(h0, xproj, "h0", {s.B, s.P});
  TORCH_CHECK(c0.has_value() == cell.has_cell_state(), "fusedrnn: c0 is ",
              cell.has_cell_state() ? "needed by " : "not taken by ", cell.name);
  if (c0.has_value()) check_tensor(*c0, xproj, "c0", {s.B, s.H});
  check_step_params(cell, step_params, xproj, s.H);
  check_lengths(lengths, s.B);
  return s;
}

// A workspace part's width (T, B, width) at these sizes.
inline int64_t workspace_width(const WorkspacePart& part, const LayerSizes& s) {
  return part.of_h ? s.P : part.units * s.H;
}

// The layer op's backward arguments for `cell`: sizes from grad_output (T, B, P) and w_hh,
// storage dtype grad_output's; the workspace as the forward saved it, in the state dtype of the
// storage dtype.
inline LayerSizes check_time_loop_backward(const CellSpec& cell, const at::Tensor& grad_output,
                                           const at::Tensor& grad_h_n,
                                           const std::optional<at::Tensor>& grad_c_n,
                                           const at::Tensor& w_hh,
                                           const std::optional<at::Tensor>& w_hr,
                                           const std::optional<at::Tensor>& step_params,
                                           at::TensorList workspace,
                                           const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(static_cast<int>(workspace.size()) == cell.workspace_parts,
              "fusedrnn: backward needs the forward's workspace (run forward with "
              "save_workspace=True): ", cell.workspace_parts, " tensors for ", cell.name, ", got ",
              workspace.size());
  TORCH_CHECK(at::isFloatingType(grad_output.scalar_type()),
              "fusedrnn: grad_output must be floating point");
  TORCH_CHECK(grad_output.dim() == 3, "fusedrnn: grad_output must be (T, B, P), got ",
              grad_output.sizes());
  check_w_hh_rank(cell, w_hh);
  LayerSizes s{grad_output.size(0), grad_output.size(1), w_hh.size(0) / cell.gates, 0};
  s.P = check_recurrent_weights(cell, s.H, grad_output, w_hh, w_hr);
  check_shape(grad_output, "grad_output", {s.T, s.B, s.P});
  check_tensor(grad_h_n, grad_output, "grad_h_n", {s.B, s.P});
  TORCH_CHECK(grad_c_n.has_value() == cell.has_cell_state(), "fusedrnn: grad_c_n is ",
              cell.has_cell_state() ? "needed by " : "not taken by ", cell.name);
  if (grad_c_n.has_value()) check_tensor(*grad_c_n, grad_output, "grad_c_n", {s.B, s.H});
  check_step_params(cell, step_params, grad_output, s.H);
  for (int i = 0; i < cell.workspace_parts; ++i) {
    const WorkspacePart& part = cell.workspace[i];
    check_workspace(workspace[i], grad_output, part.name,
                    {s.T, s.B, workspace_width(part, s)});
  }
  check_lengths(lengths, s.B);
  return s;
}

// Sizes of one cell step (cell_forward / cell_backward); see csrc/ops.cpp.
struct CellSizes {
  int64_t B, I, H;
};

// Checks a cell step's inputs against x (B, I) and w_hh (G*H, H); c only for cells with a cell
// state; biases both or neither. The one-step ops run cells with a dense W_hh only. layer_step:
// x (1, B, I) and the states (1, B, H), as the layer_step op takes them.
inline CellSizes check_cell_inputs(const CellSpec& cell, const at::Tensor& x, const at::Tensor& h,
                                   const std::optional<at::Tensor>& c, const at::Tensor& w_ih,
                                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                   const std::optional<at::Tensor>& b_hh,
                                   bool layer_step = false) {
  const int64_t num_gates = cell.gates;
  const bool needs_c = cell.has_cell_state();
  TORCH_CHECK_NOT_IMPLEMENTED(!cell.diagonal() && !cell.normalized(),
                              "fusedrnn: the one-step op runs cells with a dense W_hh and no "
                              "normalisation; ", cell.name, " runs through time_loop_forward");
  if (layer_step) {
    TORCH_CHECK(x.dim() == 3 && x.size(0) == 1, "fusedrnn: x must be (1, B, I), got ",
                x.sizes());
  } else {
    TORCH_CHECK(x.dim() == 2, "fusedrnn: x must be (B, I), got ", x.sizes());
  }
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "fusedrnn: x must be floating point");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == num_gates * w_hh.size(1),
              "fusedrnn: w_hh must be (", num_gates, "*H, H), got ", w_hh.sizes());
  const CellSizes s{x.size(-2), x.size(-1), w_hh.size(1)};
  check_tensor(w_hh, x, "w_hh", {num_gates * s.H, s.H});
  check_tensor(w_ih, x, "w_ih", {num_gates * s.H, s.I});
  const std::vector<int64_t> state_shape =
      layer_step ? std::vector<int64_t>{1, s.B, s.H} : std::vector<int64_t>{s.B, s.H};
  check_tensor(h, x, "h", state_shape);
  TORCH_CHECK(c.has_value() == needs_c, "fusedrnn: c is ", needs_c ? "needed" : "only for lstm");
  if (needs_c) check_tensor(*c, x, "c", state_shape);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "fusedrnn: give both biases or neither");
  if (b_ih.has_value()) {
    check_tensor(*b_ih, x, "b_ih", {num_gates * s.H});
    check_tensor(*b_hh, x, "b_hh", {num_gates * s.H});
  }
  return s;
}

}  // namespace fusedrnn
