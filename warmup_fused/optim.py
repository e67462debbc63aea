"""AdamW / Adam / SGD whose fused kernels compute each step's learning rate on the device.

    >>> opt = warmup_fused.AdamW(model.parameters(), lr=3e-4, schedule=schedules.warmup_cosine(100_000, warmup=1_000))
    >>> opt.step()            # one op call per device: lr(step) evaluated in the kernel, counter advanced there
    >>> opt.last_lr()         # float64 [num_groups] device tensor: the LR each group used in the last step

Where each step's LR comes from (one rule; README "Migrating from torch.optim"):

* A group follows the optimizer's schedule (``schedule=`` / ``set_schedule``; without one, its ``lr``).
  ``param_groups[g]['lr']`` shows the LR of the next eager step, as it does with torch.
* Writing a *different* value into ``param_groups[g]['lr']`` (by hand, or a torch/transformers scheduler's
  ``step()``) makes the group train at that value from the next step on, exactly as torch would, until the next
  write or ``set_schedule``. Writing the value it already shows changes nothing, so a scheduler converted with
  ``set_schedule(from_torch(sched))`` may keep stepping. Every write is validated and reaches the device at once,
  in place, so replays of a captured CUDA graph follow it too (a write while a graph is being captured raises).
  A tensor ``lr`` is read at every step, as torch's fused kernels read it.
* The same holds for ``betas[0]`` (Adam) / ``momentum`` (SGD) when a schedule cycles them (OneCycleLR, CyclicLR).

The schedule counter (``sched_step``) is an int64 tensor on each device that holds params. Every ``step()``
advances it by one, *including* steps a GradScaler skips (``found_inf``), like a scheduler stepped every
iteration. A skipped step leaves params, states and per-param steps untouched, as torch's fused optimizers do.
"""
from __future__ import annotations

import math
import operator
import struct
import sys
from typing import Any

import torch

from . import _checkpoint, _ops
from ._device import DeviceBuffers
from ._expr import BASE
from ._hparams import ADAM_SPEC, SGD_SPEC, GroupList, ParamGroup, Spec, as_float, check_max_grad_norm
from ._ops import LAYOUT
from ._state import StateDict
from .schedules import MAX_STEP, Schedule

__all__ = ["AdamW", "Adam", "SGD"]

_SCHEDULE, _HOST, _TENSOR = LAYOUT["lr_from_schedule"], LAYOUT["lr_from_host"], LAYOUT["lr_from_tensor"]
_LR_AHEAD = 256  # steps of host LRs evaluated at once for param_groups' display
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_REDUCED = (torch.float16, torch.bfloat16)


def _same_float(a, b) -> bool:
    return (not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor)
            and struct.pack("<d", float(a)) == struct.pack("<d", float(b)))


def _dense(t: torch.Tensor) -> bool:
    """Dense and non-overlapping (contiguous in some dimension order: channels_last, transposes, ...)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _nonzero(value) -> bool:
    return isinstance(value, torch.Tensor) and bool((value != 0).any())


def _is_dtensor(t) -> bool:
    module = sys.modules.get("torch.distributed.tensor")  # not imported yet: no DTensor exists
    return module is not None and isinstance(t, module.DTensor)


def _local(t):
    """What the op takes for a tensor: a DTensor's local shard (FSDP2, tensor parallel), else the tensor itself."""
    return t.to_local() if _is_dtensor(t) else t


def _local_grad(p: torch.Tensor) -> torch.Tensor:
    """p.grad's local shard, laid out as p's: a grad with other placements (a Partial sum, say) is redistributed to
    p's first, as torch's DTensor dispatch does for its own fused optimizers."""
    grad = p.grad
    if _is_dtensor(p) and grad.placements != p.placements:
        grad = grad.redistribute(p.device_mesh, p.placements)
    return _local(grad)


def _dcp_initialising() -> bool:
    """Whether torch.distributed.checkpoint's _init_optim_state is on the stack: before it reads or loads the state
    of an optimizer that has none, it sets every group's lr to 0 and steps once on zero grads, to create the states
    (see _FusedOptimizer._dcp_init_step)."""
    init = getattr(sys.modules.get("torch.distributed.checkpoint.state_dict"), "_init_optim_state", None)
    code = getattr(init, "__code__", None)
    frame = sys._getframe(1) if code is not None else None
    for _ in range(16):  # optimizer hooks and scheduler wrappers lie between it and us
        if frame is None:
            return False
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


class _Source:
    """Where a group's LR and beta1/momentum come from."""

    __slots__ = ("lr_mode", "host_lr", "lr_tensor", "mom_scheduled")

    def __init__(self, lr_mode: int, host_lr: float, lr_tensor, mom_scheduled: bool = False):
        self.lr_mode, self.host_lr, self.lr_tensor, self.mom_scheduled = lr_mode, host_lr, lr_tensor, mom_scheduled


