// Host-side pieces every backend's time loops share: the schedule from the lengths argument,
// workspace outputs, the one weight-gradient GEMM of backward and the step parameters'
// gradients.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>

#include "cell_table.h"
#include "schedule.h"

namespace fusedrnn {

// lengths (B) int64, on the op's device (checked by check_lengths). On the CPU every value is
// validated; a CUDA op cannot read them without a host sync, so there Schedule clamps them.
inline Schedule make_schedule(int64_t T, bool reverse, const std::optional<at::Tensor>& lengths,
                              const at::Tensor& like) {
  if (!lengths.has_value()) return Schedule{T, reverse, nullptr};
  TORCH_CHECK(lengths->device() == like.device(), "fusedrnn: lengths must be on ", like.device(),
              " like the input, got ", lengths->device());
  const int64_t* lens = lengths->data_ptr<int64_t>();
  if (lengths->device().is_cpu()) {
    for (int64_t b = 0; b < lengths->numel(); ++b) {
      TORCH_CHECK(lens[b] >= 0 && lens[b] <= T, "fusedrnn: lengths[", b, "] = ", lens[b],
                  " is outside [0, ", T, "]");
    }
  }
  return Schedule{T, reverse, lens};
}

// A workspace output: (T, B, width) when saved, (0) otherwise.
inline at::Tensor workspace(bool save, const at::Tensor& like, int64_t T, int64_t B,
                            int64_t width) {
  return save ? at::empty({T, B, width}, like.options()) : at::empty({0}, like.options());
}

// grad_w = grad_rows^T · inputs over all (time, batch) rows: the one weight GEMM of backward.
inline at::Tensor weight_grad(const at::Tensor& grad_rows, const at::Tensor& inputs) {
  // flatten, not reshape(-1, n): that is ambiguous when n is 0 (input_size 0).
  return at::mm(grad_rows.flatten(0, -2).t(), inputs.flatten(0, -2));
}

// The gradient of w_hh from every step's d(recurrent product) grad_rows (T, B, G*H) and the
// states it multiplied, hprev (T, B, P): the GEMM above for a dense W_hh; for a diagonal one
// (w_hh = u (G*H), P = H) the sum over steps and rows of grad_rows * hprev, gate by gate, in
// float for half types. (A product then a sum: torch.einsum's batched-GEMM form of the same
// contraction measured 20x slower on the CPU, T=100 B=32 H=256.)
inline at::Tensor recurrent_weight_grad(const CellSpec& cell, const at::Tensor& grad_rows,
                                        const at::Tensor& hprev) {
  if (!cell.diagonal()) return weight_grad(grad_rows, hprev);
  const int64_t T = grad_rows.size(0), B = grad_rows.size(1), H = hprev.size(2);
  const at::ScalarType acc = at::toOpMathType(grad_rows.scalar_type());
  const at::Tensor grad = grad_rows.view({T, B, cell.gates, H}).to(acc);
  return (grad * hprev.to(acc).unsqueeze(2))
      .sum(at::IntArrayRef{0, 1})
      .flatten()
      .to(grad_rows.scalar_type());
}

// The op's grad_step_params (csrc/ops.cpp), in grad_xproj's dtype: where the cell's step writes
// each row's share (step_param_row_units; grad_rows (T, B, units*H), zero where rows are
// inactive) their sum, after d xproj's sum (the bias's) where the rows start after the bias;
// where b_hh enters the step (GRU), the sum of every step's d(W_hh h + b_hh), recurrent_grad
// (T, B, G*H); else none ((0)).
inline at::Tensor step_param_grads(const CellSpec& cell, const at::Tensor& grad_xproj,
                                   const at::Tensor& recurrent_grad, const at::Tensor& grad_rows) {
  if (cell.step_param_row_units() > 0) {
    const at::Tensor rows = grad_rows.sum(at::IntArrayRef{0, 1}).to(grad_xproj.scalar_type());
    if (cell.b_hh_in_step) return rows;
    return at::cat({grad_xproj.sum(at::IntArrayRef{0, 1}), rows});
  }
  if (cell.own_step_param_grad()) return recurrent_grad.sum(at::IntArrayRef{0, 1});
  return at::empty({0}, grad_xproj.options());
}

}  // namespace fusedrnn
