"""from_optax against optax, bit for bit: the LR of step t is ``jax.jit(schedule)(jnp.int32(t))``, what
optax's jitted update computes from its int32 count (which stops at 2**31 - 1).

Every comparison is on the int64 view of float64 LRs, at every step. Schedules that settle to a constant are
converted without a horizon and compared well past the step where the recording stops.
"""
from __future__ import annotations

import random

import pytest
import torch

optax = pytest.importorskip("optax", reason="optax is not installed (pip install warmup_fused[optax])")
jax = pytest.importorskip("jax", reason="jax is not installed (pip install warmup_fused[optax])")
jnp = jax.numpy

from warmup_fused.schedules import from_optax  # noqa: E402

from foreign_helpers import assert_bits_equal as _assert_bits_equal, recorded_steps


def assert_bits_equal(got, expect, what, steps=None):
    _assert_bits_equal(got, expect, what, steps, "optax")

N = 3000
INT32_MAX = 2**31 - 1


def reference(schedule, steps) -> torch.Tensor:
    f = jax.jit(schedule)  # compiled once, called per step as optax's update does
    return torch.tensor([[float(f(jnp.int32(min(t, INT32_MAX)))) for t in steps]], dtype=torch.float64)


rng = random.Random(7)
P = [rng.uniform(1e-3, 0.5) for _ in range(8)]  # fresh peak LRs

# name -> (schedule factory, horizon (None: it settles), steps recorded without a horizon)
CASES = {
    "constant": (lambda: optax.constant_schedule(P[0]), None, 1),
    "linear-warmup-begin": (lambda: optax.linear_schedule(0.0, P[1], 1000, transition_begin=37), None, 1001),
    "linear-decay": (lambda: optax.linear_schedule(P[2], 1e-4, 2500), None, 2501),
    "linear-no-steps": (lambda: optax.linear_schedule(P[3], 1e-4, 0), None, 1),
    "polynomial-int-power": (lambda: optax.polynomial_schedule(P[4], 1e-4, 3, 2500, 100), None, 2501),
    "piecewise-constant": (lambda: optax.piecewise_constant_schedule(P[6], {300: 0.5, 1000: 0.1, 2000: 3.0}),
                           None, 4),
    "piecewise-constant-nonpositive": (lambda: optax.piecewise_constant_schedule(P[7], {0: 0.5, -3: 2.0,
                                                                                        1500: 0.1}), None, 3),
    "piecewise-constant-none": (lambda: optax.piecewise_constant_schedule(P[0]), None, 1),
    "cosine-decay": (lambda: optax.cosine_decay_schedule(P[1], 2000, alpha=0.05, exponent=1.3), None, 2001),
    "linear-onecycle": (lambda: optax.linear_onecycle_schedule(2500, P[2]), None, 2501),
    "cosine-onecycle": (lambda: optax.cosine_onecycle_schedule(2000, P[3], pct_start=0.25), None, 2001),
    "warmup-cosine": (lambda: optax.warmup_cosine_decay_schedule(0.0, P[4], 300, 2500, 1e-5), None, 2501),
    "warmup-cosine-exponent": (lambda: optax.warmup_cosine_decay_schedule(1e-4, P[5], 100, 1800, 0.0, exponent=2.0),
                               None, 1801),
    "sgdr": (lambda: optax.sgdr_schedule([dict(init_value=0.0, peak_value=P[6], warmup_steps=100, decay_steps=1000),
                                          dict(init_value=0.0, peak_value=P[7], warmup_steps=50,
                                               decay_steps=1500)]), None, 2501),
    "join-nested": (lambda: optax.join_schedules(
        [optax.linear_schedule(0.0, P[0], 100),
         optax.join_schedules([optax.constant_schedule(P[0]), optax.cosine_decay_schedule(P[0], 900)], [400])],
        [100]), None, 1002),
    "exponential": (lambda: optax.exponential_decay(P[1], 170, 0.9), N, N),
    "exponential-staircase-begin-end": (lambda: optax.exponential_decay(P[2], 170, 0.9, transition_begin=100,
                                                                         staircase=True, end_value=1e-3), N, None),
    "exponential-growth-end": (lambda: optax.exponential_decay(1e-4, 300, 1.5, end_value=P[3]), N, None),
    "warmup-exponential": (lambda: optax.warmup_exponential_decay_schedule(0.0, P[4], 200, 300, 0.5,
                                                                            transition_begin=50), N, None),
    "user-function": (lambda: (lambda count: P[5] / (1.0 + jnp.sqrt(count.astype(jnp.float32)))), N, N),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bit_exact_against_optax(case):
    make, horizon, recorded = CASES[case]
    schedule = make()
    converted = from_optax(schedule, horizon=horizon)
    if recorded is not None:
        assert recorded_steps(converted) == recorded
    assert_bits_equal(converted.lr_at(range(N)), reference(schedule, range(N)), case)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][1] is None])
def test_settled_schedules_at_far_steps(case):
    """Up to and past 2**31 - 1, where optax's count stops (the LR of that count holds), and where int32
    ``threshold - count`` wraps for a negative threshold."""
    schedule = CASES[case][0]()
    converted = from_optax(schedule)
    r = random.Random(case)
    steps = sorted({r.randrange(N, 2**r.randrange(12, 34)) for _ in range(100)}
                   | set(range(INT32_MAX - 5, INT32_MAX + 3)) | {2**40})
    assert_bits_equal(converted.lr_at(torch.tensor(steps)), reference(schedule, steps), case, steps)


def test_refusals():
    # jax.jit of a float power gives nan once the count reaches transition_steps: a NaN LR is refused, naming where
    with pytest.raises(ValueError, match="not a finite number"):
        from_optax(optax.polynomial_schedule(0.1, 1e-5, 0.5, 2000))
    with pytest.raises(ValueError, match="horizon"):
        from_optax(optax.exponential_decay(0.1, 100, 0.9))
    with pytest.raises(ValueError, match="horizon"):
        from_optax(lambda count: 0.1 / (1.0 + count))
    with pytest.raises(ValueError, match="horizon"):
        from_optax(optax.constant_schedule(0.1), horizon=-1)
    with pytest.raises(TypeError, match="optax schedule"):
        from_optax(0.1)
    with pytest.raises(ValueError, match="scalar"):
        from_optax(lambda count: jnp.ones(3) * 0.1, horizon=10)


def test_verify_user_factory(tmp_path, monkeypatch, capsys):
    """``verify --scheduler mod:factory`` with a factory returning an optax schedule (the optimizer unused)."""
    from warmup_fused import cli

    (tmp_path / "optax_factories.py").write_text(
        "import optax\n"
        "def warmup_cosine(optimizer):\n"
        "    return optax.warmup_cosine_decay_schedule(0.0, 0.1, 30, 250)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = cli.main(["verify", "--no-registry", "--steps", "300", "--quiet",
                     "--scheduler", "optax_factories:warmup_cosine"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1/1 schedules bit-exact over 300 steps" in out
