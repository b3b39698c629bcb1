"""Sessions that take turns: what onnxruntime's spinning thread pools cost them, and what
kcompile's `session.force_spinning_stop` gives back. CPU, one command:

    .venv/bin/python benchmarks/sessions.py [--rounds 4]

Each onnxruntime session has its own thread pool, and its threads spin for a while after a
run ends. kcompile's sessions stop spinning when a run ends (runtime/devices.py
session_options). Each workload runs in its own process, with the options as kcompile sets
them ("stop") and with the pools left spinning ("spin"), alternating, --rounds times:

  mlp_one   ms per training step of examples/mnist_mlp.kdl, one model (train_on_batch)
  mlp_two   ms per step of each of two such models stepping in turn
  gan       ms per step of examples/train_gan.py (a generator predict, a discriminator step
            and a generator step through the frozen discriminator: three sessions)

It prints the median of each and spin / stop (above 1: stopping is faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@RESULT "
WORKLOADS = ["mlp_one", "mlp_two", "gan"]


def _leave_spinning():
    """Sessions as onnxruntime makes them by default: the pool threads spin on after each run."""
    import kcompile.runtime.model as model_module
    import kcompile.runtime.training as training_module
    from kcompile.runtime import devices

    def spinning():
        options = devices.session_options()
        options.add_session_config_entry("session.force_spinning_stop", "0")
        return options
    model_module.session_options = training_module.session_options = spinning


def _median_ms(step, warm, steps):
    for _ in range(warm):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def worker(config: str, workload: str) -> float:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import kcompile
    if config == "spin":
        _leave_spinning()
    rng = np.random.default_rng(0)
    if workload in ("mlp_one", "mlp_two"):
        models = [kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=i)
                  for i in range(1 if workload == "mlp_one" else 2)]
        x = rng.random((128, 28, 28, 1), dtype=np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 128)]

        def step():
            for m in models:
                m.train_on_batch(x, y)
        return _median_ms(step, 20, 300) / len(models)
    sys.path.insert(0, str(ROOT / "examples"))
    import train_gan
    digits = train_gan.load_digits(None)
    generator, discriminator, gan = train_gan.build()
    batches = [digits[i * 64:(i + 1) * 64] for i in range(len(digits) // 64)]
    count = iter(range(10 ** 9))
    return _median_ms(lambda: train_gan.train_step(generator, discriminator, gan,
                                                   batches[next(count) % len(batches)], rng), 5, 40)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="processes per workload and setting (default 4)")
    ap.add_argument("--worker", nargs=2, metavar=("CONFIG", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(MARK + json.dumps(worker(*args.worker)), flush=True)
        return
    print(f"{'workload':<10} {'stop, ms':>10} {'spin, ms':>10} {'spin / stop':>12}")
    for workload in WORKLOADS:
        ms = {"stop": [], "spin": []}
        for r in range(args.rounds):
            for config in (("stop", "spin") if r % 2 == 0 else ("spin", "stop")):
                out = subprocess.run([sys.executable, __file__, "--worker", config, workload],
                                     capture_output=True, text=True, check=True).stdout
                ms[config].append(json.loads(out.split(MARK)[-1]))
        stop, spin = statistics.median(ms["stop"]), statistics.median(ms["spin"])
        print(f"{workload:<10} {stop:>10.2f} {spin:>10.2f} {spin / stop:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
