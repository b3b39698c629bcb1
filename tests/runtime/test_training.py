"""fit/evaluate on real data; determinism, resume, atomic checkpoints, NaN stop, input errors."""
import os
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile import ShapeMismatch
from kcompile.callbacks import Callback, ModelCheckpoint
from kcompile.runtime import devices
from kcompile.utils import to_categorical

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mnist_sample():
    """The 1,000 real MNIST test images shipped in examples/data (first 800 to train, last 200 to test)."""
    with np.load(ROOT / "examples" / "data" / "mnist_sample.npz") as d:
        x = d["x"][..., None].astype(np.float32) / 255.0
        y = d["y"].astype(np.int64)
    return (x[:800], y[:800]), (x[800:], y[800:])


SMALL = """
model small {
    input x: float32[6]
    Dense(16, activation=relu)
    Dropout(0.3)
    BatchNormalization()
    probs = Dense(3, activation=softmax)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = Adam(learning_rate=0.01)
        metrics = [accuracy]
    }
}
"""


# Its first two kernels qualify for feature-major-dense: the step holds them transposed.
FEATURE_MAJOR = """
model fm {
    input x: float32[6]
    Dense(16, activation=relu)
    Dense(8, activation=tanh)
    probs = Dense(3, activation=softmax)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = RMSprop(learning_rate=0.01)
        metrics = [accuracy]
    }
}
"""


FEATURE_MAJOR_DROPOUT = FEATURE_MAJOR.replace("Dense(16, activation=relu)", "Dense(16, activation=relu)\n    Dropout(0.25)") \
                                    .replace("Dense(8, activation=tanh)", "Dense(8, activation=tanh)\n    Dropout(0.5)")


def trained_at_o1_and_o0(src, train):
    """``src`` compiled at -O1 and at -O0 (seed 0), each trained by ``train(model)``, which returns
    its losses or logs (dicts): both levels must give the same numbers and weights (in Keras
    layout). Returns the two models."""
    models, numbers = [], []
    for level in (1, 0):
        m = kcompile.compile_string(src, seed=0, opt_level=level)
        numbers.append([kv for v in train(m) for kv in (v.items() if isinstance(v, dict) else [("", v)])])
        models.append(m)
    assert [k for k, _ in numbers[0]] == [k for k, _ in numbers[1]]
    np.testing.assert_allclose([v for _, v in numbers[0]], [v for _, v in numbers[1]], rtol=1e-5)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    return models


def small_cnn(shape, layers):
    """A classifier of ``shape`` images: ``layers`` (separated by "; "), a 2x2 max pool, then a
    softmax Dense of 3 classes, trained with Adam."""
    body = "\n        ".join(layers.split("; "))
    return f"""model c {{
        input x: float32[{shape}]
        {body}
        MaxPooling2D(2)
        Flatten()
        probs = Dense(3, activation=softmax)
        output probs
        train {{
            loss = categorical_crossentropy
            optimizer = Adam(learning_rate=0.01)
        }}
    }}"""


def small_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = to_categorical((x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int), 3)
    return x, y


