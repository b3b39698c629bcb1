"""Conv1DTranspose, DepthwiseConv1D and SeparableConv1D: outputs against loop-based numpy
references, gradients against finite differences (float64), Keras 3 (JAX) with the same weights,
a small model that trains, and the arguments Keras refuses."""
import os
import sys

import numpy as np
import pytest

import kcompile
import reference as ref
from kcompile.errors import KcompileError
from reference import random_input

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "autodiff"))
from gradcheck import check_gradients, expected_checks  # noqa: E402


def opt(name, value):
    return "" if value is None else f", {name}={value}"


# ---------------------------------------------------------------- outputs against numpy
TRANSPOSE_CASES = [
    # (steps, channels, filters, kernel, strides, padding, output_padding, dilation)
    (5, 3, 2, 3, 1, "valid", None, 1),
    (5, 3, 2, 3, 1, "same", None, 1),
    (5, 3, 2, 3, 2, "valid", None, 1),
    (5, 3, 2, 3, 2, "same", None, 1),
    (5, 3, 2, 2, 2, "same", None, 1),
    (5, 3, 2, 4, 2, "same", None, 1),
    (5, 3, 2, 4, 2, "valid", None, 1),
    (4, 2, 3, 1, 2, "valid", None, 1),   # kernel smaller than stride
    (4, 2, 3, 2, 3, "same", None, 1),
    (4, 2, 3, 5, 3, "same", None, 1),
    (5, 3, 2, 3, 2, "valid", 1, 1),
    (5, 3, 2, 3, 2, "same", 1, 1),
    (5, 3, 2, 3, 2, "same", 0, 1),
    (5, 3, 2, 4, 2, "same", 1, 1),
    (5, 3, 2, 3, 3, "valid", 2, 1),
    (5, 3, 2, 2, 3, "same", 2, 1),
    (6, 2, 3, 3, 1, "valid", None, 2),
    (6, 2, 3, 3, 1, "same", None, 2),
    (6, 2, 3, 2, 1, "same", None, 3),
    (6, 2, 3, 3, 1, "same", 0, 2),
]


@pytest.mark.parametrize("steps,channels,filters,kernel,strides,padding,output_padding,dilation", TRANSPOSE_CASES)
def test_conv1d_transpose(run, rng, close, steps, channels, filters, kernel, strides, padding, output_padding,
                          dilation):
    src = f"""
model m {{
    input seq: float32[{steps}, {channels}]
    Conv1DTranspose({filters}, {kernel}, strides={strides}, padding={padding},
                    dilation_rate={dilation}{opt("output_padding", output_padding)})
}}"""
    x = random_input((steps, channels), rng)
    y, (k, b) = run(src, x)
    assert k.shape == (kernel, filters, channels)
    want = ref.conv1d_transpose(x, k, b, strides, padding, output_padding, dilation)
    assert want.shape[1] == ref.deconv_length(steps, kernel, strides, padding, output_padding, dilation)
    close(y, want)


def test_conv1d_transpose_output_length_no_bias_activation(run, rng, close):
    src = """
model m {
    input seq: float32[7, 3]
    a = Conv1DTranspose(2, 3, strides=2, padding=same, use_bias=false, activation=tanh)(seq)
    b = Conv1DTranspose(2, 3, strides=2)(seq)
    c = Conv1DTranspose(2, 1, strides=3)(seq)
    output a, b, c
}"""
    x = random_input((7, 3), rng)
    (a, b, c), w = run(src, x)
    assert (a.shape, b.shape, c.shape) == ((2, 14, 2), (2, 15, 2), (2, 21, 2))
    assert len(w) == 5  # (a has no bias)
    close(a, np.tanh(ref.conv1d_transpose(x, w[0], None, 2, "same")))


DEPTHWISE_CASES = [
    # (steps, channels, kernel, strides, padding, depth_multiplier, dilation)
    (9, 3, 3, 1, "valid", 1, 1),
    (9, 3, 3, 1, "same", 2, 1),
    (9, 3, 3, 2, "same", 3, 1),
    (9, 3, 3, 2, "valid", 2, 1),
    (10, 2, 4, 2, "same", 1, 1),
    (10, 2, 2, 3, "valid", 2, 1),
    (10, 2, 2, 3, "same", 2, 1),
    (11, 3, 3, 1, "same", 1, 2),
    (11, 3, 3, 1, "valid", 2, 3),
    (11, 2, 2, 1, "same", 2, 4),
    (4, 1, 5, 1, "same", 2, 1),   # kernel longer than the sequence
    (8, 4, 1, 1, "valid", 2, 1),
]


