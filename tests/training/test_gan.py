"""The GAN of the language spec (examples/gan.kdl) learns on real MNIST digits: after a fixed
budget the discriminator, first perfect on generated digits, starts being fooled, and the
generated images look like digits rather than noise (their mean image matches the real one)."""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from train_gan import build, fooled, load_digits, train_step  # noqa: E402


def test_gan_learns_on_real_digits():
    x = load_digits(None)  # the 1,000 real MNIST images shipped in examples/data
    generator, discriminator, gan = build(seed=0)
    rng = np.random.default_rng(0)
    probe = np.random.default_rng(5)
    accuracy_on_fakes = []
    for step in range(500):
        start = (step * 64) % (len(x) - 64)
        train_step(generator, discriminator, gan, x[start:start + 64], rng)
        if step in (49, 499):
            accuracy_on_fakes.append(1 - fooled(generator, discriminator, probe))
    early, late = accuracy_on_fakes
    assert early >= 0.99, accuracy_on_fakes      # the discriminator first tells every fake apart
    assert late <= 0.9, accuracy_on_fakes        # then the generator fools it more and more
    fakes = generator.predict(np.random.default_rng(9).normal(size=(256, 100)).astype(np.float32))
    noise = np.random.default_rng(9).random(fakes.shape, dtype=np.float32)
    real_mean = x.mean(0).ravel()

    def likeness(images):  # correlation of the mean image with the real digits' mean image
        return np.corrcoef(images.mean(0).ravel(), real_mean)[0, 1]

    assert likeness(fakes) >= 0.8 and likeness(noise) < 0.2, (likeness(fakes), likeness(noise))
    assert 0.6 <= float((fakes < 0.1).mean()) <= 0.95  # mostly dark background, as real digits (0.84)


def test_frozen_discriminator_is_untouched_by_the_gan_step():
    generator, discriminator, gan = build(seed=1)
    frozen = {n: w for n, w in zip(gan.weight_names, gan.get_weights()) if n.startswith("discriminator/")}
    spec = gan.manifest["training"]
    assert not [n for n in spec["trainable"] if n.startswith("discriminator/")]
    assert not [s for s in spec["slots"] if s["param"].startswith("discriminator/")]
    rng = np.random.default_rng(0)
    for _ in range(3):
        gan.train_on_batch(rng.normal(size=(16, 100)).astype(np.float32), np.ones((16, 1), np.float32))
    after = dict(zip(gan.weight_names, gan.get_weights()))
    for name, before in frozen.items():
        np.testing.assert_array_equal(after[name], before)  # bit-identical
    # ... while the generator moved, and the tied generator model sees it.
    moved = [n for n in gan.weight_names if n.startswith("generator/")]
    tied = dict(zip(generator.weight_names, generator.get_weights()))
    assert all(np.array_equal(after[n], tied[n[len("generator/"):]]) for n in moved)
    assert not np.array_equal(tied["dense/kernel"], build(seed=1)[0].get_weights()[0])


def test_tied_weights_are_one_set_of_buffers(taking_turns):
    """A step of one model is the next step's input of the other, with no copy and no rebuild
    (the models' sessions are made as they are once the runtime sees them taking turns)."""
    generator, discriminator, gan = build(seed=2)
    name = "dense/kernel"
    assert gan._shared["discriminator/" + name] is discriminator._shared[name]
    assert gan._shared["generator/" + name] is generator._shared[name]
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 100)).astype(np.float32)
    real = rng.random((8, 28, 28, 1), dtype=np.float32)
    labels = np.concatenate([np.ones((8, 1)), np.zeros((8, 1))]).astype(np.float32)
    gan.train_on_batch(z, np.ones((8, 1), np.float32))
    discriminator.train_on_batch(np.concatenate([real, generator.predict(z)]), labels)
    runners = gan._runner, discriminator._runner
    for _ in range(2):  # alternate as the GAN loop does: the runners stay, bound to the shared buffers
        discriminator.train_on_batch(np.concatenate([real, generator.predict(z)]), labels)
        gan.train_on_batch(z, np.ones((8, 1), np.float32))
    assert (gan._runner, discriminator._runner) == runners
    gan._sync_state()
    discriminator._sync_state()
    # The frozen discriminator inside the gan reads the very buffer the discriminator wrote.
    assert np.shares_memory(gan._shared["discriminator/" + name].numpy(), discriminator._shared[name].numpy())
    tied = dict(zip(discriminator.weight_names, discriminator.get_weights()))
    mine = dict(zip(gan.weight_names, gan.get_weights()))
    for n, w in tied.items():
        np.testing.assert_array_equal(mine["discriminator/" + n], w)
    np.testing.assert_allclose(gan.predict(z), discriminator.predict(generator.predict(z)), rtol=1e-5, atol=1e-6)
    # set_weights on one model is seen by the other.
    new = [w * 0.5 for w in generator.get_weights()]
    generator.set_weights(new)
    np.testing.assert_array_equal(dict(zip(gan.weight_names, gan.get_weights()))["generator/" + name],
                                  new[generator.weight_names.index(name)])


def test_the_gan_loop_trains_the_same_across_the_rebuild_for_taking_turns(turns):
    """The runtime sees the GAN's three models taking turns within the first steps and rebuilds
    their sessions (pools that stop spinning, runtime/devices.py) with their weights tied; the
    losses and weights are those of a loop whose sessions stopped spinning from the start."""
    x = load_digits(None)[:256]
    runs = []
    for seen in (False, True):
        turns.reset()
        turns.seen = seen
        models = build(seed=3)
        rng = np.random.default_rng(0)
        losses = [train_step(*models, x[i * 64:(i + 1) * 64], rng) for i in range(4)]
        assert turns.seen and all(m._stops_spinning for m in models)
        runs.append((losses, [w for m in models for w in m.get_weights()]))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
