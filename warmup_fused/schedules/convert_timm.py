"""timm's schedulers (``timm.scheduler``) -> a Schedule equal to them bit for bit (``from_torch`` dispatches here).

Which LR applies at optimizer step k (0-based, the step the warmup_fused optimizer counts). timm's training
loop constructs the scheduler (which sets the first LR), calls ``step_update(num_updates=k + 1)`` after
update k and ``step(epoch=e + 1)`` at the end of epoch e. So the LR of step k is

* update-based (``t_in_epochs=False``): the constructor's LR at k = 0, then ``_get_lr(k)``;
* epoch-based (``t_in_epochs=True``, with ``steps_per_epoch=S`` optimizer steps per epoch and e = k // S): the
  constructor's LR during epoch 0, then ``_get_lr(e)``;

times the group's ``lr_scale`` where it has one, as timm's ``update_groups`` does. The constructor's LR is
``warmup_lr_init`` with a warmup (``_get_lr(0)`` gives the same), else the base LR, which ``_get_lr(0)`` need
not equal (the cosine computes ``lr_min + 0.5 * (base - lr_min) * 2``).

CosineLRScheduler, TanhLRScheduler, PolyLRScheduler, StepLRScheduler and MultiStepLRScheduler become programs
that mirror ``_get_lr`` op for op: with ``cycle_mul == 1`` all cycles are one phase (the cycle index is
``t // t_initial``); with ``cycle_mul != 1`` each cycle is a phase, found by evaluating timm's own cycle-index
formula on the host. Noise (``noise_range_t``) is seeded by timm with ``noise_seed + t``, so it is reproducible:
it is recorded over its range. Other timm schedulers (subclasses, WSDLRScheduler) and argument types the
programs do not cover are recorded over ``horizon``. PlateauLRScheduler depends on a metric and is refused.
"""
from __future__ import annotations

import bisect
import math
import numbers
import sys
import warnings

from .._expr import BASE, PI, STEP, Expr, cos, lift, tanh
from ._foreign import Pending, check_horizon, materialise
from ._schedule import MAX_STEP, Schedule, normalise_phases
from .convert import _detached_copy, _first_step
from .native import _hold

_MAX_CYCLES = 4096  # cycle_mul != 1: a schedule with more cycles than this is recorded instead
_MAX_TABLE = 2**24  # exact-mode table entries (8 bytes each) built without a horizon


def is_timm_scheduler(obj) -> bool:
    """True for an instance of ``timm.scheduler.scheduler.Scheduler`` (without importing timm)."""
    base = sys.modules.get("timm.scheduler.scheduler")
    return base is not None and isinstance(obj, base.Scheduler)


# ------------------------------------------------------------------------------ argument checks
def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _pow_base(x) -> bool:
    """``x ** n`` (n an int) is libm's ``pow(x, n)``: for a float x, and for the ints 0 and 1 (exact powers)."""
    return _real(x) and (not _int(x) or x in (0, 1))


def _whole(x) -> bool:
    """A positive whole number below 2**53 (int or integral float): ``t // x`` is exact integer division."""
    return _real(x) and 0 < x < MAX_STEP and float(x).is_integer()


# ------------------------------------------------------------------------------ _get_lr after the warmup
# Each builder returns the phases (begin t, expression of STEP = t) of _get_lr's branch for t >= warmup_t, where
# T is the step that branch sees (t - warmup_t with warmup_prefix, else t), or None if no program mirrors it.
def _floordiv(x: Expr, d) -> Expr:
    """Python's ``t // d`` for a step t >= 0 and a divisor d > 0: the exact floor of t / d (below 2**50)."""
    if float(d).is_integer():
        return x // float(d)
    # t - t % d is d's multiple below t (% is exact, the subtraction rounds slightly) and its quotient by d is
    # within 2**-50 relative of an integer, which adding and removing 2**52 recovers (as CPython rounds it).
    return ((x - x % float(d)) / float(d) + 2.0**52) - 2.0**52


