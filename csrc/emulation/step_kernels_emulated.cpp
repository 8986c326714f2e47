// The CUDA step kernels (csrc/cuda/step_kernels.cu), unchanged, compiled by the host compiler for
// the SIMT emulation (FUSEDRNN_SIMT_EMULATION, set by tests/emulation.py).
#include "../cuda/step_kernels.cu"
