// The recurrent cells: what the code of every backend knows about each, in one table (plain
// C++, no torch headers: the CUDA kernels read it too). csrc/cell.h adds look-ups by name;
// fusedrnn/cells.py is the Python table, and tests/test_api.py checks that the two agree,
// through the ops' shapes.
#pragma once

#include <cstdint>

namespace fusedrnn {

enum class Cell { RnnTanh, RnnRelu, Gru, Lstm, IndrnnTanh, IndrnnRelu };

// How h_{t-1} enters a step: Dense, the product W_hh h with w_hh (G*H, P); Diagonal, u ⊙ h for
// each gate block with w_hh = u (G*H) (IndRNN: every unit sees only its own past), no GEMM.
enum class Recurrence { Dense, Diagonal };

// One workspace tensor the layer op (time_loop_forward) saves for its backward: (T, B, width),
// width `units` times H, or P (the size of h) for `of_h`.
struct WorkspacePart {
  const char* name;
  int64_t units;
  bool of_h;
};

// Parts per cell at most (LSTM: gates, cells, prev_cells, hprev), and gates.
inline constexpr int kMaxWorkspaceParts = 4;
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

  constexpr bool has_cell_state() const { return states == 2; }
  constexpr bool diagonal() const { return recurrence == Recurrence::Diagonal; }
  // Whether d(W_hh h (+ b_hh)) differs from d xproj, so backward keeps it for every step (the
  // W_hh gradient and the b_hh sum): where b_hh enters the step (GRU: behind the reset gate).
  constexpr bool own_recurrent_grad() const { return b_hh_in_step; }
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
// hn = W_hn h + b_hn; LSTM i, f, g, o activated, c_t, c_{t-1}.
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
};

constexpr const CellSpec& spec(Cell cell) { return kCells[static_cast<int>(cell)]; }

}  // namespace fusedrnn
