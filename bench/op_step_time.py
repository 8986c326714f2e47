"""Per-step time of the fused CPU time-loop ops alone (no module, no input projection, no autograd).

    python bench/op_step_time.py --T 300 --B 8 --H 64 --threads 1

Prints µs per step and GFLOP/s of the recurrent product for RNN, GRU and LSTM forward (inference,
no workspace), next to torch.mm on the same per-step product shape. The op-level view is steadier
than the module benchmark on a noisy machine, so kernel changes are compared with it (run the two
builds or settings alternately, e.g. with and without FUSEDRNN_DISABLE_AVX512=1).
"""
import argparse
import time

import torch

import fusedrnn  # noqa: F401  (registers torch.ops.fusedrnn)
from fusedrnn.cells import CELLS


def median_seconds(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--H", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T, B, H = args.T, args.B, args.H
    ops = torch.ops.fusedrnn
    h0 = torch.randn(B, H)
    for cell in ("rnn_tanh", "gru", "lstm"):
        gates = CELLS[cell].gates
        xproj = torch.randn(T, B, gates * H)       # (T, B, G*H)
        w_hh = torch.randn(gates * H, H) / H**0.5  # (G*H, H)
        c0 = h0 if CELLS[cell].has_cell_state else None

        def run():
            return ops.time_loop_forward(cell, xproj, h0, c0, w_hh, None, None, None, False, False)
        step_s = median_seconds(run, args.reps) / T
        flops = 2 * B * gates * H * H
        mm_s = median_seconds(lambda: torch.mm(h0, w_hh.t()), 10 * args.reps)
        print(f"{cell:8s} T={T} B={B} H={H} threads={args.threads}: {step_s * 1e6:8.2f} us/step "
              f"({flops / step_s / 1e9:6.1f} GFLOP/s); torch.mm per step {mm_s * 1e6:7.2f} us")


if __name__ == "__main__":
    main()
