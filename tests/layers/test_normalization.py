"""BatchNormalization at inference (moving statistics), alone and after Dense/Conv."""
import numpy as np
import pytest

import reference as ref
from reference import random_input


def bn_args(center, scale):
    return f"center={'true' if center else 'false'}, scale={'true' if scale else 'false'}"


def split_bn(weights, center, scale):
    """Keras order: gamma (if scale), beta (if center), moving_mean, moving_variance."""
    w = list(weights)
    gamma = w.pop(0) if scale else None
    beta = w.pop(0) if center else None
    mean, var = w
    return gamma, beta, mean, var


@pytest.mark.parametrize("shape", [(5,), (4, 6), (7, 9, 3), (3, 2, 2, 4)])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
def test_batchnorm_alone(run, rng, close, shape, center, scale):
    src = f"""
model m {{
    input x: float32[{', '.join(map(str, shape))}]
    BatchNormalization({bn_args(center, scale)})
}}"""
    x = random_input(shape, rng, scale=2.0)
    y, w = run(src, x)
    assert len(w) == 2 + center + scale
    assert all(v.shape == (shape[-1],) for v in w)
    close(y, ref.batch_norm(x, *split_bn(w, center, scale)))


@pytest.mark.parametrize("epsilon", [1e-3, 1e-5, 0.1])
def test_batchnorm_epsilon(run, rng, close, epsilon):
    src = f"""
model m {{
    input x: float32[6, 4]
    BatchNormalization(epsilon={epsilon})
}}"""
    x = random_input((6, 4), rng)
    gamma, beta, mean = (rng.uniform(-1, 1, 4).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.01, 0.05, 4).astype(np.float32)  # small, so that epsilon matters
    y, w = run(src, x, [gamma, beta, mean, var])
    close(y, ref.batch_norm(x, gamma, beta, mean, var, epsilon=epsilon))


@pytest.mark.parametrize("shape,axis", [((4, 6), 1), ((4, 6), -2), ((5, 3, 4), 1), ((5, 3, 4), 2),
                                        ((5, 3, 4), -1), ((3, 2, 4), 3)])
def test_batchnorm_axis(run, rng, close, shape, axis):
    src = f"""
model m {{
    input x: float32[{', '.join(map(str, shape))}]
    BatchNormalization(axis={axis})
}}"""
    x = random_input(shape, rng)
    y, w = run(src, x)
    channels = (2,) + shape
    assert w[0].shape == (channels[axis],)
    close(y, ref.batch_norm(x, *w, axis=axis))


