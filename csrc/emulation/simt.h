// SIMT emulation of the CUDA device runtime on the CPU (test builds only; see ../cuda/cuda_api.h
// and tests/emulation.py). Under FUSEDRNN_SIMT_EMULATION the project's .cu sources compile with
// the host compiler and run here. Every CUDA thread of a block is a fiber, cooperatively
// scheduled on one OS thread per block in flight. It catches index, barrier and warp-exchange
// bugs, not timing or memory-model ones:
//  * threads start lazily in a pseudo-random order, and a fiber runs threads to completion one
//    after another, parking only at __syncthreads, a warp collective or grid_sync: a missing
//    barrier shows as a read of data no thread has written yet;
//  * dynamic shared memory is 0xFF bytes (NaN as float) at every block's start;
//  * a barrier or collective that can never complete (a named thread exited, threads wait at
//    different __syncthreads, masks disagree) fails the launch with a message, never hangs.
// Not modelled: timing, the weak memory model, races inside a block (threads interleave only at
// barriers and collectives), preemption (a thread spinning on another thread's write hangs),
// sticky errors, __CUDA_ARCH__ (shared headers take their host branch).
#pragma once

#ifdef __CUDACC__
#error "simt.h is the CPU emulation; nvcc compiles the real CUDA sources"
#endif

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <numeric>
#include <source_location>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && !defined(FUSEDRNN_SIMT_UCONTEXT) && !(defined(__CET__) && (__CET__ & 2))
#define FUSEDRNN_SIMT_ASM_SWITCH 1
#else
#include <ucontext.h>  // other CPUs, or shadow stacks (CET), which glibc's swapcontext handles
#endif

// ------------------------------------------------------------------------- keywords and types

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A block's fibers share one OS thread and an OS thread runs its blocks one after another, so
// per-OS-thread storage is per-block storage. Unlike dynamic shared memory it is not poisoned:
// a block sees what the previous block on its OS thread left there.
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))  // accepted wherever CUDA's is

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};
typedef struct CUstream_st* cudaStream_t;
enum cudaError {  // CUDA's values
  cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719, cudaErrorCooperativeLaunchTooLarge = 720,
};
typedef enum cudaError cudaError_t;
inline constexpr int warpSize = 32;

