// Fused CPU time loops of one layer and one direction, forward and backward, for RNN, GRU and LSTM.
//
// W_hh is packed once per call (packed_gemm.h) and the time loop runs on a team of threads that
// stays together for the whole sequence (team.h). Each worker owns blocks of 16 hidden units:
// per step and block it computes W_hh h for those units of every gate into a small tile and
// does their gate math (gate_math.h, row_kernels.h) while the tile is in L1; one barrier per
// step. Backward: each worker does the gate derivatives of its units, a barrier, then its units
// of d h_{t-1} = d gates · W_hh (double-buffered d gates, so one barrier a step suffices).
// Weight gradients are one GEMM over all steps at the end. LSTM with proj_size keeps a per-step
// loop (full GEMM, then rows), as its W_hr product needs every unit in between.
// Shapes and workspaces are documented with the schemas in csrc/ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>

#include "../gate_math.h"
#include "../op_helpers.h"
#include "../time_loop_op.h"
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

// memcpy with a null pointer is undefined even for 0 bytes (batch 0, hidden 0): skip those.
template <typename T>
void copy_row(T* dst, const T* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(T) * n);
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
  for (int64_t g = 0; g < gates; ++g) copy_row(dst + g * H + j0, src + g * H + j0, n);
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

// Per-worker tile width per gate: every block, as the team granted may be smaller than asked
// (nested parallelism), leaving one worker with all of them.
inline int64_t tile_units(int64_t num_blocks) { return num_blocks * kBlockUnits; }

// W_hh h_{t-1} for the worker's units of every gate: rows `ld` apart, gates `gate_stride` apart,
// unit 0 = the worker's first unit.
template <typename T>
struct WorkerProduct {
  const T* data;
  int64_t ld, gate_stride;
};

// Packed path: computed now, block by block, into the worker's tile (B, G, its units), so the
// gate pass after it reads each gate of a row as one contiguous run. BLAS path (team of one):
// read from `full` (B, G*H), the whole product the caller computed for this step.
template <typename T>
WorkerProduct<T> worker_product(const PackedWeight<T>& w, const Worker& me, int64_t B,
                                const T* h, int64_t ldh, int64_t G, int64_t H, const T* full,
                                T* tile) {
  if (!w.packed()) return {full + me.block_begin * kBlockUnits, G * H, H};
  const int64_t width = (me.block_end - me.block_begin) * kBlockUnits;
  for (int64_t u = me.block_begin; u < me.block_end; ++u) {
    w.multiply_block(u, B, h, ldh, T(0), tile + (u - me.block_begin) * kBlockUnits, G * width,
                     width);
  }
  return {tile, G * width, width};
}

// d h_{t-1}[:, the worker's units] += grad_gates (B, K) · W_hh (K, P).
template <typename T>
void accumulate_grad_h(const PackedWeight<T>& w, const Worker& me, int64_t B, const T* grad_gates,
                       int64_t ld, T* dh_prev, int64_t P) {
  if (!w.packed()) {  // a team of one: the whole product at once
    w.multiply(B, grad_gates, ld, T(1), dh_prev, P);
    return;
  }
  for (int64_t u = me.block_begin; u < me.block_end; ++u) {
    w.multiply_block(u, B, grad_gates, ld, T(1), dh_prev + u * kBlockUnits, P, 0);
  }
}

