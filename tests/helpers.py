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