def test_mnist_mlp_learns_real_digits(mnist_sample):
    (x, y), (xt, yt) = mnist_sample
    model = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
    history = model.fit(x, to_categorical(y, 10), epochs=5, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 2
    loss, accuracy = model.evaluate(xt, to_categorical(yt, 10), verbose=0)
    assert accuracy >= 0.85, accuracy
    # evaluate agrees with predict
    np.testing.assert_allclose(accuracy, np.mean(model.predict(xt).argmax(1) == yt), atol=1e-6)


@pytest.mark.parametrize("example, least", [("mnist_cnn", 0.85), ("mnist_augmented", 0.8)])
def test_mnist_cnn_learns_real_digits(mnist_sample, example, least):
    """The MNIST CNN, and a CNN behind random rotation, zoom and translation, which leave the
    images as they are at inference: its predictions are those of its source without them."""
    (x, y), (xt, yt) = mnist_sample
    model = kcompile.compile(ROOT / "examples" / f"{example}.kdl", seed=0)
    model.fit(x, to_categorical(y, 10), epochs=4, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(xt, to_categorical(yt, 10), verbose=0)
    assert accuracy >= least, accuracy
    if example == "mnist_cnn":  # (no augmentation layers to leave out)
        return
    source = (ROOT / "examples" / f"{example}.kdl").read_text()
    plain = "\n".join(l for l in source.splitlines() if not l.strip().startswith("Random"))
    assert plain.count("\n") < source.count("\n") - 2  # (the rotation, zoom and translation left out)
    plain = kcompile.compile_string(plain)
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(model.predict(xt[:64]), plain.predict(xt[:64]), atol=1e-6)


def test_iris_reaches_090():
    from kcompile.datasets import iris
    (x, y), (xt, yt) = iris.split(test_fraction=0.2, seed=0)
    mean, std = x.mean(0), x.std(0)
    model = kcompile.compile(ROOT / "examples" / "iris_mlp.kdl", seed=0)
    model.fit((x - mean) / std, to_categorical(y, 3), epochs=100, batch_size=16, verbose=0)
    _, accuracy = model.evaluate((xt - mean) / std, to_categorical(yt, 3), verbose=0)
    assert accuracy >= 0.9, accuracy


def test_same_seed_same_history_and_weights():
    x, y = small_data()
    runs = []
    for _ in range(2):
        m = kcompile.compile_string(SMALL, seed=4)
        h = m.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_split=0.25)
        runs.append((h.history, m.get_weights()))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    other = kcompile.compile_string(SMALL, seed=5).fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert other.history["loss"] != runs[0][0]["loss"]


@pytest.mark.parametrize("src", [SMALL, FEATURE_MAJOR], ids=["dropout-batchnorm", "transposed-kernels"])
def test_resume_from_checkpoint_continues_the_exact_trajectory(tmp_path, src):
    x, y = small_data()
    straight = kcompile.compile_string(src, seed=1)
    full = straight.fit(x, y, epochs=4, batch_size=16, verbose=0).history["loss"]

    first = kcompile.compile_string(src, seed=1)
    first.fit(x, y, epochs=2, batch_size=16, verbose=0)
    first.save(tmp_path / "ckpt")
    resumed = kcompile.load(tmp_path / "ckpt")
    assert resumed.iterations == first.iterations == 12
    assert resumed.epochs_done == first.epochs_done == 2 and straight.epochs_done == 4
    rest = resumed.fit(x, y, epochs=4, initial_epoch=resumed.epochs_done, batch_size=16, verbose=0).history["loss"]
    np.testing.assert_array_equal(rest, full[2:])
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("src", [FEATURE_MAJOR, FEATURE_MAJOR_DROPOUT], ids=["activations", "dropout"])
def test_kernels_held_transposed_train_as_in_keras_layout(src):
    """The step holds two kernels and their RMSprop slots transposed (feature-major-dense; with
    Dropout between the layers, whose noise is drawn as at -O0 and transposed); the losses,
    weights and optimizer state are those of the unoptimized (-O0) step, in Keras layout."""
    x, y = small_data()
    fast, plain = trained_at_o1_and_o0(src, lambda m: m.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"])
    assert fast.manifest["training"]["transposed"] == ["dense/kernel", "dense_1/kernel"]
    assert plain.manifest["training"]["transposed"] == []
    runner = fast._runner
    assert runner.buffers[runner.position]["dense/kernel"].shape() == [16, 6]  # held transposed
    slots = plain.optimizer_state()
    for name, value in fast.optimizer_state().items():
        assert value.shape == slots[name].shape
        np.testing.assert_allclose(value, slots[name], rtol=1e-4, atol=1e-7)


TWO_HEADS_ONE_LOSS = """
model two {
    input x: float32[4]
    h = Dense(8, activation=relu)(x)
    a = Dense(3, activation=softmax)(h)
    g = Dense(4, activation=relu)(x)
    b = Dense(2)(g)
    output a, b
    train {
        loss = categorical_crossentropy(a)
        optimizer = SGD(learning_rate=0.1)
        metrics = [mae(b)]
    }
}
"""

HIDDEN_IN_LOSS = """
model hid {
    input x: float32[6]
    h = Dense(8, activation=relu)(x)
    a = Dense(3, activation=softmax)(h)
    u = Dense(1, activation=relu)(x)
    c = Dense(3)(u)
    output a, c
    train {
        target ht: float32[8]
        loss = categorical_crossentropy(a) + 0.1 * mse(ht, h) + mse(c)
        optimizer = RMSprop(learning_rate=0.01)
    }
}
"""


@pytest.mark.parametrize("src", [TWO_HEADS_ONE_LOSS, HIDDEN_IN_LOSS], ids=["kernel-without-gradient", "hidden-in-loss"])
def test_held_kernels_agree_with_the_unoptimized_step(src):
    """A transposed kernel the loss never reaches (read, never updated, its head measured by a
    metric); a hidden value the loss names (left as it is); a [4, 1] kernel, whose transpose is
    contiguous (synced weights must still be copies, not views of the step's buffers)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4 if "two" in src else 6)).astype(np.float32)
    if "two" in src:
        y = {"a_target": np.eye(3, dtype=np.float32)[rng.integers(0, 3, 32)], "b_target": np.ones((32, 2), np.float32)}
    else:
        y = {"a_target": np.eye(3, dtype=np.float32)[rng.integers(0, 3, 32)], "ht": np.ones((32, 8), np.float32),
             "c_target": np.ones((32, 3), np.float32)}
    fast, _ = trained_at_o1_and_o0(src, lambda m: [m.train_on_batch(x, y, return_dict=True) for _ in range(3)])
    # (h, named by the loss, stays batch-major; u's [6, 1] kernel is held as [1, 6])
    assert fast.manifest["training"]["transposed"] == (["dense/kernel", "dense_2/kernel"] if "two" in src
                                                       else ["dense_2/kernel"])
    fast._sync_state()
    for name, buffer in fast._runner.current().items():
        assert not np.shares_memory(buffer, fast._weights.get(name, fast._slots.get(name)))


def test_dropout_noise_is_drawn_in_the_unoptimized_order():
    """A Dropout that feature-major-dense re-creates (branch a) keeps its place among the noise
    inputs, which the runtime draws in order: -O1 trains with -O0's masks."""
    src = """model two {
        input x: float32[6]
        a1 = Dense(16, activation=relu)(x)
        a3 = Dense(8)(Dropout(0.5)(a1))
        b2 = Dropout(0.5)(Dense(8, activation=relu)(x))
        probs = Dense(3, activation=softmax)(a3 + b2)
        output probs
        train {
            loss = categorical_crossentropy
            optimizer = SGD(learning_rate=0.1)
        }
    }"""
    x, y = small_data()
    fast, plain = trained_at_o1_and_o0(src, lambda m: m.fit(x, y, epochs=2, batch_size=32, verbose=0).history["loss"])
    assert fast.manifest["training"]["transposed"] == ["dense/kernel"]
    assert fast.manifest["training"]["noise"] == plain.manifest["training"]["noise"]


@pytest.mark.parametrize("dropout,noise", [("Dropout(0.4)", ["N", 6, 6, 4]), ("SpatialDropout2D(0.5)", ["N", 1, 1, 4])])
def test_dropout_after_a_convolution_draws_the_unoptimized_masks(dropout, noise):
    """Transpose sinking moves a Dropout into the convolutions' channels-first layout; its noise
    is still drawn channels-last, as at -O0, and transposed: -O1 trains with -O0's masks. (It
    stops at a SpatialDropout2D, whose noise_shape is per axis: that compiles and trains as at
    -O0 too.)"""
    src = small_cnn("8, 8, 2", f"Conv2D(4, 3, activation=relu); {dropout}; Conv2D(4, 3, padding=same)")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 8, 8, 2)).astype(np.float32)
    y = to_categorical(rng.integers(0, 3, 48), 3)
    fast, plain = trained_at_o1_and_o0(src, lambda m: m.fit(x, y, epochs=2, batch_size=16, verbose=0).history["loss"])
    assert fast.manifest["training"]["noise"] == plain.manifest["training"]["noise"]
    assert plain.manifest["training"]["noise"][0]["shape"] == noise  # channels-last


