"""fusedrnn cells vs torch.nn cells."""
import pytest
import torch
from torch import nn

import fusedrnn
from helpers import DEVICES, RULE_ATOL

CELL_CLASSES = [("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}), ("GRUCell", {}),
                ("LSTMCell", {})]


def _run(cell, x, hx):
    out = cell(x, hx)
    outs = list(out) if isinstance(out, tuple) else [out]
    loss = sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs))
    leaves = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    leaves += list(cell.parameters())
    return outs, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_h", [True, False])
@pytest.mark.parametrize("name,kw", CELL_CLASSES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_cell_matches_torch_nn(name, kw, with_h, batched, bias, dtype, device):
    torch.manual_seed(0)
    ref = getattr(nn, name)(5, 7, bias=bias, **kw).to(device, dtype)
    fused = getattr(fusedrnn, name)(5, 7, bias=bias, **kw).to(device, dtype)
    fused.load_state_dict(ref.state_dict())
    batch = (4,) if batched else ()
    x = torch.randn(*batch, 5, dtype=dtype, device=device, requires_grad=True)
    hx = None
    if with_h:
        mk = lambda: torch.randn(*batch, 7, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
        hx = (mk(), mk()) if name == "LSTMCell" else mk()
    (fo, fg), (to, tg) = _run(fused, x, hx), _run(ref, x, hx)
    atol = 1e-10 if dtype == torch.float64 else 20 * RULE_ATOL[dtype]
    for a, b in zip(list(fo) + list(fg), list(to) + list(tg)):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max()


def test_cell_repr_and_state_dict():
    for name, kw in CELL_CLASSES:
        ref, fused = getattr(nn, name)(3, 4, bias=False, **kw), getattr(fusedrnn, name)(3, 4, bias=False, **kw)
        assert repr(ref) == repr(fused)
        fused.load_state_dict(ref.state_dict(), strict=True)
        ref.load_state_dict(fused.state_dict(), strict=True)
        assert [n for n, _ in ref.named_parameters()] == [n for n, _ in fused.named_parameters()]
