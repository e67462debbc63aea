"""Checkpoints of the fused optimizers: torch's layout plus what a resume needs, in both directions.

``state_dict()`` is torch's (``state[i]`` with ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` /
``momentum_buffer``; ``param_groups`` with every hyperparameter, ``lr`` the LR of the next step and ``initial_lr``
the base LR, as a torch scheduler leaves them) plus ``state_dict()['warmup_fused']``: the schedule counter, the
schedule itself (so a fresh optimizer continues without ``schedule=``) and each group's LR source. torch's
optimizers load it; ours load torch's. ``load_state_dict`` checks everything before it changes anything, and
writes into the tensors a captured CUDA graph holds where they exist.
"""
from __future__ import annotations

import math
import struct
import warnings
from typing import Any

import torch

from ._hparams import ADAM_SPEC, ParamGroup, as_float, check_lr, check_max_grad_norm
from ._ops import LAYOUT
from .schedules import Schedule

FORMAT = 1
_MODES = {LAYOUT["lr_from_schedule"]: "schedule", LAYOUT["lr_from_host"]: "host", LAYOUT["lr_from_tensor"]: "tensor"}
_MODE_OF = {v: k for k, v in _MODES.items()}
_MAX_COUNTER = 2**53 - 2  # the last step a schedule can evaluate is 2**53 - 1


def _counter(opt) -> int:
    if opt._devices:
        return int(next(iter(opt._devices.values())).counter)
    return opt._host_step


def _extra(opt, step: int) -> dict:
    """What a resume needs beyond torch's layout (plain Python values: torch.load(weights_only=True) takes it)."""
    return {
        "format": FORMAT,
        "sched_step": step,
        # the bound schedule (absolute, one group per param group): it resumes without the original's base LRs
        "schedule": None if opt._schedule is None else opt._bound.state_dict(),
        "lr_source": [_MODES[s.lr_mode] for s in opt._sources],
        "host_lr": [s.host_lr for s in opt._sources],
        "momentum_scheduled": [bool(s.mom_scheduled) for s in opt._sources],
        "max_grad_norm": opt.max_grad_norm,
        "rng_seed": opt._rng_seed,
    }


def _initialised(opt) -> dict:
    """SGD: which params' momentum buffers hold values (their counters are > 0; one read per device)."""
    if not opt._step_slots:
        return {}
    params = list(opt._step_slots)
    values = torch.stack([opt._step_slots[p].to("cpu", non_blocking=False) for p in params]).tolist()
    return {p: v > 0 for p, v in zip(params, values)}


def state_dict(opt) -> dict[str, Any]:
    opt._sync_plateau()
    sd = torch.optim.Optimizer.state_dict(opt)
    sd["state"] = {i: dict(st) for i, st in sd["state"].items()}  # plain dicts, as torch's
    for packed in sd["param_groups"]:  # ours is torch's fused arithmetic: torch resumes on its fused kernels
        packed["fused"], packed["foreach"] = True, None
    step = _counter(opt)
    lrs, moms = opt._host_values(min(step, 2**53 - 1))
    for g, (packed, src) in enumerate(zip(sd["param_groups"], opt._sources)):
        if src.lr_mode == LAYOUT["lr_from_schedule"]:
            packed["lr"] = lrs[g]
        if src.mom_scheduled:
            if opt._spec is ADAM_SPEC:
                packed["betas"] = (moms[g], packed["betas"][1])
            else:
                packed["momentum"] = moms[g]
    if opt._spec is not ADAM_SPEC:  # a buffer the kernel has not initialised yet is not state (torch: None)
        ready = _initialised(opt)
        index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
        for p, ok in ready.items():
            st = sd["state"].get(index.get(id(p)))
            if st is not None and not ok and "momentum_buffer" in st:
                sd["state"][index[id(p)]] = {k: v for k, v in st.items() if k != "momentum_buffer"}
    sd["warmup_fused"] = _extra(opt, step)
    return sd


