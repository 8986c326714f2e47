"""Test-only build of the CUDA path under SIMT emulation (never part of the wheel).

The sources in csrc/emulation/*.cpp compile csrc/cuda's kernels and time loops with the host
compiler and FUSEDRNN_SIMT_EMULATION (csrc/emulation/simt.h: every CUDA thread a fiber, blocks
with their barriers, warps with their shuffles, cooperative grids), and register them on CPU
tensors as torch.ops.fusedrnn_emulated.* (same schemas as torch.ops.fusedrnn's time-loop ops)
plus the emulator's own self-test kernels. Built once with ninja into build/emulation and reused
while the sources are unchanged.
"""
from __future__ import annotations

import functools
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_DIR = os.path.join(ROOT, "build", "emulation")


@functools.lru_cache(maxsize=None)
def load():
    """Builds (if needed) and loads the emulation library; returns torch.ops.fusedrnn_emulated."""
    import torch
    from torch.utils import cpp_extension

    import fusedrnn  # noqa: F401  (the real ops, which the tests compare against)

    os.makedirs(BUILD_DIR, exist_ok=True)
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "emulation", "*.cpp")))
    cpp_extension.load(
        name="fusedrnn_emulation",
        sources=sources,
        extra_include_paths=[os.path.join(ROOT, "csrc")],
        # A grid cap of 2 blocks for the step kernels and 8 threads for a row kernel's block: at
        # test sizes their grid-stride loops, over elements, rows and a row's units, then take
        # more than one turn (csrc/cuda/step_kernels.cu).
        extra_cflags=["-O2", "-std=c++20", "-fvisibility=hidden", "-DFUSEDRNN_SIMT_EMULATION",
                      "-DFUSEDRNN_STEP_MAX_BLOCKS=2", "-DFUSEDRNN_ROW_THREADS=8", "-Wall",
                      "-Wextra", "-Wno-unused-parameter"],
        build_directory=BUILD_DIR,
        is_python_module=False,
        verbose=os.environ.get("FUSEDRNN_EMULATION_VERBOSE") == "1",
    )
    return torch.ops.fusedrnn_emulated
