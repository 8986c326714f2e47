// Fused CPU time loops of one layer and one direction, forward and backward, one of each for
// every cell: what differs between cells is their row of a step (CpuCell<C>, row_kernels.h) and
// what the cell table (csrc/cell_table.h) says (gates, states, workspace, b_hh in the step).
//
// W_hh is packed once per call (packed_gemm.h; a diagonal recurrence's u is used as it is,
// diagonal_weight.h) and the time loop runs on a team of threads that stays together for the
// whole sequence (team.h). Each worker owns blocks of 16 hidden units (or, where the team splits
// the batch, every block of its rows, and the barriers are no-ops): per step and block it
// computes W_hh h for those units of every gate into a small tile and does their gate math
// (gate_math.h, row_kernels.h) while the tile is in L1; one barrier per step. Backward: each
// worker does the gate derivatives of its units, a barrier, then its units of
// d h_{t-1} = d gates · W_hh (double-buffered d gates, so one barrier a step suffices).
// Weight gradients are one GEMM over all steps at the end (a sum of products for a diagonal
// recurrence). Where h is projected (LSTM with proj_size) a step has a second phase, as the W_hr
// product needs every unit in between.
// Shapes and workspaces are documented with the schemas in csrc/ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>

#include "../gate_math.h"
#include "../op_helpers.h"
#include "../time_loop_op.h"
#include "diagonal_weight.h"
#include "packed_gemm.h"
#include "row_kernels.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {
namespace {

using at::Tensor;

// Whether the weight gradient after a backward time loop (grad_rows (T, B, N)^T . inputs (T, B, K),
// with any bias sum beside it) is too small for torch's GEMM to take two threads
// (kMinParallelGemmMacs, csrc/cpu/team.h).
bool small_weight_grad(const Tensor& grad_rows, const Tensor& inputs) {
  return grad_rows.numel() * inputs.size(-1) < kMinParallelGemmMacs;
}

template <typename T>
void zero_row(T* dst, int64_t n) {
  std::fill(dst, dst + n, T(0));
}

// Units [j0, j0 + n) of each of `gates` gate blocks (H apart) of one row: zeroed.
template <typename T>
void zero_gate_units(T* row, int64_t gates, int64_t H, int64_t j0, int64_t n) {
  for (int64_t g = 0; g < gates; ++g) zero_row(row + g * H + j0, n);
}
template <typename T>
void copy_gate_units(T* dst, const T* src, int64_t gates, int64_t H, int64_t j0, int64_t n) {
  for (int64_t g = 0; g < gates; ++g) copy_units(dst + g * H + j0, src + g * H + j0, n);
}

// Two (rows, width) buffers a time loop of T steps alternates between: step s reads slot s & 1 and
// writes slot (s + 1) & 1. Slot T & 1, which the last step writes, is `result` itself, so the
// final state is returned without a copy; slot 0 starts as a copy of `initial`.
struct PingPong {
  Tensor result, scratch;
  void* slots[2];

