"""The built library's sm_90 machine code (no GPU needed): the update kernels move data with 128-bit global loads
and stores (LDG.E.128 / STG.E.128, not generic or scalar accesses) and spill nothing; the records kernels use no
local memory either. cuobjdump ships in torch's triton wheel (or the CUDA toolkit)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest

import warmup_fused
from warmup_fused import _ops


def _cuobjdump() -> str | None:
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "backends", "nvidia", "bin", "cuobjdump")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("cuobjdump")


def _library() -> str:
    return next(os.path.join(os.path.dirname(warmup_fused.__file__), f)
                for f in os.listdir(os.path.dirname(warmup_fused.__file__)) if f.startswith("_C") and f.endswith(".so"))


pytestmark = [
    pytest.mark.skipif(not _ops.build_info()["cuda"], reason="a CPU-only build has no machine code to read"),
    pytest.mark.skipif(_cuobjdump() is None, reason="cuobjdump not found (triton wheel or CUDA toolkit)"),
]

DTYPES = {"f": "float32", "d": "float64", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}


def _functions(flag: str) -> dict[str, str]:
    """{mangled kernel name: its cuobjdump text} for the sm_90 code."""
    out = subprocess.run([_cuobjdump(), flag, "-arch", "sm_90", _library()], capture_output=True, text=True,
                         check=True).stdout
    parts = re.split(r"Function\s*:?\s*(\S+?):?\s*\n", out)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _kernels(functions: dict, kind: str) -> dict:
    """{(dtype, "adam"|"sgd", with float32 master): text} of one kernel template's instantiations."""
    found = {}
    for name, text in functions.items():
        m = re.search(rf"\d+{kind}I(f|d|N3c104HalfE|N3c108BFloat16E)Lb([01])E(?:Lb([01])E)?", name)
        if m:
            found[(DTYPES[m.group(1)], "adam" if m.group(2) == "1" else "sgd", m.group(3) == "1")] = text
    return found


def test_update_kernels_use_128_bit_global_accesses():
    kernels = _kernels(_functions("-sass"), "update_kernel")
    assert len(kernels) == 12, sorted(kernels)  # 4 dtypes x Adam/SGD, and bf16/fp16 with float32 masters
    for key, sass in kernels.items():
        ops = re.findall(r"\b((?:LDG|STG|LD|ST|LDL|STL)(?:\.[A-Z0-9]+)*)\b", sass)
        assert "LDG.E.128" in ops and "STG.E.128" in ops, (key, sorted(set(ops)))
        generic = [o for o in ops if o.split(".")[0] in ("LD", "ST")]
        assert not generic, f"{key}: generic (non-global) accesses {generic}"
        assert not [o for o in ops if o.startswith(("LDL", "STL"))], f"{key}: local memory (spills)"


def test_no_spills_in_update_and_records_kernels():
    usage = _functions("-res-usage")
    for kind, count in (("update_kernel", 12), ("records_kernel", 8)):
        kernels = _kernels(usage, kind)
        assert len(kernels) == count, (kind, sorted(kernels))
        for key, text in kernels.items():
            stack = int(re.search(r"STACK:(\d+)", text).group(1))
            local = int(re.search(r"LOCAL:(\d+)", text).group(1))
            assert stack == 0 and local == 0, (kind, key, text.strip())
