"""fusedrnn cells vs torch.nn cells."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fusedrnn
from helpers import DEVICES, RULE_ATOL, Case, check_case

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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name,kw", CELL_CLASSES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_wide_cell_matches_torch_nn(name, kw, dtype):
    """A batch wide enough that the CPU step splits its rows over threads, and input_size 0."""
    torch.manual_seed(0)
    for input_size, batch, hidden in [(24, 67, 96), (0, 3, 5)]:
        ref = getattr(nn, name)(input_size, hidden, **kw).to(dtype)
        fused = getattr(fusedrnn, name)(input_size, hidden, **kw).to(dtype)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(batch, input_size, dtype=dtype, requires_grad=True)
        mk = lambda: torch.randn(batch, hidden, dtype=dtype, requires_grad=True)  # noqa: E731
        hx = (mk(), mk()) if name == "LSTMCell" else mk()
        (fo, fg), (to, tg) = _run(fused, x, hx), _run(ref, x, hx)
        atol = 1e-10 if dtype == torch.float64 else 20 * RULE_ATOL[dtype]
        for a, b in zip(list(fo) + list(fg), list(to) + list(tg)):
            assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max()


# (I, H) of the small-batch step (csrc/cpu/rows_dot.cpp): depths I and H with every kind of tail
# (K % 16 and K % 8: 1, 5, 3, 9, 4, 6, 2), gate rows not a multiple of the 8 a kernel call reads,
# and (64, 130) wide enough to split its 9 unit blocks over two threads.
SMALL_BATCH_SHAPES = [(1, 3), (5, 9), (17, 20), (33, 70), (64, 130)]


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name,kw", CELL_CLASSES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_small_batch_step_edges(name, kw, B):
    """float32 steps at B <= 4 take the unit-split step (each weight row's dot products with
    every batch row); B = 5 the BLAS one. Outputs and gradients against float64 torch.nn."""
    torch.manual_seed(B)
    for input_size, hidden in SMALL_BATCH_SHAPES:
        ref = getattr(nn, name)(input_size, hidden, **kw).double()
        fused = getattr(fusedrnn, name)(input_size, hidden, **kw)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(B, input_size, dtype=torch.float64, requires_grad=True)
        mk = lambda: torch.randn(B, hidden, dtype=torch.float64, requires_grad=True)  # noqa: E731
        hx = (mk(), mk()) if name == "LSTMCell" else mk()
        as32 = lambda t: t.float().detach().requires_grad_()  # noqa: E731
        hx32 = tuple(map(as32, hx)) if isinstance(hx, tuple) else as32(hx)
        (fo, fg), (to, tg) = _run(fused, as32(x), hx32), _run(ref, x, hx)
        for a, b in zip(list(fo) + list(fg), list(to) + list(tg)):
            assert torch.allclose(a.double(), b, atol=2e-5, rtol=1e-4), \
                (input_size, hidden, (a.double() - b).abs().max())


def test_small_batch_step_edges_in_avx2():
    """The same with the AVX2 form of the small-batch kernels (what CPUs without AVX-512 run),
    in a fresh process: the form is chosen once per process."""
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                    f"{here}/test_cells.py::test_small_batch_step_edges"],
                   check=True, env=dict(os.environ, FUSEDRNN_DISABLE_AVX512="1"),
                   cwd=os.path.dirname(here))


@pytest.mark.parametrize("name,kw", CELL_CLASSES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_cell_non_contiguous_inputs_and_in_place_on_output(name, kw):
    """Strided x and states; an in-place op on the returned state; for LSTMCell, a loss on h
    alone and on c alone (the other state's gradient is None)."""
    torch.manual_seed(0)
    ref = getattr(nn, name)(6, 5, **kw).double()
    fused = getattr(fusedrnn, name)(6, 5, **kw).double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, dtype=torch.float64).t().requires_grad_()
    states = [torch.randn(5, 4, dtype=torch.float64).t().requires_grad_() for _ in range(2)]
    hx = tuple(states) if name == "LSTMCell" else states[0]
    for pick in ([0, 1] if name == "LSTMCell" else [0]):
        results = []
        for cell in (fused, ref):
            out = cell(x, hx)
            out = out[pick] if isinstance(out, tuple) else out
            # In place on the fused op's own output; torch.nn's tanh saves its result, so the
            # reference goes out of place.
            out = out.relu_() if cell is fused else out.relu()
            leaves = [x] + list(states[:2 if name == "LSTMCell" else 1]) + list(cell.parameters())
            grads = torch.autograd.grad(out.square().sum(), leaves, allow_unused=True)
            results.append([out] + list(grads))
        for a, b in zip(*results):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, atol=1e-10, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_cell_loop_matches_by_the_rule(cell, dtype, device):
    """A cell over 12 steps (a decoder's loop): outputs and every gradient vs the fp64 reference."""
    for with_h0 in (True, False):
        check_case(Case(cell, T=12, B=5, I=8, H=16, with_h0=with_h0, cell_loop=True), dtype, device,
                   seed=4)


@pytest.mark.parametrize("name,kw", CELL_CLASSES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_cell_parameter_grads_when_inputs_need_none(name, kw):
    """Data input and state without requires_grad (their GEMMs are skipped in backward)."""
    torch.manual_seed(0)
    ref = getattr(nn, name)(6, 5, **kw).double()
    fused = getattr(fusedrnn, name)(6, 5, **kw).double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64)
    h = torch.randn(3, 5, dtype=torch.float64)
    hx = (h, h.flip(0)) if name == "LSTMCell" else h
    grads = []
    for cell in (fused, ref):
        out = cell(x, hx)
        loss = sum(o.square().sum() for o in (out if isinstance(out, tuple) else (out,)))
        grads.append(torch.autograd.grad(loss, list(cell.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), (a - b).abs().max()
