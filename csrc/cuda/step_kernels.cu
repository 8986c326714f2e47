// Per-step fused pointwise kernels (see step_kernels.h): one forward and one backward kernel for
// every cell, which hand each element to the cell's DeviceCell<C>. One thread per (batch row,
// hidden unit), grid-stride; each mirrors the CPU time loops of csrc/cpu/recurrent_cpu.cpp element
// by element, with the gate equations from gate_math.h. A normalized cell needs its row's
// statistics: its kernels run one block per batch row (grid-stride over rows), and hand the row
// to DeviceCell<C>::forward_row / backward_row, which mirror the CPU's row kernels. Compiled by
// nvcc for the GPU, and by the host compiler under the SIMT emulation for the tests
// (csrc/emulation/).
#include <algorithm>
#include <type_traits>

#include "../gate_math.h"
#include "step_kernels.h"

namespace fusedrnn {
namespace cuda {
namespace {

// Storage type T -> the state type S the recurrence is carried and the gate math run in.
template <typename T> struct State { using type = T; };
template <> struct State<__half> { using type = float; };
template <> struct State<__nv_bfloat16> { using type = float; };

__device__ __forceinline__ float to_state(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_state(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_state(float v) { return v; }
__device__ __forceinline__ double to_state(double v) { return v; }

// State value -> storage type T.
template <typename T, typename S> __device__ __forceinline__ T stored(S v) { return T(v); }
template <> __device__ __forceinline__ __half stored<__half, float>(float v) {
  return __float2half(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 stored<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}

// T(0) does not compile for __half under torch's -D__CUDA_NO_HALF_CONVERSIONS__.
template <typename T> __device__ __forceinline__ T zero() {
  return stored<T>(typename State<T>::type(0));
}

// Typed views of the void* buffers of a step's arguments.
template <typename T> __device__ __forceinline__ const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T> __device__ __forceinline__ T* out(void* p) { return static_cast<T*>(p); }

constexpr int kThreads = 256;
// Grid cap (grid-stride beyond it). The emulation tests build with a small cap, so that the
// grid-stride loop takes more than one turn at test sizes.
#ifndef FUSEDRNN_STEP_MAX_BLOCKS
#define FUSEDRNN_STEP_MAX_BLOCKS 8192
#endif
constexpr int64_t kMaxBlocks = FUSEDRNN_STEP_MAX_BLOCKS;
// Threads of a row kernel's block (a power of two, for block_sum). The emulation tests build with
// fewer, so that a thread takes several units of a row at test sizes.
#ifndef FUSEDRNN_ROW_THREADS
#define FUSEDRNN_ROW_THREADS 256
#endif
constexpr int kRowThreads = FUSEDRNN_ROW_THREADS;
static_assert((kRowThreads & (kRowThreads - 1)) == 0, "kRowThreads: a power of two");

// Grid-stride over the n = rows * width elements of a step: fn(b, j).
#define FUSEDRNN_FOR_EACH_ELEMENT(rows, width, b, j)                                          \
  for (int64_t idx_ = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, n_ = (rows) * (width); \
       idx_ < n_; idx_ += int64_t(gridDim.x) * blockDim.x)                                     \
    if (const int64_t b = idx_ / (width), j = idx_ % (width); true)

// Each unit i < n of a block's row, as its thread's share: loops over the same n give a unit to
// the same thread, so what a thread wrote there it reads back itself without a barrier; between
// loops over different n (H and 4H) a unit changes hands, and a barrier must come between.
#define FUSEDRNN_FOR_EACH_UNIT(n, i) \
  for (int64_t i = threadIdx.x; i < (n); i += blockDim.x)

// Threads of a block that reduces a row (block_sum) at most: a row kernel's kRowThreads, or a
// persistent loop's block, which runs a normalised cell's rows too.
static_assert(kRowThreads <= kPersistentMaxThreads, "kRowThreads: at most a persistent block's");
constexpr int kMaxRowThreads = kPersistentMaxThreads;

// The sum over the block's threads of each one's v, returned to all (in double, as the CPU's
// row_moments sums). Every thread of the block must call it; blockDim.x a power of two, at most
// kMaxRowThreads.
__device__ inline double block_sum(double v) {
  __shared__ double partial[kMaxRowThreads];
  partial[threadIdx.x] = v;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  const double total = partial[0];
  __syncthreads();  // every thread has read it before partial is written again
  return total;
}

template <typename S>
struct RowMoments {
  S mean, rstd;  // 1 / sqrt(var + eps), the biased variance as torch's layer_norm
};

// The moments of a row's n values v (the CPU's row_moments: two passes, summed in double); v
// written in this kernel only by loops over the same n (FUSEDRNN_FOR_EACH_UNIT).
template <typename S>
__device__ RowMoments<S> block_row_moments(const S* v, int64_t n) {
  double sum = 0;
  FUSEDRNN_FOR_EACH_UNIT(n, i) sum += v[i];
  const double mean = block_sum(sum) / n;
  double squares = 0;
  FUSEDRNN_FOR_EACH_UNIT(n, i) {
    const double d = v[i] - mean;
    squares += d * d;
  }
  return {S(mean), S(1.0 / sqrt(block_sum(squares) / n + kLayerNormEps))};
}

// The backward of a normalised step's γ_hh ⊙ LN(W_hh h) over the row's n = G*H values (the
// CPU's recurrent_norm_backward): gs holds d(γ_hh ⊙ LN(W_hh h) + bias) on entry and d(W_hh h) on
// exit, also stored to grad_hproj; grad_gamma gets the row's share of d γ_hh. gs may have been
// written by loops over another n (other threads' units): the barriers of block_row_moments'
// reductions come between.
template <typename T, typename S>
__device__ void block_recurrent_norm_backward(S* gs, const S* recurrent, const T* gamma, int64_t n,
                                              S* grad_gamma, T* grad_hproj) {
  const RowMoments<S> r = block_row_moments(recurrent, n);
  auto r_hat = [&](int64_t i) { return (recurrent[i] - r.mean) * r.rstd; };
  double sum_d = 0, sum_d_hat = 0;
  FUSEDRNN_FOR_EACH_UNIT(n, i) {
    const S d_hat = gs[i] * to_state(gamma[i]);
    sum_d += d_hat;
    sum_d_hat += d_hat * r_hat(i);
  }
  const S mean_d = S(block_sum(sum_d) / n), mean_d_hat = S(block_sum(sum_d_hat) / n);
  FUSEDRNN_FOR_EACH_UNIT(n, i) {
    grad_gamma[i] = gs[i] * r_hat(i);
    gs[i] = gates::layer_norm_grad(gs[i] * to_state(gamma[i]), r_hat(i), mean_d, mean_d_hat,
                                   r.rstd);
    grad_hproj[i] = stored<T>(gs[i]);
  }
}

// ------------------------------------------------------------------------------------ cells

// The rows of the workspace parts before hprev for batch row `row` (nullptr when not saved).
template <typename S>
struct WorkspaceRows {
  S* parts[kMaxWorkspaceParts] = {};

  __device__ WorkspaceRows(const StepWorkspace& ws, int64_t row, int64_t H) {
    for (int i = 0; i < ws.cell_parts; ++i) {
      if (ws.parts[i]) parts[i] = out<S>(ws.parts[i]) + row * ws.units[i] * H;
    }
  }
};

// One element (batch row, unit j) of a step as the kernels below hand it to a cell.
template <typename T, typename S>
struct ForwardElement {
  const T* x;     // the row's xproj (G blocks, H apart)
  const S* gh;    // the row's W_hh h_{t-1} (G blocks)
  const T* bias;  // (G*H) the step's bias (the step parameters' first G*H, csrc/ops.cpp)
  S h_cur;        // h_{t-1}[j] (0 for j >= P)
  S c_cur;        // c_{t-1}[j], cells with a cell state
  S* const* ws;   // the row of each workspace part before hprev; nullptr when not saved
  int64_t j, H;
};

template <typename S>
struct ForwardResult {
  S h, c;  // h_t[j] (before W_hr where h is projected); c_t[j], cells with a cell state
};

template <typename S>
struct BackwardElement {
  const S* const* ws;  // the row of each workspace part before hprev
  S hprev;             // h_{t-1}[j] (0 for j >= P)
  S grad_h;            // d h_t[j] (d(h before W_hr) where h is projected)
  S* dc;               // d c_t[j] in, d c_{t-1}[j] out; cells with a cell state
  int64_t j, H;
};

template <typename S>
struct BackwardResult {
  S step[kMaxGates];  // d(W_hh h_{t-1} (+ b_hh)) per gate: the GEMM operand
  S x[kMaxGates];     // d xproj per gate
  S h_prev;           // the direct part of d h_{t-1}[j]
  S unprojected;      // h before W_hr, recomputed (for d W_hr where h is projected)
};

// A cell's pointwise step on one element: DeviceCell<C>::forward / backward, from gate_math.h.
template <Cell C>
struct DeviceCell;

template <bool Relu>
struct DeviceRnn {
  template <typename T, typename S>
  __device__ static ForwardResult<S> forward(const ForwardElement<T, S>& e) {
    const S h =
        gates::rnn_activation<S>(to_state(e.x[e.j]) + to_state(e.bias[e.j]) + e.gh[e.j], Relu);
    if (e.ws[0]) e.ws[0][e.j] = h;  // the activations: backward's derivative reads them
    return {h, S(0)};
  }
  template <typename S>
  __device__ static BackwardResult<S> backward(const BackwardElement<S>& e) {
    BackwardResult<S> r{};
    r.step[0] = r.x[0] = gates::rnn_activation_grad<S>(e.ws[0][e.j], e.grad_h, Relu);
    return r;
  }
};
template <>
struct DeviceCell<Cell::RnnTanh> : DeviceRnn<false> {};
template <>
struct DeviceCell<Cell::RnnRelu> : DeviceRnn<true> {};
// IndRNN: the RNN step; the loop's recurrent product is u ⊙ h_{t-1} (a diagonal recurrence).
template <>
struct DeviceCell<Cell::IndrnnTanh> : DeviceRnn<false> {};
template <>
struct DeviceCell<Cell::IndrnnRelu> : DeviceRnn<true> {};

template <>
struct DeviceCell<Cell::Gru> {
  template <typename T, typename S>
  __device__ static ForwardResult<S> forward(const ForwardElement<T, S>& e) {
    const int64_t j = e.j, H = e.H;
    auto hpart = [&](int k) { return e.gh[k * H + j] + to_state(e.bias[k * H + j]); };
    S h;
    const auto g = gates::gru_forward<S>(to_state(e.x[j]), to_state(e.x[H + j]),
                                         to_state(e.x[2 * H + j]), hpart(0), hpart(1), hpart(2),
                                         e.h_cur, &h);
    if (S* ws = e.ws[0]) {
      ws[j] = g.r;
      ws[H + j] = g.z;
      ws[2 * H + j] = g.n;
      ws[3 * H + j] = g.hn;
    }
    return {h, S(0)};
  }
  template <typename S>
  __device__ static BackwardResult<S> backward(const BackwardElement<S>& e) {
    const int64_t j = e.j, H = e.H;
    const S* ws = e.ws[0];
    const gates::GruGates<S> g{ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j]};
    const auto d = gates::gru_backward<S>(g, e.hprev, e.grad_h);
    BackwardResult<S> r{};
    r.step[0] = r.x[0] = d.r;
    r.step[1] = r.x[1] = d.z;
    r.step[2] = d.hn;  // b_hn sits behind the reset gate: d(W_hn h + b_hn) = d x_n * r
    r.x[2] = d.n;
    r.h_prev = d.h_prev;
    return r;
  }
};

template <>
struct DeviceCell<Cell::Lstm> {
  template <typename T, typename S>
  __device__ static ForwardResult<S> forward(const ForwardElement<T, S>& e) {
    const int64_t j = e.j, H = e.H;
    auto pre = [&](int k) {
      return to_state(e.x[k * H + j]) + to_state(e.bias[k * H + j]) + e.gh[k * H + j];
    };
    S c_new, h_new;
    const auto a = gates::lstm_forward<S>(pre(0), pre(1), pre(2), pre(3), e.c_cur, &c_new, &h_new);
    if (S* ws = e.ws[0]) {  // saved: the gates, c_t and c_{t-1}
      ws[j] = a.i;
      ws[H + j] = a.f;
      ws[2 * H + j] = a.g;
      ws[3 * H + j] = a.o;
      e.ws[1][j] = c_new;
      e.ws[2][j] = e.c_cur;
    }
    return {h_new, c_new};
  }
  template <typename S>
  __device__ static BackwardResult<S> backward(const BackwardElement<S>& e) {
    const int64_t j = e.j, H = e.H;
    const S* ws = e.ws[0];
    const gates::LstmGates<S> a{ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j]};
    const auto d = gates::lstm_backward<S>(a, e.ws[1][j], e.ws[2][j], e.grad_h, *e.dc);
    *e.dc = d.c_prev;
    BackwardResult<S> r{};
    r.step[0] = r.x[0] = d.i;
    r.step[1] = r.x[1] = d.f;
    r.step[2] = r.x[2] = d.g;
    r.step[3] = r.x[3] = d.o;
    r.unprojected = d.h_unprojected;
    return r;
  }
};

// ------------------------------------------------------------------------------- the kernels

// Unit j of batch row b (slot `row`) where the row is past its length, forward: the state is
// carried over, the output and workspace are zero.
template <typename T, typename S>
__device__ void forward_inactive_unit(const ForwardStep& p, int64_t b, int64_t j, int64_t row,
                                      const WorkspaceRows<S>& ws) {
  const int64_t H = p.at.H, P = p.at.P;
  if (p.c_next) out<S>(p.c_next)[b * H + j] = in<S>(p.c_cur)[b * H + j];
  if (j < P) {
    if (!p.proj) out<S>(p.h_next)[b * P + j] = in<S>(p.h_cur)[b * P + j];
    out<T>(p.out)[row * P + j] = zero<T>();
    if (p.ws.hprev) static_cast<S*>(p.ws.hprev)[row * P + j] = S(0);
  }
  for (int i = 0; i < p.ws.cell_parts; ++i) {
    if (!ws.parts[i]) continue;
    for (int64_t k = 0; k < p.ws.units[i]; ++k) ws.parts[i][k * H + j] = S(0);
  }
}

// Its backward: the gate grads are 0, so d h passes through the GEMM unchanged (and the row
// adds nothing to the step parameters' gradient).
template <typename T, typename S, Cell C>
__device__ void backward_inactive_unit(const BackwardStep& p, int64_t b, int64_t j, int64_t row) {
  constexpr int64_t G = spec(C).gates, U = spec(C).step_param_row_units();
  const int64_t H = p.at.H, P = p.at.P;
  for (int64_t k = 0; k < G; ++k) {
    out<S>(p.grad_step)[b * G * H + k * H + j] = S(0);
    out<T>(p.grad_x)[row * G * H + k * H + j] = zero<T>();
    if (p.grad_hproj) out<T>(p.grad_hproj)[row * G * H + k * H + j] = zero<T>();
  }
  if (p.grad_params) {
    for (int64_t k = 0; k < U; ++k) out<S>(p.grad_params)[row * U * H + k * H + j] = S(0);
  }
  if (p.proj) out<S>(p.unprojected_all)[row * H + j] = S(0);
  if (j < P) out<S>(p.dh_prev)[b * P + j] = in<S>(p.dh)[b * P + j];
}

// Element (batch row b, unit j) of step p.at.s, W_hh h_{t-1} already in p.gh: the cell's step,
// or the inactive path past the row's length.
template <typename T, Cell C>
__device__ void forward_element(const ForwardStep& p, int64_t b, int64_t j) {
  using S = typename State<T>::type;
  constexpr int64_t G = spec(C).gates;
  const int64_t B = p.at.B, H = p.at.H, P = p.at.P, s = p.at.s;
  const int64_t row = p.at.sched.slot(s, b) * B + b;
  const bool h_lane = j < P;  // h rows are P wide (P <= H): threads j < P handle them
  const WorkspaceRows<S> ws(p.ws, row, H);
  S* hprev = static_cast<S*>(p.ws.hprev);
  if (!p.at.sched.active(s, b)) {
    forward_inactive_unit<T>(p, b, j, row, ws);
    return;
  }
  const S h_cur = h_lane ? in<S>(p.h_cur)[b * P + j] : S(0);
  const ForwardElement<T, S> e{in<T>(p.x) + row * G * H, in<S>(p.gh) + b * G * H,
                               in<T>(p.params), h_cur,
                               p.c_cur ? in<S>(p.c_cur)[b * H + j] : S(0), ws.parts, j, H};
  const ForwardResult<S> r = DeviceCell<C>::forward(e);
  if (p.c_next) out<S>(p.c_next)[b * H + j] = r.c;
  if (p.proj) {
    out<S>(p.unprojected)[b * H + j] = r.h;
  } else {
    out<S>(p.h_next)[b * P + j] = r.h;
    out<T>(p.out)[row * P + j] = stored<T>(r.h);
  }
  if (hprev && h_lane) hprev[row * P + j] = h_cur;
}

template <typename T, Cell C>
__global__ void forward_kernel(ForwardStep p) {
  FUSEDRNN_FOR_EACH_ELEMENT(p.at.B, p.at.H, b, j) forward_element<T, C>(p, b, j);
}

template <typename T>
__global__ void projection_kernel(ProjectionStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, P = p.at.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, P, b, j) {
    if (p.at.sched.active(s, b)) {
      out<T>(p.out)[(p.at.sched.slot(s, b) * B + b) * P + j] =
          stored<T>(in<S>(p.h_next)[b * P + j]);
    } else {
      out<S>(p.h_next)[b * P + j] = in<S>(p.h_cur)[b * P + j];
    }
  }
}

template <typename T>
__global__ void backward_projection_kernel(BackwardProjectionStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, P = p.at.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, P, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const S d = p.at.sched.active(s, b)
                    ? to_state(in<T>(p.grad_out)[row * P + j]) + in<S>(p.dh)[b * P + j]
                    : S(0);
    out<S>(p.dh_step)[b * P + j] = d;
    out<S>(p.dh_all)[row * P + j] = d;
  }
}

// Element (b, j) of backward step p.at.s: the cell's backward, writing d gates to p.grad_step
// and the direct part of d h_{t-1} (the recurrent product adds the rest), or the inactive path.
template <typename T, Cell C>
__device__ void backward_element(const BackwardStep& p, int64_t b, int64_t j) {
  using S = typename State<T>::type;
  constexpr int64_t G = spec(C).gates;
  const int64_t B = p.at.B, H = p.at.H, P = p.at.P, s = p.at.s;
  const bool h_lane = j < P;
  const int64_t row = p.at.sched.slot(s, b) * B + b;
  if (!p.at.sched.active(s, b)) {
    backward_inactive_unit<T, S, C>(p, b, j, row);
    return;
  }
  S* gs = out<S>(p.grad_step) + b * G * H;
  T* gx = out<T>(p.grad_x) + row * G * H;
  T* ghp = p.grad_hproj ? out<T>(p.grad_hproj) + row * G * H : nullptr;
  const WorkspaceRows<S> ws(p.ws, row, H);
  const S grad_h = p.proj ? in<S>(p.grad_unproj)[b * H + j]
                          : to_state(in<T>(p.grad_out)[row * P + j]) + in<S>(p.dh)[b * P + j];
  const BackwardElement<S> e{ws.parts, h_lane ? in<S>(p.ws.hprev)[row * P + j] : S(0), grad_h,
                             p.dc ? out<S>(p.dc) + b * H + j : nullptr, j, H};
  const BackwardResult<S> r = DeviceCell<C>::backward(e);
  for (int64_t k = 0; k < G; ++k) {
    gs[k * H + j] = r.step[k];
    gx[k * H + j] = stored<T>(r.x[k]);
    if (ghp) ghp[k * H + j] = stored<T>(r.step[k]);
  }
  if (p.proj) out<S>(p.unprojected_all)[row * H + j] = r.unprojected;
  if (h_lane) out<S>(p.dh_prev)[b * P + j] = r.h_prev;
}

template <typename T, Cell C>
__global__ void backward_kernel(BackwardStep p) {
  FUSEDRNN_FOR_EACH_ELEMENT(p.at.B, p.at.H, b, j) backward_element<T, C>(p, b, j);
}

// A normalized cell's step for batch row b, by the whole block (its barriers are reached by every
// thread or none: a row's activity is the whole block's).
template <typename T, Cell C>
__device__ void forward_row_step(const ForwardStep& p, int64_t b) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  const int64_t row = p.at.sched.slot(s, b) * B + b;
  const WorkspaceRows<S> ws(p.ws, row, H);
  if (p.at.sched.active(s, b)) {
    DeviceCell<C>::template forward_row<T>(p, b, row, ws);
  } else {
    FUSEDRNN_FOR_EACH_UNIT(H, j) forward_inactive_unit<T>(p, b, j, row, ws);
  }
}

template <typename T, Cell C>
__device__ void backward_row_step(const BackwardStep& p, int64_t b) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  const int64_t row = p.at.sched.slot(s, b) * B + b;
  if (p.at.sched.active(s, b)) {
    DeviceCell<C>::template backward_row<T>(p, b, row, WorkspaceRows<S>(p.ws, row, H));
  } else {
    FUSEDRNN_FOR_EACH_UNIT(H, j) backward_inactive_unit<T, S, C>(p, b, j, row);
  }
}

