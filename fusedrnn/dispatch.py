"""Which implementation a module's call runs on CUDA: torch.nn's own cuDNN call (the same numbers
contract: torch.nn is what the fused path is checked against), or fusedrnn's fused kernels, and
of those the per-step loop (a GEMM and a pointwise kernel per step) or the persistent loop (one
launch for every step; csrc/cuda/time_loops.h).

A table measured on the GPU present decides first: `fusedrnn tune` (fusedrnn/tune.py) times
the candidates per configuration and stores the winners per GPU model in a cache file
(FUSEDRNN_TUNE_CACHE, default ~/.cache/fusedrnn/cuda_paths.json). A call takes the winner of
the nearest measured configuration of the same cell, dtype, pass and direction count, within a
factor of 2 in T, B and H (an LSTM with proj_size: tune's "lstm_proj" entries); packed input is
never measured there.

Without a measured entry, the rule: torch.nn's cuDNN wherever ATen would run cuDNN's persistent
algorithm (one launch for the whole sequence, CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H: ATen's
get_algo in aten/src/ATen/native/cudnn/RNN.cpp), which the per-step path, two launches a step,
cannot beat; the fused kernels' default loop everywhere else (packed input, proj_size, fp64,
larger H), where cuDNN falls back to its standard algorithm too.

FUSEDRNN_CUDA_PATH overrides both: "fused" (the fused kernels' default loop: the test suite's
setting, its CUDA cases are there to check the fused kernels), "per_step", "persistent",
"cudnn" (torch.nn's call wherever it has the cell), "auto" (the table, then the rule).

On the CPU one choice only: in bfloat16, on CPUs with native bf16 dot products, the sizes where
torch.nn's own bf16 kernels beat the fused ones (which compute half types in float32) run
torch.nn's forward (cpu_runs_torch, cpu_cell_runs_torch below; FUSEDRNN_CPU_BF16_PATH).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import torch

from .cells import TORCH_NN_CELLS

# cuDNN's small-H persistent kernel (cuDNN >= 8.2.1, compute capability >= 6.0): the largest
# hidden size per mode, forward and backward, as ATen's use_rnn_persist_small_h.
_SMALL_H_LIMITS = {  # mode: (forward, backward)
    "RNN_TANH": (384, 256), "RNN_RELU": (384, 256), "GRU": (192, 128), "LSTM": (192, 128),
}
_MIN_CUDNN = 8201

# The fused ops' cuda_loop argument per path (csrc/time_loop_op.h: CudaLoop).
CUDA_LOOP = {"fused": 0, "per_step": 1, "persistent": 2}
PATHS = ("cudnn", *CUDA_LOOP)
CACHE_ENV = "FUSEDRNN_TUNE_CACHE"
# A measured entry decides for calls within this factor of it in each of T, B and H.
NEAREST_FACTOR = 2.0


def cudnn_persistent(mode: str, dtype: torch.dtype, hidden_size: int, proj_size: int,
                     packed: bool, backward: bool, cudnn_version: int | None,
                     capability: tuple[int, int]) -> bool:
    """Whether ATen runs cuDNN's persistent small-H algorithm for this call (forward, or its
    backward too where `backward`)."""
    if mode not in _SMALL_H_LIMITS or proj_size or packed or dtype == torch.float64:
        return False
    if cudnn_version is None or cudnn_version < _MIN_CUDNN or capability[0] < 6:
        return False
    forward_limit, backward_limit = _SMALL_H_LIMITS[mode]
    return hidden_size <= (backward_limit if backward else forward_limit)


# ----------------------------------------------------------------------------- the tuned table

@dataclasses.dataclass(frozen=True)
class CallKey:
    """What the table is keyed by: a module call's configuration."""
    cell: str  # fusedrnn.cells.CELLS name
    dtype: str  # torch dtype name, "float32"
    training: bool  # forward+backward (the forward saves for a backward)
    bidirectional: bool
    T: int
    B: int
    H: int

    def distance(self, entry: dict) -> float | None:
        """log2 distance to a measured entry, or None where it does not decide for this call."""
        if (entry["cell"], entry["dtype"], entry["training"], entry["bidirectional"]) != (
                self.cell, self.dtype, self.training, self.bidirectional):
            return None
        ratios = [abs(math.log2(max(mine, 1) / max(entry[name], 1)))
                  for name, mine in (("T", self.T), ("B", self.B), ("H", self.H))]
        if max(ratios) > math.log2(NEAREST_FACTOR):
            return None
        return sum(ratios)