// Bit-compatible with IEEE binary16 / bfloat16 (torch's Half / BFloat16 buffers are read as
// these); explicit conversions only, as under nvcc with -D__CUDA_NO_HALF_CONVERSIONS__.
struct __half { unsigned short __x; };
struct __nv_bfloat16 { unsigned short __x; };
inline float __half2float(__half h) { return float(std::bit_cast<_Float16>(h.__x)); }
inline __half __float2half(float v) {  // the conversion rounds to nearest even
  return {std::bit_cast<unsigned short>(static_cast<_Float16>(v))};
}
inline __half __float2half_rn(float v) { return __float2half(v); }
inline float __bfloat162float(__nv_bfloat16 b) {
  return std::bit_cast<float>(uint32_t(b.__x) << 16);
}
inline __nv_bfloat16 __float2bfloat16(float v) {
  uint32_t u = std::bit_cast<uint32_t>(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t(u >> 16 | 0x40)};  // NaN stays (quiet)
  u += 0x7fffu + (u >> 16 & 1);                                            // nearest, ties even
  return {uint16_t(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __float2bfloat16(v); }

// Bit intrinsics that ballots and CAS loops use.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
// A load that bypasses L1 (ld.global.cg): the emulation has no caches to bypass.
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

// ---------------------------------------------------------------------------------- the engine

namespace fusedrnn {
namespace simt {
namespace detail {

constexpr size_t kStackBytes = 128 << 10;        // per fiber, above a guard page
constexpr uint64_t kMaxCooperativeBlocks = 256;  // one OS thread each
constexpr size_t kMaxSharedBytes = 227 << 10;    // sm_90's opt-in maximum per block
constexpr int kMaxGuardedStacks = 16384;         // process-wide
constexpr size_t kMaxIdleFibers = 16384;         // kept for reuse by later OS threads
inline std::atomic<int> g_guarded_stacks{0};

__attribute__((format(printf, 1, 2))) inline std::string format(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

[[noreturn]] inline void die(const char* what) {  // misuse outside a kernel: no launch to fail
  std::fprintf(stderr, "simt: %s\n", what);
  std::abort();
}

// --- Execution contexts: x86-64, a hand-written switch of the callee-saved registers (a few ns;
// swapcontext makes a sigprocmask syscall per switch); elsewhere ucontext.
inline void fiber_main(void* fiber);

#ifdef FUSEDRNN_SIMT_ASM_SWITCH
extern "C" void fusedrnn_simt_switch(void** save_sp, void* load_sp);
extern "C" void fusedrnn_simt_start();
// Every translation unit emits these (weak, hidden, one COMDAT group); the linker keeps one.
// switch: push the callee-saved registers, MXCSR and x87 control word; swap stacks; pop.
// start: a new fiber's first "return" lands here, with r12 = its argument, r13 = fiber_main.
asm(R"(
  .pushsection .text.fusedrnn_simt_switch,"axG",@progbits,fusedrnn_simt_switch,comdat
  .weak fusedrnn_simt_switch
  .hidden fusedrnn_simt_switch
  .type fusedrnn_simt_switch, @function
fusedrnn_simt_switch:
  pushq %rbp; pushq %rbx; pushq %r12; pushq %r13; pushq %r14; pushq %r15
  subq $8, %rsp; stmxcsr (%rsp); fnstcw 4(%rsp)
  movq %rsp, (%rdi); movq %rsi, %rsp
  ldmxcsr (%rsp); fldcw 4(%rsp); addq $8, %rsp
  popq %r15; popq %r14; popq %r13; popq %r12; popq %rbx; popq %rbp
  ret
  .size fusedrnn_simt_switch, .-fusedrnn_simt_switch
  .weak fusedrnn_simt_start
  .hidden fusedrnn_simt_start
  .type fusedrnn_simt_start, @function
fusedrnn_simt_start:
  movq %r12, %rdi; callq *%r13; ud2
  .size fusedrnn_simt_start, .-fusedrnn_simt_start
  .popsection
)");
struct Context { void* sp = nullptr; };
inline void context_make(Context& c, char* stack, size_t bytes, void* arg) {
  // The frame switch pops. After its ret, rsp = top: 16-byte aligned before start's call.
  uint64_t* top = reinterpret_cast<uint64_t*>(uintptr_t(stack + bytes) & ~uintptr_t(15));
  uint64_t* sp = top - 8;
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fpcw));  // inherit the FP modes
  sp[0] = mxcsr | uint64_t(fpcw) << 32;
  sp[1] = sp[2] = sp[5] = sp[6] = 0;                        // r15, r14, rbx, rbp
  sp[3] = reinterpret_cast<uint64_t>(&fiber_main);          // r13
  sp[4] = reinterpret_cast<uint64_t>(arg);                  // r12
  sp[7] = reinterpret_cast<uint64_t>(&fusedrnn_simt_start);  // return address
  c.sp = sp;
}
inline void context_switch(Context& from, Context& to) { fusedrnn_simt_switch(&from.sp, to.sp); }
#else
struct Context { ucontext_t uc; };
inline void ucontext_entry(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<void*>(uintptr_t(hi) << 32 | lo));
}
inline void context_make(Context& c, char* stack, size_t bytes, void* arg) {
  if (getcontext(&c.uc) != 0) die("getcontext failed");
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  const uintptr_t a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2, unsigned(a >> 32),
              unsigned(a));
}
inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// --- State of a launch, a block, a warp, a fiber.

enum class Op : uint8_t { Syncwarp, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All };
inline const char* op_name(Op op) {
  static const char* const names[] = {"__syncwarp",      "__shfl_sync",     "__shfl_up_sync",
                                      "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
                                      "__any_sync",       "__all_sync"};
  return names[int(op)];
}

struct Fiber {
  Context context;
  char* stack;  // mmap'd; its lowest page is a guard page (if guarded) or unused
  size_t mapped;
  bool guarded;
  uint3 thread_idx;  // the CUDA thread it runs now
  unsigned linear;   // x + dim.x * (y + dim.y * z)
};

// Shared by all blocks of a launch (across OS threads in a cooperative one).
struct Launch {
  dim3 grid, block;
  size_t shared_bytes;
  bool cooperative;
  void (*invoke)(const void*);  // runs body: one CUDA thread's kernel
  const void* body;
  uint64_t nblocks, seed;
  std::atomic<bool> failed{false};
  std::mutex mutex{};  // guards what follows
  std::condition_variable cv{};
  std::string message{};  // the first failure's
  uint64_t sync_arrived = 0, sync_generation = 0, exited_blocks = 0;  // grid_sync

  void fail_locked(std::string msg) {
    if (!failed) message = std::move(msg);
    failed = true;
    cv.notify_all();  // releases blocks waiting in grid_sync
  }
  void fail(std::string msg) {
    std::lock_guard<std::mutex> lock(mutex);
    fail_locked(std::move(msg));
  }
};

// A collective in flight: the lanes of `mask` that reached it so far. A warp may have several on
// disjoint masks; a lane is in at most one (it parks there), so per-lane slots suffice for data.
struct PendingOp {
  Op op;
  unsigned mask, width, arrived;
};
struct Warp {
  std::vector<PendingOp> pending;
  uint64_t in[32], out[32];  // each lane's deposit and result in its current collective
  int arg[32];               // srcLane / delta / laneMask
  Fiber* waiter[32];
};

struct Block {
  Launch* launch;
  uint3 idx;
  dim3 dim, grid;
  unsigned n, next, exited;  // threads; the next to start; exited so far
  unsigned order_a, order_c;  // the k-th thread to start is (a * k + c) % n
  bool failed;
  std::vector<char> gone;  // per thread: exited
  std::vector<Warp> warps;
  std::deque<Fiber*> runnable;
  std::vector<Fiber*> fibers;  // all this block used; back to the pool at its end
  unsigned bar_arrived;        // the block barrier (__syncthreads, grid_sync's block half)
  const char* bar_what;
  std::source_location bar_where;
  std::vector<Fiber*> bar_waiters;
  unsigned char* shared;  // dynamic shared memory
};

// Idle fibers that the exiting threads of cooperative launches leave to the next ones (mapping
// fresh stacks for every launch costs more than the launch). Never destroyed: thread-local
// destructors may run after static ones.
struct SharedPool {
  std::mutex mutex;
  std::vector<Fiber*> fibers;
};
inline SharedPool& shared_pool() {
  static SharedPool* pool = new SharedPool;
  return *pool;
}

// Per OS thread: the scheduler's context, idle fibers, buffers reused by its blocks.
struct Worker {
  Context scheduler;
  std::vector<Fiber*> pool;
  Block block;
  // Dynamic shared memory, 128-byte aligned (wmma's tiles need 256-bit alignment).
  struct alignas(128) SharedLine { unsigned char bytes[128]; };
  std::vector<SharedLine> shared;

  ~Worker() {
    SharedPool& shared_idle = shared_pool();
    std::lock_guard<std::mutex> lock(shared_idle.mutex);
    for (Fiber* f : pool) {
      if (shared_idle.fibers.size() < kMaxIdleFibers) {
        shared_idle.fibers.push_back(f);
        continue;
      }
      g_guarded_stacks -= f->guarded;
      munmap(f->stack, f->mapped);
      delete f;
    }
  }
  Fiber* take_fiber() {
    if (pool.empty()) {
      SharedPool& shared_idle = shared_pool();
      std::lock_guard<std::mutex> lock(shared_idle.mutex);
      const size_t n = std::min<size_t>(shared_idle.fibers.size(), 64);  // a batch
      pool.assign(shared_idle.fibers.end() - ptrdiff_t(n), shared_idle.fibers.end());
      shared_idle.fibers.resize(shared_idle.fibers.size() - n);
    }
    if (!pool.empty()) {
      Fiber* f = pool.back();
      pool.pop_back();
      return f;
    }
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), mapped = kStackBytes + page;
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    // A guard page makes an overflow fault, but costs a memory map of its own (the kernel allows
    // ~65k): past kMaxGuardedStacks, stacks go unguarded (and merge into few maps).
    const bool guard = g_guarded_stacks.fetch_add(1) < kMaxGuardedStacks &&
                       mprotect(p, page, PROT_NONE) == 0;
    if (!guard) g_guarded_stacks.fetch_sub(1);
    return new Fiber{{}, static_cast<char*>(p), mapped, guard, {}, 0};
  }
};

inline thread_local Worker t_worker;
inline thread_local Block* t_block = nullptr;  // the block this OS thread runs, in a launch
inline thread_local Fiber* t_fiber = nullptr;  // the running fiber: the CUDA thread's identity
inline thread_local cudaError_t t_last_error = cudaSuccess;
inline thread_local cudaError_t t_failure_code = cudaSuccess;
inline thread_local std::string t_failure_message;

inline Block& current_block(const char* what) {
  if (!t_block || !t_fiber) die(what);
  return *t_block;
}
inline std::string where(const Block& b) {
  const uint3 t = t_fiber->thread_idx;
  return format("block (%u,%u,%u) thread (%u,%u,%u)", b.idx.x, b.idx.y, b.idx.z, t.x, t.y, t.z);
}
inline std::string where(const std::source_location& loc) {
  const char* file = std::strrchr(loc.file_name(), '/');
  return format("%s:%u", file ? file + 1 : loc.file_name(), unsigned(loc.line()));
}

// From the running fiber to its block's scheduler; returns once the scheduler resumes it.
inline void park() { context_switch(t_fiber->context, t_worker.scheduler); }

// Fails the launch. A fiber that fails then abandons itself: never resumed, never unwound
// (kernels hold trivial types); callers let their strings die first.
inline void fail(Block& b, std::string msg) {
  b.failed = true;
  b.launch->fail(std::move(msg));
}
[[noreturn]] inline void abandon() {
  park();
  die("an abandoned fiber was resumed");
}

// Every fiber's body: start the block's not-yet-started threads, one after another.
inline void fiber_main(void* arg) {
  Fiber* f = static_cast<Fiber*>(arg);
  Block& b = *t_block;
  while (!b.failed && b.next < b.n) {
    const unsigned t = unsigned((uint64_t(b.order_a) * b.next++ + b.order_c) % b.n);
    f->linear = t;
    f->thread_idx = {t % b.dim.x, t / b.dim.x % b.dim.y, t / (b.dim.x * b.dim.y)};
    std::string error;
    try {  // an exception must not cross the fiber's bottom frame
      b.launch->invoke(b.launch->body);
    } catch (const std::exception& e) {
      error = std::string("exception: ") + e.what();
    } catch (...) {
      error = "unknown exception";
    }
    if (!error.empty()) {
      fail(b, format("simt: %s threw %s", where(b).c_str(), error.c_str()));
      break;
    }
    b.gone[t] = true;
    ++b.exited;
  }
  park();  // finished: the context is remade when the fiber is reused
  die("a finished fiber was resumed");
}

// Nothing can run, yet threads wait: say at what and for whom.
inline std::string deadlock_message(const Block& b) {
  const std::string blk = format("block (%u,%u,%u)", b.idx.x, b.idx.y, b.idx.z);
  if (b.bar_arrived) {
    const std::string at = std::string(b.bar_what) + " (" + where(b.bar_where) + ")";
    if (b.exited)
      return format("simt: barrier divergence: %s: %u of %u threads exited while others wait "
                    "at %s", blk.c_str(), b.exited, b.n, at.c_str());
    return format("simt: barrier divergence: %s: %u of %u threads wait at %s, the others in warp "
                  "collectives", blk.c_str(), b.bar_arrived, b.n, at.c_str());
  }
  for (size_t w = 0; w < b.warps.size(); ++w) {
    for (const PendingOp& p : b.warps[w].pending) {
      const unsigned missing = p.mask & ~p.arrived;
      bool exited = false;
      for (unsigned l = 0; l < 32; ++l)
        exited |= (missing >> l & 1) && b.gone[w * 32 + l];
      return format("simt: warp deadlock: %s, warp %zu: %s(mask 0x%08x) waits for lanes 0x%08x "
                    "%s", blk.c_str(), w, op_name(p.op), p.mask, missing,
                    exited ? "that exited" : "that wait at another barrier or collective");
    }
  }
  return "simt: deadlock in " + blk;
}

// Runs block `linear` of the launch on this OS thread until it finishes or fails.
inline void run_block(Launch& L, uint64_t linear) {
  Worker& w = t_worker;
  Block& b = w.block;
  b.launch = &L;
  b.dim = L.block;
  b.grid = L.grid;
  b.idx = {unsigned(linear % L.grid.x), unsigned(linear / L.grid.x % L.grid.y),
           unsigned(linear / (uint64_t(L.grid.x) * L.grid.y))};
  b.n = L.block.x * L.block.y * L.block.z;
  b.next = b.exited = b.bar_arrived = 0;
  b.failed = false;
  b.gone.assign(b.n, false);
  b.warps.resize((b.n + 31) / 32);
  for (Warp& warp : b.warps) warp.pending.clear();
  b.runnable.clear();
  b.bar_waiters.clear();
  uint64_t h = (L.seed ^ (linear + 1) * 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;  // a start order per block, fixed run to run
  b.order_a = unsigned(h % b.n);
  while (std::gcd(b.order_a, b.n) != 1) b.order_a = (b.order_a + 1) % b.n;
  b.order_c = unsigned((h >> 32) % b.n);
  w.shared.resize(std::max(w.shared.size(), L.shared_bytes / sizeof(Worker::SharedLine) + 1));
  b.shared = reinterpret_cast<unsigned char*>(w.shared.data());
  std::memset(b.shared, 0xff, L.shared_bytes);  // unwritten shared memory reads as NaN

  t_block = &b;
  while (!b.failed && !L.failed.load(std::memory_order_relaxed)) {
    Fiber* f;
    if (!b.runnable.empty()) {  // released waiters first: fewer fibers alive
      f = b.runnable.front();
      b.runnable.pop_front();
    } else if (b.next < b.n) {
      if (!(f = w.take_fiber())) {
        fail(b, format("simt: cannot map a fiber stack (%zu in use)", b.fibers.size()));
        break;
      }
      b.fibers.push_back(f);
      context_make(f->context, f->stack, f->mapped, f);
    } else if (b.exited == b.n) {
      break;
    } else {
      fail(b, deadlock_message(b));
      break;
    }
    t_fiber = f;
    context_switch(w.scheduler, f->context);
    t_fiber = nullptr;
  }
  t_block = nullptr;
  w.pool.insert(w.pool.end(), b.fibers.begin(), b.fibers.end());  // parked ones too
  b.fibers.clear();
  if (L.cooperative && !b.failed) {  // blocks waiting in grid_sync now wait forever
    std::lock_guard<std::mutex> lock(L.mutex);
    ++L.exited_blocks;
    if (L.sync_arrived)
      L.fail_locked(format("simt: grid_sync: block (%u,%u,%u) exited while %llu blocks wait at "
                           "grid_sync", b.idx.x, b.idx.y, b.idx.z,
                           (unsigned long long)L.sync_arrived));
  }
}

// The block barrier: true for the last thread to arrive (which then calls release_block), false
// for the others once released. All must arrive at the same call (`what` at `loc`).
inline bool block_arrive(const char* what, const std::source_location& loc) {
  Block& b = current_block("barrier outside a kernel");
  if (b.bar_arrived == 0) {
    b.bar_what = what;
    b.bar_where = loc;
  } else if (b.bar_what != what || b.bar_where.line() != loc.line() ||
             std::strcmp(b.bar_where.file_name(), loc.file_name()) != 0) {
    fail(b, format("simt: barrier divergence: %s waits at %s (%s) while %u threads wait at %s "
                   "(%s)", where(b).c_str(), what, where(loc).c_str(), b.bar_arrived,
                   b.bar_what, where(b.bar_where).c_str()));
    abandon();
  }
  if (++b.bar_arrived == b.n) return b.bar_arrived = 0, true;
  b.bar_waiters.push_back(t_fiber);
  park();
  return false;
}
inline void release_block(Block& b) {
  b.runnable.insert(b.runnable.end(), b.bar_waiters.begin(), b.bar_waiters.end());
  b.bar_waiters.clear();
}

// Lane l's source in a shuffle, as PTX's shfl.sync defines it (b = arg's low 5 bits; segments
// of w lanes: up/down stay in the segment, else the own value; xor may read earlier segments;
// idx wraps within the segment).
inline unsigned shfl_source(Op op, unsigned l, int arg, unsigned w) {
  const unsigned b = unsigned(arg) & 31, first = l & ~(w - 1), last = first + w - 1;
  switch (op) {
    case Op::ShflUp: return l >= first + b ? l - b : l;
    case Op::ShflDown: return l + b <= last ? l + b : l;
    case Op::ShflXor: return (l ^ b) <= last ? l ^ b : l;
    default: return first | (b & (w - 1));
  }
}

// A warp collective: deposit `value`, wait until every lane of `mask` has reached the same
// collective (op, mask, width), return this lane's result.
inline uint64_t warp_op(Op op, unsigned mask, uint64_t value, int arg, int width) {
  Block& b = current_block("warp collective outside a kernel");
  Fiber* f = t_fiber;
  const unsigned lane = f->linear % 32, wi = f->linear / 32, lanes = b.n - wi * 32;
  Warp& w = b.warps[wi];
  size_t k = 0;  // the collective in flight that shares lanes with ours, if any
  while (k < w.pending.size() && !(w.pending[k].mask & mask)) ++k;
  const PendingOp* p = k < w.pending.size() ? &w.pending[k] : nullptr;
  {
    std::string error;
    if (!(mask >> lane & 1))
      error = "the mask does not name the calling lane";
    else if (lanes < 32 && mask >> lanes)
      error = "the mask names lanes that do not exist (beyond the block)";
    else if (width < 1 || width > 32 || (width & (width - 1)))
      error = "width is not a power of two in [1, 32]";
    else if (p && (p->op != op || p->mask != mask || p->width != unsigned(width)))
      error = format("lanes of the mask wait in a different collective, %s(mask 0x%08x, "
                     "width %u)", op_name(p->op), p->mask, p->width);
    if (!error.empty())
      fail(b, format("simt: %s(mask 0x%08x, width %d) in %s (warp %u, lane %u): %s", op_name(op),
                     mask, width, where(b).c_str(), wi, lane, error.c_str()));
  }
  if (b.failed) abandon();
  if (!p) w.pending.push_back({op, mask, unsigned(width), 0});
  w.in[lane] = value;
  w.arg[lane] = arg;
  if ((w.pending[k].arrived |= 1u << lane) != mask) {
    w.waiter[lane] = f;
    park();
    return w.out[lane];  // written by the last lane to arrive
  }
  // The last lane to arrive computes every lane's result and releases the others.
  w.pending.erase(w.pending.begin() + ptrdiff_t(k));
  unsigned ballot = 0;
  for (unsigned l = 0; l < 32; ++l) ballot |= unsigned((mask >> l & 1) && w.in[l]) << l;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    if (op >= Op::Shfl && op <= Op::ShflXor) {
      const unsigned src = shfl_source(op, l, w.arg[l], unsigned(width));
      w.out[l] = mask >> src & 1 ? w.in[src] : ~0ull;  // an inactive source: garbage (NaN)
    } else {
      w.out[l] = ballot;
    }
    if (l != lane) b.runnable.push_back(w.waiter[l]);
  }
  return w.out[lane];
}

template <typename T>
inline T shuffle(Op op, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "shuffles move trivially copyable values of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_op(op, mask, bits, arg, width);
  std::memcpy(&var, &bits, sizeof(T));
  return var;
}

inline cudaError_t set_error(cudaError_t code, std::string message) {
  t_last_error = t_failure_code = code;
  t_failure_message = std::move(message);
  return code;
}

inline cudaError_t launch(dim3 grid, dim3 block, size_t shared_bytes, bool cooperative,
                          void (*invoke)(const void*), const void* body) {
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (!nblocks || !nthreads || nthreads > 1024 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return set_error(cudaErrorInvalidConfiguration,
                     format("simt: invalid configuration: grid (%u,%u,%u), block (%u,%u,%u)",
                            grid.x, grid.y, grid.z, block.x, block.y, block.z));
  if (shared_bytes > kMaxSharedBytes)
    return set_error(cudaErrorInvalidValue,
                     format("simt: %zu bytes of dynamic shared memory (at most %zu)",
                            shared_bytes, kMaxSharedBytes));
  if (cooperative && nblocks > kMaxCooperativeBlocks)
    return set_error(cudaErrorCooperativeLaunchTooLarge,
                     format("simt: cooperative launch of %llu blocks (the emulation runs at most "
                            "%llu, an OS thread each)", (unsigned long long)nblocks,
                            (unsigned long long)kMaxCooperativeBlocks));
  if (t_block) return set_error(cudaErrorLaunchFailure, "simt: launch from inside a kernel");

  static const uint64_t env_seed = [] {  // FUSEDRNN_SIMT_SEED: other thread and block orders
    const char* s = std::getenv("FUSEDRNN_SIMT_SEED");
    return s ? std::strtoull(s, nullptr, 0) : 0ull;
  }();
  Launch L{.grid = grid, .block = block, .shared_bytes = shared_bytes,
           .cooperative = cooperative, .invoke = invoke, .body = body, .nblocks = nblocks,
           .seed = env_seed ^ ((uint64_t(grid.x) << 40 ^ uint64_t(grid.y) << 20 ^ grid.z) * 31 ^
                               (uint64_t(block.x) << 20 ^ block.y << 10 ^ block.z) ^
                               shared_bytes << 7) * 0x9e3779b97f4a7c15ull};
  auto run = [&L](uint64_t k) {
    try {
      run_block(L, k);
    } catch (const std::exception& e) {  // bad_alloc of the block's bookkeeping
      t_block = nullptr;
      L.fail(std::string("simt: ") + e.what());
    }
  };
  if (!cooperative) {  // blocks one after another on this thread, in order (a * k + c) % nblocks
    uint64_t a = L.seed % nblocks;
    const uint64_t c = (L.seed >> 32) % nblocks;
    while (std::gcd(a, nblocks) != 1) a = (a + 1) % nblocks;
    for (uint64_t k = 0; k < nblocks && !L.failed; ++k)
      run(uint64_t(((unsigned __int128)a * k + c) % nblocks));
  } else {  // every block resident at once, an OS thread each, for grid_sync
    std::vector<std::thread> threads;
    try {
      for (uint64_t k = 0; k < nblocks; ++k) threads.emplace_back(run, k);
    } catch (const std::exception& e) {
      L.fail(std::string("simt: cannot start a block's thread: ") + e.what());
    }
    for (std::thread& t : threads) t.join();
  }
  return L.failed ? set_error(cudaErrorLaunchFailure, L.message) : cudaSuccess;
}

}  // namespace detail

// -------------------------------------------------------------- the interface of cuda_api.h

// Runs every thread of every block to completion; body() runs one CUDA thread's kernel.
template <typename Body>
cudaError_t launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes, bool cooperative,
                   const Body& body) {
  return detail::launch(grid, block, dynamic_shared_bytes, cooperative,
                        [](const void* b) { (*static_cast<const Body*>(b))(); }, &body);
}

