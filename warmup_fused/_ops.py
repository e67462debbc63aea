"""Typed wrappers of torch.ops.warmup_fused.* and their fake (meta) kernels for torch.compile."""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers the ops)

_lib = torch.ops.warmup_fused


def lr_at(ints: torch.Tensor, vals: torch.Tensor, steps: torch.Tensor, num_groups: int) -> torch.Tensor:
    """float64 ``[num_groups, len(steps)]``: the schedule program evaluated at each step on steps' device."""
    return _lib.lr_at(ints, vals, steps, num_groups)


def validate_program(ints: torch.Tensor, vals: torch.Tensor) -> None:
    """Raises ValueError if a CPU program could read out of bounds or is malformed."""
    _lib.validate_program(ints, vals)


def build_info() -> dict:
    """What the compiled library contains: {"cuda": bool, "arch": str}."""
    fields = dict(kv.split("=", 1) for kv in _lib.build_info().split(";"))
    return {"cuda": fields.get("cuda") == "1", "arch": fields.get("arch", "")}


@torch.library.register_fake("warmup_fused::lr_at")
def _lr_at_fake(ints, vals, steps, num_groups):
    return steps.new_empty((num_groups, steps.shape[0]), dtype=torch.float64)
