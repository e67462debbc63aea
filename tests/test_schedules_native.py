"""Native constructors (warmup_fused.schedules.native) against their references, bit for bit.

For every constructor, ``lr_at(range(H))`` must equal, as float64 bits, the reference evaluated in plain Python
at every step, for several parameter sets (warmup 0 and 1, warmup == total, steps past the total) and three
param groups with different base LRs, plus a few steps >= 2**31 where the reference formula is evaluated
directly. Where the reference is a real object (transformers' LambdaLR, torch schedulers, GradualWarmupScheduler)
it is driven in the canonical loop ``record lr; opt.step(); sched.step()``, and the plain-Python formula used
for the far steps is checked against it too.

On CUDA the transcendental phases are exact only where tabled: the CUDA runs pass ``horizon=H`` and compare the
far steps (past every table) to within a few ulps.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as lrs
from transformers import optimization as hf

from warmup_fused import schedules as S

from test_from_torch import _record_momentum

try:
    from warmup_scheduler import GradualWarmupScheduler
except ImportError:  # pragma: no cover
    GradualWarmupScheduler = None

H = 10_000
BASES = (1.0, 3e-4, 0.0123)  # three param groups
FAR = [2**31, 2**31 + 7, 2**40 + 3, 2**52 + 1]  # evaluated with the reference formula directly


# --------------------------------------------------------------------------- harness
def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(torch.int64)


def assert_bits(got: torch.Tensor, expect: torch.Tensor, what: str = "") -> None:
    got = got.detach().cpu()
    assert got.shape == expect.shape, (what, got.shape, expect.shape)
    if torch.equal(bits(got), bits(expect)):
        return
    g, t = (int(x) for x in (bits(got) != bits(expect)).nonzero()[0])
    raise AssertionError(f"{what}: first difference at group {g}, column {t}: got {float(got[g, t])!r}, "
                         f"reference {float(expect[g, t])!r}")


def table(fn, steps) -> torch.Tensor:
    """float64 [G, len(steps)] of fn(g, base, s)."""
    return torch.tensor([[float(fn(g, b, s)) for s in steps] for g, b in enumerate(BASES)], dtype=torch.float64)


def drive(make, steps: int = H, bases=BASES, default_lr=None) -> torch.Tensor:
    """param_groups[g]['lr'] during iteration t of ``for t: record; opt.step(); sched.step()``."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in bases]
    opt = torch.optim.SGD(groups, lr=bases[0] if default_lr is None else default_lr)
    rows = [[] for _ in bases]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
        for t in range(steps):
            for g, group in enumerate(opt.param_groups):
                rows[g].append(float(group["lr"]))
            opt.step()
            if t + 1 < steps:
                sched.step()
    return torch.tensor(rows, dtype=torch.float64)


