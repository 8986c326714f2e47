// The recurrent cells by name, as the ops' `str cell` argument spells them.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <string_view>

namespace fusedrnn {

enum class Cell { RnnTanh, RnnRelu, Gru, Lstm };

inline Cell parse_cell(std::string_view name) {
  if (name == "rnn_tanh") return Cell::RnnTanh;
  if (name == "rnn_relu") return Cell::RnnRelu;
  if (name == "gru") return Cell::Gru;
  if (name == "lstm") return Cell::Lstm;
  TORCH_CHECK_VALUE(false, "fusedrnn: unknown cell '", name,
                    "'; expected one of ['rnn_tanh', 'rnn_relu', 'gru', 'lstm']");
}

inline const char* cell_name(Cell cell) {
  switch (cell) {
    case Cell::RnnTanh: return "rnn_tanh";
    case Cell::RnnRelu: return "rnn_relu";
    case Cell::Gru: return "gru";
    default: return "lstm";
  }
}

// Gate blocks of H rows in W_ih / W_hh: RNN 1, GRU 3 (r, z, n), LSTM 4 (i, f, g, o).
inline int64_t num_gates(Cell cell) {
  return cell == Cell::Gru ? 3 : cell == Cell::Lstm ? 4 : 1;
}

}  // namespace fusedrnn
