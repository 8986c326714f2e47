// The recurrent cells: what the code of every backend knows about each, in one table (plain
// C++, no torch headers: the CUDA kernels read it too). csrc/cell.h adds look-ups by name;
// fusedrnn/cells.py is the Python table, and tests/test_api.py checks that the two agree,
// through the ops' shapes.
#pragma once

#include <cstdint>

namespace fusedrnn {

enum class Cell {
  RnnTanh, RnnRelu, Gru, Lstm, IndrnnTanh, IndrnnRelu, LayerNormLstm, LayerNormGru
};

// How h_{t-1} enters a step: Dense, the product W_hh h with w_hh (G*H, P); Diagonal, u ⊙ h for
// each gate block with w_hh = u (G*H) (IndRNN: every unit sees only its own past), no GEMM.
enum class Recurrence { Dense, Diagonal };

// What a step normalises: nothing; or, LayerNorm (haste's layer-normalised cells), the recurrent
// product W_hh h over the row's G*H values, γ_hh ⊙ LN(W_hh h) + the step's bias taking its place
// (γ_hh: the step parameters' first G*H after the bias), and whatever the cell normalises besides
// with the rest of its step parameters (LayerNormLSTM: c over its H before its tanh, with γ_c and
// β_c). (The input side, LN(W_ih x; γ_ih), is the composition's: xproj arrives normalised.) A
// normalised step needs whole rows: the CPU loop never splits its units among workers.
enum class Normalization { None, LayerNorm };
inline constexpr double kLayerNormEps = 1e-5;  // haste's

// One workspace tensor the layer op (time_loop_forward) saves for its backward: (T, B, width),
// width `units` times H, or P (the size of h) for `of_h`.
struct WorkspacePart {
  const char* name;
  int64_t units;
  bool of_h;
};

// Parts per cell at most (LayerNormLSTM: gates, recurrent, cells, prev_cells, hprev), and gates.
inline constexpr int kMaxWorkspaceParts = 5;
inline constexpr int kMaxGates = 4;

struct CellSpec {
  Cell cell;
  const char* name;  // the ops' `cell` argument
  // Gate blocks of H rows in W_ih / W_hh (and b_ih / b_hh): RNN 1, GRU 3 (r, z, n),
  // LSTM 4 (i, f, g, o).
  int64_t gates;
  int64_t states;  // 1: h; 2: h and the cell state c
  // b_hh enters the step at a place of its own (GRU: n = tanh(x_n + r * (W_hn h + b_hn))) instead
  // of adding to the pre-activation with b_ih (autograd.h: split_biases).
  bool b_hh_in_step;
  // Whether h may be projected to proj_size features (w_hr; torch.nn: LSTM only).
  bool projectable;
  // The layer op's saved workspace, in order; the last part is always hprev (T, B, P), the state
  // each step started from.
  WorkspacePart workspace[kMaxWorkspaceParts];
  int workspace_parts;
  Recurrence recurrence = Recurrence::Dense;
  Normalization normalization = Normalization::None;
  // Weights per layer and direction beyond torch.nn's (w_ih, w_hh, b_ih, b_hh, w_hr), after
  // them in the flat order. A normalised cell's: γ_ih (G*H, of LN(W_ih x)), then its step
  // parameters after the bias, in their order (LayerNormLSTM: γ_hh (G*H, of LN(W_hh h)), γ_c and
  // β_c (H, of LN(c))).
  int extra_weights = 0;
  // Those step parameters' size in units of H (LayerNormLSTM: 4 + 1 + 1).
  int64_t norm_param_units = 0;

