"""Time of one gradient-penalty training step (double backward: create_graph=True, then the
penalty's backward), fused vs torch.nn, interleaved in one process.

    python bench/double_backward.py [--T 100 --B 32 --I 64 --H 256 --reps 6]
"""
import argparse
import statistics
import time

import torch
from torch import nn

import fusedrnn
from fusedrnn import report


def penalty_step(module, x):
    x = x.clone().requires_grad_()
    params = list(module.parameters())
    grads = torch.autograd.grad(module(x)[0].square().sum(), [x, *params], create_graph=True)
    sum(g.square().sum() for g in grads).backward()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for dim, default in (("T", 100), ("B", 32), ("I", 64), ("H", 256)):
        p.add_argument(f"--{dim}", type=int, default=default)
    p.add_argument("--reps", type=int, default=6)
    args = p.parse_args()
    print(report.banner("fusedrnn double-backward step", "cpu"))
    for name in ("RNN", "GRU", "LSTM"):
        torch.manual_seed(0)
        ref = getattr(nn, name)(args.I, args.H)
        fused = getattr(fusedrnn, name)(args.I, args.H)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(args.T, args.B, args.I)
        times = {"fused": [], "torch.nn": []}
        pair = [("fused", fused), ("torch.nn", ref)]
        for label, module in pair:
            penalty_step(module, x)  # warm-up
        for rep in range(args.reps):
            for label, module in pair if rep % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                penalty_step(module, x)
                times[label].append((time.perf_counter() - start) * 1e3)
        f, t = statistics.median(times["fused"]), statistics.median(times["torch.nn"])
        print(f"{name} T={args.T} B={args.B} I={args.I} H={args.H}: fused {f:.1f} ms, "
              f"torch.nn {t:.1f} ms, speedup {t / f:.2f}x (medians of {args.reps})")


if __name__ == "__main__":
    main()
