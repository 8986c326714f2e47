// Autograd pieces that C++ callers use directly (the forward ops' autograd is registered in
// csrc/autograd.cpp and reached through the dispatcher).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "cell.h"

namespace fusedrnn {

// A layer's input projection x·wᵀ + bias, x (T, B, I), w (G*H, I), bias (G*H): the forward
// product on the CPU backend's packed kernels where they beat torch's GEMM (csrc/host_linear.h),
// else torch's linear; with one_thread (a product too small for two:
// host_threads::gemm_too_small_to_split) forward and backward on one thread. For real CPU
// tensors only (no tracing or functorch wrapper: the autograd node is a C++ one).
at::Tensor projection_linear(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias, bool one_thread);

// Double backward of a layer's fused op differentiates it again from its input projection,
// recomputed from the projection's own inputs: the fused node does not save xproj, a (T, B, G*H)
// tensor every training step would carry. The projection's node keeps x alive anyway whenever
// w_ih requires grad; only with w_ih frozen does this keep x (T, B, I) alive by itself. Called
// by the functional ops right after the fused op; `output` is its first output. No effect where
// the output has no fused autograd node (no grad needed, tracing). layer_norm_gain: where xproj
// is LN(x W_ih^T) with that gain, plus bias after it (a normalised cell; csrc/functional.cpp).
// For the pair op (both directions of a layer in one node), `direction` says whose projection.
void remember_projection(const at::Tensor& output, const at::Tensor& x, const at::Tensor& w_ih,
                         const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& layer_norm_gain = std::nullopt,
                         int64_t direction = 0);

// A layer's biases b_ih, b_hh (G*H each, either may be absent) as its computation adds them:
// {the input projection's, the time loop's `bias` (csrc/ops.cpp)}. Where b_hh enters the step
// (GRU), b_ih goes to the projection and b_hh to the loop; elsewhere the whole bias goes to the
// loop, which adds it where xproj is in cache (in the projection it costs one more pass over
// the (T, B, G*H) result: a tenth of an LSTM layer at B=32 H=256 on one core).
inline std::pair<std::optional<at::Tensor>, std::optional<at::Tensor>> split_biases(
    Cell cell, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  if (spec(cell).b_hh_in_step) return {b_ih, b_hh};
  if (b_ih.has_value() && b_hh.has_value()) return {std::nullopt, *b_ih + *b_hh};
  return {std::nullopt, b_ih.has_value() ? b_ih : b_hh};
}

// The time-loop ops in differentiable ATen ops (csrc/reference_loop.cpp): {output (T, B, P),
// h_n (B, P), c_n (B, H) for LSTM else undefined}. c0, bias, w_hr, lengths: undefined when absent.
std::vector<at::Tensor> reference_time_loop(Cell cell, const at::Tensor& xproj,
                                            const at::Tensor& h0, const at::Tensor& c0,
                                            const at::Tensor& w_hh, const at::Tensor& bias,
                                            const at::Tensor& w_hr, const at::Tensor& lengths,
                                            bool reverse);

}  // namespace fusedrnn
