"""Every activation by name (Dense(activation=...), Activation(...), the function form),
and the LeakyReLU, ReLU, ELU and Softmax layers."""
import numpy as np
import pytest

import kcompile

import reference as ref
from reference import random_input

NAMES = ["linear", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "gelu", "elu", "selu", "softplus",
         "softsign", "swish", "silu", "leaky_relu", "relu6", "hard_sigmoid", "hard_swish", "mish", "exponential"]


def wide_input(shape, rng, batch=3):
    """Values in [-8, 8] so that relu6, hard_sigmoid and friends reach both their saturated ends."""
    return random_input(shape, rng, scale=8.0, batch=batch)


def test_reference_hard_sigmoid_is_keras3():
    x = np.array([-4.0, -3.0, 0.0, 1.5, 3.0, 4.0])
    np.testing.assert_allclose(ref.activation("hard_sigmoid", x), [0, 0, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(ref.activation("relu6", x * 3), [0, 0, 0, 4.5, 6, 6])


def test_all_activation_names_known():
    from kcompile.layers.activations import ACTIVATIONS
    assert set(NAMES) <= set(ACTIVATIONS)
    assert set(ref.ACTIVATIONS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_dense_activation(run, rng, close, name):
    src = f"""
model m {{
    input x: float32[5]
    Dense(6, activation={name})
}}"""
    x = random_input((5,), rng, scale=4.0, batch=4)
    # Large weights so that pre-activations spread over [-8, 8].
    w = [rng.uniform(-1.5, 1.5, (5, 6)).astype(np.float32), rng.uniform(-1, 1, 6).astype(np.float32)]
    y, _ = run(src, x, w)
    close(y, ref.activation(name, ref.dense(x, *w)))


@pytest.mark.parametrize("name", NAMES)
def test_dense_activation_rank3(run, rng, close, name):
    src = f"""
model m {{
    input x: float32[3, 4]
    Dense(5, activation={name})
}}"""
    x = random_input((3, 4), rng, scale=3.0)
    y, w = run(src, x)
    close(y, ref.activation(name, ref.dense(x, *w)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_activation_layer(run, rng, close, name, shape):
    src = f"""
model m {{
    input x: float32[{', '.join(map(str, shape))}]
    Activation({name})
}}"""
    x = wide_input(shape, rng)
    y, _ = run(src, x)
    close(y, ref.activation(name, x))


@pytest.mark.parametrize("name", NAMES)
def test_activation_layer_string_argument(run, rng, close, name):
    src = f"""
model m {{
    input x: float32[6]
    y = Activation("{name}")(x)
    output y
}}"""
    x = wide_input((6,), rng)
    y, _ = run(src, x)
    close(y, ref.activation(name, x))


@pytest.mark.parametrize("name", NAMES)
def test_activation_function(run, rng, close, name):
    src = f"""
model m {{
    input x: float32[2, 6]
    y = {name}(x)
    output y
}}"""
    x = wide_input((2, 6), rng)
    y, _ = run(src, x)
    close(y, ref.activation(name, x))


@pytest.mark.parametrize("name", NAMES)
def test_conv_activation(run, rng, close, name):
    src = f"""
model m {{
    input image: float32[5, 4, 2]
    Conv2D(3, 2, padding=same, activation={name})
}}"""
    x = random_input((5, 4, 2), rng, scale=3.0)
    w = [rng.uniform(-1.5, 1.5, (2, 2, 2, 3)).astype(np.float32), rng.uniform(-1, 1, 3).astype(np.float32)]
    y, _ = run(src, x, w)
    close(y, ref.activation(name, ref.conv(x, *w, padding="same")))


def test_activation_default_is_linear(run, rng, close):
    src = """
model m {
    input x: float32[4]
    Activation()
}"""
    x = wide_input((4,), rng)
    y, _ = run(src, x)
    close(y, x)


@pytest.mark.parametrize("fn,axis", [("softmax", 1), ("softmax", 2), ("softmax", -1), ("log_softmax", 1),
                                     ("log_softmax", -1)])
def test_softmax_function_axis(run, rng, close, fn, axis):
    src = f"""
model m {{
    input x: float32[3, 5]
    y = {fn}(x, axis={axis})
    output y
}}"""
    x = wide_input((3, 5), rng)
    y, _ = run(src, x)
    close(y, getattr(ref, fn)(x.astype(np.float64), axis=axis))


# ---------------------------------------------------------------- activation layers
@pytest.mark.parametrize("arg,slope", [("", 0.3), ("0.1", 0.1), ("negative_slope=0.5", 0.5),
                                       ("negative_slope=0", 0.0)])
def test_leaky_relu_layer(run, rng, close, arg, slope):
    src = f"""
model m {{
    input x: float32[3, 4]
    LeakyReLU({arg})
}}"""
    x = wide_input((3, 4), rng)
    y, _ = run(src, x)
    close(y, ref.leaky_relu(x, slope))


@pytest.mark.parametrize("args,max_value,slope", [
    ("", None, 0.0), ("max_value=6.0", 6.0, 0.0), ("max_value=1", 1.0, 0.0),
    ("negative_slope=0.1", None, 0.1), ("max_value=4.5, negative_slope=0.2", 4.5, 0.2),
    ("6.0, 0.3", 6.0, 0.3), ("max_value=0", 0.0, 0.0),
])
def test_relu_layer(run, rng, close, args, max_value, slope):
    src = f"""
model m {{
    input x: float32[10]
    ReLU({args})
}}"""
    x = wide_input((10,), rng)
    y, _ = run(src, x)
    close(y, ref.relu(x, max_value, slope))


@pytest.mark.parametrize("args,alpha", [("", 1.0), ("0.5", 0.5), ("alpha=2.0", 2.0)])
def test_elu_layer(run, rng, close, args, alpha):
    src = f"""
model m {{
    input x: float32[2, 5]
    ELU({args})
}}"""
    x = wide_input((2, 5), rng)
    y, _ = run(src, x)
    close(y, ref.elu(x.astype(np.float64), alpha))


@pytest.mark.parametrize("shape,args,axis", [
    ((6,), "", -1), ((3, 5), "", -1), ((3, 5), "axis=1", 1), ((3, 5), "axis=2", 2), ((3, 5), "axis=-2", -2),
    ((2, 3, 4), "axis=1", 1), ((2, 3, 4), "axis=2", 2), ((2, 3, 4), "-1", -1),
])
def test_softmax_layer(run, rng, close, shape, args, axis):
    src = f"""
model m {{
    input x: float32[{', '.join(map(str, shape))}]
    Softmax({args})
}}"""
    x = wide_input(shape, rng)
    y, _ = run(src, x)
    close(y, ref.softmax(x.astype(np.float64), axis=axis))


def test_softmax_after_conv_axis(run, rng, close):
    """Softmax over the channels of a conv output (where transposes get moved around)."""
    src = """
model m {
    input image: float32[4, 5, 2]
    Conv2D(3, 3, padding=same)
    Softmax()
}"""
    x = random_input((4, 5, 2), rng)
    y, (k, b) = run(src, x)
    close(y, ref.softmax(ref.conv(x, k, b, padding="same"), axis=-1))


def test_softmax_after_conv_spatial_axis(run, rng, close):
    src = """
model m {
    input image: float32[4, 5, 2]
    Conv2D(3, 3, padding=same)
    Softmax(axis=1)
}"""
    x = random_input((4, 5, 2), rng)
    y, (k, b) = run(src, x)
    close(y, ref.softmax(ref.conv(x, k, b, padding="same"), axis=1))


def test_activation_layers_after_conv(run, rng, close):
    src = """
model m {
    input image: float32[5, 5, 2]
    Conv2D(3, 3)
    LeakyReLU()
    Conv2D(2, 2)
    ReLU(max_value=0.5)
    Conv2D(2, 1)
    ELU(0.7)
}"""
    x = random_input((5, 5, 2), rng, scale=2.0)
    y, (k1, b1, k2, b2, k3, b3) = run(src, x)
    h = ref.leaky_relu(ref.conv(x, k1, b1), 0.3)
    h = ref.relu(ref.conv(h, k2, b2), 0.5)
    close(y, ref.elu(ref.conv(h, k3, b3), 0.7))


def test_gelu_approximate_is_kerass_tanh_form(run, rng, close):
    """gelu(x, approximate=true): Keras's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); the
    default stays the exact erf form (the two differ by up to ~5e-4 here, well above float32's
    noise, so each check tells them apart)."""
    x = wide_input((7,), rng)
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    src = "model m {\n    input x: float32[7]\n    y = gelu(x, approximate=APPROX)\n    output y\n}"
    y, _ = run(src.replace("APPROX", "true"), x)
    close(y, tanh_form)
    y, _ = run(src.replace("APPROX", "false"), x)
    close(y, ref.activation("gelu", x))
    assert np.abs(tanh_form - ref.activation("gelu", x)).max() > 1e-4


def _slope_at(layer, k):
    """The derivative training uses for ``layer`` at exactly ``k``: one SGD step of an mse loss
    whose gradient at the output is 2, through a Dense that passes k on (kernel 1, bias 0)."""
    m = kcompile.compile_string(f"""model m {{ input x: float32[1]
    y = {layer}(Dense(1, kernel_initializer=ones, bias_initializer=zeros)(x))
    output y
    train {{ loss = mse; optimizer = SGD(0.5) }} }}""")
    x = np.array([[k]], np.float32)
    m.train_on_batch(x, m.predict(x) - 1)
    return float(-m.get_weights()[1][0])


@pytest.mark.parametrize("layer, k, slope", [
    # as Keras computes them on every backend: relu6 (max_value=6) is 0 at 6; with both
    # negative_slope and max_value, clip(relu(x)) - slope * relu(-x) is 0 at 0; PReLU's
    # relu(x) - alpha * relu(-x) is 0 at 0
    ("Activation(relu6)", 6, 0.0), ("Activation(relu6)", 0, 0.0), ("ReLU(max_value=6)", 6, 0.0),
    ("ReLU(negative_slope=0.2, max_value=3)", 0, 0.0), ("ReLU(negative_slope=0.2, max_value=3)", -1, 0.2),
    ("PReLU(alpha_initializer=Constant(0.25))", 0, 0.0), ("PReLU(alpha_initializer=Constant(0.25))", -2, 0.25),
    # where the backends differ, TensorFlow's and PyTorch's: a clip is 1 at its bound, leaky_relu
    # is alpha at 0 (JAX: 0.5 and 1), abs is 0 at 0
    ("ReLU(max_value=3)", 3, 1.0), ("LeakyReLU(0.2)", 0, 0.2), ("abs", 0, 0.0), ("Activation(relu)", 0, 0.0),
])
def test_derivatives_at_the_kinks(layer, k, slope):
    assert _slope_at(layer, k) == pytest.approx(slope)
