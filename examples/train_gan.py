"""Train the GAN of examples/gan.kdl on real MNIST digits, the classic alternating way.

    python examples/train_gan.py [--epochs 5] [--data ../shared/datasets/mnist] [--out gan_images]

Each step trains the discriminator on a batch of real digits (label 1) and generated ones
(label 0), then the generator through the frozen discriminator (the `gan` model, labels 1).
The three compiled models share their weights (`share_weights`), so the loop is three
calls. A PNG grid of generated digits is written after every epoch.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import kcompile
from kcompile.utils import save_image_grid

HERE = Path(__file__).resolve().parent


def load_digits(data):
    if data is None:
        with np.load(HERE / "data" / "mnist_sample.npz") as d:
            x = d["x"]
    else:
        from kcompile.datasets import mnist
        (x_train, _), (x_test, _) = mnist.load_data(path=data)
        x = x_train if len(x_train) else x_test
    return x[..., None].astype(np.float32) / 255.0


def build(seed=0):
    """The generator, the discriminator and the gan (generator + frozen discriminator), tied."""
    source = HERE / "gan.kdl"
    generator = kcompile.compile(source, model="generator", seed=seed)
    discriminator = kcompile.compile(source, model="discriminator", seed=seed)
    gan = kcompile.compile(source, model="gan", seed=seed)
    gan.share_weights(generator, "generator/")
    gan.share_weights(discriminator, "discriminator/")
    return generator, discriminator, gan


def train_step(generator, discriminator, gan, real, rng, latent=100):
    n = len(real)
    fake = generator.predict(rng.normal(size=(n, latent)).astype(np.float32), batch_size=n)
    d_loss = discriminator.train_on_batch(np.concatenate([real, fake]),
                                          np.concatenate([np.ones((n, 1)), np.zeros((n, 1))]).astype(np.float32))
    g_loss = gan.train_on_batch(rng.normal(size=(n, latent)).astype(np.float32), np.ones((n, 1), np.float32))
    return d_loss, g_loss


def fooled(generator, discriminator, rng, n=256, latent=100):
    """Share of generated digits the discriminator calls real (0 early, toward 0.5 as the generator learns)."""
    fake = generator.predict(rng.normal(size=(n, latent)).astype(np.float32), batch_size=n)
    return float(np.mean(discriminator.predict(fake, batch_size=n) > 0.5))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data", help="MNIST IDX folder or mnist.npz (default: the 1,000-image sample)")
    ap.add_argument("--out", default="gan_images", help="folder for the PNG grids")
    args = ap.parse_args()
    x = load_digits(args.data)
    generator, discriminator, gan = build()
    rng = np.random.default_rng(0)
    z_fixed = np.random.default_rng(1).normal(size=(64, 100)).astype(np.float32)
    steps = len(x) // args.batch_size
    for epoch in range(args.epochs):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        for s in range(steps):
            d_loss, g_loss = train_step(generator, discriminator, gan, x[order[s * args.batch_size:(s + 1) *
                                                                            args.batch_size]], rng)
        seconds = time.perf_counter() - start
        path = save_image_grid(Path(args.out) / f"epoch_{epoch + 1:02d}.png", generator.predict(z_fixed), scale=2)
        print(f"epoch {epoch + 1}: d_loss {d_loss:.3f}, g_loss {g_loss:.3f}, discriminator fooled by "
              f"{fooled(generator, discriminator, rng):.0%} of fakes, {steps * args.batch_size * 2 / seconds:,.0f} "
              f"samples/s, {path}")


if __name__ == "__main__":
    try:
        main()
    except (kcompile.KcompileError, OSError, ValueError, RuntimeError) as e:  # (a path, a device: said, no traceback)
        sys.exit(f"error: {e}")
