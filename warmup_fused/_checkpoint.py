"""Checkpoints of the fused optimizers: torch's layout plus what a resume needs, in both directions.

``state_dict()`` is torch's (``state[i]`` with ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` /
``momentum_buffer``; ``param_groups`` with every hyperparameter, ``lr`` the LR of the next step and ``initial_lr``
the base LR, as a torch scheduler leaves them) plus ``state_dict()['warmup_fused']``: the schedule counter, the
schedule itself (so a fresh optimizer continues without ``schedule=``) and each group's LR source. torch's
optimizers load it; ours load torch's. ``load_state_dict`` checks everything before it changes anything, and
writes into the tensors a captured CUDA graph holds where they exist.

Distributed checkpoints (``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``) keep only ``state``
and ``param_groups``, so every param group also carries ``param_groups[g]['warmup_fused']``: the counter, the
group's LR source and the optimizer-level options, with the schedule as a fingerprint (its tables can be large and
DCP's flattened form repeats each group value once per param): the loading optimizer must have that schedule. A
reduce_on_plateau block is state, so it travels whole (a few words) and the fingerprint leaves it out.
The live param groups hold the key too (None): DCP's flattened form restores only keys the live groups have.
"""
from __future__ import annotations

import hashlib
import math
import struct
import warnings
from typing import Any

import torch

from ._hparams import ADAM_SPEC, ParamGroup, as_float, check_lr, check_max_grad_norm
from ._ops import LAYOUT
from .schedules import Schedule

FORMAT = 1
GROUP_KEY = "warmup_fused"  # param_groups[g][GROUP_KEY]: what a distributed checkpoint keeps of _extra
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


def _plateau_words(schedule_state: dict) -> slice | None:
    """Where a schedule's reduce_on_plateau block (its state) lies in state['vals']."""
    offset = schedule_state.get("plateau_offset")
    if offset is None:
        return None
    header = LAYOUT["plateau_header"]
    return slice(offset, offset + header + int(schedule_state["vals"][offset + header - 1]) *
                 LAYOUT["plateau_group_words"])


def _fingerprint(schedule_state: dict | None) -> str | None:
    """What a distributed checkpoint keeps of a bound schedule's state_dict(): a hash of everything but its name
    and its plateau block."""
    if schedule_state is None:
        return None
    fields = {k: v for k, v in schedule_state.items() if k != "name"}
    words = _plateau_words(schedule_state)
    if words is not None:
        fields["vals"] = list(fields["vals"])
        fields["vals"][words] = [0.0] * (words.stop - words.start)
    return "sha256:" + hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()


# Every group's entry: _extra's values as they are, the schedule's fingerprint and plateau block (the same in
# every group), then the group's own values.
_AS_SAVED = ("format", "sched_step", "max_grad_norm", "rng_seed")
_SHARED = (*_AS_SAVED, "schedule", "plateau")
_PER_GROUP = (("lr_source", lambda v: v in _MODE_OF), ("host_lr", lambda v: isinstance(v, float)),
              ("momentum_scheduled", lambda v: isinstance(v, bool)))


def _group_entries(extra: dict) -> list[dict]:
    """_extra split into one entry per param group, the schedule replaced by its fingerprint and plateau block."""
    schedule = extra["schedule"]
    words = None if schedule is None else _plateau_words(schedule)
    shared = {**{k: extra[k] for k in _AS_SAVED}, "schedule": _fingerprint(schedule),
              "plateau": None if words is None else schedule["vals"][words]}
    return [{**shared, **{k: extra[k][g] for k, _ in _PER_GROUP}} for g in range(len(extra["lr_source"]))]


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
    for packed, entry in zip(sd["param_groups"], _group_entries(sd["warmup_fused"])):
        packed[GROUP_KEY] = entry
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
    if _layout(value) != _layout(param):
        raise ValueError(f"{where}: {key} is a {type(value).__name__} {_layout(value) or ''} but its param is a "
                         f"{type(param).__name__} {_layout(param) or ''}: states are laid out as their params "
                         "(set_optimizer_state_dict shards a full state_dict)")


def _layout(t: torch.Tensor) -> tuple | None:
    """A DTensor's mesh and placements; None for a plain tensor."""
    from .optim import _is_dtensor

    return (t.device_mesh, tuple(t.placements)) if _is_dtensor(t) else None


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


