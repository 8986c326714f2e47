"""fusedrnn.LayerNormGRU: haste's function (its reference script's formula, written out here on
haste's own parameter layout) and parameters, through the documented checkpoint mapping. The
shared suites (every one parametrized over the cell table) check the rest: the fused CPU and
emulated CUDA ops against the reference, lengths, directions, layers, dtypes, opcheck, verify,
bench."""
import pytest
import torch
import torch.nn.functional as F

from fusedrnn.layer_norm_gru import LayerNormGRU, from_haste_gate_order
from fusedrnn.reference import reference_module
from helpers import check_module_grads, penalty_grads, perturbed_pair


def haste_layer(x, h0, kernel, recurrent_kernel, bias, recurrent_bias, gamma):
    """haste's LayerNormGRU on its own layout: gates z, r, n; kernel (I, 3H); h = z h + (1-z) g."""
    H = recurrent_kernel.shape[0]
    h = [h0]
    wx = F.layer_norm(x @ kernel, (3 * H,), weight=gamma[0]) + bias
    for t in range(x.shape[0]):
        rh = F.layer_norm(h[t] @ recurrent_kernel, (3 * H,), weight=gamma[1]) + recurrent_bias
        vx, vh = wx[t].chunk(3, 1), rh.chunk(3, 1)
        z = torch.sigmoid(vx[0] + vh[0])
        r = torch.sigmoid(vx[1] + vh[1])
        g = torch.tanh(vx[2] + r * vh[2])
        h.append(z * h[t] + (1 - z) * g)
    return torch.stack(h[1:])


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_haste_checkpoint_gives_haste_results(fused):
    g = torch.Generator().manual_seed(0)
    I, H, T, B = 5, 7, 6, 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    kernel, rk, bias, rbias = r(I, 3 * H), r(H, 3 * H), r(3 * H), r(3 * H)
    gamma = r(2, 3 * H).abs() + 0.5
    x, h0 = r(T, B, I), r(B, H)
    cls = LayerNormGRU if fused else reference_module(LayerNormGRU)
    module = cls(I, H, dtype=torch.float64)
    module.load_state_dict({
        "weight_ih_l0": from_haste_gate_order(kernel.t()),
        "weight_hh_l0": from_haste_gate_order(rk.t()),
        "bias_ih_l0": from_haste_gate_order(bias), "bias_hh_l0": from_haste_gate_order(rbias),
        "layer_norm_ih_weight_l0": from_haste_gate_order(gamma[0]),
        "layer_norm_hh_weight_l0": from_haste_gate_order(gamma[1])})
    out, h_n = module(x, h0[None])
    want = haste_layer(x, h0, kernel, rk, bias, rbias, gamma)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n[0], want[-1], rtol=0, atol=1e-12)


def test_parameters_and_haste_init():
    torch.manual_seed(0)
    I, H = 6, 8
    m = LayerNormGRU(I, H, num_layers=2, bidirectional=True)
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert torch.equal(getattr(m, "layer_norm_ih_weight" + suffix), torch.ones(3 * H))
        assert torch.equal(getattr(m, "layer_norm_hh_weight" + suffix), torch.ones(3 * H))
        assert torch.equal(getattr(m, "bias_ih" + suffix), torch.zeros(3 * H))
        assert torch.equal(getattr(m, "bias_hh" + suffix), torch.zeros(3 * H))
        for block in getattr(m, "weight_hh" + suffix).split(H):  # orthogonal per gate block
            torch.testing.assert_close(block @ block.t(), torch.eye(H), atol=1e-5, rtol=0)
        fan = I if suffix.startswith("_l0") else 2 * H
        bound = (6 / (fan + H)) ** 0.5  # Xavier-uniform per (H, fan) gate block
        assert getattr(m, "weight_ih" + suffix).abs().max() <= bound
    assert len(m._flat_weights) == 4 * 6
    assert m._flat_weights_names[:6] == [  # the flat order: torch.nn's, then the gains
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "layer_norm_ih_weight_l0",
        "layer_norm_hh_weight_l0"]
    assert len(LayerNormGRU(I, H, bias=False)._flat_weights) == 4


def test_proj_size_refused():
    with pytest.raises(TypeError):
        LayerNormGRU(4, 8, proj_size=2)


def _pair(**kwargs):
    return perturbed_pair(LayerNormGRU, 3, 5, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True},
                                    {"bias": False, "batch_first": True}])
def test_fused_matches_the_reference_with_every_gradient(kwargs):
    """Outputs, h_n and the gradient of every parameter (both gains and both biases) and of x
    and h0: the fused CPU loops against the step-by-step reference, fp64, with unequal lengths
    (packed, unsorted)."""
    fused, reference = _pair(**kwargs)
    g = torch.Generator().manual_seed(1)
    B, T = 4, 6
    D = 2 if kwargs.get("bidirectional") else 1
    L = kwargs.get("num_layers", 1)
    x = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
    if not kwargs.get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    h0 = torch.randn(L * D, B, 5, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1])
    results = []
    for m in (fused, reference):
        leaves = [t.clone().requires_grad_() for t in (x, h0)]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            leaves[0], lengths, batch_first=bool(kwargs.get("batch_first")), enforce_sorted=False)
        out, h_n = m(packed, leaves[1])
        loss = out.data.square().sum() + h_n.sin().sum()
        results.append([out.data, h_n, *torch.autograd.grad(loss, leaves + list(m.parameters()))])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_gradcheck_fused_module():
    """fp64 gradcheck through the fused ops, the recurrent weights, gains and biases included."""
    fused, _ = _pair()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = ["weight_hh_l0", "layer_norm_hh_weight_l0", "layer_norm_ih_weight_l0", "bias_hh_l0",
             "bias_ih_l0"]

    check_module_grads(fused, x, names)


def test_torch_compile_fullgraph_matches_eager():
    """fp64, as LayerNormLSTM's (the compiled input-side layer norm rounds differently)."""
    torch.manual_seed(0)
    m = LayerNormGRU(3, 8, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)

    def loss(module, x):
        out, h_n = module(x)
        return out.square().sum() + h_n.sum()

    eager = loss(m, x)
    eager_grads = torch.autograd.grad(eager, list(m.parameters()))
    got = torch.compile(lambda x: loss(m, x), fullgraph=True)(x)
    grads = torch.autograd.grad(got, list(m.parameters()))
    torch.testing.assert_close(got, eager, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_second_derivatives_match_the_reference(packed):
    """Double backward (a gradient penalty's gradients, create_graph=True) through the fused
    module, two layers, bidirectional, fp64: the reference's second derivatives (the fused op's
    double backward differentiates csrc/reference_loop.cpp, here with b_ih after LN(W_ih x))."""
    fused, reference = _pair(num_layers=2, bidirectional=True)
    x = torch.randn(4, 3, 3, dtype=torch.float64)

    def loss(out, states):
        return out.square().sum() + states.sin().sum()

    for got, want in zip(penalty_grads(fused, x, packed, loss),
                         penalty_grads(reference, x, packed, loss), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_gradgradcheck_fused_module():
    fused, _ = _pair()
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    names = ["weight_hh_l0", "layer_norm_ih_weight_l0", "bias_ih_l0"]

    check_module_grads(fused, x, names, torch.autograd.gradgradcheck)
