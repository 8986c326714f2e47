// CUDA graphs for the per-step loops (opt-in, FUSEDRNN_CUDA_GRAPHS=1, until timed on a GPU): a
// layer-direction's per-step loop (two launches a step, four with proj_size) captured once per
// shape and replayed, where the persistent loop does not run (H too large for it, or not asked
// for). CUDA only: the SIMT emulation runs launches as they are made and its GEMMs on the CPU,
// so nothing there can be captured.
//
// A graph replays fixed addresses: each captured loop keeps its own copies of the op's inputs,
// which every call copies the caller's tensors into, and what the capture returned, which every
// call copies out (a returned tensor is the caller's to keep; the next replay overwrites these).
// Everything the loop derives from its inputs (state-type weight copies, the initial state in
// its ping-pong buffers, zeroed buffers, the weight-gradient GEMMs) is made inside the capture,
// so a replay recomputes it. One graph per (loop, cell, sizes, dtype, options, device, stream):
// two streams never replay the same buffers at once. Each replay copies every input in and every
// output (the workspaces too, under autograd) out, and a new T is a new capture: that traffic
// against the launches saved is for a GPU timing to weigh before this becomes a default.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "time_loops.h"

namespace fusedrnn {
namespace cuda {
namespace graphs {

using at::Tensor;
using loops::BackwardLoop;
using loops::ForwardLoop;
using loops::persistent_plan;
using OptTensor = std::optional<Tensor>;

inline bool enabled() {
  const char* value = std::getenv("FUSEDRNN_CUDA_GRAPHS");
  return value != nullptr && std::string_view(value) == "1";
}

// Captures and replays so far (GPU tests read them: the path they check ran).
inline std::atomic<int64_t> captures{0}, replays{0};

struct CapturedLoop {
  std::vector<Tensor> inputs;   // the loop's own copies (undefined where the op had none)
  at::cuda::CUDAGraph graph;
  std::vector<Tensor> outputs;  // what the captured loop returned, flattened
};

// At most this many captured loops are kept (each holds its inputs, workspaces and outputs);
// past it the least recently used goes.
constexpr size_t kMaxCaptured = 16;

class Cache {
 public:
  // The outputs of run(inputs) (a per-step loop over its arguments, returning tensors), by
  // replaying the graph captured for `key` (capturing it on the first call).
  template <typename Run>
  std::vector<Tensor> replay(const std::string& key, const std::vector<Tensor>& inputs, Run run) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = loops_.find(key);
    CapturedLoop* loop = found == loops_.end() ? nullptr : found->second.get();
    if (loop == nullptr) {
      loop = capture(key, inputs, run);
    } else {
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (inputs[i].defined()) loop->inputs[i].copy_(inputs[i]);
      }
    }
    use_order_.erase(std::remove(use_order_.begin(), use_order_.end(), key), use_order_.end());
    use_order_.push_back(key);
    loop->graph.replay();  // on the caller's current stream, after the copies
    replays.fetch_add(1, std::memory_order_relaxed);
    std::vector<Tensor> outputs;
    for (const Tensor& t : loop->outputs) outputs.push_back(t.clone());
    return outputs;
  }

 private:
  template <typename Run>
  CapturedLoop* capture(const std::string& key, const std::vector<Tensor>& inputs, Run run) {
    if (loops_.size() >= kMaxCaptured) {
      // (its last replay may still run, and its memory pool goes back to the allocator: wait)
      C10_CUDA_CHECK(cudaDeviceSynchronize());
      loops_.erase(use_order_.front());
      use_order_.erase(use_order_.begin());
    }
    auto entry = std::make_unique<CapturedLoop>();
    for (const Tensor& t : inputs) {
      entry->inputs.push_back(t.defined() ? t.clone(at::MemoryFormat::Contiguous) : Tensor());
    }
    // Captured on a side stream (capture needs one that is not the legacy default), after the
    // caller's work, which the copies above are part of; the caller's stream then waits for it.
    // Thread-local capture mode: other threads' CUDA calls (allocations, syncs) stay legal
    // meanwhile.
    const at::cuda::CUDAStream caller = at::cuda::getCurrentCUDAStream();
    const at::cuda::CUDAStream side = at::cuda::getStreamFromPool();
    at::cuda::CUDAEvent ready, captured;
    ready.record(caller);
    ready.block(side);
    {
      const c10::cuda::CUDAStreamGuard on_side(side);
      run(entry->inputs);  // once uncaptured: cuBLAS's handle and workspace set up first
      entry->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      try {
        entry->outputs = run(entry->inputs);
      } catch (...) {  // the stream leaves capture mode before the error goes on
        cudaGraph_t partial = nullptr;
        (void)cudaStreamEndCapture(side.stream(), &partial);
        if (partial != nullptr) (void)cudaGraphDestroy(partial);
        (void)cudaGetLastError();
        throw;
      }
      entry->graph.capture_end();
    }
    captured.record(side);
    captured.block(caller);
    captures.fetch_add(1, std::memory_order_relaxed);
    return (loops_[key] = std::move(entry)).get();
  }

  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<CapturedLoop>> loops_;
  std::vector<std::string> use_order_;  // least recently used first
};

inline Cache& cache() {
  static Cache* instance = new Cache();  // never destroyed: graphs outlive static teardown
  return *instance;
}

// The key of a loop: its kind, the cell, every input's sizes and dtype (or none), the options,
// the device and the current stream.
inline std::string loop_key(const char* kind, Cell cell, const std::vector<Tensor>& inputs,
                            bool reverse, bool save_workspace) {
  std::ostringstream key;
  key << kind << ' ' << static_cast<int>(cell) << ' ' << reverse << save_workspace;
  for (const Tensor& t : inputs) {
    if (!t.defined()) {
      key << " -";
      continue;
    }
    key << ' ' << t.scalar_type() << t.sizes();
  }
  key << ' ' << inputs[0].device() << ' ' << at::cuda::getCurrentCUDAStream().id();
  return key.str();
}

inline OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Whether a loop on `like`'s device (made current by the caller) may be captured: graphs asked
// for, and the current stream not already being captured (inside torch.cuda.graph or
// torch.compile's cudagraphs the loop is part of that graph, run as it is).
inline bool may_capture() {
  return enabled() &&
         c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}
inline Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// The loops of DeviceLoops<Device> (time_loops.h), each layer-direction's per-step loop through a
// captured graph where graphs are enabled and no persistent loop is planned.
template <typename Device>
struct CapturedLoops {
  template <Cell C>
  static TimeLoopForwardResult forward(const ForwardArgs& a) {
    const c10::cuda::CUDAGuard on_device(a.xproj.device());  // (streams and key: its device)
    if (!may_capture() || a.sz.T == 0 ||
        persistent_plan<C>(Device(a.xproj), a.sz, a.w_hr.has_value(), /*backward=*/false,
                           a.xproj, a.cuda_loop).blocks > 0) {
      return loops::forward<Device, C>(a);
    }
    const std::vector<Tensor> inputs = {a.xproj, a.h0, or_undefined(a.c0), a.w_hh,
                                        or_undefined(a.step_params), or_undefined(a.w_hr),
                                        or_undefined(a.lengths)};
    const int parts = spec(C).workspace_parts;
    std::vector<Tensor> out = cache().replay(
        loop_key("forward", C, inputs, a.reverse, a.save_workspace), inputs,
        [&](const std::vector<Tensor>& in) {
          const OptTensor c0 = optional(in[2]), params = optional(in[4]),
                          w_hr = optional(in[5]), lengths = optional(in[6]);
          const ForwardArgs args{in[0],   in[1],     c0,
                                 in[3],   params,    w_hr,
                                 lengths, a.reverse, a.save_workspace,
                                 CudaLoop::kPerStep, a.sz};
          ForwardLoop<Device, C> loop(args);
          loop.run_per_step();
          auto [output, h_n, c_n, workspace] = loop.result();
          std::vector<Tensor> flat = {output, h_n, c_n};
          flat.insert(flat.end(), workspace.begin(), workspace.end());
          return flat;
        });
    std::vector<Tensor> workspace(out.begin() + 3, out.end());
    TORCH_INTERNAL_ASSERT(workspace.empty() || static_cast<int>(workspace.size()) == parts);
    return {out[0], out[1], out[2], workspace};
  }

