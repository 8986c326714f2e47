// The CUDA implementations of the time-loop ops: the loops of time_loops.h driving real launches
// on torch's current stream of the tensors' device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include "time_loops.h"

namespace fusedrnn {
namespace cuda {
namespace {

// The op's device made current, and torch's current stream on it.
class CudaDevice {
 public:
  explicit CudaDevice(const at::Tensor& like)
      : guard_(like.device()), stream_(at::cuda::getCurrentCUDAStream()) {}
  cudaStream_t stream() const { return stream_; }
  void check(cudaError_t err) const { C10_CUDA_CHECK(err); }
  // One block per SM: resident whatever the kernel's registers, with up to 48 KiB of shared
  // memory and 256 threads (what persistent_shape asks).
  int64_t max_cooperative_blocks() const {
    return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  }

 private:
  c10::cuda::CUDAGuard guard_;
  cudaStream_t stream_;
};

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  loops::register_time_loops<CudaDevice>(m);
}

}  // namespace cuda
}  // namespace fusedrnn
