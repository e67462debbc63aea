"""from_torch: a live reference scheduler -> a Schedule whose LRs equal it bit for bit.

Three routes, in order:
1. transformers' ``get_*_schedule*`` LambdaLRs (a functools.partial of a known function, or
   get_constant_schedule's own function) and ``warmup_scheduler.GradualWarmupScheduler`` without an
   after_scheduler become closed-form programs that mirror the reference's expression tree (including
   the float32 arithmetic of a float32 tensor ``lr``): exact at every step, no horizon needed.
2. Schedulers that become constant after a known step (ConstantLR, LinearLR, MultiStepLR, PolynomialLR,
   OneCycleLR) are recorded up to that step by running a detached copy; the last value then holds
   forever, which is what the reference does (OneCycleLR raises past total_steps; we hold its last LR).
3. Anything else (recursive schedulers, unknown lambdas, chains) is recorded over ``horizon`` steps,
   holding the last value past it; without ``horizon`` it is refused: we never approximate silently.
Recorded schedulers that cycle momentum (OneCycleLR, CyclicLR) also record it, into the schedule's momentum
channel. ReduceLROnPlateau becomes the device plateau schedule (``schedules.reduce_on_plateau``, driven by
``optimizer.observe(metric)``); inside another scheduler it is refused.
"""
from __future__ import annotations

import copy
import functools
import math
import warnings
from typing import Callable

import torch
from torch.optim import lr_scheduler as lrs

from .._expr import BASE, PI, STEP, Expr, cos, lift, pmax, round_f32, sqrt
from ._schedule import Recorded, Schedule, normalise_phases


def _f(x) -> float:
    return float(x)


# ------------------------------------------------------------ transformers
# Each returns the lambda's phases as (begin, factor expression); LambdaLR multiplies: BASE * factor.
def _hf_warmup(w: int) -> Expr:
    return STEP / _f(max(1, w))


def _hf_constant(kw):
    return [(0, 1.0)]


def _hf_constant_with_warmup(kw):
    w = kw["num_warmup_steps"]
    return [(0, STEP / _f(max(1.0, w))), (w, 1.0)]


def _hf_linear(kw):
    w, t = kw["num_warmup_steps"], kw["num_training_steps"]
    return [(0, _hf_warmup(w)), (w, pmax(0.0, (_f(t) - STEP) / _f(max(1, t - w))))]


def _hf_progress(w: int, t: int) -> Expr:
    return (STEP - _f(w)) / _f(max(1, t - w))


def _hf_cosine(kw):
    w, t, cycles = kw["num_warmup_steps"], kw["num_training_steps"], kw["num_cycles"]
    rate = kw.get("min_lr_rate", 0.0)
    factor = 0.5 * (1.0 + cos(PI * _f(cycles) * 2.0 * _hf_progress(w, t)))
    factor = factor * (1 - rate) + rate
    return [(0, _hf_warmup(w)), (w, pmax(0.0, factor))]


def _hf_hard_restarts(kw):
    w, t, cycles = kw["num_warmup_steps"], kw["num_training_steps"], kw["num_cycles"]
    factor = pmax(0.0, 0.5 * (1.0 + cos(PI * ((_f(cycles) * _hf_progress(w, t)) % 1.0))))
    # progress >= 1.0 exactly when step >= max(w + max(1, t - w), ...): find the first such step.
    end = _first_step(lambda s: _f(s - w) / _f(max(1, t - w)) >= 1.0, w)
    return [(0, _hf_warmup(w)), (w, factor), (end, 0.0)] if end > w else [(0, _hf_warmup(w)), (w, 0.0)]


def _hf_polynomial(kw):
    w, t = kw["num_warmup_steps"], kw["num_training_steps"]
    lr_end, power, lr_init = kw["lr_end"], kw["power"], kw["lr_init"]
    lr_range = lr_init - lr_end
    decay_steps = t - w
    # pct_remaining = 1 - (step - w) / decay_steps (int - int is exact below 2**53)
    pct = 1.0 - (STEP - _f(w)) / _f(decay_steps) if decay_steps else None
    phases = [(0, _hf_warmup(w))]
    # w == t: the reference divides 0 by 0 at step t (ZeroDivisionError); we give it lr_end there.
    if w < t:
        phases.append((w, (_f(lr_range) * pct ** _f(power) + _f(lr_end)) / _f(lr_init)))
    phases.append((t + 1 if w < t else w, _f(lr_end) / _f(lr_init)))
    return phases