  template <Cell C>
  static TimeLoopBackwardResult backward(const BackwardArgs& a) {
    const c10::cuda::CUDAGuard on_device(a.grad_output.device());
    if (!may_capture() || a.sz.T == 0 ||
        persistent_plan<C>(Device(a.grad_output), a.sz, a.w_hr.has_value(), /*backward=*/true,
                           a.grad_output, a.cuda_loop).blocks > 0) {
      return loops::backward<Device, C>(a);
    }
    std::vector<Tensor> inputs = {a.grad_output, a.grad_h_n, or_undefined(a.grad_c_n), a.w_hh,
                                  or_undefined(a.w_hr), or_undefined(a.step_params),
                                  or_undefined(a.lengths)};
    inputs.insert(inputs.end(), a.workspace.begin(), a.workspace.end());
    std::vector<Tensor> out = cache().replay(
        loop_key("backward", C, inputs, a.reverse, false), inputs,
        [&](const std::vector<Tensor>& in) {
          const OptTensor grad_c_n = optional(in[2]), w_hr = optional(in[4]),
                          params = optional(in[5]), lengths = optional(in[6]);
          const std::vector<Tensor> workspace(in.begin() + 7, in.end());
          const BackwardArgs args{in[0], in[1],     grad_c_n, in[3], w_hr, params, workspace,
                                  lengths, a.reverse, CudaLoop::kPerStep, a.sz};
          BackwardLoop<Device, C> loop(args);
          loop.run_per_step();
          auto [gx, gh0, gc0, gw, gp, gr] = loop.result();
          return std::vector<Tensor>{gx, gh0, gc0, gw, gp, gr};
        });
    return {out[0], out[1], out[2], out[3], out[4], out[5]};
  }

  // A layer's two directions: each its own captured loop where no persistent launch serves
  // both.
  template <Cell C>
  static std::array<TimeLoopForwardResult, 2> forward_both(const ForwardArgs& a0,
                                                           const ForwardArgs& a1) {
    const c10::cuda::CUDAGuard on_device(a0.xproj.device());
    if (!may_capture() || persistent_plan<C>(Device(a0.xproj), a0.sz, a0.w_hr.has_value(),
                                             /*backward=*/false, a0.xproj, a0.cuda_loop,
                                             /*share=*/2).blocks > 0) {
      return loops::forward_both<Device, C>(a0, a1);
    }
    return {forward<C>(a0), forward<C>(a1)};
  }
  template <Cell C>
  static std::array<TimeLoopBackwardResult, 2> backward_both(const BackwardArgs& a0,
                                                             const BackwardArgs& a1) {
    const c10::cuda::CUDAGuard on_device(a0.grad_output.device());
    if (!may_capture() ||
        persistent_plan<C>(Device(a0.grad_output), a0.sz, a0.w_hr.has_value(),
                           /*backward=*/true, a0.grad_output, a0.cuda_loop, /*share=*/2)
                .blocks > 0) {
      return loops::backward_both<Device, C>(a0, a1);
    }
    return {backward<C>(a0), backward<C>(a1)};
  }
};

}  // namespace graphs
}  // namespace cuda
}  // namespace fusedrnn
