// A team of threads that stays together for a whole time loop.
//
// A per-step at::parallel_for forks and joins the thread pool twice a step (GEMM, then gates):
// at small sizes that costs more than the step's arithmetic. Instead the loops open ONE parallel
// region per op call; each worker owns a fixed range of hidden-unit blocks for the whole sequence
// (its slice of every gate, so the gate math needs no other thread's data) and the workers meet
// at one barrier per step, where the next step needs every unit of the state.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fusedrnn {
namespace cpu {

// Multiply-adds per step a worker needs before one more worker pays for the per-step barrier
// (an OpenMP barrier between the 2 cores of the project's machine costs ~0.4 us). Measured there
// at T=300 B=8 H=64 (op level, us/step, 1 worker vs 2): RNN, 32768 MACs: 1.15 vs 1.27; GRU,
// 98304 MACs: 4.0 vs 2.6-3.1; LSTM, 131072 MACs: 7.2 vs 5.4.
constexpr int64_t kMinStepMacsPerWorker = 32768;

// Workers for a loop of num_blocks unit blocks: torch.get_num_threads() at most, one when the
// per-step product is a BLAS call (can_split false: BLAS threads itself and must not run inside
// our region), when already inside a parallel region, or when a step is too small to split.
inline int64_t team_size(bool can_split, int64_t num_blocks, int64_t macs_per_step) {
  if (!can_split || at::in_parallel_region()) return 1;
  const int64_t by_work = std::max<int64_t>(1, macs_per_step / kMinStepMacsPerWorker);
  return std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), num_blocks, by_work});
}

// Multiply-adds a direction's whole time loop needs before running the two directions of a
// bidirectional layer at once pays: the pool thread that takes one direction has usually gone
// idle, and waking it costs tens of microseconds on the project's 2-vCPU machine (measured there
// at T=300 B=1 H=32, two layers: RNN, 0.3M MACs a direction, 0.72x slower at once; LSTM, 1.2M,
// 1.12x faster).
constexpr int64_t kMinLoopMacsForConcurrentDirections = int64_t{1} << 20;

// Whether the two directions of a bidirectional layer should run at once, one thread each, rather
// than one after the other: when a direction alone would get one worker (with a team of its own
// it already uses the cores, and measured no faster at once) and its loop is long enough to pay
// for waking a second thread. Measured on the project's machine (two layers, inference, at once
// vs one after the other): T=300 B=8 H=64 RNN 1.31x, GRU/LSTM (teams of 2) 1.0x.
inline bool run_directions_concurrently(int64_t steps, int64_t macs_per_step) {
  if (at::in_parallel_region() || at::get_num_threads() < 2) return false;
  return macs_per_step < 2 * kMinStepMacsPerWorker &&
         steps * macs_per_step >= kMinLoopMacsForConcurrentDirections;
}

// The unit blocks [block_begin, block_end) a worker owns; id is 0..workers-1.
struct Worker {
  int64_t block_begin, block_end, id, workers;

  // This worker's share [first, second) of another range of n blocks (same rule as its own).
  std::pair<int64_t, int64_t> share(int64_t n) const {
    return {n * id / workers, n * (id + 1) / workers};
  }
};

// Runs fn(worker) on `team` threads at once (the time loop inside fn calls team_barrier()).
// The blocks are split by the team actually granted, which may be smaller than asked (nested
// regions); with one thread fn runs inline and barriers do nothing.
template <typename Fn>
void run_team(int64_t team, int64_t num_blocks, const Fn& fn) {
#ifdef _OPENMP
  if (team > 1) {
#pragma omp parallel num_threads(static_cast<int>(team))
    {
      const int64_t workers = omp_get_num_threads(), id = omp_get_thread_num();
      fn(Worker{num_blocks * id / workers, num_blocks * (id + 1) / workers, id, workers});
    }
    return;
  }
#endif
  fn(Worker{0, num_blocks, 0, 1});
}

// Every worker of the team waits here until all have arrived (a no-op outside a region).
inline void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

}  // namespace cpu
}  // namespace fusedrnn
