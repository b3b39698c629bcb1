"""A "same" Conv2D of an UpSampling2D's map as one ConvTranspose of the small map
(passes/upsample.py): the pattern, the outputs and gradients of the convolution it replaces,
and the same training steps as without the pass."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import kcompile
from kcompile.driver import compile_source
from kcompile.passes.fusion import fuse_bias
from kcompile.passes.transpose import sink_transposes
from kcompile.passes.upsample import upsampled_conv_as_transposed, upsampled_conv_as_transposed_in_training

# The training pipeline's forward passes up to this one (kcompile.training.graphs.FORWARD_PASSES).
PIPELINE = [sink_transposes, fuse_bias, upsampled_conv_as_transposed_in_training]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "autodiff"))
from gradcheck import check_gradients  # noqa: E402


def model(image, body, dtype="float32", train=""):
    return f"model m {{\n    input x: {dtype}[{image}]\n    {body}\n{train}}}\n"


def ops_after(src, pipeline=PIPELINE):
    g = compile_source(src, "t.kdl", opt_level=0).graph
    for p in pipeline:
        g = p(g)
    return Counter(n.op for n in g.nodes())


def test_one_dimensional_maps_in_training_steps_only():
    """Measured: a Conv1D decoder's fit 1.13x faster, its predict 0.96x (passes/upsample.py)."""
    src = model("6, 3", "y = Conv1D(4, 3, padding=same)(UpSampling1D(2)(Conv1D(5, 1)(x)))\n    output y")
    assert ops_after(src)["ConvTranspose"] == 1
    assert ops_after(src, [sink_transposes, fuse_bias, upsampled_conv_as_transposed])["ConvTranspose"] == 0
    volume = model("3, 3, 3, 2", "y = Conv3D(4, 3, padding=same)(UpSampling3D(2)(x))\n    output y")
    assert ops_after(volume)["ConvTranspose"] == 0


APPLIES = [("2", "3", ""), ("(2, 3)", "(3, 5)", ""), ("3", "3", ", use_bias=false"), ("2", "(5, 3)", ", activation=relu")]


@pytest.mark.parametrize("factors, kernel, extra", APPLIES)
def test_the_convolution_becomes_one_transposed_convolution_of_the_small_map(factors, kernel, extra):
    ops = ops_after(model("5, 4, 3", f"y = Conv2D(4, {kernel}, padding=same{extra})(UpSampling2D({factors})(x))\n"
                                     f"    output y"))
    assert ops["ConvTranspose"] == 1 and ops["Conv"] == 0 and ops["Upsample"] == 0


@pytest.mark.parametrize("conv", ["Conv2D(4, 3)",                              # valid: no padding
                                  "Conv2D(4, 3, padding=same, strides=2)",
                                  "Conv2D(4, 3, padding=same, dilation_rate=2)",
                                  "Conv2D(4, 1, padding=same)",                # nothing to share
                                  "Conv2D(4, 2, padding=same)",                # even: padding not centred
                                  "DepthwiseConv2D(3, padding=same)"])
def test_other_convolutions_are_left_alone(conv):
    ops = ops_after(model("5, 4, 3", f"y = {conv}(UpSampling2D(2)(x))\n    output y"))
    assert ops["ConvTranspose"] == 0 and ops["Upsample"] == 1


def test_an_upsampled_map_read_elsewhere_too_is_kept_for_that_reader():
    ops = ops_after(model("5, 4, 3", "u = UpSampling2D(2)(x)\n    y = Conv2D(4, 3, padding=same)(u)\n"
                                     "    z = Add()([y, Conv2D(4, 1)(u)])\n    output z"))
    assert ops["ConvTranspose"] == 1 and ops["Upsample"] == 1 and ops["Conv"] == 1


@pytest.mark.parametrize("factors, kernel, extra", APPLIES)
def test_outputs_equal_the_upsampled_convolution(factors, kernel, extra):
    """Against numpy: nearest upsampling, then a 'same' cross-correlation, bias and activation."""
    src = model("5, 4, 3", f"y = Conv2D(4, {kernel}, padding=same{extra})(UpSampling2D({factors})(x))\n    output y")
    m = kcompile.compile_string(src, seed=3)
    onnx_ops = Counter(n.op_type for n in onnx.load_from_string(m._inference_graph()).graph.node)
    assert onnx_ops["ConvTranspose"] == 1 and onnx_ops["Conv"] == 0 and onnx_ops["Resize"] == 0  # (the pass ran)
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
    f = (int(factors), int(factors)) if factors.isdigit() else tuple(int(v) for v in factors.strip("()").split(","))
    up = np.repeat(np.repeat(x.astype(np.float64), f[0], axis=1), f[1], axis=2)
    weights = m.get_weights()
    kernel_w = weights[0].astype(np.float64)  # [kh, kw, C, O], Keras's layout
    kh, kw = kernel_w.shape[:2]
    padded = np.pad(up, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    want = sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + up.shape[1], j:j + up.shape[2]], kernel_w[i, j])
               for i in range(kh) for j in range(kw))
    if "use_bias=false" not in extra:
        want = want + weights[1]
    if "relu" in extra:
        want = np.maximum(want, 0)
    np.testing.assert_allclose(m.predict(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image, body", [
    ("3, 4, 2", "y = Conv2D(3, 3, padding=same)(UpSampling2D(2)(x))"),
    ("3, 4, 2", "y = Conv2D(3, (3, 5), padding=same)(UpSampling2D((3, 2))(x))"),
    ("3, 4, 2", "y = Conv2D(2, 3, padding=same)(UpSampling2D(2)(Conv2D(3, 2, padding=same)(x)))"),  # channels-first
    ("4, 2", "y = Conv1D(3, 5, padding=same)(UpSampling1D(3)(x))"),
])
def test_gradients_against_finite_differences(image, body):
    """float64: the input's gradient (a strided convolution of the small map) and the kernel's,
    through the MatMul that sums its taps, and the bias's."""
    src = model(image, f"{body}\n    output y", dtype="float64")
    assert ops_after(src.replace("float64", "float32"))["ConvTranspose"] == 1
    x = np.random.default_rng(1).normal(size=(2,) + tuple(int(d) for d in image.split(", ")))
    checked, _ = check_gradients(src, {"x": x}, passes=PIPELINE)
    assert checked > 0


@pytest.mark.parametrize("d, image, out", [("2", (6, 6, 3), (12, 12, 2)), ("1", (6, 3), (12, 2))])
def test_training_steps_match_the_convolution_of_the_upsampled_map(d, image, out):
    """A small decoder trained with -O0 (Upsample and Conv) and -O1 (the pass): the same losses
    and weights, step for step."""
    body = (f"h = Conv{d}D(4, 3, padding=same, activation=relu)(x)\n    u = UpSampling{d}D(2)(h)\n"
            f"    y = Conv{d}D(2, 3, padding=same)(u)\n    output y")
    train = "    train {\n        loss = mse\n        optimizer = Adam(learning_rate=0.01)\n    }\n"
    src = model(", ".join(map(str, image)), body, train=train)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32,) + image).astype(np.float32)
    y = rng.normal(size=(32,) + out).astype(np.float32)
    runs, ops = [], []
    for level in (0, 1):
        m = kcompile.compile_string(src, seed=2, opt_level=level)
        runs.append(([m.train_on_batch(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)], m.get_weights()))
        ops.append(Counter(n.op for n in m._compiled.training().step.nodes()))
    assert ops[0]["Upsample"] == 1 and ops[1]["Upsample"] == 0
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
