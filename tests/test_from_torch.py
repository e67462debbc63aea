"""from_torch against the real schedulers, bit for bit.

The contract: for every step t < H, ``from_torch(sched).lr_at(range(H))[g][t]`` is the very Python float that
``opt.param_groups[g]['lr']`` holds during iteration t of ``for t in range(H): record; opt.step(); sched.step()``.
Every comparison below is on the int64 view of float64 tensors (torch.equal): never allclose.

On CUDA, closed-form phases that need cos/pow past the exact-mode table use the device's libm, which is only
documented to be within a few ulps; the CUDA runs therefore pass ``horizon=H`` so that every compared step is
tabled (on CPU the default ``horizon`` is used, and the host libm is Python's).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as lrs

import transformers
from transformers import optimization as hf
from warmup_fused.schedules import Recorded, from_torch

try:
    from warmup_scheduler import GradualWarmupScheduler
except ImportError:  # pragma: no cover - the test extra installs it
    GradualWarmupScheduler = None

H = 10_000  # the horizon of every reference run (recording runs at Python speed: ~0.3 s per run)
LRS = {1: [0.1], 2: [3e-4, 0.07], 3: [0.1, 1e-3, 0.0123]}  # distinct base LRs per group count

needs_gws = pytest.mark.skipif(GradualWarmupScheduler is None, reason="warmup-scheduler is not installed")


# --------------------------------------------------------------------------- harness
def make_opt(lrs_, momentum: float = 0.0) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs_]
    return torch.optim.SGD(groups, lr=lrs_[0], momentum=momentum)


def reference(opt, sched, steps: int) -> torch.Tensor:
    """float64 [G, steps]: param_groups[g]['lr'] during iteration t of the canonical loop."""
    rows = [[] for _ in opt.param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(steps):
            for g, group in enumerate(opt.param_groups):
                lr = group["lr"]
                assert type(lr) in (float, int), type(lr)
                rows[g].append(float(lr))
            opt.step()
            if t + 1 < steps:  # the last step's result is never observed (OneCycleLR raises past its end)
                sched.step()
    return torch.tensor(rows, dtype=torch.float64)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().to(torch.float64).view(torch.int64)


def assert_bits_equal(got: torch.Tensor, expect: torch.Tensor, what: str = "") -> None:
    got = got.detach().cpu()
    assert got.shape == expect.shape, (what, got.shape, expect.shape)
    if torch.equal(bits(got), bits(expect)):
        return
    diff = (bits(got) != bits(expect)).nonzero()
    g, t = (int(x) for x in diff[0])
    raise AssertionError(
        f"{what}: {len(diff)} of {expect.numel()} LRs differ; first at group {g}, step {t}: "
        f"got {float(got[g, t])!r}, reference {float(expect[g, t])!r}"
    )


def is_closed_form(s) -> bool:
    return not any(isinstance(body, Recorded) for group in s._phases for _, body in group)


def check(factory, lrs_, device, *, steps: int = H, horizon=None, horizons=None, momentum: float = 0.0,
          closed=None):
    """Builds a fresh optimizer and scheduler, converts BEFORE stepping (once per horizon in ``horizons``),
    runs the reference loop once, and compares every conversion with it bit for bit."""
    opt = make_opt(lrs_, momentum)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = factory(opt)
    converted = [from_torch(sched, horizon=h) for h in (horizons if horizons is not None else [horizon])]
    for s in converted:
        assert s.num_groups == len(lrs_)
        if closed is not None:
            assert is_closed_form(s) == closed, s
    expect = reference(opt, sched, steps)
    for h, s in zip(horizons or [horizon], converted):
        assert_bits_equal(s.lr_at(range(steps), device), expect, f"{type(sched).__name__} (horizon={h})")
    return converted[-1], expect


def rotate(names, counts=(1, 2, 3)):
    """(name, group count) pairs: every name once, the group counts taking turns (one reference run each)."""
    return [(n, counts[i % len(counts)]) for i, n in enumerate(sorted(names))]


def cuda_horizon(device, steps: int = H):
    """None (the user's default) on CPU; the whole compared range on CUDA (see the module docstring)."""
    return None if device == "cpu" else steps


# --------------------------------------------------------------------------- torch built-ins (recorded)
def _unknown_lambda(step):
    return 0.999 ** step if step % 3 else 1.0 / (1 + step) ** 0.5


RECORDED = {
    "LambdaLR-unknown": lambda o: lrs.LambdaLR(o, _unknown_lambda),
    "LambdaLR-per-group": lambda o: lrs.LambdaLR(o, [(lambda s, k=k: math.cos(s / (100.0 + k)) ** 2)
                                                     for k in range(len(o.param_groups))]),
    "MultiplicativeLR": lambda o: lrs.MultiplicativeLR(o, lambda s: 0.9997 if s % 7 else 1.0001),
    "MultiplicativeLR-const": lambda o: lrs.MultiplicativeLR(o, lambda s: 0.99951),
    "StepLR": lambda o: lrs.StepLR(o, step_size=1000, gamma=0.5),
    "StepLR-1": lambda o: lrs.StepLR(o, step_size=1, gamma=0.9993),
    "ExponentialLR": lambda o: lrs.ExponentialLR(o, gamma=0.9995),
    "ExponentialLR-fast": lambda o: lrs.ExponentialLR(o, gamma=0.93),  # underflows to 0 within the horizon
    "CosineAnnealingLR": lambda o: lrs.CosineAnnealingLR(o, T_max=H),
    "CosineAnnealingLR-eta_min-past-T_max": lambda o: lrs.CosineAnnealingLR(o, T_max=3000, eta_min=1e-5),
    "CosineAnnealingWarmRestarts-T_mult1": lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=1500),
    "CosineAnnealingWarmRestarts-T_mult2": lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=300, T_mult=2,
                                                                                        eta_min=1e-6),
    "SequentialLR-w1": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, start_factor=0.01, total_iters=1), lrs.CosineAnnealingLR(o, T_max=H - 1)],
        milestones=[1]),
    "SequentialLR-w0": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, start_factor=0.01, total_iters=1), lrs.CosineAnnealingLR(o, T_max=H, eta_min=1e-7)],
        milestones=[0]),
    "SequentialLR-w500": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, start_factor=1e-3, end_factor=1.0, total_iters=500),
            lrs.CosineAnnealingLR(o, T_max=H - 500, eta_min=1e-6)], milestones=[500]),
    "SequentialLR-warmup-eq-total": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, start_factor=0.1, total_iters=H), lrs.CosineAnnealingLR(o, T_max=10)],
        milestones=[H]),
    "ChainedScheduler": lambda o: lrs.ChainedScheduler(
        [lrs.ConstantLR(o, factor=0.1, total_iters=200), lrs.ExponentialLR(o, gamma=0.9999)]),
    "ChainedScheduler-warmup-cosine": lambda o: lrs.ChainedScheduler(
        [lrs.LinearLR(o, start_factor=0.05, total_iters=700), lrs.CosineAnnealingLR(o, T_max=4000)]),
    # torchvision references/detection/utils.py warmup_lr_scheduler
    "torchvision-warmup": lambda o: lrs.LambdaLR(o, torchvision_warmup(warmup_iters=1000, warmup_factor=1e-3)),
    "torchvision-warmup-1": lambda o: lrs.LambdaLR(o, torchvision_warmup(warmup_iters=1, warmup_factor=1.0 / 3)),
}


