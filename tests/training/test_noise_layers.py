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


def test_a_float64_model_draws_float64_noise():
    """Its Dropout and GaussianNoise take their noise in float64 (the runtime drew float32, which
    onnxruntime refused at the first step)."""
    m = kcompile.compile_string(SRC.replace("float32", "float64"), seed=0)
    assert {n["dtype"] for n in m.manifest["training"]["noise"]} == {"float64"}
    x = np.ones((512, 4, 4, 8))
    losses = [m.train_on_batch(x, x) for _ in range(5)]
    np.testing.assert_allclose(np.mean(losses), 1.09, rtol=0.05)


def test_a_float16_model_with_dropout_trains_on_its_drawn_mask():
    """(numpy draws no float16 noise: drawn as float32, then rounded.) The step's loss is the
    mean squared error through the mask its noise gives, x * (u >= rate) / (1 - rate)."""
    m = kcompile.compile_string("""model h {
    input x: float16[8]
    Dropout(0.5)
    out = Dense(1, use_bias=false)
    train { loss = mse; optimizer = SGD(0.0) }
}""")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8)).astype(np.float16), rng.normal(size=(16, 1)).astype(np.float16)
    (u,) = m._noise({"x": x}).values()  # (the first step's noise, seeded by the step count)
    assert u.dtype == np.float16 and 0.3 < (u >= 0.5).mean() < 0.7
    kernel = m.get_weights()[0].astype(np.float64)
    want = np.mean((x.astype(np.float64) * (u >= 0.5) * 2.0 @ kernel - y) ** 2)
    loss = m.train_on_batch(x, y)
    assert loss == pytest.approx(want, rel=5e-3)  # (float16 arithmetic)
    assert loss != pytest.approx(m.evaluate(x, y, verbose=0), rel=5e-3)  # (the mask applied in training only)
