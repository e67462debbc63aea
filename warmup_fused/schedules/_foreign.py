"""Shared by the converters of other libraries' schedules (timm, Keras, optax).

A converter describes the reference as phases whose bodies are expressions of the step, mirroring the
reference op for op where that is exact, or ``Pending`` phases that are recorded from the reference itself.
``materialise`` then records every pending phase in one call of the reference and returns plain phases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ._schedule import Recorded, normalise_phases


def f32(x) -> float:
    """``x`` rounded to float32 (round to nearest even), as a float32 tensor conversion of it does."""
    return float(np.float32(x))


def check_horizon(horizon) -> None:
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise ValueError(f"horizon must be None or an int >= 1, got {horizon!r}")


@dataclass(frozen=True)
class Pending(Recorded):
    """A recorded phase whose values are still to be recorded from the reference.

    ``settle``: from that many steps after the phase begins, the reference's value never changes again
    (None: unknown, so the phase is recorded up to ``horizon``).
    """

    values: tuple = ()
    settle: int | None = None


def clamp_begins(phases) -> list:
    """Phases whose begins may be negative (a shifted sub-schedule) cut to begin at 0 or later, in order."""
    out = []
    for begin, body in phases:
        if begin < 0 and isinstance(body, Pending) and body.settle is not None:
            body = Pending(settle=max(0, body.settle + begin))
        out.append((max(0, begin), body))
    return normalise_phases(out)


def materialise(groups: Sequence[list], record: Callable[[list], Sequence[Sequence[float]]],
                horizon: int | None, name: str) -> list:
    """Every Pending phase replaced by the reference's values, recorded in one ``record(steps)`` call.

    ``groups``: one phase list per param group, with Pending phases at the same begins in every group
    (``record`` returns one row of values per group). A pending phase is recorded up to the next phase,
    up to ``settle``, and up to ``horizon`` (steps, or epochs for epoch-based schedules): past the end of
    its recording the last value holds. A phase with neither an end nor ``settle`` needs ``horizon``.
    """
    groups = [normalise_phases(g) for g in groups]
    spans = {}  # begin -> length, for the pending phases (the same in every group)
    for phases in groups:
        for i, (begin, body) in enumerate(phases):
            if not isinstance(body, Pending):
                continue
            end = phases[i + 1][0] if i + 1 < len(phases) else None
            length = None if end is None else end - begin
            if body.settle is not None:
                length = body.settle + 1 if length is None else min(length, body.settle + 1)
            if horizon is not None:
                length = max(1, min(length if length is not None else math.inf, horizon - begin))
            if length is None:
                raise ValueError(
                    f"horizon: {name} is not closed-form from step {begin} on and never settles to a constant, "
                    "so it must be recorded; pass horizon=<total training steps> (past it the last LR holds)"
                )
            spans[begin] = length
    if not spans:
        return groups
    steps = [t for begin, length in sorted(spans.items()) for t in range(begin, begin + length)]
    rows = [list(map(float, r)) for r in record(steps)]
    tables, at = {}, 0
    for begin, length in sorted(spans.items()):
        tables[begin] = Recorded(tuple(tuple(r[at:at + length]) for r in rows))
        at += length
    return [[(b, tables[b] if isinstance(body, Pending) else body) for b, body in phases] for phases in groups]


__all__ = ["f32", "check_horizon", "Pending", "clamp_begins", "materialise"]