# ------------------------------------------------------------------------------------------------------- load
def _step_value(where: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: step must have one element, got {value.numel()}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: step must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value != math.floor(value) or value >= 2**24:
        raise ValueError(f"{where}: step must be a whole number in [0, 2**24) (a float32 count), got {value}")
    return value


def _check_tensor(where: str, key: str, value, param: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {key} must be a Tensor, got {type(value).__name__}")
    if value.shape != param.shape:
        raise ValueError(f"{where}: {key} has shape {tuple(value.shape)}, its param {tuple(param.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{where}: {key} must be floating point, got {value.dtype}")
    if value.layout != torch.strided:
        raise ValueError(f"{where}: {key} is a {value.layout} tensor; optimizer states are dense")


def _check_state(opt, i: int, param: torch.Tensor, st) -> dict:
    """Validates one param's saved state; returns it normalised (None values dropped)."""
    where = f"state[{i}]"
    if not isinstance(st, dict):
        raise TypeError(f"{where} must be a dict, got {type(st).__name__}")
    st = {k: v for k, v in st.items() if v is not None}
    if opt._spec is ADAM_SPEC:
        if not st:
            return st
        missing = {"step", "exp_avg", "exp_avg_sq"} - set(st)
        if missing:
            raise ValueError(f"{where} lacks {sorted(missing)} (keys: {sorted(st)}): not a checkpoint of Adam/AdamW")
        allowed = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master_weight"}
    else:
        allowed = {"momentum_buffer", "master_weight"}
    extra = set(st) - allowed
    if extra:
        raise ValueError(f"{where} has keys {sorted(extra)} that {type(opt).__name__} does not use (a checkpoint "
                         f"of another optimizer?)")
    for key, value in st.items():
        if key == "step":
            _step_value(where, value)
        else:
            _check_tensor(where, key, value, param)
    if "master_weight" in st and param.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{where}: master_weight is the float32 master of a float16/bfloat16 param; this param is "
                         f"{param.dtype}")
    if "step" in st and _step_value(where, st["step"]) == 0.0:
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in st and bool((st[key] != 0).any()):
                raise ValueError(f"{where}: step is 0 but {key} is not zero; a param's first step starts from zero "
                                 "states (torch never saves such a state)")
    return st


def _check_extra(opt, extra, n_groups: int) -> dict:
    if not isinstance(extra, dict):
        raise TypeError(f"state_dict['warmup_fused'] must be a dict, got {type(extra).__name__}")
    step = extra.get("sched_step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_COUNTER:
        raise ValueError(f"state_dict['warmup_fused']['sched_step'] must be an int in [0, 2**53 - 2], got {step!r}")
    out = {"sched_step": step, "schedule": None}
    if extra.get("schedule") is not None:
        try:
            out["schedule"] = Schedule.from_state_dict(extra["schedule"])
        except (TypeError, ValueError) as e:
            raise type(e)(f"state_dict['warmup_fused']['schedule']: {e}") from None
    try:
        out["max_grad_norm"] = check_max_grad_norm(extra.get("max_grad_norm"))
    except ValueError as e:
        raise ValueError(f"state_dict['warmup_fused']: {e}") from None
    seed = out["rng_seed"] = extra.get("rng_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"state_dict['warmup_fused']['rng_seed'] must be None or an int in [0, 2**63), got {seed!r}")
    for key, check in (("lr_source", lambda v: v in _MODE_OF), ("host_lr", lambda v: isinstance(v, float)),
                       ("momentum_scheduled", lambda v: isinstance(v, bool))):
        values = extra.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != n_groups or not all(check(v) for v in values):
            raise ValueError(f"state_dict['warmup_fused']['{key}'] must be a list of {n_groups} valid entries, "
                             f"got {values!r}")
        out[key] = values
    for g, (source, lr) in enumerate(zip(out.get("lr_source", ()), out.get("host_lr", ()))):
        if source == "host":  # the value the group trains at
            check_lr(lr, f"state_dict['warmup_fused']['host_lr'][{g}]")
    return out


def load_state_dict(opt, state_dict: dict[str, Any]) -> None:
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise TypeError("state_dict must be an optimizer state_dict (a dict with 'state' and 'param_groups')")
    state_dict = dict(state_dict)
    for hook in opt._optimizer_load_state_dict_pre_hooks.values():
        result = hook(opt, state_dict)
        if result is not None:
            state_dict = result
    saved_groups = state_dict["param_groups"]
    groups = opt.param_groups
    if not isinstance(saved_groups, list) or len(saved_groups) != len(groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    for i, (g, sg) in enumerate(zip(groups, saved_groups)):
        if not isinstance(sg, dict) or len(sg.get("params", ())) != len(g["params"]):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        missing = [k for k in opt._spec.saved_keys if k not in sg]
        if missing:
            raise ValueError(f"param_groups[{i}] lacks {missing}, which every {opt._spec.name} checkpoint has (a "
                             "checkpoint of another optimizer?)")
    new_groups = _loaded_groups(opt, saved_groups)
    for i, group in enumerate(new_groups):
        opt._spec.check_group(group, f"param_groups[{i}]: ")
    id_map = {sid: p for sg, g in zip(saved_groups, groups) for sid, p in zip(sg["params"], g["params"])}
    saved_state = state_dict["state"]
    if not isinstance(saved_state, dict):
        raise TypeError("state_dict['state'] must be a dict")
    states = {}
    for sid, st in saved_state.items():
        if sid not in id_map:
            raise ValueError(f"state[{sid!r}] names no param of the checkpoint's param_groups")
        states[id_map[sid]] = _check_state(opt, sid, id_map[sid], st)
    extra = state_dict.get("warmup_fused")
    extra = None if extra is None else _check_extra(opt, extra, len(groups))
    if extra is not None:
        step = extra["sched_step"]
    else:  # a torch checkpoint: Adam's per-param steps count the optimizer steps; SGD's has none
        steps = [_step_value(f"state[{i}]", st["step"]) for i, st in enumerate(states.values()) if "step" in st]
        step = int(max(steps)) if steps else None
    for b in opt._devices.values():
        b.check_not_capturing("load_state_dict")
    if extra is None:  # a torch checkpoint: the current schedule goes on
        schedule = opt._schedule
    else:
        schedule = extra["schedule"]
        if schedule is not None and _same_program(opt, new_groups, schedule):
            schedule = opt._schedule  # keep the original (a relative one can still rebind)
    program = opt._program(schedule, new_groups)  # it binds to the loaded groups and fits every device
    # Everything is checked; from here on only writes.
    _apply(opt, new_groups, states, extra, step, schedule, program)
    for hook in opt._optimizer_load_state_dict_post_hooks.values():
        hook(opt)


def _loaded_groups(opt, saved_groups: list) -> list[dict]:
    """The param groups a checkpoint's become: its values over `defaults` (torch's lack our options), our params."""
    out = []
    for g, sg in zip(opt.param_groups, saved_groups):
        group = {**opt.defaults, **{k: v for k, v in sg.items() if k != "params"}}
        group["params"] = g["params"]
        if "param_names" in g and "param_names" not in group:
            group["param_names"] = g["param_names"]
        if type(opt).__name__ == "AdamW":
            group["decoupled_weight_decay"] = True
        out.append(group)
    return out


def _same_program(opt, groups: list, saved: Schedule) -> bool:
    """Whether the optimizer's schedule, bound to the loaded groups, is the checkpoint's bound schedule."""
    if opt._schedule is None:
        return False
    try:
        return opt._bind(opt._schedule, groups).state_dict() == saved.state_dict()
    except (TypeError, ValueError):
        return False


@torch.no_grad()  # a saved tensor that requires grad must not attach the state to its graph
def _into(existing, value: torch.Tensor, param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The saved value in `dtype`, the param's device and layout: copied into the existing state tensor when there
    is one (a captured graph holds its address), else into a new one."""
    if existing is None or existing.shape != param.shape or existing.dtype != dtype:
        existing = torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)
    existing.copy_(value)
    return existing


def _restore(opt, extra: dict, schedule, program: tuple | None = None) -> None:
    """Installs what _extra saved (after load_state_dict's checks, or when unpickling): the schedule, each group's LR
    source (a group that follows a host value shows it) and the optimizer-level options."""
    opt.max_grad_norm = extra.get("max_grad_norm", opt.max_grad_norm)
    opt._rng_seed = extra.get("rng_seed", opt._rng_seed)
    opt._rebind(schedule, program=program)
    for g, (group, src) in enumerate(zip(opt.param_groups, opt._sources)):
        if extra.get("lr_source") and _MODE_OF[extra["lr_source"][g]] == LAYOUT["lr_from_host"]:
            src.lr_mode, src.host_lr = LAYOUT["lr_from_host"], float(extra["host_lr"][g])
            dict.__setitem__(group, "lr", src.host_lr)
        if extra.get("momentum_scheduled") and not extra["momentum_scheduled"][g]:
            src.mom_scheduled = False
        opt._write_rows(g)
    opt._show(opt._host_step)


def _apply(opt, new_groups, states, extra, step, schedule, program) -> None:
    adam = opt._spec is ADAM_SPEC
    opt._ready = False  # our own writes into state and param_groups: no user-edit hooks
    masters = {p: bool(group.get("master_weights")) and p.dtype in (torch.float16, torch.bfloat16)
               for group in new_groups for p in group["params"]}
    for p in masters:
        old = opt.state.get(p, {})
        new = states.get(p, {})
        slot = opt._slot(p)
        fresh = {}
        if adam:
            slot.fill_(_step_value("step", new["step"]) if new else 0.0)
            if new:
                fresh["step"] = slot
        else:
            slot.fill_(1.0 if "momentum_buffer" in new else 0.0)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "master_weight"):
            if key in new:  # a param with a master has float32 states (a torch checkpoint's are converted)
                fresh[key] = _into(old.get(key), new[key], p, torch.float32 if masters[p] else p.dtype)
        if masters[p] and fresh and "master_weight" not in fresh:  # a torch checkpoint: the master starts as the param
            fresh["master_weight"] = _into(None, p.detach(), p, torch.float32)
        if fresh:
            opt.state[p] = fresh
        elif p in opt.state:
            del opt.state[p]
    for i, group in enumerate(new_groups):
        list.__setitem__(opt.param_groups, i, ParamGroup(group, opt))
    opt._ready = True
    opt._sources = [opt._host_source(g) for g in opt.param_groups]
    opt._structure += 1
    if step is not None:
        for b in opt._devices.values():
            b.set_counter(step)
        opt._host_step = step
    if extra is not None:
        return _restore(opt, extra, schedule, program)
    # A torch checkpoint: the current schedule goes on from the restored counter; a group whose saved lr differs
    # from it follows the saved lr, as torch would.
    current = opt._schedule
    lrs = [g["lr"] for g in opt.param_groups]
    opt._rebind(current, program=program)
    expected, _ = opt._host_values(opt._host_step)
    for g, (group, src, lr) in enumerate(zip(opt.param_groups, opt._sources, lrs)):
        if isinstance(lr, torch.Tensor) or src.lr_mode != LAYOUT["lr_from_schedule"]:
            continue
        if struct.pack("<d", float(lr)) != struct.pack("<d", expected[g]):
            if current is not None:
                warnings.warn(
                    f"param group {g}: the checkpoint's lr {float(lr)!r} is not the schedule's LR at step "
                    f"{opt._host_step} ({expected[g]!r}); the group now trains at the checkpoint's lr, as torch "
                    "would. To continue the schedule instead, call set_sched_step(<steps taken>) and set_schedule "
                    "(torch SGD checkpoints carry no step count).", stacklevel=3)
            src.lr_mode, src.host_lr = LAYOUT["lr_from_host"], float(lr)
            dict.__setitem__(group, "lr", float(lr))
            opt._write_rows(g)


# ------------------------------------------------------------------------------------------- pickle, deepcopy
def getstate(opt) -> dict[str, Any]:
    opt._sync_plateau()
    params = [p for g in opt.param_groups for p in g["params"]]
    return {
        "defaults": opt.defaults,
        "state": opt.state,
        "param_groups": [dict(g) for g in opt.param_groups],
        "warmup_fused": _extra(opt, _counter(opt)),
        "step_counts": [float(opt._step_slots[p]) if p in opt._step_slots else 0.0 for p in params],
    }


def setstate(opt, state: dict[str, Any]) -> None:
    extra = state.pop("warmup_fused", None)
    counts = state.pop("step_counts", None)
    if extra is None:
        raise ValueError("this pickle of a warmup_fused optimizer lacks its 'warmup_fused' state")
    torch.optim.Optimizer.__setstate__(opt, state)
    opt._ready = False
    opt._wrap_containers()
    opt._init_host(extra["sched_step"])
    opt.max_grad_norm = None
    opt._ready = True
    _restore(opt, extra, None if extra["schedule"] is None else Schedule.from_state_dict(extra["schedule"]))
    for p, count in zip([p for g in opt.param_groups for p in g["params"]], counts):
        if count or "step" in opt.state.get(p, {}):
            opt._slot(p).fill_(count)
        if "step" in opt.state.get(p, {}):
            opt.state[p]["step"] = opt._slot(p)
