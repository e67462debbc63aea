"""AdamW / Adam / SGD whose fused kernels compute each step's learning rate on the device.

    >>> from warmup_fused import AdamW, schedules
    >>> opt = AdamW(model.parameters(), lr=3e-4, schedule=schedules.from_torch(...))
    >>> opt.step()            # one op call per device: lr(step) evaluated in the kernel, counter advanced there
    >>> opt.last_lr()         # float64 [num_groups] device tensor: the LR each group used in the last step

The schedule counter (``sched_step``) is an int64 tensor on each device that holds params. Every ``step()``
advances it by one, *including* steps skipped because a GradScaler found inf/nan gradients (``found_inf``):
this matches the reference loop ``scaler.step(opt); scaler.update(); sched.step()`` in which the scheduler
steps every iteration. A skipped step leaves params, states and the per-param ``state['step']`` untouched,
exactly as torch's fused optimizers do. Steps whose params have no grads still advance the counter.

Checkpoints use torch's layout (``state['step']``, ``'exp_avg'``, ``'exp_avg_sq'``, ``'max_exp_avg_sq'``,
``'momentum_buffer'``) plus ``state_dict()['warmup_fused'] = {'sched_step': int}``; each saved param group
also gets ``'initial_lr'`` (the base LR) and ``'lr'`` (the LR of the next step), as a torch scheduler leaves
them. torch's optimizers load ours; ours load torch's (then the counter resumes at the largest per-param
``step``, i.e. the number of optimizer steps taken, and base LRs come from ``initial_lr`` when present).

Bit parity: on CPU, params and states are bit-identical to ``torch.optim.<same>(fused=True)`` fed the same
LR sequence (see csrc/optim_math.h and tests/test_optim.py).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from . import _ops
from ._expr import BASE
from .schedules import Schedule

__all__ = ["AdamW", "Adam", "SGD"]


def _check_number(name: str, value, *, lo: float = 0.0, hi: float | None = None, hi_open: bool = True) -> float:
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Python number (the LR comes from the schedule), got a Tensor")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


class _FusedOptimizer(torch.optim.Optimizer):
    _hparam_keys: tuple = ()
    _op_name: str = ""

    def __init__(self, params, defaults: dict, schedule: Schedule | None):
        super().__init__(params, defaults)
        self._step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf to step()
        self._schedule = None
        self._bound = None          # the Schedule bound to the groups' base LRs
        self._bound_key = None
        self._programs: dict = {}   # device -> (ints, vals)
        self._counters: dict = {}   # device -> int64 scalar tensor
        self._last_lr: dict = {}    # device -> float64 [G]
        self._hparams: dict = {}    # device -> (key, float64 [G, k])
        self._start_step = 0        # value for counters created later (set by load_state_dict)
        self.set_schedule(schedule)

    # ------------------------------------------------------------------------------------------ schedule
    def set_schedule(self, schedule: Schedule | None) -> None:
        """Uses ``schedule`` from the next step on (None: each group's ``lr``, constant). The counter is kept.

        A 1-group schedule is bound to every group's base LR (``schedule.with_base_lrs``); a schedule with
        N groups (e.g. ``from_torch`` of a scheduler over N groups) must match the N param groups.
        """
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a warmup_fused Schedule or None, got {type(schedule).__name__}")
        if schedule is not None and schedule.num_groups not in (1, len(self.param_groups)):
            raise ValueError(
                f"schedule: has {schedule.num_groups} groups but the optimizer has {len(self.param_groups)} "
                "param groups (pass a 1-group schedule to apply it to every group)"
            )
        self._schedule = schedule
        self._bound_key = None
        self._bind()

    @property
    def schedule(self) -> Schedule:
        """The schedule bound to the param groups (a constant one when none was given)."""
        self._bind()
        return self._bound

    def _base_lrs(self) -> list[float]:
        out = []
        for i, g in enumerate(self.param_groups):
            lr = g.get("initial_lr", g["lr"])
            if isinstance(lr, torch.Tensor):
                raise TypeError(f"param_groups[{i}]['lr'] must be a Python number, got a Tensor")
            out.append(float(lr))
        return out

    def _bind(self) -> None:
        lrs = self._base_lrs()
        key = (tuple(lrs), id(self._schedule))
        if key == self._bound_key:
            return
        s = self._schedule
        if s is None:
            bound = Schedule([[(0, BASE)]], lrs, name="constant")
        elif s.num_groups == 1:
            bound = s.with_base_lrs(lrs)
        elif s.num_groups == len(lrs):
            bound = s
        else:
            raise ValueError(f"schedule: has {s.num_groups} groups but the optimizer has {len(lrs)} param groups")
        self._bound, self._bound_key, self._programs = bound, key, {}

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if getattr(self, "_bound_key", None) is not None:
            if self._schedule is not None and self._schedule.num_groups not in (1, len(self.param_groups)):
                raise ValueError(f"schedule: has {self._schedule.num_groups} groups, the optimizer now has "
                                 f"{len(self.param_groups)} param groups")
            self._bound_key = None
            self._last_lr = {}
            self._hparams = {}

    # ---------------------------------------------------------------------------------------- per device
    def _device_tensors(self, device: torch.device):
        if device not in self._programs:
            self._programs[device] = self._bound.program(device)
        if device not in self._counters:
            self._counters[device] = torch.full((), self._start_step, dtype=torch.int64, device=device)
        g = len(self.param_groups)
        if device not in self._last_lr or self._last_lr[device].numel() != g:
            self._last_lr[device] = torch.full((g,), math.nan, dtype=torch.float64, device=device)
        key = tuple(self._group_hparams(grp) for grp in self.param_groups)
        cached = self._hparams.get(device)
        if cached is None or cached[0] != key:
            self._hparams[device] = (key, torch.tensor(key, dtype=torch.float64).to(device))
        ints, vals = self._programs[device]
        return ints, vals, self._counters[device], self._last_lr[device], self._hparams[device][1]

    def last_lr(self, device: torch.device | str | None = None) -> torch.Tensor:
        """float64 [num_groups] on ``device`` (default: the first device with params): the LR each group used
        in the last step, written by the kernel (NaN before the first step). No host sync."""
        if device is None:
            device = next(p.device for g in self.param_groups for p in g["params"])
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self._bind()
        return self._device_tensors(device)[3]

    def sched_step(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The int64 step counter tensor on ``device`` (the step the next ``step()`` will use)."""
        if device is None:
            device = next(p.device for g in self.param_groups for p in g["params"])
        self._bind()
        return self._device_tensors(torch.device(device))[2]

    def _devices(self, per_device: dict) -> list:
        # Every device that has a counter steps, with or without grads, so counters stay in step.
        devices = list(per_device) + [d for d in self._counters if d not in per_device]
        if not devices:
            devices = [next(p.device for g in self.param_groups for p in g["params"])]
        return devices

    def _amp_tensors(self, device):
        gs = getattr(self, "grad_scale", None)
        fi = getattr(self, "found_inf", None)
        gs = None if gs is None else gs.to(device=device, dtype=torch.float32, non_blocking=True)
        fi = None if fi is None else fi.to(device=device, dtype=torch.float32, non_blocking=True)
        return gs, fi

    @staticmethod
    def _check_param(p: torch.Tensor) -> torch.Tensor:
        if p.grad.is_sparse:
            raise RuntimeError("warmup_fused optimizers do not support sparse gradients")
        if not p.is_contiguous():
            raise ValueError("params must be contiguous (got a non-contiguous param of shape "
                             f"{tuple(p.shape)}); the fused kernels index params as flat arrays")
        if p.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(f"unsupported param dtype {p.dtype}: float32, float64, float16 and bfloat16 are")
        if p.grad.dtype != p.dtype:
            raise TypeError(f"grad dtype {p.grad.dtype} differs from its param's {p.dtype}")
        return p.grad if p.grad.is_contiguous() else p.grad.contiguous()

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every param with a grad: a single fused op call per device. Returns closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._bind()
        per_device: dict = {}
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is not None:
                    row = self._prepare(gi, group, p, self._check_param(p), self.state[p])
                    per_device.setdefault(p.device, []).append(row)
        for device in self._devices(per_device):
            columns = [list(c) for c in zip(*per_device[device])] if device in per_device else None
            self._launch(columns, *self._device_tensors(device), *self._amp_tensors(device))
        return loss

    def _prepare(self, gi: int, group: dict, p: torch.Tensor, grad: torch.Tensor, state: dict) -> tuple:
        """Initialises the param's state if needed; returns its row of op arguments."""
        raise NotImplementedError

    def _launch(self, columns, ints, vals, counter, last_lr, hparams, grad_scale, found_inf) -> None:
        """Calls the op once for a device; ``columns`` transposes the rows of _prepare (None: no grads)."""
        raise NotImplementedError

    @staticmethod
    def _optional(tensors: list) -> list:
        """The op's form for per-param tensors only some groups use: [] when none does, else a shared empty
        placeholder where a param has none."""
        if all(t is None for t in tensors):
            return []
        placeholder = next(t for t in tensors if t is not None).new_empty(0)
        return [placeholder if t is None else t for t in tensors]

    # ----------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        step = int(next(iter(self._counters.values()))) if self._counters else self._start_step
        self._bind()
        lrs = self._bound.lr_at(step)[:, 0].tolist()
        for g, base, lr in zip(sd["param_groups"], self._base_lrs(), lrs):
            g["initial_lr"] = base
            g["lr"] = lr
        sd["warmup_fused"] = {"sched_step": step}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("warmup_fused", None)
        super().load_state_dict(state_dict)
        steps = [0]
        for p, st in self.state.items():
            if "step" in st:
                st["step"] = torch.as_tensor(st["step"]).to(dtype=torch.float32, device=p.device)
                steps.append(int(st["step"].item()))
        start = int(extra["sched_step"]) if extra is not None else max(steps)
        self._start_step = start
        for t in self._counters.values():
            t.fill_(start)
        self._bound_key = None
        self._hparams = {}
        self._last_lr = {}
        self._bind()


class _AdamBase(_FusedOptimizer):
    _adamw = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, schedule: Schedule | None = None):
        lr = _check_number("lr", lr)
        eps = _check_number("eps", eps)
        weight_decay = _check_number("weight_decay", weight_decay)
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers, got {betas!r}")
        b0, b1 = (_check_number(f"betas[{i}]", b) for i, b in enumerate(betas))
        if not 0.0 <= b0 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {b0}")
        if not 0.0 <= b1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {b1}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=(b0, b1), eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad),
                        maximize=bool(maximize), foreach=None, capturable=False, differentiable=False,
                        fused=True, decoupled_weight_decay=self._adamw)
        super().__init__(params, defaults, schedule)

    @staticmethod
    def _group_hparams(g) -> tuple:
        b0, b1 = g["betas"]
        return (float(b0), float(b1), float(g["eps"]), float(g["weight_decay"]), float(bool(g["amsgrad"])),
                float(bool(g["maximize"])))

    def _prepare(self, gi, group, p, grad, state):
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return p, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), state["step"], gi

    def _launch(self, columns, ints, vals, counter, last_lr, hparams, grad_scale, found_inf):
        ps, grads, ms, vs, vms, steps, groups = columns or ([],) * 7
        _ops.adam_step(ps, grads, ms, vs, self._optional(vms), steps, counter, last_lr, ints, vals, hparams,
                       groups, self._adamw, grad_scale, found_inf)


