// The one place every fusedrnn op is declared. Backends register implementations in their own
// TORCH_LIBRARY_IMPL blocks (csrc/cpu/..., csrc/cuda/...); fake kernels and autograd live in
// fusedrnn/_ops.py.
//
// Shapes (T steps, B batch, H hidden, P = proj_size or H, G = gates per cell: RNN 1, GRU 3, LSTM 4):
//   xproj    (T, B, G*H)  input projection W_ih x_t + b_ih (+ b_hh for RNN and LSTM)
//   h0 / h_n (B, P)       c0 / c_n (B, H)
//   w_hh     (G*H, P)     w_hr (P, H)       b_hh (G*H) (GRU only: it sits inside r * (...))
//   lengths  (B) int64    optional; row b runs lengths[b] steps, then its state is frozen and its
//                         outputs are zero (torch.nn's PackedSequence semantics)
//   reverse               run time backwards (from lengths[b]-1 down to 0 for row b)
//   output   (T, B, P)    h_t at time t (not step), zero past a row's length
// Workspaces (what backward needs; shape (0) when save_workspace is false), all indexed by time:
//   hprev    (T, B, P)    the hidden state each step started from
//   RNN  -: backward reads `output` for the activation derivative
//   GRU  gates (T, B, 4H) activated r, z, n and hn = W_hn h + b_hn
//   LSTM gates (T, B, 4H) activated i, f, g, o;  cells (T, B, H) c_t;  prev_cells (T, B, H) c_{t-1}
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fusedrnn, m) {
  m.def(
      "rnn_forward(Tensor xproj, Tensor h0, Tensor w_hh, Tensor? lengths, bool reverse, "
      "bool relu, bool save_workspace) -> (Tensor output, Tensor h_n, Tensor hprev)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor output, "
      "Tensor hprev, Tensor? lengths, bool reverse, bool relu) "
      "-> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_w_hh)");
  m.def(
      "gru_forward(Tensor xproj, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, "
      "bool reverse, bool save_workspace) -> (Tensor output, Tensor h_n, Tensor gates, Tensor hprev)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor gates, Tensor hprev, "
      "Tensor? lengths, bool reverse) "
      "-> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)");
  m.def(
      "lstm_forward(Tensor xproj, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? lengths, "
      "bool reverse, bool save_workspace) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, "
      "Tensor cells, Tensor prev_cells, Tensor hprev)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh, "
      "Tensor? w_hr, Tensor gates, Tensor cells, Tensor prev_cells, Tensor hprev, Tensor? lengths, "
      "bool reverse) -> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh, "
      "Tensor grad_w_hr)");
}

// Importing fusedrnn._C runs the registrations above; the module itself has no functions.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
