"""The Schedule object: phases per param group, compiled to the program csrc/schedule.h evaluates."""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import torch

from .._expr import BASE, Expr, Op, lift

# Steps are exact in float64 below 2**53; beyond, int->double conversion would round.
MAX_STEP = 2**53


@dataclass(frozen=True)
class Recorded:
    """A phase whose per-group values were recorded from a reference (e.g. a recursive torch scheduler).

    ``values[g][i]`` is group g's LR at local epoch i. Past the end the last value holds.
    """

    values: tuple  # tuple[tuple[float, ...], ...], one row per group


Body = Union[Expr, Recorded]


def _check_lr(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def _bits_equal(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(struct.pack("<d", x) == struct.pack("<d", y) for x, y in zip(a, b))


class Schedule:
    """A learning-rate schedule evaluated on the device from a step counter.

    A schedule is a list of phases per param group. A phase begins at an epoch (``steps_per_epoch``
    steps make an epoch; 1 by default) and is either an expression of the step (see ``warmup_fused._expr``)
    or values recorded from a reference scheduler. Build one with the constructors in
    ``warmup_fused.schedules`` or with ``from_torch``.

    Exact mode (the default): phases that need cos/pow/exp/log/tanh are served from a float64 table
    computed once on the host with the same libm as Python, for every step below ``horizon``; the
    kernel computes the rest in closed form. Past ``horizon`` those phases use the device's own math
    (bit-identical on CPU, within the documented ulps on CUDA). ``exact=False`` never builds tables.
    ``table_bytes`` reports the table memory (8 bytes x steps x groups).

    Steps run from 0 to 2**53 - 1. The references do integer arithmetic on the step (``step + shift``,
    ``total - step``) that the device does in float64: exact while those intermediates stay below 2**53
    (tests go to 2**52), far beyond any training run.
    """

    def __init__(
        self,
        phases: Sequence[Sequence[tuple[int, Body]]],
        base_lrs: Sequence[float] = (1.0,),
        *,
        steps_per_epoch: int = 1,
        horizon: int | None = None,
        exact: bool = True,
        name: str = "schedule",
    ):
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0):
            raise ValueError(f"horizon must be None or an int >= 0, got {horizon!r}")
        base_lrs = tuple(_check_lr(f"base_lrs[{i}]", v) for i, v in enumerate(base_lrs))
        if not base_lrs:
            raise ValueError("base_lrs must name at least one param group")
        phases = [list(p) for p in phases]
        if len(phases) == 1 and len(base_lrs) > 1:
            phases = phases * len(base_lrs)
        if len(phases) != len(base_lrs):
            raise ValueError(f"{len(phases)} phase lists for {len(base_lrs)} base_lrs")
        for g, group in enumerate(phases):
            if not group or group[0][0] != 0:
                raise ValueError(f"group {g}: the first phase must begin at step 0")
            for (b0, _), (b1, _) in zip(group, group[1:]):
                if not b1 > b0:
                    raise ValueError(f"group {g}: phase begins must increase, got {b0} then {b1}")
            for _, body in group:
                if isinstance(body, Recorded) and len(body.values) != len(base_lrs):
                    raise ValueError("recorded values must have one row per group")
                if isinstance(body, Expr) and body.depth() > 16:
                    raise ValueError("expression too deep for the device evaluator (16 stack slots)")
        self._phases = phases
        self.base_lrs = base_lrs
        self.steps_per_epoch = steps_per_epoch
        self.horizon = horizon
        self.exact = bool(exact)
        self.name = name
        self._program = self._compile()
        self._device_programs: dict = {}

    # ----------------------------------------------------------------- public
    @property
    def num_groups(self) -> int:
        return len(self.base_lrs)

    @property
    def table_bytes(self) -> int:
        """Bytes of float64 table this schedule keeps on each device it runs on."""
        return 8 * self._table_entries

    def with_base_lrs(self, base_lrs: Sequence[float]) -> "Schedule":
        """The same schedule for other base LRs (one per group, or one for all).

        Recorded phases hold absolute values and cannot be rescaled: they accept only their own base LRs.
        """
        base_lrs = [_check_lr(f"base_lrs[{i}]", v) for i, v in enumerate(base_lrs)]
        phases = self._phases
        if len(base_lrs) != self.num_groups:
            if self.num_groups != 1:
                raise ValueError(
                    f"base_lrs: this schedule has {self.num_groups} groups, got {len(base_lrs)} base LRs"
                )
            phases = self._phases * len(base_lrs)
        if any(isinstance(b, Recorded) for grp in phases for _, b in grp):
            if not _bits_equal(base_lrs, self.base_lrs):
                raise ValueError(
                    f"base_lrs: {self.name} holds values recorded for base LRs {list(self.base_lrs)}; "
                    f"it cannot be rescaled to {base_lrs}"
                )
            return self
        if _bits_equal(base_lrs, self.base_lrs):
            return self
        return Schedule(phases, base_lrs, steps_per_epoch=self.steps_per_epoch, horizon=self.horizon,
                        exact=self.exact, name=self.name)

    def program(self, device: Union[str, torch.device] = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The (ints, vals) program tensors on ``device``, copied there once and cached."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._device_programs:
            ints, vals = self._program
            self._device_programs[device] = (ints.to(device), vals.to(device))
        return self._device_programs[device]

    def lr_at(self, steps: Union[int, range, torch.Tensor], device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """LRs computed by the extension's compiled code on ``device``: float64 ``[num_groups, len(steps)]``."""
        steps_t = _steps_tensor(steps)
        ints, vals = self.program(device)
        from .. import _ops

        return _ops.lr_at(ints, vals, steps_t.to(ints.device), self.num_groups)

    def __repr__(self) -> str:
        mode = "exact" if self.exact else "fast"
        return (f"Schedule({self.name}, groups={self.num_groups}, phases={len(self._phases[0])}, {mode}, "
                f"horizon={self.horizon}, table_bytes={self.table_bytes})")

    # --------------------------------------------------------------- compiler
    def _compile(self, with_tables: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with_tables = self.exact if with_tables is None else with_tables
        groups = len(self._phases)
        header = [groups]
        phase_words, code_words, vals = [], [], []
        # Layout: header, group headers, all phases, all code (absolute indices into ints).
        n_phases = sum(len(p) for p in self._phases)
        phase_start = 1 + 3 * groups
        code_start = phase_start + 5 * n_phases
        tables = []  # (slot in phase_words, group, begin, length, expr) filled after the code exists
        self._table_entries = 0
        for g, group in enumerate(self._phases):
            header += [phase_start + len(phase_words), len(group), self.steps_per_epoch]
            for p, (begin, body) in enumerate(group):
                code = []
                if isinstance(body, Recorded):
                    row = body.values[g]
                    table_index = len(vals)
                    vals.extend(float(v) for v in row)
                    # Past its end a recorded phase holds its last value.
                    code.append(int(Op.CONST) | ((table_index + len(row) - 1) << 8))
                    table = (table_index, len(row))
                    self._table_entries += len(row)
                else:
                    body.emit(self.base_lrs[g], code, vals, 0)
                    table = (0, 0)
                    if with_tables and body.transcendental:
                        end = group[p + 1][0] if p + 1 < len(group) else None
                        length = self._table_length(begin, end)
                        if length:
                            tables.append((len(phase_words), g, begin, length))
                phase_words += [begin, code_start + len(code_words), len(code), *table]
                code_words += code
        ints = torch.tensor(header + phase_words + code_words, dtype=torch.int64)
        vals_t = torch.tensor(vals if vals else [0.0], dtype=torch.float64)
        if tables:
            ints, vals_t = self._add_tables(ints, vals_t, tables, phase_start)
        from .. import _ops

        _ops.validate_program(ints, vals_t)
        return ints, vals_t

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

    def _add_tables(self, ints, vals, tables, phase_start):
        """Fills tables by running the host build of schedule.h (libm, as Python) over each phase."""
        from .. import _ops

        source, ints = ints, ints.clone()
        chunks = [vals]
        offset = vals.numel()
        for slot, g, begin, length in tables:
            steps = (torch.arange(begin, begin + length, dtype=torch.int64)) * self.steps_per_epoch
            table = _ops.lr_at(source, vals, steps, len(self._phases))[g]
            word = phase_start + slot
            ints[word + 3], ints[word + 4] = offset, length
            chunks.append(table)
            offset += length
            self._table_entries += length
        return ints, torch.cat(chunks)


def _steps_tensor(steps) -> torch.Tensor:
    if isinstance(steps, bool):
        raise TypeError("steps must be an int, a range or a 1-D int64 tensor, got bool")
    if isinstance(steps, int):
        steps_t = torch.tensor([steps], dtype=torch.int64)
    elif isinstance(steps, range):
        if len(steps) and (min(steps[0], steps[-1]) < 0):
            raise ValueError(f"steps must be >= 0, got {steps}")
        steps_t = torch.arange(steps.start, steps.stop, steps.step, dtype=torch.int64)
    elif isinstance(steps, torch.Tensor):
        if steps.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"steps must be an integer tensor, got {steps.dtype}")
        if steps.dim() != 1:
            raise ValueError(f"steps must be 1-D, got shape {tuple(steps.shape)}")
        steps_t = steps.to(torch.int64)
    else:
        raise TypeError(f"steps must be an int, a range or a 1-D int64 tensor, got {type(steps).__name__}")
    if steps_t.numel() and (int(steps_t.min()) < 0 or int(steps_t.max()) >= MAX_STEP):
        raise ValueError(f"steps must be in [0, 2**53), got min {int(steps_t.min())}, max {int(steps_t.max())}")
    return steps_t


def normalise_phases(phases) -> list:
    """(begin, body) pairs in order, numbers lifted to constants; a phase that begins at or before an earlier
    one replaces it (as the reference's if/elif chain would never reach the earlier one)."""
    out = []
    for begin, body in phases:
        while out and out[-1][0] >= begin:
            out.pop()
        out.append((begin, body if isinstance(body, (Expr, Recorded)) else lift(body)))
    return out


__all__ = ["Schedule", "Recorded", "BASE", "normalise_phases", "MAX_STEP"]