def closed_form(make, steps: int = H) -> torch.Tensor:
    """A torch scheduler's ``_get_closed_form_lr`` at last_epoch = 0 .. steps-1."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in BASES]
    sched = make(torch.optim.SGD(groups, lr=BASES[0]))
    cols = []
    for t in range(steps):
        sched.last_epoch = t
        cols.append([float(v) for v in sched._get_closed_form_lr()])
    return torch.tensor(cols, dtype=torch.float64).T.contiguous()


def check(schedule, ref, device, real: torch.Tensor | None = None, far: bool = True) -> None:
    """Compares lr_at over range(H) with the real object's values (if any) and the formula ``ref(g, base, s)``,
    and at the FAR steps with the formula."""
    formula = table(ref, range(H))
    if real is not None:
        assert_bits(formula, real, "plain-Python formula vs real reference")
    assert_bits(schedule.lr_at(range(H), device), formula, f"{schedule.name} on {device}")
    if far:
        got = schedule.lr_at(torch.tensor(FAR), device)
        expect = table(ref, FAR)
        if device == "cpu" or schedule.table_bytes == 0:
            assert_bits(got, expect, f"{schedule.name} at far steps on {device}")
        else:  # past the exact-mode table, CUDA's own libm (a few ulps)
            torch.testing.assert_close(got.cpu(), expect, rtol=1e-12, atol=1e-300)


def opts(device, **kw):
    """Common kwargs: all groups, and on CUDA a horizon covering every compared step."""
    if device == "cuda":
        kw.setdefault("horizon", H)
    return dict(base_lr=list(BASES), **kw)


def hf_warm(w):
    return lambda s: float(s) / float(max(1, w))


def compose(w, warm, decay):
    """Reference of warmup-then-decay: warm(g, base, s) for s < w, else decay(g, base, s)."""
    return lambda g, b, s: warm(g, b, s) if s < w else decay(g, b, s)


# --------------------------------------------------------------------------- transformers-style
@pytest.mark.parametrize("w", [0, 1, 37, H // 2])
def test_constant(device, w):
    ref = lambda g, b, s: b * (float(s) / float(max(1.0, w)) if s < w else 1.0)  # noqa: E731
    real = drive(lambda o: hf.get_constant_schedule_with_warmup(o, w))
    check(S.constant(warmup=w, **opts(device)), ref, device, real)


@pytest.mark.parametrize("w,t", [(0, 5000), (1, 9000), (250, 7000), (3000, 3000)])
def test_linear_decay(device, w, t):
    ref = lambda g, b, s: b * (hf_warm(w)(s) if s < w else max(0.0, float(t - s) / float(max(1, t - w))))  # noqa
    real = drive(lambda o: hf.get_linear_schedule_with_warmup(o, w, t))
    check(S.linear_decay(t, warmup=w, **opts(device)), ref, device, real)


@pytest.mark.parametrize("w,t,lr_end,power", [(0, 5000, 1e-7, 1.0), (1, 8000, 1e-4, 2.0), (300, 6000, 0.0, 0.5),
                                              (4000, 4000, 1e-3, 3.0)])
def test_polynomial_decay(device, w, t, lr_end, power):
    lr_init = BASES[0]

    def ref(g, b, s):
        if s < w:
            return b * hf_warm(w)(s)
        if s > t or t == w:  # transformers divides by zero at s == t == w: the limit lr_end / lr_init
            return b * (lr_end / lr_init)
        pct_remaining = 1 - (s - w) / (t - w)
        return b * (((lr_init - lr_end) * pct_remaining**power + lr_end) / lr_init)

    real = None
    if t > w:
        real = drive(lambda o: hf.get_polynomial_decay_schedule_with_warmup(o, w, t, lr_end=lr_end, power=power))
    check(S.polynomial_decay(t, lr_end=lr_end, power=power, warmup=w, **opts(device)), ref, device, real)


@pytest.mark.parametrize("w,t,cycles,rate", [(0, 5000, 0.5, 0.0), (1, 9999, 0.5, 0.1), (100, 3000, 1.5, 0.0),
                                             (2000, 2000, 0.5, 0.05)])
def test_warmup_cosine(device, w, t, cycles, rate):
    def ref(g, b, s):
        if s < w:
            return b * hf_warm(w)(s)
        progress = float(s - w) / float(max(1, t - w))
        factor = 0.5 * (1.0 + math.cos(math.pi * float(cycles) * 2.0 * progress))
        return b * max(0, factor * (1 - rate) + rate)

    if rate:
        real = drive(lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, w, t, cycles, min_lr_rate=rate))
    else:
        real = drive(lambda o: hf.get_cosine_schedule_with_warmup(o, w, t, cycles))
    s = S.warmup_cosine(t, warmup=w, num_cycles=cycles, min_lr_rate=rate, **opts(device))
    check(s, ref, device, real)


@pytest.mark.parametrize("w,ts", [(0, None), (1, None), (500, None), (500, 2000), (0, 7)])
def test_inverse_sqrt(device, w, ts):
    timescale = (w or 10_000) if ts is None else ts
    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s),
                  lambda g, b, s: b * (1.0 / math.sqrt((s + timescale - w) / timescale)))
    real = drive(lambda o: hf.get_inverse_sqrt_schedule(o, w, ts))
    s = S.inverse_sqrt(warmup=w, timescale=ts, **opts(device))
    assert s.table_bytes == 0
    check(s, ref, device, real)


@pytest.mark.parametrize("w", [1, 100, 5000, H])
def test_inverse_time(device, w):
    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s), lambda g, b, s: b * w * s**-1)
    check(S.inverse_time(warmup=w, **opts(device, horizon=H)), ref, device)


@pytest.mark.parametrize("w,bounds,values", [(0, [0], [1.0, 0.5]), (1, [100, 5000], [1.0, 0.5, 0.1]),
                                             (200, [100, 300, 9000], [2.0, 1.0, 0.25, 0.0])])
def test_piecewise_constant(device, w, bounds, values):
    def tf(s):  # tf.keras.optimizers.schedules.PiecewiseConstantDecay
        for b, v in zip(bounds, values):
            if s <= b:
                return v
        return values[-1]

    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s), lambda g, b, s: b * tf(s))
    check(S.piecewise_constant(bounds, values, warmup=w, **opts(device)), ref, device)


@pytest.mark.parametrize("w,stable,decay,wt,dt,ratio,cycles", [
    (0, 3000, 2000, "linear", "linear", 0.0, 0.5), (1, 0, 9000, "cosine", "cosine", 0.1, 0.5),
    (700, 2000, 3000, "1-sqrt", "1-sqrt", 0.05, 0.5), (500, 500, 0, "linear", "cosine", 0.2, 1.0),
    (300, 1000, 4000, "cosine", "1-sqrt", 0.0, 0.5)])
def test_wsd(device, w, stable, decay, wt, dt, ratio, cycles):
    def ref(g, b, s):
        return b * hf._get_wsd_scheduler_lambda(s, num_warmup_steps=w, num_stable_steps=stable,
                                                num_decay_steps=decay, warmup_type=wt, decay_type=dt,
                                                min_lr_ratio=ratio, num_cycles=cycles)

    real = drive(lambda o: hf.get_wsd_schedule(o, w, decay, num_stable_steps=stable, warmup_type=wt,
                                               decay_type=dt, min_lr_ratio=ratio, num_cycles=cycles))
    s = S.wsd(w, stable, decay, warmup_type=wt, decay_type=dt, min_lr_ratio=ratio, num_cycles=cycles, **opts(device))
    check(s, ref, device, real)


# --------------------------------------------------------------------------- torch-style (local step after warmup)
@functools.lru_cache(maxsize=64)
def _powers(x: float, factor: float) -> tuple:
    """x, x*f, (x*f)*f, ... up to its fixed point (0, inf, or a rounding fixed point such as the smallest
    subnormal times 0.99) or NaN: every later product is the same."""
    seq = [x]
    while True:
        y = seq[-1] * factor
        if y == seq[-1] or math.isnan(seq[-1]):
            return tuple(seq)
        seq.append(y)


def recursive_pow(x, factor, times):
    """torch's recursive ``lr = lr * gamma``, ``times`` times."""
    seq = _powers(x, factor)
    return seq[min(times, len(seq) - 1)]


