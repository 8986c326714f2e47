// Typed handles to fusedrnn's own ops (schemas in csrc/ops.cpp), for C++ that calls them through
// the dispatcher, so a call reaches autograd, the backend, or a fake kernel under tracing, as a
// call from Python would.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace fusedrnn {
namespace ops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

using RnnForward = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                      const OptTensor&, bool, bool, bool);
using RnnBackward = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                       const Tensor&, const Tensor&,
                                                       const Tensor&, const OptTensor&, bool,
                                                       bool);
using GruForward = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, bool, bool);
using GruBackward = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    bool);
using LstmForward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    const OptTensor&, bool, bool);
using LstmBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, bool);

using CellForward = std::tuple<Tensor, Tensor, Tensor>(
    c10::string_view, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&, bool);
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
FUSEDRNN_OP_HANDLE(rnn_forward, RnnForward, "fusedrnn::rnn_forward")
FUSEDRNN_OP_HANDLE(rnn_backward, RnnBackward, "fusedrnn::rnn_backward")
FUSEDRNN_OP_HANDLE(gru_forward, GruForward, "fusedrnn::gru_forward")
FUSEDRNN_OP_HANDLE(gru_backward, GruBackward, "fusedrnn::gru_backward")
FUSEDRNN_OP_HANDLE(lstm_forward, LstmForward, "fusedrnn::lstm_forward")
FUSEDRNN_OP_HANDLE(lstm_backward, LstmBackward, "fusedrnn::lstm_backward")
FUSEDRNN_OP_HANDLE(cell_forward, CellForward, "fusedrnn::cell_forward")
FUSEDRNN_OP_HANDLE(cell_backward, CellBackward, "fusedrnn::cell_backward")
#undef FUSEDRNN_OP_HANDLE

}  // namespace ops
}  // namespace fusedrnn
