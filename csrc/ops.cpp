// The one place every fusedrnn op is declared. Backends register implementations in their own
// TORCH_LIBRARY_IMPL blocks (csrc/cpu/..., csrc/cuda/...); autograd of the forward ops is in
// csrc/autograd.cpp, the functional ops (recurrent_layer/_stack) in csrc/functional.cpp, fake
// kernels in fusedrnn/_ops.py.
//
// The layer ops (schemas in csrc/op_schemas.h), one layer and one direction of any cell
// (`cell`: a name of csrc/cell.h's table). Shapes (T steps, B batch, H hidden, P = proj_size or
// H, G = the cell's gates: RNN 1, GRU 3, LSTM 4):
//   xproj    (T, B, G*H)  input projection W_ih x_t (plus b_ih where b_hh enters the step: GRU)
//   h0 / h_n (B, P)       c0 / c_n (B, H) for cells with a cell state (LSTM); else c0 is None
//                         and c_n (0)
//   w_hh     (G*H, P)     w_hr (P, H) where h may be projected (LSTM); (G*H) for a cell with a
//                         diagonal recurrence (IndRNN: u ⊙ h_{t-1} per gate block, P = H)
//   step_params (U*H)     what the step adds or scales with (U: the cell table's
//                         step_param_units): the bias, G*H: b_hh where it enters the step (GRU:
//                         n = tanh(x_n + r * (W_hn h + b_hn))), for every other cell the whole
//                         bias b_ih + b_hh, added to xproj (in the step, where the values are in
//                         cache: a bias in the projection is one more pass over (T, B, G*H));
//                         then a normalised step's own parameters (csrc/cell_table.h:
//                         norm_param_units; LayerNormLSTM γ_hh (G*H), γ_c and β_c (H each)).
//                         Optional but for a normalised step (zeros: no bias)
//   lengths  (B) int64    optional; row b runs lengths[b] steps, then its state is frozen and its
//                         outputs are zero (torch.nn's PackedSequence semantics)
//   reverse               run time backwards (from lengths[b]-1 down to 0 for row b)
//   cuda_loop             how the CUDA backend runs the steps: 0 its default, 1 per step,
//                         2 one persistent launch where the loop fits (csrc/time_loop_op.h:
//                         CudaLoop); the CPU ignores it. The functional ops pass it through.
//   output   (T, B, P)    h_t at time t (not step), zero past a row's length
//   workspace             what backward needs, [] when save_workspace is false (autograd
//                         overrides it when it records the call): the cell's parts of
//                         csrc/cell_table.h, each (T, B, width) indexed by time, zero past a row's
//                         length; the last is hprev (T, B, P), the state each step started from.
//                         For instance:
//     RNN  activations (T, B, H) h_t;  hprev
//     GRU  gates (T, B, 4H) activated r, z, n and hn = W_hn h + b_hn;  hprev
//     LSTM gates (T, B, 4H) activated i, f, g, o;  cells (T, B, H) c_t;  prev_cells c_{t-1};  hprev
//     LayerNormLSTM  gates;  recurrent (T, B, 4H) W_hh h_{t-1} before its layer norm;  cells;
//                    prev_cells;  hprev
// Workspaces are float for fp16/bf16 inputs (CUDA; the recurrence is carried in float too, see
// csrc/cuda/step_kernels.h), else the input's dtype.
//   time_loop_backward   d output (T, B, P), d h_n (B, P), d c_n (B, H) (cells with a cell state),
//                        w_hh, w_hr, step_params (as the forward's), the forward's workspace;
//                        returns d xproj (T, B, G*H), d h0, d c0 ((0) without a cell state),
//                        d w_hh, d step_params ((U*H) where b_hh enters the step or the step
//                        normalises, else (0): there they are a bias on xproj, whose gradient is
//                        d xproj summed over steps and rows), d w_hr ((0) without w_hr)
//   time_loop_pair_forward / time_loop_pair_backward   a layer's two directions in one call:
//                        every argument a list of direction 0's (forward) then direction 1's
//                        (reversed), absent optional ones empty lists, the same cell and sizes;
//                        results as lists of the two directions' (workspaces: 0's parts, then
//                        1's). The CUDA backend runs both persistent loops in one launch where
//                        they fit half the device each; no CPU kernel (the CPU runs a layer's
//                        directions on two threads instead), so recurrent_stack calls it only
//                        where x's backend has one.
//
// Functional ops (torch.nn's computation):
//   recurrent_layer   one layer, one direction: x (T, B, I), w_ih (G*H, I), b_ih/b_hh (G*H)
//   recurrent_stack   num_layers x (1 or 2 directions): h0 (L*D, B, P), c0 (L*D, B, H) (zeros
//                     when None), weights in torch.nn's flat order, dropout between layers
//                     when train
//   both return (output, h_n, c_n); c_n is a (0)-shaped tensor for cells without a cell state
//
// One step of a cell (RNNCell/GRUCell/LSTMCell), CPU only: input projection, recurrent product
// and gate math in one op, since at T = 1 every extra op call costs more than the arithmetic:
//   cell_forward      cells with a dense W_hh: x (B, I), h (B, H), c (B, H) for LSTM,
//                     w_ih (G*H, I), w_hh (G*H, H),
//                     b_ih/b_hh (G*H); returns h' (B, H), c' (B, H) (LSTM; else (0)) and the
//                     workspace (B, W) when saved, else (0): the layer workspace's parts but
//                     hprev, side by side: RNN W = H: h';  GRU W = 4H: r, z, n, hn;
//                     LSTM W = 6H: i, f, g, o, c', c
//   layer_step        one step of a one-layer, one-direction stack shaped as recurrent_stack
//                     takes and returns it (a decoder calling its layer once per token):
//                     x (1, B, I), h0/c0 (1, B, H), the cell's weights; returns output (1, B, H),
//                     h_n (1, B, H), c_n (1, B, H) (LSTM; else (0)). cell_forward's arithmetic
//                     without the selects, copies and stacking around it
//   cell_backward     d h' (B, H), d c' (B, H) for LSTM, and the forward's inputs and workspace;
//                     returns d x, d h, d c ((0) unless LSTM), d w_ih, d w_hh, d b_ih, d b_hh
//                     ((0) without bias); d x / d h are (0) when need_grad_x / need_grad_h is
//                     false (their GEMMs skipped: the data input of a decoder needs none)
//
// (Measurement probes of the CPU backend are a library of their own: csrc/cpu/probes.cpp.)
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(fusedrnn, m) {
  for (const char* schema : fusedrnn::kTimeLoopSchemas) m.def(schema);
  m.def(
      "recurrent_layer(str cell, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr=None, Tensor? lengths=None, bool reverse=False, "
      "int cuda_loop=0) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "recurrent_stack(str cell, Tensor x, Tensor? h0, Tensor? c0, Tensor[] weights, "
      "int num_layers, bool bidirectional, bool bias, int proj_size=0, float dropout=0.0, "
      "bool train=False, Tensor? lengths=None, int cuda_loop=0) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "cell_forward(str cell, Tensor x, Tensor h, Tensor? c, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool save_workspace) "
      "-> (Tensor h_new, Tensor c_new, Tensor workspace)");
  m.def(
      "layer_step(str cell, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh) -> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "cell_backward(str cell, Tensor grad_h_new, Tensor? grad_c_new, Tensor x, Tensor h, "
      "Tensor? c, Tensor w_ih, Tensor w_hh, Tensor workspace, bool bias, bool need_grad_x=True, "
      "bool need_grad_h=True) -> (Tensor grad_x, "
      "Tensor grad_h, Tensor grad_c, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");
}

// Importing fusedrnn._C runs the registrations above; the module itself has no functions.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                               nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
