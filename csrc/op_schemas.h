// Schemas of the six time-loop ops (shapes and meanings in csrc/ops.cpp), in one place: the
// fusedrnn library declares them (ops.cpp), and the test-only SIMT-emulation library declares
// the same ops under its own namespace (csrc/emulation/emulated_ops.cpp).
#pragma once

namespace fusedrnn {

inline constexpr const char* kTimeLoopSchemas[] = {
    "rnn_forward(Tensor xproj, Tensor h0, Tensor w_hh, Tensor? lengths, bool reverse, "
    "bool relu, bool save_workspace) -> (Tensor output, Tensor h_n, Tensor hprev)",
    "rnn_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor output, "
    "Tensor hprev, Tensor? lengths, bool reverse, bool relu) "
    "-> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_w_hh)",
    "gru_forward(Tensor xproj, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, "
    "bool reverse, bool save_workspace) -> (Tensor output, Tensor h_n, Tensor gates, Tensor hprev)",
    "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor gates, Tensor hprev, "
    "Tensor? lengths, bool reverse) "
    "-> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)",
    "lstm_forward(Tensor xproj, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? lengths, "
    "bool reverse, bool save_workspace) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, "
    "Tensor cells, Tensor prev_cells, Tensor hprev)",
    "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh, "
    "Tensor? w_hr, Tensor gates, Tensor cells, Tensor prev_cells, Tensor hprev, Tensor? lengths, "
    "bool reverse) -> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh, "
    "Tensor grad_w_hr)",
};

}  // namespace fusedrnn
