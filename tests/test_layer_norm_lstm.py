"""fusedrnn.LayerNormLSTM: haste's function (its reference script's formula, written out here
on haste's own parameter layout) and parameters, through the documented checkpoint mapping."""
import pytest
import torch
import torch.nn.functional as F

from fusedrnn.layer_norm_lstm import LayerNormLSTM, from_haste_gate_order
from fusedrnn.reference import reference_module
from helpers import check_module_grads, penalty_grads, perturbed_pair


def haste_layer(x, h0, c0, kernel, recurrent_kernel, bias, gamma, gamma_h, beta_h):
    """haste's LayerNormLSTM on its own layout: gates i, g, f, o; kernel (I, 4H)."""
    H = recurrent_kernel.shape[0]
    h, c = [h0], [c0]
    wx = F.layer_norm(x @ kernel, (4 * H,), weight=gamma[0])
    for t in range(x.shape[0]):
        v = F.layer_norm(h[t] @ recurrent_kernel, (4 * H,), weight=gamma[1]) + wx[t] + bias
        i, g, f, o = torch.chunk(v, 4, 1)
        c.append(torch.sigmoid(f) * c[t] + torch.sigmoid(i) * torch.tanh(g))
        h.append(torch.sigmoid(o) * torch.tanh(F.layer_norm(c[-1], (H,), weight=gamma_h,
                                                             bias=beta_h)))
    return torch.stack(h[1:]), c[-1]


def test_haste_checkpoint_gives_haste_results():
    g = torch.Generator().manual_seed(0)
    I, H, T, B = 5, 7, 6, 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    kernel, rk, bias = r(I, 4 * H), r(H, 4 * H), r(4 * H)
    gamma, gamma_h, beta_h = r(2, 4 * H).abs() + 0.5, r(H).abs() + 0.5, r(H)
    x, h0, c0 = r(T, B, I), r(B, H), r(B, H)
    module = reference_module(LayerNormLSTM)(I, H, dtype=torch.float64)
    module.load_state_dict({
        "weight_ih_l0": from_haste_gate_order(kernel.t()),
        "weight_hh_l0": from_haste_gate_order(rk.t()),
        "bias_ih_l0": from_haste_gate_order(bias), "bias_hh_l0": torch.zeros(4 * H).double(),
        "layer_norm_ih_weight_l0": from_haste_gate_order(gamma[0]),
        "layer_norm_hh_weight_l0": from_haste_gate_order(gamma[1]),
        "layer_norm_c_weight_l0": gamma_h, "layer_norm_c_bias_l0": beta_h})
    out, (h_n, c_n) = module(x, (h0[None], c0[None]))
    want_out, want_c = haste_layer(x, h0, c0, kernel, rk, bias, gamma, gamma_h, beta_h)
    torch.testing.assert_close(out, want_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(h_n[0], want_out[-1], rtol=0, atol=1e-13)
    torch.testing.assert_close(c_n[0], want_c, rtol=0, atol=1e-13)


def test_parameters_and_haste_init():
    torch.manual_seed(0)
    I, H = 6, 8
    m = LayerNormLSTM(I, H, num_layers=2, bidirectional=True, forget_bias=2.0)
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert getattr(m, "layer_norm_ih_weight" + suffix).shape == (4 * H,)
        assert getattr(m, "layer_norm_hh_weight" + suffix).shape == (4 * H,)
        assert torch.equal(getattr(m, "layer_norm_c_weight" + suffix), torch.ones(H))
        assert torch.equal(getattr(m, "layer_norm_c_bias" + suffix), torch.zeros(H))
        b_ih = getattr(m, "bias_ih" + suffix)
        assert torch.equal(b_ih[H:2 * H], torch.full((H,), 2.0))  # the forget gate (i, f, g, o)
        assert b_ih[:H].abs().sum() == 0 and b_ih[2 * H:].abs().sum() == 0
        for block in getattr(m, "weight_hh" + suffix).split(H):  # orthogonal per gate block
            torch.testing.assert_close(block @ block.t(), torch.eye(H), atol=1e-5, rtol=0)
        fan = I if suffix.startswith("_l0") else 2 * H
        bound = (6 / (fan + H)) ** 0.5  # Xavier-uniform per (H, fan) gate block
        assert getattr(m, "weight_ih" + suffix).abs().max() <= bound
    assert len(m._flat_weights) == 4 * 8


def test_proj_size_refused():
    with pytest.raises(ValueError, match="proj_size"):
        LayerNormLSTM(4, 8, proj_size=2)


def _pair(**kwargs):
    return perturbed_pair(LayerNormLSTM, 3, 5, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True},
                                    {"bias": False, "batch_first": True}])
