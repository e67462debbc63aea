"""Builds warmup_fused._C: a CUDA extension when torch has CUDA and a toolkit is found, else CPU-only.

FORCE_CUDA=1 builds CUDA kernels even when the toolkit guess fails; WARMUP_FUSED_CPU_ONLY=1 skips them.
TORCH_CUDA_ARCH_LIST is honoured; its default is the visible GPU's capability, else "8.0;9.0".
No network access, and nvcc is only looked at when CUDA is chosen.
"""
import glob
import os
import sys

from setuptools import setup

import torch
from torch.utils import cpp_extension


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return home if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")) else None


def _use_cuda():
    if os.environ.get("WARMUP_FUSED_CPU_ONLY") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return bool(torch.version.cuda) and _cuda_home() is not None


use_cuda = _use_cuda()
if use_cuda:
    # torch derives CUDA_HOME from nvcc's path, which is wrong where nvcc sits outside the toolkit.
    cuda_home = _cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"

# Bits matter: no fast-math anywhere, no contraction of a*b+c into FMA unless the code asks for fma().
cxx_flags = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno"]
# at::parallel_for is OpenMP in torch's builds, and its header runs serially without -fopenmp. The
# libgomp.so.1 torch bundles is the one that gets used (same soname, already loaded by `import torch`).
openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
cxx_flags += openmp
# nvcc's default -fmad=true, as torch builds its fused optimizers (their bias corrections' pow must contract the
# same way); csrc/schedule.h keeps the schedule arithmetic uncontracted with __dadd_rn & co.
nvcc_flags = ["-O3", "-std=c++20", "-lineinfo"]

sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
define_macros = []
if use_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("WARMUP_FUSED_WITH_CUDA", "1"))
    Extension = cpp_extension.CUDAExtension
    extra = {"cxx": cxx_flags, "nvcc": nvcc_flags}
else:
    Extension = cpp_extension.CppExtension
    extra = {"cxx": cxx_flags}

# Recorded in the library so `python -m warmup_fused info` can say what was built.
arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ") if use_cuda else ""
build_info = f"cuda={int(use_cuda)};arch={arch_list}"
define_macros.append(("WARMUP_FUSED_BUILD_INFO", f'"{build_info}"'))

setup(
    ext_modules=[
        Extension(
            "warmup_fused._C",
            sources,
            extra_compile_args=extra,
            extra_link_args=openmp,
            define_macros=define_macros,
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
