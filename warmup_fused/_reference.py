"""Reference schedules that ``python -m warmup_fused verify`` (and ``plot``) check the converters against.

Each entry is ``factory(optimizer, total_steps) -> reference``, built on a fresh optimizer right before use.
A reference is any of

* a torch ``LRScheduler`` bound to the optimizer (torch's, transformers', GradualWarmupScheduler, lambdas):
  converted by ``from_torch``; its LRs are those of the loop ``record; opt.step(); sched.step()``;
* a timm scheduler bound to the optimizer, or ``TimmEpochs(scheduler, steps_per_epoch)`` for an epoch-based
  one: ``from_torch``; timm's loop (``step_update(k + 1)`` after update k, ``step(e + 1)`` after epoch e);
* a Keras ``LearningRateSchedule`` (the optimizer unused): ``from_keras``; ``float(schedule(t))``;
* an optax schedule function (the optimizer unused): ``from_optax``; ``jax.jit(schedule)(jnp.int32(t))``.

``case(reference, total_steps)`` pairs a reference's conversion with its LRs. The optimizer that
``make_optimizer`` returns has two param groups with different base LRs, so per-group handling is exercised
too. Entries whose package is not installed are reported as skipped by ``missing_package``.

User schedulers (``verify --scheduler package.module:factory``) follow the same protocol, except that the
factory may take only the optimizer: ``factory(optimizer)`` or ``factory(optimizer, total_steps)``; it must
return a fresh reference (a torch or timm scheduler un-stepped and bound to that optimizer).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

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


# ---------------------------------------------------------------- timm
@dataclass
class TimmEpochs:
    """An epoch-based timm scheduler (``t_in_epochs=True``) and the optimizer steps in each of its epochs."""

    scheduler: object
    steps_per_epoch: int


def _timm(cls: str, per_epoch: bool = False, **kw):
    """An update-based timm scheduler over the run, or an epoch-based one over 50 epochs of the run."""
    def factory(o, n):
        from timm import scheduler as ts

        units = 50 if per_epoch else n
        sched = getattr(ts, cls)(o, t_in_epochs=per_epoch, **{k: (v(units) if callable(v) else v)
                                                               for k, v in kw.items()})
        return TimmEpochs(sched, max(1, n // units)) if per_epoch else sched

    return factory


def _timm_entries():
    return {
        "timm.CosineLRScheduler(warmup)": _timm(
            "CosineLRScheduler", t_initial=lambda n: max(1, n - _warm(n)), lr_min=1e-6, warmup_t=_warm,
            warmup_lr_init=1e-6, warmup_prefix=True),
        "timm.CosineLRScheduler(cycles,k-decay,epochs)": _timm(
            "CosineLRScheduler", per_epoch=True, t_initial=lambda n: n // 7, lr_min=1e-6, cycle_mul=1.5,
            cycle_decay=0.8, cycle_limit=4, warmup_t=_warm, warmup_lr_init=1e-5, k_decay=1.5),
        "timm.StepLRScheduler(epochs)": _timm("StepLRScheduler", per_epoch=True, decay_t=2.4, decay_rate=0.97,
                                              warmup_t=_warm, warmup_lr_init=1e-6),
        "timm.MultiStepLRScheduler": _timm("MultiStepLRScheduler", decay_t=lambda n: [n // 2, 3 * n // 4],
                                           decay_rate=0.1, warmup_t=_warm, warmup_lr_init=1e-6),
        "timm.TanhLRScheduler": _timm("TanhLRScheduler", t_initial=lambda n: max(1, n // 2), lr_min=1e-6,
                                      cycle_limit=2, warmup_t=_warm, warmup_lr_init=1e-6),
        "timm.PolyLRScheduler": _timm(
            "PolyLRScheduler", t_initial=lambda n: max(1, n - _warm(n)), power=0.9, lr_min=1e-6, warmup_t=_warm,
            warmup_lr_init=1e-6, warmup_prefix=True),
    }


# ---------------------------------------------------------------- Keras and optax (absolute LRs, one group)
def _import_keras():
    """keras, on the torch backend unless KERAS_BACKEND or an earlier import chose another one."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    return importlib.import_module("keras")