def _cycles(s, T: Expr, shift: int, body):
    """Cosine / tanh / poly cycles: ``body(t_curr, t_i, lr_max)`` is the LR inside cycle i < cycle_limit."""
    if not all(_real(x) for x in (s.t_initial, s.lr_min, s.cycle_mul, s.cycle_limit)) or s.t_initial <= 0:
        return None
    if not _pow_base(s.cycle_decay):
        return None
    wt = s.warmup_t
    if s.cycle_mul == 1:  # i = t // t_initial, t_curr = t - t_initial * i: integers, exact in float64
        if not _whole(s.t_initial):
            return None
        ti = float(s.t_initial)
        i = T // ti
        lr = body(T - ti * i, s.t_initial, BASE * (lift(s.cycle_decay) ** i))
        if lr is None:
            return None
        phases = [(wt, lr)]
        end = shift + int(ti) * max(0, math.ceil(s.cycle_limit))  # the first t whose cycle index >= cycle_limit
        if end < MAX_STEP:
            phases.append((max(wt, end), lift(s.lr_min)))
        return phases

    def index(u):  # timm's cycle index at T = u; None where its log is undefined (timm raises ValueError there)
        try:
            return math.floor(math.log(1 - u / s.t_initial * (1 - s.cycle_mul), s.cycle_mul))
        except (ValueError, ZeroDivisionError, OverflowError):
            return None

    phases, u = [], wt - shift
    while shift + u < MAX_STEP:
        i = index(u)
        if i is None:  # timm raises from here on; the last LR holds, as from_torch does past OneCycleLR's end
            if not phases:
                return None
            phases.append((shift + u, _hold(phases, shift + u - 1)))
            break
        if i >= s.cycle_limit:
            phases.append((shift + u, lift(s.lr_min)))
            break
        if len(phases) >= _MAX_CYCLES:
            return None
        grown = s.cycle_mul ** i
        t_i = grown * s.t_initial
        offset = (1 - grown) / (1 - s.cycle_mul) * s.t_initial  # t_curr = t - offset
        lr = body(T - offset, t_i, BASE * (s.cycle_decay ** i))
        if lr is None:
            return None
        phases.append((shift + u, lr))
        u = _first_step(lambda v: index(v) is None or index(v) > i, u + 1)
    return phases


def _k_powers(s, t_i):
    """k_decay and the constant ``t_i ** k``; None where an int k would make timm's exact int power
    ``t_curr ** k`` exceed 2**53 (the device's float pow is exact below)."""
    k = s.k_decay
    if not _real(k) or (_int(k) and abs(t_i ** k) >= MAX_STEP):
        return None
    return k, t_i ** k


def _cosine_body(s):
    def body(t_curr, t_i, lr_max):
        kp = _k_powers(s, t_i)
        if kp is None:
            return None
        k, t_i_k = kp
        return s.lr_min + 0.5 * (lr_max - s.lr_min) * (1 + cos(PI * t_curr ** k / t_i_k))
    return body


def _poly_body(s):
    def body(t_curr, t_i, lr_max):
        kp = _k_powers(s, t_i)
        if kp is None or not _real(s.power):
            return None
        k, t_i_k = kp
        return s.lr_min + (lr_max - s.lr_min) * (1 - t_curr ** k / t_i_k) ** s.power
    return body


def _tanh_body(s):
    def body(t_curr, t_i, lr_max):
        if not (_real(s.lb) and _real(s.ub)):
            return None
        tr = t_curr / t_i
        return s.lr_min + 0.5 * (lr_max - s.lr_min) * (1 - tanh(s.lb * (1. - tr) + s.ub * tr))
    return body


def _cyclic(make_body):
    return lambda s, T, shift: _cycles(s, T, shift, make_body(s))


def _step(s, T: Expr, shift: int):
    d, rate = s.decay_t, s.decay_rate
    if not (_real(d) and 0 < d < MAX_STEP and _pow_base(rate)):
        return None
    return [(s.warmup_t, BASE * (lift(rate) ** _floordiv(T, d)))]


def _multistep(s, T: Expr, shift: int):
    milestones, rate = list(s.decay_t), s.decay_rate
    if not (all(_real(m) for m in milestones) and _real(rate)):
        return None
    # bisect_right(decay_t, u + 1) changes only where u + 1 crosses a milestone m, i.e. at u = ceil(m - 1).
    start = s.warmup_t - shift
    begins = sorted({start} | {math.ceil(m - 1) for m in milestones if math.ceil(m - 1) > start})
    return [(shift + u, BASE * (rate ** bisect.bisect_right(s.decay_t, u + 1)))
            for u in begins if shift + u < MAX_STEP]


_DECAYS = {
    ("timm.scheduler.cosine_lr", "CosineLRScheduler"): _cyclic(_cosine_body),
    ("timm.scheduler.tanh_lr", "TanhLRScheduler"): _cyclic(_tanh_body),
    ("timm.scheduler.poly_lr", "PolyLRScheduler"): _cyclic(_poly_body),
    ("timm.scheduler.step_lr", "StepLRScheduler"): _step,
    ("timm.scheduler.multistep_lr", "MultiStepLRScheduler"): _multistep,
}


