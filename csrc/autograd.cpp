// Autograd for the forward ops (every backend): each forward op's Autograd kernel records a node
// whose backward calls the matching backward op. In C++ rather than torch.library's Python
// register_autograd: the Python wrapper cost ~16 us per op call (more than a whole 300-step
// RNN forward at H=32 spends in arithmetic), this costs well under a microsecond.
//
// The backward ops are not differentiable. A backward with create_graph=True (double backward:
// gradient penalties, meta-learning) differentiates the step-by-step ATen form of the op instead
// (reference_time_loop), from the inputs the node saved and, for the layer ops, the input
// projection recomputed (remember_projection). Shapes are documented with the schemas in
// csrc/ops.cpp.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/library.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "autograd.h"
#include "host_linear.h"
#include "host_threads.h"
#include "op_handle.h"
#include "time_loop_op.h"

namespace fusedrnn {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using ops::OptTensor;


bool any_requires_grad(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

const Tensor& or_undefined(const OptTensor& t) {
  static const Tensor undefined;
  return t.has_value() ? *t : undefined;
}

OptTensor as_optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// A gradient autograd left undefined (that output unused) as the zeros the backward op expects:
// the shape of `shape_like`, the storage dtype of `storage` (saved workspaces are float for half
// types; see state_dtype in csrc/op_checks.h).
Tensor or_zeros(const Tensor& grad, const Tensor& shape_like, const Tensor& storage) {
  return grad.defined() ? grad : at::zeros(shape_like.sizes(), storage.options());
}
Tensor or_zeros(const Tensor& grad, const Tensor& like) { return or_zeros(grad, like, like); }

// On a busy machine, torch's own backward nodes around the fused ones run on one thread too,
// until the backward pass ends (host_threads::limit_until_called).
void limit_threads_until_backward_ends() {
  std::function<void()> end = host_threads::limit_until_called();
  if (!end) return;
  try {
    torch::autograd::Engine::get_default_engine().queue_callback(end);
  } catch (const c10::Error&) {  // not run by the engine (no pass to outlast): lift it now
    end();
  }
}

// The tensors a node's computation depends on, by role; undefined where absent or not needed.
struct Differentiable {
  Tensor xproj, h0, c0, w_hh, step_params, w_hr;
};

// d(outs . grads) / d(inputs) with create_graph=True, aligned with inputs: undefined where an
// input is absent or needs no gradient. An undefined grads[i] counts as zeros; outputs that need
// no gradient are left out.
variable_list differentiate(const std::vector<Tensor>& outs, const variable_list& grads,
                            const variable_list& inputs) {
  variable_list outputs, grad_outputs, wanted, result(inputs.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    if (!outs[i].defined() || !outs[i].requires_grad()) continue;
    outputs.push_back(outs[i]);
    const bool given = i < grads.size() && grads[i].defined();
    grad_outputs.push_back(given ? grads[i] : at::zeros_like(outs[i]));
  }
  std::vector<size_t> where;
  for (size_t k = 0; k < inputs.size(); ++k) {
    if (inputs[k].defined() && inputs[k].requires_grad()) {
      wanted.push_back(inputs[k]);
      where.push_back(k);
    }
  }
  if (wanted.empty() || outputs.empty()) return result;
  const variable_list g = torch::autograd::grad(outputs, wanted, grad_outputs,
                                                /*retain_graph=*/true, /*create_graph=*/true,
                                                /*allow_unused=*/true);
  for (size_t j = 0; j < where.size(); ++j) result[where[j]] = g[j];
  return result;
}

// Backward with create_graph=True of a time-loop node: the gradients of `in` from the
// step-by-step form of the computation.
Differentiable differentiate_reference(Cell cell, const Differentiable& in, const Tensor& lengths,
                                       bool reverse, const variable_list& grads) {
  const std::vector<Tensor> outs = reference_time_loop(cell, in.xproj, in.h0, in.c0, in.w_hh,
                                                       in.step_params, in.w_hr, lengths, reverse);
  const variable_list g =
      differentiate(outs, grads, {in.xproj, in.h0, in.c0, in.w_hh, in.step_params, in.w_hr});
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

// The saved_data key of a direction's projection input `name` (a pair node keeps both).
std::string projection_key(const char* name, int64_t direction) {
  return direction == 0 ? std::string(name) : std::string(name) + "_reverse";
}

// The layer op's input projection (of `direction`, for a pair node), recomputed (with a graph
// to x, w_ih, bias) from what remember_projection left in the node's saved_data.
Tensor recomputed_projection(AutogradContext* ctx, int64_t direction = 0) {
  auto saved = [&](const char* name) -> c10::IValue& {
    return ctx->saved_data[projection_key(name, direction)];
  };
  TORCH_CHECK(ctx->saved_data.count(projection_key("proj_x", direction)) > 0,
              "fusedrnn: double backward (create_graph=True) through a time-loop op called "
              "directly is not supported; through fusedrnn's modules, recurrent_layer or "
              "recurrent_stack it is");
  const c10::IValue& bias = saved("proj_bias");
  const c10::IValue& gain = saved("proj_layer_norm_gain");
  const OptTensor b = bias.isNone() ? OptTensor() : OptTensor(bias.toTensor());
  const Tensor& x = saved("proj_x").toTensor();
  const Tensor& w_ih = saved("proj_w_ih").toTensor();
  if (gain.isNone()) return at::linear(x, w_ih, b);
  const Tensor xw = at::linear(x, w_ih);  // normalised, then the bias (as LN's β)
  return at::layer_norm(xw, {xw.size(-1)}, gain.toTensor(), b, kLayerNormEps);
}

// d step_params of a time-loop node: the backward op's (`from_op`), or, where the step
// parameters are a bias on xproj (not the cell's own_step_param_grad), d xproj's sum.
Tensor step_params_grad(const std::string& cell, const Tensor& step_params,
                        const Tensor& from_op, const Tensor& grad_xproj) {
  if (step_params.defined() && step_params.requires_grad() &&
      !spec(parse_cell(cell)).own_step_param_grad()) {
    return grad_xproj.sum(at::IntArrayRef{0, 1});
  }
  return from_op;
}

// ============================================================================ layer time loop


struct TimeLoopFunction : torch::autograd::Function<TimeLoopFunction> {
  // Positions in the saved variables; the workspace follows them.
  enum Saved { kWhh, kWhr, kStepParams, kLengths, kH0, kC0, kWorkspace };

  static variable_list forward(AutogradContext* ctx, c10::string_view cell, const Tensor& xproj,
                               const Tensor& h0, const OptTensor& c0, const Tensor& w_hh,
                               const OptTensor& step_params, const OptTensor& w_hr,
                               const OptTensor& lengths, bool reverse, int64_t cuda_loop) {
    ctx->set_materialize_grads(false);  // unused outputs' grads stay undefined: see or_zeros
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, h_n, c_n, workspace] =
        ops::time_loop_forward().call(cell, xproj, h0, c0, w_hh, step_params, w_hr, lengths,
                                      reverse, /*save_workspace=*/true, cuda_loop);
    // The workspace is the op's own (never an output), so an in-place op on a returned tensor
    // (nn.ReLU(inplace=True) after the layer) leaves the backward intact. h0 and c0 only for
    // autograd's version check (and double backward): modified in place before backward, they
    // raise as with torch.nn, which needs their values, instead of going unnoticed.
    variable_list saved = {w_hh, or_undefined(w_hr), or_undefined(step_params),
                           or_undefined(lengths), h0, or_undefined(c0)};
    saved.insert(saved.end(), workspace.begin(), workspace.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["cell"] = std::string(cell);
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["cuda_loop"] = cuda_loop;
    ctx->mark_non_differentiable(workspace);
    if (!c0.has_value()) ctx->mark_non_differentiable({c_n});
    variable_list outputs = {out, h_n, c_n};
    outputs.insert(outputs.end(), workspace.begin(), workspace.end());
    return outputs;
  }

  // Gradients of (cell, xproj, h0, c0, w_hh, step_params, w_hr, lengths, reverse, cuda_loop).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &w_hh = saved[kWhh], &w_hr = saved[kWhr], &step_params = saved[kStepParams];
    const Tensor &h0 = saved[kH0], &c0 = saved[kC0];
    const std::string& cell = ctx->saved_data["cell"].toStringRef();
    const bool reverse = ctx->saved_data["reverse"].toBool();
    if (at::GradMode::is_enabled()) {  // create_graph=True
      const Differentiable g = differentiate_reference(
          parse_cell(cell), {recomputed_projection(ctx), h0, c0, w_hh, step_params, w_hr},
          saved[kLengths], reverse, grads);
      return {Tensor(), g.xproj, g.h0, g.c0, g.w_hh, g.step_params, g.w_hr, Tensor(), Tensor(),
              Tensor()};
    }
    limit_threads_until_backward_ends();
    const std::vector<Tensor> workspace(saved.begin() + kWorkspace, saved.end());
    const Tensor& hprev = workspace.back();  // (T, B, P): the shape of the output
    const OptTensor grad_c_n = c0.defined() ? OptTensor(or_zeros(grads[2], c0)) : std::nullopt;
    auto [grad_xproj, grad_h0, grad_c0, grad_w_hh, grad_step_params, grad_w_hr] =
        ops::time_loop_backward().call(cell, or_zeros(grads[0], hprev, w_hh),
                                       or_zeros(grads[1], h0), grad_c_n, w_hh, as_optional(w_hr),
                                       as_optional(step_params), workspace,
                                       as_optional(saved[kLengths]), reverse,
                                       ctx->saved_data["cuda_loop"].toInt());
    grad_step_params = step_params_grad(cell, step_params, grad_step_params, grad_xproj);
    const auto if_input = [](const Tensor& input, const Tensor& grad) {
      return input.defined() ? grad : Tensor();
    };
    return {Tensor(), grad_xproj, grad_h0, if_input(c0, grad_c0), grad_w_hh,
            if_input(step_params, grad_step_params), if_input(w_hr, grad_w_hr), Tensor(), Tensor(),
            Tensor()};
  }
};

TimeLoopForwardResult time_loop_forward_autograd(c10::string_view cell, const Tensor& xproj,
                                                 const Tensor& h0, const OptTensor& c0,
                                                 const Tensor& w_hh, const OptTensor& step_params,
                                                 const OptTensor& w_hr, const OptTensor& lengths,
                                                 bool reverse, bool save_workspace,
                                                 int64_t cuda_loop) {
  if (!at::GradMode::is_enabled() ||
      !any_requires_grad({&xproj, &h0, &or_undefined(c0), &w_hh, &or_undefined(step_params),
                          &or_undefined(w_hr)})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::time_loop_forward().call(cell, xproj, h0, c0, w_hh, step_params, w_hr, lengths,
                                         reverse, save_workspace, cuda_loop);
  }
  const variable_list r = TimeLoopFunction::apply(cell, xproj, h0, c0, w_hh, step_params, w_hr,
                                                  lengths, reverse, cuda_loop);
  return {r[0], r[1], r[2], std::vector<Tensor>(r.begin() + 3, r.end())};
}

// ============================================================================ a layer's two directions

// The pair op's node (time_loop_pair_forward: both directions of a layer in one call, direction
// 1 reversed): as TimeLoopFunction, for two directions. Its inputs, as autograd counts them:
// cell, xproj x2, h0 x2, c0 x(0|2), w_hh x2, step_params x(0|2), w_hr x(0|2), lengths, cuda_loop.
// Its outputs: output x2, h_n x2, c_n x2, then the workspaces.
struct TimeLoopPairFunction : torch::autograd::Function<TimeLoopPairFunction> {
  // Saved: per direction these five (undefined where absent), then lengths, then the workspaces.
  enum Saved { kWhh, kWhr, kStepParams, kH0, kC0, kPerDirection };
  static constexpr int kLengths = 2 * kPerDirection, kWorkspace = kLengths + 1;

  static variable_list forward(AutogradContext* ctx, c10::string_view cell, at::TensorList xproj,
                               at::TensorList h0, at::TensorList c0, at::TensorList w_hh,
                               at::TensorList step_params, at::TensorList w_hr,
                               const OptTensor& lengths, int64_t cuda_loop) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, h_n, c_n, workspace] = ops::time_loop_pair_forward().call(
        cell, xproj, h0, c0, w_hh, step_params, w_hr, lengths, /*save_workspace=*/true,
        cuda_loop);
    const auto item = [](at::TensorList list, int64_t d) {
      return list.empty() ? Tensor() : list[d];
    };
    variable_list saved;
    for (int64_t d = 0; d < 2; ++d) {
      saved.insert(saved.end(),
                   {w_hh[d], item(w_hr, d), item(step_params, d), h0[d], item(c0, d)});
    }
    saved.push_back(or_undefined(lengths));
    saved.insert(saved.end(), workspace.begin(), workspace.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["cell"] = std::string(cell);
    ctx->saved_data["cuda_loop"] = cuda_loop;
    ctx->saved_data["has_c0"] = !c0.empty();
    ctx->saved_data["has_step_params"] = !step_params.empty();
    ctx->saved_data["has_w_hr"] = !w_hr.empty();
    ctx->mark_non_differentiable(workspace);
    if (c0.empty()) ctx->mark_non_differentiable(c_n);
    variable_list outputs = {out[0], out[1], h_n[0], h_n[1], c_n[0], c_n[1]};
    outputs.insert(outputs.end(), workspace.begin(), workspace.end());
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::string& cell = ctx->saved_data["cell"].toStringRef();
    const bool has_c0 = ctx->saved_data["has_c0"].toBool();
    const bool has_step_params = ctx->saved_data["has_step_params"].toBool();
    const bool has_w_hr = ctx->saved_data["has_w_hr"].toBool();
    const auto at_d = [&](int64_t d, int role) -> const Tensor& {
      return saved[d * kPerDirection + role];
    };
    // Per direction: d xproj, d h0, d c0, d w_hh, d step_params, d w_hr.
    Differentiable g[2];
    if (at::GradMode::is_enabled()) {  // create_graph=True
      for (int64_t d = 0; d < 2; ++d) {
        g[d] = differentiate_reference(
            parse_cell(cell),
            {recomputed_projection(ctx, d), at_d(d, kH0), at_d(d, kC0), at_d(d, kWhh),
             at_d(d, kStepParams), at_d(d, kWhr)},
            saved[kLengths], /*reverse=*/d == 1, {grads[d], grads[2 + d], grads[4 + d]});
      }
    } else {
      limit_threads_until_backward_ends();
      const std::vector<Tensor> workspace(saved.begin() + kWorkspace, saved.end());
      const size_t parts = workspace.size() / 2;
      std::vector<Tensor> grad_out, grad_h_n, grad_c_n, w_hh, w_hr, step_params;
      for (int64_t d = 0; d < 2; ++d) {
        const Tensor& hprev = workspace[(d + 1) * parts - 1];  // (T, B, P): the output's shape
        grad_out.push_back(or_zeros(grads[d], hprev, at_d(d, kWhh)));
        grad_h_n.push_back(or_zeros(grads[2 + d], at_d(d, kH0)));
        if (has_c0) grad_c_n.push_back(or_zeros(grads[4 + d], at_d(d, kC0)));
        w_hh.push_back(at_d(d, kWhh));
        if (has_w_hr) w_hr.push_back(at_d(d, kWhr));
        if (has_step_params) step_params.push_back(at_d(d, kStepParams));
      }
      auto [gx, gh0, gc0, gw, gp, gr] = ops::time_loop_pair_backward().call(
          cell, grad_out, grad_h_n, grad_c_n, w_hh, w_hr, step_params, workspace,
          as_optional(saved[kLengths]), ctx->saved_data["cuda_loop"].toInt());
      for (int64_t d = 0; d < 2; ++d) {
        g[d] = {gx[d], gh0[d], gc0[d], gw[d],
                step_params_grad(cell, at_d(d, kStepParams), gp[d], gx[d]), gr[d]};
      }
    }
    // Aligned with the inputs as autograd counts them (see above).
    variable_list result{Tensor(), g[0].xproj, g[1].xproj, g[0].h0, g[1].h0};
    if (has_c0) result.insert(result.end(), {g[0].c0, g[1].c0});
    result.insert(result.end(), {g[0].w_hh, g[1].w_hh});
    if (has_step_params) result.insert(result.end(), {g[0].step_params, g[1].step_params});
    if (has_w_hr) result.insert(result.end(), {g[0].w_hr, g[1].w_hr});
    result.insert(result.end(), {Tensor(), Tensor()});  // lengths, cuda_loop
    return result;
  }
};

TimeLoopPairForwardResult time_loop_pair_forward_autograd(
    c10::string_view cell, at::TensorList xproj, at::TensorList h0, at::TensorList c0,
    at::TensorList w_hh, at::TensorList step_params, at::TensorList w_hr,
    const OptTensor& lengths, bool save_workspace, int64_t cuda_loop) {
  bool needs_grad = false;
  for (at::TensorList list : {xproj, h0, c0, w_hh, step_params, w_hr}) {
    for (const Tensor& t : list) needs_grad = needs_grad || t.requires_grad();
  }
  if (!at::GradMode::is_enabled() || !needs_grad) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::time_loop_pair_forward().call(cell, xproj, h0, c0, w_hh, step_params, w_hr,
                                              lengths, save_workspace, cuda_loop);
  }
  const variable_list r = TimeLoopPairFunction::apply(cell, xproj, h0, c0, w_hh, step_params,
                                                      w_hr, lengths, cuda_loop);
  return {{r[0], r[1]}, {r[2], r[3]}, {r[4], r[5]}, std::vector<Tensor>(r.begin() + 6, r.end())};
}

