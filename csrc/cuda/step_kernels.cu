// Per-step fused pointwise kernels (see step_kernels.h). One thread per (batch row, hidden unit),
// grid-stride; each mirrors the CPU row pass of csrc/cpu/recurrent_cpu.cpp element by element,
// with the gate equations from gate_math.h. Compiled by nvcc for the GPU, and by the host
// compiler under the SIMT emulation for the tests (csrc/emulation/).
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

// Grid-stride over the n = rows * width elements of a step: fn(b, j).
#define FUSEDRNN_FOR_EACH_ELEMENT(rows, width, b, j)                                          \
  for (int64_t idx_ = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, n_ = (rows) * (width); \
       idx_ < n_; idx_ += int64_t(gridDim.x) * blockDim.x)                                     \
    if (const int64_t b = idx_ / (width), j = idx_ % (width); true)

// ------------------------------------------------------------------------------------ RNN

template <typename T>
__global__ void rnn_forward_kernel(RnnForwardStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const S h_cur = in<S>(p.h_cur)[b * H + j];
    if (!p.at.sched.active(s, b)) {
      out<S>(p.h_next)[b * H + j] = h_cur;
      out<T>(p.out)[row * H + j] = zero<T>();
      if (p.activations) out<S>(p.activations)[row * H + j] = S(0);
      if (p.hprev) out<S>(p.hprev)[row * H + j] = S(0);
      continue;
    }
    const S pre = to_state(in<T>(p.x)[row * H + j]) + in<S>(p.gh)[b * H + j];
    const S h = gates::rnn_activation<S>(pre, p.relu);
    out<S>(p.h_next)[b * H + j] = h;
    out<T>(p.out)[row * H + j] = stored<T>(h);
    if (p.activations) out<S>(p.activations)[row * H + j] = h;
    if (p.hprev) out<S>(p.hprev)[row * H + j] = h_cur;
  }
}

template <typename T>
__global__ void rnn_backward_kernel(RnnBackwardStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    if (!p.at.sched.active(s, b)) {  // d pre = 0: d h passes through the GEMM unchanged
      out<S>(p.grad_pre)[b * H + j] = S(0);
      out<T>(p.grad_x)[row * H + j] = zero<T>();
      out<S>(p.dh_prev)[b * H + j] = in<S>(p.dh)[b * H + j];
      continue;
    }
    const S grad_h = to_state(in<T>(p.grad_out)[row * H + j]) + in<S>(p.dh)[b * H + j];
    const S g = gates::rnn_activation_grad<S>(in<S>(p.activations)[row * H + j], grad_h, p.relu);
    out<S>(p.grad_pre)[b * H + j] = g;
    out<T>(p.grad_x)[row * H + j] = stored<T>(g);
    out<S>(p.dh_prev)[b * H + j] = S(0);
  }
}

// ------------------------------------------------------------------------------------ GRU

template <typename T>
__global__ void gru_forward_kernel(GruForwardStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const S h_cur = in<S>(p.h_cur)[b * H + j];
    S* gates_row = p.gates ? out<S>(p.gates) + row * 4 * H : nullptr;
    if (!p.at.sched.active(s, b)) {
      out<S>(p.h_next)[b * H + j] = h_cur;
      out<T>(p.out)[row * H + j] = zero<T>();
      if (gates_row) {
        for (int k = 0; k < 4; ++k) gates_row[k * H + j] = S(0);
      }
      if (p.hprev) out<S>(p.hprev)[row * H + j] = S(0);
      continue;
    }
    const T* x = in<T>(p.x) + row * 3 * H;
    const S* gh = in<S>(p.gh) + b * 3 * H;
    const T* bias = in<T>(p.b_hh);
    auto hpart = [&](int k) { return gh[k * H + j] + to_state(bias[k * H + j]); };
    S h;
    const auto g = gates::gru_forward<S>(to_state(x[j]), to_state(x[H + j]),
                                         to_state(x[2 * H + j]), hpart(0), hpart(1), hpart(2),
                                         h_cur, &h);
    out<S>(p.h_next)[b * H + j] = h;
    out<T>(p.out)[row * H + j] = stored<T>(h);
    if (gates_row) {
      gates_row[j] = g.r;
      gates_row[H + j] = g.z;
      gates_row[2 * H + j] = g.n;
      gates_row[3 * H + j] = g.hn;
    }
    if (p.hprev) out<S>(p.hprev)[row * H + j] = h_cur;
  }
}

