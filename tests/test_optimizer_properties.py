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
from test_bad_inputs import MAX_MESSAGE, assert_steps_alike, freeze, image

import warmup_fused
from warmup_fused import schedules
from warmup_fused.schedules import MAX_STEP, Schedule

EXAMPLES = int(os.environ.get("WARMUP_FUSED_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    return settings(max_examples=EXAMPLES or examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ hyperparameters
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
JUNK = st.sampled_from([None, "0.1", [0.1], True, torch.tensor([0.1, 0.2])])
FLAGS = st.sampled_from([False, True, 0, 1, 2, -1, None, "yes", 1.0])


def numbers(lo: float, hi: float, exclude_max: bool = False):
    """Mostly values in [lo, hi] (so most draws are accepted), and edges, non-finite values and junk."""
    inside = st.floats(lo, hi, exclude_max=exclude_max)
    edges = st.sampled_from([lo, hi, 0.0, -0.0, -1e-3, 1.0, 1.5, 1e30, 5e-324])
    return st.one_of(inside, inside, inside, edges, st.integers(-1, 2), NON_FINITE, JUNK)


def lrs(hi: float):
    """Learning rates: numbers, and one-element tensors (read at every step, as torch does) of any value."""
    tensors = st.one_of(st.floats(0.0, hi), NON_FINITE, st.just(-1e-3)).map(
        lambda v: torch.tensor(v, dtype=torch.float64))
    return st.one_of(numbers(0.0, hi), tensors)


BETA = numbers(0.0, 1.0, exclude_max=True)
BETAS = st.one_of(st.tuples(BETA, BETA), st.tuples(BETA, BETA), st.lists(BETA, min_size=2, max_size=2),
                  st.sampled_from([(0.9,), (0.9, 0.99, 0.999), 0.9, None]))
KEYS = {
    "Adam": dict(lr=lrs(0.1), betas=BETAS, eps=numbers(0.0, 1e-3), weight_decay=numbers(0.0, 0.5),
                 amsgrad=FLAGS, maximize=FLAGS),
    "SGD": dict(lr=lrs(0.5), momentum=numbers(0.0, 1.5), dampening=numbers(-0.5, 1.0),
                weight_decay=numbers(0.0, 0.5), nesterov=FLAGS, maximize=FLAGS),
}
KEYS["AdamW"] = KEYS["Adam"]
BASE = {"AdamW": dict(lr=1e-2), "Adam": dict(lr=1e-2, amsgrad=True), "SGD": dict(lr=0.05, momentum=0.9)}


def _bad_number(value, lo: float = 0.0, hi: float = math.inf) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = value.item()
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
    """Same fresh grads for both, `steps` steps: params and states bit-identical after each. With ours'
    max_grad_norm, torch's grads are clipped first by clip_grad_norm_(foreach=True), as tests/test_low_precision.py
    does."""
    gen = torch.Generator().manual_seed(seed)
    pairs = [(p, q) for g, h in zip(ours.param_groups, ref.param_groups) for p, q in zip(g["params"], h["params"])]
    for k in range(steps):
        for p, q in pairs:
            grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        if ours.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([q for _, q in pairs], ours.max_grad_norm, foreach=True)
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
@fuzz(200)
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


# ---------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_KW = {"AdamW": dict(lr=1e-3, weight_decay=0.1), "Adam": dict(lr=1e-3, amsgrad=True),
                 "SGD": dict(lr=0.05, momentum=0.9, dampening=0.1)}
# The hyperparameters a checkpoint sets (lr follows the checkpoint's schedule; AdamW is always decoupled).
HYPERPARAMETERS = {"AdamW": ("betas", "eps", "weight_decay", "amsgrad", "maximize"),
                   "Adam": ("betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
                   "SGD": ("momentum", "dampening", "nesterov", "weight_decay", "maximize")}
WIDE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**64, 2**64),
                 st.sampled_from([0, -1, 1, 2**24, 2**53 - 2, 2**53 - 1, 2**53, 2**63]), JUNK)
TENSOR_EDITS = [
    lambda t: t.reshape(-1), lambda t: t.reshape(-1)[:1], lambda t: torch.cat([t.reshape(-1)] * 2),
    lambda t: t.to(torch.int32), lambda t: t.to(torch.float64), lambda t: t.to(torch.bfloat16),
    lambda t: t.to(torch.bool), lambda t: t.to(torch.complex64),
    lambda t: torch.full_like(t, math.nan), lambda t: torch.full_like(t, math.inf), lambda t: -t.abs() - 1,
    lambda t: torch.zeros_like(t), lambda t: t * 2 + 1, lambda t: t.to_sparse(), lambda t: t.clone().requires_grad_(),
    lambda t: t.tolist(), lambda t: float(t.reshape(-1)[0]),
]
STATE_KEYS = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step", "momentum_buffer", "master_weight"]


