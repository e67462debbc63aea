"""Hyperparameters of the fused optimizers: validation, their device columns, and the param-group dict that sees
every write.

One set of checks serves the constructors, ``add_param_group``, writes into ``param_groups`` and
``load_state_dict``: a bad value is a TypeError/ValueError naming the key, raised before anything changes.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import torch

from ._ops import LAYOUT


def _number(key: str, value, *, lo: float = 0.0, hi: float | None = None, hi_open: bool = True,
            tensor_ok: bool = True, label: str | None = None) -> float:
    """A finite float in [lo, hi) (or [lo, hi]); a one-element floating tensor counts as its value, as in torch."""
    if isinstance(value, torch.Tensor):
        if not tensor_ok:
            raise TypeError(f"{key} must be a number, got a Tensor")
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{key}: a Tensor {key} must be a floating tensor with one element, got "
                             f"{value.dtype} with {value.numel()} elements")
        value = float(value.detach().reshape(()).item())
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number, got {type(value).__name__}")
    value = float(value)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if not math.isfinite(value) or value < lo or too_high:
        bound = f">= {lo}" + ("" if hi is None else f" and {'<' if hi_open else '<='} {hi}")
        raise ValueError(f"Invalid {label or key + ' value'}: {value} ({key} must be finite and {bound})")
    return value


def check_lr(value, key: str = "lr"):
    """A float lr or a one-element floating tensor lr (kept as the tensor: torch reads it every step)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{key}: Tensor lr must be 1-element and floating, got {value.dtype} with "
                             f"{value.numel()} elements")
        if value.requires_grad:
            raise ValueError(f"{key}: a Tensor lr must not require grad (differentiable optimizers are not supported)")
        if value.device.type == "cpu":  # reading a device tensor here would sync; it is checked when read
            _number(key, value, label="learning rate")
        return value
    return _number(key, value, label="learning rate")


def check_max_grad_norm(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                              not math.isfinite(value) or value <= 0):
        raise ValueError(f"max_grad_norm must be None or a finite number > 0, got {value!r}")
    return None if value is None else float(value)


def _flag(key: str, value) -> bool:
    if isinstance(value, torch.Tensor) or not isinstance(value, (bool, int)) or value not in (0, 1):
        raise TypeError(f"{key} must be a bool, got {value!r}")
    return bool(value)


