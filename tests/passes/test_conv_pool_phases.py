"""ConvMaxPool (a few-channel Conv and its 2x2 max pool as four stride-2 phase convolutions):
the pass's pattern, exact gradients, and the same training steps as Conv + MaxPool, ties
(flat MNIST background) included."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.driver import compile_source
from kcompile.passes.fusion import fuse_bias
from kcompile.passes.reorder import conv_pool_phases, pool_before_activation
from kcompile.passes.transpose import sink_transposes

# The training pipeline's forward passes up to this one (kcompile.training.graphs.FORWARD_PASSES).
PIPELINE = [sink_transposes, fuse_bias, pool_before_activation, conv_pool_phases]


def rewrite(g):
    for p in PIPELINE:
        g = p(g)
    return g

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "autodiff"))
from gradcheck import check_gradients  # noqa: E402


def ops_after(src):
    g = compile_source(src, "t.kdl", opt_level=0).graph
    return Counter(n.op for n in rewrite(g).nodes())


def model(image, layers):
    return f"model m {{\n    input x: float32[{image}]\n    {layers}\n}}\n"


def test_pattern_few_input_channels_only():
    assert ops_after(model("12, 12, 1", "Conv2D(4, 3, activation=relu)\n    MaxPooling2D(2)"))["ConvMaxPool"] == 1
    assert ops_after(model("12, 12, 3", "Conv2D(4, 3, padding=same)\n    MaxPooling2D(2)"))["ConvMaxPool"] == 1
    for image, layers in [("12, 12, 9", "Conv2D(4, 3)\n    MaxPooling2D(2)"),      # too many input channels
                          ("12, 12, 1", "Conv2D(4, 3, strides=2)\n    MaxPooling2D(2)"),
                          ("12, 12, 1", "Conv2D(4, 3)\n    MaxPooling2D(3)"),
                          ("12, 12, 1", "Conv2D(4, 3)\n    MaxPooling2D(2, strides=1)")]:
        assert ops_after(model(image, layers))["ConvMaxPool"] == 0, layers


@pytest.mark.parametrize("image, conv", [("6, 6, 1", "Conv2D(3, 3)"),                 # even conv output
                                         ("7, 7, 2", "Conv2D(2, 3)"),                 # odd: last row unpooled
                                         ("6, 5, 1", "Conv2D(2, 3, padding=same)"),   # padded phases
                                         ("8, 8, 1", "Conv2D(2, (2, 3), use_bias=false)")])
def test_gradients_against_finite_differences(image, conv):
    src = model(image.replace("float32", ""), f"y = MaxPooling2D(2)({conv}(x))\n    output y").replace(
        "float32", "float64")
    shape = (3,) + tuple(int(d) for d in image.split(", "))
    x = np.random.default_rng(0).normal(size=shape)  # continuous values: no ties, differentiable
    g = compile_source(src, "t.kdl", opt_level=0).graph
    assert Counter(n.op for n in rewrite(g).nodes())["ConvMaxPool"] == 1
    checked, _ = check_gradients(src, {"x": x}, passes=PIPELINE)
    assert checked > 0


def test_training_steps_match_argmax_pooling_on_real_digits():
    """Real digits have flat zero background, so the pooled windows tie often: the phases must
    send the gradient to the same (first) position as MaxPool's argmax."""
    with np.load(ROOT / "examples" / "data" / "mnist_sample.npz") as d:
        x, labels = d["x"][:64, ..., None].astype(np.float32) / 255.0, d["y"][:64]
    y = np.eye(10, dtype=np.float32)[labels]
    runs = []
    for level in (0, 1):
        m = kcompile.compile(ROOT / "examples" / "mnist_cnn.kdl", seed=4, opt_level=level)
        losses = [m.train_on_batch(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        runs.append((losses, m.get_weights()))
    assert Counter(n.op for n in m._compiled.training().step.nodes())["ConvMaxPool"] == 1
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_padded_three_channel_conv_trains_as_without_the_pass():
    """An RGB-like input, padding=same and an odd feature map (the last row and column are in
    no window), blocky images so that windows tie: -O1 (phases) follows -O0 step for step."""
    src = """model rgb {
        input image: float32[9, 9, 3]
        Conv2D(6, 3, padding=same, activation=relu)
        MaxPooling2D(2)
        Flatten()
        probs = Dense(4, activation=softmax)
        train {
            loss = categorical_crossentropy
            optimizer = SGD(learning_rate=0.1)
        }
    }"""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 2, (32, 3, 3, 3)).astype(np.float32)  # 3x3 blocks of equal pixels
    x = np.repeat(np.repeat(blocks, 3, axis=1), 3, axis=2)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 32)]
    runs = []
    for level in (0, 1):
        m = kcompile.compile_string(src, seed=2, opt_level=level)
        runs.append(([m.train_on_batch(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)], m.get_weights()))
    assert Counter(n.op for n in m._compiled.training().step.nodes())["ConvMaxPool"] == 1
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
