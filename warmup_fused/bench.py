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

Numbers: median seconds per step after warmup iterations (CUDA events on GPU, perf_counter on
CPU); GB/s = bytes the update must move / median (AdamW fp32: 28 B/param = read p,g,m,v + write p,m,v;
SGD with momentum: 20 B/param = read p,g,buf + write p,buf); %copy = that rate over the device's
copy_ bandwidth measured in the same run (2 x bytes copied / time); host CPU = process_time per step
(all threads); x-ours = peer median / ours median in the same mode (>1: ours is faster);
bit-equal = whether the peer's params equal ours bit for bit after the same eager steps.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings

import torch

LR = 1e-3
ADAMW = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
SGD_KW = dict(momentum=0.9, weight_decay=0.0)
BYTES_PER_PARAM = {"AdamW": 28, "SGD": 20}
BYTES_NOTE = {"AdamW": "28 B/param: read p,g,m,v + write p,m,v (fp32)",
              "SGD": "20 B/param: read p,g,buf + write p,buf (fp32, momentum)"}


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


def param_sets(device: str, sizes: str) -> tuple[list[tuple[str, list]], list[str]]:
    """[(name, shapes)], notes about what was left out."""
    notes = []
    if sizes == "tiny":
        mixed = [(256, 128), (128,), (64, 3, 3, 3), (64,), (512, 64), (1000,), (33, 7)]
        return [("tiny-mixed", mixed), ("tiny-many-200x256", [(256,)] * 200)], notes
    sets = []
    if device == "cuda":
        need = 1_000_000_000 * 4 * 7  # master p,g + variant p,g,m,v + our final p
        free = torch.cuda.mem_get_info()[0]
        if free >= need:
            sets.append(("1B-fp32 (4x250M)", [(250_000_000,)] * 4))
        else:
            notes.append(f"1B set skipped: needs ~{need / 2**30:.0f} GiB free, {free / 2**30:.0f} GiB free")
    else:
        notes.append("1B set skipped on CPU (GPU only)")
    if device == "cuda" or sizes == "full":
        sets.append(("gpt2-small (124M, 148 t)", gpt2_small_shapes()))
    else:
        notes.append("gpt2-small (124M) skipped on CPU at --sizes default (too slow on a few cores); "
                     "--sizes full runs it")
    sets.append(("resnet50 (25.6M, 161 t)", resnet50_shapes()))
    sets.append(("2000x1024 small tensors", [(1024,)] * 2000))
    sets.append(("16M in 50 tensors", [(320_000,)] * 50))
    return sets, notes


def numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


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


# --------------------------------------------------------------------------- optimizers
def ours_available() -> tuple[bool, str]:
    import warmup_fused

    missing = [n for n in ("AdamW", "SGD") if not hasattr(warmup_fused, n)]
    if missing:
        return False, (f"warmup_fused.{'/'.join(missing)} not available in this build: "
                       "benchmarking the torch peers only")
    return True, ""


CONST_LR = "ours-constlr"  # same kernel, constant-LR program: the reference for the schedule's own cost


def make_ours(kind: str, params, schedule):
    import warmup_fused

    if kind == "AdamW":
        return warmup_fused.AdamW(params, lr=LR, schedule=schedule, **ADAMW)
    return warmup_fused.SGD(params, lr=LR, schedule=schedule, **SGD_KW)


def make_torch(kind: str, params, form: str, device: str):
    cls = torch.optim.AdamW if kind == "AdamW" else torch.optim.SGD
    kw = dict(ADAMW if kind == "AdamW" else SGD_KW)
    lr = LR
    if form == "forloop":
        kw.update(foreach=False, fused=False)
    elif form == "foreach":
        kw.update(foreach=True)
    elif form == "fused":
        kw.update(fused=True)
    elif form == "fused-capt":
        kw.update(fused=True)
        if kind == "AdamW":
            kw.update(capturable=True)
        lr = torch.tensor(LR, device=device)  # so the LR can change between graph replays
    return cls(params, lr=lr, **kw)


# --------------------------------------------------------------------------- timing
class Timer:
    """Per-iteration times: CUDA events on GPU (the device timeline), perf_counter on CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.pairs, self.walls = [], []

    def start(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.pairs.append([e, None])
        else:
            self.walls.append([time.perf_counter(), None])

    def stop(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.pairs[-1][1] = e
        else:
            self.walls[-1][1] = time.perf_counter()

    def times(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in self.pairs]
        return [b - a for a, b in self.walls]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int) -> float:
    """GB/s of dst.copy_(src) (2 x nbytes moved), from the fastest of several copies."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timer = Timer(device)
    for i in range(8):
        timer.start()
        dst.copy_(src)
        timer.stop()
    _sync(device)
    times = timer.times()[2:]
    del src, dst
    return 2 * nbytes / min(times) / 1e9  # best of 6: a ceiling, robust to a busy host


