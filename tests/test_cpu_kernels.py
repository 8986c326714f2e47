"""The CPU per-step GEMM (csrc/cpu/packed_gemm.cpp) at the shapes where its blocking has edges:
batch rows not a multiple of the row block (8 with AVX-512, 6 with AVX2), gate columns not a
multiple of the 16-column panel, and depth past one 256-deep slice (LSTM backward multiplies by
4H). Both kernel forms run here: the CPU's own, and AVX2 with AVX-512 turned off."""
import os
import subprocess
import sys

import pytest
import torch

import fusedrnn
from fusedrnn.verification import spec_of
from helpers import CELLS, Case, check_case, check_teams_ran

# (B, H): one row (the split-k kernel) / 1 panel; 7 rows (one call; AVX2 3 + 4) / 33 cols (2
# panels + 1); 13 rows (6 + 7; AVX2 4 + 4 + 5) / K=4H=280 (2 slices); two rows (split-k; GRU/LSTM:
# every gate in one pass) with a partial panel, and with depth past one slice; 4 rows; 10 rows
# (5 + 5); 11 rows (5 + 6). Rows are spread evenly over kernel calls of at most 8 (AVX2: 6).
EDGE_SHAPES = [(1, 16), (7, 33), (13, 70), (6, 260), (2, 33), (2, 260), (4, 20), (10, 33),
               (11, 16)]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("B,H", EDGE_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gemm_block_edges(cell, B, H, dtype):
    check_case(Case(cell, T=4, B=B, I=9, H=H, input_kind="packed_unsorted"), dtype)


# The input projection on the packed kernels (torch.ops.fusedrnn_probes.packed_linear: the
# product csrc/host_linear.h runs): (M rows, K depth, N columns). M from the fewest rows the
# layers send there (64) to past one 256 KiB chunk of A (1024 rows at K = 64: 2001 = chunks of
# 1000 and 1001); K inside one 256-deep slice, past one (300) and past two (600); N as 4 groups of
# whole panels (4 x 32), 4 groups ending in a partial panel (4 x 20), 3 groups (GRU's 3 x 20) and
# one (13).
PROJECTION_SHAPES = [(64, 9, 128), (100, 300, 80), (2001, 64, 60), (97, 600, 13), (1030, 1, 80)]


# The packed kernels run (AVX2+FMA x86, FUSEDRNN_DISABLE_PACKED_GEMM unset): their FMA-rate
# probe answers 0 otherwise.
packed_kernels = pytest.mark.skipif(torch.ops.fusedrnn_probes.fma_peak_gflops(0.0) == 0,
                                    reason="the packed kernels do not run here")


@packed_kernels
@pytest.mark.parametrize("M,K,N", PROJECTION_SHAPES)
@pytest.mark.parametrize("bias,w_is_nk", [(True, True), (False, True), (False, False)])
def test_packed_projection_matches_linear(M, K, N, bias, w_is_nk):
    """Against torch's linear in float64 (rows, with the bias, independent of M: a row's sum in
    one fixed order), on a non-contiguous x (made contiguous by the op); w (N, K) as the
    forward's w_ih, or (K, N) as w_ih in the backward's d x = d xproj · w_ih."""
    torch.manual_seed(0)
    x = torch.randn(K, M).t()
    w, b = torch.randn(N, K), (torch.randn(N) if bias else None)
    out = torch.ops.fusedrnn_probes.packed_linear(x, w if w_is_nk else w.t().contiguous(), b,
                                                  w_is_nk)
    expected = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    # float32 rounding of K products and a sum: well inside K ulps of the terms' magnitude.
    scale = x.abs().double() @ w.abs().double().t() + (0 if b is None else b.abs().double())
    assert out.dtype == torch.float32 and out.shape == (M, N)
    assert ((out.double() - expected).abs() <= 4 * K * 2.0 ** -24 * scale + 1e-30).all()
    first = torch.ops.fusedrnn_probes.packed_linear(x[:64], w if w_is_nk else w.t().contiguous(),
                                                    b, w_is_nk)
    assert torch.equal(first, out[:64])


@packed_kernels
def test_packed_projection_refuses_bad_operands():
    """The probe checks what the layers' own checks guarantee them: a bias of N float32 values,
    float32 operands of matching depth."""
    probe = torch.ops.fusedrnn_probes.packed_linear
    x, w = torch.randn(64, 8), torch.randn(64, 8)
    for bias in (torch.zeros(3), torch.zeros(2, 64), torch.zeros(64, dtype=torch.float64)):
        with pytest.raises(RuntimeError, match="bias must be float32"):
            probe(x, w, bias, True)
    with pytest.raises(RuntimeError, match="x has 8 columns, w takes 7"):
        probe(x, torch.randn(64, 7), None, True)
    with pytest.raises(RuntimeError, match="float32 CPU x"):
        probe(x.double(), w.double(), None, True)


def test_layers_under_a_dispatch_mode_see_torch_linear():
    """Under a Python dispatch mode (FakeTensorMode, FlopCounterMode) the input projection is
    torch's linear whatever its size: the mode must see it, and fake tensors have no data."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    lstm = fusedrnn.LSTM(32, 32)
    x = torch.randn(16, 8, 32)  # 128 rows: the packed kernels' size
    with FakeTensorMode(allow_non_fake_inputs=True):
        out, _ = lstm(x)
        assert out.shape == (16, 8, 32)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            lstm(x)
    assert counter.get_total_flops() >= 2 * 16 * 8 * 32 * 4 * 32  # the projection's, at least


@packed_kernels
def test_packed_projection_thread_count_does_not_change_results():
    """The same bits on one thread as on two: each (chunk, block) tile's arithmetic is fixed."""
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 700, 40), torch.randn(4 * 48, 40), torch.randn(4 * 48)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fusedrnn_probes.packed_linear(x, w, b)
        torch.set_num_threads(2)
        two = torch.ops.fusedrnn_probes.packed_linear(x, w, b)
    finally:
        torch.set_num_threads(threads)
    assert one.shape == (3, 700, 4 * 48) and torch.equal(one, two)


