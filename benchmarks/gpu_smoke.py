"""A few steps of every optimizer path, short enough to run under compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/gpu_smoke.py      # what ./run gpu does
    python benchmarks/gpu_smoke.py --device cpu                           # the same paths on CPU

Covers AdamW / Adam / SGD, amsgrad, maximize, nesterov, weight decay, fp32 / bf16 / fp16 params, two param
groups with a schedule, a GradScaler (one step with an inf grad, which must be skipped), and on CUDA a step
captured in a CUDA graph and replayed. Exits non-zero when a result is not what the step must produce
(params unchanged, non-finite, or changed by a skipped step); the sanitizer judges the memory accesses.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import warmup_fused
from warmup_fused import schedules

SIZES = (1, 7, 33, 4097)  # a scalar, sub-vector, odd and multi-chunk-ish tensors


def make_params(dtype, device, gen):
    ps = [torch.randn(n, generator=gen, device=device).to(dtype).requires_grad_() for n in SIZES]
    return [{"params": ps[:2], "lr": 1e-3}, {"params": ps[2:], "lr": 3e-4}]


def set_grads(groups, gen, scale=1.0):
    for g in groups:
        for p in g["params"]:
            p.grad = (torch.randn(p.shape, generator=gen, device=p.device) * scale).to(p.dtype)


def params_of(groups):
    return [p for g in groups for p in g["params"]]


CASES = {
    "AdamW": lambda g, s: warmup_fused.AdamW(g, weight_decay=0.1, schedule=s),
    "AdamW-amsgrad": lambda g, s: warmup_fused.AdamW(g, amsgrad=True, schedule=s),
    "Adam-maximize-wd": lambda g, s: warmup_fused.Adam(g, weight_decay=0.01, maximize=True, schedule=s),
    "SGD-nesterov": lambda g, s: warmup_fused.SGD(g, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule=s),
    "SGD-plain": lambda g, s: warmup_fused.SGD(g, schedule=s),
}


def run_case(name, make, dtype, device, steps, gen) -> None:
    groups = make_params(dtype, device, gen)
    schedule = schedules.warmup_cosine(total=50, warmup=3, base_lr=[1e-3, 3e-4])
    opt = make(groups, schedule)
    before = [p.detach().clone() for p in params_of(groups)]
    for _ in range(steps):
        set_grads(groups, gen)
        opt.step()
    after = params_of(groups)
    if not all(torch.isfinite(p).all() for p in after):
        raise AssertionError(f"{name} {dtype}: non-finite params")
    if all(torch.equal(a, b) for a, b in zip(before, after)):
        raise AssertionError(f"{name} {dtype}: {steps} steps left every param unchanged")
    opt.last_lr()


def run_scaler(device, gen) -> None:
    """GradScaler: a finite step updates, a step with an inf grad is skipped (params bit-identical)."""
    groups = make_params(torch.float32, device, gen)
    # No warmup: the LR of the first step is not 0, so a step that is not skipped changes the params.
    opt = warmup_fused.AdamW(groups, schedule=schedules.warmup_cosine(total=50, base_lr=[1e-3, 3e-4]))
    scaler = torch.amp.GradScaler(device)
    params = params_of(groups)
    for inf_step in (False, True):
        before = [p.detach().clone() for p in params]
        loss = sum((p.float() ** 2).sum() for p in params)
        scaler.scale(loss).backward()
        if inf_step:
            params[-1].grad[0] = float("inf")
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        same = all(torch.equal(a, b) for a, b in zip(before, params))
        if same != inf_step:
            raise AssertionError(f"GradScaler: inf step {inf_step} but params {'un' if same else ''}changed")


def run_graph(gen) -> None:
    """torch's whole-step capture recipe: warm up on a side stream, zero_grad(set_to_none=True), capture, replay."""
    model = torch.nn.Sequential(torch.nn.Linear(33, 64), torch.nn.GELU(), torch.nn.Linear(64, 5)).cuda()
    opt = warmup_fused.AdamW(model.parameters(), schedule=schedules.warmup_cosine(total=50, warmup=3, base_lr=1e-3))
    x = torch.randn(16, 33, device="cuda", generator=gen)
    y = torch.randn(16, 5, device="cuda", generator=gen)

    def step():
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    lrs = []
    for _ in range(5):
        graph.replay()
        lrs.append(opt.last_lr().cpu())
    torch.cuda.synchronize()
    if torch.equal(lrs[0], lrs[1]):  # the schedule is still warming up: the LR must move between replays
        raise AssertionError(f"graph replay: the LR did not follow the schedule ({lrs[0].tolist()})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    gen = torch.Generator(device=args.device).manual_seed(0)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if args.device == "cuda" else [])
    done = []
    for dtype in dtypes:
        for name, make in CASES.items():
            run_case(name, make, dtype, args.device, args.steps, gen)
            done.append(f"{name}/{str(dtype).replace('torch.', '')}")
    run_scaler(args.device, gen)
    done.append("GradScaler(inf step skipped)")
    if args.device == "cuda" and os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        print("graph capture skipped: PYTORCH_NO_CUDA_MEMORY_CACHING=1 (set for memcheck) cannot capture")
    elif args.device == "cuda":
        run_graph(gen)
        done.append("CUDA graph capture + 5 replays")
    if args.device == "cuda":
        torch.cuda.synchronize()
    print("cases: " + ", ".join(done))
    print(f"smoke ok on {args.device}: {len(done)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
