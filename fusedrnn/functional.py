"""Functional API: a whole stack of recurrent layers (layers x directions) on padded input.

Each layer/direction is one input-projection GEMM for all steps (F.linear) followed by one fused
recurrent op (torch.ops.fusedrnn.*_forward) that runs the whole time loop.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops  # noqa: F401  (autograd / fake registrations)

ops = torch.ops.fusedrnn

#: cell name -> number of gates stacked in weight_ih / weight_hh
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}

# CPU kernels compute in these dtypes; half types run in float32 and are cast back.
_CPU_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _needs_workspace(tensors: Sequence[Tensor | None]) -> bool:
    """Forward saves what backward needs only when a gradient can flow."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def recurrent_layer(
    cell: str,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer, one direction.

    x (T, B, I) time-major; h0 (B, P); c0 (B, H) for LSTM; lengths (B,) int64 or None.
    Returns output (T, B, P), h_n (B, P), c_n (B, H) or None.
    """
    save = _needs_workspace((x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    if cell == "gru":
        xproj = F.linear(x, w_ih, b_ih)
        out, h_n, _, _ = ops.gru_forward(xproj, h0, w_hh, b_hh, lengths, reverse, save)
        return out, h_n, None
    bias = None if b_ih is None else b_ih + b_hh
    xproj = F.linear(x, w_ih, bias)
    if cell == "lstm":
        out, h_n, c_n, *_ = ops.lstm_forward(xproj, h0, c0, w_hh, w_hr, lengths, reverse, save)
        return out, h_n, c_n
    out, h_n, _ = ops.rnn_forward(xproj, h0, w_hh, lengths, reverse, cell == "rnn_relu", save)
    return out, h_n, None


def split_layer_weights(
    flat_weights: Sequence[Tensor], num_layers: int, num_directions: int, bias: bool, proj: bool
) -> list[tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]]:
    """torch.nn's flat parameter list -> per (layer, direction): (w_ih, w_hh, b_ih, b_hh, w_hr)."""
    per_group = 2 + 2 * bias + proj
    groups = []
    for g in range(num_layers * num_directions):
        params = list(flat_weights[g * per_group:(g + 1) * per_group])
        w_ih, w_hh = params[0], params[1]
        b_ih, b_hh = (params[2], params[3]) if bias else (None, None)
        w_hr = params[-1] if proj else None
        groups.append((w_ih, w_hh, b_ih, b_hh, w_hr))
    return groups


def recurrent_stack(
    cell: str,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    flat_weights: Sequence[Tensor],
    *,
    num_layers: int,
    bidirectional: bool,
    bias: bool,
    proj_size: int = 0,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The whole stack, as torch.nn.RNN/GRU/LSTM computes it.

    x (T, B, I) time-major (zero-padded past lengths); h0 (L*D, B, P); c0 (L*D, B, H) for LSTM;
    flat_weights in torch.nn's order (weight_ih, weight_hh, [bias_ih, bias_hh], [weight_hr] per
    layer, forward before reverse). Dropout applies to the outputs of all but the last layer.
    Returns output (T, B, D*P), h_n (L*D, B, P), c_n (L*D, B, H) or None.
    """
    if cell not in NUM_GATES:
        raise ValueError(f"fusedrnn: unknown cell {cell!r}; expected one of {list(NUM_GATES)}")
    dtype = x.dtype
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # Like torch.nn's cuDNN RNN under autocast: run the whole stack in the autocast dtype.
        low = torch.get_autocast_dtype("cuda")
        cast = lambda t: None if t is None else t.to(low)  # noqa: E731
        with torch.autocast("cuda", enabled=False):
            return recurrent_stack(
                cell, cast(x), cast(h0), cast(c0), [cast(w) for w in flat_weights],
                num_layers=num_layers, bidirectional=bidirectional, bias=bias, proj_size=proj_size,
                dropout=dropout, training=training, lengths=lengths)
    if x.device.type == "cpu" and dtype not in _CPU_COMPUTE_DTYPES:
        # bf16/fp16 on CPU: compute in float32, return the caller's dtype.
        up = lambda t: None if t is None else t.float()  # noqa: E731
        out, h_n, c_n = recurrent_stack(
            cell, x.float(), h0.float(), up(c0), [w.float() for w in flat_weights],
            num_layers=num_layers, bidirectional=bidirectional, bias=bias, proj_size=proj_size,
            dropout=dropout, training=training, lengths=lengths)
        return out.to(dtype), h_n.to(dtype), None if c_n is None else c_n.to(dtype)
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int64)

    num_directions = 2 if bidirectional else 1
    groups = split_layer_weights(flat_weights, num_layers, num_directions, bias, proj_size > 0)
    h_n, c_n = [], []
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            g = layer * num_directions + direction
            out, h, c = recurrent_layer(
                cell, layer_input, h0[g], None if c0 is None else c0[g], *groups[g],
                lengths=lengths, reverse=direction == 1)
            outputs.append(out)
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    return layer_input, torch.stack(h_n), torch.stack(c_n) if c0 is not None else None