@packed_kernels
@pytest.mark.parametrize("cell", list(CELLS))
def test_layers_on_the_packed_projection_match_torch(cell):
    """Layers whose input projections take the packed kernels (T * B = 120 rows >= 64; where the
    CPU has AVX-512, csrc/host_linear.h): outputs and every gradient, two bidirectional layers
    (the second projects 2H = 40 features)."""
    check_case(Case(cell, num_layers=2, bidirectional=True, T=40, B=3, I=20, H=20), torch.float32)


@pytest.mark.parametrize("disable", ["FUSEDRNN_DISABLE_AVX512", "FUSEDRNN_DISABLE_GATE_KERNEL"])
def test_gemm_block_edges_other_kernels(disable):
    """The edge shapes, the projection's packed products and the teams' bitwise equality with
    one worker (both splits), again with another form of the packed GEMM forced: its AVX2 form (the GEMM CPUs without AVX-512 run;
    the gate row kernels keep their own load-time clone), or on AVX-512 the gate-by-gate 8x16
    kernel in place of the all-gates one for GRU/LSTM steps. The choice is made once per
    process, so in a fresh one."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, **{disable: "1"})
    tests = ["test_gemm_block_edges", "test_thread_count_does_not_change_results",
             "test_packed_projection_matches_linear",
             "test_packed_projection_thread_count_does_not_change_results"]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                    *(f"{here}/test_cpu_kernels.py::{name}" for name in tests)],
                   check=True, env=env, cwd=os.path.dirname(here))


def _python_in_fresh_process(code: str, **env: str | None) -> list[str]:
    """Runs `python -c code` from the repository root in a new process, with the environment
    changed by env (None: removed); returns its stdout split in words."""
    environ = {k: v for k, v in os.environ.items() if k not in env}
    environ.update({k: v for k, v in env.items() if v is not None})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], check=True, env=environ, cwd=root,
                          capture_output=True, text=True, timeout=300).stdout.split()


# Big enough that the time loops split each step over 2 workers (csrc/cpu/team.h: at least 2
# unit blocks of 16 and 2 * kMinStepMacsPerWorker = 65536 multiply-adds per step: B * G*H * P
# (+ B * P * H with W_hr)). TEAM_B rows are too few to split (kMinRowsPerWorker = 8 each): the
# workers split the unit blocks; ROWS_TEAM_B rows are split 9 / 10.
TEAM_T, TEAM_B, TEAM_H, TEAM_P = 5, 13, 104, 40
ROWS_TEAM_B = 19


def _ops_forward_backward(cell, reverse, B=TEAM_B, H=TEAM_H):
    """Every output of the layer op pair for the cell (verification's names: lstm_proj is LSTM
    with W_hr) on fixed random data, with unequal lengths (one row empty, one full) so blocks
    see active and inactive rows."""
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    T = TEAM_T
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 0, T
    ops = torch.ops.fusedrnn
    spec = spec_of(cell)
    G, P = spec.gates, TEAM_P if cell == "lstm_proj" else H
    w_hh = randn(G * H) if spec.diagonal else randn(G * H, P) * 0.1
    w_hr = randn(P, H) * 0.1 if cell == "lstm_proj" else None
    step_params = randn(spec.step_param_units * H)  # csrc/ops.cpp
    c0 = randn(B, H) if spec.has_cell_state else None
    out, h_n, c_n, workspace = ops.time_loop_forward(spec.name, randn(T, B, G * H), randn(B, P),
                                                     c0, w_hh, step_params, w_hr, lengths,
                                                     reverse, True)
    grad_c_n = randn(B, H) if spec.has_cell_state else None
    bwd = ops.time_loop_backward(spec.name, randn(T, B, P), randn(B, P), grad_c_n, w_hh, w_hr,
                                 step_params, workspace, lengths, reverse)
    # Not grad_w_hh / grad_w_hr: see below.
    return [out, h_n, c_n, *workspace, bwd[0], bwd[1], bwd[2], bwd[4]]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("split", ["units", "rows"])
def test_thread_count_does_not_change_results(cell, reverse, split):
    """Each unit block of each row of a step is computed by one worker in a fixed order (the
    packed kernel's row arithmetic does not depend on which rows share a call), so everything
    the time loops compute is bitwise equal on 1 thread and on 2 workers, whether they split the
    unit blocks or the batch rows. (Not the weight gradients: those are one BLAS GEMM after the
    loop, whose reduction split BLAS picks per thread count.)"""
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 intra-op threads")
    import fusedrnn.probes
    B = ROWS_TEAM_B if split == "rows" else TEAM_B
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _ops_forward_backward(cell, reverse, B)
        torch.set_num_threads(2)
        before = fusedrnn.probes.team_counts()
        multi = _ops_forward_backward(cell, reverse, B)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a, b)
    # (IndRNN: B * H multiply-adds a step, too few for a team here; a normalised step is never
    # split by unit blocks: TEAM_B rows are too few to split by rows.)
    if not cell.startswith("indrnn") and not (spec_of(cell).normalized and split == "units"):
        check_teams_ran(before, 2, split)  # forward and backward


@pytest.mark.parametrize("cell", [c for c in CELLS if spec_of(c).normalized])
def test_normalised_step_splits_the_rows_of_a_large_weight(cell):
    """A normalised step has no unit split, so its team splits the batch rows even where W_hh
    is past the 2 MiB under which other cells' teams do (csrc/cpu/team.h, whole_rows): at
    H = 432 (W_hh 2.2 MiB for 3 gates, 3 MiB for 4) the rows split 9 / 10, bitwise equal to one
    worker."""
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 intra-op threads")
    import fusedrnn.probes
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _ops_forward_backward(cell, False, ROWS_TEAM_B, H=432)
        torch.set_num_threads(2)
        before = fusedrnn.probes.team_counts()
        multi = _ops_forward_backward(cell, False, ROWS_TEAM_B, H=432)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a, b)
    check_teams_ran(before, 2, "rows")


@pytest.mark.parametrize("dissolve_at", [1, 2, 3, 5])
def test_team_dissolving_mid_loop_does_not_change_results(dissolve_at, tmp_path):
    """On a busy machine a team dissolves mid-loop and its first worker finishes every block
    alone (csrc/cpu/team.h). FUSEDRNN_TEAM_DISSOLVE_AT forces that after the given barrier (of
    TEAM_T = 5 a loop; LSTM with W_hr has two a step, so there also between its two phases), in a
    fresh process: every op's results stay bitwise equal to the 2-worker run, and every team loop
    there did dissolve. (Where the machine was read busy, fewer loops formed a team: those that
    did are still checked.)"""
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 intra-op threads")
    out = tmp_path / "dissolved.pt"
    code = (
        "import sys, torch, fusedrnn.probes; sys.path.insert(0, 'tests'); torch.set_num_threads(2);"
        "from test_cpu_kernels import _ops_forward_backward as run;"
        "results = {(c, r): run(c, r) for c in %r for r in (False, True)};"
        "torch.save((results, fusedrnn.probes.team_counts(), fusedrnn.probes.machine_load()),"
        " %r)" % (list(CELLS), str(out))
    )
    _python_in_fresh_process(code, FUSEDRNN_TEAM_DISSOLVE_AT=str(dissolve_at))
    dissolved, (loops, dissolutions, contended, _), load = torch.load(out)
    # (A diagonal recurrence's step, B * H multiply-adds, is too small here for a team; a
    # normalised step is never split by unit blocks, and TEAM_B rows are too few to split.)
    team_cells = [c for c in CELLS if not spec_of(c).diagonal and not spec_of(c).normalized]
    assert loops > 0 and dissolutions == loops
    if loops < 2 * 2 * len(team_cells):  # no team while the machine was read busy
        assert load[3] + contended > 0, "fewer team loops on an idle machine"
    else:
        assert contended == 0
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for (cell, reverse), results in dissolved.items():
            for a, b in zip(results, _ops_forward_backward(cell, reverse), strict=True):
                assert torch.equal(a, b), (cell, reverse)
    finally:
        torch.set_num_threads(threads)


def test_team_choice_learns_from_both_ways():
    """Where the size rule allows a team, the loops learn whether one pays on this machine
    (csrc/cpu/team.h, TeamChoice): the first loops of a step-size class alternate team / one
    worker, later ones run the cheaper way; results are bitwise the same either way. With
    FUSEDRNN_TEAM_CHOICE=rule (the rest of this suite) every loop gets its team. Fresh processes,
    2 intra-op threads."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs")
    code = (
        "import torch, fusedrnn.probes; torch.set_num_threads(2);"
        "g = torch.Generator().manual_seed(0);"
        f"T, B, H = 200, {TEAM_B}, {TEAM_H};"
        "args = ('gru', torch.randn(T, B, 3 * H, generator=g), torch.randn(B, H, generator=g),"
        "        None, torch.randn(3 * H, H, generator=g) / H ** 0.5,"
        "        torch.randn(3 * H, generator=g), None, None, False, False);"
        "teams, outs = [], [];"
        "count = lambda: fusedrnn.probes.team_counts()[0]\n"
        "for _ in range(12):\n"
        "    before = count()\n"
        "    outs.append(torch.ops.fusedrnn.time_loop_forward(*args)[0])\n"
        "    teams.append(count() - before)\n"
        "print(*teams, fusedrnn.probes.team_counts()[2] + fusedrnn.probes.machine_load()[3],"
        "      all(torch.equal(o, outs[0]) for o in outs))"
    )
    runs = {}
    for choice in ("learn", "rule"):
        *teams, busy, same = _python_in_fresh_process(
            code, FUSEDRNN_TEAM_CHOICE="rule" if choice == "rule" else None)
        if int(busy) > 0:  # a team backed off, or the load reading left one core: no team allowed
            pytest.skip("the machine is busy")
        assert same == "True"
        runs[choice] = [int(t) for t in teams]
    assert runs["learn"][:4] == [1, 0, 1, 0]
    assert runs["rule"] == [1] * 12


