"""crop-unread-borders: where it crops, where it must not, and the same outputs and training
steps as without it."""
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.driver import compile_source
from kcompile.passes import crop_unread_borders

from test_passes import assert_same, graph_of, image, random_weights

ROOT = Path(__file__).resolve().parents[2]


def model(image_shape, body):
    return f"model m {{\n    input x: float32[{image_shape}]\n    {body}\n}}\n"


def shapes(g, op):
    return [g.types[n.outputs[0]].shape[1:] for n in g.nodes() if n.op == op]


def test_mnist_cnn_reads_the_top_left_26x26_pixels():
    path = ROOT / "examples" / "mnist_cnn.kdl"
    g = compile_source(path.read_text(), str(path)).graph
    slices = [n for n in g.nodes() if n.op == "Slice"]
    # One crop, of the image made channels-first (a Reshape: the image has one channel).
    assert len(slices) == 1 and g.producer_of(slices[0].inputs[0]).op == "Reshape"
    assert g.producer_of(slices[0].inputs[0]).inputs == ["image"]
    assert g.types[slices[0].outputs[0]].shape[1:] == (1, 26, 26)
    assert shapes(g, "Conv") == [(32, 24, 24), (64, 10, 10)]     # from 26x26 and 11x11
    assert shapes(g, "MaxPool") == [(32, 12, 12), (64, 5, 5)]    # the output is unchanged


@pytest.mark.parametrize("shape, body, cropped", [
    # An odd feature map under a 2x2 pool: the last row and column are in no window.
    ("9, 9, 2", "Conv2D(4, 3, activation=relu)\n    y = MaxPooling2D(2)\n    output y", (8, 8)),
    # Strides: a 3x3 window at stride 2 over 10 columns reads 9 of them, so the 10th column of
    # the first convolution is unread.
    ("10, 10, 1", "Conv2D(2, 1)\n    y = Conv2D(4, 3, strides=2)\n    output y", (9, 9)),
    # Dilation and a rectangular image: the crop is per axis.
    ("12, 11, 1", "Conv2D(3, 3, dilation_rate=2)\n    y = MaxPooling2D(2)\n    output y", (12, 10)),
    # One dimension: a sequence under a 1-d pool.
    ("10, 3", "Conv1D(4, 2)\n    y = MaxPooling1D(2)\n    output y", (9,)),
    # Two branches added: both convolutions shrink together.
    ("9, 9, 1", "a = Conv2D(2, 3)(x)\n    b = Conv2D(2, 3, activation=relu)(x)\n"
                "    y = AveragePooling2D(2)(Add()(a, b))\n    output y", (8, 8)),
])
def test_crops_and_keeps_the_outputs(shape, body, cropped):
    src = model(shape, body)
    before = graph_of(src, 0)
    after = crop_unread_borders(graph_of(src, 0))
    slices = [n for n in after.nodes() if n.op == "Slice"]
    assert len(slices) == 1 and after.types[slices[0].outputs[0]].shape[1:-1] == cropped
    assert [t for _, t in before.outputs] != [] and \
        [after.types[v].shape for _, v in after.outputs] == [before.types[v].shape for _, v in before.outputs]
    dims = tuple(int(d) for d in shape.split(", "))
    assert_same(before, after, {"x": image((3,) + dims)}, random_weights(before))


@pytest.mark.parametrize("shape, body", [
    ("8, 8, 1", "Conv2D(4, 3, padding=same)\n    y = MaxPooling2D(2)\n    output y"),  # padded: every pixel read
    ("9, 9, 1", "Conv2D(4, 2)\n    y = MaxPooling2D(2)\n    output y"),                 # 8x8 pooled whole
    ("10, 10, 1", "y = Conv2D(4, 3, strides=2)\n    output y"),   # reads 9 columns, but computes as many outputs
    ("10, 10, 1", "BatchNormalization()\n    y = MaxPooling2D(3)\n    output y"),  # no convolution to save
    ("9, 9, 1", "Conv2D(4, 3)\n    y = GlobalAveragePooling2D()\n    output y"),         # reads every position
    ("9, 9, 1", "c = Conv2D(4, 3)(x)\n    p = MaxPooling2D(2)(c)\n    output p, c"),  # c is an output
    ("9, 9, 1", "c = Conv2D(2, 3)(x)\n    p = Flatten()(MaxPooling2D(2)(c))\n"
                "    y = Concatenate()(p, Flatten()(c))\n    output y"),           # c is also read whole
])
def test_leaves_what_is_read_whole(shape, body):
    g = crop_unread_borders(graph_of(model(shape, body), 0))
    assert not [n for n in g.nodes() if n.op == "Slice"]


def test_operands_cropped_from_different_sources_are_matched():
    """b is an output too, so it stays whole; a is cropped through its own input (9x9 of x1's
    10x10): their sum takes b's first 8 rows and columns."""
    src = """model m {
    input x1: float32[10, 10, 1]
    input x2: float32[9, 9, 1]
    a = Conv2D(2, 2)(x1)
    b = Conv2D(2, 1)(x2)
    y = MaxPooling2D(2)(Add()(a, b))
    output y, b
}"""
    before = graph_of(src, 0)
    after = crop_unread_borders(graph_of(src, 0))
    assert sorted(after.types[n.outputs[0]].shape[1:3] for n in after.nodes() if n.op == "Slice") == [(8, 8), (9, 9)]
    rng = np.random.default_rng(0)
    assert_same(before, after, {"x1": rng.normal(size=(2, 10, 10, 1)).astype(np.float32),
                                "x2": rng.normal(size=(2, 9, 9, 1)).astype(np.float32)}, random_weights(before))


def test_training_steps_match_the_uncropped_model():
    """A CNN whose first convolution is cropped trains step for step as at -O0 (real digits)."""
    src = """model cropped {
        input image: float32[28, 28, 1]
        Conv2D(8, 3, activation=relu)
        MaxPooling2D(2)
        Conv2D(16, 3, activation=relu)
        MaxPooling2D(2)
        Flatten()
        probs = Dense(10, activation=softmax)
        train {
            loss = categorical_crossentropy
            optimizer = Adam()
        }
    }"""
    with np.load(ROOT / "examples" / "data" / "mnist_sample.npz") as d:
        x, labels = d["x"][:48, ..., None].astype(np.float32) / 255.0, d["y"][:48]
    y = np.eye(10, dtype=np.float32)[labels]
    runs = []
    for level in (0, 1):
        m = kcompile.compile_string(src, seed=3, opt_level=level)
        runs.append(([m.train_on_batch(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)], m.get_weights()))
    step = m._compiled.training().step
    channels_first, = [n.outputs[0] for n in step.nodes() if n.inputs == ["image"]]  # a Reshape
    assert [step.types[n.outputs[0]].shape[1:] for n in step.consumers(channels_first)] == [(1, 26, 26)]
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
