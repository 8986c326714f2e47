"""fusedrnn.IndRNN beyond what every cell gets from the shared suites (equivalence grid, dropout,
lengths, bf16, CUDA emulation, opcheck, fuzz: all parametrized over fusedrnn.cells.CELLS, with
the pure-PyTorch reference in torch.nn's place): the formula itself, haste's layout and init,
and the paths around the fused ops."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, PackedSequence

import fusedrnn
from fusedrnn.reference import reference_module
from helpers import check_teams_ran

NONLINEARITIES = ["tanh", "relu"]


def _textbook(module: fusedrnn.IndRNN, x: torch.Tensor, h0: torch.Tensor) -> tuple:
    """One layer, one direction, written out: h_t = act(W_ih x_t + b_ih + b_hh + u * h_{t-1})."""
    act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    h, outputs = h0[0], []
    for x_t in x:
        h = act(x_t @ module.weight_ih_l0.t() + module.bias_ih_l0 + module.bias_hh_l0
                + module.weight_hh_l0 * h)
        outputs.append(h)
    return torch.stack(outputs), h.unsqueeze(0)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_fused_and_reference_compute_the_formula(nonlinearity):
    torch.manual_seed(0)
    module = fusedrnn.IndRNN(5, 7, nonlinearity=nonlinearity).double()
    with torch.no_grad():  # biases are zero-initialised: make them count
        module.bias_ih_l0.normal_()
        module.bias_hh_l0.normal_()
    x, h0 = torch.randn(9, 3, 5, dtype=torch.float64), torch.randn(1, 3, 7, dtype=torch.float64)
    want_out, want_h = _textbook(module, x, h0)
    reference = reference_module(fusedrnn.IndRNN)(5, 7, nonlinearity=nonlinearity).double()
    reference.load_state_dict(module.state_dict())
    for m in (module, reference):
        out, h_n = m(x, h0)
        torch.testing.assert_close(out, want_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(h_n, want_h, rtol=0, atol=1e-12)


def test_haste_layout_and_initialisation():
    """torch.nn.RNN's names and shapes but a (hidden_size,) weight_hh; haste's init: W_ih
    Xavier-uniform, u uniform(-0.5, 0.5), biases zero."""
    torch.manual_seed(0)
    I, H = 300, 400
    m = fusedrnn.IndRNN(I, H, num_layers=2, bidirectional=True)
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert list(shapes) == list(torch.nn.RNN(I, H, num_layers=2, bidirectional=True).state_dict())
    assert shapes["weight_ih_l0"] == (H, I) and shapes["weight_ih_l1_reverse"] == (H, 2 * H)
    assert shapes["weight_hh_l0"] == (H,) and shapes["weight_hh_l1_reverse"] == (H,)
    xavier = math.sqrt(6 / (I + H))
    w = m.weight_ih_l0
    assert w.abs().max() <= xavier and w.abs().max() > 0.95 * xavier
    u = m.weight_hh_l0
    assert u.abs().max() <= 0.5 and u.min() < -0.45 and u.max() > 0.45
    assert all(not p.any() for n, p in m.named_parameters() if "bias" in n)
    assert repr(fusedrnn.IndRNN(3, 4, nonlinearity="relu")) == \
        "IndRNN(3, 4, nonlinearity=relu)"


def test_haste_checkpoint_loads_by_the_documented_mapping():
    """haste's IndRNN: kernel (I, H), recurrent_scale (H), bias (H), h = tanh(x @ kernel + bias
    + recurrent_scale * h). Loaded as weight_ih = kernel.T, weight_hh = recurrent_scale,
    bias_ih = bias, bias_hh = 0 it computes the same."""
    g = torch.Generator().manual_seed(1)
    I, H, T, B = 4, 6, 5, 2
    kernel, scale, bias = (torch.randn(I, H, generator=g), torch.rand(H, generator=g) * 2 - 1,
                           torch.randn(H, generator=g))
    x = torch.randn(T, B, I, generator=g)
    h, haste_steps = torch.zeros(B, H), []
    for x_t in x:
        h = torch.tanh(x_t @ kernel + bias + h * scale)
        haste_steps.append(h)
    m = fusedrnn.IndRNN(I, H)
    m.load_state_dict({"weight_ih_l0": kernel.t(), "weight_hh_l0": scale, "bias_ih_l0": bias,
                       "bias_hh_l0": torch.zeros(H)})
    out, h_n = m(x)
    torch.testing.assert_close(out, torch.stack(haste_steps), rtol=1e-5, atol=1e-6)


def test_constructor_errors_as_torch_nn_rnn():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fusedrnn.IndRNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        fusedrnn.IndRNN(3, 4, dropout=2.0)
    with pytest.raises(ValueError, match="IndRNN: Expected input to be 2D or 3D, got 4D instead"):
        fusedrnn.IndRNN(3, 4)(torch.randn(1, 2, 3, 4))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        fusedrnn.IndRNN(3, 4)(torch.randn(5, 2, 3), torch.randn(1, 2, 5))


def test_malformed_packed_sequence_is_refused_before_any_memory_is_read():
    """torch.nn computes on hand-built batch sizes with zeros or increases; IndRNN has no
    torch.nn forward to hand them to, so it raises instead of unpacking them."""
    m = fusedrnn.IndRNN(3, 4)
    packed = PackedSequence(torch.randn(4, 3), torch.tensor([3, 0, 1]))
    with pytest.raises(ValueError, match="batch_sizes must be positive and non-increasing"):
        m(packed)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_torch_compile_fullgraph_matches_eager(nonlinearity):
    torch.manual_seed(0)
    m = fusedrnn.IndRNN(3, 8, num_layers=2, bidirectional=True, nonlinearity=nonlinearity)
    x = torch.randn(6, 2, 3)

    def loss(module, x):
        out, h_n = module(x)
        return out.square().sum() + h_n.sum()

    eager = loss(m, x)
    eager_grads = torch.autograd.grad(eager, list(m.parameters()))
    compiled = torch.compile(lambda x: loss(m, x), fullgraph=True)
    got = compiled(x)
    grads = torch.autograd.grad(got, list(m.parameters()))
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_torch_func_runs_the_reference():
    """Under torch.func (whose transforms refuse the fused ops' C++ autograd nodes) the module
    computes with its pure-PyTorch reference: the same gradients."""
    torch.manual_seed(0)
    m = fusedrnn.IndRNN(3, 5).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    params = dict(m.named_parameters())

    def loss(params, x):
        out, _ = torch.func.functional_call(m, params, (x,))
        return out.sum()

    grads = torch.func.grad(loss)(params, x)
    want = torch.autograd.grad(m(x)[0].sum(), list(params.values()))
    for name, w in zip(params, want):
        torch.testing.assert_close(grads[name], w, rtol=0, atol=1e-12)


def test_double_backward_through_the_fused_ops():
    """create_graph=True differentiates the ATen step loop (csrc/reference_loop.cpp), diagonal
    recurrence included: a gradient penalty's gradient as the reference module's."""
    torch.manual_seed(0)
    fused = fusedrnn.IndRNN(3, 5, num_layers=2).double()
    reference = reference_module(fusedrnn.IndRNN)(3, 5, num_layers=2).double()
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    grads = []
    for m in (fused, reference):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(m(xi)[0].sum(), xi, create_graph=True)
        grads.append(torch.autograd.grad(g.square().sum(), list(m.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_gradcheck_fused_layer_with_lengths():
    """fp64 gradcheck of the fused module (packed, both directions) including the recurrent
    weights u, which the shared gradcheck (input and states) leaves out."""
    torch.manual_seed(0)
    m = fusedrnn.IndRNN(3, 4, bidirectional=True).double()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    u, u_rev = m.weight_hh_l0, m.weight_hh_l0_reverse

    def f(x, u, u_rev):
        out, h_n = torch.func.functional_call(
            m, {"weight_hh_l0": u, "weight_hh_l0_reverse": u_rev},
            (pack_padded_sequence(x, lengths, enforce_sorted=False),))
        return out.data, h_n

    assert torch.autograd.gradcheck(f, (x, u.detach().requires_grad_(),
                                        u_rev.detach().requires_grad_()))


def test_torch_jit_script_explains_itself():
    with pytest.raises(RuntimeError, match="no torch.nn counterpart"):
        torch.jit.script(fusedrnn.IndRNN(3, 4))


@pytest.mark.parametrize("B,H,split", [(64, 1040, "rows"), (13, 5200, "units")])
def test_team_of_workers_gives_one_workers_results(B, H, split):
    """At B * H >= 65536 multiply-adds a step the diagonal loops run on a team of two
    (csrc/cpu/team.h): split by batch rows at 64 rows, by unit blocks at 13 (too few rows to
    split). Each unit depends on its own past only, so every result but the weight gradient (an
    ATen sum after the loop, whose order depends on the thread count) is bitwise that of one
    worker, with lengths (a row empty, a row full) and both directions."""
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 intra-op threads")
    import fusedrnn.probes
    g = torch.Generator().manual_seed(0)
    T = 4
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 0, T
    xproj, h0 = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    u = torch.rand(H, generator=g) * 2 - 1
    grad_out, grad_h = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    ops = torch.ops.fusedrnn

    def run(reverse):
        out, h_n, _, ws = ops.time_loop_forward("indrnn_tanh", xproj, h0, None, u, None, None,
                                                lengths, reverse, True)
        grads = ops.time_loop_backward("indrnn_tanh", grad_out, grad_h, None, u, None, None, ws,
                                       lengths, reverse)
        return [out, h_n, *ws, grads[0], grads[1]]

    threads, before = torch.get_num_threads(), fusedrnn.probes.team_counts()
    try:
        for reverse in (False, True):
            torch.set_num_threads(1)
            single = run(reverse)
            torch.set_num_threads(2)
            multi = run(reverse)
            for a, b in zip(single, multi, strict=True):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)
    check_teams_ran(before, 4, split)  # forward and backward, both directions
