"""GEMM floors of a benchmark configuration: the least time its matrix products can take here.

A recurrent layer's arithmetic is its GEMMs: the input projection (T*B, I)·(I, G*H) once, the
recurrent product (B, P)·(P, G*H) every step (plus (B, H)·(H, P) with proj_size), and in backward
the transposed products and the weight gradients. Two floors per configuration and pass:

- sgemm floor: each product's multiply-adds at the rate torch.mm reaches on that exact shape on
  this machine (measured here, best of several runs). A fused kernel that reaches it does its
  arithmetic as fast as the best BLAS call for each product, and everything else for free.
- peak floor: all multiply-adds at the cores' FMA peak with the current thread count: for float32,
  a register-only FMA loop on every thread in the fused kernel's vector form
  (fusedrnn.probes.fma_peak_gflops); for float64, or where that loop cannot run, the best rate
  torch.mm reaches on a large square product. (On AMD Zen 4 MKL reaches ~80% of the FMA peak
  while the fused kernel's AVX-512 form reaches ~100%, so torch.mm's rate is no ceiling there.)

Gate math, dispatch and the time loop's synchronisation are not in either floor.
"""
from __future__ import annotations

import functools
import time

import torch

from . import probes
from .verification import spec_of

PEAK_SHAPE = (2048, 2048, 2048)


@functools.lru_cache(maxsize=None)
def sgemm_rate(m: int, k: int, n: int, dtype: str = "float32", min_time_s: float = 0.2) -> float:
    """Best multiply-adds per second of torch.mm on (m, k)·(k, n) on the CPU."""
    a = torch.randn(m, k, dtype=getattr(torch, dtype))
    b = torch.randn(k, n, dtype=getattr(torch, dtype))
    out = torch.empty(m, n, dtype=a.dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return m * k * n / best


def layer_gemms(T: int, B: int, I: int, H: int, gates: int, P: int, proj: bool,
                backward: bool, dense: bool = True) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every matrix product of one layer and direction (`dense`: W_hh is a
    matrix; a diagonal recurrence has no recurrent product)."""
    gemms = [(T * B, I, gates * H, 1)]
    if dense:
        gemms.append((B, P, gates * H, T))
    if proj:
        gemms.append((B, H, P, T))
    if backward:
        gemms += [(T * B, gates * H, I, 1),      # d x
                  (gates * H, T * B, I, 1)]      # d W_ih
        if dense:
            gemms += [(B, gates * H, P, T),      # d h_{t-1} every step
                      (gates * H, T * B, P, 1)]  # d W_hh
        if proj:
            gemms += [(B, P, H, T), (P, T * B, H, 1)]  # d(o*tanh c) every step, d W_hr
    return gemms


def config_gemms(cell: str, T: int, B: int, I: int, H: int, layers: int, bidirectional: bool,
                 backward: bool, proj_size: int = 0) -> list[tuple[int, int, int, int]]:
    spec = spec_of(cell)
    P = proj_size or H
    directions = 2 if bidirectional else 1
    gemms = []
    for layer in range(layers):
        layer_input = I if layer == 0 else directions * P
        gemms += layer_gemms(T, B, layer_input, H, spec.gates, P, proj_size > 0, backward,
                             not spec.diagonal) * directions
    return gemms


def floors_ms(gemms: list[tuple[int, int, int, int]], dtype: str = "float32") -> dict[str, float]:
    """{'sgemm': ms at each shape's measured rate, 'peak': ms at the FMA peak}."""
    macs = sum(m * k * n * count for m, k, n, count in gemms)
    at_shape_rate = sum(m * k * n * count / sgemm_rate(m, k, n, dtype)
                        for m, k, n, count in gemms)
    return {"sgemm": at_shape_rate * 1e3, "peak": macs / (peak_gflops(dtype) * 1e9 / 2) * 1e3,
            "macs": macs}


@functools.lru_cache(maxsize=None)
def _fma_loop_gflops(threads: int) -> float:
    """The fused kernel's FMA loop on every thread (0 where it cannot run); cached per thread count."""
    return probes.fma_peak_gflops(0.2)


def peak_gflops(dtype: str = "float32") -> float:
    """The cores' FMA peak measured here, in GFLOP/s (2 flops per multiply-add): see the module
    docstring for how, per dtype."""
    fma = _fma_loop_gflops(torch.get_num_threads()) if dtype == "float32" else 0.0
    return fma or 2 * sgemm_rate(*PEAK_SHAPE, dtype) / 1e9


def peak_source(dtype: str = "float32") -> str:
    """How peak_gflops measured the peak for this dtype."""
    if dtype == "float32" and _fma_loop_gflops(torch.get_num_threads()):
        return "FMA loop on every thread"
    return "torch.mm on a large square"
