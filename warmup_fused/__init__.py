"""warmup_fused: fused AdamW/Adam/SGD whose kernels compute the warmup-then-decay LR on the device.

The learning rate is a function of a device-resident step counter, evaluated inside the update kernel,
so a whole training step can be captured in a CUDA graph and replayed with the right LR every step.
"""
from __future__ import annotations

__version__ = "0.1.0"

import torch  # noqa: E402,F401  (loads libc10/libtorch, which _C links against)

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by hand on a fresh checkout
    raise ImportError(
        "warmup_fused's compiled library (warmup_fused/_C*.so) is missing or does not load: "
        f"{exc}.\nBuild it from the repository root with:\n"
        "    pip install --no-build-isolation -e .          (CUDA kernels when a toolkit is found)\n"
        "or  WARMUP_FUSED_CPU_ONLY=1 pip install --no-build-isolation -e .\n"
        "or simply run ./run test, which sets up a virtualenv and builds everything."
    ) from exc

from . import _ops, schedules  # noqa: E402
from .schedules import Schedule, from_torch  # noqa: E402
from .optim import SGD, Adam, AdamW  # noqa: E402

__all__ = ["AdamW", "Adam", "SGD", "Schedule", "from_torch", "schedules", "__version__"]
