"""What the example programs share: picking the implementation, identical initialisation for
both, the command line, and optional plots."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fusedrnn
from fusedrnn import report

IMPLS = ("fused", "torch")


def recurrent_classes(impl: str):
    """The namespace that provides RNN/GRU/LSTM/RNNCell/...: fusedrnn or torch.nn."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return fusedrnn if impl == "fused" else torch.nn


def build_model(factory, impl: str, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    """factory(classes) -> model. The torch.nn model is always built first under `seed`; the fused
    one loads its state_dict, so both start from identical weights. The RNG is then re-seeded so
    that training draws the same numbers whichever implementation runs."""
    torch.manual_seed(seed)
    model = factory(torch.nn)
    if impl == "fused":
        fused = factory(fusedrnn)
        fused.load_state_dict(model.state_dict())
        model = fused
    torch.manual_seed(seed + 1)
    return model.to(dtype)


class StepClock:
    """Wall time of each training step (forward, backward, optimizer step): the figure the
    implementation changes."""

    def __init__(self):
        self.ms: list[float] = []
        self._start = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        self.ms.append((time.perf_counter() - self._start) * 1e3)


def step_time_line(impl: str, ms: list[float]) -> str:
    """'fused: 0.412 ms per training step (...)' from StepClock.ms."""
    steady = ms[1:] or ms  # the first step includes one-time setup
    return (f"{impl}: {statistics.median(steady):.3f} ms per training step (median of "
            f"{len(steady)}, {torch.get_num_threads()} threads; compare with --impl "
            f"{'torch' if impl == 'fused' else 'fused'})")


def parser(description: str, default_seed: int = 0) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--impl", choices=IMPLS, default="fused")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=default_seed)
    p.add_argument("--plot", metavar="PATH.png", help="save a plot (needs matplotlib)")
    return p


def save_plot(path: str, draw) -> None:
    """draw(plt) fills a figure; saved to path. Tells how to get matplotlib when it is missing."""
    plt = report.pyplot()
    draw(plt)
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close("all")
    print(f"wrote {path}")


def save_loss_plot(path: str, losses, xlabel: str, ylabel: str) -> None:
    def draw(plt):
        plt.semilogy(losses)
        plt.xlabel(xlabel)
        plt.ylabel(ylabel)
    save_plot(path, draw)
