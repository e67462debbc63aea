"""Lightning: the schedulers returned by ``configure_optimizers`` become the optimizers' device schedules.

    trainer = lightning.Trainer(max_steps=100_000, callbacks=[WarmupFusedCallback()])

with ``configure_optimizers`` returning a warmup_fused optimizer and ``{"scheduler": ..., "interval": "step"}``.
Each scheduler is converted with ``from_torch`` over ``trainer.estimated_stepping_batches`` at train start;
Lightning keeps stepping it, which changes nothing.
"""
from __future__ import annotations

import math

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone pytorch_lightning package
    from pytorch_lightning.callbacks import Callback

from . import ScheduleWatch, to_device_schedule

__all__ = ["WarmupFusedCallback"]


class WarmupFusedCallback(Callback):
    """Converts every step-interval LR scheduler of the LightningModule into its warmup_fused optimizer's device
    schedule at train start."""

    def __init__(self):
        self._watches: list[ScheduleWatch] = []

    def on_train_start(self, trainer, pl_module):
        total = trainer.estimated_stepping_batches
        total = None if not math.isfinite(total) else int(total)
        self._watches = []
        for i, config in enumerate(trainer.lr_scheduler_configs):
            where = f"WarmupFusedCallback: lr_scheduler {i} ({type(config.scheduler).__name__})"
            if config.reduce_on_plateau:
                raise ValueError(f"{where}: ReduceLROnPlateau follows a metric, so its LR cannot be computed on "
                                 "the device; remove the callback to keep it on the host")
            if config.interval != "step" or config.frequency != 1:
                raise ValueError(f"{where}: interval={config.interval!r}, frequency={config.frequency}: only "
                                 "schedulers stepped after every optimizer step (interval 'step', frequency 1) "
                                 "convert exactly to the device's per-step counter")
            opt = to_device_schedule(config.scheduler.optimizer, config.scheduler, total, where)
            self._watches.append(ScheduleWatch(opt))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for watch in self._watches:
            watch.check()
