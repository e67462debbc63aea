"""warmup_fused.AdamW / Adam / SGD against torch.optim.*(fused=True) fed the same LR sequence.

CPU: params and states must be bit-identical (torch.equal) to torch's fused CPU kernels, at several checkpoints
of a 500-step training run with a warmup+cosine reference scheduler. CUDA-marked tests compare with torch's
fused CUDA kernels, check that step() never syncs, capture a whole training step in a CUDA graph and compile it.
"""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR

import warmup_fused
from warmup_fused import SGD, Adam, AdamW, schedules

pytestmark = pytest.mark.usefixtures("one_thread")


class MLP(torch.nn.Module):
    """A small model with odd-sized params (none a multiple of the 8-float vector width)."""

    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(13, 37)
        self.l2 = torch.nn.Linear(37, 5)
        self.norm = torch.nn.LayerNorm(37)

    def forward(self, x):
        return self.l2(torch.tanh(self.norm(self.l1(x))))


def _warmup_cosine(opt, warmup=50, total=500):
    return SequentialLR(opt, [LinearLR(opt, 0.01, 1.0, warmup), CosineAnnealingLR(opt, total - warmup, 1e-5)],
                        milestones=[warmup])


def _poison(opt):
    """Non-zero random states (never zeros) so a kernel that ignores a state cannot pass by accident."""
    g = torch.Generator().manual_seed(1)
    for st in opt.state.values():
        for k, v in st.items():
            if k != "step" and isinstance(v, torch.Tensor) and v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g, dtype=torch.float64).to(v.dtype) * 1e-2 + 1e-3)


def _assert_same(ours_model, ours_opt, ref_model, ref_opt, where=""):
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), f"{where} param {name}: max |diff| {(p - q).abs().max().item()}"
        so, sr = ours_opt.state[p], ref_opt.state[q]
        assert set(so) == set(sr), f"{where} {name}: state keys {set(so)} vs {set(sr)}"
        for k in sr:
            a, b = so[k], sr[k]
            assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), f"{where} {name} state {k}"


