"""Drop-in API: constructor, parameters, state_dict, repr, errors; ops: opcheck, gradcheck,
torch.compile (double backward: test_double_backward.py)."""
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import cells
from helpers import CELLS, DEVICES, Case, check_case, make_pair, op_backward_samples, op_samples

MODULES = ["RNN", "GRU", "LSTM"]


def _raises_same(fn_ref, fn_fused):
    """Both raise the same exception type with the same message."""
    with pytest.raises(Exception) as ref_exc:
        fn_ref()
    with pytest.raises(Exception) as fused_exc:
        fn_fused()
    assert type(fused_exc.value) is type(ref_exc.value)
    assert str(fused_exc.value) == str(ref_exc.value)


# ------------------------------------------------------------------------------ construction


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("kw", [
    dict(num_layers=3, bidirectional=True, batch_first=True, dropout=0.25),
    dict(bias=False), dict(proj_size=2), dict(nonlinearity="relu"),
])
def test_parameters_state_dict_repr(name, kw):
    if "proj_size" in kw and name != "LSTM" or "nonlinearity" in kw and name != "RNN":
        pytest.skip("not an argument of this module")
    ref, fused = getattr(nn, name)(4, 6, **kw), getattr(fusedrnn, name)(4, 6, **kw)
    assert repr(ref) == repr(fused)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == \
           [(n, p.shape) for n, p in fused.named_parameters()]
    fused.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fused.state_dict(), strict=True)
    assert not isinstance(fused, (nn.RNN, nn.GRU, nn.LSTM))


@pytest.mark.parametrize("name", MODULES)
def test_init_distribution(name):
    H = 50
    m = getattr(fusedrnn, name)(30, H, num_layers=2)
    bound = 1 / H ** 0.5
    values = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert values.abs().max() <= bound
    assert values.min() < -0.95 * bound and values.max() > 0.95 * bound  # uniform over the range
    assert abs(values.mean()) < 0.05 * bound


@pytest.mark.parametrize("args,kwargs", [
    ((4, 6), dict(dropout=1.5)), ((4, 6), dict(dropout=True)), ((4, 6), dict(bias=1)),
    ((4, 6), dict(batch_first=1)), ((4.0, 6), {}), ((0, 6), {}), ((4, 6.0), {}), ((4, 0), {}),
    ((4, 6), dict(num_layers=0)), ((4, 6), dict(proj_size=-1)), ((4, 6), dict(proj_size=6)),
    ((4, 6), dict(proj_size=2)), ((4, 6), dict(nonlinearity="sigmoid")),
    ((4, 6, 1, "gelu"), {}),
])
@pytest.mark.parametrize("name", MODULES)
def test_constructor_errors(name, args, kwargs):
    try:
        getattr(nn, name)(*args, **kwargs)
    except Exception:
        _raises_same(lambda: getattr(nn, name)(*args, **kwargs),
                     lambda: getattr(fusedrnn, name)(*args, **kwargs))
    else:
        getattr(fusedrnn, name)(*args, **kwargs)  # accepted by both


def test_dropout_single_layer_warns_like_torch():
    with warnings.catch_warnings(record=True) as w_ref:
        warnings.simplefilter("always")
        nn.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings(record=True) as w_fused:
        warnings.simplefilter("always")
        fusedrnn.GRU(3, 4, dropout=0.5)
    assert [str(w.message) for w in w_ref] == [str(w.message) for w in w_fused]


# ------------------------------------------------------------------------------ forward errors


def _bad_inputs(name):
    lstm = name == "LSTM"
    h = lambda *s: (torch.randn(*s), torch.randn(*s)) if lstm else torch.randn(*s)  # noqa: E731
    return {
        "4d input": (torch.randn(2, 3, 4, 5), None),
        "1d input": (torch.randn(4), None),
        "wrong input_size": (torch.randn(5, 3, 7), None),
        "wrong hidden batch": (torch.randn(5, 3, 4), h(1, 2, 6)),
        "wrong hidden size": (torch.randn(5, 3, 4), h(1, 3, 5)),
        "wrong hidden layers": (torch.randn(5, 3, 4), h(2, 3, 6)),
        "2d hidden for batched": (torch.randn(5, 3, 4), h(3, 6)),
        "3d hidden for unbatched": (torch.randn(5, 4), h(1, 1, 6)),
        "dtype mismatch": (torch.randn(5, 3, 4, dtype=torch.float64), None),
        "seq length 0": (torch.randn(0, 3, 4), None),
    }