@pytest.mark.parametrize("center,scale", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_batchnorm(run, rng, close, center, scale, use_bias):
    src = f"""
model m {{
    input x: float32[7]
    Dense(5, use_bias={'true' if use_bias else 'false'})
    BatchNormalization({bn_args(center, scale)})
    Activation(relu)
    Dense(3)
}}"""
    x = random_input((7,), rng, batch=4)
    y, w = run(src, x)
    k1 = w.pop(0)
    b1 = w.pop(0) if use_bias else None
    k2, b2 = w[-2:]
    gamma, beta, mean, var = split_bn(w[:-2], center, scale)
    h = ref.batch_norm(ref.dense(x, k1, b1), gamma, beta, mean, var)
    close(y, ref.dense(np.maximum(h, 0), k2, b2))


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("conv", ["Conv2D(4, 3, padding=same)", "Conv2D(4, 3, strides=2, use_bias=false)",
                                  "Conv2DTranspose(3, 3, strides=2, padding=same)"])
def test_conv_batchnorm(run, rng, close, center, scale, conv):
    src = f"""
model m {{
    input image: float32[7, 9, 3]
    {conv}
    BatchNormalization({bn_args(center, scale)})
    Activation(relu)
}}"""
    x = random_input((7, 9, 3), rng)
    y, w = run(src, x)
    if "Transpose" in conv:
        k, b = w[:2]
        h = ref.conv2d_transpose(x, k, b, strides=2, padding="same")
        rest = w[2:]
    elif "use_bias=false" in conv:
        h = ref.conv(x, w[0], strides=2)
        rest = w[1:]
    else:
        h = ref.conv(x, w[0], w[1], padding="same")
        rest = w[2:]
    close(y, np.maximum(ref.batch_norm(h, *split_bn(rest, center, scale)), 0))


def test_conv1d_batchnorm(run, rng, close):
    src = """
model m {
    input seq: float32[11, 3]
    Conv1D(4, 3, padding=causal)
    BatchNormalization()
    Conv1D(2, 2, strides=2)
    BatchNormalization(center=false)
}"""
    x = random_input((11, 3), rng)
    y, (k1, b1, g1, be1, m1, v1, k2, b2, g2, m2, v2) = run(src, x)
    h = ref.batch_norm(ref.conv(x, k1, b1, padding="causal"), g1, be1, m1, v1)
    close(y, ref.batch_norm(ref.conv(h, k2, b2, strides=2), g2, None, m2, v2))


def test_batchnorm_shared_input_not_folded_wrongly(run, rng, close):
    """A conv whose output feeds both a BatchNormalization and another consumer."""
    src = """
model m {
    input image: float32[5, 6, 2]
    h = Conv2D(3, 3, padding=same)(image)
    a = BatchNormalization()(h)
    y = a + h
    output y
}"""
    x = random_input((5, 6, 2), rng)
    y, (k, b, g, be, mu, var) = run(src, x)
    h = ref.conv(x, k, b, padding="same")
    close(y, ref.batch_norm(h, g, be, mu, var) + h)


def test_batchnorm_default_weights_near_identity(run, rng, close):
    src = """
model m {
    input x: float32[4]
    BatchNormalization()
}"""
    x = random_input((4,), rng)
    import kcompile
    m = kcompile.compile_string(src)
    g, b, mu, var = m.get_weights()
    np.testing.assert_array_equal(g, 1)
    np.testing.assert_array_equal(b, 0)
    np.testing.assert_array_equal(mu, 0)
    np.testing.assert_array_equal(var, 1)
    y, _ = run(src, x, m.get_weights())
    close(y, x / np.sqrt(1 + 1e-3))


@pytest.mark.parametrize("conv,args", [
    ("Conv2D(6, 3, padding=same, groups=3)", dict(padding="same", groups=3)),
    ("Conv2D(4, 3, padding=same, dilation_rate=2)", dict(padding="same", dilation=2)),
    ("Conv2D(4, (2, 3), strides=(2, 1), padding=same, activation=relu)", dict(strides=(2, 1), padding="same")),
])
def test_conv_variants_batchnorm(run, rng, close, conv, args):
    src = f"""
model m {{
    input image: float32[7, 8, 3]
    {conv}
    BatchNormalization()
}}"""
    x = random_input((7, 8, 3), rng)
    y, (k, b, g, be, mu, var) = run(src, x)
    h = ref.conv(x, k, b, **args)
    if "relu" in conv:
        h = np.maximum(h, 0)
    close(y, ref.batch_norm(h, g, be, mu, var))


def test_dense_rank3_batchnorm(run, rng, close):
    src = """
model m {
    input x: float32[5, 4]
    Dense(3)
    BatchNormalization()
}"""
    x = random_input((5, 4), rng)
    y, (k, b, g, be, mu, var) = run(src, x)
    close(y, ref.batch_norm(ref.dense(x, k, b), g, be, mu, var))


def test_batchnorm_dropout_between_convs(run, rng, close):
    src = """
model m {
    input image: float32[6, 6, 2]
    Conv2D(3, 3, padding=same)
    Dropout(0.4)
    BatchNormalization(scale=false)
    Conv2D(2, 3)
}"""
    x = random_input((6, 6, 2), rng)
    y, (k1, b1, be, mu, var, k2, b2) = run(src, x)
    h = ref.batch_norm(ref.conv(x, k1, b1, padding="same"), None, be, mu, var)
    close(y, ref.conv(h, k2, b2))


def test_two_identical_batchnorms_keep_their_own_weights(run, rng, close):
    """Same input, same (default) initial weights: the compiler must not merge them."""
    src = """
model m {
    input x: float32[4]
    a = BatchNormalization()(x)
    b = BatchNormalization()(x)
    y = a - b
    output y
}"""
    x = random_input((4,), rng)
    y, w = run(src, x)
    assert len(w) == 8
    close(y, ref.batch_norm(x, *w[:4]) - ref.batch_norm(x, *w[4:]))


@pytest.mark.parametrize("axis,shape", [("-1", (5,)), ("-1", (3, 4)), ("(1, 2)", (3, 4)), ("1", (3, 4, 2))])
def test_unit_normalization_against_numpy(rng, axis, shape):
    """Keras 3's UnitNormalization: x * rsqrt(max(sum(x^2), 1e-24)) over axis; an all-zero item
    stays zero."""
    import kcompile
    m = kcompile.compile_string(f"model m {{\n    input x: float32[{', '.join(map(str, shape))}]\n"
                                f"    y = UnitNormalization(axis={axis})(x)\n    output y\n}}\n")
    x = random_input(shape, rng, scale=2.0, batch=3)
    x[0] = 0
    axes = tuple(a if a > 0 else len(shape) + 1 + a for a in (eval(axis) if "(" in axis else (int(axis),)))
    norm = np.sqrt(np.maximum(np.sum(x.astype(np.float64) ** 2, axis=axes, keepdims=True), 1e-24))
    np.testing.assert_allclose(m.predict(x), x / norm, rtol=1e-6, atol=1e-7)
    assert not m.predict(x)[0].any()


def test_unit_normalization_gradients_against_finite_differences():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
    from gradcheck import check_gradients
    src = "model m {\n    input x: float64[3, 4]\n    h = Dense(4)(x)\n    y = UnitNormalization(axis=(1, 2))(h)\n    output y\n}\n"
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    checked, _ = check_gradients(src, {"x": x})
    assert checked >= 3  # (the input and both weights)
