"""from_torch on the scheduler configurations of torch's and transformers' own test suites, bit for bit.

The configurations below are those of pytorch's test/optim/test_lrscheduler.py and transformers'
tests/optimization/test_optimization.py, written here as data (scheduler name and arguments, the optimizer
their test builds, the run length they check). Their tests compare with tolerances; here every
``param_groups[g]['lr']`` (and, where the scheduler cycles it, ``momentum`` / ``betas[0]``) during iteration t
of ``record; opt.step(); sched.step()`` must equal ``lr_at`` (``momentum_at``) bit for bit at every step.
torch's "compound" tests step several schedulers on one optimizer in order, which is what ChainedScheduler
does: they appear as ChainedScheduler configurations. Tests that step with explicit (fractional) epochs or
switch schedulers by hand are not the canonical loop and are left out; ReduceLROnPlateau is refused.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.optim import lr_scheduler as lrs
from torch.optim.swa_utils import SWALR
from transformers import optimization as hf

from warmup_fused.schedules import Recorded, from_torch

try:
    from warmup_scheduler import GradualWarmupScheduler
except ImportError:  # pragma: no cover - the test extra installs it
    GradualWarmupScheduler = None


def params(n: int):
    return [torch.nn.Parameter(torch.randn(2)) for _ in range(n)]


# The optimizers the suites build. torch's setUp: SGD, group 0 at the default lr 0.05, group 1 with a tensor lr.
OPTIMIZERS = {
    "sgd-tensor-lr": lambda: torch.optim.SGD([{"params": params(1)}, {"params": params(1), "lr": torch.tensor(0.5)}],
                                             lr=0.05),
    "sgd-floats": lambda: torch.optim.SGD([{"params": params(1), "lr": 0.05}, {"params": params(1), "lr": 0.4}],
                                          lr=0.05),
    "sgd-tensor-2.0": lambda: torch.optim.SGD(params(1), lr=torch.tensor(2.0)),
    "sgd-0.5": lambda: torch.optim.SGD(params(1), lr=0.5),
    "adam-two-groups": lambda: torch.optim.Adam([{"params": params(1)}, {"params": params(1), "lr": 0.5}], lr=0.05),
    "adam-default": lambda: torch.optim.Adam(params(2)),
    # transformers' ScheduleInitTest: AdamW(lr=10.0); and the same with tensor lrs (float32 and float64).
    "adamw-10": lambda: torch.optim.AdamW(params(1), lr=10.0),
    "adamw-10-f32": lambda: torch.optim.AdamW([{"params": params(1), "lr": torch.tensor(10.0)},
                                               {"params": params(1), "lr": torch.tensor(0.37)}], lr=10.0),
    "adamw-10-f64": lambda: torch.optim.AdamW(params(1), lr=torch.tensor(10.0, dtype=torch.float64)),
}


def build(opt, spec):
    """A scheduler from (name, kwargs); SequentialLR / ChainedScheduler children are specs too."""
    name, kw = spec
    kw = dict(kw)
    if "schedulers" in kw:
        kw["schedulers"] = [build(opt, s) for s in kw["schedulers"]]
    if name == "ChainedScheduler":
        return lrs.ChainedScheduler(**kw)
    if name == "SWALR":
        return SWALR(opt, **kw)
    if name == "GradualWarmupScheduler":
        if "after_scheduler" in kw:
            kw["after_scheduler"] = build(opt, kw["after_scheduler"])
        return GradualWarmupScheduler(opt, **kw)
    if name.startswith("get_"):
        return getattr(hf, name)(opt, **kw)
    return getattr(lrs, name)(opt, **kw)


S = "sgd-tensor-lr"
# (optimizer, scheduler spec, run length) from torch's test_lrscheduler.py
TORCH = {
    "step_lr": (S, ("StepLR", dict(gamma=0.1, step_size=3)), 10),
    "closed_form_step_lr": (S, ("StepLR", dict(gamma=0.1, step_size=3)), 20),
    "get_last_lr_step_lr": ("sgd-0.5", ("StepLR", dict(step_size=3, gamma=0.1)), 10),
    "multi_step_lr": (S, ("MultiStepLR", dict(gamma=0.1, milestones=[2, 5, 9])), 20),
    "constantlr": (S, ("ConstantLR", dict(factor=1.0 / 2, total_iters=5)), 10),
    "closed_form_constantlr": (S, ("ConstantLR", dict(factor=1.0 / 3, total_iters=4)), 20),
    "constantlr_defaults": (S, ("ConstantLR", dict()), 10),
    "linearlr": (S, ("LinearLR", dict(start_factor=1.0 / 2, total_iters=4)), 10),
    "get_last_lr_linearlr": (S, ("LinearLR", dict(start_factor=1.0 / 4, end_factor=3.0 / 5, total_iters=4)), 10),
    "closed_form_linearlr": (S, ("LinearLR", dict(start_factor=1.0 / 3, end_factor=0.7, total_iters=4)), 20),
    "linearlr_defaults": (S, ("LinearLR", dict()), 10),
    "exp_lr": (S, ("ExponentialLR", dict(gamma=0.9)), 20),
    "poly_lr": (S, ("PolynomialLR", dict(power=0.9, total_iters=5)), 10),
    "closed_form_poly_lr": (S, ("PolynomialLR", dict(power=0.9)), 20),
    "cos_anneal_lr": (S, ("CosineAnnealingLR", dict(T_max=10, eta_min=1e-10)), 10),
    "closed_form_cos_anneal_lr": (S, ("CosineAnnealingLR", dict(T_max=5, eta_min=1e-10)), 20),
    "cos_anneal_lr_continue": (S, ("CosineAnnealingLR", dict(T_max=5, eta_min=0.1)), 20),
    "sequentiallr1": (S, ("SequentialLR", dict(schedulers=[("ExponentialLR", dict(gamma=0.8)),
                                                           ("StepLR", dict(gamma=0.1, step_size=4))],
                                               milestones=[3])), 19),
    "sequentiallr2": (S, ("SequentialLR", dict(schedulers=[("ConstantLR", dict(factor=0.1, total_iters=3)),
                                                           ("ExponentialLR", dict(gamma=0.9))], milestones=[3])), 13),
    "sequentiallr3": (S, ("SequentialLR", dict(schedulers=[("ConstantLR", dict(factor=0.1, total_iters=3)),
                                                           ("ExponentialLR", dict(gamma=0.8)),
                                                           ("StepLR", dict(gamma=0.1, step_size=2))],
                                               milestones=[3, 6])), 12),
    "sequentiallr4": ("sgd-0.5", ("SequentialLR", dict(schedulers=[("ConstantLR", dict(factor=1)),
                                                                   ("ConstantLR", dict(factor=0.1))],
                                                       milestones=[10])), 20),
    "sequentiallr5": (S, ("SequentialLR", dict(schedulers=[
        ("ChainedScheduler", dict(schedulers=[("LinearLR", dict(start_factor=0.1, total_iters=5)),
                                              ("ConstantLR", dict(factor=0.1, total_iters=5))])),
        ("ConstantLR", dict(factor=0.5, total_iters=5))], milestones=[5])), 10),
    "sequentiallr_no_warnings": (S, ("SequentialLR", dict(schedulers=[
        ("LinearLR", dict(start_factor=0.5, end_factor=0.1, total_iters=5)), ("ExponentialLR", dict(gamma=0.9))],
        milestones=[5])), 10),
    "sequentiallr_tensor_lr": ("sgd-tensor-2.0", ("SequentialLR", dict(schedulers=[
        ("LinearLR", dict(start_factor=0.1, end_factor=0.8, total_iters=4)),
        ("LinearLR", dict(start_factor=0.8, end_factor=0.1, total_iters=4))], milestones=[4])), 8),
    "chained_lr1": (S, ("ChainedScheduler", dict(schedulers=[("StepLR", dict(gamma=0.1, step_size=3))])), 10),
    "chained_lr2": (S, ("ChainedScheduler", dict(schedulers=[("LinearLR", dict(start_factor=0.4, total_iters=3))])),
                    10),
    "chained_lr3": (S, ("ChainedScheduler", dict(schedulers=[
        ("LinearLR", dict(start_factor=0.4, total_iters=3)), ("MultiStepLR", dict(milestones=[4, 8, 10], gamma=0.1))])),
        10),
    "chained_lr4": (S, ("ChainedScheduler", dict(schedulers=[
        ("ExponentialLR", dict(gamma=0.9)), ("ConstantLR", dict(factor=0.2, total_iters=4)),
        ("StepLR", dict(gamma=0.1, step_size=3))])), 9),
    "chained_lr5": (S, ("ChainedScheduler", dict(schedulers=[
        ("PolynomialLR", dict(power=0.9, total_iters=5)), ("ConstantLR", dict(factor=0.1))])), 10),
}
for _a, _b, _name in [
    (("StepLR", dict(gamma=0.1, step_size=3)), ("MultiStepLR", dict(gamma=0.1, milestones=[2, 5, 9])), "step_multistep"),
    (("StepLR", dict(gamma=0.1, step_size=3)), ("ExponentialLR", dict(gamma=0.9)), "step_exp"),
    (("MultiStepLR", dict(gamma=0.1, milestones=[2, 5, 9])), ("ExponentialLR", dict(gamma=0.9)), "exp_multistep"),
    (("LinearLR", dict(start_factor=0.4, end_factor=0.9, total_iters=4)), ("ExponentialLR", dict(gamma=0.9)),
     "exp_linearlr"),
    (("StepLR", dict(gamma=0.1, step_size=3)), ("ConstantLR", dict(factor=0.4, total_iters=4)), "step_constantlr"),
    (("MultiStepLR", dict(gamma=0.1, milestones=[2, 5, 9])), ("LinearLR", dict(start_factor=0.4, total_iters=4)),
     "linearlr_multistep"),
    (("CosineAnnealingLR", dict(T_max=10, eta_min=1e-10)), ("StepLR", dict(gamma=0.1, step_size=3)), "cos_step"),
    (("CosineAnnealingLR", dict(T_max=10, eta_min=1e-10)), ("MultiStepLR", dict(gamma=0.1, milestones=[2, 5, 9])),
     "cos_multistep"),
    (("LinearLR", dict(start_factor=0.4, total_iters=4)), ("CosineAnnealingLR", dict(T_max=10, eta_min=1e-10)),
     "cos_linearlr"),
    (("CosineAnnealingLR", dict(T_max=10, eta_min=1e-10)), ("ExponentialLR", dict(gamma=0.1)), "cos_exp"),
]:
    TORCH[f"compound_{_name}"] = (S, ("ChainedScheduler", dict(schedulers=[_a, _b])), 10)
TORCH.update({
    "lambda_lr": ("sgd-floats", ("LambdaLR", dict(lr_lambda=[lambda x1: 0.9**x1, lambda x2: 0.8**x2])), 10),
    "lambda_lr_int_division": (S, ("LambdaLR", dict(lr_lambda=lambda e: e // 10)), 30),
    "multiplicative_lr": ("sgd-floats", ("MultiplicativeLR", dict(lr_lambda=[lambda x1: 0.9, lambda x2: 0.8])), 10),
    "multiplicative_lr_0.95": (S, ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.95)), 30),
    "swalr_no_anneal": (S, ("SWALR", dict(anneal_epochs=1, swa_lr=0.01)), 10),
    "swalr_cosine": (S, ("SWALR", dict(anneal_epochs=5, swa_lr=0.01)), 15),
    "swalr_linear": (S, ("SWALR", dict(anneal_epochs=4, anneal_strategy="linear", swa_lr=[0.01, 0.02])), 15),
    "swalr_state_dict": (S, ("SWALR", dict(anneal_epochs=3, swa_lr=0.5)), 10),
    "swalr_state_dict_linear": (S, ("SWALR", dict(anneal_epochs=10, anneal_strategy="linear", swa_lr=5.0)), 10),
    "cosine_warm_restarts_T_0_20": (S, ("CosineAnnealingWarmRestarts", dict(T_0=20)), 60),
    "cosine_warm_restarts_T_0_100": (S, ("CosineAnnealingWarmRestarts", dict(T_0=100)), 100),
    "cosine_warm_restarts_T_0_4": (S, ("CosineAnnealingWarmRestarts", dict(T_0=4)), 20),
    "cosine_warm_restarts_state_dict": (S, ("CosineAnnealingWarmRestarts", dict(T_0=10, T_mult=2)), 100),
})
for _t_mult in (1, 2, 4):
    TORCH[f"cosine_warm_restarts_lr1_T_mult{_t_mult}"] = (
        S, ("CosineAnnealingWarmRestarts", dict(T_0=10, T_mult=_t_mult, eta_min=1e-10)), 100)

# Schedulers that cycle momentum: each runs with cycle_momentum=True and False.
CYCLIC = {
    "cycle_lr_triangular_one_lr": (S, ("CyclicLR", dict(base_lr=1, max_lr=5, step_size_up=4, base_momentum=1,
                                                        max_momentum=5, mode="triangular")), 11),
    "cycle_lr_triangular2_one_lr": (S, ("CyclicLR", dict(base_lr=1, max_lr=5, step_size_up=4, base_momentum=1,
                                                         max_momentum=5, mode="triangular2")), 22),
    "cycle_lr_exp_range_one_lr": (S, ("CyclicLR", dict(base_lr=1, max_lr=5, step_size_up=4, base_momentum=1,
                                                       max_momentum=5, mode="exp_range", gamma=0.9)), 13),
    "cycle_lr_triangular": (S, ("CyclicLR", dict(base_lr=[1, 2], max_lr=[5, 6], step_size_up=4,
                                                 base_momentum=[1, 2], max_momentum=[5, 6], mode="triangular")), 11),
    "cycle_lr_triangular2": (S, ("CyclicLR", dict(base_lr=[1, 3], max_lr=[5, 7], step_size_up=4,
                                                  base_momentum=[1, 3], max_momentum=[5, 7], mode="triangular2")), 22),
    "cycle_lr_exp_range": (S, ("CyclicLR", dict(base_lr=[1, 5], max_lr=[5, 12], step_size_up=4,
                                                base_momentum=[1, 5], max_momentum=[5, 12], mode="exp_range",
                                                gamma=0.9)), 13),
    "cycle_lr_triangular_up_down": (S, ("CyclicLR", dict(base_lr=1, max_lr=5, step_size_up=4, step_size_down=6,
                                                         base_momentum=1, max_momentum=5, mode="triangular")), 11),
    "cycle_lr_triangular2_up_down": (S, ("CyclicLR", dict(base_lr=[1, 3], max_lr=[5, 7], step_size_up=2,
                                                          step_size_down=6, base_momentum=[1, 3],
                                                          max_momentum=[5, 7], mode="triangular2")), 24),
    "cycle_lr_exp_range_up_down": (S, ("CyclicLR", dict(base_lr=1, max_lr=5, step_size_up=2, step_size_down=6,
                                                        base_momentum=1, max_momentum=5, mode="exp_range",
                                                        gamma=0.9)), 13),
    "cycle_lr_adam": ("adam-two-groups", ("CyclicLR", dict(base_lr=1, max_lr=5, step_size_up=4, mode="triangular")),
                      11),
    "cycle_lr_beta1_optimizer": ("adam-default", ("CyclicLR", dict(base_lr=1, max_lr=5)), 50),
    "cycle_lr_state_dict": (S, ("CyclicLR", dict(base_lr=0.01, max_lr=0.1)), 50),
    "cosine_then_cyclic": ("sgd-0.5", ("CyclicLR", dict(base_lr=0.1, max_lr=0.3, step_size_up=1, step_size_down=3)),
                           40),
    "onecycle_lr_linear_annealing": (S, ("OneCycleLR", dict(max_lr=25, final_div_factor=2, base_momentum=1,
                                                            max_momentum=22, total_steps=10,
                                                            anneal_strategy="linear")), 11),
    "onecycle_lr_linear_three_phases": (S, ("OneCycleLR", dict(max_lr=25, div_factor=25, base_momentum=1,
                                                               max_momentum=22, total_steps=10,
                                                               anneal_strategy="linear", pct_start=0.4,
                                                               final_div_factor=4, three_phase=True)), 11),
    "onecycle_lr_cosine_annealing": (S, ("OneCycleLR", dict(max_lr=25, final_div_factor=2, base_momentum=1,
                                                            max_momentum=22, total_steps=10)), 11),
    "onecycle_lr_adam": ("adam-two-groups", ("OneCycleLR", dict(max_lr=25, final_div_factor=2, base_momentum=1,
                                                                max_momentum=22, total_steps=10,
                                                                anneal_strategy="linear")), 11),
    "onecycle_lr_state_dict": (S, ("OneCycleLR", dict(max_lr=0.01, total_steps=10, anneal_strategy="linear")), 11),
}

# transformers' ScheduleInitTest: common kwargs num_warmup_steps=2, num_training_steps=10, 10 steps.
_COMMON = dict(num_warmup_steps=2, num_training_steps=10)
TRANSFORMERS = {
    "constant": ("get_constant_schedule", {}),
    "constant_with_warmup": ("get_constant_schedule_with_warmup", dict(num_warmup_steps=4)),
    "linear": ("get_linear_schedule_with_warmup", _COMMON),
    "cosine": ("get_cosine_schedule_with_warmup", _COMMON),
    "cosine_hard_restarts": ("get_cosine_with_hard_restarts_schedule_with_warmup", dict(_COMMON, num_cycles=2)),
    "polynomial": ("get_polynomial_decay_schedule_with_warmup", dict(_COMMON, power=2.0, lr_end=1e-7)),
    "inverse_sqrt": ("get_inverse_sqrt_schedule", dict(num_warmup_steps=2)),
}


# --------------------------------------------------------------------------- harness
def value(x) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def run(opt_name, spec, steps, *, closed=None, **override):
    """Converts a fresh scheduler, then runs the reference loop; compares LRs and momentum bit for bit."""
    opt = OPTIMIZERS[opt_name]()
    name, kw = spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = build(opt, (name, dict(kw, **override)))
        converted = from_torch(sched, horizon=steps)
    key = None
    if getattr(sched, "cycle_momentum", False):
        key = "betas" if "betas" in opt.defaults else "momentum"
    want_lr = [[] for _ in opt.param_groups]
    want_mom = [[] for _ in opt.param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(steps):
            for g, group in enumerate(opt.param_groups):
                want_lr[g].append(value(group["lr"]))
                if key:
                    want_mom[g].append(value(group["betas"][0] if key == "betas" else group["momentum"]))
            opt.step()
            if t + 1 < steps:
                sched.step()
    assert converted.has_momentum == (key is not None)
    assert not converted.relative
    assert converted.num_groups == len(opt.param_groups)
    if closed is not None:
        recorded = any(isinstance(body, Recorded) for group in converted._phases for _, body in group)
        assert recorded != closed
    assert_bits(converted.lr_at(range(steps)), want_lr, f"{name} lr")
    if key:
        assert_bits(converted.momentum_at(range(steps)), want_mom, f"{name} {key}")
    return converted


def assert_bits(got: torch.Tensor, want: list, what: str) -> None:
    want_t = torch.tensor(want, dtype=torch.float64)
    assert got.shape == want_t.shape, what
    diff = (got.view(torch.int64) != want_t.view(torch.int64)).nonzero()
    assert not len(diff), f"{what}: {len(diff)} values differ, first at {diff[0].tolist()}: " \
                          f"{float(got[tuple(diff[0])])!r} vs {float(want_t[tuple(diff[0])])!r}"


@pytest.mark.parametrize("name", sorted(TORCH))
def test_torch_suite(name):
    opt_name, spec, steps = TORCH[name]
    run(opt_name, spec, steps)


@pytest.mark.parametrize("cycle", [True, False])
@pytest.mark.parametrize("name", sorted(CYCLIC))
def test_torch_suite_cycling_momentum(name, cycle):
    opt_name, spec, steps = CYCLIC[name]
    run(opt_name, spec, steps, cycle_momentum=cycle)


@pytest.mark.parametrize("opt_name", ["adamw-10", "adamw-10-f32", "adamw-10-f64"])
@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformers_suite(name, opt_name):
    fn, kw = TRANSFORMERS[name]
    # With a tensor optimizer lr, polynomial's lr_init is that very tensor, which the scheduler rewrites every
    # step: not a closed form any more, so it is recorded (over the horizon run() passes).
    run(opt_name, (fn, kw), 10, closed=not (name == "polynomial" and opt_name == "adamw-10-f64"))


def test_reduce_on_plateau_configurations_follow_torch():
    """torch's own ReduceLROnPlateau configurations, converted and fed the same metrics as torch's scheduler."""
    import warmup_fused

    for kw in (dict(threshold_mode="abs", mode="min", threshold=0.01, patience=5, cooldown=5),
               dict(mode="max", threshold_mode="rel", min_lr=[0.4, 0.3], threshold=0.1, patience=5, cooldown=5)):
        opt = OPTIMIZERS[S]()
        sched = lrs.ReduceLROnPlateau(opt, **kw)
        ours = warmup_fused.SGD([{"params": [torch.zeros(1)]} for _ in opt.param_groups], lr=1.0,
                                schedule=from_torch(sched))
        for t in range(40):
            metric = [10, 9, 9, 9, 9, 9, 9, 12, 12, 3, 3, 3, 3, 3, 3, 3, 3, 20, 1, 1][t % 20] * (1 + t // 20)
            sched.step(metric)
            ours.observe(float(metric))
            assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in opt.param_groups], (kw, t)