// The forward time loop of the cells with one state (RNN, GRU). Per step: the worker's units of
// W_hh h_{t-1} for all G gates, then per batch row either the inactive path (state carried over,
// output and h_{t-1} workspace zero, plus `zero_inactive(row, j0, n)` for the cell's own
// workspaces) or `active_row(b, row, j0, n, h_cur, h_next, gh)`, which writes h_t and the
// output; then h_{t-1} is saved if asked (hp_ws not null) and one barrier ends the step.
template <typename S, typename ActiveRow, typename ZeroInactive>
void single_state_forward_loop(const PackedWeight<S>& w, const Schedule& sched,
                               const PingPong& state, int64_t steps, int64_t B, int64_t H,
                               int64_t G, S* out, S* hp_ws, const at::TensorOptions& options,
                               const ActiveRow& active_row, const ZeroInactive& zero_inactive) {
  const TeamPlan team = plan_team(w.packed(), w.num_blocks(), B * G * H * H, steps, false, G);
  Tensor full = at::empty({w.packed() ? 0 : B, G * H}, options);  // W_hh h (BLAS path)
  Tensor tiles =
      at::empty({w.packed() ? team.workers : 0, B, G * tile_units(w.num_blocks())}, options);
  S* full_data = full.data_ptr<S>();
  S* tiles_data = tiles.data_ptr<S>();
  run_team(team, w.num_blocks(), [&](Worker& me) {
    S* tile = tiles_data + me.id * tiles.stride(0);
    for (int64_t s = 0; s < steps; ++s) {
      const S* h_cur = state.slot<S>(s);
      S* h_next = state.slot<S>(s + 1);
      if (!w.packed()) w.multiply(B, h_cur, H, 0, full_data, G * H);
      {  // the worker's units
        const auto [j0, n] = unit_range(me.block_begin, me.block_end, H);
        const auto gh = worker_product(w, me, B, h_cur, H, G, H, full_data, tile);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t row = sched.slot(s, b) * B + b;
          if (!sched.active(s, b)) {
            copy_row(h_next + b * H + j0, h_cur + b * H + j0, n);
            zero_row(out + row * H + j0, n);
            zero_inactive(row, j0, n);
            if (hp_ws) zero_row(hp_ws + row * H + j0, n);
            continue;
          }
          active_row(b, row, j0, n, h_cur, h_next, gh);
          if (hp_ws) copy_row(hp_ws + row * H + j0, h_cur + b * H + j0, n);
        }
      }
      if (!me.barrier()) return;  // h_t complete before any worker reads it
    }
  });
}

// ============================================================================ RNN (tanh / relu)

// The loops below take arguments checked by csrc/time_loop_op.h, with the sizes it read.

std::tuple<Tensor, Tensor, Tensor, Tensor> rnn_forward(const LayerSizes& sz, const Tensor& xproj_in,
                                                       const Tensor& h0_in, const Tensor& w_hh_in,
                                                       const std::optional<Tensor>& lengths,
                                                       bool reverse, bool relu,
                                                       bool save_workspace) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor activations = workspace(save_workspace, xproj, T, B, H);
  Tensor hprev = workspace(save_workspace, xproj, T, B, H);
  const PingPong state = ping_pong(h0_in, T);  // h_{t-1} / h_t

  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fusedrnn::rnn_forward", [&] {
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), H, H, /*transposed=*/true);
    const scalar_t* x = xproj.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    scalar_t* hp_ws = save_workspace ? hprev.data_ptr<scalar_t>() : nullptr;
    scalar_t* act_ws = save_workspace ? activations.data_ptr<scalar_t>() : nullptr;
    single_state_forward_loop(
        w, sched, state, T, B, H, /*G=*/1, out, hp_ws, xproj.options(),
        [&](int64_t b, int64_t row, int64_t j0, int64_t n, const scalar_t*, scalar_t* h_next,
            const WorkerProduct<scalar_t>& gh) {
          rnn_forward_row(x + row * H + j0, gh.data + b * gh.ld, h_next + b * H + j0,
                          out + row * H + j0, n, relu);
          if (act_ws) copy_row(act_ws + row * H + j0, out + row * H + j0, n);
        },
        [&](int64_t row, int64_t j0, int64_t n) {
          if (act_ws) zero_row(act_ws + row * H + j0, n);
        });
  });
  return {output, state.result, activations, hprev};
}

