"""Conv1D, Conv2D, Conv2DTranspose against loop-based numpy references."""
import numpy as np
import pytest

import reference as ref
from reference import random_input


def tup(v):
    return str(tuple(v)) if isinstance(v, tuple) else str(v)


# ---------------------------------------------------------------- the references themselves
@pytest.mark.parametrize("size,k,s,padding,op", [
    (8, 3, 2, "same", None), (6, 3, 2, "same", None), (9, 5, 3, "same", None), (6, 2, 2, "valid", None),
    (7, 3, 2, "valid", None), (7, 3, 2, "same", 0), (7, 4, 2, "same", 1), (8, 3, 3, "valid", 2),
    (5, 1, 2, "valid", 0), (6, 2, 3, "same", None), (8, 4, 2, "same", None), (7, 3, 3, "same", 0),
])
def test_reference_transpose_is_adjoint_of_conv(size, k, s, padding, op):
    """<conv(u, K), v> == <u, conv_transpose(v, K)>: checks the two references against each other."""
    rng = np.random.default_rng(0)
    n = -(-size // s) if padding == "same" else (size - k) // s + 1
    out = ref.deconv_length(n, k, s, padding, op)
    assert out == size, "conv_transpose does not invert this size"
    kernel = rng.normal(size=(k, k, 2, 3))  # conv: [kh, kw, in=2, out=3]; transpose: [kh, kw, out=2, in=3]
    u = rng.normal(size=(1, size, size, 2))
    v = rng.normal(size=(1, n, n, 3))
    lhs = np.sum(ref.conv(u, kernel, strides=s, padding=padding) * v)
    rhs = np.sum(u * ref.conv2d_transpose(v, kernel, strides=s, padding=padding, output_padding=op))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


def test_reference_conv_small_case():
    x = np.arange(1, 6, dtype=np.float64).reshape(1, 5, 1)
    k = np.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    np.testing.assert_allclose(ref.conv(x, k)[0, :, 0], [321, 432, 543])
    np.testing.assert_allclose(ref.conv(x, k, padding="same")[0, :, 0], [210, 321, 432, 543, 54])
    np.testing.assert_allclose(ref.conv(x, k, padding="causal")[0, :, 0], [100, 210, 321, 432, 543])
    # TensorFlow 'same' with an even kernel: the odd padding pixel goes at the end.
    k2 = np.array([1.0, 10.0]).reshape(2, 1, 1)
    np.testing.assert_allclose(ref.conv(x, k2, padding="same")[0, :, 0], [21, 32, 43, 54, 5])


# ---------------------------------------------------------------- Conv2D
CONV2D_CASES = [
    # (input shape, filters, kernel, strides, padding, dilation, groups)
    ((7, 9, 3), 4, 3, 1, "valid", 1, 1),
    ((7, 9, 3), 4, 3, 1, "same", 1, 1),
    ((7, 9, 3), 2, (3, 2), 2, "same", 1, 1),
    ((7, 9, 3), 2, (3, 2), 2, "valid", 1, 1),
    ((9, 7, 3), 4, (3, 2), 2, "same", 1, 1),
    ((8, 8, 2), 3, 2, 2, "same", 1, 1),
    ((8, 8, 2), 3, 4, 2, "same", 1, 1),
    ((10, 11, 2), 3, 3, 3, "same", 1, 1),
    ((10, 11, 2), 3, 3, 3, "valid", 1, 1),
    ((10, 11, 2), 2, (5, 4), (3, 2), "same", 1, 1),
    ((7, 9, 2), 3, 3, (1, 2), "valid", 1, 1),
    ((9, 9, 2), 3, 3, 1, "valid", 2, 1),
    ((9, 9, 2), 3, 3, 1, "same", 2, 1),
    ((9, 10, 2), 3, (2, 3), 1, "same", (2, 3), 1),
    ((8, 7, 2), 2, 2, 1, "same", 3, 1),
    ((6, 5, 4), 6, 3, 1, "same", 1, 2),
    ((6, 5, 4), 4, 3, 2, "valid", 1, 4),
    ((6, 7, 6), 6, (2, 3), 2, "same", 1, 3),
    ((7, 7, 4), 2, 3, 1, "same", 2, 2),
    ((5, 5, 1), 1, 1, 1, "valid", 1, 1),
    ((3, 3, 2), 2, 3, 1, "valid", 1, 1),
    ((4, 4, 3), 5, 5, 2, "same", 1, 1),
]


@pytest.mark.parametrize("shape,filters,kernel,strides,padding,dilation,groups", CONV2D_CASES)
def test_conv2d(run, rng, close, shape, filters, kernel, strides, padding, dilation, groups):
    src = f"""
model m {{
    input image: float32[{', '.join(map(str, shape))}]
    Conv2D({filters}, {tup(kernel)}, strides={tup(strides)}, padding={padding},
           dilation_rate={tup(dilation)}, groups={groups})
}}"""
    x = random_input(shape, rng)
    y, (k, b) = run(src, x)
    kk = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert k.shape == kk + (shape[-1] // groups, filters)
    close(y, ref.conv(x, k, b, strides=strides, padding=padding, dilation=dilation, groups=groups))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu", "swish", "elu"])
def test_conv2d_activation(run, rng, close, activation):
    src = f"""
model m {{
    input image: float32[9, 7, 3]
    Conv2D(4, (3, 2), strides=2, padding=same, activation={activation})
}}"""
    x = random_input((9, 7, 3), rng)
    y, (k, b) = run(src, x)
    close(y, ref.activation(activation, ref.conv(x, k, b, strides=2, padding="same")))


def test_conv2d_no_bias(run, rng, close):
    src = """
model m {
    input image: float32[6, 7, 2]
    Conv2D(3, 3, padding=same, use_bias=false)
}"""
    x = random_input((6, 7, 2), rng)
    y, w = run(src, x)
    assert len(w) == 1
    close(y, ref.conv(x, w[0], padding="same"))


def test_conv2d_stack_with_pooling_flatten_dense(run, rng, close):
    src = """
model m {
    input image: float32[9, 7, 3]
    Conv2D(4, (3, 2), strides=2, padding=same, activation=relu)
    MaxPooling2D((2, 2))
    Conv2D(5, 1)
    Flatten()
    Dense(3, activation=softmax)
}"""
    x = random_input((9, 7, 3), rng, batch=3)
    y, (k1, b1, k2, b2, k3, b3) = run(src, x)
    h = np.maximum(ref.conv(x, k1, b1, strides=2, padding="same"), 0)
    h = ref.pool(h, "max", 2)
    h = ref.conv(h, k2, b2)
    h = h.reshape(h.shape[0], -1)
    close(y, ref.softmax(ref.dense(h, k3, b3)))


def test_conv2d_residual(run, rng, close):
    src = """
model m {
    input image: float32[6, 5, 4]
    h = Conv2D(4, 3, padding=same, activation=relu)(image)
    h2 = Conv2D(4, 3, padding=same)(h)
    y = relu(h2 + image)
    output y
}"""
    x = random_input((6, 5, 4), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    h = np.maximum(ref.conv(x, k1, b1, padding="same"), 0)
    close(y, np.maximum(ref.conv(h, k2, b2, padding="same") + x, 0))


# ---------------------------------------------------------------- Conv1D
CONV1D_CASES = [
    # (steps, channels, filters, kernel, strides, padding, dilation, groups)
    (9, 3, 4, 3, 1, "valid", 1, 1),
    (9, 3, 4, 3, 1, "same", 1, 1),
    (9, 3, 4, 3, 1, "causal", 1, 1),
    (10, 2, 3, 2, 1, "same", 1, 1),
    (10, 2, 3, 4, 1, "same", 1, 1),
    (11, 2, 3, 3, 2, "valid", 1, 1),
    (11, 2, 3, 3, 2, "same", 1, 1),
    (11, 2, 3, 4, 3, "same", 1, 1),
    (11, 2, 3, 3, 3, "valid", 1, 1),
    (12, 3, 2, 3, 1, "valid", 2, 1),
    (12, 3, 2, 3, 1, "same", 2, 1),
    (12, 3, 2, 3, 1, "causal", 2, 1),
    (12, 3, 2, 2, 1, "causal", 4, 1),
    (12, 3, 2, 5, 1, "same", 3, 1),
    (8, 4, 6, 3, 1, "same", 1, 2),
    (8, 4, 4, 3, 1, "causal", 2, 4),
    (7, 6, 3, 2, 2, "valid", 1, 3),
    (5, 1, 1, 1, 1, "valid", 1, 1),
    (11, 2, 3, 3, 2, "causal", 1, 1),
    (4, 2, 3, 5, 1, "same", 1, 1),
    (4, 2, 3, 5, 1, "causal", 1, 1),
]


@pytest.mark.parametrize("steps,channels,filters,kernel,strides,padding,dilation,groups", CONV1D_CASES)
def test_conv1d(run, rng, close, steps, channels, filters, kernel, strides, padding, dilation, groups):
    src = f"""
model m {{
    input seq: float32[{steps}, {channels}]
    Conv1D({filters}, {kernel}, strides={strides}, padding={padding}, dilation_rate={dilation}, groups={groups})
}}"""
    x = random_input((steps, channels), rng)
    y, (k, b) = run(src, x)
    assert k.shape == (kernel, channels // groups, filters)
    close(y, ref.conv(x, k, b, strides=strides, padding=padding, dilation=dilation, groups=groups))


def test_conv1d_causal_does_not_look_ahead(run, rng):
    src = """
model m {
    input seq: float32[10, 2]
    Conv1D(3, 3, padding=causal, dilation_rate=2, activation=tanh)
    Conv1D(2, 2, padding=causal)
}"""
    x = random_input((10, 2), rng, batch=1)
    y, w = run(src, x)
    x2 = x.copy()
    x2[:, 6:] = rng.uniform(-1, 1, x2[:, 6:].shape)
    import kcompile
    m = kcompile.compile_string(src)
    m.set_weights(w)
    y2 = m.predict(x2)
    np.testing.assert_allclose(y[:, :6], y2[:, :6], rtol=1e-6, atol=1e-6)
    assert not np.allclose(y[:, 6:], y2[:, 6:])


def test_conv1d_stack_with_pooling(run, rng, close):
    src = """
model m {
    input seq: float32[13, 3]
    Conv1D(4, 3, padding=same, activation=relu)
    MaxPooling1D(2)
    Conv1D(5, 2, strides=2)
    GlobalAveragePooling1D()
}"""
    x = random_input((13, 3), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    h = np.maximum(ref.conv(x, k1, b1, padding="same"), 0)
    h = ref.pool(h, "max", 2)
    h = ref.conv(h, k2, b2, strides=2)
    close(y, h.mean(axis=1))


# ---------------------------------------------------------------- Conv2DTranspose
DECONV_CASES = [
    # (input shape, filters, kernel, strides, padding, output_padding, dilation)
    ((4, 5, 3), 2, 3, 1, "valid", None, 1),
    ((4, 5, 3), 2, 3, 1, "same", None, 1),
    ((4, 5, 3), 2, 3, 2, "valid", None, 1),
    ((4, 5, 3), 2, 3, 2, "same", None, 1),
    ((4, 5, 3), 2, 2, 2, "valid", None, 1),
    ((4, 5, 3), 2, 2, 2, "same", None, 1),
    ((4, 5, 3), 2, 4, 2, "same", None, 1),
    ((4, 5, 3), 2, 4, 2, "valid", None, 1),
    ((3, 4, 2), 3, 1, 2, "valid", None, 1),   # kernel smaller than stride
    ((3, 4, 2), 3, 1, 2, "same", None, 1),
    ((3, 4, 2), 3, 2, 3, "valid", None, 1),
    ((3, 4, 2), 3, 2, 3, "same", None, 1),
    ((3, 4, 2), 3, 5, 3, "same", None, 1),
    ((3, 4, 2), 2, (3, 2), (2, 1), "same", None, 1),
    ((3, 4, 2), 2, (2, 3), (1, 2), "valid", None, 1),
    ((4, 5, 3), 2, 3, 2, "valid", 1, 1),
    ((4, 5, 3), 2, 3, 2, "same", 1, 1),
    ((4, 5, 3), 2, 3, 2, "same", 0, 1),
    ((4, 5, 3), 2, 4, 2, "same", 1, 1),
    ((4, 5, 3), 2, 3, 3, "valid", 2, 1),
    ((4, 5, 3), 2, 3, 3, "same", (1, 2), 1),
    ((4, 5, 3), 2, 2, 2, "same", (1, 0), 1),
    ((5, 4, 2), 3, 3, 1, "valid", None, 2),
    ((5, 4, 2), 3, 3, 1, "same", None, 2),
    ((5, 4, 2), 3, (2, 3), 1, "same", None, (2, 1)),
]


@pytest.mark.parametrize("shape,filters,kernel,strides,padding,output_padding,dilation", DECONV_CASES)
def test_conv2d_transpose(run, rng, close, shape, filters, kernel, strides, padding, output_padding, dilation):
    op = "" if output_padding is None else f", output_padding={tup(output_padding)}"
    src = f"""
model m {{
    input image: float32[{', '.join(map(str, shape))}]
    Conv2DTranspose({filters}, {tup(kernel)}, strides={tup(strides)}, padding={padding},
                    dilation_rate={tup(dilation)}{op})
}}"""
    x = random_input(shape, rng)
    y, (k, b) = run(src, x)
    kk = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert k.shape == kk + (filters, shape[-1])
    close(y, ref.conv2d_transpose(x, k, b, strides=strides, padding=padding, output_padding=output_padding,
                                  dilation=dilation))


def test_conv2d_transpose_output_size(run, rng):
    src = """
model m {
    input image: float32[7, 5, 3]
    a = Conv2DTranspose(2, 3, strides=2, padding=same)(image)
    b = Conv2DTranspose(2, 3, strides=2, padding=valid)(image)
    c = Conv2DTranspose(2, 1, strides=3, padding=valid)(image)
    output a, b, c
}"""
    (a, b, c), _ = run(src, random_input((7, 5, 3), rng))
    assert a.shape == (2, 14, 10, 2)
    assert b.shape == (2, 15, 11, 2)
    assert c.shape == (2, 21, 15, 2)


def test_conv2d_transpose_autoencoder(run, rng, close):
    src = """
model m {
    input image: float32[8, 6, 2]
    Conv2D(4, 3, strides=2, padding=same, activation=relu)
    Conv2DTranspose(3, 3, strides=2, padding=same, activation=relu)
    Conv2D(1, 3, padding=same, activation=sigmoid)
}"""
    x = random_input((8, 6, 2), rng)
    y, (k1, b1, k2, b2, k3, b3) = run(src, x)
    h = np.maximum(ref.conv(x, k1, b1, strides=2, padding="same"), 0)
    h = np.maximum(ref.conv2d_transpose(h, k2, b2, strides=2, padding="same"), 0)
    close(y, ref.sigmoid(ref.conv(h, k3, b3, padding="same")))


@pytest.mark.parametrize("multiplier,strides,padding", [(1, 1, "valid"), (2, 1, "same"), (3, 2, "same")])
def test_depthwise_and_separable_conv2d_as_grouped_convolutions(run, rng, close, multiplier, strides, padding):
    """Keras's DepthwiseConv2D (a kernel [kh, kw, in, multiplier]: output channel c * multiplier + m)
    and SeparableConv2D (then a 1x1 pointwise kernel), against the grouped numpy convolution
    (scratch runs matched Keras/JAX's outputs and three SGD steps at -O0 and -O1)."""
    src = f"""
model m {{
    input x: float32[7, 6, 3]
    d = DepthwiseConv2D(3, strides={strides}, padding={padding}, depth_multiplier={multiplier})(x)
    s = SeparableConv2D(4, 3, strides={strides}, padding={padding}, depth_multiplier={multiplier})(x)
    output d, s
}}"""
    x = random_input((7, 6, 3), rng)
    (d, s), w = run(src, x)
    depthwise, bias, sep_depthwise, pointwise, sep_bias = w
    assert depthwise.shape == (3, 3, 3, multiplier) and pointwise.shape == (1, 1, 3 * multiplier, 4)
    grouped = depthwise.reshape(3, 3, 1, 3 * multiplier)
    close(d, ref.conv(x, grouped, bias, strides, padding, groups=3))
    inner = ref.conv(x, sep_depthwise.reshape(3, 3, 1, 3 * multiplier), None, strides, padding, groups=3)
    close(s, ref.conv(inner, pointwise, sep_bias))