def _train_pair(make_ours, make_ref, steps=500, checks=(1, 7, 50, 200, 500), device="cpu", poison_at=3,
                seed=0):
    torch.manual_seed(seed)
    model = MLP().to(device)
    ref_model = copy.deepcopy(model)
    ref_opt = make_ref(ref_model.parameters())
    sched = _warmup_cosine(ref_opt, total=steps)
    ours = make_ours(model.parameters(), schedules.from_torch(_warmup_cosine(make_ref([torch.zeros(1,
                     requires_grad=True)]), total=steps), horizon=steps + 1))
    x = torch.randn(64, 13, device=device)
    y = torch.randn(64, 5, device=device)
    for t in range(1, steps + 1):
        xb = x + 0.01 * t
        loss = torch.nn.functional.mse_loss(model(xb), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        for p, q in zip(model.parameters(), ref_model.parameters()):
            q.grad = p.grad.clone()
        lr_ref = [g["lr"] for g in ref_opt.param_groups]
        ours.step()
        ref_opt.step()
        sched.step()
        assert ours.last_lr().tolist() == lr_ref, f"step {t}: LR {ours.last_lr().tolist()} vs {lr_ref}"
        if t == poison_at:
            _poison(ref_opt)
            for (p, q) in zip(model.parameters(), ref_model.parameters()):
                for k, v in ref_opt.state[q].items():
                    if k != "step":
                        ours.state[p][k].copy_(v)
        if t in checks:
            _assert_same(model, ours, ref_model, ref_opt, where=f"step {t}:")
    return model, ours, ref_model, ref_opt


# Every combination of amsgrad, maximize and weight decay for both classes.
ADAM_CASES = [(cls, dict(amsgrad=a, maximize=m, weight_decay=wd))
              for cls in ("AdamW", "Adam") for a in (False, True) for m in (False, True) for wd in (0.0, 0.1)]


@pytest.mark.parametrize("cls, kw", ADAM_CASES,
                         ids=lambda c: c if isinstance(c, str) else "-".join(f"{k}={v}" for k, v in c.items()))
def test_adam_bit_parity_500_steps(cls, kw):
    ref_cls = getattr(torch.optim, cls)
    ours_cls = getattr(warmup_fused, cls)
    kw = dict(kw, betas=(0.9, 0.95), eps=1e-8)
    _train_pair(lambda ps, s: ours_cls(ps, lr=3e-3, schedule=s, **kw),
                lambda ps: ref_cls(ps, lr=3e-3, fused=True, **kw))


SGD_CASES = [
    dict(momentum=0.0, weight_decay=0.0),
    dict(momentum=0.9, weight_decay=0.0),
    dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(momentum=0.9, dampening=0.3, weight_decay=1e-2),
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_bit_parity_500_steps(kw):
    _train_pair(lambda ps, s: SGD(ps, lr=0.05, schedule=s, **kw),
                lambda ps: torch.optim.SGD(ps, lr=0.05, fused=True, **kw))


SIZES = [1, 7, 8, 15, 16, 17, 33, 1000, 4099, 70001]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", ["AdamW", "Adam", "SGD"])
def test_kernel_parity_sizes_and_dtypes(cls, dtype):
    """Every vector/tail split (sizes 1..70001, several 32K-element work chunks) and every dtype."""
    torch.manual_seed(0)
    kw = (dict(momentum=0.9, dampening=0.1, weight_decay=0.01, maximize=True) if cls == "SGD"
          else dict(weight_decay=0.1, amsgrad=True, betas=(0.3, 0.99)))
    ps = [torch.randn(n, dtype=dtype) for n in SIZES]
    ref = [p.clone().requires_grad_() for p in ps]
    ours = [p.clone() for p in ps]
    ref_opt = getattr(torch.optim, cls)(ref, lr=1e-2, fused=True, **kw)
    opt = getattr(warmup_fused, cls)(ours, lr=1e-2, **kw)
    for _ in range(4):
        gs = [torch.randn(n, dtype=dtype) for n in SIZES]
        for a, b, g in zip(ours, ref, gs):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(ours, ref):
        assert torch.equal(a, b.detach())
        for k, v in ref_opt.state[b].items():
            assert torch.equal(opt.state[a][k], v), k


def _flag_sweep(cls):
    if cls == "SGD":
        return [dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
                for m, d, n in ((0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.3, False), (0.9, 0.0, True))
                for wd in (0.0, 1e-2) for mx in (False, True)]
    # beta1 = 0.9 and 0.3: both branches of torch's lerp (weight 1 - beta1 below / above 0.5)
    return [dict(amsgrad=a, maximize=mx, weight_decay=wd, betas=b) for a in (False, True) for mx in (False, True)
            for wd in (0.0, 0.1) for b in ((0.9, 0.95), (0.3, 0.99))]


# Every tail length of every dtype's vector (4, 8 or 16 elements: 32 bytes) and one long vector run.
SWEEP_SIZES = list(range(1, 34)) + [1003]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", ["AdamW", "Adam", "SGD"])
def test_kernel_parity_every_flag(cls, dtype):
    """Every flag combination, with and without AMP grad scaling, 2 steps each, bit-equal at every step."""
    torch.manual_seed(0)
    for kw in _flag_sweep(cls):
        for scale in (None, 64.0):
            ps = [torch.randn(n, dtype=dtype) for n in SWEEP_SIZES]
            ref = [p.clone().requires_grad_() for p in ps]
            ours = [p.clone() for p in ps]
            ref_opt = getattr(torch.optim, cls)(ref, lr=1e-2, fused=True, **kw)
            opt = getattr(warmup_fused, cls)(ours, lr=1e-2, **kw)
            if scale:
                for o in (opt, ref_opt):
                    o.grad_scale, o.found_inf = torch.full((), scale), torch.zeros(())
            for step in range(1, 3):
                for a, b in zip(ours, ref):
                    g = torch.randn(a.shape, dtype=dtype) * (scale or 1.0)
                    a.grad, b.grad = g.clone(), g.clone()
                opt.step()
                ref_opt.step()
                for a, b in zip(ours, ref):
                    where = f"{kw} grad_scale={scale} step {step} numel {a.numel()}"
                    assert torch.equal(a, b.detach()) and torch.equal(a.grad, b.grad), where
                    for k, v in ref_opt.state[b].items():
                        assert torch.equal(opt.state[a][k], v), f"{where} state {k}"


def _special_values(dtype, n, where):
    """n random values of dtype with, at the positions `where`, NaNs of several payloads and signs, infinities,
    subnormals, zeros and a value whose square or update overflows."""
    bits = {torch.float16: [0x7E00, 0xFE00, 0x7D01, 0x7E55, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x0000, 0x8000, 0x7BFF],
            torch.bfloat16: [0x7FC0, 0xFFC0, 0x7F81, 0x7FD5, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x0000, 0x8000, 0x7F7F],
            torch.float32: [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FD55555, 0x7F800000, 0xFF800000, 0x00000001,
                            0x807FFFFF, 0, 0x80000000, 0x7F7FFFFF]}[dtype]
    x = torch.randn(n, dtype=dtype)
    view = torch.int32 if dtype == torch.float32 else torch.int16
    special = torch.tensor(bits, dtype=torch.int64).to(view if view == torch.int32 else torch.int32)
    special = (special if view == torch.int32 else torch.where(special >= 0x8000, special - 0x10000, special)).to(view)
    x.view(view)[where] = special
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_kernel_parity_special_values(cls, dtype):
    """NaNs (payloads, signs), infinities, subnormals and overflow in params, grads and states, in the vector part
    and the tail: every bit as torch's fused kernel leaves it (its loops store NaNs differently). Params and grads
    carry their special values at different positions: where two different NaNs meet in one operation, which one
    survives depends on the operand order the compiler chose, in torch's kernel as in ours."""
    torch.manual_seed(0)
    kw = dict(momentum=0.9, weight_decay=0.01) if cls == "SGD" else dict(weight_decay=0.1, amsgrad=True)
    view = torch.int32 if dtype == torch.float32 else torch.int16
    for n in (37, 1003):  # the last positions fall in the tail of every dtype (37 % 16 = 5, 1003 % 8 = 3)
        at_p = [1, 4, 7, 10, 13, 16, 19, 22, n - 6, n - 4, n - 1]
        at_g = [0, 2, 5, 8, 11, 14, 17, n - 7, n - 5, n - 3, n - 2]
        p = _special_values(dtype, n, at_p)
        ours, ref = p.clone(), p.clone().requires_grad_()
        opt = getattr(warmup_fused, cls)([ours], lr=1e-2, **kw)
        ref_opt = getattr(torch.optim, cls)([ref], lr=1e-2, fused=True, **kw)
        for step in range(3):
            g = _special_values(dtype, n, at_g) * (1e3 if step == 1 else 1.0)
            ours.grad, ref.grad = g.clone(), g.clone()
            opt.step()
            ref_opt.step()
            assert torch.equal(ours.view(view), ref.detach().view(view)), (n, step)
            for k, v in ref_opt.state[ref].items():
                if k != "step":
                    assert torch.equal(opt.state[ours][k].view(view), v.view(view)), (n, step, k)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOW_PRECISION = os.path.join(ROOT, "tests", "test_low_precision.py")  # its clipping and master-weight references
# torch's CPU capabilities, whose fused kernels round differently (AVX512 runs the AVX2 kernel; DEFAULT has no FMA).
# The tests above run under this process's capability; each other one the CPU can run gets a process of its own.
OTHER_CAPABILITIES = [c for c in ("avx512", "avx2", "default") if c.upper() != torch.backends.cpu.get_cpu_capability()]


def _cpu_runs(capability):
    """Whether this CPU can run torch's kernels for `capability` (torch's own test; ATEN_CPU_CAPABILITY is not
    checked against the hardware, so forcing one the CPU lacks would crash)."""
    caps = torch.cpu.get_capabilities()
    need = {"avx512": ("avx512_vl", "avx512_bw", "avx512_dq", "fma3"), "avx2": ("avx2", "fma3"), "default": ()}
    return caps.get("architecture") in ("x86_64", "x86") and all(caps.get(f) for f in need[capability])


@pytest.mark.parametrize("capability", OTHER_CAPABILITIES)
def test_kernel_parity_under_other_torch_cpu_capabilities(capability):
    """The two kernel parity tests above again, in a process where ATEN_CPU_CAPABILITY makes torch dispatch the
    kernels of `capability`."""
    if not _cpu_runs(capability):
        pytest.skip(f"this CPU cannot run torch's {capability} kernels")
    code = (f"import sys, pytest, torch\n"
            f"assert torch.backends.cpu.get_cpu_capability() == {capability.upper()!r}\n"
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {os.path.abspath(__file__)!r}, {LOW_PRECISION!r}, "
            f"'-k', 'kernel_parity_sizes or kernel_parity_every_flag or kernel_parity_special or clipping_matches "
            f"or master_weights']))\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_multi_group_schedule_and_last_lr():
    """Two groups with different base LRs and hyperparameters, one op call; LR at step t == schedule at t."""
    torch.manual_seed(0)
    a, b = torch.randn(10), torch.randn(3, 3)
    s = schedules.linear_decay(20, warmup=5)  # one group, closed form: bound to each group's base LR
    opt = AdamW([{"params": [a]}, {"params": [b], "lr": 0.5, "weight_decay": 0.0, "amsgrad": True}], lr=0.1,
                schedule=s)
    expect = schedules.linear_decay(20, warmup=5, base_lr=[0.1, 0.5]).lr_at(range(12))
    assert torch.equal(opt.schedule.lr_at(range(12)), expect)
    for t in range(12):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        opt.step()
        assert torch.equal(opt.last_lr(), expect[:, t])
    assert int(opt.sched_step()) == 12


def _run(opt_cls, model, steps, sched_fn=None, **kw):
    opt = opt_cls(model.parameters(), **kw)
    sched = sched_fn(opt) if sched_fn else None
    torch.manual_seed(123)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        if sched:
            sched.step()
    return opt, sched


def test_state_dict_torch_to_ours_and_back_mid_warmup():
    torch.manual_seed(0)
    warm = lambda o: LinearLR(o, 0.1, 1.0, 20)  # noqa: E731
    m_ref = MLP()
    m_ours = copy.deepcopy(m_ref)
    # torch for 7 steps (mid-warmup), then continue in ours from its checkpoint
    ref_opt, ref_sched = _run(torch.optim.AdamW, m_ref, 7, warm, lr=1e-2, fused=True)
    sd = copy.deepcopy(ref_opt.state_dict())
    schedule = schedules.from_torch(warm(torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-2)),
                                    horizon=40)
    m_ours.load_state_dict(m_ref.state_dict())
    ours = AdamW(m_ours.parameters(), lr=1e-2, schedule=schedule)
    ours.load_state_dict(sd)
    assert int(ours.sched_step()) == 7
    for t in range(10):
        g = [torch.randn_like(p) for p in m_ref.parameters()]
        for p, q, gi in zip(m_ours.parameters(), m_ref.parameters(), g):
            p.grad, q.grad = gi.clone(), gi.clone()
        lr = ref_opt.param_groups[0]["lr"]
        ours.step()
        ref_opt.step()
        ref_sched.step()
        assert ours.last_lr().tolist() == [lr]
    _assert_same(m_ours, ours, m_ref, ref_opt)
    # ours -> torch: torch's AdamW loads our checkpoint and continues identically at the same LR
    sd2 = copy.deepcopy(ours.state_dict())  # state_dict() holds live tensors, as torch's does
    assert sd2["warmup_fused"]["sched_step"] == 17
    assert sd2["param_groups"][0]["lr"] == ref_opt.param_groups[0]["lr"]
    m3 = copy.deepcopy(m_ours)
    t_opt = torch.optim.AdamW(m3.parameters(), lr=1e-2, fused=True)
    t_opt.load_state_dict(sd2)
    assert t_opt.param_groups[0]["decoupled_weight_decay"] is True
    for p, q in zip(m3.parameters(), m_ours.parameters()):
        g = torch.randn_like(p)
        p.grad, q.grad = g.clone(), g.clone()
    t_opt.step()
    ours.step()
    _assert_same(m_ours, ours, m3, t_opt)


def test_state_dict_resume_ours_identical_continuation():
    torch.manual_seed(0)
    sched = schedules.linear_decay(30, warmup=8)
    m1 = MLP()
    m2 = copy.deepcopy(m1)
    o1 = SGD(m1.parameters(), lr=0.1, momentum=0.9, schedule=sched)
    grads = [[torch.randn_like(p) for p in m1.parameters()] for _ in range(20)]
    for t in range(10):
        for p, g in zip(m1.parameters(), grads[t]):
            p.grad = g.clone()
        o1.step()
    sd = copy.deepcopy(o1.state_dict())
    m2.load_state_dict(m1.state_dict())
    o2 = SGD(m2.parameters(), lr=0.1, momentum=0.9, schedule=sched)
    o2.load_state_dict(sd)
    for t in range(10, 20):
        for p, q, g in zip(m1.parameters(), m2.parameters(), grads[t]):
            p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
        assert torch.equal(o1.last_lr(), o2.last_lr())
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(o1.state[p]["momentum_buffer"], o2.state[q]["momentum_buffer"])


@pytest.mark.parametrize("make, match", [
    (lambda ps: AdamW(ps, lr=-1), "Invalid learning rate: -1"),
    (lambda ps: AdamW(ps, betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (lambda ps: Adam(ps, eps=-1e-8), "Invalid epsilon value"),
    (lambda ps: AdamW(ps, weight_decay=-1), "Invalid weight_decay value"),
    (lambda ps: SGD(ps, momentum=-0.1), "Invalid momentum value"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
])
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(3, requires_grad=True)])


def test_schedule_group_count_mismatch():
    s2 = schedules.from_torch(LinearLR(torch.optim.SGD([{"params": [torch.zeros(1)]},
                                                        {"params": [torch.zeros(1)], "lr": 0.5}], lr=1.0), 0.1))
    with pytest.raises(ValueError, match="schedule: has 2 groups"):
        AdamW([torch.zeros(3, requires_grad=True)], schedule=s2)
    with pytest.raises(TypeError, match="schedule must be"):
        AdamW([torch.zeros(3, requires_grad=True)], schedule="cosine")
    with pytest.raises(ValueError, match="Tensor lr"):
        AdamW([torch.zeros(3, requires_grad=True)], lr=torch.tensor(0.1), schedule=schedules.constant())


def test_strided_view_param_rejected_before_any_state():
    base = torch.randn(4, 6)
    p = base[:, ::2]  # not dense: the kernels update params as flat arrays
    p.grad = torch.randn(4, 3)
    q = torch.randn(5)
    q.grad = torch.randn(5)
    opt = AdamW([q, p])
    with pytest.raises(ValueError, match="not dense and non-overlapping"):
        opt.step()
    assert not opt.state and int(opt.sched_step()) == 0


def test_unsupported_dtype():
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="unsupported dtype"):
        SGD([p], lr=0.1).step()


def test_params_without_grad_skipped_and_zero_element_params():
    a, b, z = torch.randn(5), torch.randn(4), torch.randn(0)
    opt = AdamW([a, b, z], lr=0.1)
    a.grad, z.grad = torch.randn(5), torch.randn(0)
    b0 = b.clone()
    opt.step()
    assert b not in opt.state and torch.equal(b, b0)
    assert opt.state[a]["step"].item() == 1.0 and opt.state[z]["step"].item() == 1.0
    opt.step()  # grads kept: second step
    assert opt.state[a]["step"].item() == 2.0
    assert int(opt.sched_step()) == 2


def test_found_inf_skips_update_but_advances_schedule():
    a = torch.randn(9)
    opt = AdamW([a], lr=0.1)
    a.grad = torch.randn(9)
    opt.step()
    a0, st0 = a.clone(), {k: v.clone() for k, v in opt.state[a].items()}
    opt.found_inf = torch.ones(())
    opt.grad_scale = torch.full((), 2.0)
    opt.step()
    del opt.found_inf, opt.grad_scale
    assert torch.equal(a, a0)
    assert all(torch.equal(v, opt.state[a][k]) for k, v in st0.items())
    assert int(opt.sched_step()) == 2


def test_grad_scale_matches_torch():
    torch.manual_seed(0)
    p = torch.randn(37)
    q = p.clone().requires_grad_()
    ours, ref = Adam([p], lr=0.1, weight_decay=0.1), torch.optim.Adam([q], lr=0.1, weight_decay=0.1, fused=True)
    for o in (ours, ref):
        o.grad_scale = torch.full((), 1024.0)
        o.found_inf = torch.zeros(())
    for _ in range(3):
        g = torch.randn(37) * 1024
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert torch.equal(p.grad, q.grad)  # unscaled in place, like torch
    assert torch.equal(p, q.detach())


def test_set_schedule_keeps_counter():
    a = torch.randn(3)
    opt = SGD([a], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    opt.set_schedule(schedules.linear_decay(10))
    opt.step()
    assert torch.equal(opt.last_lr(), schedules.linear_decay(10, base_lr=0.1).lr_at(1)[:, 0])
    assert opt.last_lr().item() != 0.1


def op_args(opt) -> list:
    """The arguments the optimizer's next step() hands to its op (captured, then the step runs normally)."""
    captured = []
    real = opt._op()

    def record(*args):
        captured.append(list(args))
        return real(*args)

    opt._op = lambda: record
    opt.step()
    del opt._op
    return captured[0]


def _op_case(cls, **kw):
    ps = [torch.randn(5), torch.randn(17)]
    opt = cls(ps, lr=0.1, **kw)
    for p in ps:
        p.grad = torch.randn_like(p)
    op_args(opt)  # a first step creates the states
    return opt, op_args(opt)


@pytest.mark.parametrize("cls, kw", [(AdamW, dict(amsgrad=True)), (SGD, dict(momentum=0.9))])
def test_opcheck(cls, kw):
    opt, args = _op_case(cls, **kw)
    op = getattr(torch.ops.warmup_fused, opt._op_name).default
    torch.library.opcheck(op, [a.clone() if isinstance(a, torch.Tensor) else
                               [t.clone() if isinstance(t, torch.Tensor) else t for t in a] if isinstance(a, list)
                               else a for a in args])


def _group_index(args):
    args[13] = [0, 3]


def _scale_and_clip(args):
    args[14], args[16] = torch.full((), 2.0), torch.full((), 0.5, dtype=torch.float64)


def _float32_master(args):
    args[6] = [p.clone() for p in args[0]]


@pytest.mark.parametrize("edit, error, match", [
    (_group_index, ValueError, "tensor_group"),
    (_scale_and_clip, ValueError, "clip_coef and grad_scale cannot both be given"),
    (_float32_master, TypeError, "only float16 and bfloat16 params take a float32 master")], ids=lambda x: getattr(
        x, "__name__", None))
def test_op_rejects_bad_arguments_and_writes_nothing(edit, error, match):
    opt, args = _op_case(AdamW)
    written = args[0] + args[2] + args[3] + args[5] + [args[7], args[8]]  # params, states, counters, scratch
    before = [t.clone() for t in written]
    edit(args)
    with pytest.raises(error, match=match):
        torch.ops.warmup_fused.adam_step(*args)
    assert all(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)) for a, b in zip(before, written))


def test_step_under_torch_compile_cpu():
    """opt.step() through dynamo + AOTAutograd with no graph break: the op traces via its fake kernel and
    mutation schema; the compiled run is bit-identical to eager (aot_eager keeps the kernels)."""
    torch.manual_seed(0)
    model, twin = MLP(), MLP()
    twin.load_state_dict(model.state_dict())
    sched = schedules.warmup_cosine(40, warmup=5)
    opt, twin_opt = AdamW(model.parameters(), lr=1e-2, schedule=sched), AdamW(twin.parameters(), lr=1e-2,
                                                                              schedule=sched)
    x, y = torch.randn(16, 13), torch.randn(16, 5)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    graphs = []

    def recording_aot_eager(gm, example_inputs):  # what dynamo captured, then AOTAutograd with eager kernels
        graphs.append(gm.code)
        return torch._dynamo.backends.registry.lookup_backend("aot_eager")(gm, example_inputs)

    compiled_step = torch.compile(lambda: opt.step(), backend=recording_aot_eager)
    for _ in range(12):
        for m, step in ((model, compiled_step), (twin, twin_opt.step)):
            m.zero_grad(set_to_none=False)
            torch.nn.functional.mse_loss(m(x), y).backward()
            step()
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert graphs and all("warmup_fused.adam_step" in code for code in graphs)
    assert int(opt.sched_step()) == 12
    assert torch.equal(opt.last_lr(), twin_opt.last_lr())
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", ["AdamW", "Adam"])
def test_amsgrad_with_nan_grads_matches_torch(cls):
    """torch's CPU vector loop takes a NaN-propagating max for max_exp_avg_sq, its scalar tail std::max, which keeps
    the old value when exp_avg_sq is NaN: both reproduced (NaN in the vector part and in the tail of a tensor)."""
    torch.manual_seed(0)
    p = torch.randn(37)
    q = p.clone().requires_grad_()
    ours = getattr(warmup_fused, cls)([p], lr=1e-2, amsgrad=True)
    ref = getattr(torch.optim, cls)([q], lr=1e-2, amsgrad=True, fused=True)
    for t in range(3):
        g = torch.randn(37)
        if t == 1:
            g[[3, 35]] = float("nan")  # 3: vector loop; 35: scalar tail (37 = 4 vectors of 8 + 5)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        for k in ("max_exp_avg_sq", "exp_avg_sq", "exp_avg"):
            a, b = ours.state[p][k], ref.state[q][k]
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), (t, k)
    assert not ours.state[p]["max_exp_avg_sq"][35].isnan() and ours.state[p]["max_exp_avg_sq"][3].isnan()