def trained(cls: str, steps: int, seed: int):
    """Two groups, a relative schedule, `steps` steps on fresh random grads."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, 5, generator=gen), torch.randn(7, generator=gen)
    kw = CHECKPOINT_KW[cls]
    opt = getattr(warmup_fused, cls)([{"params": [a]}, {"params": [b], "lr": 2 * kw["lr"]}],
                                     schedule=schedules.warmup_cosine(100, warmup=10), **kw)
    for _ in range(steps):
        for t in (a, b):
            t.grad = torch.randn(t.shape, generator=gen)
        opt.step()
    return opt


def _at(sd, path: tuple):
    for k in path:
        sd = sd[k]
    return sd


def _locations(sd) -> list:
    """(container path, key) of every entry a mutation may touch in a (possibly already mutated) checkpoint: the
    entries of its dicts at any depth, and the param groups themselves."""
    out, todo = [], [()]
    while todo:
        path = todo.pop()
        node = _at(sd, path)
        for k in (node.keys() if isinstance(node, dict) else range(len(node))):
            out.append((path, k))
            if isinstance(node[k], dict) or (path, k) == ((), "param_groups") and isinstance(node[k], list):
                todo.append(path + (k,))
    return sorted(out, key=repr)


def replacements(value):
    """Other values for an entry: tensors of other shapes, dtypes, values and types; other numbers; junk."""
    if isinstance(value, torch.Tensor):
        dense = value.detach().to_dense() if value.layout != torch.strided else value.detach()
        return st.sampled_from(TENSOR_EDITS).map(lambda edit: edit(dense))
    if isinstance(value, bool):
        return FLAGS
    if isinstance(value, (int, float)):
        return WIDE
    if isinstance(value, (list, tuple)) and value:
        edited = st.tuples(st.integers(0, len(value) - 1), WIDE).map(
            lambda e: type(value)(v if i != e[0] else e[1] for i, v in enumerate(value)))
        return st.one_of(st.just(type(value)()), st.just(value[:1]), st.just(value + value[:1]), edited, JUNK)
    return st.one_of(JUNK, WIDE, st.sampled_from([{}, "host", "schedule"]))


def mutate(data, sd: dict) -> dict:
    bad = copy.deepcopy(sd)
    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
        path, key = data.draw(st.sampled_from(_locations(bad)), label="where")
        node = _at(bad, path)
        how = data.draw(st.sampled_from(["drop", "rename", "replace", "replace"]), label="how")
        if how == "drop" and isinstance(node, dict):
            del node[key]
        elif how == "rename" and isinstance(node, dict):
            if isinstance(key, int):  # a param's index in state
                names = [key + 100]
            else:
                names = [key + "_x"] + (STATE_KEYS if path[:1] == ("state",) else [])
            node[data.draw(st.sampled_from(names), label="new name")] = node.pop(key)
        else:
            node[key] = data.draw(replacements(node[key]), label="value")
    return bad


def _known_gap(cls: str, sd: dict, bad: dict) -> str | None:
    """The strict xfail of tests/test_bad_inputs.py that a mutated checkpoint falls under, if any."""
    groups, extra, state = bad.get("param_groups"), bad.get("warmup_fused"), bad.get("state")
    own = {"lr", "weight_decay"} | ({"momentum", "dampening", "nesterov"} if cls == "SGD" else
                                    {"betas", "eps", "amsgrad"})
    if isinstance(groups, list) and all(isinstance(g, dict) for g in groups):
        switches = ("foreach", "fused", "capturable", "differentiable")
        if any(isinstance(g.get(k), torch.Tensor) for g in groups for k in switches):
            return "test_gap_switch_values_are_checked_by_type"
        if any(not own <= set(g) for g in groups):
            return "test_gap_a_checkpoint_group_without_the_optimizers_keys_is_refused"
        if any(freeze(g.get("initial_lr"), False) != freeze(o["initial_lr"], False)
               for g, o in zip(groups, sd["param_groups"])):
            return "test_gap_load_state_dict_resumes_the_saved_schedule (or _binds_the_schedule_before_writing)"
    saved = [s for s in state.values() if isinstance(s, dict)] if isinstance(state, dict) else []
    if any("master_weight" in s for s in saved):
        return "test_gap_master_weight_of_a_float32_param_is_refused"
    tensors = [v for s in saved for v in s.values() if isinstance(v, torch.Tensor)]
    if any(v.layout != torch.strided for v in tensors):
        return "test_gap_a_sparse_state_tensor_is_refused_before_writing"
    if any(v.requires_grad for v in tensors):
        return "test_gap_a_state_tensor_that_requires_grad_loads_detached"
    if isinstance(extra, dict):
        if not _bad_number(extra.get("max_grad_norm")) and extra["max_grad_norm"] == 0:
            return "test_gap_checkpoint_extras_are_validated_like_the_constructor"
        seed = extra.get("rng_seed")
        if not _bad_number(seed) and not (isinstance(seed, int) and seed < 2**63):
            return "test_gap_checkpoint_extras_are_validated_like_the_constructor"
        sources, host = extra.get("lr_source"), extra.get("host_lr")
        if isinstance(sources, list) and isinstance(host, list) and len(sources) == len(host) == 2 and \
                all(isinstance(h, float) for h in host) and any(
                    s == "host" and not (math.isfinite(h) and h >= 0) for s, h in zip(sources, host)):
            return "test_gap_checkpoint_extras_are_validated_like_the_constructor"
        schedule = extra.get("schedule")
        if freeze(schedule, False) != freeze(sd["warmup_fused"]["schedule"], False):
            try:
                loaded = Schedule.from_state_dict(schedule)
            except (TypeError, ValueError):
                return None
            if loaded.relative or loaded.num_groups != 2:
                return "test_gap_load_state_dict_binds_the_schedule_before_writing"
    return None


def _assert_faithful(cls: str, opt, bad: dict) -> None:
    """What the optimizer holds after loading `bad` is what `bad` says."""
    saved_ids = [sid for g in bad["param_groups"] for sid in g["params"]]
    param = dict(zip(saved_ids, (p for g in opt.param_groups for p in g["params"])))
    for sid, st_ in bad["state"].items():
        p = param[sid]
        for key, value in st_.items():
            if value is None:
                continue
            held = opt.state[p][key]
            if key == "step":
                assert float(held) == float(value), f"state[{sid}]['step']"
            else:
                assert same_bits(held, value.detach().to(p.dtype)), f"state[{sid}][{key!r}]"
    for g, (group, saved) in enumerate(zip(opt.param_groups, bad["param_groups"])):
        for key in HYPERPARAMETERS[cls]:
            if key in saved:
                assert freeze(group[key], False) == freeze(saved[key], False), f"param_groups[{g}][{key!r}]"
    if isinstance(bad.get("warmup_fused"), dict):
        assert int(opt.sched_step()) == bad["warmup_fused"]["sched_step"]


def _assert_state_dict_drives_torch(cls: str, opt) -> None:
    """Its own state_dict() makes torch's fused optimizer take the same next step."""
    groups = [{"params": [p.detach().clone() for p in g["params"]]} for g in opt.param_groups]
    ref = getattr(torch.optim, cls)(groups, lr=1.0, fused=True)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"] = [{**g, **for_torch({k: g[k] for k in ("amsgrad", "maximize", "nesterov") if k in g})}
                          for g in sd["param_groups"]]
    ref.load_state_dict(sd)
    _assert_like_torch(opt, ref, steps=1, seed=5, where="torch from our state_dict()")


