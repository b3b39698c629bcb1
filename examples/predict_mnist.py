"""Run the compiled MNIST CNN on 1,000 real MNIST test images.

Build the model first, then run this script (both from the repository root):

    .venv/bin/kcompile build examples/mnist_cnn.kdl -o build
    .venv/bin/python examples/predict_mnist.py

A build folder holds the model's *initial* (untrained, seeded) weights; point --build at
a checkpoint written by examples/train_mnist.py (checkpoints/mnist_cnn) to predict with
trained ones. It shows the path from a .kdl file to a running ONNX model on real data:
shapes, probabilities, accuracy and inference speed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import kcompile

ROOT = Path(__file__).resolve().parent.parent  # the repository root
SAMPLE = ROOT / "examples" / "data" / "mnist_sample.npz"


def load_sample(path: Path = SAMPLE):
    """The 1,000 sample images as float32 [n, 28, 28, 1] in [0, 1], and their labels."""
    with np.load(path) as data:
        x, y = data["x"], data["y"]
    return x.astype(np.float32)[..., None] / 255.0, y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default=str(ROOT / "build" / "mnist_cnn"),
                   help="the build folder written by `kcompile build` (default: build/mnist_cnn)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where ONNX Runtime runs the model (default: cpu)")
    p.add_argument("--runs", type=int, default=200, help="timed runs at batch size 1 (default: 200)")
    args = p.parse_args(argv)

    build = Path(args.build)
    if not (build / "manifest.json").exists():
        print(f"no build folder at {build}\n"
              "build the model first:  .venv/bin/kcompile build examples/mnist_cnn.kdl -o build", file=sys.stderr)
        return 1

    model = kcompile.load(build, device=args.device)
    trained = model.iterations > 0
    if not trained:
        print("NOTE: these are the untrained initial weights (seeded Keras initialisers); train with\n"
              "      examples/train_mnist.py and pass --build checkpoints/mnist_cnn for meaningful digits.\n")
    model.summary()
    print()

    x, y = load_sample()
    print(f"data: {len(x)} MNIST test images {x.shape[1:]} from {SAMPLE.relative_to(ROOT)}")

    # ---- predictions, in batches of 100 ----
    probs = model.predict(x, batch_size=100)
    sums = probs.sum(axis=1)
    predicted = probs.argmax(axis=1)
    print(f"predictions: shape {probs.shape}, dtype {probs.dtype}")
    print(f"probabilities sum to 1: {bool(np.allclose(sums, 1.0, atol=1e-5))} "
          f"(row sums in [{sums.min():.6f}, {sums.max():.6f}])")
    print(f"first 10 predicted digits: {predicted[:10].tolist()}  (true labels: {y[:10].tolist()})")
    print(f"accuracy: {np.mean(predicted == y):.1%}" + ("" if trained else
          " -- near chance (10%), as expected from untrained weights"))
    print()

    # ---- throughput ----
    one = x[:1]
    for _ in range(10):  # warm-up: session creation, allocator, caches
        model.predict(one)
    latencies = []
    for _ in range(args.runs):
        start = time.perf_counter()
        model.predict(one)
        latencies.append(time.perf_counter() - start)
    median = statistics.median(latencies)
    print(f"batch 1:    median latency {median * 1e3:.3f} ms over {args.runs} runs "
          f"-> {1.0 / median:,.0f} samples/s")

    model.predict(x, batch_size=len(x))  # warm-up at the large batch size
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.predict(x, batch_size=len(x))
        times.append(time.perf_counter() - start)
    best = statistics.median(times)
    print(f"batch {len(x)}: median {best * 1e3:.1f} ms per batch over {len(times)} runs "
          f"-> {len(x) / best:,.0f} samples/s")
    print(f"(device={model.device}; weights: " + (f"trained for {model.iterations} steps)" if trained else
          f"untrained initial weights, seed {model.manifest['seed']})"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (kcompile.KcompileError, OSError, ValueError, RuntimeError) as e:  # (a path, a device: said, no traceback)
        sys.exit(f"error: {e}")
