// Schemas of the layer ops (shapes and meanings in csrc/ops.cpp), in one place: the fusedrnn
// library declares them (ops.cpp), and the test-only SIMT-emulation library declares the same
// ops under its own namespace (csrc/emulation/emulated_ops.cpp).
#pragma once

namespace fusedrnn {

inline constexpr const char* kTimeLoopSchemas[] = {
    "time_loop_forward(str cell, Tensor xproj, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? step_params, "
    "Tensor? w_hr, Tensor? lengths, bool reverse, bool save_workspace, int cuda_loop=0) "
    "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor[] workspace)",
    "time_loop_backward(str cell, Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, "
    "Tensor w_hh, Tensor? w_hr, Tensor? step_params, Tensor[] workspace, Tensor? lengths, "
    "bool reverse, int cuda_loop=0) "
    "-> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh, Tensor grad_step_params, "
    "Tensor grad_w_hr)",
    // A layer's two directions in one call (the CUDA backend runs them in one launch where it
    // can): every list holds direction 0's (forward) then direction 1's (reversed); absent
    // optional inputs are empty lists.
    "time_loop_pair_forward(str cell, Tensor[] xproj, Tensor[] h0, Tensor[] c0, Tensor[] w_hh, "
    "Tensor[] step_params, Tensor[] w_hr, Tensor? lengths, bool save_workspace, int cuda_loop=0) "
    "-> (Tensor[] output, Tensor[] h_n, Tensor[] c_n, Tensor[] workspace)",
    "time_loop_pair_backward(str cell, Tensor[] grad_output, Tensor[] grad_h_n, Tensor[] grad_c_n, "
    "Tensor[] w_hh, Tensor[] w_hr, Tensor[] step_params, Tensor[] workspace, Tensor? lengths, "
    "int cuda_loop=0) "
    "-> (Tensor[] grad_xproj, Tensor[] grad_h0, Tensor[] grad_c0, Tensor[] grad_w_hh, "
    "Tensor[] grad_step_params, Tensor[] grad_w_hr)",
};

}  // namespace fusedrnn
