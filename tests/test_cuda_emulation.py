"""The CUDA time-loop ops, whole (host loop, per-step GEMMs, kernels), run on the CPU by the SIMT
emulation (tests/emulation.py, csrc/emulation/) and compared with the CPU ops.

Every cell (RNN tanh/relu, GRU, LSTM, LSTM with proj_size), forward and backward (workspaces
included), forward and reverse direction, without lengths and with unsorted lengths that include
0 and T, B in {1, 3, 8} (B=8 spans two thread blocks), storage dtypes fp32, fp64, fp16, bf16.

Rule (GUIDE.md's, with the CPU op in the role of torch.nn): against the CPU op in float64 on the
same inputs, the emulated op's error is at most 2 x the CPU op's error at that dtype + atol. For
half types the CPU path computes in float32 and rounds what it returns: that is the baseline, so
a CUDA op that rounded its recurrent state to the half type every step fails the long-sequence
tests below.
"""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from emulation import load
from fusedrnn.verification import spec_of
from helpers import (CELLS, RULE_ATOL, Case, check_case, make_pair, op_backward_samples,
                     op_samples)

pytestmark = pytest.mark.emulation

CPU_OPS = torch.ops.fusedrnn
HALF_TYPES = (torch.float16, torch.bfloat16)
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16,
          "bf16": torch.bfloat16}
# Gates of every verification configuration (every cell, and LSTM with proj_size).
GATES = {name: spec_of(name).gates for name in CELLS}
# Workspaces (state dtype) among the outputs: compared against the unrounded float baseline.
WORKSPACES = {name for spec in map(spec_of, CELLS) for name, _, _ in spec.workspace}


@pytest.fixture(scope="module")
def emulated():
    return load()


@dataclasses.dataclass(frozen=True)
class OpCase:
    cell: str
    T: int = 6
    B: int = 3
    H: int = 40  # B=8: 320 (batch, unit) threads, two blocks of 256
    reverse: bool = False
    lengths: tuple[int, ...] | None = None
    proj: int = 3  # P for lstm_proj

    @property
    def P(self):
        return self.proj if self.cell == "lstm_proj" else self.H


def ragged_lengths(T, B):
    """Unsorted, with 0 and T wherever B allows."""
    pattern = {1: (T - 2,), 3: (T, 0, 2), 8: (3, T, 0, 5, 1, T, 2, 4)}
    return pattern[B]


def make_inputs(case: OpCase, seed: int, gate_offsets=None, scale=1.0):
    """float64 tensors for one forward + backward call; gate_offsets[k] is added to gate k of
    xproj (to make long-memory regimes: LSTM forget gate, GRU update gate near 1)."""
    g = torch.Generator().manual_seed(seed)
    G, T, B, H, P = GATES[case.cell], case.T, case.B, case.H, case.P
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    xproj = rand(T, B, G * H) * scale
    if gate_offsets is not None:
        xproj = xproj + torch.tensor(gate_offsets, dtype=torch.float64).repeat_interleave(H)
    k = H ** -0.5
    spec = spec_of(case.cell)
    # A diagonal recurrence's u: uniform(-1, 1), the range of a stable IndRNN.
    diagonal = spec.diagonal
    w_hh_shape, w_hh_scale = ((G * H,), 1.0) if diagonal else ((G * H, P), k)
    t = {
        "xproj": xproj,
        "h0": rand(B, P) * 0.5,
        "c0": rand(B, H) * 0.5,
        "w_hh": (torch.rand(*w_hh_shape, generator=g, dtype=torch.float64) * 2 - 1) * w_hh_scale,
        # The step parameters (csrc/ops.cpp): the bias, then a normalized step's gains (near 1)
        # and β_c.
        "step_params": rand(spec.step_param_units * H) * 0.1,
        "w_hr": (torch.rand(P, H, generator=g, dtype=torch.float64) * 2 - 1) * k,
        "grad_output": rand(T, B, P),
        "grad_h_n": rand(B, P),
        "grad_c_n": rand(B, H),
    }
    if spec.normalized:
        t["step_params"][G * H:(2 * G + 1) * H] += 1.0
    lengths = None if case.lengths is None else torch.tensor(case.lengths, dtype=torch.int64)
    return t, lengths


