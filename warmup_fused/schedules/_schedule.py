"""The Schedule object: phases per param group, compiled to the program csrc/schedule.h evaluates."""
from __future__ import annotations

import copy
import math
import numbers
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from .._expr import _BASE, _STEP_LEAVES, BASE, Expr, Op, lift

# Steps are exact in float64 below 2**53; beyond, int->double conversion would round.
MAX_STEP = 2**53
# lr_at / momentum_at return at most this many values per call (1 GiB of float64).
MAX_LR_AT_VALUES = 2**27
# repeat_mul anchor blocks (must match csrc/schedule.h): a value every REPEAT_ANCHOR_EVERY multiplications,
# for products that reach their fixed point within REPEAT_MAX_COUNT multiplications.
REPEAT_ANCHOR_EVERY = 256
REPEAT_MAX_COUNT = 2**26
_REPEAT_HEADER = 3
_HEADER, _GROUP, _PHASE = 1, 3, 5  # words of the program header, of a group header, of a phase
_STATE_FORMAT, _STATE_VERSION = "warmup_fused.Schedule", 1


@dataclass(frozen=True)
class Recorded:
    """A phase whose per-group values were recorded from a reference (e.g. a recursive torch scheduler).

    ``values[g][i]`` is group g's value (absolute LR, or momentum) at local epoch i. Past the end the last
    value holds.
    """

    values: tuple  # tuple[tuple[float, ...], ...], one row per group


Body = Union[Expr, Recorded]
Phases = Sequence[Sequence[tuple[int, Body]]]