// A normalized cell's step: one block per batch row, grid-stride over the rows.
template <typename T, Cell C>
__global__ void forward_row_kernel(ForwardStep p) {
  for (int64_t b = blockIdx.x; b < p.at.B; b += gridDim.x) forward_row_step<T, C>(p, b);
}

template <typename T, Cell C>
__global__ void backward_row_kernel(BackwardStep p) {
  for (int64_t b = blockIdx.x; b < p.at.B; b += gridDim.x) backward_row_step<T, C>(p, b);
}

// ------------------------------------------------------------------------- persistent loops

// A persistent block's share of n units (hidden units, or the P units of a projection): the
// first, and how many ([first, first + count); the last block may own fewer than per_block, or
// none).
struct BlockShare {
  int64_t first, count;
};
__device__ __forceinline__ BlockShare block_share(int64_t per_block, int64_t n) {
  const int64_t first = blockIdx.x * per_block;
  return {first, n - first < per_block ? (n > first ? n - first : 0) : per_block};
}

// The sum of v over a warp's 32 lanes, returned to every lane (the warp's lanes all call it).
template <typename S>
__device__ __forceinline__ S warp_sum(S v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Each (batch row, unit) element of a block's `count` units, a warp each: fn(b, u, lane).
#define FUSEDRNN_FOR_EACH_WARP_ELEMENT(B, count, b, u, lane)                             \
  for (int64_t i_ = threadIdx.x / 32; i_ < (B) * (count); i_ += blockDim.x / 32)          \
    if (const int64_t b = i_ / (count), u = i_ % (count), lane = threadIdx.x % 32; true)

// The dot product of n values `row` (shared memory) with `v` (global, written by other SMs
// before the last grid barrier: loaded past L1, whose lines of it would be stale next step
// anyway), split over a warp's lanes; every lane gets the sum.
template <typename S>
__device__ __forceinline__ S warp_dot(const S* row, const S* v, int64_t n, int64_t lane) {
  S acc = S(0);
  for (int64_t c = lane; c < n; c += 32) acc += row[c] * __ldcg(v + c);
  return warp_sum(acc);
}

// Whether a persistent block's recurrent products run on tensor cores (TensorCoreTiles), and
// in how many 16-bit terms a state value enters them: where the loop's tensor_cores says so (the
// time loops' plan: where the tiles fit the shared memory, on sm_80 on: both half types' wmma
// need it for bf16, and code built for it: persistent_code_arch; elsewhere the products run as
// for float). Code built for an older architecture traps rather than run a loop planned for
// tensor cores another way (the plan never asks it to).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define FUSEDRNN_TENSOR_CORES 0
#else
#define FUSEDRNN_TENSOR_CORES 1
#endif
template <typename T, Cell C>
constexpr bool kHalfDense = !spec(C).diagonal() && (std::is_same_v<T, __half> ||
                                                    std::is_same_v<T, __nv_bfloat16>);
template <typename T, Cell C>
constexpr bool kTensorCores = FUSEDRNN_TENSOR_CORES && kHalfDense<T, C>;
// Whether a block runs its products on tensor cores: where its loop's plan says so (`planned`);
// code built without them traps there (see above).
template <typename T, Cell C>
__device__ __forceinline__ bool on_tensor_cores(bool planned) {
  if (kHalfDense<T, C> && !kTensorCores<T, C> && planned) __trap();  // (built for < sm_80)
  return kTensorCores<T, C> && planned;
}
template <typename T>
constexpr int64_t kTensorCoreTerms =
    tensor_core_terms(std::is_same_v<T, __half> ? Dtype::Half : Dtype::BFloat16);

// A block's products on tensor cores: for each of its `rows` rows r of `a` (TensorCoreTiles'
// layout, row-major, zero past rows x depth) and each batch row b < B, the dot product of row r
// with v[b] (B, depth) in the state type, which other SMs wrote before the last grid barrier
// (loaded past L1) and which enters scaled by its row's power of two and as the sum of
// kTensorCoreTerms<T> values of the storage type T (each the rounding of what the ones before it
// left; TensorCoreTiles); use(r, b, product) then runs once for each, in some thread of the
// block. `a` is the start of the block's tiles, whose batch tile and products come after the
// weights. Every thread of the block calls it; it begins and ends with all of them at a block
// barrier.
template <typename T, typename S, typename Use>
__device__ void block_products_on_tensor_cores(T* a, int64_t rows, int64_t depth, const S* v,
                                               int64_t B, Use use) {
  namespace wmma = nvcuda::wmma;
  constexpr int64_t kRows = TensorCoreTiles::kRows, kBatch = TensorCoreTiles::kBatch,
                    kDepth = TensorCoreTiles::kDepth, kTerms = kTensorCoreTerms<T>;
  const TensorCoreTiles tiles(rows, depth, kTerms);
  // (kTerms, kBatch, depth_pad): term n of batch row b0 + b's value k at
  // (n * kBatch + b) * depth_pad + k
  T* batch = a + tiles.matrix_values();
  float* products = reinterpret_cast<float*>(batch + tiles.batch_values());  // (rows_pad, kBatch)
  float* scales = products + tiles.product_values();  // (kBatch): 2^-e, the row's largest < 2^e
  const int64_t warp = threadIdx.x / 32, warps = blockDim.x / 32, lane = threadIdx.x % 32;
  const int64_t term_values = kBatch * tiles.depth_pad;
  for (int64_t b0 = 0; b0 < B; b0 += kBatch) {
    __syncthreads();  // the previous batch tile's products and scales used
    for (int64_t row = warp; row < kBatch; row += warps) {  // each row's largest, a warp's max
      float largest = 0.0f;
      for (int64_t k = lane; k < depth && b0 + row < B; k += 32) {
        largest = fmaxf(largest, fabsf(float(__ldcg(v + (b0 + row) * depth + k))));
      }
      for (int offset = 16; offset > 0; offset /= 2) {
        largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
      }
      int e = 0;
      (void)frexpf(largest, &e);  // largest = m 2^e, m in [0.5, 1) (e = 0 for 0, inf or NaN)
      if (lane == 0) scales[row] = ldexpf(1.0f, -e);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < term_values; i += blockDim.x) {
      const int64_t b = b0 + i / tiles.depth_pad, k = i % tiles.depth_pad;
      S rest = b < B && k < depth ? __ldcg(v + b * depth + k) * S(scales[i / tiles.depth_pad])
                                  : S(0);
      for (int64_t n = 0; n < kTerms; ++n) {
        const T term = stored<T>(rest);
        batch[n * term_values + i] = term;
        rest -= to_state(term);
      }
    }
    __syncthreads();
    for (int64_t t = warp; t < tiles.rows_pad / kRows; t += warps) {
      wmma::fragment<wmma::accumulator, kRows, kBatch, kDepth, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int64_t k0 = 0; k0 < tiles.depth_pad; k0 += kDepth) {
        wmma::fragment<wmma::matrix_a, kRows, kBatch, kDepth, T, wmma::row_major> w;
        wmma::load_matrix_sync(w, a + t * kRows * tiles.depth_pad + k0, tiles.depth_pad);
        for (int64_t n = 0; n < kTerms; ++n) {  // the smallest terms' products are added last
          wmma::fragment<wmma::matrix_b, kRows, kBatch, kDepth, T, wmma::col_major> x;
          wmma::load_matrix_sync(x, batch + n * term_values + k0, tiles.depth_pad);
          wmma::mma_sync(acc, w, x, acc);
        }
      }
      wmma::store_matrix_sync(products + t * kRows * kBatch, acc, kBatch, wmma::mem_row_major);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < rows * kBatch; i += blockDim.x) {
      if (b0 + i % kBatch < B) {
        use(i / kBatch, b0 + i % kBatch, S(products[i] / scales[i % kBatch]));  // (exact)
      }
    }
  }
  __syncthreads();
}

