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
    """What the compiled library contains: {"cuda": bool, "arch": str} (arch: TORCH_CUDA_ARCH_LIST, spaces)."""
    cuda, _, arch = _lib.build_info().partition(";")
    fields = dict(kv.split("=", 1) for kv in (cuda, arch) if "=" in kv)
    return {"cuda": fields.get("cuda") == "1", "arch": fields.get("arch", "")}


@torch.library.register_fake("warmup_fused::lr_at")
def _lr_at_fake(ints, vals, steps, num_groups):
    return steps.new_empty((num_groups, steps.shape[0]), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- optimizers
def adam_step(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, max_exp_avg_sqs: list,
              state_steps: list, sched_step: torch.Tensor, last_lr: torch.Tensor, prog_ints: torch.Tensor,
              prog_vals: torch.Tensor, hparams: torch.Tensor, tensor_group: list, adamw: bool,
              grad_scale: torch.Tensor | None = None, found_inf: torch.Tensor | None = None) -> None:
    """One fused Adam/AdamW step over all params of one device, LR from the schedule at ``sched_step``.

    hparams: float64 [G, 6] (beta1, beta2, eps, weight_decay, amsgrad, maximize); tensor_group[i]: the group of
    params[i]. Mutates params, grads (only when grad_scale is given: unscaled in place), states, state_steps
    (+1), sched_step (+1) and last_lr (each group's LR this step). found_inf != 0 skips the update but still
    advances sched_step.
    """
    _lib.adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, sched_step, last_lr,
                   prog_ints, prog_vals, hparams, tensor_group, adamw, grad_scale, found_inf)


def sgd_step(params: list, grads: list, momentum_buffers: list, sched_step: torch.Tensor, last_lr: torch.Tensor,
             prog_ints: torch.Tensor, prog_vals: torch.Tensor, hparams: torch.Tensor, tensor_group: list,
             is_first_step: list, grad_scale: torch.Tensor | None = None,
             found_inf: torch.Tensor | None = None) -> None:
    """One fused SGD step; hparams float64 [G, 5] (momentum, dampening, weight_decay, nesterov, maximize)."""
    _lib.sgd_step(params, grads, momentum_buffers, sched_step, last_lr, prog_ints, prog_vals, hparams,
                  tensor_group, is_first_step, grad_scale, found_inf)


@torch.library.register_fake("warmup_fused::adam_step")
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, sched_step, last_lr,
                    prog_ints, prog_vals, hparams, tensor_group, adamw, grad_scale=None, found_inf=None):
    return None


@torch.library.register_fake("warmup_fused::sgd_step")
def _sgd_step_fake(params, grads, momentum_buffers, sched_step, last_lr, prog_ints, prog_vals, hparams,
                   tensor_group, is_first_step, grad_scale=None, found_inf=None):
    return None