class _DeviceCall:
    """One device's op call; its argument lists are built once per set of params with grads."""

    def __init__(self, opt: "_FusedOptimizer", buffers: DeviceBuffers, rows: list):
        self.opt, self.buffers = opt, buffers
        self.params = [p for _, p in rows]
        self.groups = [g for g, _ in rows]
        # DTensor params: the op runs on the local shards (their states are DTensors placed as the params)
        self.sharded = any(_is_dtensor(p) for p in self.params)
        states = [{k: _local(v) for k, v in opt.state[p].items()} for p in self.params]
        steps = [opt._step_slots[p] for p in self.params]
        empty = _local(self.params[0]).new_empty(0) if self.params else None
        masters = [s.get("master_weight", empty) for s in states] if any("master_weight" in s for s in states) else []
        if opt._spec is ADAM_SPEC:
            vmax = [s.get("max_exp_avg_sq", empty) for s in states] if any("max_exp_avg_sq" in s for s in states) else []
            self.lists = ([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], vmax, steps, masters)
        else:
            bufs = [s.get("momentum_buffer", empty) for s in states]
            self.lists = (bufs if any("momentum_buffer" in s for s in states) else [], steps, masters)

    def __call__(self, op, grad_scale, found_inf, clip_coef) -> None:
        b = self.buffers
        if self.sharded:  # unwrapped at every call: a grad (and FSDP2's shard views) may be new tensors each step
            params, grads = [_local(p) for p in self.params], [_local_grad(p) for p in self.params]
        else:
            params, grads = self.params, [p.grad for p in self.params]
        op(params, grads, *self.lists, b.counter, b.scratch, b.ints, b.vals, b.hparams_view(),
           self.opt._lr_tensors(b.device), self.groups, grad_scale, found_inf, clip_coef, self.opt._rng_seed or 0)


