"""`python -m fusedrnn bench`: fused vs torch.nn timed side by side in one process.

Every configuration is first verified (fusedrnn.verification: outputs and all gradients against an
fp64 reference); one that fails is reported as FAIL and never timed. Then forward and
forward+backward are timed interleaved (fused, torch.nn, torch.nn, fused, ...) after a warm-up,
with CUDA events on GPU, and the medians are compared: speedup = torch.nn time / fused time.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import textwrap
import time

import torch

from . import dispatch, floors, peers, report
from .verification import (
    CELL_LOOP_CELLS, CELLS, Case, available_dtypes, compare, make_pair, spec_of, worst)

# (T, B, I, H)
SEED_SIZE = (300, 1, 1, 32)          # the seeds' programs
SMALL_BATCH_SIZE = (300, 8, 32, 64)  # the corner of "small" (H <= 64, B <= 8)
MEDIUM_SIZE = (100, 32, 64, 256)
FASTRNNS_SIZE = (100, 64, 512, 512)  # torch's benchmarks/fastrnns default
LARGE_SIZE = (50, 64, 512, 1024)
DEFAULT_SIZES = [SEED_SIZE, SMALL_BATCH_SIZE, MEDIUM_SIZE, FASTRNNS_SIZE, LARGE_SIZE]

# grid -> (sizes, cells, layer counts, bidirectional options)
GRIDS = {
    "quick": ([SEED_SIZE, MEDIUM_SIZE], ["rnn_tanh", "gru", "lstm"], [1], [False]),
    "default": (DEFAULT_SIZES, ["rnn_tanh", "rnn_relu", "gru", "lstm"], [1], [False]),
    "full": (DEFAULT_SIZES, list(CELLS), [1, 2], [False, True]),
}
PASSES = ("fwd", "fwd+bwd")
STREAM_PASSES = ("stream",)


def passes_of(cfg: "BenchConfig") -> tuple[str, ...]:
    return STREAM_PASSES if cfg.stream else PASSES


@dataclasses.dataclass
class BenchConfig:
    cell: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    cell_loop: bool = False  # the cell module once per step (verification.CellLoop)
    stream: bool = False  # T module calls of one step each, the state carried (no grad)

    def case(self) -> Case:
        return Case(self.cell, num_layers=self.layers, bidirectional=self.bidirectional,
                    T=self.T, B=self.B, I=self.I, H=self.H, cell_loop=self.cell_loop)

    def label(self) -> str:
        shape = f"T={self.T} B={self.B} I={self.I} H={self.H}"
        if self.cell_loop:
            return f"{self.cell} cell x {shape}"
        if self.stream:
            return f"{self.cell} stream of {self.T} steps B={self.B} I={self.I} H={self.H}"
        return f"{self.cell} {shape} L={self.layers} {'bi' if self.bidirectional else 'uni'}"


def expected_cudnn_algo(cfg: BenchConfig, bench_pass: str, cudnn_version: int | None = None,
                        capability: tuple[int, int] | None = None) -> str:
    """The cuDNN algorithm torch.nn runs on this configuration (bench input is never packed), by
    ATen's rule (fusedrnn.dispatch.cudnn_persistent), for the cuDNN and GPU given or present.
    Against a persistent kernel the baseline is already fused, so ratios mean something else."""
    if cudnn_version is None:
        cudnn_version = torch.backends.cudnn.version()
    if capability is None:
        capability = torch.cuda.get_device_capability(cfg.device)
    spec = spec_of(cfg.cell)
    proj = 1 if cfg.cell == "lstm_proj" else 0

    def algo(backward: bool) -> str:
        persistent = spec.in_torch_nn and dispatch.cudnn_persistent(
            spec.mode, getattr(torch, cfg.dtype), cfg.H, proj, False, backward, cudnn_version,
            capability)
        return "persistent" if persistent else "standard"

    if bench_pass == "fwd":
        return algo(False)
    return f"fwd {algo(False)}, bwd {algo(True)}"


def time_loops_per_call(cfg: BenchConfig, bench_pass: str) -> int:
    """Time loops one call of the pass runs: one per layer and direction, and as many again
    for the backward of fwd+bwd (each a persistent launch where the persistent loop runs)."""
    return cfg.layers * (2 if cfg.bidirectional else 1) * (2 if bench_pass == "fwd+bwd" else 1)


def fused_ran(cfg: BenchConfig, bench_pass: str, fused_call) -> str:
    """What fusedrnn's module ran for this configuration on CUDA, seen by calling it once:
    torch.nn's cuDNN call (fusedrnn.dispatch chose it), or its fused persistent or per-step
    loops (the CUDA ops count their persistent launches)."""
    _, fused = make_pair(cfg.case(), getattr(torch, cfg.dtype), cfg.device)
    x = torch.empty(cfg.T, cfg.B, cfg.I, device=cfg.device, dtype=getattr(torch, cfg.dtype))
    if dispatch.cuda_path(fused, x, packed=False, needs_grad=bench_pass != "fwd") == "cudnn":
        return "cuDNN (dispatch)"
    before = dispatch.persistent_launches()
    fused_call()
    launches = dispatch.persistent_launches() - before
    loops = time_loops_per_call(cfg, bench_pass)
    if launches == 0:
        return "fused per-step"
    return "fused persistent" + ("" if launches == loops else f" ({launches} of {loops} loops)")


def cpu_ran(cfg: BenchConfig, passes) -> dict[str, str]:
    """pass -> what fusedrnn's module runs for this configuration on the CPU: its fused kernels,
    or torch.nn's own forward where fusedrnn.dispatch chooses it (bfloat16: cpu_runs_torch, for
    the cells cpu_cell_runs_torch)."""
    dtype = getattr(torch, cfg.dtype)
    _, fused = make_pair(cfg.case(), dtype, cfg.device)

    def torch_runs(bench_pass: str) -> bool:
        if cfg.cell_loop:
            return dispatch.cpu_cell_runs_torch(fused.cell, dtype)
        return dispatch.cpu_runs_torch(fused, dtype, cfg.B, needs_grad=bench_pass == "fwd+bwd")
    return {p: "torch.nn (dispatch)" if torch_runs(p) else "fused" for p in passes}


# Peers (other engines, fusedrnn.peers) are timed in blocks of their own between rounds of
# fused and torch.nn, each block after this long of its own calls: one engine at a time, as its
# users run it. Interleaved sample by sample, each engine's thread pool spinning after its calls
# on the cores the next one needs slowed fused and torch.nn 1.1-1.5x (torch.nn up to 30x in
# some samples) and set off fused's busy-machine fallbacks (one thread for a back-off window);
# a pause (sleep) before each sample let the cores and the pools go idle and slowed every
# engine's next sample instead (2 cores, LSTM T=300 B=1 H=32).
PEER_ROUNDS = 3
PEER_WARMUP_MS = 10.0

# A figure whose run-to-run spread (IQR / median, fused or torch.nn) exceeds this is flagged as
# unreliable: on an idle machine medians here spread 2-15%; a busy core makes it 50-1000%.
UNRELIABLE_SPREAD = 0.25


@dataclasses.dataclass
class Timing:
    fused_ms: float
    torch_ms: float
    fused_iqr: float  # interquartile range / median: the run-to-run spread
    torch_iqr: float
    reps: int
    # Other engines (fusedrnn.peers), timed in blocks between rounds of fused and torch.nn
    # (time_interleaved): name -> median ms, IQR / median.
    peer_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    peer_iqr: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.fused_ms

    @property
    def strongest(self) -> str:
        """The fastest engine but fusedrnn: "torch.nn" or a peer's name."""
        return min({"torch.nn": self.torch_ms, **self.peer_ms}.items(), key=lambda kv: kv[1])[0]

    @property
    def speedup_vs_strongest(self) -> float:
        return self.peer_ms.get(self.strongest, self.torch_ms) / self.fused_ms

    @property
    def reliable(self) -> bool:
        return max(self.fused_iqr, self.torch_iqr) <= UNRELIABLE_SPREAD


