// The recurrent cells' table (csrc/cell_table.h) with its look-ups: by name (the ops' `cell`
// argument), and as a compile-time constant for the backends' templates.
#pragma once

#include <c10/util/Exception.h>

#include <string>
#include <string_view>
#include <type_traits>

#include "cell_table.h"

namespace fusedrnn {

// A cell known at run time as a compile-time constant, for the backends' loops, which are
// templates over the cell: visit_cell(cell, f) calls f(CellConstant<cell>{}).
template <Cell C>
using CellConstant = std::integral_constant<Cell, C>;

template <typename F>
decltype(auto) visit_cell(Cell cell, F&& f) {
  switch (cell) {
    case Cell::RnnTanh: return f(CellConstant<Cell::RnnTanh>{});
    case Cell::RnnRelu: return f(CellConstant<Cell::RnnRelu>{});
    case Cell::Gru: return f(CellConstant<Cell::Gru>{});
    case Cell::Lstm: return f(CellConstant<Cell::Lstm>{});
    case Cell::IndrnnTanh: return f(CellConstant<Cell::IndrnnTanh>{});
    case Cell::IndrnnRelu: return f(CellConstant<Cell::IndrnnRelu>{});
    case Cell::LayerNormLstm: return f(CellConstant<Cell::LayerNormLstm>{});
    case Cell::LayerNormGru: return f(CellConstant<Cell::LayerNormGru>{});
  }
  TORCH_CHECK(false, "fusedrnn: unknown cell ", static_cast<int>(cell));
}

inline Cell parse_cell(std::string_view name) {
  std::string known;
  for (const CellSpec& c : kCells) {
    if (name == c.name) return c.cell;
    known += (known.empty() ? "'" : ", '") + std::string(c.name) + "'";
  }
  TORCH_CHECK_VALUE(false, "fusedrnn: unknown cell '", name, "'; expected one of [", known, "]");
}

}  // namespace fusedrnn
