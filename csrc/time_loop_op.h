// The layer op pair, time_loop_forward / time_loop_backward (schemas in csrc/op_schemas.h), over
// one backend's time loops: the checks every backend shares, the cell's loop, and the workspace
// as the list the schema returns. Each backend registers TimeLoopOps<its loops>:
//   csrc/cpu/recurrent_cpu.cpp (CPU), csrc/cuda/time_loops.h (CUDA and its SIMT emulation).
// `Loops` has static function pointers to the backend's loop of each kind of cell
// (rnn_forward ... lstm_backward: the signatures TimeLoopOps calls below), given the sizes the
// checks read.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cell.h"
#include "op_checks.h"

namespace fusedrnn {

// output (T, B, P), h_n (B, P), c_n (B, H) or (0), workspace (the cell's parts, or none).
using TimeLoopForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>;
// grad_xproj, grad_h0, grad_c0 ((0) without a cell state), grad_w_hh, grad_b_hh ((0) unless
// b_hh enters the step), grad_w_hr ((0) without w_hr).
using TimeLoopBackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename Loops>
struct TimeLoopOps {
  using Tensor = at::Tensor;
  using OptTensor = std::optional<at::Tensor>;

  static TimeLoopForwardResult forward(c10::string_view cell_name, const Tensor& xproj,
                                       const Tensor& h0, const OptTensor& c0, const Tensor& w_hh,
                                       const OptTensor& b_hh, const OptTensor& w_hr,
                                       const OptTensor& lengths, bool reverse,
                                       bool save_workspace) {
    const CellSpec& cell = spec(parse_cell(cell_name));
    const LayerSizes sz = check_time_loop_forward(cell, xproj, h0, c0, w_hh, b_hh, w_hr, lengths);
    const auto saved = [&](std::vector<Tensor> parts) {
      return save_workspace ? std::move(parts) : std::vector<Tensor>{};
    };
    switch (cell.cell) {
      case Cell::RnnTanh:
      case Cell::RnnRelu: {
        auto [out, h_n, activations, hprev] =
            Loops::rnn_forward(sz, xproj, h0, w_hh, lengths, reverse, cell.cell == Cell::RnnRelu,
                               save_workspace);
        return {out, h_n, no_cell_state(out), saved({activations, hprev})};
      }
      case Cell::Gru: {
        auto [out, h_n, gates, hprev] =
            Loops::gru_forward(sz, xproj, h0, w_hh, b_hh, lengths, reverse, save_workspace);
        return {out, h_n, no_cell_state(out), saved({gates, hprev})};
      }
      case Cell::Lstm: {
        auto [out, h_n, c_n, gates, cells, prev_cells, hprev] = Loops::lstm_forward(
            sz, xproj, h0, *c0, w_hh, w_hr, lengths, reverse, save_workspace);
        return {out, h_n, c_n, saved({gates, cells, prev_cells, hprev})};
      }
    }
    TORCH_CHECK(false, "fusedrnn: no time loop for ", cell.name);
  }

  static TimeLoopBackwardResult backward(c10::string_view cell_name, const Tensor& grad_output,
                                         const Tensor& grad_h_n, const OptTensor& grad_c_n,
                                         const Tensor& w_hh, const OptTensor& w_hr,
                                         at::TensorList ws, const OptTensor& lengths,
                                         bool reverse) {
    const CellSpec& cell = spec(parse_cell(cell_name));
    const LayerSizes sz =
        check_time_loop_backward(cell, grad_output, grad_h_n, grad_c_n, w_hh, w_hr, ws, lengths);
    // A (0) tensor of its own per output: outputs must not alias.
    const auto none = [&] { return at::empty({0}, grad_output.options()); };
    switch (cell.cell) {
      case Cell::RnnTanh:
      case Cell::RnnRelu: {
        auto [grad_xproj, grad_h0, grad_w_hh] =
            Loops::rnn_backward(sz, grad_output, grad_h_n, w_hh, ws[0], ws[1], lengths, reverse,
                                cell.cell == Cell::RnnRelu);
        return {grad_xproj, grad_h0, none(), grad_w_hh, none(), none()};
      }
      case Cell::Gru: {
        auto [grad_xproj, grad_h0, grad_w_hh, grad_b_hh] = Loops::gru_backward(
            sz, grad_output, grad_h_n, w_hh, ws[0], ws[1], lengths, reverse);
        return {grad_xproj, grad_h0, none(), grad_w_hh, grad_b_hh, none()};
      }
      case Cell::Lstm: {
        auto [grad_xproj, grad_h0, grad_c0, grad_w_hh, grad_w_hr] =
            Loops::lstm_backward(sz, grad_output, grad_h_n, *grad_c_n, w_hh, w_hr, ws[0], ws[1],
                                 ws[2], ws[3], lengths, reverse);
        return {grad_xproj, grad_h0, grad_c0, grad_w_hh, none(), grad_w_hr};
      }
    }
    TORCH_CHECK(false, "fusedrnn: no time loop for ", cell.name);
  }

 private:
  // Returned in place of c_n by cells without a cell state (a schema cannot return None).
  static Tensor no_cell_state(const Tensor& like) { return at::empty({0}, like.options()); }
};

}  // namespace fusedrnn