  template <typename T>
  T* slot(int64_t s) const {
    return static_cast<T*>(slots[s & 1]);
  }
};

PingPong ping_pong(const Tensor& initial, int64_t T) {
  const Tensor init = initial.contiguous();
  PingPong p{at::empty(init.sizes(), init.options()), at::empty(init.sizes(), init.options()), {}};
  p.slots[T & 1] = p.result.data_ptr();
  p.slots[(T + 1) & 1] = p.scratch.data_ptr();
  if (init.nbytes() > 0) std::memcpy(p.slots[0], init.data_ptr(), init.nbytes());
  return p;
}

// Hidden units [first, first + count) covered by unit blocks [u0, u1) of a layer of `units`.
inline std::pair<int64_t, int64_t> unit_range(int64_t u0, int64_t u1, int64_t units) {
  const int64_t first = std::min(u0 * kBlockUnits, units);
  return {first, std::min(u1 * kBlockUnits, units) - first};
}

// W_hh as the loops multiply by it: packed (packed_gemm.h), or the diagonal u of a diagonal
// recurrence (diagonal_weight.h, the same interface).
template <typename S, Recurrence R>
using RecurrentWeight =
    std::conditional_t<R == Recurrence::Dense, PackedWeight<S>, DiagonalWeight<S>>;

// The team for a loop of cell C (team.h, plan_team): per step the recurrent product's
// multiply-adds (B*G*H*P, or B*G*H for a diagonal recurrence) and W_hr's where h is projected;
// a diagonal recurrence learns its team choice apart (kind 0), its multiply-adds each carrying
// an activation.
template <Cell C, typename S>
TeamPlan plan_loop_team(bool can_split, int64_t num_blocks, const LayerSizes& sz, bool proj,
                        bool backward) {
  constexpr CellSpec cell = spec(C);
  const int64_t recurrent_macs = sz.B * cell.gates * sz.H * (cell.diagonal() ? 1 : sz.P);
  const TeamPlan plan =
      plan_team(can_split, num_blocks, sz.B, recurrent_macs + (proj ? sz.B * sz.P * sz.H : 0),
                sz.T, backward, cell.diagonal() ? 0 : cell.gates, sizeof(S),
                /*whole_rows=*/cell.normalized());
  // A normalised step needs a row's every unit on one worker: a team splits its rows or none
  // forms (fewer than 2 * kMinRowsPerWorker rows).
  if (cell.normalized() && !plan.split_rows) return {};
  return plan;
}

// Per-worker tile width per gate: every block, as the team granted may be smaller than asked
// (nested parallelism), leaving one worker with all of them.
inline int64_t tile_units(int64_t num_blocks) { return num_blocks * kBlockUnits; }

// W_hh h_{t-1} for the worker's units of every gate: rows `ld` apart (row 0 = the worker's first
// row), gates `gate_stride` apart, unit 0 = the worker's first unit.
template <typename T>
struct WorkerProduct {
  const T* data;
  int64_t ld, gate_stride;
};

// Packed path: computed now, block by block, into the worker's tile (its rows, G, its units), so
// the gate pass after it reads each gate of a row as one contiguous run. BLAS path (team of one):
// read from `full` (B, G*H), the whole product the caller computed for this step.
// h is (B, ldh) with every row of the step.
template <typename T, typename Weight>
WorkerProduct<T> worker_product(const Weight& w, const Worker& me, const T* h, int64_t ldh,
                                int64_t G, int64_t H, const T* full, T* tile) {
  if (!w.packed()) return {full + me.row_begin * G * H + me.block_begin * kBlockUnits, G * H, H};
  const int64_t width = (me.block_end - me.block_begin) * kBlockUnits;
  for (int64_t u = me.block_begin; u < me.block_end; ++u) {
    w.multiply_block(u, me.rows(), h + me.row_begin * ldh, ldh, T(0),
                     tile + (u - me.block_begin) * kBlockUnits, G * width, width);
  }
  return {tile, G * width, width};
}

// d h_{t-1}[the worker's rows, its units] += grad_gates (B, K) · W_hh (K, P), both with every
// row of the step (grad_gates `ld` apart, dh_prev P apart).
template <typename T, typename Weight>
void accumulate_grad_h(const Weight& w, const Worker& me, const T* grad_gates, int64_t ld,
                       T* dh_prev, int64_t P) {
  const T* rows_gates = grad_gates + me.row_begin * ld;
  T* rows_dh = dh_prev + me.row_begin * P;
  if (!w.packed()) {  // a team of one: the whole product at once
    w.multiply(me.rows(), rows_gates, ld, T(1), rows_dh, P);
    return;
  }
  for (int64_t u = me.block_begin; u < me.block_end; ++u) {
    w.multiply_block(u, me.rows(), rows_gates, ld, T(1), rows_dh + u * kBlockUnits, P, 0);
  }
}

// The cell's workspace (csrc/cell_table.h) as the loops see it: each part's (T, B, width) buffer,
// or nullptr when not saved; hprev, always the last part, also by name.
template <typename T>
struct WorkspaceBuffers {
  T* parts[kMaxWorkspaceParts] = {};
  int64_t widths[kMaxWorkspaceParts] = {};
  T* hprev = nullptr;  // (T, B, P)

