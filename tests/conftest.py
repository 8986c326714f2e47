import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
# Thread teams wherever the size rule allows one, not where this machine's timings favour them
# (csrc/cpu/team.h, TeamChoice): the tests of team loops must get a team on any machine.
# tests/test_cpu_kernels.py runs the learning itself in a fresh process without this.
os.environ.setdefault("FUSEDRNN_TEAM_CHOICE", "rule")
# On CUDA the modules run torch.nn's cuDNN call where its persistent kernel would (fusedrnn/
# dispatch.py); the tests' CUDA cases are there to check the fused kernels. (tests/test_api.py
# checks the rule itself.)
os.environ.setdefault("FUSEDRNN_CUDA_PATH", "fused")
# Likewise bfloat16 on CPUs with native bf16 dot products, where larger layers run torch.nn's
# forward (fusedrnn.dispatch.cpu_runs_torch; its own tests set what they need).
os.environ.setdefault("FUSEDRNN_CPU_BF16_PATH", "fused")
# torch.compile's on-disk caches in a directory of this run: they key compiled graphs on the op
# schemas, not on fusedrnn's build, so graphs compiled by another build of fusedrnn (a stale
# fake kernel, an op that no longer exists) would be replayed instead of traced.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusedrnn-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest
import torch


@pytest.fixture(autouse=True)
def _uninitialized_memory_is_nan():
    """torch.empty (ours in C++ included) returns NaN-filled memory in every test, so a kernel
    that leaves part of an output unwritten fails instead of passing on whatever was there."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.utils.deterministic.fill_uninitialized_memory = saved[2]
