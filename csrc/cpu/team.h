// A team of threads that stays together for a whole time loop.
//
// A per-step at::parallel_for forks and joins the thread pool twice a step (GEMM, then gates):
// at small sizes that costs more than the step's arithmetic. Instead the loops open ONE parallel
// region per op call; each worker owns a fixed range of hidden-unit blocks for the whole sequence
// (its slice of every gate, so the gate math needs no other thread's data) and the workers meet
// at one barrier per step, where the next step needs every unit of the state. Where the batch is
// large enough and W_hh small enough to be read whole by every worker, each worker owns batch
// rows instead (every unit of them): rows never read each other's state, so the workers run
// their whole loops without a barrier (see plan_team).
//
// On a busy machine (a data loader or another process on the other cores) a worker is
// descheduled for a scheduler time slice (milliseconds) at a time, and every barrier then waits
// for it: measured with a busy loop on the second of 2 cores, a team of two made a 300-step GRU
// loop (B=8, H=64) take ~100 ms instead of ~3 ms on one thread. So the first worker (the calling
// thread) times its barrier waits against its own work: when the team is clearly slower than one
// worker would be, the team dissolves mid-loop and the first worker finishes every block alone;
// a dissolved loop, or two in a row the team made slower, mark the machine busy, and for a
// back-off window every op runs on one thread, torch's own intra-op work inside our ops
// included (ThreadLimitWhileContended). Loops too small for a team, and the BLAS work around
// them, learn of a busy machine from its load instead (csrc/cpu/machine_load.h): ops use at most
// the cores other processes leave free.
// The waiting policy stays OpenMP's spinning barrier (0.4 us between 2 idle cores; a futex wake
// costs 10-50 us, more than a small step); OMP_WAIT_POLICY=PASSIVE, which stops torch's pool
// threads spinning on a busy machine, makes it sleep too (README, "On a busy machine").
#pragma once

#include <ATen/Parallel.h>

#include "../host_threads.h"
#include "machine_load.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

// MKL's thread-local thread count, C interface (mkl_service.h maps mkl_set_num_threads_local to
// it; the lower-case symbol is the Fortran one, which takes a pointer). x86-64 torch builds link
// MKL into libtorch_cpu and export it; weak, so builds without MKL load and see null. Returns the
// previous local setting, 0 = none.
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));

namespace fusedrnn {
namespace cpu {

// Whether a team of workers has lately made a loop slower than one worker would have been (see
// the top of this file). Process-wide: the other cores are busy for every op alike. After a
// contended loop the team is off for a window that doubles with each contended probe (100 ms up
// to 6.4 s) and halves with each uncontended one, so a machine that stays busy pays for a few
// steps of a probing team now and then, and one that becomes idle again gets its team back
// within the window.
class TeamContention {
 public:
  static bool active() { return now_ns() < single_until_ns().load(std::memory_order_relaxed); }

  // The outcome of one team loop: whether it dissolved mid-loop (marks contention at once),
  // whether the team made it slower than one worker (marks contention the second time in a row:
  // a lone slow loop on an idle machine is a hiccup), whether contention is recorded at all;
  // whether the team split the batch rows (counted only).
  static void record_loop(bool dissolved, bool slower, bool record, bool split_rows) {
    counts()[0].fetch_add(1, std::memory_order_relaxed);
    if (split_rows) counts()[3].fetch_add(1, std::memory_order_relaxed);
    if (dissolved) counts()[1].fetch_add(1, std::memory_order_relaxed);
    if (!record) return;
    if (!dissolved && !slower) {
      // One level down, not back to the first window: on a machine that stays busy about half
      // the probing loops run at full speed (the partner happened to be scheduled), and a reset
      // made every other window the shortest.
      int level = probes().load(std::memory_order_relaxed);
      while (level > 0 && !probes().compare_exchange_weak(level, level - 1,
                                                          std::memory_order_relaxed)) {
      }
      slow_streak().store(0, std::memory_order_relaxed);
      return;
    }
    if (!dissolved && slow_streak().fetch_add(1, std::memory_order_relaxed) == 0) return;
    slow_streak().store(0, std::memory_order_relaxed);
    counts()[2].fetch_add(1, std::memory_order_relaxed);
    const int level = std::min(probes().fetch_add(1, std::memory_order_relaxed), kMaxDoublings);
    single_until_ns().store(now_ns() + (kFirstWindowNs << level), std::memory_order_relaxed);
  }

