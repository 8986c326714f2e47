"""Python side of the torch.ops.fusedrnn ops: fake (meta) kernels and autograd.

The ops themselves are declared in csrc/ops.cpp (shapes documented there). Fake kernels make the
ops traceable by torch.compile / FakeTensor; register_autograd makes each forward op differentiable
by calling its backward op. Backward ops are not themselves differentiable: double backward
through fusedrnn raises instead of returning wrong second derivatives.
"""
import torch

ops = torch.ops.fusedrnn


def _workspace(like: torch.Tensor, save: bool, T: int, B: int, width: int) -> torch.Tensor:
    return like.new_empty((T, B, width) if save else (0,))


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
        hprev.new_empty((T, B, 3 * H)),
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
        torch.empty_like(gates),
        torch.empty_like(grad_h_n),
        torch.empty_like(grad_c_n),
        torch.empty_like(w_hh),
        torch.empty_like(w_hr) if w_hr is not None else w_hh.new_empty((0,)),
    )


# ------------------------------------------------------------------------------------ autograd


def _grad_or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _no_double_backward():
    if torch.is_grad_enabled():
        raise RuntimeError(
            "fusedrnn: double backward (create_graph=True) through a fused recurrent op is not "
            "supported"
        )


def _rnn_setup_context(ctx, inputs, output):
    _, _, w_hh, lengths, reverse, relu, _ = inputs
    out, _, hprev = output
    ctx.save_for_backward(w_hh, out, hprev, lengths)
    ctx.reverse, ctx.relu = reverse, relu


def _rnn_backward(ctx, grad_output, grad_h_n, _grad_hprev):
    _no_double_backward()
    w_hh, out, hprev, lengths = ctx.saved_tensors
    grad_xproj, grad_h0, grad_w_hh = ops.rnn_backward(
        _grad_or_zeros(grad_output, out), _grad_or_zeros(grad_h_n, out[0]),
        w_hh, out, hprev, lengths, ctx.reverse, ctx.relu)
    return grad_xproj, grad_h0, grad_w_hh, None, None, None, None


def _gru_setup_context(ctx, inputs, output):
    _, _, w_hh, b_hh, lengths, reverse, _ = inputs
    out, _, gates, hprev = output
    ctx.save_for_backward(w_hh, gates, hprev, lengths)
    ctx.reverse, ctx.has_bias = reverse, b_hh is not None


def _gru_backward(ctx, grad_output, grad_h_n, _grad_gates, _grad_hprev):
    _no_double_backward()
    w_hh, gates, hprev, lengths = ctx.saved_tensors
    grad_xproj, grad_h0, grad_w_hh, grad_b_hh = ops.gru_backward(
        _grad_or_zeros(grad_output, hprev), _grad_or_zeros(grad_h_n, hprev[0]),
        w_hh, gates, hprev, lengths, ctx.reverse)
    return grad_xproj, grad_h0, grad_w_hh, grad_b_hh if ctx.has_bias else None, None, None, None


def _lstm_setup_context(ctx, inputs, output):
    _, _, _, w_hh, w_hr, lengths, reverse, _ = inputs
    out, _, c_n, gates, cells, prev_cells, hprev = output
    ctx.save_for_backward(w_hh, w_hr, gates, cells, prev_cells, hprev, lengths)
    ctx.reverse = reverse


def _lstm_backward(ctx, grad_output, grad_h_n, grad_c_n, *_grad_workspaces):
    _no_double_backward()
    w_hh, w_hr, gates, cells, prev_cells, hprev, lengths = ctx.saved_tensors
    grad_xproj, grad_h0, grad_c0, grad_w_hh, grad_w_hr = ops.lstm_backward(
        _grad_or_zeros(grad_output, hprev), _grad_or_zeros(grad_h_n, hprev[0]),
        _grad_or_zeros(grad_c_n, cells[0]), w_hh, w_hr, gates, cells, prev_cells, hprev,
        lengths, ctx.reverse)
    return (grad_xproj, grad_h0, grad_c0, grad_w_hh, grad_w_hr if w_hr is not None else None,
            None, None, None)


torch.library.register_autograd(
    "fusedrnn::rnn_forward", _rnn_backward, setup_context=_rnn_setup_context)
torch.library.register_autograd(
    "fusedrnn::gru_forward", _gru_backward, setup_context=_gru_setup_context)
torch.library.register_autograd(
    "fusedrnn::lstm_forward", _lstm_backward, setup_context=_lstm_setup_context)
