// One step of RNNCell / GRUCell / LSTMCell on the CPU, forward and backward, each a single op.
//
// A cell runs one step per call, so at small sizes the per-call cost is the whole story: the
// layer path (an input-projection op, then a time-loop op with T = 1) spends more on op calls,
// packing W_hh and setting up its loop than on arithmetic, and at large sizes packing W_hh for
// one step reads and writes the whole weight once more. Here a step is two BLAS calls
// (x·W_ihᵀ and h·W_hhᵀ, each weight read once) and one pass of the cells' row kernels
// (row_kernels.h), allocating little more than what it returns. Backward likewise: the row
// kernels' gate derivatives, then BLAS for d x and d h and one GEMM per weight gradient.
// Shapes are documented with the schemas in csrc/ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>

#include "../cell.h"
#include "../op_checks.h"
#include "blas.h"
#include "blocking.h"
#include "row_kernels.h"
#include "rows_dot.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {
namespace {

using at::Tensor;

// Hidden units (summed over gates) a task of the pointwise pass should have before a second
// thread is worth waking.
constexpr int64_t kMinUnitsPerTask = 16384;

// The rows of the cell's workspace parts before hprev (csrc/cell_table.h) inside one row of
// the one-step op's workspace, where they lie side by side (step_workspace_units() * H).
template <typename Ptr>
void step_workspace_rows(const CellSpec& cell, Ptr row, int64_t H, Ptr* parts) {
  int64_t offset = 0;
  for (int i = 0; i < cell.workspace_parts - 1; ++i) {
    parts[i] = row + offset;
    offset += cell.workspace[i].units * H;
  }
}

// Weight bytes a task of the unit-split step (below) should read before a second thread is
// worth waking: ~2 us of streaming from L2.
constexpr int64_t kMinWeightBytesPerTask = 256 << 10;

// One forward step at a small batch (B ≤ kMaxDotRows, float) with its hidden units split over
// the intra-op threads: each task takes whole 16-unit blocks, computes its units' rows of
// x·W_ihᵀ and h·W_hhᵀ in every gate (rows_dot: each weight row read once, by one thread, so each
// core keeps its share of the weights in its own L2 from call to call), then runs the row
// kernels on those units of every batch row. No barrier: a unit's gates need only its own rows.
// row(b, u0, u1) runs the row kernels of batch row b on units [u0, u1).
template <typename RowFn>
void unit_split_step(int64_t B, int64_t G, int64_t H, int64_t I, const float* x,
                     const float* h, const float* w_ih, const float* w_hh, bool x_has_bias,
                     float* xg, float* hg, const RowFn& row) {
  const int64_t blocks = (H + kBlockUnits - 1) / kBlockUnits;
  const int64_t block_bytes = kBlockUnits * G * (I + H) * static_cast<int64_t>(sizeof(float));
  const int64_t grain = std::max<int64_t>(1, kMinWeightBytesPerTask / block_bytes);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    const int64_t u0 = begin * kBlockUnits, u1 = std::min(H, end * kBlockUnits);
    for (int64_t k = 0; k < G; ++k) {
      const int64_t r0 = k * H + u0;
      rows_dot(B, u1 - u0, I, x, I, w_ih + r0 * I, I, xg + r0, G * H, x_has_bias);
      rows_dot(B, u1 - u0, H, h, H, w_hh + r0 * H, H, hg + r0, G * H, false);
    }
    for (int64_t b = 0; b < B; ++b) row(b, u0, u1);
  });
}

// fn(b) for every batch row b, split over the intra-op pool when the rows are wide enough.
template <typename Fn>
void for_each_row(int64_t B, int64_t units_per_row, const Fn& fn) {
  const int64_t grain =
      std::max<int64_t>(1, kMinUnitsPerTask / std::max<int64_t>(1, units_per_row));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) fn(b);
  });
}

