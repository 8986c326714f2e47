"""pytest-benchmark pairs: fused and torch.nn per configuration, grouped by configuration.

    pytest bench/ --benchmark-only                       # the quick grid, CPU (+ CUDA if present)
    FUSEDRNN_BENCH_GRID=default pytest bench/ --benchmark-only

The configurations are fusedrnn.bench's grids (the same as `python -m fusedrnn bench`). Each is
verified against the fp64 reference before either implementation is timed. The test command
(`pytest tests`) never collects this folder.
"""
import functools
import os

import pytest
import torch

from fusedrnn.bench import GRIDS, BenchConfig, make_workloads, verify_config

GRID = os.environ.get("FUSEDRNN_BENCH_GRID", "quick")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_sizes, _cells, _layer_counts, _directions = GRIDS[GRID]
CONFIGS = [BenchConfig(cell, *size, layers=L, bidirectional=bi, device=device)
           for device in DEVICES for size in _sizes for cell in _cells
           for L in _layer_counts for bi in _directions]


@functools.lru_cache(maxsize=None)
def _verified(cfg_key):
    return verify_config(BenchConfig(*cfg_key), seed=0)


def _synchronized(fn, device):
    if not device.startswith("cuda"):
        return fn

    def call():
        fn()
        torch.cuda.synchronize()
    return call


@pytest.mark.parametrize("bench_pass", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["fused", "torch.nn"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.device}-{c.label().replace(' ', '-')}")
def test_recurrent(benchmark, cfg, impl, bench_pass):
    benchmark.group = f"{cfg.device} {cfg.label()} {cfg.dtype} {bench_pass}"
    ok, detail = _verified(tuple(vars(cfg).values()))
    assert ok, f"verification failed, not timed: {detail}"
    fused_fn, torch_fn = make_workloads(cfg)[bench_pass]
    fn = _synchronized(fused_fn if impl == "fused" else torch_fn, cfg.device)
    fn()  # warm-up outside the measurement
    benchmark(fn)
