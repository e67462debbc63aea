"""from_keras against Keras itself, bit for bit: the LR of step t is ``float(schedule(t))``.

Runs on Keras's torch backend (set here unless KERAS_BACKEND or an earlier import chose another); the jax and
numpy backends are checked in a subprocess. Every comparison is on the int64 view of float64 LRs.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="keras is not installed (pip install warmup_fused[keras])")

from warmup_fused.schedules import from_keras  # noqa: E402

from foreign_helpers import assert_bits_equal as _assert_bits_equal, recorded_steps


def assert_bits_equal(got, expect, what, steps=None):
    _assert_bits_equal(got, expect, what, steps, "Keras")

S = keras.optimizers.schedules
N = 3000  # steps compared per configuration


def reference(schedule, steps) -> torch.Tensor:
    return torch.tensor([[float(schedule(t)) for t in steps]], dtype=torch.float64)


rng = random.Random(20240612)
LR = [rng.uniform(1e-3, 0.5) for _ in range(8)]  # fresh peak LRs, one per configuration family

# name -> (schedule factory, horizon, closed form?)
CASES = {
    "inverse_time-staircase": (lambda: S.InverseTimeDecay(LR[0], 70, 0.5, staircase=True), None, True),
    "inverse_time": (lambda: S.InverseTimeDecay(LR[1], 13.7, 1.3), None, True),
    "inverse_time-steps-1": (lambda: S.InverseTimeDecay(LR[2], 1, 0.01), None, True),
    "piecewise": (lambda: S.PiecewiseConstantDecay([100, 2000], [LR[3], LR[3] / 10, LR[3] / 100]), None, True),
    "piecewise-negative-zero": (lambda: S.PiecewiseConstantDecay([-5, 0, 7, 2999], [0.3, 0.1, LR[4], 0.004, 1e-9]),
                                None, True),
    "piecewise-unsorted": (lambda: S.PiecewiseConstantDecay([2000, 100], [LR[5], 0.01, 0.001]), None, True),
    "cosine": (lambda: S.CosineDecay(LR[0], 2500, alpha=0.1), None, False),
    "cosine-warmup-from-0": (lambda: S.CosineDecay(0.0, 2000, alpha=0.01, warmup_target=LR[1], warmup_steps=300),
                             None, False),
    "cosine-warmup": (lambda: S.CosineDecay(0.013, 1500, alpha=0.05, warmup_target=LR[2], warmup_steps=777),
                      None, False),
    "cosine-warmup-0-steps": (lambda: S.CosineDecay(0.05, 1200, warmup_target=LR[3], warmup_steps=0), None, False),
    "restarts": (lambda: S.CosineDecayRestarts(LR[4], 500), N, False),
    "restarts-t_mul-1": (lambda: S.CosineDecayRestarts(LR[5], 300, t_mul=1.0, m_mul=0.7, alpha=0.1), N, False),
    "exponential": (lambda: S.ExponentialDecay(LR[6], 700, 0.9), N, False),
    "exponential-staircase": (lambda: S.ExponentialDecay(LR[7], 170, 0.8, staircase=True), N, False),
    "polynomial": (lambda: S.PolynomialDecay(LR[0], 2500, 1e-4, power=0.5), None, False),
    "polynomial-linear": (lambda: S.PolynomialDecay(LR[1], 1000), None, False),
    "polynomial-cycle": (lambda: S.PolynomialDecay(LR[2], 700, 1e-5, power=2.0, cycle=True), N, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bit_exact_against_keras(case):
    make, horizon, closed = CASES[case]
    schedule = make()
    converted = from_keras(schedule, horizon=horizon)
    assert (recorded_steps(converted) == 0) == closed
    if horizon is None and not closed:  # recorded only up to where Keras's LR stops changing
        assert 0 < recorded_steps(converted) < N - 400
    assert_bits_equal(converted.lr_at(range(N)), reference(schedule, range(N)), case)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][2]])
def test_closed_form_at_far_steps(case):
    """Up to 2**31 - 1 (Keras's int32 step), around 2**24 where float32 stops holding every step exactly."""
    schedule = CASES[case][0]()
    converted = from_keras(schedule)
    r = random.Random(case)
    steps = sorted({r.randrange(2**24 - 300, 2**24 + 300) for _ in range(100)}
                   | {r.randrange(0, 2**r.randrange(12, 32)) for _ in range(200)} | {2**31 - 1})
    assert_bits_equal(converted.lr_at(torch.tensor(steps)), reference(schedule, steps), case, steps)


def test_cosine_warmup_is_closed_form_on_this_backend():
    if keras.backend.backend() == "jax":
        pytest.skip("on the jax backend the warmup is recorded (ops.cond compiles it with XLA)")
    converted = from_keras(S.CosineDecay(0.0, 100, warmup_target=0.1, warmup_steps=50))
    assert recorded_steps(converted) == 101  # the cosine phase only, up to decay_steps


def test_subclass_is_recorded_over_horizon():
    class OneOverT(S.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.divide(0.1, keras.ops.add(keras.ops.cast(step, "float32"), 1.0))

    schedule = OneOverT()
    with pytest.raises(ValueError, match="horizon"):
        from_keras(schedule)
    converted = from_keras(schedule, horizon=N)
    assert recorded_steps(converted) == N
    assert_bits_equal(converted.lr_at(range(N)), reference(schedule, range(N)), "subclass")


def test_refusals():
    with pytest.raises(ValueError, match="horizon"):
        from_keras(S.ExponentialDecay(0.1, 100, 0.9))
    with pytest.raises(ValueError, match="horizon"):
        from_keras(S.InverseTimeDecay(0.1, 10, 0.5), horizon=0)
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        from_keras(lambda step: 0.1)


BACKEND_SCRIPT = textwrap.dedent("""
    import sys, torch, keras
    from warmup_fused.schedules import from_keras
    S = keras.optimizers.schedules
    assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
    cases = [
        (S.InverseTimeDecay(0.37, 7, 0.5, staircase=True), 400),
        (S.InverseTimeDecay(0.03, 13.7, 1.3), 400),
        (S.PiecewiseConstantDecay([10, 200], [0.1, 0.01, 0.001]), 400),
        (S.CosineDecay(0.013, 15, alpha=0.05, warmup_target=0.37, warmup_steps=12), 30),
        (S.ExponentialDecay(0.1, 70, 0.9), 200),
    ]
    for schedule, steps in cases:
        got = from_keras(schedule, horizon=steps).lr_at(range(steps))
        ref = torch.tensor([[float(schedule(t)) for t in range(steps)]], dtype=torch.float64)
        bad = int((got.view(torch.int64) != ref.view(torch.int64)).sum())
        print(type(schedule).__name__, bad)
        assert bad == 0, (type(schedule).__name__, bad)
""")


@pytest.mark.parametrize("backend, package", [("jax", "jax"), ("numpy", "numpy")])
def test_other_backends(backend, package, tmp_path):
    pytest.importorskip(package, reason=f"{package} is not installed")
    script = tmp_path / "backend_check.py"
    script.write_text(BACKEND_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), backend], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count(" 0\n") == 5, proc.stdout


def test_verify_user_factory(tmp_path, monkeypatch, capsys):
    """``verify --scheduler mod:factory`` with a factory returning a Keras schedule (the optimizer unused)."""
    from warmup_fused import cli

    (tmp_path / "keras_factories.py").write_text(
        "import keras\n"
        "def inverse_time(optimizer, total_steps):\n"
        "    return keras.optimizers.schedules.InverseTimeDecay(0.1, total_steps // 10, 0.5, staircase=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = cli.main(["verify", "--no-registry", "--steps", "300", "--quiet",
                     "--scheduler", "keras_factories:inverse_time"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1/1 schedules bit-exact over 300 steps" in out
