"""Reference schedulers that ``python -m warmup_fused verify`` (and ``plot``) check ``from_torch`` against.

Each entry is ``factory(optimizer, total_steps) -> scheduler``, built on a fresh optimizer right
before use. The optimizer that ``make_optimizer`` returns has two param groups with different base
LRs, so per-group handling is exercised too. Entries whose package is not installed are reported
as skipped by ``available()``.

User schedulers (``verify --scheduler package.module:factory``) follow the same protocol, except
that the factory may take only the optimizer: ``factory(optimizer)`` or
``factory(optimizer, total_steps)``; it must return a fresh, un-stepped
``torch.optim.lr_scheduler.LRScheduler`` bound to that optimizer.
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch.optim import lr_scheduler as lrs

BASE_LRS = (1e-3, 3e-4)


def make_optimizer(base_lrs=BASE_LRS) -> torch.optim.Optimizer:
    """A throwaway SGD over tiny parameters, one param group per base LR."""
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in base_lrs]
    return torch.optim.SGD(groups, lr=base_lrs[0])


def _warm(n: int) -> int:
    return max(1, n // 10)


# ---------------------------------------------------------------- torch
def _torch_entries():
    return {
        "torch.ConstantLR": lambda o, n: lrs.ConstantLR(o, factor=0.25, total_iters=_warm(n)),
        "torch.LinearLR": lambda o, n: lrs.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=_warm(n)),
        "torch.StepLR": lambda o, n: lrs.StepLR(o, step_size=max(1, n // 5), gamma=0.5),
        "torch.MultiStepLR": lambda o, n: lrs.MultiStepLR(o, milestones=[n // 2, 3 * n // 4], gamma=0.1),
        "torch.ExponentialLR": lambda o, n: lrs.ExponentialLR(o, gamma=0.999),
        "torch.CosineAnnealingLR": lambda o, n: lrs.CosineAnnealingLR(o, T_max=n, eta_min=1e-6),
        "torch.CosineAnnealingWarmRestarts": lambda o, n: lrs.CosineAnnealingWarmRestarts(
            o, T_0=max(1, n // 7), T_mult=2, eta_min=1e-6),
        "torch.OneCycleLR": lambda o, n: lrs.OneCycleLR(o, max_lr=[1e-2, 3e-3], total_steps=max(2, n)),
        "torch.SequentialLR(warmup+cosine)": lambda o, n: lrs.SequentialLR(
            o,
            [lrs.LinearLR(o, start_factor=0.01, total_iters=_warm(n)),
             lrs.CosineAnnealingLR(o, T_max=max(1, n - _warm(n)))],
            milestones=[_warm(n)]),
        "torch.PolynomialLR": lambda o, n: lrs.PolynomialLR(o, total_iters=n, power=2.0),
        "torch.ChainedScheduler": lambda o, n: lrs.ChainedScheduler(
            [lrs.ConstantLR(o, factor=0.1, total_iters=_warm(n)), lrs.ExponentialLR(o, gamma=0.9995)]),
    }


# ---------------------------------------------------------------- transformers
def _hf(fn_name: str, **kw):
    def factory(o, n):
        from transformers import optimization as hf

        fn = getattr(hf, fn_name)
        args = {}
        params = inspect.signature(fn).parameters
        if "num_warmup_steps" in params:
            args["num_warmup_steps"] = _warm(n)
        if "num_training_steps" in params and "num_stable_steps" not in kw:
            args["num_training_steps"] = n
        args.update({k: (v(n) if callable(v) else v) for k, v in kw.items()})
        return fn(o, **args)

    return factory


def _transformers_entries():
    return {
        "transformers.constant": _hf("get_constant_schedule"),
        "transformers.constant_with_warmup": _hf("get_constant_schedule_with_warmup"),
        "transformers.linear_with_warmup": _hf("get_linear_schedule_with_warmup"),
        "transformers.cosine_with_warmup": _hf("get_cosine_schedule_with_warmup"),
        "transformers.cosine_hard_restarts_with_warmup": _hf(
            "get_cosine_with_hard_restarts_schedule_with_warmup", num_cycles=3),
        "transformers.polynomial_decay_with_warmup": _hf(
            "get_polynomial_decay_schedule_with_warmup", lr_end=1e-7, power=2.0),
        "transformers.inverse_sqrt": _hf("get_inverse_sqrt_schedule", num_warmup_steps=_warm),
        "transformers.cosine_with_min_lr_with_warmup": _hf(
            "get_cosine_with_min_lr_schedule_with_warmup", min_lr_rate=0.1),
        "transformers.cosine_with_min_lr_with_warmup_lr_rate": _hf(
            "get_cosine_with_min_lr_schedule_with_warmup_lr_rate", min_lr_rate=0.1, warmup_lr_rate=0.01),
        "transformers.wsd": _hf(
            "get_wsd_schedule", num_stable_steps=lambda n: n // 2,
            num_decay_steps=lambda n: n - _warm(n) - n // 2, min_lr_ratio=0.05, decay_type="cosine"),
    }


# ---------------------------------------------------------------- others
def _gradual(multiplier: float, after: bool):
    def factory(o, n):
        from warmup_scheduler import GradualWarmupScheduler

        after_s = lrs.CosineAnnealingLR(o, T_max=max(1, n - _warm(n))) if after else None
        return GradualWarmupScheduler(o, multiplier=multiplier, total_epoch=_warm(n), after_scheduler=after_s)

    return factory


def torchvision_warmup_lr_scheduler(optimizer, warmup_iters: int, warmup_factor: float):
    """torchvision's detection-reference warmup (references/detection/utils.py, <= 0.12), verbatim."""

    def f(x):
        if x >= warmup_iters:
            return 1
        alpha = float(x) / warmup_iters
        return warmup_factor * (1 - alpha) + alpha

    return lrs.LambdaLR(optimizer, f)