// One forward step of `cell` into buffers the caller allocated, every tensor contiguous with
// the (B, *) rows of csrc/ops.cpp (a leading dimension of 1 changes nothing): x (B, I), h (B, H),
// c (B, H) for LSTM (else undefined), the weights, b_ih/b_hh (G*H) or undefined; writes h_new
// (B, H), c_new (B, H) for LSTM, the workspace ws (B, W) (all of it, saved or not) and out_rows
// (B, H), the copy of h' a layer returns as its output (undefined: written to scratch).
void forward_step(Cell cell, const CellSizes& sz, const Tensor& x, const Tensor& h,
                  const Tensor& c, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
                  const Tensor& b_hh, const Tensor& h_new, const Tensor& c_new, const Tensor& ws,
                  const Tensor& out_rows_in) {
  const CellSpec& cs = spec(cell);
  const bool lstm = cs.has_cell_state(), gru = cs.b_hh_in_step, bias = b_ih.defined();
  const int64_t G = cs.gates;
  const int64_t B = sz.B, I = sz.I, H = sz.H, GH = G * H, W = cs.step_workspace_units() * H;
  // x·W_ihᵀ (GRU: + b_ih) and h·W_hhᵀ, each (B, G*H); the copy of h' unless the caller keeps
  // it; the row kernels' step bias (G*H) where it is not GRU's b_hh: b_ih + b_hh, or zeros
  // without bias (as the layer loops add it: csrc/autograd.h split_biases).
  const int64_t scratch_out_rows = out_rows_in.defined() ? 0 : B * H;
  Tensor scratch = at::empty({2 * B * GH + scratch_out_rows + GH}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fusedrnn::cell_forward", [&] {
    scalar_t* xg = scratch.data_ptr<scalar_t>();
    scalar_t* hg = xg + B * GH;
    scalar_t* out_rows = out_rows_in.defined() ? out_rows_in.data_ptr<scalar_t>() : hg + B * GH;
    const scalar_t* bi = bias ? b_ih.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bh = bias ? b_hh.data_ptr<scalar_t>() : nullptr;
    const bool b_ih_in_x = gru && bias;  // the GRU's b_hn sits in r * (.): b_ih goes with x
    if (b_ih_in_x) {
      for (int64_t b = 0; b < B; ++b) std::copy(bi, bi + GH, xg + b * GH);
    }
    scalar_t* combined = hg + B * GH + scratch_out_rows;
    for (int64_t j = 0; j < GH; ++j) combined[j] = bias ? bi[j] + bh[j] : scalar_t(0);
    const scalar_t* step_bias = b_ih_in_x ? bh : combined;
    const scalar_t* h_cur = h.data_ptr<scalar_t>();
    const scalar_t* c_cur = lstm ? c.data_ptr<scalar_t>() : nullptr;
    scalar_t* h_next = h_new.data_ptr<scalar_t>();
    scalar_t* c_next = lstm ? c_new.data_ptr<scalar_t>() : nullptr;
    scalar_t* ws_data = ws.data_ptr<scalar_t>();
    visit_cell(cell, [&](auto c_) {
      constexpr Cell C = decltype(c_)::value;
      // The row kernels of batch row b on units [u0, u1).
      const auto row = [&](int64_t b, int64_t u0, int64_t u1) {
        ForwardRow<scalar_t> r{};
        r.x = xg + b * GH + u0;
        r.gh = hg + b * GH + u0;
        r.gh_stride = H;
        r.params = step_bias + u0;
        r.h_cur = h_cur + b * H + u0;
        r.h_new = h_next + b * H + u0;
        r.out = out_rows + b * H + u0;
        r.c_cur = lstm ? c_cur + b * H + u0 : nullptr;
        r.c_new = lstm ? c_next + b * H + u0 : nullptr;
        step_workspace_rows(cs, ws_data + b * W + u0, H, r.ws);
        r.save = true;  // (a scratch when not saved: all of it is written either way)
        r.n = u1 - u0;
        r.H = H;
        CpuCell<C>::forward(r);
      };
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (B <= kMaxDotRows && rows_dot_available()) {
          unit_split_step(B, G, H, I, x.data_ptr<float>(), h_cur, w_ih.data_ptr<float>(),
                          w_hh.data_ptr<float>(), b_ih_in_x, xg, hg, row);
          return;
        }
      }
      gemm_rowmajor<scalar_t>(B, GH, I, x.data_ptr<scalar_t>(), I, false,
                              w_ih.data_ptr<scalar_t>(), I, /*b_is_nk=*/true, b_ih_in_x ? 1 : 0,
                              xg, GH);
      gemm_rowmajor<scalar_t>(B, GH, H, h_cur, H, false, w_hh.data_ptr<scalar_t>(), H,
                              /*b_is_nk=*/true, 0, hg, GH);
      for_each_row(B, GH, [&](int64_t b) { row(b, 0, H); });
    });
  });
}

