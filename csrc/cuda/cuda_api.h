// The CUDA runtime as fusedrnn's kernel sources (csrc/cuda/*.cu) and CUDA time loops see it:
// the real one (nvcc, and host glue compiled against the CUDA toolkit), or the SIMT emulation
// (csrc/emulation/simt.h) when FUSEDRNN_SIMT_EMULATION is defined, where the same sources are
// compiled by the host compiler and every CUDA thread runs as a fiber on the CPU (test builds
// only; see tests/emulation.py).
//
// Kernels are launched through fusedrnn::cuda::launch / launch_cooperative (not <<<...>>>, which
// a host compiler cannot parse), take dynamic shared memory from dynamic_shared_memory<T>() and
// synchronise a cooperative grid with grid_sync(). Everything else is CUDA's own spelling
// (threadIdx, __syncthreads, __shfl_xor_sync, atomicAdd, __half, nvcuda::wmma, ...).
#pragma once

#include <cstddef>
#include <tuple>
#include <utility>

#ifdef FUSEDRNN_SIMT_EMULATION
#include "../emulation/simt.h"
#else
#include <cuda_runtime_api.h>
#if defined(__CUDACC__)
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif
#endif

namespace fusedrnn {
namespace cuda {

#if defined(__CUDACC__) || defined(FUSEDRNN_SIMT_EMULATION)

// kernel<<<grid, block, shared_bytes, stream>>>(args...); returns cudaGetLastError(). In
// emulation the launch runs to completion before it returns (on the calling thread).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, Args&&... args) {
#ifdef FUSEDRNN_SIMT_EMULATION
  (void)stream;
  return simt::launch(grid, block, shared_bytes, /*cooperative=*/false,
                      [&] { kernel(args...); });  // implicit conversions, as <<<>>>
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#endif
}

// A cooperative launch (cudaLaunchCooperativeKernel): every block is resident at once, so the
// kernel may call grid_sync(). The grid must fit the device (cudaOccupancyMaxActiveBlocks...).
// The kernel is first allowed its dynamic shared memory (the device's opt-in maximum,
// cudaDevAttrMaxSharedMemoryPerBlockOptin, less its static shared memory, bounds what may be
// asked).
template <typename... Params, typename... Args>
cudaError_t launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block,
                               size_t shared_bytes, cudaStream_t stream, Args&&... args) {
#ifdef FUSEDRNN_SIMT_EMULATION
  (void)stream;
  return simt::launch(grid, block, shared_bytes, /*cooperative=*/true,
                      [&] { kernel(args...); });  // implicit conversions, as <<<>>>
#else
  // (always: the default allows 48 KiB less the kernel's static shared memory, which some of
  // the kernels have)
  if (shared_bytes > 0) {
    const cudaError_t err =
        cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(shared_bytes));
    if (err != cudaSuccess) return err;
  }
  std::tuple<Params...> values(std::forward<Args>(args)...);
  return std::apply(
      [&](Params&... v) {
        void* pointers[] = {static_cast<void*>(&v)..., nullptr};
        return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block,
                                           pointers, shared_bytes, stream);
      },
      values);
#endif
}

// The block's dynamic shared memory (the launch's shared_bytes), 128-byte aligned (wmma tiles
// need 256-bit alignment).
template <typename T>
__device__ __forceinline__ T* dynamic_shared_memory() {
#ifdef FUSEDRNN_SIMT_EMULATION
  return static_cast<T*>(simt::dynamic_shared_memory());
#else
  extern __shared__ __align__(128) unsigned char fusedrnn_dynamic_shared[];
  return reinterpret_cast<T*>(fusedrnn_dynamic_shared);
#endif
}

// Barrier of every thread of a cooperative grid (launch_cooperative).
__device__ __forceinline__ void grid_sync() {
#ifdef FUSEDRNN_SIMT_EMULATION
  simt::grid_sync();
#else
  cooperative_groups::this_grid().sync();
#endif
}

#endif  // __CUDACC__ || FUSEDRNN_SIMT_EMULATION

}  // namespace cuda
}  // namespace fusedrnn
