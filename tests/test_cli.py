"""`python -m warmup_fused {info,verify,plot,bench}` at tiny sizes: exit codes, JSON, PNGs. No timing asserts."""
import json
import math
import os
import subprocess
import sys
import textwrap

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
    proc = run_cli("verify", "--steps", "200", "--quiet", "--device", "cpu", "--json", str(out))
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
    proc = run_cli("verify", "--no-registry", "--steps", "200", "--quiet", "--json", str(out),
                   "--scheduler", "my_scheds:step_lr", "--scheduler", "my_scheds:warm_cos", extra_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "my_scheds:step_lr" in proc.stdout and "my_scheds:warm_cos" in proc.stdout
    rows = json.loads(out.read_text())["results"]
    assert [r["mismatches"] for r in rows] == [0, 0]

    # A scheduler from_torch refuses is a failure (exit 1), reported in the table.
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run_main(capsys, "verify", "--no-registry", "--steps", "50", "--quiet",
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
                   "--repeat", "2", "--warmup", "1", "--threads", "1", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "median ms" in proc.stdout and "GB/s" in proc.stdout and "bit-equal" in proc.stdout
    jsons = list(tmp_path.glob("cpu-*-tiny.json"))
    assert len(jsons) == 1
    data = json.loads(jsons[0].read_text())
    assert {"env", "config", "copy_bandwidth_gbps", "results", "notes", "ours_available"} <= set(data)
    assert {"torch", "device", "device_name", "threads", "build_info"} <= set(data["env"])
    assert data["env"]["threads"] == 1
    rows = data["results"]
    assert rows and all("error" not in r for r in rows)
    for r in rows:
        assert {"set", "params", "tensors", "optimizer", "impl", "mode", "median_s", "gbps", "pct_copy",
                "host_cpu_s", "times_s"} <= set(r)
        assert r["median_s"] > 0 and len(r["times_s"]) == 2
    impls = {r["impl"] for r in rows}
    assert {"torch-forloop", "torch-foreach", "torch-fused"} <= impls
    if data["ours_available"]:
        assert "ours" in impls
        peers = [r for r in rows if r["impl"].startswith("torch")]
        assert all("ratio_vs_ours" in r and "bit_equal" in r for r in peers)
    assert jsons[0].with_suffix(".txt").read_text().count("\n") > 5
    assert_png(jsons[0].with_suffix(".png"))