def _check_lr(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def lr_list(name: str, value) -> tuple:
    """One LR or a list of them (one per group) as a tuple of floats; a tensor is refused by name."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Python number or a list of them, got a Tensor (use .tolist())")
    if isinstance(value, (numbers.Real, str)) or not isinstance(value, Sequence):
        if isinstance(value, numbers.Real):
            return (_check_lr(name, value),)
        raise TypeError(f"{name} must be a number or a list of numbers, got {type(value).__name__}")
    lrs = tuple(_check_lr(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not lrs:
        raise ValueError(f"{name} must name at least one param group")
    return lrs


def _bits_equal(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(struct.pack("<d", x) == struct.pack("<d", y) for x, y in zip(a, b))


def _channel(name: str, phases, groups: int) -> list:
    """Per-group phase lists of one channel (LR or momentum), checked; one list applies to every group."""
    if isinstance(phases, (str, Expr, Recorded)) or not isinstance(phases, Sequence):
        raise TypeError(f"{name} must be a list of phase lists (one per group), got {type(phases).__name__}")
    phases = [list(p) for p in phases]
    if len(phases) == 1 and groups > 1:
        phases = phases * groups
    if len(phases) != groups:
        raise ValueError(f"{name}: {len(phases)} phase lists for {groups} param groups")
    for g, group in enumerate(phases):
        for item in group:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"{name}: group {g}: a phase must be a (begin, body) pair, got {item!r}")
            begin, body = item
            if isinstance(begin, bool) or not isinstance(begin, int) or not 0 <= begin < 2**63:
                raise ValueError(f"{name}: group {g}: a phase begin must be an int in [0, 2**63), got {begin!r}")
            if isinstance(body, Recorded):
                _check_recorded(name, body, groups)
            elif not isinstance(body, Expr):
                raise TypeError(f"{name}: group {g}: a phase body must be an Expr or Recorded, got "
                                f"{type(body).__name__}")
            elif body.depth() > 16:
                raise ValueError(f"{name}: group {g}: expression too deep for the device evaluator (16 stack slots)")
        if not group or group[0][0] != 0:
            raise ValueError(f"{name}: group {g}: the first phase must begin at step 0")
        for (b0, _), (b1, _) in zip(group, group[1:]):
            if not b1 > b0:
                raise ValueError(f"{name}: group {g}: phase begins must increase, got {b0} then {b1}")
    return phases


def _check_recorded(name: str, body: Recorded, groups: int) -> None:
    if len(body.values) != groups:
        raise ValueError(f"{name}: recorded values have {len(body.values)} rows for {groups} groups")
    for g, row in enumerate(body.values):
        if not len(row):
            raise ValueError(f"{name}: recorded values of group {g} are empty")
        for i, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name}: recorded value {v!r} of group {g} at local step {i} is not a finite number")


def _repeat(channel, n: int) -> list:
    """A 1-group channel for n groups (recorded rows repeated)."""
    return [[(b, Recorded(body.values * n) if isinstance(body, Recorded) else body) for b, body in channel[0]]] * n


def _has_recorded(channel) -> bool:
    return any(isinstance(body, Recorded) for group in channel for _, body in group)


class Schedule:
    """A learning-rate schedule evaluated on the device from a step counter.

    A schedule is a list of phases per param group. A phase begins at an epoch (``steps_per_epoch``
    steps make an epoch; 1 by default) and is either an expression of the step (see ``warmup_fused._expr``)
    or values recorded from a reference scheduler. Build one with the constructors in
    ``warmup_fused.schedules`` or with ``from_torch``.

    **Relative or absolute.** ``base_lrs=None`` (and a native constructor called without ``base_lr``) makes a
    *relative* schedule: BASE is 1.0 in every group, a placeholder that an optimizer binds to each param
    group's ``lr`` with ``with_base_lrs``. Explicit ``base_lrs`` (and every ``from_torch`` result) make an
    *absolute* schedule, whose LRs an optimizer uses as they are. Recorded phases hold absolute LRs, so they
    need ``base_lrs``.

    **Momentum channel.** ``momentum`` (per-group phases in the format of ``phases``, absolute values: BASE
    is refused) gives a second value per group and step: SGD's ``momentum`` or Adam's ``betas[0]``, as
    OneCycleLR and CyclicLR cycle them. The compiled program then holds ``2 * num_groups`` groups: the LRs in
    rows ``[0, num_groups)``, the momentum in rows ``[num_groups, 2 * num_groups)``.

    **Exact mode** (the default): phases that need cos/pow/exp/log/tanh are served from a float64 table
    computed once on the host with the same libm as Python, for every step below ``horizon``; the kernel
    computes the rest in closed form. Past ``horizon`` those phases use the device's own math (bit-identical
    on CPU, within the documented ulps on CUDA). ``exact=False`` never builds such tables. ``repeat_mul``
    (torch's recursive ``lr *= gamma``) stores one anchor value per 256 multiplications up to its fixed
    point, in both modes, so that no step costs more than 255 multiplications. ``table_bytes`` reports
    both (8 bytes per value, per device the schedule runs on).

    Steps run from 0 to 2**53 - 1. The references do integer arithmetic on the step (``step + shift``,
    ``total - step``) that the device does in float64: exact while those intermediates stay below 2**53
    (tests go to 2**52), far beyond any training run.

    ``state_dict()`` / ``from_state_dict()`` save and restore the compiled program (plain Python values);
    a restored schedule evaluates bit-identically but keeps no phases, so it binds only to its own base LRs
    and cannot enter ``sequential`` / ``chained``.
    """

    def __init__(
        self,
        phases: Phases,
        base_lrs: Sequence[float] | None = None,
        *,
        momentum: Phases | None = None,
        steps_per_epoch: int = 1,
        horizon: int | None = None,
        exact: bool = True,
        name: str = "schedule",
    ):
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0):
            raise ValueError(f"horizon must be None or an int >= 0, got {horizon!r}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        relative = base_lrs is None
        if relative:
            counts = {len(phases) if isinstance(phases, Sequence) else 1}
            if momentum is not None and isinstance(momentum, Sequence):
                counts.add(len(momentum))
            groups = max(counts)
            base_lrs = (1.0,) * groups
        else:
            if isinstance(base_lrs, numbers.Real):
                raise TypeError("base_lrs must be a list of numbers (one per group) or None, got a number")
            base_lrs = lr_list("base_lrs", base_lrs)
        self._phases = _channel("phases", phases, len(base_lrs))
        self._momentum = None if momentum is None else _channel("momentum", momentum, len(base_lrs))
        if relative and _has_recorded(self._phases):
            raise ValueError("base_lrs: recorded phases hold absolute LRs; pass the base_lrs they were recorded "
                             "for (a schedule without base_lrs is relative)")
        self.base_lrs = base_lrs
        self.steps_per_epoch = steps_per_epoch
        self.horizon = horizon
        self.exact = bool(exact)
        self.name = name
        self._relative = relative
        self._has_momentum = self._momentum is not None
        self._program = self._compile()
        self._finish()

    def _finish(self) -> None:
        self._table_entries = _table_entries(*self._program)
        self._device_programs: dict = {}

    # ----------------------------------------------------------------- public
    @property
    def num_groups(self) -> int:
        return len(self.base_lrs)

    @property
    def relative(self) -> bool:
        """True when the base LRs are placeholders (1.0) for the optimizer's param group LRs."""
        return self._relative

    @property
    def has_momentum(self) -> bool:
        """True when the schedule also drives momentum / beta1 (program rows [num_groups, 2 * num_groups))."""
        return self._has_momentum

    @property
    def table_bytes(self) -> int:
        """Bytes of float64 tables (exact-mode and recorded values, repeat_mul anchors) on each device."""
        return 8 * self._table_entries

    def with_base_lrs(self, base_lrs: Sequence[float]) -> "Schedule":
        """The same schedule, absolute, for these base LRs (one per group, or any number for a 1-group schedule).

        Closed-form phases are rebuilt for the new base LRs; recorded phases hold absolute values and accept
        only their own base LRs (bit for bit; a 1-group schedule may be repeated over several groups with its
        own LR), as does a schedule loaded from a state_dict (not repeated). The momentum channel is kept.
        """
        lrs = lr_list("base_lrs", base_lrs)
        n = len(lrs)
        if n != self.num_groups and self.num_groups != 1:
            raise ValueError(f"base_lrs: this schedule has {self.num_groups} groups, got {n} base LRs")
        own = _bits_equal(lrs, self.base_lrs * (n if self.num_groups == 1 else 1))
        if own and n == self.num_groups:
            return self._absolute_copy() if self.relative else self
        if self._phases is None:
            raise ValueError(
                f"base_lrs: {self.name} was loaded from a state_dict, which keeps only its compiled program, so it "
                f"binds only to its own base LRs {list(self.base_lrs)}, not to {list(lrs)} (rebuild it from its "
                "constructor to rebind it)"
            )
        if not own and _has_recorded(self._phases):
            raise ValueError(
                f"base_lrs: {self.name} holds values recorded for base LRs {list(self.base_lrs)}; "
                f"it cannot be rescaled to {list(lrs)}"
            )
        phases, momentum = self._phases, self._momentum
        if n != self.num_groups:
            phases, momentum = _repeat(phases, n), momentum and _repeat(momentum, n)
        return Schedule(phases, lrs, momentum=momentum, steps_per_epoch=self.steps_per_epoch,
                        horizon=self.horizon, exact=self.exact, name=self.name)

    def program(self, device: Union[str, torch.device] = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The (ints, vals) program tensors on ``device``, copied there once and cached.

        The program holds ``num_groups`` groups, or ``2 * num_groups`` with a momentum channel (the LRs
        first, then the momentum of each group).
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._device_programs:
            ints, vals = self._program
            self._device_programs[device] = (ints.to(device), vals.to(device))
        return self._device_programs[device]

    def lr_at(self, steps: Union[int, range, torch.Tensor], device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """LRs computed by the extension's compiled code on ``device``: float64 ``[num_groups, len(steps)]``."""
        return self._rows_at(steps, device)[: self.num_groups]

    def momentum_at(self, steps: Union[int, range, torch.Tensor],
                    device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """Momentum (or beta1) values on ``device``: float64 ``[num_groups, len(steps)]``."""
        if not self.has_momentum:
            raise ValueError(f"{self.name} has no momentum channel (has_momentum is False)")
        return self._rows_at(steps, device)[self.num_groups:]

    def _rows_at(self, steps, device) -> torch.Tensor:
        rows = int(self._program[0][0])
        steps_t = _steps_tensor(steps, rows)
        ints, vals = self.program(device)
        from .. import _ops

        return _ops.lr_at(ints, vals, steps_t.to(ints.device), rows)

    def __repr__(self) -> str:
        mode = "exact" if self.exact else "fast"
        kind = "relative" if self.relative else "absolute"
        phases = int(self._program[0][_HEADER + 1])
        extra = ", momentum" if self.has_momentum else ""
        return (f"Schedule({self.name}, groups={self.num_groups}, {kind}{extra}, phases={phases}, {mode}, "
                f"horizon={self.horizon}, table_bytes={self.table_bytes})")

    # ------------------------------------------------------------ serialising
    def state_dict(self) -> dict:
        """The compiled schedule as plain Python values (str, int, float, bool, list): enough to evaluate it
        bit-identically after ``from_state_dict`` (torch.save / torch.load(weights_only=True) safe)."""
        ints, vals = self._program
        out = {
            "format": _STATE_FORMAT, "version": _STATE_VERSION, "name": self.name, "relative": self.relative,
            "base_lrs": list(self.base_lrs), "has_momentum": self.has_momentum,
            "steps_per_epoch": self.steps_per_epoch, "exact": self.exact,
            "ints": ints.tolist(), "vals": vals.tolist(),
        }
        if self.horizon is not None:
            out["horizon"] = self.horizon
        if self.plateau_offset is not None:
            out["plateau_offset"] = self.plateau_offset
        return out

    @classmethod
    def from_state_dict(cls, state: dict) -> "Schedule":
        """A schedule from ``state_dict()``'s output; raises ValueError naming what is wrong with it."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from Schedule.state_dict(), got {type(state).__name__}")
        fields = {"format": str, "version": int, "name": str, "relative": bool, "base_lrs": list,
                  "has_momentum": bool, "steps_per_epoch": int, "exact": bool, "ints": list, "vals": list}
        missing = sorted(set(fields) - set(state))
        unknown = sorted(set(state) - set(fields) - {"horizon", "plateau_offset"})
        if missing or unknown:
            raise ValueError(f"state: missing keys {missing}, unknown keys {unknown}")
        for key, kind in fields.items():
            if type(state[key]) is not kind:
                raise ValueError(f"state['{key}'] must be a {kind.__name__}, got {type(state[key]).__name__}")
        if state["format"] != _STATE_FORMAT or state["version"] != _STATE_VERSION:
            raise ValueError(f"state: format {state['format']!r} version {state['version']} is not "
                             f"{_STATE_FORMAT!r} version {_STATE_VERSION}")
        horizon = state.get("horizon")
        if horizon is not None and (type(horizon) is not int or horizon < 0):
            raise ValueError(f"state['horizon'] must be an int >= 0, got {horizon!r}")
        if state["steps_per_epoch"] < 1:
            raise ValueError(f"state['steps_per_epoch'] must be >= 1, got {state['steps_per_epoch']}")
        if any(type(v) is not float for v in state["base_lrs"]):
            raise ValueError("state['base_lrs'] must hold floats")
        base_lrs = lr_list("state['base_lrs']", state["base_lrs"])
        if state["relative"] and any(b != 1.0 for b in base_lrs):
            raise ValueError(f"state['base_lrs'] of a relative schedule must be 1.0, got {list(base_lrs)}")
        if not state["ints"] or any(type(v) is not int or not -2**63 <= v < 2**63 for v in state["ints"]):
            raise ValueError("state['ints'] must be a non-empty list of int64 values")
        if any(type(v) is not float for v in state["vals"]):
            raise ValueError("state['vals'] must be a list of floats")
        ints = torch.tensor(state["ints"], dtype=torch.int64)
        vals = torch.tensor(state["vals"], dtype=torch.float64)
        rows = len(base_lrs) * (2 if state["has_momentum"] else 1)
        if int(ints[0]) != rows:
            raise ValueError(f"state['ints'] holds {int(ints[0])} program groups, base_lrs and has_momentum make "
                             f"{rows}")
        from .. import _ops

        _ops.validate_program(ints, vals)
        spe = {int(ints[_HEADER + _GROUP * g + 2]) for g in range(rows)}
        if spe != {state["steps_per_epoch"]}:
            raise ValueError(f"state['steps_per_epoch'] is {state['steps_per_epoch']}, the program's is {sorted(spe)}")
        self = cls.__new__(cls)
        self._phases = self._momentum = None
        self.base_lrs, self.steps_per_epoch, self.horizon = base_lrs, state["steps_per_epoch"], horizon
        self.exact, self.name = state["exact"], state["name"]
        self._relative, self._has_momentum = state["relative"], state["has_momentum"]
        plateau = state.get("plateau_offset")
        if plateau is not None and (type(plateau) is not int or not 0 <= plateau < len(state["vals"])):
            raise ValueError(f"state['plateau_offset'] must be an index into state['vals'], got {plateau!r}")
        self.plateau_offset = plateau
        self._program = (ints, vals)
        self._finish()
        return self

    def _absolute_copy(self) -> "Schedule":
        out = copy.copy(self)
        out._relative = False
        out._device_programs = {}
        return out

    # --------------------------------------------------------------- compiler
    def _compile(self) -> tuple[torch.Tensor, torch.Tensor]:
        channels = [(self._phases[g], self.base_lrs[g], g) for g in range(self.num_groups)]
        if self._momentum is not None:
            channels += [(self._momentum[g], None, g) for g in range(self.num_groups)]
        try:
            ints, vals, tabled, self.plateau_offset = _assemble(channels, self.steps_per_epoch)
        except ValueError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        if self.exact and tabled:
            ints, vals = self._add_tables(ints, vals, tabled)
        from .. import _ops

        _ops.validate_program(ints, vals)
        return ints, vals

    def _table_length(self, begin: int, end: int | None) -> int:
        if self.horizon is None:
            if end is None:
                raise ValueError(
                    f"horizon: {self.name} has an unbounded phase that needs cos/pow/exp/log/tanh; exact mode "
                    "tables it up to `horizon` steps, so pass horizon=<total steps> (or exact=False)"
                )
            return end - begin
        horizon_epochs = -(-self.horizon // self.steps_per_epoch)
        stop = horizon_epochs if end is None else min(end, horizon_epochs)
        return max(0, stop - begin)

    def _add_tables(self, ints, vals, tabled):
        """Fills tables by running the host build of schedule.h (libm, as Python) over each phase."""
        from .. import _ops

        source, ints = ints, ints.clone()
        chunks = [vals]
        offset = vals.numel()
        for row, word, begin, end in tabled:
            length = self._table_length(begin, end)
            if not length:
                continue
            steps = torch.arange(begin, begin + length, dtype=torch.int64) * self.steps_per_epoch
            chunks.append(_ops.lr_at(source, vals, steps, int(source[0]))[row])
            ints[word + 3], ints[word + 4] = offset, length
            offset += length
        return ints, torch.cat(chunks)


def _assemble(channels, steps_per_epoch: int):
    """The program of ``channels`` [(phases, base LR or None, recorded row)], one program group each, without
    exact-mode tables: (ints, vals, tabled), tabled = [(group, phase word, begin, end)] of the phases that
    need cos/pow/exp/log/tanh (end None: unbounded)."""
    groups = len(channels)
    n_phases = sum(len(phases) for phases, _, _ in channels)
    phase_start = _HEADER + _GROUP * groups
    code_start = phase_start + _PHASE * n_phases
    header, phase_words, code_words, vals, tabled = [groups], [], [], [], []
    blocks = _Blocks(vals, [base for _, base, _ in channels])
    for row, (phases, base, recorded_row) in enumerate(channels):
        header += [phase_start + len(phase_words), len(phases), steps_per_epoch]
        blocks.row, blocks.base = row, base

        for p, (begin, body) in enumerate(phases):
            code, table = [], (0, 0)
            if isinstance(body, Recorded):
                values = body.values[recorded_row]
                table = (len(vals), len(values))
                vals.extend(float(v) for v in values)
                # Past its end a recorded phase holds its last value.
                code.append(int(Op.CONST) | ((len(vals) - 1) << 8))
            else:
                body.emit(base, code, vals, blocks)
                if body.transcendental:
                    end = phases[p + 1][0] if p + 1 < len(phases) else None
                    tabled.append((row, phase_start + len(phase_words), begin, end))
            phase_words += [begin, code_start + len(code_words), len(code), *table]
            code_words += code
    ints = torch.tensor(header + phase_words + code_words, dtype=torch.int64)
    return ints, torch.tensor(vals if vals else [0.0], dtype=torch.float64), tabled, blocks.plateau_offset


class _Blocks:
    """Value blocks that a program's phases share, appended to vals as phases ask for them: repeat_mul anchors
    (one per equal (x, factor, base)) and the ReduceLROnPlateau state (one per schedule, a slot per group)."""

    def __init__(self, vals: list, bases: list):
        self.vals, self.bases, self.repeat, self.plateau_offset = vals, bases, {}, None
        self.row, self.base = 0, None

    def anchors(self, x: Expr, factor: Expr) -> int:
        return _anchor_index(x, factor, self.base, self.vals, self.repeat)

    def plateau(self, settings) -> int:
        groups = sum(b is not None for b in self.bases)  # the LR rows (momentum rows have no base)
        if self.base is None:
            raise ValueError("a ReduceLROnPlateau phase drives the LR, not momentum")
        if self.plateau_offset is None:
            self.plateau_offset = len(self.vals)
            self.vals.extend(settings.block(self.bases[:groups]))
        elif self.vals[self.plateau_offset: self.plateau_offset + 11] != settings.block(self.bases[:groups])[:11]:
            raise ValueError("a schedule holds one ReduceLROnPlateau: its phases must share the settings")
        from .._ops import LAYOUT

        return self.plateau_offset + LAYOUT["plateau_header"] + LAYOUT["plateau_group_words"] * self.row


def _constant_value(e: Expr, base: float | None) -> float:
    """The value of a step-free expression, computed by the host build of schedule.h."""
    if e.op == Op.CONST:
        return e.value
    if e.op == _BASE and base is not None:
        return base
    from .. import _ops

    ints, vals, _, _ = _assemble([([(0, e)], base, 0)], 1)
    return float(_ops.lr_at(ints, vals, torch.zeros(1, dtype=torch.int64), 1)[0, 0])


class UnsettledProduct(ValueError):
    """A repeat_mul product that does not reach its fixed point within REPEAT_MAX_COUNT multiplications."""


def _anchor_index(x: Expr, factor: Expr, base, vals: list, blocks: dict) -> int:
    if x.uses(_STEP_LEAVES) or factor.uses(_STEP_LEAVES):
        raise ValueError("repeat_mul: x and factor must not depend on STEP or LOCAL")
    xv, fv = _constant_value(x, base), _constant_value(factor, base)
    key = struct.pack("<dd", xv, fv)
    if key not in blocks:
        blocks[key] = len(vals)
        vals.extend(repeat_anchors(xv, fv))
    return blocks[key]


def repeat_anchors(x: float, factor: float) -> list:
    """The anchor block of ``x * factor * ...`` (layout in csrc/schedule.h): [factor, k*, x_k*, x_0, x_256, ...],
    x_k the product after k multiplications (left to right, each rounded: exactly torch's ``lr = lr * gamma``)
    and k* the first k with x_{k+1} == x_k (same sign) or x_k NaN, after which every product is x_k*."""
    if factor < 0.0:
        raise ValueError(f"repeat_mul: the factor must be >= 0, got {factor!r} (the sign would alternate forever)")
    anchors, k, current, chunk = [], 0, x, 4096
    while k <= REPEAT_MAX_COUNT:
        n = min(chunk, REPEAT_MAX_COUNT + 1 - k)
        seq = np.full(n + 1, factor, dtype=np.float64)
        seq[0] = current
        with np.errstate(all="ignore"):  # overflow to inf and NaN are values like any other here
            np.multiply.accumulate(seq, out=seq)  # seq[i] = x_{k+i}: a strictly sequential product
        prev, nxt = seq[:-1], seq[1:]
        settled = np.isnan(prev) | ((nxt == prev) & (np.signbit(nxt) == np.signbit(prev)))
        hit = int(np.argmax(settled)) if settled.any() else n
        anchors.extend(seq[(-k) % REPEAT_ANCHOR_EVERY:min(hit + 1, n):REPEAT_ANCHOR_EVERY].tolist())
        if hit < n:
            return [factor, float(k + hit), float(seq[hit]), *anchors]
        k, current, chunk = k + n, float(seq[n]), min(chunk * 4, 2**20)
    raise UnsettledProduct(
        f"repeat_mul: {x!r} * {factor!r} * ... has not reached its rounding fixed point after 2**26 "
        f"multiplications; evaluating it exactly at every step in bounded time would need more than "
        f"{8 * REPEAT_MAX_COUNT // REPEAT_ANCHOR_EVERY // 2**20} MiB of anchors"
    )


def _table_entries(ints: torch.Tensor, vals: torch.Tensor) -> int:
    """float64 values held as tables by a (validated) program: phase tables and repeat_mul anchor blocks."""
    words = ints.tolist()
    entries, blocks = 0, set()
    for g in range(words[0]):
        first, count, _ = words[_HEADER + _GROUP * g:_HEADER + _GROUP * (g + 1)]
        for p in range(count):
            _, code, length, _, table = words[first + _PHASE * p:first + _PHASE * (p + 1)]
            entries += table
            blocks.update(w >> 8 for w in words[code:code + length] if w & 0xFF == Op.REPEAT_MUL)
    for b in blocks:
        entries += _REPEAT_HEADER + int(vals[b + 1]) // REPEAT_ANCHOR_EVERY + 1
    return entries


def _steps_tensor(steps, rows: int = 1) -> torch.Tensor:
    """Steps as a 1-D int64 tensor in [0, 2**53), at most MAX_LR_AT_VALUES / rows of them."""
    def check_count(n: int) -> None:
        if n * rows > MAX_LR_AT_VALUES:
            raise ValueError(f"steps: {n} steps x {rows} program groups exceed {MAX_LR_AT_VALUES} values per call "
                             "(ask for fewer steps at a time)")

    if isinstance(steps, bool):
        raise TypeError("steps must be an int, a range or a 1-D int64 tensor, got bool")
    if isinstance(steps, int):
        if not 0 <= steps < MAX_STEP:
            raise ValueError(f"steps must be in [0, 2**53), got {steps}")
        return torch.tensor([steps], dtype=torch.int64)
    if isinstance(steps, range):
        check_count(len(steps))
        if not len(steps):
            return torch.zeros(0, dtype=torch.int64)
        lo, hi = min(steps[0], steps[-1]), max(steps[0], steps[-1])
        if lo < 0 or hi >= MAX_STEP:
            raise ValueError(f"steps must be in [0, 2**53), got {steps}")
        return torch.arange(steps.start, steps.start + len(steps) * steps.step, steps.step, dtype=torch.int64)
    if isinstance(steps, torch.Tensor):
        if steps.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"steps must be an integer tensor, got {steps.dtype}")
        if steps.dim() != 1:
            raise ValueError(f"steps must be 1-D, got shape {tuple(steps.shape)}")
        check_count(steps.numel())
        steps_t = steps.to(torch.int64)
        if steps_t.numel() and (int(steps_t.min()) < 0 or int(steps_t.max()) >= MAX_STEP):
            raise ValueError(f"steps must be in [0, 2**53), got min {int(steps_t.min())}, max {int(steps_t.max())}")
        return steps_t
    raise TypeError(f"steps must be an int, a range or a 1-D int64 tensor, got {type(steps).__name__}")


def normalise_phases(phases) -> list:
    """(begin, body) pairs in order, numbers lifted to constants; a phase that begins at or before an earlier
    one replaces it (as the reference's if/elif chain would never reach the earlier one)."""
    out = []
    for begin, body in phases:
        while out and out[-1][0] >= begin:
            out.pop()
        out.append((begin, body if isinstance(body, (Expr, Recorded)) else lift(body)))
    return out


__all__ = ["Schedule", "Recorded", "BASE", "normalise_phases", "MAX_STEP", "lr_list"]
