// Autograd pieces that C++ callers use directly (the forward ops' autograd is registered in
// csrc/autograd.cpp and reached through the dispatcher).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fusedrnn {

// at::linear(x, w, bias) with its forward and backward products on one thread: the input
// projection of a layer too small for two (cpu::kMinParallelGemmMacs). x (T, B, I), w (G*H, I),
// bias (G*H). For real CPU tensors only (no tracing or functorch wrapper: the autograd node is
// a C++ one).
at::Tensor one_thread_linear(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias);

}  // namespace fusedrnn