def test_team_on_one_cpu_dissolves_and_backs_off(tmp_path):
    """Two workers squeezed onto one CPU (as when the other cores are busy): the first worker
    waits a scheduler time slice at every barrier, so the team dissolves mid-loop and marks the
    machine busy; calls right after run on one thread without forming a team (the back-off
    window is 100 ms or more, the ten calls take ~30 ms), and a backward pass runs torch's own
    nodes (here the input projection's, before x's gradient hook) on one thread too, with the
    caller's 2 threads back once it ends; results equal torch.nn's. In a fresh process, pinned to
    one CPU with 2 intra-op threads."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity")
    code = (
        "import os, sys, torch; sys.path.insert(0, 'tests');"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); torch.set_num_threads(2);"
        "from helpers import Case, check_case;"
        "import fusedrnn, fusedrnn.probes; gru = fusedrnn.GRU(16, 64); x = torch.randn(300, 8, 16);"
        "gru(x); first = fusedrnn.probes.team_counts();"
        "xg = x.clone().requires_grad_(); seen = [];"
        "xg.register_hook(lambda g: seen.append(torch.get_num_threads()));"
        "gru(xg)[0].sum().backward(); after = torch.get_num_threads();"
        "[gru(x) for _ in range(10)];"
        "print(*first, *fusedrnn.probes.team_counts(), *seen, after);"
        "check_case(Case('lstm', T=40, B=8, I=16, H=64), torch.float32)"
    )
    loops, dissolved, contended, _, loops_after, _, _, _, in_backward, after_backward = map(
        int, _python_in_fresh_process(code, FUSEDRNN_TEAM_DISSOLVE_AT=None))
    assert loops == 1 and dissolved == 1 and contended == 1
    assert loops_after - loops <= 1
    assert in_backward == 1 and after_backward == 2


def test_busy_core_limits_threads_without_a_team(tmp_path):
    """Another process spinning on one of this process's 2 CPUs: the ops read the machine's load
    (csrc/cpu/machine_load.h), count one core free, and run on one thread even where no team
    forms to notice (RNN T=300 B=8 H=64, whose steps are too small for a team): torch's own
    backward nodes see 1 thread during the pass, the caller's 2 come back after it, and results
    equal torch.nn's. The core stays counted busy while our own 2-thread GEMMs share it with
    the spinner (which then gets only about half of it). In a fresh process pinned to the first
    CPU, the spinner to the second."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs and os.sched_setaffinity")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    code = (
        "import os, sys, time, subprocess, torch; sys.path.insert(0, 'tests');"
        f"os.sched_setaffinity(0, {{{first}, {second}}}); torch.set_num_threads(2);"
        "spin = subprocess.Popen([sys.executable, '-c', "
        f"'import os\\nos.sched_setaffinity(0, {{{second}}})\\nwhile True: pass']);"
        "import fusedrnn, fusedrnn.probes; from helpers import Case, check_case;"
        "rnn = fusedrnn.RNN(32, 64); x = torch.randn(300, 8, 32);"
        "load = fusedrnn.probes.machine_load; load(); deadline = time.time() + 10;"
        "time.sleep(0.5)\n"
        "while load()[1] > 1 and time.time() < deadline: time.sleep(0.1)\n"
        "xg = x.clone().requires_grad_(); seen = [];"
        "xg.register_hook(lambda g: seen.append(torch.get_num_threads()));"
        "rnn(xg)[0].sum().backward(); after = torch.get_num_threads();"
        "others, free, readings, busy = load();"
        "check_case(Case('rnn_tanh', T=300, B=8, I=32, H=64), torch.float32);"
        # Our own 2-thread GEMMs share the busy core: the spinner gets about half of it, and
        # that must still read as busy.
        "a = torch.randn(256, 256); shared_free = set(); end = time.time() + 1.5\n"
        "while time.time() < end: a @ a; shared_free.add(load()[1])\n"
        "spin.kill(); spin.wait();"
        "print(free, int(readings), int(busy), *seen, after, *fusedrnn.probes.team_counts(),"
        "     max(shared_free))"
    )
    free, readings, busy, in_backward, after_backward, team_loops, _, _, _, shared_free = map(
        float, _python_in_fresh_process(code))
    assert free == 1 and readings >= 1 and busy >= 1
    assert shared_free == 1
    assert in_backward == 1 and after_backward == 2
    assert team_loops == 0


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_two_worker_time_loops_match_torch(cell):
    """torch.nn equivalence (outputs and all gradients) with every step split over 2 workers:
    bidirectional, unsorted packed input of unequal lengths."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        check_case(Case(cell, bidirectional=True, input_kind="packed_unsorted", T=TEAM_T,
                        B=TEAM_B, I=9, H=TEAM_H), torch.float32)
    finally:
        torch.set_num_threads(threads)


def test_float_tanh_bounded_and_accurate():
    """The CPU's float tanh (csrc/gate_math.h, a rational approximation): within 3e-7 of tanh,
    never past +-1 (backward uses 1 - tanh^2), odd, NaN propagated."""
    half = torch.linspace(0, 12, 200001)
    x = torch.cat([-half.flip(0), half, torch.tensor([float("nan")])])
    T = x.numel()
    out = torch.ops.fusedrnn.time_loop_forward("rnn_tanh", x.view(T, 1, 1), torch.zeros(1, 1),
                                               None, torch.zeros(1, 1), None, None, None, False,
                                               False)[0]
    y = out.view(-1)
    finite = ~torch.isnan(x)
    assert torch.isnan(y[-1])
    assert (y[finite].abs() <= 1).all()
    assert torch.equal(y[:-1], -y[:-1].flip(0))  # odd: x is symmetric about 0
    assert (y[finite].double() - torch.tanh(x[finite].double())).abs().max() < 3e-7
