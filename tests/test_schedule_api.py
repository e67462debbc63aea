"""The Schedule API an optimizer consumes: relative vs absolute base LRs, the momentum channel, state_dict.

Every value comparison is on float64 bits (torch.equal of the int64 views), at every compared step.
"""
from __future__ import annotations

import io
import json
import math
import random

import pytest
import torch
from torch.optim import lr_scheduler as lrs

from warmup_fused import schedules as S
from warmup_fused._expr import BASE, LOCAL, STEP, cos, lift, pmax, repeat_mul
from warmup_fused.schedules import Recorded, Schedule, from_torch

FAR = [2**31 + 5, 2**40 + 3, 2**52 + 1]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(torch.int64)


def assert_bits(got: torch.Tensor, expect: torch.Tensor, what: str = "") -> None:
    assert got.shape == expect.shape, (what, got.shape, expect.shape)
    assert torch.equal(bits(got), bits(expect)), what


def python_table(fn, groups, steps) -> torch.Tensor:
    return torch.tensor([[float(fn(g, s)) for s in steps] for g in range(groups)], dtype=torch.float64)


def sgd(lrs_, momentum=0.9):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs_]
    return torch.optim.SGD(groups, lr=lrs_[0], momentum=momentum)


def fresh_lrs(n, rng=random.Random(7)):
    return [rng.uniform(1e-4, 0.5) for _ in range(n)]


# --------------------------------------------------------------------------- relative / absolute
def test_native_without_base_lr_is_relative_and_binds():
    lrs_ = fresh_lrs(3)
    rel = S.warmup_cosine(500, warmup=50)
    assert rel.relative and rel.base_lrs == (1.0,)
    bound = rel.with_base_lrs(lrs_)
    assert not bound.relative and bound.base_lrs == tuple(lrs_)
    direct = S.warmup_cosine(500, warmup=50, base_lr=lrs_)
    assert not direct.relative
    assert_bits(bound.lr_at(range(700)), direct.lr_at(range(700)))
    # Binding to 1.0 still makes an absolute schedule with the same values.
    one = rel.with_base_lrs([1.0])
    assert not one.relative
    assert_bits(one.lr_at(range(700)), rel.lr_at(range(700)))


def test_schedule_constructor_relative_or_absolute():
    b = fresh_lrs(2)
    assert Schedule([[(0, BASE * STEP)]]).relative
    assert Schedule([[(0, BASE)], [(0, BASE * 0.5)]]).num_groups == 2
    s = Schedule([[(0, BASE * STEP)]], b)
    assert not s.relative and s.num_groups == 2
    assert_bits(s.lr_at(range(10)), python_table(lambda g, t: b[g] * t, 2, range(10)))
    # Absolute closed-form schedules rebind (to absolute ones), as before.
    c = fresh_lrs(2)
    assert_bits(s.with_base_lrs(c).lr_at(range(10)), python_table(lambda g, t: c[g] * t, 2, range(10)))
    assert s.with_base_lrs(b) is s


def test_recorded_needs_base_lrs():
    rec = Recorded(((0.1, 0.2, 0.3),))
    with pytest.raises(ValueError, match="base_lrs"):
        Schedule([[(0, rec)]])
    s = Schedule([[(0, rec)]], [0.1])
    assert not s.relative
    with pytest.raises(ValueError, match="base_lrs"):
        s.with_base_lrs([0.2])
    assert s.with_base_lrs([0.1]) is s


def test_from_torch_is_absolute_and_keeps_its_own_lrs():
    """A one-group OneCycleLR schedule holds its own LRs (initial_lr = max_lr / div_factor, not the
    optimizer's lr): it is absolute, so an optimizer uses them as they are and never rebinds it."""
    opt = sgd([0.05])
    sched = lrs.OneCycleLR(opt, max_lr=0.7, total_steps=100)
    s = from_torch(sched)
    assert not s.relative and s.base_lrs == (0.7 / 25.0,)
    want = []
    for _ in range(100):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert_bits(s.lr_at(range(100)), torch.tensor([want], dtype=torch.float64))
    assert s.with_base_lrs(list(s.base_lrs)) is s
    with pytest.raises(ValueError, match="base_lrs"):
        s.with_base_lrs([0.05])


