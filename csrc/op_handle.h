// Typed handles to fusedrnn's own ops (schemas in csrc/ops.cpp), for C++ that calls them through
// the dispatcher, so a call reaches autograd, the backend, or a fake kernel under tracing, as a
// call from Python would.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>
#include <vector>

namespace fusedrnn {
namespace ops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

using TimeLoopForward = std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>>(
    c10::string_view, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, bool, bool, int64_t);
using TimeLoopBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    c10::string_view, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
    const OptTensor&, const OptTensor&, at::TensorList, const OptTensor&, bool, int64_t);

using TimeLoopPairForward =
    std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>(
        c10::string_view, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
        at::TensorList, at::TensorList, const OptTensor&, bool, int64_t);
using TimeLoopPairBackward =
    std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
               std::vector<Tensor>, std::vector<Tensor>>(
        c10::string_view, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
        at::TensorList, at::TensorList, at::TensorList, const OptTensor&, int64_t);

using CellForward = std::tuple<Tensor, Tensor, Tensor>(
    c10::string_view, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&, bool);
using LayerStep = std::tuple<Tensor, Tensor, Tensor>(
    c10::string_view, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&);
using CellBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    c10::string_view, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const OptTensor&, const Tensor&, const Tensor&, const Tensor&, bool, bool, bool);

// The look-up is by name and not free: done once per op.
#define FUSEDRNN_OP_HANDLE(fn, Signature, name)                                       \
  inline const c10::TypedOperatorHandle<Signature>& fn() {                          \
    static const auto handle =                                                      \
        c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>(); \
    return handle;                                                                  \
  }
FUSEDRNN_OP_HANDLE(time_loop_forward, TimeLoopForward, "fusedrnn::time_loop_forward")
FUSEDRNN_OP_HANDLE(time_loop_backward, TimeLoopBackward, "fusedrnn::time_loop_backward")
FUSEDRNN_OP_HANDLE(time_loop_pair_forward, TimeLoopPairForward,
                   "fusedrnn::time_loop_pair_forward")
FUSEDRNN_OP_HANDLE(time_loop_pair_backward, TimeLoopPairBackward,
                   "fusedrnn::time_loop_pair_backward")
FUSEDRNN_OP_HANDLE(cell_forward, CellForward, "fusedrnn::cell_forward")
FUSEDRNN_OP_HANDLE(cell_backward, CellBackward, "fusedrnn::cell_backward")
FUSEDRNN_OP_HANDLE(layer_step, LayerStep, "fusedrnn::layer_step")
#undef FUSEDRNN_OP_HANDLE

}  // namespace ops
}  // namespace fusedrnn