// The running block's dynamic shared memory (16-byte aligned), 0xFF bytes at block start.
inline void* dynamic_shared_memory() {
  return detail::current_block("dynamic_shared_memory outside a kernel").shared;
}

// A barrier of all threads of a cooperative launch: the block's threads meet at its barrier,
// whose last thread meets the other blocks' at an OS-level barrier, then releases its block.
inline void grid_sync(std::source_location loc = std::source_location::current()) {
  using namespace detail;
  Block& b = current_block("grid_sync outside a kernel");
  Launch& L = *b.launch;
  if (!L.cooperative) {
    fail(b, format("simt: grid_sync() in a non-cooperative launch (%s): use launch_cooperative",
                   where(b).c_str()));
    abandon();
  }
  if (!block_arrive("grid_sync", loc)) return;
  bool released;
  {
    std::unique_lock<std::mutex> lock(L.mutex);
    if (L.exited_blocks)
      L.fail_locked(format("simt: grid_sync: block (%u,%u,%u) waits at grid_sync but %llu "
                           "blocks exited", b.idx.x, b.idx.y, b.idx.z,
                           (unsigned long long)L.exited_blocks));
    if (!L.failed && ++L.sync_arrived == L.nblocks) {
      L.sync_arrived = 0;
      ++L.sync_generation;
      L.cv.notify_all();
    } else {
      const uint64_t generation = L.sync_generation;
      L.cv.wait(lock, [&] { return L.failed || L.sync_generation != generation; });
    }
    released = !L.failed;
  }
  if (!released) {
    b.failed = true;
    abandon();
  }
  release_block(b);
}

}  // namespace simt
}  // namespace fusedrnn

