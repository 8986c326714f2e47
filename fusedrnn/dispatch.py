"""Which implementation a module's call runs on CUDA: fusedrnn's fused kernels, or torch.nn's own
cuDNN call (the same numbers contract: torch.nn is what the fused path is checked against).

Until a table measured on the GPU present says otherwise, the default is torch.nn's cuDNN
wherever ATen would run cuDNN's persistent algorithm (one launch for the whole sequence,
CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H: ATen's get_algo in aten/src/ATen/native/cudnn/RNN.cpp),
which the fused per-step path, two launches a step, cannot beat; fused everywhere else (packed
input, proj_size, fp64, larger H), where cuDNN falls back to its standard algorithm too. No GPU
has timed either yet (README "CUDA").

FUSEDRNN_CUDA_PATH overrides the rule: "fused" (the test suite's setting: its CUDA cases are
there to check the fused kernels), "cudnn" (torch.nn's call wherever it has the cell), "auto".
"""
from __future__ import annotations

import os

import torch

# cuDNN's small-H persistent kernel (cuDNN >= 8.2.1, compute capability >= 6.0): the largest
# hidden size per mode, forward and backward, as ATen's use_rnn_persist_small_h.
_SMALL_H_LIMITS = {  # mode: (forward, backward)
    "RNN_TANH": (384, 256), "RNN_RELU": (384, 256), "GRU": (192, 128), "LSTM": (192, 128),
}
_MIN_CUDNN = 8201


def cudnn_persistent(mode: str, dtype: torch.dtype, hidden_size: int, proj_size: int,
                     packed: bool, backward: bool, cudnn_version: int | None,
                     capability: tuple[int, int]) -> bool:
    """Whether ATen runs cuDNN's persistent small-H algorithm for this call (forward, or its
    backward too where `backward`)."""
    if mode not in _SMALL_H_LIMITS or proj_size or packed or dtype == torch.float64:
        return False
    if cudnn_version is None or cudnn_version < _MIN_CUDNN or capability[0] < 6:
        return False
    forward_limit, backward_limit = _SMALL_H_LIMITS[mode]
    return hidden_size <= (backward_limit if backward else forward_limit)


def use_cudnn(module, x: torch.Tensor, packed: bool, needs_grad: bool) -> bool:
    """Whether `module` (a fused layer module of a cell torch.nn has) runs torch.nn's cuDNN call
    for input x (on CUDA; never elsewhere)."""
    if not x.is_cuda or not torch.backends.cudnn.enabled:
        return False
    choice = os.environ.get("FUSEDRNN_CUDA_PATH", "auto")
    if choice == "fused":
        return False
    if choice == "cudnn":
        return True
    return cudnn_persistent(module.mode, x.dtype, module.hidden_size, module.proj_size, packed,
                            needs_grad, torch.backends.cudnn.version(),
                            torch.cuda.get_device_capability(x.device))
