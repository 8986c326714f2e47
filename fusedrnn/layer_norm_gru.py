"""fusedrnn.LayerNormGRU: the layer-normalised GRU as haste (lmnt-com/haste) computes it, with
torch.nn.GRU's interface:

    x̃_t = LN(W_ih x_t; γ_ih) + b_ih                 over the 3H gate pre-activations, no β
    h̃   = LN(W_hh h_{t-1}; γ_hh) + b_hh
    r   = σ(x̃_r + h̃_r),  z = σ(x̃_z + h̃_z)
    n   = tanh(x̃_n + r ⊙ h̃_n)                        (the reset gate after the product, as
                                                     torch.nn.GRU and haste)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

LN(z; γ) = (z - mean(z)) / sqrt(var(z) + 1e-5) · γ over the row, with the biased variance:
torch.nn.functional.layer_norm, as haste's own reference script uses. haste normalises nothing
else in this cell (no state to normalise, unlike LayerNormLSTM's c).

Parameters: torch.nn.GRU's per layer and direction (weight_ih_l{k}[_reverse] (3H, I),
weight_hh_l{k} (3H, H), bias_ih_l{k} / bias_hh_l{k} (3H), gate order r, z, n), then
layer_norm_ih_weight_l{k} (3H, γ_ih) and layer_norm_hh_weight_l{k} (3H, γ_hh). Initialised as
haste's: weight_ih Xavier-uniform and weight_hh orthogonal per gate block, biases zero, γ = 1.

haste orders the gates z, r, n and keeps W transposed and γ as one (2, 3H) tensor: a haste
checkpoint loads as weight_ih = kernel.T, weight_hh = recurrent_kernel.T, bias_ih = bias,
bias_hh = recurrent_bias, layer_norm_ih_weight = gamma[0], layer_norm_hh_weight = gamma[1],
each with its gate blocks reordered from (z, r, n) to (r, z, n) (`from_haste_gate_order`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .layer_norm import EPS, add_layer_norm_parameters, reorder_gate_blocks, \
    reset_haste_parameters
from .modules import GRU

__all__ = ["LayerNormGRU", "from_haste_gate_order"]


def from_haste_gate_order(t: Tensor, dim: int = 0) -> Tensor:
    """A tensor whose dimension `dim` holds 3 gate blocks in haste's order (z, r, n), with its
    blocks in torch.nn's (r, z, n)."""
    return reorder_gate_blocks(t, (1, 0, 2), dim)


class LayerNormGRU(GRU):
    """Layer-normalised GRU layers (module docstring) with torch.nn.GRU's constructor, inputs
    (tensor, batch_first, unbatched, PackedSequence; h0) and outputs."""

    _display_name = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype)
        add_layer_norm_parameters(self, [("layer_norm_ih_weight", 3 * hidden_size),
                                         ("layer_norm_hh_weight", 3 * hidden_size)],
                                  device, dtype)
        self.reset_parameters()

    def _cell_name(self) -> str:
        return "layer_norm_gru"

    def reset_parameters(self) -> None:
        """haste's initialisation (module docstring)."""
        reset_haste_parameters(self)

    def flatten_parameters(self) -> None:
        """Nothing to do: the weights are used as they are (cuDNN has no layer-norm GRU)."""

    def _reference_step(self, x_t: Tensor, states: tuple, weights) -> tuple:
        """One step in plain PyTorch (fusedrnn.reference): x_t (B, I), states (h (B, H),);
        weights one layer-direction's in this module's flat order."""
        w_ih, w_hh, *biases, g_ih, g_hh = weights
        b_ih, b_hh = biases if biases else (None, None)
        (h,) = states
        G = w_hh.shape[0]  # 3H
        xs = F.layer_norm(x_t @ w_ih.t(), (G,), g_ih, b_ih, EPS).chunk(3, 1)
        hs = F.layer_norm(h @ w_hh.t(), (G,), g_hh, b_hh, EPS).chunk(3, 1)
        r = torch.sigmoid(xs[0] + hs[0])
        z = torch.sigmoid(xs[1] + hs[1])
        n = torch.tanh(xs[2] + r * hs[2])
        return ((1 - z) * n + z * h,)

    def __prepare_scriptable__(self):
        raise RuntimeError("torch.jit.script: fusedrnn.LayerNormGRU has no torch.nn "
                           "counterpart to compile in its place; torch.jit.trace, torch.compile "
                           "and torch.export keep the fused kernels")
