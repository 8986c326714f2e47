// Argument checks shared by every backend's host glue, so a bad call from torch.ops.fusedrnn
// fails with a clear message instead of reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

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

// Reads T, B, H, P from `rows` (T, B, G*H) and w_hh (G*H, P) and checks h0, w_hr and lengths;
// the weights and h0 must have the dtype and device of `storage`.
inline LayerSizes check_layer(const at::Tensor& rows, int64_t num_gates, const at::Tensor& storage,
                              const at::Tensor& h0, const at::Tensor& w_hh,
                              const std::optional<at::Tensor>& w_hr,
                              const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(rows.dim() == 3, "fusedrnn: xproj must be (T, B, G*H), got ", rows.sizes());
  TORCH_CHECK(rows.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(rows.size(2) % num_gates == 0 && rows.size(2) > 0,
              "fusedrnn: xproj.size(2) must be a positive multiple of ", num_gates);
  TORCH_CHECK(at::isFloatingType(storage.scalar_type()), "fusedrnn: xproj must be floating point");
  LayerSizes s{rows.size(0), rows.size(1), rows.size(2) / num_gates, 0};
  TORCH_CHECK(w_hh.dim() == 2, "fusedrnn: w_hh must be 2-D, got ", w_hh.sizes());
  s.P = w_hh.size(1);
  check_tensor(w_hh, storage, "w_hh", {num_gates * s.H, s.P});
  if (w_hr.has_value()) {
    check_tensor(*w_hr, storage, "w_hr", {s.P, s.H});
    // As torch.nn requires (proj_size < hidden_size); the kernels write h rows within H lanes.
    TORCH_CHECK(s.P < s.H, "fusedrnn: w_hr must project to fewer than H = ", s.H,
                " features, got P = ", s.P);
  } else {
    TORCH_CHECK(s.P == s.H, "fusedrnn: w_hh must be (G*H, H) without w_hr, got ", w_hh.sizes());
  }
  check_tensor(h0, storage, "h0", {s.B, s.P});
  check_lengths(lengths, s.B);
  return s;
}

// A forward op's inputs: sizes from xproj (T, B, G*H), which is also the storage dtype.
inline LayerSizes check_forward_inputs(const at::Tensor& xproj, int64_t num_gates,
                                       const at::Tensor& h0, const at::Tensor& w_hh,
                                       const std::optional<at::Tensor>& w_hr,
                                       const std::optional<at::Tensor>& lengths) {
  return check_layer(xproj, num_gates, xproj, h0, w_hh, w_hr, lengths);
}

inline void check_workspace_saved(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3, "fusedrnn: backward needs the forward's workspace "
              "(run forward with save_workspace=True)");
}

// The backward ops' arguments (shapes in csrc/ops.cpp); sizes read from the forward's tensors,
// workspaces in the state dtype of the storage dtype (grad_output's).
inline LayerSizes check_rnn_backward_inputs(const at::Tensor& grad_output,
                                            const at::Tensor& grad_h_n, const at::Tensor& w_hh,
                                            const at::Tensor& output, const at::Tensor& hprev,
                                            const std::optional<at::Tensor>& lengths) {
  const LayerSizes s = check_forward_inputs(output, 1, grad_h_n, w_hh, std::nullopt, lengths);
  check_tensor(grad_output, output, "grad_output", {s.T, s.B, s.H});
  check_workspace_saved(hprev, output);
  check_workspace(hprev, output, "hprev", {s.T, s.B, s.H});
  return s;
}

inline LayerSizes check_gru_backward_inputs(const at::Tensor& grad_output,
                                            const at::Tensor& grad_h_n, const at::Tensor& w_hh,
                                            const at::Tensor& gates, const at::Tensor& hprev,
                                            const std::optional<at::Tensor>& lengths) {
  check_workspace_saved(hprev, gates);
  const LayerSizes s{hprev.size(0), hprev.size(1), hprev.size(2), hprev.size(2)};
  TORCH_CHECK(at::isFloatingType(grad_output.scalar_type()),
              "fusedrnn: grad_output must be floating point");
  check_shape(grad_output, "grad_output", {s.T, s.B, s.H});
  check_tensor(grad_h_n, grad_output, "grad_h_n", {s.B, s.H});
  check_tensor(w_hh, grad_output, "w_hh", {3 * s.H, s.H});
  check_workspace(gates, grad_output, "gates", {s.T, s.B, 4 * s.H});
  check_workspace(hprev, grad_output, "hprev", {s.T, s.B, s.H});
  check_lengths(lengths, s.B);
  return s;
}

inline LayerSizes check_lstm_backward_inputs(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const at::Tensor& gates,
    const at::Tensor& cells, const at::Tensor& prev_cells, const at::Tensor& hprev,
    const std::optional<at::Tensor>& lengths) {
  check_workspace_saved(gates, hprev);
  const LayerSizes s = check_layer(gates, 4, grad_output, grad_h_n, w_hh, w_hr, lengths);
  check_shape(grad_output, "grad_output", {s.T, s.B, s.P});
  check_tensor(grad_c_n, grad_output, "grad_c_n", {s.B, s.H});
  check_workspace(gates, grad_output, "gates", {s.T, s.B, 4 * s.H});
  check_workspace(cells, grad_output, "cells", {s.T, s.B, s.H});
  check_workspace(prev_cells, grad_output, "prev_cells", {s.T, s.B, s.H});
  check_workspace(hprev, grad_output, "hprev", {s.T, s.B, s.P});
  return s;
}

// Sizes of one cell step (cell_forward / cell_backward); see csrc/ops.cpp.
struct CellSizes {
  int64_t B, I, H;
};

// Checks a cell step's inputs against x (B, I) and w_hh (G*H, H); c only for LSTM (needs_c);
// biases both or neither.
inline CellSizes check_cell_inputs(int64_t num_gates, bool needs_c, const at::Tensor& x,
                                   const at::Tensor& h, const std::optional<at::Tensor>& c,
                                   const at::Tensor& w_ih, const at::Tensor& w_hh,
                                   const std::optional<at::Tensor>& b_ih,
                                   const std::optional<at::Tensor>& b_hh) {
  TORCH_CHECK(x.dim() == 2, "fusedrnn: x must be (B, I), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "fusedrnn: x must be floating point");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == num_gates * w_hh.size(1),
              "fusedrnn: w_hh must be (", num_gates, "*H, H), got ", w_hh.sizes());
  const CellSizes s{x.size(0), x.size(1), w_hh.size(1)};
  check_tensor(w_hh, x, "w_hh", {num_gates * s.H, s.H});
  check_tensor(w_ih, x, "w_ih", {num_gates * s.H, s.I});
  check_tensor(h, x, "h", {s.B, s.H});
  TORCH_CHECK(c.has_value() == needs_c, "fusedrnn: c is ", needs_c ? "needed" : "only for lstm");
  if (needs_c) check_tensor(*c, x, "c", {s.B, s.H});
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "fusedrnn: give both biases or neither");
  if (b_ih.has_value()) {
    check_tensor(*b_ih, x, "b_ih", {num_gates * s.H});
    check_tensor(*b_hh, x, "b_hh", {num_gates * s.H});
  }
  return s;
}

}  // namespace fusedrnn
