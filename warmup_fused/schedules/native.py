"""Native schedule constructors: each mirrors one named reference formula, op for op, so it is bit-exact.

A schedule is a warmup phase ``[0, warmup)`` followed by a decay. ``warmup`` is an int (HF's linear warmup
from 0, ``float(s) / float(max(1, w))``) or one of the :class:`Warmup` specs built by ``linear_warmup``,
``linear_warmup_from``, ``gradual_warmup``, ``constant_warmup`` and ``exponential_warmup``.

Decays come in two kinds, as their references do:

* transformers / fairseq style decays see the **global** step ``s`` (their formulas already subtract the
  warmup): ``constant``, ``linear_decay``, ``polynomial_decay``, ``warmup_cosine``, ``inverse_sqrt``,
  ``inverse_time``, ``piecewise_constant``;
* torch-scheduler decays see the **local** step ``d = s - warmup`` (as after ``SequentialLR`` or
  ``GradualWarmupScheduler``): ``step_decay``, ``multistep_decay``, ``exponential_decay``,
  ``cosine_annealing``, ``cosine_warm_restarts``.

``noam``, ``fairseq_inverse_sqrt``, ``wsd`` and ``one_cycle`` bring their own warmup. ``sequential`` and
``chained`` combine schedules.

Common keyword arguments of every constructor:

* ``base_lr`` (float or one per param group). Without it (the default) the schedule is *relative*: its LRs
  are factors of base LR 1.0, and an optimizer binds them to each param group's ``lr``. With it, the
  schedule is *absolute*: an optimizer uses its LRs as they are.
* ``steps_per_epoch`` (default 1: every boundary and step argument is in epochs of that many steps),
* ``horizon`` (steps; sizes exact-mode tables of cos/pow/exp/log phases; defaults to the schedule's
  natural total where it has one, else it is required for unbounded transcendental phases in exact mode),
* ``exact`` (default True).

    >>> from warmup_fused import schedules as S
    >>> s = S.linear_decay(total=1000, warmup=100, base_lr=[3e-4, 1e-3])
    >>> s.lr_at(range(4))          # float64 [2, 4]
"""
from __future__ import annotations

import math
import numbers
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Sequence, Union

from .._expr import _BASE, BASE, LOCAL, PI, STEP, Expr, Op, cos, exp, lift, pmax, pmin, repeat_mul, sqrt
from ._schedule import MAX_STEP, Schedule, UnsettledProduct, lr_list, normalise_phases

Number = Union[int, float]


