"""The CUDA step's kernel code, run on the CPU, against the plain oracle of torch's CUDA math.

csrc/multi_tensor.h holds the kernels' bodies as host+device functions; cpu/cuda_emulation.cpp runs them on the host
exactly as the launch does (the same launch plan, blocks one after another, the threads of a block in a loop, a
phase boundary at each __syncthreads). `reference` runs a plain per-element loop over optim_math.h's torch-CUDA
math instead. Both see the same inputs; every param, state, grad (unscaled in place) and LR must be bit-identical
after every step, for every dtype and flag, sizes that straddle the vector width (4 fp32 / 2 fp64 / 8 fp16 and bf16
per 128-bit access), the 65536-element chunk and the 256-tensor launch, unaligned tensors, mixed dtypes, found_inf,
grad scaling and SGD's first step. What this cannot check without a GPU: the device's own powf/pow (the host's
libm stands in on both sides) and timing.
"""
from __future__ import annotations

import pytest
import torch

import warmup_fused
from warmup_fused import schedules

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(_INT[t.element_size()])


def _copy(p: torch.Tensor) -> torch.Tensor:
    """A copy at the same offset into its storage (so a misaligned param stays misaligned)."""
    k = p.storage_offset()
    out = torch.empty(k + p.numel(), dtype=p.dtype)[k:].view(p.shape)
    return out.copy_(p)


def _pair(cls, make_params, kw):
    """The emulated and the reference optimizer over identical copies of the same params."""
    base = make_params()
    copies = [[_copy(p) for p in base] for _ in range(2)]
    opts = [getattr(warmup_fused, cls)(ps, **kw) for ps in copies]
    opts[0]._emulate, opts[1]._emulate = "emulated", "reference"
    return copies, opts


def _compare(copies, opts, where):
    (pa, pb), (oa, ob) = copies, opts
    assert torch.equal(bits(oa.last_lr()), bits(ob.last_lr())), f"{where}: last_lr"
    for i, (a, b) in enumerate(zip(pa, pb)):
        assert torch.equal(bits(a), bits(b)), f"{where}: param {i} ({a.dtype}, {tuple(a.shape)})"
        if a.grad is not None:
            assert torch.equal(bits(a.grad), bits(b.grad)), f"{where}: grad {i}"
        sa, sb = oa.state.get(a, {}), ob.state.get(b, {})
        assert set(sa) == set(sb), f"{where}: state keys of param {i}"
        for k in sa:
            assert torch.equal(bits(sa[k]), bits(sb[k])), f"{where}: param {i} state {k}"


def _train(copies, opts, steps, *, seed=0, skip=(), scale=None):
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for ps in copies:  # the same random grads for both
            gen_state = gen.get_state()
            for p in ps:
                g = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * (scale or 1.0)
                p.grad = g
            gen.set_state(gen_state)
        torch.randn(1, generator=gen)  # advance for the next step
        for o in opts:
            if scale is not None or t in skip:
                o.grad_scale = torch.full((), float(scale or 1.0))
                o.found_inf = torch.full((), 1.0 if t in skip else 0.0)
            o.step()
            for attr in ("grad_scale", "found_inf"):
                if hasattr(o, attr):
                    delattr(o, attr)
        _compare(copies, opts, f"step {t}")


SIZES = [1, 3, 7, 8, 9, 15, 16, 17, 33, 65535, 65536, 65537, 131073]
ADAM_FLAGS = [dict(weight_decay=0.0), dict(weight_decay=0.1, amsgrad=True), dict(maximize=True, weight_decay=0.05),
              dict(amsgrad=True, maximize=True, betas=(0.3, 0.99))]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls", ["AdamW", "Adam"])