std::tuple<Tensor, Tensor, Tensor> rnn_backward(const LayerSizes& sz,
                                                const Tensor& grad_output_in,
                                                const Tensor& grad_h_n, const Tensor& w_hh_in,
                                                const Tensor& activations_in,
                                                const Tensor& hprev_in,
                                                const std::optional<Tensor>& lengths,
                                                bool reverse, bool relu) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Schedule sched = make_schedule(T, reverse, lengths, w_hh_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               activations = activations_in.contiguous(), hprev = hprev_in.contiguous();

  // Every row is written (zero where inactive), so no zero fill of T*B*H first.
  Tensor grad_xproj = at::empty({T, B, H}, activations.options());
  const PingPong carry = ping_pong(grad_h_n, T);  // d h_t / d h_{t-1}
  Tensor grad_pre = at::empty({2, B, H}, activations.options());  // d(pre-activation), double-buffered

  AT_DISPATCH_FLOATING_TYPES(activations.scalar_type(), "fusedrnn::rnn_backward", [&] {
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), H, H, /*transposed=*/false);
    const TeamPlan team = plan_team(w.packed(), w.num_blocks(), B * H * H, T, true, 1);
    const scalar_t* gout = grad_output.data_ptr<scalar_t>();
    const scalar_t* act = activations.data_ptr<scalar_t>();
    scalar_t* gx = grad_xproj.data_ptr<scalar_t>();
    scalar_t* grad_pre_data = grad_pre.data_ptr<scalar_t>();
    run_team(team, w.num_blocks(), [&](Worker& me) {
      for (int64_t step = 0; step < T; ++step) {
        const int64_t s = T - 1 - step;
        const scalar_t* dh = carry.slot<scalar_t>(step);
        scalar_t* dh_prev = carry.slot<scalar_t>(step + 1);
        scalar_t* gp = grad_pre_data + (step & 1) * B * H;
        {  // the worker's units
          const auto [j0, n] = unit_range(me.block_begin, me.block_end, H);
          for (int64_t b = 0; b < B; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (!sched.active(s, b)) {  // d pre = 0: d h passes through the GEMM unchanged
              zero_row(gp + b * H + j0, n);
              zero_row(gx + row * H + j0, n);
              copy_row(dh_prev + b * H + j0, dh + b * H + j0, n);
              continue;
            }
            rnn_backward_row(act + row * H + j0, gout + row * H + j0, dh + b * H + j0,
                             gp + b * H + j0, dh_prev + b * H + j0, n, relu);
            copy_row(gx + row * H + j0, gp + b * H + j0, n);
          }
        }
        if (!me.barrier()) return;  // every d pre is written before the GEMM reads them all
        accumulate_grad_h(w, me, B, gp, H, dh_prev, H);
      }
    });
  });
  const OneThreadScope one_thread(small_weight_grad(grad_xproj, hprev));
  return {grad_xproj, carry.result, weight_grad(grad_xproj, hprev)};
}