@pytest.mark.parametrize("w,size,gamma", [(0, 30, 0.1), (1, 1, 0.99), (100, 700, 0.5)])
def test_step_decay(device, w, size, gamma):
    real_decay = drive(lambda o: lrs.StepLR(o, size, gamma))
    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s), lambda g, b, s: recursive_pow(b, gamma, (s - w) // size))
    real = torch.cat([table(lambda g, b, s: b * hf_warm(w)(s), range(w)), real_decay[:, :H - w]], dim=1)
    check(S.step_decay(size, gamma, warmup=w, **opts(device)), ref, device, real)


@pytest.mark.parametrize("w,milestones,gamma", [(0, [30, 60, 60, 90], 0.1), (1, [0, 5, 5000], 0.5),
                                                (100, [4000, 1000, 2000], 0.3)])
def test_multistep_decay(device, w, milestones, gamma):
    real_decay = drive(lambda o: lrs.MultiStepLR(o, milestones, gamma))
    counts = Counter(milestones)

    def decay(g, b, s):
        lr = b
        for m in sorted(counts):
            if m <= s - w:
                lr = lr * gamma ** counts[m]
        return lr

    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s), decay)
    real = torch.cat([table(lambda g, b, s: b * hf_warm(w)(s), range(w)), real_decay[:, :H - w]], dim=1)
    check(S.multistep_decay(milestones, gamma, warmup=w, **opts(device)), ref, device, real)


@pytest.mark.parametrize("w,gamma", [(0, 0.999), (1, 0.9), (500, 0.9999)])
def test_exponential_decay(device, w, gamma):
    cf = closed_form(lambda o: lrs.ExponentialLR(o, gamma))
    real = torch.cat([table(lambda g, b, s: b * hf_warm(w)(s), range(w)), cf[:, :H - w]], dim=1)
    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s), lambda g, b, s: b * gamma ** (s - w))
    s = S.exponential_decay(gamma, warmup=w, **opts(device, horizon=H))
    assert s.table_bytes > 0
    check(s, ref, device, real)


@pytest.mark.parametrize("w,t_max,eta_min", [(0, 5000, 0.0), (1, 1, 0.01), (200, 3000, 1e-5), (9000, 1000, 0.0)])
def test_cosine_annealing(device, w, t_max, eta_min):
    cf = closed_form(lambda o: lrs.CosineAnnealingLR(o, t_max, eta_min))
    real = torch.cat([table(lambda g, b, s: b * hf_warm(w)(s), range(w)), cf[:, :H - w]], dim=1)

    def decay(g, b, s):
        return eta_min + (b - eta_min) * (1 + math.cos(math.pi * (s - w) / t_max)) / 2

    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s), decay)
    check(S.cosine_annealing(t_max, eta_min, warmup=w, **opts(device)), ref, device, real)


