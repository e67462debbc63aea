"""Migrating from torch.optim: every way a torch training loop sets the LR trains bit-identically to
torch.optim.*(fused=True) on CPU.

Each test runs our optimizer and torch's fused one on twin models fed the same fresh random grads, and checks
at every step that ``param_groups`` show the same LR (and beta1 / momentum) before the step, that the step used
it (``last_lr()``), and every few steps that params and optimizer states are equal (``torch.equal``).
"""
from __future__ import annotations

import copy
import io
import struct
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as lrs

import warmup_fused
from warmup_fused import from_torch, schedules
from warmup_fused._ops import LAYOUT

SCHEDULE = LAYOUT["lr_from_schedule"]
OPTIMIZERS = ["AdamW", "Adam", "SGD"]
BASE_LR = {"AdamW": 3e-3, "Adam": 3e-3, "SGD": 0.05}
HPARAMS = {  # weight decay everywhere, so a dropped hyperparameter shows
    "AdamW": dict(betas=(0.9, 0.99), weight_decay=0.1),
    "Adam": dict(betas=(0.9, 0.99), weight_decay=0.01),
    "SGD": dict(momentum=0.9, weight_decay=1e-3),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def bits(x) -> bytes:
    return struct.pack("<d", float(x))


class MLP(torch.nn.Module):
    """Odd-sized params (no multiple of a vector width)."""

    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(13, 37)
        self.l2 = torch.nn.Linear(37, 5)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def groups(model: MLP, lr: float) -> list:
    """Two param groups with different LRs: schedules must scale each group's own base LR."""
    return [{"params": model.l1.parameters()}, {"params": model.l2.parameters(), "lr": lr * 0.3}]


def momentum(group: dict):
    return group["betas"][0] if "betas" in group else group["momentum"]


class Twins:
    """Our optimizer and torch's fused one (same class name, same arguments) on twin models."""

    def __init__(self, name: str, seed: int = 0, lr=None, ours_kw=None, ref_name=None, **kw):
        torch.manual_seed(seed)
        self.model = MLP()
        self.twin = copy.deepcopy(self.model)
        kw = {**HPARAMS[name], **kw}
        lr = BASE_LR[name] if lr is None else lr
        self.ours = getattr(warmup_fused, name)(groups(self.model, lr), lr=lr, **kw, **(ours_kw or {}))
        lr = lr.clone() if isinstance(lr, torch.Tensor) else lr  # each optimizer its own Tensor lr
        self.ref = getattr(torch.optim, ref_name or name)(groups(self.twin, lr), lr=lr, fused=True, **kw)
        self.gen = torch.Generator().manual_seed(seed + 1000)
        self.t = 0
        # A torch scheduler attached to ours but no longer stepped: after a step, ours keeps showing the LR just
        # used (as torch's groups do until their scheduler steps), since a recursive scheduler reads it.
        self.shows_last_used = False

    def grads(self) -> None:
        for p, q in zip(self.model.parameters(), self.twin.parameters()):
            g = torch.randn(p.shape, generator=self.gen)
            p.grad, q.grad = g.clone(), g.clone()

    def step(self, check_every: int = 4) -> None:
        """One step of both, checking what param_groups show before it and the LR the step used."""
        self.grads()
        self.assert_groups_show_the_same()
        used = [float(g["lr"]) for g in self.ref.param_groups]
        self.ours.step()
        self.ref.step()
        self.t += 1
        assert [bits(v) for v in self.ours.last_lr().tolist()] == [bits(v) for v in used], \
            f"step {self.t}: LR {self.ours.last_lr().tolist()} vs torch {used}"
        if self.t % check_every == 0:
            self.assert_same()

    def assert_groups_show_the_same(self) -> None:
        if self.shows_last_used and self.t > 0:
            assert [bits(g["lr"]) for g in self.ours.param_groups] == [bits(v) for v in self.ours.last_lr().tolist()]
            return
        for g, (a, b) in enumerate(zip(self.ours.param_groups, self.ref.param_groups)):
            assert bits(a["lr"]) == bits(b["lr"]), f"before step {self.t + 1}, group {g}: lr {a['lr']} vs {b['lr']}"
            assert bits(momentum(a)) == bits(momentum(b)), \
                f"before step {self.t + 1}, group {g}: beta1/momentum {momentum(a)} vs {momentum(b)}"

    def assert_same(self) -> None:
        assert_same(self.model, self.ours, self.twin, self.ref, f"step {self.t}:")


def assert_same(model, ours, twin, ref, where="") -> None:
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if not torch.equal(p, q):
            pytest.fail(f"{where} param {name}: max |diff| {(p - q).abs().max().item()}")
        so, sr = ours.state[p], ref.state[q]
        assert set(so) == set(sr), f"{where} {name}: state keys {sorted(so)} vs {sorted(sr)}"
        for k in sr:
            if so[k].dtype != sr[k].dtype or not torch.equal(so[k], sr[k]):
                pytest.fail(f"{where} {name} state {k}: {so[k].dtype} vs {sr[k].dtype}, max |diff| "
                            f"{(so[k].double() - sr[k].double()).abs().max().item()}")


# ------------------------------------------------------------------------------------------------ schedulers
STEPS = 16


def _plateau_metric(t: int) -> float:
    """Improves every 5 steps and stalls in between: ReduceLROnPlateau(patience=1) cuts the LR several times."""
    return 1.0 - 0.1 * (t // 5)


def _gradual(opt, after: bool):
    GradualWarmupScheduler = pytest.importorskip("warmup_scheduler").GradualWarmupScheduler
    if after:
        return GradualWarmupScheduler(opt, multiplier=2.0, total_epoch=5, after_scheduler=lrs.StepLR(opt, 3, 0.5))
    return GradualWarmupScheduler(opt, multiplier=1.0, total_epoch=6)


def _hf(name):
    def make(opt):
        return getattr(pytest.importorskip("transformers"), name)(opt, num_warmup_steps=5, num_training_steps=STEPS)
    return make


# name -> scheduler factory on an optimizer; each runs STEPS steps
SCHEDULERS = {
    "LinearLR": lambda o: lrs.LinearLR(o, start_factor=0.1, total_iters=8),
    "SequentialLR": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, 0.01, 1.0, 5), lrs.CosineAnnealingLR(o, STEPS - 5, 1e-5)], milestones=[5]),
    "OneCycleLR": lambda o: lrs.OneCycleLR(o, max_lr=[0.01, 0.02] if "betas" in o.defaults else [0.1, 0.2],
                                           total_steps=STEPS + 1, cycle_momentum=True),
    "CyclicLR": lambda o: lrs.CyclicLR(o, base_lr=1e-3, max_lr=[0.01, 0.03], step_size_up=3, mode="triangular2",
                                       cycle_momentum=True, base_momentum=0.8, max_momentum=0.9),
    "LambdaLR": lambda o: lrs.LambdaLR(o, lambda s: 0.9 ** s * min(1.0, (s + 1) / 4)),
    "ReduceLROnPlateau": lambda o: lrs.ReduceLROnPlateau(o, factor=0.5, patience=1, threshold=0.0),
    "hf_cosine": _hf("get_cosine_schedule_with_warmup"),
    "hf_linear": _hf("get_linear_schedule_with_warmup"),
    "GradualWarmup+StepLR": lambda o: _gradual(o, after=True),
    "GradualWarmup": lambda o: _gradual(o, after=False),
}
CYCLES_MOMENTUM = ("OneCycleLR", "CyclicLR")
RECURSIVE = ("LinearLR", "SequentialLR", "GradualWarmup+StepLR")  # torch's chainable form: lr = f(group['lr'])