def _hf_inverse_sqrt(kw):
    w, ts = kw["num_warmup_steps"], kw["timescale"]
    shift = ts - w
    return [(0, _hf_warmup(w)), (w, 1.0 / sqrt((STEP + _f(shift)) / _f(ts)))]


def _hf_cosine_min_lr_rate(kw):
    w, t, cycles = _f(kw["num_warmup_steps"]), _f(kw["num_training_steps"]), kw["num_cycles"]
    rate, warm_rate = kw.get("min_lr_rate", 0.0), kw.get("warmup_lr_rate")
    iw = int(kw["num_warmup_steps"])
    if warm_rate is None:
        warm = (STEP + 1.0) / max(1.0, w)
    else:
        warm_rate = float(warm_rate)
        warm = warm_rate + (1.0 - warm_rate) * STEP / _f(max(1, w - 1))
    progress = (STEP - w + 1.0) / max(1.0, t - w)
    factor = 0.5 * (1.0 + cos(PI * cycles * 2.0 * progress))
    factor = factor * (1 - rate) + rate
    return [(0, warm), (iw, pmax(0, factor))]


def _hf_wsd(kw):
    w, stable, decay = kw["num_warmup_steps"], kw["num_stable_steps"], kw["num_decay_steps"]
    cycles, ratio = kw["num_cycles"], kw["min_lr_ratio"]
    progress = STEP / _f(max(1, w))
    warm = {"linear": progress, "cosine": 0.5 * (1.0 - cos(PI * progress)),
            "1-sqrt": 1.0 - sqrt(1.0 - progress)}[kw["warmup_type"]]
    dprog = (STEP - _f(w + stable)) / _f(max(1, decay))
    cool = {"linear": 1.0 - dprog, "cosine": 0.5 * (1.0 + cos(PI * _f(cycles) * 2.0 * dprog)),
            "1-sqrt": 1.0 - sqrt(dprog)}[kw["decay_type"]]
    warm = warm * (1.0 - ratio) + ratio
    cool = cool * (1.0 - ratio) + ratio
    # The reference tests `step < w`, then `step < w + stable`, then `step < w + stable + decay`, in order:
    # a later phase never begins before an earlier one ends (stable may be negative).
    decay_begin = max(w, w + stable)
    end = max(decay_begin, w + stable + decay)
    phases = [(0, pmax(0.0, warm)), (w, 1.0), (decay_begin, pmax(0.0, cool)), (end, _f(ratio))]
    return normalise_phases(phases)


_HF_FUNCTIONS: dict[str, Callable] = {
    "_get_constant_lambda": _hf_constant,
    "_get_constant_schedule_with_warmup_lr_lambda": _hf_constant_with_warmup,
    "_get_linear_schedule_with_warmup_lr_lambda": _hf_linear,
    "_get_cosine_schedule_with_warmup_lr_lambda": _hf_cosine,
    "_get_cosine_with_hard_restarts_schedule_with_warmup_lr_lambda": _hf_hard_restarts,
    "_get_polynomial_decay_schedule_with_warmup_lr_lambda": _hf_polynomial,
    "_get_inverse_sqrt_schedule_lr_lambda": _hf_inverse_sqrt,
    "_get_cosine_with_min_lr_schedule_with_warmup_lr_rate_lambda": _hf_cosine_min_lr_rate,
    "_get_wsd_scheduler_lambda": _hf_wsd,
}