  constexpr bool has_cell_state() const { return states == 2; }
  constexpr bool diagonal() const { return recurrence == Recurrence::Diagonal; }
  constexpr bool normalized() const { return normalization != Normalization::None; }
  // The time-loop op's step parameters (csrc/ops.cpp), in units of H: the bias the step adds
  // (G blocks), then a normalised step's own (norm_param_units).
  constexpr int64_t step_param_units() const { return gates + norm_param_units; }
  // Whether d(W_hh h (+ b_hh)) differs from d xproj, so backward keeps it for every step (the
  // W_hh gradient and the b_hh sum): where b_hh enters the step (GRU: behind the reset gate) or
  // the product is normalised.
  constexpr bool own_recurrent_grad() const { return b_hh_in_step || normalized(); }
  // Whether the op's backward returns the step parameters' gradient itself (elsewhere they are
  // a bias on xproj, whose gradient is d xproj's sum).
  constexpr bool own_step_param_grad() const { return b_hh_in_step || normalized(); }
  // Units of H of d step_params the cell's backward step writes per row (T, B, units*H; summed
  // after the loop), 0 for none: a normalised step's, whose parameter gradients need the row's
  // normalised values, which only the step has at hand. Its bias's share too where b_hh enters
  // the step; else the bias's gradient is d xproj's sum and the rows start after it. (GRU's
  // d b_hh is its kept d(W_hh h + b_hh), summed.)
  constexpr int64_t step_param_row_units() const {
    return !normalized() ? 0 : b_hh_in_step ? step_param_units() : norm_param_units;
  }
  // The one-step op's (cell_forward) saved workspace per batch row, in units of H: the layer
  // workspace's parts but hprev, side by side (the op's input h is its hprev).
  constexpr int64_t step_workspace_units() const {
    int64_t units = 0;
    for (int i = 0; i < workspace_parts - 1; ++i) units += workspace[i].units;
    return units;
  }
};

// In the order of enum Cell.
// Workspace parts: RNN and IndRNN h_t (activated; its derivative needs it); GRU r, z, n and
// hn = W_hn h + b_hn; LSTM i, f, g, o activated, c_t, c_{t-1}; LayerNormLSTM and LayerNormGRU
// their base cell's with the recurrent product W_hh h before its normalisation.
inline constexpr WorkspacePart kHprev{"hprev", 1, true};
inline constexpr CellSpec kCells[] = {
    {Cell::RnnTanh, "rnn_tanh", /*gates=*/1, /*states=*/1, /*b_hh_in_step=*/false,
     /*projectable=*/false, {{"activations", 1, false}, kHprev}, 2},
    {Cell::RnnRelu, "rnn_relu", /*gates=*/1, /*states=*/1, /*b_hh_in_step=*/false,
     /*projectable=*/false, {{"activations", 1, false}, kHprev}, 2},
    {Cell::Gru, "gru", /*gates=*/3, /*states=*/1, /*b_hh_in_step=*/true, /*projectable=*/false,
     {{"gates", 4, false}, kHprev}, 2},
    {Cell::Lstm, "lstm", /*gates=*/4, /*states=*/2, /*b_hh_in_step=*/false, /*projectable=*/true,
     {{"gates", 4, false}, {"cells", 1, false}, {"prev_cells", 1, false}, kHprev}, 4},
    {Cell::IndrnnTanh, "indrnn_tanh", /*gates=*/1, /*states=*/1, /*b_hh_in_step=*/false,
     /*projectable=*/false, {{"activations", 1, false}, kHprev}, 2, Recurrence::Diagonal},
    {Cell::IndrnnRelu, "indrnn_relu", /*gates=*/1, /*states=*/1, /*b_hh_in_step=*/false,
     /*projectable=*/false, {{"activations", 1, false}, kHprev}, 2, Recurrence::Diagonal},
    {Cell::LayerNormLstm, "layer_norm_lstm", /*gates=*/4, /*states=*/2, /*b_hh_in_step=*/false,
     /*projectable=*/false,
     {{"gates", 4, false}, {"recurrent", 4, false}, {"cells", 1, false}, {"prev_cells", 1, false},
      kHprev},
     5, Recurrence::Dense, Normalization::LayerNorm, /*extra_weights=*/4,
     /*norm_param_units=*/6},
    {Cell::LayerNormGru, "layer_norm_gru", /*gates=*/3, /*states=*/1, /*b_hh_in_step=*/true,
     /*projectable=*/false, {{"gates", 4, false}, {"recurrent", 3, false}, kHprev}, 3,
     Recurrence::Dense, Normalization::LayerNorm, /*extra_weights=*/2, /*norm_param_units=*/3},
};

constexpr const CellSpec& spec(Cell cell) { return kCells[static_cast<int>(cell)]; }

}  // namespace fusedrnn