def step_scheduler(sched, t: int) -> None:
    if isinstance(sched, lrs.ReduceLROnPlateau):
        sched.step(_plateau_metric(t))
    else:
        sched.step()


# ReduceLROnPlateau depends on a metric: it stays on the host (from_torch refuses it, tested below).
ROUTES = [(route, s) for route in ("scheduler", "converted", "device") for s in SCHEDULERS
          if route == "scheduler" or s != "ReduceLROnPlateau"]


@pytest.mark.filterwarnings("ignore:To get the last learning rate")  # GradualWarmupScheduler calls get_lr()
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("route, sched_name", ROUTES, ids=[f"{r}-{s}" for r, s in ROUTES])
def test_torch_scheduler_on_our_optimizer(request, route, sched_name, name):
    """scheduler: built on our optimizer and stepped every iteration, nothing else changed.
    converted: the same, plus opt.set_schedule(from_torch(sched)) right after construction, the scheduler still
    stepping (must change nothing). device: converted, then the scheduler is no longer stepped: the device
    schedule alone gives every LR, and param_groups still show torch's values."""
    tw = Twins(name, seed=len(sched_name))
    tw.shows_last_used = route == "device"
    make = SCHEDULERS[sched_name]
    ours_sched, ref_sched = make(tw.ours), make(tw.ref)
    if route != "scheduler":
        tw.ours.set_schedule(from_torch(ours_sched, horizon=STEPS + 1))
    for t in range(STEPS):
        tw.step()
        step_scheduler(ref_sched, t)
        if route != "device":
            step_scheduler(ours_sched, t)
    tw.assert_groups_show_the_same()
    tw.assert_same()
    if route != "scheduler":  # the scheduler's writes repeated what the schedule shows: it still rules
        assert [s.lr_mode for s in tw.ours._sources] == [SCHEDULE, SCHEDULE]


