"""fusedrnn.LayerNormLSTM: the layer-normalised LSTM as haste (lmnt-com/haste) computes it, with
torch.nn.LSTM's interface (no proj_size):

    x̃_t = LN(W_ih x_t; γ_ih)                       over the 4H gate pre-activations, no β
    v   = x̃_t + LN(W_hh h_{t-1}; γ_hh) + b_ih + b_hh
    i, f, g, o = σ(v_i), σ(v_f), tanh(v_g), σ(v_o)
    c_t = f c_{t-1} + i g                          (the un-normalised c is carried)
    h_t = o tanh(LN(c_t; γ_c, β_c))

LN(z; γ, β) = (z - mean(z)) / sqrt(var(z) + 1e-5) · γ + β over the row, with the biased
variance: torch.nn.functional.layer_norm, as haste's own reference script uses.

Parameters: torch.nn.LSTM's per layer and direction (weight_ih_l{k}[_reverse] (4H, I),
weight_hh_l{k} (4H, H), bias_ih_l{k} / bias_hh_l{k} (4H), gate order i, f, g, o), then
layer_norm_ih_weight_l{k} (4H, γ_ih), layer_norm_hh_weight_l{k} (4H, γ_hh),
layer_norm_c_weight_l{k} (H, γ_c), layer_norm_c_bias_l{k} (H, β_c). Initialised as haste's:
weight_ih Xavier-uniform and weight_hh orthogonal per gate block, biases zero but the forget
gate's bias_ih = forget_bias (1.0), γ = 1, β = 0.

haste orders the gates i, g, f, o and keeps W transposed, one bias and γ as one (2, 4H) tensor:
a haste checkpoint loads as weight_ih = kernel.T, weight_hh = recurrent_kernel.T, bias_ih = bias,
bias_hh = 0, layer_norm_ih_weight = gamma[0], layer_norm_hh_weight = gamma[1],
layer_norm_c_weight = gamma_h, layer_norm_c_bias = beta_h, every 4H-long one with its gate
blocks reordered from (i, g, f, o) to (i, f, g, o) (`from_haste_gate_order`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .layer_norm import EPS, add_layer_norm_parameters, reorder_gate_blocks, \
    reset_haste_parameters
from .modules import LSTM

__all__ = ["LayerNormLSTM", "from_haste_gate_order"]


def from_haste_gate_order(t: Tensor, dim: int = 0) -> Tensor:
    """A tensor whose dimension `dim` holds 4 gate blocks in haste's order (i, g, f, o), with its
    blocks in torch.nn's (i, f, g, o)."""
    return reorder_gate_blocks(t, (0, 2, 1, 3), dim)


class LayerNormLSTM(LSTM):
    """Layer-normalised LSTM layers (module docstring) with torch.nn.LSTM's constructor (plus
    forget_bias), inputs (tensor, batch_first, unbatched, PackedSequence; (h0, c0)) and
    outputs."""

    _display_name = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *,
                 forget_bias: float = 1.0) -> None:
        if proj_size:
            raise ValueError("LayerNormLSTM: proj_size is not supported (haste's layer-norm "
                             "LSTM has none)")
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)
        H = hidden_size
        add_layer_norm_parameters(self, [("layer_norm_ih_weight", 4 * H),
                                         ("layer_norm_hh_weight", 4 * H),
                                         ("layer_norm_c_weight", H), ("layer_norm_c_bias", H)],
                                  device, dtype)
        self.reset_parameters()

    def _cell_name(self) -> str:
        return "layer_norm_lstm"

    def reset_parameters(self) -> None:
        """haste's initialisation (module docstring)."""
        reset_haste_parameters(self)
        with torch.no_grad():
            for name, weight in self.named_parameters():
                if name.startswith("bias_ih"):
                    weight[self.hidden_size:2 * self.hidden_size] = self.forget_bias

    def flatten_parameters(self) -> None:
        """Nothing to do: the weights are used as they are (cuDNN has no layer-norm LSTM)."""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.forget_bias == 1.0 else f"{s}, forget_bias={self.forget_bias}"

    def _reference_step(self, x_t: Tensor, states: tuple, weights) -> tuple:
        """One step in plain PyTorch (fusedrnn.reference): x_t (B, I), states (h, c) (B, H);
        weights one layer-direction's in this module's flat order."""
        w_ih, w_hh, *rest = weights
        biases, (g_ih, g_hh, g_c, b_c) = rest[:-4], rest[-4:]
        h, c = states
        H = c.shape[1]
        v = F.layer_norm(x_t @ w_ih.t(), (4 * H,), g_ih, None, EPS) + \
            F.layer_norm(h @ w_hh.t(), (4 * H,), g_hh, None, EPS)
        for b in biases:
            v = v + b
        i, f, g, o = v.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), g_c, b_c, EPS))
        return h, c

    def __prepare_scriptable__(self):
        raise RuntimeError("torch.jit.script: fusedrnn.LayerNormLSTM has no torch.nn "
                           "counterpart to compile in its place; torch.jit.trace, torch.compile "
                           "and torch.export keep the fused kernels")
