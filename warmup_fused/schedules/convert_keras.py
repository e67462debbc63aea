"""from_keras: a Keras ``LearningRateSchedule`` -> a Schedule equal to it bit for bit.

The LR of step t is ``float(schedule(t))``: the float32 value Keras computes (eagerly, on whichever backend
Keras was imported with: torch, jax, numpy, tensorflow), as a Python float. Keras casts the step and every
parameter to float32 and computes in float32, so the programs here round to float32 (``round_f32``) after every
float32 operation, in Keras's order (keras/src/optimizers/schedules/learning_rate_schedule.py); + - * / and the
rounding are exact on every device, and ``floor(p)`` is ``p - p % 1.0``, exact too.

* InverseTimeDecay (staircase or not) and PiecewiseConstantDecay: closed form, every step;
* CosineDecay: the warmup in closed form (recorded on the jax backend, whose ``ops.cond`` compiles it with XLA,
  which rewrites its arithmetic), the cosine recorded from Keras up to ``decay_steps`` (constant after);
* PolynomialDecay without ``cycle``: recorded up to ``decay_steps`` (``power`` is a float32 pow, whose bits are
  the backend's own; constant after);
* ExponentialDecay, CosineDecayRestarts, PolynomialDecay with ``cycle``, any other LearningRateSchedule
  (subclasses, tf_keras's): recorded over ``horizon`` steps (refused without one; past it the last LR holds).

float32 transcendentals (cos, pow, log) are the backend's own functions, not the host's libm, hence recorded.
A recording evaluates the schedule once per step (about 0.1-0.4 ms a step on the torch backend; Keras's jax
backend compiles ``ops.cond`` at each eager call, about 0.1 s a step for CosineDecay with a warmup and
CosineDecayRestarts). Schedules whose dtype is not float32 are recorded. Steps are those of an int32 step
(below 2**31).

Keras's LRs are absolute: ``base_lrs`` is ``initial_learning_rate`` (PiecewiseConstantDecay: ``values[0]``), the
lr to give the optimizer's param groups; closed-form phases do not scale with it.
"""
from __future__ import annotations

import numbers

import numpy as np

from .._expr import STEP, lift, round_f32
from ._foreign import Pending, check_horizon, f32, materialise
from ._schedule import Schedule

_MODULE = "keras.src.optimizers.schedules.learning_rate_schedule"
_F32_EXACT = 2**24  # integers below this are exact in float32, so Keras's float32 step comparisons are exact


def _is_schedule(obj) -> bool:
    """A Keras 3, tf.keras or tf_keras LearningRateSchedule (without importing any of them)."""
    return any(c.__name__ == "LearningRateSchedule" and c.__module__.split(".")[0] in ("keras", "tf_keras",
                                                                                      "tensorflow")
               for c in type(obj).__mro__)


def _whole(x, limit: int = _F32_EXACT) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0 <= x < limit and float(x).is_integer()


def _float32(value) -> bool:
    from keras import backend, ops

    return backend.standardize_dtype(ops.convert_to_tensor(value).dtype) == "float32"


def _step32():
    return round_f32(STEP)  # ops.cast(step, "float32")


# ---------------------------------------------------------------------------- closed forms, float32
def _inverse_time(s):
    p = round_f32(_step32() / f32(s.decay_steps))
    if s.staircase:
        p = p - p % 1.0  # ops.floor
    return [(0, round_f32(f32(s.initial_learning_rate) / round_f32(1.0 + round_f32(f32(s.decay_rate) * p))))]


def _piecewise_constant(s):
    bounds, values = list(s.boundaries), list(s.values)
    if not (all(isinstance(b, int) and not isinstance(b, bool) and abs(b) < 2**31 for b in bounds)
            and all(type(v) is float for v in values) and _float32(values[0])):
        return None
    v32 = [np.float32(v) for v in values]

    def value(t: int) -> float:  # Keras's sum of indicator * value, in its order, in float32
        total = np.float32(0)
        total = total + np.float32(t <= bounds[0]) * v32[0]
        total = total + np.float32(t > bounds[-1]) * v32[-1]
        for low, high, v in zip(bounds[:-1], bounds[1:], v32[1:-1]):
            total = total + np.float32(low < t <= high) * v
        return float(total)

    begins = sorted({0} | {b + 1 for b in bounds if b + 1 > 0})
    return [(t, lift(value(t))) for t in begins]


def _cosine(s):
    ds, ws = s.decay_steps, s.warmup_steps
    if not (_whole(ds) and _whole(ws) and ds > 0 and ds + ws < _F32_EXACT):
        return None
    if s.warmup_target is None:
        return [(0, Pending(settle=int(ds)))]  # min(step, decay_steps): constant from decay_steps on
    from keras import backend

    if backend.backend() == "jax":  # ops.cond compiles the warmup with XLA, which rewrites its arithmetic
        return [(0, Pending()), (int(ws), Pending(settle=int(ds)))]
    init = f32(s.initial_learning_rate)
    delta = round_f32(f32(s.warmup_target) - init)
    warm = round_f32(round_f32(delta * round_f32(_step32() / float(ws))) + init)
    return [(0, warm), (int(ws), Pending(settle=int(ds)))]


def _polynomial(s):
    if s.cycle or not (_whole(s.decay_steps) and s.decay_steps > 0):
        return None
    return [(0, Pending(settle=int(s.decay_steps)))]


_BUILDERS = {
    "InverseTimeDecay": _inverse_time,
    "PiecewiseConstantDecay": _piecewise_constant,
    "CosineDecay": _cosine,
    "PolynomialDecay": _polynomial,
}


def _phases(schedule):
    build = _BUILDERS.get(type(schedule).__qualname__) if type(schedule).__module__ == _MODULE else None
    if build is None:
        return None
    if hasattr(schedule, "initial_learning_rate") and not _float32(schedule.initial_learning_rate):
        return None
    return build(schedule)


def _base_lr(schedule) -> float:
    for value in (getattr(schedule, "initial_learning_rate", None), (getattr(schedule, "values", None) or [None])[0]):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    return float(schedule(0))


def from_keras(schedule, *, horizon: int | None = None, exact: bool = True) -> Schedule:
    """A Schedule whose LR at step t is ``float(schedule(t))``, bit for bit (see the module docstring).

    ``horizon`` (steps) bounds the recording of schedules that are not closed-form and never settle to a
    constant; past it the last recorded value holds.

        >>> s = from_keras(keras.optimizers.schedules.InverseTimeDecay(0.1, 1000, 0.5))
        >>> opt = warmup_fused.AdamW(model.parameters(), lr=s.base_lrs[0], schedule=s)
    """
    check_horizon(horizon)
    if not _is_schedule(schedule):
        raise TypeError(f"schedule must be a Keras LearningRateSchedule, got {type(schedule).__name__}")
    name = type(schedule).__name__
    phases = _phases(schedule) or [(0, Pending())]
    phases = materialise([phases], lambda ts: [[float(schedule(t)) for t in ts]], horizon, name)
    return Schedule(phases, [_base_lr(schedule)], horizon=horizon, exact=exact, name=name)


__all__ = ["from_keras"]