class AdamW(_AdamBase):
    """torch.optim.AdamW (decoupled weight decay) with the LR computed on the device from ``schedule``.

    Arguments as torch's (lr, betas, eps, weight_decay=1e-2, amsgrad, maximize) plus ``schedule=``;
    see the module docstring for the step counter, skipped steps and checkpoints.
    """

    _adamw = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, schedule: Schedule | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, schedule=schedule)


class Adam(_AdamBase):
    """torch.optim.Adam (L2 weight decay) with the LR computed on the device from ``schedule``."""

    _adamw = False


class SGD(_FusedOptimizer):
    """torch.optim.SGD with the LR computed on the device from ``schedule``.

    Arguments as torch's (lr, momentum, dampening, weight_decay, nesterov, maximize) plus ``schedule=``.
    The momentum buffer is initialised to the (decayed) gradient on a param's first step, as torch does.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, schedule: Schedule | None = None):
        lr = _check_number("lr", lr)
        momentum = _check_number("momentum", momentum)
        dampening = _check_number("dampening", dampening)
        weight_decay = _check_number("weight_decay", weight_decay)
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=bool(nesterov), maximize=bool(maximize), foreach=None, differentiable=False,
                        fused=True)
        super().__init__(params, defaults, schedule)

    @staticmethod
    def _group_hparams(g) -> tuple:
        return (float(g["momentum"]), float(g["dampening"]), float(g["weight_decay"]), float(bool(g["nesterov"])),
                float(bool(g["maximize"])))

    def _prepare(self, gi, group, p, grad, state):
        first = False
        buf = None
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:  # the kernel initialises it to the (decayed) grad, as torch does
                buf = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
                first = True
        return p, grad, buf, gi, first

    def _launch(self, columns, ints, vals, counter, last_lr, hparams, grad_scale, found_inf):
        ps, grads, bufs, groups, firsts = columns or ([],) * 5
        _ops.sgd_step(ps, grads, self._optional(bufs), counter, last_lr, ints, vals, hparams, groups,
                      firsts if any(firsts) else [], grad_scale, found_inf)
