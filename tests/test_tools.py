"""`python -m fusedrnn verify|bench`: exit status, tables, JSON, FAIL handling, plots."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fusedrnn import __main__ as cli
from fusedrnn import bench, probes, verify
from fusedrnn.verification import TensorCheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--T", "5", "--B", "2", "--I", "3", "--H", "4"]


def test_verify_quick_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "verify.json"
    assert cli.main(["verify", "--quick", "--cells", "gru,lstm_proj", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| gru L=1 uni batched" in out and "12/12 passed" in out
    data = json.loads(path.read_text())
    assert data["passed"] and len(data["cases"]) == 12  # 2 cells x 2 layouts x 3 dtypes
    names = {t["name"] for t in data["cases"][0]["tensors"]}
    assert {"output", "h_n", "grad input", "grad h0", "grad weight_hh_l0"} <= names


def test_verify_reports_fail_with_exit_status_1(monkeypatch, capsys):
    def broken_compare(case, dtype, device, seed):
        return [TensorCheck("grad weight_hh_l0", 1.0, 1e-7, 1.0, 1e-7, 2e-7, False)]
    monkeypatch.setattr(verify, "compare", broken_compare)
    assert cli.main(["verify", "--quick", "--cells", "rnn_tanh", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "grad weight_hh_l0 1 > 2e-07" in out


def test_verify_rejects_unknown_cell():
    with pytest.raises(SystemExit, match="unknown cell: lstmm"):
        cli.main(["verify", "--cells", "lstmm"])


def test_bench_times_verified_configs(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["bench", *TINY, "--cells", "rnn_relu,lstm", "--budget", "0.05", "--json", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| lstm")]
    assert [r[:3] for r in rows] == [["lstm T=5 B=2 I=3 H=4 L=1 uni", "float32", p]
                                     for p in ("fwd", "fwd+bwd")]
    data = json.loads(path.read_text())
    assert [r["config"]["cell"] for r in data["results"]] == ["rnn_relu", "lstm"]
    for r in data["results"]:
        assert r["verified"]
        for t in r["timings"].values():
            assert t["fused_ms"] > 0 and t["torch_ms"] > 0 and t["reps"] >= 5
            assert t["speedup"] == pytest.approx(t["torch_ms"] / t["fused_ms"])


def test_fma_peak_sets_the_peak_floor():
    """The peak floor is the configuration's multiply-adds at the measured FMA rate. (Whether
    that rate bounds torch.mm is a timing question for the benchmark, not a test: on the shared
    machine one measurement of the FMA loop came out at half of torch.mm's rate.)"""
    from fusedrnn import floors
    if not probes.fma_peak_gflops(0.01):
        pytest.skip("the packed kernel (AVX2+FMA) does not run on this CPU")
    peak = floors.peak_gflops("float32")
    assert floors.peak_source("float32") == "FMA loop on every thread"
    assert 0 < peak < float("inf")
    gemms = floors.config_gemms("gru", 10, 4, 8, 16, 1, False, backward=False)
    f = floors.floors_ms(gemms)
    assert f["peak"] == pytest.approx(f["macs"] / (peak * 1e9 / 2) * 1e3)
    assert floors.peak_source("float64") == "torch.mm on a large square"