def tuned_path(key: CallKey, entries: list[dict]) -> str | None:
    """The winner of the nearest measured entry that decides for `key`, or None."""
    deciding = [(d, e) for e in entries if (d := key.distance(e)) is not None]
    return min(deciding, key=lambda de: de[0])[1]["winner"] if deciding else None


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fusedrnn" / "cuda_paths.json"


def read_cache(path: Path) -> dict:
    """The cache file's contents ({"gpus": {gpu name: {"entries": [...], ...}}}); empty where the
    file is missing. A file that is not the cache's JSON raises: a table silently ignored would
    make every call fall back to the rule."""
    if not path.exists():
        return {"gpus": {}}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), dict):
        raise ValueError(f"fusedrnn: {path} is not a fusedrnn tune cache (no 'gpus' table)")
    return data


@functools.lru_cache(maxsize=None)
def _entries(path: str, gpu: str) -> tuple[dict, ...]:
    return tuple(read_cache(Path(path))["gpus"].get(gpu, {}).get("entries", []))


def table_for(gpu: str) -> tuple[dict, ...]:
    """The measured entries of this GPU model in the cache file (read once per process;
    reload() after writing it)."""
    return _entries(str(cache_path()), gpu)


def reload() -> None:
    _entries.cache_clear()


# ----------------------------------------------------------------------------- the choice

_forced: list[str] = []  # forcing() stack, innermost last


@contextlib.contextmanager
def forcing(path: str):
    """Every call in the block takes `path` (fusedrnn tune times each candidate this way)."""
    if path not in PATHS:
        raise ValueError(f"fusedrnn: unknown CUDA path {path!r}; expected one of {PATHS}")
    _forced.append(path)
    try:
        yield
    finally:
        _forced.pop()


def _requested() -> str:
    if _forced:
        return _forced[-1]
    choice = os.environ.get("FUSEDRNN_CUDA_PATH", "auto")
    if choice not in (*PATHS, "auto"):
        raise ValueError(f"fusedrnn: FUSEDRNN_CUDA_PATH={choice!r}; expected one of "
                         f"{(*PATHS, 'auto')}")
    return choice


def cuda_path(module, x: torch.Tensor, packed: bool, needs_grad: bool) -> str:
    """The path (one of PATHS) a call of `module` (a fused layer module) on input x takes; off
    CUDA always "fused" (the CPU has one fused path)."""
    if not x.is_cuda:
        return "fused"
    cell = module._cell_name()
    has_cudnn = module._reference_step is None and torch.backends.cudnn.enabled
    choice = _requested()
    if choice == "auto":
        choice = None
        if not packed:
            # x: (T, B, I), (B, T, I) batch_first, or (T, I) unbatched
            T, B = (x.size(0), 1) if x.dim() == 2 else \
                (x.size(1), x.size(0)) if module.batch_first else (x.size(0), x.size(1))
            # (an LSTM with proj_size is bench's and tune's "lstm_proj" configuration)
            measured_as = "lstm_proj" if getattr(module, "proj_size", 0) else cell
            key = CallKey(measured_as, str(x.dtype).removeprefix("torch."), needs_grad,
                          module.bidirectional, T, B, module.hidden_size)
            choice = tuned_path(key, list(table_for(torch.cuda.get_device_name(x.device))))
        if choice is None:
            rule_says_cudnn = cudnn_persistent(
                module.mode, x.dtype, module.hidden_size, module.proj_size, packed, needs_grad,
                torch.backends.cudnn.version(), torch.cuda.get_device_capability(x.device))
            choice = "cudnn" if rule_says_cudnn else "fused"
    return "fused" if choice == "cudnn" and not has_cudnn else choice


# ------------------------------------------------------------------------ CPU, bfloat16

# Where torch.nn's own bfloat16 layers beat the fused ones on a CPU with native bf16 dot products
# (the fused CPU kernels compute half types in float32; torch.nn's LSTM runs oneDNN's bf16 RNN
# primitive, its GRU and RNN bf16 GEMMs). Measured on the project's Zen 5 (AVX512-BF16, 2 threads,
# T=100 I=64 unless said; bench/results/cpu-epyc-zen5-2026-12-05-bf16-*), fused / torch.nn:
# LSTM from B*H = 1024 or H = 128 up (B=16 H=64 0.99x forward / 0.88x training, B=32 H=32
# 1.05x / 0.96x, B=64 H=64 0.69x / 0.55x, B=8 H=512 0.59x; fused ahead at B*H = 512: B=8 H=64
# 1.17x, B=16 H=32 1.52x, and T=300 B=1 H=32 4.0x); GRU and RNN from B*H = 32768 up (B=64 H=512
# T=100 I=512: 0.67-0.82x forward; B=8 H=512 2.4-2.9x), GRU training from B*H = 16384 (B=32
# H=512: 0.84x; forward 1.46x there).
_BF16_LSTM_MIN_BATCH_HIDDEN = 1024
_BF16_LSTM_MIN_HIDDEN = 128
_BF16_MIN_BATCH_HIDDEN = 32768
_BF16_GRU_TRAINING_MIN_BATCH_HIDDEN = 16384


