"""``python -m warmup_fused {info,verify,plot,bench}``: environment report, bit-exactness check, plots, benchmarks.

Run ``python -m warmup_fused <command> --help`` for each command's options.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import textwrap
import warnings

import torch

from . import _report
from ._report import best_device, device_name, format_table  # re-exported: shared with bench


# ------------------------------------------------------------------ helpers
def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance in units in the last place between float64 tensors (int64 bit views).

    Both are mapped to a monotone integer line (negative floats mirrored) and subtracted; -0.0 and
    +0.0 are 0 apart. NaN against anything but the identical NaN bits counts as 2**63 - 1."""
    def ordered(x):
        i = x.contiguous().view(torch.int64)
        return torch.where(i < 0, torch.iinfo(torch.int64).min - i, i)

    oa, ob = ordered(a.to(torch.float64)), ordered(b.to(torch.float64))
    # Subtract in float64-free int math, guarding overflow by saturating on opposite signs.
    same_sign = (oa >= 0) == (ob >= 0)
    diff = torch.where(same_sign, (oa - ob).abs(), torch.full_like(oa, torch.iinfo(torch.int64).max))
    opposite = ~same_sign
    if opposite.any():  # exact for moderate magnitudes, saturate otherwise
        big = torch.iinfo(torch.int64).max
        pa, pb = oa[opposite].abs(), ob[opposite].abs()
        ok = pa <= big - pb
        diff[opposite] = torch.where(ok, pa + pb, torch.full_like(pa, big))
    nan = torch.isnan(a) | torch.isnan(b)
    bits_differ = a.contiguous().view(torch.int64) != b.contiguous().view(torch.int64)
    diff = torch.where(nan & bits_differ, torch.full_like(diff, torch.iinfo(torch.int64).max), diff)
    return diff


# ------------------------------------------------------------------ info
def cmd_info(args) -> int:
    import warmup_fused
    from warmup_fused import _ops

    info = _ops.build_info()
    dev = best_device()
    lines = [
        ("warmup_fused", f"{warmup_fused.__version__} ({os.path.dirname(warmup_fused.__file__)})"),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU-only torch)"),
        ("CUDA kernels built", "yes" if info["cuda"] else "no (CPU-only build)"),
        ("CUDA archs built", info["arch"] or "-"),
        ("CUDA available", f"{torch.cuda.is_available()} ({torch.cuda.device_count()} device(s))"),
        ("device", f"{dev}: {device_name(dev)}"),
        ("CPU threads", str(torch.get_num_threads())),
        ("optimizers", ", ".join(n for n in ("AdamW", "Adam", "SGD") if hasattr(warmup_fused, n)) or "none yet"),
    ]
    if dev == "cuda":
        major, minor = torch.cuda.get_device_capability()
        lines.append(("device capability", f"sm_{major}{minor}"))
        if info["cuda"] and info["arch"]:
            built = {a.replace(".", "").replace("+PTX", "") for a in info["arch"].replace(",", ";").split(";") if a}
            if f"{major}{minor}" not in built and not any("PTX" in a for a in info["arch"].split(";")):
                lines.append(("warning", f"no kernel built for sm_{major}{minor}; rebuild with "
                                         f"TORCH_CUDA_ARCH_LIST={major}.{minor}"))
    if args.json:
        print(json.dumps(dict(lines), indent=2))
    else:
        width = max(len(k) for k, _ in lines)
        for k, v in lines:
            print(f"{k:<{width}}  {v}")
    return 0