  WorkspaceBuffers(const CellSpec& cell, const std::vector<Tensor>& saved,
                   const LayerSizes& sz) {
    for (int i = 0; i < cell.workspace_parts; ++i) {
      widths[i] = workspace_width(cell.workspace[i], sz);
      if (saved[i].numel() > 0) parts[i] = saved[i].data_ptr<T>();
    }
    hprev = parts[cell.workspace_parts - 1];
  }
};

// ============================================================================ forward

// One layer and direction of cell C, forward. Per step: each worker's units of W_hh h_{t-1} for
// every gate (packed_gemm.h), then per batch row either the inactive path (state carried over,
// output and workspace zero) or the cell's row (CpuCell<C>::forward), h_{t-1} saved, one barrier.
// Where h is projected, a second phase: h_t = W_hr (the rows' unprojected h) over the worker's
// share of the P outputs, and a second barrier.
template <Cell C>
TimeLoopForwardResult forward(const ForwardArgs& a) {
  constexpr CellSpec cell = spec(C);
  constexpr int64_t G = cell.gates;
  const LayerSizes& sz = a.sz;
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = a.w_hr.has_value(), save_workspace = a.save_workspace;
  const Schedule sched = make_schedule(T, a.reverse, a.lengths, a.xproj);
  const Tensor xproj = a.xproj.contiguous(), w_hh = a.w_hh.contiguous();
  const Tensor w_hr = proj ? a.w_hr->contiguous() : Tensor();
  const at::TensorOptions options = xproj.options();
  // Zeros when absent (no bias), so the row kernels add it without a branch.
  const Tensor step_params = a.step_params.has_value()
                                 ? a.step_params->contiguous()
                                 : at::zeros({cell.step_param_units() * H}, options);

  Tensor output = at::empty({T, B, P}, options);
  std::vector<Tensor> saved;
  for (int i = 0; i < cell.workspace_parts; ++i) {
    saved.push_back(workspace(save_workspace, xproj, T, B, workspace_width(cell.workspace[i], sz)));
  }
  const PingPong h_state = ping_pong(a.h0, T);
  std::optional<PingPong> c_state;
  if constexpr (cell.has_cell_state()) c_state = ping_pong(*a.c0, T);
  // The first part of a step's workspace when nothing is saved (its row kernels write it).
  const int64_t first_width = workspace_width(cell.workspace[0], sz);
  Tensor scratch = at::empty({save_workspace ? 0 : B, first_width}, options);
  Tensor unprojected = at::zeros({proj ? B : 0, H}, options);  // h before W_hr

  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fusedrnn::time_loop_forward", [&] {
    using S = scalar_t;
    const RecurrentWeight<S, cell.recurrence> w(w_hh.data_ptr<S>(), G * H, P,
                                                /*transposed=*/true, /*groups=*/G);
    const PackedWeight<S> w_r(proj ? w_hr.data_ptr<S>() : nullptr, proj ? P : 0, H,
                              /*transposed=*/true);
    const bool packed = w.packed() && (!proj || w_r.packed());
    const TeamPlan team =
        plan_loop_team<C, S>(packed, w.num_blocks(), sz, proj, /*backward=*/false);
    Tensor full = at::empty({packed ? 0 : B, G * H}, options);  // W_hh h (BLAS path)
    // A tile (B, G * units) per worker; one shared by a team split by rows, each worker using
    // its own rows of it.
    const int64_t tile_count = !packed ? 0 : team.split_rows ? 1 : team.workers;
    Tensor tiles = at::empty({tile_count, B, G * tile_units(w.num_blocks())}, options);
    const WorkspaceBuffers<S> ws(cell, saved, sz);
    const S* x = xproj.data_ptr<S>();
    const S* params = step_params.data_ptr<S>();
    S* out = output.data_ptr<S>();
    S* unproj = proj ? unprojected.data_ptr<S>() : nullptr;
    S* scratch_data = scratch.data_ptr<S>();
    S* full_data = full.data_ptr<S>();
    S* tiles_data = tiles.data_ptr<S>();
    constexpr int kCellParts = cell.workspace_parts - 1;  // the parts before hprev
    run_team(team, w.num_blocks(), B, [&](Worker& me) {
      S* tile = me.split_rows ? tiles_data + me.row_begin * tiles.stride(1)
                              : tiles_data + me.id * tiles.stride(0);
      for (int64_t s = 0; s < T; ++s) {
        const S* h_cur = h_state.slot<S>(s);
        S* h_next = h_state.slot<S>(s + 1);
        const S* c_cur = c_state ? c_state->slot<S>(s) : nullptr;
        S* c_next = c_state ? c_state->slot<S>(s + 1) : nullptr;
        if (!packed) w.multiply(B, h_cur, P, 0, full_data, G * H);
        {  // the worker's units
          const auto [j0, n] = unit_range(me.block_begin, me.block_end, H);
          const auto gh = worker_product(w, me, h_cur, P, G, H, full_data, tile);
          ForwardRow<S> r{};  // what every row of this step shares; the loop sets the rest
          r.gh_stride = gh.gate_stride;
          r.params = params + j0;
          r.save = save_workspace;
          r.n = n;
          r.H = H;
          for (int64_t b = me.row_begin; b < me.row_end; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (!sched.active(s, b)) {
              if (c_next) copy_units(c_next + b * H + j0, c_cur + b * H + j0, n);
              if (!proj) {  // (else the projection phase carries h)
                copy_units(h_next + b * H + j0, h_cur + b * H + j0, n);
                zero_row(out + row * H + j0, n);
                if (ws.hprev) zero_row(ws.hprev + row * H + j0, n);
              }
              if (save_workspace) {
                for (int i = 0; i < kCellParts; ++i) {
                  zero_gate_units(ws.parts[i] + row * ws.widths[i], cell.workspace[i].units, H,
                                  j0, n);
                }
              }
              continue;
            }
            r.x = x + row * G * H + j0;
            r.gh = gh.data + (b - me.row_begin) * gh.ld;
            r.h_cur = h_cur + b * P + j0;
            r.h_new = proj ? unproj + b * H + j0 : h_next + b * H + j0;
            r.out = proj ? r.h_new : out + row * H + j0;
            if constexpr (cell.has_cell_state()) {
              r.c_cur = c_cur + b * H + j0;
              r.c_new = c_next + b * H + j0;
            }
            if (save_workspace) {
              for (int i = 0; i < kCellParts; ++i) r.ws[i] = ws.parts[i] + row * ws.widths[i] + j0;
            } else {
              r.ws[0] = scratch_data + b * first_width + j0;
            }
            CpuCell<C>::forward(r);
            if (!proj && ws.hprev) copy_units(ws.hprev + row * H + j0, h_cur + b * H + j0, n);
          }
        }
        if (!me.barrier()) return;  // h_t (or the unprojected h) complete before it is read
        if (!proj) continue;
        // h_t = W_hr (unprojected h) over the worker's share of the P outputs; inactive rows
        // keep h_{t-1}.
        if (!packed) w_r.multiply(B, unproj, H, 0, h_next, P);
        const auto [v0, v1] = me.share(w_r.num_blocks());
        if (packed) {
          for (int64_t v = v0; v < v1; ++v) {
            w_r.multiply_block(v, me.rows(), unproj + me.row_begin * H, H, 0,
                               h_next + me.row_begin * P + v * kBlockUnits, P, 0);
          }
        }
        {  // the worker's P units
          const auto [p0, m] = unit_range(v0, v1, P);
          for (int64_t b = me.row_begin; b < me.row_end; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (sched.active(s, b)) {
              copy_units(out + row * P + p0, h_next + b * P + p0, m);
              if (ws.hprev) copy_units(ws.hprev + row * P + p0, h_cur + b * P + p0, m);
            } else {
              copy_units(h_next + b * P + p0, h_cur + b * P + p0, m);
              zero_row(out + row * P + p0, m);
              if (ws.hprev) zero_row(ws.hprev + row * P + p0, m);
            }
          }
        }
        if (!me.barrier()) return;  // unprojected is rewritten next step
      }
    });
  });
  Tensor c_n = c_state ? c_state->result : at::empty({0}, options);
  return {output, h_state.result, c_n, save_workspace ? saved : std::vector<Tensor>{}};
}

