// The fused pointwise kernel of one time step, per cell, forward and backward: the CUDA side of
// the per-step "GEMM + ONE fused pass" design (the time loops and their GEMMs are in
// time_loops.h). Plain C++: no torch headers, so the .cu that implements this compiles in
// seconds, can be compile-checked with nvcc alone, and runs under the SIMT emulation.
//
// Every buffer is contiguous and row-major; shapes are given next to each pointer with the names
// of csrc/ops.cpp (T steps, B batch, H hidden, P = proj_size or H). Two element types:
//   storage: the op's dtype (inputs, outputs and the gradients returned);
//   [state]: what is carried from step to step (h, c, d h, d c, the recurrent products and the
//       GEMM operands that feed them) and the workspaces saved for backward (the activated gates
//       whose products over many steps make d c and d h): float for fp16/bf16 storage, else the
//       storage dtype. So half types round only what the caller sees, never the recurrence, as
//       the CPU path (which computes half types in float) does. The gate math runs in it too.
// Each launcher enqueues on `stream` and returns cudaGetLastError().
#pragma once

#include <cstdint>

#include "cuda_api.h"

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
  const void* gh;    // [state] (B, H)     W_hh h_{t-1}
  const void* h_cur; // [state] (B, H)
  void* h_next;      // [state] (B, H)
  void* out;         // (T, B, H)
  void* activations; // [state] (T, B, H) workspace h_t, or nullptr
  void* hprev;       // [state] (T, B, H) workspace, or nullptr
};

struct RnnBackwardStep {
  StepPosition at;
  bool relu;
  const void* activations;  // [state] (T, B, H) the forward's h_t
  const void* grad_out;  // (T, B, H)
  const void* dh;        // [state] (B, H)  d h_t carried from step t+1
  void* dh_prev;         // [state] (B, H)  zeroed for active rows (the GEMM adds W_hh^T d pre)
  void* grad_pre;        // [state] (B, H)  this step's d pre-activation (GEMM operand)
  void* grad_x;          // (T, B, H)
};

struct GruForwardStep {
  StepPosition at;
  const void* x;      // (T, B, 3H)  W_ih x + b_ih
  const void* gh;     // [state] (B, 3H)     W_hh h_{t-1}
  const void* b_hh;   // (3H)
  const void* h_cur;  // [state] (B, H)
  void* h_next;       // [state] (B, H)
  void* out;          // (T, B, H)
  void* gates;        // [state] (T, B, 4H) workspace r, z, n, W_hn h + b_hn; or nullptr
  void* hprev;        // [state] (T, B, H) workspace, or nullptr
};

struct GruBackwardStep {
  StepPosition at;
  const void* gates;     // [state] (T, B, 4H)
  const void* hprev;     // [state] (T, B, H)
  const void* grad_out;  // (T, B, H)
  const void* dh;        // [state] (B, H)
  void* dh_prev;         // [state] (B, H)
  void* grad_x;          // (T, B, 3H)  d(W_ih x + b_ih)
  void* grad_hproj;      // (T, B, 3H)  d(W_hh h + b_hh), all steps (weight / bias grads)
  void* grad_step;       // [state] (B, 3H)     this step's d(W_hh h + b_hh) (GEMM operand)
};

struct LstmForwardStep {
  StepPosition at;
  int64_t P;
  bool proj;
  const void* x;      // (T, B, 4H)  W_ih x + b_ih + b_hh
  const void* gh;     // [state] (B, 4H)     W_hh h_{t-1}
  const void* h_cur;  // [state] (B, P)
  void* h_next;       // [state] (B, P)      written here without proj (else by the projection)
  const void* c_cur;  // [state] (B, H)
  void* c_next;       // [state] (B, H)
  void* out;          // (T, B, P)   written here without proj
  void* unprojected;  // [state] (B, H)      o * tanh(c') with proj, else nullptr
  void* gates;        // [state] (T, B, 4H) workspace i, f, g, o; or nullptr (with the three below)
  void* cells;        // [state] (T, B, H)
  void* prev_cells;   // [state] (T, B, H)
  void* hprev;        // [state] (T, B, P)
};

// After h_next = unprojected · W_hr^T: outputs of active rows, frozen h of inactive rows.
struct LstmProjectionStep {
  StepPosition at;  // at.H is unused; widths are P
  int64_t P;
  const void* h_cur;  // [state] (B, P)
  void* h_next;       // [state] (B, P)
  void* out;          // (T, B, P)
};

// With proj, before the W_hr GEMM: d h_t = d output_t + carried d h (0 for inactive rows).
struct LstmBackwardProjectionStep {
  StepPosition at;
  int64_t P;
  const void* grad_out;  // (T, B, P)
  const void* dh;        // [state] (B, P)
  void* dh_step;         // [state] (B, P)    GEMM operand
  void* dh_all;          // [state] (T, B, P) every step's d h_t (for d W_hr)
};

struct LstmBackwardStep {
  StepPosition at;
  int64_t P;
  bool proj;
  const void* gates;       // [state] (T, B, 4H)
  const void* cells;       // [state] (T, B, H)
  const void* prev_cells;  // [state] (T, B, H)
  const void* grad_out;    // (T, B, P)  used without proj
  const void* dh;          // [state] (B, P)     carried d h_t
  const void* grad_unproj; // [state] (B, H)     d(o*tanh(c')) = d h_t · W_hr, with proj
  void* dc;                // [state] (B, H)     d c_t in, d c_{t-1} out
  void* grad_step;         // [state] (B, 4H)    GEMM operand
  void* grad_x;            // (T, B, 4H)
  void* unprojected_all;   // [state] (T, B, H)  o*tanh(c') per step for d W_hr, with proj
  void* dh_prev;           // [state] (B, P)
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
