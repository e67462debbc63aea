"""docs/bad_inputs.md, run: every row's call raises the documented error, and what it names stays unchanged.

Each row runs in a fresh namespace built by the page's own namespace code, next to an untouched twin namespace
(same code, same seeds, the row's preparing statements, not its failing call). Nothing is copied from what
the library prints: the page states the error type, a fragment of the message and what must not change, and
this module checks them (see the page's "How a row is run").

Below the rows: the known gaps, each a strict xfail with its diagnosis and the fix it proposes.
"""
from __future__ import annotations

import ast
import builtins
import copy
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.optim import lr_scheduler as lrs

import warmup_fused
from warmup_fused.optim import _FusedOptimizer
from warmup_fused.schedules import Schedule

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.md"
MAX_MESSAGE = 600  # a clear error fits in a few lines (no dispatcher dumps)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------- snapshots
def freeze(x, ids: bool = True):
    """A comparable image of `x`: tensors by dtype, shape, strides and bytes (NaN payloads included) and, with
    `ids`, by identity; floats by their bits; containers recursively; other objects by identity."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        dense = t.to_dense() if t.layout != torch.strided else t
        data = dense.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        image = ("tensor", str(t.dtype), str(t.layout), tuple(t.shape),
                 t.stride() if t.layout == torch.strided else None, str(t.device), data, freeze(x.grad, ids))
        return image + ((id(x),) if ids else ())
    if isinstance(x, float):
        return ("float", struct.pack("<d", x))
    if x is None or isinstance(x, (bool, int, str, torch.dtype, torch.device)):
        return (type(x).__name__, x)
    if isinstance(x, dict):
        return ("dict", type(x).__name__, tuple((freeze(k, ids), freeze(v, ids)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(freeze(v, ids) for v in x))
    return ("object", type(x).__name__, id(x) if ids else None)


def params_of(opt) -> list:
    return [t for group in opt.param_groups for t in group["params"]]


def optimizer_image(opt, ids: bool = True):
    """Everything a warmup_fused optimizer holds that a rejected call must not change."""
    devices = {str(d): (b.groups, b.rows, b.counter, b.hparams, b.scratch, b.ints, b.vals, b._pools, b._free,
                        b.captured) for d, b in opt._devices.items()}
    sources = [(s.lr_mode, s.host_lr, s.lr_tensor, s.mom_scheduled) for s in opt._sources]
    schedule = None if opt._schedule is None else (opt._schedule.state_dict(), id(opt._schedule) if ids else 0)
    return freeze(dict(
        params=params_of(opt),
        param_groups=[(type(g).__name__, g._owner() is opt if hasattr(g, "_owner") else False, dict(g))
                      for g in opt.param_groups],
        defaults=opt.defaults,
        state=[(p, dict(st)) for p, st in opt.state.items()],
        step_slots=list(opt._step_slots.items()),
        devices=devices,
        host=(opt._host_step, opt._rng_seed, opt.max_grad_norm, sources, opt._bound.state_dict(), schedule),
        sched_step=opt.sched_step(),
        state_dict=opt.state_dict(),
    ), ids), freeze(opt.last_lr(), ids=False)  # last_lr() is a new view at each call


def image(obj, ids: bool = True):
    """What 'unchanged' means for each kind of object a row names (docs/bad_inputs.md)."""
    if isinstance(obj, _FusedOptimizer):
        return optimizer_image(obj, ids)
    if isinstance(obj, torch.optim.Optimizer):
        return freeze((obj.state_dict(), params_of(obj), [dict(g) for g in obj.param_groups]), ids)
    if isinstance(obj, (lrs.LRScheduler, lrs.ReduceLROnPlateau)):
        return freeze(obj.state_dict(), ids), image(obj.optimizer, ids)
    if isinstance(obj, Schedule):
        return freeze((obj.state_dict(), obj.base_lrs, obj.relative, obj.has_momentum, obj.horizon, obj.exact,
                       obj.name, repr(obj)), ids), freeze(obj.lr_at(range(64)), ids=False)
    return freeze(obj, ids)


def _steppable(t: torch.Tensor, group: dict) -> bool:
    """Whether the optimizers can step `t` at all (a floating, dense param; float16 not stochastically rounded)."""
    if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False
    if t.dtype == torch.float16 and group.get("stochastic_rounding"):
        return False
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _outcome(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the twin must fail the same way
        return type(e).__name__, str(e)
    return None


def assert_steps_alike(a, b, steps: int = 2, seed: int = 7) -> None:
    """`a` and `b` (built alike) are equal now, and after each of `steps` steps on the same fresh grads (every
    param that can step gets one, the others none): the same outcome, bit for bit."""
    assert optimizer_image(a, ids=False) == optimizer_image(b, ids=False), "differs from its twin"
    gens = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for k in range(steps):
        for opt, gen in zip((a, b), gens):
            for group in opt.param_groups:
                for t in group["params"]:
                    t.grad = torch.randn(t.shape, generator=gen).to(t.dtype) if _steppable(t, group) else None
        assert _outcome(a.step) == _outcome(b.step), f"step {k + 1}: not the twin's outcome"
        assert optimizer_image(a, ids=False) == optimizer_image(b, ids=False), f"step {k + 1}: differs from twin"


# ------------------------------------------------------------------------------------------------ the page
@dataclass(frozen=True)
class Row:
    number: int
    call: str
    argument: str
    error: type
    fragment: str
    unchanged: tuple


def _code(cell: str) -> str:
    match = re.fullmatch(r"`(.+)`", cell)
    assert match, f"not one code span: {cell!r}"
    return match.group(1)


def _page():
    text = DOC.read_text()
    namespace = re.search(r"## Namespace\n+```python\n(.*?)```", text, re.S).group(1)
    rows = []
    for line in text.splitlines():
        if not re.match(r"\|\s*\d+\s*\|", line):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        number, call, argument, error, fragment, unchanged = cells
        rows.append(Row(int(number), _code(call), argument, getattr(builtins, error), _code(fragment),
                        tuple(re.findall(r"`(\w+)`", unchanged))))
    return namespace, rows


NAMESPACE, ROWS = _page()


def build(row: Row) -> tuple[dict, ast.Module]:
    """A fresh namespace with the row's preparing statements run; returns it and the failing statement."""
    body = ast.parse(row.call).body
    torch.manual_seed(0)  # seeds that constructors draw (stochastic rounding) match in the twin
    ns: dict = {}
    exec(NAMESPACE, ns)
    exec(compile(ast.Module(body[:-1], []), f"<row {row.number}>", "exec"), ns)
    return ns, ast.Module(body[-1:], [])


