// The recurrent cells: what the C++ code knows about each, in one table. fusedrnn/cells.py is
// the Python one; tests/test_api.py checks that the two agree, through the ops' shapes.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace fusedrnn {

enum class Cell { RnnTanh, RnnRelu, Gru, Lstm };

struct CellSpec {
  Cell cell;
  const char* name;  // the ops' `cell` argument
  // Gate blocks of H rows in W_ih / W_hh (and b_ih / b_hh): RNN 1, GRU 3 (r, z, n),
  // LSTM 4 (i, f, g, o).
  int64_t gates;
  int64_t states;  // 1: h; 2: h and the cell state c
  // The one-step op's (cell_forward) saved workspace per batch row, in units of H:
  // RNN h'; GRU r, z, n, hn; LSTM i, f, g, o, c'.
  int64_t step_workspace;
  // b_hh enters the step itself (GRU: n = tanh(x_n + r * (W_hn h + b_hn))) instead of adding to
  // the input projection.
  bool b_hh_in_step;

  bool has_cell_state() const { return states == 2; }
};

// In the order of enum Cell.
inline constexpr CellSpec kCells[] = {
    {Cell::RnnTanh, "rnn_tanh", /*gates=*/1, /*states=*/1, /*step_workspace=*/1, false},
    {Cell::RnnRelu, "rnn_relu", /*gates=*/1, /*states=*/1, /*step_workspace=*/1, false},
    {Cell::Gru, "gru", /*gates=*/3, /*states=*/1, /*step_workspace=*/4, true},
    {Cell::Lstm, "lstm", /*gates=*/4, /*states=*/2, /*step_workspace=*/5, false},
};

inline const CellSpec& spec(Cell cell) { return kCells[static_cast<int>(cell)]; }

inline Cell parse_cell(std::string_view name) {
  std::string known;
  for (const CellSpec& c : kCells) {
    if (name == c.name) return c.cell;
    known += (known.empty() ? "'" : ", '") + std::string(c.name) + "'";
  }
  TORCH_CHECK_VALUE(false, "fusedrnn: unknown cell '", name, "'; expected one of [", known, "]");
}

}  // namespace fusedrnn
