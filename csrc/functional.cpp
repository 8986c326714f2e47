// The functional ops: one layer/direction (input projection + fused time loop) and a whole stack
// of layers x directions, as torch.nn.RNN/GRU/LSTM compute it. CompositeImplicitAutograd: they
// are written in ATen ops and the fused ops, so autograd, every backend and torch.compile see
// through them. In C++ because the same composition in Python (fusedrnn/functional.py before)
// cost ~60 us of interpreter and dispatch per module call, several times the arithmetic of a
// 300-step H=32 layer. Shapes are documented with the schemas in csrc/ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "autograd.h"
#include "cell.h"
#include "host_threads.h"
#include "op_checks.h"
#include "op_handle.h"

namespace fusedrnn {
namespace {

using at::Tensor;
using ops::OptTensor;

// Returned in place of c_n by cells without a cell state (a schema cannot return None).
Tensor no_cell_state(const Tensor& like) { return at::empty({0}, like.options()); }

// A real CPU tensor: no tracing, functionalization or functorch wrapper, no Python subclass.
bool plain_cpu(const Tensor& t) {
  static const c10::DispatchKeySet allowed{c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                           c10::DispatchKey::AutogradCPU,
                                           c10::DispatchKey::AutocastCPU};
  return !t.defined() || allowed.isSupersetOf(t.key_set());
}

// x (T, B, I) @ w_ih (G*H, I)^T + bias: on real CPU tensors projection_linear (the CPU's packed
// kernels where they beat torch's GEMM; forward and backward on one thread when small:
// host_threads::gemm_too_small_to_split), elsewhere torch's linear.
Tensor input_projection(const Tensor& x, const Tensor& w_ih, const OptTensor& bias) {
  if (!plain_cpu(x) || !plain_cpu(w_ih) || !plain_cpu(bias.value_or(Tensor()))) {
    return at::linear(x, w_ih, bias);
  }
  return projection_linear(x, w_ih, bias,
                           host_threads::gemm_too_small_to_split(x.numel() * w_ih.size(0)));
}

// Whether x's backend implements the one-step op (cell_forward): the CPU; also the Meta key
// (its fake kernel), where both paths give the same shapes.
bool has_one_step_op(const Tensor& x) {
  return ops::cell_forward().hasKernelForDispatchKey(
      c10::computeDispatchKey(std::nullopt, x.layout(), x.device()));
}

// A normalised cell's input side and step parameters (csrc/ops.cpp): xproj = LN(x W_ih^T; γ_ih)
// (+ the projection's bias where the cell keeps b_ih out of the step), no β of its own, as
// haste's; the step parameters are the step's bias (zeros without one) then the cell's own,
// extra[1:] (csrc/cell_table.h: extra_weights).
std::pair<Tensor, Tensor> normalized_step_inputs(const Tensor& x, const Tensor& w_ih,
                                                 const OptTensor& projection_bias,
                                                 const OptTensor& step_bias,
                                                 at::TensorList extra) {
  const Tensor& gamma_ih = extra[0];
  const Tensor xproj = at::layer_norm_symint(input_projection(x, w_ih, std::nullopt),
                                             {gamma_ih.sym_size(0)}, gamma_ih, projection_bias,
                                             kLayerNormEps);
  std::vector<Tensor> params{step_bias.has_value() ? *step_bias : at::zeros_like(gamma_ih)};
  params.insert(params.end(), extra.begin() + 1, extra.end());
  return {xproj, at::cat(params)};
}

// Whether a layer's call is one cell step: one step without lengths or projection (a decoder
// calling the layer once per token), where x's backend has the one-step op, which does it in one
// call without packing W_hh for a single use. (The cell op takes both biases or neither, c only
// for the LSTM, and a dense W_hh.)
bool runs_as_cell_step(Cell cell, const Tensor& x, const OptTensor& lengths, bool has_w_hr,
                       bool both_biases_or_neither) {
  return x.sym_size(0) == 1 && !lengths.has_value() && !has_w_hr && both_biases_or_neither &&
         !spec(cell).diagonal() && !spec(cell).normalized() && has_one_step_op(x);
}

// Whether x's backend runs a layer's two directions in one call (time_loop_pair_forward: the
// CUDA backend, which launches both at once where it can; its fake kernel under tracing).
bool has_pair_op(const Tensor& x) {
  return ops::time_loop_pair_forward().hasKernelForDispatchKey(
      c10::computeDispatchKey(std::nullopt, x.layout(), x.device()));
}

// A layer-direction's time-loop inputs, xproj (T, B, G*H) and the step parameters, and how xproj
// was made (for double backward: remember_projection).
struct LoopInputs {
  Tensor xproj;
  OptTensor step_params, projection_bias, layer_norm_gain;
};
LoopInputs loop_inputs(Cell cell, const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih,
                       const OptTensor& b_hh, at::TensorList extra) {
  auto [projection_bias, step_params] = split_biases(cell, b_ih, b_hh);
  if (spec(cell).normalized()) {
    auto [xproj, params] = normalized_step_inputs(x, w_ih, projection_bias, step_params, extra);
    return {xproj, params, projection_bias, extra[0]};
  }
  return {input_projection(x, w_ih, projection_bias), step_params, projection_bias,
          std::nullopt};
}

// The fused ops' Autograd kernels (csrc/autograd.cpp) decide whether to save workspaces.
constexpr bool kSaveWorkspace = false;

// One layer, one direction. x (T, B, I); h0 (B, P); c0 (B, H) for LSTM; extra: the cell's extra
// weights (csrc/cell_table.h).
std::tuple<Tensor, Tensor, Tensor> layer(Cell cell, const Tensor& x, const Tensor& h0,
                                         const OptTensor& c0, const Tensor& w_ih,
                                         const Tensor& w_hh, const OptTensor& b_ih,
                                         const OptTensor& b_hh, const OptTensor& w_hr,
                                         const OptTensor& lengths, bool reverse,
                                         int64_t cuda_loop, at::TensorList extra = {}) {
  if (runs_as_cell_step(cell, x, lengths, w_hr.has_value(),
                        b_ih.has_value() == b_hh.has_value())) {
    const bool has_c = spec(cell).has_cell_state();
    auto [h_n, c_n, workspace] =
        ops::cell_forward().call(spec(cell).name, x[0], h0, has_c ? c0 : std::nullopt, w_ih, w_hh,
                                 b_ih, b_hh, kSaveWorkspace);
    // The output is a copy: as with torch.nn, an in-place op on it must leave h_n alone.
    return {h_n.unsqueeze(0).clone(), h_n, has_c ? c_n : no_cell_state(h_n)};
  }
  const LoopInputs in = loop_inputs(cell, x, w_ih, b_ih, b_hh, extra);
  // (c0 of a cell without a cell state is ignored, as the one-step path above does.)
  auto [out, h_n, c_n, workspace] = ops::time_loop_forward().call(
      spec(cell).name, in.xproj, h0, spec(cell).has_cell_state() ? c0 : std::nullopt, w_hh,
      in.step_params, w_hr, lengths, reverse, kSaveWorkspace, cuda_loop);
  // For double backward: xproj's recipe (a normalised one: normalized_step_inputs' γ_ih).
  remember_projection(out, x, w_ih, in.projection_bias, in.layer_norm_gain);
  return {out, h_n, c_n};
}

// One layer's two directions (direction 1 reversed) in one call of the pair op; per direction
// the weights of `layer`.
struct DirectionWeights {
  Tensor h0;
  OptTensor c0;
  Tensor w_ih, w_hh;
  OptTensor b_ih, b_hh, w_hr;
  at::TensorList extra;
};
std::array<std::tuple<Tensor, Tensor, Tensor>, 2> both_directions(
    Cell cell, const Tensor& x, const std::array<DirectionWeights, 2>& w,
    const OptTensor& lengths, int64_t cuda_loop) {
  const bool has_c = spec(cell).has_cell_state();
  std::array<LoopInputs, 2> in;
  std::vector<Tensor> xproj, h0, c0, w_hh, step_params, w_hr;
  for (int d = 0; d < 2; ++d) {
    in[d] = loop_inputs(cell, x, w[d].w_ih, w[d].b_ih, w[d].b_hh, w[d].extra);
    xproj.push_back(in[d].xproj);
    h0.push_back(w[d].h0);
    if (has_c) c0.push_back(*w[d].c0);
    w_hh.push_back(w[d].w_hh);
    if (in[d].step_params.has_value()) step_params.push_back(*in[d].step_params);
    if (w[d].w_hr.has_value()) w_hr.push_back(*w[d].w_hr);
  }
  auto [out, h_n, c_n, workspace] = ops::time_loop_pair_forward().call(
      spec(cell).name, xproj, h0, c0, w_hh, step_params, w_hr, lengths, kSaveWorkspace,
      cuda_loop);
  for (int d = 0; d < 2; ++d) {
    remember_projection(out[0], x, w[d].w_ih, in[d].projection_bias, in[d].layer_norm_gain, d);
  }
  return {std::tuple{out[0], h_n[0], c_n[0]}, std::tuple{out[1], h_n[1], c_n[1]}};
}

std::tuple<Tensor, Tensor, Tensor> recurrent_layer(
    c10::string_view cell, const Tensor& x, const Tensor& h0, const OptTensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, const OptTensor& lengths, bool reverse, int64_t cuda_loop) {
  const host_threads::LimitWhileContended limit;  // the projection's GEMM among others
  const Cell c = parse_cell(cell);
  TORCH_CHECK(spec(c).extra_weights == 0, "fusedrnn: recurrent_layer takes torch.nn's weights "
              "only; ", cell, " has more: call recurrent_stack");
  return layer(c, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, cuda_loop);
}

// Whether the two directions of a layer may run on two threads at once: real CPU tensors only
// (a tracer or a Python dispatch mode must see one thread) and a step small enough that each
// direction does no better with a team of its own (host_threads::run_directions_concurrently).
bool directions_concurrently(const Tensor& x, const OptTensor& h0, const OptTensor& c0,
                             at::TensorList weights, const OptTensor& lengths,
                             const OptTensor& w_hr) {
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return false;
  if (!plain_cpu(x) || !plain_cpu(h0.value_or(Tensor())) || !plain_cpu(c0.value_or(Tensor())) ||
      !plain_cpu(lengths.value_or(Tensor()))) {
    return false;
  }
  for (const Tensor& w : weights) {
    if (!plain_cpu(w)) return false;
  }
  // weights[1] is w_hh (G*H, P); w_hr (P, H) the first group's with proj_size.
  const int64_t recurrent_weights = weights[1].numel() + (w_hr.has_value() ? w_hr->numel() : 0);
  return host_threads::run_directions_concurrently(x.size(0), x.size(1) * recurrent_weights);
}

// Dropout between layers on a padded (T, B, F) layer output. With lengths on the CPU, drawn as
// torch.nn draws it for PackedSequence input: over the packed rows (sum(lengths), F), in
// pack_padded_sequence's order (lengths sorted decreasing; unsorted lengths are sorted first, as
// pack_padded_sequence(enforce_sorted=False) does), so the same seed gives the same masks. On
// CUDA torch.nn's masks come from cuDNN's own generator, which nothing else reproduces.
// (Padded draws where the packed ones are not defined or cannot be traced: zero lengths, which
// no PackedSequence has, and tensors under tracing or a dispatch mode.)
Tensor dropout_between_layers(const Tensor& layer_output, const OptTensor& lengths, double p) {
  const bool packed_draws = lengths.has_value() && layer_output.is_cpu() && lengths->is_cpu() &&
                            plain_cpu(layer_output) && plain_cpu(*lengths) &&
                            c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
                            (*lengths > 0).all().item<bool>();
  if (!packed_draws) return at::dropout(layer_output, p, /*train=*/true);
  const Tensor& lens = *lengths;
  const bool sorted =
      lens.numel() < 2 || (lens.slice(0, 1) <= lens.slice(0, 0, -1)).all().item<bool>();
  Tensor order, padded = layer_output, sorted_lengths = lens;
  if (!sorted) {
    std::tie(sorted_lengths, order) = lens.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true);
    padded = layer_output.index_select(1, order);
  }
  const auto [data, batch_sizes] = at::_pack_padded_sequence(padded, sorted_lengths, false);
  Tensor out = std::get<0>(at::_pad_packed_sequence(at::dropout(data, p, /*train=*/true),
                                                    batch_sizes, false, 0.0,
                                                    layer_output.size(0)));
  return sorted ? out : out.index_select(1, at::argsort(order));
}

// States of every (layer, direction), stacked as torch.nn returns them: (L*D, B, *).
Tensor stack_states(const std::vector<Tensor>& states) {
  return states.size() == 1 ? states[0].unsqueeze(0) : at::stack(states);
}

std::tuple<Tensor, Tensor, Tensor> recurrent_stack(
    c10::string_view cell_name, const Tensor& x, const OptTensor& h0_in, const OptTensor& c0_in,
    at::TensorList flat_weights, int64_t num_layers, bool bidirectional, bool bias,
    int64_t proj_size, double dropout, bool train, const OptTensor& lengths, int64_t cuda_loop) {
  const host_threads::LimitWhileContended limit;  // the projections' GEMMs among others
  const Cell cell = parse_cell(cell_name);
  const int64_t num_directions = bidirectional ? 2 : 1;
  const bool has_proj = proj_size > 0;
  // torch.nn's flat order per (layer, direction): w_ih, w_hh, [b_ih, b_hh], [w_hr], then the
  // cell's extra weights (csrc/cell_table.h).
  TORCH_CHECK(num_layers >= 1, "fusedrnn: num_layers must be at least 1, got ", num_layers);
  const int64_t torch_per_group = 2 + 2 * bias + has_proj;
  const int64_t per_group = torch_per_group + spec(cell).extra_weights;
  TORCH_CHECK(static_cast<int64_t>(flat_weights.size()) == num_layers * num_directions * per_group,
              "fusedrnn: expected ", num_layers * num_directions * per_group,
              " weights for this stack, got ", flat_weights.size());
  TORCH_CHECK(cell == Cell::Lstm || !has_proj, "fusedrnn: proj_size is only supported for lstm");
  TORCH_CHECK(x.dim() == 3, "fusedrnn: x must be (T, B, I), got ", x.sizes());
  // No state given: zeros, as torch.nn starts from; h (L*D, B, P), c (L*D, B, H) for LSTM.
  // Made here rather than by the caller: one op fewer per module call.
  const Tensor& w_hh0 = flat_weights[1];  // (G*H, P), or (G*H) for a diagonal recurrence
  check_w_hh_rank(spec(cell), w_hh0);  // before its sizes are read
  const int64_t groups = num_layers * num_directions;
  // Symbolic sizes, so torch.compile keeps the batch size dynamic.
  const c10::SymInt H = w_hh0.sym_size(0) / spec(cell).gates;
  const c10::SymInt P = spec(cell).diagonal() ? H : w_hh0.sym_size(1);
  const Tensor h0 =
      h0_in.has_value() ? *h0_in : at::zeros_symint({groups, x.sym_size(1), P}, x.options());
  OptTensor c0 = c0_in;
  if (spec(cell).has_cell_state() && !c0.has_value()) {
    c0 = at::zeros_symint({groups, x.sym_size(1), H}, x.options());
  }
  // One step of one layer and direction (a decoder calling its layer once per token): the
  // layer_step op returns the stack's shapes directly.
  if (groups == 1 && spec(cell).extra_weights == 0 &&
      runs_as_cell_step(cell, x, lengths, has_proj, /*both_biases_or_neither=*/true)) {
    return ops::layer_step().call(
        cell_name, x, h0, spec(cell).has_cell_state() ? c0 : std::nullopt, flat_weights[0],
        flat_weights[1], bias ? OptTensor(flat_weights[2]) : std::nullopt,
        bias ? OptTensor(flat_weights[3]) : std::nullopt);
  }
  const bool concurrent =
      bidirectional &&
      directions_concurrently(x, h0_in, c0_in, flat_weights, lengths,
                              has_proj ? OptTensor(flat_weights[torch_per_group - 1]) : std::nullopt);
  // A bidirectional layer in one call of the pair op where x's backend has it (CUDA), unless
  // its steps are cell steps.
  const bool pair = bidirectional && !concurrent && has_pair_op(x) &&
                    !runs_as_cell_step(cell, x, lengths, has_proj, /*both_biases_or_neither=*/true);
  std::vector<Tensor> h_n, c_n;
  Tensor layer_input = x;
  for (int64_t l = 0; l < num_layers; ++l) {
    std::array<std::tuple<Tensor, Tensor, Tensor>, 2> results;
    auto weights = [&](int64_t d) {
      const int64_t g = l * num_directions + d;
      const Tensor* w = flat_weights.data() + g * per_group;
      return DirectionWeights{h0[g],
                              c0.has_value() ? OptTensor((*c0)[g]) : std::nullopt,
                              w[0],
                              w[1],
                              bias ? OptTensor(w[2]) : std::nullopt,
                              bias ? OptTensor(w[3]) : std::nullopt,
                              has_proj ? OptTensor(w[torch_per_group - 1]) : std::nullopt,
                              at::TensorList(w + torch_per_group, spec(cell).extra_weights)};
    };
    auto run_direction = [&](int64_t d) {
      const DirectionWeights w = weights(d);
      results[d] = layer(cell, layer_input, w.h0, w.c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr,
                         lengths, d == 1, cuda_loop, w.extra);
    };
    if (pair) {
      results = both_directions(cell, layer_input, {weights(0), weights(1)}, lengths, cuda_loop);
    } else if (concurrent) {
      // The caller's grad mode, dispatch exclusions etc. must hold in the pool thread too.
      const at::ThreadLocalState caller_state;
      at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
        at::ThreadLocalStateGuard guard(caller_state);
        for (int64_t d = begin; d < end; ++d) run_direction(d);
      });
    } else {
      for (int64_t d = 0; d < num_directions; ++d) run_direction(d);
    }
    std::vector<Tensor> outputs;
    for (int64_t d = 0; d < num_directions; ++d) {
      auto& [out, h, c] = results[d];
      outputs.push_back(out);
      h_n.push_back(h);
      if (spec(cell).has_cell_state()) c_n.push_back(c);
    }
    layer_input = num_directions == 1 ? outputs[0] : at::cat(outputs, 2);
    if (dropout > 0 && train && l < num_layers - 1) {
      layer_input = dropout_between_layers(layer_input, lengths, dropout);
    }
  }
  return {layer_input, stack_states(h_n),
          spec(cell).has_cell_state() ? stack_states(c_n) : no_cell_state(layer_input)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CompositeImplicitAutograd, m) {
  m.impl("recurrent_layer", &recurrent_layer);
  m.impl("recurrent_stack", &recurrent_stack);
}

}  // namespace fusedrnn
