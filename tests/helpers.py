"""Test-side wrappers over fusedrnn.verification (the comparison machinery that
`python -m fusedrnn verify` uses too): positional results and asserting checks."""
from __future__ import annotations

import pytest
import torch

from fusedrnn.verification import (  # noqa: F401  (re-exported for the tests)
    CELLS, RULE_ATOL, Case, clone_inputs, compare, make_inputs, make_pair, max_abs_diff,
)
from fusedrnn import verification

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def forward(module, case: Case, x, hx, lengths):
    """Outputs of module as a list: output, [batch_sizes], h_n, [c_n]."""
    return list(verification.forward(module, case, x, hx, lengths).values())


def outputs_and_grads(module, case: Case, x, hx, lengths, cotangent_seed: int):
    """(outputs, gradients) as lists: outputs as forward(); gradients of input, h0/c0, params."""
    results = verification.outputs_and_grads(module, case, x, hx, lengths, cotangent_seed)
    outs = [t for name, t in results.items() if not name.startswith("grad ")]
    grads = [t for name, t in results.items() if name.startswith("grad ")]
    return outs, grads


def max_err(a, b):
    return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)


def check_case(case: Case, dtype, device="cpu", seed=0):
    """Every output and gradient passes GUIDE.md's rule against the fp64 reference."""
    failures = [c for c in compare(case, dtype, device, seed) if not c.passed]
    assert not failures, "; ".join(
        f"{c.name}: fused error {c.fused_abs:.3g} > bound {c.bound:.3g} "
        f"(torch.nn error {c.torch_abs:.3g})" for c in failures)


def op_samples(lengths, reverse, requires_grad=True, device="cpu", dtype=torch.float64):
    """(op, args) for every forward op of torch.ops.fusedrnn, small, fp64 by default."""
    g = torch.Generator().manual_seed(0)
    T, B, H, P = 5, 3, 4, 2

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(
            requires_grad)
    lens = torch.tensor([5, 2, 3], device=device) if lengths else None
    ops = torch.ops.fusedrnn
    return [
        (ops.rnn_forward.default, (r(T, B, H), r(B, H), r(H, H), lens, reverse, False, True)),
        (ops.rnn_forward.default, (r(T, B, H), r(B, H), r(H, H), lens, reverse, True, True)),
        (ops.gru_forward.default, (r(T, B, 3 * H), r(B, H), r(3 * H, H), r(3 * H), lens, reverse, True)),
        (ops.gru_forward.default, (r(T, B, 3 * H), r(B, H), r(3 * H, H), None, lens, reverse, True)),
        (ops.lstm_forward.default, (r(T, B, 4 * H), r(B, H), r(B, H), r(4 * H, H), None, lens, reverse, True)),
        (ops.lstm_forward.default, (r(T, B, 4 * H), r(B, P), r(B, H), r(4 * H, P), r(P, H), lens, reverse, True)),
    ]


def op_backward_samples(lengths, device="cpu", dtype=torch.float64):
    """(op, args) for every backward op of torch.ops.fusedrnn: op_samples' forwards (reverse),
    run for their workspaces, with random output gradients."""
    ops = torch.ops.fusedrnn
    samples = []
    for op, args in op_samples(lengths, reverse=True, requires_grad=False, device=device,
                               dtype=dtype):
        outs = op(*args)
        name = op._schema.name.split("::")[1].replace("_forward", "")
        grad = torch.randn_like
        lens = args[3] if name == "rnn" else args[-3]
        if name == "rnn":
            out, h_n, hprev = outs
            samples.append((ops.rnn_backward.default,
                            (grad(out), grad(h_n), args[2], out, hprev, lens, True, args[5])))
        elif name == "gru":
            out, h_n, gates, hprev = outs
            samples.append((ops.gru_backward.default,
                            (grad(out), grad(h_n), args[2], gates, hprev, lens, True)))
        else:
            out, h_n, c_n, gates, cells, prev_cells, hprev = outs
            samples.append((ops.lstm_backward.default,
                            (grad(out), grad(h_n), grad(c_n), args[3], args[4], gates, cells,
                             prev_cells, hprev, lens, True)))
    return samples