def _forward_args(case: OpCase, t: dict, lengths, save_workspace):
    spec = spec_of(case.cell)
    return (spec.name, t["xproj"], t["h0"], t["c0"] if spec.has_cell_state else None, t["w_hh"],
            t["step_params"],
            t["w_hr"] if case.cell == "lstm_proj" else None, lengths, case.reverse, save_workspace)


def run(ops, case: OpCase, t: dict, lengths):
    """Forward (workspace saved) then backward of one cell through `ops`; named results (the
    workspace parts by their names in the cell table)."""
    spec = spec_of(case.cell)
    args = _forward_args(case, t, lengths, True)
    out, h_n, c_n, workspace = ops.time_loop_forward(*args)
    grad_c_n = t["grad_c_n"] if spec.has_cell_state else None
    w_hr = args[6]
    gx, gh0, gc0, gw, gb, gwr = ops.time_loop_backward(
        spec.name, t["grad_output"], t["grad_h_n"], grad_c_n, t["w_hh"], w_hr, t["step_params"],
        workspace, lengths, case.reverse)
    results = {"output": out, "h_n": h_n, "grad_xproj": gx, "grad_h0": gh0, "grad_w_hh": gw}
    results.update({name: part for (name, _, _), part in zip(spec.workspace, workspace,
                                                              strict=True)})
    if spec.has_cell_state:
        results.update(c_n=c_n, grad_c0=gc0)
    if spec.own_step_param_grad:  # (elsewhere d bias is d xproj's sum, taken by autograd)
        results["grad_step_params"] = gb
    if w_hr is not None:
        results["grad_w_hr"] = gwr
    return results


def inference(ops, case: OpCase, t: dict, lengths):
    """The forward without workspace: output, h_n (and c_n)."""
    out, h_n, c_n, workspace = ops.time_loop_forward(*_forward_args(case, t, lengths, False))
    assert workspace == []
    return (out, h_n, c_n) if spec_of(case.cell).has_cell_state else (out, h_n)


def cast(t: dict, dtype):
    return {name: v.to(dtype) for name, v in t.items()}


def check_against_cpu(emulated, case: OpCase, dtype, seed=0, **input_kw):
    """Every result of the emulated CUDA op within the rule; returns the worst ratio err/bound."""
    t64, lengths = make_inputs(case, seed, **input_kw)
    stored = cast(t64, dtype)  # the op's inputs, rounded to the storage dtype
    ref = run(CPU_OPS, case, cast(stored, torch.float64), lengths)
    if dtype in HALF_TYPES:
        # The CPU path for half types: compute in float32, round what it returns.
        baseline = run(CPU_OPS, case, cast(stored, torch.float32), lengths)
        baseline = {n: v if n in WORKSPACES else v.to(dtype) for n, v in baseline.items()}
    else:
        baseline = run(CPU_OPS, case, stored, lengths)
    got = run(emulated, case, stored, lengths)
    assert got.keys() == ref.keys()
    # Inference (no workspace: the kernels' null workspace pointers) gives the same outputs.
    for name, value in zip(("output", "h_n", "c_n"), inference(emulated, case, stored, lengths)):
        assert torch.equal(value, got[name]), f"{name} without workspace differs"
    worst, failures = 0.0, []
    for name, r in ref.items():
        want_dtype = torch.float32 if (name in WORKSPACES and dtype in HALF_TYPES) else dtype
        assert got[name].dtype == want_dtype, f"{name}: dtype {got[name].dtype}"
        assert got[name].shape == r.shape, f"{name}: shape {tuple(got[name].shape)}"
        err = (got[name].double() - r).abs().max().item() if r.numel() else 0.0
        base_err = (baseline[name].double() - r).abs().max().item() if r.numel() else 0.0
        scale = r.abs().max().item() if r.numel() else 0.0
        bound = 2 * base_err + RULE_ATOL[want_dtype] * max(1.0, scale)
        if not err <= bound:  # NaN fails
            failures.append(f"{name}: error {err:.3g} > bound {bound:.3g} (CPU op {base_err:.3g})")
        worst = max(worst, err / bound if bound > 0 else 0.0)
    assert not failures, "; ".join(failures)
    return worst


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", list(GATES))
def test_emulated_cuda_op_matches_cpu_op(emulated, cell, reverse, ragged, B, dtype):
    T = 6
    case = OpCase(cell, T=T, B=B, reverse=reverse, lengths=ragged_lengths(T, B) if ragged else None)
    check_against_cpu(emulated, case, dtype, seed=B + 10 * reverse)




