"""fusedrnn: fused RNN/GRU/LSTM time loops as torch ops, with torch.nn drop-in modules.

    import fusedrnn
    lstm = fusedrnn.LSTM(64, 256, num_layers=2)   # same signature and weights as torch.nn.LSTM
"""
import torch  # noqa: F401  (loads libc10/libtorch before the extension)

from . import _C  # noqa: F401  (registers the torch.ops.fusedrnn.* kernels)
from . import _ops  # noqa: F401  (fake kernels and autograd for those ops)
from .convert import convert, to_torch
from .functional import recurrent_layer, recurrent_stack
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .indrnn import IndRNN
from .layer_norm_gru import LayerNormGRU
from .layer_norm_lstm import LayerNormLSTM

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "IndRNN", "LayerNormLSTM",
           "LayerNormGRU", "convert", "to_torch", "recurrent_layer", "recurrent_stack"]
__version__ = "0.1.0"
