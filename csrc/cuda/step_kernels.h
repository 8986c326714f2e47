// The fused pointwise kernel of one time step, forward and backward, for any cell: the CUDA side
// of the per-step "GEMM + ONE fused pass" design (the time loops and their GEMMs are in
// time_loops.h). A normalized step (LayerNormLSTM, LayerNormGRU) is one block per batch row,
// whose threads reduce the row's statistics together; every other step one thread per element.
// The persistent loops run every step of a layer-direction in one launch, for every cell. Plain
// C++: no torch headers, so the .cu that implements this compiles in seconds, can be
// compile-checked with nvcc alone (with --expt-relaxed-constexpr, as torch's build passes it),
// and runs under the SIMT emulation.
//
// Every buffer is contiguous and row-major; shapes are given next to each pointer with the names
// of csrc/ops.cpp (T steps, B batch, H hidden, P = proj_size or H, G = the cell's gates). Two
// element types:
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

#include "../cell_table.h"
#include "../schedule.h"

namespace fusedrnn {
namespace cuda {

enum class Dtype { Float, Double, Half, BFloat16 };

// Where a step is in the loop: step s of the schedule, batch B, hidden H, h of size P (P < H
// where h is projected: threads j < P handle h).
struct StepPosition {
  Schedule sched;
  int64_t s, B, H, P;
};

// The cell's workspace (csrc/cell_table.h) as a step sees it: the parts before hprev, each
// (T, B, units[i] * H), then hprev (T, B, P); every pointer null when nothing is saved.
struct StepWorkspace {
  void* parts[kMaxWorkspaceParts];  // [state]
  int64_t units[kMaxWorkspaceParts];
  int cell_parts;
  void* hprev;  // [state]
};

struct ForwardStep {
  StepPosition at;
  bool proj;
  const void* x;            // (T, B, G*H)  xproj
  const void* gh;           // [state] (B, G*H)  W_hh h_{t-1}
  // The step parameters (csrc/ops.cpp): the bias (G*H, zeros where absent), then a normalized
  // step's own (csrc/cell_table.h: norm_param_units).
  const void* params;
  const void* h_cur;        // [state] (B, P)
  void* h_next;             // [state] (B, P)  written here unless proj (then by the projection)
  const void* c_cur;        // [state] (B, H)  cells with a cell state, else nullptr
  void* c_next;             // [state] (B, H)
  void* out;                // (T, B, P)  written here unless proj (zero rows always)
  void* unprojected;        // [state] (B, H)  h before W_hr where proj, else nullptr
  StepWorkspace ws;
};

// Where proj, after h_next = unprojected · W_hr^T: outputs of active rows, frozen h of inactive
// rows.
struct ProjectionStep {
  StepPosition at;          // widths are P
  const void* h_cur;        // [state] (B, P)
  void* h_next;             // [state] (B, P)
  void* out;                // (T, B, P)
};

// Where proj, before the W_hr GEMM: d h_t = d output_t + carried d h (0 for inactive rows).
struct BackwardProjectionStep {
  StepPosition at;
  const void* grad_out;     // (T, B, P)
  const void* dh;           // [state] (B, P)
  void* dh_step;            // [state] (B, P)     GEMM operand
  void* dh_all;             // [state] (T, B, P)  every step's d h_t (for d W_hr)
};

struct BackwardStep {
  StepPosition at;
  bool proj;
  StepWorkspace ws;         // the forward's (const here)
  const void* params;       // the step parameters as in ForwardStep; read by normalized steps
  const void* grad_out;     // (T, B, P)  used unless proj
  const void* dh;           // [state] (B, P)  carried d h_t
  const void* grad_unproj;  // [state] (B, H)  where proj: d h_t · W_hr, d(h before W_hr)
  void* dc;                 // [state] (B, H)  d c_t in, d c_{t-1} out (cells with a cell state)
  void* grad_step;          // [state] (B, G*H)  d(W_hh h_{t-1} (+ b_hh)): GEMM operand
  void* grad_x;             // (T, B, G*H)  d xproj
  void* grad_hproj;         // (T, B, G*H)  every step's grad_step where b_hh enters the step
                            //   (its own recurrent gradient), else nullptr
  void* unprojected_all;    // [state] (T, B, H)  h before W_hr per step for d W_hr, where proj
  void* dh_prev;            // [state] (B, P)  the direct part (the GEMM adds W_hh^T grad_step)
  void* grad_params;        // [state] (T, B, U*H)  each row's share of d step_params where its
                            //   step writes it (U: the cell's step_param_row_units), else
                            //   nullptr
};

// The most threads a persistent block has (its __launch_bounds__; a power of two: a normalised
// cell's blocks have exactly these, for block_sum's reductions, held in that many doubles of
// static shared memory).
constexpr int kPersistentMaxThreads = 256;

// Where a persistent block's recurrent products run on tensor cores (16-bit storage, whose
// weights are exact in it, and a dense recurrence; wmma's m32n8k16 tiles): its shared memory
// holds its `rows` rows of `depth` weights in the storage type, zero-padded to whole tiles (32
// rows, 16 deep), a batch tile (8 batch rows of `depth` state values, each row scaled by a power
// of two that brings its largest into [0.5, 1) — fp16's range is narrow — and each value then
// split into `terms` 16-bit values whose sum it is: the state is float, and one 16-bit value
// would round it), the tile's products (float) and the rows' scales (float), in that order; each
// part a multiple of 256 bytes, so every tile is aligned. terms: 2 for fp16 (11 + 11
// significant bits), 3 for bf16 (8 + 8 + 8), about float's 24.
struct TensorCoreTiles {
  static constexpr int64_t kRows = 32, kBatch = 8, kDepth = 16;
  int64_t rows_pad, depth_pad, terms;
  constexpr TensorCoreTiles(int64_t rows, int64_t depth, int64_t terms)
      : rows_pad((rows + kRows - 1) / kRows * kRows),
        depth_pad((depth + kDepth - 1) / kDepth * kDepth), terms(terms) {}
  constexpr int64_t matrix_values() const { return rows_pad * depth_pad; }
  constexpr int64_t batch_values() const { return terms * kBatch * depth_pad; }
  constexpr int64_t product_values() const { return rows_pad * kBatch; }
  static constexpr int64_t kScaleValues = 64;  // kBatch used; 256 bytes
  // (16-bit weights and batch tile, float products and scales)
  constexpr size_t bytes() const {
    return static_cast<size_t>(matrix_values() + batch_values()) * 2 +
           static_cast<size_t>(product_values() + kScaleValues) * 4;
  }
};
constexpr int64_t tensor_core_terms(Dtype storage) { return storage == Dtype::Half ? 2 : 3; }

// The architecture (10 major + minor) the persistent kernels' code for the device was built
// from (its PTX version: JIT-compiled PTX of an older one has no tensor-core path), or 0 where
// it cannot be read.
int persistent_code_arch();

// A layer-direction's whole forward loop in one cooperative launch (any cell; see
// persistent_forward_kernel): `blocks` blocks of `threads`, block k owning the hidden units
// [k units_per_block, ...) and their W_hh rows (G * units_per_block * (P, or 1 for a diagonal
// recurrence) state values) and, where h is projected, the rows [k proj_units_per_block, ...) of
// W_hr (proj_units_per_block * H more), all in `shared_bytes` of shared memory. The per-step
// fields of `step` (at.s, h_cur/h_next, c_cur/c_next) are the kernel's; step.gh is `gh`.
struct PersistentForward {
  ForwardStep step;
  int64_t T;
  void* gh;                  // [state] (B, G*H) scratch: the recurrent products of a step
  const void* w_hh;          // [state] (G*H, P), or (G*H) for a diagonal recurrence
  const void* w_hr;          // [state] (P, H) where h is projected, else nullptr
  void* h[2];                // [state] (B, P) each: h_{t-1} / h_t by step parity; h[0] = h0
  void* c[2];                // [state] (B, H) each, cells with a cell state; else nullptr
  int64_t units_per_block;
  int64_t proj_units_per_block;  // of the P units (= units_per_block without a projection)
  bool tensor_cores;             // W_hh's products on tensor cores (TensorCoreTiles' layout)
};

// Its backward: block k owns the same hidden units, W_hh's columns [k proj_units_per_block, ...)
// (proj_units_per_block * G*H state values; G * units_per_block for a diagonal recurrence) and,
// where projected, W_hr's columns of its hidden units (units_per_block * P more). The per-step
// fields of `step` (at.s, dh/dh_prev, grad_step) are the kernel's.
struct PersistentBackward {
  BackwardStep step;
  int64_t T;
  const void* w_hh;          // [state] (G*H, P), or (G*H) for a diagonal recurrence
  const void* w_hr;          // [state] (P, H) where h is projected, else nullptr
  void* dh[2];               // [state] (B, P) each: d h_t / d h_{t-1} by step parity; dh[0] = d h_n
  void* grad_step[2];        // [state] (B, G*H) each: a step's d gates, by step parity
  void* dh_step;             // [state] (B, P) where projected: d h_t of this step, else nullptr
  void* dh_all;              // [state] (T, B, P) where projected: every step's d h_t (d W_hr)
  void* grad_unproj;         // [state] (B, H) where projected: step.grad_unproj, written here
  int64_t units_per_block;
  int64_t proj_units_per_block;  // of the P units (= units_per_block without a projection)
  bool tensor_cores;             // W_hh's products on tensor cores (TensorCoreTiles' layout)
};

template <Cell C>
cudaError_t forward_step(const ForwardStep& p, Dtype dtype, cudaStream_t stream);
template <Cell C>
cudaError_t backward_step(const BackwardStep& p, Dtype dtype, cudaStream_t stream);
// The persistent loops of up to kMaxDirections directions of a layer, one launch: grid (blocks,
// directions), row y of the grid running loop[y]. Every loop has the same cell and sizes (the
// same steps and barriers), so one grid barrier serves them all.
constexpr int kMaxDirections = 2;
template <typename Loop>
struct PersistentLoops {
  Loop loop[kMaxDirections];
};

// `directions` loops (1 or 2), each on `blocks` blocks.
template <Cell C>
cudaError_t persistent_forward(const PersistentForward* loops, int directions, int64_t blocks,
                               int threads, size_t shared_bytes, Dtype dtype,
                               cudaStream_t stream);
template <Cell C>
cudaError_t persistent_backward(const PersistentBackward* loops, int directions, int64_t blocks,
                                int threads, size_t shared_bytes, Dtype dtype,
                                cudaStream_t stream);
cudaError_t projection_step(const ProjectionStep& p, Dtype dtype, cudaStream_t stream);
cudaError_t backward_projection_step(const BackwardProjectionStep& p, Dtype dtype,
                                     cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
