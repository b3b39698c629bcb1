"""Training forms of the noise layers: SpatialDropout draws one mask entry per channel,
GaussianNoise adds stddev * N(0, 1); both are the identity in evaluation."""
import numpy as np
import pytest

import kcompile

SRC = """model s {
    input x: float32[4, 4, 8]
    h = SpatialDropout2D(0.5)(x)
    y = GaussianNoise(0.3)(h)
    output y
    train {
        loss = mse
        optimizer = SGD(learning_rate=0.0)
    }
}"""


def test_noise_inputs_and_loss_statistics():
    m = kcompile.compile_string(SRC, seed=0)
    noise = {n["name"]: n["shape"] for n in m.manifest["training"]["noise"]}
    assert noise["noise:spatial_dropout2d"] == ["N", 1, 1, 8]  # one draw per sample and channel
    assert list(noise.values())[1:] == [["N", 4, 4, 8]] * 2   # Box-Muller's two uniform inputs
    x = np.ones((512, 4, 4, 8), np.float32)
    # y = x * mask * 2 + 0.3 z with mask in {0, 1}: E[(y - x)^2] = 1 + 0.09.
    losses = [m.train_on_batch(x, x) for _ in range(5)]
    np.testing.assert_allclose(np.mean(losses), 1.09, rtol=0.05)
    assert m.evaluate(x, x, verbose=0) == 0.0


def test_batch_shared_dropout_mask():
    src = SRC.replace("SpatialDropout2D(0.5)(x)", "Dropout(0.5, noise_shape=(1, 4, 4, 8))(x)").replace(
        "GaussianNoise(0.3)(h)", "GaussianNoise(0.0)(h)")
    m = kcompile.compile_string(src, seed=0)
    x = np.ones((64, 4, 4, 8), np.float32)
    zeros = np.zeros_like(x)
    # y = 2 * mask, so the loss is 4 * (kept share). With one mask for the whole batch the share
    # is k / 128 for one 4x4x8 mask, a multiple of 1/32; element-wise masks would give k / 8192.
    for _ in range(5):
        loss = m.train_on_batch(x, zeros)
        assert 0 < loss < 4
        np.testing.assert_allclose(loss * 32, round(loss * 32), atol=1e-4)