template <typename T>
__global__ void gru_backward_kernel(GruBackwardStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    S* gs = out<S>(p.grad_step) + b * 3 * H;
    T* gx = out<T>(p.grad_x) + row * 3 * H;
    T* ghp = out<T>(p.grad_hproj) + row * 3 * H;
    if (!p.at.sched.active(s, b)) {
      for (int k = 0; k < 3; ++k) {
        gs[k * H + j] = S(0);
        gx[k * H + j] = ghp[k * H + j] = zero<T>();
      }
      out<S>(p.dh_prev)[b * H + j] = in<S>(p.dh)[b * H + j];
      continue;
    }
    const S* ws = in<S>(p.gates) + row * 4 * H;
    const gates::GruGates<S> g{ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j]};
    const S grad_h = to_state(in<T>(p.grad_out)[row * H + j]) + in<S>(p.dh)[b * H + j];
    const auto d = gates::gru_backward<S>(g, in<S>(p.hprev)[row * H + j], grad_h);
    gx[j] = stored<T>(d.r);
    gx[H + j] = stored<T>(d.z);
    gx[2 * H + j] = stored<T>(d.n);
    gs[j] = d.r;
    gs[H + j] = d.z;
    gs[2 * H + j] = d.hn;
    ghp[j] = stored<T>(d.r);
    ghp[H + j] = stored<T>(d.z);
    ghp[2 * H + j] = stored<T>(d.hn);
    out<S>(p.dh_prev)[b * H + j] = d.h_prev;
  }
}

// ------------------------------------------------------------------------------------ LSTM

template <typename T>
__global__ void lstm_forward_kernel(LstmForwardStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, P = p.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const S c_cur = in<S>(p.c_cur)[b * H + j];
    // h rows are P wide (P <= H): threads j < P handle them.
    const bool h_lane = j < P;
    if (!p.at.sched.active(s, b)) {
      out<S>(p.c_next)[b * H + j] = c_cur;
      if (h_lane) {
        if (!p.proj) out<S>(p.h_next)[b * P + j] = in<S>(p.h_cur)[b * P + j];
        out<T>(p.out)[row * P + j] = zero<T>();
      }
      if (p.gates) {
        for (int k = 0; k < 4; ++k) out<S>(p.gates)[row * 4 * H + k * H + j] = S(0);
        out<S>(p.cells)[row * H + j] = S(0);
        out<S>(p.prev_cells)[row * H + j] = S(0);
        if (h_lane) out<S>(p.hprev)[row * P + j] = S(0);
      }
      continue;
    }
    const T* x = in<T>(p.x) + row * 4 * H;
    const S* gh = in<S>(p.gh) + b * 4 * H;
    auto pre = [&](int k) { return to_state(x[k * H + j]) + gh[k * H + j]; };
    S c_new, h_new;
    const auto a = gates::lstm_forward<S>(pre(0), pre(1), pre(2), pre(3), c_cur, &c_new, &h_new);
    out<S>(p.c_next)[b * H + j] = c_new;
    if (p.proj) {
      out<S>(p.unprojected)[b * H + j] = h_new;
    } else {
      out<S>(p.h_next)[b * P + j] = h_new;
      out<T>(p.out)[row * P + j] = stored<T>(h_new);
    }
    if (p.gates) {
      S* ws = out<S>(p.gates) + row * 4 * H;
      ws[j] = a.i;
      ws[H + j] = a.f;
      ws[2 * H + j] = a.g;
      ws[3 * H + j] = a.o;
      out<S>(p.cells)[row * H + j] = c_new;
      out<S>(p.prev_cells)[row * H + j] = c_cur;
      if (h_lane) out<S>(p.hprev)[row * P + j] = in<S>(p.h_cur)[b * P + j];
    }
  }
}

template <typename T>
__global__ void lstm_projection_kernel(LstmProjectionStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, P = p.P, s = p.at.s;
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
__global__ void lstm_backward_projection_kernel(LstmBackwardProjectionStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, P = p.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, P, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const S d = p.at.sched.active(s, b)
                    ? to_state(in<T>(p.grad_out)[row * P + j]) + in<S>(p.dh)[b * P + j]
                    : S(0);
    out<S>(p.dh_step)[b * P + j] = d;
    out<S>(p.dh_all)[row * P + j] = d;
  }
}

