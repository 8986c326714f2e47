"""Drop-in replacements for torch.nn.RNN/GRU/LSTM and RNNCell/GRUCell/LSTMCell.

Same constructors, parameters (names, shapes, order, init), state_dict, repr, forward signatures,
outputs and error messages as torch.nn; the time loop runs in fused ops (fusedrnn.functional).

They derive from nn.RNNBase / nn.RNNCellBase, never from nn.RNN/GRU/LSTM: torch.compile's Dynamo
refuses any module that is an instance of those three.
"""
from __future__ import annotations

import functools
import itertools
import operator
import sys
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import dispatch
from .cells import CELL_OF_MODE, TORCH_NN_CELLS
from .functional import _CPU_COMPUTE_DTYPES, _recurrent_stack_op, recurrent_stack
from .reference import reference_stack

__all__ = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]

# Cells on the CPU in these dtypes run the fused step op; others (half types, CUDA) the layer path.
_CPU_CELL_DTYPES = (torch.float32, torch.float64)
_cell_forward = torch.ops.fusedrnn.cell_forward.default
# One step of a one-layer, one-direction stack (a decoder's call per token) for torch.nn's cells.
_layer_step = torch.ops.fusedrnn.layer_step.default


def _read_weights(module: nn.Module, names, stale=None) -> list[Tensor | None]:
    """module's weights by name, from _parameters (a parametrization or a reassignment falls back
    to getattr): nn.Module's __getattr__ costs ~0.5 us a weight, a third of a small fused step.
    A deleted weight reads as its entry in `stale` where given: torch.nn's RNNs keep computing
    with the tensor their _flat_weights still hold."""
    params = module._parameters
    if stale is None:
        return [params[n] if n in params else getattr(module, n) for n in names]
    return [params[n] if n in params else getattr(module, n, old) for n, old in zip(names, stale)]


def _any_none(values) -> bool:
    return any(map(operator.is_, values, itertools.repeat(None)))


def _cpu_bfloat16_call(data, read_weights, hx) -> list[Tensor] | None:
    """The weights (read_weights(); absent biases left out) and states of a CPU call on input
    data where all of them are bfloat16 and neither torch.compile nor CPU autocast runs: the
    only calls the CPU bfloat16 dispatch (fusedrnn.dispatch) may send to torch.nn, whose
    results and errors with mixed dtypes are not the fused path's (they must not change with
    a layer's size). None otherwise."""
    if not isinstance(data, Tensor) or data.dtype != torch.bfloat16 or not data.is_cpu or \
            torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return None
    states = () if hx is None else tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
    tensors = [w for w in read_weights() if w is not None] + list(states)
    bf16 = all(isinstance(t, Tensor) and t.dtype == torch.bfloat16 for t in tensors)
    return tensors if bf16 else None


def _well_formed_batch_sizes(data: Tensor, batch_sizes: Tensor) -> bool:
    """Whether a (possibly hand-built) PackedSequence can go to the fused path, checked before
    anything reads its data (ATen's _pad_packed_sequence corrupts the heap on, e.g., batch_sizes
    [3, 0, 1]). Where torch.nn raises, the same error: its packed loop narrows the data step by
    step. Zero or increasing batch sizes, on which torch.nn computes on whatever rows its loop
    reaches, are not well formed: the caller runs torch.nn's own forward on them."""
    int(batch_sizes[0])  # empty: torch.nn's IndexError (it reads the largest batch first)
    if bool((batch_sizes > 0).all()) and (
            batch_sizes.numel() == 1 or bool((batch_sizes[1:] <= batch_sizes[:-1]).all())) and (
            int(batch_sizes.sum()) <= data.size(0)):
        return True
    start, rows = 0, data.size(0)
    for size in batch_sizes.tolist():
        if size < 0:
            raise RuntimeError("narrow(): length must be non-negative.")
        if start + size > rows:
            raise RuntimeError(f"start ({start}) + length ({size}) exceeds dimension size ({rows}).")
        start += size
    return False