  // Since the process started: team loops run, teams dissolved mid-loop, loops that marked
  // contention, team loops split by batch rows (the probe fusedrnn_probes::team_counts, for
  // tests and benchmarks).
  static std::vector<int64_t> totals() {
    return {counts()[0].load(), counts()[1].load(), counts()[2].load(), counts()[3].load()};
  }

 private:
  static constexpr int64_t kFirstWindowNs = 100'000'000;
  static constexpr int kMaxDoublings = 6;

  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static std::atomic<int64_t>& single_until_ns() {
    static std::atomic<int64_t> until{0};
    return until;
  }
  static std::atomic<int64_t>* counts() {
    static std::atomic<int64_t> values[4] = {0, 0, 0, 0};
    return values;
  }
  static std::atomic<int>& probes() {  // contended loops in a row
    static std::atomic<int> count{0};
    return count;
  }
  static std::atomic<int>& slow_streak() {  // slower (not dissolved) loops in a row
    static std::atomic<int> count{0};
    return count;
  }
};

// Threads our ops may use now: torch's intra-op thread count, one while teams have lately found
// the machine busy (TeamContention), else at most the cores other processes leave free.
inline int64_t usable_threads() {
  const int64_t threads = at::get_num_threads();
  if (threads < 2) return threads;
  if (TeamContention::active()) return 1;
  return std::min<int64_t>(threads, MachineLoad::free_cores());
}

// Limiting torch's intra-op threads on this thread (OpenMP regions, at::parallel_for, MKL) to
// `threads`, and restoring them: thread-local settings only. omp == 0: nothing was limited.
struct SavedThreadCounts {
  int omp = 0, mkl = 0;
};
inline SavedThreadCounts limit_threads(int64_t threads) {
  SavedThreadCounts saved;
#ifdef _OPENMP
  saved.omp = omp_get_max_threads();
  omp_set_num_threads(static_cast<int>(threads));
  if (MKL_Set_Num_Threads_Local) saved.mkl = MKL_Set_Num_Threads_Local(static_cast<int>(threads));
#endif
  return saved;
}
inline void restore_thread_counts(SavedThreadCounts saved) {
#ifdef _OPENMP
  if (saved.omp == 0) return;
  omp_set_num_threads(saved.omp);
  if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(saved.mkl);
#endif
}

// The thread limit below, held by a thread past one scope: for the rest of an autograd
// backward pass, where torch's own nodes around the fused ones (the input projections' GEMMs,
// bias sums, cat and stack) would wait for a descheduled pool thread just as a team barrier does.
// The pass's end may be signalled from another thread (the engine runs its final callbacks on
// whichever thread finishes the graph, a device worker for mixed graphs), so the holder lifts
// the limit: at once when the end is signalled on it, else at its next fused op.
class HeldThreadLimit {
 public:
  using EndFlag = std::shared_ptr<std::atomic<bool>>;

  // Limits this thread to usable_threads() while the machine is busy and it holds no limit yet.
  // Returns the flag that ends the limit (pass it to end()), or null when nothing was limited.
  static EndFlag hold() {
    lift_if_ended();
    Held& held = this_thread();
    if (held.ended || at::in_parallel_region()) return nullptr;
    const int64_t threads = usable_threads();
    if (threads >= at::get_num_threads()) return nullptr;
    held.saved = limit_threads(threads);
    held.ended = std::make_shared<std::atomic<bool>>(false);
    return held.ended;
  }
  static void end(const EndFlag& ended) {
    ended->store(true, std::memory_order_release);
    lift_if_ended();
  }
  static void lift_if_ended() {
    Held& held = this_thread();
    if (!held.ended || !held.ended->load(std::memory_order_acquire)) return;
    restore_thread_counts(held.saved);
    held = Held{};
  }

