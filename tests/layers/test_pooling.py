"""Max/AveragePooling1D/2D and the global pooling layers."""
import numpy as np
import pytest

import reference as ref
from reference import random_input


def tup(v):
    return str(tuple(v)) if isinstance(v, tuple) else str(v)


def test_reference_same_average_counts_valid_pixels_only():
    x = np.ones((1, 3, 3, 1))
    y = ref.pool(x, "avg", 2, padding="same")
    np.testing.assert_allclose(y, np.ones((1, 2, 2, 1)))
    x = np.arange(5, dtype=np.float64).reshape(1, 5, 1)
    np.testing.assert_allclose(ref.pool(x, "avg", 2, padding="same")[0, :, 0], [0.5, 2.5, 4.0])
    np.testing.assert_allclose(ref.pool(x, "max", 3, strides=2, padding="same")[0, :, 0], [1, 3, 4])


POOL2D_CASES = [
    # (input shape, pool_size, strides, padding)
    ((8, 8, 3), 2, None, "valid"),
    ((7, 9, 3), 2, None, "valid"),
    ((7, 9, 3), 2, None, "same"),
    ((7, 9, 2), 3, None, "valid"),
    ((7, 9, 2), 3, None, "same"),
    ((7, 9, 2), 3, 2, "valid"),
    ((7, 9, 2), 3, 2, "same"),
    ((7, 9, 2), 3, 1, "same"),
    ((7, 9, 2), 2, 1, "valid"),
    ((7, 9, 2), 2, 1, "same"),
    ((10, 11, 2), (2, 3), None, "same"),
    ((10, 11, 2), (3, 2), (1, 2), "valid"),
    ((10, 11, 2), (3, 2), (2, 3), "same"),
    ((10, 11, 2), 4, 3, "same"),
    ((5, 5, 1), 5, None, "valid"),
    ((5, 6, 2), 1, 2, "valid"),
    ((3, 4, 2), 5, 2, "same"),  # window larger than the input
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,pool_size,strides,padding", POOL2D_CASES)
def test_pooling2d(run, rng, close, kind, shape, pool_size, strides, padding):
    layer = "MaxPooling2D" if kind == "max" else "AveragePooling2D"
    st = "" if strides is None else f", strides={tup(strides)}"
    src = f"""
model m {{
    input image: float32[{', '.join(map(str, shape))}]
    {layer}({tup(pool_size)}{st}, padding={padding})
}}"""
    x = random_input(shape, rng)
    y, _ = run(src, x)
    close(y, ref.pool(x, kind, pool_size, strides, padding))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling2d_default_arguments(run, rng, close, kind):
    layer = "MaxPooling2D" if kind == "max" else "AveragePooling2D"
    src = f"""
model m {{
    input image: float32[7, 6, 3]
    {layer}()
}}"""
    x = random_input((7, 6, 3), rng)
    y, _ = run(src, x)
    assert y.shape == (2, 3, 3, 3)
    close(y, ref.pool(x, kind, 2))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling2d_all_negative_same(run, rng, close, kind):
    """Padding must not leak zeros into a max of negative numbers (or into the average)."""
    layer = "MaxPooling2D" if kind == "max" else "AveragePooling2D"
    src = f"""
model m {{
    input image: float32[5, 5, 2]
    {layer}(2, padding=same)
}}"""
    x = rng.uniform(-3, -1, (2, 5, 5, 2)).astype(np.float32)
    y, _ = run(src, x)
    assert np.all(y < 0)
    close(y, ref.pool(x, kind, 2, padding="same"))


POOL1D_CASES = [
    # (steps, channels, pool_size, strides, padding)
    (8, 3, 2, None, "valid"),
    (9, 3, 2, None, "valid"),
    (9, 3, 2, None, "same"),
    (9, 2, 3, None, "same"),
    (10, 2, 3, 2, "valid"),
    (10, 2, 3, 2, "same"),
    (10, 2, 4, 3, "same"),
    (11, 2, 3, 1, "same"),
    (11, 2, 2, 1, "valid"),
    (4, 1, 4, None, "valid"),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("steps,channels,pool_size,strides,padding", POOL1D_CASES)
def test_pooling1d(run, rng, close, kind, steps, channels, pool_size, strides, padding):
    layer = "MaxPooling1D" if kind == "max" else "AveragePooling1D"
    st = "" if strides is None else f", strides={strides}"
    src = f"""
model m {{
    input seq: float32[{steps}, {channels}]
    {layer}({pool_size}{st}, padding={padding})
}}"""
    x = random_input((steps, channels), rng)
    y, _ = run(src, x)
    close(y, ref.pool(x, kind, pool_size, strides, padding))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling1d_default_arguments(run, rng, close, kind):
    layer = "MaxPooling1D" if kind == "max" else "AveragePooling1D"
    src = f"""
model m {{
    input seq: float32[7, 3]
    {layer}()
}}"""
    x = random_input((7, 3), rng)
    y, _ = run(src, x)
    assert y.shape == (2, 3, 3)
    close(y, ref.pool(x, kind, 2))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dims,shape", [("2D", (7, 9, 3)), ("2D", (1, 1, 4)), ("1D", (9, 3)), ("1D", (1, 5))])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(run, rng, close, kind, dims, shape, keepdims):
    layer = ("GlobalMaxPooling" if kind == "max" else "GlobalAveragePooling") + dims
    arg = "keepdims=true" if keepdims else ""
    src = f"""
model m {{
    input x: float32[{', '.join(map(str, shape))}]
    {layer}({arg})
}}"""
    x = random_input(shape, rng)
    y, _ = run(src, x)
    expected = ref.global_pool(x, kind, keepdims)
    assert y.shape == ((2,) + (1,) * (len(shape) - 1) + (shape[-1],) if keepdims else (2, shape[-1]))
    close(y, expected)


def test_conv_global_pool_dense(run, rng, close):
    src = """
model m {
    input image: float32[7, 9, 3]
    Conv2D(5, 3, padding=same, activation=relu)
    AveragePooling2D(3, strides=2, padding=same)
    GlobalMaxPooling2D()
    Dense(2)
}"""
    x = random_input((7, 9, 3), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    h = np.maximum(ref.conv(x, k1, b1, padding="same"), 0)
    h = ref.pool(h, "avg", 3, 2, "same")
    close(y, ref.dense(ref.global_pool(h, "max"), k2, b2))


def test_pool_then_flatten(run, rng, close):
    src = """
model m {
    input image: float32[6, 4, 3]
    MaxPooling2D(2)
    Flatten()
}"""
    x = random_input((6, 4, 3), rng)
    y, _ = run(src, x)
    close(y, ref.pool(x, "max", 2).reshape(2, -1))


@pytest.mark.parametrize("layer,kind", [("GlobalAveragePooling2D", "avg"), ("GlobalMaxPooling2D", "max")])
def test_conv_global_pool_keepdims_conv(run, rng, close, layer, kind):
    src = f"""
model m {{
    input image: float32[5, 6, 2]
    Conv2D(4, 3, padding=same)
    {layer}(keepdims=true)
    Conv2D(3, 1, activation=sigmoid)
    Flatten()
}}"""
    x = random_input((5, 6, 2), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    h = ref.global_pool(ref.conv(x, k1, b1, padding="same"), kind, keepdims=True)
    close(y, ref.sigmoid(ref.conv(h, k2, b2)).reshape(2, -1))
