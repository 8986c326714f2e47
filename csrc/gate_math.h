// Gate equations of every cell, forward and derivative: the one definition shared by the CPU
// kernels and the CUDA kernels. Pure scalar functions with no torch dependency, so a
// .cu file can include this without pulling in torch headers.
//
// Conventions (torch 2.x, matching torch.nn):
//   RNN : h' = act(x_t + W_hh h)                         act = tanh | relu
//   GRU : gates r,z,n;  n = tanh(x_n + r * (W_hn h + b_hn)),  h' = (1-z)*n + z*h
//   LSTM: gates i,f,g,o; c' = f*c + i*g,  h' = o*tanh(c')   (then h' = W_hr h' with proj_size)
// "x_*" is the input side (W_ih x + b_ih, plus b_hh for RNN/LSTM), "h_*" the recurrent
// product (W_hh h, plus b_hh for GRU).
#pragma once

#include <cmath>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
// always_inline: the CPU row loops must inline these to auto-vectorize.
#define FUSEDRNN_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fusedrnn {
namespace gates {

// ---------------------------------------------------------------- primitives
// double: the C library. float on the device (and in its CPU emulation): CUDA's expf / tanhf.
// float on the host: branch-free polynomial / rational forms (errors below, NaN propagates) that
// the compiler vectorizes; libm calls would not vectorize and cost ~10 ns
// each, more than a whole small recurrent step's arithmetic.
FUSEDRNN_HOST_DEVICE double exp_(double x) { return std::exp(x); }
FUSEDRNN_HOST_DEVICE double tanh_(double x) { return std::tanh(x); }

FUSEDRNN_HOST_DEVICE float exp_(float x) {
#if defined(__CUDA_ARCH__) || defined(FUSEDRNN_SIMT_EMULATION)
  return ::expf(x);
#else
  // Cephes-style: max relative error ~1.5e-7.
  const bool overflow = x > 88.72283935546875f;  // e^x > FLT_MAX: +inf, as expf gives
  x = x < -87.3f ? -87.3f : x;  // NaN compares false and passes through
  x = x > 88.7f ? 88.7f : x;
  // x = n*ln2 + r, |r| <= ln2/2; 1.5*2^23 rounds n to nearest in float arithmetic.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  const float p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
                     4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) +
                  r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  // So sigmoid(x) = 1 / (1 + e^-x) is exactly 0 below x = -88.7, as torch's sigmoid.
  return overflow ? __builtin_inff() : p * scale;
#endif
}

FUSEDRNN_HOST_DEVICE float tanh_(float x) {
#if defined(__CUDA_ARCH__) || defined(FUSEDRNN_SIMT_EMULATION)
  return ::tanhf(x);
#else
  // tanh(x) = x P(x^2) / Q(x^2) on [-9, 9], clamped outside, where tanh rounds to +-1 in float.
  // Coefficients: our own weighted least-squares fit driven toward minimax relative error
  // (6.7e-9 in exact arithmetic; evaluated in float: 2.7e-7 max abs error, 2.4e-7 from torch's
  // tanh). One division and ten FMAs: 1.6x faster than 1 - 2/(e^{2x}+1) with a small-|x|
  // polynomial (0.64 vs 1.0 ns per element, AVX2, with the cap below), and tanh is most of the
  // gate math of an RNN step.
  const float xc = x < -9.0f ? -9.0f : (x > 9.0f ? 9.0f : x);  // NaN passes through
  const float z = xc * xc;
  const float p = (((((-8.487960868e-14f * z + 5.277672764e-11f) * z - 2.022467346e-08f) * z +
                     1.115417314e-05f) * z + 3.103943188e-03f) * z + 1.308399839e-01f) * z +
                  9.999999934e-01f;
  const float q = ((2.546126339e-04f * z + 2.449512635e-02f) * z + 4.641732549e-01f) * z + 1.0f;
  float r = xc * p / q;
  // Rounding can put r up to 2 ulp past +-1 near the clamp: cap it below 1 (backward uses
  // 1 - tanh^2; ~0.2 ns per element). NaN passes. Then saturation exactly where torch's float
  // tanh saturates (|x| >= 9.0108404; the correctly rounded tanh does at 9.0109205): +-1, so the
  // derivative 1 - tanh^2 is exactly 0 there and only there, as torch's is.
  constexpr float kBelowOne = 0.99999994f;  // the largest float below 1
  r = kBelowOne < r ? kBelowOne : r;
  r = -kBelowOne > r ? -kBelowOne : r;
  constexpr float kSaturated = 9.01084041595459f;
  r = x >= kSaturated ? 1.0f : r;
  return x <= -kSaturated ? -1.0f : r;
#endif
}

template <typename T>
FUSEDRNN_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// ---------------------------------------------------------------- RNN (tanh / relu)
// relu as torch's: NaN stays NaN (`pre <= 0` is false for NaN).
template <typename T>
FUSEDRNN_HOST_DEVICE T rnn_activation(T pre, bool relu) {
  return relu ? (pre <= T(0) ? T(0) : pre) : tanh_(pre);
}