 private:
  struct Held {
    SavedThreadCounts saved;
    EndFlag ended;  // null: no limit held
  };
  static Held& this_thread() {
    thread_local Held held;
    return held;
  }
};

// The thread-limit scopes of csrc/host_threads.h (implemented in host_threads.cpp over the
// functions above), by the names the CPU kernels use.
using ThreadLimitScope = host_threads::Limit;
using OneThreadScope = host_threads::OneThread;
using ThreadLimitWhileContended = host_threads::LimitWhileContended;

// The threads usable now (lifting a backward pass's limit that has ended first).
inline int64_t usable_threads_now() {
  HeldThreadLimit::lift_if_ended();
  return usable_threads();
}


// Multiply-adds below which a torch GEMM inside our ops runs on one thread whatever the machine:
// MKL threads even a 300x96x1 product (MKL_VERBOSE: NThr 2), whose parallel region costs more
// than the arithmetic and, on a busy machine, waits a scheduler time slice for the second thread
// (GRU T=300 B=1 H=32 forward, busy loop on the other core: 0.27 ms on one thread, 2.9 ms on
// two). 2^20 multiply-adds are ~20-40 us on one core, about the cost of waking a sleeping pool.
constexpr int64_t kMinParallelGemmMacs = int64_t{1} << 20;

// An op body under ThreadLimitWhileContended, for registration:
//   m.impl("op", &thread_limited<&op>::call);
template <auto Op>
struct thread_limited;
template <typename R, typename... Args, R (*Op)(Args...)>
struct thread_limited<Op> {
  static R call(Args... args) {
    const ThreadLimitWhileContended limit;
    return Op(std::forward<Args>(args)...);
  }
};

// Multiply-adds per step a worker needs before one more worker pays for the per-step barrier
// (an OpenMP barrier between the 2 cores of the project's machine costs ~0.4 us). Measured there
// at T=300 B=8 H=64 (op level, us/step, 1 worker vs 2): RNN, 32768 MACs: 1.15 vs 1.27; GRU,
// 98304 MACs: 4.0 vs 2.6-3.1; LSTM, 131072 MACs: 7.2 vs 5.4.
constexpr int64_t kMinStepMacsPerWorker = 32768;

// Whether a team pays where the rule above allows one, learned on the machine at hand: the rule
// was measured on one CPU, and on another a team of two is slower than one worker at the same
// step size (a 2-vCPU Intel Xeon, idle, GRU T=300 B=8 H=64: 1.04x forward, 1.16x
// forward+backward). Per kind of loop and class of step size (per-step multiply-adds, by powers
// of two) the loops time themselves: the first kExplore alternate team / one worker, then the
// cheaper way per multiply-add runs, and the other is tried again every kReprobe-th loop, so a
// change of load or of machine is seen. A team must be kTeamGain cheaper: it takes a second core
// from whatever else runs. Only steps under kMaxLearnedStepMacs learn: above it a barrier costs a
// few percent of a step's work at most (teams of two there: 0.5-0.75x one worker's time on the
// same Xeon), and a noisy exploring loop must not cost a large layer its team.
// FUSEDRNN_TEAM_CHOICE=rule (tests) turns the learning off: a team wherever the rule allows.
class TeamChoice {
 public:
  static constexpr int kSizes = 48, kMaxGates = 7;
  static constexpr int64_t kExplore = 4, kReprobe = 16;
  static constexpr double kTeamGain = 0.95;
  static constexpr int64_t kMaxLearnedStepMacs = 16 * kMinStepMacsPerWorker;

  // The record for a loop: forward and backward loops, and cells of different gate counts, cost
  // differently per multiply-add (a fwd+bwd pass alternates them), so each kind learns apart.
  // gates 0: a diagonal recurrence (IndRNN), whose multiply-adds each carry an activation.
  // A team split by batch rows (no barriers) learns apart from one split by units.
  static int class_of(bool backward, int64_t gates, int64_t macs_per_step, bool split_rows) {
    int size = 0;
    while (size + 1 < kSizes && (int64_t{2} << size) <= macs_per_step) ++size;
    const int64_t kind = (split_rows ? 2 * (kMaxGates + 1) : 0) +
                         (backward ? kMaxGates + 1 : 0) + std::min<int64_t>(gates, kMaxGates);
    return static_cast<int>(kind) * kSizes + size;
  }
  static bool learning() {
    static const bool on = [] {
      const char* value = std::getenv("FUSEDRNN_TEAM_CHOICE");
      return !(value && std::string_view(value) == "rule");
    }();
    return on;
  }
  // Whether the next loop of class c runs on its team.
  static bool use_team(int c) {
    Class& k = classes()[c];
    const int64_t n = k.loops.fetch_add(1, std::memory_order_relaxed);
    if (n < kExplore) return n % 2 == 0;
    const double team = k.team_cost.load(std::memory_order_relaxed);
    const double alone = k.alone_cost.load(std::memory_order_relaxed);
    const bool team_cheaper = team > 0 && alone > 0 ? team < kTeamGain * alone : alone == 0;
    return n % kReprobe == 0 ? !team_cheaper : team_cheaper;
  }
  // A loop of class c took `ticks` for `macs` multiply-adds, on a team or not.
  static void record(int c, bool team, double ticks, double macs) {
    if (macs <= 0 || ticks <= 0) return;
    std::atomic<double>& cost = team ? classes()[c].team_cost : classes()[c].alone_cost;
    const double seen = ticks / macs, before = cost.load(std::memory_order_relaxed);
    cost.store(before > 0 ? before + (seen - before) / 4 : seen, std::memory_order_relaxed);
  }

