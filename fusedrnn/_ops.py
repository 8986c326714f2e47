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


def _workspace(like: torch.Tensor, T: int, B: int, width: int) -> torch.Tensor:
    return like.new_empty((T, B, width), dtype=_STATE_DTYPE.get(like.dtype, like.dtype))


# ------------------------------------------------------------------------------------ fake kernels


@torch.library.register_fake("fusedrnn::time_loop_forward")
def _time_loop_forward_fake(cell, xproj, h0, c0, w_hh, step_params, w_hr, lengths, reverse,
                            save_workspace, cuda_loop=0):
    spec = CELLS[cell]
    T, B, _ = xproj.shape
    H = w_hh.shape[0] // spec.gates
    P = H if spec.diagonal else w_hh.shape[1]
    c_n = c0.new_empty((B, H)) if spec.has_cell_state else xproj.new_empty((0,))
    workspace = [_workspace(xproj, T, B, units * (P if of == "P" else H))
                 for _, units, of in spec.workspace] if save_workspace else []
    return xproj.new_empty((T, B, P)), h0.new_empty((B, P)), c_n, workspace


@torch.library.register_fake("fusedrnn::time_loop_backward")
def _time_loop_backward_fake(cell, grad_output, grad_h_n, grad_c_n, w_hh, w_hr, step_params,
                             workspace, lengths, reverse, cuda_loop=0):
    spec = CELLS[cell]
    T, B, _ = grad_output.shape
    none = lambda: grad_output.new_empty((0,))  # noqa: E731  (one per output: no aliases)
    return (
        grad_output.new_empty((T, B, w_hh.shape[0])),
        torch.empty_like(grad_h_n),
        torch.empty_like(grad_c_n) if spec.has_cell_state else none(),
        torch.empty_like(w_hh),
        grad_output.new_empty((spec.step_param_units * (w_hh.shape[0] // spec.gates),))
        if spec.own_step_param_grad else none(),
        torch.empty_like(w_hr) if w_hr is not None else none(),
    )


def _item(items, d):
    return items[d] if items else None


@torch.library.register_fake("fusedrnn::time_loop_pair_forward")
def _time_loop_pair_forward_fake(cell, xproj, h0, c0, w_hh, step_params, w_hr, lengths,
                                 save_workspace, cuda_loop=0):
    outs, h_n, c_n, workspace = [], [], [], []
    for d in range(2):
        o, h, c, ws = _time_loop_forward_fake(cell, xproj[d], h0[d], _item(c0, d), w_hh[d],
                                              _item(step_params, d), _item(w_hr, d), lengths,
                                              d == 1, save_workspace)
        outs.append(o), h_n.append(h), c_n.append(c)
        workspace += ws
    return outs, h_n, c_n, workspace


@torch.library.register_fake("fusedrnn::time_loop_pair_backward")
def _time_loop_pair_backward_fake(cell, grad_output, grad_h_n, grad_c_n, w_hh, w_hr,
                                  step_params, workspace, lengths, cuda_loop=0):
    parts = len(workspace) // 2
    grads = [_time_loop_backward_fake(cell, grad_output[d], grad_h_n[d], _item(grad_c_n, d),
                                      w_hh[d], _item(w_hr, d), _item(step_params, d),
                                      workspace[d * parts:(d + 1) * parts], lengths, d == 1)
             for d in range(2)]
    return tuple(list(pair) for pair in zip(*grads))


@torch.library.register_fake("fusedrnn::cell_forward")
def _cell_forward_fake(cell, x, h, c, w_ih, w_hh, b_ih, b_hh, save_workspace):
    spec = CELLS[cell]
    if spec.diagonal or spec.normalized:  # as the kernel (csrc/op_checks.h: check_cell_inputs)
        raise NotImplementedError(f"fusedrnn: the one-step op runs cells with a dense W_hh and "
                                  f"no normalisation; {cell} runs through time_loop_forward")
    B, H = x.shape[0], w_hh.shape[1]
    c_new = x.new_empty((B, H) if spec.has_cell_state else (0, H))
    workspace = x.new_empty((B, spec.step_workspace * H) if save_workspace else (0,))
    return x.new_empty((B, H)), c_new, workspace


@torch.library.register_fake("fusedrnn::layer_step")
def _layer_step_fake(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    _cell_forward_fake(cell, x[0], h0[0], None if c0 is None else c0[0], w_ih, w_hh, b_ih, b_hh,
                       False)  # (its errors)
    state = (1, x.shape[1], w_hh.shape[1])
    c_n = x.new_empty(state if CELLS[cell].has_cell_state else (0,))
    return x.new_empty(state), x.new_empty(state), c_n


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