@pytest.mark.parametrize("steps,channels,kernel,strides,padding,multiplier,dilation", DEPTHWISE_CASES)
def test_depthwise_conv1d(run, rng, close, steps, channels, kernel, strides, padding, multiplier, dilation):
    src = f"""
model m {{
    input seq: float32[{steps}, {channels}]
    DepthwiseConv1D({kernel}, strides={strides}, padding={padding}, depth_multiplier={multiplier},
                    dilation_rate={dilation})
}}"""
    x = random_input((steps, channels), rng)
    y, (k, b) = run(src, x)
    assert k.shape == (kernel, channels, multiplier) and b.shape == (channels * multiplier,)
    close(y, ref.depthwise_conv(x, k, b, strides, padding, dilation))


SEPARABLE_CASES = [
    # (steps, channels, filters, kernel, strides, padding, depth_multiplier, dilation)
    (9, 3, 4, 3, 1, "valid", 1, 1),
    (9, 3, 4, 3, 1, "same", 2, 1),
    (9, 3, 5, 3, 2, "same", 3, 1),
    (10, 2, 3, 4, 2, "valid", 1, 1),
    (10, 2, 3, 2, 3, "same", 2, 1),
    (11, 3, 2, 3, 1, "same", 2, 2),
    (11, 3, 2, 2, 1, "valid", 1, 3),
    (6, 4, 1, 1, 1, "valid", 2, 1),
]


@pytest.mark.parametrize("steps,channels,filters,kernel,strides,padding,multiplier,dilation", SEPARABLE_CASES)
def test_separable_conv1d(run, rng, close, steps, channels, filters, kernel, strides, padding, multiplier, dilation):
    src = f"""
model m {{
    input seq: float32[{steps}, {channels}]
    SeparableConv1D({filters}, {kernel}, strides={strides}, padding={padding}, depth_multiplier={multiplier},
                    dilation_rate={dilation})
}}"""
    x = random_input((steps, channels), rng)
    y, (depthwise, pointwise, b) = run(src, x)
    assert depthwise.shape == (kernel, channels, multiplier)
    assert pointwise.shape == (1, channels * multiplier, filters) and b.shape == (filters,)
    inner = ref.depthwise_conv(x, depthwise, None, strides, padding, dilation)
    close(y, ref.conv(inner, pointwise, b))


def test_depthwise_and_separable_conv1d_no_bias_activation(run, rng, close):
    src = """
model m {
    input seq: float32[8, 3]
    d = DepthwiseConv1D(3, padding=same, depth_multiplier=2, use_bias=false, activation=relu)(seq)
    s = SeparableConv1D(4, 3, padding=same, use_bias=false, activation=sigmoid)(seq)
    output d, s
}"""
    x = random_input((8, 3), rng)
    (d, s), w = run(src, x)
    assert [a.shape for a in w] == [(3, 3, 2), (3, 3, 1), (1, 3, 4)]
    close(d, np.maximum(ref.depthwise_conv(x, w[0], padding="same"), 0))
    close(s, ref.sigmoid(ref.conv(ref.depthwise_conv(x, w[1], padding="same"), w[2])))