@pytest.mark.parametrize("w,t0,tm,eta_min", [(0, 10, 1, 0.0), (1, 1, 2, 1e-3), (37, 100, 3, 1e-4), (0, 7, 2, 0.0)])
def test_cosine_warm_restarts(device, w, t0, tm, eta_min):
    real_decay = drive(lambda o: lrs.CosineAnnealingWarmRestarts(o, t0, tm, eta_min))

    def decay(g, b, s):
        t_cur, t_i = s - w, t0
        if tm == 1:
            t_cur = t_cur % t0
        while t_cur >= t_i:
            t_cur, t_i = t_cur - t_i, t_i * tm
        return eta_min + (b - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2

    ref = compose(w, lambda g, b, s: b * hf_warm(w)(s), decay)
    real = torch.cat([table(lambda g, b, s: b * hf_warm(w)(s), range(w)), real_decay[:, :H - w]], dim=1)
    check(S.cosine_warm_restarts(t0, tm, eta_min, warmup=w, **opts(device, horizon=H)), ref, device, real)


# --------------------------------------------------------------------------- warmup specs
@pytest.mark.parametrize("w,start", [(0, 0.1), (1, 0.001), (500, 0.01), (H, 0.5)])
def test_linear_warmup_from(device, w, start):
    def f(x):  # torchvision references/detection/utils.py warmup_lr_scheduler
        if x >= w:
            return 1
        alpha = float(x) / w
        return start * (1 - alpha) + alpha

    real = drive(lambda o: lrs.LambdaLR(o, f))
    ref = lambda g, b, s: b * f(s)  # noqa: E731
    check(S.constant(warmup=S.linear_warmup_from(w, start), **opts(device)), ref, device, real)


@pytest.mark.skipif(GradualWarmupScheduler is None, reason="warmup-scheduler is not installed")
@pytest.mark.parametrize("total,m", [(1, 1.0), (50, 1.0), (1, 4.0), (333, 2.5), (H - 1, 1.0)])
def test_gradual_warmup(device, total, m):
    def ref(g, b, s):
        if s > total:
            return b * m
        if m == 1.0:
            return b * (float(s) / total)
        return b * ((m - 1.) * s / total + 1.)

    real = drive(lambda o: GradualWarmupScheduler(o, m, total))
    check(S.constant(warmup=S.gradual_warmup(total, m), **opts(device)), ref, device, real)


@pytest.mark.parametrize("total,m,size,gamma", [(1, 1.0, 30, 0.5), (20, 4.0, 100, 0.1)])
def test_gradual_warmup_then_step(device, total, m, size, gamma):
    # GradualWarmupScheduler hands over to its after_scheduler with base LRs base * multiplier.
    real_decay = drive(lambda o: lrs.StepLR(o, size, gamma), bases=[b * m for b in BASES])
    ref = compose(total + 1, lambda g, b, s: b * (float(s) / total) if m == 1.0 else b * ((m - 1.) * s / total + 1.),
                  lambda g, b, s: recursive_pow(b * m, gamma, (s - total - 1) // size))
    real = torch.cat([table(ref, range(total + 1)), real_decay[:, :H - total - 1]], dim=1)
    check(S.step_decay(size, gamma, warmup=S.gradual_warmup(total, m), **opts(device)), ref, device, real)


@pytest.mark.parametrize("w,factor", [(0, 0.1), (1, 0.25), (700, 1 / 3)])
def test_constant_warmup(device, w, factor):
    ref = compose(w, lambda g, b, s: b * factor, lambda g, b, s: b * 1.0)
    check(S.constant(warmup=S.constant_warmup(w, factor), **opts(device)), ref, device)


@pytest.mark.parametrize("w,period", [(0, None), (1, None), (3000, 1000), (H, 7.5)])
def test_exponential_warmup(device, w, period):
    tau = w / 3 if period is None else period
    ref = compose(w, lambda g, b, s: b * (1.0 - math.exp(-(s + 1) / tau)),  # pytorch_warmup.ExponentialWarmup
                  lambda g, b, s: b * 1.0)
    s = S.constant(warmup=S.exponential_warmup(w, period), **opts(device))
    assert (s.table_bytes > 0) == (w > 0)
    check(s, ref, device)


# --------------------------------------------------------------------------- own warmups
@pytest.mark.parametrize("d_model,w,factor", [(512, 1, 1.0), (512, 4000, 2.0), (64, H, 0.5)])
def test_noam(device, d_model, w, factor):
    def rate(step, model_size, factor, warmup):  # the Annotated Transformer
        if step == 0:
            step = 1
        return factor * (model_size ** (-0.5) * min(step ** (-0.5), step * warmup ** (-1.5)))

    check(S.noam(d_model, w, factor=factor, **opts(device, horizon=H)),
          lambda g, b, s: b * rate(s, d_model, factor, w), device)


@pytest.mark.parametrize("w,init", [(1, 0.0), (4000, 1e-7), (H, 0.0)])
def test_fairseq_inverse_sqrt(device, w, init):
    def ref(g, lr, num_updates):  # fairseq InverseSquareRootSchedule.step_update
        lr_step = (lr - init) / w
        decay_factor = lr * w**0.5
        if num_updates < w:
            return init + num_updates * lr_step
        return decay_factor * num_updates**-0.5

    check(S.fairseq_inverse_sqrt(w, warmup_init_lr=init, **opts(device, horizon=H)), ref, device)


@pytest.mark.parametrize("n,pct,anneal,three", [(9000, 0.3, "cos", False), (H, 0.25, "linear", True),
                                                (7, 0.5, "cos", True), (5000, 0.0, "linear", False),
                                                (3001, 0.45, "cos", True), (800, 1.0, "linear", False)])
def test_one_cycle(device, n, pct, anneal, three):
    real = drive(lambda o: lrs.OneCycleLR(o, list(BASES), total_steps=n, pct_start=pct, anneal_strategy=anneal,
                                          three_phase=three, cycle_momentum=False, div_factor=20.0,
                                          final_div_factor=1e3), steps=n)
    real = torch.cat([real, real[:, -1:].expand(-1, H - n)], dim=1) if n < H else real[:, :H]
    s = S.one_cycle(n, pct_start=pct, anneal_strategy=anneal, three_phase=three, div_factor=20.0,
                    final_div_factor=1e3, **opts(device))
    assert_bits(s.lr_at(range(H), device), real, "one_cycle")
    assert_bits(s.lr_at(torch.tensor(FAR), device), real[:, -1:].expand(-1, len(FAR)), "one_cycle far")


def drive_with_momentum(make, steps, key, opt_factory):
    """(lr, momentum) of every group during iteration t of the canonical loop."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in BASES]
    opt = opt_factory(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
    return _record_momentum(opt, sched, steps, key)


ONE_CYCLE_OPTS = {"SGD": (lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), "momentum"),
                  "AdamW": (lambda g: torch.optim.AdamW(g, lr=0.1), "betas")}


@pytest.mark.parametrize("opt_name", sorted(ONE_CYCLE_OPTS))
@pytest.mark.parametrize("n,kw", [
    (9000, dict()),  # torch's defaults: pct_start 0.3, cos, base_momentum 0.85, max_momentum 0.95
    (H, dict(pct_start=0.25, anneal_strategy="linear", three_phase=True, base_momentum=[0.8, 0.7, 0.6],
             max_momentum=0.99, div_factor=20.0, final_div_factor=1e3)),
    (3001, dict(pct_start=0.45, three_phase=True, base_momentum=0.5, max_momentum=[0.9, 0.95, 0.97])),
    # torch's own test configurations (test_onecycle_lr_*)
    (10, dict(final_div_factor=2, base_momentum=1, max_momentum=22, anneal_strategy="linear")),
    (10, dict(div_factor=25, base_momentum=1, max_momentum=22, anneal_strategy="linear", pct_start=0.4,
              final_div_factor=4, three_phase=True)),
    (10, dict(final_div_factor=2, base_momentum=1, max_momentum=22)),
])
def test_one_cycle_momentum(device, opt_name, n, kw):
    """one_cycle's LR and momentum channel equal torch's OneCycleLR (cycle_momentum=True) bit for bit: SGD's
    momentum or AdamW's betas[0] as the scheduler leaves them in each group at every step."""
    make_opt, key = ONE_CYCLE_OPTS[opt_name]
    lr, mom = drive_with_momentum(lambda o: lrs.OneCycleLR(o, list(BASES), total_steps=n, **kw), n, key, make_opt)
    assert len(set(mom[0].tolist())) > 2
    s = S.one_cycle(n, **kw, **opts(device))
    assert s.has_momentum
    assert_bits(s.lr_at(range(n), device), lr, "one_cycle lr")
    assert_bits(s.momentum_at(range(n), device), mom, "one_cycle momentum")
    held = torch.tensor([n, n + 1] + FAR)
    assert_bits(s.momentum_at(held, device), mom[:, -1:].expand(-1, len(held)), "one_cycle momentum held")
    off = S.one_cycle(n, cycle_momentum=False, **{k: v for k, v in kw.items() if "momentum" not in k}, **opts(device))
    assert not off.has_momentum
    assert_bits(off.lr_at(range(n), device), lr, "one_cycle lr without momentum")


def test_one_cycle_momentum_errors():
    with pytest.raises(ValueError, match="base_momentum"):
        S.one_cycle(100, base_momentum=-0.1)
    with pytest.raises(ValueError, match=r"max_momentum\[1\]"):
        S.one_cycle(100, max_momentum=[0.9, float("nan")])
    with pytest.raises(ValueError, match="base_momentum"):
        S.one_cycle(100, base_momentum=[0.8, 0.7], base_lr=[0.1, 0.2, 0.3])
    with pytest.raises(TypeError, match="cycle_momentum"):
        S.one_cycle(100, cycle_momentum="yes")


# --------------------------------------------------------------------------- combinators
def test_sequential(device):
    a = S.constant(warmup=S.linear_warmup_from(100, 0.01), **opts(device))
    b = S.cosine_annealing(5000, 1e-4, **opts(device))
    c = S.step_decay(300, 0.5, **opts(device))
    seq = S.sequential([a, b, c], [100, 6000])
    ra, rb, rc = (x.lr_at(range(H), "cpu") for x in (a, b, c))
    expect = torch.cat([ra[:, :100], rb[:, :5900], rc[:, :H - 6000]], dim=1)
    assert_bits(seq.lr_at(range(H), device), expect, "sequential")
    # torch's SequentialLR restarts StepLR with step(0) at the milestone: the same LRs as step_decay afterwards.
    real = drive(lambda o: lrs.SequentialLR(o, [lrs.ConstantLR(o, 0.25, 40), lrs.StepLR(o, 30, 0.5)], [40]))
    mine = S.sequential([S.constant(warmup=S.constant_warmup(40, 0.25), **opts(device)),
                         S.step_decay(30, 0.5, **opts(device))], [40])
    assert_bits(mine.lr_at(range(H), device), real, "sequential vs SequentialLR")


def test_chained(device):
    f1 = S.step_decay(700, 0.5)
    f2 = S.warmup_cosine(8000, warmup=100, horizon=H)
    f3 = S.piecewise_constant([2000], [1.0, 0.3])
    ch = S.chained([f1, f2, f3], base_lr=list(BASES), **({"horizon": H} if device == "cuda" else {}))
    r = [x.lr_at(range(H), "cpu")[0].tolist() for x in (f1, f2, f3)]
    expect = table(lambda g, b, s: b * r[0][s] * r[1][s] * r[2][s], range(H))
    assert_bits(ch.lr_at(range(H), device), expect, "chained")
    with pytest.raises(ValueError, match=r"schedules\[1\].*absolute"):
        S.chained([f1, S.from_torch(lrs.LinearLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))]), 0.5, total_iters=10))])


