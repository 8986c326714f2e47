"""fusedrnn.convert / fusedrnn.to_torch: every recurrent module of a model swapped to the fused
drop-in and back, with weights, dtype, training mode and hooks kept; the round trip bitwise."""
import pytest
import torch
from torch import nn

import fusedrnn


class Tagger(nn.LSTM):
    """A subclass that keeps torch.nn's forward and adds a method: swapped, method kept."""

    def describe(self) -> str:
        return f"tagger {self.hidden_size}"


class Reversing(nn.GRU):
    """A subclass with its own forward: left alone."""

    def forward(self, input, hx=None):
        return super().forward(input.flip(0), hx)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.encoder = nn.LSTM(8, 16, num_layers=2, bidirectional=True)
        self.relu_rnn = nn.RNN(32, 12, nonlinearity="relu")
        self.blocks = nn.ModuleList([nn.GRU(12, 12), Tagger(12, 6, proj_size=3)])
        self.reversing = Reversing(3, 4)
        self.cells = nn.ModuleDict({"rnn": nn.RNNCell(4, 4), "gru": nn.GRUCell(4, 4),
                                    "lstm": nn.LSTMCell(4, 4)})

    def forward(self, x):
        y, _ = self.encoder(self.embed(x))
        y, _ = self.relu_rnn(y)
        y, _ = self.blocks[0](y)
        y, _ = self.blocks[1](y)
        y, _ = self.reversing(y)
        h = y[-1]
        h = self.cells["rnn"](h)
        h = self.cells["gru"](h, h)
        h, c = self.cells["lstm"](h)
        return h + c


SWAPPED = {"encoder": fusedrnn.LSTM, "relu_rnn": fusedrnn.RNN, "blocks.0": fusedrnn.GRU,
           "cells.rnn": fusedrnn.RNNCell, "cells.gru": fusedrnn.GRUCell,
           "cells.lstm": fusedrnn.LSTMCell}


def _types(model):
    return {name: type(m) for name, m in model.named_modules()}


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return Model().to(dtype)


def test_convert_swaps_every_recurrent_module_and_reports_it():
    model = _model()
    before = _types(model)
    fused, report = fusedrnn.convert(model, return_report=True)
    assert _types(model) == before  # a copy: the original is untouched
    after = _types(fused)
    for name, cls in SWAPPED.items():
        assert after[name] is cls, name
    tagger = fused.blocks[1]
    assert isinstance(tagger, fusedrnn.LSTM) and isinstance(tagger, Tagger)
    assert type(tagger).forward is fusedrnn.LSTM.forward and tagger.describe() == "tagger 6"
    assert after["reversing"] is Reversing and after["embed"] is nn.Linear
    by_name = {swap.name: swap for swap in report}
    assert set(by_name) == set(SWAPPED) | {"blocks.1", "reversing"}
    assert not by_name["reversing"].swapped and "overrides forward" in str(by_name["reversing"])
    assert str(by_name["encoder"]) == "encoder: torch.nn.modules.rnn.LSTM -> fusedrnn.modules.LSTM"


def test_converted_model_computes_torch_nn_results_and_gradients():
    model = _model()
    fused = fusedrnn.convert(model)
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    expected = model(x)
    expected.sum().backward()
    got = fused(x)
    got.sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for (name, p), (_, q) in zip(model.named_parameters(), fused.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_round_trip_is_bitwise_and_keeps_dtype_mode_and_hooks():
    model = _model(torch.float32).eval()
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(type(m)))
    x = torch.randn(6, 2, 5)
    expected = model(x)
    back = fusedrnn.to_torch(fusedrnn.convert(model))
    assert _types(back) == _types(model)
    assert not back.training and not back.encoder.training
    for (name, p), (_, q) in zip(model.state_dict().items(), back.state_dict().items(),
                                 strict=True):
        assert q.dtype == p.dtype and torch.equal(q, p), name
    assert torch.equal(back(x), expected)
    assert calls == [nn.LSTM, nn.LSTM]  # the hook was carried along (deep copies keep it)


def test_inplace_keeps_module_and_parameter_objects():
    model = _model()
    encoder, params = model.encoder, list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert fusedrnn.convert(model, inplace=True) is model
    assert model.encoder is encoder and type(encoder) is fusedrnn.LSTM
    assert all(p is q for p, q in zip(params, model.parameters(), strict=True))
    model(torch.randn(4, 2, 5, dtype=torch.float64)).sum().backward()
    optimizer.step()  # the optimizer built before the swap updates the swapped model
    fusedrnn.to_torch(model, inplace=True)
    assert type(model.encoder) is nn.LSTM and type(model.blocks[1]) is Tagger


def test_a_bare_module_converts_and_converting_twice_changes_nothing():
    lstm = nn.LSTM(3, 4)
    fused = fusedrnn.convert(lstm)
    assert type(fused) is fusedrnn.LSTM and type(lstm) is nn.LSTM
    _, report = fusedrnn.convert(fused, return_report=True)
    assert report == []
    assert type(fusedrnn.to_torch(fused)) is nn.LSTM
    with pytest.raises(TypeError, match="expected an nn.Module"):
        fusedrnn.convert(lstm.weight_ih_l0)


def test_verbose_prints_each_swap(capsys):
    fusedrnn.convert(nn.Sequential(nn.GRU(2, 3)), verbose=True)
    assert capsys.readouterr().out == "0: torch.nn.modules.rnn.GRU -> fusedrnn.modules.GRU\n"