@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", list(GATES))
def test_persistent_loops_match_cpu_op(emulated, monkeypatch, cell, reverse, ragged, B, dtype):
    """The whole forward loop, and the whole backward loop, each in one cooperative launch
    (FUSEDRNN_CUDA_PERSISTENT=1; the emulation's 4 blocks own 10 of H = 40 units each and
    exchange h, or d gates, through a grid barrier per step; a normalised cell's rows, B = 8 of
    them two a block, and lstm_proj's P = 3 projection rows, one a block for three blocks, behind
    a second barrier), against the CPU op as the per-step path is. Mutations each fail a share of
    these (README, CUDA section: the testing table)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    before = emulated.persistent_launches()
    T = 6
    case = OpCase(cell, T=T, B=B, reverse=reverse, lengths=ragged_lengths(T, B) if ragged else None)
    check_against_cpu(emulated, case, dtype, seed=B + 10 * reverse)
    # forward, backward, and the inference forward
    assert emulated.persistent_launches() - before == 3, "the persistent loops did not run"


@pytest.mark.parametrize("H", [37, 3])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "indrnn_relu", "layer_norm_gru", "lstm_proj"])
def test_persistent_loops_with_a_partial_last_block(emulated, monkeypatch, cell, reverse, H):
    """H = 37 over 4 blocks: 10, 10, 10 and 7 units; H = 3: 3 blocks of one unit (fewer than the
    device could hold). lstm_proj's P = 3 rows (2 where H = 3): one each for the first blocks."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    before = emulated.persistent_launches()
    case = OpCase(cell, T=5, B=3, H=H, proj=min(3, H - 1), reverse=reverse,
                  lengths=ragged_lengths(5, 3))
    check_against_cpu(emulated, case, torch.float32, seed=H)
    assert emulated.persistent_launches() - before == 3


@pytest.mark.parametrize("P", [1, 13, 39])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_persistent_projection_rows_over_the_blocks(emulated, monkeypatch, reverse, P):
    """lstm_proj's P rows of W_hr split over the 4 blocks: P = 1 (one block projects), 13 (4, 4,
    4 and 1), 39 (10, 10, 10, 9: nearly H = 40), with lengths."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    before = emulated.persistent_launches()
    case = OpCase("lstm_proj", T=5, B=3, H=40, proj=P, reverse=reverse,
                  lengths=ragged_lengths(5, 3))
    check_against_cpu(emulated, case, torch.float32, seed=P)
    assert emulated.persistent_launches() - before == 3


def run_pair(ops, case: OpCase, directions: list[dict], lengths):
    """Forward (workspace saved) then backward of a layer's two directions (direction 1
    reversed) through `ops`' pair op; per direction the named results of `run`."""
    spec = spec_of(case.cell)
    per = lambda key: [t[key] for t in directions]  # noqa: E731
    opt = lambda key, present: per(key) if present else []  # noqa: E731
    proj = case.cell == "lstm_proj"
    outs, h_n, c_n, workspace = ops.time_loop_pair_forward(
        spec.name, per("xproj"), per("h0"), opt("c0", spec.has_cell_state), per("w_hh"),
        per("step_params"), opt("w_hr", proj), lengths, True)
    gx, gh0, gc0, gw, gb, gwr = ops.time_loop_pair_backward(
        spec.name, per("grad_output"), per("grad_h_n"), opt("grad_c_n", spec.has_cell_state),
        per("w_hh"), opt("w_hr", proj), per("step_params"), workspace, lengths)
    parts = len(workspace) // 2
    results = []
    for d in range(2):
        r = {"output": outs[d], "h_n": h_n[d], "grad_xproj": gx[d], "grad_h0": gh0[d],
             "grad_w_hh": gw[d]}
        r.update({name: part for (name, _, _), part in
                  zip(spec.workspace, workspace[d * parts:(d + 1) * parts], strict=True)})
        if spec.has_cell_state:
            r.update(c_n=c_n[d], grad_c0=gc0[d])
        if spec.own_step_param_grad:
            r["grad_step_params"] = gb[d]
        if proj:
            r["grad_w_hr"] = gwr[d]
        results.append(r)
    return results