def test_one_group_recorded_schedule_repeats_over_groups_with_its_own_lr():
    """from_torch of a one-group scheduler may drive several param groups, all at its own LRs (and momentum)."""
    s = from_torch(lrs.OneCycleLR(sgd([0.05]), max_lr=0.3, total_steps=300))
    wide = s.with_base_lrs(list(s.base_lrs) * 3)
    assert wide.num_groups == 3 and wide.has_momentum and not wide.relative
    assert_bits(wide.lr_at(range(320)), s.lr_at(range(320)).expand(3, -1))
    assert_bits(wide.momentum_at(range(320)), s.momentum_at(range(320)).expand(3, -1))
    with pytest.raises(ValueError, match="base_lrs"):
        s.with_base_lrs([s.base_lrs[0], 0.3])
    loaded = Schedule.from_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="state_dict"):
        loaded.with_base_lrs(list(s.base_lrs) * 2)


@pytest.mark.parametrize("make", [
    lambda: S.constant(base_lr=torch.tensor(0.1)),
    lambda: S.step_decay(10, base_lr=torch.tensor([0.1, 0.2])),
    lambda: S.one_cycle(100, base_lr=torch.tensor(0.1)),
    lambda: S.chained([S.constant()], base_lr=torch.tensor(0.1)),
])
def test_tensor_base_lr_is_refused_by_name(make):
    with pytest.raises(TypeError, match="base_lr.*Tensor"):
        make()


@pytest.mark.parametrize("make", [
    lambda: Schedule([[(0, BASE)]], torch.tensor([0.1])),
    lambda: Schedule([[(0, BASE)]]).with_base_lrs(torch.tensor([0.1])),
    lambda: Schedule([[(0, BASE)]], 0.1),
])
def test_tensor_or_scalar_base_lrs_is_refused_by_name(make):
    with pytest.raises(TypeError, match="base_lrs"):
        make()


def test_sequential_relative_absolute_rules():
    a, b = S.constant(warmup=10), S.cosine_annealing(90)
    rel = S.sequential([a, b], [10])
    assert rel.relative
    lrs_ = fresh_lrs(3)
    bound = rel.with_base_lrs(lrs_)
    direct = S.sequential([S.constant(warmup=10, base_lr=lrs_), S.cosine_annealing(90, base_lr=lrs_)], [10])
    assert not direct.relative
    assert_bits(bound.lr_at(range(200)), direct.lr_at(range(200)))
    with pytest.raises(ValueError, match="relative"):
        S.sequential([a, S.cosine_annealing(90, base_lr=0.1)], [10])
    with pytest.raises(ValueError, match="relative"):
        S.sequential([from_torch(lrs.LinearLR(sgd([0.1]), 0.1, total_iters=5)), b], [10])


def test_chained_takes_relative_factors_only():
    f1, f2 = S.step_decay(7, 0.5), S.linear_decay(50)
    assert S.chained([f1, f2]).relative
    assert not S.chained([f1, f2], base_lr=0.3).relative
    with pytest.raises(ValueError, match=r"schedules\[1\].*absolute"):
        S.chained([f1, S.linear_decay(50, base_lr=0.3)])
    with pytest.raises(ValueError, match=r"schedules\[0\].*momentum"):
        S.chained([S.one_cycle(100), f2])


# --------------------------------------------------------------------------- momentum channel
def momentum_schedule(base_lrs=None, exact=True, horizon=300):
    lr = [(0, BASE * (STEP / 20.0)), (20, BASE * pmax(0.0, (200.0 - STEP) / 180.0))]
    mom = [[(0, 0.95 - STEP * 0.001), (20, 0.85 + 0.05 * (1.0 + cos(math.pi * LOCAL / 180.0)))],
           [(0, 0.9 + STEP / 1000.0), (50, 0.98 * (LOCAL + 1.0) / (LOCAL + 2.0))]]
    return Schedule([lr], base_lrs, momentum=mom, horizon=horizon, exact=exact)


def momentum_reference(g, t):
    if g == 0:
        return 0.95 - t * 0.001 if t < 20 else 0.85 + 0.05 * (1.0 + math.cos(math.pi * (t - 20) / 180.0))
    return 0.9 + t / 1000.0 if t < 50 else 0.98 * ((t - 50) + 1.0) / ((t - 50) + 2.0)


def lr_reference(base):
    return lambda g, t: base[g] * (t / 20.0) if t < 20 else base[g] * max(0.0, (200.0 - t) / 180.0)


def test_momentum_channel_values_and_layout():
    s = momentum_schedule()
    assert s.relative and s.has_momentum and s.num_groups == 2
    ints, vals = s.program()
    assert int(ints[0]) == 4  # LR rows then momentum rows
    steps = list(range(400)) + FAR
    assert_bits(s.lr_at(torch.tensor(steps)), python_table(lr_reference([1.0, 1.0]), 2, steps))
    assert_bits(s.momentum_at(torch.tensor(steps)), python_table(momentum_reference, 2, steps))
    # The momentum's cos phase is tabled in exact mode (over the horizon), as an LR phase would be.
    fast = momentum_schedule(exact=False)
    assert s.table_bytes == fast.table_bytes + 8 * (300 - 20)
    assert_bits(fast.momentum_at(torch.tensor(steps)), s.momentum_at(torch.tensor(steps)))


