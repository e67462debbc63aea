"""Interleaved A/B timing of one optimizer step: ours against torch fused, on the CPU target set.

The single-pass table of `python -m warmup_fused bench` times each implementation once, one after the
other; on a shared 2-core machine that ordering alone moves a memory-bound ratio by +-5%. This script
alternates the two implementations in rounds on the same parameter set and reports the per-round ratio,
so drift hits both equally.

    python benchmarks/ab_cpu.py [--rounds 15] [--steps 20] [--out benchmarks/results/ab-cpu.json]
"""
import argparse
import json
import statistics
import time

import torch

import warmup_fused


def make_params(n_tensors: int, numel: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(numel, generator=g).requires_grad_() for _ in range(n_tensors)]
    for p in ps:
        p.grad = torch.randn(numel, generator=g)
    return ps


def time_steps(opt, steps: int) -> float:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cases = {
        "AdamW 16M/50": (lambda ps: warmup_fused.AdamW(ps, lr=1e-3, weight_decay=0.01),
                         lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True)),
        "SGD-momentum 16M/50": (lambda ps: warmup_fused.SGD(ps, lr=1e-3, momentum=0.9),
                                lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True)),
    }
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
              "steps_per_round": args.steps, "results": {}}
    for name, (ours_f, torch_f) in cases.items():
        ours, ref = ours_f(make_params(50, 320_000, 0)), torch_f(make_params(50, 320_000, 1))
        for opt in (ours, ref):
            time_steps(opt, 3)
        ratios, t_ours, t_ref = [], [], []
        for _ in range(args.rounds):
            a, b = time_steps(ours, args.steps), time_steps(ref, args.steps)
            t_ours.append(a)
            t_ref.append(b)
            ratios.append(b / a)
        r = {"ours_ms": 1e3 * statistics.median(t_ours), "torch_fused_ms": 1e3 * statistics.median(t_ref),
             "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        report["results"][name] = r
        print(f"{name:22s} ours {r['ours_ms']:7.3f} ms  torch fused {r['torch_fused_ms']:7.3f} ms  "
              f"torch/ours median {r['ratio_median']:.3f} (rounds {r['ratio_min']:.3f}..{r['ratio_max']:.3f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