# ------------------------------------------------------------------------------ assembly
def _closed_form(s):
    """The LR of each t as phases (before lr_scale): the constructor's at t = 0, then _get_lr(t); or None."""
    build = _DECAYS.get((type(s).__module__, type(s).__qualname__))
    wt = getattr(s, "warmup_t", None)
    if build is None or not _int(wt) or wt < 0 or wt >= MAX_STEP or not _real(s.warmup_lr_init):
        return None
    shift = wt if s.warmup_prefix else 0
    decay = build(s, STEP - float(shift) if shift else STEP, shift)
    if decay is None:
        return None
    phases = []
    if wt:
        # Warmup slope (v - warmup_lr_init) / warmup_t, from the base LR v, or for TanhLRScheduler without
        # warmup_prefix from its _get_lr(warmup_t).
        tanh_at_end = type(s).__qualname__ == "TanhLRScheduler" and not s.warmup_prefix
        v = _hold(decay, wt) if tanh_at_end else BASE
        phases.append((0, s.warmup_lr_init + STEP * ((v - s.warmup_lr_init) / float(wt))))
    get_lr = normalise_phases(phases + decay)
    first = lift(s.warmup_lr_init) if wt else BASE
    return normalise_phases([(0, first)] + [(max(1, b), e) for b, e in get_lr])


def _with_noise(s, phases):
    """Phases with timm's noise range recorded (t = 0 keeps the constructor's LR, which has no noise)."""
    noise = s.noise_range_t
    if noise is None:
        return phases
    lo, hi = (noise[0], noise[1]) if isinstance(noise, (list, tuple)) else (noise, None)
    begin, end = max(1, math.ceil(lo)), None if hi is None else math.ceil(hi)
    if end is not None and end <= begin:
        return phases
    out = [p for p in phases if p[0] < begin] + [(begin, Pending())]
    if end is not None:
        out.append((end, [e for b, e in phases if b <= end][-1]))
        out += [p for p in phases if p[0] > end]
    return out


def _record(s, ts) -> list:
    """``param_groups[g]['lr']`` after ``step(t)`` (epoch-based) or ``step_update(t)``, on a detached copy."""
    twin = _detached_copy(s)
    step = twin.step if twin.t_in_epochs else twin.step_update
    groups = twin.optimizer.param_groups
    rows = [[] for _ in groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in ts:
            step(t)
            for g, group in enumerate(groups):
                rows[g].append(float(group["lr"]))
    return rows


def from_timm(scheduler, *, horizon: int | None = None, exact: bool = True,
              steps_per_epoch: int | None = None) -> Schedule:
    """A Schedule equal, bit for bit, to timm's ``scheduler`` driven by timm's training loop (module docstring).

    ``steps_per_epoch`` (optimizer steps per epoch) is required for epoch-based schedulers
    (``t_in_epochs=True``) and refused for update-based ones. ``horizon`` is in optimizer steps.
    """
    check_horizon(horizon)
    s, name = scheduler, type(scheduler).__name__
    plateau = sys.modules.get("timm.scheduler.plateau_lr")
    if plateau is not None and isinstance(s, plateau.PlateauLRScheduler):
        raise TypeError(
            f"scheduler: timm's {name} depends on a metric, not on the step, so it cannot be converted to a "
            "schedule of the step; use warmup_fused's on-device plateau schedule instead"
        )
    if s.param_group_field != "lr":
        raise TypeError(f"scheduler: {name} schedules {s.param_group_field!r}; only 'lr' can be converted")
    if s.t_in_epochs:
        if steps_per_epoch is None:
            raise ValueError(
                f"steps_per_epoch: {name} has t_in_epochs=True (timm steps it once per epoch with "
                "scheduler.step(epoch)); pass steps_per_epoch=<optimizer steps per epoch>"
            )
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
    elif steps_per_epoch is not None:
        raise ValueError(
            f"steps_per_epoch: {name} has t_in_epochs=False (stepped per update with step_update), so its LR "
            "does not depend on epochs; leave steps_per_epoch out"
        )
    per_epoch = steps_per_epoch or 1
    phases = _closed_form(s)
    groups = s.optimizer.param_groups
    per_group = []
    for group in groups:
        if phases is None:  # the constructor's LR is read from the group: convert right after construction
            per_group.append([(0, lift(float(group["lr"]))), (1, Pending())])
            continue
        scale = group.get("lr_scale")
        per_group.append([(b, e if scale is None or isinstance(e, Pending) else e * scale)
                          for b, e in _with_noise(s, phases)])
    horizon_t = None if horizon is None else -(-horizon // per_epoch)
    per_group = materialise(per_group, lambda ts: _record(s, ts), horizon_t, name)
    if exact and horizon is None:  # bounded cos/tanh/pow phases are tabled whole: refuse an unreasonable size
        tabled = sum(end - begin for phases in per_group for (begin, e), (end, _) in zip(phases, phases[1:])
                     if isinstance(e, Expr) and e.transcendental)
        if tabled > _MAX_TABLE:
            raise ValueError(f"horizon: {name} computes cos/tanh/pow over {tabled:,} steps, which exact mode would "
                             "table; pass horizon=<total training steps> to table only those")
    return Schedule(per_group, [float(v) for v in s.base_values], steps_per_epoch=per_epoch, horizon=horizon,
                    exact=exact, name=name)


__all__ = ["from_timm", "is_timm_scheduler"]