def torchvision_warmup(warmup_iters, warmup_factor):
    def f(x):
        if x >= warmup_iters:
            return 1
        alpha = float(x) / warmup_iters
        return warmup_factor * (1 - alpha) + alpha

    return f


@pytest.mark.parametrize("name,groups", rotate(RECORDED))
def test_recorded_schedulers(name, groups, device):
    s, expect = check(RECORDED[name], LRS[groups], device, horizon=H, closed=False)
    # Past the horizon the last recorded LR holds, for any step, and never errors.
    past = torch.tensor([H, H + 1, H + 12345, 2**31, 2**40], dtype=torch.int64)
    got = s.lr_at(past, device).cpu()
    assert_bits_equal(got, expect[:, -1:].expand(-1, len(past)), f"{name} past horizon")


@pytest.mark.parametrize("name", ["LambdaLR-unknown", "StepLR", "CosineAnnealingLR", "SequentialLR-w500",
                                  "ChainedScheduler", "ExponentialLR"])
def test_recorded_without_horizon_is_refused(name):
    sched = RECORDED[name](make_opt(LRS[2]))
    with pytest.raises(ValueError, match="horizon"):
        from_torch(sched)


# Schedulers that settle: recorded up to a known step, then held; no horizon needed.
SETTLING = {
    "ConstantLR": lambda o: lrs.ConstantLR(o, factor=0.25, total_iters=777),
    "ConstantLR-1": lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=1),
    "ConstantLR-0": lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=0),
    "LinearLR": lambda o: lrs.LinearLR(o, start_factor=1e-3, total_iters=2500),
    "LinearLR-decay": lambda o: lrs.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=H),
    "LinearLR-0": lambda o: lrs.LinearLR(o, start_factor=0.1, total_iters=0),
    "LinearLR-1": lambda o: lrs.LinearLR(o, start_factor=0.3, total_iters=1),
    "MultiStepLR": lambda o: lrs.MultiStepLR(o, milestones=[100, 3000, 3000, 7000], gamma=0.3),
    "MultiStepLR-0": lambda o: lrs.MultiStepLR(o, milestones=[0, 1, 9999], gamma=0.5),
    "PolynomialLR": lambda o: lrs.PolynomialLR(o, total_iters=4000, power=2.0),
    "PolynomialLR-sqrt": lambda o: lrs.PolynomialLR(o, total_iters=H - 1, power=0.5),
    "PolynomialLR-1": lambda o: lrs.PolynomialLR(o, total_iters=1, power=1.0),
}


