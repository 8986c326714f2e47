// Per-step fused pointwise kernels (see step_kernels.h). One thread per (batch row, hidden unit),
// grid-stride; each mirrors the CPU row pass of csrc/cpu/recurrent_cpu.cpp element by element,
// with the gate equations from gate_math.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../gate_math.h"
#include "step_kernels.h"

namespace fusedrnn {
namespace cuda {
namespace {

// Storage type T -> the type the gate math runs in.
template <typename T> struct Accumulate { using type = T; };
template <> struct Accumulate<__half> { using type = float; };
template <> struct Accumulate<__nv_bfloat16> { using type = float; };

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return T(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}

// T(0) does not compile for __half under torch's -D__CUDA_NO_HALF_CONVERSIONS__.
template <typename T> __device__ __forceinline__ T zero() {
  return from_acc<T>(typename Accumulate<T>::type(0));
}

// Typed views of the void* buffers of a step's arguments.
template <typename T> __device__ __forceinline__ const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T> __device__ __forceinline__ T* out(void* p) { return static_cast<T*>(p); }

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

// Grid-stride over the n = rows * width elements of a step: fn(b, j).
#define FUSEDRNN_FOR_EACH_ELEMENT(rows, width, b, j)                                          \
  for (int64_t idx_ = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, n_ = (rows) * (width); \
       idx_ < n_; idx_ += int64_t(gridDim.x) * blockDim.x)                                     \
    if (const int64_t b = idx_ / (width), j = idx_ % (width); true)

// ------------------------------------------------------------------------------------ RNN

template <typename T>
__global__ void rnn_forward_kernel(RnnForwardStep p) {
  using A = typename Accumulate<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const T h_cur = in<T>(p.h_cur)[b * H + j];
    if (!p.at.sched.active(s, b)) {
      out<T>(p.h_next)[b * H + j] = h_cur;
      out<T>(p.out)[row * H + j] = zero<T>();
      if (p.hprev) out<T>(p.hprev)[row * H + j] = zero<T>();
      continue;
    }
    const A pre = to_acc(in<T>(p.x)[row * H + j]) + to_acc(in<T>(p.gh)[b * H + j]);
    const T h = from_acc<T>(gates::rnn_activation<A>(pre, p.relu));
    out<T>(p.h_next)[b * H + j] = h;
    out<T>(p.out)[row * H + j] = h;
    if (p.hprev) out<T>(p.hprev)[row * H + j] = h_cur;
  }
}

template <typename T>
__global__ void rnn_backward_kernel(RnnBackwardStep p) {
  using A = typename Accumulate<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    if (!p.at.sched.active(s, b)) {
      out<T>(p.grad_pre)[b * H + j] = zero<T>();
      out<T>(p.dh_prev)[b * H + j] = in<T>(p.dh)[b * H + j];
      continue;
    }
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const A grad_h = to_acc(in<T>(p.grad_out)[row * H + j]) + to_acc(in<T>(p.dh)[b * H + j]);
    const T g = from_acc<T>(
        gates::rnn_activation_grad<A>(to_acc(in<T>(p.out)[row * H + j]), grad_h, p.relu));
    out<T>(p.grad_pre)[b * H + j] = g;
    out<T>(p.grad_x)[row * H + j] = g;
    out<T>(p.dh_prev)[b * H + j] = zero<T>();
  }
}

// ------------------------------------------------------------------------------------ GRU

template <typename T>
__global__ void gru_forward_kernel(GruForwardStep p) {
  using A = typename Accumulate<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const T h_cur = in<T>(p.h_cur)[b * H + j];
    T* gates_row = p.gates ? out<T>(p.gates) + row * 4 * H : nullptr;
    if (!p.at.sched.active(s, b)) {
      out<T>(p.h_next)[b * H + j] = h_cur;
      out<T>(p.out)[row * H + j] = zero<T>();
      if (gates_row) {
        for (int k = 0; k < 4; ++k) gates_row[k * H + j] = zero<T>();
      }
      if (p.hprev) out<T>(p.hprev)[row * H + j] = zero<T>();
      continue;
    }
    const T* x = in<T>(p.x) + row * 3 * H;
    const T* gh = in<T>(p.gh) + b * 3 * H;
    const T* bias = in<T>(p.b_hh);
    auto hpart = [&](int k) { return to_acc(gh[k * H + j]) + to_acc(bias[k * H + j]); };
    A h;
    const auto g = gates::gru_forward<A>(to_acc(x[j]), to_acc(x[H + j]), to_acc(x[2 * H + j]),
                                         hpart(0), hpart(1), hpart(2), to_acc(h_cur), &h);
    out<T>(p.h_next)[b * H + j] = from_acc<T>(h);
    out<T>(p.out)[row * H + j] = from_acc<T>(h);
    if (gates_row) {
      gates_row[j] = from_acc<T>(g.r);
      gates_row[H + j] = from_acc<T>(g.z);
      gates_row[2 * H + j] = from_acc<T>(g.n);
      gates_row[3 * H + j] = from_acc<T>(g.hn);
    }
    if (p.hprev) out<T>(p.hprev)[row * H + j] = h_cur;
  }
}