def test_with_base_lrs_keeps_momentum():
    lrs_ = fresh_lrs(2)
    s = momentum_schedule().with_base_lrs(lrs_)
    assert not s.relative and s.has_momentum
    steps = range(300)
    assert_bits(s.lr_at(steps), python_table(lr_reference(lrs_), 2, steps))
    assert_bits(s.momentum_at(steps), python_table(momentum_reference, 2, steps))
    # A one-group schedule bound to three groups carries its momentum to each of them.
    one = S.one_cycle(200).with_base_lrs(fresh_lrs(3))
    assert one.num_groups == 3
    assert_bits(one.momentum_at(range(250)), S.one_cycle(200).momentum_at(range(250)).expand(3, -1))


def test_momentum_errors():
    with pytest.raises(ValueError, match="momentum"):
        Schedule([[(0, BASE)]], momentum=[[(0, BASE * 0.9)]])
    with pytest.raises(ValueError, match="momentum"):
        Schedule([[(0, BASE)]], [0.1, 0.2], momentum=[[(0, lift(0.9))]] * 3)
    with pytest.raises(ValueError, match="momentum"):
        S.constant().momentum_at(range(3))
    with pytest.raises(ValueError, match="momentum"):
        S.sequential([S.one_cycle(100), S.constant()], [50])


def test_sequential_joins_momentum_channels():
    a, b = S.one_cycle(100, three_phase=True), S.one_cycle(60, anneal_strategy="linear", max_momentum=0.97)
    seq = S.sequential([a, b], [80])
    assert seq.has_momentum and seq.relative
    steps = range(200)
    expect = torch.cat([a.momentum_at(range(80)), b.momentum_at(range(120))], dim=1)
    assert_bits(seq.momentum_at(steps), expect)
    expect = torch.cat([a.lr_at(range(80)), b.lr_at(range(120))], dim=1)
    assert_bits(seq.lr_at(steps), expect)


# --------------------------------------------------------------------------- lr_at argument handling
def test_lr_at_empty_and_huge_ranges():
    s = S.linear_decay(100, base_lr=fresh_lrs(2))
    before = s.lr_at(range(150))
    for empty in (range(5, 0), range(0), range(3, 3)):
        out = s.lr_at(empty)
        assert out.shape == (2, 0) and out.dtype == torch.float64
    assert s.lr_at(torch.zeros(0, dtype=torch.int64)).shape == (2, 0)
    assert_bits(s.lr_at(range(9, 0, -3)), s.lr_at(torch.tensor([9, 6, 3])))
    for huge in (range(0, 2**60), range(2**62, 2**63 - 1)):
        with pytest.raises(ValueError, match="steps"):
            s.lr_at(huge)
    with pytest.raises(ValueError, match="steps"):
        s.lr_at(range(2**53 - 2, 2**53 + 2))
    with pytest.raises(ValueError, match="steps"):
        s.lr_at(2**64)
    assert_bits(s.lr_at(range(150)), before)  # the refused calls changed nothing


# --------------------------------------------------------------------------- state_dict
def plain(x) -> bool:
    if type(x) is dict:
        return all(type(k) is str and plain(v) for k, v in x.items())
    if type(x) is list:
        return all(plain(v) for v in x)
    return type(x) in (str, int, float, bool)


def _steps():
    return torch.tensor(list(range(0, 3000, 7)) + [2**31, 2**40 + 1, 2**52 + 3])


SERIALISED = {
    "relative-closed": lambda: S.warmup_cosine(1000, warmup=100),
    "absolute-table-epochs": lambda: S.cosine_annealing(200, 1e-5, warmup=S.gradual_warmup(5, 4.0),
                                                        base_lr=fresh_lrs(3), steps_per_epoch=3),
    "fast-no-horizon": lambda: S.exponential_decay(0.999, base_lr=[0.3], exact=False),
    "anchors": lambda: S.step_decay(1, 0.999, warmup=20, base_lr=fresh_lrs(2)),
    "momentum": lambda: S.one_cycle(2000, three_phase=True, base_lr=fresh_lrs(2), max_momentum=[0.97, 0.93]),
    "recorded": lambda: from_torch(lrs.CosineAnnealingWarmRestarts(sgd(fresh_lrs(2)), 50, 2), horizon=1500),
    "recorded-momentum": lambda: from_torch(lrs.CyclicLR(sgd(fresh_lrs(2)), 1e-4, 1e-2, 70, mode="exp_range",
                                                         gamma=0.999), horizon=1000),
}


