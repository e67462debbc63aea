"""The schedule engine itself: program validation, the lr_at op, its fake kernel, build info."""
import math
import os

import pytest
import torch

import warmup_fused
from warmup_fused import _ops
from warmup_fused._expr import BASE, LOCAL, STEP, Op, cos, pmax, pmin, repeat_mul, round_f32, sqrt
from warmup_fused.schedules import Schedule


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int64)


def test_cuda_kernels_built_when_forced():
    info = _ops.build_info()
    if os.environ.get("FORCE_CUDA") == "1":
        assert info["cuda"], info
        assert info["arch"]
    else:
        assert isinstance(info["cuda"], bool)


def test_expression_tree_order_is_kept(device):
    # math.pi*s/T and math.pi*(s/T) differ in the last bit at many steps: both trees are honoured.
    T = 977.0
    a = Schedule([[(0, BASE * (math.pi * STEP / T))]], horizon=5000)
    b = Schedule([[(0, BASE * (math.pi * (STEP / T)))]], horizon=5000)
    steps = range(5000)
    ref_a = torch.tensor([math.pi * s / T for s in steps], dtype=torch.float64)
    ref_b = torch.tensor([math.pi * (s / T) for s in steps], dtype=torch.float64)
    assert torch.equal(bits(a.lr_at(steps, device)[0].cpu()), bits(ref_a))
    assert torch.equal(bits(b.lr_at(steps, device)[0].cpu()), bits(ref_b))
    assert (ref_a != ref_b).any()  # the test would catch a reassociation


