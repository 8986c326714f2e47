"""Pure-PyTorch references for the cells torch.nn lacks (IndRNN).

A cell torch.nn has is checked against torch.nn's module; one it lacks is checked against its
reference: the cell's step written in plain torch ops (the module's `_reference_step`), run here
step by step over layers and directions with torch.nn's semantics. The tests and
`python -m fusedrnn verify` / `bench` use it where they would use torch.nn (float64 reference,
gradients by autograd), and the module computes with it wherever the others fall back to
torch.nn's forward (torch.func transforms, ONNX export). Slow: a few ops per step.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cells import CELLS

# (x_t (B, I), states (h (B, H) [, c (B, H)]), one layer-direction's weights in torch.nn's flat
# order) -> the new states; the output at t is the new h.
Step = Callable[[Tensor, tuple, Sequence[Tensor]], tuple]


def reference_stack(step: Step, cell: str, x: Tensor, h0: Tensor | None, c0: Tensor | None,
                    flat_weights: Sequence[Tensor], *, num_layers: int, bidirectional: bool,
                    bias: bool, proj_size: int = 0, dropout: float = 0.0, training: bool = False,
                    lengths: Tensor | None = None, cuda_loop: int = 0
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
    """fusedrnn.functional.recurrent_stack's contract (shapes there; `cell` names its table row),
    computed by `step`: rows past their length keep their state and output zeros, the reverse
    direction runs from each row's last step, dropout between layers draws as torch.nn does
    (over the packed rows where lengths are given on the CPU). cuda_loop: the fused stack's,
    taken and ignored (the reference runs no fused loop)."""
    del bias, proj_size, cuda_loop  # the weights list says both
    # h0 / c0 None: zeros of H (a diagonal w_hh (H) of one gate, else (G*H, H)).
    T, B = x.shape[0], x.shape[1]
    directions = 2 if bidirectional else 1
    groups = num_layers * directions
    per_group = len(flat_weights) // groups
    H = flat_weights[1].shape[0] if flat_weights[1].dim() == 1 else flat_weights[1].shape[1]
    if h0 is None:
        h0 = x.new_zeros(groups, B, H)
    if c0 is None and CELLS[cell].has_cell_state:
        c0 = x.new_zeros(groups, B, H)
    # (T, B): whether row b runs step t
    active = None if lengths is None else (
        torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device).unsqueeze(0))
    layer_input, h_n, c_n = x, [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            g = layer * directions + direction
            weights = flat_weights[g * per_group:(g + 1) * per_group]
            states = (h0[g],) if c0 is None else (h0[g], c0[g])
            steps = [None] * T
            for t in (range(T - 1, -1, -1) if direction else range(T)):
                new = step(layer_input[t], states, weights)
                if active is None:
                    steps[t] = new[0]
                else:
                    row_active = active[t].unsqueeze(1)
                    new = tuple(torch.where(row_active, n, s) for n, s in zip(new, states))
                    steps[t] = torch.where(row_active, new[0], torch.zeros_like(new[0]))
                states = new
            outputs.append(torch.stack(steps))
            h_n.append(states[0])
            if c0 is not None:
                c_n.append(states[1])
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 2)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = _dropout_between_layers(layer_input, lengths, dropout)
    return layer_input, torch.stack(h_n), torch.stack(c_n) if c_n else None


def _dropout_between_layers(output: Tensor, lengths: Tensor | None, p: float) -> Tensor:
    """Dropout on a padded (T, B, F) layer output, drawn as torch.nn (and the fused stack) draw
    it: over the packed rows where lengths (all positive) are given on the CPU, in
    pack_padded_sequence's order (rows sorted by decreasing length, stably)."""
    if lengths is None or not output.is_cpu or not lengths.is_cpu or \
            not bool((lengths > 0).all()):
        return torch.nn.functional.dropout(output, p, True)
    sorted_lengths, order = lengths.sort(stable=True, descending=True)
    packed = pack_padded_sequence(output.index_select(1, order), sorted_lengths)
    dropped = packed._replace(data=torch.nn.functional.dropout(packed.data, p, True))
    padded = pad_packed_sequence(dropped, total_length=output.shape[0])[0]
    return padded.index_select(1, torch.argsort(order))


@functools.cache
def reference_module(cls: type) -> type:
    """The pure-PyTorch twin of a fused module class whose cell torch.nn lacks: same
    constructor, parameters and input handling, forward computed by the cell's reference."""
    def forward(self, input, hx=None):
        return self._forward(input, hx, reference=True)

    return type(cls.__name__ + "Reference", (cls,), {"forward": forward, "__module__": __name__})
