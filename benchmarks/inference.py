"""Compile time of every example, and MNIST-CNN inference at -O1 versus -O0.

    .venv/bin/python benchmarks/inference.py [--json out.json]

Build time is measured in a cold process (`kcompile build`, imports included) and
warm (in-process compile + ONNX lowering + checker). Inference runs on
onnxruntime's CPU provider: median latency at batch 1, throughput at batch 1024.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kcompile  # noqa: E402
from kcompile.driver import compile_file, parse_source, read_source  # noqa: E402


def build_times():
    rows = []
    kc = Path(sys.executable).with_name("kcompile")
    for path in sorted((ROOT / "examples").glob("*.kdl")):
        module = parse_source(read_source(path), str(path))
        for model in module.models():
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                proc = subprocess.run([str(kc), "build", str(path), "--model", model.name, "-o", out, "-q"],
                                      capture_output=True, text=True)
                cold = time.perf_counter() - start
            warm = []
            for _ in range(3):
                start = time.perf_counter()
                compiled = compile_file(path, model.name)
                from kcompile.backend import to_onnx
                import onnx
                from kcompile.driver import initial_weights
                onnx.checker.check_model(to_onnx(compiled.graph, initial_weights(compiled.graph)))
                warm.append(time.perf_counter() - start)
            rows.append({"file": path.name, "model": model.name, "ok": proc.returncode == 0,
                         "cold_s": round(cold, 3), "warm_s": round(min(warm), 4)})
    return rows


def inference(model, batch, repeats):
    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    model.predict(x, batch_size=batch)  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(x, batch_size=batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = {"build": build_times()}
    print(f"{'example':<22}{'model':<16}{'cold build (s)':>16}{'warm compile (s)':>18}")
    for r in results["build"]:
        print(f"{r['file']:<22}{r['model']:<16}{r['cold_s']:>16.3f}{r['warm_s']:>18.4f}"
              f"{'' if r['ok'] else '  FAILED'}")
    cnn = ROOT / "examples" / "mnist_cnn.kdl"
    results["inference"] = {}
    for level in (0, 1):
        m = kcompile.compile(cnn, opt_level=level)
        lat = inference(m, 1, 300)
        thr = inference(m, 1024, 15)
        results["inference"][f"O{level}"] = {"batch1_latency_us": lat * 1e6, "batch1024_samples_per_s": 1024 / thr}
    o0, o1 = results["inference"]["O0"], results["inference"]["O1"]
    print(f"\nMNIST CNN inference (onnxruntime CPU)   {'-O0':>12}{'-O1':>12}{'O1/O0':>8}")
    print(f"{'batch 1 median latency (us)':<40}{o0['batch1_latency_us']:>12.0f}{o1['batch1_latency_us']:>12.0f}"
          f"{o0['batch1_latency_us'] / o1['batch1_latency_us']:>7.2f}x")
    print(f"{'batch 1024 throughput (samples/s)':<40}{o0['batch1024_samples_per_s']:>12.0f}"
          f"{o1['batch1024_samples_per_s']:>12.0f}{o1['batch1024_samples_per_s'] / o0['batch1024_samples_per_s']:>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
