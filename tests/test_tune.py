"""The CUDA dispatch's measured table (fusedrnn/dispatch.py) and `fusedrnn tune`
(fusedrnn/tune.py) that measures it: the look-up, the cache file, the forced paths, and tune's
verify-then-time machinery run on the CPU. (On a GPU, tests/test_cuda.py runs them for real.)"""
import json
import types

import pytest
import torch

import fusedrnn
from fusedrnn import dispatch, tune
from fusedrnn.bench import BenchConfig

GPU = "NVIDIA H200"


def entry(winner, cell="lstm", dtype="float32", training=False, bidirectional=False,
          T=300, B=1, H=32, I=1):
    return {"cell": cell, "dtype": dtype, "training": training, "bidirectional": bidirectional,
            "layers": 1, "T": T, "B": B, "I": I, "H": H, "ms": {}, "winner": winner}


def key(T=300, B=1, H=32, cell="lstm", dtype="float32", training=False, bidirectional=False):
    return dispatch.CallKey(cell, dtype, training, bidirectional, T, B, H)


def test_a_measured_entry_decides_within_a_factor_of_two():
    table = [entry("persistent", H=32), entry("cudnn", H=256), entry("per_step", H=32, B=64),
             entry("per_step", H=32, training=True)]
    assert dispatch.tuned_path(key(H=32), table) == "persistent"
    assert dispatch.tuned_path(key(H=48), table) == "persistent"  # nearer 32 than 256
    assert dispatch.tuned_path(key(H=200), table) == "cudnn"
    assert dispatch.tuned_path(key(H=96), table) is None  # 3x from both
    assert dispatch.tuned_path(key(B=48), table) == "per_step"
    assert dispatch.tuned_path(key(B=8), table) is None
    assert dispatch.tuned_path(key(T=100), table) is None
    assert dispatch.tuned_path(key(T=600, training=True), table) == "per_step"
    for other in (key(dtype="bfloat16"), key(cell="gru"), key(bidirectional=True)):
        assert dispatch.tuned_path(other, table) is None


class FakeCudaInput:
    """What dispatch.cuda_path reads of an input tensor, as a CUDA one would answer."""
    is_cuda = True
    device = torch.device("cpu")  # only passed to the (patched) torch.cuda queries

    def __init__(self, *shape, dtype=torch.float32):
        self.shape, self.dtype = shape, dtype

    def dim(self):
        return len(self.shape)

    def size(self, d):
        return self.shape[d]


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """An H200 with cuDNN 9.1 as torch.cuda would describe it; the cache file in tmp_path."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPU)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
    monkeypatch.setenv(dispatch.CACHE_ENV, str(tmp_path / "cuda_paths.json"))
    dispatch.reload()
    yield tmp_path / "cuda_paths.json"
    dispatch.reload()


def measurement(winner_ms, cfg=BenchConfig("lstm", 300, 1, 1, 32), bench_pass="fwd"):
    return tune.Measurement(cfg, bench_pass, winner_ms, {p: 0.01 for p in winner_ms}, {})


def test_tune_stores_winners_per_gpu_and_the_dispatch_takes_them(fake_gpu):
    lstm = fusedrnn.LSTM(1, 32)
    x = FakeCudaInput(300, 1, 1)
    # No table: ATen's rule (H = 32 is cuDNN's persistent small-H kernel).
    assert dispatch.cuda_path(lstm, x, packed=False, needs_grad=False) == "cudnn"
    tune.store(fake_gpu, GPU, [measurement({"cudnn": 0.9, "per_step": 3.0, "persistent": 0.4})],
               {})
    assert dispatch.cuda_path(lstm, x, packed=False, needs_grad=False) == "persistent"
    # Training was not measured, nor packed input, nor another GPU's table: the rule.
    assert dispatch.cuda_path(lstm, x, packed=False, needs_grad=True) == "cudnn"
    assert dispatch.cuda_path(lstm, x, packed=True, needs_grad=False) == "fused"
    batch_first = fusedrnn.LSTM(1, 32, batch_first=True)
    assert dispatch.cuda_path(batch_first, FakeCudaInput(1, 300, 1), False, False) == "persistent"
    assert dispatch.cuda_path(batch_first, FakeCudaInput(300, 1, 1), False, False) == "cudnn"
    # A new measurement of the same configuration replaces the old; others stay.
    tune.store(fake_gpu, GPU, [measurement({"cudnn": 0.9, "per_step": 0.5})], {})
    tune.store(fake_gpu, "another GPU", [measurement({"cudnn": 0.1, "per_step": 0.5})], {})
    cache = json.loads(fake_gpu.read_text())
    assert [e["winner"] for e in cache["gpus"][GPU]["entries"]] == ["per_step"]
    assert dispatch.cuda_path(lstm, x, packed=False, needs_grad=False) == "per_step"


def test_an_lstm_with_proj_size_takes_the_lstm_proj_entries(fake_gpu):
    """tune measures proj_size as bench's "lstm_proj" configuration; a plain LSTM's entry of the
    same sizes is not a projected one's, nor the other way round."""
    x = FakeCudaInput(300, 1, 1)
    projected, plain = fusedrnn.LSTM(1, 32, proj_size=8), fusedrnn.LSTM(1, 32)
    assert dispatch.cuda_path(projected, x, packed=False, needs_grad=False) == "fused"  # the rule
    tune.store(fake_gpu, GPU, [measurement({"cudnn": 0.9, "persistent": 0.4},
                                           cfg=BenchConfig("lstm_proj", 300, 1, 1, 32))], {})
    assert dispatch.cuda_path(projected, x, packed=False, needs_grad=False) == "persistent"
    assert dispatch.cuda_path(plain, x, packed=False, needs_grad=False) == "cudnn"  # the rule
    tune.store(fake_gpu, GPU, [measurement({"cudnn": 0.9, "per_step": 0.2})], {})
    assert dispatch.cuda_path(plain, x, packed=False, needs_grad=False) == "per_step"
    assert dispatch.cuda_path(projected, x, packed=False, needs_grad=False) == "persistent"