template <typename T>
__global__ void gru_backward_kernel(GruBackwardStep p) {
  using A = typename Accumulate<T>::type;
  const int64_t B = p.at.B, H = p.at.H, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    T* gs = out<T>(p.grad_step) + b * 3 * H;
    if (!p.at.sched.active(s, b)) {
      for (int k = 0; k < 3; ++k) gs[k * H + j] = zero<T>();
      out<T>(p.dh_prev)[b * H + j] = in<T>(p.dh)[b * H + j];
      continue;
    }
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const T* ws = in<T>(p.gates) + row * 4 * H;
    const gates::GruGates<A> g{to_acc(ws[j]), to_acc(ws[H + j]), to_acc(ws[2 * H + j]),
                               to_acc(ws[3 * H + j])};
    const A grad_h = to_acc(in<T>(p.grad_out)[row * H + j]) + to_acc(in<T>(p.dh)[b * H + j]);
    const auto d = gates::gru_backward<A>(g, to_acc(in<T>(p.hprev)[row * H + j]), grad_h);
    T* gx = out<T>(p.grad_x) + row * 3 * H;
    T* ghp = out<T>(p.grad_hproj) + row * 3 * H;
    gx[j] = from_acc<T>(d.r);
    gx[H + j] = from_acc<T>(d.z);
    gx[2 * H + j] = from_acc<T>(d.n);
    ghp[j] = gs[j] = from_acc<T>(d.r);
    ghp[H + j] = gs[H + j] = from_acc<T>(d.z);
    ghp[2 * H + j] = gs[2 * H + j] = from_acc<T>(d.hn);
    out<T>(p.dh_prev)[b * H + j] = from_acc<T>(d.h_prev);
  }
}

// ------------------------------------------------------------------------------------ LSTM

template <typename T>
__global__ void lstm_forward_kernel(LstmForwardStep p) {
  using A = typename Accumulate<T>::type;
  const int64_t B = p.at.B, H = p.at.H, P = p.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const T c_cur = in<T>(p.c_cur)[b * H + j];
    // h rows are P wide (P <= H): threads j < P handle them.
    const bool h_lane = j < P;
    if (!p.at.sched.active(s, b)) {
      out<T>(p.c_next)[b * H + j] = c_cur;
      if (h_lane) {
        if (!p.proj) out<T>(p.h_next)[b * P + j] = in<T>(p.h_cur)[b * P + j];
        out<T>(p.out)[row * P + j] = zero<T>();
      }
      if (p.gates) {
        for (int k = 0; k < 4; ++k) out<T>(p.gates)[row * 4 * H + k * H + j] = zero<T>();
        out<T>(p.cells)[row * H + j] = zero<T>();
        out<T>(p.prev_cells)[row * H + j] = zero<T>();
        if (h_lane) out<T>(p.hprev)[row * P + j] = zero<T>();
      }
      continue;
    }
    const T* x = in<T>(p.x) + row * 4 * H;
    const T* gh = in<T>(p.gh) + b * 4 * H;
    auto pre = [&](int k) { return to_acc(x[k * H + j]) + to_acc(gh[k * H + j]); };
    A c_new, h_new;
    const auto a = gates::lstm_forward<A>(pre(0), pre(1), pre(2), pre(3), to_acc(c_cur), &c_new,
                                          &h_new);
    out<T>(p.c_next)[b * H + j] = from_acc<T>(c_new);
    if (p.proj) {
      out<T>(p.unprojected)[b * H + j] = from_acc<T>(h_new);
    } else {
      out<T>(p.h_next)[b * P + j] = from_acc<T>(h_new);
      out<T>(p.out)[row * P + j] = from_acc<T>(h_new);
    }
    if (p.gates) {
      T* ws = out<T>(p.gates) + row * 4 * H;
      ws[j] = from_acc<T>(a.i);
      ws[H + j] = from_acc<T>(a.f);
      ws[2 * H + j] = from_acc<T>(a.g);
      ws[3 * H + j] = from_acc<T>(a.o);
      out<T>(p.cells)[row * H + j] = from_acc<T>(c_new);
      out<T>(p.prev_cells)[row * H + j] = c_cur;
      if (h_lane) out<T>(p.hprev)[row * P + j] = in<T>(p.h_cur)[b * P + j];
    }
  }
}

template <typename T>
__global__ void lstm_projection_kernel(LstmProjectionStep p) {
  const int64_t B = p.at.B, P = p.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, P, b, j) {
    if (p.at.sched.active(s, b)) {
      out<T>(p.out)[(p.at.sched.slot(s, b) * B + b) * P + j] = out<T>(p.h_next)[b * P + j];
    } else {
      out<T>(p.h_next)[b * P + j] = in<T>(p.h_cur)[b * P + j];
    }
  }
}

template <typename T>
__global__ void lstm_backward_projection_kernel(LstmBackwardProjectionStep p) {
  const int64_t B = p.at.B, P = p.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, P, b, j) {
    if (!p.at.sched.active(s, b)) {
      out<T>(p.dh_step)[b * P + j] = zero<T>();
      continue;
    }
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const T d = from_acc<T>(to_acc(in<T>(p.grad_out)[row * P + j]) +
                            to_acc(in<T>(p.dh)[b * P + j]));
    out<T>(p.dh_step)[b * P + j] = d;
    out<T>(p.dh_all)[row * P + j] = d;
  }
}