# --------------------------------------------------------------------------- modes and granularity
CASES = {
    "step_decay": lambda **k: S.step_decay(3, 0.5, warmup=2, **k),
    "warmup_cosine": lambda **k: S.warmup_cosine(200, warmup=10, **k),
    "cosine_warm_restarts": lambda **k: S.cosine_warm_restarts(5, 2, warmup=S.gradual_warmup(3, 2.0), horizon=300, **k),
    "one_cycle": lambda **k: S.one_cycle(150, three_phase=True, **k),
    "wsd": lambda **k: S.wsd(10, 50, 40, decay_type="1-sqrt", **k),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_steps_per_epoch(device, name):
    per_epoch = CASES[name](base_lr=list(BASES)).lr_at(range(300), "cpu")
    fine = CASES[name](base_lr=list(BASES), steps_per_epoch=7).lr_at(range(7 * 300), device).cpu()
    assert_bits(fine, per_epoch.repeat_interleave(7, dim=1), name)


def anchor_bytes(x: float, gamma: float) -> int:
    """Bytes of the repeat_mul anchor block of x * gamma * ...: factor, fixed-point count, fixed point, and one
    value every 256 products up to the fixed point."""
    settles = len(_powers(x, gamma)) - 1
    return 8 * (3 + settles // 256 + 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_mode_off_equal_on_cpu(name):
    on, off = CASES[name](base_lr=list(BASES)), CASES[name](base_lr=list(BASES), exact=False)
    # Fast mode builds no libm tables; step_decay keeps its anchors (one block per distinct base LR).
    assert off.table_bytes == (sum(anchor_bytes(b, 0.5) for b in BASES) if name == "step_decay" else 0)
    steps = torch.cat([torch.arange(5000), torch.tensor(FAR)])
    assert_bits(on.lr_at(steps), off.lr_at(steps), name)


def test_table_bytes():
    assert S.linear_decay(1000, warmup=10).table_bytes == 0
    assert S.step_decay(10, warmup=S.linear_warmup_from(5, 0.1)).table_bytes == anchor_bytes(1.0, 0.1)
    assert S.step_decay(10, 0.99, base_lr=[0.1, 0.1, 2.0]).table_bytes == anchor_bytes(0.1, 0.99) + anchor_bytes(2.0, 0.99)
    assert S.inverse_sqrt(warmup=100).table_bytes == 0
    assert S.piecewise_constant([10], [1.0, 0.1]).table_bytes == 0
    # transcendental phases: tabled up to the natural horizon, per group
    assert S.warmup_cosine(1000, warmup=100).table_bytes == 8 * (1001 - 100)
    assert S.warmup_cosine(1000, warmup=100, base_lr=[1.0, 2.0]).table_bytes == 2 * 8 * (1001 - 100)
    assert S.wsd(10, 20, 30, decay_type="cosine").table_bytes == 8 * 30
    assert S.exponential_decay(0.9, horizon=500).table_bytes == 8 * 500
    assert S.noam(512, 100, horizon=1000, exact=False).table_bytes == 0


def test_horizon_required_for_unbounded_transcendental():
    for make in (lambda **k: S.exponential_decay(0.9, **k), lambda **k: S.noam(512, 4000, **k),
                 lambda **k: S.fairseq_inverse_sqrt(4000, **k), lambda **k: S.inverse_time(warmup=10, **k),
                 lambda **k: S.cosine_warm_restarts(10, 1, **k), lambda **k: S.cosine_warm_restarts(10, 2, **k)):
        with pytest.raises(ValueError, match="horizon"):
            make()
        assert make(exact=False).table_bytes == 0
        assert make(horizon=H).table_bytes > 0


def test_rescale_and_repr():
    s = S.warmup_cosine(1000, warmup=10)
    t = s.with_base_lrs([0.5, 2.0])
    assert_bits(t.lr_at(range(1200)), S.warmup_cosine(1000, warmup=10, base_lr=[0.5, 2.0]).lr_at(range(1200)))
    assert "warmup_cosine" in repr(s)
    assert set(S.native.__all__) <= set(S.__all__)
    for name in S.native.__all__:
        assert getattr(S, name).__doc__


# --------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("make,exc,match", [
    (lambda: S.linear_decay(100, warmup=200), ValueError, "warmup"),
    (lambda: S.linear_decay(-1), ValueError, "total"),
    (lambda: S.linear_decay(10.5), TypeError, "total"),
    (lambda: S.linear_decay(True), TypeError, "total"),
    (lambda: S.constant(warmup=-3), ValueError, "warmup"),
    (lambda: S.constant(warmup=2.0), TypeError, "warmup"),
    (lambda: S.constant(base_lr=-1.0), ValueError, "base_lr"),
    (lambda: S.constant(base_lr=[0.1, float("nan")]), ValueError, r"base_lr\[1\]"),
    (lambda: S.constant(base_lr="x"), TypeError, "base_lr"),
    (lambda: S.constant(steps_per_epoch=0), ValueError, "steps_per_epoch"),
    (lambda: S.step_decay(0), ValueError, "step_size"),
    (lambda: S.step_decay(10, gamma=0.0), ValueError, "gamma"),
    (lambda: S.step_decay(10, gamma=float("inf")), ValueError, "gamma"),
    (lambda: S.multistep_decay([10, -1]), ValueError, r"milestones\[1\]"),
    (lambda: S.exponential_decay(-0.5, horizon=10), ValueError, "gamma"),
    (lambda: S.cosine_annealing(0), ValueError, "t_max"),
    (lambda: S.cosine_annealing(10, eta_min=-1.0), ValueError, "eta_min"),
    (lambda: S.cosine_warm_restarts(10, 0, horizon=10), ValueError, "t_mult"),
    (lambda: S.cosine_warm_restarts(10, 1.5, horizon=10), TypeError, "t_mult"),
    (lambda: S.polynomial_decay(100, lr_end=2.0), ValueError, "lr_end"),
    (lambda: S.polynomial_decay(100, power=float("nan")), ValueError, "power"),
    (lambda: S.warmup_cosine(100, min_lr_rate=2.0), ValueError, "min_lr_rate"),
    (lambda: S.inverse_sqrt(timescale=0), ValueError, "timescale"),
    (lambda: S.inverse_time(warmup=0, horizon=10), ValueError, "warmup"),
    (lambda: S.piecewise_constant([10, 5], [1.0, 0.5, 0.1]), ValueError, "boundaries"),
    (lambda: S.piecewise_constant([10], [1.0]), ValueError, "values"),
    (lambda: S.piecewise_constant([10], [1.0, -0.5]), ValueError, r"values\[1\]"),
    (lambda: S.noam(512, 0, horizon=10), ValueError, "warmup"),
    (lambda: S.noam(0, 10, horizon=10), ValueError, "d_model"),
    (lambda: S.fairseq_inverse_sqrt(0, horizon=10), ValueError, "warmup_updates"),
    (lambda: S.fairseq_inverse_sqrt(10, warmup_init_lr=-1.0, horizon=10), ValueError, "warmup_init_lr"),
    (lambda: S.wsd(10, 10, 10, decay_type="exp"), ValueError, "decay_type"),
    (lambda: S.wsd(10, 10, 10, warmup_type="step"), ValueError, "warmup_type"),
    (lambda: S.wsd(10, -10, 10), ValueError, "stable"),
    (lambda: S.one_cycle(0), ValueError, "total_steps"),
    (lambda: S.one_cycle(100, pct_start=1.5), ValueError, "pct_start"),
    (lambda: S.one_cycle(100, pct_start=0.01), ValueError, "pct_start"),
    (lambda: S.one_cycle(100, anneal_strategy="tanh"), ValueError, "anneal_strategy"),
    (lambda: S.one_cycle(100, div_factor=0.0), ValueError, "div_factor"),
    (lambda: S.gradual_warmup(0), ValueError, "total_epoch"),
    (lambda: S.gradual_warmup(5, multiplier=0.5), ValueError, "multiplier"),
    (lambda: S.linear_warmup_from(5, start_factor=-0.1), ValueError, "start_factor"),
    (lambda: S.constant_warmup(5, factor=float("inf")), ValueError, "factor"),
    (lambda: S.exponential_warmup(5, period=0.0), ValueError, "period"),
    (lambda: S.sequential([S.constant()], [10]), ValueError, "milestones"),
    (lambda: S.sequential([S.constant(), S.constant()], [0]), ValueError, "milestones"),
    (lambda: S.sequential([S.constant(), S.constant(base_lr=2.0)], [5]), ValueError, "schedules"),
    (lambda: S.sequential([S.constant(), S.constant(steps_per_epoch=2)], [5]), ValueError, "steps_per_epoch"),
    (lambda: S.sequential([S.constant(), "x"], [5]), TypeError, "schedules"),
    (lambda: S.chained([]), TypeError, "schedules"),
    (lambda: S.constant(bogus=1), TypeError, "bogus"),
])
def test_argument_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# --------------------------------------------------------------------------- fuzz
FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fuzz_check(schedule, ref, bases, steps):
    expect = torch.tensor([[float(ref(b, s)) for s in steps] for b in bases], dtype=torch.float64)
    assert_bits(schedule.lr_at(torch.tensor(steps, dtype=torch.int64)), expect, schedule.name)


