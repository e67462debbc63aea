"""from_optax: an optax schedule (a function of the step count) -> a Schedule equal to it bit for bit.

The LR of step t is what optax's jitted update computes: ``float(jax.jit(schedule)(jnp.int32(t)))``. optax's
int32 count saturates at 2**31 - 1 (``safe_increment``), so the LR holds from that step on.

Why recorded, not computed in closed form: XLA compiles the schedule with its closure values as constants and
rewrites the arithmetic (``count / transition_steps`` becomes ``count * 0.01``, ``a * b + c`` a float32 fused
multiply-add), so the source's op order, even rounded to float32 after every op, is not what runs; a float32
FMA cannot be reproduced exactly with float64 operations (double rounding), and XLA's float32 cos / pow are not
libm's. So the LRs are recorded from the compiled schedule itself, and what introspection gives is the shape
of each known schedule: where it is constant, which bounds every recording without ``horizon``.

optax's schedules are closures, recognised by ``__module__`` and ``__qualname__`` and read from their closure
cells:

* constant_schedule, piecewise_constant_schedule: one value per constant piece;
* linear_schedule / polynomial_schedule, cosine_decay_schedule, linear_onecycle_schedule,
  cosine_onecycle_schedule, and join_schedules of these (warmup_cosine_decay_schedule, sgdr_schedule): recorded
  up to the step from which they are constant;
* exponential_decay (warmup_exponential_decay_schedule's decay), any other function: recorded over ``horizon``
  steps (refused without one; past it the last LR holds).

The recording calls ``jax.jit(schedule)``, compiled once for an int32 count, once per step (about 30 us a
step): XLA compiles a ``lax.map`` or ``vmap`` loop of the schedule differently, with different bits.

optax's LRs are absolute: ``base_lrs`` is the LR at step 0, the lr to give the optimizer's param groups.
"""
from __future__ import annotations

import numpy as np

from ._foreign import Pending, check_horizon, clamp_begins, materialise
from ._schedule import Schedule

INT32_MAX = 2**31 - 1  # optax's count stops here
_MODULES = ("optax.schedules._schedule", "optax.schedules._join")


def _int32(x) -> bool:
    return type(x) is int and abs(x) <= INT32_MAX


def _closure(fn):
    """(qualname, {free variable: value}) of one of optax's schedule closures, else None."""
    if getattr(fn, "__module__", None) not in _MODULES or not getattr(fn, "__closure__", None):
        return None
    try:
        cells = {n: c.cell_contents for n, c in zip(fn.__code__.co_freevars, fn.__closure__)}
    except ValueError:  # an empty cell
        return None
    return fn.__qualname__, cells


# ------------------------------------------------------------------------------ where each schedule is constant
# Each returns phases (begin, Pending(settle)) for the count from 0 on, or None when its cells are not as expected.
def _constant(cells):
    return [(0, Pending(settle=0))]


def _polynomial(cells):
    steps, begin = cells["transition_steps"], cells["transition_begin"]
    if not (_int32(steps) and _int32(begin) and steps > 0 and begin >= 0):
        return None
    # count = clip(count - begin, 0, steps): init_value up to `begin`, then `steps` steps of change
    return [(0, Pending(settle=0)), (begin + 1, Pending(settle=steps - 1))]


def _piecewise_constant(cells):
    table = cells["boundaries_and_scales"] or {}
    if not all(_int32(b) for b in table):
        return None
    # The indicator of each threshold changes where the count reaches it, and for a negative threshold again
    # where the int32 threshold - count wraps around.
    changes = {b for b in table if b > 0} | {b + 2**31 + 1 for b in table if b < 0 and b + 2**31 + 1 <= INT32_MAX}
    return [(b, Pending(settle=0)) for b in sorted({0} | changes)]


def _interpolate(cells):
    bounds = cells["boundaries"]
    if not all(_int32(b) for b in bounds):
        return None
    return [(0, Pending(settle=max([0, *bounds])))]  # values[-1] from the last boundary on


def _cosine_decay(cells):
    steps = cells["decay_steps"]  # float32 min(count, decay_steps): constant from decay_steps on
    exact = type(steps) in (int, float) and 0 < steps < 2**24 and float(steps).is_integer()
    return [(0, Pending(settle=int(steps) if exact else None))]


def _exponential_decay(cells):
    begin = cells["transition_begin"]
    if not (_int32(begin) and begin >= 0):
        return None
    return [(0, Pending(settle=0)), (begin + 1, Pending())]  # init_value while count - begin <= 0


def _join(cells):
    schedules, boundaries = cells["schedules"], cells["boundaries"]
    if not all(_int32(b) and b >= 0 for b in boundaries):  # (the int32 step - boundary wraps for b < 0)
        return None
    phases = list(_phases(schedules[0]))
    for boundary, child in zip(boundaries, schedules[1:]):  # child(step - boundary) from step >= boundary on
        phases += [(boundary + b, body) for b, body in _phases(child)]
    return clamp_begins(phases)


_BUILDERS = {
    "constant_schedule.<locals>.<lambda>": _constant,
    "polynomial_schedule.<locals>.<lambda>": _constant,
    "exponential_decay.<locals>.<lambda>": _constant,
    "polynomial_schedule.<locals>.schedule": _polynomial,
    "piecewise_constant_schedule.<locals>.schedule": _piecewise_constant,
    "piecewise_interpolate_schedule.<locals>.schedule": _interpolate,
    "cosine_decay_schedule.<locals>.schedule": _cosine_decay,
    "exponential_decay.<locals>.schedule": _exponential_decay,
    "join_schedules.<locals>.schedule": _join,
}


def _phases(fn) -> list:
    known = _closure(fn)
    build = _BUILDERS.get(known[0]) if known else None
    return (build(known[1]) if build else None) or [(0, Pending())]


def from_optax(schedule, *, horizon: int | None = None, exact: bool = True) -> Schedule:
    """A Schedule whose LR at step t is ``jax.jit(schedule)(jnp.int32(t))``, bit for bit (module docstring).

    ``horizon`` (steps) bounds the recording of schedules that never settle to a constant (and any
    recording); past it the last recorded value holds.

        >>> s = from_optax(optax.warmup_cosine_decay_schedule(0.0, 3e-4, 1000, 100_000))
        >>> opt = warmup_fused.AdamW(model.parameters(), lr=s.base_lrs[0], schedule=s)
    """
    import jax
    import jax.numpy as jnp

    check_horizon(horizon)
    if not callable(schedule):
        raise TypeError(f"schedule must be an optax schedule (a function of the step count), got "
                        f"{type(schedule).__name__}")
    name = getattr(schedule, "__qualname__", type(schedule).__name__).split(".<locals>")[0]
    try:
        out = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as exc:
        raise TypeError(f"schedule: {name} cannot be called with an int32 step count: {exc}") from exc
    if getattr(out, "shape", None) != ():
        raise ValueError(f"schedule: {name} must return a scalar, got {out}")
    # jax.jit(schedule) compiled once for an int32 count, called once per recorded step: the values are
    # those of jax.jit(schedule)(jnp.int32(t)) by construction (a lax.map or vmap loop compiles differently).
    compiled = jax.jit(schedule).lower(jax.ShapeDtypeStruct((), jnp.int32)).compile()

    def record(steps):
        return [[float(compiled(np.int32(t))) for t in steps]]

    counts = None if horizon is None else min(horizon, INT32_MAX)
    phases = materialise([_phases(schedule)], record, counts, name)
    return Schedule(phases, [float(compiled(np.int32(0)))], horizon=horizon, exact=exact, name=name)


__all__ = ["from_optax"]