def test_a_shared_kernel_held_transposed_stays_one_buffer():
    """Both models hold inner's first kernel transposed in their steps; shared, the steps read
    and write it in Keras layout, and alternating training matches the unoptimized steps."""
    x, y = small_data()
    runs = []
    for level in (1, 0):
        inner = kcompile.compile_string(SHARED, model="inner", seed=0, opt_level=level)
        outer = kcompile.compile_string(SHARED, model="outer", seed=1, opt_level=level)
        outer.fit(x, y, epochs=1, batch_size=16, verbose=0)  # a step built before the sharing
        outer.share_weights(inner, "inner/")
        losses = []
        for _ in range(2):
            losses += inner.fit(x, y, epochs=1, batch_size=16, verbose=0).history["loss"]
            losses += outer.fit(x, y, epochs=1, batch_size=16, verbose=0).history["loss"]
        mine = dict(zip(outer.weight_names, outer.get_weights()))
        for name, value in zip(inner.weight_names, inner.get_weights()):
            np.testing.assert_array_equal(mine["inner/" + name], value)
        runs.append((losses, inner.get_weights()))
    assert "inner/dense/kernel" in kcompile.compile_string(SHARED, model="outer").manifest["training"]["transposed"]
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_batch_logs_reach_every_kind_of_batch_callback():
    """fit computes a batch's running logs only for callbacks that read them: a subclass's
    on_train_batch_end, Keras's on_batch_end alias, and a LambdaCallback's function."""
    from kcompile.callbacks import CallbackList, LambdaCallback
    x, y = small_data()
    seen = []

    class Modern(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(("modern", logs["loss"]))

    class Legacy(Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(("legacy", logs["accuracy"]))

    class Late(Callback):  # a hook attached when training begins
        def on_train_begin(self, logs=None):
            self.on_train_batch_end = lambda batch, logs: seen.append(("late", logs["loss"]))

    lam = LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(("lambda", logs["loss"])))
    m = kcompile.compile_string(SMALL, seed=0)
    history = m.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[Modern(), Legacy(), lam])
    assert [k for k, _ in seen] == ["modern", "legacy", "lambda"] * 3
    assert seen[-1][1] == pytest.approx(history.history["loss"][0])  # the epoch's running mean
    seen.clear()
    history = m.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[Late()])
    assert [k for k, _ in seen] == ["late"] * 3 and seen[-1][1] == pytest.approx(history.history["loss"][0])
    assert not CallbackList([Callback(), LambdaCallback(on_epoch_end=print)], add_history=True).reads_batch_logs()


def checkpointed_then_trained(tmp_path):
    """(a model trained an epoch further than its checkpoint at tmp_path/ckpt, the path, the
    checkpoint's weights)."""
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = m.save(tmp_path / "ckpt")
    good = kcompile.load(path).get_weights()
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return m, path, good


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    m, path, good = checkpointed_then_trained(tmp_path)

    import kcompile.driver as driver
    real_fsync = os.fsync
    calls = {"n": 0}

    def crash(fd):  # die in the middle of writing the new checkpoint's files
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("simulated crash mid-write")
        real_fsync(fd)

    monkeypatch.setattr(driver.os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        m.save(path)
    monkeypatch.setattr(driver.os, "fsync", real_fsync)
    for a, b in zip(kcompile.load(path).get_weights(), good):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging folder left behind


def test_checkpoint_swap_cut_off_between_its_renames_keeps_the_previous_one(tmp_path, monkeypatch):
    """The previous checkpoint steps aside as .NAME.old while the new one takes its name: an error
    between the two renames puts it back, and after a crash there load reads it from .NAME.old."""
    m, path, good = checkpointed_then_trained(tmp_path)
    real_rename = Path.rename

    def fail_swap_in(self, target):  # the new folder's rename into place fails
        if Path(target) == path and self.name.startswith(".ckpt.") and not self.name.endswith(".old"):
            raise OSError("simulated failure between the renames")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", fail_swap_in)
    with pytest.raises(OSError, match="between the renames"):
        m.save(path)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    for a, b in zip(kcompile.load(path).get_weights(), good):
        np.testing.assert_array_equal(a, b)
    path.rename(tmp_path / ".ckpt.old")  # as a crash between the renames leaves it
    for a, b in zip(kcompile.load(path).get_weights(), good):
        np.testing.assert_array_equal(a, b)
    m.save(path)  # and the next save writes the new one in its place, the .old one gone
    for a, b in zip(kcompile.load(path).get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_save_removes_the_staging_folders_killed_saves_left(tmp_path, monkeypatch):
    """A save killed while writing leaves its staging folder (.NAME.xxxxxxxx, a whole checkpoint's
    bytes) beside the checkpoint: the next save of it removes those untouched for a while (a
    younger one may be another process's save in flight)."""
    import os
    import time
    from kcompile import driver
    m, path, _ = checkpointed_then_trained(tmp_path)
    stale, fresh = tmp_path / ".ckpt.kcstage-k1lled00", tmp_path / ".ckpt.kcstage-inflight"
    # (not staging folders of this save's: another checkpoint's, the .old one of ckpt.last, a copy)
    others = [".other.kcstage-k1lled00", ".ckpt.last.old", ".ckpt.20240101"]
    old = time.time() - driver.STALE_STAGING_S - 60
    for folder in [stale, fresh] + [tmp_path / o for o in others]:
        folder.mkdir()
        (folder / "weights.npz").write_bytes(b"x" * 1000)
        if folder != fresh:
            os.utime(folder, (old, old))
    m.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, "ckpt"] + others)