def _unpack(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """Well-formed PackedSequence data -> padded (T, B, *) in sorted order, and lengths (B,)
    int64 on CPU."""
    padded, lengths = torch.ops.aten._pad_packed_sequence(
        packed.data, packed.batch_sizes, False, 0.0, packed.batch_sizes.size(0))
    return padded, lengths


def _repack(padded: Tensor, lengths: Tensor) -> Tensor:
    """Padded (T, B, *) in sorted order -> PackedSequence data (sum(lengths), *)."""
    data, _ = torch.ops.aten._pack_padded_sequence(padded, lengths, False)
    return data


def _exporting_to_onnx() -> bool:
    """Whether torch.onnx.export (either exporter) is tracing us: then the modules run torch.nn's
    forward, which both exporters translate to ONNX's RNN/GRU/LSTM operators or their
    decomposition. No export can be running while torch.onnx was never imported."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def _under_torch_func() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, vmap, ...) is running: the fused ops'
    autograd nodes are C++ ones, which functorch refuses, so the modules then compute torch.nn's
    forward (torch.func works on it as on torch.nn's modules; no fused speed there)."""
    # torch.compile traces through functorch's machinery too: there the fused ops are wanted.
    return _peek_functorch_interpreter() is not None and not torch.compiler.is_compiling()


_peek_functorch_interpreter = torch._C._functorch.peek_interpreter_stack


def _export_forward(module: nn.RNNBase, input, hx):
    """The forward both ONNX exporters trace: torch.nn's (ONNX RNN/GRU/LSTM operators), except
    for LSTM with proj_size, which neither translates (the legacy exporter refuses it; the dynamo
    exporter's graph fails in onnxruntime): that one as plain ops."""
    if module.mode == "LSTM" and module.proj_size > 0 and not isinstance(input, PackedSequence):
        return _lstm_with_projection_as_plain_ops(module, input, hx)
    return module._torch_forward(input, hx)


def _lstm_with_projection_as_plain_ops(module: nn.RNNBase, input: Tensor, hx):
    """torch.nn.LSTM(proj_size > 0)'s forward in matmul, sigmoid and tanh, step by step, for
    export: traced, the loop is unrolled over the example input's length."""
    is_batched = input.dim() == 3
    x = input if is_batched else input.unsqueeze(1)
    if module.batch_first and is_batched:
        x = x.transpose(0, 1)
    T, B = x.size(0), x.size(1)
    directions = 2 if module.bidirectional else 1
    groups = module.num_layers * directions
    if hx is None:
        h0 = x.new_zeros(groups, B, module.proj_size)
        c0 = x.new_zeros(groups, B, module.hidden_size)
    else:
        h0, c0 = (s if is_batched else s.unsqueeze(1) for s in hx)
    weights = module._flat_weights
    per_group = len(weights) // groups
    h_n, c_n, layer_input = [], [], x
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            g = layer * directions + direction
            w_ih, w_hh, *biases = weights[g * per_group:(g + 1) * per_group - 1]
            w_hr = weights[(g + 1) * per_group - 1]
            h, c, steps = h0[g], c0[g], [None] * T
            for t in (range(T) if direction == 0 else range(T - 1, -1, -1)):
                gates = layer_input[t] @ w_ih.t() + h @ w_hh.t()
                for b in biases:
                    gates = gates + b
                i, f, g_, o = gates.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g_)
                h = (torch.sigmoid(o) * torch.tanh(c)) @ w_hr.t()
                steps[t] = h
            outputs.append(torch.stack(steps))
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 2)
        if module.dropout and module.training and layer < module.num_layers - 1:
            layer_input = nn.functional.dropout(layer_input, module.dropout, True)
    output, hidden = layer_input, (torch.stack(h_n), torch.stack(c_n))
    if module.batch_first and is_batched:
        output = output.transpose(0, 1)
    if not is_batched:
        output, hidden = output.squeeze(1), (hidden[0].squeeze(1), hidden[1].squeeze(1))
    return output, hidden


def _prepare_scriptable(module: nn.Module) -> nn.Module:
    """torch.jit.script's hook: TorchScript cannot compile the fused modules' forward (Python
    input handling around the fused ops), so it compiles torch.nn's, on the same parameters.
    (torch.jit.script stores what this returns in the parent module's _modules.)"""
    from .convert import torch_twin  # convert imports this module
    twin = torch_twin(module)
    warnings.warn(f"torch.jit.script of fusedrnn.{type(module).__name__}: TorchScript compiles "
                  f"torch.nn.{type(twin).__name__}'s computation on the same parameters, not the "
                  "fused kernels (torch.jit.trace, torch.compile and torch.export keep them); "
                  "inside a model, torch.jit.script also puts that torch.nn module in the "
                  "model's place of the fused one (fusedrnn.convert(model, inplace=True) "
                  "swaps it back)", stacklevel=2)
    return twin


