"""torch.func transforms through the modules: grad, vjp and jacrev give torch.nn's results (the
modules compute torch.nn's forward under a transform, fusedrnn/modules.py), vmap behaves as
torch.nn's, and the fused path is back once the transform ends."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap

import fusedrnn

T, B, I, H = 4, 2, 3, 5
MODULES = {
    "rnn_tanh": lambda m: m.RNN(I, H, num_layers=2),
    "rnn_relu": lambda m: m.RNN(I, H, nonlinearity="relu", bidirectional=True),
    "gru": lambda m: m.GRU(I, H, batch_first=True),
    "lstm": lambda m: m.LSTM(I, H, num_layers=2, bidirectional=True),
    "lstm_proj": lambda m: m.LSTM(I, H, proj_size=2),
    "rnn_cell": lambda m: m.RNNCell(I, H),
    "gru_cell": lambda m: m.GRUCell(I, H),
    "lstm_cell": lambda m: m.LSTMCell(I, H),
}


def _pair(name):
    torch.manual_seed(0)
    reference = MODULES[name](nn).double()
    fused = MODULES[name](fusedrnn).double()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _input(name):
    torch.manual_seed(1)
    return torch.randn((B, I) if name.endswith("cell") else (T, B, I), dtype=torch.float64)


def _first(out):
    while isinstance(out, tuple):
        out = out[0]
    return out


def _loss(module):
    def loss(params, x):
        return _first(functional_call(module, params, (x,))).square().sum()
    return loss


@pytest.mark.parametrize("name", list(MODULES))
def test_grad_vjp_jacrev_match_torch_nn(name):
    reference, fused = _pair(name)
    x = _input(name)
    params_ref = dict(reference.named_parameters())
    params = dict(fused.named_parameters())
    expected = grad(_loss(reference), argnums=(0, 1))(params_ref, x)
    got = grad(_loss(fused), argnums=(0, 1))(params, x)
    for key in params:
        torch.testing.assert_close(got[0][key], expected[0][key], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)

    out_ref, pull_ref = vjp(lambda x: _first(reference(x)), x)
    out, pull = vjp(lambda x: _first(fused(x)), x)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    cotangent = torch.randn_like(out)
    torch.testing.assert_close(pull(cotangent)[0], pull_ref(cotangent)[0], rtol=0, atol=0)

    jac_ref = jacrev(lambda x: _first(reference(x)))(x)
    jac = jacrev(lambda x: _first(fused(x)))(x)
    torch.testing.assert_close(jac, jac_ref, rtol=0, atol=0)
    # and against the fused forward outside the transform (within the rule's fp64 precision)
    torch.testing.assert_close(_first(fused(x)), out_ref, rtol=1e-10, atol=1e-12)


def _outcome(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - compared with torch.nn's
        return exc


@pytest.mark.parametrize("name", ["gru", "lstm", "gru_cell"])
def test_vmap_behaves_as_torch_nn(name):
    reference, fused = _pair(name)
    xs = torch.stack([_input(name), _input(name) * 2])
    expected = _outcome(lambda: _first(vmap(lambda x: reference(x))(xs)))
    got = _outcome(lambda: _first(vmap(lambda x: fused(x))(xs)))
    if isinstance(expected, Exception):
        assert type(got) is type(expected) and str(got) == str(expected)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fused_ops_run_again_after_a_transform():
    _, fused = _pair("gru")
    x = _input("gru")
    grad(lambda x: _first(fused(x)).sum())(x)
    with torch.autograd.profiler.profile() as prof:
        fused(x)
    assert any("fusedrnn::" in e.name for e in prof.function_events)