// ============================================================================ GRU

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const LayerSizes& sz,
                                                       const Tensor& xproj_in, const Tensor& h0_in,
                                                       const Tensor& w_hh_in,
                                                       const std::optional<Tensor>& b_hh_in,
                                                       const std::optional<Tensor>& lengths,
                                                       bool reverse, bool save_workspace) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous()
                                          : at::zeros({3 * H}, xproj.options());

  Tensor output = at::empty({T, B, H}, xproj.options());
  Tensor gates_ws = workspace(save_workspace, xproj, T, B, 4 * H);
  Tensor hprev = workspace(save_workspace, xproj, T, B, H);
  const PingPong state = ping_pong(h0_in, T);  // h_{t-1} / h_t
  // Gates of this step when nothing is saved (each worker writes only its units' columns).
  Tensor gates_scratch = at::empty({save_workspace ? 0 : B, 4 * H}, xproj.options());

  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fusedrnn::gru_forward", [&] {
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), 3 * H, H, /*transposed=*/true,
                                   /*groups=*/3);
    const scalar_t* x = xproj.data_ptr<scalar_t>();
    const scalar_t* bias = b_hh.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    scalar_t* g_ws = save_workspace ? gates_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* hp_ws = save_workspace ? hprev.data_ptr<scalar_t>() : nullptr;
    scalar_t* scratch = gates_scratch.data_ptr<scalar_t>();
    single_state_forward_loop(
        w, sched, state, T, B, H, /*G=*/3, out, hp_ws, xproj.options(),
        [&](int64_t b, int64_t row, int64_t j0, int64_t n, const scalar_t* h_cur,
            scalar_t* h_next, const WorkerProduct<scalar_t>& gh) {
          scalar_t* ws = g_ws ? g_ws + row * 4 * H : scratch + b * 4 * H;
          gru_forward_row(x + row * 3 * H + j0, gh.data + b * gh.ld, bias + j0,
                          h_cur + b * H + j0, h_next + b * H + j0, out + row * H + j0, ws + j0,
                          n, H, gh.gate_stride);
        },
        [&](int64_t row, int64_t j0, int64_t n) {
          if (g_ws) zero_gate_units(g_ws + row * 4 * H, 4, H, j0, n);
        });
  });
  return {output, state.result, gates_ws, hprev};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const LayerSizes& sz, const Tensor& grad_output_in, const Tensor& grad_h_n,
    const Tensor& w_hh_in, const Tensor& gates_in, const Tensor& hprev_in,
    const std::optional<Tensor>& lengths, bool reverse) {
  const int64_t T = sz.T, B = sz.B, H = sz.H;
  const Schedule sched = make_schedule(T, reverse, lengths, w_hh_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               gates_ws = gates_in.contiguous(), hprev = hprev_in.contiguous();

  // Every row of both is written (zero where inactive), so no zero fill first.
  Tensor grad_xproj = at::empty({T, B, 3 * H}, hprev.options());  // d(W_ih x + b_ih)
  Tensor grad_hproj = at::empty({T, B, 3 * H}, hprev.options());  // d(W_hh h + b_hh)
  const PingPong carry = ping_pong(grad_h_n, T);  // d h_t / d h_{t-1}
  // This step's d(W_hh h + b_hh) as a (B, 3H) matrix for the GEMM, double-buffered.
  Tensor grad_step = at::empty({2, B, 3 * H}, hprev.options());

  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "fusedrnn::gru_backward", [&] {
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), H, 3 * H, /*transposed=*/false);
    const TeamPlan team = plan_team(w.packed(), w.num_blocks(), B * 3 * H * H, T, true, 3);
    const scalar_t* gout = grad_output.data_ptr<scalar_t>();
    const scalar_t* g_ws = gates_ws.data_ptr<scalar_t>();
    const scalar_t* hp_ws = hprev.data_ptr<scalar_t>();
    scalar_t* gx = grad_xproj.data_ptr<scalar_t>();
    scalar_t* gh = grad_hproj.data_ptr<scalar_t>();
    scalar_t* grad_step_data = grad_step.data_ptr<scalar_t>();
    run_team(team, w.num_blocks(), [&](Worker& me) {
      for (int64_t step = 0; step < T; ++step) {
        const int64_t s = T - 1 - step;
        const scalar_t* dh = carry.slot<scalar_t>(step);
        scalar_t* dh_prev = carry.slot<scalar_t>(step + 1);
        scalar_t* gs = grad_step_data + (step & 1) * B * 3 * H;
        {  // the worker's units
          const auto [j0, n] = unit_range(me.block_begin, me.block_end, H);
          for (int64_t b = 0; b < B; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (!sched.active(s, b)) {
              zero_gate_units(gs + b * 3 * H, 3, H, j0, n);
              zero_gate_units(gx + row * 3 * H, 3, H, j0, n);
              zero_gate_units(gh + row * 3 * H, 3, H, j0, n);
              copy_row(dh_prev + b * H + j0, dh + b * H + j0, n);
              continue;
            }
            gru_backward_row(g_ws + row * 4 * H + j0, hp_ws + row * H + j0, gout + row * H + j0,
                             dh + b * H + j0, gx + row * 3 * H + j0, gh + row * 3 * H + j0,
                             dh_prev + b * H + j0, n, H);
            copy_gate_units(gs + b * 3 * H, gh + row * 3 * H, 3, H, j0, n);
          }
        }
        if (!me.barrier()) return;
        accumulate_grad_h(w, me, B, gs, 3 * H, dh_prev, H);
      }
    });
  });
  const OneThreadScope one_thread(small_weight_grad(grad_hproj, hprev));
  return {grad_xproj, carry.result, weight_grad(grad_hproj, hprev),
          grad_hproj.sum(at::IntArrayRef{0, 1})};
}