def test_bench_cell_loop(capsys):
    argv = ["bench", *TINY, "--cells", "rnn_tanh,lstm", "--cell-loop", "--budget", "0.05"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    labels = [line.split("|")[1].strip() for line in out.splitlines()
              if line.startswith("|") and " cell x " in line]
    assert labels == [f"{c} cell x T=5 B=2 I=3 H=4" for c in ("rnn_tanh", "rnn_tanh", "lstm", "lstm")]
    with pytest.raises(SystemExit, match="one unidirectional layer"):
        cli.main(["bench", *TINY, "--cell-loop", "--bidirectional"])


def test_verify_full_matrix_has_cell_loops():
    cases = verify.build_matrix(["lstm", "lstm_proj"], quick=False, T=3, B=2, I=3, H=4)
    loops = [c for c in cases if c.cell_loop]
    assert [(c.cell, c.with_h0) for c in loops] == [("lstm", True), ("lstm", False)]


def test_bench_never_times_a_config_that_fails_verification(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "verify_config", lambda cfg, seed: (False, "output error 1 > 1e-6"))
    monkeypatch.setattr(bench, "time_interleaved", lambda *a, **k: pytest.fail("timed a FAIL"))
    path = tmp_path / "bench.json"
    assert cli.main(["bench", *TINY, "--cells", "gru", "--json", str(path)]) == 1
    assert "not timed" in capsys.readouterr().out
    assert json.loads(path.read_text())["results"][0]["timings"] == {}


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedup.png"
    assert cli.main(["bench", *TINY, "--cells", "gru", "--budget", "0.02", "--plot", str(path)]) == 0
    assert path.stat().st_size > 1000


def test_bench_plot_without_matplotlib_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        cli.main(["bench", *TINY, "--plot", "x.png"])


def test_expected_cudnn_algo():
    """ATen's rule (fusedrnn.dispatch) for a cuDNN 9.1 on an sm_90 GPU."""
    def algo(cfg, bench_pass):
        return bench.expected_cudnn_algo(cfg, bench_pass, 90100, (9, 0))

    cfg = bench.BenchConfig("lstm", 100, 32, 64, 128, device="cuda")
    assert algo(cfg, "fwd") == "persistent"
    assert algo(cfg, "fwd+bwd") == "fwd persistent, bwd persistent"
    cfg.H = 160
    assert algo(cfg, "fwd+bwd") == "fwd persistent, bwd standard"
    cfg.H = 256
    assert algo(cfg, "fwd") == "standard"
    cfg.dtype, cfg.H = "float64", 32
    assert algo(cfg, "fwd") == "standard"
    assert algo(bench.BenchConfig("rnn_tanh", 10, 4, 8, 256), "fwd+bwd") == \
        "fwd persistent, bwd persistent"
    assert algo(bench.BenchConfig("lstm_proj", 10, 4, 8, 32), "fwd") == "standard"
    assert algo(bench.BenchConfig("indrnn_tanh", 10, 4, 8, 32), "fwd") == "standard"


def test_console_entry_points():
    """`python -m fusedrnn --help` lists both subcommands (the console script is the same main)."""
    out = subprocess.run([sys.executable, "-m", "fusedrnn", "--help"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert "verify" in out and "bench" in out


def _result(fused_iqr, torch_iqr, floor_ms=None):
    cfg = bench.BenchConfig("gru", 5, 2, 3, 4)
    timing = bench.Timing(fused_ms=1.0, torch_ms=2.0, fused_iqr=fused_iqr, torch_iqr=torch_iqr,
                          reps=9)
    floors = {} if floor_ms is None else {p: {"sgemm": floor_ms, "peak": floor_ms / 2}
                                          for p in bench.PASSES}
    return bench.BenchResult(cfg, True, "", {p: timing for p in bench.PASSES}, floors)


def test_bench_flags_unreliable_figures_in_the_table():
    steady, noisy = _result(0.05, 0.10, floor_ms=0.5), _result(0.05, 0.80)
    impossible_floor = _result(0.05, 0.05, floor_ms=3.0)  # the peak floor (1.5) over the call
    assert bench.unreliable([steady]) == []
    assert bench.unreliable([noisy]) == ["gru T=5 B=2 I=3 H=4 L=1 uni float32 fwd",
                                         "gru T=5 B=2 I=3 H=4 L=1 uni float32 fwd+bwd"]
    assert len(bench.unreliable([impossible_floor])) == 2
    _, rows = bench.table_rows([steady, noisy, impossible_floor])
    assert rows[0][5] == "2.00x" and rows[0][-1] == "50% / 25%"
    assert rows[2][5] == "2.00x !" and rows[2][7] == "5% / 80% !"
    assert rows[4][-1] == "300% / n/a!"  # sgemm-shape floor may exceed 100%, the peak never


def test_bench_warns_on_stderr_when_figures_are_unreliable(monkeypatch, capsys):
    noisy = bench.Timing(1.0, 2.0, 0.9, 0.1, 5)
    monkeypatch.setattr(bench, "time_interleaved", lambda *a, **k: noisy)
    threads = torch.get_num_threads()
    try:
        assert cli.main(["bench", *TINY, "--cells", "gru", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert "WARNING: 2 of 2 figures are unreliable" in captured.err
    assert "--threads 1" in captured.err and "2.00x !" in captured.out
    with pytest.raises(SystemExit, match="--threads must be at least 1"):
        cli.main(["bench", *TINY, "--threads", "0"])


def test_top_level_help_gives_each_command_a_whole_sentence():
    out = subprocess.run([sys.executable, "-m", "fusedrnn", "--help"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert ("fused vs torch.nn vs an fp64 reference over a matrix of configurations, every "
            "output and gradient, PASS/FAIL by the rule in fusedrnn.verification.") in " ".join(
                out.split())


def test_busy_machine_bench_pairs_repetitions(tmp_path):
    """bench/busy_machine.py: the median of per-repetition ratios with its order-statistic
    interval (n=100: the 40th and 61st values, the textbook ranks), and one small configuration
    run end to end, idle, into JSON."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import busy_machine
    finally:
        sys.path.pop(0)
    assert busy_machine.median_interval(list(range(1, 101))) == (50.5, 40, 61)
    assert busy_machine.median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    out = tmp_path / "busy.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "busy_machine.py"), "--cells",
                    "gru", "--size", "12,2,3,8", "--budget", "0.05", "--json", str(out)],
                   check=True, cwd=ROOT, capture_output=True, text=True,
                   env=dict(os.environ, PYTHONPATH=ROOT))
    results = json.loads(out.read_text())["results"]
    assert [r["bench_pass"] for r in results] == ["fwd", "fwd+bwd"]
    for r in results:
        median, low, high = r["paired"]
        assert low <= median <= high and r["fused_default_over_one_thread"] == median


def test_ab_builds_compares_paired_speedups(tmp_path):
    """bench/ab_builds.py: per configuration, B's speedup over A's in each paired repetition;
    "slower" needs the median and the best repetition under 1 - tolerance. Then one tiny
    configuration run end to end, this checkout against itself."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import ab_builds
    finally:
        sys.path.pop(0)

    def report(speedups, fused_ms=(1.0, 2.0)):
        config = {"cell": "gru", "T": 5, "B": 2, "I": 3, "H": 4, "layers": 1,
                  "bidirectional": False, "dtype": "float32"}
        return {"results": [{"config": config, "timings": {
            "fwd": {"speedup": speedups[0], "fused_ms": fused_ms[0]},
            "fwd+bwd": {"speedup": speedups[1], "fused_ms": fused_ms[1]}}}]}
    a = [report((2.0, 4.0))] * 3
    b = [report((1.8, 4.0), (1.25, 2.0)), report((1.7, 4.4)), report((1.96, 3.8))]
    fwd, both = ab_builds.compare(a, b, tolerance=0.05)
    assert fwd["ratios"] == pytest.approx([0.9, 0.85, 0.98]) and fwd["median"] == pytest.approx(0.9)
    # fused-time ratios: A's fused ms / B's
    assert fwd["fused_ratios"] == pytest.approx([0.8, 1.0, 1.0]) and fwd["fused_median"] == 1.0
    assert not fwd["slower"]  # the best repetition (0.98) is within 5%
    assert both["median"] == pytest.approx(1.0) and not both["slower"]
    b[2] = report((1.8, 3.8))
    assert ab_builds.compare(a, b, tolerance=0.05)[0]["slower"]
    out = tmp_path / "ab.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ab_builds.py"), "--a", ROOT,
                    "--b", ROOT, "--reps", "1", "--budget", "0.02", "--cells", "rnn_tanh",
                    "--T", "4", "--B", "2", "--I", "3", "--H", "8", "--json", str(out)],
                   check=True, cwd=ROOT, capture_output=True, text=True)
    rows = json.loads(out.read_text())["rows"]
    assert [r["pass"] for r in rows] == ["fwd", "fwd+bwd"]
    assert all(len(r["ratios"]) == 1 and r["ratios"][0] > 0 for r in rows)
