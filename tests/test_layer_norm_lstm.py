"""fusedrnn.LayerNormLSTM: haste's function (its reference script's formula, written out here
on haste's own parameter layout) and parameters, through the documented checkpoint mapping."""
import pytest
import torch
import torch.nn.functional as F

from fusedrnn.layer_norm_lstm import LayerNormLSTM, from_haste_gate_order
from fusedrnn.reference import reference_module


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
