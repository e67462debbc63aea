"""``python -m warmup_fused bench``: one optimizer step of warmup_fused.AdamW/SGD against torch.optim.

Every implementation runs the same warmup-then-cosine schedule, the one a transformers user writes:
``get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL)``. The torch peers step that LambdaLR after every
``opt.step()`` (its Python runs on the host each iteration, and is part of the timed step); ours
carries the same schedule converted with ``from_torch`` and computes the LR inside the kernel.

Implementations (``impl`` column):
  ours                 warmup_fused.AdamW / SGD, eager (one fused op per step)
  ours+graph           the same, its step() captured once in a CUDA graph and replayed (GPU only)
  ours-constlr(+graph) the same kernel with a constant-LR program (schedule=None): the schedule's own cost
                       is ours / ours-constlr - 1, printed as a note
  torch-forloop        torch.optim.X(foreach=False)
  torch-foreach        torch.optim.X(foreach=True)
  torch-fused          torch.optim.X(fused=True)
  torch-fused-capt     torch.optim.X(fused=True, capturable=True, lr=<tensor>) eager (GPU only)
  torch-fused-capt+graph  step() replayed from a CUDA graph; the LR refresh stays outside the graph:
                       sched.step() on the host, which fill_()s the lr tensor (GPU only)
  torch-compiled       torch's recipe for a compiled optimizer with an LR scheduler: lr=<tensor>,
                       torch.compile(opt.step), sched.step() updating the tensor; compiled before timing
                       (compile time reported separately). Eager on CPU; on GPU captured in a CUDA graph
                       like the other +graph rows (torch-compiled+graph). Only on the sets where its compile
                       time fits the run (--compile-peer).
Low precision and clipping (16M in 50 tensors, tiny-mixed, and the GPU 1B set where they fit; eager; each family a
run of its own; each torch recipe compared with its own ours row, "x /"):
  ours-bf16            warmup_fused.AdamW on bf16 params (bf16 states)
  torch-fused-bf16     torch.optim.AdamW(fused=True) on the same bf16 params                       x / ours-bf16
  ours-bf16+master     the same with master_weights=True (float32 master and states)
  torch-fused-fp32master  torch.optim.AdamW(fused=True) stepping float32 master copies: the grads upcast into the
                       masters' grads before, param.copy_(master) after (both foreach)       x / ours-bf16+master
  ours+clip            fp32, max_grad_norm=MAX_GRAD_NORM (AdamW and SGD)
  torch-clip+fused     clip_grad_norm_(params, MAX_GRAD_NORM, foreach=True), then X(fused=True)    x / ours+clip
                       (both clip rows get the drawn grads back before each step, untimed: torch's clip scales them)

Timing: every implementation of one set and optimizer lives side by side; after warmup steps, R rounds
each time S steps of every implementation, in an order that rotates by one each round, so drift on a
shared machine hits all of them alike. Per implementation: the median over rounds of the per-step time
(CUDA events on GPU, perf_counter on CPU) and of the host CPU time (process_time, all threads).
x-ours: the per-round ratio peer / ours (same mode), median and interquartile range [q1-q3] over rounds;
"parity within noise" when that range contains 1.0. A round more than 10x an implementation's median is an
outlier: listed in the notes, left out of its median and ratios.
GB/s = bytes the update must move / median (AdamW fp32: 28 B/param = read p,g,m,v + write p,m,v; SGD
with momentum: 20 B/param = read p,g,buf + write p,buf; the variants: what their passes move, column B/param,
listed in the header); %copy = that rate over the device's copy_ bandwidth measured in the same run
(2 x bytes copied / time); bit-equal = whether the peer's params and states (exp_avg, exp_avg_sq,
max_exp_avg_sq, momentum_buffer, master_weight) equal its ours row's bit for bit after the same eager steps.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
import warnings
from typing import NamedTuple

import torch

from . import _report

LR = 1e-3
ADAMW = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
SGD_KW = dict(momentum=0.9, weight_decay=0.0)
BYTES_PER_PARAM = {"AdamW": 28, "SGD": 20}
BYTES_NOTE = {"AdamW": "28 B/param: read p,g,m,v + write p,m,v (fp32)",
              "SGD": "20 B/param: read p,g,buf + write p,buf (fp32, momentum)"}
MAX_GRAD_NORM = 1.0  # the clip rows' max_norm: below every set's grad norm (grads ~ 1e-2 N(0, 1)), so they clip
SCHEDULE = (5, 1000)  # warmup steps, total steps of the cosine schedule
OUTLIER_FACTOR = 10.0  # a round slower than this x an implementation's median is an outlier
MIN_ROUNDS = 5  # rounds every set gets, whatever --budget says
PARITY = "parity within noise"

OURS, CONST_LR, COMPILED = "ours", "ours-constlr", "torch-compiled"
HOST_SET = "150 tiny tensors (host overhead)"
HEADLINE_SET = "16M in 50 tensors"
BIG_SET = "1B-fp32 (4x250M)"
BIG_SET_IMPLS = (OURS, CONST_LR, "torch-fused")  # all impls of a 1B set at once would not fit in 80 GB
TINY_SET = "tiny-mixed"


class Variant(NamedTuple):
    """A row beyond the fp32 ones (low precision, clipping): ours with an option, or torch's recipe for it."""
    family: str               # rows that run side by side on the same params and grads: one run per family
    kinds: tuple              # the optimizers it runs for
    dtype: torch.dtype        # of the params and grads
    base: str | None          # the ours row its x-ours and bit-equal compare with; None: it is an ours row
    options: dict | None      # ours rows: warmup_fused options; torch rows: None
    recipe: str               # torch rows: what runs around torch.optim.X(fused=True).step() (see Contestant)
    bytes: dict               # per optimizer: the bytes per param its passes must move at least
    counted: str              # what `bytes` counts


