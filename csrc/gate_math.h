// Gate equations of every cell, forward and derivative: the one definition shared by the CPU
// kernels and (later) the CUDA kernels. Pure scalar functions with no torch dependency, so a
// .cu file can include this without pulling in torch headers.
//
// Conventions (torch 2.x, matching torch.nn):
//   RNN : h' = act(x_t + W_hh h)                         act = tanh | relu
//   GRU : gates r,z,n;  n = tanh(x_n + r * (W_hn h + b_hn)),  h' = (1-z)*n + z*h
//   LSTM: gates i,f,g,o; c' = f*c + i*g,  h' = o*tanh(c')   (then h' = W_hr h' with proj_size)
// "x_*" is the input projection (W_ih x + b_ih, plus b_hh for RNN/LSTM), "h_*" the recurrent
// product (W_hh h, plus b_hh for GRU).
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDRNN_HOST_DEVICE inline
#endif

namespace fusedrnn {
namespace gates {

template <typename T>
FUSEDRNN_HOST_DEVICE T sigmoid(T x) {
  using std::exp;
  return T(1) / (T(1) + exp(-x));
}

template <typename T>
FUSEDRNN_HOST_DEVICE T tanh_(T x) {
  using std::tanh;
  return tanh(x);
}

// ---------------------------------------------------------------- RNN (tanh / relu)
template <typename T>
FUSEDRNN_HOST_DEVICE T rnn_activation(T pre, bool relu) {
  return relu ? (pre > T(0) ? pre : T(0)) : tanh_(pre);
}

// d(pre) from d(h') and the activated value h' (torch: relu passes grad where h' > 0).
template <typename T>
FUSEDRNN_HOST_DEVICE T rnn_activation_grad(T h_new, T grad_h, bool relu) {
  return relu ? (h_new > T(0) ? grad_h : T(0)) : grad_h * (T(1) - h_new * h_new);
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

// Returns the gates; writes the new cell c' and the (pre-projection) hidden o*tanh(c').
template <typename T>
FUSEDRNN_HOST_DEVICE LstmGates<T> lstm_forward(
    T pre_i, T pre_f, T pre_g, T pre_o, T c_prev, T* c_new, T* h_new) {
  LstmGates<T> a;
  a.i = sigmoid(pre_i);
  a.f = sigmoid(pre_f);
  a.g = tanh_(pre_g);
  a.o = sigmoid(pre_o);
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

// grad_h: d of the unprojected hidden o*tanh(c'); grad_c: d c' arriving from step t+1.
template <typename T>
FUSEDRNN_HOST_DEVICE LstmGrads<T> lstm_backward(
    const LstmGates<T>& a, T c_new, T c_prev, T grad_h, T grad_c) {
  LstmGrads<T> d;
  const T tc = tanh_(c_new);
  d.h_unprojected = a.o * tc;
  const T dc = grad_c + grad_h * a.o * (T(1) - tc * tc);
  const T di = dc * a.g;
  const T df = dc * c_prev;
  const T dg = dc * a.i;
  const T dout = grad_h * tc;
  d.i = di * a.i * (T(1) - a.i);
  d.f = df * a.f * (T(1) - a.f);
  d.g = dg * (T(1) - a.g * a.g);
  d.o = dout * a.o * (T(1) - a.o);
  d.c_prev = dc * a.f;
  return d;
}

}  // namespace gates
}  // namespace fusedrnn
