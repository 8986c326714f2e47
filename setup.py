"""Build fusedrnn's C++ extension (fusedrnn._C). Supported torch: 2.11 to 2.14.

CPU kernels are always built. The CUDA kernels (csrc/cuda/) are built when torch is a CUDA build
and nvcc is found (CUDA_HOME), or when FORCE_CUDA=1; no visible GPU is needed. Architectures come
from TORCH_CUDA_ARCH_LIST (default "8.0;9.0"). Otherwise setup prints why it builds CPU-only.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


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
                 "-fopenmp"]
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
    common["include_dirs"] += _nvidia_wheel_includes()
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
    install_requires=["torch>=2.11,<2.15", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "numpy"],
        "plot": ["matplotlib"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["fusedrnn = fusedrnn.__main__:main"]},
)
