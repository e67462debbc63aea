"""Callbacks that move a training framework's LR scheduler onto a warmup_fused optimizer's device schedule.

    from warmup_fused.integrations.transformers import WarmupFusedCallback   # transformers.Trainer
    from warmup_fused.integrations.lightning import WarmupFusedCallback      # lightning.Trainer

At train start the callback converts the framework's scheduler, bit for bit, with
``opt.set_schedule(from_torch(scheduler, horizon=total_steps + 1))``: from then on the kernel computes every
step's LR from the device counter (no host LR work per step, and CUDA-graph replays follow the schedule). The
framework keeps stepping its scheduler, which writes into ``param_groups`` the value they already show: that
changes nothing, and the scheduler's state, logging and checkpoints stay the framework's. What cannot be moved to
the device exactly (ReduceLROnPlateau, epoch-interval schedulers) is refused with an error, never approximated.

Importing this package imports neither framework; each submodule imports its own.
"""
from __future__ import annotations

import warnings

from torch.optim.lr_scheduler import LRScheduler

from .. import from_torch
from .._ops import LAYOUT
from ..optim import _FusedOptimizer
from ..schedules.convert import _steps_taken

__all__ = ["LeftScheduleWarning", "ScheduleWatch", "to_device_schedule"]

_SCHEDULE = LAYOUT["lr_from_schedule"]


class LeftScheduleWarning(UserWarning):
    """A param group left the converted device schedule: something wrote a different LR into it."""


def _unwrap(obj, attrs: tuple, kind: type):
    """The ``kind`` instance a framework wrapper holds (accelerate's AcceleratedOptimizer.optimizer and
    AcceleratedScheduler.scheduler, Lightning's LightningOptimizer._optimizer); ``obj`` itself if none."""
    inner = obj
    for _ in range(8):  # wrappers nest a level or two
        if isinstance(inner, kind):
            return inner
        inner = next((getattr(inner, a) for a in attrs if getattr(inner, a, None) is not None), None)
        if inner is None:
            break
    return obj


def fused_optimizer(optimizer, where: str) -> _FusedOptimizer:
    opt = _unwrap(optimizer, ("optimizer", "_optimizer"), _FusedOptimizer)
    if not isinstance(opt, _FusedOptimizer):
        raise TypeError(f"{where}: the optimizer is a {type(optimizer).__name__}, not a warmup_fused optimizer "
                        "(warmup_fused.AdamW / Adam / SGD): only those compute the LR on the device")
    return opt


def to_device_schedule(optimizer, scheduler, total_steps: int | None, where: str) -> _FusedOptimizer:
    """Installs ``scheduler`` (a torch LRScheduler, possibly wrapped) as ``optimizer``'s device schedule.

    ``total_steps``: the optimizer steps the run will take (recorded schedulers are recorded that far; None for
    an unbounded run, where only closed-form schedulers convert). The device counter is the scheduler's step: a
    fresh scheduler starts it at 0. A scheduler that has already stepped belongs to a resumed run: the
    optimizer's checkpoint restored the schedule converted at the start and the same step, which are kept.
    Returns the warmup_fused optimizer.
    """
    opt = fused_optimizer(optimizer, where)
    sched = _unwrap(scheduler, ("scheduler",), LRScheduler)
    taken = _steps_taken(sched)
    if taken > 0:
        if (opt._schedule is not None and opt._host_step == taken
                and all(s.lr_mode == _SCHEDULE for s in opt._sources)):
            return opt
        raise ValueError(
            f"{where}: the {type(sched).__name__} has already taken {taken} steps (a resumed run) but the optimizer "
            f"does not follow a device schedule at that step (counter {opt._host_step}), so there is no schedule to "
            "continue: resume from a checkpoint saved with this callback, or convert the scheduler before its first "
            "step")
    schedule = from_torch(sched, horizon=None if total_steps is None else int(total_steps) + 1)
    if opt._host_step != 0:
        opt.set_sched_step(0)  # an optimizer that trained before: the new scheduler starts at its step 0
    opt.set_schedule(schedule)
    return opt


class ScheduleWatch:
    """Warns once if a group leaves the device schedule (a write of a different LR, e.g. the framework's
    scheduler skipped a step the optimizer counted): the group then trains at the written value on the host."""

    def __init__(self, opt: _FusedOptimizer):
        self.opt, self.warned = opt, False

    def check(self) -> None:
        if self.warned:
            return
        opt = self.opt
        left = [g for g, s in enumerate(opt._sources) if s.lr_mode != _SCHEDULE]
        if left:
            self.warned = True
            step = opt._host_step
            written = [opt.param_groups[g]["lr"] for g in left]
            scheduled = [opt._host_values(step)[0][g] for g in left]
            warnings.warn(
                f"param groups {left} left the device schedule before step {step}: LRs {written} were written into "
                f"param_groups where the schedule gives {scheduled}; those groups now train at the written values",
                LeftScheduleWarning, stacklevel=2)