# ---------------------------------------------------------------- gradients (float64)
@pytest.mark.parametrize("layer,shape", [
    ("Conv1DTranspose(2, 3)", (2, 4, 3)),
    ("Conv1DTranspose(2, 3, padding=same)", (2, 4, 3)),
    ("Conv1DTranspose(3, 3, strides=2, padding=same)", (2, 4, 2)),
    ("Conv1DTranspose(2, 4, strides=2, padding=same)", (2, 3, 2)),
    ("Conv1DTranspose(2, 2, strides=3)", (2, 3, 2)),
    ("Conv1DTranspose(2, 3, strides=2, output_padding=1)", (1, 4, 2)),
    ("Conv1DTranspose(2, 3, strides=3, padding=same, output_padding=2)", (1, 4, 2)),
    ("Conv1DTranspose(2, 3, dilation_rate=2, activation=tanh)", (2, 4, 3)),
    ("Conv1DTranspose(2, 2, padding=same, dilation_rate=3, use_bias=false)", (2, 5, 2)),
    ("DepthwiseConv1D(3)", (2, 6, 3)),
    ("DepthwiseConv1D(3, padding=same, depth_multiplier=2)", (2, 7, 3)),
    ("DepthwiseConv1D(3, strides=2, padding=same, depth_multiplier=3)", (2, 7, 2)),
    ("DepthwiseConv1D(2, strides=3, depth_multiplier=2)", (2, 8, 2)),
    ("DepthwiseConv1D(3, padding=same, dilation_rate=2, depth_multiplier=2, activation=tanh)", (2, 7, 2)),
    ("SeparableConv1D(3, 3, strides=2)", (2, 8, 2)),
    ("SeparableConv1D(4, 3, padding=same, depth_multiplier=2)", (2, 6, 3)),
    ("SeparableConv1D(2, 2, strides=2, padding=same, depth_multiplier=3)", (2, 7, 2)),
    ("SeparableConv1D(3, 3, padding=same, dilation_rate=2, use_bias=false)", (2, 7, 2)),
])
def test_gradients(grouped_conv_transpose, layer, shape):
    src = f"model m {{\n    input x: float64[{', '.join(map(str, shape[1:]))}]\n    y = {layer}(x)\n    output y\n}}\n"
    feeds = {"x": np.random.default_rng(1).normal(size=shape)}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)  # (every weight and the input)


# ---------------------------------------------------------------- Keras 3 with the same weights
KERAS_CASES = [
    # (layer, positional arguments, keyword arguments, input [steps, channels])
    ("Conv1DTranspose", (3, 3), dict(strides=2, padding="same"), (5, 2)),
    ("Conv1DTranspose", (2, 4), dict(strides=2, output_padding=1), (5, 3)),
    ("Conv1DTranspose", (2, 2), dict(strides=3, padding="same", output_padding=2), (4, 2)),
    ("Conv1DTranspose", (2, 3), dict(padding="same", dilation_rate=2, activation="relu"), (6, 3)),
    ("DepthwiseConv1D", (3,), dict(strides=2, padding="same", depth_multiplier=2), (9, 3)),
    ("DepthwiseConv1D", (3,), dict(dilation_rate=2, depth_multiplier=3), (10, 2)),
    ("SeparableConv1D", (4, 3), dict(strides=2, padding="same", depth_multiplier=2), (9, 3)),
    ("SeparableConv1D", (4, 2), dict(padding="same", dilation_rate=3, activation="tanh"), (10, 3)),
]


@pytest.mark.parametrize("layer,args,kwargs,shape", KERAS_CASES)
def test_matches_keras(keras, layer, args, kwargs, shape):
    x_in = keras.Input(shape)
    reference = keras.Model(x_in, getattr(keras.layers, layer)(*args, **kwargs)(x_in))
    rng = np.random.default_rng(2)
    reference.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in reference.get_weights()])
    written = ", ".join([str(a) for a in args] + [f"{k}={v}" for k, v in kwargs.items()])
    m = kcompile.compile_string(f"model m {{\n    input x: float32[{shape[0]}, {shape[1]}]\n    {layer}({written})\n}}")
    assert [w.shape for w in m.get_weights()] == [w.shape for w in reference.get_weights()]
    m.set_weights(reference.get_weights())
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), np.asarray(reference.predict(x, verbose=0)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- training
def test_a_model_of_the_three_layers_trains():
    m = kcompile.compile_string("""model m {
    input x: float32[8, 3]
    DepthwiseConv1D(3, padding=same, depth_multiplier=2, activation=tanh)
    SeparableConv1D(4, 3, strides=2, padding=same, activation=tanh)
    Conv1DTranspose(2, 3, strides=2, padding=same)
    train {
        loss = mse
        optimizer = Adam(0.01)
    }
}""", seed=0)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (64, 8, 3)).astype(np.float32)
    y = np.stack([x[..., 0] - x[..., 1], np.roll(x[..., 2], 1, axis=1)], axis=-1)  # (a local map)
    before = m.evaluate(x, y, verbose=0)
    history = m.fit(x, y, batch_size=16, epochs=30, verbose=0)
    after = m.evaluate(x, y, verbose=0)
    assert after < 0.5 * before, (before, after)
    assert history.history["loss"][-1] < history.history["loss"][0]


# ---------------------------------------------------------------- what Keras refuses
SEQ = "model m {\n    input x: float32[8, 3]\n    %s\n}\n"


