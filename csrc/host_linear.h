// The input projection x·wᵀ + bias on the CPU backend's own GEMM kernels, where they beat
// torch's: declared here for the backend-neutral layers (csrc/functional.cpp, csrc/autograd.cpp),
// answered by the CPU backend (csrc/cpu/packed_gemm.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fusedrnn {
namespace host_linear {

// Whether linear() runs x (..., K) · w (N, K)ᵀ + bias (N): float32 CPU tensors of those shapes,
// on a CPU where the packed kernels take their AVX-512 form, and enough rows to pay for packing
// w. (With AVX2 only, torch's MKL GEMM is as fast: 0.66-1.1x of it with FUSEDRNN_DISABLE_AVX512
// on the project's Zen 5.)
bool runs(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias);

// x · wᵀ + bias, no autograd; where runs() says so.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w,
                  const std::optional<at::Tensor>& bias);

// The same for x (..., K) · w (K, N) (the projection's d x = d xproj · w_ih).
bool runs_matmul(const at::Tensor& x, const at::Tensor& w);
at::Tensor matmul(const at::Tensor& x, const at::Tensor& w);

}  // namespace host_linear
}  // namespace fusedrnn