// A cell step's inputs made contiguous (c and the biases undefined where absent).
struct StepInputs {
  Tensor x, h, c, w_ih, w_hh, b_ih, b_hh;
};
StepInputs contiguous_inputs(const Tensor& x, const Tensor& h, const std::optional<Tensor>& c,
                             const Tensor& w_ih, const Tensor& w_hh,
                             const std::optional<Tensor>& b_ih,
                             const std::optional<Tensor>& b_hh) {
  auto or_undefined = [](const std::optional<Tensor>& t) {
    return t.has_value() ? t->contiguous() : Tensor();
  };
  return {x.contiguous(), h.contiguous(), or_undefined(c),     w_ih.contiguous(),
          w_hh.contiguous(), or_undefined(b_ih), or_undefined(b_hh)};
}

std::tuple<Tensor, Tensor, Tensor> cell_forward(
    c10::string_view cell_name, const Tensor& x_in, const Tensor& h_in,
    const std::optional<Tensor>& c_in, const Tensor& w_ih_in, const Tensor& w_hh_in,
    const std::optional<Tensor>& b_ih_in, const std::optional<Tensor>& b_hh_in,
    bool save_workspace) {
  const Cell cell = parse_cell(cell_name);
  const CellSpec& cs = spec(cell);
  const CellSizes sz =
      check_cell_inputs(cs, x_in, h_in, c_in, w_ih_in, w_hh_in, b_ih_in, b_hh_in);
  const StepInputs in = contiguous_inputs(x_in, h_in, c_in, w_ih_in, w_hh_in, b_ih_in, b_hh_in);
  const at::TensorOptions options = in.x.options();
  Tensor h_new = at::empty({sz.B, sz.H}, options);
  Tensor c_new = at::empty({cs.has_cell_state() ? sz.B : 0, sz.H}, options);
  // A scratch when not saved. (Kept out of forward_step's scratch: in it, B = 8 H = 256 cell
  // steps measured 10-18% slower, for a reason not found; not malloc mapping fresh pages, as the
  // same held with glibc's mmap threshold raised.)
  Tensor ws = at::empty({sz.B, cs.step_workspace_units() * sz.H}, options);
  forward_step(cell, sz, in.x, in.h, in.c, in.w_ih, in.w_hh, in.b_ih, in.b_hh, h_new, c_new, ws,
               Tensor());
  return {h_new, c_new, save_workspace ? ws : at::empty({0}, options)};
}