@dataclasses.dataclass
class BenchResult:
    config: BenchConfig
    verified: bool
    verify_detail: str
    timings: dict[str, Timing]  # pass -> Timing; empty when verification failed
    floors: dict[str, dict]  # pass -> fusedrnn.floors.floors_ms (CPU only)
    ran: dict[str, str] = dataclasses.field(default_factory=dict)  # pass -> fused_ran (CUDA)
    peers_left_out: dict[str, str] = dataclasses.field(default_factory=dict)  # peer -> why


def _median_and_iqr(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return q[1], (q[2] - q[0]) / q[1]


class _Timer:
    """Wall time of one call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, calls: int = 1) -> float:
        """ms per call, over `calls` calls in a row."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / calls
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) * 1e3 / calls


# A sample times enough calls in a row to last this long: a single 0.1 ms call timed alone
# spreads 40-80% from timer and scheduler jitter on an idle machine, which would hide a busy one.
MIN_SAMPLE_MS = 2.0


def _samples(fns, device: str, budget_s: float, min_reps: int = 5, max_reps: int = 500,
             warmup: int = 3, warmup_ms: float = 0.0) -> tuple[list[list[float]], int]:
    """The calls timed in turn (the order rotated every repetition: two alternate) until
    budget_s is spent, after `warmup` calls of each and then at least warmup_ms of calls; each
    sample the mean ms of enough calls in a row to last MIN_SAMPLE_MS. Returns (samples per
    call, repetitions)."""
    timer = _Timer(device)
    for _ in range(warmup):
        for fn in fns:
            timer(fn)
    warm_until = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < warm_until:
        for fn in fns:
            fn()
    calls = [max(1, math.ceil(MIN_SAMPLE_MS / max(timer(fn), 1e-3))) for fn in fns]
    samples = [[] for _ in fns]
    reps = 0
    start = time.perf_counter()
    while reps < min_reps or (time.perf_counter() - start < budget_s and reps < max_reps):
        for k in range(len(fns)):
            i = (k + reps) % len(fns)
            samples[i].append(timer(fns[i], calls[i]))
        reps += 1
    return samples, reps


