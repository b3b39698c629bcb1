"""Train the MNIST MLP (RMSprop, batch 128) or CNN (Adam) of examples/ on real digits.

    python examples/train_mnist.py --model cnn                 # the 1,000-image sample shipped here
    kcompile build examples/mnist_cnn.kdl -o build && python examples/train_mnist.py --build build/mnist_cnn
    python examples/train_mnist.py --model mlp --data ../shared/datasets/mnist --epochs 5
    python examples/train_mnist.py --model augmented --data ../shared/datasets/mnist --epochs 5

With --data (a folder of MNIST IDX files or a Keras mnist.npz) the model trains on the
first 8,000 images of the test set and is scored on the last 2,000 (the common split
when only the 10,000 test images are at hand); with a full mnist.npz it uses the real
60,000/10,000 split. Prints the loss and accuracy per epoch, training throughput
(samples/s) and test accuracy, and saves a checkpoint.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import kcompile
from kcompile.datasets import mnist
from kcompile.utils import to_categorical

HERE = Path(__file__).resolve().parent


def load(data):
    if data is None:
        with np.load(HERE / "data" / "mnist_sample.npz") as d:
            x, y = d["x"], d["y"]
        split = 800
    else:
        (x_train, y_train), (x_test, y_test) = mnist.load_data(path=data)
        if len(x_train):
            return (x_train, y_train), (x_test, y_test)
        x, y, split = x_test, y_test, 8000
    return (x[:split], y[:split]), (x[split:], y[split:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["mlp", "cnn", "augmented"], default="cnn")
    ap.add_argument("--data", help="MNIST IDX folder or mnist.npz (default: the sample in examples/data)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--build", help="a build folder from `kcompile build` to train (default: compile the .kdl)")
    ap.add_argument("--save", default=None, help="checkpoint folder (default: checkpoints/mnist_<model>)")
    args = ap.parse_args()

    (x_train, y_train), (x_test, y_test) = load(args.data)
    x_train = x_train[..., None].astype(np.float32) / 255.0
    x_test = x_test[..., None].astype(np.float32) / 255.0
    y_train, y_test = to_categorical(y_train, 10), to_categorical(y_test, 10)
    print(f"{len(x_train)} training and {len(x_test)} test images")

    if args.build:
        model = kcompile.load(args.build, device=args.device)
    else:
        model = kcompile.compile(HERE / f"mnist_{args.model}.kdl", device=args.device)
    model.summary()
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"training: {args.epochs * len(x_train) / seconds:,.0f} samples/s "
          f"({seconds / args.epochs:.2f} s per epoch, batch {args.batch_size})")
    print(f"test loss {loss:.4f}, test accuracy {accuracy:.4f}")
    path = model.save(args.save or f"checkpoints/{model.name}")
    print(f"checkpoint: {path}/ (kcompile.load it to predict or to resume training)")


if __name__ == "__main__":
    try:
        main()
    except (kcompile.KcompileError, OSError, ValueError, RuntimeError) as e:  # (a path, a device: said, no traceback)
        sys.exit(f"error: {e}")
