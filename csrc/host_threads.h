// The host's threads as the backend-neutral layers (csrc/functional.cpp, csrc/autograd.cpp) use
// them: torch's intra-op threads, which on a busy machine other processes share. What these
// layers ask is declared here; the CPU backend, which measures the machine, answers it
// (csrc/cpu/host_threads.cpp, from csrc/cpu/team.h and machine_load.h), so these layers name no
// backend. Thread-local settings only: nothing here changes another thread's count.
#pragma once

#include <cstdint>
#include <functional>

namespace fusedrnn {
namespace host_threads {

// For its lifetime, torch's intra-op threads on this thread limited to `threads` (nothing
// changes when that is 0 or no fewer than it has, or inside a parallel region).
class Limit {
 public:
  explicit Limit(int64_t threads);
  ~Limit();
  Limit(const Limit&) = delete;
  Limit& operator=(const Limit&) = delete;

 private:
  int saved_[2] = {0, 0};  // the counts to restore (the backend's; 0: nothing limited)
};

// The threads our work may use now: torch's count, fewer while other processes keep cores busy.
int64_t usable();

// Limit(usable()): for a whole module call, so torch's own ops inside it (the input
// projections' GEMMs, cat, stack) do not wait for a descheduled pool thread either.
class LimitWhileContended : public Limit {
 public:
  LimitWhileContended() : Limit(usable()) {}
};

// One thread for the scope when enabled.
class OneThread : public Limit {
 public:
  explicit OneThread(bool enable) : Limit(enable ? 1 : 0) {}
};

// Whether a torch GEMM of `macs` multiply-adds is too small for more than one thread (a parallel
// region would cost more than the arithmetic).
bool gemm_too_small_to_split(int64_t macs);

// Whether the two directions of a bidirectional layer should run at once, one thread each, for
// a loop of `steps` steps of `macs_per_step` recurrent multiply-adds.
bool run_directions_concurrently(int64_t steps, int64_t macs_per_step);

// While the machine is busy, limits this thread's threads until the returned function is called
// (the end of an autograd backward pass, from any thread) or its last copy is destroyed; an
// empty function when nothing was limited.
std::function<void()> limit_until_called();

}  // namespace host_threads
}  // namespace fusedrnn
