"""CUDA-only behaviour (skipped without a GPU). The shared tests (equivalence grid, cells, opcheck,
gradcheck, compile) already run on CUDA through helpers.DEVICES; this file adds what only CUDA
has: half types, autocast, device-side lengths, no host synchronisation."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import dispatch, tune
from fusedrnn.bench import BenchConfig
from helpers import CELLS, RULE_ATOL, Case, check_case, cuda_only, make_pair

pytestmark = cuda_only


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_half_types_match_torch_nn(cell, kind, dtype):
    check_case(Case(cell, num_layers=2, bidirectional=True, input_kind=kind, H=16), dtype, "cuda")


@pytest.mark.parametrize("cell", list(CELLS))
def test_larger_shapes_cuda(cell):
    check_case(Case(cell, T=50, B=64, I=96, H=256, num_layers=2, bidirectional=True,
                    input_kind="packed_unsorted"), torch.float32, "cuda", seed=11)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "lstm_proj"])
def test_autocast_runs_in_the_autocast_dtype(cell, dtype):
    """Under torch.autocast("cuda") the stack runs in the autocast dtype, like torch.nn's cuDNN
    path: same output dtypes, and errors against fp64 within the rule."""
    case = Case(cell, num_layers=2, T=8, B=4, I=8, H=32)
    ref, fused = make_pair(case, torch.float32, "cuda")
    x = torch.randn(case.T, case.B, case.I, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out_f, hid_f = fused(x)
        out_t, hid_t = ref(x)
    assert out_f.dtype == out_t.dtype == dtype
    ref64 = ref.to("cpu", torch.float64)
    out_r, _ = ref64(x.double().cpu())
    fused_err = (out_f.double().cpu() - out_r).abs().max().item()
    torch_err = (out_t.double().cpu() - out_r).abs().max().item()
    assert fused_err <= 2 * torch_err + RULE_ATOL[dtype] * max(1.0, out_r.abs().max().item())


def test_out_of_range_lengths_are_clamped_not_read_out_of_bounds():
    """CUDA ops cannot validate lengths without a host sync; they clamp to [0, T] instead."""
    T, B, H = 6, 3, 5
    xproj, h0, w = (torch.randn(T, B, H, device="cuda"), torch.randn(B, H, device="cuda"),
                    torch.randn(H, H, device="cuda"))
    bad = torch.tensor([T + 7, -4, 2], device="cuda")
    clamped = torch.tensor([T, 0, 2], device="cuda")
    op = torch.ops.fusedrnn.time_loop_forward
    got = op("rnn_tanh", xproj, h0, None, w, None, None, bad, True, False)
    want = op("rnn_tanh", xproj, h0, None, w, None, None, clamped, True, False)
    torch.cuda.synchronize()
    for a, b in zip(got[:2], want[:2]):
        assert torch.equal(a, b)


def test_lengths_on_another_device_are_rejected():
    x, h, w = (torch.randn(4, 2, 3, device="cuda"), torch.randn(2, 3, device="cuda"),
               torch.randn(3, 3, device="cuda"))
    with pytest.raises(RuntimeError, match="lengths must be on cuda"):
        torch.ops.fusedrnn.time_loop_forward("rnn_tanh", x, h, None, w, None, None,
                                             torch.tensor([4, 2]), False, False)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM", "IndRNN", "LayerNormLSTM"])
def test_forward_backward_never_synchronizes_the_host(name, packed):
    """Packed input included: its lengths (CPU) reach the GPU by a pinned, non-blocking copy."""
    m = getattr(fusedrnn, name)(8, 16, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(10, 4, 8, device="cuda", requires_grad=True)
    # Packing is torch's own (it copies sorted indices from pageable memory): done outside.
    inp = pack_padded_sequence(x, torch.tensor([10, 3, 7, 1]), enforce_sorted=False) if packed else x
    m(inp)  # warm-up: first calls may initialise cuBLAS and the pinned-memory pool
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, _ = m(inp)
        (out.data if packed else out).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_default_dispatch_runs_cudnn_where_its_persistent_kernel_would(monkeypatch, tmp_path):
    """FUSEDRNN_CUDA_PATH=auto (the default outside the tests), no measured table: an LSTM with
    H <= 192 on unpacked fp32 input runs torch.nn's cuDNN call, bit for bit; H = 256 and packed
    input run the fused kernels (fusedrnn/dispatch.py)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
    monkeypatch.setenv(dispatch.CACHE_ENV, str(tmp_path / "none.json"))
    dispatch.reload()
    torch.manual_seed(0)
    small, large = fusedrnn.LSTM(32, 64).cuda(), fusedrnn.LSTM(32, 256).cuda()
    x = torch.randn(10, 4, 32, device="cuda")
    with torch.no_grad():
        assert small._runs_cudnn(x) and not large._runs_cudnn(x)
        assert not small._runs_cudnn(pack_padded_sequence(x, torch.tensor([10, 9, 5, 2])))
        ref = torch.nn.LSTM(32, 64).cuda()
        ref.load_state_dict(small.state_dict())
        torch.testing.assert_close(small(x)[0], ref(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("make", [
    lambda: fusedrnn.LSTM(16, 64, num_layers=2, bidirectional=True),
    lambda: fusedrnn.LSTM(16, 64, num_layers=2, bidirectional=True, proj_size=24),
    lambda: fusedrnn.LayerNormGRU(16, 64, num_layers=2, bidirectional=True),
    lambda: fusedrnn.LayerNormLSTM(16, 64, num_layers=2, bidirectional=True),
], ids=["lstm", "lstm_proj", "layer_norm_gru", "layer_norm_lstm"])
def test_the_persistent_path_runs_and_matches_the_per_step_path(make):
    """A module call forced onto the persistent loops runs every layer-direction's loops
    persistently, a layer's two directions in one launch (counted by the CUDA ops), and gives
    the per-step loops' numbers: an elementwise cell, a
    projected one (a second grid barrier a step) and the normalised ones (their rows behind a
    second barrier)."""
    torch.manual_seed(0)
    module = make().cuda()
    x = torch.randn(40, 4, 16, device="cuda", requires_grad=True)
    results = {}
    both = torch.ops.fusedrnn.bidirectional_persistent_launches
    for path in ("per_step", "persistent"):
        before, before_both = dispatch.persistent_launches(), both()
        with dispatch.forcing(path):
            out, state = module(x)
            states = state if isinstance(state, tuple) else (state,)
            grads = torch.autograd.grad(out.square().sum() + sum(s.sum() for s in states),
                                        [x, *module.parameters()])
        launches = dispatch.persistent_launches() - before
        assert launches == (8 if path == "persistent" else 0)
        # each layer's two directions in one launch, forward and backward
        assert both() - before_both == (4 if path == "persistent" else 0)
        results[path] = (out, *states, *grads)
    for a, b in zip(*results.values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: fusedrnn.LSTM(16, 64, num_layers=2, bidirectional=True),
    lambda: fusedrnn.LSTM(16, 64, proj_size=24),
    lambda: fusedrnn.LayerNormGRU(16, 64, bidirectional=True),
], ids=["lstm", "lstm_proj", "layer_norm_gru"])
def test_per_step_loops_through_cuda_graphs_match_the_eager_loops(monkeypatch, make):
    """FUSEDRNN_CUDA_GRAPHS=1: each layer-direction's per-step loop (forward and backward) is
    captured once per shape and replayed; the second call replays without capturing, with new
    inputs and weights, and both give the eager per-step loops' numbers."""
    torch.manual_seed(0)
    module = make().cuda()
    captures, replays = torch.ops.fusedrnn.graph_captures, torch.ops.fusedrnn.graph_replays

    def run():
        x = torch.randn(30, 4, 16, device="cuda", requires_grad=True)
        out, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        grads = torch.autograd.grad(out.square().sum() + sum(s.sum() for s in states),
                                    [x, *module.parameters()])
        return (out, *states, *grads)

    for call in range(2):
        seed = torch.seed()
        with dispatch.forcing("per_step"):
            eager = run()
            torch.manual_seed(seed)
            monkeypatch.setenv("FUSEDRNN_CUDA_GRAPHS", "1")
            before = captures(), replays()
            graphed = run()
            monkeypatch.delenv("FUSEDRNN_CUDA_GRAPHS")
        # forward and backward of every layer-direction; layers of the same shapes (and
        # options) share a graph, so the first call captures some, the second none
        loops = 2 * module.num_layers * (2 if module.bidirectional else 1)
        assert replays() - before[1] == loops
        assert (0 < captures() - before[0] <= loops) if call == 0 else captures() == before[0]
        for a, b in zip(eager, graphed, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # new weights: the next call's graphs read them
            for p in module.parameters():
                p.mul_(0.9)


def test_tune_measures_every_candidate_and_the_dispatch_takes_the_winner(monkeypatch, tmp_path):
    monkeypatch.setenv(dispatch.CACHE_ENV, str(tmp_path / "cuda_paths.json"))
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
    cfg = BenchConfig("lstm", T=50, B=4, I=16, H=64, device="cuda")
    measurements = tune.measure(cfg, budget_s=0.05)
    for m in measurements:
        assert set(m.ms) == {"cudnn", "per_step", "persistent"}, m.left_out
    tune.store(tmp_path / "cuda_paths.json", torch.cuda.get_device_name(), measurements, {})
    lstm = fusedrnn.LSTM(16, 64).cuda()
    x = torch.randn(50, 4, 16, device="cuda")
    with torch.no_grad():
        assert lstm._cuda_path(x) == measurements[0].winner
    dispatch.reload()