@pytest.mark.parametrize("name,groups", rotate(SETTLING))
def test_settling_schedulers(name, groups, device):
    # Without a horizon: recorded up to the settle step, then held. With one: the same, bounded by it.
    check(SETTLING[name], LRS[groups], device, horizons=[None, H], closed=False)


def _one_cycle(total_steps, **kw):
    def factory(o):
        max_lr = [10 * g["lr"] for g in o.param_groups]
        return lrs.OneCycleLR(o, max_lr=max_lr, total_steps=total_steps, **kw)

    return factory


ONE_CYCLE = {
    "cos": dict(),
    "linear": dict(anneal_strategy="linear", pct_start=0.1),
    "cos-three-phase": dict(three_phase=True, pct_start=0.25, div_factor=10.0, final_div_factor=1e3),
    "linear-three-phase": dict(anneal_strategy="linear", three_phase=True),
}


@pytest.mark.parametrize("name,groups", rotate(ONE_CYCLE, (3, 1)))
def test_one_cycle(name, groups, device):
    # The reference holds a value at every step <= total_steps (the one at total_steps extrapolates the last
    # phase) and raises past it: compare the whole valid range.
    total = H + 1234
    check(_one_cycle(total, **ONE_CYCLE[name]), LRS[groups], device, steps=total + 1,
          horizons=[None, total + 1, H + 5000], momentum=0.9, closed=False)


# --------------------------------------------------------------------------- transformers (closed form)
def _hf(fn_name, **kw):
    return lambda o: getattr(hf, fn_name)(o, **kw)


HF = {
    "constant": _hf("get_constant_schedule"),
    "constant_with_warmup-w0": _hf("get_constant_schedule_with_warmup", num_warmup_steps=0),
    "constant_with_warmup-w1": _hf("get_constant_schedule_with_warmup", num_warmup_steps=1),
    "constant_with_warmup-w777": _hf("get_constant_schedule_with_warmup", num_warmup_steps=777),
    "constant_with_warmup-w-eq-H": _hf("get_constant_schedule_with_warmup", num_warmup_steps=H),
    "linear-w0": _hf("get_linear_schedule_with_warmup", num_warmup_steps=0, num_training_steps=7000),
    "linear-w1": _hf("get_linear_schedule_with_warmup", num_warmup_steps=1, num_training_steps=H - 1),
    "linear-w300": _hf("get_linear_schedule_with_warmup", num_warmup_steps=300, num_training_steps=6001),
    "linear-w-eq-t": _hf("get_linear_schedule_with_warmup", num_warmup_steps=3000, num_training_steps=3000),
    "cosine-w0": _hf("get_cosine_schedule_with_warmup", num_warmup_steps=0, num_training_steps=7000),
    "cosine-w1": _hf("get_cosine_schedule_with_warmup", num_warmup_steps=1, num_training_steps=H),
    "cosine-w500-2.3": _hf("get_cosine_schedule_with_warmup", num_warmup_steps=500, num_training_steps=6000,
                           num_cycles=2.3),
    "cosine-w-eq-t": _hf("get_cosine_schedule_with_warmup", num_warmup_steps=2000, num_training_steps=2000),
    "hard_restarts-w0": _hf("get_cosine_with_hard_restarts_schedule_with_warmup", num_warmup_steps=0,
                            num_training_steps=8000, num_cycles=3),
    "hard_restarts-w1-2.3": _hf("get_cosine_with_hard_restarts_schedule_with_warmup", num_warmup_steps=1,
                                num_training_steps=6000, num_cycles=2.3),
    "hard_restarts-w-eq-t": _hf("get_cosine_with_hard_restarts_schedule_with_warmup", num_warmup_steps=4000,
                                num_training_steps=4000),
    "polynomial-p1-w0": _hf("get_polynomial_decay_schedule_with_warmup", num_warmup_steps=0,
                            num_training_steps=7000),
    "polynomial-p2-w1": _hf("get_polynomial_decay_schedule_with_warmup", num_warmup_steps=1,
                            num_training_steps=6000, lr_end=1e-9, power=2.0),
    "polynomial-p0.5-w400": _hf("get_polynomial_decay_schedule_with_warmup", num_warmup_steps=400,
                                num_training_steps=H - 2, lr_end=1e-9, power=0.5),
    "polynomial-p3-int-w-gt-t": _hf("get_polynomial_decay_schedule_with_warmup", num_warmup_steps=5000,
                                    num_training_steps=4000, lr_end=1e-9, power=3),
    "inverse_sqrt-w0": _hf("get_inverse_sqrt_schedule", num_warmup_steps=0),
    "inverse_sqrt-w1": _hf("get_inverse_sqrt_schedule", num_warmup_steps=1),
    "inverse_sqrt-w1000": _hf("get_inverse_sqrt_schedule", num_warmup_steps=1000),
    "inverse_sqrt-w100-ts777": _hf("get_inverse_sqrt_schedule", num_warmup_steps=100, timescale=777),
    "inverse_sqrt-w0-ts3": _hf("get_inverse_sqrt_schedule", num_warmup_steps=0, timescale=3),
    "cosine_min_lr-rate-w0": _hf("get_cosine_with_min_lr_schedule_with_warmup", num_warmup_steps=0,
                                 num_training_steps=7000, min_lr_rate=0.1),
    "cosine_min_lr-rate-w1-2.3": _hf("get_cosine_with_min_lr_schedule_with_warmup", num_warmup_steps=1,
                                     num_training_steps=6000, num_cycles=2.3, min_lr_rate=0.05),
    "cosine_min_lr-min_lr-w300": _hf("get_cosine_with_min_lr_schedule_with_warmup", num_warmup_steps=300,
                                     num_training_steps=8000, min_lr=1e-5),
    "cosine_min_lr-w-eq-t": _hf("get_cosine_with_min_lr_schedule_with_warmup", num_warmup_steps=3000,
                                num_training_steps=3000, min_lr=1e-6),
}
for _wt in ("linear", "cosine", "1-sqrt"):
    for _dt in ("linear", "cosine", "1-sqrt"):
        HF[f"wsd-{_wt}-{_dt}"] = _hf("get_wsd_schedule", num_warmup_steps=800, num_decay_steps=3000,
                                     num_training_steps=8000, warmup_type=_wt, decay_type=_dt)
        HF[f"wsd-{_wt}-{_dt}-min_lr_ratio"] = _hf(
            "get_wsd_schedule", num_warmup_steps=1, num_stable_steps=2000, num_decay_steps=5000,
            warmup_type=_wt, decay_type=_dt, min_lr_ratio=0.1, num_cycles=0.7)
