"""transformers.Trainer and Lightning with warmup_fused optimizers, on CPU, against the same runs with
torch.optim.AdamW(fused=True): params and optimizer states bit for bit, and the LR of every step.

Each framework is run three ways: torch's fused AdamW (the reference), ours with nothing else changed (the
framework's scheduler writes param_groups), and ours with warmup_fused.integrations' callback (the scheduler is
converted to the device schedule at train start; the framework keeps stepping it).
"""
from __future__ import annotations

import functools
import subprocess
import sys
import warnings

import pytest
import torch

import warmup_fused
from warmup_fused._ops import LAYOUT

from test_migration import MLP

SCHEDULE = LAYOUT["lr_from_schedule"]
STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def test_importing_warmup_fused_imports_no_framework():
    code = ("import sys, warmup_fused, warmup_fused.integrations; "
            "print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _data(n: int = 96):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 13, generator=g), torch.randn(n, 5, generator=g)


def _optimizer(kind: str, params, name: str = "AdamW"):
    kw = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1) if name == "AdamW" else dict(lr=0.05, momentum=0.9)
    return getattr(torch.optim, name)(params, fused=True, **kw) if kind == "torch" else \
        getattr(warmup_fused, name)(params, **kw)


class Run:
    """What a training run leaves: params, optimizer states, the LR each step used (and ours' param_groups)."""

    def __init__(self, model, opt, used, shown):
        self.params = [p.detach().clone() for p in model.parameters()]
        self.states = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
        self.used, self.shown = used, shown
        self.opt = opt


def assert_same_run(ours: Run, ref: Run, steps: slice = slice(None)) -> None:
    assert len(ref.used) == STEPS
    assert ours.used == ref.used[steps], "LR of each step"  # Python floats: == is bitwise (no NaN, no -0.0)
    assert ours.shown == ref.used[steps], "param_groups before each step"
    for i, (p, q) in enumerate(zip(ours.params, ref.params)):
        if not torch.equal(p, q):
            pytest.fail(f"param {i}: max |diff| {(p - q).abs().max().item()}")
    for i, (a, b) in enumerate(zip(ours.states, ref.states)):
        assert set(a) == set(b)
        for k in b:
            assert torch.equal(a[k], b[k]), f"param {i} state {k}"


def _no_left_schedule(record) -> None:
    from warmup_fused.integrations import LeftScheduleWarning

    left = [str(w.message) for w in record if issubclass(w.category, LeftScheduleWarning)]
    assert not left, left