def _other_entries():
    return {
        "warmup_scheduler.GradualWarmup": _gradual(1.0, False),
        "warmup_scheduler.GradualWarmup(x8)": _gradual(8.0, False),
        "warmup_scheduler.GradualWarmup+cosine": _gradual(1.0, True),
        "torchvision.warmup_lambda": lambda o, n: torchvision_warmup_lr_scheduler(o, min(1000, _warm(n)), 1.0 / 1000),
    }


_REQUIRES = {"transformers.": "transformers", "warmup_scheduler.": "warmup_scheduler"}


def registry() -> dict[str, Callable]:
    """name -> factory(optimizer, total_steps), every entry whether or not its package is installed."""
    return {**_torch_entries(), **_transformers_entries(), **_other_entries()}


def missing_package(name: str) -> str | None:
    """The package an entry needs and that is not installed, else None."""
    for prefix, pkg in _REQUIRES.items():
        if name.startswith(prefix):
            try:
                importlib.import_module(pkg)
            except ImportError:
                return pkg
    return None


@dataclass
class UserFactory:
    spec: str
    fn: Callable

    def __call__(self, optimizer, total_steps):
        if _takes_two(self.fn):
            return self.fn(optimizer, total_steps)
        return self.fn(optimizer)


def _takes_two(fn) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def load_user_factory(spec: str) -> UserFactory:
    """``package.module:factory`` -> a factory; raises ValueError with a readable message."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--scheduler {spec!r}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--scheduler {spec!r}: cannot import {module_name!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--scheduler {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"--scheduler {spec!r}: {attr!r} is not callable")
    return UserFactory(spec, obj)


def reference_lrs(scheduler, steps: int) -> torch.Tensor:
    """The reference loop: ``lr[g, t] = opt.param_groups[g]['lr']`` during iteration t, then
    ``opt.step(); sched.step()``. float64 ``[groups, steps]``. The scheduler is not stepped after the
    last recorded iteration (OneCycleLR refuses to step past total_steps)."""
    opt = scheduler.optimizer
    groups = opt.param_groups
    out = torch.empty(len(groups), steps, dtype=torch.float64)
    rows = [[0.0] * steps for _ in groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(steps):
            for g, group in enumerate(groups):
                lr = group["lr"]
                rows[g][t] = float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
            if t + 1 < steps:
                opt.step()
                scheduler.step()
    for g, row in enumerate(rows):
        out[g] = torch.tensor(row, dtype=torch.float64)
    return out


__all__ = ["registry", "make_optimizer", "reference_lrs", "load_user_factory", "missing_package",
           "torchvision_warmup_lr_scheduler", "BASE_LRS"]
