"""Sessions that take turns, and onnxruntime's spinning thread pools: what kcompile's
choice of `session.force_spinning_stop` (runtime/devices.py session_options) gives. CPU:

    .venv/bin/python benchmarks/sessions.py [--rounds 3]

Each onnxruntime session has its own thread pool, and its threads spin for a while after a
run ends: fast for one session's runs back to back, slow for sessions that take turns.
kcompile's sessions spin until the runtime sees its sessions taking turns, then they are
rebuilt to stop spinning after each run. Each workload runs in its own process, --rounds
times, with the sessions as kcompile makes them ("kcompile"), all stopping ("stop") and all
spinning ("spin", onnxruntime's default):

  mlp_one      ms per training step of examples/mnist_mlp.kdl, one model (train_on_batch)
  mlp_two      ms per step of each of two such models stepping in turn
  gan          ms per step of examples/train_gan.py (a generator predict, a discriminator
               step and a generator step through the frozen discriminator: three sessions)
  mlp_latency  us per predict of one sample with examples/mnist_mlp.kdl
  mlp_latency_after_turns
               the same, after two such models took turns for ten training steps each
               (the process's sessions then stop their pools; predicts back to back run on
               a copy that spins)
  mlp_eval     ms per evaluate() of 4,096 samples at batch 32 with examples/mnist_mlp.kdl

It prints the median of each; kcompile's column should match the better of the other two.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@RESULT "
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import call_times  # noqa: E402  (run.py's timing loop)
WORKLOADS = ["mlp_one", "mlp_two", "gan", "mlp_latency", "mlp_latency_after_turns", "mlp_eval"]
CONFIGS = ["kcompile", "stop", "spin"]


def _all_sessions(stop: bool):
    """Every session the runtime makes stops spinning after a run (or none does): every one
    takes its options from TrainingMixin._new_session_options, in runtime/training.py."""
    import kcompile.runtime.training as training_module
    from kcompile.runtime import devices
    training_module.session_options = lambda stop_spinning=False: devices.session_options(stop_spinning=stop)


def _median_ms(step, warm, steps):
    call_times(step, warm)
    return statistics.median(call_times(step, steps)) * 1e3


def worker(config: str, workload: str) -> float:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import kcompile
    if config != "kcompile":
        _all_sessions(stop=config == "stop")
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
    if workload.startswith("mlp_latency"):
        m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
        if workload == "mlp_latency_after_turns":
            other = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=1)
            x = rng.random((32, 28, 28, 1), dtype=np.float32)
            y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]
            for _ in range(10):
                m.train_on_batch(x, y)
                other.train_on_batch(x, y)
        x = rng.random((1, 28, 28, 1), dtype=np.float32)
        return _median_ms(lambda: m.predict(x), 200, 2000) * 1e3
    if workload == "mlp_eval":
        m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
        x = rng.random((4096, 28, 28, 1), dtype=np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 4096)]
        return _median_ms(lambda: m.evaluate(x, y, batch_size=32, verbose=0), 2, 10)
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
    ap.add_argument("--rounds", type=int, default=3, help="processes per workload and setting (default 3)")
    ap.add_argument("--worker", nargs=2, metavar=("CONFIG", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(MARK + json.dumps(worker(*args.worker)), flush=True)
        return
    print(f"{'workload':<24}" + "".join(f"{c:>10}" for c in CONFIGS) + "   (ms; mlp_latency* in us)")
    for workload in WORKLOADS:
        values = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            for config in CONFIGS[r % 3:] + CONFIGS[:r % 3]:  # each setting first in turn
                out = subprocess.run([sys.executable, __file__, "--worker", config, workload],
                                     capture_output=True, text=True, check=True).stdout
                values[config].append(json.loads(out.split(MARK)[-1]))
        print(f"{workload:<24}" + "".join(f"{statistics.median(values[c]):>10.2f}" for c in CONFIGS), flush=True)


if __name__ == "__main__":
    main()
