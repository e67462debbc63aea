"""On a GPU: parity with torch's fused CUDA optimizers, graph capture with torch's recipe, no sync, no allocation,
torch.compile, GradScaler. Every test is marked `cuda` and skips cleanly without a device (`./run gpu` runs them).

Parity is with the torch this process runs: its fused kernels' arithmetic (csrc/optim_math.h mirrors torch 2.14.1's
machine code, ../shared/CUDA_REVIEW.md); a GPU machine with another torch checks that version's kernels.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.lr_scheduler import LinearLR

import warmup_fused
from warmup_fused import SGD, AdamW, schedules

from test_optim import MLP, _train_pair, _warmup_cosine

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ADAM_FLAGS = [dict(), dict(weight_decay=0.1), dict(amsgrad=True, weight_decay=0.1), dict(maximize=True),
              dict(amsgrad=True, maximize=True, weight_decay=0.05, betas=(0.3, 0.99))]
SGD_FLAGS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
             dict(momentum=0.9, dampening=0.3, weight_decay=1e-2), dict(momentum=0.9, maximize=True, weight_decay=0.1)]
SIZES = [1, 3, 7, 8, 9, 17, 1000, 65535, 65537, 200_001]


def _param_sets(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(n, generator=g, device="cuda").to(dtype) for n in SIZES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls, flags", [("AdamW", f) for f in ADAM_FLAGS] + [("Adam", f) for f in ADAM_FLAGS]
                         + [("SGD", f) for f in SGD_FLAGS],
                         ids=lambda x: x if isinstance(x, str) else "-".join(f"{k}={v}" for k, v in x.items()))
def test_parity_with_torch_fused_cuda(cls, flags, dtype):
    """Params, states and unscaled grads bit-identical to torch.optim.X(fused=True) on CUDA, with a grad scale."""
    ps = _param_sets(dtype)
    ours_p = [p.clone() for p in ps]
    ref_p = [p.clone().requires_grad_() for p in ps]
    lr = 0.05 if cls == "SGD" else 3e-3
    ours = getattr(warmup_fused, cls)(ours_p, lr=lr, **flags)
    ref = getattr(torch.optim, cls)(ref_p, lr=lr, fused=True, **flags)
    g = torch.Generator(device="cuda").manual_seed(1)
    for t in range(4):
        for o in (ours, ref):
            o.grad_scale = torch.full((), 256.0, device="cuda") if t % 2 else None
            o.found_inf = torch.zeros((), device="cuda") if t % 2 else None
        for a, b in zip(ours_p, ref_p):
            grad = torch.randn(a.shape, generator=g, device="cuda").to(dtype) * (256.0 if t % 2 else 1.0)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
        for a, b in zip(ours_p, ref_p):
            assert torch.equal(a, b.detach()), f"step {t}: param {tuple(a.shape)}"
            assert torch.equal(a.grad, b.grad), f"step {t}: unscaled grad"
            for k, v in ref.state[b].items():
                if v is not None:
                    assert torch.equal(ours.state[a][k], v), f"step {t}: state {k}"


@pytest.mark.parametrize("cls", ["AdamW", "Adam", "SGD"])
def test_training_parity_with_scheduler(cls):
    kw = dict(momentum=0.9, weight_decay=1e-2) if cls == "SGD" else dict(weight_decay=0.1, amsgrad=True)
    lr = 0.05 if cls == "SGD" else 3e-3
    _train_pair(lambda ps, s: getattr(warmup_fused, cls)(ps, lr=lr, schedule=s, **kw),
                lambda ps: getattr(torch.optim, cls)(ps, lr=lr, fused=True, **kw), steps=200, checks=(1, 50, 200),
                device="cuda")


def test_steady_state_step_never_syncs_nor_allocates():
    model = MLP().cuda()
    opt = AdamW(model.parameters(), lr=1e-3, schedule=schedules.from_torch(
        LinearLR(torch.optim.SGD([torch.zeros(1)], lr=1.0), 0.1, 1.0, 10)))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    allocations = torch.cuda.memory_stats()["allocation.all.allocated"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            opt.step()
            opt.last_lr()
            opt.param_groups[0]["weight_decay"] = 0.02  # an edit reaches the device without a sync
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == allocations


def _graph_run(first_step_in_graph: bool, total=1100, warmup=100):
    """torch's whole-network capture recipe (zero_grad(set_to_none=True) before capture); returns the replayed
    model, its LRs per step, and the same steps run eagerly."""
    torch.manual_seed(0)
    model = MLP().cuda()
    eager = copy.deepcopy(model)
    sched = schedules.from_torch(_warmup_cosine(torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3),
                                                warmup, total), horizon=total + 1)
    opt = AdamW(model.parameters(), lr=1e-3, schedule=sched, amsgrad=True)
    eager_opt = AdamW(eager.parameters(), lr=1e-3, schedule=sched, amsgrad=True)
    x, y = torch.randn(64, 13, device="cuda"), torch.randn(64, 5, device="cuda")

    def train_step(m, o, step=True):
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss.backward()
        if step:
            o.step()

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    warm = 0 if first_step_in_graph else 3
    with torch.cuda.stream(s):
        for _ in range(3):  # warm up the model (and, unless testing the first step, the optimizer)
            model.zero_grad(set_to_none=True)
            train_step(model, opt, step=warm > 0)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(warm):
        eager.zero_grad(set_to_none=True)
        train_step(eager, eager_opt)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        train_step(model, opt)
    lrs = []
    for t in range(warm, total):
        g.replay()
        lrs.append(opt.last_lr().clone())
        eager.zero_grad(set_to_none=True)
        train_step(eager, eager_opt)
    return model, eager, torch.stack(lrs)[:, 0], sched.lr_at(range(warm, total), "cuda")[0]


@pytest.mark.parametrize("first_step_in_graph", [False, True], ids=["after-warmup", "first-step-captured"])
def test_graph_replays_follow_the_schedule_and_equal_eager(first_step_in_graph):
    model, eager, lrs, expect = _graph_run(first_step_in_graph)
    assert len(lrs) >= 1000
    assert torch.equal(lrs, expect)
    for p, q in zip(model.parameters(), eager.parameters()):
        assert torch.equal(p, q)


def test_graph_follows_host_lr_writes_between_replays():
    """A torch scheduler stepped between replays writes param_groups['lr']; the write reaches the device in place."""
    model = MLP().cuda()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    x = torch.randn(8, 13, device="cuda")
    for _ in range(2):
        model(x).sum().backward()
        opt.step()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        model(x).sum().backward()
        opt.step()
    for t in range(5):
        sched.step()
        want = opt.param_groups[0]["lr"]
        g.replay()
        assert opt.last_lr().item() == want
    with pytest.raises(RuntimeError, match="frozen into the graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            sched.step()


def test_compile_reduce_overhead():
    model = MLP().cuda()
    twin = copy.deepcopy(model)
    opt = AdamW(model.parameters(), lr=1e-3, schedule=schedules.warmup_cosine(50, warmup=5))
    twin_opt = AdamW(twin.parameters(), lr=1e-3, schedule=schedules.warmup_cosine(50, warmup=5))

    @torch.compile(mode="reduce-overhead")
    def opt_step():
        opt.step()

    for _ in range(8):
        grads = [torch.randn_like(p) for p in model.parameters()]
        for p, q, gr in zip(model.parameters(), twin.parameters(), grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt_step()
        twin_opt.step()
    assert int(opt.sched_step()) == 8
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_skips_inf_steps_like_torch():
    torch.manual_seed(0)
    model = MLP().cuda()
    ref_model = copy.deepcopy(model)
    opt = AdamW(model.parameters(), lr=1e-3)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-3, fused=True)
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**10) for _ in range(2)]
    x = torch.randn(16, 13, device="cuda")
    for t in range(6):
        for m, o, sc in ((model, opt, scalers[0]), (ref_model, ref, scalers[1])):
            o.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = m(x).float().pow(2).mean() * (float("inf") if t == 2 else 1.0)
            sc.scale(loss).backward()
            sc.step(o)
            sc.update()
    assert int(opt.sched_step()) == 6
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item() == 5.0
