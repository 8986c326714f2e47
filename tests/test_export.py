"""Export and scripting of models holding fusedrnn modules, as torch.nn's export and script:
torch.onnx.export with both exporters (run by onnxruntime) and torch.jit.script. Both compute
torch.nn's recurrence on the module's own parameters (fusedrnn/modules.py says why)."""
import io
import warnings

import pytest
import torch
from torch import nn

import fusedrnn

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # the dynamo exporter's translator

T, B, I, H = 5, 3, 4, 6
LAYER_CELLS = {"rnn_tanh": (fusedrnn.RNN, {}), "rnn_relu": (fusedrnn.RNN, {"nonlinearity": "relu"}),
               "gru": (fusedrnn.GRU, {}), "lstm": (fusedrnn.LSTM, {}),
               "lstm_proj": (fusedrnn.LSTM, {"proj_size": 3})}
CELL_MODULES = {"rnn_cell": fusedrnn.RNNCell, "gru_cell": fusedrnn.GRUCell,
                "lstm_cell": fusedrnn.LSTMCell}


class Flat(nn.Module):
    """Wraps a recurrent module so its outputs are a flat tuple of tensors (what the exporters
    and onnxruntime see), with the initial state as separate inputs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, *state):
        hx = (state if len(state) == 2 else state[0]) if state else None  # LSTM: (h, c)
        out = self.inner(x, hx)
        if isinstance(self.inner, nn.RNNCellBase):  # h, or (h, c)
            return out if isinstance(out, tuple) else (out,)
        output, hidden = out
        return (output, *hidden) if isinstance(hidden, tuple) else (output, hidden)


def _layer(cell: str, batch_first: bool):
    cls, kwargs = LAYER_CELLS[cell]
    torch.manual_seed(0)
    return cls(I, H, num_layers=2, bidirectional=True, batch_first=batch_first, **kwargs).eval()


def _inputs(module: nn.Module, with_state: bool, batch_first: bool = False):
    torch.manual_seed(1)
    if isinstance(module, nn.RNNCellBase):
        x = torch.randn(B, module.input_size)
        num_states = 2 if isinstance(module, fusedrnn.LSTMCell) else 1
        states = [torch.randn(B, module.hidden_size) for _ in range(num_states)]
        return (x, *(states if with_state else []))
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    if not with_state:
        return (x,)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    out_size = module.proj_size or module.hidden_size
    h0 = torch.randn(layers, B, out_size)
    if module.mode != "LSTM":
        return (x, h0)
    return (x, h0, torch.randn(layers, B, module.hidden_size))


def _export(model: nn.Module, args, dynamo: bool) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own notices (e.g. batch_first in RNN ops)
        if dynamo:
            program = torch.onnx.export(model, args, dynamo=True)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(model, args, buffer, dynamo=False)
        return buffer.getvalue()


def _run_onnx(blob: bytes, args) -> list[torch.Tensor]:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _check_against_eager(model: nn.Module, args, dynamo: bool) -> None:
    with torch.no_grad():
        expected = model(*args)
    got = _run_onnx(_export(model, args, dynamo), args)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        # fp32 against fp32: the ONNX kernels and the fused ones round differently, both within
        # a few ulps of the exact result at these sizes.
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "h0"])
@pytest.mark.parametrize("cell", list(LAYER_CELLS))
def test_onnx_export_of_layers_runs_in_onnxruntime(cell, with_state, dynamo):
    batch_first = cell in ("gru", "lstm_proj")  # both layouts across the cells
    model = Flat(_layer(cell, batch_first))
    args = _inputs(model.inner, with_state, batch_first)
    _check_against_eager(model, args, dynamo)
    # torch.nn's translation where it has one: ONNX's own operator (the dynamo exporter
    # decomposes the plain RNN; neither exporter translates proj_size, which fusedrnn exports as
    # plain ops).
    onnx_op = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "gru": "GRU", "lstm": "LSTM"}.get(cell)
    if onnx_op and not (dynamo and onnx_op == "RNN"):
        ops = {node.op_type for node in onnx.load_from_string(_export(model, args, dynamo)).graph.node}
        assert onnx_op in ops, ops


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("cell", list(CELL_MODULES))
def test_onnx_export_of_cells_runs_in_onnxruntime(cell, dynamo):
    torch.manual_seed(0)
    model = Flat(CELL_MODULES[cell](I, H).eval())
    _check_against_eager(model, _inputs(model.inner, True), dynamo)


def test_export_runs_fused_again_afterwards():
    """Export routes through torch.nn only while it runs: calls after it use the fused ops."""
    model = Flat(_layer("gru", False))
    args = _inputs(model.inner, False)
    _export(model, args, dynamo=False)
    with torch.autograd.profiler.profile() as prof:
        model(*args)
    assert any("fusedrnn::" in e.name for e in prof.function_events)


def _scripted_outputs(module: nn.Module, args):
    """Flat outputs of torch.jit.script(module)(*args), or the exception scripting or calling
    raised."""
    try:
        out = torch.jit.script(module)(*args)
    except Exception as exc:  # noqa: BLE001 - compared with torch.nn's below
        return exc
    return [t for item in (out if isinstance(out, tuple) else (out,))
            for t in (item if isinstance(item, tuple) else (item,))]


@pytest.mark.parametrize("cell", list(LAYER_CELLS) + list(CELL_MODULES))
def test_jit_script_behaves_as_torch_nn_with_a_warning(cell):
    """Scripting a fused module scripts torch.nn's computation on the same parameters, so it
    works where torch.nn's does (the cells) and fails as torch.nn's does where that fails (the
    layers in torch 2.13: the scripted module has no forward)."""
    torch.manual_seed(0)
    if cell in CELL_MODULES:
        module = CELL_MODULES[cell](I, H)
        args = _inputs(module, True)
        args = (args[0], tuple(args[1:])) if len(args) == 3 else args
    else:
        module = _layer(cell, batch_first=False)
        args = _inputs(module, True)
        args = (args[0], tuple(args[1:]) if len(args) == 3 else args[1])
    reference = fusedrnn.to_torch(module)
    expected = _scripted_outputs(reference, args)
    with pytest.warns(UserWarning, match="TorchScript compiles torch.nn"):
        got = _scripted_outputs(module, args)
    if isinstance(expected, Exception):
        assert type(got) is type(expected) and str(got) == str(expected)
        return
    assert not isinstance(got, Exception), got
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    eager = module(*args)
    torch.testing.assert_close(got[0], eager[0] if isinstance(eager, tuple) else eager,
                               rtol=1e-5, atol=1e-6)


def test_jit_script_of_a_model_holding_fused_cells_shares_its_parameters():
    model = fusedrnn.convert(nn.Sequential(nn.Linear(I, H), nn.GRUCell(H, H)))
    with pytest.warns(UserWarning, match="TorchScript compiles torch.nn.GRUCell"):
        scripted = torch.jit.script(model)
    x = torch.randn(B, I)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
    assert all(p is q for p, q in zip(model.parameters(), scripted.parameters(), strict=True))
    # torch.jit.script put the torch.nn twin in the model (as the warning says); convert swaps
    # it back
    assert type(model[1]) is nn.GRUCell
    fusedrnn.convert(model, inplace=True)
    assert type(model[1]) is fusedrnn.GRUCell