def test_reduce_lr_on_plateau_converts_to_the_device_plateau():
    """The scheduler on our optimizer, converted: opt.observe(metric) replaces sched.step(metric) (torch's plateau
    reduces the LR it reads from param_groups, so it must not step on top of the device plateau)."""
    opt = warmup_fused.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    opt.set_schedule(from_torch(lrs.ReduceLROnPlateau(opt, patience=0)))
    ref = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    ref_sched = lrs.ReduceLROnPlateau(ref, patience=0)
    for m in (3.0, 3.0, 2.0, 2.0):
        opt.observe(m)
        ref_sched.step(m)
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    assert opt._sources[0].lr_mode == warmup_fused._ops.LAYOUT["lr_from_schedule"]


# ------------------------------------------------------------------------------------ manual edits, checkpoints
# A scheduler on an optimizer that never steps (it only computes LRs, or a torch run is resumed from its state)
IDLE_SCHEDULER = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")


def warmup_cosine(opt, warmup=8, total=40):
    return lrs.SequentialLR(opt, [lrs.LinearLR(opt, 0.01, 1.0, warmup), lrs.CosineAnnealingLR(opt, total - warmup,
                                                                                                1e-5)], [warmup])


def device_schedule(name: str, make=warmup_cosine, horizon: int = 41):
    """from_torch of a fresh scheduler on a throwaway torch optimizer with the same param-group LRs."""
    lr = BASE_LR[name]
    return from_torch(make(getattr(torch.optim, name)(groups(MLP(), lr), lr=lr)), horizon=horizon)


def fresh(tw: Twins, name: str, torch_side: bool = False, lr: float = 1.0, **kw):
    """A new optimizer of the same kind on the same model (what a resumed run builds). lr=1.0 by default: the
    checkpoint's values must win."""
    model = tw.twin if torch_side else tw.model
    cls = getattr(torch.optim, name) if torch_side else getattr(warmup_fused, name)
    extra = dict(fused=True) if torch_side else {}
    return cls(groups(model, lr), lr=lr, **HPARAMS[name], **extra, **kw)


