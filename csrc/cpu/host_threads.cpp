// csrc/host_threads.h answered from the CPU backend's measurements of the machine (team.h:
// contention seen by the thread teams, the machine's load, the one-thread rule for small GEMMs).
#include "../host_threads.h"

#include <memory>

#include "team.h"

namespace fusedrnn {
namespace host_threads {

Limit::Limit(int64_t threads) {
  if (threads > 0 && threads < at::get_num_threads() && !at::in_parallel_region()) {
    const cpu::SavedThreadCounts saved = cpu::limit_threads(threads);
    saved_[0] = saved.omp;
    saved_[1] = saved.mkl;
  }
}

Limit::~Limit() { cpu::restore_thread_counts({saved_[0], saved_[1]}); }

int64_t usable() { return cpu::usable_threads_now(); }

bool gemm_too_small_to_split(int64_t macs) { return macs < cpu::kMinParallelGemmMacs; }

bool run_directions_concurrently(int64_t steps, int64_t macs_per_step) {
  return cpu::run_directions_concurrently(steps, macs_per_step);
}

std::function<void()> limit_until_called() {
  const cpu::HeldThreadLimit::EndFlag ended = cpu::HeldThreadLimit::hold();
  if (!ended) return {};
  // Ended when called, and at the latest when the last copy of the function is destroyed (a
  // backward pass that throws never runs its final callbacks, but drops them).
  const std::shared_ptr<void> end_when_dropped(
      nullptr, [ended](void*) { cpu::HeldThreadLimit::end(ended); });
  return [ended, end_when_dropped] { cpu::HeldThreadLimit::end(ended); };
}

}  // namespace host_threads
}  // namespace fusedrnn