def test_model_checkpoint_callback_writes_loadable_checkpoints(tmp_path):
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    m.fit(x, y, epochs=2, batch_size=32, verbose=0,
          callbacks=[ModelCheckpoint(str(tmp_path / "ep{epoch:02d}"), monitor="loss")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep01", "ep02"]
    assert kcompile.load(tmp_path / "ep02").iterations == 6


def test_nonfinite_loss_stops_and_keeps_last_finite_weights(capsys):
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    seen = []

    class Poison(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(self.model.get_weights())
            if batch == 2:
                self.model._lr_override = float("nan")  # (a poisoned step: the public setter refuses NaN)

    m.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[Poison()])
    assert "the loss became nan at epoch 1, step 5" in capsys.readouterr().out
    # Step 4 ran with a NaN rate, so step 5's loss was NaN: the weights go back to those after step 3.
    assert m.stop_training and m.iterations == 3
    for a, b in zip(m.get_weights(), seen[2]):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(w).all() for w in m.get_weights())


def test_nonfinite_loss_right_after_set_weights_keeps_those_weights():
    """The step runner made after set_weights holds no earlier step to go back to: the weights
    set stay (not a buffer the runner never wrote), and training goes on from them."""
    from kcompile.runtime.training import NonFiniteLoss
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    start = m.get_weights()
    m.train_on_batch(x[:16], y[:16])
    m.set_weights(start)
    bad = x[:16].copy()
    bad[0, 0] = np.inf
    with pytest.raises(NonFiniteLoss):
        m.train_on_batch(bad, y[:16])
    for a, b in zip(m.get_weights(), start):
        np.testing.assert_array_equal(a, b)
    m.train_on_batch(x[:16], y[:16])
    assert all(np.isfinite(w).all() for w in m.get_weights())


def test_nonfinite_loss_after_the_runner_is_made_again_steps_back_as_before(turns):
    """Sessions rebuilt once the process is seen taking turns, or by set_trainable, make a new step
    runner: a non-finite loss on its first step still goes back to the last finite step's weights
    (the dropped runner's previous state), not to the weights that gave it."""
    from kcompile.runtime.training import NonFiniteLoss
    x, y = small_data()
    # (the second model's step splits into one-core parts, its first two kernels held transposed)
    for rebuild, src, parts in [("turns", SMALL, None), ("set_trainable", SMALL, None),
                                ("turns", FEATURE_MAJOR, 2), ("set_trainable", FEATURE_MAJOR, 2)]:
        turns.reset()
        m = kcompile.compile_string(src, seed=0)
        m.batch_parts = parts
        for _ in range(3):
            m.train_on_batch(x[:16], y[:16])
        kept = m.get_weights()
        m._lr_override = float("nan")  # (a poisoned step: the public setter refuses NaN)
        if rebuild == "turns":
            turns.seen = True  # (the runner is dropped after the next step's run)
        m.train_on_batch(x[:16], y[:16])  # a finite loss, NaN weights written
        if rebuild == "set_trainable":
            m.set_trainable("dense", True)
        first = m._runner
        with pytest.raises(NonFiniteLoss):
            m.train_on_batch(x[:16], y[:16])
        assert first is None and m.iterations == 3, rebuild  # (the NaN step ran on a new runner)
        assert m._batch_parts() == (parts or 1)
        for a, b in zip(m.get_weights(), kept):
            np.testing.assert_array_equal(a, b)


def test_nonfinite_train_on_batch_then_predict_uses_the_weights_kept():
    from kcompile.runtime.training import NonFiniteLoss
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    m.train_on_batch(x[:16], y[:16])
    m.train_on_batch(x[:16], y[:16])
    m._lr_override = float("nan")  # (a poisoned step: the public setter refuses NaN)
    m.train_on_batch(x[:16], y[:16])  # NaN weights written
    m.predict(x[:4])
    m.predict(x[:4])  # (the second predict of the same weights folds them into a session)
    with pytest.raises(NonFiniteLoss):
        m.train_on_batch(x[:16], y[:16])
    reference = kcompile.compile_string(SMALL, seed=0)
    reference.set_weights(m.get_weights())
    assert all(np.isfinite(w).all() for w in m.get_weights())
    np.testing.assert_allclose(m.predict(x[:4]), reference.predict(x[:4]), rtol=1e-6, atol=1e-7)


def test_predict_during_fit_sees_the_current_weights():
    """A callback's predict between steps computes with the weights of the steps so far (also
    where a predict before fit had folded the initial weights into a session)."""
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    reference = kcompile.compile_string(SMALL, seed=0)
    m.predict(x[:4])
    m.predict(x[:4])
    initial = m.predict(x[:4])
    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, batch, logs=None):
            reference.set_weights(self.model.get_weights())
            seen.append((self.model.predict(x[:4]), reference.predict(x[:4])))

    m.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[Probe()])
    assert len(seen) == 3
    for got, want in seen:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert np.abs(got - initial).max() > 1e-4


def test_set_weights_copies_the_arrays_given():
    x, _ = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    weights = [w.copy() for w in m.get_weights()]
    m.set_weights(weights)
    before = m.predict(x[:4])
    for w in weights:
        w[...] = 0
    np.testing.assert_array_equal(m.predict(x[:4]), before)
    assert np.abs(m.get_weights()[0]).max() > 0


def test_no_samples_and_bad_batch_sizes_are_clear_errors():
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    for call in (lambda: m.train_on_batch(x[:0], y[:0]), lambda: m.test_on_batch(x[:0], y[:0]),
                 lambda: m.fit(x[:0], y[:0], verbose=0), lambda: m.fit(iter([(x[:0], y[:0])]), verbose=0)):
        with pytest.raises(ValueError, match="no samples"):
            call()
    assert m.iterations == 0
    for size in (-1, 0, 2.5):
        with pytest.raises(ValueError, match=f"predict: batch_size must be a positive integer or None, got {size}"):
            m.predict(x[:4], batch_size=size)
    assert m.predict(x[:0]).shape == (0, 3)
    for call in (lambda size: m.fit(x, y, batch_size=size, verbose=0), lambda size: m.evaluate(x, y, batch_size=size)):
        with pytest.raises(ValueError, match="batch_size must be a positive integer, got True"):
            call(True)
    m.fit(x, y, batch_size=np.int64(32), verbose=0)  # numpy's integers are integers, as in Keras
    assert m.iterations == -(-len(x) // 32)
    assert np.isfinite(m.evaluate(x, y, batch_size=np.int32(16))[0])


def test_wrong_shapes_fail_before_the_first_step():
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    before = m.get_weights()
    with pytest.raises(ShapeMismatch, match=r"input 'x' expects shape \(None, 6\), got \(96, 5\)"):
        m.fit(x[:, :5], y, verbose=0)
    with pytest.raises(ShapeMismatch, match=r"target 'probs_target' expects shape \(None, 3\), got \(96,\).*"
                                            r"to_categorical"):
        m.fit(x, y.argmax(1), verbose=0)
    with pytest.raises(ShapeMismatch, match=r"different lengths: input 'x' has 96, target 'probs_target' has 95"):
        m.fit(x, y[:95], verbose=0)
    with pytest.raises(ShapeMismatch, match="expects float32 numbers, got dtype <U"):
        m.fit(np.full((96, 6), "a"), y, verbose=0)
    assert m.iterations == 0
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_generator_input_trains_like_arrays():
    x, y = small_data()
    a = kcompile.compile_string(SMALL, seed=2)
    a.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)

    def batches():
        for i in range(0, len(x), 16):
            yield x[i:i + 16], y[i:i + 16]

    b = kcompile.compile_string(SMALL, seed=2)
    b.fit(batches(), epochs=1, verbose=0)
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_train_and_test_on_batch_and_predict_after_training():
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    before = m.predict(x)
    loss, acc = m.train_on_batch(x[:32], y[:32])
    assert np.isfinite(loss) and 0 <= acc <= 1 and m.iterations == 1
    assert not np.allclose(m.predict(x), before)  # the inference session sees the new weights
    logs = m.test_on_batch(x[:32], y[:32], return_dict=True)
    assert set(logs) == {"loss", "accuracy"}


