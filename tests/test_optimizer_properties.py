"""Property tests of bad inputs to the optimizers (hypothesis): accepted and then exact, or refused and nothing lost.

* Hyperparameters, valid and invalid (lr, betas, eps, weight_decay, momentum, dampening, nesterov, amsgrad,
  maximize; non-finite values, wrong types), reach AdamW / Adam / SGD through the constructor, a write into
  ``param_groups`` or ``add_param_group``. An oracle written here (torch's rules, plus ours: every number finite,
  flags bool) says which must be refused. Refused: ValueError/TypeError naming an invalid argument, the optimizer
  unchanged. Accepted (or after a refusal): bit-identical to torch.optim.X(fused=True) given the same accepted
  values, over three steps.
* Mutations of a real checkpoint (a key dropped or renamed; tensors of other shapes, dtypes or values; other
  numbers, types and sched_step values): refused with nothing changed (the optimizer then steps like its twin), or
  loaded faithfully: every saved state tensor and hyperparameter is what the optimizer holds, it steps like a twin
  loaded from the same dict, and its own state_dict() then drives torch's fused optimizer to the same bits.

Mutations that hit a known gap are left to its strict xfail in tests/test_bad_inputs.py (see ``_known_gap``).
CI runs a bounded, derandomized number of examples; set WARMUP_FUSED_FUZZ_EXAMPLES for a longer run.
"""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_bad_inputs import assert_steps_alike, freeze, image

import warmup_fused
from warmup_fused import schedules
from warmup_fused.schedules import Schedule