// A block's rows of a weight matrix in TensorCoreTiles' layout: weight(r, k) for r < rows,
// k < depth (state type), zero beyond.
template <typename T, typename Weight>
__device__ void load_tensor_core_rows(T* a, int64_t rows, int64_t depth, Weight weight) {
  const TensorCoreTiles tiles(rows, depth, kTensorCoreTerms<T>);
  for (int64_t i = threadIdx.x; i < tiles.matrix_values(); i += blockDim.x) {
    const int64_t r = i / tiles.depth_pad, k = i % tiles.depth_pad;
    a[i] = r < rows && k < depth ? stored<T>(weight(r, k)) : stored<T>(0.0f);
  }
}

// The whole forward loop in one cooperative launch (PersistentForward), of each direction of a
// layer at once where two are given: the blocks of grid row y run loop y (the same cell and sizes,
// so the same barriers a step; the grid barrier holds both). Block k of a row owns the hidden
// units [k U, (k + 1) U) and keeps their rows of W_hh (every gate's) in shared memory for all T
// steps; where h is projected, also the rows [k U_P, (k + 1) U_P) of W_hr. A step:
//   1. each warp takes elements (b, j) of the block's units: their recurrent products from
//      h_{t-1}, which every block wrote the step before (the lanes sharing each dot product);
//      an elementwise cell's lane 0 then runs the element's step (forward_element, as the
//      per-step kernel: h_t, or where projected the h before W_hr);
//   2. a normalised cell: a grid barrier (every product written), then the blocks take the batch
//      rows and run the row step (forward_row_step, as the row kernel);
//      projected: a grid barrier (every unit's h before W_hr written), then each warp takes
//      elements (b, r) of the block's projection rows: h_t = W_hr[r] · (h before W_hr), output;
//   3. a grid barrier: h_t (and c_t) complete before any block reads them.
template <typename T, Cell C>
__global__ void __launch_bounds__(kPersistentMaxThreads, 1)
    persistent_forward_kernel(PersistentLoops<PersistentForward> loops) {
  using S = typename State<T>::type;
  const PersistentForward& q = loops.loop[blockIdx.y];  // this block's direction
  const bool tensor_cores = on_tensor_cores<T, C>(q.tensor_cores);
  constexpr int64_t G = spec(C).gates;
  constexpr bool kDiagonal = spec(C).diagonal(), kNormalized = spec(C).normalized();
  const int64_t B = q.step.at.B, H = q.step.at.H, P = q.step.at.P;
  const bool proj = q.step.proj;
  const auto [u0, units] = block_share(q.units_per_block, H);
  const auto [r0, proj_rows] = block_share(proj ? q.proj_units_per_block : 0, P);
  const int64_t width = kDiagonal ? 1 : P;  // of a W_hh row (u: one value)
  const S* w_hh = in<S>(q.w_hh);
  // The block's rows of W_hh, row k * units + u for gate k's unit u0 + u: (G * units, width) in
  // the state type, or on tensor cores TensorCoreTiles' layout in T; then (proj_rows, H): its
  // rows of W_hr, where projected.
  S* w = dynamic_shared_memory<S>();
  S* w_r = w + G * units * width;
  if (tensor_cores) {
    if constexpr (kTensorCores<T, C>) {
      T* tiles = dynamic_shared_memory<T>();
      load_tensor_core_rows(tiles, G * units, P, [&](int64_t r, int64_t c) {
        return w_hh[(r / units * H + u0 + r % units) * P + c];
      });
      w_r = reinterpret_cast<S*>(reinterpret_cast<unsigned char*>(tiles) +
                                 TensorCoreTiles(G * units, P, kTensorCoreTerms<T>).bytes());
    }
  } else {
    for (int64_t i = threadIdx.x; i < G * units * width; i += blockDim.x) {
      const int64_t k = i / (units * width), u = i / width % units, c = i % width;
      w[i] = w_hh[(k * H + u0 + u) * width + c];
    }
  }
  for (int64_t i = threadIdx.x; i < proj_rows * H; i += blockDim.x) {
    w_r[i] = in<S>(q.w_hr)[r0 * H + i];
  }
  __syncthreads();
  ForwardStep p = q.step;
  S* gh = out<S>(q.gh);
  for (int64_t s = 0; s < q.T; ++s) {
    p.at.s = s;
    p.h_cur = q.h[s & 1];
    p.h_next = q.h[(s + 1) & 1];
    p.c_cur = q.c[s & 1];
    p.c_next = q.c[(s + 1) & 1];
    const S* h = in<S>(p.h_cur);
    if (tensor_cores) {
      if constexpr (kTensorCores<T, C>) {
        // Every row's products (an inactive row's too, unread), then a thread an element.
        block_products_on_tensor_cores(dynamic_shared_memory<T>(), G * units, P, h, B,
                                       [&](int64_t r, int64_t b, S product) {
                                         gh[b * G * H + r / units * H + u0 + r % units] =
                                             product;
                                       });
        if constexpr (!kNormalized) {
          for (int64_t i = threadIdx.x; i < B * units; i += blockDim.x) {
            forward_element<T, C>(p, i / units, u0 + i % units);
          }
        }
      }
    } else FUSEDRNN_FOR_EACH_WARP_ELEMENT(B, units, b, u, lane) {
      const int64_t j = u0 + u;
      if (p.at.sched.active(s, b)) {  // (an inactive row's step reads no product)
        if constexpr (kDiagonal) {    // u ⊙ h_{t-1}: the unit's own value, no dot product
          for (int64_t k = 0; k < G && lane == 0; ++k) {
            gh[b * G * H + k * H + j] = w[k * units + u] * h[b * H + j];
          }
        } else {
          for (int64_t k = 0; k < G; ++k) {
            const S sum = warp_dot(w + (k * units + u) * width, h + b * P, P, lane);
            if (lane == 0) gh[b * G * H + k * H + j] = sum;
          }
        }
      }
      if constexpr (!kNormalized) {
        if (lane == 0) forward_element<T, C>(p, b, j);
      }
    }
    if constexpr (kNormalized) {
      grid_sync();  // every unit's products written
      for (int64_t b = blockIdx.x; b < B; b += gridDim.x) forward_row_step<T, C>(p, b);
    } else if (proj) {
      grid_sync();  // every unit's h before W_hr written
      const S* unprojected = in<S>(p.unprojected);
      FUSEDRNN_FOR_EACH_WARP_ELEMENT(B, proj_rows, b, r, lane) {
        const int64_t j = r0 + r, row = p.at.sched.slot(s, b) * B + b;
        if (p.at.sched.active(s, b)) {
          const S v = warp_dot(w_r + r * H, unprojected + b * H, H, lane);
          if (lane == 0) {
            out<S>(p.h_next)[b * P + j] = v;
            out<T>(p.out)[row * P + j] = stored<T>(v);
          }
        } else if (lane == 0) {  // h frozen (the zero output row is forward_element's)
          out<S>(p.h_next)[b * P + j] = h[b * P + j];
        }
      }
    }
    grid_sync();  // h_t (and c_t) complete before any block reads them
  }
}