def _betas(key: str, value) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{key} must be a pair (beta1, beta2), got {value!r}")
    if isinstance(value[0], torch.Tensor) != isinstance(value[1], torch.Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, b in enumerate(value):
        try:
            _number(f"betas[{i}]", b, hi=1.0)
        except ValueError as e:
            raise ValueError(f"Invalid beta parameter at index {i}: {e}") from None
    return tuple(value)


def _accepted(key: str, allowed: tuple) -> Callable:
    """torch's implementation switches (fused, foreach, capturable, differentiable): accepted, no effect, except
    values that ask for something we do not do."""

    def check(value):
        # by type first: `in` compares with ==, which a Tensor answers elementwise
        if not (value is None or (isinstance(value, (bool, int)) and value in (0, 1))) or value not in allowed:
            raise ValueError(f"{key}={value!r} is not supported: warmup_fused's optimizers are always fused and "
                             f"capturable (accepted values: {list(allowed)})")
        return value

    return check


_LOW_PRECISION = {
    "master_weights": lambda v: _flag("master_weights", v),
    "stochastic_rounding": lambda v: _flag("stochastic_rounding", v),
}

# The base LR a relative schedule scales (torch's schedulers write it); a Tensor when the lr is one, as in torch.
_INITIAL_LR = {"initial_lr": lambda v: check_lr(v, "initial_lr")}

_TORCH_SWITCHES = {
    "foreach": _accepted("foreach", (None, False, True)),
    "fused": _accepted("fused", (None, True, False)),
    "capturable": _accepted("capturable", (False, True)),
    "differentiable": _accepted("differentiable", (False,)),
}


class Spec:
    """An optimizer's hyperparameters: how each group key is validated and which device column it fills."""

    def __init__(self, name: str, cols: int, checks: dict[str, Callable], columns: dict[str, int],
                 momentum_key: str, saved_keys: tuple):
        self.name, self.cols, self.checks, self.columns, self.momentum_key = name, cols, checks, columns, momentum_key
        self.saved_keys = saved_keys  # what every torch checkpoint of this optimizer has in each param group

    def check_group(self, group: dict, where: str = "") -> None:
        """Validates every hyperparameter of a group dict (raises naming the key)."""
        for key, check in self.checks.items():
            if key in group:
                try:
                    check(group[key])
                except (TypeError, ValueError) as e:
                    raise type(e)(f"{where}{e}") from None
        self.check_combination(group, where)

    def check_combination(self, group: dict, where: str = "") -> None:
        if group.get("fused") and group.get("foreach"):
            raise ValueError(f"{where}fused=True and foreach=True cannot be set together (as in torch)")
        if group.get("master_weights") and group.get("stochastic_rounding"):
            raise ValueError(f"{where}master_weights and stochastic_rounding exclude each other: with a float32 master "
                             "the param is the master rounded to nearest")
        if self.name == "SGD" and group.get("nesterov") and (
                momentum_value(group) <= 0 or as_float(group.get("dampening", 0.0)) != 0):
            raise ValueError(f"{where}Nesterov momentum requires a momentum and zero dampening")

    def momentum(self, group: dict):
        """The group's beta1 (Adam) or momentum (SGD), as stored (a float or a tensor)."""
        return group["betas"][0] if self.momentum_key == "betas" else group["momentum"]

    def row(self, group: dict) -> list[float]:
        """The group's fixed columns (everything but the LR and momentum sources) as floats."""
        row = [0.0] * self.cols
        for key, col in self.columns.items():
            row[col] = as_float(group[key]) if not isinstance(group[key], bool) else float(group[key])
        if self.name != "SGD":
            row[LAYOUT["beta2"]] = as_float(group["betas"][1])
        return row


def momentum_value(group: dict) -> float:
    return as_float(group.get("momentum", 0.0))


def as_float(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


ADAM_SPEC = Spec(
    "Adam", LAYOUT["adam_cols"],
    {"lr": check_lr, "betas": lambda v: _betas("betas", v), "eps": lambda v: _number("eps", v, label="epsilon value"),
     "weight_decay": lambda v: _number("weight_decay", v), "amsgrad": lambda v: _flag("amsgrad", v),
     "maximize": lambda v: _flag("maximize", v),
     "decoupled_weight_decay": lambda v: _flag("decoupled_weight_decay", v), **_LOW_PRECISION, **_TORCH_SWITCHES,
     **_INITIAL_LR},
    {"eps": LAYOUT["eps"], "weight_decay": LAYOUT["weight_decay"], "amsgrad": LAYOUT["amsgrad"],
     "maximize": LAYOUT["maximize"], "decoupled_weight_decay": LAYOUT["decoupled"],
     "stochastic_rounding": LAYOUT["stochastic"]},
    "betas", ("params", "lr", "betas", "eps", "weight_decay", "amsgrad"))

SGD_SPEC = Spec(
    "SGD", LAYOUT["sgd_cols"],
    {"lr": check_lr, "momentum": lambda v: _number("momentum", v), "dampening": lambda v: _number("dampening", v, lo=-math.inf),
     "weight_decay": lambda v: _number("weight_decay", v), "nesterov": lambda v: _flag("nesterov", v),
     "maximize": lambda v: _flag("maximize", v), **_LOW_PRECISION, **_TORCH_SWITCHES, **_INITIAL_LR},
    {"dampening": LAYOUT["dampening"], "weight_decay": LAYOUT["sgd_weight_decay"], "nesterov": LAYOUT["nesterov"],
     "maximize": LAYOUT["sgd_maximize"], "stochastic_rounding": LAYOUT["stochastic"]},
    "momentum", ("params", "lr", "momentum", "dampening", "nesterov", "weight_decay"))


class ParamGroup(dict):
    """A param group that tells its optimizer about every write (``group['lr'] = x``, a scheduler's update, an
    edit of betas or weight decay), so the write is validated and reaches the device at once, in place.

    Pickles and deep-copies as a plain dict; the optimizer re-wraps its groups when it is restored.
    """

    __slots__ = ("_owner",)

    def __init__(self, data: dict, owner):
        super().__init__(data)
        self._owner = weakref.ref(owner)

    def _live_owner(self):
        return self._owner() if self._owner is not None else None

    def __setitem__(self, key, value):
        owner = self._live_owner()
        if owner is None:
            return dict.__setitem__(self, key, value)
        owner._on_group_write(self, {key: value})

    def update(self, *args, **kwargs):
        owner = self._live_owner()
        if owner is None:
            return dict.update(self, *args, **kwargs)
        owner._on_group_write(self, dict(*args, **kwargs))  # every write checked before any is applied

    def __ior__(self, other):
        self.update(other)
        return self

    def _check_removal(self, keys) -> None:
        owner = self._live_owner()
        used = [] if owner is None or not owner._ready else [k for k in keys if k in owner._spec.checks or k == "params"]
        if used:
            raise TypeError(f"param group: {used[0]!r} cannot be removed: the optimizer uses it (write another value "
                            "instead)")

    def __delitem__(self, key):
        self._check_removal([key])
        dict.__delitem__(self, key)

    def pop(self, key, *default):
        if key in self:
            self._check_removal([key])
        return dict.pop(self, key, *default)

    def popitem(self):
        if self:
            self._check_removal([next(reversed(self.keys()))])
        return dict.popitem(self)

    def clear(self):
        self._check_removal(list(self))
        dict.clear(self)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __reduce__(self):
        return dict, (dict(self),)

    def __copy__(self):
        return dict(self)

    def __deepcopy__(self, memo):
        import copy

        return copy.deepcopy(dict(self), memo)


class GroupList(list):
    """optimizer.param_groups: ``append`` is ``add_param_group`` (checked); replacing, inserting, removing or
    reordering groups is refused, since each group's schedule, device rows and states follow its position."""

    __slots__ = ("_owner", "_appending")

    def __init__(self, groups, owner):
        super().__init__(groups)
        self._owner, self._appending = weakref.ref(owner), False

    def append(self, group):
        if self._appending or self._owner() is None:
            return list.append(self, group)
        self._owner().add_param_group(group)

    def _refuse(self, *args, **kwargs):
        raise TypeError("param_groups: add groups with add_param_group (or append) and edit a group's keys in place "
                        "(param_groups[g]['lr'] = ...); replacing, inserting, removing or reordering groups is not "
                        "supported")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = insert = extend = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self):
        return list, (list(self),)


__all__ = ["ADAM_SPEC", "SGD_SPEC", "Spec", "ParamGroup", "GroupList", "check_lr", "check_max_grad_norm",
           "as_float"]