# ---------------------------------------------------------------- validation
def _int(name: str, v, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if v >= MAX_STEP:
        raise ValueError(f"{name} must be < 2**53, got {v}")
    return v


def _float(name: str, v, lo: float = 0.0, *, open_lo: bool = False, hi: float = math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < lo or (open_lo and v == lo) or v > hi:
        bound = f"{'>' if open_lo else '>='} {lo}" + (f" and <= {hi}" if hi != math.inf else "")
        raise ValueError(f"{name} must be finite and {bound}, got {v}")
    return v


def _choice(name: str, v, options: Sequence[str]) -> str:
    if v not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {v!r}")
    return v


def _base_lrs(base_lr) -> tuple | None:
    """None (a relative schedule) or one LR per group."""
    return None if base_lr is None else lr_list("base_lr", base_lr)


# ---------------------------------------------------------------- expression transforms
def _subst(e: Expr, **leaves: Expr) -> Expr:
    """``e`` with its STEP / LOCAL / BASE leaves replaced (keys ``step``, ``local``, ``base``)."""
    table = {Op.STEP: leaves.get("step"), Op.LOCAL: leaves.get("local"), _BASE: leaves.get("base")}
    def walk(x: Expr) -> Expr:
        if not x.args:
            return table.get(x.op) or x
        return Expr(x.op, tuple(walk(a) for a in x.args), x.value)
    return walk(e)


def _shift(e: Expr, step_by: int = 0, local_by: int = 0) -> Expr:
    """``e`` evaluated ``step_by`` steps earlier (STEP -> STEP - k) and with LOCAL -> LOCAL + k.

    Integer offsets below 2**53 are exact in float64, so the shifted expression yields the same bits.
    """
    return _subst(e, step=STEP - float(step_by) if step_by else None,
                  local=LOCAL + float(local_by) if local_by else None)


def _hold(phases, step: int) -> Expr:
    """The expression of ``phases`` at ``step`` with the step folded in: a constant phase holding that value."""
    begin, e = [p for p in phases if p[0] <= step][-1]
    return _subst(e, step=lift(float(step)), local=lift(float(step - begin)))


# ---------------------------------------------------------------- warmups
@dataclass(frozen=True)
class Warmup:
    """A warmup phase ``[0, steps)``: ``expr`` gives the LR there; the decay after it uses base ``BASE * scale``."""

    steps: int
    expr: Expr
    scale: float = 1.0
    name: str = "linear"


def linear_warmup(steps: int) -> Warmup:
    """Linear warmup from 0 as in transformers: ``base * (float(s) / float(max(1, steps)))`` for ``s < steps``.

        >>> linear_decay(total=1000, warmup=linear_warmup(100))   # same as warmup=100
    """
    steps = _int("warmup", steps)
    return Warmup(steps, BASE * (STEP / float(max(1, steps))), name="linear")


def linear_warmup_from(steps: int, start_factor: float) -> Warmup:
    """Linear warmup from ``start_factor``: torchvision's reference ``warmup_lr_scheduler`` (Goyal et al. 2017),
    ``alpha = float(s) / steps; base * (start_factor * (1 - alpha) + alpha)``.

        >>> step_decay(30, 0.1, warmup=linear_warmup_from(5, 0.001))
    """
    steps = _int("warmup", steps)
    f = _float("start_factor", start_factor)
    alpha = STEP / float(steps)
    return Warmup(steps, BASE * (f * (1.0 - alpha) + alpha), name="linear_from")


def gradual_warmup(total_epoch: int, multiplier: float = 1.0) -> Warmup:
    """``warmup_scheduler.GradualWarmupScheduler(opt, multiplier, total_epoch)``: through epoch ``total_epoch``
    *inclusive*, ``base * (float(e) / total_epoch)`` (multiplier 1) or
    ``base * ((multiplier - 1.) * e / total_epoch + 1.)``; then the decay runs from base ``base * multiplier``
    at local step 0 (as its ``after_scheduler`` does). The warmup lasts ``total_epoch + 1`` steps.

        >>> constant(warmup=gradual_warmup(5, multiplier=8.0), base_lr=0.1)  # 0.1 ... 0.8, then 0.8
    """
    total = _int("total_epoch", total_epoch, 1)
    m = _float("multiplier", multiplier, 1.0)
    if m == 1.0:
        expr = BASE * (STEP / float(total))
    else:
        expr = BASE * ((m - 1.0) * STEP / float(total) + 1.0)
    return Warmup(total + 1, expr, scale=m, name="gradual")


def constant_warmup(steps: int, factor: float) -> Warmup:
    """Constant warmup (Goyal et al. 2017, sec. 2.2): ``base * factor`` for ``s < steps``.

        >>> step_decay(30, warmup=constant_warmup(5, 0.1), base_lr=0.1)
    """
    steps = _int("warmup", steps)
    return Warmup(steps, BASE * _float("factor", factor), name="constant")


def exponential_warmup(steps: int, period: float | None = None) -> Warmup:
    """pytorch_warmup's ``ExponentialWarmup(warmup_period=period)`` factor, for ``s < steps``:
    ``base * (1.0 - math.exp(-(s + 1) / period))``. ``period`` defaults to ``steps / 3`` (the factor then
    reaches 1 - e**-3 = 0.95 at the end). pytorch_warmup applies the factor forever (its dampening); here
    the decay takes over at ``steps`` (use ``chained`` for a product). Needs a table in exact mode.

        >>> constant(warmup=exponential_warmup(300, period=100))
    """
    steps = _int("warmup", steps)
    period = steps / 3 if period is None else period
    if steps:
        period = _float("period", period, 0.0, open_lo=True)
    return Warmup(steps, BASE * (1.0 - exp(-(STEP + 1.0) / period)), name="exponential")


def _as_warmup(warmup) -> Warmup:
    if isinstance(warmup, Warmup):
        return warmup
    return linear_warmup(warmup)


# ---------------------------------------------------------------- assembly
def _schedule(name: str, phases, natural_horizon: int | None = None, *,
              base_lr: Union[Number, Sequence[Number], None] = None, steps_per_epoch: int = 1,
              horizon: int | None = None, exact: bool = True, momentum=None) -> Schedule:
    horizon = natural_horizon if horizon is None else _int("horizon", horizon)
    return Schedule([normalise_phases(phases)], _base_lrs(base_lr), momentum=momentum,
                    steps_per_epoch=_int("steps_per_epoch", steps_per_epoch, 1), horizon=horizon, exact=exact,
                    name=name)


def _warmup_then(name: str, warmup, decay, *, local: bool, total: int | None = None,
                 natural_horizon: int | None = None, **common) -> Schedule:
    """The warmup phase ``[0, w)`` then the ``decay`` phases ``[(begin, expr)]``.

    ``local``: the decay's STEP and begins count from the end of the warmup (torch schedulers after
    SequentialLR / GradualWarmupScheduler); else they are global (transformers), and the decay phase active
    at ``w`` is cut to begin there (``normalise_phases`` drops the ones it replaces).
    """
    wu = _as_warmup(warmup)
    w = wu.steps
    if total is not None and w > total:
        raise ValueError(f"warmup ({w} steps) must be <= total ({total})")
    phases = [(0, wu.expr)] if w else []
    for begin, e in decay:
        e = lift(e)
        if wu.scale != 1.0:
            e = _subst(e, base=BASE * wu.scale)
        if local:
            phases.append((begin + w, _shift(e, step_by=w)))
        else:
            phases.append((max(begin, w), _shift(e, local_by=max(0, w - begin))))
    if natural_horizon is None and total is not None:
        natural_horizon = total + 1
    return _schedule(name, phases, natural_horizon, **common)


def _hf(factor) -> Expr:
    """transformers' LambdaLR: ``base_lr * lr_lambda(step)``."""
    return BASE * factor


def _torch_cosine(t: Expr, t_max: float, eta_min: float) -> Expr:
    """torch's cosine: ``eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2``."""
    return eta_min + (BASE - eta_min) * (1 + cos(PI * t / float(t_max))) / 2


# ---------------------------------------------------------------- transformers-style decays (global step)
def constant(*, warmup: Union[int, Warmup] = 0, **common) -> Schedule:
    """transformers ``get_constant_schedule_with_warmup``: the warmup, then ``base * 1.0``.

        >>> constant(warmup=100, base_lr=1e-3)
    """
    return _warmup_then("constant", warmup, [(0, _hf(1.0))], local=False, **common)


def linear_decay(total: int, *, warmup: Union[int, Warmup] = 0, **common) -> Schedule:
    """transformers ``get_linear_schedule_with_warmup``:
    ``base * max(0.0, float(total - s) / float(max(1, total - warmup)))`` for ``s >= warmup``.

        >>> linear_decay(total=10_000, warmup=500, base_lr=3e-4)
    """
    t = _int("total", total)
    w = _as_warmup(warmup).steps
    return _warmup_then("linear_decay", warmup, [(0, _hf(pmax(0.0, (float(t) - STEP) / float(max(1, t - w)))))],
                        local=False, total=t, **common)


def polynomial_decay(total: int, *, lr_end: float = 1e-7, power: float = 1.0, lr_init: float | None = None,
                     warmup: Union[int, Warmup] = 0, **common) -> Schedule:
    """transformers ``get_polynomial_decay_schedule_with_warmup``: for ``warmup <= s <= total``,
    ``base * ((lr_init - lr_end) * (1 - (s - warmup) / (total - warmup)) ** power + lr_end) / lr_init``, then
    ``base * (lr_end / lr_init)``. ``lr_init`` is transformers' optimizer default LR: here it defaults to the
    first ``base_lr``, 1.0 for a relative schedule (then ``lr_end`` is a factor). Where transformers divides
    by zero (step ``total`` when ``warmup == total``) the value is ``lr_end / lr_init``.

        >>> polynomial_decay(total=1000, warmup=100, lr_end=1e-6, power=2.0, base_lr=1e-3)
    """
    t = _int("total", total)
    w = _as_warmup(warmup).steps
    lr_init = (_base_lrs(common.get("base_lr")) or (1.0,))[0] if lr_init is None else lr_init
    lr_init = _float("lr_init", lr_init, 0.0, open_lo=True)
    lr_end = _float("lr_end", lr_end)
    power = _float("power", power)
    if lr_end > lr_init:
        raise ValueError(f"lr_end ({lr_end}) must be <= lr_init ({lr_init})")
    decay = []
    if t > w:
        pct = 1.0 - (STEP - float(w)) / float(t - w)
        decay.append((0, _hf(((lr_init - lr_end) * pct ** power + lr_end) / lr_init)))
    decay.append((t + 1 if t > w else 0, _hf(lr_end / lr_init)))
    return _warmup_then("polynomial_decay", warmup, decay, local=False, total=t, **common)


def warmup_cosine(total: int, *, warmup: Union[int, Warmup] = 0, num_cycles: float = 0.5,
                  min_lr_rate: float = 0.0, **common) -> Schedule:
    """transformers ``get_cosine_schedule_with_warmup`` (and ``get_cosine_with_min_lr_schedule_with_warmup``
    with ``min_lr_rate``): ``progress = float(s - warmup) / float(max(1, total - warmup))``,
    ``f = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))``,
    ``base * max(0, f * (1 - min_lr_rate) + min_lr_rate)``. Past ``total`` the cosine goes on, as there.

        >>> warmup_cosine(total=1000, warmup=100, base_lr=3e-4)
    """
    t = _int("total", total)
    w = _as_warmup(warmup).steps
    k = math.pi * _float("num_cycles", num_cycles) * 2.0
    rate = _float("min_lr_rate", min_lr_rate, hi=1.0)
    progress = (STEP - float(w)) / float(max(1, t - w))
    f = 0.5 * (1.0 + cos(k * progress))
    return _warmup_then("warmup_cosine", warmup, [(0, _hf(pmax(0.0, f * (1 - rate) + rate)))],
                        local=False, total=t, **common)


def inverse_sqrt(*, warmup: Union[int, Warmup] = 0, timescale: int | None = None, **common) -> Schedule:
    """transformers ``get_inverse_sqrt_schedule``: ``base * (1.0 / math.sqrt((s + shift) / timescale))`` with
    ``shift = timescale - warmup`` and ``timescale`` defaulting to ``warmup or 10_000``. Closed form (sqrt is
    correctly rounded), so it needs no table.

        >>> inverse_sqrt(warmup=4000, base_lr=1e-3)
    """
    w = _as_warmup(warmup).steps
    ts = _int("timescale", (w or 10_000) if timescale is None else timescale, 1)
    decay = 1.0 / sqrt((STEP + float(ts - w)) / float(ts))
    return _warmup_then("inverse_sqrt", warmup, [(0, _hf(decay))], local=False, **common)


def inverse_time(*, warmup: Union[int, Warmup] = 1, **common) -> Schedule:
    """Inverse-time (1/t) decay after warmup: ``initial_lr * warmup * step ** -1`` for ``s >= warmup``
    (``warmup >= 1``). ``step ** -1`` is ``pow(step, -1.0)`` in Python, which differs from ``1 / step`` in the
    last bit for about 0.1% of steps with glibc, so the expression keeps the pow: exact mode tables it up to
    ``horizon`` (required), past which CUDA uses its own pow.

        >>> inverse_time(warmup=1000, base_lr=1e-3, horizon=100_000)
    """
    w = _as_warmup(warmup).steps
    if w < 1:
        raise ValueError(f"warmup must be >= 1 for inverse_time (step ** -1 at step 0), got {w}")
    return _warmup_then("inverse_time", warmup, [(0, BASE * float(w) * STEP ** -1.0)], local=False, **common)


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float], *,
                       warmup: Union[int, Warmup] = 0, **common) -> Schedule:
    """Keras / TF ``PiecewiseConstantDecay(boundaries, values)`` as a factor: ``base * values[0]`` for
    ``s <= boundaries[0]``, ``base * values[i]`` for ``boundaries[i-1] < s <= boundaries[i]``, and
    ``base * values[-1]`` after the last boundary (boundaries are inclusive, as in TF).

        >>> piecewise_constant([1000, 2000], [1.0, 0.5, 0.1], base_lr=0.1)
    """
    bounds = [_int(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
    vals = [_float(f"values[{i}]", v) for i, v in enumerate(values)]
    if len(vals) != len(bounds) + 1:
        raise ValueError(f"values must have len(boundaries) + 1 = {len(bounds) + 1} entries, got {len(vals)}")
    if any(b1 <= b0 for b0, b1 in zip(bounds, bounds[1:])):
        raise ValueError(f"boundaries must increase strictly, got {bounds}")
    decay = [(0, _hf(vals[0]))] + [(b + 1, _hf(v)) for b, v in zip(bounds, vals[1:])]
    return _warmup_then("piecewise_constant", warmup, decay, local=False, **common)


# ---------------------------------------------------------------- torch-style decays (local step)
def step_decay(step_size: int, gamma: float = 0.1, *, warmup: Union[int, Warmup] = 0, **common) -> Schedule:
    """torch ``StepLR`` as it runs (recursively): ``base * gamma * gamma * ...`` (``d // step_size`` times,
    left to right), on the device with ``repeat_mul``: the product is run once, at construction, up to its
    rounding fixed point, and every 256th value is kept (``table_bytes``: 8 bytes x (products / 256 + 4) per
    distinct base LR), so any step costs at most 255 multiplications. A gamma so close to 1 that the product
    needs more than 2**26 multiplications to settle (about ``1 - gamma < 1e-5``) is refused.

        >>> step_decay(30, 0.1, warmup=5, base_lr=0.1)
    """
    size = _int("step_size", step_size, 1)
    g = _float("gamma", gamma, 0.0, open_lo=True)
    try:
        return _warmup_then("step_decay", warmup, [(0, repeat_mul(BASE, g, STEP // float(size)))], local=True,
                            **common)
    except UnsettledProduct:
        raise ValueError(f"gamma: step_decay(step_size={size}, gamma={g!r}): the product base * gamma * ... keeps "
                         "changing after 2**26 decays, so it cannot be exact at every step in bounded time and memory "
                         "(2 MiB of anchors per base LR at most). Use exponential_decay (torch's closed form) or "
                         "from_torch(StepLR(...), horizon=...) (recorded)") from None


def multistep_decay(milestones: Sequence[int], gamma: float = 0.1, *, warmup: Union[int, Warmup] = 0,
                    **common) -> Schedule:
    """torch ``MultiStepLR`` as it runs (recursively): at each milestone ``lr = lr * gamma ** count`` (count:
    how often it is listed), one constant phase per distinct milestone (``((base * a1) * a2) ...``).

        >>> multistep_decay([30, 60, 80], 0.1, base_lr=0.1)
    """
    counts = Counter(_int(f"milestones[{i}]", m) for i, m in enumerate(milestones))
    g = _float("gamma", gamma, 0.0, open_lo=True)
    value, decay = BASE, [(0, BASE)]
    for m in sorted(counts):
        value = value * (g ** counts[m])
        decay.append((m, value))
    return _warmup_then("multistep_decay", warmup, decay, local=True, **common)


def exponential_decay(gamma: float, *, warmup: Union[int, Warmup] = 0, **common) -> Schedule:
    """torch ``ExponentialLR``'s closed form ``base_lr * gamma ** d`` (``_get_closed_form_lr``; the recursive
    ``lr * gamma`` drifts from it in the last bits). Needs ``horizon`` in exact mode (pow).

        >>> exponential_decay(0.999, warmup=100, horizon=10_000)
    """
    g = _float("gamma", gamma, 0.0, open_lo=True)
    return _warmup_then("exponential_decay", warmup, [(0, BASE * (g ** STEP))], local=True, **common)


def cosine_annealing(t_max: int, eta_min: float = 0.0, *, warmup: Union[int, Warmup] = 0, **common) -> Schedule:
    """torch ``CosineAnnealingLR``'s closed form (``_get_closed_form_lr``):
    ``eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * d / T_max)) / 2``, periodic past ``t_max`` as
    there. ``eta_min`` is in LR units, as in torch (also in a relative schedule). Horizon: warmup + t_max + 1.

        >>> cosine_annealing(t_max=9000, eta_min=1e-6, warmup=1000, base_lr=1e-3)
    """
    t = _int("t_max", t_max, 1)
    eta = _float("eta_min", eta_min)
    w = _as_warmup(warmup).steps
    return _warmup_then("cosine_annealing", warmup, [(0, _torch_cosine(STEP, t, eta))], local=True,
                        natural_horizon=w + t + 1, **common)


def cosine_warm_restarts(t_0: int, t_mult: int = 1, eta_min: float = 0.0, *, warmup: Union[int, Warmup] = 0,
                         **common) -> Schedule:
    """torch ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`` stepped once per step:
    ``eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2``.

    ``T_mult == 1``: one phase with ``T_cur = d % T_0``. ``T_mult > 1``: one phase per cycle (cycle ``c``
    begins at ``T_0 * (T_mult**c - 1) / (T_mult - 1)``, ``T_cur`` = the phase's local step), for every cycle
    that begins below 2**53 (at most 53 phases), so no log/floor is needed on the device. Exact mode needs
    ``horizon``.

        >>> cosine_warm_restarts(t_0=1000, t_mult=2, horizon=100_000)
    """
    t0 = _int("t_0", t_0, 1)
    tm = _int("t_mult", t_mult, 1)
    eta = _float("eta_min", eta_min)
    if tm == 1:
        decay = [(0, _torch_cosine(STEP % float(t0), t0, eta))]
    else:
        if common.get("exact", True) and common.get("horizon") is None:
            raise ValueError("horizon: cosine_warm_restarts with t_mult > 1 has cycles up to 2**53 steps; exact "
                             "mode tables them up to `horizon`, so pass horizon=<total steps> (or exact=False)")
        decay, begin, t_i = [], 0, t0
        while begin < MAX_STEP:
            decay.append((begin, _torch_cosine(LOCAL, t_i, eta)))
            begin, t_i = begin + t_i, t_i * tm
    return _warmup_then("cosine_warm_restarts", warmup, decay, local=True, **common)


# ---------------------------------------------------------------- schedules with their own warmup
def noam(d_model: int, warmup: int, *, factor: float = 1.0, **common) -> Schedule:
    """The Annotated Transformer's ``rate``: with ``step = max(step, 1)`` (it maps step 0 to 1),
    ``base * (factor * (d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)))``. Needs ``horizon`` in
    exact mode (pow).

        >>> noam(d_model=512, warmup=4000, horizon=100_000)
    """
    d = _int("d_model", d_model, 1)
    w = _int("warmup", warmup, 1)
    f = _float("factor", factor)
    step = pmax(STEP, 1.0)
    expr = BASE * (f * (d ** (-0.5) * pmin(step ** (-0.5), step * w ** (-1.5))))
    return _schedule("noam", [(0, expr)], **common)


def fairseq_inverse_sqrt(warmup_updates: int, *, warmup_init_lr: float = 0.0, **common) -> Schedule:
    """fairseq ``InverseSquareRootSchedule`` with ``lr = base_lr``: for ``s < warmup_updates``
    ``warmup_init_lr + s * lr_step`` with ``lr_step = (lr - warmup_init_lr) / warmup_updates``, then
    ``decay_factor * s ** -0.5`` with ``decay_factor = lr * warmup_updates ** 0.5`` (step ``s`` is fairseq's
    ``num_updates``). Needs ``horizon`` in exact mode (pow).

        >>> fairseq_inverse_sqrt(4000, warmup_init_lr=1e-7, base_lr=5e-4, horizon=100_000)
    """
    w = _int("warmup_updates", warmup_updates, 1)
    init = _float("warmup_init_lr", warmup_init_lr)
    phases = [(0, init + STEP * ((BASE - init) / float(w))), (w, BASE * (float(w) ** 0.5) * STEP ** -0.5)]
    return _schedule("fairseq_inverse_sqrt", phases, **common)


def wsd(warmup: int, stable: int, decay: int, *, warmup_type: str = "linear", decay_type: str = "cosine",
        min_lr_ratio: float = 0.0, num_cycles: float = 0.5, **common) -> Schedule:
    """transformers ``get_wsd_schedule`` (warmup-stable-decay), ``warmup_type`` / ``decay_type`` in
    'linear', 'cosine', '1-sqrt': every ramp is ``base * max(0.0, f * (1.0 - min_lr_ratio) + min_lr_ratio)``,
    then ``base * min_lr_ratio`` after ``warmup + stable + decay`` steps (the natural horizon).

        >>> wsd(100, 800, 100, decay_type="1-sqrt", min_lr_ratio=0.1, base_lr=1e-3)
    """
    kinds = ("linear", "cosine", "1-sqrt")
    w, st, dc = _int("warmup", warmup), _int("stable", stable), _int("decay", decay)
    _choice("warmup_type", warmup_type, kinds)
    _choice("decay_type", decay_type, kinds)
    r = _float("min_lr_ratio", min_lr_ratio, hi=1.0)
    k = math.pi * _float("num_cycles", num_cycles) * 2.0
    p = STEP / float(max(1, w))
    warm = {"linear": lambda: p, "cosine": lambda: 0.5 * (1.0 - cos(PI * p)),
            "1-sqrt": lambda: 1.0 - sqrt(1.0 - p)}[warmup_type]()
    q = (STEP - float(w + st)) / float(max(1, dc))
    cool = {"linear": lambda: 1.0 - q, "cosine": lambda: 0.5 * (1.0 + cos(k * q)),
            "1-sqrt": lambda: 1.0 - sqrt(q)}[decay_type]()
    ramp = lambda f: _hf(pmax(0.0, f * (1.0 - r) + r))  # noqa: E731
    phases = [(0, ramp(warm)), (w, _hf(1.0)), (w + st, ramp(cool)), (w + st + dc, _hf(r))]
    return _schedule("wsd", phases, w + st + dc, **common)


def one_cycle(total_steps: int, *, pct_start: float = 0.3, anneal_strategy: str = "cos", div_factor: float = 25.0,
              final_div_factor: float = 1e4, three_phase: bool = False, cycle_momentum: bool = True,
              base_momentum: Union[Number, Sequence[Number]] = 0.85,
              max_momentum: Union[Number, Sequence[Number]] = 0.95, **common) -> Schedule:
    """torch ``OneCycleLR`` (``base_lr`` is ``max_lr``): its phase ``end_step`` arithmetic,
    ``pct = (s - start_step) / (end_step - start_step)`` and ``_annealing_cos``
    (``end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)``) or ``_annealing_linear``
    (``(end - start) * pct + start``) between ``initial_lr = max_lr / div_factor``, ``max_lr`` and
    ``min_lr = initial_lr / final_div_factor``. torch raises past ``total_steps``; from step ``total_steps``
    on, this holds the values of step ``total_steps - 1``.

    ``cycle_momentum`` (default True, as torch): a momentum channel (SGD's ``momentum`` or Adam's ``betas[0]``)
    annealed the same way between ``max_momentum`` and ``base_momentum`` (floats or one per group; absolute
    values, inversely to the LR: ``max -> base -> max``, three-phase ``max -> base -> max -> max``).

        >>> one_cycle(10_000, pct_start=0.25, base_lr=1e-3)
    """
    n = _int("total_steps", total_steps, 1)
    pct_start = _float("pct_start", pct_start, hi=1.0)
    anneal = _choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
    div = _float("div_factor", div_factor, 0.0, open_lo=True)
    final_div = _float("final_div_factor", final_div_factor, 0.0, open_lo=True)
    if not isinstance(cycle_momentum, bool):
        raise TypeError(f"cycle_momentum must be a bool, got {type(cycle_momentum).__name__}")
    initial = BASE / div
    lrs = {"initial": initial, "max": BASE, "min": initial / final_div}
    # (end_step, start LR, end LR, start momentum, end momentum), as torch's _schedule_phases
    if three_phase:
        plan = [(float(pct_start * n) - 1, "initial", "max", "max", "base"),
                (float(2 * pct_start * n) - 2, "max", "initial", "base", "max"),
                (n - 1, "initial", "min", "max", "max")]
    else:
        plan = [(float(pct_start * n) - 1, "initial", "max", "max", "base"), (n - 1, "max", "min", "base", "max")]

    def annealed(start_value, end_value, pct):
        if anneal == "cos":
            return end_value + (start_value - end_value) / 2.0 * (cos(PI * pct) + 1)
        return (end_value - start_value) * pct + start_value

    served, start, reached = [], 0.0, -math.inf  # (begin, pct, plan entry) of each phase that serves a step
    for i, entry in enumerate(plan):
        end = entry[0]
        # torch picks the first phase with step <= end_step (or the last): this one covers (reached, end].
        begin = 0 if reached < 0 else math.floor(reached) + 1
        last = i == len(plan) - 1
        if begin <= min(n - 1, math.inf if last else end):  # steps it serves before the hold at n
            if end - start == 0:
                raise ValueError(f"pct_start={pct_start} with total_steps={n} makes a phase of zero length "
                                 "(torch divides by zero there)")
            served.append((begin, (STEP - start) / (end - start), entry))
        reached = max(reached, end)
        start = end

    def channel(values: dict, a: int, b: int) -> list:
        phases = normalise_phases([(begin, annealed(values[e[a]], values[e[b]], pct)) for begin, pct, e in served])
        return phases + [(n, _hold(phases, n - 1))]

    momentum = None
    if cycle_momentum:
        bases = _momentum_list("base_momentum", base_momentum)
        maxes = _momentum_list("max_momentum", max_momentum)
        groups = {len(bases), len(maxes), len(_base_lrs(common.get("base_lr")) or ())} - {0, 1}
        if len(groups) > 1:
            raise ValueError(f"base_momentum, max_momentum and base_lr name different numbers of groups: "
                             f"{sorted(groups)}")
        g = groups.pop() if groups else 1
        momentum = [channel({"base": bases[i % len(bases)], "max": maxes[i % len(maxes)]}, 3, 4) for i in range(g)]
    return _schedule("one_cycle", channel(lrs, 1, 2), n, momentum=momentum, **common)


def _momentum_list(name: str, value) -> list:
    values = [value] if isinstance(value, numbers.Real) else list(value)
    if not values:
        raise ValueError(f"{name} must name at least one param group")
    return [_float(name if len(values) == 1 else f"{name}[{i}]", v) for i, v in enumerate(values)]


# ---------------------------------------------------------------- combinators
def _common_layout(name: str, schedules) -> tuple[int, int]:
    schedules = list(schedules)
    if not schedules or not all(isinstance(s, Schedule) for s in schedules):
        raise TypeError(f"{name} must be a non-empty list of Schedule")
    for i, s in enumerate(schedules):
        if s._phases is None:
            raise ValueError(f"{name}[{i}] ({s.name}) was loaded from a state_dict and keeps only its compiled "
                             "program; rebuild it from its constructor to combine it")
    spe = {s.steps_per_epoch for s in schedules}
    if len(spe) != 1:
        raise ValueError(f"{name} must share one steps_per_epoch, got {sorted(spe)}")
    groups = {s.num_groups for s in schedules} - {1}
    if len(groups) > 1:
        raise ValueError(f"{name} have different numbers of param groups: {sorted(groups)}")
    return spe.pop(), (groups.pop() if groups else 1)


def _group_phases(s: Schedule, g: int, channel: str = "_phases"):
    return getattr(s, channel)[g if s.num_groups > 1 else 0]


def sequential(schedules: Sequence[Schedule], milestones: Sequence[int], *, horizon: int | None = None,
               exact: bool | None = None, name: str = "sequential") -> Schedule:
    """torch ``SequentialLR`` semantics: ``schedules[i]`` runs from ``milestones[i-1]`` with its step counted
    from there (``STEP -> STEP - milestone``; phase-local steps are unchanged). All schedules must share
    ``steps_per_epoch``, and be all relative (the result is relative) or all absolute with (bit for bit) the
    same base LRs. Their momentum channels are joined the same way when all have one; a mix of schedules
    with and without one is refused (the others' momentum is unknown). ``horizon`` defaults to the last
    milestone plus the last schedule's horizon.

        >>> sequential([constant(warmup=100), cosine_annealing(900)], [100])
    """
    spe, groups = _common_layout("schedules", schedules)
    ms = [_int(f"milestones[{i}]", m, 1) for i, m in enumerate(milestones)]
    if len(ms) != len(schedules) - 1:
        raise ValueError(f"milestones must have len(schedules) - 1 = {len(schedules) - 1} entries, got {len(ms)}")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise ValueError(f"milestones must increase strictly, got {ms}")
    for flag, what in (("relative", "relative (built without base_lr)"), ("has_momentum", "with a momentum channel")):
        which = [i for i, s in enumerate(schedules) if getattr(s, flag)]
        if 0 < len(which) < len(schedules):
            raise ValueError(f"schedules: {which} are {what} and the others are not; sequential cannot mix them")
    bases = None
    if not schedules[0].relative:
        bases = schedules[0].base_lrs
        for i, s in enumerate(schedules):
            if [struct.pack("<d", b) for b in s.base_lrs] != [struct.pack("<d", b) for b in bases]:
                raise ValueError(f"schedules[{i}] has base LRs {list(s.base_lrs)}, schedules[0] has {list(bases)}")
        groups = len(bases)
    starts, ends = [0] + ms, ms + [None]

    def join(channel: str) -> list:
        per_group = []
        for g in range(groups):
            phases = []
            for s, lo, hi in zip(schedules, starts, ends):
                for begin, body in _group_phases(s, g, channel):
                    if hi is None or lo + begin < hi:
                        phases.append((lo + begin, _shift(body, step_by=lo) if isinstance(body, Expr) else body))
            per_group.append(phases)
        return per_group

    last = schedules[-1]
    if horizon is None and last.horizon is not None:
        horizon = starts[-1] + last.horizon
    exact = all(s.exact for s in schedules) if exact is None else exact
    momentum = join("_momentum") if last.has_momentum else None
    return Schedule(join("_phases"), bases, momentum=momentum, steps_per_epoch=spe, horizon=horizon, exact=exact,
                    name=name)


def chained(schedules: Sequence[Schedule], *, horizon: int | None = None, exact: bool | None = None,
            name: str = "chained", **common) -> Schedule:
    """Product of factors: ``lr = base * f1(s) * f2(s) * ...`` (left to right), ``f_i`` being schedule i's own
    value; the phase boundaries are the union of theirs. The factors must be relative schedules (built
    without ``base_lr``) without a momentum channel; the result is relative unless ``base_lr`` is given.

    torch's ``ChainedScheduler`` is recursive (each scheduler rescales the LR the previous one left), which
    is not a product of closed forms in general: match it bit for bit through ``from_torch`` (recording).

        >>> chained([step_decay(30, 0.5), linear_decay(total=90)], base_lr=0.1)
    """
    spe, groups = _common_layout("schedules", schedules)
    bases = _base_lrs(common.pop("base_lr", None))
    if common:
        raise TypeError(f"chained got unexpected keyword arguments {sorted(common)}")
    for i, s in enumerate(schedules):
        if not s.relative:
            raise ValueError(f"schedules[{i}] ({s.name}) is absolute (built with base_lr, or by from_torch, whose "
                             "recorded values are LRs); chained multiplies factors: build its parts without base_lr")
        if s.has_momentum:
            raise ValueError(f"schedules[{i}] ({s.name}) has a momentum channel; chained multiplies LR factors only "
                             "(build it with cycle_momentum=False)")
    if bases is not None and len(bases) == 1 and groups > 1:
        bases = bases * groups
    if bases is not None and groups > 1 and len(bases) != groups:
        raise ValueError(f"base_lr has {len(bases)} entries for schedules of {groups} groups")
    per_group = []
    for g in range(groups if bases is None else len(bases)):
        lists = [_group_phases(s, g) for s in schedules]
        phases = []
        for b in sorted({b for lst in lists for b, _ in lst}):
            expr = BASE
            for lst in lists:
                begin, e = [p for p in lst if p[0] <= b][-1]
                expr = expr * _subst(_shift(e, local_by=b - begin), base=lift(1.0))
            phases.append((b, expr))
        per_group.append(phases)
    if horizon is None:
        known = [s.horizon for s in schedules if s.horizon is not None]
        horizon = max(known) if known else None
    exact = all(s.exact for s in schedules) if exact is None else exact
    return Schedule(per_group, bases, steps_per_epoch=spe, horizon=horizon, exact=exact, name=name)


__all__ = [
    "Warmup", "linear_warmup", "linear_warmup_from", "gradual_warmup", "constant_warmup", "exponential_warmup",
    "constant", "linear_decay", "polynomial_decay", "warmup_cosine", "inverse_sqrt", "inverse_time",
    "piecewise_constant", "step_decay", "multistep_decay", "exponential_decay", "cosine_annealing",
    "cosine_warm_restarts", "noam", "fairseq_inverse_sqrt", "wsd", "one_cycle", "sequential", "chained",
]