// The whole backward loop in one cooperative launch (PersistentBackward), the mirror of
// persistent_forward_kernel: block k owns the same hidden units and keeps W_hh's columns
// [k U_P, (k + 1) U_P) (every gate's rows; U_P = U without a projection), and where h is
// projected W_hr's columns of its hidden units. A step:
//   0. projected: d h_t = d output_t + carried d h for the block's P units, a grid barrier;
//      then each warp's element (b, j) takes d(h before W_hr) = d h_t · W_hr[:, j];
//   1. each element's backward (backward_element: d gates into this step's grad_step buffer and
//      the direct part of d h_{t-1}), or, for a normalised cell, the blocks take the batch rows
//      (backward_row_step);
//   2. a grid barrier, then each element (b, column) of the block's columns, a warp each, adds
//      the column's product with every unit's d gates, which other blocks wrote, to d h_{t-1};
//   3. the next step reads d h_{t-1} where this block wrote it (a block barrier), or, for a
//      normalised cell, whole rows (a grid barrier).
// grad_step alternates between two buffers, so the next step's writes never meet this step's
// reads.
template <typename T, Cell C>
__global__ void __launch_bounds__(kPersistentMaxThreads, 1)
    persistent_backward_kernel(PersistentLoops<PersistentBackward> loops) {
  using S = typename State<T>::type;
  const PersistentBackward& q = loops.loop[blockIdx.y];  // this block's direction
  const bool tensor_cores = on_tensor_cores<T, C>(q.tensor_cores);
  constexpr int64_t G = spec(C).gates;
  constexpr bool kDiagonal = spec(C).diagonal(), kNormalized = spec(C).normalized();
  const int64_t B = q.step.at.B, H = q.step.at.H, P = q.step.at.P;
  const bool proj = q.step.proj;
  const auto [u0, units] = block_share(q.units_per_block, H);
  const auto [c0, columns] = block_share(q.proj_units_per_block, P);
  // Dense: (columns, G*H), w[c][r] = W_hh[r][c0 + c] (on tensor cores TensorCoreTiles' layout
  // in T); diagonal: (G, units), the block's u. Then (units, P): w_r[u][c] = W_hr[c][u0 + u],
  // where projected.
  S* w = dynamic_shared_memory<S>();
  const int64_t w_size = kDiagonal ? G * units : columns * G * H;
  S* w_r = w + w_size;
  const S* w_hh = in<S>(q.w_hh);
  if (tensor_cores) {
    if constexpr (kTensorCores<T, C>) {
      T* tiles = dynamic_shared_memory<T>();
      load_tensor_core_rows(tiles, columns, G * H,
                            [&](int64_t c, int64_t r) { return w_hh[r * P + c0 + c]; });
      w_r = reinterpret_cast<S*>(reinterpret_cast<unsigned char*>(tiles) +
                                 TensorCoreTiles(columns, G * H, kTensorCoreTerms<T>).bytes());
    }
  } else {
    for (int64_t i = threadIdx.x; i < w_size; i += blockDim.x) {
      w[i] = kDiagonal ? w_hh[i / units * H + u0 + i % units]
                       : w_hh[i % (G * H) * P + c0 + i / (G * H)];
    }
  }
  for (int64_t i = threadIdx.x; i < (proj ? units * P : 0); i += blockDim.x) {
    w_r[i] = in<S>(q.w_hr)[i % P * H + u0 + i / P];
  }
  __syncthreads();
  BackwardStep p = q.step;
  for (int64_t step = 0; step < q.T; ++step) {
    const int64_t s = q.T - 1 - step;
    p.at.s = s;
    p.dh = q.dh[step & 1];
    p.dh_prev = q.dh[(step + 1) & 1];
    p.grad_step = q.grad_step[step & 1];
    if constexpr (kNormalized) {
      for (int64_t b = blockIdx.x; b < B; b += gridDim.x) backward_row_step<T, C>(p, b);
    } else if (proj) {
      // d h_t of the block's P units (its columns' d h, which it wrote itself)
      for (int64_t i = threadIdx.x; i < B * columns; i += blockDim.x) {
        const int64_t b = i / columns, c = c0 + i % columns, row = p.at.sched.slot(s, b) * B + b;
        const S d = p.at.sched.active(s, b)
                        ? to_state(in<T>(p.grad_out)[row * P + c]) + in<S>(p.dh)[b * P + c]
                        : S(0);
        out<S>(q.dh_step)[b * P + c] = d;
        out<S>(q.dh_all)[row * P + c] = d;
      }
      grid_sync();  // d h_t complete
      FUSEDRNN_FOR_EACH_WARP_ELEMENT(B, units, b, u, lane) {
        const int64_t j = u0 + u;
        const S d = warp_dot(w_r + u * P, in<S>(q.dh_step) + b * P, P, lane);
        if (lane == 0) {
          out<S>(q.grad_unproj)[b * H + j] = d;  // (p.grad_unproj: the same buffer)
          backward_element<T, C>(p, b, j);
        }
      }
    } else {
      for (int64_t i = threadIdx.x; i < B * units; i += blockDim.x) {
        backward_element<T, C>(p, i / units, u0 + i % units);
      }
    }
    grid_sync();  // every unit's d gates written before any block reads them
    const S* gs = in<S>(p.grad_step);
    S* dh_prev = out<S>(p.dh_prev);
    if (tensor_cores) {
      if constexpr (kTensorCores<T, C>) {
        block_products_on_tensor_cores(dynamic_shared_memory<T>(), columns, G * H, gs, B,
                                       [&](int64_t c, int64_t b, S product) {
                                         // (d gates 0 where inactive: d h passed through)
                                         if (p.at.sched.active(s, b)) {
                                           dh_prev[b * P + c0 + c] += product;
                                         }
                                       });
      }
    } else FUSEDRNN_FOR_EACH_WARP_ELEMENT(B, kDiagonal ? units : columns, b, c, lane) {
      if (!p.at.sched.active(s, b)) continue;  // d gates 0: d h passed through already
      const S* gs_row = gs + b * G * H;
      S acc;
      if constexpr (kDiagonal) {
        const int64_t j = u0 + c;
        acc = S(0);
        for (int64_t k = lane; k < G; k += 32) acc += w[k * units + c] * gs_row[k * H + j];
        acc = warp_sum(acc);
      } else {
        acc = warp_dot(w + c * G * H, gs_row, G * H, lane);
      }
      if (lane == 0) dh_prev[b * P + (kDiagonal ? u0 : c0) + c] += acc;
    }
    // d h_{t-1} complete before the next step reads it: a normalised row reads all of it
    if constexpr (kNormalized) {
      grid_sync();
    } else {
      __syncthreads();
    }
  }
}