# ------------------------------------------------------------------ verify
def verify_one(name: str, factory, steps: int, device: str, keep_curves: bool = False) -> dict:
    """Runs the reference loop and the converted schedule; returns one result row (with keep_curves, the
    float64 [groups, steps] LRs of the reference, ours and fast mode under ``_curves``, not saved to JSON)."""
    from warmup_fused import _reference

    row = {"schedule": name, "steps": steps, "groups": None, "mismatches": None, "max_ulp": None,
           "table_bytes": None, "device": device, "error": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case = _reference.case(factory(_reference.make_optimizer(), steps), steps)
            converted = case.convert()  # before the loop: it records from step 0
            # Fast mode: no tables, the device's own cos/pow/exp (its deviation is what we measure here).
            fast = case.convert(exact=False)
        ref = case.lrs()
        got = converted.lr_at(range(steps), device).cpu()
        if tuple(got.shape) != tuple(ref.shape):
            raise RuntimeError(f"shape {tuple(got.shape)} from lr_at, reference has {tuple(ref.shape)}")
        fast_lrs = fast.lr_at(range(steps), device).cpu()
        differ = ref.view(torch.int64) != got.view(torch.int64)
        row.update(groups=ref.shape[0], mismatches=int(differ.sum()),
                   max_ulp=int(ulp_distance(ref, got).max()) if ref.numel() else 0,
                   table_bytes=converted.table_bytes,
                   fast_max_ulp=int(ulp_distance(ref, fast_lrs).max()) if ref.numel() else 0)
        if row["mismatches"]:
            g, t = (int(i) for i in differ.nonzero()[0])
            row["first_mismatch"] = {"group": g, "step": t, "reference": ref[g, t].item(), "ours": got[g, t].item()}
        if keep_curves:
            row["_curves"] = {"reference": ref, "ours": got, "fast": fast_lrs}
    except Exception as exc:  # reported in the table, and the exit code is 1
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


VERIFY_HEADERS = ["schedule", "steps", "groups", "mismatches", "max ulp", "table bytes", "fast-mode max ulp",
                  "device"]


def _verify_table_rows(rows) -> list[list]:
    out = []
    for r in rows:
        if r["error"]:
            out.append([r["schedule"], r["steps"], "-", "ERROR", "-", "-", "-", r["device"]])
        else:
            ulp = r["max_ulp"] if r["max_ulp"] < 10**6 else f"{r['max_ulp']:.2e}"
            out.append([r["schedule"], r["steps"], r["groups"], r["mismatches"], ulp, f"{r['table_bytes']:,}",
                        r["fast_max_ulp"], r["device"]])
    return out


def cmd_verify(args) -> int:
    from warmup_fused import _reference

    device = args.device or best_device()
    entries: list[tuple[str, object]] = []
    skipped = []
    if not args.no_registry:
        for name, factory in _reference.registry().items():
            if args.only and not any(s in name for s in args.only):
                continue
            missing = _reference.missing_package(name)
            if missing:
                skipped.append(f"{name} ({missing} not installed)")
                continue
            entries.append((name, factory))
    for spec in args.scheduler or []:
        try:
            entries.append((spec, _reference.load_user_factory(spec)))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not entries:
        print("error: nothing to verify", file=sys.stderr)
        return 2

    rows = [verify_one(name, factory, args.steps, device, keep_curves=args.chart)
            for name, factory in _report.progress(entries, desc="verify", quiet=args.quiet)]
    print(format_table(VERIFY_HEADERS, _verify_table_rows(rows), align="<>>>>>><"))
    print("max ulp: exact mode (the default) against the reference; fast-mode max ulp: exact=False, where "
          "cos/pow/exp/log/tanh use the device's own math (informational, not part of pass/fail)")
    failed = [r for r in rows if r["error"] or r["mismatches"]]
    for r in failed:
        detail = r["error"] or "first mismatch: {first_mismatch}".format(**r)
        print(f"FAIL {r['schedule']}: {detail}")
    for s in skipped:
        print(f"skipped {s}")
    print(f"{len(rows) - len(failed)}/{len(rows)} schedules bit-exact over {args.steps} steps on "
          f"{device} ({device_name(device)})")

    result = {"device": device, "device_name": device_name(device), "torch": torch.__version__,
              "steps": args.steps, "results": rows, "skipped": skipped, "ok": not failed}
    stem = _report.result_stem(args, "verify", device)
    written = [stem + ".json", stem + ".md"]
    for path in [stem + ".json"] + ([args.json] if args.json else []):
        _report.write_json(path, result)
    if args.chart:
        verify_chart(rows, stem + ".png", f"{len(rows) - len(failed)}/{len(rows)} bit-exact over {args.steps} steps "
                                          f"on {device} ({device_name(device)})")
        written.append(stem + ".png")
    _report.write_text(stem + ".md", verify_markdown(result, stem))
    print("wrote " + ", ".join(written + ([args.json] if args.json else [])))
    return 1 if failed else 0


def verify_markdown(result: dict, stem: str) -> str:
    rows = result["results"]
    failed = [r for r in rows if r["error"] or r["mismatches"]]
    base = os.path.basename(stem)
    lines = [f"# warmup_fused verify: {result['device_name']}",
             "",
             f"torch {result['torch']}, {result['steps']} steps, LR of every param group at every step compared "
             f"bit for bit with the reference scheduler: **{len(rows) - len(failed)}/{len(rows)} bit-exact** on "
             f"{result['device']}. Fast mode (exact=False: the device's own cos/pow/exp/log/tanh, no tables) is "
             "informational.",
             "",
             _report.markdown_table(VERIFY_HEADERS[:-1], [r[:-1] for r in _verify_table_rows(rows)],
                                    align="<>>>>>>")]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {r['schedule']}: {r['error'] or r['first_mismatch']}" for r in failed]
    if result["skipped"]:
        lines += ["", "Skipped (package not installed): " + ", ".join(result["skipped"])]
    lines += ["", f"Data: `{base}.json`" + (f"; chart: `{base}.png`" if os.path.exists(stem + ".png") else "") + "."]
    return "\n".join(lines)


def _bucket_max(ulps: torch.Tensor, size: int) -> torch.Tensor:
    """Max over consecutive buckets of `size` steps (a single differing step stays visible), as float64."""
    pad = (-ulps.numel()) % size
    ulps = torch.cat([ulps, ulps.new_zeros(pad)]) if pad else ulps
    return ulps.view(-1, size).amax(1).clamp(max=2**53).double()


def verify_chart(rows, path: str, title: str, cols: int = 5) -> None:
    """One panel per reference, in a grid: its LR curves with ours drawn over them, and beneath, the
    per-step ulp difference (max over param groups) of exact mode and of fast mode."""
    plt = _report.pyplot()
    from matplotlib.lines import Line2D

    rows = [r for r in rows if "_curves" in r or r["error"]]
    cols = max(1, min(cols, len(rows)))
    nrows = math.ceil(len(rows) / cols)
    fig = plt.figure(figsize=(3.6 * cols, 3.1 * nrows + 0.8), layout="constrained")
    grid = fig.add_gridspec(nrows, cols)
    for k, r in enumerate(rows):
        cell = grid[k // cols, k % cols].subgridspec(2, 1, height_ratios=(3, 1.3), hspace=0.0)
        ax_lr = fig.add_subplot(cell[0])
        ax_ulp = fig.add_subplot(cell[1], sharex=ax_lr)
        ok = not r["error"] and not r["mismatches"]
        status = "ERROR" if r["error"] else ("bit-exact" if ok else
                                             f"{r['mismatches']} LR{'s differ' if r['mismatches'] > 1 else ' differs'}")
        ax_lr.set_title(f"{r['schedule']}\n{status}", fontsize=7.5, color="black" if ok else "crimson")
        ax_lr.tick_params(labelsize=6, labelbottom=False)
        ax_ulp.tick_params(labelsize=6)
        if r["error"]:
            ax_lr.text(0.5, 0.5, textwrap.fill(r["error"][:200], 45), ha="center", va="center", fontsize=6.5,
                       color="crimson", transform=ax_lr.transAxes)
            ax_lr.set_axis_off()
            ax_ulp.set_axis_off()
            continue
        curves = r["_curves"]
        n = curves["reference"].shape[1]
        stride = max(1, n // 1000)  # ~1000 points a line: as many as the panel has pixels
        steps = range(0, n, stride)
        for g in range(curves["reference"].shape[0]):
            color = f"C{g}"
            ax_lr.plot(steps, curves["reference"][g, ::stride].numpy(), color=color, lw=3.2, alpha=0.3)
            ax_lr.plot(steps, curves["ours"][g, ::stride].numpy(), color=color, lw=0.9, ls=(0, (4, 2)))
        ax_lr.yaxis.get_offset_text().set_fontsize(6)
        ax_lr.grid(alpha=0.25)
        fast, exact = (_bucket_max(ulp_distance(curves["reference"], curves[k]).amax(0), stride)
                       for k in ("fast", "ours"))
        ax_ulp.plot(steps, fast.numpy(), color="0.6", lw=0.7)
        ax_ulp.plot(steps, exact.numpy(), color="crimson" if exact.any() else "seagreen", lw=1.2)
        ax_ulp.set_yscale("symlog", linthresh=1.0)
        ax_ulp.set_ylim(-0.3, max(10.0, float(fast.max()) * 3, float(exact.max()) * 3))
        ax_ulp.grid(alpha=0.25)
        if k % cols == 0:
            ax_lr.set_ylabel("lr", fontsize=7)
            ax_ulp.set_ylabel("ulp", fontsize=7)
        if k // cols == nrows - 1 or k + cols >= len(rows):
            ax_ulp.set_xlabel("step", fontsize=7)
    legend = [Line2D([], [], color="C0", lw=3.2, alpha=0.3), Line2D([], [], color="C0", lw=0.9, ls=(0, (4, 2))),
              Line2D([], [], color="C1", lw=2), Line2D([], [], color="seagreen", lw=1.2),
              Line2D([], [], color="0.6", lw=0.7)]
    fig.legend(legend, ["reference scheduler (wide)", "warmup_fused (dashed, drawn over it)", "param group 2",
                        "ulp difference, exact mode (0 = bit-exact)", "ulp difference, fast mode (exact=False)"],
               loc="outside lower center", ncol=5 if cols >= 5 else 2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ plot
def _native_schedule(spec: str):
    """``warmup_cosine(warmup=100, total=1000, base_lr=3e-4)`` -> schedules.warmup_cosine(...)."""
    from warmup_fused import schedules

    try:
        node = ast.parse(spec, mode="eval").body
    except SyntaxError:
        return None
    if isinstance(node, ast.Name):
        fn_name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        fn_name = node.func.id
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError as exc:
            raise ValueError(f"--schedule {spec!r}: arguments must be literals ({exc})") from None
    else:
        return None
    if fn_name.startswith("_") or fn_name not in getattr(schedules, "__all__", ()) or fn_name in (
            "Schedule", "Recorded", "from_torch", "from_keras", "from_optax", "linear_scaling", "MAX_STEP"):
        return None
    return getattr(schedules, fn_name)(*args, **kwargs)


def resolve_schedule(spec: str, steps: int):
    """A registry name (exact or unique substring), a native constructor call, or module:factory."""
    from warmup_fused import _reference

    reg = _reference.registry()
    factory = reg.get(spec)
    if factory is None:
        hits = [n for n in reg if spec.lower() in n.lower()]
        if len(hits) == 1:
            spec, factory = hits[0], reg[hits[0]]
        elif len(hits) > 1 and ":" not in spec and "(" not in spec:
            raise ValueError(f"--schedule {spec!r} is ambiguous: {', '.join(hits)}")
    if factory is None and ":" in spec and "(" not in spec:
        factory = _reference.load_user_factory(spec)
    if factory is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spec, _reference.case(factory(_reference.make_optimizer(), steps), steps).convert()
    native = _native_schedule(spec)
    if native is None:
        raise ValueError(f"--schedule {spec!r}: not a registry name (see `verify --list`), a native constructor "
                         "call such as 'warmup_cosine(warmup=100, total=1000, base_lr=3e-4)', nor module:factory")
    return spec, native


def cmd_plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = args.schedule or ["transformers.cosine_with_warmup", "torch.SequentialLR(warmup+cosine)",
                              "torch.OneCycleLR"]
    try:
        resolved = [resolve_schedule(s, args.steps) for s in specs]
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(len(resolved), 1, figsize=(9, 2.6 * len(resolved)), squeeze=False)
    steps = torch.arange(args.steps, dtype=torch.int64)
    for ax, (label, sched) in zip(axes[:, 0], resolved):
        lrs = sched.lr_at(steps, args.device or "cpu").cpu()
        for g in range(lrs.shape[0]):
            ax.plot(steps.numpy(), lrs[g].numpy(), lw=1.4, label=f"group {g} (base {sched.base_lrs[g]:g})")
        boundaries = sorted({begin * sched.steps_per_epoch
                             for group in sched._phases for begin, _ in group
                             if 0 < begin * sched.steps_per_epoch < args.steps})
        for k, b in enumerate(boundaries):
            ax.axvline(b, ls="--", lw=0.9, color="0.45", label="phase begins" if k == 0 else None)
        ax.set_title(f"{label}  [{type(sched).__name__}: {sched.name}, {len(sched._phases[0])} phase(s), "
                     f"table {sched.table_bytes:,} B]", fontsize=9)
        ax.set_ylabel("lr")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    out = args.out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    print(f"wrote {out} ({len(resolved)} schedule(s), {args.steps} steps)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m warmup_fused",
        description="warmup_fused: fused optimizers that compute the warmup/decay LR on the device.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Commands:\n"
               "  info    versions, build (CUDA archs) and the device that would be used\n"
               "  verify  bit-for-bit check of from_torch against reference schedulers\n"
               "  plot    draw schedules with their phase boundaries to a PNG\n"
               "  bench   time one optimizer step against torch.optim (for-loop, foreach, fused)\n")
    sub = p.add_subparsers(dest="command", metavar="{info,verify,plot,bench}")
    sub.required = True

    s = sub.add_parser("info", help="versions, build info and device")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "verify", help="compare LR sequences bit for bit with reference schedulers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For every reference scheduler: convert it with from_torch(sched, horizon=N), run the "
                    "reference loop\n  for t in range(N): lr[g, t] = opt.param_groups[g]['lr']; opt.step(); "
                    "sched.step()\nand compare with Schedule.lr_at(range(N), device) bit for bit. "
                    "Exit code 1 if any LR differs\nor a conversion fails.",
        epilog="User schedulers: --scheduler package.module:factory, where\n"
               "    def factory(optimizer) -> torch.optim.lr_scheduler.LRScheduler\n"
               "or  def factory(optimizer, total_steps) -> LRScheduler\n"
               "returns a fresh, un-stepped scheduler for the given optimizer (an SGD with two param groups,\n"
               "base LRs 1e-3 and 3e-4). The module must be importable (PYTHONPATH).")
    s.add_argument("--steps", type=_positive_int, default=10000, help="steps compared (default 10000)")
    s.add_argument("--device", default=None, help="device for lr_at (default: cuda if available, else cpu)")
    s.add_argument("--scheduler", action="append", metavar="MODULE:FACTORY",
                   help="also verify a user scheduler (repeatable)")
    s.add_argument("--only", action="append", metavar="SUBSTRING",
                   help="only registry entries whose name contains SUBSTRING (repeatable)")
    s.add_argument("--no-registry", action="store_true", help="skip the built-in registry")
    s.add_argument("--list", action="store_true", help="list the registry and exit")
    s.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    _report.add_output_args(s, "verify-<device>-<date>.json/.md/.png")
    s.add_argument("--chart", action="store_true",
                   help="also draw each reference's LR curve with ours over it and the per-step ulp difference")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser(
        "plot", help="draw schedules with phase boundaries to a PNG",
        description="SCHEDULE is a registry name or a unique part of one (see `verify --list`), a native "
                    "constructor call\nsuch as \"warmup_cosine(warmup=100, total=1000, base_lr=3e-4)\", or "
                    "package.module:factory.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--schedule", action="append", metavar="SCHEDULE", help="schedule to draw (repeatable)")
    s.add_argument("--steps", type=_positive_int, default=1000, help="steps drawn (default 1000)")
    s.add_argument("--device", default=None, help="device for lr_at (default cpu)")
    s.add_argument("--out", default=os.path.join(_report.LOCAL_DIR, "schedules.png"),
                   help=f"PNG path (default {_report.LOCAL_DIR}/schedules.png)")
    s.add_argument("--dpi", type=int, default=110)
    s.set_defaults(func=cmd_plot)

    from . import bench

    bench.add_parser(sub)
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "list", False):
        from warmup_fused import _reference

        for name in _reference.registry():
            missing = _reference.missing_package(name)
            print(name + (f"  ({missing} not installed)" if missing else ""))
        return 0
    return int(args.func(args) or 0)


__all__ = ["main", "ulp_distance", "format_table", "verify_one", "resolve_schedule", "best_device",
           "device_name"]
