"""benchmarks/paired.py: cycle-by-cycle ratios against the best peer, and the burst protocol
with a real kcompile worker (the full benchmark runs for minutes and is not part of the suite)."""
import sys

import pytest


@pytest.fixture(scope="module")
def paired(load_benchmark):
    path = list(sys.path)
    yield load_benchmark("paired")  # (which puts benchmarks/ on sys.path to import run.py as "run")
    sys.path[:] = path
    sys.modules.pop("run", None)


def bursts(key, *values):
    return [{key: v} for v in values]


def test_training_ratio_is_the_median_cycle_ratio_against_the_best_peer(paired):
    key = "samples_per_s"
    rows = paired.summarize("mlp_train", {
        "kcompile": bursts(key, 130.0, 60.0, 120.0, 100.0),
        "torch": bursts(key, 50.0, 50.0, 50.0, 50.0),
        "keras_jax": bursts(key, 100.0, 100.0, 80.0, 50.0),  # median 90: the best peer
    })
    row, = rows
    assert row["best_peer"] == "keras_jax"
    assert row["cycle_ratios"] == pytest.approx([1.3, 0.6, 1.5, 2.0])
    assert row["ratio"] == pytest.approx(1.4)  # the median cycle, not 110 / 90
    assert row["met"] is True and row["medians"]["kcompile"] == pytest.approx(110.0)
    text = paired.report(rows, ["kcompile", "torch", "keras_jax"])
    assert "1.40x" in text and ">= 1.3x: met" in text and "vs keras_jax" in text


def test_latency_is_lower_better(paired):
    value = lambda thr, lat: {"batch1024_samples_per_s": thr, "batch1_latency_us": lat}  # noqa: E731
    rows = paired.summarize("cnn_predict", {
        "kcompile": [value(120.0, 30.0), value(100.0, 60.0), value(110.0, 40.0)],
        "torch": [value(10.0, 100.0), value(10.0, 100.0), value(10.0, 100.0)],
        "keras_jax": [value(100.0, 200.0), value(100.0, 200.0), value(100.0, 200.0)],
    })
    throughput, latency = rows
    assert throughput["best_peer"] == "keras_jax" and throughput["ratio"] == pytest.approx(1.1)
    assert throughput["met"] is False  # 1.1x < 1.2x
    assert latency["best_peer"] == "torch" and latency["ratio"] == pytest.approx(0.4)
    assert latency["met"] is True  # 0.4x <= 0.5x
    assert "NOT met" in paired.report(rows, ["kcompile", "torch", "keras_jax"])


def test_a_peer_of_several_predict_paths_counts_the_path_of_the_best_median(paired):
    """Not each burst's best path: of two paths within the noise of each other, the luckier one
    each burst would make the peer faster than either path is."""
    def burst(a, b, lat_a, lat_b):
        paths = {"predict": {"batch1024_samples_per_s": a, "batch1_latency_us": lat_a},
                 "predict_on_batch": {"batch1024_samples_per_s": b, "batch1_latency_us": lat_b}}
        return {"batch1024_samples_per_s": max(a, b), "batch1_latency_us": min(lat_a, lat_b), "paths": paths}
    kc = {"batch1024_samples_per_s": 100.0, "batch1_latency_us": 50.0}
    rows = paired.summarize("mlp_predict", {
        "kcompile": [dict(kc) for _ in range(3)],
        "keras_jax": [burst(110.0, 90.0, 300.0, 200.0), burst(90.0, 100.0, 300.0, 200.0),
                      burst(95.0, 105.0, 100.0, 200.0)],  # each burst's best: 110, 100, 105 (median 105)
    })
    throughput, latency = rows
    assert throughput["paths"] == {"keras_jax": "predict_on_batch"}  # (median 100 against predict's 95)
    assert throughput["medians"]["keras_jax"] == pytest.approx(100.0)
    assert throughput["cycle_ratios"] == pytest.approx([100 / 90, 1.0, 100 / 105])
    assert throughput["ratio"] == pytest.approx(1.0) and throughput["met"] is True
    assert latency["paths"] == {"keras_jax": "predict_on_batch"} and latency["ratio"] == pytest.approx(0.25)
    assert "vs keras_jax predict_on_batch" in paired.report(rows, ["kcompile", "keras_jax"])


