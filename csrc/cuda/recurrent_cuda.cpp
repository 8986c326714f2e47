// The CUDA implementations of the time-loop ops: the loops of time_loops.h driving real launches
// on torch's current stream of the tensors' device (the per-step ones through CUDA graphs where
// FUSEDRNN_CUDA_GRAPHS=1: captured_loops.h).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "captured_loops.h"
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
  // One block per SM: resident whatever the kernel's registers (__launch_bounds__(256, 1)),
  // with the shared memory below and 256 threads (what persistent_shape asks).
  int64_t max_cooperative_blocks() const {
    return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  }
  // The opt-in maximum a block may use (227 KiB on sm_90).
  size_t max_shared_bytes() const {
    return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  }
  int compute_capability() const {
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    return 10 * props->major + props->minor;
  }

 private:
  c10::cuda::CUDAGuard guard_;
  cudaStream_t stream_;
};

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  loops::register_time_loops<graphs::CapturedLoops<CudaDevice>>(m);
}

// How many loops (forward or backward, a direction each) the CUDA ops ran persistently: what
// bench and tune read to say which loop ran (fusedrnn.dispatch.persistent_launches); how many
// launches ran a layer's two directions at once; how many loops ran on tensor cores.
TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  m.def("persistent_launches() -> int", [] { return loops::persistent_launches.load(); });
  m.def("bidirectional_persistent_launches() -> int",
        [] { return loops::bidirectional_persistent_launches.load(); });
  m.def("tensor_core_loops() -> int", [] { return loops::tensor_core_loops.load(); });
  // The per-step loops captured as CUDA graphs, and their replays (FUSEDRNN_CUDA_GRAPHS=1).
  m.def("graph_captures() -> int", [] { return graphs::captures.load(); });
  m.def("graph_replays() -> int", [] { return graphs::replays.load(); });
}

}  // namespace cuda
}  // namespace fusedrnn