HF["wsd-w0-no-stable"] = _hf("get_wsd_schedule", num_warmup_steps=0, num_decay_steps=4000, num_stable_steps=0)
HF["wsd-w0-d0"] = _hf("get_wsd_schedule", num_warmup_steps=0, num_decay_steps=0, num_training_steps=5000,
                      min_lr_ratio=0.25)
HF["wsd-negative-stable"] = _hf("get_wsd_schedule", num_warmup_steps=3000, num_decay_steps=5000,
                                num_training_steps=6000, warmup_type="cosine", decay_type="1-sqrt",
                                min_lr_ratio=0.01)
if hasattr(hf, "get_cosine_with_min_lr_schedule_with_warmup_lr_rate"):
    HF["cosine_min_lr_lr_rate-w500"] = _hf("get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
                                           num_warmup_steps=500, num_training_steps=7000, min_lr_rate=0.1)
    HF["cosine_min_lr_lr_rate-w300-warmup_rate"] = _hf(
        "get_cosine_with_min_lr_schedule_with_warmup_lr_rate", num_warmup_steps=300, num_training_steps=6000,
        min_lr=1e-5, warmup_lr_rate=0.01, num_cycles=1.3)
    HF["cosine_min_lr_lr_rate-w0"] = _hf("get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
                                         num_warmup_steps=0, num_training_steps=5000, min_lr_rate=0.2)
    HF["cosine_min_lr_lr_rate-w1"] = _hf("get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
                                         num_warmup_steps=1, num_training_steps=H, min_lr_rate=0.0)


@pytest.mark.parametrize("name,groups", rotate(HF, (2, 3, 2, 1)))
def test_transformers_closed_form(name, groups, device):
    # H = 10_000 runs past num_training_steps for most of them: the lambda's tail is matched too.
    check(HF[name], LRS[groups], device, horizon=cuda_horizon(device), closed=True)


def test_transformers_polynomial_warmup_eq_total(device):
    """num_warmup_steps == num_training_steps: the reference divides 0 by 0 at step t (ZeroDivisionError);
    every step before it matches, and the conversion holds lr_end from step t on instead of failing."""
    t = H
    factory = _hf("get_polynomial_decay_schedule_with_warmup", num_warmup_steps=t, num_training_steps=t,
                  lr_end=1e-9)
    s, _ = check(factory, LRS[2], device, steps=t, closed=True)
    opt = make_opt(LRS[2])
    sched = factory(opt)
    with pytest.raises(ZeroDivisionError):
        sched.lr_lambdas[0](t)
    expect = torch.tensor([[b * (1e-9 / LRS[2][0])] * 2 for b in LRS[2]], dtype=torch.float64)  # lr_init: defaults
    assert_bits_equal(s.lr_at(torch.tensor([t, t + 1]), device), expect, "from step t")


def test_transformers_per_group_lambdas(device):
    """A LambdaLR with one transformers lambda per group (different schedules) is closed-form too."""
    def factory(o):
        a = hf.get_linear_schedule_with_warmup(o, 100, 5000).lr_lambdas[0]
        b = hf.get_cosine_schedule_with_warmup(o, 10, 9000, num_cycles=1.5).lr_lambdas[0]
        c = hf.get_inverse_sqrt_schedule(o, 50).lr_lambdas[0]
        return lrs.LambdaLR(o, [a, b, c])

    check(factory, LRS[3], device, horizon=cuda_horizon(device), closed=True)


