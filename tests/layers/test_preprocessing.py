"""Preprocessing layers: Rescaling and Normalization (adapted, or with its mean and variance
given), against numpy (scratch runs matched Keras/JAX's Normalization and three SGD steps)."""
import numpy as np
import pytest

import kcompile
from kcompile import KcompileError, ShapeMismatch

TRAINED = """model r {
    input x: float32[3]
    Normalization()
    Dense(2)
    train {
        loss = mse
        optimizer = SGD(0.05)
    }
}"""


def test_normalization_adapts_to_data_and_standardizes_as_keras():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 3)) * [1, 10, 100] + [5, -3, 50]).astype(np.float32)
    m = kcompile.compile_string(TRAINED)
    layer = m.get_layer("normalization")
    layer.adapt(x)
    mean, variance = layer.get_weights()
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(variance, x.var(0), rtol=1e-5)  # (the population variance, as Keras)
    kernel, bias = m.get_layer("dense").get_weights()
    expected = (x - x.mean(0)) / np.sqrt(x.var(0)) @ kernel + bias
    np.testing.assert_allclose(m.predict(x), expected, rtol=1e-4, atol=1e-5)
    # its statistics never train, even when the layer is made trainable
    assert [w.shape for w in m.trainable_weights] == [(3, 2), (2,)]
    m.set_trainable("normalization", True)
    m.fit(x, rng.normal(size=(200, 2)).astype(np.float32), verbose=0)
    np.testing.assert_array_equal(layer.get_weights()[0], mean)
    with pytest.raises(ShapeMismatch, match=r"adapt: layer normalization normalizes 3 features, got data of shape "
                                            r"\(5, 2\)"):
        layer.adapt(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"adapt: no data \(shape \(0, 3\)\): a mean and variance need at least one"):
        layer.adapt(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="layer dense \\(Dense\\) has nothing to adapt"):
        m.get_layer("dense").adapt(x)


def test_normalization_with_its_mean_and_variance_given_and_inverted():
    given = kcompile.compile_string("model c {\n    input x: float32[3]\n    Normalization(mean=[5, -3, 50], variance=4)\n}\n")
    assert given.weight_names == []  # (constants, as Keras keeps them)
    np.testing.assert_allclose(given.predict(np.array([[5, -3, 52]], np.float32)), [[0, 0, 1]], atol=1e-6)
    inverted = kcompile.compile_string("model c {\n    input x: float32[3]\n"
                                       "    Normalization(mean=1, variance=4, invert=true)\n}\n")
    np.testing.assert_allclose(inverted.predict(np.array([[0, 1, 2]], np.float32)), [[1, 3, 5]], atol=1e-6)
    for args, message in (("mean=1", "give both mean and variance"), ("axis=1", "axis must be -1"),
                          ("mean=[1, 2], variance=1", "mean has 2 numbers for 3 features")):
        with pytest.raises(KcompileError, match=message):
            kcompile.compile_string(f"model c {{\n    input x: float32[3]\n    Normalization({args})\n}}\n")


def test_rescaling_takes_integer_images_to_floats():
    m = kcompile.compile_string("model m {\n    input img: uint8[2, 2, 1]\n    Rescaling(1 / 255, offset=-0.5)\n}\n")
    x = np.array([[[[0], [255]], [[51], [102]]]], np.uint8)
    y = m.predict(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x / 255 - 0.5, rtol=1e-6)


def test_a_normalization_inside_a_block_never_trains_either():
    """(its statistics were told apart by the layer's kind at the top level only: unfreezing the
    block made them trainable)"""
    m = kcompile.compile_string("block NB(u: int) {\n    input x\n    h = Dense(u)(x)\n    output Normalization(name=nrm)(h)\n}\n"
                                "model m {\n    input x: float32[3]\n    y = NB(4)(x)\n    output y\n    train {\n"
                                "        loss = mse\n        optimizer = SGD(0.5)\n    }\n}\n")
    inner = m.get_layer("nb").get_layer("nrm")  # (as Keras reaches a nested model's layers; or "nb/nrm")
    assert (inner.name, inner.class_name) == ("nb/nrm", "Normalization")
    features = np.random.default_rng(1).normal(size=(50, 4))
    inner.adapt(features)
    np.testing.assert_allclose(m.get_layer("nb/nrm").get_weights()[1], features.var(0), rtol=1e-5)
    block = m.get_layer("nb")
    block.trainable = False
    block.trainable = True
    assert [w.shape for w in m.trainable_weights] == [(3, 4), (4,)]
    before = m.get_weights()
    rng = np.random.default_rng(0)
    m.fit(rng.random((8, 3), dtype=np.float32), rng.random((8, 4), dtype=np.float32), verbose=0)
    after = m.get_weights()
    np.testing.assert_array_equal(after[2], before[2])
    np.testing.assert_array_equal(after[3], before[3])
    assert not np.array_equal(after[0], before[0])


def test_masking_takes_steps_of_features_only():
    with pytest.raises(KcompileError, match=r"Masking needs steps of features, \[steps, features\], got \[5, 3, 2\]"):
        kcompile.compile_string("model m {\n    input x: float32[5, 3, 2]\n    Masking()\n}\n")
