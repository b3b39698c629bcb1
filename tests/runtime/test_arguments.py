"""Bad arguments to the Python API are ValueErrors (or ShapeMismatch, or an OSError for a path)
that name the argument, what it expects and what it got; never a raw TypeError or AttributeError
from deeper down (found by a review). Keras's rules are the reference."""
import os
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile import ShapeMismatch

MLP = """model mlp {
    input x: float32[4]
    h = Dense(8, activation=relu)(x)
    probs = Dense(3, activation=softmax)(h)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = Adam()
        metrics = [accuracy]
    }
}
"""
X = np.random.default_rng(0).random((10, 4), dtype=np.float32)
Y = np.eye(3, dtype=np.float32)[np.arange(10) % 3]


@pytest.fixture(scope="module")
def model():
    return kcompile.compile_string(MLP)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=2.5), "fit: epochs must be an integer of at least 0, got 2.5"),
    (dict(initial_epoch=-1), "fit: initial_epoch must be an integer of at least 0, got -1"),
    (dict(steps_per_epoch=2.5), "fit: steps_per_epoch must be a positive integer or None, got 2.5"),
    (dict(steps_per_epoch=0), "fit: steps_per_epoch must be a positive integer or None, got 0"),
    (dict(steps_per_epoch=-1), "fit: steps_per_epoch must be a positive integer or None, got -1"),
    (dict(validation_split="a"), "fit: validation_split must be a number at least 0 and below 1, got 'a'"),
    (dict(validation_split=1.0), "validation_split must be a number at least 0 and below 1, got 1.0"),
    (dict(validation_split=0.95), r"fit: 10 samples cannot be split into training and validation samples at "
                                  r"validation_split=0.95 \(0 and 10\)"),  # (it said: no samples)
    (dict(validation_split=1e-17), r"validation_split=1e-17 \(10 and 0\)"),  # (1 - 1e-17 is 1.0)
    (dict(validation_data=(X, Y), validation_steps=0), "fit: validation_steps must be a positive integer"),
    (dict(callbacks=[3]), "callbacks must be a list of Callback instances .*got \\[3\\]"),
    # (a list of batches for validation_data: Keras takes a list as (x, y), whose x is ragged here)
    (dict(validation_data=[(X, Y), (X, Y)]), "fit validation_data: input 'x' is not an array of one shape"),
])
def test_fit_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.fit(X, Y, verbose=0, **kwargs)


def test_compile_arguments():
    with pytest.raises(ValueError, match="compile_string: source must be the model's text \\(a str\\), got NoneType"):
        kcompile.compile_string(None)
    for level, message in [(5, "opt_level must be 0, 1 or 2, got 5"), (-1, "opt_level must be an integer of at "
                                                                             "least 0, got -1")]:
        with pytest.raises(ValueError, match=message):
            kcompile.compile_string(MLP, opt_level=level)
    with pytest.raises(ValueError, match="compile: opt_level must be 0, 1 or 2, got 3"):
        kcompile.compile("no-such-file.kdl", opt_level=3)


def test_model_method_arguments(model):
    with pytest.raises(ValueError, match="share_weights: expects a kcompile model and a prefix .*got int"):
        model.share_weights(3, "x/")
    with pytest.raises(ValueError, match="set_trainable: expects a layer name and True or False, got 'dense' and 'no'"):
        model.set_trainable("dense", "no")
    with pytest.raises(ShapeMismatch, match="predict: inputs have different lengths"):
        kcompile.compile_string("model two { input a: float32[2]\n input b: float32[2]\n y = concat(a, b)\n"
                                "output y }").predict({"a": np.zeros((3, 2)), "b": np.zeros((2, 2))})


def test_save_paths_name_the_users_path(model, tmp_path):
    with pytest.raises(IsADirectoryError, match=f"save_onnx: {tmp_path} is a folder"):
        model.save_onnx(tmp_path)
    assert list(tmp_path.iterdir()) == [] and not list(Path(tmp_path.anchor).glob(f".{tmp_path.name}.*"))
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc, where no file can be made")
    for save, path in ((model.save_onnx, "/proc/kcompile-test"), (model.save_weights, "/proc/kcompile-test.npz"),
                       (model.save, "/proc/kcompile-test")):
        with pytest.raises(OSError) as error:
            save(path)
        assert error.value.filename == path, error.value


