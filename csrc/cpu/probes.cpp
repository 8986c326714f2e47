// Measurement probes of the CPU backend, for the benchmarks and tests: a library of their own
// (torch.ops.fusedrnn_probes, wrapped by fusedrnn/probes.py), apart from the fused ops.
#include <torch/library.h>

#include "isa.h"
#include "machine_load.h"
#include "packed_gemm.h"
#include "team.h"

// Catch-all kernels.
TORCH_LIBRARY(fusedrnn_probes, m) {
  // The cores' FMA rate in the packed kernel's vector form (the benchmark's GEMM floors).
  m.def("fma_peak_gflops(float seconds) -> float", &fusedrnn::cpu::fma_peak_gflops);
  // The thread teams' record on a busy machine (csrc/cpu/team.h).
  m.def("team_counts() -> int[]", &fusedrnn::cpu::TeamContention::totals);
  // The machine's load as the ops read it (csrc/cpu/machine_load.h).
  m.def("machine_load() -> float[]", &fusedrnn::cpu::MachineLoad::summary);
  // Whether the CPU has native bfloat16 dot products (fusedrnn.dispatch's CPU rule).
  m.def("native_bf16() -> bool", &fusedrnn::cpu::cpu_has_native_bf16);
  // The input projection on the packed kernels, without autograd (csrc/cpu/packed_gemm.h).
  m.def("packed_linear(Tensor x, Tensor w, Tensor? bias, bool w_is_nk=True) -> Tensor",
        &fusedrnn::cpu::packed_linear);
}
