"""The inference engines users pick instead, for `fusedrnn bench --peers`: ONNX Runtime and
OpenVINO, each running the ONNX RNN/GRU/LSTM operators of a model built here from the torch.nn
module's own weights (gate orders converted), on the same input as the fused and torch.nn calls.

Optional: `pip install onnx onnxruntime openvino` (or the `peers` extra). Layers of torch.nn's
cells (RNN tanh/relu, GRU, LSTM without proj_size), any layer count and direction; float32, and
bfloat16 where an engine has a low-precision mode for these operators (LOW_PRECISION).
"""
from __future__ import annotations

import copy
import os
import tempfile

import numpy as np
import torch
from torch import nn

from .cells import TORCH_NN_CELLS

PEERS = {"ort": "ONNX Runtime", "openvino": "OpenVINO"}
ONNX_CELLS = TORCH_NN_CELLS  # ONNX's RNN/GRU/LSTM operators are torch.nn's cells
_OPSET = 17

# torch's gate blocks in the ONNX operator's order: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
_GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}

# Each engine's low-precision mode for the RNN/GRU/LSTM operators on the CPU, run against
# fusedrnn's bfloat16 (the model's weights the bf16 module's, exactly; float32 in and out, as
# the engine's user feeds it): OpenVINO's bf16 inference precision (its CPU plugin computes in
# bf16 where the CPU has bf16 units, AVX512-BF16 or AMX, else in f32). ONNX Runtime's CPU
# kernels for these operators are float32 only; its int8 dynamic quantization (LSTM only)
# is another number format, not compared here.
LOW_PRECISION = {"openvino": "bf16"}


def missing(peers: list[str]) -> list[str]:
    """The Python packages the given peers need and this environment lacks."""
    need = {"onnx"} | {"onnxruntime" if p == "ort" else "openvino" for p in peers}
    absent = []
    for package in sorted(need):
        try:
            __import__(package)
        except ImportError:
            absent.append(package)
    return absent


def versions(names: list[str]) -> str:
    """The peers' package versions, e.g. "ONNX Runtime 1.32.0, OpenVINO 2026.4.1"."""
    described = []
    for name in names:
        module = __import__("onnxruntime" if name == "ort" else "openvino")
        described.append(f"{PEERS[name]} {module.__version__.split('-')[0]}")
    return ", ".join(described)


def _reorder(t: torch.Tensor, op: str, hidden: int) -> np.ndarray:
    """A weight or bias with G gate blocks of `hidden` rows in torch's order -> ONNX's."""
    blocks = t.detach().float().reshape(len(_GATE_ORDER[op]), hidden, *t.shape[1:])
    return blocks[_GATE_ORDER[op]].reshape(t.shape).numpy()