@pytest.mark.filterwarnings("ignore:param group .* the checkpoint's lr:UserWarning")  # a torch-style checkpoint
@pytest.mark.parametrize("cls", ["AdamW", "Adam", "SGD"])
@fuzz(250)
@given(data=st.data())
def test_checkpoint_mutations_load_faithfully_or_are_refused(cls, data):
    sd = copy.deepcopy(trained(cls, 3, seed=1).state_dict())
    bad = mutate(data, sd)
    gap = _known_gap(cls, sd, bad)
    if gap is not None:
        event(f"known gap: {gap}")
        return
    a, twin = trained(cls, 2, seed=0), trained(cls, 2, seed=0)
    before = image(a)
    try:
        a.load_state_dict(copy.deepcopy(bad))
    except Exception as e:  # noqa: BLE001 - judged below
        event("refused")
        assert isinstance(e, (ValueError, TypeError)), f"{type(e).__name__}: {e}"
        assert len(str(e)) <= MAX_MESSAGE, str(e)
        assert image(a) == before, "a refused checkpoint changed the optimizer"
        assert_steps_alike(a, twin)
        return
    event("loaded")
    twin.load_state_dict(copy.deepcopy(bad))
    _assert_faithful(cls, a, bad)
    if int(a.sched_step()) > MAX_STEP - 5:  # the counter reaches its limit (2**53 - 1) within these steps
        event("loaded at the counter's limit")
        assert_steps_alike(a, twin, steps=4)
        return
    assert_steps_alike(a, twin, succeed=True)
    assert bool(torch.isfinite(a.last_lr()).all()), a.last_lr()
    _assert_state_dict_drives_torch(cls, a)
