"""Report helpers shared by the commands (``cli.py``, ``bench.py``): device names, plain-text and
Markdown tables, where results go, progress bars and matplotlib setup.

Results go to ``benchmarks/local/`` (git-ignored) unless ``--publish`` asks for ``benchmarks/results/``,
the folder whose files are committed and cited by the README.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys

import torch

LOCAL_DIR = os.path.join("benchmarks", "local")
PUBLISH_DIR = os.path.join("benchmarks", "results")


# ------------------------------------------------------------------ devices
def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    """'AMD EPYC 7B13 64-Core Processor' -> 'amd-epyc-7b13', for file names."""
    text = re.sub(r"\(r\)|\(tm\)|processor|cpu @.*$|\d+-core", "", text.lower())
    words = re.sub(r"[^a-z0-9]+", "-", text).strip("-").split("-")
    return "-".join(w for w in words if w)[:40].strip("-") or "device"


def device_slug(device: str) -> str:
    """File-name prefix for a device: the GPU's name, or 'cpu-' and the CPU's."""
    name = slug(device_name(device))
    return name if device == "cuda" else f"cpu-{name}"


def build_text(info: dict) -> str:
    """_ops.build_info() in words."""
    return f"CUDA kernels for {info['arch'] or '?'}" if info.get("cuda") else "CPU-only build"


# ------------------------------------------------------------------ tables
def format_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain-text table; align is one char per column ('<' or '>'), numbers right-aligned by default."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if align is None:
        align = "".join(">" if rows and all(_numberish(r[i]) for r in rows) else "<" for i in range(len(headers)))
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub Markdown table; align as in format_table ('>' right-aligns a column)."""
    align = align or "<" * len(headers)

    def cell(c) -> str:
        return "" if c is None else str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if a == ">" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _numberish(x) -> bool:
    if isinstance(x, (int, float)):
        return True
    s = str(x).rstrip("x%").replace(",", "")
    try:
        float(s)
        return True
    except ValueError:
        return s in ("-", "")


# ------------------------------------------------------------------ where results go
def add_output_args(parser: argparse.ArgumentParser, what: str) -> None:
    """--out / --publish, the same for every command that writes results."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--out", metavar="DIR", default=None,
                   help=f"directory for {what} (default {LOCAL_DIR}, which git ignores)")
    g.add_argument("--publish", action="store_true",
                   help=f"write to {PUBLISH_DIR} instead: results meant to be committed and cited")


def output_dir(args) -> str:
    return args.out or (PUBLISH_DIR if args.publish else LOCAL_DIR)


def result_stem(args, kind: str, device: str, tiny: bool = False) -> str:
    """<dir>/<kind>-<device>-<date>[-tiny]: one file family per command, device and day."""
    out = output_dir(args)
    os.makedirs(out, exist_ok=True)
    parts = [kind, device_slug(device), datetime.date.today().isoformat()] + (["tiny"] if tiny else [])
    return os.path.join(out, "-".join(p for p in parts if p))


def write_json(path: str, obj) -> None:
    """Pretty JSON; keys starting with '_' (in-memory extras such as curves) are left out."""
    def public(o):
        if isinstance(o, dict):
            return {k: public(v) for k, v in o.items() if not str(k).startswith("_")}
        if isinstance(o, (list, tuple)):
            return [public(v) for v in o]
        return o

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(public(obj), f, indent=2, default=str)
        f.write("\n")


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")


# ------------------------------------------------------------------ progress, plots
class _NoBar:
    def __init__(self, items=()):
        self._items = items

    def __iter__(self):
        return iter(self._items)

    def set_postfix_str(self, *a, **k):
        pass

    def update(self, *a):
        pass

    def close(self):
        pass


def progress(items=None, *, total: int | None = None, desc: str, quiet: bool = False):
    """tqdm on stderr, hidden when stderr is not a terminal, with --quiet, or without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar(items or ())
    if quiet:
        return _NoBar(items or ())
    return tqdm(items, total=total, desc=desc, leave=False, file=sys.stderr, disable=None)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["best_device", "device_name", "cpu_name", "slug", "device_slug", "build_text", "format_table",
           "markdown_table", "add_output_args", "output_dir", "result_stem", "write_json", "write_text", "progress",
           "pyplot", "LOCAL_DIR", "PUBLISH_DIR"]
