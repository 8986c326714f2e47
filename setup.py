"""Build fusedrnn's C++ extension (fusedrnn._C). Supported torch: 2.11 to 2.14.

CPU kernels are always built. The CUDA kernels (csrc/cuda/) are built when torch is a CUDA build
and nvcc is found (CUDA_HOME), or when FORCE_CUDA=1; no visible GPU is needed. Architectures come
from TORCH_CUDA_ARCH_LIST (default "8.0;9.0"). Otherwise setup prints why it builds CPU-only.
"""
import glob
import os
import shutil
import sys
import sysconfig

from setuptools import find_packages, setup

try:
    import torch
except ImportError:
    sys.exit("fusedrnn is compiled against the installed torch: install torch first, then build "
             "with pip's --no-build-isolation, e.g.\n"
             "  pip install torch==2.13.0 ninja setuptools wheel\n"
             "  pip install --no-build-isolation -e .")


def _toolkit_with_headers():
    """Where nvcc's toolkit is, by its headers. torch takes the parent of `which nvcc`'s folder:
    a /usr/local/bin/nvcc (a link or a wrapper script into /usr/local/cuda-13.0/bin) made that
    /usr/local, which has no CUDA headers."""
    nvcc = shutil.which("nvcc")
    candidates = ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) + \
        ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates
                 if os.path.exists(os.path.join(c, "include", "cuda_runtime_api.h"))), None)


# Set before torch.utils.cpp_extension reads it (at import).
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and _toolkit_with_headers():
    os.environ["CUDA_HOME"] = _toolkit_with_headers()
from torch.utils import cpp_extension  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"
# Object files live here whichever command builds (setup.py build_ext, pip install -e with or
# without extras, pip wheel): ninja then recompiles only what changed. pip's editable builds would
# otherwise compile everything again in a fresh temporary directory each time.
BUILD_TEMP = os.path.join(
    ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")
# FUSEDRNN_DEBUG=1 keeps debug info (-g); by default none: 19 MB of it otherwise.
DEBUG = os.environ.get("FUSEDRNN_DEBUG", "0") == "1"


class PersistentBuildExtension(BuildExtension):
    """torch's BuildExtension (ninja) with its object files in BUILD_TEMP, unless the caller chose
    a folder inside the project's build/ (e.g. .ci/sanitize_cpu.sh's build/sanitize/temp)."""

    def run(self):
        if not os.path.abspath(self.build_temp).startswith(os.path.join(ROOT, "build") + os.sep):
            self.build_temp = BUILD_TEMP  # pip's editable builds: a fresh temporary folder
        super().run()


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_build_reason():
    """(build CUDA?, why) from FORCE_CUDA, torch's build and nvcc."""
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, CUDA_HOME {cpp_extension.CUDA_HOME}"


def _nvidia_wheel_includes():
    """Headers of pip-installed CUDA libraries (nvidia-cublas, -cusparse, ...: nvidia/*/include).
    torch's CUDA headers include cusparse.h & co., which a runtime-only toolkit does not ship."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "include")))


def _extension():
    # -fno-trapping-math/-fno-math-errno (as torch itself builds) let the gate loops vectorize.
    # -fopenmp: at::parallel_for is a header template; without it every "parallel" loop of ours
    # silently runs on one thread (torch's wheels use OpenMP for the intra-op pool).
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fno-trapping-math", "-fno-math-errno",
                 "-fopenmp", "-g" if DEBUG else "-g0"]
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    common = dict(name="fusedrnn._C", include_dirs=[os.path.join(ROOT, "csrc")],
                  extra_link_args=["-fopenmp"], py_limited_api=False)
    build_cuda, why = _cuda_build_reason()
    if not build_cuda:
        print(f"fusedrnn: building the CPU extension only: {why}")
        return CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **common)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    print(f"fusedrnn: building CPU + CUDA ({why}; archs {os.environ['TORCH_CUDA_ARCH_LIST']})")
    nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    # Searched after the toolkit's own headers (-idirafter): a CUDA build of torch from PyPI brings
    # a partial cuda_runtime_api.h in nvidia/cu13/include that must not shadow CUDA_HOME's. Only
    # the host glue (.cpp) needs them; the kernels (.cu) include no torch header.
    cxx_flags = cxx_flags + [f"-idirafter{d}" for d in _nvidia_wheel_includes()]
    return CUDAExtension(sources=sources + _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu"),
                         extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, **common)


setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused RNN/GRU/LSTM time loops for PyTorch, drop-in torch.nn replacements",
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    python_requires=">=3.10",
    # The range CI compile-checks (.ci/cuda_compile_check.sh: 2.11.0 and 2.14.1) and tests (2.13.0);
    # 2.11 is what the GPU machine runs.
    # numpy: torch warns on import without it ("Failed to initialize NumPy").
    install_requires=["torch>=2.11,<2.15", "tqdm", "numpy"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "onnx", "onnxruntime", "onnxscript", "openvino"],
        "plot": ["matplotlib"],
        # fusedrnn bench --peers: the engines timed beside fusedrnn (fusedrnn/peers.py)
        "peers": ["onnx", "onnxruntime", "openvino"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": PersistentBuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["fusedrnn = fusedrnn.__main__:main"]},
)