def checkpoint(opt) -> dict:
    """A state_dict as it comes back from disk (torch.save / torch.load with weights_only=True)."""
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_manual_lr_edit_with_a_torch_scheduler_and_resume(name):
    """A torch scheduler on our optimizer, param_groups edited by hand mid-run (the recursive scheduler goes on
    from the edited value, as in torch), a checkpoint of optimizer + scheduler resumed into fresh ones, and an
    edit after the resume."""
    tw = Twins(name, seed=3)
    scheds = [lrs.LinearLR(tw.ours, 0.1, 1.0, 12), lrs.LinearLR(tw.ref, 0.1, 1.0, 12)]
    for t in range(16):
        if t in (4, 12):
            for opt in (tw.ours, tw.ref):
                opt.param_groups[t // 12]["lr"] = 0.7 * BASE_LR[name]
        tw.step()
        for s in scheds:
            s.step()
        if t == 8:  # resume both from their checkpoints
            saved = [(checkpoint(o), s.state_dict()) for o, s in zip((tw.ours, tw.ref), scheds)]
            tw.ours, tw.ref = fresh(tw, name), fresh(tw, name, torch_side=True)
            scheds = [lrs.LinearLR(tw.ours, 0.1, 1.0, 12), lrs.LinearLR(tw.ref, 0.1, 1.0, 12)]
            for o, s, (osd, ssd) in zip((tw.ours, tw.ref), scheds, saved):
                o.load_state_dict(osd)
                s.load_state_dict(ssd)
    tw.assert_same()


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("edit_before_save", [False, True])
@IDLE_SCHEDULER
def test_manual_lr_edit_on_a_device_schedule_and_resume_without_schedule(name, edit_before_save):
    """Our optimizer on a device schedule, torch's given the same LRs by hand. An edit makes that group train at
    the written value from the next step on (the other group keeps its schedule). A checkpoint (mid-warmup) loads
    into a fresh optimizer built WITHOUT schedule= (an edit before the load is overwritten, as torch's load does)
    and continues bit-identically, keeping an edit made before the save; an edit after the load takes effect."""
    tw = Twins(name, seed=4, ours_kw=dict(schedule=device_schedule(name)))
    values = warmup_cosine(getattr(torch.optim, name)(groups(MLP(), BASE_LR[name]), lr=BASE_LR[name]))
    pinned = {}  # group -> the LR written by hand
    for t in range(24):
        if t == (3 if edit_before_save else 14):
            pinned[0] = 0.37 * BASE_LR[name]
            tw.ours.param_groups[0]["lr"] = pinned[0]
        if t == 6:
            sd = checkpoint(tw.ours)
            tw.ours = fresh(tw, name)
            tw.ours.param_groups[1]["lr"] = 123.0  # before the load: the checkpoint replaces it, as in torch
            tw.ours.load_state_dict(sd)
            assert int(tw.ours.sched_step()) == 6
        if t == 17:
            pinned[1] = 0.11 * BASE_LR[name]
            tw.ours.param_groups[1].update(lr=pinned[1])  # dict.update is seen too
        for g, group in enumerate(tw.ref.param_groups):
            group["lr"] = pinned.get(g, values.optimizer.param_groups[g]["lr"])
        tw.step()
        values.step()
    tw.assert_same()
    assert [s.lr_mode for s in tw.ours._sources] == [LAYOUT["lr_from_host"]] * 2


@IDLE_SCHEDULER
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("recipe", ["scheduler", "device"])
def test_resume_torch_checkpoint_in_ours(name, recipe):
    """torch fused + SequentialLR checkpointed mid-warmup, resumed in ours: with the torch scheduler (its own
    state_dict loaded), or on a device schedule (from_torch of a fresh scheduler; the counter comes from the
    checkpoint's step count, and SGD's, which has none, from set_sched_step). Continues bit-identically."""
    tw = Twins(name, seed=5)
    scheds = [warmup_cosine(tw.ours), warmup_cosine(tw.ref)]
    for t in range(20):
        if t == 5:  # mid-warmup: the torch run is checkpointed; ours resumes from it
            tw.assert_same()
            sd, ssd = checkpoint(tw.ref), scheds[1].state_dict()
            if recipe == "scheduler":
                tw.ours = fresh(tw, name)
                scheds[0] = warmup_cosine(tw.ours)
                tw.ours.load_state_dict(sd)
                scheds[0].load_state_dict(ssd)
            else:
                tw.ours = fresh(tw, name, schedule=device_schedule(name))
                if name == "SGD":  # torch's SGD saves no step count
                    tw.ours.set_sched_step(ssd["last_epoch"])
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # the checkpoint's LR is the schedule's: no warning
                    tw.ours.load_state_dict(sd)
                scheds[0] = None
        tw.step()
        for s in scheds:
            if s is not None:
                s.step()
    tw.assert_same()
    if recipe == "device":
        assert int(tw.ours.sched_step()) == 20
        assert [s.lr_mode for s in tw.ours._sources] == [SCHEDULE] * 2


def test_resume_torch_sgd_checkpoint_then_set_sched_step():
    """The other order for a torch SGD checkpoint: loaded first (the counter is unknown, so the group follows the
    checkpoint's LR, with a warning saying what to do), then set_sched_step + set_schedule put it back on the
    schedule at the right step."""
    tw = Twins("SGD", seed=6, ours_kw=dict(schedule=device_schedule("SGD")))
    ref_sched = warmup_cosine(tw.ref)
    for t in range(14):
        if t == 6:
            tw.ours = fresh(tw, "SGD", schedule=device_schedule("SGD"))
            with pytest.warns(UserWarning, match="set_sched_step"):
                tw.ours.load_state_dict(checkpoint(tw.ref))
            assert [s.lr_mode for s in tw.ours._sources] == [LAYOUT["lr_from_host"]] * 2
            tw.ours.set_sched_step(6)
            tw.ours.set_schedule(device_schedule("SGD"))
        tw.step()
        ref_sched.step()
    tw.assert_same()


@IDLE_SCHEDULER
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("recipe", ["scheduler", "device"])
@pytest.mark.parametrize("set_fused", [False, True], ids=["load", "load+fused"])
def test_resume_our_checkpoint_in_torch(name, recipe, set_fused):
    """Ours checkpointed mid-warmup, resumed in torch fused: with the torch scheduler that drove ours (its
    state_dict loaded), or, from a device schedule, with a fresh torch scheduler stepped sched_step times before
    the optimizer state is loaded. Continues bit-identically (load+fused: group['fused'] set back to True after
    the load, the workaround until our state_dict says fused=True)."""
    tw = Twins(name, seed=7, ours_kw=dict(schedule=device_schedule(name)) if recipe == "device" else None)
    scheds = [warmup_cosine(tw.ours) if recipe == "scheduler" else None, warmup_cosine(tw.ref)]
    for t in range(20):
        if t == 5:  # ours is checkpointed; torch resumes from it
            tw.assert_same()
            sd = checkpoint(tw.ours)
            # the resumed script builds its scheduler as the original did: on the original LRs
            tw.ref = fresh(tw, name, torch_side=True, lr=BASE_LR[name])
            scheds[1] = warmup_cosine(tw.ref)
            if recipe == "scheduler":
                scheds[1].load_state_dict(scheds[0].state_dict())
            else:
                for _ in range(sd["warmup_fused"]["sched_step"]):
                    scheds[1].step()
            tw.ref.load_state_dict(sd)
            if set_fused:
                for group in tw.ref.param_groups:
                    group["fused"] = True
            assert [g["fused"] for g in tw.ref.param_groups] == [True, True]
        tw.step()
        for s in scheds:
            if s is not None:
                s.step()
    tw.assert_same()


# -------------------------------------------------------------------------------------- torch's constructor
@pytest.mark.parametrize("name, switch", [
    (n, sw) for n in OPTIMIZERS for sw in (dict(fused=True), dict(fused=False), dict(foreach=True),
                                           dict(foreach=False), dict(capturable=True), dict(differentiable=False))
    if not (n == "SGD" and "capturable" in sw)], ids=str)
def test_implementation_switches_are_accepted_and_change_nothing(name, switch):
    tw = Twins(name, seed=8, ours_kw=switch)
    for _ in range(6):
        tw.step(check_every=3)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_differentiable_is_refused(name):
    with pytest.raises(ValueError, match="differentiable"):
        getattr(warmup_fused, name)([torch.zeros(3, requires_grad=True)], lr=0.1, differentiable=True)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_lr_read_every_step(name, dtype):
    """A Tensor lr, as torch: in-place edits of it take effect at the next step, and a torch scheduler fills it."""
    lr = torch.tensor(BASE_LR[name], dtype=dtype)
    tw = Twins(name, seed=9, lr=lr)
    assert tw.ours.param_groups[0]["lr"] is lr
    for t in range(12):
        if t == 3:
            for opt in (tw.ours, tw.ref):
                opt.param_groups[0]["lr"].mul_(0.5)
        if t == 6:
            for opt in (tw.ours, tw.ref):
                opt.param_groups[1]["lr"].fill_(0.0123)
        if t == 8:
            scheds = [lrs.LinearLR(o, 0.5, 1.0, 3) for o in (tw.ours, tw.ref)]
        tw.step(check_every=3)
        if t >= 8:
            for s in scheds:
                s.step()
    assert tw.ours.param_groups[0]["lr"] is lr


TENSOR_HPARAMS = [("AdamW", "weight_decay"), ("AdamW", "beta2"), ("AdamW", "beta1"), ("Adam", "weight_decay"),
                  ("Adam", "beta2"), ("Adam", "beta1"), ("SGD", "weight_decay"), ("SGD", "momentum")]


@pytest.mark.parametrize("name, edited", TENSOR_HPARAMS)
def test_tensor_hyperparameters_read_every_step(name, edited):
    """Tensor betas, momentum and weight_decay, as torch: read at every step, so in-place edits take effect."""
    tensors = {"weight_decay": torch.tensor(0.05)}
    if name == "SGD":
        tensors["momentum"] = torch.tensor(0.9)
        kw = dict(momentum=tensors["momentum"], weight_decay=tensors["weight_decay"])
    else:
        tensors["beta1"], tensors["beta2"] = torch.tensor(0.9), torch.tensor(0.99)
        kw = dict(betas=(tensors["beta1"], tensors["beta2"]), weight_decay=tensors["weight_decay"])
    tw = Twins(name, seed=10, **kw)  # the same tensors in both optimizers
    for t in range(8):
        if t == 3:
            tensors[edited].mul_(0.5)
        tw.step(check_every=4)


def test_adam_decoupled_weight_decay_is_adamw():
    tw = Twins("Adam", seed=12, ours_kw=dict(decoupled_weight_decay=True), ref_name="AdamW", weight_decay=0.1)
    scheds = [warmup_cosine(o) for o in (tw.ours, tw.ref)]
    for _ in range(10):
        tw.step(check_every=5)
        for s in scheds:
            s.step()


# ------------------------------------------------------------------------------------------------- layouts
def _layouts(gen):
    """Dense non-overlapping params in several memory orders: a channels_last conv weight, a transposed matrix,
    a permuted 3-d tensor, a contiguous vector."""
    conv = torch.randn(5, 3, 3, 3, generator=gen).to(memory_format=torch.channels_last)
    return [conv, torch.randn(7, 5, generator=gen).t(), torch.randn(4, 6, 5, generator=gen).permute(2, 0, 1),
            torch.randn(11, generator=gen)]


def _relaid(g: torch.Tensor, layout: str, like: torch.Tensor) -> torch.Tensor:
    """The same values in another memory order: the param's own, contiguous, or the reverse of the param's."""
    if layout == "param":
        return torch.empty_like(like).copy_(g)
    if layout == "contiguous":
        return g.contiguous()
    order = sorted(range(g.dim()), key=lambda d: like.stride(d))  # the param's dims, innermost first
    return g.permute(order).contiguous().permute([order.index(d) for d in range(g.dim())])


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("grad_layout", ["param", "contiguous", "reversed"])
@pytest.mark.parametrize("scaled", [False, True], ids=["", "GradScaler"])
def test_memory_layouts(name, grad_layout, scaled):
    """Params in non-contiguous dense layouts (states take the param's strides, as torch's), grads in the param's
    layout or another one. torch's fused CPU kernels assume the grad has the param's strides (they walk raw
    memory), so their grads are always given in the param's layout: the values ours must reproduce. With a
    GradScaler, grads are unscaled in place like torch's, and a step with an inf grad is skipped."""
    gen = torch.Generator().manual_seed(13)
    ps = _layouts(gen)
    qs = [p.clone().requires_grad_() for p in ps]  # clone keeps the memory format
    ps = [p.clone().requires_grad_() for p in ps]
    assert [p.stride() for p in ps] == [q.stride() for q in qs] and not any(p.is_contiguous() for p in ps[:3])
    ours = getattr(warmup_fused, name)(ps, lr=BASE_LR[name], **HPARAMS[name])
    ref = getattr(torch.optim, name)(qs, lr=BASE_LR[name], fused=True, **HPARAMS[name])
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 12) for _ in range(2)] if scaled else None
    for t in range(6):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, generator=gen)
            if scaled:
                g = g * 2.0 ** 12
                if t == 3 and p.dim() == 1:
                    g[2] = float("inf")
            p.grad, q.grad = _relaid(g, grad_layout, p), _relaid(g, "param", q)
        if scaled:
            for s, opt in zip(scalers, (ours, ref)):
                s.scale(torch.ones(()))  # lazily creates the scale the step reads
                s.step(opt)
                s.update()
            assert scalers[0].get_scale() == scalers[1].get_scale()
        else:
            ours.step()
            ref.step()
        for p, q in zip(ps, qs):
            assert torch.equal(p.grad, q.grad), "grads unscaled in place like torch's"
            assert torch.equal(p, q), f"step {t + 1}: param {tuple(p.shape)} stride {p.stride()}"
            for k, v in ref.state[q].items():
                assert torch.equal(ours.state[p][k], v), k
                if v.dim():
                    assert ours.state[p][k].stride() == v.stride() == p.stride(), k


