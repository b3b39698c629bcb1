"""benchmarks/run.py's report: ratios against the best peer, target verdicts, and the ratios
round by round (the benchmark itself runs for minutes and is not part of the suite)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("run")


def rounds(*values):
    return {"ok": True, "samples_per_s": sorted(values)[len(values) // 2], "rounds": list(values)}


def test_verdicts_and_round_ratios(bench):
    results = {
        "kcompile": {"mlp_train": rounds(130.0, 120.0, 90.0), "cnn_train": rounds(15.0, 16.0, 14.0)},
        "torch": {"mlp_train": rounds(50.0, 60.0, 55.0), "cnn_train": rounds(10.0, 10.0, 10.0)},
        "keras_jax": {"mlp_train": rounds(100.0, 80.0, 100.0), "cnn_train": rounds(2.0, 2.0, 2.0)},
        "torch_compile": "not installed",
    }
    text, verdicts = bench.table(results, ["kcompile", "torch", "torch_compile", "keras_jax"])
    by_row = {v["row"]: v for v in verdicts}
    mlp = by_row["MLP train, samples/s (synthetic)"]
    assert mlp["reference_framework"] == "keras_jax" and mlp["ratio"] == pytest.approx(120 / 100)
    assert mlp["met"] is False  # 1.2x < 1.3x
    cnn = by_row["CNN train, samples/s"]
    assert cnn["reference_framework"] == "torch" and cnn["ratio"] == pytest.approx(1.5) and cnn["met"] is True
    assert "not inst." in text
    lines = bench.round_ratios(results, verdicts)
    assert mlp["round_ratios"] == pytest.approx([1.3, 1.5, 0.9])
    assert cnn["round_ratios"] == pytest.approx([1.5, 1.6, 1.4])
    assert len(lines) == 2 and "1.30x, 1.50x, 0.90x" in lines[0]


def test_rounds_pair_by_position_when_one_fails(bench):
    """A failed round stays in its place: round k of kcompile is compared with round k of the peer."""
    ok = lambda v: {"ok": True, "samples_per_s": v}
    kc = bench.merge_rounds([ok(100.0), {"ok": False}, ok(90.0)], "mlp_train")
    peer = bench.merge_rounds([ok(50.0), ok(60.0), {"ok": False}], "mlp_train")
    assert kc["rounds"] == [100.0, None, 90.0] and peer["rounds"] == [50.0, 60.0, None]
    results = {"kcompile": {"mlp_train": kc}, "torch": {"mlp_train": peer}}
    _, verdicts = bench.table(results, ["kcompile", "torch"])
    lines = bench.round_ratios(results, verdicts)
    mlp = next(v for v in verdicts if v["row"].startswith("MLP train, samples/s"))
    assert mlp["round_ratios"] == [2.0, None, None]
    assert "2.00x, failed, failed" in lines[0]


def test_run_py_paired_option_prints_and_returns_the_paired_rows(bench, monkeypatch, capsys):
    import argparse
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    try:
        import paired
        monkeypatch.setattr(paired, "WORKLOADS", ["mlp_predict"])  # one workload, kcompile alone: seconds
        rows = bench.paired_targets(["kcompile"], argparse.Namespace(paired=1, device="cpu"))
        assert [(r["workload"], r["key"]) for r in rows] == [("mlp_predict", "batch1024_samples_per_s"),
                                                              ("mlp_predict", "batch1_latency_us")]
        assert all(r["medians"]["kcompile"] > 0 and "ratio" not in r for r in rows)  # no peer: no ratio
        out = capsys.readouterr().out
        assert "paired bursts (1 cycles" in out and "no peer" in out
        assert bench.paired_targets(["kcompile"], argparse.Namespace(paired=1, device="cuda")) is None
    finally:
        for name in ("paired", "run"):  # (benchmarks/ modules imported by name)
            sys.modules.pop(name, None)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins itself to each core: Linux")
def test_cores_py_probes_every_core_and_summarizes():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cores.py"), "--seconds", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cores = sorted(os.sched_getaffinity(0))
    probes = [line for line in done.stdout.splitlines() if "both cores" in line]
    assert probes and all(f"core {c}: element-wise" in probes[0] for c in cores)
    assert [line.split(":")[0] for line in done.stdout.splitlines() if " slow in " in line] == [f"core {c}" for c in cores]


@pytest.mark.skipif(not (hasattr(os, "sched_setaffinity") and shutil.which("cc")),
                    reason="builds benchmarks/pingpong.c and pins threads: Linux with a C compiler")
def test_cores_py_pingpong_times_the_round_trip_between_two_cores():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cores.py"), "--pingpong", "--seconds", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    trips = [float(line.split("round trip")[1].split()[0]) for line in done.stdout.splitlines() if "round trip" in line]
    assert len(trips) == 4 and all(5 < ns < 100_000 for ns in trips)
    close = sum(ns <= 200 for ns in trips)
    assert f"cores 0 and 1: close in {close} of 4 samples, far in {4 - close}" in done.stdout


@pytest.mark.parametrize("fw", ["kcompile", "torch", "keras_jax"])
def test_every_predict_path_of_a_framework_returns_its_finished_result(bench, fw):
    """A path timed must end with the result computed: JAX's eager call returns an asynchronous
    array, and timed bare it measured the dispatch (up to 132k samples/s for the MLP, where its
    result is ready at 48-56k). In a process of its own, as the benchmark runs each framework."""
    if not bench.installed(fw):
        pytest.skip(f"{fw} is not installed (pip install -e '.[bench]')")
    check = f"""
import sys; sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import numpy as np, run
adapter = run.ADAPTERS[{fw!r}]().build("mlp")
x, _, _ = run.synthetic(4, adapter.layout)
for name, predict in adapter.predictors().items():
    out = predict(x)
    out = out[0] if isinstance(out, list) else out  # (kcompile's raw session: its outputs)
    assert type(out) is np.ndarray and out.shape == (4, 10), (name, type(out))
print("checked", sorted(adapter.predictors()))
"""
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checked" in done.stdout