def _first_step(pred, start: int, limit: int = 2**53) -> int:
    """Smallest step >= start where the monotone predicate holds (binary search)."""
    lo, hi = start, start
    while not pred(hi):
        lo, hi = hi, max(1, hi * 2)
        if hi >= limit:
            return limit
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _hf_phases(fn) -> list | None:
    import inspect

    if isinstance(fn, functools.partial):
        if fn.args:
            return None
        func, keywords = fn.func, fn.keywords
    elif inspect.isfunction(fn):  # get_constant_schedule passes _get_constant_lambda itself
        func, keywords = fn, {}
    else:
        return None
    if getattr(func, "__module__", "") != "transformers.optimization":
        return None
    build = _HF_FUNCTIONS.get(func.__name__)
    if build is None:
        return None
    params = inspect.signature(func).parameters
    kw = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    kw.update(keywords)
    if any(p.kind is p.KEYWORD_ONLY and k not in kw for k, p in params.items()):
        return None  # not the call the reference makes: let it be recorded (and fail as it would)
    if any(isinstance(v, torch.Tensor) for v in kw.values()):
        return None  # e.g. lr_init = a tensor optimizer.defaults['lr'] that the scheduler itself rewrites: recorded
    return normalise_phases(build(kw))


# ------------------------------------------------------------ helpers
def _lambda_factors(sched: lrs.LambdaLR):
    """Per group, the transformers lambda's phases as (begin, factor), or None if one is not known."""
    per_group = []
    for fn in sched.lr_lambdas:
        phases = _hf_phases(fn)
        if phases is None:
            return None
        per_group.append(phases)
    return per_group


def _gradual_warmup_factors(sched):
    """GradualWarmupScheduler (ildoonet/pytorch-gradual-warmup-lr) without an after_scheduler: its get_lr
    multiplies base_lr by float(last_epoch) / total_epoch (multiplier 1) or (multiplier - 1.) * last_epoch /
    total_epoch + 1., then by multiplier from total_epoch + 1 on."""
    m, total = sched.multiplier, sched.total_epoch
    warm = STEP / total if m == 1.0 else (m - 1.0) * STEP / total + 1.0  # an int total is exact as float
    return [[(0, warm), (total + 1, lift(m))]] * len(sched.optimizer.param_groups)


def _lr_times(factor: Expr, g: int, lr) -> Expr:
    """``base_lr * factor`` as LRScheduler computes and stores it: in Python floats for a float ``lr``; for a
    tensor ``lr``, base_lr is a tensor of its dtype, so the product is tensor arithmetic (the factor rounded to
    the tensor's dtype, then the product rounded) and is fill_()ed into the tensor."""
    if not isinstance(lr, torch.Tensor) or lr.dtype == torch.float64:
        return BASE * factor
    if lr.dtype == torch.float32:  # float32 x float32 is exact in double: one rounding, as float32 arithmetic
        return round_f32(BASE * round_f32(factor))
    raise ValueError(f"scheduler: param_groups[{g}]['lr'] is a {lr.dtype} tensor; closed-form conversion mirrors "
                     "float, float32 and float64 LRs only")


def _settles_after(sched) -> int | None:
    """A step after which the scheduler's LR never changes again, when one is known."""
    if type(sched) in (lrs.ConstantLR, lrs.LinearLR, lrs.PolynomialLR):
        return sched.total_iters
    if type(sched) is lrs.MultiStepLR:
        return max(sched.milestones, default=0)
    if type(sched) is lrs.OneCycleLR:
        # get_lr accepts last_epoch == total_steps (extrapolating the last phase) and raises past it.
        return sched.total_steps
    return None


def _detached_copy(sched):
    """A deep copy of the scheduler and its optimizer in which parameters and state are tiny stand-ins."""
    opt = sched.optimizer
    memo = {}
    for group in opt.param_groups:
        for p in group["params"]:
            memo[id(p)] = torch.empty(0)
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                memo[id(v)] = torch.empty(0)
    return copy.deepcopy(sched, memo)


def _tree(sched):
    """The scheduler and those it drives (SequentialLR's and ChainedScheduler's _schedulers,
    GradualWarmupScheduler's after_scheduler), depth first."""
    yield sched
    children = list(getattr(sched, "_schedulers", ()) or ()) + [getattr(sched, "after_scheduler", None)]
    for child in children:
        if isinstance(child, (lrs.LRScheduler, lrs.ReduceLROnPlateau)):
            yield from _tree(child)


