"""The CPU per-step GEMM (csrc/cpu/packed_gemm.cpp) at the shapes where its blocking has edges:
batch rows not a multiple of the 6-row block, gate columns not a multiple of the 16-column panel,
and depth past one 256-deep slice (LSTM backward multiplies by 4H)."""
import pytest
import torch

from helpers import CELLS, Case, check_case

# (B, H): one row / 1 panel; 7 rows (6 + 1) / 33 cols (2 panels + 1); 13 rows / K=4H=280 (2 slices)
EDGE_SHAPES = [(1, 16), (7, 33), (13, 70), (6, 260)]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("B,H", EDGE_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gemm_block_edges(cell, B, H, dtype):
    check_case(Case(cell, T=4, B=B, I=9, H=H, input_kind="packed_unsorted"), dtype)


def _lstm_proj_ops_forward_backward(T=5, B=13, H=70, P=11):
    """Every output of lstm_forward and lstm_backward (with W_hr) on fixed random data."""
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    w_hh, w_hr = randn(4 * H, P) * 0.1, randn(P, H) * 0.1
    fwd = torch.ops.fusedrnn.lstm_forward(randn(T, B, 4 * H), randn(B, P), randn(B, H), w_hh, w_hr,
                                          None, False, True)
    _, _, _, gates, cells, prev_cells, hprev = fwd
    bwd = torch.ops.fusedrnn.lstm_backward(randn(T, B, P), randn(B, P), randn(B, H), w_hh, w_hr,
                                           gates, cells, prev_cells, hprev, None, False)
    return list(fwd) + list(bwd)


def test_thread_count_does_not_change_results():
    """Each output block of a step is summed by one thread in a fixed order, so everything the
    time loops compute is bitwise equal on 1 thread and on several. (Not the weight gradients:
    those are one BLAS GEMM after the loop, whose reduction split BLAS picks per thread count.)"""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _lstm_proj_ops_forward_backward()
        torch.set_num_threads(max(2, threads))
        multi = _lstm_proj_ops_forward_backward()
    finally:
        torch.set_num_threads(threads)
    weight_grads = slice(-2, None)  # grad_w_hh, grad_w_hr
    del single[weight_grads], multi[weight_grads]
    for a, b in zip(single, multi):
        assert torch.equal(a, b)
