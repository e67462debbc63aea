"""CUDA-graph safety by construction, checked on CPU (../shared/DESIGN.md section 5).

A captured graph replays the step's kernels with the addresses they had at capture. So every tensor a step hands
to the op, other than params and grads (programs, hyperparameters, the schedule counter, scratch/last_lr, the
per-param step counters, the states), must keep its address across everything a user does between replays, while
its values follow the edits. What cannot be done in place after a capture raises, saying to re-capture.
"""
from __future__ import annotations

import copy

import pytest
import torch

from warmup_fused import SGD, AdamW, schedules
from warmup_fused._ops import LAYOUT

from test_optim import op_args


def _addresses(args) -> list:
    """data_ptr of every tensor the op receives except params (args[0]) and grads (args[1])."""
    out = []
    for a in args[2:]:
        for t in (a if isinstance(a, list) else [a]):
            if isinstance(t, torch.Tensor) and t.numel():
                out.append(t.data_ptr())
    return out


def _setup(cls=AdamW, **kw):
    torch.manual_seed(0)
    ps = [torch.randn(5), torch.randn(3, 4), torch.randn(7)]
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5}], lr=0.1,
              schedule=schedules.warmup_cosine(100, warmup=10), **kw)
    for p in ps:
        p.grad = torch.randn_like(p)
    return opt, ps, op_args(opt)


@pytest.mark.parametrize("cls, kw", [(AdamW, dict(amsgrad=True)), (SGD, dict(momentum=0.9))])
def test_buffers_keep_their_addresses_while_values_follow(cls, kw):
    opt, ps, args = _setup(cls, **kw)
    addresses = _addresses(args)
    last_lr = opt.last_lr()
    hparams = args[11] if cls is AdamW else args[9]
    wd_col = LAYOUT["weight_decay"] if cls is AdamW else LAYOUT["sgd_weight_decay"]

    def check(what):
        now = op_args(opt)
        assert _addresses(now) == addresses, f"{what} moved a buffer the graph holds"
        assert opt.last_lr().data_ptr() == last_lr.data_ptr(), what
        return now

    opt.param_groups[0]["weight_decay"] = 0.25
    assert hparams[0, wd_col].item() == 0.25  # written through at once, before any step
    check("a weight_decay edit")
    opt.param_groups[1]["lr"] = 0.125
    now = check("an lr edit")
    assert opt.last_lr()[1].item() == 0.125
    opt.last_lr(), opt.sched_step()
    check("last_lr()")
    opt.set_schedule(schedules.linear_decay(50, warmup=5))  # a program that fits the buffer
    now = check("set_schedule")
    assert opt.last_lr().tolist() == opt.schedule.lr_at(int(now[7 if cls is AdamW else 5]) - 1)[:, 0].tolist()
    sd = copy.deepcopy(opt.state_dict())
    check("state_dict()")
    opt.load_state_dict(sd)
    check("load_state_dict")
    extra = torch.randn(6)
    opt.add_param_group({"params": [extra], "lr": 0.3})
    extra.grad = torch.randn(6)
    now = op_args(opt)
    assert opt.last_lr().data_ptr() == last_lr.data_ptr()
    assert _addresses(now)[-5:] == addresses[-5:]  # counter, scratch, program and hyperparameters stay


def test_growth_after_capture_raises_and_changes_nothing():
    opt, ps, args = _setup()
    buffers = next(iter(opt._devices.values()))
    buffers.captured = True  # what a step inside torch.cuda.graph() records
    before = (opt.schedule, opt.param_groups[0]["lr"], buffers.ints.data_ptr())
    big = schedules.warmup_cosine(20_000, warmup=10, base_lr=0.1)  # a 20,000-step exact table: no room
    with pytest.raises(RuntimeError, match="capture the graph again"):
        opt.set_schedule(big)
    assert (opt.schedule, opt.param_groups[0]["lr"], buffers.ints.data_ptr()) == before
    for i in range(6):
        opt.add_param_group({"params": [torch.randn(2)]})  # fits the 8-group capacity
    with pytest.raises(RuntimeError, match="capture the graph again"):
        opt.add_param_group({"params": [torch.randn(2)]})
    assert len(opt.param_groups) == 8


def test_first_step_states_are_created_without_kernels_when_capturing(monkeypatch):
    """Inside a capture no kernel may initialise a state (a replay would run it again): states are created with
    empty_like and the step kernels take a counter at 0 as zero states. Simulated on CPU."""
    opt = AdamW([torch.randn(5)], lr=0.1)
    p = opt.param_groups[0]["params"][0]
    p.grad = torch.randn(5)
    made = []
    real_empty, real_zeros = torch.empty_like, torch.zeros_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: made.append("empty") or real_empty(*a, **k))
    monkeypatch.setattr(torch, "zeros_like", lambda *a, **k: made.append("zeros") or real_zeros(*a, **k))
    buffers = next(iter(opt._devices.values()))
    monkeypatch.setattr(type(buffers), "capturing", lambda self: True)
    opt._op = lambda: (lambda *args: None)  # no kernels on CPU to capture
    opt.step()
    assert made == ["empty", "empty"] and buffers.captured
    assert float(opt.state[p]["step"]) == 0.0  # the counter was allocated before the capture, at 0


def test_writes_during_capture_raise():
    opt, ps, _ = _setup()
    buffers = next(iter(opt._devices.values()))
    buffers.capturing = lambda: True
    with pytest.raises(RuntimeError, match="frozen into the graph"):
        opt.param_groups[0]["lr"] = 0.01
    with pytest.raises(RuntimeError, match="frozen into the graph"):
        opt.set_schedule(schedules.constant())
