"""Fused vs torch.nn side by side on one configuration: check outputs and gradients, then time
forward and forward+backward in one process, interleaved, and report the ratio."""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch
from torch import nn

from . import modules


@dataclasses.dataclass
class Config:
    cell: str  # RNN | GRU | LSTM
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    def __str__(self):
        d = "bi" if self.bidirectional else "uni"
        return (f"{self.cell:4s} T={self.T} B={self.B} I={self.I} H={self.H} L={self.layers} {d} "
                f"{str(self.dtype).replace('torch.', '')}")


@dataclasses.dataclass
class Result:
    config: Config
    max_output_err: float
    max_grad_err: float
    passed: bool
    fwd_ms: tuple[float, float]  # (fused, torch.nn)
    fwdbwd_ms: tuple[float, float]

    @property
    def fwd_speedup(self):
        return self.fwd_ms[1] / self.fwd_ms[0]

    @property
    def fwdbwd_speedup(self):
        return self.fwdbwd_ms[1] / self.fwdbwd_ms[0]


def make_pair(cfg: Config):
    kw = dict(num_layers=cfg.layers, bidirectional=cfg.bidirectional)
    ref = getattr(nn, cfg.cell)(cfg.I, cfg.H, **kw).to(cfg.device, cfg.dtype)
    fused = getattr(modules, cfg.cell)(cfg.I, cfg.H, **kw).to(cfg.device, cfg.dtype)
    fused.load_state_dict(ref.state_dict())
    return fused, ref


def _loss(module, x):
    out, hidden = module(x)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    return out.float().sum() + sum(h.float().sum() for h in hidden)


def check(cfg: Config, fused, ref) -> tuple[float, float, bool]:
    """Max |fused - torch.nn| over outputs and over gradients; pass by a dtype-scaled tolerance."""
    x = torch.randn(cfg.T, cfg.B, cfg.I, device=cfg.device, dtype=cfg.dtype, requires_grad=True)
    results = []
    for m in (fused, ref):
        out, _ = m(x)
        grads = torch.autograd.grad(_loss(m, x), [x] + list(m.parameters()))
        results.append((out.detach(), grads))
    out_err = (results[0][0] - results[1][0]).abs().max().item()
    grad_err = max(((a - b).abs().max() / b.abs().max().clamp_min(1)).item()
                   for a, b in zip(results[0][1], results[1][1]))
    tol = 1e-10 if cfg.dtype == torch.float64 else 1e-3
    return out_err, grad_err, out_err <= tol and grad_err <= tol


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(cfg: Config, fn_fused, fn_ref, min_reps=5, budget_s=2.0) -> tuple[float, float]:
    """Median ms of each, measured interleaved (fused, torch, fused, ...) after a warm-up."""
    for fn in (fn_fused, fn_ref, fn_fused, fn_ref):
        fn()
    _sync(cfg.device)
    times = ([], [])
    start = time.perf_counter()
    while len(times[0]) < min_reps or (time.perf_counter() - start < budget_s and len(times[0]) < 200):
        for k, fn in enumerate((fn_fused, fn_ref)):
            t0 = time.perf_counter()
            fn()
            _sync(cfg.device)
            times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def run(cfg: Config, budget_s: float = 2.0) -> Result:
    torch.manual_seed(0)
    fused, ref = make_pair(cfg)
    out_err, grad_err, passed = check(cfg, fused, ref)
    x = torch.randn(cfg.T, cfg.B, cfg.I, device=cfg.device, dtype=cfg.dtype)
    xg = x.clone().requires_grad_()

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwdbwd(m):
        _loss(m, xg).backward()

    fwd_ms = time_pair(cfg, lambda: fwd(fused), lambda: fwd(ref), budget_s=budget_s)
    fwdbwd_ms = time_pair(cfg, lambda: fwdbwd(fused), lambda: fwdbwd(ref), budget_s=budget_s)
    return Result(cfg, out_err, grad_err, passed, fwd_ms, fwdbwd_ms)