BF16, CLIP = "bf16", "clip"
_BF16_UPDATE = "read p,g,m,v + write p,m,v, all bf16"
_CLIP_UPDATE = "the fp32 update (AdamW 28, SGD 20)"
VARIANTS = {
    "ours-bf16": Variant(BF16, ("AdamW",), torch.bfloat16, None, {}, "", {"AdamW": 14}, _BF16_UPDATE),
    "ours-bf16+master": Variant(
        BF16, ("AdamW",), torch.bfloat16, None, {"master_weights": True}, "", {"AdamW": 28},
        "read g (bf16) + master,m,v (fp32) + write master,m,v (fp32) + p (bf16)"),
    "torch-fused-bf16": Variant(BF16, ("AdamW",), torch.bfloat16, "ours-bf16", None, "", {"AdamW": 14}, _BF16_UPDATE),
    "torch-fused-fp32master": Variant(
        BF16, ("AdamW",), torch.bfloat16, "ours-bf16+master", None, "master", {"AdamW": 40},
        "upcast g: read bf16 + write fp32 (6) + the fp32 step: read master,g,m,v + write master,m,v (28) + "
        "param.copy_(master): read fp32 + write bf16 (6)"),
    "ours+clip": Variant(CLIP, ("AdamW", "SGD"), torch.float32, None, {"max_grad_norm": MAX_GRAD_NORM}, "",
                         {"AdamW": 32, "SGD": 24}, "the norm: read g (4) + " + _CLIP_UPDATE),
    "torch-clip+fused": Variant(
        CLIP, ("AdamW", "SGD"), torch.float32, "ours+clip", None, "clip", {"AdamW": 40, "SGD": 32},
        "the norm: read g (4) + the clip: read, write g (8) + " + _CLIP_UPDATE),
}
VARIANT_SETS = (BIG_SET, HEADLINE_SET, TINY_SET)
GRAD_WRITING_RECIPES = ("clip",)  # clip_grad_norm_ scales the grads in place


# --------------------------------------------------------------------------- parameter sets
def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124,439,808 params in 148 tensors), HF Conv1D layout (in, out)."""
    d, v, ctx, layers = 768, 50257, 1024, 12
    shapes = [(v, d), (ctx, d)]  # wte, wpe
    for _ in range(layers):
        shapes += [(d,), (d,),                 # ln_1 weight, bias
                   (d, 3 * d), (3 * d,),       # attn.c_attn
                   (d, d), (d,),               # attn.c_proj
                   (d,), (d,),                 # ln_2
                   (d, 4 * d), (4 * d,),       # mlp.c_fc
                   (4 * d, d), (d,)]           # mlp.c_proj
    shapes += [(d,), (d,)]  # ln_f
    return shapes


def resnet50_shapes() -> list[tuple[int, ...]]:
    """torchvision resnet50's parameters (25,557,032 params in 161 tensors), built from the architecture."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1 weight/bias
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            width, out = planes, planes * 4
            shapes += [(width, inplanes, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out, width, 1, 1), (out,), (out,)]
            if b == 0:  # downsample: 1x1 conv + bn
                shapes += [(out, inplanes, 1, 1), (out,), (out,)]
            inplanes = out
    shapes += [(1000, 2048), (1000,)]  # fc
    return shapes


def host_overhead_shapes(count: int = 150, seed: int = 0) -> list[tuple[int]]:
    """`count` 1-D tensors of 1..64 elements: the update's arithmetic is negligible, the host's work is not."""
    gen = torch.Generator().manual_seed(seed)
    return [(int(n),) for n in torch.randint(1, 65, (count,), generator=gen)]


def param_sets(device: str, sizes: str) -> tuple[list[tuple[str, list]], list[str]]:
    """[(name, shapes)], notes about what was left out."""
    notes = []
    host = (HOST_SET, host_overhead_shapes())
    if sizes == "tiny":
        mixed = [(256, 128), (128,), (64, 3, 3, 3), (64,), (512, 64), (1000,), (33, 7)]
        return [(TINY_SET, mixed), host], notes
    sets = []
    if device == "cuda":  # each of its runs only where it fits (fits_in_memory)
        sets.append((BIG_SET, [(250_000_000,)] * 4))
    else:
        notes.append("1B set skipped on CPU (GPU only)")
    if device == "cuda" or sizes == "full":
        sets.append(("gpt2-small (124M, 148 t)", gpt2_small_shapes()))
    else:
        notes.append("gpt2-small (124M) skipped on CPU at --sizes default (too slow on a few cores); "
                     "--sizes full runs it")
    sets.append(("resnet50 (25.6M, 161 t)", resnet50_shapes()))
    sets.append(("2000x1024 small tensors", [(1024,)] * 2000))
    sets.append((HEADLINE_SET, [(320_000,)] * 50))
    sets.append(host)
    return sets, notes


def numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


# --------------------------------------------------------------------------- statistics
def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3); inclusive method, so a single value is its own range."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def outlier_rounds(times: list[float], factor: float = OUTLIER_FACTOR) -> list[int]:
    """Indices of rounds slower than `factor` x the median of all rounds (robust to < half outliers)."""
    med = statistics.median(times)
    return [i for i, t in enumerate(times) if t > factor * med]


def robust_median(times: list[float], factor: float = OUTLIER_FACTOR) -> float:
    bad = set(outlier_rounds(times, factor))
    return statistics.median([t for i, t in enumerate(times) if i not in bad])


def verdict(q1: float, q3: float) -> str:
    if q1 <= 1.0 <= q3:
        return PARITY
    return "ours faster" if q1 > 1.0 else "ours slower"


def ratio_stats(peer: list[float], ours: list[float], factor: float = OUTLIER_FACTOR) -> dict:
    """Per-round ratios peer[i] / ours[i] (> 1: ours faster), leaving out rounds in which either side is an
    outlier. Returns median, q1, q3, the number of rounds used, the rounds left out and the verdict."""
    if len(peer) != len(ours) or not peer:
        raise ValueError(f"ratio_stats needs paired rounds, got {len(peer)} and {len(ours)}")
    dropped = sorted(set(outlier_rounds(peer, factor)) | set(outlier_rounds(ours, factor)))
    ratios = [p / o for i, (p, o) in enumerate(zip(peer, ours)) if i not in dropped]
    q1, med, q3 = quartiles(ratios)
    return {"median": med, "q1": q1, "q3": q3, "rounds": len(ratios), "dropped_rounds": dropped,
            "verdict": verdict(q1, q3)}


# --------------------------------------------------------------------------- schedules
def _hf_cosine(opt, warmup, total):
    try:
        from transformers import get_cosine_schedule_with_warmup
    except ImportError:  # the same lambda as transformers', recorded by from_torch (horizon=total)
        def lam(step):
            if step < warmup:
                return float(step) / float(max(1, warmup))
            progress = float(step - warmup) / float(max(1, total - warmup))
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
        return torch.optim.lr_scheduler.LambdaLR(opt, lam)
    return get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)


def our_schedule(warmup: int, total: int):
    """The bench schedule converted by from_torch (built on a throwaway optimizer with the same LR)."""
    from warmup_fused import from_torch

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    return from_torch(_hf_cosine(dummy, warmup, total), horizon=total + 1)


# --------------------------------------------------------------------------- implementations
def ours_available() -> tuple[bool, str]:
    import warmup_fused

    missing = [n for n in ("AdamW", "SGD") if not hasattr(warmup_fused, n)]
    if missing:
        return False, (f"warmup_fused.{'/'.join(missing)} not available in this build: "
                       "benchmarking the torch peers only")
    return True, ""