def _steps_taken(sched) -> int:
    """The largest last_epoch in the tree (ChainedScheduler has none of its own; SequentialLR and
    GradualWarmupScheduler delegate to theirs)."""
    epochs = [getattr(s, "last_epoch", 0) for s in _tree(sched)]
    return max(e if isinstance(e, int) else 0 for e in epochs)


def _momentum_key(sched) -> str | None:
    """Where the cycled momentum lives ('momentum' or 'betas') when a scheduler in the tree cycles it
    (OneCycleLR, CyclicLR with cycle_momentum=True), else None."""
    for s in _tree(sched):
        if getattr(s, "cycle_momentum", False):
            return "betas" if getattr(s, "use_beta1", False) else "momentum"
    return None


def _finite(name: str, sched, g: int, t: int, value) -> float:
    value = float(value.item()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(value):
        raise ValueError(f"scheduler: {type(sched).__name__} sets param_groups[{g}]{name} = {value} at step {t}; "
                         "a schedule needs finite values")
    return value


def _record(sched, steps: int, momentum_key: str | None):
    """Runs a copy of the reference loop: values[g][t] = param_groups[g]['lr'] during iteration t, and the
    momentum (``group['momentum']`` or ``group['betas'][0]``) when ``momentum_key`` is given."""
    taken = _steps_taken(sched)
    if taken != 0:
        raise ValueError(
            f"scheduler: {type(sched).__name__} has already been stepped (last_epoch={taken}); "
            "from_torch records from step 0, so convert it right after construction"
        )
    twin = _detached_copy(sched)
    groups = twin.optimizer.param_groups
    rows = [[] for _ in groups]
    momenta = [[] for _ in groups] if momentum_key else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(steps):
            for g, group in enumerate(groups):
                rows[g].append(_finite("['lr']", sched, g, t, group["lr"]))
                if momenta is not None:
                    if momentum_key not in group:
                        raise ValueError(f"scheduler: {type(sched).__name__} cycles momentum but param_groups[{g}] "
                                         f"has no '{momentum_key}'")
                    where = "['betas'][0]" if momentum_key == "betas" else "['momentum']"
                    value = group["betas"][0] if momentum_key == "betas" else group["momentum"]
                    momenta[g].append(_finite(where, sched, g, t, value))
            if t + 1 < steps:
                twin.step()
    as_rows = lambda r: tuple(tuple(x) for x in r)  # noqa: E731
    return as_rows(rows), (as_rows(momenta) if momenta is not None else None)


def _base_lrs(sched) -> list[float]:
    return [float(b) for b in getattr(sched, "base_lrs", [g.get("initial_lr", g["lr"])
                                                          for g in sched.optimizer.param_groups])]


def _plateau(sched: lrs.ReduceLROnPlateau) -> Schedule:
    """A ReduceLROnPlateau, with its current state and each group's current LR, as the device plateau schedule."""
    from .plateau import reduce_on_plateau

    groups = sched.optimizer.param_groups
    f32 = [isinstance(g["lr"], torch.Tensor) and g["lr"].dtype == torch.float32 for g in groups]
    return reduce_on_plateau(sched.mode, sched.factor, sched.patience, sched.threshold, sched.threshold_mode,
                             sched.cooldown, list(sched.min_lrs), sched.eps, base_lr=[float(g["lr"]) for g in groups],
                             best=sched.best, num_bad_epochs=sched.num_bad_epochs,
                             cooldown_counter=sched.cooldown_counter, last_epoch=sched.last_epoch, float32_lrs=f32)


def from_torch(scheduler, *, horizon: int | None = None, exact: bool = True,
               steps_per_epoch: int | None = None) -> Schedule:
    """A Schedule equal, bit for bit, to ``scheduler``'s ``param_group['lr']`` at every step.

    Step t means iteration t of ``for t ...: opt.step(); sched.step()`` (t = sched.last_epoch).
    ``horizon`` (steps) bounds recording for schedulers that are not closed-form; past it the last
    recorded value holds. Closed-form conversions use it only to size exact-mode tables.
    timm's schedulers are converted by ``convert_timm.from_timm`` (``steps_per_epoch`` is theirs).

    The result is absolute: its LRs are the scheduler's own (an optimizer uses them as they are). When the
    scheduler cycles momentum (OneCycleLR / CyclicLR with ``cycle_momentum=True``, also inside SequentialLR,
    ChainedScheduler or GradualWarmupScheduler), the momentum (SGD) or ``betas[0]`` (Adam, AdamW) it leaves
    in each param group is recorded too, as the schedule's momentum channel. A tensor ``lr`` is mirrored as
    torch stores it (float32 rounding for a float32 tensor).
    """
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise ValueError(f"horizon must be None or an int >= 1, got {horizon!r}")
    from .convert_timm import from_timm, is_timm_scheduler

    if is_timm_scheduler(scheduler):
        return from_timm(scheduler, horizon=horizon, exact=exact, steps_per_epoch=steps_per_epoch)
    if steps_per_epoch is not None:
        raise ValueError("steps_per_epoch applies to timm's epoch-based schedulers; a torch scheduler is "
                         "converted per scheduler.step()")
    if not isinstance(scheduler, (lrs.LRScheduler, lrs.ReduceLROnPlateau)):
        raise TypeError(f"scheduler must be a torch.optim.lr_scheduler.LRScheduler, got "
                        f"{type(scheduler).__name__}")
    if isinstance(scheduler, lrs.ReduceLROnPlateau):  # metric-driven: the device plateau schedule, its state kept
        return _plateau(scheduler)
    for s in _tree(scheduler):
        if isinstance(s, lrs.ReduceLROnPlateau):  # an LRScheduler subclass in recent torch
            raise TypeError(f"scheduler: {type(scheduler).__name__} drives a ReduceLROnPlateau, which changes the LR "
                            "from a metric (step(metrics)), not from the step count; convert the ReduceLROnPlateau "
                            "alone (schedules.reduce_on_plateau, composable with schedules.sequential)")
    name = type(scheduler).__name__
    base_lrs = _base_lrs(scheduler)

    factors = None
    if type(scheduler) is lrs.LambdaLR:
        factors = _lambda_factors(scheduler)
        if factors is not None:
            fn = scheduler.lr_lambdas[0]
            name = getattr(fn, "func", fn).__name__.strip("_")
    elif type(scheduler).__name__ == "GradualWarmupScheduler" and getattr(scheduler, "after_scheduler", 1) is None:
        factors = _gradual_warmup_factors(scheduler)
    if factors is not None:
        groups = scheduler.optimizer.param_groups
        phases = [[(b, _lr_times(lift(f), g, group["lr"])) for b, f in per]
                  for g, (per, group) in enumerate(zip(factors, groups))]
        if horizon is None and type(scheduler) is lrs.LambdaLR:
            # transformers' schedules end at num_training_steps: table their transcendental phases up to it.
            total = getattr(scheduler.lr_lambdas[0], "keywords", {}).get("num_training_steps")
            horizon = None if total is None else int(total) + 1
        return Schedule(phases, base_lrs, horizon=horizon, exact=exact, name=name)

    settle = _settles_after(scheduler)
    if horizon is None:
        if settle is None:
            raise ValueError(
                f"horizon: {name} is not closed-form and never settles to a constant, so from_torch must "
                "record it; pass horizon=<total training steps> (past it the last LR holds)"
            )
        steps = settle + 1
    else:
        steps = horizon if settle is None else min(horizon, settle + 1)
    values, momenta = _record(scheduler, steps, _momentum_key(scheduler))
    momentum = None if momenta is None else [[(0, Recorded(momenta))]]
    return Schedule([[(0, Recorded(values))]], base_lrs, momentum=momentum,
                    horizon=horizon if horizon is not None else steps, exact=exact, name=name)


__all__ = ["from_torch"]
