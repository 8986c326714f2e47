"""Functional API: a whole stack of recurrent layers (layers x directions) on padded input.

Each layer/direction is one input-projection GEMM for all steps followed by one fused recurrent op
(torch.ops.fusedrnn.*_forward) that runs the whole time loop; the composition itself is the C++
op torch.ops.fusedrnn.recurrent_layer / recurrent_stack (csrc/functional.cpp). This module adds
the dtype handling around it (autocast on CUDA as torch.nn does; CPU autocast off; half types on
the CPU computed in float32).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (autograd / fake registrations)
from .cells import CELLS

ops = torch.ops.fusedrnn
_recurrent_stack_op = ops.recurrent_stack.default

# CPU kernels compute in these dtypes; half types run in float32 and are cast back.
_CPU_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _lengths_on(x: Tensor, lengths: Tensor) -> Tensor:
    """lengths as int64 on x's device. From CPU to a GPU through pinned memory and a
    non-blocking copy: a copy from pageable memory would make the host wait for the GPU."""
    lengths = lengths.to(dtype=torch.int64)
    # Not while a CUDA graph is captured: the pinned buffer would be freed before a replay reads
    # it (the plain copy fails loudly there instead).
    if (x.is_cuda and lengths.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing()):
        return lengths.pin_memory().to(x.device, non_blocking=True)
    return lengths.to(x.device)


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
    cuda_loop: int = 0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer, one direction.

    x (T, B, I) time-major; h0 (B, P); c0 (B, H) for LSTM; lengths (B,) int64 or None;
    cuda_loop: how CUDA runs the steps (fusedrnn.dispatch.CUDA_LOOP; ignored on the CPU).
    Returns output (T, B, P), h_n (B, P), c_n (B, H) or None.
    """
    out, h_n, c_n = ops.recurrent_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                        reverse, cuda_loop)
    return out, h_n, c_n if CELLS[cell].has_cell_state else None


def recurrent_stack(
    cell: str,
    x: Tensor,
    h0: Tensor | None,
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
    cuda_loop: int = 0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The whole stack, as torch.nn.RNN/GRU/LSTM computes it.

    x (T, B, I) time-major (zero-padded past lengths); h0 (L*D, B, P); c0 (L*D, B, H) for LSTM
    (None: zeros);
    flat_weights in torch.nn's order (weight_ih, weight_hh, [bias_ih, bias_hh], [weight_hr] per
    layer, forward before reverse). Dropout applies to the outputs of all but the last layer.
    cuda_loop: how CUDA runs each layer's steps (fusedrnn.dispatch.CUDA_LOOP; ignored on the CPU).
    Returns output (T, B, D*P), h_n (L*D, B, P), c_n (L*D, B, H) or None.
    """
    dtype, device_type = x.dtype, x.device.type  # x.device builds an object: read it once
    if device_type == "cuda" and torch.is_autocast_enabled("cuda"):
        # Like torch.nn's cuDNN RNN under autocast: run the whole stack in the autocast dtype.
        low = torch.get_autocast_dtype("cuda")
        cast = lambda t: None if t is None else t.to(low)  # noqa: E731
        with torch.autocast("cuda", enabled=False):
            return recurrent_stack(
                cell, cast(x), cast(h0), cast(c0), [cast(w) for w in flat_weights],
                num_layers=num_layers, bidirectional=bidirectional, bias=bias, proj_size=proj_size,
                dropout=dropout, training=training, lengths=lengths, cuda_loop=cuda_loop)
    if device_type == "cpu" and torch.is_autocast_enabled("cpu"):
        # torch.nn's CPU layers disagree under autocast (RNN returns bf16, GRU float32, LSTM
        # raises in oneDNN); the stack runs without it, in the dtype it is given.
        with torch.autocast("cpu", enabled=False):
            return recurrent_stack(
                cell, x, h0, c0, flat_weights, num_layers=num_layers, bidirectional=bidirectional,
                bias=bias, proj_size=proj_size, dropout=dropout, training=training,
                lengths=lengths, cuda_loop=cuda_loop)
    if device_type == "cpu" and dtype not in _CPU_COMPUTE_DTYPES:
        # bf16/fp16 on CPU: compute in float32, return the caller's dtype.
        up = lambda t: None if t is None else t.float()  # noqa: E731
        out, h_n, c_n = recurrent_stack(
            cell, x.float(), up(h0), up(c0), [w.float() for w in flat_weights],
            num_layers=num_layers, bidirectional=bidirectional, bias=bias, proj_size=proj_size,
            dropout=dropout, training=training, lengths=lengths, cuda_loop=cuda_loop)
        return out.to(dtype), h_n.to(dtype), None if c_n is None else c_n.to(dtype)
    if lengths is not None:
        lengths = _lengths_on(x, lengths)

    weights = flat_weights if isinstance(flat_weights, list) else list(flat_weights)
    out, h_n, c_n = _recurrent_stack_op(cell, x, h0, c0, weights, num_layers, bidirectional, bias,
                                        proj_size, dropout, training, lengths, cuda_loop)
    return out, h_n, c_n if CELLS[cell].has_cell_state else None