# ---------------------------------------------------------------------------------------- copies and pickles
def _roundtrip(obj, how: str):
    if how == "deepcopy":
        return copy.deepcopy(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _params(opt) -> list:
    return [p for group in opt.param_groups for p in group["params"]]


def _snapshot(opt) -> list:
    return [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in _params(opt)] + [
        opt.sched_step().clone(), opt.last_lr().clone()]


def _assert_snapshot(opt, snap, what: str) -> None:
    for (p, st), q in zip(snap, _params(opt)):
        assert torch.equal(p, q), f"{what}: a param changed"
        assert set(st) == set(opt.state[q]) and all(torch.equal(v, opt.state[q][k]) for k, v in st.items()), \
            f"{what}: a state changed"
    assert torch.equal(snap[-2], opt.sched_step()) and torch.equal(snap[-1], opt.last_lr(), ), f"{what}: counter"


def _step_both(a, b, gen) -> None:
    """The same fresh grads for both optimizers' params, one step each, then bit-for-bit equal."""
    for p, q in zip(_params(a), _params(b)):
        g = torch.randn(p.shape, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()
    a.step()
    b.step()
    assert torch.equal(a.last_lr(), b.last_lr()) and torch.equal(a.sched_step(), b.sched_step())
    assert [bits(g["lr"]) for g in a.param_groups] == [bits(g["lr"]) for g in b.param_groups]
    for p, q in zip(_params(a), _params(b)):
        assert torch.equal(p, q)
        assert set(a.state[p]) == set(b.state[q])
        for k, v in a.state[p].items():
            assert torch.equal(v, b.state[q][k]), k


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("with_model", [False, True], ids=["alone", "with_model"])
@pytest.mark.parametrize("lr_source", ["schedule", "scheduler", "edited"])
def test_copy_steps_like_the_original_and_independently(name, how, with_model, lr_source):
    """copy.deepcopy / torch.save + torch.load(weights_only=False) mid-warmup, of the optimizer alone or with its
    model: the copy steps bit-identically to the original, and stepping either leaves the other untouched.
    schedule: a device schedule; scheduler: a torch scheduler on ours (a host LR; the copy is then stepped
    without it, the original keeps its LR too); edited: a device schedule with group 0 written by hand."""
    tw = Twins(name, seed=14, ours_kw=dict(schedule=device_schedule(name)) if lr_source != "scheduler" else None)
    sched = warmup_cosine(tw.ours) if lr_source == "scheduler" else None
    for t in range(5):
        if t == 3 and lr_source == "edited":
            tw.ours.param_groups[0]["lr"] = 0.37 * BASE_LR[name]
        tw.grads()
        tw.ours.step()
        if sched is not None:
            sched.step()
    model, opt = tw.model, tw.ours
    if with_model:
        model2, opt2 = _roundtrip((model, opt), how)
        assert [id(p) for p in _params(opt2)] == [id(p) for p in model2.parameters()]
    else:
        opt2 = _roundtrip(opt, how)
    assert not set(map(id, _params(opt2))) & set(map(id, _params(opt)))
    gen = torch.Generator().manual_seed(15)
    before = [bits(g["lr"]) for g in opt.param_groups]
    assert [bits(g["lr"]) for g in opt2.param_groups] == before
    for _ in range(4):
        _step_both(opt, opt2, gen)
    snap = _snapshot(opt)
    for p in _params(opt2):
        p.grad = torch.randn(p.shape, generator=gen)
    opt2.step()
    _assert_snapshot(opt, snap, "stepping the copy")
    snap2 = _snapshot(opt2)
    opt.step()
    _assert_snapshot(opt2, snap2, "stepping the original")


def test_a_write_of_the_shown_lr_keeps_the_step_plan():
    ps = [torch.randn(8) for _ in range(3)]
    opt = warmup_fused.AdamW(ps, lr=1e-3)
    sched = lrs.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    opt.set_schedule(from_torch(sched, horizon=10))
    for p in ps:
        p.grad = torch.randn(8)
    opt.step()
    plan = opt._plan[1]
    sched.step()  # writes the value param_groups already show
    opt.step()
    assert opt._plan[1] is plan