// ============================================================================ backward

// One layer and direction of cell C, backward (BPTT). Per step: where h is projected, first
// d h_t = d output_t + carried d h over the worker's P units, a barrier, and d(h before W_hr);
// then the cell's row (CpuCell<C>::backward) over the worker's hidden units, a barrier, and the
// worker's units of d h_{t-1} += d(W_hh h_{t-1}) · W_hh (double-buffered, so one barrier a step
// suffices; for a diagonal recurrence its units of d gates ⊙ u). The weight gradients are one
// GEMM over all steps after the loop (a sum of products for a diagonal recurrence).
template <Cell C>
TimeLoopBackwardResult backward(const BackwardArgs& a) {
  constexpr CellSpec cell = spec(C);
  constexpr int64_t G = cell.gates;
  constexpr bool own_recurrent_grad = cell.own_recurrent_grad();
  const LayerSizes& sz = a.sz;
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = a.w_hr.has_value();
  const Schedule sched = make_schedule(T, a.reverse, a.lengths, a.w_hh);
  const Tensor grad_output = a.grad_output.contiguous(), w_hh = a.w_hh.contiguous();
  const Tensor w_hr = proj ? a.w_hr->contiguous() : Tensor();
  std::vector<Tensor> saved;
  for (const Tensor& t : a.workspace) saved.push_back(t.contiguous());
  const Tensor& hprev = saved.back();
  const at::TensorOptions options = hprev.options();

  // Read by a normalised step only (which requires them).
  const Tensor step_params = a.step_params.has_value() ? a.step_params->contiguous() : Tensor();
  // Every row is written (zero where inactive), so no zero fill first.
  Tensor grad_xproj = at::empty({T, B, G * H}, options);
  // Each row's share of d step_params where the cell's step writes it (zero where inactive).
  constexpr int64_t U = cell.step_param_row_units();
  Tensor grad_param_rows = at::empty({U > 0 ? T : 0, B, U * H}, options);
  Tensor grad_hproj = at::empty({own_recurrent_grad ? T : 0, B, G * H}, options);
  const PingPong carry = ping_pong(a.grad_h_n, T);  // d h_t / d h_{t-1}
  Tensor grad_c =  // d c, updated in place row by row
      cell.has_cell_state() ? a.grad_c_n->contiguous().clone() : at::empty({0}, options);
  // This step's d(W_hh h_{t-1}) as a (B, G*H) matrix for the GEMM, double-buffered.
  Tensor grad_step = at::empty({2, B, G * H}, options);
  // Where h is projected: d h_t and the unprojected h for every slot (zero where inactive), for
  // d W_hr; this step's d h_t and its product with W_hr.
  Tensor grad_h_all = at::zeros({proj ? T : 0, B, P}, options);
  Tensor unprojected_all = at::zeros({proj ? T : 0, B, H}, options);
  Tensor grad_h_step = at::empty({proj ? B : 0, P}, options);
  Tensor grad_unproj = at::empty({proj ? B : 0, H}, options);

  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "fusedrnn::time_loop_backward", [&] {
    using S = scalar_t;
    const RecurrentWeight<S, cell.recurrence> w(w_hh.data_ptr<S>(), P, G * H,
                                                /*transposed=*/false);
    const PackedWeight<S> w_r(proj ? w_hr.data_ptr<S>() : nullptr, proj ? H : 0, P,
                              /*transposed=*/false);
    const bool packed = w.packed() && (!proj || w_r.packed());
    const TeamPlan team =
        plan_loop_team<C, S>(packed, w.num_blocks(), sz, proj, /*backward=*/true);
    const int64_t hidden_blocks = (H + kBlockUnits - 1) / kBlockUnits;
    const WorkspaceBuffers<S> ws(cell, saved, sz);
    const S* gout = grad_output.data_ptr<S>();
    S* gx = grad_xproj.data_ptr<S>();
    S* gh = own_recurrent_grad ? grad_hproj.data_ptr<S>() : nullptr;
    const S* params = step_params.defined() ? step_params.data_ptr<S>() : nullptr;
    S* gp = U > 0 ? grad_param_rows.data_ptr<S>() : nullptr;
    S* dc = cell.has_cell_state() ? grad_c.data_ptr<S>() : nullptr;
    S* grad_step_data = grad_step.data_ptr<S>();
    S* dh_all = proj ? grad_h_all.data_ptr<S>() : nullptr;
    S* r_all = proj ? unprojected_all.data_ptr<S>() : nullptr;
    S* dh_step = proj ? grad_h_step.data_ptr<S>() : nullptr;
    S* dr = proj ? grad_unproj.data_ptr<S>() : nullptr;
    // The worker's blocks: block_begin/end cover P (d h_{t-1}), `share` covers H (gates).
    run_team(team, w.num_blocks(), B, [&](Worker& me) {
      for (int64_t step = 0; step < T; ++step) {
        const int64_t s = T - 1 - step;
        const S* dh = carry.slot<S>(step);
        S* dh_prev = carry.slot<S>(step + 1);
        S* gs = grad_step_data + (step & 1) * B * G * H;
        if (proj) {
          // d h_t = d output_t + carried d h (zero if inactive), over the worker's P units;
          // they also start d h_{t-1}: zero, or d h passed through for inactive rows.
          {  // the worker's P units
            const auto [p0, m] = unit_range(me.block_begin, me.block_end, P);
            for (int64_t b = me.row_begin; b < me.row_end; ++b) {
              if (!sched.active(s, b)) {
                zero_row(dh_step + b * P + p0, m);
                copy_units(dh_prev + b * P + p0, dh + b * P + p0, m);
                continue;
              }
              const int64_t row = sched.slot(s, b) * B + b;
              for (int64_t p = p0; p < p0 + m; ++p) {
                dh_step[b * P + p] = gout[row * P + p] + dh[b * P + p];
              }
              copy_units(dh_all + row * P + p0, dh_step + b * P + p0, m);
              zero_row(dh_prev + b * P + p0, m);
            }
          }
          if (!me.barrier()) return;
          if (!packed) w_r.multiply(B, dh_step, P, 0, dr, H);  // d(h before W_hr) = d h_t · W_hr
        }
        // The worker's hidden blocks (all of them once the team has dissolved).
        const auto [u0, u1] = me.share(hidden_blocks);
        if (proj && packed) {
          for (int64_t u = u0; u < u1; ++u) {
            w_r.multiply_block(u, me.rows(), dh_step + me.row_begin * P, P, 0,
                               dr + me.row_begin * H + u * kBlockUnits, H, 0);
          }
        }
        {  // the worker's hidden units
          const auto [j0, n] = unit_range(u0, u1, H);
          BackwardRow<S> r{};  // what every row of this step shares; the loop sets the rest
          r.params = params ? params + j0 : nullptr;
          r.n = n;
          r.H = H;
          for (int64_t b = me.row_begin; b < me.row_end; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (!sched.active(s, b)) {  // d gates 0: d h passes through the GEMM unchanged
              zero_gate_units(gs + b * G * H, G, H, j0, n);
              zero_gate_units(gx + row * G * H, G, H, j0, n);
              if (gh) zero_gate_units(gh + row * G * H, G, H, j0, n);
              if (gp) zero_gate_units(gp + row * U * H, U, H, j0, n);
              if (!proj) copy_units(dh_prev + b * P + j0, dh + b * P + j0, n);
              continue;
            }
            for (int i = 0; i < cell.workspace_parts; ++i) {
              r.ws[i] = ws.parts[i] + row * ws.widths[i] + j0;
            }
            r.grad_out = proj ? dr + b * H + j0 : gout + row * P + j0;
            r.dh = proj ? nullptr : dh + b * P + j0;
            if constexpr (cell.has_cell_state()) r.dc = dc + b * H + j0;
            r.grad_step = gs + b * G * H + j0;
            if constexpr (own_recurrent_grad) r.grad_x = gx + row * G * H + j0;
            r.dh_prev = proj ? nullptr : dh_prev + b * P + j0;
            r.unprojected = proj ? r_all + row * H + j0 : nullptr;
            r.grad_params = gp ? gp + row * U * H + j0 : nullptr;
            CpuCell<C>::backward(r);
            S* keep = own_recurrent_grad ? gh : gx;  // d xproj, or GRU's d(W_hh h + b_hh)
            copy_gate_units(keep + row * G * H, gs + b * G * H, G, H, j0, n);
          }
        }
        if (!me.barrier()) return;  // every d gate is written before the GEMM reads them all
        // d h_{t-1} += d gates · W_hh  (inactive rows have zero gate grads and pass d h through)
        accumulate_grad_h(w, me, gs, G * H, dh_prev, P);
      }
    });
  });
  const Tensor& recurrent_grad = own_recurrent_grad ? grad_hproj : grad_xproj;
  const OneThreadScope one_thread(small_weight_grad(recurrent_grad, hprev));
  const auto none = [&] { return at::empty({0}, options); };  // one per output: no aliases
  return {grad_xproj,
          carry.result,
          cell.has_cell_state() ? grad_c : none(),
          recurrent_weight_grad(cell, recurrent_grad, hprev),
          step_param_grads(cell, grad_xproj, recurrent_grad, grad_param_rows),
          proj ? weight_grad(grad_h_all, unprojected_all) : none()};
}

struct CpuLoops {
  template <Cell C>
  static TimeLoopForwardResult forward(const ForwardArgs& a) {
    return cpu::forward<C>(a);
  }
  template <Cell C>
  static TimeLoopBackwardResult backward(const BackwardArgs& a) {
    return cpu::backward<C>(a);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("time_loop_forward", &thread_limited<&TimeLoopOps<CpuLoops>::forward>::call);
  m.impl("time_loop_backward", &thread_limited<&TimeLoopOps<CpuLoops>::backward>::call);
}

}  // namespace cpu
}  // namespace fusedrnn