def time_round_robin(fns, device: str, budget_s: float, **kwargs
                     ) -> tuple[list[tuple[float, float]], int]:
    """_samples summarised: ([(median ms, IQR / median) per call], repetitions)."""
    samples, reps = _samples(fns, device, budget_s, **kwargs)
    return [_median_and_iqr(s) for s in samples], reps


def time_interleaved(fused_fn, torch_fn, device: str, budget_s: float, peers=None,
                     **kwargs) -> Timing:
    """The fused call and torch.nn's, alternated (time_round_robin). With peers ({name: call}),
    PEER_ROUNDS rounds of [those two alternated, then each peer alone], each block after
    PEER_WARMUP_MS of its own calls, every engine's samples pooled over the rounds."""
    if not peers:
        [(f_med, f_iqr), (t_med, t_iqr)], reps = time_round_robin([fused_fn, torch_fn], device,
                                                                    budget_s, **kwargs)
        return Timing(f_med, t_med, f_iqr, t_iqr, reps)
    groups = [[fused_fn, torch_fn]] + [[call] for call in peers.values()]
    pooled = [[[] for _ in group] for group in groups]
    reps = 0
    for _ in range(PEER_ROUNDS):
        for g, group in enumerate(groups):
            samples, block_reps = _samples(group, device, budget_s / PEER_ROUNDS / len(groups),
                                           min_reps=2, warmup_ms=PEER_WARMUP_MS)
            for mine, new in zip(pooled[g], samples):
                mine += new
            reps += block_reps if g == 0 else 0
    (f_med, f_iqr), (t_med, t_iqr) = (_median_and_iqr(s) for s in pooled[0])
    figures = {name: _median_and_iqr(pooled[g][0]) for g, name in enumerate(peers, start=1)}
    return Timing(f_med, t_med, f_iqr, t_iqr, reps, {n: f[0] for n, f in figures.items()},
                  {n: f[1] for n, f in figures.items()})