SLOW_PEERS = ("torch-forloop", "torch-foreach")


def impl_names(device: str, have_ours: bool, compiled: bool) -> list[str]:
    impls = ([OURS, CONST_LR] if have_ours else []) + list(SLOW_PEERS) + ["torch-fused"]
    if device == "cuda":
        impls += ["torch-fused-capt"] + ([OURS + "+graph", CONST_LR + "+graph"] if have_ours else [])
        impls += ["torch-fused-capt+graph"] + ([COMPILED + "+graph"] if compiled else [])
    elif compiled:
        impls.append(COMPILED)
    return impls


def variant_runs(kind: str, have_ours: bool) -> list[list[str]]:
    """The variant rows of optimizer `kind`, one list per family (each a run of its own), in table order."""
    runs: dict = {}
    for impl, v in VARIANTS.items():
        if kind in v.kinds and (have_ours or v.options is None):
            runs.setdefault(v.family, []).append(impl)
    return list(runs.values())


def base_of(impl: str) -> str | None:
    """The ours row an implementation's x-ours and bit-equal compare with; None for an ours reference row."""
    if impl in VARIANTS:
        return VARIANTS[impl].base
    if impl in (OURS, OURS + "+graph"):
        return None
    return OURS + "+graph" if impl.endswith("+graph") else OURS


def bytes_of(impl: str, kind: str) -> int:
    """Bytes per param the implementation's passes must move at least (the GB/s column's numerator)."""
    return VARIANTS[impl].bytes[kind] if impl in VARIANTS else BYTES_PER_PARAM[kind]


def bytes_notes(rows) -> list[str]:
    """What the bytes of each row's implementation count, for the implementations present."""
    kinds = list(dict.fromkeys(r["optimizer"] for r in rows))
    notes = [f"{k} {BYTES_NOTE[k]}" for k in kinds
             if any(r["impl"] not in VARIANTS for r in rows if r["optimizer"] == k)]
    counted: dict = {}  # implementations that count the same bytes share a note
    for impl in dict.fromkeys(r["impl"] for r in rows if r["impl"] in VARIANTS):
        v = VARIANTS[impl]
        counts = ", ".join(f"{k} {v.bytes[k]}" for k in kinds if k in v.kinds)
        counted.setdefault(f"{counts} B/param: {v.counted}", []).append(impl)
    return notes + [f"{' and '.join(impls)} {what}" for what, impls in counted.items()]


def _writes_grads(impls) -> bool:
    return any(i in VARIANTS and VARIANTS[i].recipe in GRAD_WRITING_RECIPES for i in impls)


def _dtype(impls) -> torch.dtype:
    """The params' dtype of a run (one family per run)."""
    return VARIANTS[impls[0]].dtype if impls[0] in VARIANTS else torch.float32


def resident_bytes(impls, kind: str) -> int:
    """Bytes per param a run of `impls` holds on the device: the params and grads drawn for it, and per
    implementation its params, states, master copies (and their grads) and own grads."""
    size, states, own_grads = _dtype(impls).itemsize, (2 if kind == "AdamW" else 1), _writes_grads(impls)
    total = 2 * size
    for impl in impls:
        v = VARIANTS.get(impl)
        master = v is not None and (v.recipe == "master" or bool((v.options or {}).get("master_weights")))
        total += size + (4 + 4 * states if master else size * states) + size * own_grads
        total += 4 if v is not None and v.recipe == "master" else 0  # the masters' fp32 grads
    return total


def _torch_optimizer(kind: str, params, impl: str, device: str):
    cls = torch.optim.AdamW if kind == "AdamW" else torch.optim.SGD
    kw = dict(ADAMW if kind == "AdamW" else SGD_KW)
    form = impl.replace("torch-", "").replace("+graph", "")
    lr = LR
    if form == "forloop":
        kw.update(foreach=False, fused=False)
    elif form == "foreach":
        kw.update(foreach=True)
    elif form == "fused":
        kw.update(fused=True)
    elif form in ("fused-capt", "compiled"):
        # The LR as a tensor, so it can change between graph replays / without recompiling.
        lr = torch.tensor(LR, device=device)
        if form == "fused-capt":
            kw.update(fused=True)
        if kind == "AdamW" and device == "cuda":
            kw.update(capturable=True)
    return cls(params, lr=lr, **kw)


