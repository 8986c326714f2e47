"""Python side of the torch.ops.fusedrnn ops: fake (meta) kernels.

The ops themselves are declared in csrc/ops.cpp (shapes documented there); their autograd is in
C++ (csrc/autograd.cpp). Fake kernels make the ops traceable by torch.compile / FakeTensor.
"""
import torch

from .cells import CELLS

ops = torch.ops.fusedrnn


# Workspaces (and the recurrence) are carried in float for half types (csrc/op_checks.h:
# state_dtype; only the CUDA ops take half types, the CPU path computes them in float32).
_STATE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _workspace(like: torch.Tensor, save: bool, T: int, B: int, width: int) -> torch.Tensor:
    dtype = _STATE_DTYPE.get(like.dtype, like.dtype)
    return like.new_empty((T, B, width) if save else (0,), dtype=dtype)


# ------------------------------------------------------------------------------------ fake kernels


@torch.library.register_fake("fusedrnn::rnn_forward")
def _rnn_forward_fake(xproj, h0, w_hh, lengths, reverse, relu, save_workspace):
    T, B, H = xproj.shape
    return xproj.new_empty((T, B, H)), h0.new_empty((B, H)), _workspace(xproj, save_workspace, T, B, H)


@torch.library.register_fake("fusedrnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_h_n, w_hh, output, hprev, lengths, reverse, relu):
    return torch.empty_like(output), torch.empty_like(grad_h_n), torch.empty_like(w_hh)


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(xproj, h0, w_hh, b_hh, lengths, reverse, save_workspace):
    T, B, H3 = xproj.shape
    H = H3 // 3
    return (
        xproj.new_empty((T, B, H)),
        h0.new_empty((B, H)),
        _workspace(xproj, save_workspace, T, B, 4 * H),
        _workspace(xproj, save_workspace, T, B, H),
    )


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_output, grad_h_n, w_hh, gates, hprev, lengths, reverse):
    T, B, H = hprev.shape
    return (
        grad_output.new_empty((T, B, 3 * H)),
        torch.empty_like(grad_h_n),
        torch.empty_like(w_hh),
        w_hh.new_empty((3 * H,)),
    )


@torch.library.register_fake("fusedrnn::lstm_forward")
def _lstm_forward_fake(xproj, h0, c0, w_hh, w_hr, lengths, reverse, save_workspace):
    T, B, H4 = xproj.shape
    H, P = H4 // 4, w_hh.shape[1]
    return (
        xproj.new_empty((T, B, P)),
        h0.new_empty((B, P)),
        c0.new_empty((B, H)),
        _workspace(xproj, save_workspace, T, B, 4 * H),
        _workspace(xproj, save_workspace, T, B, H),
        _workspace(xproj, save_workspace, T, B, H),
        _workspace(xproj, save_workspace, T, B, P),
    )


@torch.library.register_fake("fusedrnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, gates, cells, prev_cells,
                        hprev, lengths, reverse):
    return (
        grad_output.new_empty(gates.shape),
        torch.empty_like(grad_h_n),
        torch.empty_like(grad_c_n),
        torch.empty_like(w_hh),
        torch.empty_like(w_hr) if w_hr is not None else w_hh.new_empty((0,)),
    )


@torch.library.register_fake("fusedrnn::cell_forward")
def _cell_forward_fake(cell, x, h, c, w_ih, w_hh, b_ih, b_hh, save_workspace):
    B, H = x.shape[0], w_hh.shape[1]
    spec = CELLS[cell]
    c_new = x.new_empty((B, H) if spec.has_cell_state else (0, H))
    workspace = x.new_empty((B, spec.step_workspace * H) if save_workspace else (0,))
    return x.new_empty((B, H)), c_new, workspace


@torch.library.register_fake("fusedrnn::cell_backward")
def _cell_backward_fake(cell, grad_h_new, grad_c_new, x, h, c, w_ih, w_hh, workspace, bias,
                        need_grad_x=True, need_grad_h=True):
    bias_grad = lambda: w_ih.new_empty((w_ih.shape[0],) if bias else (0,))  # noqa: E731
    return (
        torch.empty_like(x) if need_grad_x else x.new_empty((0,)),
        torch.empty_like(h) if need_grad_h else h.new_empty((0,)),
        torch.empty_like(c) if CELLS[cell].has_cell_state else x.new_empty((0,)),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        bias_grad(),
        bias_grad(),
    )
