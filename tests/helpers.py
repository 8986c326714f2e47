"""Shared test machinery: build torch.nn / fusedrnn pairs with equal weights, run them on the
same inputs with the same cotangents, and compare outputs and every gradient."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# cell name -> (module name, extra constructor kwargs)
CELLS = {
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
    "gru": ("GRU", {}),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 3}),
}

# atol of GUIDE.md's rule: fused error vs fp64 <= 2 * torch.nn's error + atol * max(1, |ref|).
# The atol scales with the reference's magnitude: weight gradients summed over thousands of steps
# are large, and fp32 summation-order noise grows with them, for torch.nn and fusedrnn alike.
RULE_ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
FP64_ATOL = 1e-10


@dataclasses.dataclass
class Case:
    cell: str
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    input_kind: str = "batched"  # batched | unbatched | packed_sorted | packed_unsorted
    with_h0: bool = True
    T: int = 6
    B: int = 3
    I: int = 5
    H: int = 7
    dropout: float = 0.0

    def kwargs(self):
        name, extra = CELLS[self.cell]
        return name, dict(input_size=self.I, hidden_size=self.H, num_layers=self.num_layers,
                          bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                          bidirectional=self.bidirectional, **extra)


def make_pair(case: Case, dtype=torch.float64, device="cpu"):
    """torch.nn module and fusedrnn module with identical weights."""
    name, kw = case.kwargs()
    ref = getattr(nn, name)(**kw).to(device=device, dtype=dtype)
    fused = getattr(fusedrnn, name)(**kw).to(device=device, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def make_inputs(case: Case, module: nn.Module, dtype, device, generator: torch.Generator):
    """Fresh random input (and h0/c0) as leaf tensors, plus lengths for packed cases."""
    D = 2 if case.bidirectional else 1
    P = getattr(module, "proj_size", 0) or case.H
    randn = lambda *s: torch.randn(*s, generator=generator, dtype=torch.float64).to(dtype).to(device)  # noqa: E731
    shape = (case.B, case.T, case.I) if case.batch_first else (case.T, case.B, case.I)
    if case.input_kind == "unbatched":
        shape = (case.T, case.I)
    x = randn(*shape).requires_grad_()
    lengths = None
    if case.input_kind.startswith("packed"):
        lengths = torch.randint(1, case.T + 1, (case.B,), generator=generator)
        lengths[0] = case.T  # at least one full-length row
        if case.input_kind == "packed_sorted":
            lengths = lengths.sort(descending=True).values
    hx = None
    if case.with_h0:
        batch = () if case.input_kind == "unbatched" else (case.B,)
        h0 = randn(case.num_layers * D, *batch, P).requires_grad_()
        hx = h0
        if case.cell.startswith("lstm"):
            hx = (h0, randn(case.num_layers * D, *batch, case.H).requires_grad_())
    return x, hx, lengths


def forward(module, case: Case, x, hx, lengths):
    """Runs module; returns (list of output tensors, list of leaf inputs)."""
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=case.batch_first,
                                   enforce_sorted=case.input_kind == "packed_sorted")
    out, hidden = module(inp, hx)
    outs = [out.data if isinstance(out, PackedSequence) else out]
    if isinstance(out, PackedSequence):
        outs.append(out.batch_sizes.to(out.data))  # structure must match too
    outs += list(hidden) if isinstance(hidden, tuple) else [hidden]
    return outs


def outputs_and_grads(module, case: Case, x, hx, lengths, cotangent_seed: int):
    """Outputs and gradients (input, h0/c0, every parameter) under random cotangents."""
    outs = forward(module, case, x, hx, lengths)
    g = torch.Generator().manual_seed(cotangent_seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
               for o in outs if o.is_floating_point() and o.requires_grad)
    leaves = [x] + (list(hx) if isinstance(hx, tuple) else [hx] if hx is not None else [])
    leaves += list(module.parameters())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(l) if gr is None else gr for l, gr in zip(leaves, grads)]
    return [o.detach() for o in outs], list(grads)


def clone_inputs(x, hx, dtype=None, device=None):
    conv = lambda t: t.detach().to(dtype=dtype or t.dtype, device=device or t.device).requires_grad_()  # noqa: E731
    if hx is None:
        return conv(x), None
    return conv(x), tuple(conv(h) for h in hx) if isinstance(hx, tuple) else conv(hx)


def max_err(a, b):
    return max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
               for x, y in zip(a, b))


def check_case(case: Case, dtype, device="cpu", seed=0):
    """fp64: fused == torch.nn to 1e-10. Other dtypes: GUIDE.md's rule against an fp64 reference."""
    gen = torch.Generator().manual_seed(seed)
    ref, fused = make_pair(case, dtype, device)
    x, hx, lengths = make_inputs(case, ref, dtype, device, gen)
    fo, fg = outputs_and_grads(fused, case, *clone_inputs(x, hx), lengths, seed + 1)
    if dtype == torch.float64:
        to, tg = outputs_and_grads(ref, case, *clone_inputs(x, hx), lengths, seed + 1)
        assert max_err(fo, to) <= FP64_ATOL, f"outputs differ by {max_err(fo, to)}"
        for i, (a, b) in enumerate(zip(fg, tg)):
            assert max_err([a], [b]) <= FP64_ATOL, f"gradient {i} differs by {max_err([a], [b])}"
        return
    to, tg = outputs_and_grads(ref, case, *clone_inputs(x, hx), lengths, seed + 1)
    ref64 = ref.double()
    ro, rg = outputs_and_grads(ref64, case, *clone_inputs(x, hx, torch.float64), lengths, seed + 1)
    assert_rule(fo, to, ro, dtype, "output")
    for i, (f, t, r) in enumerate(zip(fg, tg, rg)):
        assert_rule([f], [t], [r], dtype, f"gradient {i}")


def assert_rule(fused, torch_nn, ref64, dtype, what):
    fused_err = max_err(fused, ref64)
    torch_err = max_err(torch_nn, ref64)
    scale = max(1.0, max(r.double().abs().max().item() if r.numel() else 0.0 for r in ref64))
    bound = 2 * torch_err + RULE_ATOL[dtype] * scale
    assert fused_err <= bound, (
        f"{what}: fused error {fused_err:.3g} > 2 x torch.nn error {torch_err:.3g} + atol")