def test_an_error_about_another_path_keeps_its_name(model, tmp_path):
    """A parent that is a file is that file's error, not one about the path written."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError) as error:
        model.save_weights(tmp_path / "afile" / "w.npz")
    assert error.value.filename == str(tmp_path / "afile"), error.value


def test_an_npz_of_weights_in_order_loads(model, tmp_path):
    """np.savez(path, *weights) (arr_0, arr_1, ...: what a Keras user writes) loads in order. (Keras
    file names save_weights does not write are refused: tests/runtime/test_keras_files.py.)"""
    doubled = [2 * w for w in model.get_weights()]
    np.savez(tmp_path / "keras.npz", *doubled)
    model.load_weights(tmp_path / "keras.npz")
    for a, b in zip(model.get_weights(), doubled):
        np.testing.assert_array_equal(a, b)


def test_metrics_names_and_steps_as_keras(model):
    assert model.metrics_names == ["loss", "accuracy"]
    assert kcompile.compile_string("model p { input x: float32[2]\n y = Dense(1)(x)\n output y }").metrics_names == []
    first = model.evaluate(X[:4], Y[:4], batch_size=2, verbose=0)
    assert model.evaluate(X, Y, batch_size=2, steps=2, verbose=0) == pytest.approx(first)
    assert model.predict(X, batch_size=3, steps=2).shape == (6, 3)
    # (Keras takes steps=0 as all the batches)
    assert model.predict(X, batch_size=3, steps=0).shape == model.predict(X, batch_size=3).shape
    assert model.evaluate(X, Y, batch_size=2, steps=0, verbose=0) == pytest.approx(
        model.evaluate(X, Y, batch_size=2, verbose=0))
    with pytest.raises(ValueError, match="predict: steps must be an integer of at least 0 or None, got -1"):
        model.predict(X, steps=-1)


def test_kcompile_callbacks_is_an_attribute_after_import():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", "import kcompile; kcompile.callbacks.EarlyStopping"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- named dimensions: targets whose size is known only at run time, windows too long ----
def test_a_target_of_an_output_sized_at_run_time_is_checked():
    m = kcompile.compile_string("model m {\n input x: float32[2, T]\n y = Flatten()(x)\n output y\n"
                                " train {\n loss = mse\n optimizer = SGD()\n }\n}")
    x = np.ones((3, 2, 5), np.float32)
    for run in (lambda: m.fit(x, np.zeros((3, 7), np.float32), verbose=0),
                lambda: m.evaluate(x, np.zeros((3, 7), np.float32), verbose=0),
                lambda: m.train_on_batch(x, np.zeros((3, 7), np.float32))):
        with pytest.raises(ShapeMismatch, match=r"target 'y_target' expects shape \(None, 10\) .*got \(3, 7\)"):
            run()
    # (no weights: the mse of ones against zeros)
    assert m.fit(x, np.zeros((3, 10), np.float32), verbose=0).history["loss"] == [pytest.approx(1.0)]


@pytest.mark.parametrize("layer, length", [("Cropping1D((3, 3))", "-1 \\(T-6\\)"), ("Conv1D(2, 10)", "-4"),
                                           ("MaxPooling1D(10)", "0 \\(T//10\\)")])
def test_a_named_dimension_too_short_for_a_window_is_refused(layer, length):
    m = kcompile.compile_string(f"model m {{\n input x: float32[T, 3]\n y = {layer}(x)\n output y\n"
                                f" train {{\n loss = mse\n optimizer = SGD()\n }}\n}}")
    message = f"input x's T = 5 is too short: output y would have length {length}"
    with pytest.raises(ShapeMismatch, match="predict: " + message):
        m.predict(np.ones((2, 5, 3), np.float32))
    with pytest.raises(ShapeMismatch, match="fit: " + message):
        m.fit(np.ones((2, 5, 3), np.float32), np.ones((2, 1, m.outputs[0].shape[-1]), np.float32), verbose=0)
    assert m.predict(np.ones((2, 12, 3), np.float32)).shape[1] >= 1


def test_per_output_sample_weight_trains_as_one_array_where_they_agree():
    """Keras's {output: weights} (tests/training/test_per_output_sample_weight.py compares it with
    Keras); the same weights for every output train as the one array that weights them all."""
    x = {"image": np.zeros((4, 32, 32, 3), np.float32), "meta": np.zeros((4, 8), np.float32)}
    y = {"kind": np.eye(5, dtype=np.float32)[[0, 1, 2, 3]], "score": np.zeros((4, 1), np.float32)}
    w = np.array([0.5, 1.0, 2.0, 0.0], np.float32)
    losses = [kcompile.compile(Path(__file__).resolve().parents[2] / "examples" / "two_heads.kdl", seed=0).fit(
        x, y, sample_weight=weights, verbose=0).history["loss"][0] for weights in ({"kind": w, "score": w}, w)]
    assert np.isfinite(losses[0]) and losses[0] == pytest.approx(losses[1], rel=1e-6)