// ------------------------------------------------------------------------------- launching

// A launch's shape: one thread per element of B rows x width (`threads` a block), or, for a
// row kernel, one block of kRowThreads per row; capped at kMaxBlocks (grid-stride beyond).
struct StepShape {
  int64_t blocks;
  int threads;
};
inline StepShape element_shape(int64_t B, int64_t width) {
  return {(B * width + kThreads - 1) / kThreads, kThreads};
}
inline StepShape row_shape(int64_t B) { return {B, kRowThreads}; }

// Launches kernel<T> for the runtime storage dtype (nothing for an empty step).
// Kernel<T>::fn for the runtime storage dtype, launched plain or cooperatively.
template <template <typename> class Kernel, typename Params>
cudaError_t launch_typed(const Params& p, dim3 grid, dim3 block, size_t shared_bytes,
                         bool cooperative, Dtype dtype, cudaStream_t stream) {
  auto go = [&](auto kernel) {
    return cooperative ? launch_cooperative(kernel, grid, block, shared_bytes, stream, p)
                       : launch(kernel, grid, block, shared_bytes, stream, p);
  };
  switch (dtype) {
    case Dtype::Float: return go(Kernel<float>::fn);
    case Dtype::Double: return go(Kernel<double>::fn);
    case Dtype::Half: return go(Kernel<__half>::fn);
    case Dtype::BFloat16: return go(Kernel<__nv_bfloat16>::fn);
  }
  return cudaErrorInvalidValue;
}