 private:
  struct Class {
    std::atomic<int64_t> loops{0};
    // Ticks per multiply-add, a running average (weight 1/4 for the newest loop); 0: none yet.
    std::atomic<double> team_cost{0.0}, alone_cost{0.0};
  };
  static Class* classes() {
    static Class values[4 * (kMaxGates + 1) * kSizes];
    return values;
  }
};

// How a time loop runs: `workers` threads, splitting the unit blocks or the batch rows among
// them, and the TeamChoice record its time goes to (-1: none, where no team was possible).
struct TeamPlan {
  int64_t workers = 1;
  bool split_rows = false;
  int choice_class = -1;
  double loop_macs = 0;  // multiply-adds of the whole loop
};

// Batch rows a worker needs for a team split by rows: the packed kernels' register blocks hold 6
// (LSTM) to 8 rows, and fewer leave FMA chains idle.
constexpr int64_t kMinRowsPerWorker = 8;
// The largest W_hh (with W_hr) every worker of a team split by rows reads whole each step: each
// streams all of it instead of its share, which pays while it stays in a core's L2 cache.
constexpr int64_t kMaxRowSplitWeightBytes = int64_t{2} << 20;

// FUSEDRNN_TEAM_SPLIT=units (tests, before/after timings) keeps every team on unit blocks.
inline bool rows_split_allowed() {
  static const bool allowed = [] {
    const char* value = std::getenv("FUSEDRNN_TEAM_SPLIT");
    return !(value && std::string_view(value) == "units");
  }();
  return allowed;
}

// The plan for a loop of `steps` steps over num_blocks unit blocks and `rows` batch rows (a
// forward or backward loop of a cell with `gates` gates, 0 for a diagonal recurrence; see
// TeamChoice::class_of): torch.get_num_threads() workers at most, one when the per-step product
// is a BLAS call (can_split false: BLAS threads itself and must not run inside our region), when
// already inside a parallel region, when a step is too small to split, while the machine is busy
// (usable_threads()), or where one worker has proved cheaper (TeamChoice). The workers split the
// rows where each gets kMinRowsPerWorker and the weights are small enough, or whatever their size
// where the step needs whole rows (`whole_rows`: a normalised step, which has no unit split);
// else the unit blocks.
inline TeamPlan plan_team(bool can_split, int64_t num_blocks, int64_t rows, int64_t macs_per_step,
                          int64_t steps, bool backward, int64_t gates, int64_t element_bytes,
                          bool whole_rows) {
  if (!can_split || at::in_parallel_region()) return {};
  const int64_t by_work = std::max<int64_t>(1, macs_per_step / kMinStepMacsPerWorker);
  const int64_t threads = std::min<int64_t>(usable_threads(), by_work);
  const int64_t weight_bytes = rows > 0 ? macs_per_step / rows * element_bytes : 0;
  const bool split_rows = rows_split_allowed() &&
                          (whole_rows || weight_bytes <= kMaxRowSplitWeightBytes) &&
                          std::min(threads, rows / kMinRowsPerWorker) >= 2;
  const int64_t allowed =
      std::min(threads, split_rows ? rows / kMinRowsPerWorker : num_blocks);
  if (allowed < 2 || !TeamChoice::learning() ||
      macs_per_step >= TeamChoice::kMaxLearnedStepMacs) {
    return {allowed, split_rows && allowed >= 2};
  }
  const int c = TeamChoice::class_of(backward, gates, macs_per_step, split_rows);
  const bool team = TeamChoice::use_team(c);
  return {team ? allowed : 1, team && split_rows, c,
          static_cast<double>(macs_per_step) * static_cast<double>(steps)};
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
  if (at::in_parallel_region() || usable_threads() < 2) return false;
  return macs_per_step < 2 * kMinStepMacsPerWorker &&
         steps * macs_per_step >= kMinLoopMacsForConcurrentDirections;
}

// Time stamps for barrier waits: cheap enough to read twice a step (the TSC on x86-64).
inline int64_t ticks() {
#if defined(__x86_64__)
  return static_cast<int64_t>(__rdtsc());
#else
  return std::chrono::steady_clock::now().time_since_epoch().count();
#endif
}

// The first worker's account of a team loop, and the step at which the team dissolves.
// Times are ticks(). The mid-loop test counts from the loop's start; the whole-loop one from the
// region's, so waking the other workers counts as waiting (on a busy machine that too waits for a
// scheduler time slice), but a process's first region, which creates the pool threads, cannot
// dissolve a team.
struct TeamClock {
  // A team this many times slower than one worker is dissolved mid-loop (seen after
  // kMinBarriers barriers and kMinDissolveNs of loop: on the project's shared 2-vCPU machine the
  // second vCPU, idle otherwise, stalls for 0.1-2 ms now and then); one this much slower over a
  // whole loop marks contention. Idle, the first worker's estimate of one worker's time is
  // 0.7-1.1x the team's (barrier cost, uneven blocks); descheduled partners made it 10-50x.
  // A long loop dissolves at a smaller slowdown: a stall of a few milliseconds on an idle machine
  // moves a ratio over 10 ms by well under kLongDissolveRatio, and a team 1.5-3x slower (partner
  // scheduled about half the time) would otherwise run a whole long loop that slowly.
  static constexpr double kDissolveRatio = 3.0, kLongDissolveRatio = 1.5, kSlowerRatio = 1.5;
  static constexpr int64_t kMinBarriers = 8, kMinDissolveNs = 1'000'000,
                           kMinLongDissolveNs = 10'000'000;