def test_forced_paths_and_the_environment_override_the_table(fake_gpu, monkeypatch):
    lstm, x = fusedrnn.LSTM(1, 32), FakeCudaInput(300, 1, 1)
    tune.store(fake_gpu, GPU, [measurement({"cudnn": 0.9, "persistent": 0.4})], {})
    for path in dispatch.PATHS:
        with dispatch.forcing(path):
            assert dispatch.cuda_path(lstm, x, packed=False, needs_grad=False) == path
        monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
        assert dispatch.cuda_path(lstm, x, packed=False, needs_grad=False) == path
    # A cell torch.nn lacks has no cuDNN call to take.
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "cudnn")
    assert dispatch.cuda_path(fusedrnn.IndRNN(1, 32), x, packed=False, needs_grad=False) == "fused"
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "fastest")
    with pytest.raises(ValueError, match="FUSEDRNN_CUDA_PATH='fastest'"):
        dispatch.cuda_path(lstm, x, packed=False, needs_grad=False)
    with pytest.raises(ValueError, match="unknown CUDA path"):
        with dispatch.forcing("cublas"):
            pass


def test_a_damaged_cache_file_is_an_error_not_a_silent_fallback(fake_gpu):
    fake_gpu.write_text('{"entries": []}')
    with pytest.raises(ValueError, match="not a fusedrnn tune cache"):
        dispatch.cuda_path(fusedrnn.LSTM(1, 32), FakeCudaInput(300, 1, 1), False, False)


def test_off_cuda_every_call_runs_the_fused_path(fake_gpu, monkeypatch):
    lstm = fusedrnn.LSTM(4, 8)
    for value in ("auto", *dispatch.PATHS):
        monkeypatch.setenv("FUSEDRNN_CUDA_PATH", value)
        assert lstm._cuda_path(torch.randn(3, 2, 4)) == "fused"


def test_measure_verifies_then_times_each_candidate():
    """tune.measure on the CPU: torch.nn's call and the fused loop timed, both passes; the
    persistent candidate left out (no CUDA op counted a persistent launch)."""
    cfg = BenchConfig("gru", T=6, B=2, I=3, H=4)
    results = tune.measure(cfg, budget_s=0.01)
    assert [m.bench_pass for m in results] == ["fwd", "fwd+bwd"]
    for m in results:
        assert set(m.ms) == {"cudnn", "per_step"} and all(ms > 0 for ms in m.ms.values())
        assert m.left_out["persistent"].startswith("not persistent")
        assert m.winner in m.ms
    columns, rows = tune.table_rows(results)
    assert len(rows) == 2 and rows[0][columns.index("persistent ms")] == ""


def test_measure_reports_a_candidate_that_fails_verification(monkeypatch):
    monkeypatch.setattr(tune.bench, "verify_config",
                        lambda cfg, seed: (False, "output error 1 > 1e-5"))
    results = tune.measure(BenchConfig("rnn_tanh", T=3, B=1, I=2, H=3), budget_s=0.01,
                           fused_paths=("per_step",))
    assert all(set(m.ms) == {"cudnn"} and m.left_out["per_step"].startswith("FAIL")
               for m in results)


def test_tune_needs_a_cuda_device(capsys):
    args = types.SimpleNamespace(device="cpu")
    assert tune.main(args) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_the_loop_choice_reaches_the_forward_and_the_backward_op():
    """A module call's cuda_loop reaches the layer op, and through autograd its backward (the
    CPU ignores it; on CUDA it picks the loop: tests/test_cuda_emulation.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "fusedrnn":
                schema = func._schema
                bound = dict(zip((a.name for a in schema.arguments), args)) | (kwargs or {})
                seen[schema.name] = bound.get("cuda_loop", 0)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(3, 5)
    x = torch.randn(4, 2, 3, requires_grad=True)
    with Record():
        out, _, _ = fusedrnn.functional.recurrent_stack(
            "lstm", x, None, None, lstm._flat_weights, num_layers=1, bidirectional=False,
            bias=True, cuda_loop=dispatch.CUDA_LOOP["persistent"])
        out.sum().backward()
    assert seen == {"fusedrnn::time_loop_forward": 2, "fusedrnn::time_loop_backward": 2}