def test_a_workload_without_a_target_gets_its_ratio_and_no_verdict(paired):
    row, = paired.summarize("lstm_train", {"kcompile": bursts("samples_per_s", 12.0, 10.0, 11.0),
                                           "torch": bursts("samples_per_s", 10.0, 10.0, 10.0)})
    assert row["ratio"] == pytest.approx(1.1) and row["met"] is None
    text = paired.report([row], ["kcompile", "torch"])
    assert "1.10x  no target (cycles" in text and "met" not in text


def test_training_at_another_batch_than_the_targets_gets_its_ratio_and_no_verdict(paired):
    key = "samples_per_s"
    runs = {"kcompile": bursts(key, 90.0, 110.0), "keras_jax": bursts(key, 100.0, 100.0)}
    row, = paired.summarize("mlp_train", runs, batch=32)
    assert row["ratio"] == pytest.approx(1.0) and row["target"] is None and row["met"] is None
    assert "no target" in paired.report([row], ["kcompile", "keras_jax"])
    row, = paired.summarize("mlp_train", runs)  # (the targets' batch, 128)
    assert row["target"] == 1.3 and row["met"] is False
    predict = paired.summarize("mlp_predict", {"kcompile": [{"batch1024_samples_per_s": 2.0, "batch1_latency_us": 1.0}],
                                               "torch": [{"batch1024_samples_per_s": 1.0, "batch1_latency_us": 4.0}]},
                               batch=32)
    assert [r["met"] for r in predict] == [True, True]  # (predicts do not depend on the training batch)


def test_no_peer_gives_no_ratio(paired):
    row, = paired.summarize("mlp_train", {"kcompile": bursts("samples_per_s", 5.0, 7.0)})
    assert "ratio" not in row and row["medians"]["kcompile"] == 6.0
    assert "no peer" in paired.report([row], ["kcompile", "torch"])


def test_a_real_kcompile_worker_answers_each_go(paired, tmp_path):
    said = []
    out = paired.measure("mlp_predict", ["kcompile"], 2, str(tmp_path), say=said.append)
    runs = out["kcompile"]
    assert len(runs) == 2 and "ready" in said[0]
    for burst in runs:
        assert burst["batch1024_samples_per_s"] > 0 and burst["batch1_latency_us"] > 0
        assert set(burst["paths"]) == {"predict"}  # kcompile's public predict() only


def test_a_worker_that_fails_is_reported_and_the_rest_still_run(paired, tmp_path):
    said = []
    out = paired.measure("mlp_predict", ["no_such_framework", "kcompile"], 1, str(tmp_path), say=said.append)
    assert list(out) == ["kcompile"]
    assert "no_such_framework" in said[0] and "FAILED" in said[0] and "KeyError" in said[0]


def test_a_worker_that_fails_mid_run_keeps_its_bursts_and_leaves_the_cycles(paired, tmp_path, monkeypatch):
    real, calls = paired.Worker.burst, []

    def burst(self):
        calls.append(self.fw)
        if len(calls) == 2:
            raise RuntimeError("worker ended (exit 1): boom")
        return real(self)
    monkeypatch.setattr(paired.Worker, "burst", burst)
    said = []
    out = paired.measure("mlp_predict", ["kcompile"], 3, str(tmp_path), say=said.append)
    assert calls == ["kcompile", "kcompile"]  # no third burst asked of it
    assert len(out["kcompile"]) == 1
    assert any("FAILED in cycle 2" in line and "boom" in line for line in said)


def test_a_worker_that_has_ended_says_why_at_its_next_burst(paired, tmp_path):
    worker = paired.Worker("kcompile", "mlp_predict", str(tmp_path))
    try:
        worker.proc.kill()
        worker.proc.wait()
        with pytest.raises(RuntimeError, match="kcompile worker ended"):
            worker.burst()
    finally:
        worker.close()


def test_the_machine_rate_is_measured_by_each_engine_in_its_own_process(paired):
    rates = paired.machine_rate(["kcompile", "keras_jax"])  # (no torch among them: numpy and onnxruntime)
    assert set(rates) == {"numpy", "onnxruntime"}
    assert all(1.0 < g < 1e5 for g in rates.values())  # GFLOP/s of a 2048^3 product: seconds, not hours
    line = paired.rate_line("start", rates)
    assert line.startswith("matmul at the start: numpy ") and line.endswith(" GFLOP/s")
    assert paired.rate_line("end", {}) == "matmul at the end: not measured"