def _check_extra(opt, extra, n_groups: int, where: str = "state_dict['warmup_fused']") -> dict:
    if not isinstance(extra, dict):
        raise TypeError(f"{where} must be a dict, got {type(extra).__name__}")
    step = extra.get("sched_step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_COUNTER:
        raise ValueError(f"{where}['sched_step'] must be an int in [0, 2**53 - 2], got {step!r}")
    out = {"sched_step": step, "schedule": None}
    if extra.get("schedule") is not None:
        try:
            out["schedule"] = Schedule.from_state_dict(extra["schedule"])
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}['schedule']: {e}") from None
    try:
        out["max_grad_norm"] = check_max_grad_norm(extra.get("max_grad_norm"))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    seed = out["rng_seed"] = extra.get("rng_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"{where}['rng_seed'] must be None or an int in [0, 2**63), got {seed!r}")
    for key, check in _PER_GROUP:
        values = extra.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != n_groups or not all(check(v) for v in values):
            raise ValueError(f"{where}['{key}'] must be a list of {n_groups} valid entries, got {values!r}")
        out[key] = values
    for g, (source, lr) in enumerate(zip(out.get("lr_source", ()), out.get("host_lr", ()))):
        if source == "host":  # the value the group trains at
            check_lr(lr, f"{where}['host_lr'][{g}]")
    return out


def _check_group_entries(opt, saved_groups: list) -> dict | None:
    """What the param groups' entries say (the form _check_extra returns), for a state_dict without the top-level
    entry (a distributed checkpoint's); None when they have none (torch's), or when a group's lr is no longer
    the one its entry was written with (a torch optimizer loaded our checkpoint, trained on and saved its own)."""
    entries = [sg.get(GROUP_KEY) for sg in saved_groups]
    if all(e is None for e in entries):
        return None
    for g, entry in enumerate(entries):
        where = f"param_groups[{g}]['{GROUP_KEY}']"
        if not isinstance(entry, dict):
            raise TypeError(f"{where} must be a dict (every group has one, or none), got {type(entry).__name__}")
        for key in _SHARED:
            if entry.get(key) != entries[0].get(key):
                raise ValueError(f"{where}['{key}'] is {entry.get(key)!r} but param_groups[0]'s is "
                                 f"{entries[0].get(key)!r}: the entries of one checkpoint agree")
        for key, check in _PER_GROUP:
            if not check(entry.get(key)):
                raise ValueError(f"{where}['{key}'] is not a valid value: {entry.get(key)!r}")
    where = f"param_groups[0]['{GROUP_KEY}']"
    extra = {k: entries[0].get(k) for k in _AS_SAVED}
    extra.update({k: [e[k] for e in entries] for k, _ in _PER_GROUP})
    out = _check_extra(opt, extra, len(entries), where)
    expected = list(out["host_lr"])  # the lr each group was saved with (tensor lrs are not compared)
    if entries[0].get("schedule") is not None:
        out["schedule"], bound = _own_schedule(opt, entries[0], saved_groups, where)
        scheduled = bound.lr_at(min(out["sched_step"], 2**53 - 1)).reshape(-1).tolist()
        expected = [lr if source == "schedule" else e for lr, e, source in zip(scheduled, expected, out["lr_source"])]
    for g, (sg, source, lr) in enumerate(zip(saved_groups, out["lr_source"], expected)):
        if source != "tensor" and not _same_bits(sg.get("lr"), lr):
            warnings.warn(f"param group {g}: its lr {lr!r} is not the one its '{GROUP_KEY}' entry was saved with "
                          "(it was changed after our optimizer wrote it, e.g. by a torch optimizer that loaded it and "
                          "trained on): the checkpoint is loaded as a torch checkpoint", stacklevel=4)
            return None
    return out


def _own_schedule(opt, entry: dict, saved_groups: list, where: str) -> tuple:
    """The optimizer's schedule when it is the one the entry names (its fingerprint), with the entry's plateau
    state; and that schedule bound to the checkpoint's groups."""
    bound = None if opt._schedule is None else opt._bind(opt._schedule, saved_groups)
    state = None if bound is None else bound.state_dict()
    if state is None or _fingerprint(state) != entry["schedule"]:
        raise ValueError(
            f"{where}['schedule']: the checkpoint's run followed a schedule other than this optimizer's "
            f"({'none' if bound is None else bound.name}); a distributed checkpoint keeps only its fingerprint, so "
            "build the optimizer with the schedule it was trained with (schedule= or set_schedule) before loading")
    words, plateau = _plateau_words(state), entry.get("plateau")
    if words is None and plateau is None:
        return opt._schedule, bound
    if words is None or not isinstance(plateau, list) or len(plateau) != words.stop - words.start or not all(
            isinstance(v, float) for v in plateau):
        raise ValueError(f"{where}['plateau'] must be the schedule's reduce_on_plateau block "
                         f"({'none' if words is None else words.stop - words.start} floats), got {plateau!r}")
    state["vals"][words] = plateau
    restored = Schedule.from_state_dict(state)  # its plateau state is the checkpoint's
    return restored, restored


def _same_bits(a, b) -> bool:
    return (isinstance(a, (int, float)) and not isinstance(a, bool)
            and struct.pack("<d", float(a)) == struct.pack("<d", float(b)))


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
    extra = _check_group_entries(opt, saved_groups) if extra is None else _check_extra(opt, extra, len(groups))
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
        group[GROUP_KEY] = None  # what the checkpoint's entry said is in `extra`
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
