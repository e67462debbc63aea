"""transformers.Trainer: the Trainer's LR scheduler becomes the optimizer's device schedule at train start.

    trainer = transformers.Trainer(model, args, train_dataset=ds,
                                   optimizers=(warmup_fused.AdamW(model.parameters(), lr=3e-4), None),
                                   callbacks=[WarmupFusedCallback()])

``args.lr_scheduler_type`` / ``warmup_steps`` (or a scheduler passed in ``optimizers``) are converted with
``from_torch`` over ``state.max_steps``; the Trainer keeps stepping its scheduler, which changes nothing.
"""
from __future__ import annotations

from transformers import TrainerCallback

from . import ScheduleWatch, to_device_schedule

__all__ = ["WarmupFusedCallback"]


class WarmupFusedCallback(TrainerCallback):
    """Converts the Trainer's scheduler into the warmup_fused optimizer's device schedule at train start."""

    def __init__(self):
        self._watch: ScheduleWatch | None = None

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if lr_scheduler is None:
            raise ValueError("WarmupFusedCallback: the Trainer has no LR scheduler to convert")
        opt = to_device_schedule(optimizer, lr_scheduler, state.max_steps, "WarmupFusedCallback")
        self._watch = ScheduleWatch(opt)

    def on_step_end(self, args, state, control, **kwargs):
        if self._watch is not None:
            self._watch.check()