def verify_config(cfg: BenchConfig, seed: int) -> tuple[bool, str]:
    try:
        checks = compare(cfg.case(), getattr(torch, cfg.dtype), cfg.device, seed)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    bad = [c for c in checks if not c.passed]
    if bad:
        return False, "; ".join(f"{c.name} error {c.fused_abs:.3g} > {c.bound:.3g}" for c in bad)
    w = worst(checks)
    return True, f"worst {w.name}: {w.fused_abs:.2e} <= {w.bound:.2e}"


def make_workloads(cfg: BenchConfig, seed: int = 0) -> dict[str, tuple]:
    """pass -> (fused call, torch.nn call): one forward (no grad) or forward+backward of the
    configuration, the two modules sharing weights and input. CUDA calls are not synchronized."""
    torch.manual_seed(seed)
    ref, fused = make_pair(cfg.case(), getattr(torch, cfg.dtype), cfg.device)
    x = torch.randn(cfg.T, cfg.B, cfg.I, device=cfg.device, dtype=getattr(torch, cfg.dtype))
    x_grad = x.clone().requires_grad_()

    def fwd(module):
        with torch.no_grad():
            module(x)

    # Backward is seeded with fixed random gradients for the output and every state, as a loss
    # would deliver them: the time is the layer's, without a loss's own reductions (torch ops
    # the same for both, which on a busy machine wake torch's thread pool between the calls).
    with torch.no_grad():
        out, hidden = ref(x)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    seeds = [torch.randn_like(t) for t in (out, *states)]

    def fwd_bwd(module):
        out, hidden = module(x_grad)
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        torch.autograd.backward([out, *hidden], seeds)

    return {"fwd": (lambda: fwd(fused), lambda: fwd(ref)),
            "fwd+bwd": (lambda: fwd_bwd(fused), lambda: fwd_bwd(ref))}


def make_stream_workloads(cfg: BenchConfig, seed: int = 0) -> dict[str, tuple]:
    """{"stream": (fused call, torch.nn call)}: each call runs the T steps of the configuration
    as a decoder or an online model does, one module call of one step at a time with the state
    carried, without grad: the per-call cost of a module (make_workloads' weights and input)."""
    torch.manual_seed(seed)
    ref, fused = make_pair(cfg.case(), getattr(torch, cfg.dtype), cfg.device)
    x = torch.randn(cfg.T, cfg.B, cfg.I, device=cfg.device, dtype=getattr(torch, cfg.dtype))
    steps = list(x.split(1))

    def stream(module):
        with torch.no_grad():
            state = None
            for step in steps:
                _, state = module(step, state)

    return {"stream": (lambda: stream(fused), lambda: stream(ref))}


def peer_calls(cfg: BenchConfig, names: list[str], seed: int = 0) -> tuple[dict, dict[str, str]]:
    """The peers' calls on the configuration's weights and input (as make_workloads makes them:
    same seed, same draws), and the peers left out with why (fusedrnn.peers.bench_calls)."""
    if not names:
        return {}, {}
    why = None
    if cfg.cell not in peers.ONNX_CELLS or cfg.cell_loop:
        why = "runs the layers of torch.nn's cells only (ONNX RNN/GRU/LSTM operators)"
    elif cfg.dtype not in ("float32", "bfloat16") or cfg.device != "cpu":
        why = "timed in float32 and bfloat16 on the CPU only"
    if why:
        return {}, {name: why for name in names}
    torch.manual_seed(seed)
    dtype = getattr(torch, cfg.dtype)
    ref, _ = make_pair(cfg.case(), dtype, "cpu")
    x = torch.randn(cfg.T, cfg.B, cfg.I, dtype=dtype)
    return peers.bench_calls(ref, x, names, cfg.stream, torch.get_num_threads())