@pytest.mark.parametrize("layer,message", [
    ("Conv1DTranspose(2, 3, strides=2, dilation_rate=2)", "strides > 1 with dilation_rate > 1 is not supported"),
    ("DepthwiseConv1D(3, strides=2, dilation_rate=2)", "strides > 1 with dilation_rate > 1 is not supported"),
    ("SeparableConv1D(2, 3, strides=2, dilation_rate=2)", "strides > 1 with dilation_rate > 1 is not supported"),
    ("Conv1DTranspose(2, 3, strides=2, output_padding=2)", "output_padding (2,) must be below strides (2,)"),
    ("Conv1DTranspose(2, 3, output_padding=1)", "output_padding (1,) must be below strides (1,)"),
    ("Conv1DTranspose(2, 3, padding=causal)", "argument 'padding': expected valid or same, got causal"),
    ("DepthwiseConv1D(3, padding=causal)", "argument 'padding': expected valid or same, got causal"),
    ("SeparableConv1D(2, 3, padding=causal)", "argument 'padding': expected valid or same, got causal"),
    ("DepthwiseConv1D((3, 3))", "argument 'kernel_size': expected an integer, got (3, 3)"),
    ("SeparableConv1D(2, 3, depth_multiplier=0)", "argument 'depth_multiplier': expected an integer >= 1, got 0"),
    ("Conv1DTranspose(2, 3, depthwise_initializer=zeros)", "Conv1DTranspose has no argument 'depthwise_initializer'"),
    ("DepthwiseConv1D(3, kernel_regularizer=l2(0.1))", "DepthwiseConv1D has no argument 'kernel_regularizer'"),
])
def test_refused_arguments_are_located_errors(located, layer, message):
    located(SEQ % layer, 3, message)


@pytest.mark.parametrize("layer", ["Conv1DTranspose(2, 3)", "DepthwiseConv1D(3)", "SeparableConv1D(2, 3)"])
def test_an_image_input_is_a_located_error(located, layer):
    located(f"model m {{\n    input x: float32[8, 8, 3]\n    {layer}\n}}\n", 3,
            "expects an input of shape [steps, channels] (without the batch), got [8, 8, 3]", col=5)


@pytest.mark.parametrize("layer, penalties", [
    ("SeparableConv1D(2, 3, depthwise_regularizer=l2(0.1), pointwise_regularizer=l1(0.2), bias_regularizer=l2(0.3))",
     {"separable_conv1d/depthwise_kernel": (0, 0.1), "separable_conv1d/pointwise_kernel": (0.2, 0),
      "separable_conv1d/bias": (0, 0.3)}),
    ("DepthwiseConv1D(3, depthwise_regularizer=l2(0.1))", {"depthwise_conv1d/kernel": (0, 0.1)}),
    ("Conv1DTranspose(2, 3, kernel_regularizer=l2(0.1))", {"conv1d_transpose/kernel": (0, 0.1)}),
])
def test_the_regularizers_keras_names(regularization_loss, layer, penalties):
    """Keras's regularizer arguments, each on its weight (the 2D layers' names): the loss gains
    l1 * sum(|w|) + l2 * sum(w^2) for each."""
    x = np.random.default_rng(0).normal(size=(4, 8, 3)).astype(np.float32)
    loss, weights = regularization_loss(SEQ % layer, x)
    want = sum(l1 * np.abs(weights[n]).sum() + l2 * (weights[n] ** 2).sum() for n, (l1, l2) in penalties.items())
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_named_steps(run, rng, close):
    """Depthwise and separable windows over a named dimension give expressions over it (as Conv1D);
    the transposed one needs the length (as Conv2DTranspose needs the height and width)."""
    x = random_input((9, 3), rng)
    (d, s), (dk, db, sd, sp, sb) = run("model m {\n    input x: float32[T, 3]\n"
                                       "    d = DepthwiseConv1D(3, depth_multiplier=2)(x)\n"
                                       "    s = SeparableConv1D(2, 3, padding=same)(x)\n    output d, s\n}\n", x)
    close(d, ref.depthwise_conv(x, dk, db))
    close(s, ref.conv(ref.depthwise_conv(x, sd, None, padding="same"), sp, sb))
    with pytest.raises(KcompileError, match="Conv1DTranspose needs known input steps") as info:
        kcompile.compile_string(SEQ.replace("[8, 3]", "[T, 3]") % "Conv1DTranspose(2, 3)", file="t.kdl")
    assert info.value.diagnostics[0].loc.line == 3
