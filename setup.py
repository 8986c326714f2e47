"""Build fusedrnn's C++ extension (fusedrnn._C).

CPU kernels are always built. CUDA kernels (csrc/cuda/*.cu) are built only when nvcc and a CUDA
build of torch are both present; otherwise this prints why and builds the CPU-only extension.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _extension():
    # -fno-trapping-math/-fno-math-errno (as torch itself builds) let the gate loops vectorize.
    # -fopenmp: at::parallel_for is a header template; without it every "parallel" loop of ours
    # silently runs on one thread (torch's wheels use OpenMP for the intra-op pool).
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fno-trapping-math", "-fno-math-errno",
                 "-fopenmp"]
    cpu_sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    if cuda_sources:
        # CUDA backend (a later issue) plugs in here; until it exists there is nothing to build.
        raise SystemExit("setup.py: CUDA sources found but the CUDA build is not wired yet")
    print("fusedrnn: building the CPU extension")
    return CppExtension(
        name="fusedrnn._C",
        sources=cpu_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )


setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused RNN/GRU/LSTM time loops for PyTorch, drop-in torch.nn replacements",
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "numpy"],
        "plot": ["matplotlib"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["fusedrnn = fusedrnn.__main__:main"]},
)