// One step of a one-layer, one-direction stack, shaped as recurrent_stack returns it (a decoder
// calling its layer once per token): x (1, B, I), h0/c0 (1, B, H); returns output (1, B, H),
// h_n (1, B, H) and c_n (1, B, H) for LSTM, else (0). The step's arithmetic is cell_forward's;
// what it saves at T = 1 is the selects, unsqueezes, the output's copy and the stacking of
// states around a cell_forward call. Where a gradient is needed its Autograd kernel
// (csrc/autograd.cpp) takes cell_forward's differentiable path instead.
std::tuple<Tensor, Tensor, Tensor> layer_step(
    c10::string_view cell_name, const Tensor& x_in, const Tensor& h_in,
    const std::optional<Tensor>& c_in, const Tensor& w_ih_in, const Tensor& w_hh_in,
    const std::optional<Tensor>& b_ih_in, const std::optional<Tensor>& b_hh_in) {
  const Cell cell = parse_cell(cell_name);
  const CellSpec& cs = spec(cell);
  const CellSizes sz = check_cell_inputs(cs, x_in, h_in, c_in, w_ih_in, w_hh_in, b_ih_in,
                                         b_hh_in, /*layer_step=*/true);
  const StepInputs in = contiguous_inputs(x_in, h_in, c_in, w_ih_in, w_hh_in, b_ih_in, b_hh_in);
  const at::TensorOptions options = in.x.options();
  Tensor output = at::empty({1, sz.B, sz.H}, options);
  Tensor h_n = at::empty({1, sz.B, sz.H}, options);
  Tensor c_n = cs.has_cell_state() ? at::empty({1, sz.B, sz.H}, options) : at::empty({0}, options);
  Tensor ws = at::empty({sz.B, cs.step_workspace_units() * sz.H}, options);  // a scratch
  forward_step(cell, sz, in.x, in.h, in.c, in.w_ih, in.w_hh, in.b_ih, in.b_hh, h_n, c_n, ws,
               output);
  return {output, h_n, c_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cell_backward(
    c10::string_view cell_name, const Tensor& grad_h_new_in,
    const std::optional<Tensor>& grad_c_new_in, const Tensor& x_in, const Tensor& h_in,
    const std::optional<Tensor>& c_in, const Tensor& w_ih_in, const Tensor& w_hh_in,
    const Tensor& ws_in, bool bias, bool need_grad_x, bool need_grad_h) {
  const Cell cell = parse_cell(cell_name);
  const CellSpec& cs = spec(cell);
  const bool lstm = cs.has_cell_state(), gru = cs.own_recurrent_grad();
  const int64_t G = cs.gates;
  const CellSizes sz = check_cell_inputs(cs, x_in, h_in, c_in, w_ih_in, w_hh_in, std::nullopt,
                                         std::nullopt);
  const int64_t B = sz.B, I = sz.I, H = sz.H, GH = G * H, W = cs.step_workspace_units() * H;
  check_tensor(grad_h_new_in, x_in, "grad_h_new", {B, H});
  TORCH_CHECK(grad_c_new_in.has_value() == lstm, "fusedrnn: grad_c_new is ",
              lstm ? "needed" : "only for lstm");
  if (lstm) check_tensor(*grad_c_new_in, x_in, "grad_c_new", {B, H});
  TORCH_CHECK(ws_in.dim() == 2, "fusedrnn: backward needs the forward's workspace (run forward "
              "with save_workspace=True)");
  check_tensor(ws_in, x_in, "workspace", {B, W});
  const Tensor x = x_in.contiguous(), h = h_in.contiguous(), w_ih = w_ih_in.contiguous(),
               w_hh = w_hh_in.contiguous(), ws = ws_in.contiguous(),
               grad_h_new = grad_h_new_in.contiguous();
  const Tensor c = lstm ? c_in->contiguous() : Tensor();
  const at::TensorOptions options = x.options();

  // d of the pre-activations: through x·W_ihᵀ + b_ih (grad_pre) and through h·W_hhᵀ + b_hh
  // (grad_rec; the same for RNN and LSTM, where both sums enter the gates alike).
  Tensor grad_pre = at::empty({B, GH}, options);
  Tensor grad_rec = gru ? at::empty({B, GH}, options) : grad_pre;
  Tensor grad_x = need_grad_x ? at::empty({B, I}, options) : at::empty({0}, options);
  Tensor grad_h = at::empty({B, H}, options);  // the GRU row kernel writes its direct part
  // d c' in, d c out (the row kernel updates it in place).
  Tensor grad_c = lstm ? grad_c_new_in->contiguous().clone() : at::empty({0}, options);
  Tensor no_carry = at::zeros({H}, options);  // d h from later steps: none
  Tensor grad_w_ih = at::empty({GH, I}, options), grad_w_hh = at::empty({GH, H}, options);
  Tensor grad_b_ih = at::empty({bias ? GH : 0}, options);
  Tensor grad_b_hh = at::empty({bias ? GH : 0}, options);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fusedrnn::cell_backward", [&] {
    const scalar_t* wsd = ws.data_ptr<scalar_t>();
    const scalar_t* dh_out = grad_h_new.data_ptr<scalar_t>();
    const scalar_t* h_prev = h.data_ptr<scalar_t>();
    const scalar_t* zeros = no_carry.data_ptr<scalar_t>();
    scalar_t* gp = grad_pre.data_ptr<scalar_t>();
    scalar_t* gr = grad_rec.data_ptr<scalar_t>();
    scalar_t* dh = grad_h.data_ptr<scalar_t>();
    scalar_t* dc = lstm ? grad_c.data_ptr<scalar_t>() : nullptr;
    // Row pass. d h starts as its direct part (GRU: d h' * z; RNN and LSTM: zero, where the
    // GEMM below writes all of it).
    visit_cell(cell, [&](auto c_) {
      constexpr Cell C = decltype(c_)::value;
      for_each_row(B, GH, [&](int64_t b) {
        BackwardRow<scalar_t> r{};
        step_workspace_rows(cs, wsd + b * W, H, r.ws);
        r.ws[cs.workspace_parts - 1] = h_prev + b * H;  // hprev: the op's own input h
        r.grad_out = dh_out + b * H;
        r.dh = zeros;
        r.dc = lstm ? dc + b * H : nullptr;
        r.grad_step = gr + b * GH;
        r.grad_x = gru ? gp + b * GH : nullptr;
        r.dh_prev = dh + b * H;
        r.n = r.H = H;
        CpuCell<C>::backward(r);
      });
    });
    // d h (+)= grad_rec · W_hh;  d x = grad_pre · W_ih;  d W_ih = grad_preᵀ · x;
    // d W_hh = grad_recᵀ · h;  d b = the column sums. Straight to BLAS and plain loops: through
    // ATen these five would cost more than the whole step at small sizes.
    const scalar_t* w_hh_data = w_hh.data_ptr<scalar_t>();
    const scalar_t* w_ih_data = w_ih.data_ptr<scalar_t>();
    if (need_grad_h) {
      gemm_rowmajor<scalar_t>(B, H, GH, gr, GH, false, w_hh_data, H, /*b_is_nk=*/false,
                              gru ? 1 : 0, dh, H);
    }
    if (need_grad_x) {
      gemm_rowmajor<scalar_t>(B, I, GH, gp, GH, false, w_ih_data, I, /*b_is_nk=*/false, 0,
                              grad_x.data_ptr<scalar_t>(), I);
    }
    gemm_rowmajor<scalar_t>(GH, I, B, gp, GH, /*a_is_km=*/true, x.data_ptr<scalar_t>(), I,
                            /*b_is_nk=*/false, 0, grad_w_ih.data_ptr<scalar_t>(), I);
    gemm_rowmajor<scalar_t>(GH, H, B, gr, GH, /*a_is_km=*/true, h_prev, H, /*b_is_nk=*/false, 0,
                            grad_w_hh.data_ptr<scalar_t>(), H);
    if (bias) {
      scalar_t* db_ih = grad_b_ih.data_ptr<scalar_t>();
      scalar_t* db_hh = grad_b_hh.data_ptr<scalar_t>();
      // Column sums; RNN and LSTM have one pre-activation gradient for both biases.
      const auto column_sums = [&](const scalar_t* rows, scalar_t* sums) {
        std::fill(sums, sums + GH, scalar_t(0));
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t j = 0; j < GH; ++j) sums[j] += rows[b * GH + j];
        }
      };
      column_sums(gp, db_ih);
      if (gru) {
        column_sums(gr, db_hh);
      } else {
        std::copy(db_ih, db_ih + GH, db_hh);
      }
    }
  });
  return {grad_x, need_grad_h ? grad_h : at::empty({0}, options), grad_c, grad_w_ih, grad_w_hh,
          grad_b_ih, grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("cell_forward", &thread_limited<&cell_forward>::call);
  m.impl("layer_step", &thread_limited<&layer_step>::call);
  m.impl("cell_backward", &thread_limited<&cell_backward>::call);
}

}  // namespace cpu
}  // namespace fusedrnn