def test_transformers_get_scheduler(device):
    """The Trainer's entry point builds the same partials."""
    check(lambda o: transformers.get_scheduler("cosine", o, num_warmup_steps=250, num_training_steps=8000),
          LRS[2], device, horizon=cuda_horizon(device), closed=True)


def test_transformers_no_table_unless_transcendental():
    def conv(factory, **kw):
        return from_torch(factory(make_opt(LRS[2])), **kw)

    # + - * / sqrt are correctly rounded everywhere: no table, no horizon needed.
    for name in ("constant", "constant_with_warmup-w777", "linear-w300", "inverse_sqrt-w1000",
                 "inverse_sqrt-w100-ts777", "wsd-linear-linear", "wsd-1-sqrt-1-sqrt"):
        s = conv(HF[name])
        assert s.table_bytes == 0, (name, s)
    # cos/pow phases are tabled (up to num_training_steps, or over their bounded phase).
    for name in ("cosine-w500-2.3", "hard_restarts-w1-2.3", "polynomial-p1-w0", "cosine_min_lr-rate-w0",
                 "wsd-cosine-linear", "wsd-linear-cosine"):
        s = conv(HF[name])
        assert s.table_bytes > 0, (name, s)
        assert conv(HF[name], exact=False).table_bytes == 0


@pytest.mark.parametrize("name", ["cosine-w500-2.3", "cosine-w1", "hard_restarts-w1-2.3", "polynomial-p2-w1",
                                  "cosine_min_lr-min_lr-w300", "wsd-cosine-cosine-min_lr_ratio"])
def test_exact_and_fast_agree_on_cpu(name):
    """On the host the table is the host libm's own output: exact=True and exact=False give the same bits."""
    opt = make_opt(LRS[2])
    sched = HF[name](opt)
    exact = from_torch(sched, horizon=H)
    fast = from_torch(sched, horizon=H, exact=False)
    assert exact.table_bytes > 0 and fast.table_bytes == 0
    steps = torch.cat([torch.arange(H + 500), torch.tensor([2**31, 2**31 + 12345, 2**40])])
    assert_bits_equal(exact.lr_at(steps), fast.lr_at(steps), name)


# Steps >= 2**31: closed-form conversions against the lambda evaluated directly in Python.
BIG = [2**31 - 1, 2**31, 2**31 + 12345, 2**32 + 7, 2**40, 2**52 + 3]
# (name, the step's phase is transcendental past num_training_steps: device libm on CUDA)
BIG_CASES = [("constant", False), ("constant_with_warmup-w777", False), ("linear-w300", False),
             ("linear-w0", False), ("cosine-w500-2.3", True), ("cosine-w1", True), ("hard_restarts-w0", False),
             ("polynomial-p2-w1", False), ("inverse_sqrt-w1000", False), ("inverse_sqrt-w100-ts777", False),
             ("cosine_min_lr-min_lr-w300", True), ("wsd-cosine-cosine-min_lr_ratio", False)]


@pytest.mark.parametrize("name,transcendental", BIG_CASES)
def test_transformers_huge_steps(name, transcendental, device):
    if transcendental and device != "cpu":
        pytest.skip("past the table the device's cos is within ulps, not bit-exact")
    opt = make_opt(LRS[3])
    sched = HF[name](opt)
    s = from_torch(sched)
    expect = torch.tensor([[base * fn(step) for step in BIG] for base, fn in zip(sched.base_lrs, sched.lr_lambdas)],
                          dtype=torch.float64)
    assert_bits_equal(s.lr_at(torch.tensor(BIG), device), expect, name)


# --------------------------------------------------------------------------- warmup_scheduler
@needs_gws
@pytest.mark.parametrize("multiplier,total_epoch,groups",
                         [(1, 1, 3), (1.0, 500, 1), (4, 1, 2), (8.0, 3000, 3), (2.5, H - 1, 2), (1, H, 1)])
def test_gradual_warmup_closed_form(multiplier, total_epoch, groups, device):
    s, _ = check(lambda o: GradualWarmupScheduler(o, multiplier=multiplier, total_epoch=total_epoch),
                 LRS[groups], device, closed=True)
    assert s.table_bytes == 0
    # Beyond total_epoch the reference holds base_lr * multiplier forever.
    expect = torch.tensor([[b * multiplier] * 3 for b in LRS[groups]], dtype=torch.float64)
    assert_bits_equal(s.lr_at(torch.tensor([H + 5, 2**31 + 1, 2**40]), device), expect, "past total_epoch")


GWS_AFTER = {
    "StepLR-m1": (1, 300, lambda o: lrs.StepLR(o, step_size=1000, gamma=0.5)),
    "StepLR-m4": (4, 1, lambda o: lrs.StepLR(o, step_size=7, gamma=0.999)),
    "Cosine-m1": (1, 1000, lambda o: lrs.CosineAnnealingLR(o, T_max=H - 1000, eta_min=1e-6)),
    "Cosine-m8": (8, 500, lambda o: lrs.CosineAnnealingLR(o, T_max=4000)),
}