// ============================================================================ LSTM

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const LayerSizes& sz, const Tensor& xproj_in, const Tensor& h0_in, const Tensor& c0_in,
    const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in,
    const std::optional<Tensor>& lengths, bool reverse, bool save_workspace) {
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = w_hr_in.has_value();
  const Schedule sched = make_schedule(T, reverse, lengths, xproj_in);
  const Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor w_hr = proj ? w_hr_in->contiguous() : Tensor();

  Tensor output = at::empty({T, B, P}, xproj.options());
  Tensor gates_ws = workspace(save_workspace, xproj, T, B, 4 * H);
  Tensor cells_ws = workspace(save_workspace, xproj, T, B, H);
  Tensor prev_cells_ws = workspace(save_workspace, xproj, T, B, H);
  Tensor hprev = workspace(save_workspace, xproj, T, B, P);
  const PingPong h_state = ping_pong(h0_in, T), c_state = ping_pong(c0_in, T);
  Tensor gates_scratch = at::empty({save_workspace ? 0 : B, 4 * H}, xproj.options());
  Tensor unprojected = at::zeros({proj ? B : 0, H}, xproj.options());  // o*tanh(c) before W_hr

  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fusedrnn::lstm_forward", [&] {
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), 4 * H, P, /*transposed=*/true,
                                   /*groups=*/4);
    const PackedWeight<scalar_t> w_r(proj ? w_hr.data_ptr<scalar_t>() : nullptr, proj ? P : 0, H,
                                     /*transposed=*/true);
    const bool packed = w.packed() && (!proj || w_r.packed());
    const TeamPlan team =
        plan_team(packed, w.num_blocks(), B * 4 * H * P + (proj ? B * P * H : 0), T, false, 4);
    Tensor full = at::empty({packed ? 0 : B, 4 * H}, xproj.options());  // W_hh h (BLAS path)
    Tensor tiles = at::empty({packed ? team.workers : 0, B, 4 * tile_units(w.num_blocks())},
                              xproj.options());
    const scalar_t* x = xproj.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    scalar_t* g_ws = save_workspace ? gates_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* c_ws = save_workspace ? cells_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* cp_ws = save_workspace ? prev_cells_ws.data_ptr<scalar_t>() : nullptr;
    scalar_t* hp_ws = save_workspace ? hprev.data_ptr<scalar_t>() : nullptr;
    scalar_t* unproj = proj ? unprojected.data_ptr<scalar_t>() : nullptr;
    scalar_t* scratch = gates_scratch.data_ptr<scalar_t>();
    scalar_t* full_data = full.data_ptr<scalar_t>();
    scalar_t* tiles_data = tiles.data_ptr<scalar_t>();
    run_team(team, w.num_blocks(), [&](Worker& me) {
      scalar_t* tile = tiles_data + me.id * tiles.stride(0);
      for (int64_t s = 0; s < T; ++s) {
        const scalar_t* h_cur = h_state.slot<scalar_t>(s);
        scalar_t* h_next = h_state.slot<scalar_t>(s + 1);
        const scalar_t* c_cur = c_state.slot<scalar_t>(s);
        scalar_t* c_next = c_state.slot<scalar_t>(s + 1);
        // Gates of the worker's hidden units (with proj, h_t waits for the W_hr product below).
        if (!packed) w.multiply(B, h_cur, P, 0, full_data, 4 * H);
        {  // the worker's units
          const auto [j0, n] = unit_range(me.block_begin, me.block_end, H);
          const auto gh = worker_product(w, me, B, h_cur, P, 4, H, full_data, tile);
          for (int64_t b = 0; b < B; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (!sched.active(s, b)) {
              copy_row(c_next + b * H + j0, c_cur + b * H + j0, n);
              if (!proj) {
                copy_row(h_next + b * H + j0, h_cur + b * H + j0, n);
                zero_row(out + row * H + j0, n);
                if (hp_ws) zero_row(hp_ws + row * H + j0, n);
              }
              if (save_workspace) {
                zero_gate_units(g_ws + row * 4 * H, 4, H, j0, n);
                zero_row(c_ws + row * H + j0, n);
                zero_row(cp_ws + row * H + j0, n);
              }
              continue;
            }
            scalar_t* h_out = proj ? unproj + b * H : h_next + b * H;
            scalar_t* ws = save_workspace ? g_ws + row * 4 * H : scratch + b * 4 * H;
            lstm_forward_row(x + row * 4 * H + j0, gh.data + b * gh.ld, c_cur + b * H + j0,
                             c_next + b * H + j0, h_out + j0, ws + j0, n, H, gh.gate_stride);
            if (!proj) {
              copy_row(out + row * H + j0, h_out + j0, n);
              if (hp_ws) copy_row(hp_ws + row * H + j0, h_cur + b * H + j0, n);
            }
            if (save_workspace) {
              copy_row(c_ws + row * H + j0, c_next + b * H + j0, n);
              copy_row(cp_ws + row * H + j0, c_cur + b * H + j0, n);
            }
          }
        }
        if (!me.barrier()) return;
        if (!proj) continue;
        // h_t = W_hr (o*tanh(c_t)) over the worker's share of the P outputs; inactive rows keep
        // h_{t-1}.
        if (!packed) w_r.multiply(B, unproj, H, 0, h_next, P);
        const auto [v0, v1] = me.share(w_r.num_blocks());
        if (packed) {
          for (int64_t v = v0; v < v1; ++v) {
            w_r.multiply_block(v, B, unproj, H, 0, h_next + v * kBlockUnits, P, 0);
          }
        }
        {  // the worker's P units
          const auto [p0, m] = unit_range(v0, v1, P);
          for (int64_t b = 0; b < B; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (sched.active(s, b)) {
              copy_row(out + row * P + p0, h_next + b * P + p0, m);
              if (hp_ws) copy_row(hp_ws + row * P + p0, h_cur + b * P + p0, m);
            } else {
              copy_row(h_next + b * P + p0, h_cur + b * P + p0, m);
              zero_row(out + row * P + p0, m);
              if (hp_ws) zero_row(hp_ws + row * P + p0, m);
            }
          }
        }
        if (!me.barrier()) return;  // unprojected is rewritten next step
      }
    });
  });
  return {output, h_state.result, c_state.result, gates_ws, cells_ws,
          prev_cells_ws, hprev};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const LayerSizes& sz, const Tensor& grad_output_in, const Tensor& grad_h_n,
    const Tensor& grad_c_n, const Tensor& w_hh_in, const std::optional<Tensor>& w_hr_in,
    const Tensor& gates_in, const Tensor& cells_in, const Tensor& prev_cells_in,
    const Tensor& hprev_in, const std::optional<Tensor>& lengths, bool reverse) {
  const int64_t T = sz.T, B = sz.B, H = sz.H, P = sz.P;
  const bool proj = w_hr_in.has_value();
  const Schedule sched = make_schedule(T, reverse, lengths, w_hh_in);
  const Tensor grad_output = grad_output_in.contiguous(), w_hh = w_hh_in.contiguous(),
               gates_ws = gates_in.contiguous(), cells = cells_in.contiguous(),
               prev_cells = prev_cells_in.contiguous(), hprev = hprev_in.contiguous();
  const Tensor w_hr = proj ? w_hr_in->contiguous() : Tensor();

  // Every row is written (zero where inactive), so no zero fill of T*B*4H first.
  Tensor grad_xproj = at::empty({T, B, 4 * H}, hprev.options());
  const PingPong carry = ping_pong(grad_h_n, T);  // d h_t / d h_{t-1}
  Tensor grad_c = grad_c_n.contiguous().clone();  // d c, updated in place row by row
  // This step's d(gate pre-activations) as a (B, 4H) matrix for the GEMM, double-buffered.
  Tensor grad_step = at::empty({2, B, 4 * H}, hprev.options());
  // With proj_size: d h_t and o*tanh(c_t) for every slot (zero where inactive), for d W_hr.
  Tensor grad_h_all = at::zeros({proj ? T : 0, B, P}, hprev.options());
  Tensor unprojected_all = at::zeros({proj ? T : 0, B, H}, hprev.options());
  Tensor grad_h_step = at::empty({proj ? B : 0, P}, hprev.options());  // d h_t of this step
  Tensor grad_unproj = at::empty({proj ? B : 0, H}, hprev.options());  // d h_t · W_hr

  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "fusedrnn::lstm_backward", [&] {
    const PackedWeight<scalar_t> w(w_hh.data_ptr<scalar_t>(), P, 4 * H, /*transposed=*/false);
    const PackedWeight<scalar_t> w_r(proj ? w_hr.data_ptr<scalar_t>() : nullptr, proj ? H : 0, P,
                                     /*transposed=*/false);
    const bool packed = w.packed() && (!proj || w_r.packed());
    const TeamPlan team =
        plan_team(packed, w.num_blocks(), B * 4 * H * P + (proj ? B * P * H : 0), T, true, 4);
    const int64_t hidden_blocks = (H + kBlockUnits - 1) / kBlockUnits;
    const scalar_t* gout = grad_output.data_ptr<scalar_t>();
    const scalar_t* g_ws = gates_ws.data_ptr<scalar_t>();
    const scalar_t* c_ws = cells.data_ptr<scalar_t>();
    const scalar_t* cp_ws = prev_cells.data_ptr<scalar_t>();
    scalar_t* gx = grad_xproj.data_ptr<scalar_t>();
    scalar_t* dc = grad_c.data_ptr<scalar_t>();
    scalar_t* grad_step_data = grad_step.data_ptr<scalar_t>();
    scalar_t* dh_all = proj ? grad_h_all.data_ptr<scalar_t>() : nullptr;
    scalar_t* r_all = proj ? unprojected_all.data_ptr<scalar_t>() : nullptr;
    scalar_t* dh_step = proj ? grad_h_step.data_ptr<scalar_t>() : nullptr;
    scalar_t* dr = proj ? grad_unproj.data_ptr<scalar_t>() : nullptr;
    // The worker's blocks: block_begin/end cover P (d h_{t-1}), `share` covers H (gates).
    run_team(team, w.num_blocks(), [&](Worker& me) {
      for (int64_t step = 0; step < T; ++step) {
        const int64_t s = T - 1 - step;
        const scalar_t* dh = carry.slot<scalar_t>(step);
        scalar_t* dh_prev = carry.slot<scalar_t>(step + 1);
        scalar_t* gs = grad_step_data + (step & 1) * B * 4 * H;
        if (proj) {
          // d h_t = d output_t + carried d h (zero if inactive), over the worker's P units; they
          // also start d h_{t-1}: zero, or d h passed through for inactive rows.
          {  // the worker's P units
            const auto [p0, m] = unit_range(me.block_begin, me.block_end, P);
            for (int64_t b = 0; b < B; ++b) {
              if (!sched.active(s, b)) {
                zero_row(dh_step + b * P + p0, m);
                copy_row(dh_prev + b * P + p0, dh + b * P + p0, m);
                continue;
              }
              const int64_t row = sched.slot(s, b) * B + b;
              for (int64_t p = p0; p < p0 + m; ++p) {
                dh_step[b * P + p] = gout[row * P + p] + dh[b * P + p];
              }
              copy_row(dh_all + row * P + p0, dh_step + b * P + p0, m);
              zero_row(dh_prev + b * P + p0, m);
            }
          }
          if (!me.barrier()) return;
          if (!packed) w_r.multiply(B, dh_step, P, 0, dr, H);  // d(o*tanh(c_t)) = d h_t · W_hr
        }
        // The worker's hidden blocks (all of them once the team has dissolved).
        const auto [u0, u1] = me.share(hidden_blocks);
        if (proj && packed) {
          for (int64_t u = u0; u < u1; ++u) {
            w_r.multiply_block(u, B, dh_step, P, 0, dr + u * kBlockUnits, H, 0);
          }
        }
        {  // the worker's hidden units
          const auto [j0, n] = unit_range(u0, u1, H);
          for (int64_t b = 0; b < B; ++b) {
            const int64_t row = sched.slot(s, b) * B + b;
            if (!sched.active(s, b)) {
              zero_gate_units(gs + b * 4 * H, 4, H, j0, n);
              zero_gate_units(gx + row * 4 * H, 4, H, j0, n);
              if (!proj) copy_row(dh_prev + b * P + j0, dh + b * P + j0, n);
              continue;
            }
            // Without proj, d(o*tanh(c)) is d output_t + carried d h_t (P == H).
            lstm_backward_row(g_ws + row * 4 * H + j0, c_ws + row * H + j0, cp_ws + row * H + j0,
                              proj ? dr + b * H + j0 : gout + row * P + j0,
                              proj ? nullptr : dh + b * P + j0, dc + b * H + j0,
                              gs + b * 4 * H + j0, proj ? r_all + row * H + j0 : nullptr, n, H);
            copy_gate_units(gx + row * 4 * H, gs + b * 4 * H, 4, H, j0, n);
            if (!proj) zero_row(dh_prev + b * P + j0, n);
          }
        }
        if (!me.barrier()) return;
        // d h_{t-1} += d gates · W_hh  (inactive rows have zero gate grads and pass d h through)
        accumulate_grad_h(w, me, B, gs, 4 * H, dh_prev, P);
      }
    });
  });
  const OneThreadScope one_thread(small_weight_grad(grad_xproj, hprev));
  Tensor grad_w_hr = proj ? weight_grad(grad_h_all, unprojected_all)
                          : at::empty({0}, hprev.options());
  return {grad_xproj, carry.result, grad_c, weight_grad(grad_xproj, hprev), grad_w_hr};
}

struct CpuLoops {
  static constexpr auto rnn_forward = &cpu::rnn_forward;
  static constexpr auto rnn_backward = &cpu::rnn_backward;
  static constexpr auto gru_forward = &cpu::gru_forward;
  static constexpr auto gru_backward = &cpu::gru_backward;
  static constexpr auto lstm_forward = &cpu::lstm_forward;
  static constexpr auto lstm_backward = &cpu::lstm_backward;
};

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("time_loop_forward", &thread_limited<&TimeLoopOps<CpuLoops>::forward>::call);
  m.impl("time_loop_backward", &thread_limited<&TimeLoopOps<CpuLoops>::backward>::call);
}

}  // namespace cpu
}  // namespace fusedrnn