# ------------------------------------------------------------------------------------------- transformers
class HFMLP(MLP):
    def forward(self, x, labels=None):
        out = super().forward(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class HFData(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = _data()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _transformers_trainer():
    pytest.importorskip("accelerate")  # transformers.Trainer needs it
    return pytest.importorskip("transformers")


@functools.lru_cache(maxsize=None)
def hf_run(kind: str, sched_type: str, callback: bool, tmp: str, save: bool = False, resume: str | None = None) -> Run:
    transformers = _transformers_trainer()

    class Recorder(transformers.TrainerCallback):
        def __init__(self):
            self.used, self.shown = [], []

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            self.shown.append([g["lr"] for g in optimizer.param_groups])

        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            opt = getattr(optimizer, "optimizer", optimizer)
            self.used.append(opt.last_lr().tolist() if isinstance(opt, warmup_fused.AdamW) else self.shown[-1])

    torch.manual_seed(0)
    model = HFMLP()
    opt = _optimizer(kind, model.parameters())
    recorder = Recorder()
    callbacks = [recorder]
    if callback:
        from warmup_fused.integrations.transformers import WarmupFusedCallback

        callbacks.append(WarmupFusedCallback())
    args = transformers.TrainingArguments(
        output_dir=tmp, use_cpu=True, report_to="none", max_steps=STEPS, per_device_train_batch_size=8,
        lr_scheduler_type=sched_type, warmup_steps=5, save_strategy="steps" if save else "no", save_steps=STEPS // 2,
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=HFData(), optimizers=(opt, None),
                                   callbacks=callbacks)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=resume)
    _no_left_schedule(record)
    return Run(model, opt, recorder.used, recorder.shown)


HF_SCHEDULES = ["linear", "cosine", "cosine_with_restarts", "constant_with_warmup"]


@pytest.mark.parametrize("sched_type", HF_SCHEDULES)
@pytest.mark.parametrize("callback", [False, True], ids=["trainer_scheduler", "WarmupFusedCallback"])
def test_transformers_trainer(tmp_path_factory, sched_type, callback):
    tmp = str(tmp_path_factory.mktemp("hf"))
    ref = hf_run("torch", sched_type, False, tmp)
    ours = hf_run("ours", sched_type, callback, tmp)
    assert_same_run(ours, ref)
    assert len(set(map(tuple, ref.used))) > 5, "the schedule moved the LR"
    modes = [s.lr_mode for s in ours.opt._sources]
    assert (modes == [SCHEDULE]) == callback


@pytest.mark.parametrize("callback", [False, True], ids=["trainer_scheduler", "WarmupFusedCallback"])
def test_transformers_trainer_resume(tmp_path_factory, callback):
    """A run checkpointed by the Trainer at step 10 (optimizer.pt is our state_dict, loaded with
    weights_only=True) and resumed by a new Trainer continues bit-identically to torch's uninterrupted run; with
    the callback, the resumed optimizer keeps the schedule its checkpoint carries."""
    tmp = str(tmp_path_factory.mktemp("hf_resume"))
    ref = hf_run("torch", "cosine", False, str(tmp_path_factory.mktemp("hf")))
    hf_run("ours", "cosine", callback, tmp, save=True)
    resumed = hf_run("ours", "cosine", callback, tmp, resume=f"{tmp}/checkpoint-{STEPS // 2}")
    assert_same_run(resumed, ref, steps=slice(STEPS // 2, None))
    assert ([s.lr_mode for s in resumed.opt._sources] == [SCHEDULE]) == callback


def test_transformers_callback_refuses_a_torch_optimizer(tmp_path):
    transformers = _transformers_trainer()
    from warmup_fused.integrations.transformers import WarmupFusedCallback

    model = HFMLP()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=2,
                                          save_strategy="no", disable_tqdm=True, remove_unused_columns=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=HFData(),
                                   optimizers=(torch.optim.AdamW(model.parameters()), None),
                                   callbacks=[WarmupFusedCallback()])
    with pytest.raises(TypeError, match="not a warmup_fused optimizer"):
        trainer.train()


# ---------------------------------------------------------------------------------------------- Lightning
def _lightning():
    return pytest.importorskip("lightning")


def _torch_scheduler(name: str, opt):
    lrs = torch.optim.lr_scheduler
    if name == "hf_cosine":
        return pytest.importorskip("transformers").get_cosine_schedule_with_warmup(opt, 5, STEPS)
    if name == "OneCycleLR":  # cycles SGD's momentum too
        cycle = "momentum" in opt.defaults
        return lrs.OneCycleLR(opt, max_lr=0.1 if cycle else 0.02, total_steps=STEPS, cycle_momentum=cycle)
    if name == "SequentialLR":
        return lrs.SequentialLR(opt, [lrs.LinearLR(opt, 0.01, 1.0, 5), lrs.CosineAnnealingLR(opt, STEPS - 5, 1e-4)],
                                milestones=[5])
    raise ValueError(name)


@functools.lru_cache(maxsize=None)
def lightning_run(kind: str, sched_name: str, callback: bool, opt_name: str) -> Run:
    L = _lightning()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = MLP()
            self.used, self.shown = [], []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = _optimizer(kind, self.parameters(), opt_name)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": _torch_scheduler(sched_name, opt),
                                                       "interval": "step"}}

        def on_before_optimizer_step(self, optimizer):
            self.shown.append([(g["lr"], g.get("momentum")) for g in optimizer.param_groups])

        def optimizer_step(self, *args, **kwargs):
            super().optimizer_step(*args, **kwargs)
            opt = self.trainer.optimizers[0]
            ours = isinstance(opt, (warmup_fused.AdamW, warmup_fused.SGD))
            self.used.append(list(zip(opt.last_lr().tolist(), [x[1] for x in self.shown[-1]])) if ours
                             else self.shown[-1])

    torch.manual_seed(0)
    module = Module()
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    callbacks = []
    if callback:
        from warmup_fused.integrations.lightning import WarmupFusedCallback

        callbacks.append(WarmupFusedCallback())
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(module, loader)
    _no_left_schedule(record)
    opt = trainer.optimizers[0]
    return Run(module.net, opt, module.used, module.shown)