class Contestant:
    """One implementation with its own params and state. Grads are shared (no optimizer here writes them), except
    in a run with a recipe that writes them (clip_grad_norm_): there every contestant has its own, given back the
    drawn values before each step, untimed, as a backward pass would write them.

    The variants' torch recipes, around torch.optim.X(fused=True).step():
      master  the optimizer steps float32 master copies of the params: the grads upcast into the masters' grads
              (torch._foreach_copy_) before it, param.copy_(master) for every param (foreach) after it
      clip    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=True) before it"""

    def __init__(self, impl: str, kind: str, master_p, master_g, device: str, ours_sched, own_grads=False):
        import warmup_fused

        self.impl, self.kind, self.device = impl, kind, device
        self.graph = impl.endswith("+graph")
        self.params = [p.detach().clone().requires_grad_(True) for p in master_p]
        grads = [g.clone() for g in master_g] if own_grads else master_g
        for p, g in zip(self.params, grads):
            p.grad = g
        self._drawn_grads = (grads, list(master_g)) if own_grads else None
        variant = VARIANTS.get(impl)
        self.masters = None  # the master recipe's float32 copies (its optimizer's params)
        self.sched = None
        if impl.startswith("ours"):
            sched = None if impl.startswith(CONST_LR) else ours_sched
            cls, kw = (warmup_fused.AdamW, ADAMW) if kind == "AdamW" else (warmup_fused.SGD, SGD_KW)
            self.opt = cls(self.params, lr=LR, schedule=sched, **kw, **(variant.options if variant else {}))
        else:
            if variant is not None and variant.recipe == "master":
                self.masters = [p.detach().float() for p in self.params]
                for m in self.masters:
                    m.grad = torch.empty_like(m)
            self.opt = _torch_optimizer(kind, self.masters or self.params, "torch-fused" if variant else impl, device)
            self.sched = _hf_cosine(self.opt, *SCHEDULE)
        self._opt_step = self._recipe(variant.recipe if variant else "")
        self._replay = None
        self.walls, self.cpus = [], []
        self.warmup_s = 0.0

    def _recipe(self, recipe: str):
        """The optimizer call a step makes (what a graph row captures)."""
        if self.impl.startswith(COMPILED):
            return torch.compile(self.opt.step)
        if recipe == "master":
            params, masters, step = self.params, self.masters, self.opt.step
            grads, master_grads = [p.grad for p in params], [m.grad for m in masters]

            @torch.no_grad()
            def master_step():
                torch._foreach_copy_(master_grads, grads)
                step()
                torch._foreach_copy_(params, masters)  # param.copy_(master): rounded to nearest
            return master_step
        if recipe == "clip":
            params, step = self.params, self.opt.step

            def clip_step():
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=True)
                step()
            return clip_step
        return self.opt.step

    def before_step(self) -> None:
        """Untimed: a run whose recipe writes the grads gets the drawn ones back, as a backward pass writes them."""
        if self._drawn_grads is not None:
            torch._foreach_copy_(*self._drawn_grads)

    def states(self) -> list[dict]:
        """Per param, its optimizer state; the master recipe's float32 copies as state['master_weight'], as ours."""
        if self.masters is None:
            return [self.opt.state.get(p, {}) for p in self.params]
        return [{**self.opt.state.get(m, {}), "master_weight": m} for m in self.masters]

    def step(self):
        if self._replay is not None:
            self._replay()
        else:
            self._opt_step()
        if self.sched is not None:  # the host LR refresh: outside the graph, as in a real loop
            self.sched.step()

    def warm_up(self, steps: int) -> None:
        """`steps` untimed steps (the compile, for torch-compiled); graph rows warm up on a side stream,
        capture opt.step() once, then replay."""
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.graph:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(max(3, steps)):
                        self.before_step()
                        self.step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._opt_step()
                self._replay = graph.replay
            for _ in range(steps):
                self.before_step()
                self.step()
        _sync(self.device)
        self.warmup_s = time.perf_counter() - t0

    def time_round(self, steps: int) -> None:
        """Times `steps` consecutive steps (one at a time, each after its untimed before_step, when the run's
        recipe writes grads); appends the per-step wall (device) and host CPU time."""
        cuda = self.device == "cuda"
        spans = [1] * steps if self._drawn_grads is not None else [steps]
        wall = cpu = 0.0
        events = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for n in spans:
                self.before_step()
                if cuda:
                    events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
                    events[-1][0].record()
                wall0, cpu0 = time.perf_counter(), time.process_time()
                for _ in range(n):
                    self.step()
                cpu += time.process_time() - cpu0  # before any sync: the host's own work
                if cuda:
                    events[-1][1].record()
                else:
                    wall += time.perf_counter() - wall0
        if cuda:
            events[-1][1].synchronize()
            wall = sum(start.elapsed_time(end) for start, end in events) / 1e3
        self.walls.append(wall / steps)
        self.cpus.append(cpu / steps)