@pytest.mark.parametrize("persistent", [True, False], ids=["one_launch", "per_step"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", list(GATES))
def test_pair_op_runs_both_directions_as_the_single_ops(emulated, monkeypatch, cell, ragged,
                                                         persistent):
    """time_loop_pair_forward / _backward: both directions of a layer (direction 1 reversed)
    with their own weights, bit for bit as two one-direction calls of the emulated op; with the
    persistent loops, in ONE launch forward and one backward (each direction on 2 of the
    emulation's 4 blocks, H = 40: 20 units a block), else each per step."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1" if persistent else "0")
    T, B = 6, 3
    case = OpCase(cell, T=T, B=B, lengths=ragged_lengths(T, B) if ragged else None)
    directions, lengths = [], None
    for seed in (1, 2):
        t, lengths = make_inputs(case, seed)
        directions.append(cast(t, torch.float32))
    loops, both = emulated.persistent_launches(), emulated.bidirectional_persistent_launches()
    got = run_pair(emulated, case, directions, lengths)
    assert emulated.persistent_launches() - loops == (4 if persistent else 0)
    assert emulated.bidirectional_persistent_launches() - both == (2 if persistent else 0)
    for d, t in enumerate(directions):
        want = run(emulated, dataclasses.replace(case, reverse=d == 1), t, lengths)
        assert got[d].keys() == want.keys()
        for name, value in want.items():
            assert torch.equal(got[d][name], value), f"direction {d}: {name} differs"


def test_pair_op_checks_its_lists(emulated):
    x, h, w = torch.randn(4, 2, 3), torch.randn(2, 3), torch.randn(3, 3)
    with pytest.raises(RuntimeError, match=r"xproj must hold 2 tensors \(one per direction\)"):
        emulated.time_loop_pair_forward("rnn_tanh", [x], [h, h], [], [w, w], [], [], None, False)
    with pytest.raises(RuntimeError, match="w_hh has shape"):
        emulated.time_loop_pair_forward("rnn_tanh", [x, x], [h, h], [], [w, w[:2]], [], [], None,
                                        False)
    with pytest.raises(RuntimeError, match="xproj of the two directions must share a dtype"):
        emulated.time_loop_pair_forward("rnn_tanh", [x, x.double()], [h, h.double()], [],
                                        [w, w.double()], [], [], None, False)
    with pytest.raises(RuntimeError, match="the two directions' sizes differ"):
        emulated.time_loop_pair_forward("rnn_tanh", [x, x[:2]], [h, h], [], [w, w], [], [], None,
                                        False)


@pytest.mark.parametrize("shared", [48 << 10, 227 << 10], ids=["48KiB", "227KiB"])
def test_persistent_loops_take_the_shared_memory_the_device_allows(emulated, monkeypatch, shared):
    """LSTM H = 128 over 4 blocks needs 64 KiB a block for its W_hh rows: past the 48 KiB that
    need no opt-in the per-step path runs; with sm_90's 227 KiB opt-in, the persistent loops."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("FUSEDRNN_EMULATED_SHARED", str(shared))
    before = emulated.persistent_launches()
    check_against_cpu(emulated, OpCase("lstm", T=4, B=2, H=128, lengths=(4, 2)), torch.float32,
                      seed=2)
    assert emulated.persistent_launches() - before == (0 if shared == 48 << 10 else 3)


# What a block keeps, in bytes (fp32, 4 blocks of 10 units of H = 40): lstm_proj P = 39, 10
# rows of W_hr a block: forward W_hh rows 4*10*39 + W_hr rows 10*40 values (7,840 bytes),
# backward W_hh columns 10*4*40 + W_hr columns 10*39 (7,960); layer_norm_lstm forward and
# backward 4*10*40 values (6,400) plus 256 doubles for its row reductions (8,448).
@pytest.mark.parametrize("cell, P, shared, launches", [
    ("lstm_proj", 39, 7840, 2), ("lstm_proj", 39, 7959, 2), ("lstm_proj", 39, 7960, 3),
    ("lstm_proj", 39, 7839, 0),
    ("layer_norm_lstm", 40, 8447, 0), ("layer_norm_lstm", 40, 8448, 3)])
def test_persistent_loops_size_each_loop_for_the_shared_memory(emulated, monkeypatch, cell, P,
                                                               shared, launches):
    """Each loop's blocks fit the device's shared memory on their own: with a projection the
    forward may fit (two launches: with and without workspace) where the backward does not, and
    the per-step backward then takes the persistent forward's workspace."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("FUSEDRNN_EMULATED_SHARED", str(shared))
    before = emulated.persistent_launches()
    case = OpCase(cell, T=4, B=2, H=40, proj=P, lengths=(4, 2))
    check_against_cpu(emulated, case, torch.float32, seed=3)
    assert emulated.persistent_launches() - before == launches


# fp16 LSTM, H = 40 over 4 blocks of 10 units: forward tiles 64 x 48 weights + 2 x 8 x 48 batch
# (2 bytes) + 64 x 8 products + 64 scales (4) = 9,984 bytes, float layout 4 x 10 x 40 x 4 =
# 6,400; backward tiles 32 x 160 + 2 x 8 x 160 (2) + 32 x 8 + 64 (4) = 16,640, float layout
# 10 x 160 x 4 = 6,400.
@pytest.mark.parametrize("sm, shared, tensor_core_loops, loops", [
    (90, 48 << 10, 3, 3),  # both on tensor cores (forward with and without workspace, backward)
    (90, 9984, 2, 3),      # the backward's tiles do not fit: it runs the float layout
    (90, 6400, 0, 3),      # neither's tiles fit: the float layout
    (75, 48 << 10, 0, 3),  # no tensor cores before sm_80: the float layout
    (90, 6399, 0, 0),      # nothing fits: per step
])
def test_tensor_cores_where_the_tiles_fit(emulated, monkeypatch, sm, shared, tensor_core_loops,
                                          loops):
    """Half types' persistent products on tensor cores where the device has them (sm_80 on) and
    the tiles fit the shared memory, else as for float where that fits; the same rule either
    way."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("FUSEDRNN_EMULATED_SM", str(sm))
    monkeypatch.setenv("FUSEDRNN_EMULATED_SHARED", str(shared))
    before_tc, before = emulated.tensor_core_loops(), emulated.persistent_launches()
    check_against_cpu(emulated, OpCase("lstm", T=5, B=3, H=40, lengths=(5, 0, 3)),
                      torch.float16, seed=4)
    assert emulated.tensor_core_loops() - before_tc == tensor_core_loops
    assert emulated.persistent_launches() - before == loops


@pytest.mark.parametrize("scale", [3e4, 1e-6], ids=["past_fp16_max", "fp16_subnormal"])
def test_tensor_core_terms_keep_floats_range_for_fp16(emulated, monkeypatch, scale):
    """fp16 storage, an RNN-relu state past fp16's largest (h_t = relu(x + 0.9 h_{t-1}) with x
    = 3e4 reaches 1e5) or far below its normal range (1e-6): the float state the tensor cores
    multiply (each batch row scaled by a power of two before its split into fp16 terms) is the
    CPU float path's to float precision (the forward's float workspaces)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    T, B, H = 4, 3, 40
    xproj = torch.full((T, B, H), scale, dtype=torch.float16)
    xproj[:, 1] *= 0.5
    w_hh = (torch.eye(H) * 0.9).to(torch.float16)  # (h: off fp16's subnormal grid)
    h0 = torch.zeros(B, H, dtype=torch.float16)
    args = ("rnn_relu", xproj, h0, None, w_hh, None, None, None, False, True)
    before = emulated.tensor_core_loops()
    got = emulated.time_loop_forward(*args)
    want = CPU_OPS.time_loop_forward("rnn_relu", xproj.float(), h0.float(), None, w_hh.float(),
                                     None, None, None, False, True)
    assert emulated.tensor_core_loops() - before == 1
    for g, w in zip(got[3], want[3], strict=True):  # the float workspaces: h_t and h_{t-1}
        torch.testing.assert_close(g, w, rtol=1e-6, atol=0)
    # (The backward's column products go through the same code; what it returns is rounded to
    # fp16 storage, which at these magnitudes overflows or keeps a few bits: no float check.)


def test_persistent_loops_fall_back_where_the_grid_cannot_be_resident(emulated, monkeypatch):
    """A cooperative grid larger than the device keeps resident (here: the emulation's 256
    blocks, with 300 claimed) is refused at launch: the per-step path runs instead, same
    numbers, no error."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    monkeypatch.setenv("FUSEDRNN_EMULATED_BLOCKS", "300")
    before = emulated.persistent_launches()
    check_against_cpu(emulated, OpCase("lstm", T=4, B=2, H=300), torch.float32, seed=1)
    assert emulated.persistent_launches() == before


@pytest.mark.parametrize("cuda_loop, variable, persistent", [
    (0, None, False), (0, "1", True), (1, "1", False), (2, None, True), (2, "0", True)])
def test_the_cuda_loop_argument_chooses_the_loop(emulated, monkeypatch, cuda_loop, variable,
                                                 persistent):
    """cuda_loop (fusedrnn.dispatch.CUDA_LOOP) 2 asks for the persistent loops and 1 for the
    per-step ones whatever FUSEDRNN_CUDA_PERSISTENT says; 0, the default, leaves it to it."""
    if variable is None:
        monkeypatch.delenv("FUSEDRNN_CUDA_PERSISTENT", raising=False)
    else:
        monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", variable)
    case = OpCase("gru", T=4, B=2)
    t, lengths = make_inputs(case, seed=3)
    t = cast(t, torch.float32)
    before = emulated.persistent_launches()
    out, h_n, _, workspace = emulated.time_loop_forward(*_forward_args(case, t, lengths, True),
                                                        cuda_loop=cuda_loop)
    emulated.time_loop_backward("gru", t["grad_output"], t["grad_h_n"], None, t["w_hh"], None,
                                t["step_params"], workspace, lengths, False, cuda_loop=cuda_loop)
    assert emulated.persistent_launches() - before == (2 if persistent else 0)
    reference = CPU_OPS.time_loop_forward(*_forward_args(case, t, lengths, False))
    torch.testing.assert_close(out, reference[0])
    with pytest.raises(RuntimeError, match="cuda_loop must be 0 .default., 1 .per step. or 2"):
        emulated.time_loop_forward(*_forward_args(case, t, lengths, False), cuda_loop=3)


# Gate pre-activation offsets (added to xproj) that make the state remember for hundreds of
# steps: "forward" grows c to tens (forget gate ~0.993, i*g > 0) or keeps h (update gate
# ~0.9975); "backward" carries d c back through f ~0.9975 with a small output gate.
LONG_MEMORY = {
    ("lstm", "forward"): [1.0, 5.0, 0.5, 0.0],
    ("lstm", "backward"): [0.0, 6.0, 0.0, -2.0],
    ("lstm_proj", "forward"): [1.0, 5.0, 0.5, 0.0],
    ("lstm_proj", "backward"): [0.0, 6.0, 0.0, -2.0],
    ("gru", "forward"): [0.0, 6.0, 0.0],
    ("layer_norm_lstm", "forward"): [1.0, 5.0, 0.5, 0.0],
    ("layer_norm_lstm", "backward"): [0.0, 6.0, 0.0, -2.0],
    ("layer_norm_gru", "forward"): [0.0, 6.0, 0.0],
    ("rnn_tanh", "forward"): None,
    ("rnn_relu", "forward"): None,
}


@pytest.mark.parametrize("loop", ["per_step", "persistent"])
@pytest.mark.parametrize("dtype", list(HALF_TYPES), ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell,regime", list(LONG_MEMORY), ids=[f"{c}-{r}" for c, r in LONG_MEMORY])
def test_long_sequence_half_types_keep_the_recurrence_in_float(emulated, monkeypatch, cell,
                                                              regime, dtype, loop):
    """T = 1000 in long-memory regimes: rounding c or h (forward), or d c and d h (backward), to
    the half type every step loses the small per-step changes and drifts far outside the rule;
    carrying them in float does not. The persistent loops take h (d gates backward) into their
    tensor-core products as 2 (fp16) or 3 (bf16) 16-bit terms: with one term they fail too."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1" if loop == "persistent" else "0")
    case = OpCase(cell, T=1000, B=4, H=32, lengths=(1000, 0, 999, 517))
    check_against_cpu(emulated, case, dtype, seed=3, gate_offsets=LONG_MEMORY[cell, regime],
                      scale=0.5)


@pytest.mark.parametrize("H", [5, 13])
@pytest.mark.parametrize("cell", [c for c in CELLS if spec_of(c).normalized])
def test_row_kernels_with_units_not_a_multiple_of_the_block(emulated, cell, H):
    """A row kernel's loops over H and over 4H give a unit to different threads when H is no
    multiple of the block (8 threads in the emulation build): what one loop writes another reads
    only after a barrier."""
    case = OpCase(cell, T=4, B=3, H=H, lengths=ragged_lengths(4, 3))
    check_against_cpu(emulated, case, torch.float32, seed=H)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", list(GATES))
def test_grid_stride_loop(emulated, cell, dtype):
    """B*H = 576 elements need three blocks of 256; the emulation build caps the grid at two, so
    each thread's grid-stride loop runs twice."""
    case = OpCase(cell, T=5, B=8, H=72, reverse=True, lengths=ragged_lengths(5, 8))
    check_against_cpu(emulated, case, dtype, seed=5)


def test_emulated_ops_report_bad_arguments_like_the_cpu_ops(emulated):
    """Both backends share the argument checks (csrc/op_checks.h)."""
    x, h, w = torch.randn(4, 2, 3), torch.randn(2, 3), torch.randn(5, 3)
    for ops in (CPU_OPS, emulated):
        with pytest.raises(RuntimeError, match=r"w_hh has shape \[5, 3\] but expected \[3, 3\]"):
            ops.time_loop_forward("rnn_tanh", x, h, None, w, None, None, None, False, False)
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
            ops.time_loop_forward("rnn_tanh", x[:0], h, None, w[:3], None, None, None, False,
                                  False)


# ------------------------------------------------------- the modules on the emulated CUDA ops

# (with the pair ops registered for the CPU the modules run a bidirectional layer through them,
# as on CUDA: csrc/functional.cpp, has_pair_op)
TIME_LOOP_OPS = ("time_loop_forward", "time_loop_backward", "time_loop_pair_forward",
                 "time_loop_pair_backward")


@pytest.fixture
def cuda_ops_behind_the_modules(emulated, monkeypatch):
    """fusedrnn's CPU time-loop kernels replaced by the emulated CUDA ops for one test, and half
    types passed to them as they are on CUDA (the CPU path would compute them in float32): the
    modules then run their autograd nodes (csrc/autograd.cpp) and layer composition
    (csrc/functional.cpp) over the CUDA time loops, as on a GPU."""
    import fusedrnn.functional

    lib = torch.library.Library("fusedrnn", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": intended
        warnings.simplefilter("ignore")
        for name in TIME_LOOP_OPS:
            lib.impl(name, getattr(emulated, name), "CPU")
    # In effect: the CPU op itself has no bf16 kernel, the emulated CUDA op has.
    x, h = torch.randn(2, 1, 3, dtype=torch.bfloat16), torch.zeros(1, 3, dtype=torch.bfloat16)
    out = CPU_OPS.time_loop_forward("rnn_tanh", x, h, None, h.new_zeros(3, 3), None, None, None,
                                    False, False)[0]
    assert out.shape == x.shape
    monkeypatch.setattr(fusedrnn.functional, "_CPU_COMPUTE_DTYPES",
                        (torch.float32, torch.float64, *HALF_TYPES))
    yield
    lib._destroy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("cell", CELLS)
def test_modules_on_emulated_cuda_ops_match_torch_nn(cuda_ops_behind_the_modules, cell, kind,
                                                     dtype):
    """Two layers, bidirectional: outputs and every gradient vs torch.nn by the fp64 rule."""
    check_case(Case(cell, num_layers=2, bidirectional=True, input_kind=kind, T=7, H=16), dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_modules_on_the_persistent_loops_match_torch_nn(cuda_ops_behind_the_modules, emulated,
                                                        monkeypatch, cell):
    """The same through the persistent loops (FUSEDRNN_CUDA_PERSISTENT=1), packed unsorted:
    every cell, lstm_proj and the normalised ones included, in the modules' autograd, each
    layer's two directions in one launch (the pair op and its autograd node)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    loops, both = emulated.persistent_launches(), emulated.bidirectional_persistent_launches()
    check_case(Case(cell, num_layers=2, bidirectional=True, input_kind="packed_unsorted", T=7,
                    H=16), torch.float32)
    # at least 2 layers x 2 directions, forward and backward, each layer's two in one launch
    assert emulated.persistent_launches() - loops >= 8
    assert emulated.bidirectional_persistent_launches() - both >= 4


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", ["rnn_tanh-2layers-bi", "gru-bi", "lstm_proj-bi"])
def test_double_backward_through_the_pair_op(cuda_ops_behind_the_modules, emulated, monkeypatch,
                                             name, packed):
    """A gradient penalty's gradients (create_graph=True) through the pair op's autograd node
    (each direction's projection remembered apart), fp64, vs torch.nn."""
    from test_double_backward import LAYERS, _pair, _penalty_grads

    monkeypatch.setenv("FUSEDRNN_CUDA_PERSISTENT", "1")
    both = emulated.bidirectional_persistent_launches()
    reference, fused = _pair(LAYERS[name])
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    for got, want in zip(_penalty_grads(fused, x, packed), _penalty_grads(reference, x, packed),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert emulated.bidirectional_persistent_launches() > both


@pytest.mark.parametrize("cell", CELLS)
def test_half_backward_with_unused_outputs(cuda_ops_behind_the_modules, cell):
    """A loss on the output alone leaves the gradients of h_n (and c_n) undefined; the autograd
    node fills them with zeros of the storage dtype (the saved workspaces are float)."""
    torch.manual_seed(0)
    _, fused = make_pair(Case(cell, T=7, I=10, H=16), torch.bfloat16, "cpu")
    x = torch.randn(7, 3, 10, dtype=torch.bfloat16, requires_grad=True)
    out, _ = fused(x)
    out.float().sum().backward()
    grads = [x.grad] + [p.grad for p in fused.parameters()]
    assert all(g is not None and g.dtype == torch.bfloat16 and g.isfinite().all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_opcheck_on_emulated_cuda_ops(cuda_ops_behind_the_modules, lengths, dtype):
    """Schemas, fake kernels (float workspaces for half types), autograd registration and
    torch.compile tracing of the time-loop ops, with the CUDA ops doing the work."""
    for op, args in op_samples(lengths, reverse=True, dtype=dtype):
        torch.library.opcheck(op, args)
    for op, args in op_backward_samples(lengths, dtype=dtype):
        torch.library.opcheck(op, args)
    if dtype == torch.float32:  # (the pair ops' checks cost more than the rest: once a dtype)
        for op, args in pair_op_samples(lengths, dtype):
            torch.library.opcheck(op, args)


def pair_op_samples(lengths, dtype):
    """(op, args) of the pair ops, forward and backward: each of op_samples' forwards as
    direction 0, with a second set of tensors of its shapes as direction 1."""
    def other(t):
        return None if t is None else (t.detach() * 0.5 + 0.1).requires_grad_(t.requires_grad)

    samples = []
    for _, args in op_samples(lengths, reverse=False, dtype=dtype):
        cell, xproj, h0, c0, w_hh, step_params, w_hr, lens, _, _ = args
        pair = lambda t: [] if t is None else [t, other(t)]  # noqa: E731
        forward = (cell, pair(xproj), pair(h0), pair(c0), pair(w_hh), pair(step_params),
                   pair(w_hr), lens, True)
        samples.append((torch.ops.fusedrnn.time_loop_pair_forward.default, forward))
        with torch.no_grad():
            outs, h_n, c_n, workspace = torch.ops.fusedrnn.time_loop_pair_forward(*forward)
        grads = lambda ts: [torch.randn_like(t) for t in ts]  # noqa: E731
        samples.append((torch.ops.fusedrnn.time_loop_pair_backward.default,
                        (cell, grads(outs), grads(h_n), grads(c_n) if c0 is not None else [],
                         [t.detach() for t in pair(w_hh)],
                         [t.detach() for t in pair(w_hr)],
                         [t.detach() for t in pair(step_params)], workspace, lens)))
    return samples