template <template <typename> class Kernel, typename Params>
cudaError_t launch_step(const Params& p, int64_t width, StepShape shape, Dtype dtype,
                        cudaStream_t stream) {
  if (p.at.B == 0 || width == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(std::min(shape.blocks, kMaxBlocks))), block(shape.threads);
  return launch_typed<Kernel>(p, grid, block, 0, /*cooperative=*/false, dtype, stream);
}

// kernel<T> (of a cell) as a class template, so launch_step can take it as an argument: the
// element kernels, or the row kernels of a normalized cell.
template <Cell C>
struct Forward {
  template <typename T>
  struct Kernel {
    static constexpr auto fn = [] {
      if constexpr (spec(C).normalized()) return &forward_row_kernel<T, C>;
      else return &forward_kernel<T, C>;
    }();
  };
};
template <Cell C>
struct Backward {
  template <typename T>
  struct Kernel {
    static constexpr auto fn = [] {
      if constexpr (spec(C).normalized()) return &backward_row_kernel<T, C>;
      else return &backward_kernel<T, C>;
    }();
  };
};

template <Cell C>
StepShape cell_step_shape(const StepPosition& at) {
  return spec(C).normalized() ? row_shape(at.B) : element_shape(at.B, at.H);
}
template <typename T>
struct Projection {
  static constexpr auto fn = &projection_kernel<T>;
};
template <typename T>
struct BackwardProjection {
  static constexpr auto fn = &backward_projection_kernel<T>;
};

}  // namespace

