"""`python -m warmup_fused {info,verify,plot,bench}` at tiny sizes: exit codes, JSON, PNGs. No timing asserts."""
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, extra_path=None, timeout=240):
    env = dict(os.environ)
    paths = [ROOT] + ([str(extra_path)] if extra_path else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-m", "warmup_fused", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc


def run_main(capsys, *args):
    """In-process: cli.main(args) -> (exit code, stdout, stderr); saves a Python start per call."""
    from warmup_fused.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


# ------------------------------------------------------------------ in-process units
def test_ulp_distance():
    from warmup_fused.cli import ulp_distance

    a = torch.tensor([1.0, 0.0, -5e-324, 2.0, 1e-3], dtype=torch.float64)
    b = torch.tensor([math.nextafter(1.0, 2.0), -0.0, 5e-324, 2.0, math.nextafter(math.nextafter(1e-3, 0), 0)],
                     dtype=torch.float64)
    assert ulp_distance(a, b).tolist() == [1, 0, 2, 0, 2]


def test_parameter_set_shapes():
    from warmup_fused.bench import gpt2_small_shapes, resnet50_shapes

    def count(shapes):
        return sum(math.prod(s) for s in shapes)

    assert (count(resnet50_shapes()), len(resnet50_shapes())) == (25_557_032, 161)
    assert (count(gpt2_small_shapes()), len(gpt2_small_shapes())) == (124_439_808, 148)


def test_registry_names_are_unique_and_loadable():
    from warmup_fused import _reference

    reg = _reference.registry()
    assert len(reg) >= 20
    assert any(n.startswith("transformers.") for n in reg) and any(n.startswith("torch.") for n in reg)
    with pytest.raises(ValueError, match="module:factory"):
        _reference.load_user_factory("no_colon_here")


# ------------------------------------------------------------------ commands
def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(capsys, "--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "verify", "plot", "bench"):
        assert cmd in out


def test_info():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    assert torch.__version__ in proc.stdout and "CUDA kernels built" in proc.stdout


def test_info_json(capsys):
    code, out, _ = run_main(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert {"warmup_fused", "torch", "torch CUDA", "CUDA kernels built", "device"} <= set(info)


def test_verify_registry(tmp_path):
    out = tmp_path / "verify.json"
    proc = run_cli("verify", "--steps", "200", "--quiet", "--device", "cpu", "--json", str(out), "--out", str(tmp_path))
    assert "schedule" in proc.stdout and "max ulp" in proc.stdout and "table bytes" in proc.stdout
    assert "transformers.cosine_with_warmup" in proc.stdout and "torch.OneCycleLR" in proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["steps"] == 200
    assert len(data["results"]) >= 20
    for row in data["results"]:
        assert row["error"] is None and row["mismatches"] == 0 and row["max_ulp"] == 0
        assert row["groups"] == (1 if row["schedule"].startswith(("keras.", "optax.")) else 2)  # absolute LRs


def test_verify_user_scheduler(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_scheds.py").write_text(textwrap.dedent("""
        import math
        from torch.optim import lr_scheduler as lrs

        def step_lr(optimizer):
            return lrs.StepLR(optimizer, step_size=7, gamma=0.5)

        def warm_cos(optimizer, total_steps):
            w = 10
            f = lambda t: (t + 1) / w if t < w else 0.5 * (1 + math.cos(math.pi * (t - w) / (total_steps - w)))
            return lrs.LambdaLR(optimizer, f)

        def plateau(optimizer):
            return lrs.ReduceLROnPlateau(optimizer)
    """))
    out = tmp_path / "v.json"
    # Through `python -m` with the module found on PYTHONPATH, as a user would run it.
    proc = run_cli("verify", "--no-registry", "--steps", "200", "--quiet", "--json", str(out), "--out", str(tmp_path),
                   "--scheduler", "my_scheds:step_lr", "--scheduler", "my_scheds:warm_cos", extra_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "my_scheds:step_lr" in proc.stdout and "my_scheds:warm_cos" in proc.stdout
    rows = json.loads(out.read_text())["results"]
    assert [r["mismatches"] for r in rows] == [0, 0]

    # A scheduler from_torch refuses is a failure (exit 1), reported in the table.
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run_main(capsys, "verify", "--no-registry", "--steps", "50", "--quiet", "--out", str(tmp_path),
                            "--scheduler", "my_scheds:plateau")
    assert code == 1
    assert "ERROR" in out and "ReduceLROnPlateau" in out

    code, _, err = run_main(capsys, "verify", "--no-registry", "--scheduler", "my_scheds:nope")
    assert code == 2 and "no attribute" in err


def test_plot(tmp_path, capsys):
    out = tmp_path / "sched.png"
    code, _, err = run_main(capsys, "plot", "--steps", "300", "--out", str(out),
                            "--schedule", "transformers.cosine_with_warmup",
                            "--schedule", "torch.SequentialLR(warmup+cosine)")
    assert code == 0, err
    assert_png(out)


def test_plot_native_constructor(tmp_path, capsys):
    from warmup_fused import schedules

    if "warmup_cosine" not in getattr(schedules, "__all__", ()):
        pytest.skip("native constructors not available")
    out = tmp_path / "native.png"
    code, _, err = run_main(capsys, "plot", "--steps", "300", "--out", str(out),
                            "--schedule", "warmup_cosine(300, warmup=30, base_lr=3e-4)")
    assert code == 0, err
    assert_png(out)
    code, _, err = run_main(capsys, "plot", "--out", str(out), "--schedule", "no_such_schedule")
    assert code == 2 and "no_such_schedule" in err


def test_bench_tiny(tmp_path):
    proc = run_cli("bench", "--sizes", "tiny", "--device", "cpu", "--out", str(tmp_path), "--chart",
                   "--rounds", "3", "--steps", "1", "--warmup", "1", "--threads", "1", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for col in ("ms/step", "host ms", "B/param", "GB/s", "x-ours [IQR]", "verdict", "bit-equal"):
        assert col in proc.stdout
    jsons = list(tmp_path.glob("bench-cpu-*-tiny.json"))
    assert len(jsons) == 1
    data = json.loads(jsons[0].read_text())
    assert {"env", "config", "copy_bandwidth_gbps", "results", "notes", "ours_available"} <= set(data)
    assert {"torch", "device", "device_name", "threads", "build_info"} <= set(data["env"])
    assert data["env"]["threads"] == 1 and data["config"]["rounds"] == 3
    rows = data["results"]
    assert rows and all("error" not in r for r in rows)
    assert {r["set"] for r in rows} == {"tiny-mixed", "150 tiny tensors (host overhead)"}
    for r in rows:
        assert {"set", "params", "tensors", "optimizer", "impl", "mode", "median_s", "gbps", "pct_copy",
                "host_cpu_s", "rounds_s", "rounds_host_s", "outlier_rounds"} <= set(r)
        assert r["median_s"] > 0 and len(r["rounds_s"]) == 3 and len(r["rounds_host_s"]) == 3
    host = [r for r in rows if r["set"].startswith("150 tiny")]
    assert host[0]["tensors"] == 150 and 150 <= host[0]["params"] <= 150 * 64
    impls = {r["impl"] for r in rows}
    assert {"torch-forloop", "torch-foreach", "torch-fused"} <= impls
    assert "torch-compiled" not in impls  # --compile-peer auto leaves it out at tiny sizes
    if data["ours_available"]:
        assert {"ours", "ours-constlr"} <= impls
        for r in (r for r in rows if r["base"] is not None):
            assert set(r["ratio"]) >= {"median", "q1", "q3", "rounds", "dropped_rounds", "verdict"}
            assert r["ratio"]["q1"] <= r["ratio"]["median"] <= r["ratio"]["q3"]
            assert r["impl"] == "ours-constlr" or isinstance(r["bit_equal"], bool)
        assert any(n.startswith("host overhead, AdamW on 150 tiny tensors") for n in data["notes"])
        _check_low_precision_rows(rows, proc.stdout, jsons[0].with_suffix(".md").read_text())
    assert jsons[0].with_suffix(".txt").read_text().count("\n") > 5
    md = jsons[0].with_suffix(".md").read_text()
    assert md.startswith("# warmup_fused bench") and "| tiny-mixed | AdamW |" in md and "## Notes" in md
    assert_png(jsons[0].with_suffix(".png"))


# The low-precision and clipping rows (issue 11): impl -> (optimizers, its ours row, B/param per optimizer).
LOW_PRECISION_ROWS = {
    "ours-bf16": (("AdamW",), None, {"AdamW": 14}),
    "ours-bf16+master": (("AdamW",), None, {"AdamW": 28}),
    "torch-fused-bf16": (("AdamW",), "ours-bf16", {"AdamW": 14}),
    "torch-fused-fp32master": (("AdamW",), "ours-bf16+master", {"AdamW": 40}),
    "ours+clip": (("AdamW", "SGD"), None, {"AdamW": 32, "SGD": 24}),
    "torch-clip+fused": (("AdamW", "SGD"), "ours+clip", {"AdamW": 40, "SGD": 32}),
}
BITWISE_REFERENCES = ("torch-fused-fp32master", "torch-clip+fused")  # a torch recipe ours must equal bit for bit


def _check_low_precision_rows(rows, text, md):
    """On tiny-mixed: every row, its bytes, its ratio against its own ours row (recomputed from the rounds), bit
    equality with the recipes that are bitwise references; the text table and the Markdown show them."""
    from warmup_fused.bench import ratio_stats

    by = {(r["optimizer"], r["impl"]): r for r in rows if r["set"] == "tiny-mixed"}
    for impl, (kinds, base, nbytes) in LOW_PRECISION_ROWS.items():
        for kind in kinds:
            r = by[(kind, impl)]
            assert r["base"] == base and r["bytes_per_param"] == nbytes[kind], (kind, impl)
            assert r["gbps"] == pytest.approx(nbytes[kind] * r["params"] / r["median_s"] / 1e9)
            assert re.search(rf"^tiny-mixed +{kind} +{re.escape(impl)} +[\d.]+ +[\d.]+ +{nbytes[kind]} ", text, re.M)
            if base is None:
                continue
            assert r["ratio"] == ratio_stats(r["rounds_s"], by[(kind, base)]["rounds_s"]), (kind, impl)
            if impl in BITWISE_REFERENCES:
                assert r["bit_equal"] is True, (kind, impl)
                line = next(x for x in md.splitlines()
                            if x.startswith(f"| tiny-mixed | {kind} | {base} |") and f"| {impl} |" in x)
                assert line.endswith("| yes |") and f"| {nbytes[kind]} |" in line
    assert "torch-fused-fp32master AdamW 40 B/param: upcast g" in md


def test_bench_compile_peer(tmp_path):
    """torch's compiled-optimizer recipe runs as a peer: compiled before timing, compile time reported."""
    proc = run_cli("bench", "--sizes", "tiny", "--device", "cpu", "--out", str(tmp_path), "--only", "tiny-mixed",
                   "--optimizers", "SGD", "--compile-peer", "all", "--rounds", "2", "--steps", "1", "--warmup", "2",
                   "--threads", "1", "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    row = next(r for r in data["results"] if r["impl"] == "torch-compiled")
    assert "error" not in row and row["compile_s"] > 0 and len(row["rounds_s"]) == 2
    assert any("torch-compiled compile time" in n for n in data["notes"])
    if data["ours_available"]:
        assert row["ratio"]["rounds"] == 2 and isinstance(row["bit_equal"], bool)


# ------------------------------------------------------------------ ratio statistics (synthetic timings)
def test_bit_equal_compares_params_and_states():
    from types import SimpleNamespace

    from warmup_fused.bench import _bits_equal

    def contestant(params, bufs):
        return SimpleNamespace(params=params, states=lambda: [{"step": torch.tensor(3.0), "momentum_buffer": b}
                                                              for b in bufs])

    ps, bufs = [torch.randn(5), torch.randn(7)], [torch.randn(5), torch.randn(7)]
    a = contestant(ps, bufs)
    assert _bits_equal(a, contestant([p.clone() for p in ps], [b.clone() for b in bufs]))
    off = [b.clone() for b in bufs]
    off[1][6] = torch.nextafter(off[1][6], torch.tensor(math.inf))
    assert not _bits_equal(a, contestant([p.clone() for p in ps], off))  # a state one float32 ulp off
    flipped = [p.clone() for p in ps]
    flipped[0][0] = -flipped[0][0]
    assert not _bits_equal(a, contestant(flipped, [b.clone() for b in bufs]))  # a param with the other sign


def _contestants(impls, kind, shapes=((300,), (7, 5), (1000,))):
    from warmup_fused import bench

    gen = torch.Generator().manual_seed(4)
    ps = [torch.randn(s, generator=gen).to(bench._dtype(impls)) for s in shapes]
    gs = [torch.randn(s, generator=gen).mul_(1e-1).to(bench._dtype(impls)) for s in shapes]
    sched = bench.our_schedule(*bench.SCHEDULE)
    return ps, gs, [bench.Contestant(i, kind, ps, gs, "cpu", sched, bench._writes_grads(impls)) for i in impls]


@pytest.mark.parametrize("kind,impls", [("AdamW", ("ours-bf16+master", "torch-fused-fp32master")),
                                        ("AdamW", ("ours+clip", "torch-clip+fused")),
                                        ("SGD", ("ours+clip", "torch-clip+fused"))])
def test_bit_equal_of_the_low_precision_recipes_counts_masters_and_clipped_steps(kind, impls):
    """The bench's contestants themselves: equal after several steps (the clip run's grads restored before each),
    the master recipe's float32 copy compared with ours' master (one float32 ulp off is caught although the bf16
    params agree), and the clip recipe really clipping (its grads scaled in place, restored by before_step)."""
    from warmup_fused.bench import _bits_equal

    ps, gs, (ours, ref) = _contestants(impls, kind)
    ours.warm_up(2)
    ref.warm_up(1)
    assert not _bits_equal(ours, ref)  # a step apart
    for _ in range(2):
        ref.time_round(1)
    ours.time_round(1)
    assert _bits_equal(ours, ref)
    assert all(torch.equal(p.grad, g) for p, g in zip(ours.params, gs))  # ours never writes grads
    if ref.masters is not None:
        m = ref.masters[1]
        m.view(-1)[3] = torch.nextafter(m.view(-1)[3], torch.tensor(math.inf))
        assert torch.equal(ref.params[1], m.to(torch.bfloat16)) and not _bits_equal(ours, ref)
    else:
        assert not all(torch.equal(p.grad, g) for p, g in zip(ref.params, gs))  # clip_grad_norm_ scaled them
        ref.before_step()
        assert all(torch.equal(p.grad, g) for p, g in zip(ref.params, gs))


@pytest.mark.parametrize("kind", ["AdamW", "SGD"])
def test_resident_bytes_count_what_the_contestants_hold(kind):
    """The 1B set's runs are sized by resident_bytes: the drawn params and grads plus each contestant's params,
    states, master copies and their grads, own grads; counted here from the tensors each contestant holds."""
    from warmup_fused import bench

    runs = [["ours", "ours-constlr", "torch-fused"]] + bench.variant_runs(kind, True)
    for impls in runs:
        ps, gs, cs = _contestants(impls, kind)
        n = sum(p.numel() for p in ps)
        for c in cs:
            c.warm_up(1)
        seen, held = set(), 0
        for t in ps + gs + [t for c in cs for t in _held(c)]:
            if t.data_ptr() not in seen and t.numel() > 1:
                seen.add(t.data_ptr())
                held += t.numel() * t.element_size()
        assert held == n * bench.resident_bytes(impls, kind), impls


def _held(c):
    out = list(c.params) + [p.grad for p in c.params]
    for m in c.masters or []:
        out += [m, m.grad]
    for st in c.states():
        out += [v for v in st.values() if torch.is_tensor(v)]
    return out


def test_quartiles_inclusive():
    from warmup_fused.bench import quartiles

    assert quartiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (2.0, 3.0, 4.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0]) == (1.75, 2.5, 3.25)
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)


def test_ratio_stats_verdicts():
    from warmup_fused.bench import PARITY, ratio_stats

    ours = [0.010, 0.011, 0.009, 0.010, 0.012]
    # Ratios 1.1, 1.2, 1.3, 1.2, 1.25: sorted 1.1 1.2 1.2 1.25 1.3 -> q1 1.2, median 1.2, q3 1.25.
    faster = ratio_stats([o * k for o, k in zip(ours, (1.1, 1.2, 1.3, 1.2, 1.25))], ours)
    assert faster["verdict"] == "ours faster" and faster["rounds"] == 5 and faster["dropped_rounds"] == []
    assert faster["median"] == pytest.approx(1.2) and faster["q1"] == pytest.approx(1.2)
    assert faster["q3"] == pytest.approx(1.25)
    slower = ratio_stats([o * k for o, k in zip(ours, (0.8, 0.85, 0.9, 0.7, 0.8))], ours)
    assert slower["verdict"] == "ours slower" and slower["median"] == pytest.approx(0.8)
    # Ratios 0.95, 1.05, 0.97, 1.04, 1.0: the IQR [0.97, 1.04] contains 1.0.
    parity = ratio_stats([o * k for o, k in zip(ours, (0.95, 1.05, 0.97, 1.04, 1.0))], ours)
    assert parity["verdict"] == PARITY
    assert (parity["q1"], parity["q3"]) == (pytest.approx(0.97), pytest.approx(1.04))
    # A range touching 1.0 at its edge is still parity; just above is not.
    assert ratio_stats([1.0, 1.0, 1.1], [1.0, 1.0, 1.0])["verdict"] == PARITY
    assert ratio_stats([1.01, 1.02, 1.03], [1.0, 1.0, 1.0])["verdict"] == "ours faster"
    with pytest.raises(ValueError, match="paired"):
        ratio_stats([1.0, 2.0], [1.0])


def test_ratio_stats_outliers_are_reported_not_averaged():
    from warmup_fused.bench import outlier_rounds, ratio_stats, robust_median

    ours = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    peer = [2.0, 2.0, 100.0, 2.0, 2.0, 2.0]  # round 2: 50x the peer's median
    assert outlier_rounds(peer) == [2]
    assert outlier_rounds([1.0, 1.0, 10.0]) == []  # exactly 10x is not "more than 10x"
    st = ratio_stats(peer, ours)
    assert st["dropped_rounds"] == [2] and st["rounds"] == 5 and st["median"] == 2.0 and st["q3"] == 2.0
    assert robust_median(peer) == 2.0
    # An outlier on our side drops that round too (its ratio would be meaningless).
    st = ratio_stats([2.0, 2.0, 2.0, 2.0], [1.0, 30.0, 1.0, 1.0])
    assert st["dropped_rounds"] == [1] and st["median"] == 2.0


def _synthetic_result(notes=()):
    def row(impl, med, ratio=None, **kw):
        r = {"set": "16M in 50 tensors", "params": 16_000_000, "tensors": 50, "optimizer": "AdamW", "impl": impl,
             "mode": "eager", "median_s": med, "host_cpu_s": med, "gbps": 40.0, "pct_copy": 90.0, **kw}
        if ratio:
            r["ratio"] = dict(zip(("median", "q1", "q3"), ratio), rounds=9, dropped_rounds=[])
            from warmup_fused.bench import verdict

            r["ratio"]["verdict"] = verdict(ratio[1], ratio[2])
        return r

    rows = [row("ours", 0.0105), row("torch-fused", 0.0116, (1.1, 1.05, 1.15), bit_equal=True),
            row("torch-compiled", 0.0403, (3.84, 3.7, 3.9), bit_equal=False),
            row("torch-foreach", 0.05, (4.7, 4.5, 5.0), bit_equal=False),
            {"set": "16M in 50 tensors", "params": 16_000_000, "tensors": 50, "optimizer": "SGD", "impl": "ours",
             "mode": "eager", "median_s": 0.008, "host_cpu_s": 0.008, "gbps": 40.0, "pct_copy": 90.0},
            {"set": "16M in 50 tensors", "params": 16_000_000, "tensors": 50, "optimizer": "SGD",
             "impl": "torch-fused", "mode": "eager", "error": "RuntimeError: boom"}]
    return {"env": {"device_name": "Test CPU", "date": "2026-01-01T00:00:00", "torch": "2.14.1", "threads": 2,
                    "build_info": {"cuda": False, "arch": ""}},
            "config": {"rounds": 9, "steps_per_round": 2, "warmup": 3}, "notes": list(notes), "results": rows}


def test_bench_markdown_summary(tmp_path):
    from warmup_fused.bench import render_markdown

    md = render_markdown(_synthetic_result(["outlier: something slow"]), str(tmp_path / "bench-x"))
    lines = md.splitlines()
    assert lines[0] == "# warmup_fused bench: Test CPU"
    assert "| set | opt | ours ms | x torch-fused | x torch-compiled |" in lines
    assert "| 16M in 50 tensors | AdamW | 10.500 | 1.10x [1.05-1.15] faster | 3.84x [3.70-3.90] faster |" in lines
    assert "| 16M in 50 tensors | SGD | 8.000 | ERROR | - |" in lines
    assert "torch-foreach" not in md.split("## Notes")[0]  # the summary keeps to the headline peers
    assert "- outlier: something slow" in lines
    assert "`bench-x.json`" in md and "chart" not in md.split("## Notes")[1]  # no PNG written: none cited


def test_markdown_table_escapes_and_aligns():
    from warmup_fused._report import markdown_table

    assert markdown_table(["a", "b"], [["x|y", 1.5]], align="<>").splitlines() == [
        "| a | b |", "|---|---:|", "| x\\|y | 1.5 |"]


# ------------------------------------------------------------------ verify report, result folders
def test_verify_chart_and_markdown(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_sched.py").write_text(textwrap.dedent("""
        from torch.optim import lr_scheduler as lrs

        def plateau(optimizer):
            return lrs.ReduceLROnPlateau(optimizer)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_main(capsys, "verify", "--steps", "300", "--quiet", "--device", "cpu", "--chart",
                              "--out", str(tmp_path / "res"), "--only", "torch.StepLR",
                              "--only", "torch.OneCycleLR", "--scheduler", "bad_sched:plateau")
    assert code == 1, out + err  # the refused scheduler fails the run; its panel says so
    stem = next((tmp_path / "res").glob("verify-cpu-*.json")).with_suffix("")
    assert_png(stem.with_suffix(".png"))
    md = stem.with_suffix(".md").read_text()
    assert "**2/3 bit-exact**" in md and "| torch.StepLR | 300 | 2 | 0 | 0 |" in md
    assert "## Failures" in md and "ReduceLROnPlateau" in md
    data = json.loads(stem.with_suffix(".json").read_text())
    assert all("_curves" not in r for r in data["results"])  # plotted, not saved


def test_results_default_to_the_ignored_folder(tmp_path, monkeypatch, capsys):
    from warmup_fused._report import LOCAL_DIR, PUBLISH_DIR

    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "verify", "--steps", "50", "--quiet", "--device", "cpu", "--only", "torch.StepLR")
    assert code == 0, err
    local = list((tmp_path / LOCAL_DIR).glob("verify-cpu-*"))
    assert {p.suffix for p in local} == {".json", ".md"}
    code, _, err = run_main(capsys, "verify", "--steps", "50", "--quiet", "--device", "cpu", "--only", "torch.StepLR",
                            "--publish")
    assert code == 0, err
    assert {p.suffix for p in (tmp_path / PUBLISH_DIR).glob("verify-cpu-*")} == {".json", ".md"}
    # In the repository, git ignores the local folder and keeps the published one.
    name = local[0].name
    for ignored in (os.path.join(LOCAL_DIR, name), os.path.join(LOCAL_DIR, "x.png")):
        assert subprocess.run(["git", "check-ignore", "-q", ignored], cwd=ROOT).returncode == 0, ignored
    for kept in (os.path.join(PUBLISH_DIR, name), os.path.join(PUBLISH_DIR, "gpu-2026-01-01", "bench-x.png")):
        assert subprocess.run(["git", "check-ignore", "-q", kept], cwd=ROOT).returncode == 1, kept


# ------------------------------------------------------------------ ./run and ./run gpu
def _gpu_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_run", os.path.join(ROOT, "benchmarks", "gpu_run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_run_gpu_dry_run_fits_the_budget():
    env = dict(os.environ, WARMUP_FUSED_PYTHON=sys.executable)
    proc = subprocess.run([os.path.join(ROOT, "run"), "gpu", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("build", "info", "tests", "smoke", "memcheck", "racecheck", "verify", "bench"):
        assert f"  {stage} " in proc.stdout
    assert "pytest -q -m ''" in proc.stdout and "--tool racecheck" in proc.stdout
    gpu_run = _gpu_run()
    worst = int(re.search(r"worst case (\d+) s", proc.stdout).group(1))
    assert worst <= gpu_run.BUDGET_S <= 540


def test_run_gpu_stages_time_out_fail_and_go_on(tmp_path):
    gpu_run = _gpu_run()
    py = sys.executable
    stages = [gpu_run.Stage("hang", "sleeps", [py, "-c", "import time; time.sleep(60)"], 1, needs_build=False),
              gpu_run.Stage("fails", "exits 3", [py, "-c", "raise SystemExit(3)"], 30, needs_build=False),
              gpu_run.Stage("build", "a failed build", [py, "-c", "raise SystemExit(1)"], 30, needs_build=False),
              gpu_run.Stage("after", "needs the build", [py, "-c", "print('ran')"], 30)]
    runner = gpu_run.Runner(str(tmp_path))
    t = time.monotonic()
    runner.run_phases([[stages[:2]], [stages[2:]]])
    assert time.monotonic() - t < 30
    assert [s.status for s in stages] == ["TIMEOUT", "FAILED", "FAILED", "skipped"]
    assert stages[1].rc == 3 and stages[3].skip == "the build failed"
    assert (tmp_path / "hang.log").exists() and (tmp_path / "fails.log").exists()


def test_run_gpu_junit_summary(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text(textwrap.dedent("""\
        <testsuites><testsuite tests="5" failures="1" errors="0" skipped="2">
          <testcase name="a"/><testcase name="b"><failure message="x"/></testcase><testcase name="c"/>
          <testcase name="d"><skipped message="could not import 'optax': No module named 'optax'"/></testcase>
          <testcase name="e"><skipped message="could not import 'optax': No module named 'optax'"/></testcase>
        </testsuite></testsuites>"""))
    text = _gpu_run().junit_summary(str(xml))
    assert text.startswith("2 passed, 1 failed, 0 errors, 2 skipped")
    assert "2 x could not import 'optax'" in text


def test_run_gpu_on_cpu_writes_summary(tmp_path):
    """The stages that work without a GPU, tiny: smoke, verify, bench; the sanitizers skip with a reason."""
    out = tmp_path / "gpu"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_run.py"), "--device", "cpu",
                           "--skip", "build,tests", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout
    assert "| smoke | ok |" in summary and "smoke ok on cpu" in summary
    assert "| memcheck | skipped |" in summary and "compute-sanitizer checks CUDA kernels only" in summary
    assert "| tests | skipped | 0 s | --skip tests |" in summary
    assert re.search(r"\| verify \| ok \| \d+ s \| \d+/\d+ bit-exact over 300 steps on cpu", summary)
    assert "| tiny-mixed | AdamW |" in summary and "All stages that ran passed" in summary
    assert_png(next(out.glob("bench-*.png")))
    assert_png(next(out.glob("verify-*.png")))


def test_run_script_usage_and_setup_output():
    """./run prints its stages with elapsed times and the CPU-only hint. It runs with this interpreter, this
    build's own CUDA choice (so the build is a no-op) and WARMUP_FUSED_NO_PTH=1 (the environment is left alone)."""
    proc = subprocess.run([os.path.join(ROOT, "run")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: ./run main" in proc.stderr
    from warmup_fused import _ops

    info = _ops.build_info()
    env = dict(os.environ, WARMUP_FUSED_PYTHON=sys.executable, WARMUP_FUSED_NO_PTH="1")
    env.pop("WARMUP_FUSED_CPU_ONLY", None)
    env.pop("FORCE_CUDA", None)
    if info["cuda"]:
        env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=info["arch"].replace(" ", ";"))
    else:
        env["WARMUP_FUSED_CPU_ONLY"] = "1"
    proc = subprocess.run([os.path.join(ROOT, "run"), "test", "--version"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "WARMUP_FUSED_CPU_ONLY=1 ./run test skips the CUDA compile" in out
    assert f"using {sys.executable}" in out and "nothing installed" in out
    assert re.search(r"\[run +[\d.]+s\] building warmup_fused "
                     + ("with CUDA kernels" if info["cuda"] else r"CPU only \(WARMUP_FUSED_CPU_ONLY=1\)"), out)
    assert re.search(r"building warmup_fused .*: done in [\d.]+ s", out)
    assert re.search(r"test suite: done in [\d.]+ s", out) and "pytest" in out + proc.stderr