def run_variant(v: dict, master_p, master_g, device: str, warmup: int, repeat: int, ours_sched) -> dict:
    """Builds fresh params/grads/state, runs `warmup` untimed and `repeat` timed steps; returns the row
    and (eager rows) the final params for the bit-equality check."""
    params = [p.detach().clone().requires_grad_(True) for p in master_p]
    for p, g in zip(params, master_g):
        p.grad = g.clone()
    kind, impl = v["optimizer"], v["impl"]
    graph = impl.endswith("+graph")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl.startswith("ours"):
            # ours-constlr: the same kernel with a constant program (schedule=None), to price the schedule.
            opt, sched = make_ours(kind, params, None if impl.startswith(CONST_LR) else ours_sched), None
        else:
            form = impl.replace("torch-", "").replace("+graph", "")
            opt = make_torch(kind, params, form, device)
            sched = _hf_cosine(opt, *v["schedule"])

        def step():
            opt.step()
            if sched is not None:
                sched.step()

        timer = Timer(device)
        if not graph:
            for _ in range(warmup):
                step()
            _sync(device)
            cpu0 = time.process_time()
            for _ in range(repeat):
                timer.start()
                step()
                timer.stop()
            _sync(device)
            cpu = (time.process_time() - cpu0) / repeat
        else:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(3, warmup)):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                opt.step()  # the torch peers' LR refresh (sched.step -> lr.fill_) stays outside
            for _ in range(warmup):
                g.replay()
                if sched is not None:
                    sched.step()
            _sync(device)
            cpu0 = time.process_time()
            for _ in range(repeat):
                timer.start()
                g.replay()
                if sched is not None:
                    sched.step()
                timer.stop()
            _sync(device)
            cpu = (time.process_time() - cpu0) / repeat
    times = timer.times()
    final = None if graph else [p.detach() for p in params]
    del opt, sched
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times), "host_cpu_s": cpu}, final


def _bits_equal(a, b) -> bool:
    return all(x.shape == y.shape and torch.equal(x.view(torch.int32), y.view(torch.int32)) for x, y in zip(a, b))


def variants(device: str, have_ours: bool, warmup_total: tuple[int, int]) -> list[dict]:
    out = []
    for kind in ("AdamW", "SGD"):
        impls = (["ours", CONST_LR] if have_ours else []) + ["torch-forloop", "torch-foreach", "torch-fused"]
        if device == "cuda":
            impls += (["torch-fused-capt"] + (["ours+graph", CONST_LR + "+graph"] if have_ours else [])
                      + ["torch-fused-capt+graph"])
        out += [{"optimizer": kind, "impl": i, "schedule": warmup_total} for i in impls]
    return out


# --------------------------------------------------------------------------- main
def slug(text: str) -> str:
    text = re.sub(r"\(r\)|\(tm\)|processor|cpu @.*$|\d+-core", "", text.lower())
    words = re.sub(r"[^a-z0-9]+", "-", text).strip("-").split("-")
    return "-".join(w for w in words if w)[:40].strip("-") or "device"


def environment(device: str) -> dict:
    import warmup_fused
    from warmup_fused import _ops
    from .cli import device_name

    env = {"warmup_fused": warmup_fused.__version__, "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "python": platform.python_version(),
           "platform": platform.platform(), "device": device, "device_name": device_name(device),
           "cpu": device_name("cpu"), "threads": torch.get_num_threads(), "build_info": _ops.build_info(),
           "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(capability=f"sm_{props.major}{props.minor}", total_memory_gib=props.total_memory / 2**30,
                   cuda_driver=getattr(torch._C, "_cuda_getDriverVersion", lambda: None)())
    return env