def test_spatial_dropout_after_a_convolution_at_o1():
    """Transpose-sinking stops at a Dropout with a noise_shape (its entries are per axis): a
    channels-first convolution's SpatialDropout2D compiles at -O1 and trains as at -O0."""
    src = """model c {
        input x: float32[8, 6, 3]
        Conv2D(4, 3, padding=same, activation=relu)
        SpatialDropout2D(0.5)
        Flatten()
        probs = Dense(2, activation=softmax)
        output probs
        train {
            loss = categorical_crossentropy
            optimizer = SGD(learning_rate=0.1)
        }
    }"""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 6, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 16)]
    runs = []
    for level in (1, 0):
        m = kcompile.compile_string(src, seed=0, opt_level=level)
        losses = [m.train_on_batch(x, y) for _ in range(3)]
        runs.append((losses, m.get_weights()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_over_a_named_dimension():
    """A Dropout on [N, T, 16] draws its noise at the batch's T: each step's loss is the
    numpy reference with the mask the runtime drew, at two different sequence lengths."""
    src = """model s {
        input x: float32[T, 3]
        h = Dense(16, use_bias=false)(x)
        y = Dropout(0.5)(h)
        output y
        train {
            loss = mse
            optimizer = SGD(learning_rate=0.0)
        }
    }"""
    rng = np.random.default_rng(0)
    for level in (0, 1):
        m = kcompile.compile_string(src, seed=0, opt_level=level)
        assert m.manifest["training"]["noise"][0]["shape"] == ["N", "T", 16]
        kernel = m.get_weights()[0]
        for steps in (5, 9):
            x = rng.standard_normal((4, steps, 3)).astype(np.float32)
            target = np.zeros((4, steps, 16), np.float32)
            noise = m._noise({"x": x})["noise:dropout"]
            assert noise.shape == (4, steps, 16)
            expected = np.mean(((x @ kernel) * (noise >= 0.5) * 2.0) ** 2)
            np.testing.assert_allclose(m.train_on_batch(x, target), expected, rtol=1e-4)


def test_convolution_over_a_named_dimension_trains_as_with_a_fixed_one():
    """Conv1D, MaxPooling1D and Dropout over T (shapes T-2, (T-2)//2, noise drawn at the
    batch's T): three Adam steps give the weights a model compiled for T = 11 gets."""
    src = """model c {
        input x: float32[LEN, 3]
        Conv1D(4, 3, activation=relu)
        MaxPooling1D(2)
        Dropout(0.3)
        Conv1D(4, 2, padding=same)
        GlobalAveragePooling1D()
        y = Dense(2)
        output y
        train {
            loss = mse
            optimizer = Adam(learning_rate=0.01)
        }
    }"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 11, 3)).astype(np.float32)
    target = rng.standard_normal((6, 2)).astype(np.float32)
    for level in (0, 1):
        named = kcompile.compile_string(src, seed=0, opt_level=level)
        fixed = kcompile.compile_string(src.replace("LEN", "11"), seed=0, opt_level=level)
        assert ["(LEN-2)//2" in str(n["shape"]) for n in named.manifest["training"]["noise"]] == [True]
        for m in (named, fixed):
            m.fit(x, target, batch_size=3, epochs=1, shuffle=False, verbose=0)
        for a, b in zip(named.get_weights(), fixed.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,what", [("Conv1D(4, 3, strides=2)", "a strided window"),
                                        ("AveragePooling1D(2)", "an average pooling"),
                                        ("Concatenate(axis=1)(Conv1D(3, 3)(x), x)", "a concatenation along"),
                                        ("Conv1D(4, 3)\n        Reshape((-1, 2))\n        Dropout(0.3)",
                                         "noise of a size")])
def test_window_over_a_named_dimension_says_it_cannot_train(layer, what):
    """A strided convolution's or an average pool's gradient over T needs T's value (its output
    padding, its window counts), as does a concatenation's along T, and noise of a size the
    inputs do not give (after a Reshape): such a model predicts, and fit says why it cannot train."""
    src = f"""model c {{
        input x: float32[T, 3]
        Dense(4)
        {layer}
        GlobalAveragePooling1D()
        y = Dense(2)
        output y
        train {{
            loss = mse
            optimizer = SGD()
        }}
    }}"""
    m = kcompile.compile_string(src, seed=0)
    x = np.ones((2, 7, 3), np.float32)
    assert m.predict(x).shape == (2, 2)
    with pytest.raises(RuntimeError, match=f"cannot be trained yet: gradient of {what}|cannot be trained yet: {what}"):
        m.fit(x, np.zeros((2, 2), np.float32), verbose=0)


def test_targets_are_checked_against_sizes_computed_from_the_inputs():
    """An output [T-2, 1] after a window: a target of the input's length, or one that would
    broadcast, is refused with the size worked out from the input."""
    src = """model c {
        input x: float32[T, 3]
        Conv1D(4, 3)
        y = Dense(1)
        output y
        train {
            loss = mse
            optimizer = SGD()
        }
    }"""
    m = kcompile.compile_string(src, seed=0)
    x = np.ones((4, 11, 3), np.float32)
    for wrong in ((4, 11, 1), (4, 1, 1)):
        with pytest.raises(kcompile.errors.ShapeMismatch, match=r"expects shape \(None, T-2=9, 1\), got .* \(T=11 from 'x'\)"):
            m.fit(x, np.zeros(wrong, np.float32), verbose=0)
    assert np.isfinite(m.fit(x, np.zeros((4, 9, 1), np.float32), verbose=0).history["loss"][0])
