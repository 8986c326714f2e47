// How many of its CPUs this process can use now: the CPUs it may run on, less the CPU time that
// everything else (other processes, and the hypervisor's steal on a virtual machine) used on
// them lately.
//
// A thread team or a threaded GEMM that puts a worker on a core another process keeps busy
// waits for that worker at every barrier, a scheduler time slice at a time (csrc/cpu/team.h).
// Team loops notice that themselves (TeamContention), but an op whose steps are too small for a
// team, or whose steps are BLAS calls, never forms one: with a busy loop on the second of 2
// cores, torch's 2-thread GEMMs inside a fused RNN (T=300 B=8 H=64) made its forward 13x slower
// than on one thread, and 1.1-1.4x at H=512-1024. So the ops also read the machine's load, from
// /proc/stat (Linux): at most once per kWindowNs, by whichever op call finds the last reading
// old, ~20 us a reading on a 2-CPU machine.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#include <time.h>
#include <unistd.h>
#endif

namespace fusedrnn {
namespace cpu {

class MachineLoad {
 public:
  // The CPUs this process may run on, less the cores' worth of time others used on them over
  // the last window, rounded to the nearest whole core; at least 1. Before the first window has
  // passed, or where the load cannot be read, every CPU the process may run on.
  static int free_cores() {
    State& s = state();
    const int64_t now = wall_ns();
    if (now - s.sampled_ns.load(std::memory_order_relaxed) >= kWindowNs &&
        !s.sampling.exchange(true, std::memory_order_acquire)) {
      sample(s, now);
      s.sampling.store(false, std::memory_order_release);
    }
    return s.free_cores.load(std::memory_order_relaxed);
  }

  // For tests and benchmarks (the probe fusedrnn_probes::machine_load): the last window's cores'
  // worth of CPU time used by others, free_cores(), the readings taken since the process started
  // and how many of them left fewer cores free than the process may run on.
  static std::vector<double> summary() {
    const int free = free_cores();
    const State& s = state();
    return {s.others_cores.load(std::memory_order_relaxed), static_cast<double>(free),
            static_cast<double>(s.readings.load(std::memory_order_relaxed)),
            static_cast<double>(s.busy_readings.load(std::memory_order_relaxed))};
  }

 private:
  // /proc/stat counts CPU time in ticks of 10 ms: over 100 ms of 2 CPUs a reading is within
  // ~0.2 cores, well inside the half core that rounds one way or the other.
  static constexpr int64_t kWindowNs = 100'000'000;

  struct State {
    std::atomic<int64_t> sampled_ns{INT64_MIN / 2};  // when the last reading was taken
    std::atomic<bool> sampling{false};               // a reading is being taken
    std::atomic<int> free_cores{1 << 20};            // no reading yet: no limit
    std::atomic<double> others_cores{0.0};
    std::atomic<int64_t> readings{0}, busy_readings{0};
    // The last reading's totals (only the sampling thread touches them).
    int64_t busy_ns = -1, own_ns = 0, at_ns = 0;
  };
  static State& state() {
    static State s;
    return s;
  }

  static int64_t wall_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  static void sample(State& s, int64_t now) {
    s.sampled_ns.store(now, std::memory_order_relaxed);
#if defined(__linux__)
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
    int cpus = 0;
    const int64_t busy = busy_ns_on(allowed, &cpus);
    timespec own{};
    if (busy < 0 || cpus == 0 || clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &own) != 0) return;
    const int64_t own_ns = int64_t{own.tv_sec} * 1'000'000'000 + own.tv_nsec;
    if (s.busy_ns >= 0 && now > s.at_ns) {
      // Our own threads may have run on CPUs outside today's affinity mask: never below 0.
      const double others =
          std::max(0.0, static_cast<double>((busy - s.busy_ns) - (own_ns - s.own_ns)) /
                            static_cast<double>(now - s.at_ns));
      s.others_cores.store(others, std::memory_order_relaxed);
      const int free = free_after(cpus, others, s.free_cores.load(std::memory_order_relaxed));
      s.free_cores.store(free, std::memory_order_relaxed);
      s.readings.fetch_add(1, std::memory_order_relaxed);
      if (free < cpus) s.busy_readings.fetch_add(1, std::memory_order_relaxed);
    }
    s.busy_ns = busy;
    s.own_ns = own_ns;
    s.at_ns = now;
#endif
  }

  // Cores free after a window in which others used `others` cores' worth of time on `cpus`
  // CPUs, `before` free until now. Fewer as soon as others used more than half a core more;
  // more only once others use less than a quarter of a core: while our own threads share a core
  // with a busy process, the two split it and the reading shows the other at about half a core
  // (busy loop on the second of 2 cores, our 2-thread calls in between: 0.40-0.55 in 5% of
  // windows), which rounding alone took for a free core; an idle machine reads 0-0.12 (p90).
  static int free_after(int cpus, double others, int before) {
    const double left = cpus - others;
    const int rounded = static_cast<int>(std::lround(left));
    const int free = rounded <= before ? rounded : std::max(before, static_cast<int>(left + 0.25));
    return std::max(1, free);
  }

#if defined(__linux__)
  // Time the CPUs in `allowed` have spent busy (user, nice, system, irq, softirq, steal) since
  // boot, from /proc/stat; -1 if it cannot be read. *cpus: how many of them it lists.
  static int64_t busy_ns_on(const cpu_set_t& allowed, int* cpus) {
    FILE* file = std::fopen("/proc/stat", "re");
    if (!file) return -1;
    static const double ns_per_tick = 1e9 / static_cast<double>(sysconf(_SC_CLK_TCK));
    char line[512];
    double ticks = 0;
    while (std::fgets(line, sizeof(line), file)) {
      // "cpuN user nice system idle iowait irq softirq steal ..." (the line "cpu " sums them all)
      if (std::strncmp(line, "cpu", 3) != 0) {
        if (*cpus > 0) break;  // the per-CPU lines come first
        continue;
      }
      if (line[3] < '0' || line[3] > '9') continue;
      char* rest = nullptr;
      const long id = std::strtol(line + 3, &rest, 10);
      if (id < 0 || id >= CPU_SETSIZE || !CPU_ISSET(id, &allowed)) continue;
      unsigned long long f[8] = {};
      if (std::sscanf(rest, "%llu %llu %llu %llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3],
                      &f[4], &f[5], &f[6], &f[7]) < 4) {
        continue;
      }
      ticks += static_cast<double>(f[0] + f[1] + f[2] + f[5] + f[6] + f[7]);
      ++*cpus;
    }
    std::fclose(file);
    return static_cast<int64_t>(ticks * ns_per_tick);
  }
#endif
};

}  // namespace cpu
}  // namespace fusedrnn
