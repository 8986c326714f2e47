"""What the layer-normalised modules (haste's cells: fusedrnn.LayerNormLSTM, LayerNormGRU)
share: their layer-norm parameters after torch.nn's in the flat order, and haste's
initialisation."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

EPS = 1e-5  # haste's layer-norm epsilon (csrc/cell_table.h: kLayerNormEps)


def add_layer_norm_parameters(module: nn.RNNBase, parameters: Sequence[tuple[str, int]],
                              device=None, dtype=None) -> None:
    """Registers, for each layer-direction of `module` (a torch.nn.RNNBase just built), the
    parameters (name, size) as name + "_l{k}[_reverse]" after torch.nn's, in that flat order
    (csrc/cell_table.h: extra_weights), uninitialised."""
    all_weights = []
    for names in module._all_weights:
        suffix = names[0][len("weight_ih"):]  # "_l{k}" or "_l{k}_reverse"
        extra = [name + suffix for name, _ in parameters]
        for name, (_, size) in zip(extra, parameters):
            setattr(module, name, nn.Parameter(torch.empty(size, device=device, dtype=dtype)))
        all_weights.append(list(names) + extra)
    module._all_weights = all_weights
    module._flat_weights_names = [name for names in all_weights for name in names]
    module._init_flat_weights()


def reset_haste_parameters(module: nn.RNNBase) -> None:
    """haste's initialisation: weight_ih Xavier-uniform and weight_hh orthogonal per gate block
    of hidden_size rows, biases and layer-norm biases zero, layer-norm gains one."""
    H = module.hidden_size
    with torch.no_grad():
        for name, weight in module.named_parameters():
            if name.startswith("weight_ih"):
                for block in weight.split(H, 0):
                    nn.init.xavier_uniform_(block)
            elif name.startswith("weight_hh"):
                for block in weight.split(H, 0):
                    nn.init.orthogonal_(block)
            elif name.startswith("layer_norm") and "_weight" in name:
                nn.init.ones_(weight)
            else:  # biases
                nn.init.zeros_(weight)


def reorder_gate_blocks(t: Tensor, order: Sequence[int], dim: int = 0) -> Tensor:
    """t with the gate blocks of its dimension `dim` taken in `order` (block indices)."""
    blocks = t.chunk(len(order), dim)
    return torch.cat([blocks[k] for k in order], dim)
