"""NaN, Inf and saturation behave as in torch.nn: the fp32 activations saturate exactly where
torch's do (so their derivatives are exactly 0 there), and NaN / Inf in the input, the state or
a weight reach the same outputs and gradients (NaN where torch.nn's are NaN, the same finite
values elsewhere), in the layers, their one-step path and the cells."""
import pytest
import torch
from torch import nn

import fusedrnn

TANH_SATURATES = 9.01084041595459  # torch's float tanh is exactly +-1 from here on


def fused_tanh(x):
    """Our fp32 tanh, through the RNN op (zero W_hh and state: h = tanh(xproj))."""
    outs = []
    for chunk in x.split(1024):
        n = chunk.numel()
        out = torch.ops.fusedrnn.time_loop_forward(
            "rnn_tanh", chunk.view(1, 1, n).contiguous(), torch.zeros(1, n), None,
            torch.zeros(n, n), None, None, None, False, False)[0]
        outs.append(out.view(-1))
    return torch.cat(outs)


def test_tanh_accuracy_and_saturation_match_torch():
    x = torch.cat([torch.linspace(-12, 12, 120001),
                   torch.tensor([TANH_SATURATES, -TANH_SATURATES, 9.0108394, 1e30, -1e30])])
    ours, theirs = fused_tanh(x), torch.tanh(x)
    assert (ours.double() - torch.tanh(x.double())).abs().max() <= 2.7e-7
    assert (ours - theirs).abs().max() <= 2.4e-7
    assert torch.equal(ours.abs() == 1, theirs.abs() == 1)  # saturated exactly where torch is
    special = torch.tensor([float("inf"), float("-inf"), float("nan")])
    assert fused_tanh(special)[:2].tolist() == [1.0, -1.0] and fused_tanh(special)[2].isnan()


@pytest.mark.parametrize("x", [10.0, 1e30, float("inf")])
def test_saturated_rnn_gradient_is_torch_nns(x):
    """RNN(1, 1) with every weight 1: at x = 10 the unit saturates and torch.nn's weight
    gradients are 0 (NaN for an infinite input: 0 * inf)."""
    grads = []
    for module in (nn.RNN(1, 1), fusedrnn.RNN(1, 1)):
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(1.0)
        out, _ = module(torch.full((3, 1, 1), x))
        out.sum().backward()
        grads.append([p.grad for p in module.parameters()])
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, equal_nan=True, rtol=0, atol=0)


CELLS = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
         "gru": ("GRU", {}), "lstm": ("LSTM", {})}


def _pair(cell, dtype, T1_cell=False):
    name, kw = CELLS[cell]
    if T1_cell:
        ref = getattr(nn, name + "Cell")(3, 4, **kw).to(dtype)
        fused = getattr(fusedrnn, name + "Cell")(3, 4, **kw).to(dtype)
    else:
        ref = getattr(nn, name)(3, 4, **kw).to(dtype)
        fused = getattr(fusedrnn, name)(3, 4, **kw).to(dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _run(module, cell, path, x, h, c):
    """Outputs and the gradients of x, the state and every parameter."""
    leaves = [x, h] + ([c] if cell == "lstm" else [])
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    if path == "cell":
        state = (leaves[1][0], leaves[2][0]) if cell == "lstm" else leaves[1][0]
        result = module(leaves[0][0], state)
        outs = list(result) if cell == "lstm" else [result]
    else:
        state = (leaves[1], leaves[2]) if cell == "lstm" else leaves[1]
        out, hidden = module(leaves[0], state)
        outs = [out] + (list(hidden) if cell == "lstm" else [hidden])
    torch.stack([o.sum() for o in outs]).sum().backward()
    return outs + [t.grad for t in leaves] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["input", "state", "w_hh"])
@pytest.mark.parametrize("path", ["layer", "one_step", "cell"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_nan_and_inf_propagate_as_in_torch_nn(cell, path, where, value, dtype):
    torch.manual_seed(0)
    ref, fused = _pair(cell, dtype, T1_cell=path == "cell")
    T = 5 if path == "layer" else 1
    x, h, c = (torch.randn(T, 2, 3, dtype=dtype), torch.randn(1, 2, 4, dtype=dtype),
               torch.randn(1, 2, 4, dtype=dtype))
    if where == "input":
        x[0, 1, 2] = value
    elif where == "state":
        h[0, 0, 1] = value
    else:
        for m in (ref, fused):
            with torch.no_grad():
                (m.weight_hh if path == "cell" else m.weight_hh_l0)[2, 1] = value
    want, got = _run(ref, cell, path, x, h, c), _run(fused, cell, path, x, h, c)
    for i, (r, g) in enumerate(zip(want, got)):
        assert torch.equal(r.isnan(), g.isnan()), f"tensor {i}: NaN where torch.nn has none / not"
        assert torch.equal(r.isinf(), g.isinf()), f"tensor {i}: Inf pattern differs"
        finite = r.isfinite()
        torch.testing.assert_close(g[finite], r[finite], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"tensor {i}: {m}")


@pytest.mark.parametrize("cell", list(CELLS))
def test_empty_batch(cell):
    """Batch 0 (no rows): empty outputs as torch.nn, without touching memory (UBSan-clean)."""
    ref, fused = _pair(cell, torch.float32)
    x = torch.randn(4, 0, 3)
    want, got = ref(x), fused(x)
    assert got[0].shape == want[0].shape