template <Cell C>
cudaError_t forward_step(const ForwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<Forward<C>::template Kernel>(p, p.at.H, cell_step_shape<C>(p.at), dtype,
                                                  stream);
}
template <Cell C>
cudaError_t backward_step(const BackwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<Backward<C>::template Kernel>(p, p.at.H, cell_step_shape<C>(p.at), dtype,
                                                   stream);
}
cudaError_t projection_step(const ProjectionStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<Projection>(p, p.at.P, element_shape(p.at.B, p.at.P), dtype, stream);
}
cudaError_t backward_projection_step(const BackwardProjectionStep& p, Dtype dtype,
                                     cudaStream_t stream) {
  return launch_step<BackwardProjection>(p, p.at.P, element_shape(p.at.B, p.at.P), dtype,
                                         stream);
}

// The persistent loops' kernels as class templates over the storage type (for launch_typed).
template <Cell C>
struct PersistentForwardKernel {
  template <typename T>
  struct Kernel {
    static constexpr auto fn = &persistent_forward_kernel<T, C>;
  };
};
template <Cell C>
struct PersistentBackwardKernel {
  template <typename T>
  struct Kernel {
    static constexpr auto fn = &persistent_backward_kernel<T, C>;
  };
};

// A persistent launch of one or two loops (Loop: PersistentForwardKernel or
// PersistentBackwardKernel): grid (blocks, directions).
template <Cell C, template <Cell> class Loop, typename Params>
cudaError_t launch_persistent(const Params* loops, int directions, int64_t blocks, int threads,
                              size_t shared_bytes, Dtype dtype, cudaStream_t stream) {
  if (directions < 1 || directions > kMaxDirections) return cudaErrorInvalidValue;
  PersistentLoops<Params> all{};
  for (int d = 0; d < directions; ++d) all.loop[d] = loops[d];
  return launch_typed<Loop<C>::template Kernel>(
      all, dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(directions)), dim3(threads),
      shared_bytes, /*cooperative=*/true, dtype, stream);
}

