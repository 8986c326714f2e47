"""The recurrent cells: what Python code knows about each, in one table.

The C++ side has its own table with the same facts (csrc/cell.h); tests/test_api.py checks that
the two agree, through the ops' shapes.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CellSpec:
    name: str           # the ops' `cell` argument
    mode: str           # torch.nn.RNNBase.mode of the layer module that runs it
    module: str         # the layer class in torch.nn and fusedrnn
    module_kwargs: dict  # constructor arguments that select this cell on that class
    gates: int          # gate blocks of H rows in W_ih / W_hh (and b_ih / b_hh)
    states: int         # 1: h; 2: h and the cell state c
    # The layer op's (time_loop_forward) saved workspace, in order: (name, width in units of H,
    # or of P for "P": the size of h); the last part is hprev (T, B, P).
    workspace: tuple[tuple[str, int, str], ...]
    # b_hh enters the step at a place of its own (GRU: inside r * (W_hn h + b_hn)) instead of
    # adding to the pre-activation with b_ih.
    b_hh_in_step: bool = False
    projectable: bool = False   # h may be projected to proj_size features (w_hr)
    # How h_{t-1} enters a step: "dense", W_hh h with w_hh (G*H, P); "diagonal", u * h per gate
    # block with w_hh = u (G*H,) (IndRNN).
    recurrence: str = "dense"
    # What the step normalises: "none", or "layer_norm" (LayerNormLSTM: W_hh h over the row's
    # G*H values and c over its H), with the step parameters' gains (csrc/cell_table.h).
    normalization: str = "none"
    # Weights per layer and direction after torch.nn's: a normalised cell's γ_ih, then its step
    # parameters after the bias (LayerNormLSTM: γ_ih, γ_hh, γ_c, β_c).
    extra_weights: int = 0
    # Those step parameters' size in units of H (LayerNormLSTM: 4 + 1 + 1).
    norm_param_units: int = 0
    # Whether torch.nn has the cell (its `module`); if not, the module's pure-PyTorch reference
    # (fusedrnn.reference) stands in for torch.nn in tests, verify and bench.
    in_torch_nn: bool = True
    # Whether fusedrnn has a one-step module for it (module + "Cell": RNNCell, GRUCell, LSTMCell).
    cell_module: bool = True

    @property
    def has_cell_state(self) -> bool:
        return self.states == 2

    @property
    def diagonal(self) -> bool:
        return self.recurrence == "diagonal"

    @property
    def normalized(self) -> bool:
        return self.normalization != "none"

    @property
    def step_param_units(self) -> int:
        """The time-loop op's step_params, in units of H (csrc/ops.cpp): the bias (G), then a
        normalised step's own (norm_param_units)."""
        return self.gates + self.norm_param_units

    @property
    def own_step_param_grad(self) -> bool:
        """Whether the op's backward returns the step parameters' gradient (elsewhere they are a
        bias on xproj)."""
        return self.b_hh_in_step or self.normalized

    @property
    def step_workspace(self) -> int:
        """The one-step op's (cell_forward) saved workspace per batch row, in units of H: the
        layer workspace's parts but hprev, side by side."""
        return sum(units for _, units, _ in self.workspace[:-1])


_HPREV = ("hprev", 1, "P")
CELLS: dict[str, CellSpec] = {spec.name: spec for spec in (
    CellSpec("rnn_tanh", "RNN_TANH", "RNN", {"nonlinearity": "tanh"}, gates=1, states=1,
             workspace=(("activations", 1, "H"), _HPREV)),
    CellSpec("rnn_relu", "RNN_RELU", "RNN", {"nonlinearity": "relu"}, gates=1, states=1,
             workspace=(("activations", 1, "H"), _HPREV)),
    CellSpec("gru", "GRU", "GRU", {}, gates=3, states=1,
             workspace=(("gates", 4, "H"), _HPREV), b_hh_in_step=True),
    CellSpec("lstm", "LSTM", "LSTM", {}, gates=4, states=2,
             workspace=(("gates", 4, "H"), ("cells", 1, "H"), ("prev_cells", 1, "H"), _HPREV),
             projectable=True),
    CellSpec("indrnn_tanh", "INDRNN_TANH", "IndRNN", {"nonlinearity": "tanh"}, gates=1,
             states=1, workspace=(("activations", 1, "H"), _HPREV), recurrence="diagonal",
             in_torch_nn=False, cell_module=False),
    CellSpec("indrnn_relu", "INDRNN_RELU", "IndRNN", {"nonlinearity": "relu"}, gates=1,
             states=1, workspace=(("activations", 1, "H"), _HPREV), recurrence="diagonal",
             in_torch_nn=False, cell_module=False),
    CellSpec("layer_norm_lstm", "LAYER_NORM_LSTM", "LayerNormLSTM", {}, gates=4, states=2,
             workspace=(("gates", 4, "H"), ("recurrent", 4, "H"), ("cells", 1, "H"),
                        ("prev_cells", 1, "H"), _HPREV),
             normalization="layer_norm", extra_weights=4, norm_param_units=6, in_torch_nn=False,
             cell_module=False),
    CellSpec("layer_norm_gru", "LAYER_NORM_GRU", "LayerNormGRU", {}, gates=3, states=1,
             workspace=(("gates", 4, "H"), ("recurrent", 3, "H"), _HPREV), b_hh_in_step=True,
             normalization="layer_norm", extra_weights=2, norm_param_units=3, in_torch_nn=False,
             cell_module=False),
)}

CELL_OF_MODE: dict[str, str] = {spec.mode: spec.name for spec in CELLS.values()}
# The cells torch.nn has (RNN tanh/relu, GRU, LSTM): those with torch.nn's own kernels to compare
# with or hand a call to, and ONNX's RNN/GRU/LSTM operators.
TORCH_NN_CELLS: frozenset[str] = frozenset(n for n, spec in CELLS.items() if spec.in_torch_nn)