def gemm_floors(cfg: BenchConfig) -> dict[str, dict]:
    """pass -> GEMM floors (fusedrnn.floors) of the configuration; CPU only."""
    if cfg.device != "cpu":
        return {}
    proj = CELLS[cfg.cell][1].get("proj_size", 0)
    return {bench_pass: floors.floors_ms(
                floors.config_gemms(cfg.cell, cfg.T, cfg.B, cfg.I, cfg.H, cfg.layers,
                                    cfg.bidirectional, bench_pass == "fwd+bwd", proj), cfg.dtype)
            for bench_pass in PASSES}


def run_config(cfg: BenchConfig, budget_s: float, seed: int = 0,
               peer_names: list[str] = ()) -> BenchResult:
    """The configuration verified, then timed against torch.nn and, for inference (fwd, or a
    stream), the given peers (fusedrnn.peers)."""
    verified, detail = verify_config(cfg, seed)
    if not verified:
        return BenchResult(cfg, False, detail, {}, {})
    workloads = (make_stream_workloads if cfg.stream else make_workloads)(cfg, seed)
    calls, peers_left_out = peer_calls(cfg, list(peer_names), seed)
    timings = {bench_pass: time_interleaved(fused_fn, torch_fn, cfg.device, budget_s,
                                            peers=calls if bench_pass != "fwd+bwd" else None)
               for bench_pass, (fused_fn, torch_fn) in workloads.items()}
    ran = cpu_ran(cfg, workloads) if cfg.device == "cpu" else \
        {bench_pass: fused_ran(cfg, bench_pass, fused_fn)
         for bench_pass, (fused_fn, _) in workloads.items()}
    floors_ms = {} if cfg.stream else gemm_floors(cfg)
    return BenchResult(cfg, True, detail, timings, floors_ms, ran, peers_left_out)


def build_configs(args) -> list[BenchConfig]:
    sizes, cells, layer_counts, directions = GRIDS[args.grid]
    # (bench's options; fusedrnn tune has neither)
    cell_loop, stream = getattr(args, "cell_loop", False), getattr(args, "streaming", False)
    if any(v is not None for v in (args.T, args.B, args.I, args.H)):
        T, B, I, H = (args.T or [MEDIUM_SIZE[0]], args.B or [MEDIUM_SIZE[1]],
                      args.I or [MEDIUM_SIZE[2]], args.H or [MEDIUM_SIZE[3]])
        sizes = [(t, b, i, h) for t in T for b in B for i in I for h in H]
    if args.cells:
        cells = report.parse_choices(args.cells, CELLS, "cell")
    if args.layers:
        layer_counts = args.layers
    if args.bidirectional:
        directions = [True]
    if cell_loop:
        if args.bidirectional or (args.layers and args.layers != [1]) or (
                args.cells and set(cells) - set(CELL_LOOP_CELLS)):
            raise SystemExit("--cell-loop times one unidirectional layer of "
                             + ", ".join(CELL_LOOP_CELLS))
        cells = [c for c in cells if c in CELL_LOOP_CELLS]
        layer_counts, directions = [1], [False]
    dtypes = report.parse_choices(args.dtype, available_dtypes(args.device), f"dtype on {args.device}")
    if stream and cell_loop:
        raise SystemExit("--streaming calls the layer modules; --cell-loop the cells")
    return [BenchConfig(cell, *size, layers=L, bidirectional=bi, dtype=dtype, device=args.device,
                        cell_loop=cell_loop, stream=stream)
            for dtype in dtypes for size in sizes for cell in cells
            for L in layer_counts for bi in directions]


