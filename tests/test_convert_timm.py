"""timm's schedulers through from_torch, bit for bit, against timm's own training loop.

The contract (warmup_fused/schedules/convert_timm.py): the LR of optimizer step k is ``param_groups[g]['lr']``
during update k of timm's loop

    for k in range(N):  record; opt.step(); sched.step_update(num_updates=k + 1)
                        if (k + 1) % steps_per_epoch == 0: sched.step(epoch=(k + 1) // steps_per_epoch)

Every comparison is on the int64 view of float64 LRs, at every step.
"""
from __future__ import annotations

import random
import struct
import warnings

import pytest
import torch

timm_scheduler = pytest.importorskip("timm.scheduler", reason="timm is not installed (pip install warmup_fused[timm])")

from warmup_fused.schedules import Recorded, from_torch  # noqa: E402

N = 3000  # optimizer steps compared per configuration


def make_opt(seed: int):
    """Three param groups with random base LRs; two carry timm's layer-decay ``lr_scale``."""
    rng = random.Random(seed)
    groups = [{"params": [torch.nn.Parameter(torch.randn(2))], "lr": rng.uniform(1e-4, 0.5)} for _ in range(3)]
    groups[1]["lr_scale"] = rng.uniform(0.1, 0.9)
    groups[2]["lr_scale"] = rng.uniform(0.1, 0.9)
    return torch.optim.SGD(groups, lr=groups[0]["lr"])