template <Cell C>
cudaError_t persistent_forward(const PersistentForward* loops, int directions, int64_t blocks,
                               int threads, size_t shared_bytes, Dtype dtype,
                               cudaStream_t stream) {
  return launch_persistent<C, PersistentForwardKernel>(loops, directions, blocks, threads,
                                                       shared_bytes, dtype, stream);
}
template <Cell C>
cudaError_t persistent_backward(const PersistentBackward* loops, int directions, int64_t blocks,
                                int threads, size_t shared_bytes, Dtype dtype,
                                cudaStream_t stream) {
  return launch_persistent<C, PersistentBackwardKernel>(loops, directions, blocks, threads,
                                                        shared_bytes, dtype, stream);
}

int persistent_code_arch() {
#ifdef FUSEDRNN_SIMT_EMULATION
  return 90;  // (the emulated device's sm_90)
#else
  cudaFuncAttributes attributes{};
  const auto kernel = &persistent_forward_kernel<__half, Cell::Lstm>;
  if (cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(kernel)) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return attributes.ptxVersion;
#endif
}

// The cells' kernels (one line per cell).
#define FUSEDRNN_CELL_STEPS(cell)                                                          \
  template cudaError_t forward_step<cell>(const ForwardStep&, Dtype, cudaStream_t);      \
  template cudaError_t backward_step<cell>(const BackwardStep&, Dtype, cudaStream_t);    \
  template cudaError_t persistent_forward<cell>(const PersistentForward*, int, int64_t,  \
                                                int, size_t, Dtype, cudaStream_t);       \
  template cudaError_t persistent_backward<cell>(const PersistentBackward*, int, int64_t, \
                                                 int, size_t, Dtype, cudaStream_t)
FUSEDRNN_CELL_STEPS(Cell::RnnTanh);
FUSEDRNN_CELL_STEPS(Cell::RnnRelu);
FUSEDRNN_CELL_STEPS(Cell::Gru);
FUSEDRNN_CELL_STEPS(Cell::Lstm);
FUSEDRNN_CELL_STEPS(Cell::IndrnnTanh);
FUSEDRNN_CELL_STEPS(Cell::IndrnnRelu);
// Cells with files of their own (csrc/cells/), one line each: each holds its DeviceCell and
// its FUSEDRNN_CELL_STEPS line.
#include "../cells/layer_norm_lstm_cuda.cuh"
#include "../cells/layer_norm_gru_cuda.cuh"
#undef FUSEDRNN_CELL_STEPS

}  // namespace cuda
}  // namespace fusedrnn
