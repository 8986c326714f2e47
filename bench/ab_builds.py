"""Before/after speed of two builds of fusedrnn on one machine: the same bench grid run in
alternating processes (A, B, B, A, A, B, ...: each build first in every other repetition, so a
steady drift of the machine does not favour one), compared per configuration.

Two builds cannot share a process (both register torch.ops.fusedrnn), so each repetition runs
`python -m fusedrnn bench` once per build, back to back, and the comparison is of each build's
speedup over torch.nn measured in its own process (torch.nn is the yardstick that absorbs the
machine's drift between processes). Per configuration and pass: the median over repetitions of
B's speedup / A's speedup (> 1: B faster), and the range; "slower" means the median is under
1 - --tolerance and so is the best repetition.

    git worktree add /tmp/before <rev> && (cd /tmp/before && python setup.py build_ext --inplace)
    python bench/ab_builds.py --a /tmp/before --b . --reps 3 --json ab.json
    python bench/ab_builds.py --a /tmp/before --b . --cells rnn_relu --T 100 --B 64 --I 512 \
        --H 512   # other arguments go to fusedrnn bench
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run_bench(root: str, bench_args: list[str], json_path: str) -> dict:
    """One `python -m fusedrnn bench` of the build at `root`; its JSON."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    subprocess.run([sys.executable, "-m", "fusedrnn", "bench", *bench_args, "--json", json_path],
                   check=True, env=env, cwd=os.path.abspath(root), stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        return json.load(f)


def timings(report: dict, field: str) -> dict[tuple[str, str], float]:
    """(configuration label, pass) -> a timing field ("speedup", "fused_ms")."""
    out = {}
    for result in report["results"]:
        c = result["config"]
        label = (f"{c['cell']} T={c['T']} B={c['B']} I={c['I']} H={c['H']} L={c['layers']}"
                 f"{' bi' if c['bidirectional'] else ''} {c['dtype']}")
        for pass_name, t in result["timings"].items():
            out[label, pass_name] = t[field]
    return out


def compare(runs_a: list[dict], runs_b: list[dict], tolerance: float) -> list[dict]:
    """Per (configuration, pass): B/A speedup ratios of paired repetitions, summarised, and A/B
    fused-time ratios beside them (> 1: B faster; free of the baseline's own drift, which for
    the cells torch.nn lacks is a Python loop's)."""
    a_all, b_all = [timings(r, "speedup") for r in runs_a], [timings(r, "speedup") for r in runs_b]
    a_ms, b_ms = [timings(r, "fused_ms") for r in runs_a], [timings(r, "fused_ms") for r in runs_b]
    rows = []
    for key in a_all[0]:
        ratios = [b[key] / a[key] for a, b in zip(a_all, b_all)]
        fused = [a[key] / b[key] for a, b in zip(a_ms, b_ms)]
        median = statistics.median(ratios)
        rows.append({"config": key[0], "pass": key[1], "ratios": ratios, "median": median,
                     "fused_ratios": fused, "fused_median": statistics.median(fused),
                     "slower": median < 1 - tolerance and max(ratios) < 1 - tolerance})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="checkout of build A (before), built in place")
    parser.add_argument("--b", required=True, help="checkout of build B (after), built in place")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions")
    parser.add_argument("--grid", default="default")
    parser.add_argument("--budget", default="0.3", help="seconds per timing (fusedrnn bench)")
    parser.add_argument("--threads", default=None, help="fusedrnn bench --threads")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="a slowdown within this is noise (default 5%%)")
    parser.add_argument("--json", metavar="PATH", help="every ratio and both builds' reports")
    args, more = parser.parse_known_args()  # anything else goes to fusedrnn bench (--cells ...)
    bench_args = ["--grid", args.grid, "--budget", args.budget, *more]
    if args.threads:
        bench_args += ["--threads", args.threads]
    runs = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for side in ("a", "b") if rep % 2 == 0 else ("b", "a"):
                path = os.path.join(tmp, f"{side}{rep}.json")
                runs[side].append(run_bench(getattr(args, side), bench_args, path))
                print(f"repetition {rep + 1}/{args.reps}: build {side.upper()} done", flush=True)
    rows = compare(runs["a"], runs["b"], args.tolerance)
    env = runs["b"][0]["environment"]
    print(f"\nA = {args.a}, B = {args.b}; {args.reps} alternating repetitions of "
          f"`fusedrnn bench {' '.join(bench_args)}`; {env.get('device_name', '')} "
          f"torch {env.get('torch', '')}")
    print("ratio = B's speedup over torch.nn / A's (> 1: B faster), median [min, max]; fused = A's "
          "fused ms / B's, likewise\n")
    print(f"| {'config':44s} | pass    | ratio  | range         | fused  | range         |")
    print(f"|{'-' * 46}|---------|--------|---------------|--------|---------------|")
    for r in rows:
        flag = "  SLOWER" if r["slower"] else ""
        print(f"| {r['config']:44s} | {r['pass']:7s} | {r['median']:.3f}  | "
              f"{min(r['ratios']):.3f}-{max(r['ratios']):.3f} | {r['fused_median']:.3f}  | "
              f"{min(r['fused_ratios']):.3f}-{max(r['fused_ratios']):.3f} |{flag}")
    slower = [r for r in rows if r["slower"]]
    print(f"\n{len(slower)} of {len(rows)} slower than A by more than {args.tolerance:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": args.a, "b": args.b, "bench_args": bench_args, "rows": rows,
                       "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
