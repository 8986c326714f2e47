// Hidden units per block of the CPU time loops: the unit of work a thread owns, the column width
// of a packed weight panel (two 8-float AVX2 registers) and the trip count the gate loops are
// specialised for.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace cpu {

constexpr int64_t kBlockUnits = 16;

}  // namespace cpu
}  // namespace fusedrnn