class _FusedOptimizer(torch.optim.Optimizer):
    _spec: Spec
    _op_name: str

    def __init__(self, params, defaults: dict, schedule: Schedule | None, max_grad_norm: float | None):
        self._ready = False
        max_grad_norm = check_max_grad_norm(max_grad_norm)
        # every group holds its checkpoint entry's key (None): DCP's flattened form restores only keys groups have
        super().__init__(params, {**defaults, _checkpoint.GROUP_KEY: None})
        self.max_grad_norm = max_grad_norm
        self._step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf to step()
        self._wrap_containers()
        self._init_host(0)
        self._ready = True
        self._draw_seed()
        self.set_schedule(schedule)

    def _draw_seed(self) -> None:
        """Stochastic rounding's seed, from torch's default generator when a group first asks for it (so the same
        torch.manual_seed reproduces a run bit for bit; other users' random streams are left alone)."""
        if self._rng_seed is None and any(g.get("stochastic_rounding") for g in self.param_groups):
            self._rng_seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))

    def _init_host(self, step: int) -> None:
        """Host-side state (everything but param_groups and state), fresh."""
        self._emulate: str | None = None  # tests: "emulated" / "reference" run the CUDA kernels' code on CPU
        self._step_slots: dict = {}  # param -> its float32 step counter (Adam: state['step'])
        self._host_step = step  # mirror of the device counters, advanced by every eager step
        self._devices: dict[torch.device, DeviceBuffers] = {}
        self._sources = [self._host_source(g) for g in self.param_groups]
        self._schedule: Schedule | None = None
        self._bound: Schedule | None = None
        self._lr_ahead: tuple = (0, None, None)
        self._plan: tuple = (None, None, None, ())
        self._structure = 0  # bumped whenever the op's argument lists may change
        self._rng_seed: int | None = None  # drawn from torch's default generator once stochastic rounding is used
        self._last_grad_norm: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ param groups
    def _wrap_containers(self) -> None:
        """param_groups and state as the containers that see every edit (torch's __init__ / __setstate__ made
        plain ones)."""
        self.param_groups = GroupList([ParamGroup(g, self) for g in self.param_groups], self)
        # The step path reads the groups through this alias: torch.compile's optimizer support special-cases the
        # attribute `param_groups` in ways that assume plain dicts.
        self._groups = self.param_groups
        self.state = StateDict(self, self.state)

    def _on_state_write(self, state: dict, p: torch.Tensor, key, value):
        """optimizer.state[p][key] = value (a user's edit): the next step uses it, as torch's would. Adam's 'step'
        is copied into p's step counter. The kernels take a count of 0 as a first step, from zero states (inside a
        CUDA graph capture they are still uninitialised), so a count of 0 comes with zero moments only."""
        for b in self._devices.values():
            b.check_not_capturing(f"optimizer.state[p]['{key}'] was written")
        where = f"state[p] of a param of shape {tuple(p.shape)}"
        slot = self._step_slots.get(p)
        if self._spec is ADAM_SPEC and key == "step" and value is not slot:
            count = _checkpoint._step_value(where, value)
            if count == 0 and any(_nonzero(state.get(k)) for k in _MOMENTS):
                raise ValueError(f"{where}: step 0 with non-zero moments: a param's first step starts from zero "
                                 "states; to restart a param, delete its state (del optimizer.state[p])")
            value = self._slot(p)
            value.fill_(count)
        elif self._spec is ADAM_SPEC and key in _MOMENTS and slot is not None and float(slot) == 0 and _nonzero(value):
            raise ValueError(f"{where}: {key} written non-zero at step 0: a param's first step starts from zero "
                             "states; write its 'step' (>= 1) first")
        elif key == "momentum_buffer" and slot is not None:
            slot.clamp_(min=1.0)  # the buffer holds values: the kernel uses it instead of initialising it
        self._structure += 1
        return value

    def _on_state_delete(self, state: dict, key) -> None:
        """del optimizer.state[p][key]: SGD's momentum buffer and a master weight start over at the next step (as
        torch's buffer does); Adam's step and moments only go with the whole state (torch's step would fail)."""
        if self._spec is ADAM_SPEC and key in ("step", *_MOMENTS):
            raise TypeError(f"optimizer.state[p]['{key}'] cannot be removed alone; to restart a param, delete its "
                            "whole state (del optimizer.state[p])")
        self._structure += 1

    def _host_source(self, group: dict) -> _Source:
        lr = group["lr"]
        return _Source(_TENSOR, math.nan, lr) if isinstance(lr, torch.Tensor) else _Source(_HOST, float(lr), None)

    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group; everything is checked before the group is added."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        probe = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._spec.check_group(probe, "param_group: ")
        if not getattr(self, "_ready", False):  # inside torch's __init__
            return super().add_param_group(param_group)
        n = len(self.param_groups) + 1
        if self._schedule is not None:
            if isinstance(probe["lr"], torch.Tensor):
                raise ValueError("param_group: a Tensor lr cannot follow the optimizer's schedule; pass a float lr")
            if self._schedule.num_groups not in (1, n):
                raise ValueError(f"schedule: has {self._schedule.num_groups} groups, the optimizer would have {n} "
                                 "param groups; call set_schedule with a matching schedule first")
        for b in self._devices.values():
            b.check_room(n, "add_param_group")
        program = self._program(self._schedule, [*self._groups, probe], carry=True)  # binds: checked before adding
        groups = self.param_groups
        groups._appending = True
        try:
            super().add_param_group(param_group)  # torch's own checks (tensors, disjoint params, ...), then appended
        finally:
            groups._appending = False
        list.__setitem__(groups, -1, ParamGroup(groups[-1], self))
        self._sources.append(self._host_source(groups[-1]))
        self._structure += 1
        self._draw_seed()
        self._rebind(self._schedule, only_group=n - 1, program=program)

    def _on_group_write(self, group: ParamGroup, writes: dict) -> None:
        """param_groups[g][key] = value, or group.update(...): every write is checked before any is applied, then
        applied on every device, in place."""
        spec = self._spec
        checked = [k for k in writes if k in spec.checks or k == "params"] if self._ready else []
        if "lr" in checked and _dcp_initialising():
            checked.remove("lr")  # DCP's lr: shown only (see _dcp_init_step)
        if not checked:
            return dict.update(group, writes)
        g = self._group_index(group)
        where = f"param_groups[{g}]: "
        for key in checked:
            try:
                self._check_params(writes[key], g) if key == "params" else spec.checks[key](writes[key])
            except (TypeError, ValueError) as e:
                raise type(e)(f"{where}{e}") from None
        spec.check_combination({**group, **writes}, where)
        for b in self._devices.values():
            b.check_not_capturing(f"param_groups[{g}]['{checked[0]}'] was written")
        src = self._sources[g]
        # A write equal to what the next step would apply changes nothing; anything else is the group's value now.
        lr_next, mom_next = self._next_values(g)
        for key, value in writes.items():
            if key == "lr":
                if isinstance(value, torch.Tensor) or src.lr_mode == _TENSOR:
                    self._structure += 1  # the op's lr_tensors change
                if isinstance(value, torch.Tensor):
                    src.lr_mode, src.lr_tensor, src.host_lr = _TENSOR, value, math.nan
                elif src.lr_mode == _TENSOR or not _same_float(value, lr_next):
                    src.lr_mode, src.lr_tensor, src.host_lr = _HOST, None, float(value)
            elif key == spec.momentum_key:
                new = value[0] if key == "betas" else value
                if isinstance(new, torch.Tensor) or not _same_float(new, mom_next):
                    src.mom_scheduled = False  # the group's value from now on
            if key in ("params", "amsgrad", "momentum", "master_weights", "stochastic_rounding"):
                self._structure += 1  # which params, states and features the op gets
            dict.__setitem__(group, key, value)
        self._draw_seed()
        self._write_rows(g)

    def _check_params(self, params, g: int) -> None:
        """A new list for param_groups[g]['params']: torch's add_param_group rules."""
        if not isinstance(params, list) or not all(isinstance(p, torch.Tensor) for p in params):
            raise TypeError(f"'params' must be a list of Tensors, got {type(params).__name__}")
        if not all(p.is_leaf for p in params):
            raise ValueError("'params': can't optimize a non-leaf Tensor")
        others = {id(p) for i, group in enumerate(self._groups) if i != g for p in group["params"]}
        if len({id(p) for p in params} - others) != len(params):
            raise ValueError("'params': some parameters appear in more than one parameter group (or twice)")

    def _next_values(self, g: int) -> tuple:
        """The LR and beta1/momentum the next step applies to group g."""
        group, src = self._groups[g], self._sources[g]
        lr, mom = group["lr"], self._spec.momentum(group)
        if src.lr_mode == _SCHEDULE or src.mom_scheduled:
            lrs, moms = self._host_values(self._host_step)
            lr = lrs[g] if src.lr_mode == _SCHEDULE else lr
            mom = moms[g] if src.mom_scheduled else mom
        elif src.lr_mode == _HOST:
            lr = src.host_lr
        return lr, mom

    def _group_index(self, group) -> int:
        for i, g in enumerate(self.param_groups):
            if g is group:
                return i
        raise RuntimeError("this param group is no longer part of the optimizer")

    # ---------------------------------------------------------------------------------------------- schedule
    def set_schedule(self, schedule: Schedule | None) -> None:
        """Every group follows ``schedule`` from the next step on (None: each group's current ``lr``, constant).

        The counter is kept. A relative schedule (a native constructor called without ``base_lr``) scales each
        group's base LR (``initial_lr``, else ``lr``); an absolute one (``from_torch``, or built with ``base_lr``)
        gives its own LRs: one group of it applies to every param group, else it has one group per param group.
        A schedule that cycles momentum (OneCycleLR, CyclicLR) also drives ``betas[0]`` (Adam) / ``momentum`` (SGD).
        """
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a warmup_fused Schedule or None, got {type(schedule).__name__}")
        if schedule is not None:
            for g, group in enumerate(self.param_groups):
                if isinstance(group["lr"], torch.Tensor):
                    raise ValueError(f"schedule: param group {g} has a Tensor lr, which the kernel reads at every "
                                     "step as torch does; pass a float lr to use a schedule")
        self._rebind(schedule)

    def _program(self, schedule: Schedule | None, groups: list, carry: bool = False) -> tuple:
        """`schedule` bound to `groups` (ours, or the would-be ones), with its host program, checked to fit every
        device's buffers. With `carry`, the plateau state of the groups that exist is kept."""
        bound = self._bind(schedule, groups)
        if bound.plateau_offset is not None:  # its state is this optimizer's own: a private program
            bound = Schedule.from_state_dict(bound.state_dict())
            if carry and self._bound is not None and self._bound.plateau_offset is not None:
                self._carry_plateau(bound)  # a new group must not reset the others' plateau state
        ints, vals = bound.program("cpu")
        for b in self._devices.values():
            b.check_program_room(ints, vals)
        return bound, ints, vals

    def _rebind(self, schedule: Schedule | None, only_group: int | None = None, program: tuple | None = None) -> None:
        """Binds `schedule` to the groups (all, or the new `only_group`) and installs its program (from _program)
        everywhere. Everything is checked before anything changes."""
        bound, ints, vals = program or self._program(schedule, self._groups, carry=only_group is not None)
        has_mom = bool(getattr(bound, "has_momentum", False))
        self._schedule, self._bound, self._lr_ahead = schedule, bound, (0, None, None)
        for g in range(len(self.param_groups)) if only_group is None else [only_group]:
            group, src = self.param_groups[g], self._sources[g]
            if isinstance(group["lr"], torch.Tensor):
                src.lr_mode, src.lr_tensor = _TENSOR, group["lr"]
            elif schedule is None:
                src.lr_mode, src.host_lr = _HOST, float(group["lr"])
            else:
                src.lr_mode = _SCHEDULE
                dict.__setitem__(group, "initial_lr", float(bound.base_lrs[g]))
            src.mom_scheduled = has_mom
        for b in self._devices.values():
            b.set_groups(len(self.param_groups))
            b.set_program(ints, vals)
        for d in {p.device for group in self.param_groups for p in group["params"]}:
            self._buffers(d)
        for g in range(len(self.param_groups)):
            self._write_rows(g)
        self._show(self._host_step)

    def _bind(self, schedule: Schedule | None, groups: list | None = None) -> Schedule:
        """An absolute schedule with one group per param group (of `groups`: a checkpoint's; default: ours)."""
        groups = self.param_groups if groups is None else groups
        n = len(groups)
        if schedule is None:  # a placeholder program: every group takes its host value
            return Schedule([[(0, BASE)]], [0.0] * n, name="constant")
        if schedule.num_groups not in (1, n):
            raise ValueError(f"schedule: has {schedule.num_groups} groups but the optimizer has {n} param groups "
                             "(a 1-group schedule applies to every group)")
        if getattr(schedule, "relative", False):
            bases = []
            for g, group in enumerate(groups):
                base = group.get("initial_lr", group["lr"])
                if isinstance(base, torch.Tensor):
                    raise ValueError(f"schedule: param group {g} has a Tensor lr; pass a float lr to use a schedule")
                bases.append(float(base))
            return schedule.with_base_lrs(bases)
        if schedule.num_groups == n:
            return schedule
        return schedule.with_base_lrs([schedule.base_lrs[0]] * n)

    # --------------------------------------------------------------------------------------------- plateau
    def observe(self, metric) -> None:
        """``ReduceLROnPlateau.step(metric)`` for a schedule with a ``reduce_on_plateau`` phase, on every device
        in place: ``metric`` (a one-element tensor, ideally already on the device, or a number) is read on the
        device, so there is no host sync and the call can be captured in a CUDA graph. param_groups show the
        reduced LR at once when the metric is a number or a CPU tensor; for a device metric they catch up at the
        next ``state_dict()``."""
        offset = self._bound.plateau_offset
        if offset is None:
            raise ValueError("observe: the optimizer's schedule has no reduce_on_plateau phase")
        if isinstance(metric, torch.Tensor):
            if metric.numel() != 1 or not metric.is_floating_point():
                raise ValueError(f"metric must be a one-element floating tensor, got {metric.dtype} with "
                                 f"{metric.numel()} elements")
            metric = metric.detach().reshape(())
        elif isinstance(metric, bool) or not isinstance(metric, (int, float)):
            raise TypeError(f"metric must be a number or a one-element tensor, got {type(metric).__name__}")
        else:
            metric = torch.tensor(float(metric), dtype=torch.float64)
        for b in self._devices.values():
            value = metric if metric.dtype in (torch.float32, torch.float64) else metric.double()
            torch.ops.warmup_fused.plateau_observe(b.vals, offset, value.to(b.device, non_blocking=True))
        capturing = any(b.capturing() for b in self._devices.values())
        if metric.device.type == "cpu" and not capturing:  # the host mirror, for param_groups' display
            value = metric if metric.dtype in (torch.float32, torch.float64) else metric.double()
            torch.ops.warmup_fused.plateau_observe(self._bound.program("cpu")[1], offset, value)
            self._lr_ahead = (0, None, None)
            self._show(self._host_step)

    def _sync_plateau(self) -> None:
        """Copies the device's plateau state into the host program (state_dict, pickling: not steady state)."""
        offset = self._bound.plateau_offset
        if offset is None or not self._devices:
            return
        b = next(iter(self._devices.values()))
        host = self._bound.program("cpu")[1]
        words = int(host[offset + LAYOUT["plateau_header"] - 1]) * LAYOUT["plateau_group_words"] + \
            LAYOUT["plateau_header"]
        host[offset: offset + words].copy_(b.vals[offset: offset + words])
        self._lr_ahead = (0, None, None)

    def _carry_plateau(self, bound: Schedule) -> None:
        """Copies the plateau state and the existing groups' LRs into `bound` (one more group)."""
        self._sync_plateau()
        old = self._bound.program("cpu")[1]
        new = bound.program("cpu")[1]
        o, n, header = self._bound.plateau_offset, bound.plateau_offset, LAYOUT["plateau_header"]
        words = int(old[o + header - 1]) * LAYOUT["plateau_group_words"]
        new[n: n + header - 1].copy_(old[o: o + header - 1])
        new[n + header: n + header + words].copy_(old[o + header: o + header + words])

    @property
    def schedule(self) -> Schedule:
        """The schedule bound to the param groups (absolute, one group per param group)."""
        return self._bound

    # ----------------------------------------------------------------------------------------------- devices
    def _buffers(self, device: torch.device) -> DeviceBuffers:
        b = self._devices.get(device)
        if b is None:
            ints, vals = self._bound.program("cpu")
            b = DeviceBuffers(device, self._spec.cols, len(self.param_groups), ints, vals, self._host_step)
            b.reserve(sum(1 for g in self.param_groups for p in g["params"] if p.device == device))
            self._devices[device] = b
            for g in range(len(self.param_groups)):
                self._write_rows(g, only=b)
        return b

    def _slot(self, p: torch.Tensor) -> torch.Tensor:
        """The param's float32 step counter (allocated with its device's buffers, never replaced)."""
        slot = self._step_slots.get(p)
        if slot is None:
            slot = self._step_slots[p] = self._buffers(p.device).slot()
        return slot

    def _row(self, g: int, device: torch.device) -> list[float]:
        group, src = self.param_groups[g], self._sources[g]
        row = self._spec.row(group)
        mode, host_lr = src.lr_mode, src.host_lr
        if mode == _SCHEDULE and self._schedule is None:
            mode = _HOST
        if mode == _TENSOR:
            if src.lr_tensor.device == device:  # the kernel reads it: its index among this device's lr tensors
                host_lr = sum(1 for s in self._sources[:g] if s.lr_mode == _TENSOR and s.lr_tensor.device == device)
            else:  # another device: read here at every step, as torch copies it to each device
                mode, host_lr = _HOST, as_float(src.lr_tensor)
        row[LAYOUT["lr_source"]] = mode
        row[LAYOUT["host_lr"]] = host_lr
        row[LAYOUT["momentum_source"]] = 1.0 if src.mom_scheduled else 0.0
        row[LAYOUT["host_momentum"]] = math.nan if src.mom_scheduled else as_float(self._spec.momentum(group))
        return row

    def _write_rows(self, g: int, only: DeviceBuffers | None = None) -> None:
        for b in [only] if only is not None else self._devices.values():
            b.write_row(g, self._row(g, b.device))

    def _lr_tensors(self, device: torch.device) -> list:
        return [s.lr_tensor if s.lr_mode == _TENSOR and s.lr_tensor.device == device else None
                for s in self._sources] if any(s.lr_mode == _TENSOR for s in self._sources) else []

    def _op(self):
        if self._emulate is None:
            return getattr(torch.ops.warmup_fused, self._op_name)
        op = getattr(torch.ops.warmup_fused, self._op_name + "_emulated")
        reference = self._emulate == "reference"
        return lambda *args: op(*args, reference=reference)

    # -------------------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every param with a grad: one fused op call per device. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.state and not torch.compiler.is_compiling() and _dcp_initialising():
            self._dcp_init_step()
        else:
            self._step()
        return loss

    def _dcp_init_step(self) -> None:
        """torch.distributed.checkpoint's state initialisation (see _dcp_initialising): a step at the lr DCP wrote
        (0; only shown in param_groups) on its zero grads creates the states, as it does for torch's optimizers (whose
        schedulers it does not step): the counter and every group's LR source are left as they were."""
        sources, step, norm = self._sources, self._host_step, self._last_grad_norm
        self._sources = [self._host_source(group) for group in self._groups]
        self._structure += 1
        try:
            for g in range(len(self._groups)):
                self._write_rows(g)
            self._step()
        finally:
            self._sources, self._last_grad_norm = sources, norm
            self._structure += 1
            for b in self._devices.values():
                b.set_counter(step)
            self._host_step = step
            for g in range(len(self._groups)):
                self._write_rows(g)

    def _step(self) -> None:
        if self._host_step >= MAX_STEP - 1:
            raise RuntimeError(f"the schedule counter reached {self._host_step}: schedules are defined below 2**53")
        calls, host_read, created = self._calls()
        try:
            if len(calls) > 1:  # each op checks its own device before writing; check all before the first runs
                self._check_new([(g, p) for c in calls for g, p in zip(c.groups, c.params)])
            if host_read:
                self._read_tensor_hparams(host_read)
            gs = getattr(self, "grad_scale", None)
            fi = getattr(self, "found_inf", None)
            clip = None
            if self.max_grad_norm is not None:
                clip = self._clip_coefficient(calls, gs)
                gs = None  # the grads were unscaled in place first
            op = self._op()
            for call in calls:
                d = call.buffers.device
                if call.buffers.capturing():
                    call.buffers.captured = True
                call(op, None if gs is None else gs.to(device=d, dtype=torch.float32, non_blocking=True),
                     None if fi is None else fi.to(device=d, dtype=torch.float32, non_blocking=True),
                     None if clip is None else clip.to(device=d, dtype=torch.float64, non_blocking=True))
        except Exception:
            for p in created:  # a rejected step leaves no state behind (the ops checked before writing)
                self.state.pop(p, None)
            self._plan = (None, None, None, ())
            self._check_new([(g, p) for c in calls for g, p in zip(c.groups, c.params)])  # its error, in our terms
            raise
        if not torch.compiler.is_compiling():  # host mirrors would make every compiled step recompile
            self._host_step += 1
            self._show(self._host_step, after_step=True)

    def _calls(self):
        """The per-device op calls for the params that have grads now; rebuilt when that set (or the structure)
        changes, after every param that needs state was checked."""
        key, calls, host_read, _ = self._plan
        if not torch.compiler.is_compiling():
            self._check_containers()
        params = [p for group in self._groups for p in group["params"]]  # a params list may have been edited
        has = [p.grad is not None for p in params]
        if key is not None and key[0] == self._structure and key[1] == has and all(map(operator.is_, key[2], params)):
            return calls, host_read, ()
        if len(set(map(id, params))) != len(params):
            raise ValueError("param_groups: a param appears more than once (in one group's list or in two groups)")
        rows = [(g, p) for g, group in enumerate(self._groups) for p in group["params"] if p.grad is not None]
        self._check_new(rows)
        capturing = any(b.capturing() for b in self._devices.values())
        created = [p for _, p in rows if not self.state.get(p)]
        for g, p in rows:  # our own writes (dict.__setitem__): no user-edit checks
            self._init_state(g, p, capturing)
        self._structure += 1
        by_device: dict = {d: [] for d in self._devices}  # every device with a counter steps: they stay in step
        for g, p in rows:
            by_device.setdefault(p.device, []).append((g, p))
        calls = [_DeviceCall(self, self._buffers(d), r) for d, r in by_device.items()]
        host_read = [g for g, group in enumerate(self._groups) if self._reads_on_host(group, g)]
        self._plan = ((self._structure, has, params), calls, host_read, created)
        return calls, host_read, created

    def _check_containers(self) -> None:
        """param_groups replaced by another list is refused; a new opt.state is adopted (as torch would use it)."""
        if self.param_groups is not self._groups:
            raise TypeError("optimizer.param_groups was replaced by another list: add groups with add_param_group "
                            "and edit a group's keys in place (param_groups[g]['lr'] = ...)")
        if type(self.state) is not StateDict:
            self.state = StateDict(self, self.state)
            self._structure += 1

    def _clip_coefficient(self, calls, grad_scale) -> torch.Tensor | None:
        """clip_grad_norm_(params, max_grad_norm, foreach=True)'s norm and coefficient, by torch's own functions (so
        the norm is bit-identical); the kernels apply the coefficient as they load each grad. With a GradScaler the
        grads are first unscaled in place exactly as GradScaler.unscale_ does (the norm is of unscaled grads)."""
        grads = [p.grad for c in calls for p in c.params]
        if not grads:
            return None
        if grad_scale is not None:
            inv_scale = grad_scale.double().reciprocal().float()
            by_key: dict = {}
            for g in grads:  # elementwise: a DTensor's local shard is unscaled in place
                by_key.setdefault((g.device, g.dtype), []).append(_local(g))
            for (device, _), group in by_key.items():
                ignored = torch.zeros(1, dtype=torch.float32, device=device)  # GradScaler already found inf/nan
                torch._amp_foreach_non_finite_check_and_unscale_(group, ignored, inv_scale.to(device))
        total = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False, foreach=True)
        if _is_dtensor(total):  # DTensor grads: the norm over every shard, the same value on every rank
            total = total.full_tensor()
        self._last_grad_norm = total
        return torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0)

    def last_grad_norm(self) -> torch.Tensor | None:
        """The total L2 norm of the grads of the last step, as ``clip_grad_norm_`` returns it (a device tensor; None
        before a step with ``max_grad_norm`` set)."""
        return self._last_grad_norm

    def _reads_on_host(self, group: dict, g: int) -> bool:
        """Tensor hyperparameters other than an lr the kernel reads: read at every step, as torch does."""
        values = [group[k] for k in self._spec.checks if k in group and k != "lr"]
        values += list(group["betas"]) if "betas" in group else []
        lr = group["lr"]
        return any(isinstance(v, torch.Tensor) for v in values) or (
            isinstance(lr, torch.Tensor) and any(b.device != lr.device for b in self._devices.values()))

    def _read_tensor_hparams(self, groups: list) -> None:
        for b in self._devices.values():
            b.check_not_capturing("a Tensor hyperparameter is read on the host at every step (betas, weight_decay, "
                                  "or an lr on another device), which")
        for g in groups:
            self._write_rows(g)

    def _check_new(self, rows) -> None:
        """Checks the params that have grads before any state is created (the op checks the rest itself)."""
        for g, p in rows:
            grad, where = p.grad, f"param_groups[{g}]: a param of shape {tuple(p.shape)}"
            if grad.layout != torch.strided:
                raise RuntimeError(f"{where} has a {grad.layout} grad: warmup_fused optimizers do not support "
                                   "sparse gradients")
            if p.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{where} has unsupported dtype {p.dtype} (float32, float64, float16 and bfloat16 "
                                "are supported)")
            if grad.dtype != p.dtype or grad.shape != p.shape or grad.device != p.device:
                raise ValueError(f"{where}: its grad is {grad.dtype} {tuple(grad.shape)} on {grad.device}, the "
                                 f"param {p.dtype} {tuple(p.shape)} on {p.device}")
            if (_is_dtensor(p) or _is_dtensor(grad)) and not (
                    _is_dtensor(p) and _is_dtensor(grad) and grad.device_mesh == p.device_mesh):
                raise ValueError(f"{where} is a {type(p).__name__} and its grad a {type(grad).__name__}: a DTensor "
                                 "param needs a DTensor grad on its device mesh (and a plain param a plain grad)")
            if not _dense(_local(p)):
                raise ValueError(f"{where} is not dense and non-overlapping (a strided view?): the fused kernels "
                                 "update params as flat arrays; optimise the tensor it views instead")
            if p.dtype == torch.float16 and self._groups[g].get("stochastic_rounding"):
                raise ValueError(f"{where} is float16: stochastic_rounding rounds bfloat16 params (use master_weights "
                                 "for float16)")
            if p.device.type == "cuda" and not _ops.build_info()["cuda"]:
                raise RuntimeError("this warmup_fused build has no CUDA kernels: rebuild it with the CUDA toolkit")

    def _init_state(self, g: int, p: torch.Tensor, capturing: bool) -> None:
        """Creates a param's state on its first step. While a CUDA graph is being captured, without kernels: a
        kernel here would run again at every replay; the step kernels take a counter at 0 as zero states."""
        raise NotImplementedError

    def _new_state(self, g: int, p: torch.Tensor, capturing: bool) -> torch.Tensor:
        """A zero state like p (float32 for a param with a master), empty while capturing (see _init_state)."""
        make = torch.empty_like if capturing else torch.zeros_like
        return make(p, dtype=torch.float32 if self._has_master(g, p) else p.dtype, memory_format=torch.preserve_format)

    def _has_master(self, g: int, p: torch.Tensor) -> bool:
        return bool(self._groups[g].get("master_weights")) and p.dtype in _REDUCED

    def _init_master(self, g: int, p: torch.Tensor, capturing: bool) -> None:
        """master_weights: a float32 copy of a bf16/fp16 param (the kernels start a first step from the param, so
        inside a capture it is left uninitialised)."""
        state = self.state[p]
        if self._has_master(g, p) and "master_weight" not in state:
            if capturing and "exp_avg" in state and "master_weight" not in state and len(state) > 2:
                raise RuntimeError("master_weights was switched on for params that already stepped, inside a CUDA "
                                   "graph capture: run one eager step after the change, then capture")
            master = torch.empty_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            if not capturing:
                master.copy_(p)
            dict.__setitem__(state, "master_weight", master)


    # --------------------------------------------------------------------------------------- host-side values
    def _scheduler_attached(self) -> bool:
        """A torch LRScheduler was built on this optimizer (it wraps the instance's step)."""
        return hasattr(self.__dict__.get("step"), "_wrapped_by_lr_sched")

    def _show(self, step: int, after_step: bool = False) -> None:
        """param_groups show the LR (and scheduled beta1 / momentum) that the next eager step() uses. After a step
        with a torch scheduler attached they keep the LR just used, as torch's do until the scheduler steps:
        recursive schedulers compute the next LR from it."""
        if not any(s.lr_mode == _SCHEDULE or s.mom_scheduled for s in self._sources):
            return
        if after_step and self._scheduler_attached():
            step -= 1
        lrs, moms = self._host_values(step)
        for g, (group, src) in enumerate(zip(self.param_groups, self._sources)):
            if src.lr_mode == _SCHEDULE:
                dict.__setitem__(group, "lr", lrs[g])
            if src.mom_scheduled:
                if self._spec.momentum_key == "betas":
                    dict.__setitem__(group, "betas", (moms[g], group["betas"][1]))
                else:
                    dict.__setitem__(group, "momentum", moms[g])

    def _host_values(self, step: int):
        """The bound schedule's LRs (and momentum) at `step`, evaluated on the host in blocks of steps."""
        start, lrs, moms = self._lr_ahead
        if lrs is None or not start <= step < start + len(lrs[0]):
            steps = range(step, min(step + _LR_AHEAD, MAX_STEP))
            lrs = self._bound.lr_at(steps).tolist()
            moms = self._bound.momentum_at(steps).tolist() if getattr(self._bound, "has_momentum", False) else None
            start = step
            self._lr_ahead = (start, lrs, moms)
        t = step - start
        return [row[t] for row in lrs], (None if moms is None else [row[t] for row in moms])

    def last_lr(self, device: torch.device | str | None = None) -> torch.Tensor:
        """float64 [num_groups] on ``device`` (default: the first device with params): the LR each group used
        in the last step, written by the kernel (NaN before the first step). No host sync; a view that later
        steps update in place."""
        return self._buffers(self._device(device)).last_lr()

    def sched_step(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The int64 step counter tensor on ``device``: the step the next ``step()`` evaluates the schedule at."""
        return self._buffers(self._device(device)).counter

    def set_sched_step(self, step: int) -> None:
        """Moves every device's counter to ``step`` (e.g. after loading a torch SGD checkpoint, which carries no
        step count)."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < MAX_STEP - 1:
            raise ValueError(f"step must be an int in [0, 2**53 - 1), got {step!r}")
        for b in self._devices.values():
            b.check_not_capturing("set_sched_step")
        for b in self._devices.values():
            b.set_counter(step)
        self._host_step = step
        self._show(step)

    def _device(self, device) -> torch.device:
        if device is None:
            device = next(p.device for g in self.param_groups for p in g["params"])
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    # ----------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return _checkpoint.state_dict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _checkpoint.load_state_dict(self, state_dict)

    def __getstate__(self) -> dict[str, Any]:
        return _checkpoint.getstate(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        _checkpoint.setstate(self, state)


class _AdamBase(_FusedOptimizer):
    _spec = ADAM_SPEC
    _op_name = "adam_step"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, schedule: Schedule | None = None, master_weights=False,
                 stochastic_rounding=False, max_grad_norm=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay, master_weights=master_weights,
                        stochastic_rounding=stochastic_rounding)
        ADAM_SPEC.check_group(defaults)
        defaults["betas"] = tuple(betas)
        super().__init__(params, defaults, schedule, max_grad_norm)

    def _init_state(self, g, p, capturing):
        state = self.state[p]
        had_state = bool(state)
        if not had_state:
            if p in self._step_slots:  # its state was deleted (opt.state.clear(), say): it restarts at step 1
                if capturing:
                    raise RuntimeError("the state of params that already stepped was deleted, inside a CUDA graph "
                                       "capture: run one eager step after the change, then capture")
                self._step_slots[p].zero_()
            dict.__setitem__(state, "step", self._slot(p))
            dict.__setitem__(state, "exp_avg", self._new_state(g, p, capturing))
            dict.__setitem__(state, "exp_avg_sq", self._new_state(g, p, capturing))
        self._init_master(g, p, capturing)
        if self._groups[g]["amsgrad"] and "max_exp_avg_sq" not in state:
            if capturing and had_state:
                raise RuntimeError("amsgrad was switched on for params that already have state, inside a CUDA "
                                   "graph capture: run one eager step after the change, then capture")
            # zeros: a running max from 0, as torch's
            dict.__setitem__(state, "max_exp_avg_sq", self._new_state(g, p, capturing))


