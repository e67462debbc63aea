"""ReduceLROnPlateau on the device: opt.observe(metric) follows torch's ReduceLROnPlateau.step(metric) bit for bit.

For random metric sequences (with flat stretches so patience and cooldown matter) and every mode, threshold mode,
patience, cooldown, min_lr and eps, the LR each group trains at after each epoch equals torch's, and the
optimizer's params equal torch fused's with the same scheduler. The state survives state_dict and from_torch.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

import warmup_fused
from warmup_fused import from_torch, schedules

CONFIGS = [
    dict(),
    dict(mode="max", factor=0.5, patience=2),
    dict(threshold_mode="abs", threshold=0.05, patience=1, cooldown=2),
    dict(mode="max", threshold_mode="abs", threshold=0.01, patience=0, min_lr=[1e-4, 3e-4], factor=0.3),
    dict(patience=3, cooldown=1, min_lr=2e-3, eps=1e-3, factor=0.7),
]


def _metrics(seed: int, n: int = 60) -> list[float]:
    r = random.Random(seed)
    out, level = [], 1.0
    for _ in range(n):
        if r.random() < 0.3:
            level *= r.choice([0.9, 0.999, 1.0, 1.05])
        out.append(level if r.random() < 0.5 else level * (1 + r.uniform(-0.2, 0.2)))
    return out


def _groups(params, lr):
    return [{"params": params[:1]}, {"params": params[1:], "lr": lr * 0.3}]


@pytest.mark.parametrize("metric_kind", ["cpu-float32", "float", "float64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_observe_follows_torch_bit_for_bit(cfg, metric_kind):
    torch.manual_seed(0)
    params = [torch.randn(7), torch.randn(33)]
    ref_params = [p.clone().requires_grad_() for p in params]
    lr = 0.05
    ref = torch.optim.SGD(_groups(ref_params, lr), lr=lr, momentum=0.9, fused=True)
    sched = ReduceLROnPlateau(ref, **cfg)
    ours = warmup_fused.SGD(_groups(params, lr), lr=lr, momentum=0.9, schedule=schedules.reduce_on_plateau(**cfg))
    for epoch, m in enumerate(_metrics(len(str(cfg)))):
        for _ in range(2):  # two steps per epoch
            g = [torch.randn_like(p) for p in params]
            for p, q, gi in zip(params, ref_params, g):
                p.grad, q.grad = gi.clone(), gi.clone()
            used = [grp["lr"] for grp in ref.param_groups]
            ours.step()
            ref.step()
            assert ours.last_lr().tolist() == used, f"epoch {epoch}"
        metric = {"cpu-float32": torch.tensor(m), "float": m, "float64": torch.tensor(m, dtype=torch.float64)}
        value = metric[metric_kind]
        sched.step(float(value))  # torch's float(metrics)
        ours.observe(value)
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in ref.param_groups], f"epoch {epoch}"
    assert any(g["lr"] != lr for g in ref.param_groups) or cfg.get("mode") == "max"
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q.detach())


def test_state_dict_round_trip_and_from_torch_mid_run():
    torch.manual_seed(0)
    params = [torch.randn(5), torch.randn(9)]
    ref_params = [p.clone().requires_grad_() for p in params]
    ref = torch.optim.AdamW(_groups(ref_params, 1e-2), lr=1e-2, fused=True)
    sched = ReduceLROnPlateau(ref, patience=1, cooldown=1, factor=0.5)
    ours = warmup_fused.AdamW(_groups(params, 1e-2), lr=1e-2, schedule=schedules.reduce_on_plateau(
        patience=1, cooldown=1, factor=0.5))
    metrics = _metrics(7, 30)
    for m in metrics[:12]:
        sched.step(m)
        ours.observe(torch.tensor(m, dtype=torch.float64))
    # ours -> a fresh optimizer without schedule=: the plateau state comes along
    sd = copy.deepcopy(ours.state_dict())
    resumed = warmup_fused.AdamW(_groups([p.clone() for p in params], 1e-2), lr=1e-2)
    resumed.load_state_dict(sd)
    # torch's scheduler mid-run -> from_torch keeps its state (best, bad epochs, cooldown, the reduced LRs)
    converted = warmup_fused.AdamW(_groups([p.clone() for p in params], 1e-2), lr=1e-2,
                                   schedule=from_torch(sched))
    for m in metrics[12:]:
        sched.step(m)
        for o in (ours, resumed, converted):
            o.observe(m)
            assert [g["lr"] for g in o.param_groups] == [g["lr"] for g in ref.param_groups]


def test_warmup_then_plateau_and_errors():
    p = torch.randn(4)
    s = schedules.sequential([schedules.constant(warmup=schedules.linear_warmup(4)),
                              schedules.reduce_on_plateau(patience=0, factor=0.5)], [4])
    opt = warmup_fused.SGD([p], lr=0.8, schedule=s)
    lrs = []
    for t in range(8):
        p.grad = torch.ones(4)
        opt.step()
        lrs.append(opt.last_lr().item())
        if t >= 4:
            opt.observe(1.0)  # never better than the first: halves after each epoch once patience (0) runs out
    assert lrs == [0.8 * (t / 4.0) for t in range(4)] + [0.8, 0.8, 0.4, 0.2]
    with pytest.raises(ValueError, match="no reduce_on_plateau"):
        warmup_fused.SGD([torch.zeros(2)], lr=0.1).observe(1.0)
    with pytest.raises(ValueError, match="one-element"):
        opt.observe(torch.zeros(3))
    with pytest.raises(ValueError, match="factor"):
        schedules.reduce_on_plateau(factor=1.0)
    with pytest.raises(TypeError, match="ReduceLROnPlateau"):
        from warmup_scheduler import GradualWarmupScheduler

        o = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        from_torch(GradualWarmupScheduler(o, 1.0, 5, after_scheduler=ReduceLROnPlateau(o)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_observe_on_cuda_without_sync():
    p = torch.randn(16, device="cuda")
    opt = warmup_fused.AdamW([p], lr=1e-2, schedule=schedules.reduce_on_plateau(patience=0))
    p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.observe(torch.ones((), device="cuda"))
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert opt.last_lr().item() == 1e-2 * 0.1 * 0.1  # the first metric is the best; then reduced twice
    assert opt.state_dict()["param_groups"][0]["lr"] == 1e-2 * 0.1 * 0.1


def test_add_param_group_keeps_the_plateau_state():
    a, b = torch.randn(3), torch.randn(2)
    opt = warmup_fused.SGD([a], lr=0.4, schedule=schedules.reduce_on_plateau(patience=0, factor=0.5))
    for m in (1.0, 2.0, 2.0):  # best, then two bad epochs: 0.4 -> 0.2 -> 0.1
        opt.observe(m)
    opt.add_param_group({"params": [b], "lr": 0.3})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.3]
    opt.observe(5.0)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.15]