def test_batchnorm_moving_statistics_follow_keras():
    src = """model bn {
        input x: float32[3]
        y = BatchNormalization(momentum=0.9)
        output y
        train {
            loss = mse
            optimizer = SGD(learning_rate=0.0)
        }
    }"""
    m = kcompile.compile_string(src)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 3)).astype(np.float32)
    m.train_on_batch(x, np.zeros((64, 3), np.float32))
    gamma, beta, mean, var = m.get_weights()
    np.testing.assert_allclose(mean, 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, 0.9 + 0.1 * x.var(0), rtol=1e-5)


def test_fit_progress_verbose_2(capsys):
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    m.fit(x, y, epochs=2, batch_size=32, verbose=2, validation_split=0.25)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Epoch 1/2"
    assert out[1].startswith("3/3 - ") and "accuracy: " in out[1] and "val_loss: " in out[1]


def test_model_without_train_section_says_so():
    m = kcompile.compile_string("model p {\n input x: float32[2]\n y = Dense(1)\n output y\n}")
    with pytest.raises(RuntimeError, match="has no train section"):
        m.fit(np.zeros((2, 2)), np.zeros((2, 1)))


SHARED = """
model inner {
    input x: float32[6]
    h = Dense(5, activation=tanh)(x)
    y = Dense(3, activation=softmax)(h)
    output y
    train {
        loss = categorical_crossentropy
        optimizer = Adam(learning_rate=0.01)
    }
}
model outer {
    input x: float32[6]
    y = inner(Dense(6, activation=tanh)(x))
    output y
    train {
        loss = categorical_crossentropy
        optimizer = Adam(learning_rate=0.01)
    }
}
"""


def test_shared_weights_go_back_with_a_nonfinite_step(capsys):
    """A non-finite loss in one model puts the shared buffers back for the other model too."""
    x, y = small_data()
    inner = kcompile.compile_string(SHARED, model="inner", seed=0)
    outer = kcompile.compile_string(SHARED, model="outer", seed=1)
    assert outer.share_weights(inner, "inner/") == 4
    inner.fit(x, y, epochs=1, batch_size=16, verbose=0)  # the inner model trains first, on its own
    seen = []

    class Poison(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dict(zip(inner.weight_names, inner.get_weights())))
            if batch == 2:
                self.model._lr_override = float("nan")  # (a poisoned step: the public setter refuses NaN)

    outer.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[Poison()])
    assert "the loss became nan" in capsys.readouterr().out
    mine = dict(zip(outer.weight_names, outer.get_weights()))
    for name, value in seen[2].items():  # both models hold the weights after the last finite step
        np.testing.assert_array_equal(inner.get_weights()[inner.weight_names.index(name)], value)
        np.testing.assert_array_equal(mine["inner/" + name], value)
    inner.fit(x, y, epochs=1, batch_size=16, verbose=0)  # and train on from there
    assert all(np.isfinite(w).all() for w in inner.get_weights() + outer.get_weights())


# ---- the fit loop as Keras 3 runs it (found by a review against Keras) ----
def test_steps_per_epoch_goes_on_through_the_arrays_across_epochs():
    x, y = small_data(64)
    m = kcompile.compile_string(SMALL, seed=0)
    history = m.fit(x, y, batch_size=16, epochs=4, steps_per_epoch=1, shuffle=False, verbose=0)
    ref = kcompile.compile_string(SMALL, seed=0)
    losses = [ref.train_on_batch(x[i:i + 16], y[i:i + 16], return_dict=True)["loss"] for i in range(0, 64, 16)]
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-6)


def test_an_epoch_that_reaches_the_end_of_the_arrays_stops_there_as_keras():
    """22 rows in batches of 5 (5 batches a pass), 3 steps an epoch: Keras 3.15 runs 3, 2, 3, 2
    steps (an epoch stops at the end of a pass, the next starts a new one); kcompile wrapped
    around within the epoch (3, 3, 3, 3). With a zero learning rate and rows that are their own
    index, each epoch's loss says which rows it saw."""
    x = np.arange(22, dtype=np.float32)[:, None]
    m = kcompile.compile_string("model m {\n    input x: float32[1]\n    y = Dense(1)\n    output y\n    train {\n"
                                "        loss = mse\n        optimizer = SGD(learning_rate=0.0)\n    }\n}\n")
    m.set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    seen = []

    class Rows(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(0)

        def on_train_batch_end(self, batch, logs=None):
            seen[-1] += 1

    with pytest.warns(UserWarning, match="ran out of batches 2 steps into an epoch of 3"):
        history = m.fit(x, np.zeros((22, 1), np.float32), batch_size=5, epochs=4, steps_per_epoch=3,
                        shuffle=False, verbose=0, callbacks=[Rows()])
    assert seen == [3, 2, 3, 2]
    batch_losses = [float((x[i:i + 5] ** 2).mean()) for i in range(0, 22, 5)]
    sizes = [5, 5, 5, 5, 2]
    means = [np.average(batch_losses[:3], weights=sizes[:3]), np.average(batch_losses[3:], weights=sizes[3:])]
    np.testing.assert_allclose(history.history["loss"], means * 2, rtol=1e-6)  # Keras: 67.67, 328.0, 67.67, 328.0


def test_a_generator_gives_exactly_steps_per_epoch_batches_and_running_out_stops_training(capsys):
    x, y = small_data(96)
    pulled = []

    def batches():
        for i in range(0, 96, 16):
            pulled.append(i)
            yield x[i:i + 16], y[i:i + 16]

    m = kcompile.compile_string(SMALL, seed=0)
    m.fit(batches(), epochs=2, steps_per_epoch=3, verbose=0)
    assert pulled == [0, 16, 32, 48, 64, 80] and m.iterations == 6  # (none taken and dropped)
    m = kcompile.compile_string(SMALL, seed=0)
    history = m.fit(batches(), epochs=3, verbose=0)  # (one pass: the second epoch has nothing)
    assert "the training data ran out at epoch 2" in capsys.readouterr().out
    assert {k: len(v) for k, v in history.history.items()} == {"loss": 1, "accuracy": 1}
    assert m.stop_training and m.iterations == 6
    m = kcompile.compile_string(SMALL, seed=0)
    history = m.fit(batches(), epochs=2, steps_per_epoch=4, verbose=0)  # (6 batches: the second epoch has 2)
    assert "the training data ran out at epoch 2" in capsys.readouterr().out
    assert len(history.history["loss"]) == 2 and m.iterations == 6


def test_validation_in_fit_calls_the_test_hooks_and_takes_an_iterable():
    x, y = small_data(96)
    seen = []

    class Hooks(Callback):
        def on_test_begin(self, logs=None):
            seen.append("test_begin")

        def on_test_batch_end(self, batch, logs=None):  # (given the running logs, as Keras)
            seen.append(f"test_batch_end{batch}" if logs and "loss" in logs else "no logs")

        def on_test_end(self, logs=None):
            seen.append(("test_end", round(logs["loss"], 6)))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("epoch_end", round(logs["val_loss"], 6)))

    m = kcompile.compile_string(SMALL, seed=0)
    m.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0, validation_data=(x[64:], y[64:]), callbacks=[Hooks()])
    loss = round(m.evaluate(x[64:], y[64:], batch_size=16, verbose=0, return_dict=True)["loss"], 6)
    assert seen == ["test_begin", "test_batch_end0", "test_batch_end1", ("test_end", loss), ("epoch_end", loss)]
    batches = [(x[64:80], y[64:80]), (x[80:], y[80:])]
    vals = []

    class Val(Callback):  # (the validation each epoch, as evaluate gives it)
        def on_epoch_end(self, epoch, logs=None):
            vals.append(self.model.evaluate(x[64:], y[64:], batch_size=16, verbose=0, return_dict=True)["loss"])

    # a one-shot iterator validates every epoch (its batches kept), not only the first
    history = m.fit(x[:64], y[:64], batch_size=16, epochs=2, verbose=0, validation_data=iter(batches),
                    callbacks=[Val()])
    np.testing.assert_allclose(history.history["val_loss"], vals, rtol=1e-6)
    assert len(history.history["val_accuracy"]) == 2
    # (x, y, sample_weight) validates on the weighted loss, as evaluate(sample_weight=...) gives it
    weights = np.linspace(0, 2, len(x) - 64).astype(np.float32)
    vals.clear()

    class WeightedVal(Callback):
        def on_epoch_end(self, epoch, logs=None):
            vals.append(self.model.evaluate(x[64:], y[64:], batch_size=16, sample_weight=weights, verbose=0))

    history = m.fit(x[:64], y[:64], batch_size=16, verbose=0, validation_data=(x[64:], y[64:], weights),
                    callbacks=[WeightedVal()])
    np.testing.assert_allclose([history.history["val_loss"][0], history.history["val_accuracy"][0]], vals[0],
                               rtol=1e-6)
    assert history.history["val_loss"][0] != pytest.approx(m.evaluate(x[64:], y[64:], verbose=0)[0], rel=1e-3)