@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_state_and_param_group_edits_follow_torch(cls):
    """Edits of opt.state and of a group's params reach the next step exactly as in torch's fused optimizers: a
    state tensor replaced, Adam's step written back to 1, a param's state deleted, opt.state cleared or replaced
    by a fresh defaultdict, a param appended to a group's list, a group appended to param_groups."""
    from collections import defaultdict

    torch.manual_seed(0)
    kw = dict(lr=1e-2, weight_decay=0.1) if cls == "AdamW" else dict(lr=1e-2, momentum=0.9, dampening=0.1)
    model = MLP()
    ref_model = copy.deepcopy(model)
    extra, ref_extra = torch.randn(6), None
    ref_extra = extra.clone()
    ours = getattr(warmup_fused, cls)(model.parameters(), **kw)
    ref = getattr(torch.optim, cls)(ref_model.parameters(), fused=True, **kw)
    p0, q0 = next(model.parameters()), next(ref_model.parameters())
    key = "exp_avg" if cls == "AdamW" else "momentum_buffer"
    edits = [
        lambda o, p, e: o.state[p].__setitem__(key, torch.randn_like(p, generator=torch.Generator().manual_seed(3))),
        lambda o, p, e: o.state[p].__setitem__("step", torch.tensor(1.0)) if cls == "AdamW" else None,
        # (torch's fused SGD fails on a group mixing params with and without buffers: SGD skips those two edits)
        lambda o, p, e: o.state.pop(p) if cls == "AdamW" else None,
        lambda o, p, e: o.state.clear(),
        lambda o, p, e: setattr(o, "state", defaultdict(dict)),
        lambda o, p, e: o.param_groups[0]["params"].append(e) if cls == "AdamW" else None,
        # ours: append is add_param_group (torch's plain list would take a group without its defaults)
        lambda o, p, e: (o.param_groups.append if o is ours else o.add_param_group)({"params": [new_params.pop()]}),
    ]
    new_params = [torch.randn(3, 3, generator=torch.Generator().manual_seed(4)).requires_grad_() for _ in range(2)]
    for t in range(2 * len(edits) + 1):
        for m, o, e in ((model, ours, extra), (ref_model, ref, ref_extra)):
            torch.manual_seed(t)
            loss = torch.nn.functional.mse_loss(m(torch.randn(8, 13)), torch.randn(8, 5))
            m.zero_grad()
            loss.backward()
            e.grad = torch.randn(6)
            for group in o.param_groups[1:]:
                group["params"][0].grad = torch.randn(3, 3)
        if t % 2 == 1:
            edit = edits[t // 2]
            edit(ours, p0, extra)
            edit(ref, q0, ref_extra)
        ours.step()
        ref.step()
        _assert_same(model, ours, ref_model, ref, where=f"step {t}:")
        mine = [p for g in ours.param_groups[1:] for p in g["params"]] + [extra]
        theirs = [p for g in ref.param_groups[1:] for p in g["params"]] + [ref_extra]
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b), f"step {t}"
    assert (extra in ours.state) == (cls == "AdamW") and len(ours.param_groups) == 2
    if cls == "AdamW":  # the kernels take a count of 0 as a first step from zero states: refused, nothing changed
        before = {k: v.clone() for k, v in ours.state[p0].items()}
        with pytest.raises(ValueError, match="step 0 with non-zero moments"):
            ours.state[p0]["step"] = 0
        with pytest.raises(TypeError, match="cannot be removed alone"):
            del ours.state[p0]["exp_avg"]
        assert all(torch.equal(before[k], v) for k, v in ours.state[p0].items())