def fits_in_memory(shapes, impls, kind: str, device: str) -> str:
    """'' when a run of `impls` fits in the device's free memory (always on CPU), else why not."""
    if device != "cuda":
        return ""
    need, free = numel(shapes) * resident_bytes(impls, kind), torch.cuda.mem_get_info()[0]
    return "" if need <= free else f"needs ~{need / 2**30:.0f} GiB free, {free / 2**30:.0f} GiB free"


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int) -> float:
    """GB/s of dst.copy_(src) (2 x nbytes moved), from the fastest of several copies."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for _ in range(8):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / min(times[2:]) / 1e9  # best of 6: a ceiling, robust to a busy host


# torch's layout, which ours keeps; master_weight: ours' float32 master, the master recipe's float32 copy
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "master_weight")
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_equal(a: Contestant, b: Contestant) -> bool:
    """Params and optimizer states (STATE_KEYS both have) equal bit for bit."""
    def same(x, y):
        return (x.dtype == y.dtype and x.shape == y.shape
                and torch.equal(x.view(_INT_OF_SIZE[x.element_size()]), y.view(_INT_OF_SIZE[y.element_size()])))

    for p, q, sp, sq in zip(a.params, b.params, a.states(), b.states()):
        pairs = [(p, q)] + [(sp[k], sq[k]) for k in STATE_KEYS
                            if torch.is_tensor(sp.get(k)) and torch.is_tensor(sq.get(k))]
        if not all(same(x, y) for x, y in pairs):
            return False
    return True


# --------------------------------------------------------------------------- one set
def run_set(name: str, shapes, kind: str, impls: list[str], device: str, cfg: dict, gen, bar,
            time_share: float | None = None) -> list[dict]:
    """All `impls` of one set and optimizer, interleaved in rotating rounds; one result row each. Rounds stop
    early (after at least MIN_ROUNDS) once they have used `time_share` seconds. The host-overhead set runs
    single-threaded on CPU: its arithmetic is negligible, and idle intra-op threads would only add their
    spin-waits to process_time."""
    threads = torch.get_num_threads()
    if name == HOST_SET and device == "cpu":
        torch.set_num_threads(1)
    try:
        return _run_set(name, shapes, kind, impls, device, cfg, gen, bar, time_share)
    finally:
        torch.set_num_threads(threads)


def _run_set(name, shapes, kind, impls, device, cfg, gen, bar, time_share) -> list[dict]:
    dtype = _dtype(impls)
    master_p = [torch.randn(s, generator=gen, device=device).to(dtype) for s in shapes]
    master_g = [torch.randn(s, generator=gen, device=device).mul_(1e-2).to(dtype) for s in shapes]
    own_grads = _writes_grads(impls)
    n = numel(shapes)
    rows, live = {}, []
    for impl in impls:
        rows[impl] = {"set": name, "params": n, "tensors": len(shapes), "optimizer": kind, "impl": impl,
                      "mode": "graph" if impl.endswith("+graph") else "eager"}
        bar.set_postfix_str(f"{name[:18]} {kind} {impl}: warm-up")
        try:
            c = Contestant(impl, kind, master_p, master_g, device, cfg["ours_sched"], own_grads)
            c.warm_up(cfg["warmup"])
            live.append(c)
        except Exception as exc:  # reported as an ERROR row; the others still run
            rows[impl]["error"] = f"{type(exc).__name__}: {exc}"
    del master_p
    t0 = time.perf_counter()
    for r in range(cfg["rounds"]):
        bar.set_postfix_str(f"{name[:18]} {kind}: round {r + 1}/{cfg['rounds']}")
        k = r % max(1, len(live))
        for c in live[k:] + live[:k]:
            if "error" in rows[c.impl]:
                continue
            try:
                c.time_round(cfg["steps"])
            except Exception as exc:
                rows[c.impl]["error"] = f"{type(exc).__name__}: {exc}"
        bar.update(1)
        spent = time.perf_counter() - t0
        if time_share is not None and r + 1 >= MIN_ROUNDS and spent * (r + 2) / (r + 1) > time_share:
            bar.update(cfg["rounds"] - r - 1)
            break
    live = [c for c in live if "error" not in rows[c.impl]]
    by_impl = {c.impl: c for c in live}
    for c in live:
        row = rows[c.impl]
        med = robust_median(c.walls)
        row.update(rounds=len(c.walls), threads=torch.get_num_threads(), rounds_s=c.walls, rounds_host_s=c.cpus,
                   median_s=med, host_cpu_s=robust_median(c.cpus),
                   outlier_rounds=[{"round": i, "s": c.walls[i], "x_median": c.walls[i] / statistics.median(c.walls)}
                                   for i in outlier_rounds(c.walls)],
                   warmup_s=c.warmup_s, bytes_per_param=bytes_of(c.impl, kind),
                   gbps=bytes_of(c.impl, kind) * n / med / 1e9, base=base_of(c.impl))
        row["pct_copy"] = 100.0 * row["gbps"] / cfg["copy_gbps"]
        if c.impl.startswith(COMPILED):  # warm-up time beyond that many ordinary steps: the compile
            row["compile_s"] = max(0.0, c.warmup_s - cfg["warmup"] * med)
        ours = by_impl.get(row["base"])
        if ours is not None:
            row["ratio"] = ratio_stats(c.walls, ours.walls)
            row["host_ratio"] = ratio_stats(c.cpus, ours.cpus)
            if not c.graph and not c.impl.startswith(CONST_LR):  # same number of eager steps from the same start
                row["bit_equal"] = _bits_equal(c, ours)
    del live, by_impl, master_g
    if device == "cuda":
        torch.cuda.empty_cache()
    return [rows[i] for i in impls]


# --------------------------------------------------------------------------- main
def environment(device: str) -> dict:
    import warmup_fused
    from warmup_fused import _ops

    env = {"warmup_fused": warmup_fused.__version__, "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "python": platform.python_version(),
           "platform": platform.platform(), "device": device, "device_name": _report.device_name(device),
           "cpu": _report.cpu_name(), "threads": torch.get_num_threads(), "build_info": _ops.build_info(),
           "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(capability=f"sm_{props.major}{props.minor}", total_memory_gib=props.total_memory / 2**30,
                   cuda_driver=getattr(torch._C, "_cuda_getDriverVersion", lambda: None)())
    return env


def _compile_sets(policy: str, sizes: str, sets) -> set[str]:
    """Where the torch-compiled peer runs: its compile costs ~10-60 s per set and optimizer."""
    if policy == "none" or (policy == "auto" and sizes == "tiny"):
        return set()
    names = {name for name, _ in sets if name != BIG_SET}
    return names if policy == "all" else names & {HEADLINE_SET}


def cmd_bench(args) -> int:
    device = args.device or _report.best_device()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
        torch.cuda.set_device(torch.device(device))
        device = "cuda"
    elif device != "cpu":
        print(f"error: --device must be cpu or cuda, got {device!r}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    busy = []
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device == "cpu" and load >= cores and torch.get_num_threads() > 1:
        # Other processes hold every core: each OpenMP region (torch's fused CPU optimizers open one per tensor)
        # then waits for a core to come free, and the run measures the OS scheduler instead of the optimizers.
        busy.append(f"1 intra-op thread instead of {torch.get_num_threads()}: the 1-minute load was {load:.1f} "
                    f"on {cores} cores, and with every core taken torch's per-tensor OpenMP regions stall for "
                    f"scheduler ticks (seen here as 2-60x slower steps); --threads N forces N")
        torch.set_num_threads(1)
    have_ours, ours_note = ours_available()
    tiny, cuda = args.sizes == "tiny", device == "cuda"
    cfg = {"warmup": args.warmup if args.warmup is not None else (10 if cuda and not tiny else 2),
           "rounds": args.rounds if args.rounds is not None else (4 if tiny else (20 if cuda else 15)),
           "steps": args.steps if args.steps is not None else (10 if cuda and not tiny else 1)}
    sets, notes = param_sets(device, args.sizes)
    if args.only:
        sets = [(n, s) for n, s in sets if any(o.lower() in n.lower() for o in args.only)]
        if not sets:
            print(f"error: --only {args.only} matches no parameter set", file=sys.stderr)
            return 2
    if ours_note:
        notes.insert(0, ours_note)
    compiled = _compile_sets(args.compile_peer, args.sizes, sets)
    if args.compile_peer != "none":
        notes.append(f"{COMPILED}: compiled once before timing, only on "
                     + (", ".join(sorted(compiled)) or "no set")
                     + f" (--compile-peer {args.compile_peer}; its compile takes ~10-60 s per set and optimizer; "
                       "--compile-peer all runs it everywhere)")
    kinds = args.optimizers
    if not kinds or set(kinds) - set(BYTES_PER_PARAM):
        print(f"error: --optimizers takes AdamW and/or SGD, got {','.join(kinds)!r}", file=sys.stderr)
        return 2
    cfg["ours_sched"] = our_schedule(*SCHEDULE) if have_ours else None
    cfg["copy_bytes"] = (2**30 if cuda else 2**28) if not tiny else 2**24
    cfg["copy_gbps"] = copy_bandwidth(device, cfg["copy_bytes"])

    # On CPU at default sizes the for-loop and foreach peers, 3-15x slower than the rest, run on the headline
    # and host-overhead sets only: elsewhere they would take most of the run and decide nothing.
    lean = device == "cpu" and args.sizes == "default"
    plan = []
    for name, shapes in sets:
        for kind in kinds:
            runs = [[i for i in impl_names(device, have_ours, name in compiled)
                     if (name != BIG_SET or i in BIG_SET_IMPLS)
                     and not (lean and i in SLOW_PEERS and name not in (HEADLINE_SET, HOST_SET))]]
            if name in VARIANT_SETS:  # low precision and clipping: a run per family, after the fp32 one
                runs += variant_runs(kind, have_ours)
            for impls in runs:
                room = fits_in_memory(shapes, impls, kind, device)
                if room:
                    notes.append(f"{name} {kind} {', '.join(impls)} skipped: {room}")
                else:
                    plan.append((name, shapes, kind, impls))
    if lean:
        notes.append(f"{' and '.join(SLOW_PEERS)} run on {HEADLINE_SET} and {HOST_SET} only on CPU at "
                     "--sizes default (they are the slowest peers); --sizes full runs them everywhere")
    budget = args.budget if args.budget is not None else (None if tiny else (120.0 if cuda else 60.0))
    bar = _report.progress(total=len(plan) * cfg["rounds"], desc="bench", quiet=args.quiet)
    gen = torch.Generator(device=device).manual_seed(0)
    rows, spent = [], 0.0
    for k, (name, shapes, kind, impls) in enumerate(plan):
        share = None if budget is None else max(0.0, budget - spent) / (len(plan) - k)
        t0 = time.perf_counter()
        rows += run_set(name, shapes, kind, impls, device, cfg, gen, bar, share)
        spent += time.perf_counter() - t0 - sum(r.get("warmup_s", 0.0) for r in rows[-len(impls):])
    bar.close()
    cut = list(dict.fromkeys(f"{r['set']} {r['optimizer']}: {r['rounds']}" for r in rows
                             if r.get("rounds", cfg["rounds"]) < cfg["rounds"]))
    if cut:
        notes.append(f"--budget {budget:.0f} s for the timed rounds: fewer than {cfg['rounds']} rounds (at least "
                     f"{MIN_ROUNDS}) on " + "; ".join(cut))
    if load > 0.5 * cores:
        notes.append(f"the machine was busy when the run began (1-minute load {load:.1f} on {cores} cores): other "
                     "processes compete for the cores, so expect outliers and wide ranges; ratios from interleaved "
                     "rounds stay comparable")
    notes += busy
    if any(r["set"] == HOST_SET for r in rows) and device == "cpu":
        notes.append(f"{HOST_SET} runs with 1 intra-op thread: its arithmetic is negligible, and idle threads' "
                     "spin-waits would count in process_time")
    notes += derived_notes(rows)

    env = environment(device)
    env["loadavg_1min_at_start"] = load
    result = {"env": env,
              "config": {"sizes": args.sizes, "warmup": cfg["warmup"], "rounds": cfg["rounds"], "budget_s": budget,
                         "min_rounds": MIN_ROUNDS,
                         "steps_per_round": cfg["steps"], "outlier_factor": OUTLIER_FACTOR, "lr": LR,
                         "adamw": ADAMW, "sgd": SGD_KW, "compile_peer": args.compile_peer,
                         "schedule": {"kind": "transformers cosine with warmup", "num_warmup_steps": SCHEDULE[0],
                                      "num_training_steps": SCHEDULE[1]},
                         "bytes_per_param": BYTES_PER_PARAM, "bytes_note": BYTES_NOTE,
                         "max_grad_norm": MAX_GRAD_NORM,
                         "variants": {i: {"base": v.base, "dtype": str(v.dtype), "options": v.options,
                                          "recipe": v.recipe, "bytes_per_param": v.bytes, "bytes_note": v.counted}
                                      for i, v in VARIANTS.items()}},
              "copy_bandwidth_gbps": cfg["copy_gbps"], "copy_bytes": cfg["copy_bytes"], "ours_available": have_ours,
              "notes": notes, "results": rows}
    text = render_text(result)
    print(text)
    errors = [r for r in rows if "error" in r]
    for r in errors:
        print(f"ERROR {r['set']} {r['optimizer']} {r['impl']}: {r['error']}")

    stem = _report.result_stem(args, "bench", device, tiny)
    _report.write_json(stem + ".json", result)
    _report.write_text(stem + ".txt", text)
    written = [stem + ".json", stem + ".txt", stem + ".md"]
    if args.chart:
        chart(rows, stem + ".png",
              f"{env['device_name']}: one optimizer step, up to {cfg['rounds']} interleaved rounds")
        written.append(stem + ".png")
    _report.write_text(stem + ".md", render_markdown(result, stem))
    print("wrote " + ", ".join(written))
    return 1 if errors else 0


# --------------------------------------------------------------------------- reports
def derived_notes(rows) -> list[str]:
    """Outliers, compile times, the in-kernel schedule's cost and the host-overhead target, in words."""
    notes = []
    for r in rows:
        for o in r.get("outlier_rounds", []):
            notes.append(f"outlier: {r['set']} {r['optimizer']} {r['impl']} round {o['round']} took "
                         f"{o['s'] * 1e3:.3f} ms/step, {o['x_median']:.0f}x its median (unexplained; excluded)")
    compiles = [f"{r['optimizer']} {r['set']} {r['compile_s']:.1f} s" for r in rows if "compile_s" in r]
    if compiles:
        notes.append(f"{COMPILED} compile time (once, before timing, not in the step times): " + "; ".join(compiles))
    costs = [f"{r['set']} {r['optimizer']} {r['mode']}: {_pct(r['ratio'])}" for r in rows
             if r["impl"].startswith(CONST_LR) and "ratio" in r]
    if costs:
        notes.append("in-kernel schedule cost (ours / ours-constlr - 1, median [IQR] over rounds): " + "; ".join(costs))
    notes += [host_overhead_line(r, rows) for r in rows if r["set"] == HOST_SET and r["impl"] == "torch-fused"
              and "host_ratio" in r]
    return notes