// ============================================================================ one cell step


// Double backward of one cell step: the step as a one-step time loop on x's projection, every
// input differentiated directly (the cell node saves them all).
variable_list differentiable_cell_backward(AutogradContext* ctx, const variable_list& saved,
                                           const variable_list& grads) {
  const Cell cell = parse_cell(ctx->saved_data["cell"].toStringRef());
  const Tensor &x = saved[0], &h = saved[1], &c = saved[2], &w_ih = saved[3], &w_hh = saved[4];
  const Tensor &b_ih = saved[6], &b_hh = saved[7];
  // xproj is built inside the differentiated computation, so x, w_ih and the biases get their
  // gradients through it.
  const auto [projection_bias, step_bias] = split_biases(
      cell, b_ih.defined() ? OptTensor(b_ih) : std::nullopt,
      b_hh.defined() ? OptTensor(b_hh) : std::nullopt);
  const Tensor xproj = at::linear(x, w_ih, projection_bias);
  const std::vector<Tensor> outs = reference_time_loop(
      cell, xproj.unsqueeze(0), h, spec(cell).has_cell_state() ? c : Tensor(), w_hh,
      step_bias.value_or(Tensor()), Tensor(), Tensor(), false);
  // grads: (h', c'); outs[1], outs[2] are h', c' (c' undefined but for LSTM)
  const variable_list g =
      differentiate({outs[1], outs[2]}, grads, {x, h, c, w_ih, w_hh, b_ih, b_hh});
  return {Tensor(), g[0], g[1], g[2], g[3], g[4], g[5], g[6]};  // (cell, x, h, c, ...)
}

