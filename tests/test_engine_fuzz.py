"""Property tests of the schedule engine (hypothesis).

* Random expression trees over + - * / // % max min sqrt round_f32 evaluate bit-identically to the same
  tree evaluated with Python floats, node by node; where Python raises (a zero divisor, sqrt of a
  negative) the node is NaN, which is what the device yields (it cannot raise). A literal zero divisor is
  refused when compiled.
* Random phase layouts either build a Schedule or are refused with ValueError/TypeError.
* Random and mutated raw programs are validated or refused with ValueError; a validated program is
  evaluated at any step without a crash. Under tools/sanitize.sh (ASan + UBSan) this also proves that no
  read leaves the program's arrays and that nothing undefined happens.

CI runs a bounded number of examples; set WARMUP_FUSED_FUZZ_EXAMPLES for a longer run.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from warmup_fused import _ops
from warmup_fused import schedules as S
from warmup_fused._expr import BASE, LOCAL, STEP, Expr, Op, cos, lift, pmax, pmin, round_f32, sqrt
from warmup_fused.schedules import Recorded, Schedule, from_torch

EXAMPLES = int(os.environ.get("WARMUP_FUSED_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.slow


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int64)


def same(got: torch.Tensor, want: list) -> bool:
    """Bit-equal, any NaN matching any NaN."""
    want_t = torch.tensor(want, dtype=torch.float64)
    nan = torch.isnan(want_t)
    return torch.equal(torch.isnan(got), nan) and torch.equal(bits(got[~nan]), bits(want_t[~nan]))


# --------------------------------------------------------------------------- expression trees
def _raising_to_nan(fn):
    def op(*args):
        try:
            return fn(*args)
        except (ZeroDivisionError, ValueError):
            return math.nan
    return op


def _f32(a: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.float32(a))


# (Expr builder, Python float semantics): each node is Python's own operator.
BINARY = [
    (lambda a, b: a + b, lambda a, b: a + b),
    (lambda a, b: a - b, lambda a, b: a - b),
    (lambda a, b: a * b, lambda a, b: a * b),
    (lambda a, b: a / b, _raising_to_nan(lambda a, b: a / b)),
    (lambda a, b: a // b, _raising_to_nan(lambda a, b: a // b)),
    (lambda a, b: a % b, _raising_to_nan(lambda a, b: a % b)),
    (pmax, lambda a, b: max(a, b)),
    (pmin, lambda a, b: min(a, b)),
]
UNARY = [(sqrt, _raising_to_nan(math.sqrt)), (round_f32, _f32)]

interesting = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.5, -1.3, 3.0, 1e-300, 5e-324, 1e300, 2.0**63, 2.0**53,
                               math.inf, -math.inf, math.nan, 3.4028235677973366e38])
constants = st.one_of(interesting, st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3))

# A tree is (expr, fn(step, local, base)).
leaves = st.one_of(
    st.just((STEP, lambda s, l, b: s)),
    st.just((LOCAL, lambda s, l, b: l)),
    st.just((BASE, lambda s, l, b: b)),
    constants.map(lambda c: (lift(c), lambda s, l, b, c=c: c)),
)


def _extend(children):
    binary = st.tuples(st.sampled_from(BINARY), children, children).map(
        lambda t: (t[0][0](t[1][0], t[2][0]),
                   lambda s, l, b, t=t: t[0][1](t[1][1](s, l, b), t[2][1](s, l, b))))
    unary = st.tuples(st.sampled_from(UNARY), children).map(
        lambda t: (t[0][0](t[1][0]), lambda s, l, b, t=t: t[0][1](t[1][1](s, l, b))))
    return st.one_of(binary, unary)


trees = st.recursive(leaves, _extend, max_leaves=24)


def _literal_zero_divisor(e: Expr) -> bool:
    if e.op in (Op.DIV, Op.FLOORDIV, Op.MOD) and e.args[1].op == Op.CONST and e.args[1].value == 0.0:
        return True
    return any(_literal_zero_divisor(a) for a in e.args)


@FUZZ
@given(first=trees, second=trees, begin=st.integers(1, 2**52), base=st.floats(0.0, 1e6),
       steps=st.lists(st.integers(0, 2**53 - 1), min_size=1, max_size=12))
def test_random_expressions_match_python_floats(first, second, begin, base, steps):
    (e1, f1), (e2, f2) = first, second
    refused = _literal_zero_divisor(e1) or _literal_zero_divisor(e2)
    deep = max(e1.depth(), e2.depth()) > 16
    try:
        s = Schedule([[(0, e1), (begin, e2)]], [base])
    except ValueError as exc:
        assert refused or deep, exc
        event("refused (literal zero divisor or too deep)")
        return
    assert not refused and not deep
    event("compared")
    steps = sorted(set(steps) | {0, begin - 1, begin})
    want = [f1(float(t), float(t), base) if t < begin else f2(float(t), float(t - begin), base) for t in steps]
    got = s.lr_at(torch.tensor(steps))[0]
    assert same(got, want), (e1, e2, base, steps, got.tolist(), want)


# --------------------------------------------------------------------------- phase layouts
bodies = st.one_of(
    trees.map(lambda t: t[0]),
    st.builds(lambda rows: Recorded(tuple(tuple(r) for r in rows)),
              st.lists(st.lists(st.floats(allow_nan=True), min_size=0, max_size=4), min_size=0, max_size=3)),
    st.sampled_from([None, "x", 1.5, (STEP,)]),
)
begins = st.one_of(st.integers(-3, 40), st.sampled_from([2**53, 2**63 - 1, 2**63, 1.5, True, "0"]))
junk_layouts = st.lists(st.lists(st.tuples(begins, bodies), min_size=0, max_size=4), min_size=0, max_size=3)


@st.composite
def plausible_layouts(draw):
    """Per group: begins 0 < b1 < b2 ... and expression bodies (sometimes recorded or transcendental)."""
    groups = []
    for _ in range(draw(st.integers(1, 3))):
        begins_ = sorted(set(draw(st.lists(st.integers(1, 60), max_size=3))))
        phases = []
        for b in [0] + begins_:
            kind = draw(st.integers(0, 9))
            if kind == 0:
                phases.append((b, Recorded(tuple(tuple(draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5)))
                                                 for _ in range(3)))))
            elif kind == 1:
                phases.append((b, cos(draw(trees)[0])))
            else:
                phases.append((b, draw(trees)[0]))
        groups.append(phases)
    return groups


layouts = st.one_of(junk_layouts, plausible_layouts())


@FUZZ
@given(layout=layouts, momentum=st.one_of(st.none(), layouts),
       base_lrs=st.one_of(st.none(), st.lists(st.floats(0.0, 10.0), min_size=1, max_size=3),
                          st.sampled_from([[0.1, 0.2, 0.3], [-1.0], [math.nan], "x", 0.5])),
       horizon=st.one_of(st.none(), st.integers(0, 300)), exact=st.booleans())
def test_random_phase_layouts_build_or_are_refused(layout, momentum, base_lrs, horizon, exact):
    try:
        s = Schedule(layout, base_lrs, momentum=momentum, horizon=horizon, exact=exact)
    except (ValueError, TypeError):
        event("refused")
        return
    event("built")
    out = s.lr_at(torch.tensor([0, 1, 7, 39, 40, 1000, 2**53 - 1]))
    assert out.shape == (s.num_groups, 7)
    if s.has_momentum:
        assert s.momentum_at(range(50)).shape == (s.num_groups, 50)
    loaded = Schedule.from_state_dict(s.state_dict())
    for a, b in zip(loaded.program(), s.program()):
        assert torch.equal(a.view(torch.int64), b.view(torch.int64))


# --------------------------------------------------------------------------- raw programs
def _seed_programs():
    """Valid programs exercising every part of the layout: tables, recorded values, anchors, momentum."""
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    out = [
        S.step_decay(3, 0.5, warmup=S.linear_warmup_from(4, 0.1), base_lr=[0.1, 0.2]),
        S.warmup_cosine(60, warmup=5, base_lr=[0.3], steps_per_epoch=2),
        S.one_cycle(40, three_phase=True),
        from_torch(torch.optim.lr_scheduler.MultiStepLR(sgd, [3, 9], 0.5)),
        Schedule([[(0, pmax(0.0, STEP // 3.0 - LOCAL % 2.5)), (4, round_f32(sqrt(STEP) / 7.0))]]),
    ]
    return [tuple(t.clone() for t in s.program()) for s in out]


SEEDS = _seed_programs()
WORDS = st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(-3, 70),
                  st.sampled_from([2**62, -2**62, 2**63 - 1, -2**63, 2**55, 12 | (2**40 << 8), 2 | (-1 << 8)]))


@FUZZ
@given(seed=st.integers(0, len(SEEDS) - 1), int_edits=st.lists(st.tuples(st.integers(0, 10**6), WORDS), max_size=4),
       val_edits=st.lists(st.tuples(st.integers(0, 10**6), st.floats(allow_nan=True)), max_size=3),
       truncate=st.one_of(st.none(), st.integers(1, 200)),
       steps=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=8))
def test_mutated_programs_are_validated_or_refused(seed, int_edits, val_edits, truncate, steps):
    ints, vals = (t.clone() for t in SEEDS[seed])
    for at, word in int_edits:
        ints[at % ints.numel()] = word
    for at, v in val_edits:
        vals[at % vals.numel()] = v
    if truncate is not None:
        ints = ints[: max(1, truncate % (ints.numel() + 1))].clone()
    _evaluate_if_valid(ints, vals, steps)


@FUZZ
@given(ints=st.lists(WORDS, min_size=1, max_size=40), vals=st.lists(st.floats(allow_nan=True), min_size=1, max_size=8),
       steps=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=8))
def test_random_programs_are_validated_or_refused(ints, vals, steps):
    _evaluate_if_valid(torch.tensor(ints, dtype=torch.int64), torch.tensor(vals, dtype=torch.float64), steps)


def _evaluate_if_valid(ints, vals, steps):
    try:
        _ops.validate_program(ints, vals)
    except ValueError:
        event("refused")
        with pytest.raises(ValueError):
            _ops.lr_at(ints, vals, torch.tensor(steps), max(1, int(ints[0])))
        return
    event("valid")
    groups = int(ints[0])
    out = _ops.lr_at(ints, vals, torch.tensor(steps), groups)
    assert out.shape == (groups, len(steps)) and out.dtype == torch.float64