def _pct(ratio: dict) -> str:
    """A constlr/ours ratio as the schedule's cost in percent: 1/ratio - 1."""
    lo, mid, hi = (100.0 * (1.0 / ratio[k] - 1.0) for k in ("q3", "median", "q1"))
    return f"{mid:+.1f}% [{lo:+.1f}..{hi:+.1f}]"


def host_overhead_line(fused: dict, rows) -> str:
    ours = next(r for r in rows if r["set"] == fused["set"] and r["optimizer"] == fused["optimizer"]
                and r["impl"] == OURS)
    hr = fused["host_ratio"]
    met = "met" if hr["median"] >= 1.0 else "NOT met"
    return (f"host overhead, {fused['optimizer']} on {fused['set']}: ours {ours['host_cpu_s'] * 1e3:.3f} ms host CPU "
            f"per step ({ours['median_s'] * 1e3:.3f} ms wall), torch fused {fused['host_cpu_s'] * 1e3:.3f} ms "
            f"({fused['median_s'] * 1e3:.3f} ms wall); fused/ours host CPU {_x(hr)}: target ours <= torch fused "
            f"{met}")


def _x(ratio: dict) -> str:
    return f"{ratio['median']:.2f}x [{ratio['q1']:.2f}-{ratio['q3']:.2f}]"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}" if s < 1 else f"{s * 1e3:.0f}"


def table_rows(rows) -> list[list]:
    out = []
    for r in rows:
        head = [r["set"], r["optimizer"], r["impl"]]
        if "error" in r:
            out.append(head + ["ERROR"] + ["-"] * 7)
            continue
        bit = {True: "yes", False: "no"}.get(r.get("bit_equal"), "-")
        if base_of(r["impl"]) is None:
            bit = "(ref)"
        ratio = r.get("ratio")
        out.append(head + [_ms(r["median_s"]), _ms(r["host_cpu_s"]), r["bytes_per_param"], f"{r['gbps']:.1f}",
                           f"{r['pct_copy']:.0f}%", _x(ratio) if ratio else "-", ratio["verdict"] if ratio else "-",
                           bit])
    return out


