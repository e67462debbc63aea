"""Typed wrappers of torch.ops.warmup_fused.* and their fake (meta) kernels for torch.compile."""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers the ops)

_lib = torch.ops.warmup_fused

# Column indices of the hyperparameter table, scratch offsets and limits, from csrc/multi_tensor.h.
LAYOUT: dict[str, int] = {k: int(v) for k, v in (kv.split("=") for kv in _lib.layout().split(";"))}


def scratch_words(groups: int) -> int:
    """float64 words of a device's scratch tensor for ``groups`` param groups."""
    return LAYOUT["scratch_fixed"] + 2 * groups


def lr_at(ints: torch.Tensor, vals: torch.Tensor, steps: torch.Tensor, num_groups: int) -> torch.Tensor:
    """float64 ``[num_groups, len(steps)]``: the schedule program evaluated at each step on steps' device."""
    return _lib.lr_at(ints, vals, steps, num_groups)


def validate_program(ints: torch.Tensor, vals: torch.Tensor) -> None:
    """Raises ValueError if a CPU program could read out of bounds or is malformed."""
    _lib.validate_program(ints, vals)


def build_info() -> dict:
    """What the compiled library contains: {"cuda": bool, "arch": str} (arch: TORCH_CUDA_ARCH_LIST, spaces)."""
    cuda, _, arch = _lib.build_info().partition(";")
    fields = dict(kv.split("=", 1) for kv in (cuda, arch) if "=" in kv)
    return {"cuda": fields.get("cuda") == "1", "arch": fields.get("arch", "")}


@torch.library.register_fake("warmup_fused::lr_at")
def _lr_at_fake(ints, vals, steps, num_groups):
    return steps.new_empty((num_groups, steps.shape[0]), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- optimizers
# adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, sched_step, scratch, prog_ints,
#           prog_vals, hparams, lr_tensors, tensor_group, grad_scale=None, found_inf=None)
# sgd_step(params, grads, momentum_buffers, state_steps, sched_step, scratch, prog_ints, prog_vals, hparams,
#          lr_tensors, tensor_group, grad_scale=None, found_inf=None)
# See csrc/ops.cpp for their contracts. The *_emulated variants run the CUDA kernels' code on CPU tensors
# (reference=True: the plain per-element oracle); they take the same arguments plus `reference`.
def adam_step(*args, **kwargs) -> None:
    _lib.adam_step(*args, **kwargs)


def sgd_step(*args, **kwargs) -> None:
    _lib.sgd_step(*args, **kwargs)


def _no_output(*args, **kwargs):
    return None


for _name in ("adam_step", "sgd_step", "adam_step_emulated", "sgd_step_emulated"):
    torch.library.register_fake(f"warmup_fused::{_name}")(_no_output)
