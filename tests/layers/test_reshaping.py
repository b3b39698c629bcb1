"""Flatten (channels-last order), Reshape, Permute."""
import numpy as np
import pytest

import kcompile
import reference as ref
from kcompile.errors import KcompileError
from reference import random_input


def shape_src(shape):
    return ", ".join(map(str, shape))


@pytest.mark.parametrize("shape", [(5,), (3, 4), (7, 9, 3), (2, 3, 4, 2)])
def test_flatten(run, rng, close, shape):
    src = f"""
model m {{
    input x: float32[{shape_src(shape)}]
    Flatten()
}}"""
    x = random_input(shape, rng)
    y, _ = run(src, x)
    close(y, x.reshape(2, -1))


@pytest.mark.parametrize("conv", ["Conv2D(4, 3, padding=same)", "Conv2D(3, (2, 3), strides=2)",
                                  "Conv2DTranspose(2, 3, strides=2, padding=same)"])
def test_conv_flatten_dense_channels_last_order(run, rng, close, conv):
    """Flatten after a conv must flatten [h, w, c] row-major, as Keras does (not [c, h, w])."""
    src = f"""
model m {{
    input image: float32[7, 9, 3]
    {conv}
    Flatten()
    Dense(4)
}}"""
    x = random_input((7, 9, 3), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    if "Transpose" in conv:
        h = ref.conv2d_transpose(x, k1, b1, strides=2, padding="same")
    elif "strides=2" in conv:
        h = ref.conv(x, k1, b1, strides=2)
    else:
        h = ref.conv(x, k1, b1, padding="same")
    close(y, ref.dense(h.reshape(2, -1), k2, b2))


def test_conv_flatten_output(run, rng, close):
    src = """
model m {
    input image: float32[4, 5, 2]
    Conv2D(3, 2, activation=relu)
    Flatten()
}"""
    x = random_input((4, 5, 2), rng)
    y, (k, b) = run(src, x)
    close(y, np.maximum(ref.conv(x, k, b), 0).reshape(2, -1))


def test_conv1d_flatten(run, rng, close):
    src = """
model m {
    input seq: float32[6, 2]
    Conv1D(3, 2)
    Flatten()
}"""
    x = random_input((6, 2), rng)
    y, (k, b) = run(src, x)
    close(y, ref.conv(x, k, b).reshape(2, -1))


@pytest.mark.parametrize("shape,target", [
    ((24,), (4, 6)), ((24,), (2, 3, 4)), ((24,), (-1, 4)), ((24,), (2, -1, 3)), ((4, 6), (24,)),
    ((4, 6), (-1,)), ((4, 6), (6, 4)), ((2, 3, 4), (4, 3, 2)), ((2, 3, 4), (6, -1)), ((5,), (5, 1)),
    ((1, 5), (5,)),
])
def test_reshape(run, rng, close, shape, target):
    src = f"""
model m {{
    input x: float32[{shape_src(shape)}]
    Reshape({str(tuple(target))})
}}"""
    x = random_input(shape, rng, batch=3)
    y, _ = run(src, x)
    close(y, x.reshape((3,) + target))


def test_dense_reshape_conv(run, rng, close):
    src = """
model m {
    input z: float32[4]
    Dense(30, activation=relu)
    Reshape((5, 3, 2))
    Conv2D(2, 2, padding=same)
    Flatten()
}"""
    x = random_input((4,), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    h = np.maximum(ref.dense(x, k1, b1), 0).reshape(2, 5, 3, 2)
    close(y, ref.conv(h, k2, b2, padding="same").reshape(2, -1))


def test_conv_reshape(run, rng, close):
    src = """
model m {
    input image: float32[4, 6, 2]
    Conv2D(3, 3, padding=same)
    Reshape((12, 6))
}"""
    x = random_input((4, 6, 2), rng)
    y, (k, b) = run(src, x)
    close(y, ref.conv(x, k, b, padding="same").reshape(2, 12, 6))


@pytest.mark.parametrize("shape,dims", [
    ((3, 4), (2, 1)), ((3, 4), (1, 2)), ((2, 3, 4), (3, 1, 2)), ((2, 3, 4), (2, 3, 1)), ((2, 3, 4), (1, 3, 2)),
    ((2, 3, 4, 5), (4, 2, 1, 3)),
])
def test_permute(run, rng, close, shape, dims):
    src = f"""
model m {{
    input x: float32[{shape_src(shape)}]
    Permute({str(tuple(dims))})
}}"""
    x = random_input(shape, rng)
    y, _ = run(src, x)
    close(y, np.transpose(x, (0,) + dims))


def test_permute_then_dense(run, rng, close):
    src = """
model m {
    input x: float32[3, 5]
    Permute((2, 1))
    Dense(2)
}"""
    x = random_input((3, 5), rng)
    y, (k, b) = run(src, x)
    close(y, ref.dense(np.transpose(x, (0, 2, 1)), k, b))


def test_conv_permute(run, rng, close):
    """A channels-first view of a conv output via Permute."""
    src = """
model m {
    input image: float32[4, 5, 2]
    Conv2D(3, 3, padding=same)
    Permute((3, 1, 2))
    Flatten()
}"""
    x = random_input((4, 5, 2), rng)
    y, (k, b) = run(src, x)
    close(y, np.transpose(ref.conv(x, k, b, padding="same"), (0, 3, 1, 2)).reshape(2, -1))


def test_permute_conv(run, rng, close):
    src = """
model m {
    input image: float32[2, 4, 5]
    Permute((2, 3, 1))
    Conv2D(3, 2)
}"""
    x = random_input((2, 4, 5), rng)
    y, (k, b) = run(src, x)
    close(y, ref.conv(np.transpose(x, (0, 2, 3, 1)), k, b))


def test_permute_twice_is_identity(run, rng, close):
    src = """
model m {
    input x: float32[2, 3, 4]
    Permute((3, 1, 2))
    Permute((2, 3, 1))
}"""
    x = random_input((2, 3, 4), rng)
    y, _ = run(src, x)
    close(y, x)


# ---------------------------------------------------------------- ops on conv outputs (channels-last axes)
CONV_SRC = """
model m {{
    input image: float32[4, 5, 2]
    h = Conv2D(3, 3, padding=same)(image)
    y = {expr}
    output y
}}"""


@pytest.mark.parametrize("expr,fn", [
    ("mean(h, axis=(1, 2))", lambda h: h.mean(axis=(1, 2))),
    ("max(h, axis=-1)", lambda h: h.max(axis=-1)),
    ("sum(h, axis=3, keepdims=true)", lambda h: h.sum(axis=3, keepdims=True)),
    ("min(h, axis=1)", lambda h: h.min(axis=1)),
    ("mean(h, axis=2, keepdims=true)", lambda h: h.mean(axis=2, keepdims=True)),
    ("softmax(h, axis=2)", lambda h: ref.softmax(h, axis=2)),
    ("log_softmax(h)", lambda h: ref.log_softmax(h, axis=-1)),
    ("concat(h, h * 2.0, axis=1)", lambda h: np.concatenate([h, 2 * h], axis=1)),
    ("concat(h, -h, axis=2)", lambda h: np.concatenate([h, -h], axis=2)),
    ("concat(h, relu(h))", lambda h: np.concatenate([h, np.maximum(h, 0)], axis=-1)),
    ("transpose(h, perm=(0, 3, 1, 2))", lambda h: np.transpose(h, (0, 3, 1, 2))),
    ("Reshape((20, 3))(h)", lambda h: h.reshape(2, 20, 3)),
    ("Permute((2, 1, 3))(h)", lambda h: np.transpose(h, (0, 2, 1, 3))),
    ("Flatten()(relu(h) - 1.0)", lambda h: (np.maximum(h, 0) - 1).reshape(2, -1)),
    ("matmul(h, transpose(h, perm=(0, 1, 3, 2)))", lambda h: h @ np.transpose(h, (0, 1, 3, 2))),
])
def test_ops_on_conv_output(run, rng, close, expr, fn):
    x = random_input((4, 5, 2), rng)
    y, (k, b) = run(CONV_SRC.format(expr=expr), x)
    close(y, fn(ref.conv(x, k, b, padding="same")))


@pytest.mark.parametrize("bshape", [(1, 1, 3), (4, 1, 1), (1, 5, 3), (4, 5, 1), (4, 5, 3)])
@pytest.mark.parametrize("op", ["+", "*", "-"])
def test_conv_output_broadcast_with_input(run, rng, close, bshape, op):
    src = f"""
model m {{
    input image: float32[4, 5, 2]
    input b: float32[{shape_src(bshape)}]
    h = Conv2D(3, 3, padding=same)(image)
    y = Conv2D(2, 1)(h {op} b)
    output y
}}"""
    x = random_input((4, 5, 2), rng)
    bb = random_input(bshape, rng)
    y, (k1, b1, k2, b2) = run(src, {"image": x, "b": bb})
    h = ref.conv(x, k1, b1, padding="same")
    h = {"+": h + bb, "*": h * bb, "-": h - bb}[op]
    close(y, ref.conv(h, k2, b2))


def test_shared_conv_layer(run, rng, close):
    src = """
model m {
    input a: float32[5, 5, 2]
    input b: float32[5, 5, 2]
    layer c = Conv2D(3, 3, padding=same, activation=relu)
    y = c(a) - c(b)
    output y
}"""
    a, b = random_input((5, 5, 2), rng), random_input((5, 5, 2), rng)
    y, w = run(src, {"a": a, "b": b})
    assert len(w) == 2
    k, bias = w
    close(y, np.maximum(ref.conv(a, k, bias, padding="same"), 0) - np.maximum(ref.conv(b, k, bias, padding="same"), 0))


def test_flatten_rank1(run, rng, close):
    src = """
model m {
    input x: float32[]
    Flatten()
}"""
    x = rng.uniform(-1, 1, (3,)).astype(np.float32)
    y, _ = run(src, x)
    close(y, x.reshape(3, 1))


@pytest.mark.parametrize("layer, shape, numbers", [
    ("UpSampling2D(65536)", "[524288, 524288, 3]", "824,633,720,832"),
    ("UpSampling3D(65536)", None, None),
    ("RepeatVector(10000000000000)", "[10000000000000, 8]", "80,000,000,000,000"),
])
def test_outputs_too_large_for_a_tensor_are_located_errors_before_any_constant_is_built(layer, shape, numbers):
    """(UpSampling and RepeatVector build constants of their factors' size: a MemoryError, or
    gigabytes and a minute, before this)"""
    inputs = {"UpSampling2D": "float16[8, 8, 3]", "UpSampling3D": "float32[4, 4, 4, 2]", "RepeatVector": "float32[8]"}
    src = f"model m {{\n    input x: {inputs[layer.split('(')[0]]}\n    y = {layer}(x)\n    output y\n}}\n"
    with pytest.raises(KcompileError) as e:
        kcompile.compile_string(src, file="big.kdl")
    assert "big.kdl:3:9: error: " in str(e.value) and "too many for one tensor (at most 2^31 - 1)" in str(e.value)
    if shape:
        assert f"output of shape {shape}, {numbers} numbers a sample" in str(e.value)
