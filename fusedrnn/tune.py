"""`python -m fusedrnn tune`: which way each configuration runs fastest on the GPU present.

The candidates are torch.nn's own call (cuDNN), the fused per-step loop and the fused persistent
loop (fusedrnn.dispatch). Each fused candidate is first verified as bench verifies (outputs and
every gradient against an fp64 reference); one that fails is reported and never wins, and a
persistent candidate whose loops did not all run persistently (W_hh too large for the blocks'
shared memory, or a grid the device refused) is left out. The rest are timed round-robin after
a warm-up, with CUDA events, forward (inference) and forward+backward (training) apart; the
fastest median wins. The winners are stored per GPU model in the cache file fusedrnn.dispatch
reads (FUSEDRNN_TUNE_CACHE, default ~/.cache/fusedrnn/cuda_paths.json), replacing earlier
entries of the same configuration; from then on a module call of a configuration within a factor
of 2 in T, B and H of a measured one takes its winner.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from . import bench, dispatch, report
from .verification import spec_of

FUSED_PATHS = ("per_step", "persistent")
TRAINING = {"fwd": False, "fwd+bwd": True}


@dataclasses.dataclass
class Measurement:
    """One configuration and pass: each candidate's median ms, or why it was left out."""
    config: bench.BenchConfig
    bench_pass: str
    ms: dict[str, float]  # candidate path -> median ms
    spread: dict[str, float]  # candidate path -> IQR / median
    left_out: dict[str, str]  # candidate path -> reason

    @property
    def winner(self) -> str | None:
        return min(self.ms, key=self.ms.get) if self.ms else None

    def entry(self) -> dict:
        """The cache file's entry (fusedrnn.dispatch.CallKey's fields, the figures, the winner)."""
        c = self.config
        return {"cell": c.cell, "dtype": c.dtype, "training": TRAINING[self.bench_pass],
                "bidirectional": c.bidirectional, "layers": c.layers,
                "T": c.T, "B": c.B, "I": c.I, "H": c.H,
                "ms": self.ms, "spread": self.spread, "left_out": self.left_out,
                "winner": self.winner}


def _all_persistent(cfg: bench.BenchConfig, bench_pass: str, call) -> bool:
    """Whether one call ran every layer and direction (and its backward) persistently."""
    before = dispatch.persistent_launches()
    call()
    return dispatch.persistent_launches() - before == bench.time_loops_per_call(cfg, bench_pass)


def measure(cfg: bench.BenchConfig, budget_s: float, seed: int = 0,
            fused_paths: tuple[str, ...] = FUSED_PATHS) -> list[Measurement]:
    """Both passes of one configuration: every candidate verified, then timed round-robin."""
    left_out: dict[str, str] = {}
    for path in fused_paths:
        with dispatch.forcing(path):
            verified, detail = bench.verify_config(cfg, seed)
        if not verified:
            left_out[path] = f"FAIL {detail}"
    workloads = bench.make_workloads(cfg, seed)
    results = []
    for bench_pass, (fused_call, torch_call) in workloads.items():
        skipped = dict(left_out)
        calls = {"cudnn": torch_call} if spec_of(cfg.cell).in_torch_nn else {}
        for path in fused_paths:
            if path in skipped:
                continue

            def forced(path=path):
                with dispatch.forcing(path):
                    fused_call()
            if path == "persistent" and not _all_persistent(cfg, bench_pass, forced):
                skipped[path] = "not persistent (does not fit, or the grid was refused)"
                continue
            calls[path] = forced
        figures, _ = bench.time_round_robin(list(calls.values()), cfg.device, budget_s)
        results.append(Measurement(cfg, bench_pass,
                                   {p: f[0] for p, f in zip(calls, figures)},
                                   {p: f[1] for p, f in zip(calls, figures)}, skipped))
    return results


def _same_configuration(a: dict, b: dict) -> bool:
    fields = ("cell", "dtype", "training", "bidirectional", "layers", "T", "B", "I", "H")
    return all(a[f] == b[f] for f in fields)


def store(path: Path, gpu: str, measurements: list[Measurement], environment: dict) -> int:
    """Merges the winners into the cache file (atomically: written beside it, then renamed);
    returns how many entries the GPU has now."""
    cache = dispatch.read_cache(path)
    table = cache["gpus"].setdefault(gpu, {"entries": []})
    new = [m.entry() for m in measurements if m.winner is not None]
    table["entries"] = [e for e in table["entries"]
                        if not any(_same_configuration(e, n) for n in new)] + new
    table["environment"] = environment
    table["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(cache, f, indent=1)
    os.replace(f.name, path)
    dispatch.reload()
    return len(table["entries"])


def table_rows(measurements: list[Measurement]) -> tuple[list[str], list[list[str]]]:
    columns = ["config", "dtype", "pass", "cuDNN ms", "per-step ms", "persistent ms", "winner",
               "left out"]
    rows = []
    for m in measurements:
        figure = lambda p: f"{m.ms[p]:.3f}" if p in m.ms else ""  # noqa: E731
        rows.append([m.config.label(), m.config.dtype, m.bench_pass, figure("cudnn"),
                     figure("per_step"), figure("persistent"), m.winner or "none",
                     "; ".join(f"{p}: {why}" for p, why in m.left_out.items())])
    return columns, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bench.add_grid_arguments(parser, "default", "cuda", "float32,bfloat16")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="seconds of timing per configuration and pass (default 0.5)")


def main(args: argparse.Namespace) -> int:
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        print(f"fusedrnn tune: needs a CUDA device (got --device {args.device}; CUDA available: "
              f"{torch.cuda.is_available()}). On the CPU there is one fused path and nothing to "
              "choose.", file=sys.stderr)
        return 2
    configs = bench.build_configs(args)
    gpu = torch.cuda.get_device_name(torch.device(args.device))
    cache = dispatch.cache_path()
    print(report.banner("fusedrnn tune", args.device))
    measurements: list[Measurement] = []
    for i, cfg in enumerate(report.progress(configs, desc="tune")):
        measurements += measure(cfg, args.budget, args.seed + i)
    print(report.markdown_table(*table_rows(measurements)))
    count = store(cache, gpu, measurements, report.environment(args.device))
    print(f"\n{cache}: {count} measured configurations for {gpu}")
    failed = [m for m in measurements if any(w.startswith("FAIL") for w in m.left_out.values())]
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="fusedrnn tune", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