@needs_gws
@pytest.mark.parametrize("name,groups", rotate(GWS_AFTER, (2, 1)))
def test_gradual_warmup_with_after_scheduler(name, groups, device):
    multiplier, total_epoch, after = GWS_AFTER[name]

    def factory(o):
        return GradualWarmupScheduler(o, multiplier=multiplier, total_epoch=total_epoch, after_scheduler=after(o))

    check(factory, LRS[groups], device, horizon=H, closed=False)
    with pytest.raises(ValueError, match="horizon"):
        from_torch(factory(make_opt(LRS[groups])))


# --------------------------------------------------------------------------- errors
def test_reduce_on_plateau_becomes_the_device_plateau_schedule():
    """Metric-driven: converted to schedules.reduce_on_plateau (tests/test_plateau.py follows it against torch),
    starting from the scheduler's current LRs."""
    sched = lrs.ReduceLROnPlateau(make_opt(LRS[1]))
    s = from_torch(sched)
    assert s.plateau_offset is not None and not s.relative
    assert s.lr_at(range(3)).tolist() == [[lr] * 3 for lr in LRS[1]]


@pytest.mark.parametrize("bad,at", [(math.nan, 37), (math.inf, 5), (-math.inf, 1)])
def test_non_finite_recorded_lr_is_refused(bad, at):
    """A LambdaLR whose lambda returns NaN/inf at some step: refused, naming the step and the group; the live
    scheduler and optimizer are left as they were."""
    opt = make_opt(LRS[2])
    sched = lrs.LambdaLR(opt, [lambda s: 0.99 ** s, lambda s: bad if s == at else 1.0 / (1 + s)])
    before = ([g["lr"] for g in opt.param_groups], sched.last_epoch)
    with pytest.raises(ValueError, match=rf"param_groups\[1\]\['lr'\] = -?(nan|inf) at step {at}\b"):
        from_torch(sched, horizon=100)
    assert ([g["lr"] for g in opt.param_groups], sched.last_epoch) == before
    from_torch(sched, horizon=at)  # the bad step lies past the recording: fine


@pytest.mark.parametrize("obj", [None, 0.1, "cosine", make_opt([0.1]), lambda s: 1.0])
def test_non_scheduler_is_refused(obj):
    with pytest.raises(TypeError, match="scheduler"):
        from_torch(obj)


@pytest.mark.parametrize("horizon", [0, -1, 1.5, True, "100"])
@pytest.mark.parametrize("kind", ["recorded", "closed"])
def test_bad_horizon(horizon, kind):
    opt = make_opt(LRS[1])
    sched = lrs.StepLR(opt, 10) if kind == "recorded" else hf.get_cosine_schedule_with_warmup(opt, 10, 100)
    with pytest.raises(ValueError, match="horizon"):
        from_torch(sched, horizon=horizon)


@pytest.mark.parametrize("factory", [RECORDED["StepLR"], SETTLING["LinearLR"], RECORDED["LambdaLR-unknown"],
                                     _one_cycle(100)])
def test_already_stepped_recording_is_refused(factory):
    opt = make_opt(LRS[2], momentum=0.9)
    sched = factory(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="stepped"):
        from_torch(sched, horizon=1000)


def test_already_stepped_chained_is_refused():
    """ChainedScheduler has no last_epoch of its own: its children tell that it has been stepped."""
    opt = make_opt(LRS[2])
    sched = RECORDED["ChainedScheduler"](opt)
    from_torch(sched, horizon=100)  # fresh: fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="stepped"):
        from_torch(sched, horizon=100)


def test_subclass_of_settling_scheduler_is_recorded(device):
    """A subclass may change get_lr: it is not assumed to settle like its base class."""
    class Decaying(lrs.LinearLR):
        def get_lr(self):
            return [g["lr"] * 0.9999 for g in self.optimizer.param_groups]

    with pytest.raises(ValueError, match="horizon"):
        from_torch(Decaying(make_opt(LRS[1]), total_iters=10))
    check(lambda o: Decaying(o, total_iters=10), LRS[2], device, horizon=H, closed=False)