  int64_t num_blocks = 0;  // the loop's unit blocks (a dissolved team's first worker takes all)
  // The first worker's share of the loop's work: own of total unit blocks, or batch rows.
  int64_t own_work = 0, total_work = 0;
  int64_t region_start = 0, loop_start = 0;  // the region's (before waking workers), the loop's
  std::chrono::steady_clock::time_point loop_start_time;
  int64_t waking = 0, waited = 0;            // waiting before the loop, and at its barriers
  std::atomic<int64_t> dissolve_at{-1};  // the barrier after which the first worker goes alone

  // FUSEDRNN_TEAM_DISSOLVE_AT=k (tests only): every team dissolves after its k-th barrier and
  // records no contention, so the dissolving path runs on an idle machine. 0 when unset.
  static int64_t forced_dissolve_at() {
    static const int64_t at = [] {
      const char* value = std::getenv("FUSEDRNN_TEAM_DISSOLVE_AT");
      return value ? std::max<int64_t>(0, std::atoll(value)) : 0;
    }();
    return at;
  }

  // How many times longer the team has taken than the first worker alone would have (one worker
  // doing every block at the first worker's rate): over the loop so far, or the whole region.
  double slowdown_in_loop(int64_t now) const { return ratio(now - loop_start, waited); }

  bool dissolve_now(int64_t now) const {
    const double slowdown = slowdown_in_loop(now);
    if (slowdown <= kLongDissolveRatio) return false;
    const auto elapsed = std::chrono::steady_clock::now() - loop_start_time;
    return elapsed >= std::chrono::nanoseconds(slowdown > kDissolveRatio ? kMinDissolveNs
                                                                         : kMinLongDissolveNs);
  }
  double slowdown_in_region(int64_t now) const {
    return ratio(now - region_start, waking + waited);
  }

 private:
  double ratio(int64_t elapsed, int64_t waiting) const {
    const double alone = static_cast<double>(elapsed - waiting) * total_work / own_work;
    return alone > 0 ? static_cast<double>(elapsed) / alone : kDissolveRatio;
  }
};

// What a worker owns: unit blocks [block_begin, block_end) of batch rows [row_begin, row_end);
// id is 0..workers-1. A team splits either the blocks (every worker has every row) or the rows
// (every worker has every block, and needs no other's results: no barriers).
struct Worker {
  int64_t block_begin, block_end, row_begin, row_end, id, workers;
  bool split_rows = false;
  TeamClock* clock = nullptr;  // shared by the team; null for a team of one
  int64_t barriers_passed = 0;

  int64_t rows() const { return row_end - row_begin; }

