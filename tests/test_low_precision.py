"""Low-precision training in the fused step: float32 master weights, stochastic rounding, gradient clipping.

References (bit for bit, CPU):
* master_weights: torch.optim.X(fused=True) stepping float32 master params fed the low-precision grads upcast, the
  param being master.to(dtype) after each step.
* max_grad_norm: clip_grad_norm_(params, max_norm, foreach=True) then torch.optim.X(fused=True); with a GradScaler,
  torch's recipe scaler.unscale_(opt), clip, scaler.step(opt).
* stochastic_rounding has no bitwise reference: unbiasedness (statistics) and reproducibility are tested.
"""
from __future__ import annotations

import copy

import pytest
import torch

import warmup_fused
from warmup_fused import schedules

from test_cuda_emulation import _pair, _train, bits

HP = {"AdamW": dict(weight_decay=0.1, amsgrad=True), "Adam": dict(weight_decay=0.05),
      "SGD": dict(momentum=0.9, nesterov=True, weight_decay=1e-2)}
LR = {"AdamW": 3e-3, "Adam": 3e-3, "SGD": 0.05}


def _masters_reference(name, dtype, steps=12, scaler=False, clip=None):
    """Ours with master_weights vs torch fused on float32 masters; returns both sides for comparison."""
    torch.manual_seed(0)
    sizes = [7, 33, 1000, 4099]
    params = [torch.randn(n).to(dtype) for n in sizes]
    masters = [p.float().clone().requires_grad_() for p in params]
    sched = schedules.warmup_cosine(steps, warmup=3)
    ours = getattr(warmup_fused, name)(params, lr=LR[name], master_weights=True, schedule=sched,
                                       max_grad_norm=clip, **HP[name])
    ref = getattr(torch.optim, name)(masters, lr=LR[name], fused=True, **HP[name])
    ref_lrs = sched.with_base_lrs([LR[name]]).lr_at(range(steps))[0].tolist()
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        for g in ref.param_groups:
            g["lr"] = ref_lrs[t]
        grads = [(torch.randn(p.shape, generator=gen) * (2.0 ** 8 if scaler else 1.0)).to(dtype) for p in params]
        if clip is not None:  # the recipe: clip_grad_norm_ on the model's 16-bit grads, then upcast into the masters
            holders = [torch.empty_like(p).requires_grad_() for p in params]
            for h, g in zip(holders, grads):
                h.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(holders, clip, foreach=True)
        for k, (p, m, g) in enumerate(zip(params, masters, grads)):
            p.grad, m.grad = g.clone(), (holders[k].grad if clip is not None else g).float()
        if scaler:
            for o in (ours, ref):
                o.grad_scale, o.found_inf = torch.full((), 2.0 ** 8), torch.full((), float(t == 4))
        ours.step()
        ref.step()
        for o in (ours, ref):
            o.__dict__.pop("grad_scale", None), o.__dict__.pop("found_inf", None)
        for p, m in zip(params, masters):
            st = ours.state[p]
            assert torch.equal(bits(st["master_weight"]), bits(m.detach())), f"step {t}: master"
            assert torch.equal(bits(p), bits(m.detach().to(dtype))), f"step {t}: param is the master rounded"
            for k, v in ref.state[m].items():
                assert st[k].dtype == v.dtype and torch.equal(bits(st[k]), bits(v)), f"step {t}: state {k}"
    return ours, params


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["AdamW", "Adam", "SGD"])
def test_master_weights_match_torch_on_float32_masters(name, dtype):
    _masters_reference(name, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_master_weights_with_clipping_match_torchs_recipe(name, dtype):
    """max_grad_norm with master weights: clip_grad_norm_ on the 16-bit grads, then the float32 masters' step."""
    _masters_reference(name, dtype, clip=0.5)


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_master_weights_with_grad_scaler_and_a_skipped_step(name):
    _masters_reference(name, torch.bfloat16, scaler=True)


def test_master_weights_round_trip_and_torch_checkpoint_initialises_them():
    ours, params = _masters_reference("AdamW", torch.bfloat16, steps=4)
    sd = copy.deepcopy(ours.state_dict())
    assert sd["state"][0]["master_weight"].dtype == torch.float32
    twin = [p.clone() for p in params]
    fresh = warmup_fused.AdamW(twin, lr=1.0, master_weights=True, **HP["AdamW"])
    fresh.load_state_dict(sd)
    for p, q in zip(params, twin):
        assert torch.equal(bits(ours.state[p]["master_weight"]), bits(fresh.state[q]["master_weight"]))
    # torch's own checkpoint of bf16 params has no master: it starts as the param, the states become float32
    torch_params = [p.clone().requires_grad_() for p in params]
    torch_opt = torch.optim.AdamW(torch_params, lr=1e-3, fused=True)
    for p in torch_params:
        p.grad = torch.randn_like(p)
    torch_opt.step()
    mine = warmup_fused.AdamW([p.detach().clone() for p in torch_params], lr=1e-3, master_weights=True)
    mine.load_state_dict(torch_opt.state_dict())
    for p in mine.param_groups[0]["params"]:
        st = mine.state[p]
        assert torch.equal(st["master_weight"], p.float()) and st["exp_avg"].dtype == torch.float32


def test_master_weights_are_a_no_op_for_float32_params():
    p = torch.randn(5)
    opt = warmup_fused.AdamW([p], lr=0.1, master_weights=True)
    p.grad = torch.randn(5)
    opt.step()
    assert "master_weight" not in opt.state[p]


@pytest.mark.parametrize("name", ["AdamW", "Adam", "SGD"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_clipping_matches_clip_grad_norm_then_torch_fused(name, dtype):
    torch.manual_seed(0)
    params = [torch.randn(n).to(dtype) for n in (5, 64, 333)]
    ref_params = [p.clone().requires_grad_() for p in params]
    ours = getattr(warmup_fused, name)(params, lr=LR[name], max_grad_norm=0.5, **HP[name])
    ref = getattr(torch.optim, name)(ref_params, lr=LR[name], fused=True, **HP[name])
    for t in range(6):
        grads = [torch.randn(p.shape).to(dtype) * (3.0 if t % 2 else 0.01) for p in params]  # clipped, unclipped
        for p, q, g in zip(params, ref_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        norm = torch.nn.utils.clip_grad_norm_(ref_params, 0.5, foreach=True)
        ours.step()
        ref.step()
        assert torch.equal(bits(ours.last_grad_norm()), bits(norm)), f"step {t}: norm"
        for p, q in zip(params, ref_params):
            assert torch.equal(bits(p), bits(q.detach())), f"step {t}"
            for k, v in ref.state[q].items():
                assert torch.equal(bits(ours.state[p][k]), bits(v)), f"step {t}: state {k}"


def test_clipping_with_a_grad_scaler_follows_torchs_recipe():
    """Ours: scaler.step(opt) with max_grad_norm. torch: scaler.unscale_(opt); clip_grad_norm_; scaler.step(opt)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8)
    twin = copy.deepcopy(model)
    ours = warmup_fused.AdamW(model.parameters(), lr=1e-3, max_grad_norm=0.1)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-3, fused=True)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 12) for _ in range(2)]
    x = torch.randn(32, 16)
    for t in range(5):
        for m, o, sc in ((model, ours, scalers[0]), (twin, ref, scalers[1])):
            o.zero_grad()
            sc.scale(m(x).pow(2).mean() * (float("inf") if t == 2 else 1.0)).backward()
            if o is ref:
                sc.unscale_(o)
                torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1, foreach=True)
            sc.step(o)
            sc.update()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert int(ours.sched_step()) == 5


def test_stochastic_rounding_is_unbiased_where_nearest_rounding_is_stuck():
    """bf16 params at 1.0 (resolution 2**-7 above 1) and updates of 2**-12: round-to-nearest never moves them,
    stochastic rounding moves them by the update on average (within 5 standard deviations)."""
    n, steps, update = 100_000, 20, 2.0 ** -12
    sr = torch.ones(n, dtype=torch.bfloat16)
    rn = torch.ones(n, dtype=torch.bfloat16)
    torch.manual_seed(3)
    opt_sr = warmup_fused.SGD([sr], lr=update, stochastic_rounding=True)
    opt_rn = warmup_fused.SGD([rn], lr=update)
    for _ in range(steps):
        sr.grad = torch.full_like(sr, -1.0)  # p -= lr * grad: each step adds `update`
        rn.grad = torch.full_like(rn, -1.0)
        opt_sr.step()
        opt_rn.step()
    assert torch.equal(rn, torch.ones_like(rn))
    mean = sr.double().mean().item() - 1.0
    # each step moves an element up by one ulp (2**-7) with probability update / ulp: a binomial per element
    ulp, p_up = 2.0 ** -7, update / 2.0 ** -7
    std = ulp * (steps * p_up * (1 - p_up)) ** 0.5 / n ** 0.5
    assert abs(mean - steps * update) < 5 * std, (mean, steps * update, std)


def test_stochastic_rounding_reproduces_with_the_same_seed():
    def run(seed):
        torch.manual_seed(seed)
        p = torch.linspace(-2, 2, 4097).to(torch.bfloat16)
        opt = warmup_fused.AdamW([p], lr=1e-3, stochastic_rounding=True)
        for t in range(3):
            p.grad = torch.cos(torch.arange(4097.0) * (t + 1)).to(torch.bfloat16)
            opt.step()
        return p

    assert torch.equal(bits(run(0)), bits(run(0)))
    assert not torch.equal(bits(run(0)), bits(run(1)))


def test_invalid_combinations_are_clear_errors():
    with pytest.raises(ValueError, match="master_weights and stochastic_rounding"):
        warmup_fused.AdamW([torch.zeros(2)], master_weights=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="max_grad_norm"):
        warmup_fused.SGD([torch.zeros(2)], lr=0.1, max_grad_norm=0.0)
    p = torch.zeros(3, dtype=torch.float16)
    p.grad = torch.ones(3, dtype=torch.float16)
    opt = warmup_fused.AdamW([p], stochastic_rounding=True)
    with pytest.raises(ValueError, match="float16"):
        opt.step()
    assert not opt.state


# ------------------------------------------------------------------------------ the CUDA kernels, emulated
@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
@pytest.mark.parametrize("feature", ["master_weights", "stochastic_rounding", "max_grad_norm"])
def test_cuda_kernels_emulated_with_low_precision_features(cls, feature):
    """The kernel code (vectors of 8 bf16 with float32 masters and states, tails, stochastic rounding's streams,
    the clip coefficient) against the per-element oracle, bit for bit, skipped steps included."""
    kw = {"master_weights": dict(master_weights=True), "stochastic_rounding": dict(stochastic_rounding=True),
          "max_grad_norm": dict(max_grad_norm=0.5)}[feature]
    kw.update(lr=0.05, momentum=0.9) if cls == "SGD" else kw.update(lr=1e-2, amsgrad=True)
    torch.manual_seed(5)
    copies, opts = _pair(cls, lambda: [torch.randn(n).to(torch.bfloat16) for n in (1, 9, 17, 65537)] +
                         [torch.randn(40).to(torch.float16)] * (feature != "stochastic_rounding"), kw)
    opts[1]._rng_seed = opts[0]._rng_seed
    _train(copies, opts, 4, seed=6, skip={0, 2} if feature != "max_grad_norm" else set())
