"""docs/bad_inputs.md, run: every row's call raises the documented error, and what it names stays unchanged.

Each row runs in a fresh namespace built by the page's own namespace code, next to an untouched twin namespace
(same code, same seeds, the row's preparing statements, not its failing call). Nothing is copied from what
the library prints: the page states the error type, a fragment of the message and what must not change, and
this module checks them (see the page's "How a row is run").

Below the rows: the cases that were once known gaps, now regression tests, and the mechanism for new gaps (a
strict xfail with its diagnosis, listed on the page).
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

pytestmark = pytest.mark.usefixtures("one_thread")


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


def assert_steps_alike(a, b, steps: int = 2, seed: int = 7, succeed: bool = False) -> None:
    """`a` and `b` (built alike) are equal now, and after each of `steps` steps on the same fresh grads (every
    param that can step gets one, the others none): the same outcome (with `succeed`, no error), bit for bit."""
    assert optimizer_image(a, ids=False) == optimizer_image(b, ids=False), "differs from its twin"
    gens = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for k in range(steps):
        for opt, gen in zip((a, b), gens):
            for group in opt.param_groups:
                for t in group["params"]:
                    t.grad = torch.randn(t.shape, generator=gen).to(t.dtype) if _steppable(t, group) else None
        outcome = _outcome(a.step)
        assert outcome is None or not succeed, f"step {k + 1}: {outcome}"
        assert outcome == _outcome(b.step), f"step {k + 1}: not the twin's outcome"
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


# ------------------------------------------------------------------------------------------ gaps, closed and known
# A known gap is a strict xfail (@gap): it fails for the reason given, and the suite fails as soon as it is closed
# (then remove the mark). docs/bad_inputs.md lists the same tests.
KNOWN_GAPS: list = []


def gap(reason: str):
    def mark(fn):
        KNOWN_GAPS.append(fn.__name__)
        return pytest.mark.xfail(strict=True, reason=reason)(fn)
    return mark


def namespace(setup: str = "") -> dict:
    torch.manual_seed(0)
    ns: dict = {}
    exec(NAMESPACE, ns)
    exec(setup, ns)
    return ns


def assert_refused_and_unchanged(statement: str, setup: str = "", name: str = "opt", error=(ValueError, TypeError),
                                 fragment: str | None = None) -> None:
    """After `setup`, `statement` raises `error` (with `fragment` in its message), `ns[name]` is unchanged and
    steps like its twin."""
    ns, twin = namespace(setup), namespace(setup)
    before = image(ns[name])
    with pytest.raises(error) as info:
        exec(statement, ns)
    assert image(ns[name]) == before, f"{name} changed"
    assert fragment is None or fragment in str(info.value), str(info.value)
    assert len(str(info.value)) <= MAX_MESSAGE, str(info.value)
    if isinstance(ns[name], _FusedOptimizer):
        assert_steps_alike(ns[name], twin[name])


def test_update_is_all_or_nothing():
    """param_groups[g].update(...) checks every write before it applies any."""
    assert_refused_and_unchanged("opt.param_groups[0].update(lr=0.5, eps=-1.0)", fragment="eps")


@pytest.mark.parametrize("statement", ["del opt.param_groups[0]['eps']", "opt.param_groups[1].pop('lr')",
                                       "opt.param_groups[0].clear()"])
def test_removing_a_hyperparameter_is_refused(statement):
    """del / pop / clear of a key the optimizer uses is refused, nothing changed."""
    assert_refused_and_unchanged(statement)


def _followed_or_refused(edit: str, followed: str) -> None:
    """After `edit`, the next step either refuses (a clear error) or does what torch's optimizers do (`followed`)."""
    ns = namespace()
    try:
        exec(edit, ns)
        ns["opt"].step()
    except (TypeError, ValueError, RuntimeError) as e:
        assert len(str(e)) <= MAX_MESSAGE, str(e)
        return
    assert eval(followed, ns), f"the step ignored `{edit}`"


@pytest.mark.parametrize("edit, followed", [
    ("opt.param_groups[0] = dict(opt.param_groups[0], lr=0.5)", "opt.last_lr()[0].item() == 0.5"),
    ("opt.param_groups.append(dict(opt.param_groups[1], params=[r]))", "r in opt.state"),
    ("opt.param_groups[0]['params'].append(r)", "r in opt.state"),
    ("opt.param_groups[1]['params'] = [r]", "r in opt.state"),
], ids=["replace-group", "append-group", "append-param", "replace-params"])
def test_param_group_structure_edits_are_followed_or_refused(edit, followed):
    """Appending a group goes through add_param_group, replacing one is refused; a group's new or edited params
    list is followed, as torch does."""
    _followed_or_refused(edit, followed)


