"""``./run gpu``: everything CUDA in one command, for a GPU machine with no network.

    WARMUP_FUSED_PYTHON=python3 ./run gpu      # results in benchmarks/results/gpu-<date>/, summary.md at the end
    ./run gpu --dry-run                        # the plan: stages, commands, time limits; runs nothing
    python benchmarks/gpu_run.py --device cpu --skip build,tests --out /tmp/x   # CPU-capable stages, tiny

It installs nothing: the given Python's torch is used as it is. Stages run with their own time limit, so a
hang costs one stage and not the run; a failing stage is reported and the next still runs (stages after a
failed build are skipped, saying so). Tests and the sanitizer lane share the machine (they are not
timings); bench runs alone at the end. The worst case, every stage at its limit, stays within 9 minutes.

  build      setup.py build_ext --inplace for the local GPU (TORCH_CUDA_ARCH_LIST = its capability)
  info       python -m warmup_fused info --json: what was built, for which arch, on which device
  tests      the whole suite with the CUDA-marked tests (pytest -m ""), JUnit XML + log
  smoke      benchmarks/gpu_smoke.py: a few steps of every optimizer path, dtype, GradScaler, graph replay
  memcheck   compute-sanitizer --tool memcheck on the smoke run (caching allocator off: exact bounds)
  racecheck  compute-sanitizer --tool racecheck on the smoke run
  verify     python -m warmup_fused verify --device cuda --chart (exact mode, and fast mode's ulps)
  bench      python -m warmup_fused bench --device cuda --chart

Exit status 1 if any stage failed or ran out of time.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = 540  # 9 minutes on one H100, every stage at its limit


@dataclass
class Stage:
    name: str
    what: str
    argv: list
    limit_s: int
    env: dict = field(default_factory=dict)
    skip: str | None = None        # decided before running: the reason
    needs_build: bool = True
    status: str = "pending"        # ok, FAILED, TIMEOUT, skipped
    seconds: float = 0.0
    rc: int | None = None
    detail: str = ""


def sanitizer() -> str | None:
    """compute-sanitizer on PATH or in the CUDA toolkit."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for path in (shutil.which("compute-sanitizer"), os.path.join(home, "bin", "compute-sanitizer"),
                 os.path.join(home, "compute-sanitizer", "compute-sanitizer")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def plan(args) -> list[list[list[Stage]]]:
    """Phases run one after another; the lanes of a phase run side by side; a lane's stages in order."""
    py, out, cuda = args.python, args.out, args.device == "cuda"
    tiny = [] if cuda else ["--steps", "300"]
    cli = [py, "-m", "warmup_fused"]
    san = sanitizer()
    no_san = None if san else "compute-sanitizer not found on PATH nor in $CUDA_HOME/bin"
    if not cuda:
        no_san = "--device cpu: compute-sanitizer checks CUDA kernels only"
    smoke = [py, os.path.join("benchmarks", "gpu_smoke.py"), "--device", args.device]
    stages = {
        "build": Stage("build", "compile the extension for the local GPU",
                       [py, "setup.py", "-q", "build_ext", "--inplace"], 180, needs_build=False,
                       env={"MAX_JOBS": str(os.cpu_count() or 4),
                            "CUDA_HOME": os.environ.get("CUDA_HOME", "/usr/local/cuda")}),
        "info": Stage("info", "what was built, for which arch", cli + ["info", "--json"], 20),
        "tests": Stage("tests", "the whole test suite, CUDA-marked tests included",
                       [py, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider",
                        "--junitxml", os.path.join(out, "tests.xml")], 150),
        "smoke": Stage("smoke", "every optimizer path, a few steps", smoke, 20),
        "memcheck": Stage("memcheck", "compute-sanitizer memcheck on the smoke run",
                          [san or "compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1"] + smoke, 50,
                          env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, skip=no_san),
        "racecheck": Stage("racecheck", "compute-sanitizer racecheck on the smoke run",
                           [san or "compute-sanitizer", "--tool", "racecheck", "--error-exitcode", "1"] + smoke, 50,
                           skip=no_san),
        "verify": Stage("verify", "LRs bit for bit against every reference, on the device",
                        cli + ["verify", "--device", args.device, "--chart", "--quiet", "--out", out] + tiny, 35),
        "bench": Stage("bench", "optimizer step against torch, interleaved rounds",
                       cli + ["bench", "--device", args.device, "--chart", "--quiet", "--out", out]
                       + ([] if cuda else ["--sizes", "tiny", "--only", "tiny-mixed", "--rounds", "3"]), 170),
    }
    for name in args.skip:
        stages[name].skip = f"--skip {name}"
    s = stages
    return [[[s["build"], s["info"]]],
            [[s["tests"]], [s["smoke"], s["memcheck"], s["racecheck"], s["verify"]]],
            [[s["bench"]]]]