def test_fused_matches_the_reference_with_every_gradient(kwargs):
    """Outputs, h_n, c_n and the gradient of every parameter (the layer-norm gains and c's
    bias included) and of x, h0, c0: the fused CPU loops against the step-by-step reference,
    fp64, with unequal lengths (packed, unsorted)."""
    fused, reference = _pair(**kwargs)
    g = torch.Generator().manual_seed(1)
    B, T = 4, 6
    D = 2 if kwargs.get("bidirectional") else 1
    L = kwargs.get("num_layers", 1)
    x = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
    if not kwargs.get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    h0 = torch.randn(L * D, B, 5, generator=g, dtype=torch.float64)
    c0 = torch.randn(L * D, B, 5, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1])
    results = []
    for m in (fused, reference):
        leaves = [t.clone().requires_grad_() for t in (x, h0, c0)]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            leaves[0], lengths, batch_first=bool(kwargs.get("batch_first")), enforce_sorted=False)
        out, (h_n, c_n) = m(packed, (leaves[1], leaves[2]))
        loss = out.data.square().sum() + h_n.sin().sum() + c_n.cos().sum()
        results.append([out.data, h_n, c_n,
                        *torch.autograd.grad(loss, leaves + list(m.parameters()))])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_gradcheck_fused_module():
    """fp64 gradcheck through the fused ops, the recurrent weights and the step's gains
    included."""
    fused, _ = _pair()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = ["weight_hh_l0", "layer_norm_hh_weight_l0", "layer_norm_c_weight_l0",
             "layer_norm_c_bias_l0", "bias_hh_l0"]

    check_module_grads(fused, x, names)


def test_torch_compile_fullgraph_matches_eager():
    """fp64: in float32 the compiled graph's own layer norm of the input side rounds differently
    from ATen's, and the recurrent layer norms amplify that to ~1e-4 over six steps."""
    torch.manual_seed(0)
    m = LayerNormLSTM(3, 8, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)

    def loss(module, x):
        out, (h_n, c_n) = module(x)
        return out.square().sum() + h_n.sum() + c_n.sum()

    eager = loss(m, x)
    eager_grads = torch.autograd.grad(eager, list(m.parameters()))
    got = torch.compile(lambda x: loss(m, x), fullgraph=True)(x)
    grads = torch.autograd.grad(got, list(m.parameters()))
    torch.testing.assert_close(got, eager, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_second_derivatives_match_the_reference(packed):
    """Double backward (a gradient penalty's gradients, create_graph=True) through the fused
    module, two layers, bidirectional, fp64: the reference's second derivatives."""
    fused, reference = _pair(num_layers=2, bidirectional=True)
    x = torch.randn(4, 3, 3, dtype=torch.float64)

    def loss(out, states):
        return out.square().sum() + states[1].sin().sum()

    for got, want in zip(penalty_grads(fused, x, packed, loss),
                         penalty_grads(reference, x, packed, loss), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_gradgradcheck_fused_module():
    fused, _ = _pair()
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    names = ["weight_hh_l0", "layer_norm_ih_weight_l0", "layer_norm_c_bias_l0"]

    check_module_grads(fused, x, names, torch.autograd.gradgradcheck)