// ------------------------------------------------------------------- CUDA's device functions

// Per CUDA thread: read from the running fiber and its block (read-only, as in CUDA).
#define threadIdx (static_cast<const ::uint3&>(::fusedrnn::simt::detail::t_fiber->thread_idx))
#define blockIdx (static_cast<const ::uint3&>(::fusedrnn::simt::detail::t_block->idx))
#define blockDim (static_cast<const ::dim3&>(::fusedrnn::simt::detail::t_block->dim))
#define gridDim (static_cast<const ::dim3&>(::fusedrnn::simt::detail::t_block->grid))

// The call site identifies the barrier: threads waiting at two different ones is divergence.
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
  using namespace fusedrnn::simt::detail;
  if (block_arrive("__syncthreads", loc)) release_block(*t_block);
}

#define FUSEDRNN_SIMT_WARP(op, ...) \
  ::fusedrnn::simt::detail::warp_op(::fusedrnn::simt::detail::Op::op, __VA_ARGS__)
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  FUSEDRNN_SIMT_WARP(Syncwarp, mask, 0, 0, 32);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(FUSEDRNN_SIMT_WARP(Ballot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return FUSEDRNN_SIMT_WARP(Any, mask, pred != 0, 0, 32) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
  return FUSEDRNN_SIMT_WARP(All, mask, pred != 0, 0, 32) == mask;
}
#undef FUSEDRNN_SIMT_WARP

#define FUSEDRNN_SIMT_SHUFFLE(name, Arg, op)                                              \
  template <typename T>                                                                   \
  inline T name(unsigned mask, T var, Arg arg, int width = warpSize) {                    \
    return ::fusedrnn::simt::detail::shuffle(::fusedrnn::simt::detail::Op::op, mask, var, \
                                             int(arg), width);                            \
  }
FUSEDRNN_SIMT_SHUFFLE(__shfl_sync, int, Shfl)  // arg: srcLane
FUSEDRNN_SIMT_SHUFFLE(__shfl_up_sync, unsigned, ShflUp)  // arg: delta
FUSEDRNN_SIMT_SHUFFLE(__shfl_down_sync, unsigned, ShflDown)
FUSEDRNN_SIMT_SHUFFLE(__shfl_xor_sync, int, ShflXor)  // arg: laneMask
#undef FUSEDRNN_SIMT_SHUFFLE

// ---------------------------------------------------------- warp matrix multiply (wmma)
// nvcuda::wmma for 16-bit (__half, __nv_bfloat16) operands and float accumulators, as
// <mma.h> declares it. Each lane's fragment holds the whole tile (the hardware spreads a tile
// over the lanes in a layout the program cannot rely on, so a whole copy a lane is what a
// program may observe; an accumulator's elements are spread over the lanes, lane l holding
// e = l, l + 32, ...); the products are exact float products summed in float. Loads and
// mma_sync are warp collectives (every lane of the warp takes part, converged: a __syncwarp
// each); store_matrix_sync writes element e of the tile from lane e % 32, so reading a stored
// tile before a __syncwarp reads what other lanes have not written yet. Pointers must be 256-bit
// aligned and ldm a multiple of 16 bytes, as CUDA requires; a violation fails the launch.
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <typename Use, int M, int N, int K>
struct tile;  // its rows and columns
template <int M, int N, int K>
struct tile<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K>
struct tile<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K>
struct tile<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

inline float value(float v) { return v; }
inline float value(__half v) { return __half2float(v); }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
inline void check(const T* p, unsigned ldm, const char* what) {
  using namespace ::fusedrnn::simt::detail;
  Block& b = current_block("wmma outside a kernel");
  const char* error = reinterpret_cast<uintptr_t>(p) % 32 ? "pointer not 256-bit aligned"
                      : (ldm * sizeof(T)) % 16      ? "ldm not a multiple of 16 bytes"
                                                     : nullptr;
  if (error) {
    fail(b, format("simt: wmma::%s in %s: %s", what, where(b).c_str(), error));
    abandon();
  }
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = detail::tile<Use, M, N, K>::rows;
  static constexpr int cols = detail::tile<Use, M, N, K>::cols;
  T tile[rows * cols];  // element (i, j) at i * cols + j
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
  for (T& e : f.tile) e = v;
}

// A matrix_a / matrix_b tile from memory in the fragment's layout (row_major: element (i, j) at
// p[i * ldm + j]; col_major: at p[j * ldm + i]).
template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  detail::check(p, ldm, "load_matrix_sync");
  __syncwarp();
  for (int i = 0; i < F::rows; ++i) {
    for (int j = 0; j < F::cols; ++j) {
      f.tile[i * F::cols + j] = std::is_same_v<Layout, col_major> ? p[j * ldm + i]
                                                                  : p[i * ldm + j];
    }
  }
}