def cmd_bench(args) -> int:
    from .cli import best_device, device_name

    device = args.device or best_device()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
        torch.cuda.set_device(torch.device(device))
        device = "cuda"
    elif device != "cpu":
        print(f"error: --device must be cpu or cuda, got {device!r}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    have_ours, ours_note = ours_available()
    tiny = args.sizes == "tiny"
    warmup = args.warmup if args.warmup is not None else (1 if tiny else (10 if device == "cuda" else 2))
    repeat = args.repeat if args.repeat is not None else (3 if tiny else (30 if device == "cuda" else 5))
    sched_wt = (5, 1000)  # warmup steps, total steps of the cosine schedule
    sets, notes = param_sets(device, args.sizes)
    if ours_note:
        notes.insert(0, ours_note)
    ours_sched = our_schedule(*sched_wt)

    copy_bytes = (2**30 if device == "cuda" else 2**28) if not tiny else 2**24
    copy_gbps = copy_bandwidth(device, copy_bytes)
    todo = [(name, shapes, v) for name, shapes in sets for v in variants(device, have_ours, sched_wt)]
    rows = []
    bar = _bar(len(todo), args.quiet)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, shapes in sets:
        # Master params and grads, made once per set on the device; every variant starts from copies.
        master_p = [torch.randn(s, generator=gen, device=device) for s in shapes]
        master_g = [torch.randn(s, generator=gen, device=device).mul_(1e-2) for s in shapes]
        n = numel(shapes)
        ours_final = {}
        for _, _, v in [t for t in todo if t[0] == name]:
            bar.set_postfix_str(f"{name[:18]} {v['optimizer']} {v['impl']}")
            row = {"set": name, "params": n, "tensors": len(shapes), "optimizer": v["optimizer"],
                   "impl": v["impl"], "mode": "graph" if v["impl"].endswith("+graph") else "eager"}
            try:
                res, final = run_variant(v, master_p, master_g, device, warmup, repeat, ours_sched)
                row.update(res)
                bpp = BYTES_PER_PARAM[v["optimizer"]]
                row["bytes_per_param"] = bpp
                row["gbps"] = bpp * n / row["median_s"] / 1e9
                row["pct_copy"] = 100.0 * row["gbps"] / copy_gbps
                if v["impl"] == "ours":
                    ours_final[v["optimizer"]] = final
                elif final is not None and v["optimizer"] in ours_final and not v["impl"].startswith(CONST_LR):
                    row["bit_equal"] = _bits_equal(final, ours_final[v["optimizer"]])
                del final
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            bar.update(1)
        del master_p, master_g, ours_final
        if device == "cuda":
            torch.cuda.empty_cache()
    bar.close()

    # x-ours: peer median / ours median, same set, optimizer and mode.
    ours_med = {(r["set"], r["optimizer"], r["mode"]): r["median_s"]
                for r in rows if r["impl"] in ("ours", "ours+graph") and "median_s" in r}
    for r in rows:
        key = (r["set"], r["optimizer"], r["mode"])
        if "median_s" in r and key in ours_med and r["impl"] not in ("ours", "ours+graph"):
            r["ratio_vs_ours"] = r["median_s"] / ours_med[key]
    # The in-kernel schedule's cost: ours (warmup-cosine program) over ours-constlr, same set and mode.
    sched_cost = [f"{r['set']} {r['optimizer']} {r['mode']}: {100.0 * (1.0 / r['ratio_vs_ours'] - 1.0):+.2f}%"
                  for r in rows if r["impl"].startswith(CONST_LR) and "ratio_vs_ours" in r]
    if sched_cost:
        notes.append("in-kernel schedule cost (ours / ours-constlr - 1; medians, noise included): "
                     + "; ".join(sched_cost))

    env = environment(device)
    table = render_table(rows, device)
    header = (f"warmup_fused bench on {device} ({device_name(device)}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, build {env['build_info']}\n"
              f"median of {repeat} steps after {warmup} warmup steps; schedule: transformers cosine with "
              f"warmup ({sched_wt[0]} warmup / {sched_wt[1]} total), base LR {LR}\n"
              f"bytes moved: AdamW {BYTES_NOTE['AdamW']}; SGD {BYTES_NOTE['SGD']}\n"
              f"copy_ bandwidth ({copy_bytes / 2**20:.0f} MiB tensor): {copy_gbps:.1f} GB/s")
    footer = ("x-ours = peer median / ours median in the same mode (>1 means ours is faster); "
              "bit-equal = peer's params == ours bit for bit after the same eager steps")
    text = "\n".join([header, "", table, "", footer] + [f"note: {s}" for s in notes])
    print(text)
    errors = [r for r in rows if "error" in r]
    for r in errors:
        print(f"ERROR {r['set']} {r['optimizer']} {r['impl']}: {r['error']}")

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{slug(device_name(device)) if device == 'cuda' else 'cpu-' + slug(device_name(device))}"
                                  f"-{datetime.date.today().isoformat()}")
    if tiny:
        stem += "-tiny"
    result = {"env": env, "config": {"sizes": args.sizes, "warmup": warmup, "repeat": repeat, "lr": LR,
                                     "adamw": ADAMW, "sgd": SGD_KW, "schedule": {
                                         "kind": "transformers cosine with warmup",
                                         "num_warmup_steps": sched_wt[0], "num_training_steps": sched_wt[1]},
                                     "bytes_per_param": BYTES_PER_PARAM, "bytes_note": BYTES_NOTE},
              "copy_bandwidth_gbps": copy_gbps, "copy_bytes": copy_bytes, "ours_available": have_ours,
              "notes": notes, "results": rows}
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2, default=str)
        f.write("\n")
    with open(stem + ".txt", "w") as f:
        f.write(text + "\n")
    print(f"wrote {stem}.json and {stem}.txt")
    if args.chart:
        chart(rows, stem + ".png", f"{device_name(device)} (copy_ {copy_gbps:.0f} GB/s)", copy_gbps)
        print(f"wrote {stem}.png")
    return 1 if errors else 0


