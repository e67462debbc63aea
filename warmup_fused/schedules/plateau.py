"""ReduceLROnPlateau on the device: the LR follows a metric, with no host sync.

``reduce_on_plateau(...)`` is a schedule whose LR is the state of torch's ``ReduceLROnPlateau`` kept in device
memory (a block of the program's values). ``optimizer.observe(metric)`` runs ``ReduceLROnPlateau.step(metric)``
on that block, in place, from a metric tensor on the device: is_better, patience, cooldown and the reduction are
torch's operations in double, so the LRs equal torch's fed the same metrics, bit for bit. It composes after a
warmup (``sequential([warmup, plateau], milestones)``): the plateau phase starts at the group's base LR.

    >>> opt = warmup_fused.AdamW(params, lr=1e-3, schedule=schedules.sequential(
    ...     [schedules.constant(warmup=schedules.linear_warmup(500)), schedules.reduce_on_plateau(patience=3)], [500]))
    >>> for epoch in ...:
    ...     train(...); opt.observe(val_loss)   # val_loss: a 0-d tensor on the device
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence, Union

from .._expr import _PLATEAU, Expr
from ._schedule import Schedule

Number = Union[int, float]


@dataclass(frozen=True)
class PlateauSettings:
    """torch.optim.lr_scheduler.ReduceLROnPlateau's arguments and state (best, bad epochs, cooldown counter, last
    epoch: a scheduler converted mid-run keeps them)."""

    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lrs: tuple = (0.0,)
    eps: float = 1e-8
    best: float | None = None  # None: torch's mode_worse (inf for "min", -inf for "max")
    num_bad_epochs: int = 0
    cooldown_counter: int = 0
    last_epoch: int = 0
    float32_lrs: tuple = ()  # groups whose LR torch holds in a float32 tensor (from_torch)

    def block(self, lrs: Sequence[float]) -> list:
        """The plateau block (csrc/schedule.h PlateauWord) for groups starting at these LRs."""
        min_lrs = self.min_lrs * len(lrs) if len(self.min_lrs) == 1 else self.min_lrs
        if len(min_lrs) != len(lrs):
            raise ValueError(f"min_lr: {len(self.min_lrs)} values for {len(lrs)} param groups")
        f32 = self.float32_lrs or (False,) * len(lrs)
        worse = math.inf if self.mode == "min" else -math.inf
        out = [float(self.mode == "max"), float(self.threshold_mode == "abs"), float(self.threshold),
               float(self.patience), float(self.cooldown), float(self.eps), float(self.factor),
               worse if self.best is None else float(self.best), float(self.num_bad_epochs),
               float(self.cooldown_counter), float(self.last_epoch), float(len(lrs))]
        for lr, min_lr, rounded in zip(lrs, min_lrs, f32):
            out += [float(lr), float(min_lr), float(bool(rounded))]
        return out


def _check(name: str, value, lo: float = 0.0, integral: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integral and value != int(value)):
        raise TypeError(f"{name} must be {'an int' if integral else 'a number'}, got {value!r}")
    if not math.isfinite(value) or value < lo:
        raise ValueError(f"{name} must be finite and >= {lo}, got {value}")
    return int(value) if integral else float(value)


def reduce_on_plateau(mode: str = "min", factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                      threshold_mode: str = "rel", cooldown: int = 0, min_lr: Union[Number, Sequence[Number]] = 0,
                      eps: float = 1e-8, *, base_lr=None, **state) -> Schedule:
    """torch's ``ReduceLROnPlateau(optimizer, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr,
    eps)`` as a device schedule, driven by ``optimizer.observe(metric)``.

    ``base_lr`` (one, or one per group; default: each group's lr, a relative schedule) is the LR before any
    reduction. ``state`` (best, num_bad_epochs, cooldown_counter, last_epoch) resumes a scheduler mid-run;
    ``float32_lrs`` (one bool per group) rounds each reduced LR to float32, as torch does for a float32 tensor lr.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
    factor = _check("factor", factor)
    if factor >= 1.0:
        raise ValueError(f"factor must be < 1.0, got {factor}")
    min_lrs = tuple(_check("min_lr", v) for v in (min_lr if isinstance(min_lr, (list, tuple)) else [min_lr]))
    best = state.pop("best", None)
    if best is not None and (isinstance(best, bool) or not isinstance(best, numbers.Real)):
        raise TypeError(f"best must be a number, got {best!r}")
    settings = PlateauSettings(
        mode, factor, _check("patience", patience, integral=True), _check("threshold", threshold, -math.inf),
        threshold_mode, _check("cooldown", cooldown, integral=True), min_lrs, _check("eps", eps, -math.inf),
        None if best is None else float(best),
        _check("num_bad_epochs", state.pop("num_bad_epochs", 0), integral=True),
        _check("cooldown_counter", state.pop("cooldown_counter", 0), integral=True),
        _check("last_epoch", state.pop("last_epoch", 0), integral=True), tuple(state.pop("float32_lrs", ())))
    if state:
        raise TypeError(f"reduce_on_plateau got unexpected arguments {sorted(state)}")
    base = None if base_lr is None else (list(base_lr) if isinstance(base_lr, (list, tuple)) else [base_lr])
    groups = len(min_lrs) if base is None else len(base)
    return Schedule([[(0, Expr(_PLATEAU, value=settings))]] * groups, base, name="reduce_on_plateau")


__all__ = ["reduce_on_plateau", "PlateauSettings"]