def test_python_semantics_of_ops():
    # max/min keep Python's first-argument preference; % follows the divisor's sign; // floors.
    expr_cases = [
        (pmax(0.0, STEP - 3.0), lambda s: max(0.0, s - 3.0)),
        (pmin(STEP, 5.0), lambda s: min(s, 5.0)),
        ((STEP * 0.37) % 1.0, lambda s: (s * 0.37) % 1.0),
        ((STEP - 50.0) % 7.0, lambda s: (s - 50.0) % 7.0),
        (STEP // 3.0, lambda s: float(s // 3)),
        (sqrt(STEP + 1.0), lambda s: math.sqrt(s + 1.0)),
        (repeat_mul(0.1, 0.5, STEP // 10.0), None),
        # float32 rounding of a double: what numpy.float32 does (ties to even, overflow to inf)
        (round_f32(STEP / 3.0 + 1e-3), lambda s: float(torch.tensor(s / 3.0 + 1e-3, dtype=torch.float64).float())),
        (round_f32(STEP * 1e37), lambda s: float(torch.tensor(s * 1e37, dtype=torch.float64).float())),
    ]
    for expr, ref in expr_cases:
        got = Schedule([[(0, expr)]]).lr_at(range(200))[0]
        if ref is None:
            def ref(s):
                x = 0.1
                for _ in range(s // 10):
                    x = x * 0.5
                return x
        want = torch.tensor([ref(s) for s in range(200)], dtype=torch.float64)
        assert torch.equal(bits(got), bits(want)), expr


def test_phases_local_step_groups_and_epochs():
    sched = Schedule(
        [[(0, BASE * (STEP / 4.0)), (4, BASE * cos(LOCAL * 0.01))]],
        base_lrs=[0.1, 0.3],
        steps_per_epoch=3,
        horizon=300,
    )
    out = sched.lr_at(range(400))
    for g, base in enumerate([0.1, 0.3]):
        for s in range(400):
            e = s // 3
            want = base * (e / 4.0) if e < 4 else base * math.cos((e - 4) * 0.01)
            assert out[g, s].item() == want
    assert sched.table_bytes == 2 * 8 * (100 - 4)  # horizon 300 steps = 100 epochs, 2 groups


def test_exact_table_and_fast_mode_agree_on_cpu_and_past_horizon():
    body = [(0, BASE * STEP / 10.0), (10, BASE * 0.5 * (1.0 + cos(math.pi * LOCAL / 90.0)))]
    exact = Schedule([body], base_lrs=[2e-3], horizon=100)
    fast = Schedule([body], base_lrs=[2e-3], exact=False)
    assert exact.table_bytes == 8 * 90 and fast.table_bytes == 0
    steps = torch.tensor([0, 5, 10, 50, 99, 100, 101, 5000, 2**31, 2**31 + 7, 2**40], dtype=torch.int64)
    assert torch.equal(bits(exact.lr_at(steps)), bits(fast.lr_at(steps)))


def test_unbounded_transcendental_phase_needs_horizon():
    with pytest.raises(ValueError, match="horizon"):
        Schedule([[(0, cos(STEP))]])
    Schedule([[(0, cos(STEP))]], exact=False)  # fast mode needs no table


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(base_lrs=[-1.0]), ValueError, "base_lrs"),
        (dict(base_lrs=[float("nan")]), ValueError, "base_lrs"),
        (dict(base_lrs=["x"]), TypeError, "base_lrs"),
        (dict(steps_per_epoch=0), ValueError, "steps_per_epoch"),
        (dict(horizon=-1), ValueError, "horizon"),
    ],
)
def test_schedule_argument_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        Schedule([[(0, BASE)]], **kwargs)


def test_phase_order_errors():
    with pytest.raises(ValueError, match="step 0"):
        Schedule([[(1, BASE)]])
    with pytest.raises(ValueError, match="increase"):
        Schedule([[(0, BASE), (5, BASE), (5, BASE)]])


@pytest.mark.parametrize(
    "steps, err",
    [(-1, ValueError), (range(-3, 2), ValueError), (1.5, TypeError), (True, TypeError),
     (torch.tensor([0.5]), TypeError), (torch.zeros(2, 2, dtype=torch.int64), ValueError),
     (torch.tensor([2**53]), ValueError)],
)
def test_lr_at_step_errors(steps, err):
    with pytest.raises(err, match="steps"):
        Schedule([[(0, BASE)]]).lr_at(steps)


def test_lr_at_accepts_int_range_tensor():
    s = Schedule([[(0, BASE * STEP)]], base_lrs=[0.5, 1.0])
    assert s.lr_at(3).shape == (2, 1)
    assert torch.equal(s.lr_at(range(2, 8, 2)), s.lr_at(torch.tensor([2, 4, 6], dtype=torch.int32)))
    assert s.lr_at(3).dtype == torch.float64


def _program(code, vals=(1.0,), phases=None):
    n_phase = 1
    start = 1 + 3 + 5 * n_phase
    phases = phases or [0, start, len(code), 0, 0]
    return (torch.tensor([1, 4, n_phase, 1] + phases + code, dtype=torch.int64),
            torch.tensor(vals, dtype=torch.float64))


@pytest.mark.parametrize(
    "code, match",
    [
        ([int(Op.ADD)], "underflow"),
        ([int(Op.CONST) | (5 << 8)], "constant index"),
        ([99], "unknown opcode"),
        ([int(Op.CONST), int(Op.CONST)], "exactly one"),
        ([int(Op.STEP)] * 17 + [int(Op.ADD)] * 16, "deeper"),
    ],
)
def test_validate_program_rejects_malformed_code(code, match):
    ints, vals = _program(code)
    with pytest.raises(ValueError, match=match):
        _ops.validate_program(ints, vals)
    with pytest.raises(ValueError):
        _ops.lr_at(ints, vals, torch.arange(3), 1)


def test_validate_program_rejects_out_of_bounds_offsets():
    ints, vals = _program([int(Op.STEP)], phases=[0, 1000, 1, 0, 0])
    with pytest.raises(ValueError, match="code out of bounds"):
        _ops.validate_program(ints, vals)
    ints, vals = _program([int(Op.STEP)], phases=[0, 9, 1, 0, 50])
    with pytest.raises(ValueError, match="table out of bounds"):
        _ops.validate_program(ints, vals)
    ints, vals = _program([int(Op.STEP)])
    with pytest.raises(ValueError, match="num_groups"):
        _ops.lr_at(ints, vals, torch.arange(3), 2)
    with pytest.raises(TypeError, match="int64"):
        _ops.lr_at(ints.int(), vals, torch.arange(3), 1)


def test_opcheck_lr_at():
    s = Schedule([[(0, BASE * STEP / 7.0), (3, BASE * cos(LOCAL))]], base_lrs=[0.1, 0.2], horizon=50)
    ints, vals = s.program("cpu")
    torch.library.opcheck(torch.ops.warmup_fused.lr_at.default, (ints, vals, torch.arange(40), 2))


def test_lr_at_under_torch_compile():
    s = Schedule([[(0, BASE * STEP / 7.0)]], base_lrs=[0.1])
    ints, vals = s.program("cpu")

    @torch.compile(fullgraph=True, backend="eager")
    def f(steps):
        return _ops.lr_at(ints, vals, steps, 1) * 2.0

    steps = torch.arange(10)
    assert torch.equal(f(steps), s.lr_at(steps) * 2.0)


def test_import_error_message_is_actionable():
    import inspect

    src = inspect.getsource(warmup_fused)
    assert "./run test" in src and "build" in src


# --------------------------------------------------------------------------- issue 10: engine defects
def py_floordiv(a: float, b: float) -> float:
    """Python's float a // b, NaN where Python raises (the device cannot)."""
    try:
        return a // b
    except ZeroDivisionError:
        return math.nan


def same_floats(got: torch.Tensor, want: list) -> bool:
    """Bit-equal, except that any NaN matches any NaN (Python raised there)."""
    want_t = torch.tensor(want, dtype=torch.float64)
    nan = torch.isnan(want_t)
    return torch.equal(torch.isnan(got), nan) and torch.equal(bits(got[~nan]), bits(want_t[~nan]))


FLOORDIV_DIVISORS = [0.5, 2.5, -1.3, 0.3, 1e-300, 7.0, -0.25, 1e300, math.inf, -math.inf, math.nan, 2.0**-1074]


@pytest.mark.parametrize("divisor", FLOORDIV_DIVISORS)
def test_floordiv_is_python_float_floordiv(divisor):
    """STEP // 0.5 used to crash the interpreter (SIGFPE: the divisor truncated to 0), STEP // 2.5 computed
    step // 2, and operands >= 2**63 were undefined behaviour: // is now Python's float //, bit for bit."""
    steps = list(range(40)) + [2**31 + 3, 2**52 + 1]
    numerators = [
        (STEP, lambda s: float(s)),
        ((STEP - 17.3) * 0.7, lambda s: (s - 17.3) * 0.7),
        (STEP * 1e300, lambda s: s * 1e300),          # >= 2**63 for s >= 1
        (-(STEP * 3.0e20) - 0.5, lambda s: (s * 3.0e20) * -1.0 - 0.5),
        (STEP * math.inf, lambda s: s * math.inf),     # nan at 0, inf after
    ]
    for num, ref in numerators:
        got = Schedule([[(0, num // divisor)]]).lr_at(torch.tensor(steps))[0]
        want = [py_floordiv(ref(s), divisor) for s in steps]
        assert same_floats(got, want), (num, divisor)


def test_floordiv_and_mod_by_a_step_dependent_zero_give_nan():
    s = Schedule([[(0, (STEP // (STEP - 3.0)) + (STEP % (STEP - 5.0)) + 1.0 / (STEP - 7.0))]])
    got = s.lr_at(range(10))[0]
    def ref(t):
        try:
            return t // (t - 3.0) + t % (t - 5.0) + 1.0 / (t - 7.0)
        except ZeroDivisionError:
            return math.nan
    assert same_floats(got, [ref(float(t)) for t in range(10)])
    assert torch.isnan(got[[3, 5, 7]]).all() and not torch.isnan(got[[0, 4, 6, 9]]).any()


@pytest.mark.parametrize("expr", [STEP // 0.0, STEP % 0.0, BASE / 0.0, (STEP + 1.0) // -0.0])
def test_constant_zero_divisor_is_refused(expr):
    with pytest.raises(ValueError, match=r"divides by the constant 0\.0.*ZeroDivisionError"):
        Schedule([[(0, BASE), (5, expr)]])


def test_repeat_mul_count_edge_cases():
    """The count is any double: >= 2**63 and +inf give the fixed point, a negative integral count (-inf too)
    counts as 0 (range), NaN and non-integral counts give NaN (range raises); no double is cast to an integer
    out of range."""
    def powers(x, f, n):
        for _ in range(n):
            y = x * f
            if y == x:
                break
            x = y
        return x

    x, f = 0.37, 0.91
    s = Schedule([[(0, repeat_mul(x, f, (STEP - 3.0) * 1e30)), (10, repeat_mul(x, f, STEP * 1e300 * 1e300)),
                   (20, repeat_mul(x, f, (STEP - 21.0) * 0.5)), (30, repeat_mul(x, f, (STEP - 32.0) * math.inf))]])
    got = s.lr_at(range(40))[0].tolist()
    fixed = powers(x, f, 10**6)
    for t in range(40):
        if t < 10:
            want = x if t <= 3 else fixed
        elif t < 20:
            want = fixed
        elif t < 30:
            c = (t - 21.0) * 0.5
            want = math.nan if c != int(c) else (x if c < 0 else powers(x, f, int(c)))
        else:
            want = math.nan if t == 32 else (x if t < 32 else fixed)
        assert (math.isnan(want) and math.isnan(got[t])) or got[t] == want, (t, got[t], want)


def test_repeat_mul_needs_step_free_operands_and_a_nonnegative_factor():
    with pytest.raises(ValueError, match="repeat_mul"):
        repeat_mul(STEP, 0.5, STEP)
    with pytest.raises(ValueError, match="repeat_mul"):
        repeat_mul(BASE, 1.0 - LOCAL * 0.1, STEP)
    with pytest.raises(ValueError, match="factor"):
        Schedule([[(0, repeat_mul(BASE, -0.5, STEP))]])


def test_repeat_mul_cost_is_bounded_at_any_step():
    """step_decay(1, 0.9999999) took 1.1 s per evaluation at step 10**9: a repeat_mul now costs at most 255
    multiplications from the nearest anchor, and is still torch's recursion bit for bit."""
    import time

    x, f = 0.3, 0.9993
    seq = [x]
    while seq[-1] * f != seq[-1]:
        seq.append(seq[-1] * f)
    s = Schedule([[(0, repeat_mul(BASE, f, STEP))]], [x])
    assert s.table_bytes == 8 * (3 + (len(seq) - 1) // 256 + 1)
    g = torch.Generator().manual_seed(3)
    steps = torch.cat([torch.randint(0, len(seq) + 300, (20_000,), generator=g), torch.tensor([10**9, 2**52])])
    want = torch.tensor([seq[min(k, len(seq) - 1)] for k in steps.tolist()], dtype=torch.float64)
    begin = time.perf_counter()
    got = s.lr_at(steps)[0]
    far = s.lr_at(torch.full((100_000,), 10**9 + 7))
    elapsed = time.perf_counter() - begin
    assert torch.equal(bits(got), bits(want))
    assert torch.equal(bits(far), bits(torch.full((1, 100_000), seq[-1], dtype=torch.float64)))
    # The unanchored loop ran len(seq) ~ 1e6 multiplications per far step: 1e11 for these calls.
    assert elapsed < 5.0, elapsed


def test_step_decay_that_cannot_settle_in_bounded_memory_is_refused():
    import time

    from warmup_fused import schedules as S

    begin = time.perf_counter()
    with pytest.raises(ValueError, match=r"gamma: step_decay\(step_size=1, gamma=0\.9999999\)"):
        S.step_decay(1, 0.9999999)
    assert time.perf_counter() - begin < 10.0
    s = S.step_decay(1, 0.9999, base_lr=[0.2])  # settles within the bound: accepted
    assert s.table_bytes < 2**20


def test_round_f32_overflow_is_inf_not_undefined():
    """A double beyond float32's range converts to +-inf (numpy.float32), from the midpoint 2**128 - 2**103 on."""
    big = [3.4028234663852886e38, 3.4028235677973362e38, 3.4028235677973366e38, 1e39, 1e300, math.inf]
    for v in big:
        got = Schedule([[(0, round_f32(STEP * 0.0 + v)), (1, round_f32(STEP * 0.0 - v))]]).lr_at(range(2))[0]
        want = float(torch.tensor(v, dtype=torch.float64).float())
        assert got.tolist() == [want, -want], v