// d = a b + c, for the accumulator elements this lane holds: e = lane, lane + 32, ... (the
// ones store_matrix_sync writes from it; fill_fragment sets every element).
template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, T, LayoutA>& a,
                     const fragment<matrix_b, M, N, K, T, LayoutB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  __syncwarp();
  const int lane = int(::fusedrnn::simt::detail::t_fiber->linear % 32);
  for (int e = lane; e < M * N; e += 32) {
    const int i = e / N, j = e % N;
    float sum = c.tile[e];
    for (int k = 0; k < K; ++k) {
      sum += detail::value(a.tile[i * K + k]) * detail::value(b.tile[k * N + j]);
    }
    d.tile[e] = sum;
  }
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::check(p, ldm, "store_matrix_sync");
  const unsigned lane = ::fusedrnn::simt::detail::t_fiber->linear % 32;
  for (int e = int(lane); e < M * N; e += 32) {
    const int i = e / N, j = e % N;
    p[layout == mem_col_major ? j * ldm + i : i * ldm + j] = f.tile[e];
  }
}

}  // namespace wmma
}  // namespace nvcuda

// Only the calling lane: lanes run diverged here (one at a time between collectives) and CUDA
// guarantees no more. A shuffle mask built from it shows as wrong results.
inline unsigned __activemask() {
  fusedrnn::simt::detail::current_block("__activemask outside a kernel");
  return 1u << fusedrnn::simt::detail::t_fiber->linear % 32;
}