@pytest.mark.parametrize("edit, followed", [
    ("opt.state[p]['exp_avg'] = torch.zeros_like(p)", "bool((opt.state[p]['exp_avg'] != 0).any())"),
    ("opt.state.clear()", "p in opt.state and float(opt.state[p]['step']) == 1.0"),
], ids=["replace-state", "clear-state"])
def test_state_edits_are_followed_or_refused(edit, followed):
    """A state tensor replaced in opt.state, or opt.state.clear(), reaches the next step as in torch (a cleared
    param restarts at step 1)."""
    _followed_or_refused(edit, followed)


@pytest.mark.parametrize("setup, error, fragment", [
    ("p.grad = p.grad.to_sparse()", RuntimeError, "param_groups[0]: a param of shape (4, 5) has a torch.sparse_coo"),
    ("q.grad_dtype = None; q.grad = q.grad.double()", ValueError,
     "param_groups[1]: a param of shape (7,): its grad is torch.float64"),
], ids=["sparse", "float64"])
def test_a_stepped_param_with_a_bad_grad_gets_the_same_error(setup, error, fragment):
    """A bad grad on a param that stepped before (a cached step plan) gets the first step's error naming its group."""
    assert_refused_and_unchanged("opt.step()", setup, error=error, fragment=fragment)


@pytest.mark.parametrize("setup, fragment", [
    ("sd['warmup_fused']['schedule'] = s3.state_dict()", None),
    ("sd['warmup_fused']['schedule'] = s.state_dict()", None),
    ("sd['param_groups'][0]['initial_lr'] = float('nan')", "initial_lr"),
    ("del sd['warmup_fused']; sd['param_groups'][0]['initial_lr'] = 'abc'", "initial_lr"),
], ids=["3-group-schedule", "relative-schedule", "nan-initial_lr", "torch-checkpoint-str-initial_lr"])
def test_load_state_dict_binds_the_schedule_before_writing(setup, fragment):
    """A checkpoint whose schedule does not bind to its groups, or with a bad initial_lr, is refused before any
    write."""
    assert_refused_and_unchanged("opt.load_state_dict(sd)", setup, fragment=fragment)


@pytest.mark.parametrize("setup", ["del sd['param_groups'][0]['initial_lr']",
                                   "sd['param_groups'][1]['initial_lr'] = 0.5"],
                         ids=["no-initial_lr", "other-initial_lr"])
def test_load_state_dict_resumes_the_saved_schedule(setup):
    """A resume follows the checkpoint's own program: the original schedule is kept only if it binds to the same one."""
    ns = namespace(setup)
    saved = Schedule.from_state_dict(ns["sd"]["warmup_fused"]["schedule"])
    expected = saved.lr_at(ns["sd"]["warmup_fused"]["sched_step"])[:, 0]
    try:
        ns["opt"].load_state_dict(ns["sd"])
    except (TypeError, ValueError) as e:
        assert "initial_lr" in str(e)
        return
    ns["opt"].step()
    assert torch.equal(ns["opt"].last_lr(), expected), (ns["opt"].last_lr(), expected)


@pytest.mark.parametrize("statement", [
    "opt.add_param_group({'params': [r], 'initial_lr': float('nan')})",
    "opt.param_groups[0]['initial_lr'] = float('nan')",
], ids=["add_param_group", "write"])
def test_initial_lr_is_validated(statement):
    """initial_lr is checked like lr, before add_param_group adds anything."""
    assert_refused_and_unchanged(statement, fragment="initial_lr")