def test_a_checkpoint_saved_at_an_epochs_end_resumes_after_that_epoch(tmp_path):
    x, y = small_data()
    m = kcompile.compile_string(SMALL, seed=0)
    m.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False,
          callbacks=[ModelCheckpoint(str(tmp_path / "ep{epoch:02d}"), monitor="loss")])
    first = kcompile.load(tmp_path / "ep01")
    assert first._epoch == 1 and first.iterations == 3
    first.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False, initial_epoch=first._epoch)
    for a, b in zip(first.get_weights(), m.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


SGD_MODEL = """
model weighted {
    input x: float32[6]
    Dense(8, activation=tanh)
    probs = Dense(3, activation=softmax)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = SGD(learning_rate=LR)
        metrics = [accuracy]
    }
}
"""


def test_sample_weight_and_class_weight_weigh_each_samples_loss_as_keras():
    """Keras's reduction: the batch's sum of weighted losses over its size (not over the
    weights' sum); metrics unweighted; class_weight is a sample weight by class (1 where the dict
    leaves a class out). A scratch run matched Keras/JAX's losses and weights to 1e-7."""
    x, y = small_data(40)
    m = kcompile.compile_string(SGD_MODEL.replace("LR", "0.5"), seed=0)
    weights = np.random.default_rng(1).random(40).astype(np.float32) * 2
    p = m.predict(x)
    ce = -(y * np.log(p)).sum(-1)
    accuracy = (p.argmax(-1) == y.argmax(-1)).mean()
    assert m.evaluate(x, y, batch_size=40, sample_weight=weights, verbose=0) == pytest.approx(
        [(ce * weights).mean(), accuracy], rel=1e-5)
    # two batches: their losses by batch size, as Keras
    halves = [(ce[s] * weights[s]).mean() for s in (slice(0, 32), slice(32, 40))]
    assert m.evaluate(x, y, batch_size=32, sample_weight=weights, verbose=0)[0] == pytest.approx(
        (halves[0] * 32 + halves[1] * 8) / 40, rel=1e-5)
    # class_weight = the sample weights of the samples' classes
    by_class = {0: 0.5, 2: 3.0}
    as_samples = np.array([by_class.get(c, 1.0) for c in y.argmax(-1)], np.float32)
    assert m.evaluate(x, y, batch_size=40, sample_weight=as_samples, verbose=0) == pytest.approx(
        m.test_on_batch(x, y, sample_weight=as_samples), rel=1e-6)
    runs = []
    for kw in (dict(class_weight=by_class), dict(sample_weight=as_samples)):
        model = kcompile.compile_string(SGD_MODEL.replace("LR", "0.5"), seed=0)
        runs.append(model.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0, **kw).history["loss"])
    assert runs[0] == runs[1]
    # SGD on a full batch: weights of 2 everywhere step as a doubled learning rate
    twice = kcompile.compile_string(SGD_MODEL.replace("LR", "0.5"), seed=0)
    twice.fit(x, y, batch_size=40, epochs=3, sample_weight=np.full(40, 2.0), verbose=0)
    faster = kcompile.compile_string(SGD_MODEL.replace("LR", "1.0"), seed=0)
    faster.fit(x, y, batch_size=40, epochs=3, verbose=0)
    for a, b in zip(twice.get_weights(), faster.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sample_weights_in_batches_splits_and_their_errors():
    x, y = small_data(40)
    weights = np.linspace(0.1, 2, 40).astype(np.float32)
    runs = []
    for data in (dict(x=x, y=y, sample_weight=weights),
                 dict(x=iter([(x[i:i + 10], y[i:i + 10], weights[i:i + 10]) for i in range(0, 40, 10)]))):
        m = kcompile.compile_string(SGD_MODEL.replace("LR", "0.5"), seed=0)
        runs.append(m.fit(batch_size=10, shuffle=False, verbose=0, **data).history["loss"])
    assert runs[0] == pytest.approx(runs[1], rel=1e-6)  # (an iterable's batches carry their weights)
    m = kcompile.compile_string(SGD_MODEL.replace("LR", "0.5"), seed=0)
    # validation_split cuts the weights with the rows (the last 25% validate, weighted)
    history = m.fit(x, y, batch_size=10, validation_split=0.25, sample_weight=weights, verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(
        m.evaluate(x[30:], y[30:], sample_weight=weights[30:], verbose=0)[0], rel=1e-6)
    for kw, message in ((dict(sample_weight=weights[:5]), r"sample_weight expects shape \(40,\), one weight per "
                                                          r"sample, got \(5,\)"),
                        (dict(sample_weight=weights, class_weight={0: 1.0}), "not both"),
                        (dict(class_weight=[1.0, 2.0]), "class_weight must be a dict")):
        with pytest.raises(ValueError, match=message):
            m.fit(x, y, verbose=0, **kw)
    with pytest.raises(ValueError, match=r"give each batch's weights in it: \(x, y, sample_weight\)"):
        m.fit(iter([(x, y)]), sample_weight=weights, verbose=0)


def test_validation_freq_validates_after_the_epochs_it_names():
    x, y = small_data(40)
    m = kcompile.compile_string(SGD_MODEL.replace("LR", "0.1"), seed=0)
    history = m.fit(x[:30], y[:30], epochs=5, verbose=0, validation_data=(x[30:], y[30:]), validation_freq=2)
    assert len(history.history["loss"]) == 5 and len(history.history["val_loss"]) == 2
    history = m.fit(x[:30], y[:30], epochs=5, verbose=0, validation_data=(x[30:], y[30:]), validation_freq=[1, 5])
    assert len(history.history["val_loss"]) == 2
    assert history.history["val_loss"][-1] == pytest.approx(m.evaluate(x[30:], y[30:], verbose=0)[0], rel=1e-6)
    with pytest.raises(ValueError, match="validation_freq must be a positive integer or a list of epochs"):
        m.fit(x, y, verbose=0, validation_freq=0)


def test_a_model_value_named_sample_weight_is_the_users_own():
    """(the loss's per-sample weights are a graph input of a name no source value can have)"""
    m = kcompile.compile_string("""
model named {
    input x: float32[4]
    input sample_weight: float32[2]
    h = concat(x, sample_weight, axis=-1)
    probs = Dense(3, activation=softmax)(h)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = SGD()
    }
}
""")
    rng = np.random.default_rng(0)
    x = {"x": rng.random((8, 4), dtype=np.float32), "sample_weight": rng.random((8, 2), dtype=np.float32)}
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    p = m.predict(x)
    weights = np.linspace(0, 1, 8).astype(np.float32)
    expected = (-(y * np.log(p)).sum(-1) * weights).mean()
    assert m.evaluate(x, y, sample_weight=weights, batch_size=8, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_targets_as_keras_takes_them_and_labels_out_of_range_are_refused():
    """Class labels as [n] or [n, 1], a Dense(1) regression's y as [n] or [n, 1] (Keras squeezes or
    expands a target to the prediction's rank); a label outside the classes is an error (it
    trained on a one-hot row of zeros, a loss of 0, with no word)."""
    sparse = kcompile.compile_string("""model s {
    input x: float32[4]
    probs = Dense(3, activation=softmax)
    output probs
    train {
        loss = sparse_categorical_crossentropy
        optimizer = SGD()
        metrics = [accuracy]
    }
}""")
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    labels = np.array([0, 1, 2, 1, 0])
    assert sparse.evaluate(x, labels[:, None], verbose=0) == sparse.evaluate(x, labels, verbose=0)
    for bad, shown in ((np.array([0, 1, 3, 1, 0]), "from 0 to 3"), (np.array([[0], [1], [-1], [1], [0]]), "from -1 to 1")):
        with pytest.raises(ShapeMismatch, match=rf"target 'probs_target' holds class labels {shown}; its prediction "
                                                r"has 3 classes \(0 to 2\)"):
            sparse.fit(x, bad, verbose=0)
    assert sparse.iterations == 0
    regression = kcompile.compile_string("model r {\n    input x: float32[4]\n    y = Dense(1)\n    output y\n"
                                         "    train {\n        loss = mse\n        optimizer = SGD()\n    }\n}")
    y = np.linspace(-1, 1, 5).astype(np.float32)
    expected = ((regression.predict(x)[:, 0] - y) ** 2).mean()
    for given in (y, y[:, None]):
        assert regression.evaluate(x, given, verbose=0) == pytest.approx(expected, rel=1e-6)


def test_reset_optimizer_trains_as_a_fresh_model_from_the_same_weights():
    """(Keras's compile with a new optimizer, say after freezing: set_trainable keeps the Adam
    moments and the step count, reset_optimizer starts them again)"""
    x, y = small_data(64)
    m = kcompile.compile_string(SMALL, seed=0)
    m.fit(x, y, batch_size=16, epochs=2, verbose=0)
    m.reset_optimizer()
    assert m.iterations == 0 and all(not np.any(v) for v in m.optimizer_state().values())
    fresh = kcompile.compile_string(SMALL, seed=0)
    fresh.set_weights(m.get_weights())
    a = m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"]
    b = fresh.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for p, q in zip(m.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7)


def test_a_batchnorm_called_twice_updates_its_statistics_at_each_call_in_turn():
    """A shared BatchNormalization (a layer called twice, or a model holding one called twice):
    its moving statistics update at each call, the second from the first's, as Keras's do (the
    step wrote the statistic twice: an invalid ONNX graph)."""
    shared = """model shared {
        input x: float32[3]
        layer bn = BatchNormalization(momentum=0.9)
        a = bn(x)
        b = bn(x * 2.0)
        y = concat(a, b)
        train { loss = mse; optimizer = SGD(learning_rate=0.0) }
    }"""
    inner = """model sub { input x: float32[3]; y = BatchNormalization(momentum=0.9); output y }
    model twice {
        input x: float32[3]
        y = concat(sub(x), sub(x * 2.0))
        train { loss = mse; optimizer = SGD(learning_rate=0.0) }
    }"""
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 3)).astype(np.float32)
    mean = 0.9 * (0.1 * x.mean(0)) + 0.1 * (2 * x).mean(0)
    var = 0.9 * (0.9 + 0.1 * x.var(0)) + 0.1 * (2 * x).var(0)
    for src, model in ((shared, None), (inner, "twice")):
        m = kcompile.compile_string(src, model=model)
        m.train_on_batch(x, np.zeros((64, 6), np.float32))
        gamma, beta, got_mean, got_var = m.get_weights()
        np.testing.assert_allclose(got_mean, mean, rtol=1e-5)
        np.testing.assert_allclose(got_var, var, rtol=1e-5)


def test_a_validation_generator_with_validation_steps_gives_those_batches_every_epoch():
    """As Keras 3: a one-shot iterator's first validation_steps batches are kept and validate every
    epoch (an endless generator was read whole first, forever)."""
    x, y = small_data(96)
    drawn = []

    def batches():
        i = 0
        while True:
            drawn.append(i)
            yield x[64 + 8 * (i % 4):72 + 8 * (i % 4)], y[64 + 8 * (i % 4):72 + 8 * (i % 4)]
            i += 1
    m = kcompile.compile_string(SMALL, seed=0)
    vals = []

    class Val(Callback):  # (each epoch's validation, as evaluate gives it on the two batches kept)
        def on_epoch_end(self, epoch, logs=None):
            vals.append(self.model.evaluate(x[64:80], y[64:80], batch_size=8, verbose=0))

    history = m.fit(x[:64], y[:64], batch_size=16, epochs=3, verbose=0, validation_data=batches(),
                    validation_steps=2, callbacks=[Val()])
    assert drawn == [0, 1]
    np.testing.assert_allclose(history.history["val_loss"], [v[0] for v in vals], rtol=1e-6)


def test_a_nonfinite_loss_reaches_the_callbacks_as_keras(capsys):
    """The step goes back to the last finite weights and training stops, and the callbacks see the
    loss first, as Keras's: TerminateOnNaN at the batch's end, the History at the epoch's."""
    from kcompile.callbacks import TerminateOnNaN
    x, y = small_data()
    x[20, 0] = np.nan  # (the second batch's, unshuffled)
    m = kcompile.compile_string(SMALL, seed=0)
    history = m.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[TerminateOnNaN()])
    assert np.isnan(history.history["loss"]).tolist() == [True]
    out = capsys.readouterr().out
    assert "the loss became nan at epoch 1, step 2" in out and "Invalid loss" in out
    assert m.iterations == 0 and m.epochs_done == 0 and m.nonfinite is not None  # (back before the step that wrote)



