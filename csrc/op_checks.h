// Argument checks shared by every backend's host glue, so a bad call from torch.ops.fusedrnn
// fails with a clear message instead of reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace fusedrnn {

inline void check_tensor(const at::Tensor& t, const at::Tensor& ref, const char* name,
                         std::vector<int64_t> shape) {
  TORCH_CHECK(t.dtype() == ref.dtype(), "fusedrnn: ", name, " has dtype ", t.dtype(),
              " but expected ", ref.dtype());
  TORCH_CHECK(t.device() == ref.device(), "fusedrnn: ", name, " is on ", t.device(),
              " but expected ", ref.device());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "fusedrnn: ", name, " has shape ", t.sizes(),
              " but expected ", at::IntArrayRef(shape));
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

// Reads T, B, H, P from xproj (T, B, G*H) and w_hh (G*H, P) and checks h0, w_hr and lengths.
inline LayerSizes check_forward_inputs(const at::Tensor& xproj, int64_t num_gates,
                                       const at::Tensor& h0, const at::Tensor& w_hh,
                                       const std::optional<at::Tensor>& w_hr,
                                       const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(xproj.dim() == 3, "fusedrnn: xproj must be (T, B, G*H), got ", xproj.sizes());
  TORCH_CHECK(xproj.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(xproj.size(2) % num_gates == 0 && xproj.size(2) > 0,
              "fusedrnn: xproj.size(2) must be a positive multiple of ", num_gates);
  TORCH_CHECK(at::isFloatingType(xproj.scalar_type()), "fusedrnn: xproj must be floating point");
  LayerSizes s{xproj.size(0), xproj.size(1), xproj.size(2) / num_gates, 0};
  TORCH_CHECK(w_hh.dim() == 2, "fusedrnn: w_hh must be 2-D, got ", w_hh.sizes());
  s.P = w_hh.size(1);
  check_tensor(w_hh, xproj, "w_hh", {num_gates * s.H, s.P});
  if (w_hr.has_value()) {
    check_tensor(*w_hr, xproj, "w_hr", {s.P, s.H});
  } else {
    TORCH_CHECK(s.P == s.H, "fusedrnn: w_hh must be (G*H, H) without w_hr, got ", w_hh.sizes());
  }
  check_tensor(h0, xproj, "h0", {s.B, s.P});
  check_lengths(lengths, s.B);
  return s;
}

}  // namespace fusedrnn