class _FusedRNNBase(nn.RNNBase):
    """Shared forward of the layer modules: input forms and checks as torch.nn, then the fused
    stack. A cell torch.nn lacks (IndRNN) gives its step in plain PyTorch, _reference_step: its
    reference (fusedrnn.reference), which also runs where the others fall back to torch.nn."""

    _display_name = "RNN"  # the module's name in torch.nn's input-dimension message
    # (x_t (B, I), states (each (B, H)), one layer-direction's weights) -> new states; None for
    # the cells torch.nn has.
    _reference_step = None

    def _cell_name(self) -> str:
        return CELL_OF_MODE[self.mode]

    def _torch_forward(self, input, hx):
        """torch.nn's forward on this module, or the pure-PyTorch reference's for a cell torch.nn
        lacks: for the inputs and transforms fusedrnn does not fuse."""
        if self._reference_step is None:
            return _TORCH_FORWARD[self.mode](self, input, hx)
        return self._forward(input, hx, reference=True)

    def _check_hx_dims(self, hx, expected: int) -> None:
        """torch.nn's check that hx is 3-D for batched and 2-D for unbatched input."""
        kind = "batched 3-D" if expected == 3 else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != expected or hx[1].dim() != expected:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {expected}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        elif hx.dim() != expected:
            raise RuntimeError(
                f"For {kind} input, hx should also be {expected}-D but got {hx.dim()}-D tensor")

    # The checks _hx_plainly_fits stands in for: torch.nn's (a subclass may override them).
    _standard_checks = (nn.RNNBase.check_forward_args, nn.RNNBase.check_input,
                        nn.RNNBase.check_hidden_size)

    def _input_plainly_fits(self, input: Tensor, weights) -> bool:
        """Whether torch.nn's check_input would pass, seen at a glance: batched, unpacked input
        (T, B, input_size) (batch_first: (B, T, ...)) in the weights' dtype, and this module
        checks with torch.nn's own methods (a subclass may override them)."""
        cls = type(self)
        if (cls.check_forward_args, cls.check_input, cls.check_hidden_size) != \
                self._standard_checks:
            return False
        shape = input.shape  # (one call: each Tensor.size(d) costs ~0.15 us)
        return len(shape) == 3 and shape[2] == self.input_size and input.dtype == weights[0].dtype

    def _hx_plainly_fits(self, input: Tensor, hx, weights) -> bool:
        """Whether torch.nn's check_forward_args would pass on batched, unpacked input, seen at
        a glance: input (T, B, input_size) (batch_first: (B, T, ...)) in the weights' dtype, h
        (L*D, B, P) and c (L*D, B, H). ~0.2 us where the check takes ~1.7, at T = 1 a tenth of
        a step. False sends the call through torch.nn's check itself (its errors), as does a
        subclass with checks of its own."""
        if not self._input_plainly_fits(input, weights):
            return False
        if self.mode == "LSTM":
            if not (isinstance(hx, tuple) and len(hx) == 2):
                return False
            h, c = hx
        else:
            h, c = hx, None
        if not isinstance(h, Tensor) or not (c is None or isinstance(c, Tensor)):
            return False
        batch = input.shape[0 if self.batch_first else 1]
        layers = self.num_layers * (2 if self.bidirectional else 1)
        return h.shape == (layers, batch, self.proj_size or self.hidden_size) and (
            c is None or c.shape == (layers, batch, self.hidden_size))

    def _current_weights(self) -> list[Tensor]:
        """The flat weights as they are now, in torch.nn's order, also left in _flat_weights
        (torch.nn's checks read it): what _update_flat_weights does, with one dict look-up per
        weight instead of a hasattr and a getattr (~9 us a call at 4 weights). A
        torch.func.functional_call swap or a reassignment is seen all the same."""
        try:  # (the common case in one step: every weight a registered parameter)
            weights = list(map(self._parameters.__getitem__, self._flat_weights_names))
        except KeyError:
            weights = _read_weights(self, self._flat_weights_names, stale=self._flat_weights)
        if any(map(operator.is_not, weights, self._flat_weights)):
            self._flat_weights = weights
        if _any_none(weights):  # the binding of torch.nn's _VF call
            raise TypeError(f"expected Tensor as element {weights.index(None)} in argument 2, "
                            "but got NoneType")
        return weights

    __prepare_scriptable__ = _prepare_scriptable

    def forward(self, input, hx=None):
        plain = self._plain_forward(input, hx)
        if plain is not None:
            return plain
        if _under_torch_func():
            return self._torch_forward(input, hx)
        if _exporting_to_onnx():
            return _export_forward(self, input, hx)
        path = self._cuda_path(input)
        if path == "cudnn" or self._cpu_runs_torch(input, hx):
            return self._torch_forward(input, hx)
        return self._forward(input, hx, cuda_loop=dispatch.CUDA_LOOP[path])

    def _cpu_runs_torch(self, input, hx) -> bool:
        """Whether this CPU call runs torch.nn's forward (fusedrnn.dispatch.cpu_runs_torch:
        bfloat16 where torch.nn's own kernels are faster; _cpu_bfloat16_call's calls only)."""
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        tensors = _cpu_bfloat16_call(data, self._current_weights, hx)
        if tensors is None:
            return False
        batch = int(input.batch_sizes[0]) if packed and input.batch_sizes.numel() else \
            1 if data.dim() < 3 else data.size(0 if self.batch_first else 1)
        needs_grad = torch.is_grad_enabled() and (
            data.requires_grad or any(t.requires_grad for t in tensors))
        return dispatch.cpu_runs_torch(self, data.dtype, batch, needs_grad)

    def _plain_forward(self, input, hx):
        """forward for the common call in few Python steps (a module call of one step was ~8 us
        of Python around a ~15 us op): batched (T, B, I) input (batch_first: (B, T, I)), a plain
        CPU tensor in the weights' float32/float64; hx None or of exactly torch.nn's shapes
        (_hx_plainly_fits) and dtype; no torch.func transform, ONNX export or autocast. None
        where any of that does not hold: forward's full path then decides, with torch.nn's
        errors."""
        if type(input) is not Tensor or not input.is_cpu or \
                input.dtype not in _CPU_COMPUTE_DTYPES or \
                _peek_functorch_interpreter() is not None or _exporting_to_onnx() or \
                torch._C._is_any_autocast_enabled():
            return None
        weights = self._current_weights()
        dtype = input.dtype
        if hx is None:
            if not self._input_plainly_fits(input, weights):
                return None
            h0 = c0 = None
        elif not self._hx_plainly_fits(input, hx, weights):
            return None
        else:
            h0, c0 = hx if self.mode == "LSTM" else (hx, None)
            if h0.dtype is not dtype or (c0 is not None and c0.dtype is not dtype):
                return None  # (torch.nn's errors or promotions: the full path's)
        batch_first = self.batch_first
        steps = input.shape[1 if batch_first else 0]
        if steps == 0:
            return None
        cell = self._cell_name()
        x = input.transpose(0, 1) if batch_first else input  # (T, B, I)
        if steps == 1 and h0 is not None and self.num_layers == 1 and not self.bidirectional \
                and not self.proj_size and cell in TORCH_NN_CELLS:
            # (~2 us less than the stack op's call at T = 1; the stack op itself runs this op too)
            w_ih, w_hh, b_ih, b_hh = weights if self.bias else (*weights, None, None)
            output, h_n, c_n = _layer_step(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        else:
            output, h_n, c_n = _recurrent_stack_op(
                cell, x, h0, c0, weights, self.num_layers, self.bidirectional, self.bias,
                self.proj_size, self.dropout, self.training, None, 0)
        if batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _cuda_path(self, input) -> str:
        """What this call runs (fusedrnn.dispatch.PATHS): on CUDA torch.nn's cuDNN call or one of
        the fused loops; elsewhere, and while torch.compile traces, "fused"."""
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not data.is_cuda or torch.compiler.is_compiling():
            return "fused"
        weights = self._current_weights()  # (also what torch.nn's forward reads)
        needs_grad = torch.is_grad_enabled() and (
            data.requires_grad or any(w.requires_grad for w in weights))
        return dispatch.cuda_path(self, data, packed, needs_grad)

    def _runs_cudnn(self, input) -> bool:
        return self._cuda_path(input) == "cudnn"

    def _forward(self, input, hx, reference: bool = False, cuda_loop: int = 0):
        """forward on the fused stack, or with reference=True on the cell's pure-PyTorch
        reference (fusedrnn.reference; cells torch.nn lacks). cuda_loop: the fused ops' (on
        CUDA: fusedrnn.dispatch.CUDA_LOOP)."""
        weights = self._current_weights()
        is_lstm = self.mode == "LSTM"
        orig_input = input
        lengths = None
        is_batched = True
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            if not _well_formed_batch_sizes(input, batch_sizes):
                if self._reference_step is not None:  # no torch.nn forward to compute them
                    raise ValueError(f"{self._display_name}: PackedSequence batch_sizes must be "
                                     f"positive and non-increasing, got {batch_sizes.tolist()}")
                return _TORCH_FORWARD[self.mode](self, orig_input, hx)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                name = self._display_name
                tensor_word = " tensor" if name == "RNN" else ""
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{tensor_word} instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                self._check_hx_dims(hx, 3 if is_batched else 2)
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
        if hx is None:  # the fused op starts from zeros
            self.check_input(input, batch_sizes)
            h0 = c0 = None
        elif batch_sizes is not None or not self._hx_plainly_fits(input, hx, weights):
            self.check_forward_args(input, hx, batch_sizes)
        if hx is not None:
            hx = self.permute_hidden(hx, sorted_indices)
            if is_lstm and len(hx) != 2:  # ATen's check (torch.nn's Python reads hx[0], hx[1])
                raise RuntimeError("lstm expects two hidden states")
            h0, c0 = hx if is_lstm else (hx, None)
            if not is_lstm and h0.dtype != weights[1].dtype and \
                    not torch._C._is_any_autocast_enabled():
                # torch.nn's RNN/GRU multiply h by W_hh: ATen's matmul message. (Its LSTM's
                # message comes from whichever kernel runs it, oneDNN's on x86.)
                raise RuntimeError(
                    f"mat1 and mat2 must have the same dtype, but got "
                    f"{_aten_dtype_name(h0.dtype)} and {_aten_dtype_name(weights[1].dtype)}")

        if batch_sizes is not None:
            x, lengths = _unpack(orig_input)
        else:
            if input.size(0 if not self.batch_first else 1) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            x = input.transpose(0, 1) if self.batch_first else input
        stack = recurrent_stack if not reference else \
            functools.partial(reference_stack, self._reference_step)
        output, h_n, c_n = stack(
            self._cell_name(), x, h0, c0, weights,
            num_layers=self.num_layers, bidirectional=self.bidirectional, bias=self.bias,
            proj_size=self.proj_size, dropout=self.dropout, training=self.training,
            lengths=lengths, cuda_loop=cuda_loop)
        hidden = (h_n, c_n) if is_lstm else h_n

        if batch_sizes is not None:
            packed = PackedSequence(_repack(output, lengths), batch_sizes, sorted_indices,
                                    unsorted_indices)
            return packed, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if is_lstm else hidden.squeeze(1)
        return output, hidden


# torch.nn's own forward, for the inputs fusedrnn does not fuse (hand-built PackedSequence
# batch sizes with zeros or increases), under torch.func transforms and for ONNX export.
_TORCH_FORWARD = {"RNN_TANH": nn.RNN.forward, "RNN_RELU": nn.RNN.forward,
                  "GRU": nn.GRU.forward, "LSTM": nn.LSTM.forward}
_TORCH_CELL_FORWARD = {"RNNCell": nn.RNNCell.forward, "GRUCell": nn.GRUCell.forward,
                       "LSTMCell": nn.LSTMCell.forward}


class RNN(_FusedRNNBase):
    """Drop-in for torch.nn.RNN (tanh or relu)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)


class GRU(_FusedRNNBase):
    """Drop-in for torch.nn.GRU."""

    _display_name = "GRU"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


class LSTM(_FusedRNNBase):
    """Drop-in for torch.nn.LSTM (with proj_size)."""

    _display_name = "LSTM"

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's own checks of (h, c), reused so messages match exactly.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden
    _standard_checks = (nn.LSTM.check_forward_args, nn.RNNBase.check_input,
                        nn.RNNBase.check_hidden_size)


# ------------------------------------------------------------------------------------ cells


class _FusedCellBase(nn.RNNCellBase):
    """Shared forward of the cells: torch.nn's checks, then one fused step (T = 1)."""

    _cell: str
    _name: str
    _num_states = 1  # 2 for LSTMCell: (h, c)

    __prepare_scriptable__ = _prepare_scriptable

    def forward(self, input: Tensor, hx=None):
        plain = self._plain_forward(input, hx)
        if plain is not None:
            return plain
        if _under_torch_func() or _exporting_to_onnx() or self._cpu_runs_torch(input, hx):
            return _TORCH_CELL_FORWARD[type(self)._name](self, input, hx)
        weights = self._current_weights()
        input, states, is_batched = self._prepare(input, hx, self._num_states, weights)
        out = self._step(input, states, weights)
        if is_batched:
            return out
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)

    def _cell_name(self) -> str:
        return self._cell

    def _cpu_runs_torch(self, input, hx) -> bool:
        """Whether this CPU call runs torch.nn's cell (fusedrnn.dispatch.cpu_cell_runs_torch:
        bfloat16 where torch.nn's own kernels are faster; _cpu_bfloat16_call's calls only), for
        input of the dimensions torch.nn's cell takes."""
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            return False
        return _cpu_bfloat16_call(input, self._current_weights, hx) is not None and \
            dispatch.cpu_cell_runs_torch(self, input.dtype)

    def _plain_forward(self, input, hx):
        """forward for the common call in few Python steps: batched (B, I) input, a plain CPU
        tensor in the weights' float32/float64, hx of torch.nn's shapes in that dtype (LSTMCell:
        a tuple (h, c)); no torch.func transform, ONNX export or autocast. None where any of that
        does not hold: forward's full path then decides, with torch.nn's errors."""
        if type(input) is not Tensor or not input.is_cpu or hx is None or \
                input.dtype not in _CPU_CELL_DTYPES or \
                _peek_functorch_interpreter() is not None or _exporting_to_onnx() or \
                torch._C._is_any_autocast_enabled():
            return None
        w_ih, w_hh, b_ih, b_hh = weights = self._current_weights()
        dtype, shape = input.dtype, input.shape
        if len(shape) != 2 or shape[1] != self.input_size or dtype is not w_ih.dtype or \
                dtype is not w_hh.dtype:
            return None
        state_shape = (shape[0], self.hidden_size)
        if self._num_states == 2:
            if type(hx) is not tuple or len(hx) != 2:
                return None
            h, c = hx
            if type(c) is not Tensor or c.dtype is not dtype or c.shape != state_shape:
                return None
        else:
            h, c = hx, None
        if type(h) is not Tensor or h.dtype is not dtype or h.shape != state_shape:
            return None
        h_new, c_new, _ = _cell_forward(self._cell_name(), input, h, c, *weights, False)
        return h_new if c is None else (h_new, c_new)

    def _current_weights(self) -> tuple[Tensor | None, ...]:
        """(weight_ih, weight_hh, bias_ih, bias_hh), biases None without bias. As torch.nn's
        _VF cell calls take them: a weight set to None is the binding's TypeError; a bias set to
        None is no bias (zeros here, as the fused op takes both biases or neither)."""
        if not self.bias:
            weights = (*_read_weights(self, ("weight_ih", "weight_hh")), None, None)
        else:
            weights = tuple(_read_weights(self, ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
        if not _any_none(weights[:2 + 2 * self.bias]):
            return weights
        for position, (arg, value) in enumerate(zip(("w_ih", "w_hh"), weights), start=3):
            if value is None:
                raise TypeError(f"{self._cell_name()}_cell(): argument '{arg}' (position "
                                f"{position}) must be Tensor, not NoneType")
        w_ih, w_hh, b_ih, b_hh = weights
        if b_ih is None and b_hh is None:
            return w_ih, w_hh, None, None
        zeros = torch.zeros(w_hh.size(0), dtype=w_hh.dtype, device=w_hh.device)
        return w_ih, w_hh, zeros if b_ih is None else b_ih, zeros if b_hh is None else b_hh

    def _check_batch_and_sizes(self, input: Tensor, states: tuple[Tensor, ...]) -> None:
        # ATen's check_rnn_cell_forward_input / _hidden messages.
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        for i, h in enumerate(states):
            if input.size(0) != h.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}")

    def _check_dtypes(self, input: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor) -> None:
        """torch.nn's cells multiply input by W_ih, then h by W_hh: ATen's matmul messages."""
        if torch._C._is_any_autocast_enabled():
            return
        for mat1, mat2 in ((input, w_ih), (h, w_hh)):
            if mat1.dtype != mat2.dtype:
                raise RuntimeError(
                    f"mat1 and mat2 must have the same dtype, but got "
                    f"{_aten_dtype_name(mat1.dtype)} and {_aten_dtype_name(mat2.dtype)}")

    def _step(self, input: Tensor, states: tuple[Tensor, ...], weights: tuple[Tensor | None, ...]):
        """One step over batched input (B, I) from states (B, H) each."""
        w_ih, w_hh, b_ih, b_hh = weights
        c = states[1] if len(states) > 1 else None
        if c is not None and c.dtype != input.dtype:
            # torch.nn computes the gates in the input's dtype and c' in the promoted one: its
            # own cell does exactly that.
            return torch._VF.lstm_cell(input, states, w_ih, w_hh, b_ih, b_hh)
        if input.device.type == "cpu" and input.dtype in _CPU_CELL_DTYPES and \
                w_ih.dtype == input.dtype:
            # One fused op: input projection, recurrent product and gates (csrc/cpu/cell_cpu.cpp).
            h_new, c_new, _ = _cell_forward(
                self._cell_name(), input, states[0], c, w_ih, w_hh, b_ih, b_hh, False)
            return h_new if c is None else (h_new, c_new)
        weights = [w_ih, w_hh] + ([b_ih, b_hh] if self.bias else [])
        h0 = states[0].unsqueeze(0)
        c0 = None if c is None else c.unsqueeze(0)
        _, h_n, c_n = recurrent_stack(
            self._cell_name(), input.unsqueeze(0), h0, c0, weights,
            num_layers=1, bidirectional=False, bias=self.bias)
        return h_n[0] if c_n is None else (h_n[0], c_n[0])

    def _prepare(self, input: Tensor, hx, num_states: int, weights):
        """torch.nn's dim checks and unbatched handling; returns (batched input, states, batched)."""
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            if num_states > 1 and isinstance(hx, Tensor):  # the binding of _VF.lstm_cell's
                raise TypeError(
                    "lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, not Tensor")
            # torch.nn's LSTMCell checks hx[0] and hx[1]; ATen counts them after.
            for idx, value in enumerate(hx[:2] if num_states > 1 else (hx,)):
                if value.dim() not in (1, 2):
                    what = f"hx[{idx}]" if num_states > 1 else "hidden"
                    raise ValueError(
                        f"{self._name}: Expected {what} to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            states = (zeros,) * num_states
        else:
            states = tuple(hx) if num_states > 1 else (hx,)
            if len(states) != num_states:
                raise RuntimeError("lstm_cell expects two hidden states")
            if not is_batched:
                states = tuple(s.unsqueeze(0) for s in states)
        self._check_batch_and_sizes(input, states)  # ATen's order: sizes, then the products
        self._check_dtypes(input, states[0], weights[0], weights[1])
        return input, states, is_batched


_ATEN_DTYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _aten_dtype_name(dtype: torch.dtype) -> str:
    """ATen's ScalarType name (torch.float32 -> 'Float'), as used in its error messages."""
    return _ATEN_DTYPE_NAMES.get(dtype, str(dtype))


class RNNCell(_FusedCellBase):
    """Drop-in for torch.nn.RNNCell."""

    _name = "RNNCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def _cell_name(self) -> str:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return "rnn_" + self.nonlinearity


class GRUCell(_FusedCellBase):
    """Drop-in for torch.nn.GRUCell."""

    _name = "GRUCell"
    _cell = "gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)


class LSTMCell(_FusedCellBase):
    """Drop-in for torch.nn.LSTMCell."""

    _name = "LSTMCell"
    _cell = "lstm"
    _num_states = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)
