"""Builds real_vllm._C from csrc/ and maps kernels/ to the import name real_vllm.kernels.

Install without build isolation so the build uses the torch already installed (an isolated
build would fetch a CUDA torch): `pip install --no-build-isolation -e .`.
"""

from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent
cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))

ext_modules = [
    CppExtension(
        name="real_vllm._C",
        sources=cpu_sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
        extra_link_args=["-fopenmp"],
    )
]

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
