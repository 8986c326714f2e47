"""Double backward (create_graph=True) through the fused modules: torch.nn's second derivatives
(a gradient penalty's gradients) and torch.autograd.gradgradcheck in fp64, every cell, layers,
bidirectional, packed input, proj_size, the one-step path and the cells."""
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

T, B, I, H = 4, 3, 2, 3
LAYERS = {
    "rnn_tanh-2layers-bi": lambda m: m.RNN(I, H, num_layers=2, bidirectional=True),
    "rnn_relu": lambda m: m.RNN(I, H, nonlinearity="relu"),
    "gru-bi": lambda m: m.GRU(I, H, bidirectional=True),
    "lstm-2layers": lambda m: m.LSTM(I, H, num_layers=2),
    "lstm_proj-bi": lambda m: m.LSTM(I, H, proj_size=2, bidirectional=True),
}
CELLS = {"rnn_cell": lambda m: m.RNNCell(I, H), "gru_cell": lambda m: m.GRUCell(I, H),
         "lstm_cell": lambda m: m.LSTMCell(I, H)}


def _pair(make):
    torch.manual_seed(0)
    reference = make(nn).double()
    fused = make(fusedrnn).double()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _first(out):
    while isinstance(out, tuple):
        out = out[0]
    return out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out


def _penalty_grads(module, x, packed):
    """Gradients of a gradient penalty: d/d(x, params) of |d loss / d(x, params)|^2."""
    x = x.clone().requires_grad_()
    inp = pack_padded_sequence(x, torch.tensor([4, 2, 3]), enforce_sorted=False) if packed else x
    params = list(module.parameters())
    loss = _first(module(inp)).square().sum()
    first = torch.autograd.grad(loss, [x, *params], create_graph=True)
    penalty = sum(g.square().sum() for g in first)
    return torch.autograd.grad(penalty, [x, *params])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_second_derivatives_match_torch_nn(name, packed):
    reference, fused = _pair(LAYERS[name])
    x = torch.randn(T, B, I, dtype=torch.float64)
    for got, expected in zip(_penalty_grads(fused, x, packed), _penalty_grads(reference, x, packed),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(CELLS))
def test_cells_and_one_step_layers_second_derivatives_match_torch_nn(name):
    reference, fused = _pair(CELLS[name])
    x = torch.randn(B, I, dtype=torch.float64)
    for got, expected in zip(_penalty_grads(fused, x, False), _penalty_grads(reference, x, False),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    reference, fused = _pair(LAYERS["gru-bi"])  # T = 1: the one-step op inside a layer
    x = torch.randn(1, B, I, dtype=torch.float64)
    for got, expected in zip(_penalty_grads(fused, x, False), _penalty_grads(reference, x, False),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["rnn_tanh-2layers-bi", "gru-bi", "lstm_proj-bi", "lstm_cell"])
def test_gradgradcheck(name):
    _, fused = _pair({**LAYERS, **CELLS}[name])
    names = [n for n, _ in fused.named_parameters()]
    is_cell = name.endswith("cell")
    x = torch.randn((B, I) if is_cell else (T, B, I), dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        return _first(functional_call(fused, dict(zip(names, params)), (x,)))

    params = [p.detach().clone().requires_grad_() for p in fused.parameters()]
    assert torch.autograd.gradgradcheck(f, (x, *params), atol=1e-6, rtol=1e-5)


def test_a_time_loop_op_called_directly_says_double_backward_needs_the_layer():
    xproj = torch.randn(T, B, H, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(B, H, dtype=torch.float64)
    w_hh = torch.randn(H, H, dtype=torch.float64, requires_grad=True)
    out = torch.ops.fusedrnn.time_loop_forward("rnn_tanh", xproj, h0, None, w_hh, None, None,
                                               None, False, False)[0]
    torch.autograd.grad(out.sum(), xproj, retain_graph=True)  # first order: fine
    with pytest.raises(RuntimeError, match="through fusedrnn's modules, recurrent_layer or "
                                           "recurrent_stack it is"):
        torch.autograd.grad(out.sum(), xproj, create_graph=True)