def floor_percent(floor_ms: float, fused_ms: float, bound: bool) -> str:
    """A floor's time as a share of the fused call's. The FMA-peak floor is a hard lower bound
    (bound): over 100% only means it was measured too slow (the machine was busy while its FMA
    loop ran), and no percentage is shown. The per-shape sgemm floor includes torch.mm's call
    overhead, which the fused time loop does not pay per step, so it can exceed 100% at small
    sizes."""
    share = floor_ms / fused_ms
    return f"{share:.0%}" if share <= 1 or not bound else "n/a!"


def unreliable(results: list[BenchResult]) -> list[str]:
    """'config pass' of every timed figure flagged in the table (spread, or a floor over 100%)."""
    flagged = []
    for r in results:
        for bench_pass, t in r.timings.items():
            f = r.floors.get(bench_pass)
            if not t.reliable or (f and f["peak"] > t.fused_ms):
                flagged.append(f"{r.config.label()} {r.config.dtype} {bench_pass}")
    return flagged


def table_rows(results: list[BenchResult]) -> tuple[list[str], list[list[str]]]:
    on_cuda = any(r.config.device.startswith("cuda") for r in results)
    on_cpu = any(r.floors for r in results)
    peer_names = [n for n in peers.PEERS if any(n in r.peers_left_out or
                                          any(n in t.peer_ms for t in r.timings.values())
                                          for r in results)]
    columns = ["config", "dtype", "pass", "fused ms", "torch.nn ms", "speedup", "fused µs/step",
               "spread (IQR) fused / torch"]
    if peer_names:
        columns += [f"{peers.PEERS[n]} ms" for n in peer_names] + ["speedup vs strongest other"]
    if on_cpu:
        columns += ["GEMM floor ms (shape sgemm / peak)", "fused at % of floor (sgemm / peak)"]
    if on_cuda:
        columns += ["torch.nn cuDNN algo (expected)", "fusedrnn ran"]
    # On the CPU, which path ran only where some configuration ran torch.nn's (bfloat16).
    cpu_dispatch = any(r.config.device == "cpu" and ran == "torch.nn (dispatch)"
                       for r in results for ran in r.ran.values())
    if cpu_dispatch:
        columns += ["fusedrnn ran"]
    rows = []
    for r in results:
        cfg = r.config
        for bench_pass in passes_of(cfg):
            if not r.verified:
                row = [cfg.label(), cfg.dtype, bench_pass, "FAIL", "", "", "", "not timed"]
                row += [""] * (len(peer_names) + 1 if peer_names else 0)
            else:
                t = r.timings[bench_pass]
                flag = "" if t.reliable else " !"
                row = [cfg.label(), cfg.dtype, bench_pass, f"{t.fused_ms:.3f}", f"{t.torch_ms:.3f}",
                       f"{t.speedup:.2f}x{flag}", f"{t.fused_ms * 1e3 / cfg.T:.1f}",
                       f"{t.fused_iqr:.0%} / {t.torch_iqr:.0%}{flag}"]
                if peer_names:
                    row += [f"{t.peer_ms[n]:.3f}" if n in t.peer_ms else
                            ("" if bench_pass == "fwd+bwd" else "not timed")
                            for n in peer_names]
                    strongest = peers.PEERS.get(t.strongest, t.strongest)
                    row += [f"{t.speedup_vs_strongest:.2f}x ({strongest})" if t.peer_ms else ""]
            if on_cpu:
                f = r.floors.get(bench_pass)
                row += ["", ""] if not f or not r.verified else [
                    f"{f['sgemm']:.3f} / {f['peak']:.3f}",
                    f"{floor_percent(f['sgemm'], t.fused_ms, bound=False)} / "
                    f"{floor_percent(f['peak'], t.fused_ms, bound=True)}"]
            if on_cuda:
                row += [expected_cudnn_algo(cfg, bench_pass), r.ran.get(bench_pass, "")]
            if cpu_dispatch:
                row += [r.ran.get(bench_pass, "")]
            rows.append(row)
    return columns, rows