@pytest.mark.parametrize("name", sorted(SERIALISED))
def test_state_dict_round_trip(name):
    s = SERIALISED[name]()
    sd = s.state_dict()
    assert plain(sd), sd.keys()
    buf = io.BytesIO()
    torch.save({"schedule": sd}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["schedule"]
    via_json = json.loads(json.dumps(sd))
    for state in (loaded, via_json):
        t = Schedule.from_state_dict(state)
        for attr in ("base_lrs", "relative", "has_momentum", "steps_per_epoch", "horizon", "exact", "name",
                     "num_groups", "table_bytes"):
            assert getattr(t, attr) == getattr(s, attr), attr
        for a, b in zip(t.program(), s.program()):
            assert torch.equal(bits(a) if a.is_floating_point() else a, bits(b) if b.is_floating_point() else b)
        assert_bits(t.lr_at(_steps()), s.lr_at(_steps()), name)
        if s.has_momentum:
            assert_bits(t.momentum_at(_steps()), s.momentum_at(_steps()), name)
        assert t.state_dict() == sd


def test_loaded_schedule_binds_only_to_its_own_base_lrs():
    lrs_ = fresh_lrs(2)
    s = S.linear_decay(100, warmup=10, base_lr=lrs_)
    t = Schedule.from_state_dict(s.state_dict())
    assert t.with_base_lrs(lrs_) is t
    with pytest.raises(ValueError, match="state_dict"):
        t.with_base_lrs([0.5, 0.5])
    rel = Schedule.from_state_dict(S.linear_decay(100).state_dict())
    assert rel.relative
    bound = rel.with_base_lrs([1.0])
    assert not bound.relative
    assert_bits(bound.lr_at(range(120)), rel.lr_at(range(120)))
    with pytest.raises(ValueError, match="state_dict"):
        rel.with_base_lrs([0.1])
    with pytest.raises(ValueError, match="state_dict"):
        S.sequential([t, t], [5])


def _corrupt(sd, **changes):
    out = dict(sd)
    for k, v in changes.items():
        if v is KeyError:
            del out[k]
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("change,match", [
    (dict(format="other"), "format"),
    (dict(version=2), "version"),
    (dict(ints=KeyError), "ints"),
    (dict(extra=1), "extra"),
    (dict(name=3), "name"),
    (dict(relative=1), "relative"),
    (dict(base_lrs=[0.1]), "program groups"),
    (dict(base_lrs=[0.1, "x"]), "base_lrs"),
    (dict(base_lrs=[0.1, -1.0]), "base_lrs"),
    (dict(relative=True), "relative"),
    (dict(steps_per_epoch=2), "steps_per_epoch"),
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(horizon=-5), "horizon"),
    (dict(horizon=1.5), "horizon"),
    (dict(has_momentum=True), "program groups"),
    (dict(vals=[1]), "vals"),
    (dict(ints=[]), "ints"),
    (dict(ints=[2**63]), "ints"),
    (dict(ints=[True]), "ints"),
])
def test_state_dict_validation(change, match):
    sd = S.warmup_cosine(300, warmup=30, base_lr=fresh_lrs(2)).state_dict()
    with pytest.raises(ValueError, match=match):
        Schedule.from_state_dict(_corrupt(sd, **change))


def test_state_dict_program_is_validated():
    sd = S.step_decay(10, 0.5, base_lr=[0.1]).state_dict()
    # A code index pointing out of the program, and an anchor block with a bogus fixed-point count.
    bad = list(sd["ints"])
    bad[1 + 3 + 1] = 10**6
    with pytest.raises(ValueError, match="out of bounds"):
        Schedule.from_state_dict(_corrupt(sd, ints=bad))
    block = next(w >> 8 for w in sd["ints"][9:] if w & 0xFF == 12)
    vals = list(sd["vals"])
    vals[block + 1] = 1e9
    with pytest.raises(ValueError, match="repeat_mul"):
        Schedule.from_state_dict(_corrupt(sd, vals=vals))
    with pytest.raises(TypeError, match="state"):
        Schedule.from_state_dict([1, 2])


def test_repeat_mul_state_dict_keeps_exactness_far_out():
    s = Schedule([[(0, repeat_mul(BASE, 0.9995, STEP // 3.0))]], [0.25])
    t = Schedule.from_state_dict(json.loads(json.dumps(s.state_dict())))
    steps = torch.tensor([0, 1, 2, 3, 10_000, 123_456, 2**40])
    assert_bits(t.lr_at(steps), s.lr_at(steps))