TABLE_HEADERS = ["set", "opt", "impl", "ms/step", "host ms", "B/param", "GB/s", "%copy", "x-ours [IQR]", "verdict",
                 "bit-equal"]


def variant_bases(rows) -> str:
    """'peer / its ours row' for the variant peers present."""
    return ", ".join(f"{i} / {VARIANTS[i].base}" for i in dict.fromkeys(r["impl"] for r in rows)
                     if i in VARIANTS and VARIANTS[i].base)


def render_text(result: dict) -> str:
    env, cfg = result["env"], result["config"]
    header = (f"warmup_fused bench on {env['device']} ({env['device_name']}), torch {env['torch']}, "
              f"{env['threads']} intra-op thread(s), {_report.build_text(env['build_info'])}\n"
              f"up to {cfg['rounds']} rounds x {cfg['steps_per_round']} step(s) per implementation, rotating order, "
              f"after {cfg['warmup']} warmup steps; medians over rounds; schedule: transformers cosine with warmup "
              f"({SCHEDULE[0]} warmup / {SCHEDULE[1]} total), base LR {LR}\n"
              "bytes moved (B/param, the least each implementation's passes move; GB/s = that / time): "
              + "; ".join(bytes_notes(result["results"])) + "\n"
              f"copy_ bandwidth ({result['copy_bytes'] / 2**20:.0f} MiB tensor): "
              f"{result['copy_bandwidth_gbps']:.1f} GB/s; 1-minute load at start {env['loadavg_1min_at_start']:.1f}")
    table = _report.format_table(TABLE_HEADERS, table_rows(result["results"]), align="<<<>>>>>><<")
    bases = variant_bases(result["results"])
    footer = ("x-ours = peer / ours per round, same mode (>1: ours faster)"
              + (f"; low precision and clipping against their own ours row: {bases}" if bases else "")
              + f", median [q1-q3]; '{PARITY}' when "
              f"[q1-q3] contains 1.00; host ms = process_time per step (all threads); "
              f"bit-equal = peer's params and states == ours bit for bit after the same eager steps")
    return "\n".join([header, "", table, "", footer] + [f"note: {s}" for s in result["notes"]])


HEADLINE_PEERS = ((OURS, "torch-fused"), (OURS, COMPILED), (OURS + "+graph", "torch-fused-capt+graph"),
                  (OURS + "+graph", COMPILED + "+graph"))
SHORT_VERDICT = {PARITY: "parity", "ours faster": "faster", "ours slower": "SLOWER"}


def headline_markdown(result: dict) -> str:
    """Per set and optimizer: ours' time and its ratio to each headline peer (torch fused, compiled, their
    graphed forms), as a Markdown table; a cell reads 'peer/ours median [q1-q3] verdict'."""
    rows = result["results"]
    by = {(r["set"], r["optimizer"], r["impl"]): r for r in rows}
    keys = list(dict.fromkeys((r["set"], r["optimizer"]) for r in rows))
    pairs = [(o, p) for o, p in HEADLINE_PEERS if any((k + (p,)) in by for k in keys)]
    bases = list(dict.fromkeys(o for o, _ in pairs))
    headers = ["set", "opt"]
    for base in bases:
        headers += [f"{base} ms"] + [f"x {p}" for o, p in pairs if o == base]
    table = []
    for key in keys:
        line = list(key)
        for base in bases:
            ours = by.get(key + (base,))
            line.append(_ms(ours["median_s"]) if ours and "median_s" in ours else "-")
            for o, p in pairs:
                if o != base:
                    continue
                peer = by.get(key + (p,))
                if peer is None:
                    line.append("-")
                elif "error" in peer:
                    line.append("ERROR")
                else:
                    line.append(f"{_x(peer['ratio'])} {SHORT_VERDICT[peer['ratio']['verdict']]}"
                                if "ratio" in peer else "-")
        table.append(line)
    return ("x peer = peer time / ours time per round, median [q1-q3]; > 1: ours faster; 'parity' = within "
            "noise (the range contains 1).\n\n"
            + _report.markdown_table(headers, table, align="<<" + ">" * (len(headers) - 2))
            + variant_markdown(rows))


def variant_markdown(rows) -> str:
    """Low precision and clipping: each torch recipe against its own ours row, with both rows' bytes and GB/s
    and whether they agree bit for bit; '' when no such row ran."""
    peers = [r for r in rows if r["impl"] in VARIANTS and VARIANTS[r["impl"]].base]
    if not peers:
        return ""
    by = {(r["set"], r["optimizer"], r["impl"]): r for r in rows}

    def side(r):
        if r is None:
            return ["-"] * 4
        if "error" in r:
            return [r["impl"], "ERROR", "-", "-"]
        return [r["impl"], _ms(r["median_s"]), r["bytes_per_param"], f"{r['gbps']:.1f}"]

    table = []
    for r in peers:
        ours = by.get((r["set"], r["optimizer"], VARIANTS[r["impl"]].base))
        ratio = r.get("ratio")
        bit = {True: "yes", False: "no"}.get(r.get("bit_equal"), "-")
        table.append([r["set"], r["optimizer"]] + side(ours) + side(r)
                     + [f"{_x(ratio)} {SHORT_VERDICT[ratio['verdict']]}" if ratio else "-", bit])
    headers = ["set", "opt", "ours", "ms", "B/param", "GB/s", "peer", "ms", "B/param", "GB/s", "x peer", "bit-equal"]
    counted = bytes_notes([r for r in rows if r["impl"] in VARIANTS])
    return ("\n\nLow precision and clipping, each torch recipe against its own ours row (x peer as above). "
            "B/param: the least bytes per param each implementation's passes move; GB/s = that / time.\n\n"
            + _report.markdown_table(headers, table, align="<<<>>><>>>><")
            + "\n\n" + "\n".join(f"- {c}" for c in counted))


def render_markdown(result: dict, stem: str) -> str:
    """A short summary: ours against the headline peers per set, host overhead and the other notes."""
    env, cfg = result["env"], result["config"]
    base = os.path.basename(stem)
    lines = [f"# warmup_fused bench: {env['device_name']}",
             "",
             f"{env['date']}, torch {env['torch']}, {env['threads']} intra-op thread(s), "
             f"{_report.build_text(env['build_info'])}. "
             f"Up to {cfg['rounds']} interleaved rounds x {cfg['steps_per_round']} step(s) per implementation, "
             f"rotating order, after {cfg['warmup']} warmup steps.",
             "",
             headline_markdown(result),
             "",
             "## Notes",
             ""]
    lines += [f"- {n}" for n in result["notes"]]
    lines += ["", f"Every implementation, with GB/s and host CPU: `{base}.txt`; all rounds: `{base}.json`"
              + (f"; chart: `{base}.png`" if os.path.exists(stem + ".png") else "") + "."]
    return "\n".join(lines)