class AdamW(_AdamBase):
    """torch.optim.AdamW with the LR computed on the device from ``schedule``.

    Arguments as torch's (lr, betas, eps, weight_decay=1e-2, amsgrad, maximize, foreach, capturable,
    differentiable=False, fused; the implementation switches are accepted and change nothing: ours is always
    fused and capturable) plus ``schedule=``. See the module docstring for where each step's LR comes from.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 schedule: Schedule | None = None, master_weights=False, stochastic_rounding=False,
                 max_grad_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, schedule=schedule, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, max_grad_norm=max_grad_norm)


class Adam(_AdamBase):
    """torch.optim.Adam (L2 weight decay; ``decoupled_weight_decay=True`` makes it AdamW, as in torch) with the LR
    computed on the device from ``schedule``. Arguments as torch's plus ``schedule=``."""


class SGD(_FusedOptimizer):
    """torch.optim.SGD with the LR computed on the device from ``schedule``.

    Arguments as torch's (lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, differentiable=False,
    fused) plus ``schedule=``. The momentum buffer is initialised to the (decayed) gradient on a param's first
    step, as torch does; unlike torch's fused SGD, a first step that a GradScaler skips leaves that to the next one.
    """

    _spec = SGD_SPEC
    _op_name = "sgd_step"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, schedule: Schedule | None = None,
                 master_weights=False, stochastic_rounding=False, max_grad_norm=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
                        master_weights=master_weights, stochastic_rounding=stochastic_rounding)
        SGD_SPEC.check_group(defaults)
        super().__init__(params, defaults, schedule, max_grad_norm)

    def _init_state(self, g, p, capturing):
        stepped = p in self._step_slots
        slot = self._slot(p)  # steps taken: 0 means the kernel initialises the momentum buffer
        state = self.state[p]
        if as_float(self._groups[g]["momentum"]) != 0.0 and "momentum_buffer" not in state:
            if stepped:  # it stepped without momentum: its buffer starts now, as torch's would
                if capturing:
                    raise RuntimeError("momentum was switched on for params that already stepped, inside a CUDA "
                                       "graph capture: run one eager step after the change, then capture")
                slot.zero_()
            # zeros until the kernel initialises it
            dict.__setitem__(state, "momentum_buffer", self._new_state(g, p, capturing))
        self._init_master(g, p, capturing)