def test_already_stepped_closed_form_is_fine():
    """A closed-form conversion depends on the lambda only, not on how far the scheduler has run."""
    opt = make_opt(LRS[2])
    sched = hf.get_linear_schedule_with_warmup(opt, 10, 100)
    fresh = from_torch(sched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            opt.step()
            sched.step()
    assert_bits_equal(from_torch(sched).lr_at(range(200)), fresh.lr_at(range(200)))


def test_lr_at_bad_steps():
    s = from_torch(hf.get_linear_schedule_with_warmup(make_opt(LRS[1]), 10, 100))
    with pytest.raises(ValueError, match="steps"):
        s.lr_at(-1)
    with pytest.raises(ValueError, match="steps"):
        s.lr_at(torch.tensor([0, -5]))
    with pytest.raises(TypeError):
        s.lr_at(1.5)
    with pytest.raises(TypeError):
        s.lr_at(torch.tensor([1.5]))


def test_conversion_does_not_touch_the_reference():
    """Recording runs a detached copy: the live optimizer and scheduler are left exactly as they were."""
    opt = make_opt(LRS[2])
    p = opt.param_groups[0]["params"][0]
    sched = lrs.SequentialLR(opt, [lrs.LinearLR(opt, 0.1, total_iters=10), lrs.StepLR(opt, 5)], milestones=[10])
    before = ([dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups],
              sched.last_epoch)
    from_torch(sched, horizon=500)
    after = ([dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups], sched.last_epoch)
    assert before == after
    assert opt.param_groups[0]["params"][0] is p and p.numel() == 1


# --------------------------------------------------------------------------- fuzz
FUZZ_STEPS = 2000
_FUZZ = {
    "linear": lambda o, w, t, c: hf.get_linear_schedule_with_warmup(o, w, t),
    "cosine": lambda o, w, t, c: hf.get_cosine_schedule_with_warmup(o, w, t, num_cycles=c),
    "polynomial": lambda o, w, t, c: hf.get_polynomial_decay_schedule_with_warmup(
        o, w, t, lr_end=1e-9 * o.defaults["lr"], power=c),
    "hard_restarts": lambda o, w, t, c: hf.get_cosine_with_hard_restarts_schedule_with_warmup(
        o, w, t, num_cycles=c * 2),
}


@pytest.mark.parametrize("kind", sorted(_FUZZ))
@settings(max_examples=25, deadline=None)
@given(warmup=st.integers(0, 600), total=st.integers(1, 2500),
       lr=st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False),
       num_cycles=st.floats(0.05, 4.0, allow_nan=False, allow_infinity=False))
def test_fuzz_transformers(kind, warmup, total, lr, num_cycles):
    if kind == "polynomial" and warmup == total:
        total += 1  # the reference divides by num_training_steps - num_warmup_steps (ZeroDivisionError)
    lrs_ = [lr, lr * 0.37]
    check(lambda o: _FUZZ[kind](o, warmup, total, num_cycles), lrs_, "cpu", steps=FUZZ_STEPS, closed=True)


# --------------------------------------------------------------------------- momentum channel, tensor lrs
def _record_momentum(opt, sched, steps, key):
    lr_rows, mom_rows = [[] for _ in opt.param_groups], [[] for _ in opt.param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(steps):
            for g, group in enumerate(opt.param_groups):
                lr_rows[g].append(float(group["lr"]))
                mom_rows[g].append(float(group["betas"][0] if key == "betas" else group["momentum"]))
            opt.step()
            if t + 1 < steps:
                sched.step()
    return torch.tensor(lr_rows, dtype=torch.float64), torch.tensor(mom_rows, dtype=torch.float64)


MOMENTUM_OPTS = {
    "SGD": (lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), "momentum"),
    "SGD-nesterov": (lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.5, nesterov=True), "momentum"),
    "Adam": (lambda g: torch.optim.Adam(g, lr=1e-3, betas=(0.9, 0.99)), "betas"),
    "AdamW": (lambda g: torch.optim.AdamW(g, lr=1e-3), "betas"),
}
CYCLERS = {
    "OneCycleLR-cos": lambda o, n, c: lrs.OneCycleLR(o, max_lr=[3 * g["lr"] for g in o.param_groups], total_steps=n,
                                                     cycle_momentum=c),
    "OneCycleLR-linear-3": lambda o, n, c: lrs.OneCycleLR(o, max_lr=0.02, total_steps=n, anneal_strategy="linear",
                                                          three_phase=True, base_momentum=[0.8, 0.7, 0.75][:len(
                                                              o.param_groups)], max_momentum=0.97, cycle_momentum=c),
    "CyclicLR-exp_range": lambda o, n, c: lrs.CyclicLR(o, 1e-4, 3e-3, step_size_up=97, step_size_down=211,
                                                       mode="exp_range", gamma=0.9993, cycle_momentum=c),
    "CyclicLR-triangular2": lambda o, n, c: lrs.CyclicLR(o, [1e-4, 2e-4, 3e-4][:len(o.param_groups)], 1e-2,
                                                         step_size_up=150, mode="triangular2", base_momentum=0.7,
                                                         max_momentum=[0.9, 0.95, 0.99][:len(o.param_groups)],
                                                         cycle_momentum=c),
    "SequentialLR-warmup-OneCycleLR": lambda o, n, c: lrs.SequentialLR(
        o, [lrs.LinearLR(o, 0.1, total_iters=50), lrs.OneCycleLR(o, max_lr=0.05, total_steps=n, cycle_momentum=c)],
        milestones=[50]),
}