struct CellFunction : torch::autograd::Function<CellFunction> {
  static variable_list forward(AutogradContext* ctx, c10::string_view cell, const Tensor& x,
                               const Tensor& h, const OptTensor& c, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [h_new, c_new, workspace] =
        ops::cell_forward().call(cell, x, h, c, w_ih, w_hh, b_ih, b_hh, true);
    // The workspace is the op's own (h' and c' are copied into it), so an in-place op on a
    // returned state leaves the backward intact.
    ctx->save_for_backward(  // the biases for double backward only
        {x, h, or_undefined(c), w_ih, w_hh, workspace, or_undefined(b_ih), or_undefined(b_hh)});
    ctx->saved_data["cell"] = std::string(cell);
    ctx->saved_data["bias"] = b_ih.has_value();
    // Inputs that need no gradient (a decoder's data input, a zero initial state) skip a GEMM.
    ctx->saved_data["need_grad_x"] = x.requires_grad();
    ctx->saved_data["need_grad_h"] = h.requires_grad();
    ctx->mark_non_differentiable({workspace});
    if (!c.has_value()) ctx->mark_non_differentiable({c_new});
    return {h_new, c_new, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) return differentiable_cell_backward(ctx, saved, grads);
    limit_threads_until_backward_ends();
    const Tensor &x = saved[0], &h = saved[1], &w_ih = saved[3], &w_hh = saved[4];
    const OptTensor c = as_optional(saved[2]);
    const OptTensor grad_c = c.has_value() ? OptTensor(or_zeros(grads[1], *c)) : std::nullopt;
    const bool bias = ctx->saved_data["bias"].toBool();
    const bool need_x = ctx->saved_data["need_grad_x"].toBool();
    const bool need_h = ctx->saved_data["need_grad_h"].toBool();
    auto [grad_x, grad_h, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh] =
        ops::cell_backward().call(ctx->saved_data["cell"].toStringRef(), or_zeros(grads[0], h),
                                  grad_c, x, h, c, w_ih, w_hh, saved[5], bias, need_x, need_h);
    if (!c.has_value()) grad_c0 = Tensor();
    if (!need_x) grad_x = Tensor();  // skipped: (0)-shaped
    if (!need_h) grad_h = Tensor();
    if (!bias) grad_b_ih = grad_b_hh = Tensor();
    return {Tensor(), grad_x, grad_h, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
  }
};

std::tuple<Tensor, Tensor, Tensor> cell_forward_autograd(
    c10::string_view cell, const Tensor& x, const Tensor& h, const OptTensor& c,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    bool save_workspace) {
  if (!at::GradMode::is_enabled() ||
      !any_requires_grad({&x, &h, &or_undefined(c), &w_ih, &w_hh, &or_undefined(b_ih),
                          &or_undefined(b_hh)})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::cell_forward().call(cell, x, h, c, w_ih, w_hh, b_ih, b_hh, save_workspace);
  }
  const variable_list r = CellFunction::apply(cell, x, h, c, w_ih, w_hh, b_ih, b_hh);
  return {r[0], r[1], r[2]};
}

// ============================================================================ input projection

// x·wᵀ + bias on the CPU backend's packed kernels where they run (host_linear::runs), else
// torch's linear; on one thread when asked.
Tensor projection_product(const Tensor& x, const Tensor& w, const OptTensor& bias,
                          bool one_thread) {
  const host_threads::OneThread limit(one_thread);
  return host_linear::runs(x, w, bias) ? host_linear::linear(x, w, bias)
                                       : at::linear(x, w, bias);
}

// projection_product as a node. The backward is torch's linear's, in ATen ops (so create_graph=True
// differentiates it as it would torch's; d x otherwise on the packed kernels where they run), on
// one thread where the forward was (torch's own backward for linear would take every pool
// thread for a tiny GEMM).
struct ProjectionLinear : torch::autograd::Function<ProjectionLinear> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                        const OptTensor& bias, bool one_thread) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, w});
    ctx->saved_data["bias"] = bias.has_value();  // without it the node has two inputs
    ctx->saved_data["one_thread"] = one_thread;
    return projection_product(x, w, bias, one_thread);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &grad = grads[0];
    const host_threads::OneThread one_thread(ctx->saved_data["one_thread"].toBool());
    const Tensor grad_rows = grad.flatten(0, -2);  // (T*B, G*H)
    Tensor grad_x, grad_w, grad_bias;
    if (ctx->needs_input_grad(0)) {
      // (Not where create_graph=True asks for a differentiable d x: the packed product has no
      // autograd of its own.)
      const bool packed = !at::GradMode::is_enabled() && host_linear::runs_matmul(grad, w);
      grad_x = packed ? host_linear::matmul(grad, w) : at::matmul(grad, w);
    }
    if (ctx->needs_input_grad(1)) grad_w = at::mm(grad_rows.t(), x.flatten(0, -2));
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grad_rows.sum(0);
    }
    return {grad_x, grad_w, grad_bias, Tensor()};
  }
};

}  // namespace