warmups = st.integers(0, 3000)
totals = st.integers(0, 6000)
lr_lists = st.lists(st.floats(0.0, 10.0, allow_subnormal=False), min_size=1, max_size=3)
# Up to 2**52: the references do integer arithmetic (e.g. step + shift) that we do in float64, which is
# exact only while those intermediates stay below 2**53 (documented on Schedule).
step_lists = st.lists(st.integers(0, 2**52), min_size=1, max_size=20)


@FUZZ
@given(w=warmups, t=totals, bases=lr_lists, extra=step_lists)
def test_fuzz_linear_decay(w, t, bases, extra):
    t = max(t, w)
    def ref(b, s):
        return b * hf._get_linear_schedule_with_warmup_lr_lambda(s, num_warmup_steps=w, num_training_steps=t)
    _fuzz_check(S.linear_decay(t, warmup=w, base_lr=bases), ref, bases, list(range(0, t + 50, 7)) + extra)


@FUZZ
@given(w=warmups, t=totals, bases=lr_lists, cycles=st.floats(0.1, 3.0), rate=st.floats(0.0, 1.0))
def test_fuzz_warmup_cosine(w, t, bases, cycles, rate):
    t = max(t, w)
    def ref(b, s):
        return b * hf._get_cosine_schedule_with_warmup_lr_lambda(
            s, num_warmup_steps=w, num_training_steps=t, num_cycles=cycles, min_lr_rate=rate)
    s = S.warmup_cosine(t, warmup=w, num_cycles=cycles, min_lr_rate=rate, base_lr=bases)
    _fuzz_check(s, ref, bases, list(range(0, t + 50, 5)))


@FUZZ
@given(w=warmups, bases=lr_lists, size=st.integers(1, 500),
       gamma=st.one_of(st.floats(0.01, 0.95), st.floats(1.05, 1.5)), extra=step_lists)
def test_fuzz_step_decay(w, bases, size, gamma, extra):
    def ref(b, s):
        return b * hf_warm(w)(s) if s < w else recursive_pow(b, gamma, (s - w) // size)
    _fuzz_check(S.step_decay(size, gamma, warmup=w, base_lr=bases), ref, bases, list(range(0, 4000, 3)) + extra)


@FUZZ
@given(w=warmups, bases=lr_lists, ts=st.one_of(st.none(), st.integers(1, 10**6)), extra=step_lists)
def test_fuzz_inverse_sqrt(w, bases, ts, extra):
    def ref(b, s):
        return b * hf._get_inverse_sqrt_schedule_lr_lambda(s, num_warmup_steps=w, timescale=(w or 10_000) if ts is None else ts)
    _fuzz_check(S.inverse_sqrt(warmup=w, timescale=ts, base_lr=bases), ref, bases, list(range(0, 4000, 3)) + extra)