EXAMPLES = int(os.environ.get("WARMUP_FUSED_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    return settings(max_examples=EXAMPLES or examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ hyperparameters
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
JUNK = st.sampled_from([None, "0.1", [0.1], True, torch.tensor([0.1, 0.2])])
FLAGS = st.sampled_from([False, True, 0, 1, 2, -1, None, "yes", 1.0])


def numbers(lo: float, hi: float, exclude_max: bool = False):
    """Mostly values in [lo, hi] (so most draws are accepted), and edges, non-finite values and junk."""
    inside = st.floats(lo, hi, exclude_max=exclude_max)
    edges = st.sampled_from([lo, hi, 0.0, -0.0, -1e-3, 1.0, 1.5, 1e30, 5e-324])
    return st.one_of(inside, inside, inside, edges, st.integers(-1, 2), NON_FINITE, JUNK)


BETA = numbers(0.0, 1.0, exclude_max=True)
BETAS = st.one_of(st.tuples(BETA, BETA), st.tuples(BETA, BETA), st.lists(BETA, min_size=2, max_size=2),
                  st.sampled_from([(0.9,), (0.9, 0.99, 0.999), 0.9, None]))
KEYS = {
    "Adam": dict(lr=numbers(0.0, 0.1), betas=BETAS, eps=numbers(0.0, 1e-3), weight_decay=numbers(0.0, 0.5),
                 amsgrad=FLAGS, maximize=FLAGS),
    "SGD": dict(lr=numbers(0.0, 0.5), momentum=numbers(0.0, 1.5), dampening=numbers(-0.5, 1.0),
                weight_decay=numbers(0.0, 0.5), nesterov=FLAGS, maximize=FLAGS),
}
KEYS["AdamW"] = KEYS["Adam"]
BASE = {"AdamW": dict(lr=1e-2), "Adam": dict(lr=1e-2, amsgrad=True), "SGD": dict(lr=0.05, momentum=0.9)}


def _bad_number(value, lo: float = 0.0, hi: float = math.inf) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return not (math.isfinite(value) and lo <= value and (value < hi if hi < math.inf else True))


def _bad_flag(value) -> bool:
    return type(value) not in (bool, int) or value not in (0, 1)


def must_refuse(cls: str, group: dict) -> set:
    """The keys of `group` that make it invalid (torch's rules, plus: numbers finite, flags bool)."""
    bad = set()
    for key, value in group.items():
        if key in ("lr", "eps", "weight_decay", "momentum"):
            bad |= {key} if _bad_number(value) else set()
        elif key == "dampening":
            bad |= {key} if _bad_number(value, lo=-math.inf) else set()
        elif key in ("amsgrad", "maximize", "nesterov"):
            bad |= {key} if _bad_flag(value) else set()
        elif key == "betas":
            pair = isinstance(value, (tuple, list)) and len(value) == 2
            bad |= {key} if not pair or any(_bad_number(b, hi=1.0) for b in value) else set()
    if cls == "SGD" and not bad and group.get("nesterov") and (
            group.get("momentum", 0.0) <= 0 or group.get("dampening", 0.0) != 0):
        bad.add("nesterov")
    return bad


def for_torch(kw: dict) -> dict:
    """The same values as torch takes them: flags as bools (its fused kernels take no int 0 / 1 flags; ours reads
    them as bools, as torch's Python code does) and betas as floats (torch refuses an int beta; ours reads it as
    the float it equals)."""
    out = {k: bool(v) if k in ("amsgrad", "maximize", "nesterov") else v for k, v in kw.items()}
    if "betas" in out:
        out["betas"] = tuple(float(b) for b in out["betas"])
    return out


def _params(dtype, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(37, generator=gen).to(dtype), torch.randn(3, 5, generator=gen).to(dtype)]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype and shape, NaN where the other is NaN, every other value bit-identical (a NaN's payload and sign
    are the hardware's choice, as in test_engine_fuzz)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().contiguous(), b.detach().contiguous()
    nan = a.isnan() if a.is_floating_point() else torch.zeros_like(a, dtype=torch.bool)
    if not torch.equal(nan, b.isnan() if b.is_floating_point() else nan):
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a[~nan].view(ints), b[~nan].view(ints))


def _assert_like_torch(ours, ref, steps: int, seed: int, where: str) -> None:
    """Same fresh grads for both, `steps` steps: params and states bit-identical after each."""
    gen = torch.Generator().manual_seed(seed)
    pairs = [(p, q) for g, h in zip(ours.param_groups, ref.param_groups) for p, q in zip(g["params"], h["params"])]
    for k in range(steps):
        for p, q in pairs:
            grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
        for i, (p, q) in enumerate(pairs):
            assert same_bits(p, q), f"{where}: step {k + 1}, param {i}"
            ours_state, ref_state = ours.state.get(p, {}), ref.state.get(q, {})
            assert sorted(ours_state) == sorted(ref_state), f"{where}: step {k + 1}, param {i}: state keys"
            for key, value in ref_state.items():
                assert same_bits(ours_state[key], value), f"{where}: step {k + 1}, param {i}: state {key}"


def _assert_refusal(error: Exception, bad: set, group: dict, where: str) -> None:
    event("refused")
    assert isinstance(error, (ValueError, TypeError)), f"{where}: {type(error).__name__}: {error}"
    assert bad, f"{where}: refused valid values: {error}"
    names = set(bad)
    if bad == {"nesterov"} and group.get("dampening", 0.0) < 0:
        names.add("dampening")  # test_gap_nesterov_with_negative_dampening_names_nesterov (test_bad_inputs.py)
    assert any(key in str(error).lower() for key in names), f"{where}: names none of {sorted(bad)}: {error}"


@pytest.mark.parametrize("cls", ["AdamW", "Adam", "SGD"])
@fuzz(60)
@given(data=st.data(), route=st.sampled_from(["constructor", "write", "add_param_group"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_hyperparameters_are_exact_or_refused(cls, data, route, dtype):
    keys = dict(KEYS[cls])
    if route == "write":
        keys.pop("amsgrad", None)  # torch cannot switch amsgrad on after a step (KeyError 'max_exp_avg_sq')
    kw = data.draw(st.fixed_dictionaries({}, optional=keys), label="hyperparameters")
    ours_cls, ref_cls = getattr(warmup_fused, cls), getattr(torch.optim, cls)
    ps = _params(dtype, seed=1)
    qs = [p.clone().requires_grad_() for p in ps]
    event(route)
    if route == "constructor":
        bad = must_refuse(cls, kw)
        try:
            ours = ours_cls(ps, **kw)
        except Exception as e:  # noqa: BLE001 - judged by _assert_refusal
            _assert_refusal(e, bad, kw, "constructor")
            return
        assert not bad, f"accepted {kw}, but {sorted(bad)} are invalid"
        ref = ref_cls(qs, fused=True, **for_torch(kw))
    else:
        first = 1 if route == "add_param_group" else 2  # params given at construction
        ours, ref = ours_cls(ps[:first], **BASE[cls]), ref_cls(qs[:first], fused=True, **BASE[cls])
        _assert_like_torch(ours, ref, steps=1, seed=2, where="before the edit")
        if route == "write":
            for key, value in kw.items():
                group = {**ours.param_groups[0], key: value}
                bad = must_refuse(cls, group) & {key, "nesterov"}
                before = image(ours)
                try:
                    ours.param_groups[0][key] = value
                except Exception as e:  # noqa: BLE001
                    _assert_refusal(e, bad, group, f"param_groups[0][{key!r}] = {value!r}")
                    assert image(ours) == before, f"a refused write of {key} changed the optimizer"
                    continue
                assert not bad, f"accepted param_groups[0][{key!r}] = {value!r}"
                ref.param_groups[0].update(for_torch({key: value}))
        else:
            group = {**ours.defaults, **kw}
            bad = must_refuse(cls, group)
            before = image(ours)
            try:
                ours.add_param_group({"params": ps[1:], **kw})
            except Exception as e:  # noqa: BLE001
                _assert_refusal(e, bad, group, "add_param_group")
                assert image(ours) == before, "a refused add_param_group changed the optimizer"
            else:
                assert not bad, f"add_param_group accepted {kw}, but {sorted(bad)} are invalid"
                ref.add_param_group({"params": qs[1:], **for_torch(kw)})
    event("stepped like torch")
    _assert_like_torch(ours, ref, steps=3, seed=3, where=f"{route} {kw}")