@pytest.mark.parametrize("flags", ADAM_FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_adam_sizes_dtypes_flags(cls, dtype, flags):
    sched = schedules.warmup_cosine(40, warmup=3, base_lr=1e-2)
    copies, opts = _pair(cls, lambda: [torch.randn(n, dtype=dtype) for n in SIZES], dict(schedule=sched, **flags))
    _train(copies, opts, 4, seed=1)


SGD_FLAGS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
             dict(momentum=0.9, dampening=0.3, weight_decay=1e-2, maximize=True)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", SGD_FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_sgd_sizes_dtypes_flags(dtype, flags):
    sched = schedules.warmup_cosine(40, warmup=3, base_lr=0.05)
    copies, opts = _pair("SGD", lambda: [torch.randn(n, dtype=dtype) for n in SIZES], dict(schedule=sched, **flags))
    _train(copies, opts, 4, seed=2)  # step 0 initialises the momentum buffers from the grads


@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_more_tensors_than_one_launch_mixed_dtypes_unaligned(cls):
    """300 tensors of four dtypes (several launches per dtype), some starting at an odd element (no vector path)."""
    def make():
        gen = torch.Generator().manual_seed(3)
        out = []
        for i in range(300):
            dtype = DTYPES[i % 4]
            n = 1 + int(torch.randint(0, 70, (), generator=gen))
            if i % 7 == 0:  # a leaf view 1 element into its storage: 16-byte alignment is lost
                out.append(torch.randn(n + 1, generator=gen).to(dtype)[1:])
            else:
                out.append(torch.randn(n, generator=gen).to(dtype))
        return out

    kw = dict(lr=0.01, momentum=0.9) if cls == "SGD" else dict(lr=1e-2, amsgrad=True)
    copies, opts = _pair(cls, make, kw)
    assert any(p.data_ptr() % 16 for p in copies[0])
    _train(copies, opts, 3, seed=4)


@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_found_inf_and_grad_scale(cls):
    """Skipped steps (the first one included) change nothing but the schedule counter; grads are unscaled in place."""
    kw = dict(lr=0.05, momentum=0.9, dampening=0.1) if cls == "SGD" else dict(lr=1e-2, amsgrad=True)
    copies, opts = _pair(cls, lambda: [torch.randn(n) for n in (5, 64, 1000)], kw)
    _train(copies, opts, 6, seed=5, skip={0, 3}, scale=1024.0)
    assert int(opts[0].sched_step()) == 6
    assert all(float(opts[0]._step_slots[p]) == 4.0 for p in copies[0])  # per-param steps: 6 - 2 skipped


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_first_step_takes_zero_states_whatever_memory_holds(dtype):
    """States created inside a graph capture are uninitialised memory: a counter at 0 makes the kernel take them as
    zeros (and a skipped first step writes zeros), so the result equals a fresh optimizer's."""
    copies, opts = _pair("AdamW", lambda: [torch.randn(n, dtype=dtype) for n in (9, 40)], dict(lr=1e-2, amsgrad=True))
    fresh = [p.clone() for p in copies[0]]
    fresh_opt = warmup_fused.AdamW(fresh, lr=1e-2, amsgrad=True)
    fresh_opt._emulate = "emulated"
    for o, ps in zip(opts, copies):
        for p in ps:
            p.grad = torch.ones_like(p)
        o.found_inf, o.grad_scale = torch.ones(()), torch.ones(())
        o.step()  # skipped: creates the states, counters stay at 0
        del o.found_inf, o.grad_scale
        for p in ps:
            for k, v in o.state[p].items():
                if k != "step":
                    assert torch.equal(bits(v), bits(torch.zeros_like(v))), "a skipped first step leaves zeros"
                    v.copy_(torch.randn(v.shape).to(v.dtype))  # poison, as uninitialised memory would be
    for ps in copies + [fresh]:
        for p in ps:
            p.grad = torch.linspace(-1, 1, p.numel()).to(p.dtype)
    for o in opts + [fresh_opt]:
        o.step()
    for a, b, c in zip(copies[0], copies[1], fresh):
        assert torch.equal(bits(a), bits(c)) and torch.equal(bits(b), bits(c))


@pytest.mark.parametrize("cls", ["Adam", "SGD"])
def test_lr_sources_schedule_host_and_tensor(cls):
    """Group 0 follows a schedule, group 1 a host value written mid-run, group 2 a tensor lr updated in place."""
    lr_tensor = torch.tensor(0.02)
    extra = dict(momentum=0.9) if cls == "SGD" else {}

    def make_opt(ps):
        opt = getattr(warmup_fused, cls)([{"params": ps[:2]}, {"params": ps[2:4], "lr": 0.03},
                                          {"params": ps[4:], "lr": lr_tensor}], lr=0.01, **extra)
        return opt

    base = [torch.randn(n) for n in (7, 33, 64, 5, 100, 3)]
    copies = [[p.clone() for p in base] for _ in range(2)]
    opts = [make_opt(ps) for ps in copies]
    opts[0]._emulate, opts[1]._emulate = "emulated", "reference"
    for t in range(5):
        for o in opts:
            o.param_groups[1]["lr"] = 0.03 * (t + 1)
        lr_tensor.fill_(0.02 / (t + 1))
        _train(copies, opts, 1, seed=10 + t)
        want = [0.01, 0.03 * (t + 1), float(torch.tensor(0.02 / (t + 1)))]
        assert opts[0].last_lr().tolist() == want