def to_json(results: list[BenchResult], args) -> dict:
    return {
        "environment": report.environment(args.device),
        "method": f"interleaved, warm-up 3, median over >= 5 repetitions within {args.budget}s "
                  f"per pass, each the mean of consecutive calls lasting >= {MIN_SAMPLE_MS} ms; "
                  "speedup = torch.nn ms / fused ms; backward seeded with fixed random "
                  "gradients of the output and states",
        "threads": torch.get_num_threads(),
        **({"peers": peers.versions(args.peers.split(","))} if args.peers else {}),
        "unreliable_spread": UNRELIABLE_SPREAD,
        "unreliable": unreliable(results),
        "results": [{
            "config": dataclasses.asdict(r.config), "verified": r.verified,
            "verify_detail": r.verify_detail,
            "timings": {p: dict(dataclasses.asdict(t), speedup=t.speedup, reliable=t.reliable,
                                **({"strongest": t.strongest,
                                    "speedup_vs_strongest": t.speedup_vs_strongest}
                                   if t.peer_ms else {}))
                        for p, t in r.timings.items()},
            **({"peers_left_out": r.peers_left_out} if r.peers_left_out else {}),
            **({"gemm_floors_ms": r.floors} if r.floors else {}),
            **({"cudnn_algo_expected": {p: expected_cudnn_algo(r.config, p) for p in PASSES},
                "fusedrnn_ran": r.ran}
               if r.config.device.startswith("cuda") else {}),
        } for r in results],
    }