void remember_projection(const Tensor& output, const Tensor& x, const Tensor& w_ih,
                         const OptTensor& bias, const OptTensor& layer_norm_gain,
                         int64_t direction) {
  torch::autograd::Node* node = output.grad_fn().get();
  AutogradContext* ctx = nullptr;
  if (auto* loop = dynamic_cast<torch::autograd::CppNode<TimeLoopFunction>*>(node)) {
    ctx = &loop->ctx_;
  } else if (auto* pair = dynamic_cast<torch::autograd::CppNode<TimeLoopPairFunction>*>(node)) {
    ctx = &pair->ctx_;
  }
  if (ctx == nullptr) return;
  auto saved = [&](const char* name) -> c10::IValue& {
    return ctx->saved_data[projection_key(name, direction)];
  };
  saved("proj_x") = x;
  saved("proj_w_ih") = w_ih;
  saved("proj_bias") = bias.has_value() ? c10::IValue(*bias) : c10::IValue();
  saved("proj_layer_norm_gain") =
      layer_norm_gain.has_value() ? c10::IValue(*layer_norm_gain) : c10::IValue();
}

Tensor projection_linear(const Tensor& x, const Tensor& w, const OptTensor& bias,
                         bool one_thread) {
  if (!at::GradMode::is_enabled() || !any_requires_grad({&x, &w, &or_undefined(bias)})) {
    return projection_product(x, w, bias, one_thread);
  }
  return ProjectionLinear::apply(x, w, bias, one_thread);
}