@pytest.mark.parametrize("setup, fragment", [
    ("sd['warmup_fused']['lr_source'] = ['host', 'host']; sd['warmup_fused']['host_lr'] = [float('nan'), 1e-3]",
     "host_lr"),
    ("sd['warmup_fused']['lr_source'] = ['host', 'host']; sd['warmup_fused']['host_lr'] = [1e-3, -1.0]", "host_lr"),
    ("sd['warmup_fused']['max_grad_norm'] = 0.0", "max_grad_norm"),
    ("sd['warmup_fused']['rng_seed'] = 1.5", "rng_seed"),
    ("sd['warmup_fused']['rng_seed'] = 2**70", "rng_seed"),
], ids=["nan-host_lr", "negative-host_lr", "zero-max_grad_norm", "float-rng_seed", "huge-rng_seed"])
def test_checkpoint_extras_are_validated_like_the_constructor(setup, fragment):
    """The warmup_fused entry's host_lr, max_grad_norm and rng_seed get the constructor's checks."""
    assert_refused_and_unchanged("opt.load_state_dict(sd)", setup, fragment=fragment)


def test_master_weight_of_a_float32_param_is_refused():
    """A master_weight for a float32 param is refused at load (it would fail every later step)."""
    assert_refused_and_unchanged("opt.load_state_dict(sd)", "sd['state'][0]['master_weight'] = rand(4, 5)",
                                 fragment="master_weight")


@pytest.mark.parametrize("setup, statement", [
    ("", "opt.load_state_dict(SGD([{'params': [rand(4, 5)]}, {'params': [rand(7)]}], lr=0.1).state_dict())"),
    ("opt.param_groups[0]['eps'] = 1e-6; sd = copy.deepcopy(opt.state_dict()); del sd['param_groups'][0]['eps']",
     "opt.load_state_dict(sd)"),
], ids=["stateless-SGD-checkpoint", "group-without-eps"])
def test_a_checkpoint_group_without_the_optimizers_keys_is_refused(setup, statement):
    """Saved groups must hold the optimizer's own torch keys (no silent defaults, no other optimizer's checkpoint)."""
    assert_refused_and_unchanged(statement, setup)


@pytest.mark.parametrize("setup, statement, name", [
    ("", "SGD([r], lr=0.1, momentum=0.9, dampening=-0.5, nesterov=True)", "r"),
    ("sgd.param_groups[0]['dampening'] = -0.5", "sgd.param_groups[0]['nesterov'] = True", "sgd"),
], ids=["constructor", "write"])
def test_nesterov_with_negative_dampening_names_nesterov(setup, statement, name):
    """nesterov with a non-zero (even negative) dampening gets torch's Nesterov message."""
    assert_refused_and_unchanged(statement, setup, name=name, fragment="Nesterov momentum requires")


@pytest.mark.parametrize("statement", ["AdamW([r], foreach=torch.tensor([0.1, 0.2]))",
                                       "opt.param_groups[0]['fused'] = torch.tensor([1.0, 1.0])"],
                         ids=["constructor", "write"])
def test_switch_values_are_checked_by_type(statement):
    """foreach / fused / capturable / differentiable are checked by type (a Tensor is refused, naming the key)."""
    assert_refused_and_unchanged(statement, name="r" if statement.startswith("AdamW") else "opt",
                                 fragment="foreach" if "foreach" in statement else "fused")


def test_a_sparse_state_tensor_is_refused_before_writing():
    """A sparse state tensor in a checkpoint is refused before anything is written."""
    assert_refused_and_unchanged(
        "opt.load_state_dict(sd)",
        "sd['state'][0]['exp_avg'] = rand(4, 5); sd['state'][1]['exp_avg'] = sd['state'][1]['exp_avg'].to_sparse()")


def test_a_state_tensor_that_requires_grad_loads_detached():
    """Saved state tensors that require grad load detached (the optimizer still deep-copies)."""
    ns = namespace("sd['state'][0]['exp_avg'] = sd['state'][0]['exp_avg'].clone().requires_grad_()")
    ns["opt"].load_state_dict(ns["sd"])
    assert not ns["opt"].state[ns["p"]]["exp_avg"].requires_grad
    copy.deepcopy(ns["opt"])


def test_a_malformed_schedule_entry_is_named():
    """A malformed schedule entry is reported under its checkpoint key."""
    assert_refused_and_unchanged("opt.load_state_dict(sd)",
                                 "sd['warmup_fused']['schedule'] = {'format': 'warmup_fused.Schedule'}",
                                 fragment="state_dict['warmup_fused']['schedule']")


def test_the_page_lists_the_known_gaps():
    listed = re.findall(r"`(test_gap_\w+)`", DOC.read_text().split("Known gaps", 1)[1])
    assert sorted(listed) == sorted(KNOWN_GAPS)