def test_the_page_numbers_its_rows_and_covers_the_api():
    assert [r.number for r in ROWS] == list(range(1, len(ROWS) + 1))
    assert len(ROWS) >= 35
    calls = " ".join(r.call for r in ROWS)
    for api in ("AdamW(", "Adam(", "SGD(", "param_groups[", ".step()", "set_schedule(", "add_param_group(",
                "load_state_dict(", "set_sched_step(", "Schedule(", "lr_at(", "from_torch(", "schedules."):
        assert api in calls, api


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"row{r.number}")
def test_row(row: Row):
    assert row.argument.lower() in row.fragment.lower(), "the message fragment must name the argument"
    ns, call = build(row)
    twin, _ = build(row)
    for name in row.unchanged:
        assert name in ns, f"row {row.number} names {name!r}, which its namespace lacks"
    before = {name: image(ns[name]) for name in row.unchanged}
    with pytest.raises(Exception) as info:
        exec(compile(call, f"<row {row.number}>", "exec"), ns)
    message = str(info.value)
    assert type(info.value) is row.error, f"{type(info.value).__name__}: {message}"
    assert row.fragment in message, message
    assert len(message) <= MAX_MESSAGE, message
    for name in row.unchanged:
        assert image(ns[name]) == before[name], f"{name} changed"
        if isinstance(ns[name], _FusedOptimizer):
            assert_steps_alike(ns[name], twin[name])


# ------------------------------------------------------------------------------------------------ known gaps
def namespace() -> dict:
    torch.manual_seed(0)
    ns: dict = {}
    exec(NAMESPACE, ns)
    return ns


def assert_refused_and_unchanged(statement: str, name: str = "opt", setup: str = "") -> None:
    """`statement` raises ValueError/TypeError naming something, and `ns[name]` is unchanged and steps like
    its twin."""
    ns, twin = namespace(), namespace()
    exec(setup, ns)
    exec(setup, twin)
    before = image(ns[name])
    with pytest.raises((ValueError, TypeError)):
        exec(statement, ns)
    assert image(ns[name]) == before, f"{name} changed"
    assert_steps_alike(ns[name], twin[name])


def known_gap(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


KNOWN_GAPS = []  # filled below; docs/bad_inputs.md lists the same names


def gap(reason: str):
    def mark(fn):
        KNOWN_GAPS.append(fn.__name__)
        return known_gap(reason)(fn)
    return mark
