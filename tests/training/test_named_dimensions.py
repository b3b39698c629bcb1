"""Training with named dimensions (``float32[T, 3]``): sizes through windows (T-2, (T-2)//2),
noise drawn at each batch's sizes, targets checked against them, and a clear refusal where a
gradient would need the size itself."""
import numpy as np
import pytest

import kcompile
from kcompile.errors import ShapeMismatch


def sequence_model(body: str, optimizer: str = "SGD()", length: str = "T") -> str:
    """A model over ``float32[<length>, 3]`` whose last statement is ``y``, trained with mse."""
    lines = "\n".join("    " + line for line in body.strip().splitlines())
    return (f"model c {{\n    input x: float32[{length}, 3]\n{lines}\n    output y\n"
            f"    train {{\n        loss = mse\n        optimizer = {optimizer}\n    }}\n}}\n")


def test_dropout_draws_its_noise_at_the_batch_length():
    """A Dropout on [N, T, 16]: each step's loss is the numpy reference with the mask the runtime
    drew, at two sequence lengths, at -O0 and -O1."""
    src = sequence_model("h = Dense(16, use_bias=false)(x)\ny = Dropout(0.5)(h)", "SGD(learning_rate=0.0)")
    rng = np.random.default_rng(0)
    for level in (0, 1):
        m = kcompile.compile_string(src, seed=0, opt_level=level)
        assert m.manifest["training"]["noise"][0]["shape"] == ["N", "T", 16]
        kernel = m.get_weights()[0]
        for steps in (5, 9):
            x = rng.standard_normal((4, steps, 3)).astype(np.float32)
            noise = m._noise({"x": x})["noise:dropout"]
            assert noise.shape == (4, steps, 16)
            expected = np.mean(((x @ kernel) * (noise >= 0.5) * 2.0) ** 2)
            np.testing.assert_allclose(m.train_on_batch(x, np.zeros((4, steps, 16), np.float32)), expected, rtol=1e-4)


def test_convolutions_over_a_named_dimension_train_as_with_a_fixed_one():
    """Conv1D, MaxPooling1D and Dropout over LEN (shapes LEN-2, (LEN-2)//2, noise drawn at the
    batch's length): an epoch of Adam gives the weights a model compiled for LEN = 11 gets."""
    body = """Conv1D(4, 3, activation=relu)
MaxPooling1D(2)
Dropout(0.3)
Conv1D(4, 2, padding=same)
GlobalAveragePooling1D()
y = Dense(2)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 11, 3)).astype(np.float32)
    target = rng.standard_normal((6, 2)).astype(np.float32)
    for level in (0, 1):
        named = kcompile.compile_string(sequence_model(body, "Adam(learning_rate=0.01)", "LEN"), seed=0,
                                        opt_level=level)
        fixed = kcompile.compile_string(sequence_model(body, "Adam(learning_rate=0.01)", "11"), seed=0,
                                        opt_level=level)
        assert ["(LEN-2)//2" in str(n["shape"]) for n in named.manifest["training"]["noise"]] == [True]
        for m in (named, fixed):
            m.fit(x, target, batch_size=3, epochs=1, shuffle=False, verbose=0)
        for a, b in zip(named.get_weights(), fixed.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recurrent", ["LSTM", "GRU", "SimpleRNN"])
def test_recurrent_sequences_into_a_max_pool_over_a_named_dimension_train(recurrent):
    """A recurrent layer's sequences into MaxPooling1D(2) over T: the pool's gradient (placed by
    MaxUnpool, whose output ONNX gives no rank) feeds the layer's reverse Scan, which onnxruntime
    refused ("Subgraph must have the shape set"); now an epoch gives the fixed-length weights."""
    body = f"{recurrent}(4, return_sequences=true)\nMaxPooling1D(2)\nGlobalAveragePooling1D()\ny = Dense(1)"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 12, 3)).astype(np.float32)
    target = rng.standard_normal((6, 1)).astype(np.float32)
    named = kcompile.compile_string(sequence_model(body, "Adam(learning_rate=0.01)"), seed=0)
    fixed = kcompile.compile_string(sequence_model(body, "Adam(learning_rate=0.01)", "12"), seed=0)
    losses = [m.fit(x, target, batch_size=3, epochs=1, shuffle=False, verbose=0).history["loss"]
              for m in (named, fixed)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(named.get_weights(), fixed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,why", [
    ("Conv1D(4, 3, strides=2)", "gradient of a strided window over the named dimension"),
    ("AveragePooling1D(2)", "gradient of an average pooling over the named dimension T"),
    ("Concatenate(axis=1)(Conv1D(3, 3)(x), x)", "gradient of a concatenation along the named dimension T"),
    ("Conv1D(4, 3)\nReshape((-1, 2))\nDropout(0.3)", r"noise of a size \(\?\) that the inputs' shapes do not give"),
])
def test_what_needs_the_size_itself_says_it_cannot_train(layer, why):
    """A strided convolution's or an average pool's gradient over T needs T's value (output
    padding, window counts), as does a concatenation's along T, and so does noise of a size the
    inputs do not give (after a Reshape): such a model predicts, and fit says why it cannot train."""
    m = kcompile.compile_string(sequence_model(f"Dense(4)\n{layer}\nGlobalAveragePooling1D()\ny = Dense(2)"), seed=0)
    x = np.ones((2, 7, 3), np.float32)
    assert m.predict(x).shape == (2, 2)
    with pytest.raises(RuntimeError, match=f"model c cannot be trained yet: {why}"):
        m.fit(x, np.zeros((2, 2), np.float32), verbose=0)


def test_targets_are_checked_against_sizes_computed_from_the_inputs():
    """An output [T-2, 1] after a window: a target of the input's length, or one that would
    broadcast, is refused with the size worked out from the input; the right one trains."""
    m = kcompile.compile_string(sequence_model("Conv1D(4, 3)\ny = Dense(1)"), seed=0)
    x = np.ones((4, 11, 3), np.float32)
    for wrong in ((4, 11, 1), (4, 1, 1)):
        with pytest.raises(ShapeMismatch, match=r"fit: target 'y_target' expects shape \(None, T-2=9, 1\), "
                                                r"got \(4, \d+, 1\) \(T=11 from 'x'\)"):
            m.fit(x, np.zeros(wrong, np.float32), verbose=0)
    history = m.fit(x, np.zeros((4, 9, 1), np.float32), epochs=2, verbose=0).history["loss"]
    assert history[1] < history[0]