// d(pre) from d(h') and the activated value h' (torch's threshold_backward: the gradient passes
// unless h' <= 0, so it passes where h' is NaN).
template <typename T>
FUSEDRNN_HOST_DEVICE T rnn_activation_grad(T h_new, T grad_h, bool relu) {
  return relu ? (h_new <= T(0) ? T(0) : grad_h) : grad_h * (T(1) - h_new * h_new);
}

// ---------------------------------------------------------------- GRU
template <typename T>
struct GruGates {
  T r, z, n, hn;  // activated reset/update/new gates; hn = W_hn h + b_hn (needed by backward)
};

template <typename T>
FUSEDRNN_HOST_DEVICE GruGates<T> gru_forward(
    T x_r, T x_z, T x_n, T h_r, T h_z, T h_n, T h_prev, T* h_new) {
  GruGates<T> g;
  g.r = sigmoid(x_r + h_r);
  g.z = sigmoid(x_z + h_z);
  g.hn = h_n;
  g.n = tanh_(x_n + g.r * h_n);
  *h_new = (T(1) - g.z) * g.n + g.z * h_prev;
  return g;
}

template <typename T>
struct GruGrads {
  T r, z, n;    // d(pre-activation) of r, z and of the input-side n term (= d x_n)
  T hn;         // d(W_hn h + b_hn) = d(pre n) * r
  T h_prev;     // direct path d h_prev = d h' * z (the W_hh path is added by a GEMM)
};

template <typename T>
FUSEDRNN_HOST_DEVICE GruGrads<T> gru_backward(const GruGates<T>& g, T h_prev, T grad_h) {
  GruGrads<T> d;
  const T dn = grad_h * (T(1) - g.z);
  const T dz = grad_h * (h_prev - g.n);
  d.n = dn * (T(1) - g.n * g.n);
  d.hn = d.n * g.r;
  const T dr = d.n * g.hn;
  d.r = dr * g.r * (T(1) - g.r);
  d.z = dz * g.z * (T(1) - g.z);
  d.h_prev = grad_h * g.z;
  return d;
}

// ---------------------------------------------------------------- LSTM
template <typename T>
struct LstmGates {
  T i, f, g, o;  // activated gates
};

template <typename T>
FUSEDRNN_HOST_DEVICE LstmGates<T> lstm_gates(T pre_i, T pre_f, T pre_g, T pre_o) {
  return {sigmoid(pre_i), sigmoid(pre_f), tanh_(pre_g), sigmoid(pre_o)};
}

// Returns the gates; writes the new cell c' and the (pre-projection) hidden o*tanh(c').
template <typename T>
FUSEDRNN_HOST_DEVICE LstmGates<T> lstm_forward(
    T pre_i, T pre_f, T pre_g, T pre_o, T c_prev, T* c_new, T* h_new) {
  const LstmGates<T> a = lstm_gates(pre_i, pre_f, pre_g, pre_o);
  const T c = a.f * c_prev + a.i * a.g;
  *c_new = c;
  *h_new = a.o * tanh_(c);
  return a;
}

template <typename T>
struct LstmGrads {
  T i, f, g, o;  // d(pre-activation) of each gate
  T c_prev;      // d c_{t-1}
  T h_unprojected;  // o*tanh(c'): recomputed here, needed for d W_hr
};

// The pre-activation grads and d c_{t-1} from d c' (every path into it) and d o (the activated
// output gate's).
template <typename T>
FUSEDRNN_HOST_DEVICE LstmGrads<T> lstm_gate_grads(const LstmGates<T>& a, T c_prev, T dc, T d_o) {
  LstmGrads<T> d;
  d.i = dc * a.g * a.i * (T(1) - a.i);
  d.f = dc * c_prev * a.f * (T(1) - a.f);
  d.g = dc * a.i * (T(1) - a.g * a.g);
  d.o = d_o * a.o * (T(1) - a.o);
  d.c_prev = dc * a.f;
  return d;
}

// grad_h: d of the unprojected hidden o*tanh(c'); grad_c: d c' arriving from step t+1.
template <typename T>
FUSEDRNN_HOST_DEVICE LstmGrads<T> lstm_backward(
    const LstmGates<T>& a, T c_new, T c_prev, T grad_h, T grad_c) {
  const T tc = tanh_(c_new);
  LstmGrads<T> d =
      lstm_gate_grads(a, c_prev, grad_c + grad_h * a.o * (T(1) - tc * tc), grad_h * tc);
  d.h_unprojected = a.o * tc;
  return d;
}

// ---------------------------------------------------------------- layer norm (LayerNormLSTM)
// haste's LayerNormLSTM (csrc/cell_table.h): v = xproj + b + γ_hh ⊙ LN(W_hh h), the LSTM gates
// of v, c' = f c + i g, h' = o tanh(γ_c ⊙ LN(c') + β_c); LN(z) = (z - mean) / sqrt(var + eps)
// over the row. Row statistics are the loops' (they need the whole row); these are the
// per-unit parts.

// d z from d ẑ for ẑ = (z - mean) · rstd, given the row's means of d ẑ and of d ẑ ⊙ ẑ.
template <typename T>
FUSEDRNN_HOST_DEVICE T layer_norm_grad(T d_zhat, T zhat, T mean_d, T mean_d_zhat, T rstd) {
  return rstd * (d_zhat - mean_d - zhat * mean_d_zhat);
}

}  // namespace gates
}  // namespace fusedrnn
