"""Test-side wrappers over fusedrnn.verification (the comparison machinery that
`python -m fusedrnn verify` uses too): positional results and asserting checks."""
from __future__ import annotations

import pytest
import torch

from fusedrnn.verification import (  # noqa: F401  (re-exported for the tests)
    CELLS, RULE_ATOL, Case, clone_inputs, compare, make_inputs, make_pair, max_abs_diff,
)
from fusedrnn import cells, verification

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def perturbed_pair(cls, *args, **kwargs):
    """(fused, reference): a module of a cell torch.nn lacks and its pure-PyTorch twin
    (fusedrnn.reference) with the same fp64 weights, moved off their init so that no gain is 1
    and no bias 0."""
    from fusedrnn.reference import reference_module
    torch.manual_seed(0)
    reference = reference_module(cls)(*args, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    fused = cls(*args, dtype=torch.float64, **kwargs)
    fused.load_state_dict(reference.state_dict())
    return fused, reference


def check_module_grads(module, x, names, check=torch.autograd.gradcheck):
    """`check` (gradcheck or gradgradcheck) of module's (output, last state: c_n where the cell
    has one, else h_n) as a function of x and the parameters `names`."""
    def f(x, *params):
        out, states = torch.func.functional_call(module, dict(zip(names, params)), (x,))
        return out, states[-1] if isinstance(states, tuple) else states

    params = [getattr(module, n).detach().clone().requires_grad_() for n in names]
    assert check(f, (x, *params))


def penalty_grads(module, x, packed: bool, loss_of):
    """Second derivatives through `module` (x (T=4, B=3, I)): d/d(x, parameters) of the squared
    first derivatives of loss_of(output (its data where packed), states), with lengths 4, 2, 3
    packed unsorted where `packed`."""
    xs = x.clone().requires_grad_()
    inp = (torch.nn.utils.rnn.pack_padded_sequence(xs, torch.tensor([4, 2, 3]),
                                                   enforce_sorted=False) if packed else xs)
    out, states = module(inp)
    loss = loss_of(out.data if packed else out, states)
    params = list(module.parameters())
    first = torch.autograd.grad(loss, [xs, *params], create_graph=True)
    return torch.autograd.grad(sum(g.square().sum() for g in first), [xs, *params])


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
    """(op, args) of the layer op (torch.ops.fusedrnn.time_loop_forward) for every cell, with
    and without the optional step_params and w_hr (where the cell takes it); small, fp64 by
    default."""
    g = torch.Generator().manual_seed(0)
    T, B, H, P = 5, 3, 4, 2

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(
            requires_grad)
    lens = torch.tensor([5, 2, 3], device=device) if lengths else None
    op = torch.ops.fusedrnn.time_loop_forward.default
    samples = []
    for name, spec in cells.CELLS.items():
        G = spec.gates
        for optional in (False, True):
            Ph = P if optional and spec.projectable else H  # the size of h
            c0 = r(B, H) if spec.has_cell_state else None
            # (csrc/ops.cpp; needed by a normalised step)
            step_params = r(spec.step_param_units * H) if optional or spec.normalized else None
            w_hr = r(Ph, H) if optional and spec.projectable else None
            w_hh = r(G * H) if spec.diagonal else r(G * H, Ph)
            samples.append((op, (name, r(T, B, G * H), r(B, Ph), c0, w_hh, step_params, w_hr, lens,
                                 reverse, True)))
    return samples


def op_backward_samples(lengths, device="cpu", dtype=torch.float64):
    """(op, args) of torch.ops.fusedrnn.time_loop_backward: op_samples' forwards (reverse), run
    for their workspaces, with random output gradients."""
    op = torch.ops.fusedrnn.time_loop_backward.default
    samples = []
    for _, args in op_samples(lengths, reverse=True, requires_grad=False, device=device,
                              dtype=dtype):
        cell, _, _, c0, w_hh, step_params, w_hr, lens, reverse, _ = args
        out, h_n, c_n, workspace = torch.ops.fusedrnn.time_loop_forward(*args)
        grad = torch.randn_like
        grad_c_n = grad(c_n) if c0 is not None else None
        samples.append((op, (cell, grad(out), grad(h_n), grad_c_n, w_hh, w_hr, step_params,
                             workspace, lens, reverse)))
    return samples


def check_teams_ran(before: tuple, expected_loops: int, split: str) -> None:
    """After time loops that the size rule gives a thread team of two (csrc/cpu/team.h): that
    `expected_loops` team loops ran since the team_counts() reading `before`, all split as
    `split` says ("rows" or "units"). Where fewer ran the machine must have been read busy
    (no team is then allowed): the test skips, its results already checked."""
    import fusedrnn.probes
    loops, _, contended, by_rows = fusedrnn.probes.team_counts()
    ran = loops - before[0]
    if ran < expected_loops:
        assert contended + fusedrnn.probes.machine_load()[3] > 0, "no team on an idle machine"
        pytest.skip("the machine is busy: results checked, but no team formed")
    assert by_rows - before[3] == (ran if split == "rows" else 0)