template <typename T>
__global__ void lstm_backward_kernel(LstmBackwardStep p) {
  using A = typename Accumulate<T>::type;
  const int64_t B = p.at.B, H = p.at.H, P = p.P, s = p.at.s;
  FUSEDRNN_FOR_EACH_ELEMENT(B, H, b, j) {
    const bool h_lane = j < P;
    T* gs = out<T>(p.grad_step) + b * 4 * H;
    if (!p.at.sched.active(s, b)) {
      for (int k = 0; k < 4; ++k) gs[k * H + j] = zero<T>();
      if (h_lane) out<T>(p.dh_prev)[b * P + j] = in<T>(p.dh)[b * P + j];
      continue;
    }
    const int64_t row = p.at.sched.slot(s, b) * B + b;
    const T* ws = in<T>(p.gates) + row * 4 * H;
    const gates::LstmGates<A> a{to_acc(ws[j]), to_acc(ws[H + j]), to_acc(ws[2 * H + j]),
                                to_acc(ws[3 * H + j])};
    // Without proj, d(o*tanh(c)) is d output_t + carried d h_t (P == H).
    const A grad_h = p.proj ? to_acc(in<T>(p.grad_unproj)[b * H + j])
                            : to_acc(in<T>(p.grad_out)[row * P + j]) +
                                  to_acc(in<T>(p.dh)[b * P + j]);
    T* dc = out<T>(p.dc) + b * H + j;
    const auto d = gates::lstm_backward<A>(a, to_acc(in<T>(p.cells)[row * H + j]),
                                           to_acc(in<T>(p.prev_cells)[row * H + j]), grad_h,
                                           to_acc(*dc));
    T* gx = out<T>(p.grad_x) + row * 4 * H;
    gx[j] = gs[j] = from_acc<T>(d.i);
    gx[H + j] = gs[H + j] = from_acc<T>(d.f);
    gx[2 * H + j] = gs[2 * H + j] = from_acc<T>(d.g);
    gx[3 * H + j] = gs[3 * H + j] = from_acc<T>(d.o);
    *dc = from_acc<T>(d.c_prev);
    if (p.proj) out<T>(p.unprojected_all)[row * H + j] = from_acc<T>(d.h_unprojected);
    if (h_lane) out<T>(p.dh_prev)[b * P + j] = zero<T>();
  }
}

// ------------------------------------------------------------------------------- launching

template <typename Params>
unsigned blocks_for(const Params& p, int64_t width) {
  const int64_t n = p.at.B * width;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

// Launches kernel<T> for the runtime dtype over rows x width elements.
#define FUSEDRNN_LAUNCH(kernel, params, width, dtype, stream)                                   \
  do {                                                                                          \
    if ((params).at.B == 0 || (width) == 0) return cudaSuccess;                                 \
    const unsigned blocks = blocks_for(params, width);                                          \
    switch (dtype) {                                                                            \
      case Dtype::Float: kernel<float><<<blocks, kThreads, 0, stream>>>(params); break;         \
      case Dtype::Double: kernel<double><<<blocks, kThreads, 0, stream>>>(params); break;       \
      case Dtype::Half: kernel<__half><<<blocks, kThreads, 0, stream>>>(params); break;         \
      case Dtype::BFloat16: kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(params); break; \
    }                                                                                           \
    return cudaGetLastError();                                                                  \
  } while (0)

}  // namespace

cudaError_t rnn_forward_step(const RnnForwardStep& p, Dtype dtype, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(rnn_forward_kernel, p, p.at.H, dtype, stream);
}
cudaError_t rnn_backward_step(const RnnBackwardStep& p, Dtype dtype, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(rnn_backward_kernel, p, p.at.H, dtype, stream);
}
cudaError_t gru_forward_step(const GruForwardStep& p, Dtype dtype, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_forward_kernel, p, p.at.H, dtype, stream);
}
cudaError_t gru_backward_step(const GruBackwardStep& p, Dtype dtype, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_backward_kernel, p, p.at.H, dtype, stream);
}
cudaError_t lstm_forward_step(const LstmForwardStep& p, Dtype dtype, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(lstm_forward_kernel, p, p.at.H, dtype, stream);
}
cudaError_t lstm_projection_step(const LstmProjectionStep& p, Dtype dtype, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(lstm_projection_kernel, p, p.P, dtype, stream);
}
cudaError_t lstm_backward_projection_step(const LstmBackwardProjectionStep& p, Dtype dtype,
                                          cudaStream_t stream) {
  FUSEDRNN_LAUNCH(lstm_backward_projection_kernel, p, p.P, dtype, stream);
}
cudaError_t lstm_backward_step(const LstmBackwardStep& p, Dtype dtype, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(lstm_backward_kernel, p, p.at.H, dtype, stream);
}

}  // namespace cuda
}  // namespace fusedrnn
