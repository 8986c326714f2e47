// The CUDA time loops (csrc/cuda/time_loops.h) driving the SIMT-emulated kernels on CPU tensors,
// registered as torch.ops.fusedrnn_emulated.time_loop_{forward,backward} with the schemas of
// the real ops. Test-only (tests/emulation.py builds it; never part of the wheel): this is the
// whole CUDA op, its host loop, GEMMs (torch on the CPU here) and kernels, run without a GPU.
#include <cstdlib>

#include "../cuda/time_loops.h"
#include "../op_schemas.h"

namespace fusedrnn {
namespace cuda {
namespace {

// The emulation runs each launch to completion on the calling thread: no stream, no guard.
struct EmulatedDevice {
  explicit EmulatedDevice(const at::Tensor& like) {
    TORCH_CHECK(like.is_cpu(), "fusedrnn_emulated: the emulated CUDA ops take CPU tensors, got ",
                like.device());
  }
  cudaStream_t stream() const { return nullptr; }
  // Few blocks (an OS thread each in a cooperative launch), so that each owns several units;
  // FUSEDRNN_EMULATED_BLOCKS claims more (tests: a grid the emulation refuses, > 256 blocks).
  int64_t max_cooperative_blocks() const {
    const char* blocks = std::getenv("FUSEDRNN_EMULATED_BLOCKS");
    return blocks ? std::atoll(blocks) : 4;
  }
  // 48 KiB (what needs no opt-in); FUSEDRNN_EMULATED_SHARED claims more (up to the emulation's
  // 227 KiB, sm_90's opt-in maximum).
  size_t max_shared_bytes() const {
    const char* bytes = std::getenv("FUSEDRNN_EMULATED_SHARED");
    return bytes ? std::strtoull(bytes, nullptr, 10) : 48 << 10;
  }
  // sm_90 (its shared memory opt-in too); FUSEDRNN_EMULATED_SM claims another (75: no tensor
  // cores for half types).
  int compute_capability() const {
    const char* sm = std::getenv("FUSEDRNN_EMULATED_SM");
    return sm ? std::atoi(sm) : 90;
  }
  void check(cudaError_t err) const {
    TORCH_CHECK(err == cudaSuccess, "fusedrnn_emulated: kernel launch failed: ",
                cudaGetErrorString(err));
  }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(fusedrnn_emulated, m) {
  for (const char* schema : kTimeLoopSchemas) m.def(schema);
  // How many loops (forward or backward, a direction each) the emulated ops ran persistently.
  m.def("persistent_launches() -> int", [] { return loops::persistent_launches.load(); });
  // How many of those launches ran a layer's two directions at once; how many of those loops
  // ran their products on tensor cores.
  m.def("bidirectional_persistent_launches() -> int",
        [] { return loops::bidirectional_persistent_launches.load(); });
  m.def("tensor_core_loops() -> int", [] { return loops::tensor_core_loops.load(); });
}

TORCH_LIBRARY_IMPL(fusedrnn_emulated, CPU, m) {
  loops::register_time_loops<loops::DeviceLoops<EmulatedDevice>>(m);
}

}  // namespace cuda
}  // namespace fusedrnn