def plot(results: list[BenchResult], path: str, title: str) -> None:
    """Bars of speedup per configuration and pass, labelled with their value, with error bars
    from the interquartile ranges (speedup x (fused IQR + torch.nn IQR) / 2 each way)."""
    plt = report.pyplot()
    timed = [r for r in results if r.verified]
    labels = [f"{r.config.label()} {r.config.dtype}" for r in timed]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(timed) + 2), 5.5))
    width = 0.4
    passes = passes_of(timed[0].config) if timed else PASSES
    for k, bench_pass in enumerate(passes):
        xs = [i + (k - (len(passes) - 1) / 2) * width for i in range(len(timed))]
        timings = [r.timings[bench_pass] for r in timed]
        speedups = [t.speedup for t in timings]
        errors = [s * (t.fused_iqr + t.torch_iqr) / 2 for s, t in zip(speedups, timings)]
        bars = ax.bar(xs, speedups, width, label=bench_pass,
                      yerr=[[min(e, 0.9 * s) for e, s in zip(errors, speedups)], errors],
                      capsize=2, error_kw={"linewidth": 0.8})
        ax.bar_label(bars, labels=[f"{s:.2f}{'' if t.reliable else '!'}"
                                   for s, t in zip(speedups, timings)],
                     fontsize=7, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")  # ratios span 0.5x..30x; equal factors get equal heights
    ax.set_xticks(range(len(timed)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup vs torch.nn (x); ! = spread over "
                  f"{UNRELIABLE_SPREAD:.0%}")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def add_grid_arguments(parser: argparse.ArgumentParser, grid: str, device: str,
                       dtype: str) -> None:
    """The configuration options build_configs reads (fusedrnn tune shares them)."""
    parser.add_argument("--grid", choices=list(GRIDS), default=grid,
                        help=f"quick (~30 s on 2 CPU cores), default (~3-5 min), full "
                             f"(default {grid})")
    parser.add_argument("--device", default=device)
    parser.add_argument("--dtype", default=dtype, help=f"comma-separated dtypes (default {dtype})")
    parser.add_argument("--cells", default=None, help=f"comma-separated, from {', '.join(CELLS)}")
    for dim in ("T", "B", "I", "H"):
        parser.add_argument(f"--{dim}", type=_int_list, default=None,
                            help=f"{dim} values, comma-separated (replaces the grid's sizes)")
    parser.add_argument("--layers", type=_int_list, default=None, help="e.g. 1,2")
    parser.add_argument("--bidirectional", action="store_true", help="bidirectional only")
    parser.add_argument("--seed", type=int, default=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_grid_arguments(parser, "quick", report.default_device(), "float32")
    parser.add_argument("--cell-loop", action="store_true",
                        help="time the cells (RNNCell/GRUCell/LSTMCell) called once per step over "
                             "the T steps, as a decoder does, instead of the layer modules")
    parser.add_argument("--streaming", action="store_true",
                        help="time T module calls of one step each, the state carried, without "
                             "grad (a decoder or an online model: the per-call cost); µs/step")
    parser.add_argument("--peers", default="", metavar="ort,openvino",
                        help="also time ONNX Runtime and/or OpenVINO on the inference passes "
                             "(fwd, stream): same weights and input, checked against fp64 first, "
                             "float32 on the CPU (pip install onnx onnxruntime openvino)")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds of timing per configuration and pass (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both (default: torch's, one per core); "
                             "1 keeps figures steady on a busy machine")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="PATH.png", help="bar chart of speedups (matplotlib)")


def main(args: argparse.Namespace) -> int:
    if args.plot:
        report.pyplot()  # fail before the benchmarks, not after
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    configs = build_configs(args)
    peer_names = report.parse_choices(args.peers, peers.PEERS, "peer") if args.peers else []
    args.peers = ",".join(peer_names)  # (as to_json reads it)
    absent = peers.missing(peer_names)
    if absent:
        raise SystemExit(f"--peers {args.peers} needs {', '.join(absent)}: "
                         f"pip install {' '.join(absent)}")
    title = report.banner("fusedrnn bench", args.device)
    print(title)
    print("speedup = torch.nn time / fused time (medians, interleaved, same process); every "
          "configuration verified against fp64 first\n")
    results = []
    for i, cfg in enumerate(report.progress(configs, desc="bench")):
        results.append(run_config(cfg, args.budget, args.seed + i, peer_names))
    columns, rows = table_rows(results)
    print(report.markdown_table(columns, rows))
    if peer_names:
        print(f"\npeers: {peers.versions(peer_names)}, {torch.get_num_threads()} threads each; "
              "speedup vs strongest other = the fastest of torch.nn and the peers / fused")
        for note in sorted({f"{peers.PEERS[n]}: {why}" for r in results
                            for n, why in r.peers_left_out.items()}):
            print(f"  not timed: {note}")
    if any(r.floors for r in results):
        dtype = args.dtype.split(",")[0]
        print(f"\nGEMM floors: every matrix product of the configuration at the rate torch.mm "
              f"reaches on that shape here (its call overhead included, which the fused loop does "
              f"not pay per step: fused can beat it at small sizes) / at the cores' FMA peak (a "
              f"hard bound) "
              f"({floors.peak_gflops(dtype):.0f} GFLOP/s for {dtype}, measured by "
              f"{floors.peak_source(dtype)}, {torch.get_num_threads()} threads); gate math not "
              f"included (fusedrnn/floors.py)")
    flagged = unreliable(results)
    if flagged:
        warning = (
            f"\nWARNING: {len(flagged)} of {2 * sum(r.verified for r in results)} figures are "
            f"unreliable (marked !: a spread over {UNRELIABLE_SPREAD:.0%}, or an FMA-peak floor "
            "measured slower than the fused call), so the machine was busy or noisy while timing: "
            + ", ".join(flagged[:6]) + (", ..." if len(flagged) > 6 else "") +
            ". Rerun on a quieter machine, with a larger --budget, or with --threads 1 (a busy "
            "core stalls every multi-threaded op).")
        print(warning)
        print(warning.strip(), file=sys.stderr)
    failed = [r for r in results if not r.verified]
    for r in failed:
        print(f"  FAIL {r.config.label()} {r.config.dtype}: {r.verify_detail}")
    if args.json:
        report.write_json(args.json, to_json(results, args))
    if args.plot:
        plot(results, args.plot, title)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="fusedrnn bench", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