def timm_loop(sched, steps: int, steps_per_epoch: int | None) -> torch.Tensor:
    opt = sched.optimizer
    rows = [[] for _ in opt.param_groups]
    for k in range(steps):
        for g, group in enumerate(opt.param_groups):
            rows[g].append(float(group["lr"]))
        opt.step()
        if k + 1 == steps:  # the next LR is never observed (and may raise, see cycle_mul < 1)
            break
        sched.step_update(num_updates=k + 1)
        if steps_per_epoch and (k + 1) % steps_per_epoch == 0:
            sched.step(epoch=(k + 1) // steps_per_epoch)
    return torch.tensor(rows, dtype=torch.float64)


def assert_bits_equal(got: torch.Tensor, expect: torch.Tensor, what: str) -> None:
    assert got.shape == expect.shape, (what, got.shape, expect.shape)
    diff = (got.view(torch.int64) != expect.view(torch.int64)).nonzero()
    if len(diff):
        g, t = (int(x) for x in diff[0])
        raise AssertionError(f"{what}: {len(diff)} LRs differ; first at group {g}, step {t}: "
                             f"got {float(got[g, t])!r}, timm {float(expect[g, t])!r}")


def build(cls: str, kw: dict, seed: int):
    """``cls(optimizer, **kw)``, update-based unless kw says t_in_epochs=True."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(timm_scheduler, cls)(make_opt(seed), **{"t_in_epochs": False, **kw})


def is_closed_form(s) -> bool:
    return not any(isinstance(body, Recorded) for group in s._phases for _, body in group)


# (scheduler, kwargs, steps_per_epoch or None for update-based, horizon)
CASES = {
    "cosine-warmup": ("CosineLRScheduler", dict(t_initial=2000, lr_min=1e-5, warmup_t=100, warmup_lr_init=1e-6),
                      None, None),
    "cosine-no-warmup-lr_min": ("CosineLRScheduler", dict(t_initial=2500, lr_min=0.013), None, None),
    "cosine-cycles-decay-k": ("CosineLRScheduler", dict(t_initial=700, lr_min=1e-6, cycle_decay=0.5, cycle_limit=3,
                                                         warmup_t=50, warmup_lr_init=1e-7, warmup_prefix=True,
                                                         k_decay=0.7), None, None),
    "cosine-cycle_mul-2": ("CosineLRScheduler", dict(t_initial=300, lr_min=1e-6, cycle_mul=2.0, cycle_decay=0.8,
                                                      cycle_limit=5, k_decay=1.3), None, None),
    "cosine-cycle_mul-1.5-prefix": ("CosineLRScheduler", dict(t_initial=250, cycle_mul=1.5, cycle_limit=6,
                                                               warmup_t=40, warmup_lr_init=1e-6, warmup_prefix=True),
                                    None, N),
    "cosine-epochs": ("CosineLRScheduler", dict(t_initial=30, lr_min=1e-6, cycle_decay=0.5, cycle_limit=3,
                                                warmup_t=3, warmup_lr_init=1e-6, t_in_epochs=True), 37, None),
    "cosine-epochs-cycle_mul": ("CosineLRScheduler", dict(t_initial=20, lr_min=1e-5, cycle_mul=1.5, cycle_limit=4,
                                                          k_decay=1.5, warmup_t=5, warmup_lr_init=1e-6,
                                                          warmup_prefix=True, t_in_epochs=True), 7, N),
    "tanh-warmup-from-get_lr": ("TanhLRScheduler", dict(t_initial=1500, lr_min=1e-6, warmup_t=200,
                                                        warmup_lr_init=1e-7, cycle_limit=2), None, None),
    "tanh-cycles": ("TanhLRScheduler", dict(t_initial=700, lb=-5.0, ub=4.0, cycle_mul=1.5, cycle_decay=0.7,
                                            cycle_limit=3, warmup_t=30, warmup_lr_init=1e-6, warmup_prefix=True),
                    None, None),
    "tanh-epochs": ("TanhLRScheduler", dict(t_initial=40, cycle_limit=2, warmup_t=5, warmup_lr_init=1e-6,
                                            t_in_epochs=True), 25, None),
    "poly-warmup": ("PolyLRScheduler", dict(t_initial=2500, power=0.9, lr_min=1e-6, warmup_t=100,
                                            warmup_lr_init=1e-7, warmup_prefix=True), None, None),
    "poly-cycles-k": ("PolyLRScheduler", dict(t_initial=800, power=2.0, cycle_limit=3, cycle_decay=0.5,
                                              k_decay=1.3), None, None),
    "poly-epochs-cycle_mul": ("PolyLRScheduler", dict(t_initial=60, power=0.5, cycle_mul=2, cycle_limit=2,
                                                      t_in_epochs=True), 20, None),
    "step": ("StepLRScheduler", dict(decay_t=300, decay_rate=0.5, warmup_t=100, warmup_lr_init=1e-6), None, N),
    "step-2.4-epochs": ("StepLRScheduler", dict(decay_t=2.4, decay_rate=0.97, warmup_t=3, warmup_lr_init=1e-6,
                                                t_in_epochs=True), 11, N),
    "step-float-no-prefix": ("StepLRScheduler", dict(decay_t=250.0, decay_rate=0.8, warmup_t=40,
                                                     warmup_lr_init=1e-5, warmup_prefix=False), None, N),
    "step-0.7": ("StepLRScheduler", dict(decay_t=0.7, decay_rate=0.999), None, N),
    "multistep": ("MultiStepLRScheduler", dict(decay_t=[300, 800, 1500], decay_rate=0.3, warmup_t=100,
                                               warmup_lr_init=1e-5), None, None),
    "multistep-no-prefix": ("MultiStepLRScheduler", dict(decay_t=[30, 1000, 2000], decay_rate=0.5, warmup_t=50,
                                                         warmup_lr_init=1e-6, warmup_prefix=False), None, None),
    "multistep-epochs": ("MultiStepLRScheduler", dict(decay_t=[10, 20, 30], decay_rate=0.1, warmup_t=2,
                                                      warmup_lr_init=1e-6, t_in_epochs=True), 40, None),
    "multistep-repeated": ("MultiStepLRScheduler", dict(decay_t=[5, 5, 2500], decay_rate=0.7), None, None),
    "noise-window": ("CosineLRScheduler", dict(t_initial=2000, lr_min=1e-5, warmup_t=100, warmup_lr_init=1e-6,
                                               noise_range_t=(300, 1700), noise_pct=0.5, noise_seed=7), None, None),
    "noise-open-epochs": ("StepLRScheduler", dict(decay_t=3, decay_rate=0.8, noise_range_t=20, noise_std=0.3,
                                                  t_in_epochs=True), 13, N),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bit_exact_against_timm_loop(case):
    cls, kw, per_epoch, horizon = CASES[case]
    seed = sum(map(ord, case))
    sched = build(cls, kw, seed)
    converted = from_torch(sched, horizon=horizon, steps_per_epoch=per_epoch)
    # exact=False computes cos/tanh/pow with the device's libm (on the CPU the host's): the same bits.
    fast = from_torch(sched, horizon=horizon, steps_per_epoch=per_epoch, exact=False)
    # Closed form unless noise is involved (noise is recorded over its range).
    assert is_closed_form(converted) == ("noise" not in case)
    reference = timm_loop(sched, N, per_epoch)
    assert_bits_equal(converted.lr_at(range(N)), reference, case)
    assert_bits_equal(fast.lr_at(range(N)), reference, case + " (exact=False)")


@pytest.mark.parametrize("case", [c for c in CASES if "noise" not in c and CASES[c][2] is None])
def test_far_steps_equal_get_lr(case):
    """Closed form at any step: random steps up to 2**40 against ``_get_lr(t) * lr_scale``."""
    cls, kw, _, horizon = CASES[case]
    sched = build(cls, kw, 1)
    converted = from_torch(sched, horizon=horizon)
    rng = random.Random(case)
    steps = sorted({rng.randrange(1, 2**rng.randrange(12, 41)) for _ in range(300)})
    expect = [[v * g["lr_scale"] if "lr_scale" in g else v
               for v, g in zip(sched._get_lr(t), sched.optimizer.param_groups)] for t in steps]
    expect = torch.tensor(expect, dtype=torch.float64).T.contiguous()
    assert_bits_equal(converted.lr_at(torch.tensor(steps)), expect, case)


def test_step_zero_is_the_constructor_lr():
    """Without a warmup timm's constructor leaves the base LR, which _get_lr(0) need not equal (tanh: it does not)."""
    sched = build("TanhLRScheduler", dict(t_initial=1000, lr_min=0.013), 3)
    first = [v * g.get("lr_scale", 1.0) for v, g in zip(sched._get_lr(0), sched.optimizer.param_groups)]
    constructed = [float(g["lr"]) for g in sched.optimizer.param_groups]
    assert any(struct.pack("<d", a) != struct.pack("<d", b) for a, b in zip(first, constructed))
    got = from_torch(sched).lr_at(range(2))
    assert [struct.pack("<d", x) for x in got[:, 0].tolist()] == [struct.pack("<d", x) for x in constructed]
    assert [struct.pack("<d", x) for x in got[:, 1].tolist()] == [
        struct.pack("<d", v * g.get("lr_scale", 1.0)) for v, g in zip(sched._get_lr(1), sched.optimizer.param_groups)]


def test_cycle_mul_below_one_holds_its_last_lr_where_timm_raises():
    """cycle_mul < 1: timm's cycle index takes log of a value that reaches 0; from there timm raises ValueError."""
    sched = build("CosineLRScheduler", dict(t_initial=400, cycle_mul=0.6, cycle_limit=50, lr_min=1e-6, warmup_t=10,
                                            warmup_lr_init=1e-7, warmup_prefix=True), 5)
    converted = from_torch(sched, horizon=2000)
    end = next(t for t in range(1, 5000) if _raises(sched, t))
    assert 500 < end < 2000
    assert_bits_equal(converted.lr_at(range(end)), timm_loop(sched, end, None), "cycle_mul=0.6")
    after = converted.lr_at(range(end, end + 50))
    assert torch.equal(after.view(torch.int64), converted.lr_at(end - 1).expand(-1, 50).view(torch.int64))


def _raises(sched, t) -> bool:
    try:
        sched._get_lr(t)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("cls, kw", [
    ("WSDLRScheduler", dict(t_initial=2000, decay_t=600, warmup_t=100, warmup_lr_init=1e-6, decay_fn="cosine")),
    ("CosineLRScheduler", dict(t_initial=1000.5, warmup_t=10)),  # a non-integral t_initial: no program for it
])
def test_other_schedulers_are_recorded_over_horizon(cls, kw):
    sched = build(cls, kw, 11)
    with pytest.raises(ValueError, match="horizon"):
        from_torch(sched)
    converted = from_torch(sched, horizon=N)
    assert not is_closed_form(converted)
    assert_bits_equal(converted.lr_at(range(N)), timm_loop(sched, N, None), cls)


def test_subclass_overriding_get_lr_is_recorded():
    class Halving(timm_scheduler.StepLRScheduler):
        def _get_lr(self, t):
            return [v / (1 + t // 100) for v in self.base_values]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = Halving(make_opt(4), decay_t=10, t_in_epochs=False)
    converted = from_torch(sched, horizon=N)
    assert not is_closed_form(converted)
    assert_bits_equal(converted.lr_at(range(N)), timm_loop(sched, N, None), "subclass")


def test_refusals():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plateau = timm_scheduler.PlateauLRScheduler(make_opt(0))
    with pytest.raises(TypeError, match="metric.*plateau"):
        from_torch(plateau, horizon=100)
    epochs = build("CosineLRScheduler", dict(t_initial=10, t_in_epochs=True), 0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        from_torch(epochs)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="steps_per_epoch"):
            from_torch(epochs, steps_per_epoch=bad)
    updates = build("CosineLRScheduler", dict(t_initial=10, t_in_epochs=False), 0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        from_torch(updates, steps_per_epoch=10)
    torch_sched = torch.optim.lr_scheduler.StepLR(make_opt(0), 10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        from_torch(torch_sched, steps_per_epoch=10)
    # StepLR's pow never settles: exact mode tables it up to a horizon.
    step = build("StepLRScheduler", dict(decay_t=10, decay_rate=0.5, t_in_epochs=False), 0)
    with pytest.raises(ValueError, match="horizon"):
        from_torch(step)
    # Noise from step 20 on, for ever: recorded, so it needs a horizon.
    noisy = build("CosineLRScheduler", dict(t_initial=100, noise_range_t=20, t_in_epochs=False), 0)
    with pytest.raises(ValueError, match="horizon"):
        from_torch(noisy)


def test_verify_user_factory(tmp_path, monkeypatch, capsys):
    """``verify --scheduler mod:factory`` with a factory returning a timm scheduler runs timm's loop."""
    from warmup_fused import cli

    (tmp_path / "timm_factories.py").write_text(
        "from timm.scheduler import CosineLRScheduler\n"
        "def cosine(optimizer, total_steps):\n"
        "    return CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=1e-6, warmup_t=20,\n"
        "                             warmup_lr_init=1e-6, t_in_epochs=False)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = cli.main(["verify", "--no-registry", "--steps", "300", "--quiet", "--scheduler", "timm_factories:cosine"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1/1 schedules bit-exact over 300 steps" in out


def test_huge_bounded_tables_need_a_horizon():
    """1e6 cycles of 1000 steps are bounded, but tabling them whole (exact mode) would take 8 GB per group."""
    sched = build("CosineLRScheduler", dict(t_initial=1000, cycle_limit=10**6), 0)
    with pytest.raises(ValueError, match="horizon"):
        from_torch(sched)
    converted = from_torch(sched, horizon=N)
    assert_bits_equal(converted.lr_at(range(N)), timm_loop(sched, N, None), "1e6 cycles")