def chart(rows, path: str, title: str) -> None:
    """Per optimizer: the per-round ratio against ours (median dot, IQR whisker) and the time per step, both
    on log scales so every set fits. One legend below the panels, clear of the data."""
    plt = _report.pyplot()
    from matplotlib.lines import Line2D

    kinds = [k for k in ("AdamW", "SGD") if any(r["optimizer"] == k for r in rows)]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    order = impl_names("cuda", True, True) + [COMPILED] + list(VARIANTS)  # every implementation: stable colors
    impls = sorted(dict.fromkeys(r["impl"] for r in rows), key=lambda i: order.index(i) if i in order else len(order))
    colors = {impl: plt.get_cmap("tab20")(order.index(impl) % 20 if impl in order else 19) for impl in impls}
    peers = [i for i in impls if base_of(i) is not None]
    height = max(3.2, 0.55 * len(sets) * max(1.0, len(impls) / 4))
    fig, axes = plt.subplots(2, len(kinds), figsize=(7.0 * len(kinds), 2 * height + 1.2), squeeze=False,
                             layout="constrained")
    for col, kind in enumerate(kinds):
        ax_r, ax_b = axes[0, col], axes[1, col]
        step = 0.8 / max(1, len(peers))
        for j, impl in enumerate(peers):
            pts = [(i + j * step, r["ratio"]) for i, s in enumerate(sets) for r in rows
                   if r["set"] == s and r["optimizer"] == kind and r["impl"] == impl and "ratio" in r]
            if pts:
                ys = [y for y, _ in pts]
                mids = [q["median"] for _, q in pts]
                err = [[q["median"] - q["q1"] for _, q in pts], [q["q3"] - q["median"] for _, q in pts]]
                ax_r.errorbar(mids, ys, xerr=err, fmt="o", ms=4, capsize=2, color=colors[impl])
        ax_r.axvline(1.0, color="0.2", lw=1)
        ax_r.set_xscale("log")
        lo, hi = ax_r.get_xlim()
        ax_r.set_xlim(min(lo, 0.5), max(hi, 2.0))
        _log_axis(ax_r, "x")
        ax_r.text(1.0, 1.0, " ours faster \u2192", transform=ax_r.get_xaxis_transform(), ha="left", va="bottom",
                  fontsize=8, color="0.3")
        ax_r.text(1.0, 1.0, "\u2190 ours slower ", transform=ax_r.get_xaxis_transform(), ha="right", va="bottom",
                  fontsize=8, color="0.3")
        ax_r.set_xlabel("peer time / ours time per round (median, IQR whisker; log scale)")
        ax_r.set_title(f"{kind}: x-ours", fontsize=10, pad=14)
        _set_axis(ax_r, sets, step * (len(peers) - 1) / 2)
        step = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            pts = [(i + j * step, r["median_s"] * 1e3) for i, s in enumerate(sets) for r in rows
                   if r["set"] == s and r["optimizer"] == kind and r["impl"] == impl and "median_s" in r]
            if pts:
                ax_b.barh([y for y, _ in pts], [x for _, x in pts], height=step, color=colors[impl],
                          edgecolor="black" if impl.startswith(OURS) else None, linewidth=0.6)
        _log_axis(ax_b, "")
        ax_b.set_xlabel("ms per step (median over rounds; log scale, shorter is faster)")
        ax_b.set_title(f"{kind}: time per step", fontsize=10)
        _set_axis(ax_b, sets, step * (len(impls) - 1) / 2)
    handles = [Line2D([], [], color=colors[i], marker="s", ls="", ms=8,
                      markeredgecolor="black" if i.startswith(OURS) else colors[i]) for i in impls]
    labels = [f"{i} (vs {base_of(i)})" if i in VARIANTS and base_of(i) else i for i in impls]
    fig.legend(handles, labels, loc="outside lower center",
               ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_axis(ax, unit: str) -> None:
    """Log x axis with plain tick labels (0.5x, 1x, 2x ... or 1, 10, 100) instead of powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()  # after the switch: autoscaled for log
    ticks = [m * 10.0**e for e in range(-4, 5) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{unit}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)


def _set_axis(ax, sets, offset):
    ax.set_yticks([i + offset for i in range(len(sets))])
    ax.set_yticklabels(sets, fontsize=8)
    ax.set_ylim(len(sets) - 0.1, -0.3)
    ax.grid(axis="x", alpha=0.3)


def add_parser(sub) -> None:
    s = sub.add_parser(
        "bench", help="time one optimizer step against torch.optim",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--sizes", choices=("tiny", "default", "full"), default="default",
                   help="tiny: seconds, for CI; default: the standard sets (gpt2 skipped on CPU); "
                        "full: every set the device can hold")
    s.add_argument("--only", action="append", metavar="SUBSTRING",
                   help="only parameter sets whose name contains SUBSTRING (repeatable)")
    s.add_argument("--optimizers", type=lambda t: [k for k in t.split(",") if k], default=["AdamW", "SGD"],
                   metavar="AdamW,SGD", help="optimizers to time (default both)")
    s.add_argument("--compile-peer", choices=("auto", "all", "none"), default="auto",
                   help=f"where torch-compiled runs: auto = the {HEADLINE_SET!r} set (not at --sizes tiny), "
                        "all = every set, none")
    _report.add_output_args(s, "bench-<device>-<date>.json/.txt/.md/.png")
    s.add_argument("--chart", action="store_true", help="also write a PNG chart")
    s.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 20 GPU, 15 CPU, 4 tiny)")
    s.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help=f"time for the timed rounds of all sets together (default 120 GPU, 60 CPU, none tiny); a set "
                        f"whose share runs out stops after at least {MIN_ROUNDS} rounds (warm-up and compile excluded)")
    s.add_argument("--steps", type=int, default=None, help="timed steps per implementation and round "
                                                           "(default 10 GPU, 1 CPU and tiny)")
    s.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (default 10 GPU, else 2)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the run (default: torch's choice, or 1 on a CPU whose every core "
                        "is already busy: 1-minute load >= cores)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_bench)


__all__ = ["add_parser", "cmd_bench", "gpt2_small_shapes", "resnet50_shapes", "host_overhead_shapes", "param_sets",
           "ratio_stats", "outlier_rounds", "quartiles", "verdict", "headline_markdown", "render_markdown", "chart",
           "PARITY"]