def onnx_model(module: nn.RNNBase) -> bytes:
    """The module as ONNX operators, one per layer, inputs X (T, B, I), initial_h (L*D, B, H)
    [, initial_c], outputs Y (T, B, D*H), Y_h (L*D, B, H) [, Y_c]: torch.nn's layout, T and B
    symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if module.proj_size:
        raise ValueError("ONNX's LSTM operator has no projection (proj_size)")
    op = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "GRU": "GRU", "LSTM": "LSTM"}[module.mode]
    H, D, L = module.hidden_size, 2 if module.bidirectional else 1, module.num_layers
    lstm = op == "LSTM"
    nodes, inits = [], []
    const = lambda name, array: inits.append(numpy_helper.from_array(array, name))  # noqa: E731
    const("y_shape", np.array([0, 0, -1], dtype=np.int64))
    layer_input, h_n, c_n = "X", [], []
    for layer in range(L):
        W, R, B = [], [], []
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            weight = lambda name: getattr(module, name + suffix)  # noqa: E731
            W.append(_reorder(weight("weight_ih"), op, H))
            R.append(_reorder(weight("weight_hh"), op, H))
            if module.bias:
                B.append(np.concatenate([_reorder(weight("bias_ih"), op, H),
                                         _reorder(weight("bias_hh"), op, H)]))
            else:
                B.append(np.zeros(2 * len(_GATE_ORDER[op]) * H, dtype=np.float32))
        p = f"l{layer}_"
        const(p + "W", np.stack(W))
        const(p + "R", np.stack(R))
        const(p + "B", np.stack(B))
        const(p + "start", np.array([layer * D], dtype=np.int64))
        const(p + "end", np.array([(layer + 1) * D], dtype=np.int64))
        states = [p + "h0"] + ([p + "c0"] if lstm else [])
        for state, source in zip(states, ["initial_h", "initial_c"]):
            nodes.append(helper.make_node("Slice", [source, p + "start", p + "end"], [state]))
        attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if op == "GRU":
            attrs["linear_before_reset"] = 1  # torch's n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        if op == "RNN":
            attrs["activations"] = ["Tanh" if module.mode == "RNN_TANH" else "Relu"] * D
        outputs = [p + "Y", p + "Yh"] + ([p + "Yc"] if lstm else [])
        nodes.append(helper.make_node(op, [layer_input, p + "W", p + "R", p + "B", "", *states],
                                      outputs, **attrs))
        # Y (T, D, B, H) -> (T, B, D*H)
        nodes.append(helper.make_node("Transpose", [p + "Y"], [p + "Yt"], perm=[0, 2, 1, 3]))
        layer_input = "Y" if layer == L - 1 else p + "out"
        nodes.append(helper.make_node("Reshape", [p + "Yt", "y_shape"], [layer_input]))
        h_n.append(p + "Yh")
        c_n.append(p + "Yc")
    nodes.append(helper.make_node("Concat", h_n, ["Y_h"], axis=0))
    if lstm:
        nodes.append(helper.make_node("Concat", c_n, ["Y_c"], axis=0))
    f32 = TensorProto.FLOAT
    state = lambda name: helper.make_tensor_value_info(name, f32, [L * D, "B", H])  # noqa: E731
    inputs = [helper.make_tensor_value_info("X", f32, ["T", "B", module.input_size]),
              state("initial_h")] + ([state("initial_c")] if lstm else [])
    outputs = [helper.make_tensor_value_info("Y", f32, ["T", "B", D * H]), state("Y_h")] + (
        [state("Y_c")] if lstm else [])
    graph = helper.make_graph(nodes, "fusedrnn_peer", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Peer:
    """One engine running onnx_model(module): call(x, h, c) -> (Y, Y_h, Y_c or None), numpy
    float32 arrays in and out (what a user of the engine passes), on `threads` threads, computing
    in `precision` ("f32", or the engine's LOW_PRECISION mode)."""

    def __init__(self, name: str, model: bytes, threads: int, lstm: bool, precision: str = "f32"):
        if precision != "f32" and LOW_PRECISION.get(name) != precision:
            raise ValueError(f"{PEERS.get(name, name)} has no {precision} mode here")
        self.name, self.lstm = name, lstm
        if name == "ort":
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            self._run = lambda feeds: session.run(None, feeds)
        elif name == "openvino":
            import openvino as ov
            with tempfile.TemporaryDirectory() as tmp:  # (read_model takes a path)
                path = os.path.join(tmp, "model.onnx")
                with open(path, "wb") as f:
                    f.write(model)
                # The precision given: on CPUs with bf16 units OpenVINO otherwise infers in bf16.
                # No thread pinning: its pinned workers held a core that the engines timed
                # after it needed (2 cores: fused LSTM stream B=1 H=256 33.8 -> 27.1 us a step
                # with OpenVINO in the process; OpenVINO's own times unchanged within noise).
                compiled = ov.Core().compile_model(
                    path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                  "INFERENCE_PRECISION_HINT": precision,
                                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
            request = compiled.create_infer_request()
            self._run = lambda feeds: list(request.infer(feeds).values())
        else:
            raise ValueError(f"unknown peer {name!r}; expected one of {list(PEERS)}")

    def __call__(self, x: np.ndarray, h: np.ndarray, c: np.ndarray | None):
        feeds = {"X": x, "initial_h": h}
        if self.lstm:
            feeds["initial_c"] = c
        results = self._run(feeds)
        return results[0], results[1], results[2] if self.lstm else None


def peers_for(module: nn.RNNBase, names: list[str], threads: int) -> dict[str, Peer]:
    model = onnx_model(module)
    return {n: Peer(n, model, threads, module.mode == "LSTM") for n in names}


# ----------------------------------------------------------------------- bench's peer columns

def _check(name: str, peer_out: np.ndarray, torch_out: torch.Tensor, out64: torch.Tensor
           ) -> str | None:
    """None where the peer's result is within verify's rule of the fp64 reference for the dtype
    torch.nn ran in (its error at most twice torch.nn's error, plus the rule's atol), else why
    not."""
    from .verification import max_abs_diff, rule_bound
    peer_err = max_abs_diff(torch.from_numpy(np.asarray(peer_out)), out64)
    bound = rule_bound(max_abs_diff(torch_out, out64), out64.abs().max().item(), torch_out.dtype)
    if peer_err <= bound:
        return None
    return f"{PEERS[name]} disagrees: error {peer_err:.3g} > {bound:.3g} (not timed)"


def bench_calls(ref: nn.RNNBase, x: torch.Tensor, names: list[str], stream: bool,
                threads: int) -> tuple[dict, dict[str, str]]:
    """The peers' calls for bench: ({name: call}, {name: why it is not timed}). Each engine runs
    the module's configuration on input x (T, B, I) from zero state: the whole sequence in one
    call, or (stream) T calls of one step, the state carried as its user would carry it. Its
    result is checked against an fp64 reference first. A bfloat16 module and x: the engines'
    low-precision modes (LOW_PRECISION), on x's values in float32; engines without one are left
    out."""
    low = x.dtype == torch.bfloat16
    rejected = {}
    if low:
        rejected = {n: "no bfloat16 mode for these operators on the CPU (float32 only)"
                    for n in names if n not in LOW_PRECISION}
        names = [n for n in names if n in LOW_PRECISION]
    L = ref.num_layers * (2 if ref.bidirectional else 1)
    B = x.size(1)
    h0 = np.zeros((L, B, ref.proj_size or ref.hidden_size), dtype=np.float32)
    c0 = np.zeros((L, B, ref.hidden_size), dtype=np.float32) if ref.mode == "LSTM" else None
    x_np = x.float().numpy()
    steps = [x_np[t:t + 1] for t in range(x_np.shape[0])]
    model = onnx_model(ref)  # (weights in float32: a bf16 module's exactly)
    with torch.no_grad():
        out, hidden = ref(x)
        out64, hidden64 = copy.deepcopy(ref).double()(x.double())
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    h_n64 = hidden64[0] if isinstance(hidden64, tuple) else hidden64
    calls = {}
    for name in names:
        peer = Peer(name, model, threads, ref.mode == "LSTM",
                    LOW_PRECISION[name] if low else "f32")
        if stream:
            def call(peer=peer):
                h, c = h0, c0
                for step in steps:
                    _, h, c = peer(step, h, c)
                return h
            problem = _check(name, call(), h_n, h_n64)
        else:
            def call(peer=peer):
                return peer(x_np, h0, c0)[0]
            problem = _check(name, call(), out, out64)
        if problem:
            rejected[name] = problem
        else:
            calls[name] = call
    return calls, rejected
