// The fused pointwise kernel of one time step, per cell, forward and backward: the CUDA side of
// the per-step "GEMM + ONE fused pass" design (the GEMMs run in recurrent_cuda.cpp on torch's
// cuBLAS handle). Plain C++: no torch headers, so the .cu that implements this compiles in
// seconds and can be compile-checked with nvcc alone.
//
// Every tensor is a contiguous row-major buffer of the op's dtype; shapes are given next to each
// pointer with the names of csrc/ops.cpp (T steps, B batch, H hidden, P = proj_size or H).
// Half types compute in float (the gate math runs in the accumulate type).
// Each launcher enqueues on `stream` and returns cudaGetLastError().
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../schedule.h"

namespace fusedrnn {
namespace cuda {

enum class Dtype { Float, Double, Half, BFloat16 };

// Where a step is in the loop: step s of the schedule, batch B, hidden H.
struct StepPosition {
  Schedule sched;
  int64_t s, B, H;
};

struct RnnForwardStep {
  StepPosition at;
  bool relu;
  const void* x;     // (T, B, H)  W_ih x + b_ih + b_hh
  const void* gh;    // (B, H)     W_hh h_{t-1}
  const void* h_cur; // (B, H)
  void* h_next;      // (B, H)
  void* out;         // (T, B, H)
  void* hprev;       // (T, B, H) workspace, or nullptr
};

struct RnnBackwardStep {
  StepPosition at;
  bool relu;
  const void* out;       // (T, B, H) forward output
  const void* grad_out;  // (T, B, H)
  const void* dh;        // (B, H)  d h_t carried from step t+1
  void* dh_prev;         // (B, H)  zeroed for active rows (the GEMM adds W_hh^T d pre)
  void* grad_pre;        // (B, H)  this step's d pre-activation (GEMM operand)
  void* grad_x;          // (T, B, H)
};

struct GruForwardStep {
  StepPosition at;
  const void* x;      // (T, B, 3H)  W_ih x + b_ih
  const void* gh;     // (B, 3H)     W_hh h_{t-1}
  const void* b_hh;   // (3H)
  const void* h_cur;  // (B, H)
  void* h_next;       // (B, H)
  void* out;          // (T, B, H)
  void* gates;        // (T, B, 4H) workspace r, z, n, W_hn h + b_hn; or nullptr
  void* hprev;        // (T, B, H) workspace, or nullptr
};

struct GruBackwardStep {
  StepPosition at;
  const void* gates;     // (T, B, 4H)
  const void* hprev;     // (T, B, H)
  const void* grad_out;  // (T, B, H)
  const void* dh;        // (B, H)
  void* dh_prev;         // (B, H)
  void* grad_x;          // (T, B, 3H)  d(W_ih x + b_ih)
  void* grad_hproj;      // (T, B, 3H)  d(W_hh h + b_hh), all steps (weight / bias grads)
  void* grad_step;       // (B, 3H)     this step's d(W_hh h + b_hh) (GEMM operand)
};

struct LstmForwardStep {
  StepPosition at;
  int64_t P;
  bool proj;
  const void* x;      // (T, B, 4H)  W_ih x + b_ih + b_hh
  const void* gh;     // (B, 4H)     W_hh h_{t-1}
  const void* h_cur;  // (B, P)
  void* h_next;       // (B, P)      written here without proj (else by the projection)
  const void* c_cur;  // (B, H)
  void* c_next;       // (B, H)
  void* out;          // (T, B, P)   written here without proj
  void* unprojected;  // (B, H)      o * tanh(c') with proj, else nullptr
  void* gates;        // (T, B, 4H) workspace i, f, g, o; or nullptr (with the three below)
  void* cells;        // (T, B, H)
  void* prev_cells;   // (T, B, H)
  void* hprev;        // (T, B, P)
};

// After h_next = unprojected · W_hr^T: outputs of active rows, frozen h of inactive rows.
struct LstmProjectionStep {
  StepPosition at;  // at.H is unused; widths are P
  int64_t P;
  const void* h_cur;  // (B, P)
  void* h_next;       // (B, P)
  void* out;          // (T, B, P)
};

// With proj, before the W_hr GEMM: d h_t = d output_t + carried d h (0 for inactive rows).
struct LstmBackwardProjectionStep {
  StepPosition at;
  int64_t P;
  const void* grad_out;  // (T, B, P)
  const void* dh;        // (B, P)
  void* dh_step;         // (B, P)    GEMM operand
  void* dh_all;          // (T, B, P) every step's d h_t (for d W_hr)
};

struct LstmBackwardStep {
  StepPosition at;
  int64_t P;
  bool proj;
  const void* gates;       // (T, B, 4H)
  const void* cells;       // (T, B, H)
  const void* prev_cells;  // (T, B, H)
  const void* grad_out;    // (T, B, P)  used without proj
  const void* dh;          // (B, P)     carried d h_t
  const void* grad_unproj; // (B, H)     d(o*tanh(c')) = d h_t · W_hr, with proj
  void* dc;                // (B, H)     d c_t in, d c_{t-1} out
  void* grad_step;         // (B, 4H)    GEMM operand
  void* grad_x;            // (T, B, 4H)
  void* unprojected_all;   // (T, B, H)  o*tanh(c') per step for d W_hr, with proj
  void* dh_prev;           // (B, P)
};

cudaError_t rnn_forward_step(const RnnForwardStep& p, Dtype dtype, cudaStream_t stream);
cudaError_t rnn_backward_step(const RnnBackwardStep& p, Dtype dtype, cudaStream_t stream);
cudaError_t gru_forward_step(const GruForwardStep& p, Dtype dtype, cudaStream_t stream);
cudaError_t gru_backward_step(const GruBackwardStep& p, Dtype dtype, cudaStream_t stream);
cudaError_t lstm_forward_step(const LstmForwardStep& p, Dtype dtype, cudaStream_t stream);
cudaError_t lstm_projection_step(const LstmProjectionStep& p, Dtype dtype, cudaStream_t stream);
cudaError_t lstm_backward_projection_step(const LstmBackwardProjectionStep& p, Dtype dtype,
                                          cudaStream_t stream);
cudaError_t lstm_backward_step(const LstmBackwardStep& p, Dtype dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