// layer_step (csrc/ops.cpp): the backend's kernel where no gradient is needed; else the same
// step through cell_forward's autograd, reshaped as layer_step returns it (the output a copy, so
// an in-place op on it leaves h_n alone, as with torch.nn).
std::tuple<Tensor, Tensor, Tensor> layer_step_autograd(
    c10::string_view cell, const Tensor& x, const Tensor& h0, const OptTensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh) {
  if (!at::GradMode::is_enabled() ||
      !any_requires_grad({&x, &h0, &or_undefined(c0), &w_ih, &w_hh, &or_undefined(b_ih),
                          &or_undefined(b_hh)})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::layer_step().call(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh);
  }
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 3 && (!c0.has_value() || c0->dim() == 3),
              "fusedrnn: layer_step takes x (1, B, I) and states (1, B, H)");
  auto [h_new, c_new, workspace] = cell_forward_autograd(
      cell, x[0], h0[0], c0.has_value() ? OptTensor((*c0)[0]) : std::nullopt, w_ih, w_hh, b_ih,
      b_hh, false);
  const Tensor h_n = h_new.unsqueeze(0);
  return {h_n.clone(), h_n, c0.has_value() ? c_new.unsqueeze(0) : at::empty({0}, x.options())};
}

// Every backend: the Autograd alias key covers AutogradCPU, AutogradCUDA, ...
TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("time_loop_forward", &time_loop_forward_autograd);
  m.impl("time_loop_pair_forward", &time_loop_pair_forward_autograd);
  m.impl("cell_forward", &cell_forward_autograd);
  m.impl("layer_step", &layer_step_autograd);
}

}  // namespace fusedrnn