// Ends the launch with an error, as the device's trap does.
inline void __trap() {
  using namespace fusedrnn::simt::detail;
  Block& b = current_block("__trap outside a kernel");
  fail(b, format("simt: __trap() in %s", where(b).c_str()));
  abandon();
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// Atomics through std::atomic_ref: they hold across the OS threads of a cooperative launch.
// Relaxed, as CUDA's are.
#define FUSEDRNN_SIMT_ATOMIC(name, T, method)                                   \
  inline T name(T* address, T val) {                                            \
    return std::atomic_ref<T>(*address).method(val, std::memory_order_relaxed); \
  }
#define FUSEDRNN_SIMT_ATOMIC_CAS_LOOP(name, T, pick)                                     \
  inline T name(T* address, T val) {                                                     \
    std::atomic_ref<T> a(*address);                                                      \
    T old = a.load(std::memory_order_relaxed);                                           \
    while (!a.compare_exchange_weak(old, pick(old, val), std::memory_order_relaxed)) {   \
    }                                                                                    \
    return old;                                                                          \
  }
#define FUSEDRNN_SIMT_ATOMIC_CAS(T)                                                          \
  inline T atomicCAS(T* address, T compare, T val) {                                         \
    std::atomic_ref<T>(*address).compare_exchange_strong(compare, val,                       \
                                                         std::memory_order_relaxed);         \
    return compare; /* the old value, whether it matched or not */                           \
  }
FUSEDRNN_SIMT_ATOMIC(atomicAdd, int, fetch_add)
FUSEDRNN_SIMT_ATOMIC(atomicAdd, unsigned, fetch_add)
FUSEDRNN_SIMT_ATOMIC(atomicAdd, unsigned long long, fetch_add)
FUSEDRNN_SIMT_ATOMIC(atomicAdd, float, fetch_add)
FUSEDRNN_SIMT_ATOMIC(atomicAdd, double, fetch_add)
FUSEDRNN_SIMT_ATOMIC(atomicSub, int, fetch_sub)
FUSEDRNN_SIMT_ATOMIC(atomicSub, unsigned, fetch_sub)
FUSEDRNN_SIMT_ATOMIC(atomicExch, int, exchange)
FUSEDRNN_SIMT_ATOMIC(atomicExch, unsigned, exchange)
FUSEDRNN_SIMT_ATOMIC(atomicExch, float, exchange)
FUSEDRNN_SIMT_ATOMIC_CAS_LOOP(atomicMax, int, std::max<int>)
FUSEDRNN_SIMT_ATOMIC_CAS_LOOP(atomicMax, unsigned, std::max<unsigned>)
FUSEDRNN_SIMT_ATOMIC_CAS_LOOP(atomicMin, int, std::min<int>)
FUSEDRNN_SIMT_ATOMIC_CAS_LOOP(atomicMin, unsigned, std::min<unsigned>)
FUSEDRNN_SIMT_ATOMIC_CAS(int)
FUSEDRNN_SIMT_ATOMIC_CAS(unsigned)
FUSEDRNN_SIMT_ATOMIC_CAS(unsigned long long)
#undef FUSEDRNN_SIMT_ATOMIC
#undef FUSEDRNN_SIMT_ATOMIC_CAS_LOOP
#undef FUSEDRNN_SIMT_ATOMIC_CAS

// ---------------------------------------------------------------------------- the CUDA runtime

inline cudaError_t cudaGetLastError() {
  return std::exchange(fusedrnn::simt::detail::t_last_error, cudaSuccess);
}
inline cudaError_t cudaPeekAtLastError() { return fusedrnn::simt::detail::t_last_error; }

// The emulator's own message for the latest error of this OS thread.
inline const char* cudaGetErrorString(cudaError_t e) {
  using namespace fusedrnn::simt::detail;
  if (e != cudaSuccess && e == t_failure_code && !t_failure_message.empty())
    return t_failure_message.c_str();
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
  }
  return "unrecognized error code";
}
