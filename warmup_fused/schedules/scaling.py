"""Hyperparameter rules that give a schedule its base LR."""
from __future__ import annotations

from .native import _float, _int


def linear_scaling(base_lr: float, batch_size: int, base_batch_size: int = 256) -> float:
    """Goyal et al. (2017)'s linear scaling rule: ``base_lr * batch_size / base_batch_size`` (in that order).

    "When the minibatch size is multiplied by k, multiply the learning rate by k": ``base_lr`` is the LR that
    works at ``base_batch_size``. They pair it with a gradual warmup over the first 5 epochs, from ``base_lr``
    to the scaled LR, one increment per iteration. ResNet-50 on ImageNet at batch 8192, then /10 at epochs 30,
    60 and 80:

        >>> from warmup_fused import schedules as S
        >>> lr = S.linear_scaling(0.1, 8192)              # 3.2
        >>> ipe = 1_281_167 // 8192                        # iterations per epoch
        >>> s = S.multistep_decay([25 * ipe, 55 * ipe, 75 * ipe], 0.1,     # milestones count after the warmup
        ...                       warmup=S.linear_warmup_from(5 * ipe, 0.1 / lr), base_lr=lr)
        >>> opt = warmup_fused.SGD(model.parameters(), lr=lr, momentum=0.9, schedule=s)

    ``linear_warmup_from(steps, f)`` ramps ``lr * (f * (1 - s / steps) + s / steps)`` from ``f * lr`` (here
    ``0.1``) to ``lr``; ``gradual_warmup(steps, multiplier=lr / 0.1)`` with ``base_lr=0.1`` is the
    GradualWarmupScheduler form of the same ramp.
    """
    base_lr = _float("base_lr", base_lr)
    batch_size = _int("batch_size", batch_size, 1)
    base_batch_size = _int("base_batch_size", base_batch_size, 1)
    return base_lr * batch_size / base_batch_size


__all__ = ["linear_scaling"]