def _library(namespace: Callable[[], object]):
    """Entry makers: ``name, *args, **kw`` -> ``factory(o, n) = namespace().name(*args, **kw)``, callable arguments
    evaluated at the run's steps n (the optimizer unused: Keras's and optax's LRs are absolute)."""
    def entry(name: str, *args, **kw):
        def factory(o, n):
            def at(v):
                return v(n) if callable(v) else v

            return getattr(namespace(), name)(*map(at, args), **{k: at(v) for k, v in kw.items()})

        return factory

    return entry


_keras = _library(lambda: _import_keras().optimizers.schedules)
_optax = _library(lambda: importlib.import_module("optax"))


def _keras_entries():
    return {
        "keras.CosineDecay(warmup)": _keras("CosineDecay", 0.0, lambda n: max(1, n - _warm(n)), alpha=0.01,
                                            warmup_target=1e-3, warmup_steps=_warm),
        "keras.CosineDecayRestarts": _keras("CosineDecayRestarts", 1e-3, lambda n: max(1, n // 7), t_mul=2.0,
                                            m_mul=0.8, alpha=0.01),
        "keras.ExponentialDecay(staircase)": _keras("ExponentialDecay", 1e-3, lambda n: max(1, n // 20), 0.9,
                                                    staircase=True),
        "keras.PiecewiseConstantDecay": _keras("PiecewiseConstantDecay", lambda n: [n // 2, 3 * n // 4],
                                               [1e-3, 1e-4, 1e-5]),
        "keras.PolynomialDecay(cycle)": _keras("PolynomialDecay", 1e-3, lambda n: max(1, n // 3), 1e-5, power=2.0,
                                               cycle=True),
        "keras.InverseTimeDecay": _keras("InverseTimeDecay", 1e-3, lambda n: max(1, n // 10), 0.5),
        "keras.InverseTimeDecay(staircase)": _keras("InverseTimeDecay", 1e-3, lambda n: max(1, n // 10), 0.5,
                                                    staircase=True),
    }


def _optax_entries():
    return {
        "optax.warmup_cosine_decay_schedule": _optax("warmup_cosine_decay_schedule", 0.0, 1e-3, _warm,
                                                     lambda n: max(n, _warm(n) + 1),
                                                     end_value=1e-6),
        "optax.linear_schedule": _optax("linear_schedule", 1e-3, 1e-6, lambda n: n - _warm(n),
                                        transition_begin=_warm),
        "optax.polynomial_schedule": _optax("polynomial_schedule", 1e-3, 1e-6, 2, lambda n: n),
        "optax.exponential_decay": _optax("exponential_decay", 1e-3, lambda n: max(1, n // 20), 0.9,
                                          transition_begin=_warm, staircase=True, end_value=1e-5),
        "optax.piecewise_constant_schedule": _optax("piecewise_constant_schedule", 1e-3,
                                                    lambda n: {n // 2: 0.1, 3 * n // 4: 0.1}),
        "optax.linear_onecycle_schedule": _optax("linear_onecycle_schedule", lambda n: n, 1e-3),
        "optax.cosine_onecycle_schedule": _optax("cosine_onecycle_schedule", lambda n: n, 1e-3),
        "optax.warmup_exponential_decay_schedule": _optax("warmup_exponential_decay_schedule", 0.0, 1e-3, _warm,
                                                          lambda n: max(1, n // 20), 0.9),
    }


_REQUIRES = {"transformers.": "transformers", "warmup_scheduler.": "warmup_scheduler", "timm.": "timm",
             "keras.": "keras", "optax.": "optax"}


def registry() -> dict[str, Callable]:
    """name -> factory(optimizer, total_steps), every entry whether or not its package is installed."""
    return {**_torch_entries(), **_transformers_entries(), **_other_entries(), **_timm_entries(),
            **_keras_entries(), **_optax_entries()}


def missing_package(name: str) -> str | None:
    """The package an entry needs and that is not installed, else None."""
    for prefix, pkg in _REQUIRES.items():
        if name.startswith(prefix):
            try:
                _import_keras() if pkg == "keras" else importlib.import_module(pkg)
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


# ---------------------------------------------------------------- a reference and its conversion
@dataclass
class Case:
    """A reference's conversion and its LRs (float64 ``[groups, steps]``). Convert before ``lrs()``: the torch
    and timm loops step the scheduler, and conversion records from step 0."""

    _convert: Callable[[], object]
    lrs: Callable[[], torch.Tensor]
    _exact: Optional[object] = None

    def convert(self, exact: bool = True):
        """The converted Schedule; ``exact=False``: the same phases without exact-mode tables (no new recording)."""
        if self._exact is None:
            self._exact = self._convert()
        s = self._exact
        if exact:
            return s
        from .schedules import Schedule

        return Schedule(s._phases, s.base_lrs, steps_per_epoch=s.steps_per_epoch, horizon=s.horizon, exact=False,
                        name=s.name)


def case(reference, steps: int) -> Case:
    """The conversion and the reference LRs of what a registry (or user) factory returned, over ``steps`` steps."""
    from .schedules import from_keras, from_optax, from_torch
    from .schedules.convert_keras import _is_schedule as is_keras_schedule
    from .schedules.convert_timm import is_timm_scheduler

    if isinstance(reference, TimmEpochs) or is_timm_scheduler(reference):
        sched, per_epoch = ((reference.scheduler, reference.steps_per_epoch) if isinstance(reference, TimmEpochs)
                            else (reference, None))
        return Case(lambda: from_torch(sched, horizon=steps, steps_per_epoch=per_epoch),
                    lambda: timm_lrs(sched, steps, per_epoch))
    if is_keras_schedule(reference):
        return Case(lambda: from_keras(reference, horizon=steps),
                    lambda: torch.tensor([[float(reference(t)) for t in range(steps)]], dtype=torch.float64))
    if hasattr(reference, "optimizer"):  # a torch scheduler (from_torch says which it refuses)
        return Case(lambda: from_torch(reference, horizon=steps), lambda: reference_lrs(reference, steps))
    if callable(reference):
        return Case(lambda: from_optax(reference, horizon=steps), lambda: optax_lrs(reference, steps))
    raise TypeError(f"a reference factory returned {type(reference).__name__}: expected a torch or timm scheduler, "
                    "a Keras LearningRateSchedule or an optax schedule")


def timm_lrs(scheduler, steps: int, steps_per_epoch: int | None = None) -> torch.Tensor:
    """timm's training loop: ``lr[g, k]`` during update k, then ``opt.step(); step_update(k + 1)`` and at the end
    of every epoch ``step(epoch + 1)`` (every ``steps_per_epoch`` updates; epoch-based schedulers)."""
    opt = scheduler.optimizer
    rows = [[0.0] * steps for _ in opt.param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(steps):
            for g, group in enumerate(opt.param_groups):
                rows[g][k] = float(group["lr"])
            opt.step()
            scheduler.step_update(num_updates=k + 1)
            if steps_per_epoch and (k + 1) % steps_per_epoch == 0:
                scheduler.step(epoch=(k + 1) // steps_per_epoch)
    return torch.tensor(rows, dtype=torch.float64)


def optax_lrs(schedule, steps: int) -> torch.Tensor:
    """``jax.jit(schedule)(jnp.int32(t))``: the LR optax's jitted update computes from its int32 count."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(schedule)
    return torch.tensor([[float(f(jnp.int32(t))) for t in range(steps)]], dtype=torch.float64)


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


__all__ = ["registry", "make_optimizer", "case", "Case", "TimmEpochs", "reference_lrs", "timm_lrs", "optax_lrs",
           "load_user_factory", "missing_package", "torchvision_warmup_lr_scheduler", "BASE_LRS"]