def worst_case_s(phases) -> int:
    return sum(max(sum(st.limit_s for st in lane) for lane in phase) for phase in phases)


# ------------------------------------------------------------------ running
class Runner:
    def __init__(self, out: str):
        self.out, self.t0, self.lock = out, time.monotonic(), threading.Lock()
        self.built = True

    def say(self, text: str) -> None:
        with self.lock:
            print(f"[gpu {time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def run(self, st: Stage) -> None:
        if st.skip is None and st.needs_build and not self.built:
            st.skip = "the build failed"
        if st.skip:
            st.status = "skipped"
            self.say(f"- {st.name}: skipped ({st.skip})")
            return
        self.say(f"> {st.name}: {st.what} (limit {st.limit_s} s)")
        env = dict(os.environ, **st.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
        log_path = os.path.join(self.out, f"{st.name}.log")
        t = time.monotonic()
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(st.argv) + "\n")
            log.flush()
            try:
                proc = subprocess.Popen(st.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own group: a timeout ends its children too
            except OSError as exc:
                st.status, st.detail = "FAILED", f"could not start: {exc}"
                self.say(f"x {st.name}: {st.detail}")
                return
            try:
                st.rc = proc.wait(timeout=st.limit_s)
                st.status = "ok" if st.rc == 0 else "FAILED"
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                st.status = "TIMEOUT"
        st.seconds = time.monotonic() - t
        st.detail = describe(st, self.out)
        if st.name == "build" and st.status != "ok":
            self.built = False
        self.say(f"{'=' if st.status == 'ok' else 'x'} {st.name}: {st.status} in {st.seconds:.0f} s"
                 + (f": {st.detail}" if st.detail else "") + f" (log: {_short(log_path)})")

    def run_lane(self, lane) -> None:
        for st in lane:
            self.run(st)

    def run_phases(self, phases) -> None:
        for phase in phases:
            threads = [threading.Thread(target=self.run_lane, args=(lane,)) for lane in phase]
            for th in threads:
                th.start()
            for th in threads:
                th.join()


def _kill_group(proc) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------------ what each stage found
def describe(st: Stage, out: str) -> str:
    """One line of what a stage found, from its log and files."""
    log = _read(os.path.join(out, f"{st.name}.log"))
    if st.status == "TIMEOUT":
        return f"stopped at its {st.limit_s} s limit"
    if st.name == "tests":
        return junit_summary(os.path.join(out, "tests.xml")) or _last_line(log)
    if st.name in ("memcheck", "racecheck"):
        found = re.findall(r"(ERROR|RACECHECK) SUMMARY: (.*)", log)
        return found[-1][1].strip() if found else _last_line(log)
    if st.name == "info":
        try:
            info = json.loads(log.split("\n", 1)[1])
            return (f"CUDA kernels: {info.get('CUDA kernels built')}, archs {info.get('CUDA archs built')}; "
                    f"{info.get('device')}")
        except (ValueError, IndexError):
            return _last_line(log)
    if st.name == "verify":
        return verify_summary(out) or _last_line(log)
    if st.name == "bench":
        return "table: " + ", ".join(os.path.basename(p) for p in sorted(glob.glob(os.path.join(out, "bench-*.md"))))
    return _last_line(log) if st.status != "ok" or st.name == "smoke" else ""


def _short(path: str) -> str:
    """A path relative to the repository when inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def junit_summary(path: str, top: int = 4) -> str:
    """'N passed, N failed, N errors, N skipped' plus the commonest skip reasons, from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return ""
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    reasons = collections.Counter((sk.get("message") or "").strip()[:90] for case in root.iter("testcase")
                                  for sk in case.findall("skipped"))
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    text = f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"
    if reasons:
        text += "; skipped: " + "; ".join(f"{c} x {r}" for r, c in reasons.most_common(top))
    return text


def verify_summary(out: str) -> str:
    paths = sorted(glob.glob(os.path.join(out, "verify-*.json")))
    if not paths:
        return ""
    data = json.loads(_read(paths[-1]))
    rows = data["results"]
    ok = [r for r in rows if not r["error"] and not r["mismatches"]]
    fast = max((r for r in rows if r.get("fast_max_ulp") is not None), key=lambda r: r["fast_max_ulp"], default=None)
    text = f"{len(ok)}/{len(rows)} bit-exact over {data['steps']} steps on {data['device']}"
    if fast is not None:
        text += f"; fast mode max {fast['fast_max_ulp']} ulp ({fast['schedule']})"
    if data.get("skipped"):
        text += f"; skipped (not installed): {', '.join(data['skipped'])}"
    return text


def summary(phases, args, elapsed: float) -> str:
    stages = [st for phase in phases for lane in phase for st in lane]
    failed = [st for st in stages if st.status in ("FAILED", "TIMEOUT")]
    lines = [f"# ./run gpu: {args.gpu_name}, {datetime.date.today().isoformat()}",
             "",
             f"python {platform.python_version()}, torch {args.torch}; {elapsed:.0f} s in all "
             f"(limit {BUDGET_S} s); results in `{_short(args.out)}/`.",
             "",
             "| stage | result | time | what it found |",
             "|---|---|---:|---|"]
    for st in stages:
        found = st.skip if st.status == "skipped" else st.detail
        lines.append(f"| {st.name} | {st.status} | {st.seconds:.0f} s | {found.replace('|', '/')} |")
    bench_json = sorted(glob.glob(os.path.join(args.out, "bench-*.json")))
    if bench_json:
        try:
            sys.path.insert(0, ROOT)
            from warmup_fused import bench

            lines += ["", bench.headline_markdown(json.loads(_read(bench_json[-1])))]
        except Exception as exc:  # the table is a convenience; the stage result above stands
            lines += ["", f"(bench table not rendered: {type(exc).__name__}: {exc})"]
    lines += ["", f"**{len(failed)} stage(s) failed**: {', '.join(st.name for st in failed)}." if failed
              else "**All stages that ran passed.**"]
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def probe(python: str) -> dict:
    """torch version and device name from the Python that runs the stages (nothing imported here)."""
    code = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), "
            "'name': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}))")
    try:
        return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                                         check=True).stdout)
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        return {"torch": f"not importable ({exc})", "cuda": False, "name": "unknown"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=os.environ.get("WARMUP_FUSED_PYTHON") or sys.executable,
                    help="the Python whose torch is used (default $WARMUP_FUSED_PYTHON, else this one)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/gpu-<date>)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: run the stages that work without a GPU, at tiny sizes (to test this script)")
    ap.add_argument("--skip", type=lambda t: [s for s in t.split(",") if s], default=[],
                    metavar="STAGE,...", help="stages to skip, e.g. build,tests")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    args.out = os.path.abspath(args.out or os.path.join(ROOT, "benchmarks", "results",
                                                        f"gpu-{datetime.date.today().isoformat()}"))
    phases = plan(args)
    known = {st.name for phase in phases for lane in phase for st in lane}
    if set(args.skip) - known:
        ap.error(f"--skip: unknown stage(s) {sorted(set(args.skip) - known)}; stages: {sorted(known)}")
    if args.dry_run:
        print(f"./run gpu plan: python {args.python}, results in {args.out}")
        for k, phase in enumerate(phases, 1):
            print(f"phase {k}" + (" (lanes side by side)" if len(phase) > 1 else ""))
            for lane in phase:
                for st in lane:
                    state = f"skip: {st.skip}" if st.skip else f"limit {st.limit_s:>3} s"
                    print(f"  {st.name:<10} {state:<16} {shlex.join(st.argv)}")
        print(f"worst case {worst_case_s(phases)} s (budget {BUDGET_S} s)")
        return 0
    env = probe(args.python)
    args.torch, args.gpu_name = env["torch"], env["name"]
    if args.device == "cuda" and not env["cuda"]:
        print(f"error: no CUDA device visible to {args.python} (torch {env['torch']}). `./run gpu --dry-run` "
              "shows the plan; --device cpu runs the stages that work without a GPU.", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    smi = shutil.which("nvidia-smi")
    with open(os.path.join(args.out, "env.txt"), "w") as f:
        f.write(f"python {args.python} {platform.python_version()}\ntorch {env['torch']}\ndevice {env['name']}\n")
        if smi:
            f.write(subprocess.run([smi], capture_output=True, text=True).stdout)
    runner = Runner(args.out)
    runner.say(f"./run gpu on {env['name']}, torch {env['torch']}: results in {args.out} "
               f"(worst case {worst_case_s(phases)} s)")
    runner.run_phases(phases)
    text = summary(phases, args, time.monotonic() - runner.t0)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    print("\n" + text)
    stages = [st for phase in phases for lane in phase for st in lane]
    return 1 if any(st.status in ("FAILED", "TIMEOUT") for st in stages) else 0


if __name__ == "__main__":
    sys.exit(main())