def test_param_groups_structure_is_guarded():
    """param_groups itself: append is add_param_group (checked), anything else that reorders, replaces or removes
    groups is refused; a replaced list is refused at the next step; a used key cannot be deleted."""
    p, q = torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = AdamW([p], lr=1e-3)
    with pytest.raises(ValueError, match="eps"):
        opt.param_groups.append({"params": [q], "eps": -1.0})
    assert len(opt.param_groups) == 1
    opt.param_groups.append({"params": [q], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and type(opt.param_groups[1]) is type(opt.param_groups[0])
    for statement in ("g[0] = g[1]", "del g[0]", "g.pop()", "g.insert(0, {})", "g.reverse()", "g += [{}]",
                      "g.clear()", "g.extend([])"):
        with pytest.raises(TypeError, match="add_param_group"):
            exec(statement, {"g": opt.param_groups})
    for statement in ("del g['lr']", "g.pop('betas')", "g.clear()"):
        with pytest.raises(TypeError, match="cannot be removed"):
            exec(statement, {"g": opt.param_groups[0]})
    opt.param_groups[0]["note"] = 1
    del opt.param_groups[0]["note"]  # a key the optimizer does not use: free
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.param_groups[1]["params"] = [q, p]
    opt.param_groups = [dict(g) for g in opt.param_groups]
    p.grad, q.grad = torch.randn(4), torch.randn(3)
    with pytest.raises(TypeError, match="replaced by another list"):
        opt.step()