def _native_bf16() -> bool:
    """Native bf16 dot products here, and oneDNN in torch and enabled (torch.nn's bf16 LSTM
    runs it; without it torch.nn's bf16 layers take its slower generic kernels)."""
    return _cpu_has_native_bf16() and torch.backends.mkldnn.is_available() and \
        torch.backends.mkldnn.enabled


@functools.cache
def _cpu_has_native_bf16() -> bool:
    return torch.ops.fusedrnn_probes.native_bf16()


def _bf16_forced(dtype: torch.dtype, cell_name: str) -> bool | None:
    """For the CPU bfloat16 choice of a call: False where torch.nn's path is not a candidate
    (another dtype, a cell torch.nn lacks, no native bf16); FUSEDRNN_CPU_BF16_PATH's answer
    where it forces one (fused: False, torch: True); None where the measured rule decides."""
    if dtype != torch.bfloat16 or cell_name not in TORCH_NN_CELLS or not _native_bf16():
        return False
    choice = os.environ.get("FUSEDRNN_CPU_BF16_PATH", "auto")
    if choice not in ("auto", "fused", "torch"):
        raise ValueError(f"fusedrnn: FUSEDRNN_CPU_BF16_PATH={choice!r}; expected one of "
                         "('auto', 'fused', 'torch')")
    return None if choice == "auto" else choice == "torch"


def cpu_runs_torch(module, dtype: torch.dtype, batch: int, needs_grad: bool) -> bool:
    """Whether a CPU call of `module` (a fused layer module) on a batch of `batch` sequences runs
    torch.nn's own forward: bfloat16 on a CPU with native bf16 dot products, a cell torch.nn has
    (no proj_size), at the sizes above. FUSEDRNN_CPU_BF16_PATH=fused keeps the fused path
    everywhere, =torch takes torch.nn's wherever it applies."""
    if not isinstance(module, torch.nn.RNNBase) or module.proj_size:
        return False
    forced = _bf16_forced(dtype, module._cell_name())
    if forced is not None:
        return forced
    H = module.hidden_size
    if module.mode == "LSTM":
        return H >= _BF16_LSTM_MIN_HIDDEN or batch * H >= _BF16_LSTM_MIN_BATCH_HIDDEN
    least = _BF16_GRU_TRAINING_MIN_BATCH_HIDDEN if needs_grad and module.mode == "GRU" else \
        _BF16_MIN_BATCH_HIDDEN
    return batch * H >= least


# The cells (RNNCell, GRUCell, LSTMCell) in bfloat16 there, one step a call (T=20 I=64, B 1-32,
# H 64-512; bench/results/cpu-epyc-zen5-2026-12-05-bf16-cells.json), fused / torch.nn forward:
# from H = 256 up 0.35-1.01x; RNNCell 0.41-0.98x at H = 64; GRU/LSTM at H = 64 0.86-1.26x.
_BF16_CELL_MIN_HIDDEN = 128


def cpu_cell_runs_torch(cell, dtype: torch.dtype) -> bool:
    """The same for a fused cell module (RNNCell, GRUCell, LSTMCell): torch.nn's cell forward in
    bfloat16 on a CPU with native bf16 dot products, for RNNCell and from H = 128 up."""
    forced = _bf16_forced(dtype, cell._cell_name())
    if forced is not None:
        return forced
    return cell._cell_name().startswith("rnn") or cell.hidden_size >= _BF16_CELL_MIN_HIDDEN


def persistent_launches() -> int:
    """Persistent loops the CUDA ops have launched in this process (0 without CUDA kernels)."""
    counter = getattr(torch.ops.fusedrnn, "persistent_launches", None)
    return counter() if counter is not None else 0


def use_cudnn(module, x: torch.Tensor, packed: bool, needs_grad: bool) -> bool:
    """Whether `module` runs torch.nn's cuDNN call for input x (on CUDA; never elsewhere)."""
    return cuda_path(module, x, packed, needs_grad) == "cudnn"