def test_the_epoch_of_a_nonfinite_loss_logs_that_batch_and_validates_as_keras():
    """As Keras: the batch's metrics count in the logs, and the epoch's validation still runs
    (here of the weights kept, so History has every val_* key for every epoch it logged)."""
    x, y = small_data()
    x[20, 0] = np.nan  # (the second batch's, unshuffled)
    m = kcompile.compile_string(SMALL, seed=0)
    seen = []

    class Spy(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dict(logs))
    history = m.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, validation_data=(x[64:], y[64:]),
                    callbacks=[Spy()])
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert np.isnan(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    want = m.evaluate(x[64:], y[64:], verbose=0, return_dict=True)  # (the weights kept)
    assert history.history["val_loss"][0] == pytest.approx(want["loss"], rel=1e-6)
    first = seen[0]["accuracy"]  # (the second batch's accuracy counts: the mean of both batches)
    assert seen[1]["accuracy"] != first and 0.0 <= seen[1]["accuracy"] <= 1.0


def test_model_optimizer_as_keras_callbacks_use_it():
    m = kcompile.compile_string(SMALL, seed=0)
    assert m.optimizer.name == "Adam" and m.optimizer.learning_rate == pytest.approx(0.01)
    m.optimizer.learning_rate = 0.005
    assert m.learning_rate == pytest.approx(0.005) and m.optimizer.iterations == 0
    assert m.optimizer.get_config()["beta_1"] == 0.9
    plain = kcompile.compile_string("model p { input x: float32[2]\n y = Dense(1)(x) }")
    assert plain.optimizer is None


@pytest.mark.parametrize("most, halves", [(64, False), (32, True)])
def test_evaluate_runs_a_large_batch_in_even_runs_with_the_same_loss_and_metrics(monkeypatch, most, halves):
    """A batch larger than _eval_rows runs in even runs (300 rows at most 64: five of 60), whose
    loss and metric sums add up to the whole batch's: the same numbers, sample weights and the
    batch-size-weighted loss included, as in one run and as numpy's reference. With four runs a
    half or more (at most 32: halves of 150, five runs of 30 each), the halves run at once on two
    one-thread copies of the evaluation session, each its own."""
    src = SMALL.replace("metrics = [accuracy]", "metrics = [accuracy, mae]")
    model = kcompile.compile_string(src, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 300)]
    w = rng.random(300).astype(np.float32)
    runs = []
    monkeypatch.setattr(type(model), "_eval_rows", lambda self: most)
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    seen = type(model)._eval_run

    def counted(self, session, xb, yb, where):
        runs.append((session, len(next(iter(xb.values())))))
        return seen(self, session, xb, yb, where)
    monkeypatch.setattr(type(model), "_eval_run", counted)
    chunked = model.evaluate(x, y, batch_size=300, sample_weight=w, verbose=0)
    sessions = {id(s) for s, _ in runs}
    if halves:
        copies = model._copies["eval_parts"][1]
        assert sorted(n for _, n in runs) == [30] * 10 and sessions == {id(copies[0]), id(copies[1])}
        assert [n for s, n in runs if s is copies[0]] == [30] * 5
    else:
        assert [n for _, n in runs] == [60] * 5 and sessions == {id(model._eval_session)}
    monkeypatch.setattr(type(model), "_eval_rows", lambda self: None)
    whole = model.evaluate(x, y, batch_size=300, sample_weight=w, verbose=0)
    assert runs[-1][1] == 300
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    p = model.predict(x)
    loss = -(y * np.log(np.clip(p, 1e-7, 1 - 1e-7))).sum(axis=1)
    want = [float((loss * w).mean()), float((p.argmax(1) == y.argmax(1)).mean()), float(np.abs(p - y).mean())]
    np.testing.assert_allclose(chunked, want, rtol=1e-5)


@pytest.mark.parametrize("conv", ["Conv2D(6, 3, padding=same)", "Conv2DTranspose(5, 2, strides=2)"])
def test_layer_normalization_after_a_convolution_trains_by_centered_filters_as_at_o0(conv):
    """normalize-centering in the training step: the convolution reads its filters and bias less
    their mean over output channels and the LayerNormalization takes no mean of its map, forward
    or backward (cnn_layernorm's step 69-72 -> 61-67 ms); the losses and weights are -O0's."""
    from kcompile.driver import compile_source
    src = small_cnn("6, 6, 3", f"{conv}; LayerNormalization(); ReLU()")
    changed = {}
    compile_source(src, report=lambda name, before, after, change: changed.setdefault(name, change)).training()
    assert changed["train-forward:normalize-centering"]
    rng = np.random.default_rng(0)
    x = (1 + rng.normal(size=(48, 6, 6, 3))).astype(np.float32)
    y = to_categorical(rng.integers(0, 3, 48), 3)
    trained_at_o1_and_o0(src, lambda m: m.fit(x, y, epochs=2, batch_size=16, verbose=0).history["loss"])
