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

// The layer op's input projection, recomputed (with a graph to x, w_ih, bias) from what
// remember_projection left in the node's saved_data.
Tensor recomputed_projection(AutogradContext* ctx) {
  TORCH_CHECK(ctx->saved_data.count("proj_x") > 0,
              "fusedrnn: double backward (create_graph=True) through a time-loop op called "
              "directly is not supported; through fusedrnn's modules, recurrent_layer or "
              "recurrent_stack it is");
  const c10::IValue& bias = ctx->saved_data["proj_bias"];
  const c10::IValue& gain = ctx->saved_data["proj_layer_norm_gain"];
  const OptTensor b = bias.isNone() ? OptTensor() : OptTensor(bias.toTensor());
  const Tensor& x = ctx->saved_data["proj_x"].toTensor();
  const Tensor& w_ih = ctx->saved_data["proj_w_ih"].toTensor();
  if (gain.isNone()) return at::linear(x, w_ih, b);
  const Tensor xw = at::linear(x, w_ih);  // normalised, then the bias (as LN's β)
  return at::layer_norm(xw, {xw.size(-1)}, gain.toTensor(), b, kLayerNormEps);
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
    // Where the step parameters are a bias on xproj, their gradient is d xproj's sum.
    if (step_params.defined() && step_params.requires_grad() &&
        !spec(parse_cell(cell)).own_step_param_grad()) {
      grad_step_params = grad_xproj.sum(at::IntArrayRef{0, 1});
    }
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

// ============================================================================ small projection


// torch's linear with its products on one thread, backward included (torch's own backward for
// linear would take every pool thread for a tiny GEMM). The backward is written in ATen ops, so
// create_graph=True differentiates it as it would torch's.
struct OneThreadLinear : torch::autograd::Function<OneThreadLinear> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                        const OptTensor& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const host_threads::OneThread one_thread(true);
    ctx->save_for_backward({x, w});
    ctx->saved_data["bias"] = bias.has_value();  // without it the node has two inputs
    return at::linear(x, w, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &grad = grads[0];
    const host_threads::OneThread one_thread(true);
    const Tensor grad_rows = grad.flatten(0, -2);  // (T*B, G*H)
    Tensor grad_x, grad_w, grad_bias;
    if (ctx->needs_input_grad(0)) grad_x = at::matmul(grad, w);
    if (ctx->needs_input_grad(1)) grad_w = at::mm(grad_rows.t(), x.flatten(0, -2));
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grad_rows.sum(0);
    }
    return {grad_x, grad_w, grad_bias};
  }
};

}  // namespace

void remember_projection(const Tensor& output, const Tensor& x, const Tensor& w_ih,
                         const OptTensor& bias, const OptTensor& layer_norm_gain) {
  torch::autograd::Node* node = output.grad_fn().get();
  AutogradContext* ctx = nullptr;
  if (auto* loop = dynamic_cast<torch::autograd::CppNode<TimeLoopFunction>*>(node)) {
    ctx = &loop->ctx_;
  }
  if (ctx == nullptr) return;
  ctx->saved_data["proj_x"] = x;
  ctx->saved_data["proj_w_ih"] = w_ih;
  ctx->saved_data["proj_bias"] = bias.has_value() ? c10::IValue(*bias) : c10::IValue();
  ctx->saved_data["proj_layer_norm_gain"] =
      layer_norm_gain.has_value() ? c10::IValue(*layer_norm_gain) : c10::IValue();
}

Tensor one_thread_linear(const Tensor& x, const Tensor& w, const OptTensor& bias) {
  if (!at::GradMode::is_enabled() ||
      !any_requires_grad({&x, &w, &or_undefined(bias)})) {
    const host_threads::OneThread one_thread(true);
    return at::linear(x, w, bias);
  }
  return OneThreadLinear::apply(x, w, bias);
}

// Every backend: the Autograd alias key covers AutogradCPU, AutogradCUDA, ...
TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("time_loop_forward", &time_loop_forward_autograd);
  m.impl("cell_forward", &cell_forward_autograd);
}

}  // namespace fusedrnn