template <typename T>
__global__ void lstm_backward_kernel(LstmBackwardStep p) {
  using S = typename State<T>::type;
  const int64_t B = p.at.B, H = p.at.H, P = p.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const bool h_lane = j < P;
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    S* gs = out<S>(p.grad_step) + b * 4 * H;
    T* gx = out<T>(p.grad_x) + row * 4 * H;
    if (!p.at.sched.active(s, b)) {
      for (int k = 0; k < 4; ++k) {
        gs[k * H + j] = S(0);
        gx[k * H + j] = zero<T>();
      }
      if (p.proj) out<S>(p.unprojected_all)[row * H + j] = S(0);
      if (h_lane) out<S>(p.dh_prev)[b * P + j] = in<S>(p.dh)[b * P + j];
      continue;
    }
    const S* ws = in<S>(p.gates) + row * 4 * H;
    const gates::LstmGates<S> a{ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j]};
    // Without proj, d(o*tanh(c)) is d output_t + carried d h_t (P == H).
    const S grad_h = p.proj ? in<S>(p.grad_unproj)[b * H + j]
                            : to_state(in<T>(p.grad_out)[row * P + j]) + in<S>(p.dh)[b * P + j];
    S* dc = out<S>(p.dc) + b * H + j;
    const auto d = gates::lstm_backward<S>(a, in<S>(p.cells)[row * H + j],
                                           in<S>(p.prev_cells)[row * H + j], grad_h, *dc);
    gs[j] = d.i;
    gs[H + j] = d.f;
    gs[2 * H + j] = d.g;
    gs[3 * H + j] = d.o;
    gx[j] = stored<T>(d.i);
    gx[H + j] = stored<T>(d.f);
    gx[2 * H + j] = stored<T>(d.g);
    gx[3 * H + j] = stored<T>(d.o);
    *dc = d.c_prev;
    if (p.proj) out<S>(p.unprojected_all)[row * H + j] = d.h_unprojected;
    if (h_lane) out<S>(p.dh_prev)[b * P + j] = S(0);
  }
}

// ------------------------------------------------------------------------------- launching

template <typename Params>
unsigned blocks_for(const Params& p, int64_t width) {
  const int64_t n = p.at.B * width;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

// Launches kernel<T> for the runtime storage dtype over B rows x width elements.
template <template <typename> class Kernel, typename Params>
cudaError_t launch_step(const Params& p, int64_t width, Dtype dtype, cudaStream_t stream) {
  if (p.at.B == 0 || width == 0) return cudaSuccess;
  const dim3 grid(blocks_for(p, width)), block(kThreads);
  switch (dtype) {
    case Dtype::Float: return launch(Kernel<float>::fn, grid, block, 0, stream, p);
    case Dtype::Double: return launch(Kernel<double>::fn, grid, block, 0, stream, p);
    case Dtype::Half: return launch(Kernel<__half>::fn, grid, block, 0, stream, p);
    case Dtype::BFloat16: return launch(Kernel<__nv_bfloat16>::fn, grid, block, 0, stream, p);
  }
  return cudaErrorInvalidValue;
}

// kernel<T> as a class template, so launch_step can take the kernel family as an argument.
#define FUSEDRNN_KERNEL_FAMILY(family, kernel) \
  template <typename T> struct family { static constexpr auto fn = &kernel<T>; }
FUSEDRNN_KERNEL_FAMILY(RnnForward, rnn_forward_kernel);
FUSEDRNN_KERNEL_FAMILY(RnnBackward, rnn_backward_kernel);
FUSEDRNN_KERNEL_FAMILY(GruForward, gru_forward_kernel);
FUSEDRNN_KERNEL_FAMILY(GruBackward, gru_backward_kernel);
FUSEDRNN_KERNEL_FAMILY(LstmForward, lstm_forward_kernel);
FUSEDRNN_KERNEL_FAMILY(LstmProjection, lstm_projection_kernel);
FUSEDRNN_KERNEL_FAMILY(LstmBackwardProjection, lstm_backward_projection_kernel);
FUSEDRNN_KERNEL_FAMILY(LstmBackward, lstm_backward_kernel);
#undef FUSEDRNN_KERNEL_FAMILY

}  // namespace

cudaError_t rnn_forward_step(const RnnForwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<RnnForward>(p, p.at.H, dtype, stream);
}
cudaError_t rnn_backward_step(const RnnBackwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<RnnBackward>(p, p.at.H, dtype, stream);
}
cudaError_t gru_forward_step(const GruForwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<GruForward>(p, p.at.H, dtype, stream);
}
cudaError_t gru_backward_step(const GruBackwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<GruBackward>(p, p.at.H, dtype, stream);
}
cudaError_t lstm_forward_step(const LstmForwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<LstmForward>(p, p.at.H, dtype, stream);
}
cudaError_t lstm_projection_step(const LstmProjectionStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<LstmProjection>(p, p.P, dtype, stream);
}
cudaError_t lstm_backward_projection_step(const LstmBackwardProjectionStep& p, Dtype dtype,
                                          cudaStream_t stream) {
  return launch_step<LstmBackwardProjection>(p, p.P, dtype, stream);
}
cudaError_t lstm_backward_step(const LstmBackwardStep& p, Dtype dtype, cudaStream_t stream) {
  return launch_step<LstmBackward>(p, p.at.H, dtype, stream);
}

}  // namespace cuda
}  // namespace fusedrnn