@pytest.mark.parametrize("case", list(_bad_inputs("RNN")))
@pytest.mark.parametrize("name", MODULES)
def test_forward_errors_match_torch(name, case):
    ref = getattr(nn, name)(4, 6)
    fused = getattr(fusedrnn, name)(4, 6)
    fused.load_state_dict(ref.state_dict())
    x, hx = _bad_inputs(name)[case]
    _raises_same(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("name", MODULES)
def test_lstm_cell_state_error(name):
    if name != "LSTM":
        pytest.skip("LSTM only")
    ref, fused = nn.LSTM(4, 6), fusedrnn.LSTM(4, 6)
    x = torch.randn(5, 3, 4)
    hx = (torch.randn(1, 3, 6), torch.randn(1, 3, 5))
    _raises_same(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("name,kw", [("RNNCell", {}), ("GRUCell", {}), ("LSTMCell", {})])
def test_cell_errors_match_torch(name, kw):
    ref = getattr(nn, name)(3, 4)
    fused = getattr(fusedrnn, name)(3, 4)
    lstm = name == "LSTMCell"
    h = lambda *s: (torch.randn(*s), torch.randn(*s)) if lstm else torch.randn(*s)  # noqa: E731
    for x, hx in [(torch.randn(2, 5), None), (torch.randn(2, 3), h(3, 4)), (torch.randn(2, 3), h(2, 5)),
                  (torch.randn(2, 2, 3), None), (torch.randn(2, 3), h(1, 2, 4)),
                  (torch.randn(2, 3, dtype=torch.float64), None)]:
        _raises_same(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("name", MODULES)
def test_batch_zero_like_torch(name):
    ref, fused = getattr(nn, name)(4, 6, num_layers=2), getattr(fusedrnn, name)(4, 6, num_layers=2)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(5, 0, 4, requires_grad=True)
    ro, rh = ref(x)
    fo, fh = fused(x)
    assert ro.shape == fo.shape
    rh = rh if isinstance(rh, tuple) else (rh,)
    fh = fh if isinstance(fh, tuple) else (fh,)
    assert [t.shape for t in rh] == [t.shape for t in fh]
    fo.sum().backward()
    assert x.grad.shape == x.shape


def test_lstm_proj_requires_lstm():
    for name in ("RNN", "GRU"):
        _raises_same(lambda: getattr(nn, name)(3, 4, proj_size=2),
                     lambda: getattr(fusedrnn, name)(3, 4, proj_size=2))


# ------------------------------------------------------------------------------ ops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_forward_ops(lengths, reverse, device):
    for op, args in op_samples(lengths, reverse, device=device):
        torch.library.opcheck(op, args)


# The cells the one-step ops run: those with a dense W_hh and no normalisation.
DENSE_CELLS = [name for name, spec in cells.CELLS.items()
               if not spec.diagonal and not spec.normalized]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", DENSE_CELLS)
def test_opcheck_cell_ops(cell, bias):
    """The CPU one-step ops (cells), forward and backward. Also the check that the Python cell
    table (fusedrnn/cells.py: gates, states, workspace width, which the fake kernels read) agrees
    with the C++ one (csrc/cell.h, which the kernels read)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    B, I, H = 3, 5, 4
    spec = cells.CELLS[cell]
    G = spec.gates
    c = r(B, H) if spec.has_cell_state else None
    args = (cell, r(B, I), r(B, H), c, r(G * H, I), r(G * H, H), r(G * H) if bias else None,
            r(G * H) if bias else None, True)
    ops = torch.ops.fusedrnn
    torch.library.opcheck(ops.cell_forward.default, args)
    with torch.no_grad():
        h_new, c_new, workspace = ops.cell_forward(*args)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    assert workspace.shape == (B, spec.step_workspace * H)
    grad_c = torch.randn_like(c_new) if spec.has_cell_state else None
    bargs = (cell, torch.randn_like(h_new), grad_c, *detached[1:6], workspace, bias)
    torch.library.opcheck(ops.cell_backward.default, bargs)
    torch.library.opcheck(ops.cell_backward.default, bargs + (False, False))
    full, skipped = ops.cell_backward(*bargs), ops.cell_backward(*bargs, False, False)
    assert skipped[0].numel() == 0 and skipped[1].numel() == 0
    for a, b in zip(full[2:], skipped[2:]):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="needs the forward's workspace"):
        ops.cell_backward(*bargs[:8], workspace.new_empty(0), bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", DENSE_CELLS)
def test_layer_step_op(cell, bias):
    """layer_step (one step of a one-layer stack, CPU): torch.library's checks (schema, fake
    kernel, autograd registration, AOT dispatch), cell_forward's numbers shaped (1, B, H), three
    tensors of their own (an in-place op on the output leaves h_n alone), and its checks."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    B, I, H = 3, 5, 4
    spec = cells.CELLS[cell]
    G = spec.gates
    x, h0 = r(1, B, I), r(1, B, H)
    c0 = r(1, B, H) if spec.has_cell_state else None
    weights = [r(G * H, I), r(G * H, H)] + ([r(G * H), r(G * H)] if bias else [None, None])
    ops = torch.ops.fusedrnn
    grad_args = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t
                 for t in (x, h0, c0, *weights)]
    torch.library.opcheck(ops.layer_step.default, (cell, *grad_args))
    torch.library.opcheck(ops.layer_step.default, (cell, x, h0, c0, *weights))
    output, h_n, c_n = ops.layer_step(cell, x, h0, c0, *weights)
    h_new, c_new, _ = ops.cell_forward(cell, x[0], h0[0], c0, *weights, False) if c0 is None \
        else ops.cell_forward(cell, x[0], h0[0], c0[0], *weights, False)
    assert output.shape == h_n.shape == (1, B, H)
    assert torch.equal(output[0], h_new) and torch.equal(h_n[0], h_new)
    if spec.has_cell_state:
        assert c_n.shape == (1, B, H) and torch.equal(c_n[0], c_new)
    else:
        assert c_n.shape == (0,)
    storages = {t.untyped_storage().data_ptr() for t in (output, h_n, c_n) if t.numel()}
    assert len(storages) == 2 + spec.has_cell_state
    output.add_(1)
    assert torch.equal(h_n[0], h_new)
    with pytest.raises(RuntimeError, match=r"x must be \(1, B, I\)"):
        ops.layer_step(cell, torch.cat([x, x]), h0, c0, *weights)
    with pytest.raises(RuntimeError, match="h has shape"):
        ops.layer_step(cell, x, h0[0], c0, *weights)
    with pytest.raises(RuntimeError, match="c is (needed|only for lstm)"):
        ops.layer_step(cell, x, h0, None if spec.has_cell_state else h0, *weights)


@pytest.mark.parametrize("cell", sorted(set(cells.CELLS) - set(DENSE_CELLS)))
def test_one_step_op_refuses_a_diagonal_recurrence(cell):
    """cell_forward multiplies by a dense W_hh (G*H, H) and normalises nothing; a cell with a
    diagonal one (IndRNN) or a normalised step (LayerNormLSTM) runs through the layer ops (its
    modules never call the one-step op)."""
    spec = cells.CELLS[cell]
    B, I, H, G = 2, 3, 4, spec.gates
    c = torch.randn(B, H) if spec.has_cell_state else None
    w_hh = torch.randn(G * H) if spec.diagonal else torch.randn(G * H, H)
    with pytest.raises(NotImplementedError, match="dense W_hh"):
        torch.ops.fusedrnn.cell_forward(cell, torch.randn(B, I), torch.randn(B, H), c,
                                        torch.randn(G * H, I), w_hh, None, None, False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths", [False, True])
def test_opcheck_backward_ops(lengths, device):
    for op, args in op_backward_samples(lengths, device=device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_ops(lengths, reverse, device):
    for op, args in op_samples(lengths, reverse, device=device):
        # differentiate the user-visible outputs (output, h_n[, c_n]), not the workspaces
        n_visible = 3 if cells.CELLS[args[0]].has_cell_state else 2
        tensor_idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

        def f(*ts, op=op, args=args, tensor_idx=tensor_idx, n_visible=n_visible):
            full = list(args)
            for i, t in zip(tensor_idx, ts):
                full[i] = t
            return op(*full)[:n_visible]

        assert torch.autograd.gradcheck(f, [args[i] for i in tensor_idx])


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_module_packed_bidirectional(cell):
    case = Case(cell, T=4, B=3, I=3, H=4, num_layers=2, bidirectional=True,
                input_kind="packed_unsorted")
    _, fused = make_pair(case)
    from helpers import forward, make_inputs
    x, hx, lengths = make_inputs(case, fused, torch.float64, "cpu", torch.Generator().manual_seed(0))
    leaves = [x] + (list(hx) if isinstance(hx, tuple) else [hx])

    def f(x, *h):
        return tuple(forward(fused, case, x, tuple(h) if len(h) > 1 else h[0], lengths)[:1])

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kw", [("RNN", {}), ("RNN", dict(nonlinearity="relu")),
                                     ("GRU", {}), ("LSTM", {})])
def test_in_place_op_on_output_keeps_backward(name, kw, device):
    """out.relu_() (nn.ReLU(inplace=True) after the layer) then backward: same grads as torch.nn
    computes out of place (torch.nn's CPU LSTM itself raises here, so the reference is out of
    place for every cell)."""
    torch.manual_seed(0)
    ref = getattr(nn, name)(4, 8, **kw).double().to(device)
    fused = getattr(fusedrnn, name)(4, 8, **kw).double().to(device)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, dtype=torch.float64, device=device)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, _ = ref(x_ref)
    torch.relu(out_ref).sum().backward()
    out_fused, _ = fused(x_fused)
    out_fused.relu_()
    out_fused.sum().backward()
    torch.testing.assert_close(x_fused.grad, x_ref.grad)
    for p_ref, p_fused in zip(ref.parameters(), fused.parameters()):
        torch.testing.assert_close(p_fused.grad, p_ref.grad)


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("packed", [False, True])
def test_bidirectional_directions_at_once_match_torch(name, packed):
    """Sizes where the CPU stack runs a layer's two directions on two threads at once
    (csrc/cpu/team.h: one worker a direction, >= 2^20 multiply-adds a loop): outputs, states and
    every gradient as torch.nn, and nothing recorded for autograd under no_grad."""
    torch.manual_seed(0)
    T, B, I, H = 160, 2, 8, 64  # RNN 1.3M, GRU 3.9M, LSTM 5.2M MACs a direction
    ref = getattr(nn, name)(I, H, num_layers=2, bidirectional=True)
    fused = getattr(fusedrnn, name)(I, H, num_layers=2, bidirectional=True)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    lengths = torch.tensor([T, T // 2])

    def run(module):
        xi = x.clone().requires_grad_()
        inp = nn.utils.rnn.pack_padded_sequence(xi, lengths) if packed else xi
        out, hidden = module(inp)
        out = nn.utils.rnn.pad_packed_sequence(out)[0] if packed else out
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        (out.square().sum() + sum(s.sum() for s in states)).backward()
        return [out, *states, xi.grad] + [p.grad for p in module.parameters()]

    for got, want in zip(run(fused), run(ref)):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        out, _ = fused(x)
    assert out.grad_fn is None and not out.requires_grad


def test_no_workspace_in_inference():
    m = fusedrnn.LSTM(3, 4)
    with torch.no_grad():
        out, h_n, c_n, workspace = torch.ops.fusedrnn.time_loop_forward(
            "lstm", torch.randn(5, 2, 16), torch.zeros(2, 4), torch.zeros(2, 4), m.weight_hh_l0,
            None, None, None, False, False)
    assert workspace == [] and out.shape == (5, 2, 4) and c_n.shape == (2, 4)


def test_op_rejects_bad_shapes_and_lengths():
    ops = torch.ops.fusedrnn
    x, h, w = torch.randn(5, 2, 4), torch.randn(2, 4), torch.randn(4, 4)

    def rnn(x=x, h=h, w=w, lengths=None, c0=None, step_params=None, w_hr=None, cell="rnn_tanh"):
        return ops.time_loop_forward(cell, x, h, c0, w, step_params, w_hr, lengths, False, False)
    with pytest.raises(RuntimeError, match="h0 has shape"):
        rnn(h=torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="lengths"):
        rnn(lengths=torch.tensor([6, 1]))
    with pytest.raises(RuntimeError, match="lengths"):
        rnn(lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match="dtype"):
        rnn(h=h.double())
    # What each cell takes comes from the cell table (csrc/cell.h).
    with pytest.raises(ValueError, match="unknown cell 'elman'"):
        rnn(cell="elman")
    with pytest.raises(RuntimeError, match="c0 is not taken by rnn_tanh"):
        rnn(c0=h)
    with pytest.raises(RuntimeError, match="step_params has shape"):
        rnn(step_params=torch.randn(5))
    with pytest.raises(RuntimeError, match="step_params are needed by layer_norm_lstm"):
        rnn(cell="layer_norm_lstm", x=torch.randn(5, 2, 16), w=torch.randn(16, 4), c0=h)
    with pytest.raises(RuntimeError, match="rnn_tanh does not project h"):
        rnn(w_hr=torch.randn(4, 4))
    with pytest.raises(RuntimeError, match="c0 is needed by lstm"):
        rnn(cell="lstm", x=torch.randn(5, 2, 16), w=torch.randn(16, 4))
    with pytest.raises(RuntimeError, match="needs the forward's workspace"):
        ops.time_loop_backward("gru", torch.randn(5, 2, 4), h, None, torch.randn(12, 4), None, None,
                               [], None, False)
    with pytest.raises(RuntimeError, match="gates has shape"):
        ops.time_loop_backward("gru", torch.randn(5, 2, 4), h, None, torch.randn(12, 4), None, None,
                               [torch.randn(5, 2, 12), torch.randn(5, 2, 4)], None, False)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTM(3, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = fusedrnn.GRU(16, 6)
        self.rnn = fusedrnn.RNN(6, 5, nonlinearity="relu")
        self.cell = fusedrnn.LSTMCell(5, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y.transpose(0, 1))
        y, h = self.rnn(y)
        hc, _ = self.cell(y[-1])
        return self.head(hc).sum() + h.sum()


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    model = _Model().to(device)
    x = torch.randn(2, 7, 3, device=device)
    eager_loss = model(x)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.allclose(loss, eager_loss, atol=1e-5)
    for a, b in zip(grads, eager_grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("disable", [
    ("FUSEDRNN_DISABLE_PACKED_GEMM",),
    ("FUSEDRNN_DISABLE_PACKED_GEMM", "FUSEDRNN_DISABLE_DIRECT_BLAS"),
])
def test_gemm_fallback_paths_match(disable):
    """The per-step GEMM's fallbacks: without the packed kernel (MKL/BLAS straight), and with
    neither (at::mm). (The packed kernel's AVX2 form: test_cpu_kernels.py.)"""
    code = (
        "import sys; sys.path.insert(0, 'tests');"
        "import torch; from helpers import Case, check_case;"
        "[check_case(Case(c, num_layers=2, bidirectional=True, input_kind='packed_unsorted'), d)"
        " for c in ['rnn_tanh', 'gru', 'lstm_proj'] for d in (torch.float64, torch.float32)]"
    )
    env = dict(os.environ, **{name: "1" for name in disable})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


def test_module_to_and_functional_call():
    """Weights swapped by torch.func.functional_call are the ones used (no stale flat weights)."""
    ref, fused = make_pair(Case("lstm", num_layers=2))
    params = {k: torch.randn_like(v) for k, v in fused.named_parameters()}
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    out_f = torch.func.functional_call(fused, params, (x,))[0]
    out_r = torch.func.functional_call(ref, params, (x,))[0]
    assert torch.allclose(out_f, out_r, atol=1e-10)


def test_op_rejects_projection_not_smaller_than_hidden():
    """proj_size must be < hidden_size (torch.nn's rule); the ops enforce it too."""
    T, B, H, P = 3, 2, 4, 5
    with pytest.raises(RuntimeError, match="fewer than H = 4"):
        torch.ops.fusedrnn.time_loop_forward("lstm", torch.randn(T, B, 4 * H), torch.randn(B, P),
                                             torch.randn(B, H), torch.randn(4 * H, P), None,
                                             torch.randn(P, H), None, False, False)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_functional_call_with_other_dtype_weights(name):
    """torch.nn's input check reads _flat_weights: weights swapped in with another dtype must be
    the ones it sees (torch.nn accepts this call)."""
    ref, fused = getattr(nn, name)(3, 4), getattr(fusedrnn, name)(3, 4)
    fused.load_state_dict(ref.state_dict())
    params = {k: v.detach().double() for k, v in ref.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out_r = torch.func.functional_call(ref, params, (x,))[0]
    out_f = torch.func.functional_call(fused, params, (x,))[0]
    assert torch.allclose(out_f, out_r, atol=1e-10)


def test_stack_op_rejects_zero_layers():
    with pytest.raises(RuntimeError, match="num_layers must be at least 1"):
        torch.ops.fusedrnn.recurrent_stack("gru", torch.randn(3, 2, 4), None, None, [], 0,
                                           False, True)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
@pytest.mark.parametrize("which", ["b_ih", "b_hh"])
def test_layer_with_one_bias(cell, which):
    """A lone bias is used, not dropped: same as both biases with the other one zero."""
    g = torch.Generator().manual_seed(0)
    G, T, B, I, H = cells.CELLS[cell].gates, 5, 2, 3, 4
    x, h0, c0 = (torch.randn(T, B, I, generator=g, dtype=torch.float64),
                 torch.randn(B, H, generator=g, dtype=torch.float64),
                 torch.randn(B, H, generator=g, dtype=torch.float64))
    w_ih, w_hh = (torch.randn(G * H, I, generator=g, dtype=torch.float64),
                  torch.randn(G * H, H, generator=g, dtype=torch.float64))
    bias, zero = torch.randn(G * H, generator=g, dtype=torch.float64), torch.zeros(G * H)
    c = c0 if cell == "lstm" else None
    lone = dict(b_ih=bias, b_hh=None) if which == "b_ih" else dict(b_ih=None, b_hh=bias)
    both = dict(b_ih=bias, b_hh=zero.double()) if which == "b_ih" else dict(b_ih=zero.double(),
                                                                               b_hh=bias)
    for steps in (x, x[:1]):  # T = 1 included (the one-step route)
        got = fusedrnn.recurrent_layer(cell, steps, h0, c, w_ih, w_hh, **lone)
        want = fusedrnn.recurrent_layer(cell, steps, h0, c, w_ih, w_hh, **both)
        assert torch.allclose(got[0], want[0], atol=1e-12)
        assert (got[2] is None) == (cell != "lstm")


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru"])
def test_one_step_layer_ignores_c0_of_cells_without_one(cell):
    """The layer ops ignore a c0 given to RNN/GRU, at T = 1 (the one-step route) as at T = 5."""
    g = torch.Generator().manual_seed(0)
    G, B, I, H = cells.CELLS[cell].gates, 2, 3, 4
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, h0, c0, w_ih, w_hh = r(5, B, I), r(B, H), r(B, H), r(G * H, I), r(G * H, H)
    for steps in (x, x[:1]):
        got = torch.ops.fusedrnn.recurrent_layer(cell, steps, h0, c0, w_ih, w_hh, None, None)
        want = torch.ops.fusedrnn.recurrent_layer(cell, steps, h0, None, w_ih, w_hh, None, None)
        assert torch.allclose(got[0], want[0], atol=1e-12)


def test_compiled_batch_size_stays_dynamic_without_hx():
    """hx=None: the zero states are built from symbolic sizes, so new batch sizes reuse the
    compiled graph."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    model = torch.compile(fusedrnn.LSTM(3, 8), dynamic=True, fullgraph=True)
    before = counters["stats"]["unique_graphs"]
    for B in (2, 5, 7):
        out, (h, c) = model(torch.randn(4, B, 3))
        assert out.shape == (4, B, 8) and h.shape == c.shape == (1, B, 8)
    assert counters["stats"]["unique_graphs"] - before == 1


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"])
def test_cpu_autocast_runs_in_the_input_dtype(name):
    """Under torch.autocast("cpu") fusedrnn computes in the input's dtype (float32 here), forward
    and backward, and matches torch.nn outside autocast (torch.nn's own CPU layers disagree under
    autocast: RNN returns bf16, GRU float32, LSTM raises)."""
    torch.manual_seed(0)
    ref, fused = getattr(nn, name)(3, 4), getattr(fusedrnn, name)(3, 4)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3) if not name.endswith("Cell") else torch.randn(2, 3)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = first(fused(x))
    got.sum().backward()  # outside the region, as autocast's docs ask
    want = first(ref(x))
    want.sum().backward()
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    for a, b in zip(fused.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)


@pytest.mark.parametrize("hx_shape", [(2, 2, 4), (2, 4)], ids=["stacked", "single"])
def test_lstm_cell_hx_as_one_tensor_raises_like_torch(hx_shape):
    x, hx = torch.randn(2, 3), torch.randn(*hx_shape)
    ref, fused = nn.LSTMCell(3, 4), fusedrnn.LSTMCell(3, 4)
    _raises_same(lambda: ref(x, hx), lambda: fused(x, hx))


def test_lstm_hx_with_three_states_raises_like_torch():
    x, h = torch.randn(5, 2, 3), torch.randn(1, 2, 4)
    ref, fused = nn.LSTM(3, 4), fusedrnn.LSTM(3, 4)
    _raises_same(lambda: ref(x, (h, h, h)), lambda: fused(x, (h, h, h)))



# ------------------------------------------------------------------- CUDA dispatch (the rule)

def test_cuda_dispatch_follows_atens_persistent_small_h_rule():
    """fusedrnn.dispatch.cudnn_persistent says where ATen runs cuDNN's persistent small-H
    kernel (aten/src/ATen/native/cudnn/RNN.cpp, get_algo): its limits per mode, forward and
    backward, and never with fp64, packed input, proj_size, an old cuDNN or GPU."""
    from fusedrnn.dispatch import cudnn_persistent

    def rule(mode, H, backward=False, dtype=torch.float32, proj=0, packed=False,
             cudnn=90100, capability=(9, 0)):
        return cudnn_persistent(mode, dtype, H, proj, packed, backward, cudnn, capability)

    for mode, fwd, bwd in (("RNN_TANH", 384, 256), ("RNN_RELU", 384, 256), ("GRU", 192, 128),
                           ("LSTM", 192, 128)):
        assert rule(mode, fwd) and not rule(mode, fwd + 1)
        assert rule(mode, bwd, backward=True) and not rule(mode, bwd + 1, backward=True)
        for dtype in (torch.float16, torch.bfloat16):
            assert rule(mode, 64, dtype=dtype)
    assert not rule("LSTM", 64, dtype=torch.float64)
    assert not rule("LSTM", 64, packed=True)
    assert not rule("LSTM", 64, proj=16)
    assert not rule("LSTM", 64, cudnn=8200) and not rule("LSTM", 64, cudnn=None)
    assert not rule("LSTM", 64, capability=(5, 2))
    assert not rule("INDRNN_TANH", 64)


def test_cuda_dispatch_never_leaves_the_cpu_path(monkeypatch):
    """Off CUDA the fused path runs whatever FUSEDRNN_CUDA_PATH says."""
    from fusedrnn.dispatch import use_cudnn
    lstm = fusedrnn.LSTM(4, 8)
    for value in ("auto", "cudnn", "fused"):
        monkeypatch.setenv("FUSEDRNN_CUDA_PATH", value)
        assert not use_cudnn(lstm, torch.randn(3, 2, 4), packed=False, needs_grad=True)
        assert not lstm._runs_cudnn(torch.randn(3, 2, 4))


# (module, constructor kwargs, input shape, hx shapes or None): the calls the modules' short
# path (_plain_forward) takes, incl. batch_first, two bidirectional layers, proj_size, hx None.
PLAIN_CALLS = [
    ("LSTM", dict(input_size=5, hidden_size=7), (1, 3, 5), [(1, 3, 7), (1, 3, 7)]),
    ("LSTM", dict(input_size=5, hidden_size=7, proj_size=4, num_layers=2, bidirectional=True),
     (6, 3, 5), [(4, 3, 4), (4, 3, 7)]),
    ("GRU", dict(input_size=5, hidden_size=7, batch_first=True), (3, 6, 5), [(1, 3, 7)]),
    ("RNN", dict(input_size=5, hidden_size=7, nonlinearity="relu", num_layers=2), (4, 2, 5),
     None),
    ("LSTMCell", dict(input_size=5, hidden_size=7), (3, 5), [(3, 7), (3, 7)]),
    ("GRUCell", dict(input_size=5, hidden_size=7, bias=False), (3, 5), [(3, 7)]),
    ("RNNCell", dict(input_size=5, hidden_size=7), (2, 5), [(2, 7)]),
    # one step of one layer (a decoder's call per token): the layer_step op
    ("GRU", dict(input_size=5, hidden_size=7, batch_first=True, bias=False), (3, 1, 5),
     [(1, 3, 7)]),
    ("RNN", dict(input_size=5, hidden_size=7), (1, 2, 5), [(1, 2, 7)]),
    # one step of two layers, and of LSTM with proj_size: the stack op
    ("GRU", dict(input_size=5, hidden_size=7, num_layers=2), (1, 3, 5), [(2, 3, 7)]),
    ("LSTM", dict(input_size=5, hidden_size=7, proj_size=4), (1, 3, 5), [(1, 3, 4), (1, 3, 7)]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kw,x_shape,hx_shapes", PLAIN_CALLS)
def test_plain_calls_take_the_short_path_and_match_torch(name, kw, x_shape, hx_shapes, dtype,
                                                         monkeypatch):
    """A common call (plain CPU tensors of the right shapes and dtype) runs the modules' short
    path, never the full one (made to fail here), and returns what torch.nn returns."""
    torch.manual_seed(0)
    fused = getattr(fusedrnn, name)(**kw).to(dtype)
    ref = getattr(nn, name)(**kw).to(dtype)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(x_shape, dtype=dtype)
    states = None if hx_shapes is None else [torch.randn(s, dtype=dtype) for s in hx_shapes]
    hx = None if states is None else states[0] if len(states) == 1 else tuple(states)

    def full_path(*args, **kwargs):
        raise AssertionError("the full forward path ran")

    for attr in ("_forward", "_prepare", "_cuda_path"):
        if hasattr(fused, attr):
            monkeypatch.setattr(fused, attr, full_path)
    with torch.no_grad():
        got, expected = fused(x, hx), ref(x, hx)
    flat = lambda r: [t for item in (r if isinstance(r, tuple) else (r,))  # noqa: E731
                      for t in (item if isinstance(item, tuple) else (item,))]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for g, e in zip(flat(got), flat(expected), strict=True):
        torch.testing.assert_close(g, e, **tol)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_one_step_of_one_layer_calls_the_layer_step_op(name, monkeypatch):
    """A module call of one step on one layer and direction with a state (a decoder's call per
    token) runs the layer_step op, not the stack op; without a state, the stack op (which makes
    the zero state)."""
    from fusedrnn import modules
    fused = getattr(fusedrnn, name)(5, 7)
    x, h = torch.randn(1, 3, 5), torch.randn(1, 3, 7)
    hx = (h, h.clone()) if name == "LSTM" else h
    calls = []
    for attr in ("_layer_step", "_recurrent_stack_op"):
        op = getattr(modules, attr)
        monkeypatch.setattr(modules, attr,
                            lambda *args, op=op, attr=attr: calls.append(attr) or op(*args))
    with torch.no_grad():
        fused(x, hx)
        fused(x)
        fused(torch.randn(2, 3, 5), hx)
    assert calls == ["_layer_step", "_recurrent_stack_op", "_recurrent_stack_op"]


@pytest.mark.parametrize("call", ["wrong hx dtype", "hx list", "unbatched", "int input"])
@pytest.mark.parametrize("name", ["LSTM", "GRUCell"])
def test_uncommon_calls_leave_the_short_path(name, call):
    """What the short path does not take goes the full way: torch.nn's result or error."""
    torch.manual_seed(0)
    layer = not name.endswith("Cell")
    fused = getattr(fusedrnn, name)(5, 7)
    ref = getattr(nn, name)(5, 7)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn((1, 3, 5) if layer else (3, 5))
    h = torch.randn((1, 3, 7) if layer else (3, 7))
    hx = (h, h.clone()) if name == "LSTM" else h
    if call == "wrong hx dtype":
        hx = (h.double(), h.double()) if name == "LSTM" else h.double()
    elif call == "hx list":
        hx = list(hx) if name == "LSTM" else [h]
    elif call == "unbatched":
        x, hx = x[0] if layer else x[0], (h[:, 0], h[:, 0]) if name == "LSTM" else h[0]
    else:
        x = x.long()
    outcomes = []
    for module in (fused, ref):
        try:
            with torch.no_grad():
                outcomes.append(module(x, hx))
        except Exception as error:  # noqa: BLE001 (compared below)
            outcomes.append((type(error), str(error)))
    if isinstance(outcomes[1], tuple) and isinstance(outcomes[1][0], type):
        assert outcomes[0][0] is outcomes[1][0]
        if (name, call) != ("LSTM", "wrong hx dtype"):  # (torch.nn's message there: oneDNN's)
            assert outcomes[0][1] == outcomes[1][1]
    else:
        torch.testing.assert_close(outcomes[0], outcomes[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kw,batch,needs_grad,expected", [
    ("LSTM", dict(hidden_size=128), 1, False, True),      # H >= 128
    ("LSTM", dict(hidden_size=64), 16, False, True),      # B*H >= 1024
    ("LSTM", dict(hidden_size=64), 8, True, False),       # fused ahead
    ("LSTM", dict(hidden_size=256, proj_size=64), 64, False, False),  # torch.nn's proj: slower
    ("GRU", dict(hidden_size=512), 64, False, True),      # B*H >= 32768
    ("GRU", dict(hidden_size=512), 32, False, False),
    ("GRU", dict(hidden_size=512), 32, True, True),       # training from 16384
    ("RNN", dict(hidden_size=512), 32, True, False),
])
def test_cpu_bfloat16_dispatch_rule(name, kw, batch, needs_grad, expected, monkeypatch):
    """Where a bfloat16 CPU call runs torch.nn's own forward (CPUs with native bf16 dot
    products), and that nothing else does: float32, CPUs without them, the override."""
    from fusedrnn import dispatch
    module = getattr(fusedrnn, name)(input_size=8, **kw)
    monkeypatch.delenv("FUSEDRNN_CPU_BF16_PATH", raising=False)
    monkeypatch.setattr(dispatch, "_native_bf16", lambda: True)
    assert dispatch.cpu_runs_torch(module, torch.bfloat16, batch, needs_grad) == expected
    assert not dispatch.cpu_runs_torch(module, torch.float32, batch, needs_grad)
    assert not dispatch.cpu_runs_torch(module, torch.float16, batch, needs_grad)
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_PATH", "fused")
    assert not dispatch.cpu_runs_torch(module, torch.bfloat16, batch, needs_grad)
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_PATH", "torch")
    assert dispatch.cpu_runs_torch(module, torch.bfloat16, batch, needs_grad) == (
        "proj_size" not in kw)
    if "proj_size" not in kw:  # (an LSTM with proj_size never reads the setting)
        monkeypatch.setenv("FUSEDRNN_CPU_BF16_PATH", "fast")
        with pytest.raises(ValueError, match="FUSEDRNN_CPU_BF16_PATH"):
            dispatch.cpu_runs_torch(module, torch.bfloat16, batch, needs_grad)
    monkeypatch.delenv("FUSEDRNN_CPU_BF16_PATH")
    monkeypatch.setattr(dispatch, "_native_bf16", lambda: False)
    assert not dispatch.cpu_runs_torch(module, torch.bfloat16, batch, needs_grad)


@pytest.mark.parametrize("packed", [False, True])
def test_cpu_bfloat16_layer_runs_torch_where_the_rule_says(packed, monkeypatch):
    """A bfloat16 LSTM the rule sends to torch.nn returns exactly torch.nn's results (its own
    forward ran: the fused one is made to fail), gradients included; with the override, the
    fused path runs again."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from fusedrnn import dispatch
    monkeypatch.setattr(dispatch, "_native_bf16", lambda: True)
    monkeypatch.delenv("FUSEDRNN_CPU_BF16_PATH", raising=False)
    torch.manual_seed(0)
    fused = fusedrnn.LSTM(6, 128).bfloat16()
    ref = nn.LSTM(6, 128).bfloat16()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(5, 3, 6, dtype=torch.bfloat16, requires_grad=True)
    make_input = (lambda t: pack_padded_sequence(t, torch.tensor([5, 4, 2]))) if packed else \
        (lambda t: t)

    def fused_path(*args, **kwargs):
        raise AssertionError("the fused path ran")

    monkeypatch.setattr(fused, "_forward", fused_path)
    out, (h, c) = fused(make_input(x))
    out_ref, (h_ref, c_ref) = ref(make_input(x))
    data = (lambda o: o.data) if packed else (lambda o: o)
    for got, expected in ((data(out), data(out_ref)), (h, h_ref), (c, c_ref)):
        assert torch.equal(got, expected)
    grads = torch.autograd.grad(data(out).float().sum(), [x, *fused.parameters()])
    grads_ref = torch.autograd.grad(data(out_ref).float().sum(), [x, *ref.parameters()])
    for got, expected in zip(grads, grads_ref, strict=True):
        assert torch.equal(got, expected)
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_PATH", "fused")
    with pytest.raises(AssertionError, match="the fused path ran"):
        fused(make_input(x))


@pytest.mark.parametrize("name,hidden,expected", [
    ("LSTMCell", 64, False), ("GRUCell", 64, False), ("RNNCell", 64, True),
    ("LSTMCell", 128, True), ("GRUCell", 256, True),
])
def test_cpu_bfloat16_cell_dispatch(name, hidden, expected, monkeypatch):
    """The cells' rule (fusedrnn.dispatch.cpu_cell_runs_torch), and a cell it sends to torch.nn
    returning exactly torch.nn's step; float32 and CPUs without native bf16 stay fused."""
    from fusedrnn import dispatch
    monkeypatch.delenv("FUSEDRNN_CPU_BF16_PATH", raising=False)
    monkeypatch.setattr(dispatch, "_native_bf16", lambda: True)
    torch.manual_seed(0)
    fused = getattr(fusedrnn, name)(6, hidden).bfloat16()
    ref = getattr(nn, name)(6, hidden).bfloat16()
    ref.load_state_dict(fused.state_dict())
    assert dispatch.cpu_cell_runs_torch(fused, torch.bfloat16) == expected
    assert not dispatch.cpu_cell_runs_torch(fused, torch.float32)
    x = torch.randn(3, 6, dtype=torch.bfloat16)
    with torch.no_grad():
        got, want = fused(x), ref(x)
    flat = lambda r: r if isinstance(r, tuple) else (r,)  # noqa: E731
    for g, w in zip(flat(got), flat(want), strict=True):
        if expected:  # torch.nn's own step ran: its bits
            assert torch.equal(g, w)
        torch.testing.assert_close(g.float(), w.float(), rtol=0.05, atol=0.05)
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_PATH", "torch")
    assert dispatch.cpu_cell_runs_torch(fused, torch.bfloat16)
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_PATH", "fused")
    assert not dispatch.cpu_cell_runs_torch(fused, torch.bfloat16)
    monkeypatch.delenv("FUSEDRNN_CPU_BF16_PATH")
    monkeypatch.setattr(dispatch, "_native_bf16", lambda: False)
    assert not dispatch.cpu_cell_runs_torch(fused, torch.bfloat16)


@pytest.mark.parametrize("case", ["float32 hx", "autocast"])
def test_cpu_bfloat16_dispatch_leaves_mixed_dtypes_to_the_fused_path(case, monkeypatch):
    """Mixed dtypes (bf16 input, float32 states) and CPU autocast keep the fused path whatever the
    size: torch.nn's results and errors there differ, and must not change with the layer's."""
    from fusedrnn import dispatch
    monkeypatch.setattr(dispatch, "_native_bf16", lambda: True)
    monkeypatch.delenv("FUSEDRNN_CPU_BF16_PATH", raising=False)
    for module in (fusedrnn.LSTM(6, 128), fusedrnn.GRUCell(6, 128)):
        layer = isinstance(module, nn.RNNBase)
        x = torch.randn((5, 3, 6) if layer else (3, 6))
        h = torch.zeros((1, 3, 128) if layer else (3, 128))
        hx = (h, h) if layer else h
        if case == "float32 hx":
            module = module.bfloat16()
            x = x.bfloat16()
        else:
            x = x.bfloat16()
            hx = None
        with torch.autocast("cpu", enabled=case == "autocast"):
            assert not module._cpu_runs_torch(x, hx)