LIGHTNING_CASES = [pytest.param(opt, name, callback, id=f"{opt}-{name}-{'callback' if callback else 'plain'}")
                   for callback in (False, True)
                   for opt, name in (("AdamW", "hf_cosine"), ("AdamW", "OneCycleLR"), ("AdamW", "SequentialLR"),
                                     ("SGD", "OneCycleLR"))]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on workers and logging intervals
@pytest.mark.parametrize("opt_name, sched_name, callback", LIGHTNING_CASES)
def test_lightning(opt_name, sched_name, callback):
    """Per step: the LR (and SGD's momentum) torch's param_groups held at the step, ours' param_groups then,
    and the LR ours' kernel used."""
    ref = lightning_run("torch", sched_name, False, opt_name)
    ours = lightning_run("ours", sched_name, callback, opt_name)
    assert_same_run(ours, ref)
    assert len(set(map(tuple, ref.used))) > 5, "the schedule moved the LR"
    assert ([s.lr_mode for s in ours.opt._sources] == [SCHEDULE]) == callback


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("config, match", [
    ({"interval": "epoch"}, "interval='epoch'"),
    ({"interval": "step", "frequency": 2}, "frequency=2"),
    ({"reduce_on_plateau": True, "monitor": "loss"}, "ReduceLROnPlateau"),
])
def test_lightning_callback_refuses_what_it_cannot_convert(config, match):
    L = _lightning()
    from warmup_fused.integrations.lightning import WarmupFusedCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = MLP()

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            opt = warmup_fused.AdamW(self.parameters(), lr=1e-2)
            plateau = config.get("reduce_on_plateau")
            sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt) if plateau
                     else torch.optim.lr_scheduler.LinearLR(opt, 0.1, 1.0, 5))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched,
                                                       **{k: v for k, v in config.items() if k != "reduce_on_plateau"}}}

    x, y = _data(16)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[WarmupFusedCallback()])
    with pytest.raises(ValueError, match=match):
        trainer.fit(Module(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8))


# ------------------------------------------------------------------------------------------------ helpers
def test_to_device_schedule_and_the_watch():
    """The shared conversion: a stepped scheduler on an optimizer without a device schedule is refused; a fresh
    one is installed; a later write of a different LR is reported once."""
    from warmup_fused.integrations import LeftScheduleWarning, ScheduleWatch, to_device_schedule

    p = torch.randn(4)
    opt = warmup_fused.SGD([p], lr=0.1, momentum=0.9)
    stepped = torch.optim.lr_scheduler.LinearLR(opt, 0.5, 1.0, 4)
    p.grad = torch.randn(4)
    opt.step()
    stepped.step()
    with pytest.raises(ValueError, match="already taken 1 steps"):
        to_device_schedule(opt, stepped, 10, "test")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))  # closed form: recorded over 11 steps
    assert to_device_schedule(opt, sched, 10, "test") is opt
    assert [s.lr_mode for s in opt._sources] == [SCHEDULE]
    watch = ScheduleWatch(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.step()
            sched.step()  # writes what the group shows
            watch.check()
    assert opt.last_lr().item() == 0.1 * (1.0 / 3)  # the third step of the new scheduler (the counter was 1)
    opt.param_groups[0]["lr"] = 0.5
    with pytest.warns(LeftScheduleWarning, match=r"param groups \[0\].*\[0.5\]"):
        watch.check()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        watch.check()  # once
    with pytest.raises(TypeError, match="not a warmup_fused optimizer"):
        to_device_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), sched, 10, "test")
