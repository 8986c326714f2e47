// The CUDA implementations of the time-loop ops: the loops of time_loops.h driving real launches
// on torch's current stream of the tensors' device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

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

 private:
  c10::cuda::CUDAGuard guard_;
  cudaStream_t stream_;
};

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("rnn_forward", &loops::rnn_forward<CudaDevice>);
  m.impl("rnn_backward", &loops::rnn_backward<CudaDevice>);
  m.impl("gru_forward", &loops::gru_forward<CudaDevice>);
  m.impl("gru_backward", &loops::gru_backward<CudaDevice>);
  m.impl("lstm_forward", &loops::lstm_forward<CudaDevice>);
  m.impl("lstm_backward", &loops::lstm_backward<CudaDevice>);
}

}  // namespace cuda
}  // namespace fusedrnn
