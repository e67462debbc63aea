"""The CPU kernels' float16/bfloat16 conversions (csrc/cpu/convert_16bit.h) against torch's, on all 2^32 floats and
all 2^16 halves: compiled with the C++ compiler that builds the extension, run in a subprocess."""
import os
import platform
import shutil
import subprocess

import pytest
import torch.utils.cpp_extension as cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks against F16C, an x86 instruction")
def test_16bit_conversions_match_torch_on_every_input(tmp_path):
    import torch
    if not torch.cpu.get_capabilities().get("f16c", True):
        pytest.skip("this CPU has no F16C")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    assert cxx, "no C++ compiler (the extension's build needs one too)"
    exe = tmp_path / "convert_16bit_check"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    subprocess.run([cxx, "-O2", "-std=c++17", "-ffp-contract=off", *includes,
                    os.path.join(HERE, "cpp", "convert_16bit_check.cpp"), "-o", str(exe)], check=True, timeout=300)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, check=True).stdout.strip()
    assert out == "half_c10=0 half_f16c=0 bf16_c10=0 bf16_vector=0 widen_half=0", out
