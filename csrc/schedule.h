// Which time slot batch row b works on at loop step s, shared by the CPU and CUDA time loops.
//
// Rows run lengths[b] steps (all T without lengths); afterwards they are inactive: state frozen,
// and step s zeroes the padded slot s (s >= lengths[b]), so every slot of every row is written
// exactly once. The reverse direction walks each row's own valid range backwards.
#pragma once

#include <cstdint>

#include "gate_math.h"  // FUSEDRNN_HOST_DEVICE

namespace fusedrnn {

struct Schedule {
  int64_t T;
  bool reverse;
  const int64_t* lengths;  // (B) or nullptr; on the device for CUDA ops

  // Clamped to [0, T]: the CPU ops validate lengths, CUDA ops cannot without a host sync, and a
  // bad value must never index outside the tensors.
  FUSEDRNN_HOST_DEVICE int64_t length(int64_t b) const {
    if (lengths == nullptr) return T;
    const int64_t len = lengths[b];
    return len < 0 ? 0 : len > T ? T : len;
  }
  FUSEDRNN_HOST_DEVICE bool active(int64_t s, int64_t b) const { return s < length(b); }
  FUSEDRNN_HOST_DEVICE int64_t slot(int64_t s, int64_t b) const {
    if (!reverse || !active(s, b)) return s;
    return length(b) - 1 - s;
  }
};

}  // namespace fusedrnn
