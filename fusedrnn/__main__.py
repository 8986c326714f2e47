"""`python -m fusedrnn`: fused vs torch.nn side by side on the current device, for RNN, GRU and
LSTM: checks outputs and gradients, then prints forward and forward+backward speed ratios.

Exit status 1 if any configuration fails its check.
"""
import argparse
import datetime
import platform
import sys

import torch

from .sidebyside import Config, run

# (T, B, I, H): the seeds' size and a medium one
DEFAULT_SIZES = [(300, 1, 1, 32), (100, 32, 64, 256)]


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fusedrnn", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--cells", default="RNN,GRU,LSTM")
    parser.add_argument("--budget", type=float, default=2.0,
                        help="seconds of timing per configuration and pass (default 2)")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    print(f"fusedrnn side by side | {datetime.date.today()} | torch {torch.__version__} | "
          f"device {args.device}: {_device_name(args.device)} | {args.dtype}")
    print("speedup = torch.nn time / fused time (median, interleaved); >1 means fused is faster\n")
    header = (f"{'configuration':44s} {'check':5s} {'fwd fused':>10s} {'fwd torch':>10s} {'speedup':>8s}"
              f" {'f+b fused':>10s} {'f+b torch':>10s} {'speedup':>8s}")
    print(header)
    print("-" * len(header))
    failed = False
    for T, B, I, H in DEFAULT_SIZES:
        for cell in args.cells.split(","):
            cfg = Config(cell, T, B, I, H, dtype=dtype, device=args.device)
            r = run(cfg, budget_s=args.budget)
            failed |= not r.passed
            print(f"{str(cfg):44s} {'ok' if r.passed else 'FAIL':5s} {r.fwd_ms[0]:8.2f}ms {r.fwd_ms[1]:8.2f}ms"
                  f" {r.fwd_speedup:7.2f}x {r.fwdbwd_ms[0]:8.2f}ms {r.fwdbwd_ms[1]:8.2f}ms"
                  f" {r.fwdbwd_speedup:7.2f}x", flush=True)
            if not r.passed:
                print(f"  max |out diff| {r.max_output_err:.3g}, max rel grad diff {r.max_grad_err:.3g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
