"""fusedrnn.IndRNN: the independently recurrent network (Li et al., CVPR 2018) as haste
(lmnt-com/haste) computes it, with torch.nn.RNN's interface:

    h_t = act(W_ih x_t + b_ih + b_hh + w_hh ⊙ h_{t-1}),   act = tanh (default) or relu

Each unit sees only its own past: w_hh is a vector u (hidden_size), not a matrix, so the fused
time loops multiply elementwise instead of running a GEMM per step (the cell table's diagonal
recurrence, csrc/cell_table.h); the step itself is the RNN's.

Parameters are named and shaped as torch.nn.RNN's but for weight_hh_l{k}[_reverse], which is
(hidden_size,). Initialised as haste's: weight_ih Xavier-uniform, weight_hh uniform(-0.5, 0.5)
(haste's current choice; its first release, like the paper's code, drew from (-1, 1)), biases
zero. haste has one bias; the two here (torch.nn's layout) add up to it: a haste
checkpoint loads as weight_ih = kernel.T, weight_hh = recurrent_scale, bias_ih = bias,
bias_hh = 0.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .modules import _FusedRNNBase

__all__ = ["IndRNN"]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class IndRNN(_FusedRNNBase):
    """IndRNN layers with torch.nn.RNN's constructor, inputs (tensor, batch_first, unbatched,
    PackedSequence; h0 (num_layers * directions, B, H)) and outputs."""

    _display_name = "IndRNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None) -> None:
        if nonlinearity not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        # torch.nn's RNN layout (names, order, input weights, biases); weight_hh replaced below.
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, device, dtype)
        self.mode = "INDRNN_" + nonlinearity.upper()
        for name in self._flat_weights_names:
            if name.startswith("weight_hh"):
                setattr(self, name, nn.Parameter(
                    torch.empty(hidden_size, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """haste's initialisation (module docstring)."""
        for name, weight in self.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(weight)
            elif name.startswith("weight_hh"):
                nn.init.uniform_(weight, -0.5, 0.5)
            else:
                nn.init.zeros_(weight)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else f"{s}, nonlinearity={self.nonlinearity}"

    def flatten_parameters(self) -> None:
        """Nothing to do: the weights are used as they are (torch.nn's version would hand them
        to cuDNN, which has no IndRNN)."""

    def _reference_step(self, x_t: Tensor, states: tuple, weights) -> tuple:
        """One step in plain PyTorch (fusedrnn.reference): x_t (B, I), states (h (B, H),)."""
        w_ih, w_hh, *biases = weights
        pre = x_t @ w_ih.t() + w_hh * states[0]
        for b in biases:
            pre = pre + b
        return (_ACTIVATIONS[self.nonlinearity](pre),)

    def __prepare_scriptable__(self):
        raise RuntimeError("torch.jit.script: fusedrnn.IndRNN has no torch.nn counterpart to "
                           "compile in its place; torch.jit.trace, torch.compile and "
                           "torch.export keep the fused kernels")