  // This worker's share [first, second) of another range of n blocks (same rule as its own).
  std::pair<int64_t, int64_t> share(int64_t n) const {
    if (split_rows) return {0, n};
    return {n * id / workers, n * (id + 1) / workers};
  }

  // Waits until every worker has arrived. Returns false when this worker is to leave the loop
  // now: the team dissolved here, and the first worker, from now on a team of one, carries on
  // with every block (its range and share() cover them all).
  [[nodiscard]] bool barrier() {
#ifdef _OPENMP
    if (workers < 2 || split_rows) return true;
    const bool first = id == 0;
    const int64_t arrived = first ? ticks() : 0;
#pragma omp barrier
    ++barriers_passed;
    // Written by the first worker before this barrier, so every worker reads the same value.
    if (clock->dissolve_at.load(std::memory_order_acquire) == barriers_passed) {
      if (!first) return false;
      block_begin = 0;
      block_end = clock->num_blocks;
      workers = 1;
      return true;
    }
    if (first) {
      const int64_t now = ticks();
      clock->waited += now - arrived;
      if (barriers_passed > TeamClock::kMinBarriers && clock->dissolve_at.load(std::memory_order_relaxed) < 0 &&
          clock->dissolve_now(now)) {
        clock->dissolve_at.store(barriers_passed + 1, std::memory_order_release);
      }
    }
#endif
    return true;
  }
};

// Runs fn(worker) on plan.workers threads at once (the time loop inside fn calls
// worker.barrier() and returns when it says so), then reports the loop to TeamContention and its
// time to TeamChoice. The blocks (or rows) are split by the team actually granted, which may be
// smaller than asked (nested regions); with one thread fn runs inline.
template <typename Fn>
void run_team(const TeamPlan& plan, int64_t num_blocks, int64_t rows, const Fn& fn) {
  const int64_t team = plan.workers;
#ifdef _OPENMP
  if (team > 1) {
    TeamClock clock;
    clock.num_blocks = num_blocks;
    clock.region_start = ticks();
    if (TeamClock::forced_dissolve_at() > 0) clock.dissolve_at = TeamClock::forced_dissolve_at();
    int64_t first_done = 0;
    bool granted_team = false, first_dissolved = false, split_rows = false;
#pragma omp parallel num_threads(static_cast<int>(team))
    {
      const int64_t workers = omp_get_num_threads(), id = omp_get_thread_num();
      const bool by_rows = plan.split_rows && workers > 1;
      Worker me = by_rows ? Worker{0, num_blocks, rows * id / workers, rows * (id + 1) / workers,
                                   id, workers, true, &clock}
                          : Worker{num_blocks * id / workers, num_blocks * (id + 1) / workers, 0,
                                   rows, id, workers, false, &clock};
      if (id == 0) {
        clock.own_work = by_rows ? me.rows() : me.block_end - me.block_begin;
        clock.total_work = by_rows ? rows : num_blocks;
        granted_team = workers > 1;
        split_rows = by_rows;
      }
      const int64_t arrived = ticks();
#pragma omp barrier
      if (id == 0) {
        clock.loop_start = ticks();
        clock.loop_start_time = std::chrono::steady_clock::now();
        clock.waking = clock.loop_start - arrived;
      }
      fn(me);
      if (id == 0) {
        first_done = ticks();
        first_dissolved = me.workers == 1;
      }
    }
    if (granted_team) {
      // The region's end waits for the other workers' last step: part of the first's waiting.
      const int64_t finish = ticks();
      clock.waited += finish - first_done;
      TeamContention::record_loop(first_dissolved,
                                  clock.slowdown_in_region(finish) > TeamClock::kSlowerRatio,
                                  /*record=*/TeamClock::forced_dissolve_at() == 0, split_rows);
      // A dissolved loop says the machine is busy, not what a team costs on it.
      if (plan.choice_class >= 0 && !first_dissolved) {
        TeamChoice::record(plan.choice_class, true,
                           static_cast<double>(finish - clock.region_start), plan.loop_macs);
      }
    }
    return;
  }
#endif
  Worker me{0, num_blocks, 0, rows, 0, 1};
  const int64_t start = plan.choice_class >= 0 ? ticks() : 0;
  fn(me);
  if (plan.choice_class >= 0) {
    TeamChoice::record(plan.choice_class, false, static_cast<double>(ticks() - start),
                       plan.loop_macs);
  }
}

}  // namespace cpu
}  // namespace fusedrnn
