"""`python -m fusedrnn verify`: fused vs torch.nn vs an fp64 reference over a matrix of
configurations, every output and gradient, PASS/FAIL by the rule in fusedrnn.verification."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys

import torch

from . import report
from .verification import (
    CELL_LOOP_CELLS, CELLS, Case, TensorCheck, available_dtypes, compare, worst)

# (num_layers, bidirectional, batch_first, input_kind, with_h0) of the --quick matrix, per cell
QUICK_LAYOUTS = [
    (1, False, False, "batched", True),
    (2, True, True, "packed_unsorted", False),
]


def build_matrix(cells: list[str], quick: bool, T: int, B: int, I: int, H: int) -> list[Case]:
    size = dict(T=T, B=B, I=I, H=H)
    if quick:
        layouts = QUICK_LAYOUTS
    else:
        layouts = [
            (layers, bidir, batch_first, kind, with_h0)
            for layers, bidir, kind in itertools.product(
                (1, 2), (False, True), ("batched", "packed_sorted", "packed_unsorted", "unbatched"))
            for batch_first in ((False,) if kind == "unbatched" else (False, True))
            for with_h0 in ((True, False) if kind == "batched" and layers == 1 else (True,))
        ]
    cases = [Case(cell, num_layers=L, bidirectional=bi, batch_first=bf, input_kind=kind,
                  with_h0=h0, **size)
             for cell in cells for (L, bi, bf, kind, h0) in layouts]
    if not quick:  # the cell modules, once per step over the sequence
        cases += [Case(cell, with_h0=h0, cell_loop=True, **size)
                  for cell in cells if cell in CELL_LOOP_CELLS for h0 in (True, False)]
    return cases


@dataclasses.dataclass
class CaseResult:
    case: Case
    dtype: str
    checks: list[TensorCheck]
    error: str | None = None  # an exception raised while running the case

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    def worst(self) -> TensorCheck | None:
        return worst(self.checks)


def run_case(case: Case, dtype: str, device: str, seed: int) -> CaseResult:
    try:
        return CaseResult(case, dtype, compare(case, getattr(torch, dtype), device, seed))
    except Exception as exc:  # reported as a FAIL row, the run goes on
        return CaseResult(case, dtype, [], f"{type(exc).__name__}: {exc}")


COLUMNS = ["case", "dtype", "worst tensor", "fused abs", "torch abs", "fused rel", "torch rel",
           "result"]


def table_row(r: CaseResult) -> list[str]:
    w = r.worst()
    if r.error is not None or w is None:
        return [str(r.case), r.dtype, r.error or "no tensors", "", "", "", "", "FAIL"]
    return [str(r.case), r.dtype, w.name, f"{w.fused_abs:.2e}", f"{w.torch_abs:.2e}",
            f"{w.fused_rel:.2e}", f"{w.torch_rel:.2e}", "PASS" if r.passed else "FAIL"]


def to_json(results: list[CaseResult], args) -> dict:
    return {
        "environment": report.environment(args.device),
        "rule": "fused_abs <= 2 * torch_abs + atol[dtype] * max(1, max|ref|); "
                "errors against torch.nn in float64 on the CPU",
        "seed": args.seed,
        "passed": all(r.passed for r in results),
        "cases": [{"case": dataclasses.asdict(r.case), "dtype": r.dtype, "passed": r.passed,
                   "error": r.error, "tensors": [dataclasses.asdict(c) for c in r.checks]}
                  for r in results],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short matrix (2 layouts per cell)")
    parser.add_argument("--device", default=report.default_device())
    parser.add_argument("--dtype", default=None,
                        help="comma-separated dtypes (default: all this device supports)")
    parser.add_argument("--cells", default=",".join(CELLS),
                        help=f"comma-separated, from {', '.join(CELLS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--T", type=int, default=12, help="sequence length (default 12)")
    parser.add_argument("--B", type=int, default=5, help="batch (default 5)")
    parser.add_argument("--I", type=int, default=8, help="input size (default 8)")
    parser.add_argument("--H", type=int, default=16, help="hidden size (default 16)")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")


def main(args: argparse.Namespace) -> int:
    cells = report.parse_choices(args.cells, CELLS, "cell")
    dtypes = report.parse_choices(args.dtype or ",".join(available_dtypes(args.device)),
                                  available_dtypes(args.device), f"dtype on {args.device}")
    matrix = [(case, dtype) for case in build_matrix(cells, args.quick, args.T, args.B, args.I,
                                                     args.H)
              for dtype in dtypes]
    print(report.banner("fusedrnn verify", args.device))
    if args.device.startswith("cuda"):
        # What is checked is fusedrnn's kernels: where the dispatch (fusedrnn/dispatch.py) would
        # run torch.nn's cuDNN call, fused and torch.nn would be one and the same.
        path = os.environ.setdefault("FUSEDRNN_CUDA_PATH", "fused")
        print(f"CUDA path: FUSEDRNN_CUDA_PATH={path} ("
              + ("the fused kernels in every configuration" if path == "fused" else
                 "as the dispatch chooses: where it picks cuDNN, fused IS torch.nn") + ")\n")
    print("error = max |x - fp64 reference| per tensor (rel: / max|reference|); the worst tensor "
          "of each case is shown.\nPASS when every output and gradient has fused error <= "
          "2 x torch.nn error + atol[dtype] x max(1, max|ref|).\n")
    results = []
    for i, (case, dtype) in enumerate(report.progress(matrix, desc="verify")):
        results.append(run_case(case, dtype, args.device, args.seed + i))
    print(report.markdown_table(COLUMNS, [table_row(r) for r in results]))
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)}/{len(results)} passed"
          + ("" if not failed else f", {len(failed)} FAILED"))
    for r in failed:
        bad = [c for c in r.checks if not c.passed]
        detail = r.error or "; ".join(f"{c.name} {c.fused_abs:.3g} > {c.bound:.3g}" for c in bad)
        print(f"  FAIL {r.case} {r.dtype}: {detail}")
    if args.json:
        report.write_json(args.json, to_json(results, args))
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="fusedrnn verify", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
