"""On a CUDA GPU: the persistent loops (one launch a layer-direction, FUSEDRNN_CUDA_PERSISTENT=1)
against fusedrnn's per-step path and torch.nn (cuDNN), one process, interleaved, same weights;
outputs checked against torch.nn before timing. Prints a Markdown table, writes JSON.

    python bench/persistent_timing.py --json persistent.json [--budget 0.5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

import fusedrnn

os.environ["FUSEDRNN_CUDA_PATH"] = "fused"  # the fused kernels, not the dispatch's cuDNN choice

CONFIGS = [(cell, B, H) for cell in ("lstm", "gru", "rnn_tanh") for B in (1, 16)
           for H in (32, 64, 128, 256)]
T, I = 300, 32
MODULES = {"lstm": ("LSTM", {}), "gru": ("GRU", {}), "rnn_tanh": ("RNN", {"nonlinearity": "tanh"})}


def timed_ms(fn, budget: float) -> float:
    """Median over repetitions of one call's milliseconds (CUDA events), within `budget` s."""
    for _ in range(3):
        fn()
    times, spent = [], 0.0
    while spent < budget * 1000 or len(times) < 5:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        spent += times[-1]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per timing")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    rows = []
    for cell, B, H in CONFIGS:
        name, kwargs = MODULES[cell]
        torch.manual_seed(0)
        ref = getattr(torch.nn, name)(I, H, **kwargs).cuda()
        fused = getattr(fusedrnn, name)(I, H, **kwargs).cuda()
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I, device="cuda", requires_grad=True)
        grad = torch.randn(T, B, H, device="cuda")

        def run(module, backward):
            def call():
                out = module(x)[0]
                if backward:
                    torch.autograd.grad(out, [x, *module.parameters()], grad)
            return call

        row = {"cell": cell, "T": T, "B": B, "I": I, "H": H}
        for mode in ("per_step", "persistent"):
            os.environ["FUSEDRNN_CUDA_PERSISTENT"] = "1" if mode == "persistent" else "0"
            with torch.no_grad():
                err = (fused(x)[0] - ref(x)[0]).abs().max().item()
            row[f"{mode}_max_abs_err"] = err
        for backward, pass_name in ((False, "fwd"), (True, "fwd+bwd")):
            for mode in ("cudnn", "per_step", "persistent"):
                os.environ["FUSEDRNN_CUDA_PERSISTENT"] = "1" if mode == "persistent" else "0"
                module = ref if mode == "cudnn" else fused
                row[f"{pass_name} {mode} ms"] = timed_ms(run(module, backward), args.budget)
        os.environ.pop("FUSEDRNN_CUDA_PERSISTENT", None)
        rows.append(row)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}; T={T} I={I} float32, medians of CUDA-event times; "
          "ratio = cuDNN ms / persistent ms (> 1: persistent faster)\n")
    print("| cell | B | H | pass | cuDNN ms | per-step ms | persistent ms | vs cuDNN | vs per-step "
          "| max abs err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for p in ("fwd", "fwd+bwd"):
            c, s, q = r[f"{p} cudnn ms"], r[f"{p} per_step ms"], r[f"{p} persistent ms"]
            print(f"| {r['cell']} | {r['B']} | {r['H']} | {p} | {c:.3f} | {s:.3f} | {q:.3f} | "
                  f"{c / q:.2f}x | {s / q:.2f}x | {r['persistent_max_abs_err']:.1e} |")
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