@pytest.mark.parametrize("cycle", [True, False])
@pytest.mark.parametrize("opt_name", sorted(MOMENTUM_OPTS))
@pytest.mark.parametrize("name", sorted(CYCLERS))
def test_cycled_momentum_is_recorded(name, opt_name, cycle, device):
    make, key = MOMENTUM_OPTS[opt_name]
    groups = [{"params": [torch.nn.Parameter(torch.randn(3))], "lr": lr} for lr in LRS[3]]
    opt = make(groups)
    n = 1500
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = CYCLERS[name](opt, n, cycle)
    s = from_torch(sched, horizon=n)
    assert s.has_momentum == cycle and not s.relative
    lr, mom = _record_momentum(opt, sched, n, key)
    assert_bits_equal(s.lr_at(range(n), device), lr, name)
    if cycle:
        assert_bits_equal(s.momentum_at(range(n), device), mom, f"{name} {key}")
        assert len(set(mom[0].tolist())) > 10  # it really cycles
        # Past the recording the last value holds, as for the LR.
        far = torch.tensor([n, 2**40])
        assert_bits_equal(s.momentum_at(far, device), mom[:, -1:].expand(-1, 2), "held")
    else:
        with pytest.raises(ValueError, match="momentum"):
            s.momentum_at(range(3))


def _tensor_lr_opt(dtype, lrs_=LRS[2]):
    groups = [{"params": [torch.nn.Parameter(torch.randn(2))], "lr": torch.tensor(lr, dtype=dtype)} for lr in lrs_]
    return torch.optim.SGD(groups, lr=0.1)


def _reference_tensor(opt, sched, steps):
    rows = [[] for _ in opt.param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(steps):
            for g, group in enumerate(opt.param_groups):
                rows[g].append(float(group["lr"].item()))
            opt.step()
            if t + 1 < steps:
                sched.step()
    return torch.tensor(rows, dtype=torch.float64)


TENSOR_LR_CLOSED = {
    "linear": lambda o: hf.get_linear_schedule_with_warmup(o, 137, 2500),
    "cosine": lambda o: hf.get_cosine_schedule_with_warmup(o, 50, 2900, num_cycles=0.7),
    "hard_restarts": lambda o: hf.get_cosine_with_hard_restarts_schedule_with_warmup(o, 0, 2000, num_cycles=3),
    "inverse_sqrt": lambda o: hf.get_inverse_sqrt_schedule(o, 300),
    "wsd": lambda o: hf.get_wsd_schedule(o, 100, 700, num_stable_steps=900, decay_type="cosine", min_lr_ratio=0.05),
    "constant_with_warmup": lambda o: hf.get_constant_schedule_with_warmup(o, 333),
}
if GradualWarmupScheduler is not None:
    TENSOR_LR_CLOSED["GradualWarmupScheduler-m1"] = lambda o: GradualWarmupScheduler(o, 1, 777)
    TENSOR_LR_CLOSED["GradualWarmupScheduler-m3.7"] = lambda o: GradualWarmupScheduler(o, 3.7, 1234)
    TENSOR_LR_CLOSED["GradualWarmupScheduler-m4-int"] = lambda o: GradualWarmupScheduler(o, 4, 50)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(TENSOR_LR_CLOSED))
def test_tensor_lr_closed_form(name, dtype, device):
    """A tensor lr: LRScheduler computes base_lr * factor in the tensor's dtype and fill_()s it in; the
    closed-form conversion mirrors that (float32: the factor and the product rounded to float32)."""
    opt = _tensor_lr_opt(dtype, [0.0123, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = TENSOR_LR_CLOSED[name](opt)
    s = from_torch(sched, horizon=3000)
    assert is_closed_form(s)
    expect = _reference_tensor(opt, sched, 3000)
    assert_bits_equal(s.lr_at(range(3000), device), expect, f"{name} {dtype}")


def test_tensor_lr_of_other_dtypes_is_refused_by_name():
    opt = _tensor_lr_opt(torch.bfloat16)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] is a torch.bfloat16 tensor"):
        from_torch(hf.get_linear_schedule_with_warmup(opt, 10, 100))
    # recorded conversions take the stored values whatever the dtype
    s = from_torch(lrs.StepLR(_tensor_lr_opt(torch.bfloat16), 7, 0.5), horizon=50)
    assert s.lr_at(range(50)).shape == (2, 50)


@needs_gws
def test_gradual_warmup_with_reduce_on_plateau_is_refused_by_name():
    opt = make_opt(LRS[2])
    sched = GradualWarmupScheduler(opt, 2.0, 10, after_scheduler=lrs.ReduceLROnPlateau(opt))
    before = ([g["lr"] for g in opt.param_groups], sched.last_epoch)
    for horizon in (None, 100):
        with pytest.raises(TypeError, match="GradualWarmupScheduler drives a ReduceLROnPlateau.*metric"):
            from_torch(sched, horizon=horizon)
    assert ([g["lr"] for g in opt.param_groups], sched.last_epoch) == before
