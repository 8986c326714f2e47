"""How close a cell's fused results come to verify's bound (fusedrnn/verification.py) over the
equivalence grid's configurations (tests/test_equivalence.py: layers 1-3, uni/bidirectional,
batch_first, bias, batched / unbatched / packed sorted and unsorted, h0 given or not) at many
seeds: the number that fail and the largest fused error / bound. What the normalised cells'
rule factor was measured with.

    python bench/rule_margin.py --cell layer_norm_gru --seeds 24
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch

from fusedrnn.verification import CELLS, Case, compare

KINDS = ["batched", "unbatched", "packed_sorted", "packed_unsorted"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", required=True, choices=list(CELLS))
    parser.add_argument("--seeds", type=int, default=24, help="seeds 0 .. N-1 per configuration")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    grid = [p for p in itertools.product([1, 2, 3], [False, True], [False, True], [True, False],
                                         KINDS, [True, False])
            if not (p[4].startswith("packed") and p[2])]  # batch_first: no effect when packed
    start, failed, worst, where = time.time(), 0, 0.0, ""
    for seed in range(args.seeds):
        for layers, bidir, batch_first, bias, kind, with_h0 in grid:
            case = Case(args.cell, num_layers=layers, bidirectional=bidir,
                        batch_first=batch_first, bias=bias, input_kind=kind, with_h0=with_h0)
            checks = compare(case, dtype, "cpu", seed)
            failed += any(not c.passed for c in checks)
            for c in checks:
                ratio = c.fused_abs / c.bound if c.bound > 0 else 0.0
                if ratio > worst:
                    worst, where = ratio, f"seed {seed}, {case}, {c.name}"
    print(f"{args.cell} {args.dtype}: {len(grid) * args.seeds} configurations ({len(grid)} x "
          f"{args.seeds} seeds), {failed} fail; worst fused error / bound {worst:.3f} ({where}); "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