class _NoBar:
    def set_postfix_str(self, *a, **k): pass
    def update(self, *a): pass
    def close(self): pass


def _bar(total: int, quiet: bool):
    """tqdm on stderr (hidden when stderr is not a terminal, or with --quiet)."""
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="bench", unit="variant", leave=False, file=sys.stderr, disable=None)


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f}" if s < 1 else f"{s * 1e3:.0f}"


def render_table(rows, device) -> str:
    from .cli import format_table

    headers = ["set", "params", "opt", "impl", "median ms", "GB/s", "%copy", "host CPU ms", "x-ours", "bit-equal"]
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["set"], f"{r['params'] / 1e6:.1f}M", r["optimizer"], r["impl"], "ERROR", "-", "-", "-", "-",
                        "-"])
            continue
        if r["impl"].startswith("ours"):
            bit = "(ref)" if r["impl"] == "ours" else "-"
        else:
            bit = {True: "yes", False: "no"}.get(r.get("bit_equal"), "-")
        out.append([r["set"], f"{r['params'] / 1e6:.1f}M", r["optimizer"], r["impl"], _fmt_time(r["median_s"]),
                    f"{r['gbps']:.1f}", f"{r['pct_copy']:.0f}%", f"{r['host_cpu_s'] * 1e3:.3f}",
                    f"{r['ratio_vs_ours']:.2f}x" if "ratio_vs_ours" in r else "-", bit])
    return format_table(headers, out, align="<><<>>>>><")


def chart(rows, path: str, title: str, copy_gbps: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("AdamW", "SGD") if any(r["optimizer"] == k for r in rows)]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), max(3.0, 1.2 + 0.3 * len(sets) * len(impls))),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, kind in zip(axes[0], kinds):
        height = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            ys, xs = [], []
            for i, s in enumerate(sets):
                r = next((r for r in rows if r["set"] == s and r["optimizer"] == kind and r["impl"] == impl
                          and "gbps" in r), None)
                if r is not None:
                    ys.append(i + j * height)
                    xs.append(r["gbps"])
            ax.barh(ys, xs, height=height, color=cmap(j % 10), label=impl,
                    edgecolor="black" if impl.startswith("ours") else None)
        ax.axvline(copy_gbps, ls="--", color="0.3", lw=1, label="copy_ bandwidth")
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(sets))])
        ax.set_yticklabels(sets, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"GB/s ({BYTES_PER_PARAM[kind]} B/param / median step time)")
        ax.set_title(f"{kind}: one step", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(sub) -> None:
    s = sub.add_parser(
        "bench", help="time one optimizer step against torch.optim",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--sizes", choices=("tiny", "default", "full"), default="default",
                   help="tiny: seconds, for CI; default: the standard sets (gpt2 skipped on CPU); "
                        "full: every set the device can hold")
    s.add_argument("--out", default=os.path.join("benchmarks", "results"),
                   help="directory for <device>-<date>.json/.txt/.png (default benchmarks/results)")
    s.add_argument("--chart", action="store_true", help="also write a PNG chart")
    s.add_argument("--repeat", type=int, default=None, help="timed steps per variant (median reported)")
    s.add_argument("--warmup", type=int, default=None, help="untimed steps before timing")
    s.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the run (default: torch's choice)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_bench)


__all__ = ["add_parser", "cmd_bench", "gpt2_small_shapes", "resnet50_shapes", "param_sets"]
