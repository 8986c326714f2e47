"""Measurement probes of the CPU backend, for benchmarks and tests (csrc/cpu/probes.cpp).

They read counters and rates of the process; none of them is part of a fused computation.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers torch.ops.fusedrnn_probes)

_probes = torch.ops.fusedrnn_probes


def fma_peak_gflops(seconds: float = 0.2) -> float:
    """The cores' multiply-add rate in the vector form the packed kernel uses (AVX-512, else
    AVX2+FMA), GFLOP/s over every intra-op thread: each runs 12 independent register-only FMA
    chains for about `seconds`, best of three. 0 where neither form runs."""
    return _probes.fma_peak_gflops(seconds)


def team_counts() -> tuple[int, int, int, int]:
    """Since the process started: time loops run on a thread team, teams dissolved mid-loop,
    loops that marked the machine busy, team loops whose workers split the batch rows instead of
    the hidden units (csrc/cpu/team.h)."""
    loops, dissolved, contended, split_rows = _probes.team_counts()
    return loops, dissolved, contended, split_rows


def machine_load() -> tuple[float, int, int, int]:
    """The machine's load as the ops read it (csrc/cpu/machine_load.h): cores' worth of CPU time
    other processes used in the last window, cores counted free, readings taken since the
    process started, and how many of them counted fewer cores free than the process may use."""
    others, free, readings, busy = _probes.machine_load()
    return others, int(free), int(readings), int(busy)
