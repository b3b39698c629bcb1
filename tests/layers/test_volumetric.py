"""The 3-D (volumetric, [depth, height, width, channels]) layers: Conv3D, Conv3DTranspose,
Max/AveragePooling3D, GlobalAverage/GlobalMaxPooling3D, UpSampling3D, ZeroPadding3D and
Cropping3D. Outputs against loop-based numpy references, gradients against finite differences
(float64), Keras 3 (JAX) with the same weights, a small 3-D CNN that trains at -O0 and -O1,
the 2-D-only training rewrites leaving 5-D tensors alone, and the arguments refused."""
import os
import sys
from collections import Counter

import numpy as np
import pytest

import kcompile
import reference as ref
from kcompile.errors import KcompileError
from reference import random_input

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "autodiff"))
from gradcheck import check_gradients, expected_checks  # noqa: E402


def tup(v):
    return str(tuple(v)) if isinstance(v, tuple) else str(v)


def volume_model(shape, layer):
    return f"model m {{\n    input x: float32[{', '.join(map(str, shape))}]\n    {layer}\n}}\n"


# ---------------------------------------------------------------- the references themselves
@pytest.mark.parametrize("k,s,padding,op", [(3, 2, "same", None), (2, 2, "valid", None), (3, 2, "valid", 1),
                                            (4, 3, "same", 2), (1, 2, "valid", None)])
def test_reference_conv_transpose_is_conv2d_transpose_and_adjoint_of_conv(k, s, padding, op):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 2))
    kernel = rng.normal(size=(k, k, 3, 2))
    np.testing.assert_allclose(ref.conv_transpose(x, kernel, None, s, padding, op),
                               ref.conv2d_transpose(x, kernel, None, s, padding, op), rtol=1e-12)
    # In 3-D: <conv(u, K), v> == <u, conv_transpose(v, K)> where the transpose inverts the size.
    size = 5
    n = -(-size // s) if padding == "same" else (size - k) // s + 1
    if ref.deconv_length(n, k, s, padding, op) != size:
        return
    kernel = rng.normal(size=(k, k, k, 2, 3))
    u, v = rng.normal(size=(1, size, size, size, 2)), rng.normal(size=(1, n, n, n, 3))
    lhs = np.sum(ref.conv(u, kernel, strides=s, padding=padding) * v)
    np.testing.assert_allclose(lhs, np.sum(u * ref.conv_transpose(v, kernel, None, s, padding, op)), rtol=1e-10)


# ---------------------------------------------------------------- Conv3D
CONV3D_CASES = [
    # (input shape, filters, kernel, strides, padding, dilation, groups)
    ((5, 6, 7, 3), 4, 3, 1, "valid", 1, 1),
    ((5, 6, 7, 3), 4, 3, 1, "same", 1, 1),
    ((5, 6, 7, 2), 3, 2, 2, "same", 1, 1),
    ((5, 6, 7, 2), 3, (3, 2, 1), 2, "valid", 1, 1),
    ((7, 5, 6, 2), 2, (2, 3, 2), (1, 2, 3), "same", 1, 1),
    ((6, 6, 6, 2), 2, 4, 3, "same", 1, 1),
    ((6, 7, 5, 2), 3, 3, 1, "valid", 2, 1),
    ((6, 7, 5, 2), 3, (2, 3, 2), 1, "same", (2, 1, 2), 1),
    ((4, 5, 4, 4), 6, 3, 1, "same", 1, 2),
    ((4, 5, 6, 6), 3, (1, 2, 3), 2, "valid", 1, 3),
    ((3, 3, 3, 1), 1, 1, 1, "valid", 1, 1),
    ((3, 4, 3, 2), 2, 5, 2, "same", 1, 1),  # a kernel larger than the input
]


@pytest.mark.parametrize("shape,filters,kernel,strides,padding,dilation,groups", CONV3D_CASES)
def test_conv3d(run, rng, close, shape, filters, kernel, strides, padding, dilation, groups):
    x = random_input(shape, rng)
    y, (k, b) = run(volume_model(shape, f"Conv3D({filters}, {tup(kernel)}, strides={tup(strides)}, "
                                        f"padding={padding}, dilation_rate={tup(dilation)}, groups={groups})"), x)
    assert k.shape == ((kernel,) * 3 if isinstance(kernel, int) else kernel) + (shape[-1] // groups, filters)
    close(y, ref.conv(x, k, b, strides=strides, padding=padding, dilation=dilation, groups=groups))


def test_conv3d_activation_no_bias_and_a_stack(run, rng, close):
    src = """
model m {
    input x: float32[6, 7, 5, 2]
    Conv3D(3, 3, padding=same, activation=relu, use_bias=false)
    MaxPooling3D(2)
    Conv3D(4, 2, activation=tanh)
    GlobalAveragePooling3D()
    Dense(2)
}"""
    x = random_input((6, 7, 5, 2), rng)
    y, (k1, k2, b2, k3, b3) = run(src, x)
    h = ref.pool(np.maximum(ref.conv(x, k1, padding="same"), 0), "max", 2)
    close(y, ref.dense(ref.global_pool(np.tanh(ref.conv(h, k2, b2)), "avg"), k3, b3))


def test_conv3d_flatten_is_channels_last(run, rng, close):
    x = random_input((3, 4, 5, 2), rng)
    y, (k, b) = run(volume_model((3, 4, 5, 2), "Conv3D(3, 2, strides=(1, 2, 2))\n    Flatten()"), x)
    close(y, ref.conv(x, k, b, strides=(1, 2, 2)).reshape(2, -1))


# ---------------------------------------------------------------- Conv3DTranspose
DECONV3D_CASES = [
    # (input shape, filters, kernel, strides, padding, output_padding, dilation)
    ((3, 4, 2, 3), 2, 3, 1, "valid", None, 1),
    ((3, 4, 2, 3), 2, 3, 1, "same", None, 1),
    ((3, 4, 2, 3), 2, 3, 2, "valid", None, 1),
    ((3, 4, 2, 3), 2, 3, 2, "same", None, 1),
    ((3, 4, 2, 2), 3, 2, 2, "same", None, 1),
    ((3, 2, 3, 2), 2, (1, 2, 4), (2, 3, 2), "same", None, 1),
    ((3, 2, 3, 2), 2, (2, 3, 1), (1, 2, 3), "valid", None, 1),
    ((3, 4, 2, 2), 2, 3, 2, "valid", 1, 1),
    ((3, 4, 2, 2), 2, 3, 3, "same", (1, 2, 0), 1),
    ((4, 3, 3, 2), 2, 3, 1, "same", None, 2),
    ((4, 3, 3, 2), 2, (2, 3, 2), 1, "valid", None, (2, 1, 2)),
]


@pytest.mark.parametrize("shape,filters,kernel,strides,padding,output_padding,dilation", DECONV3D_CASES)
def test_conv3d_transpose(run, rng, close, shape, filters, kernel, strides, padding, output_padding, dilation):
    op = "" if output_padding is None else f", output_padding={tup(output_padding)}"
    x = random_input(shape, rng)
    y, (k, b) = run(volume_model(shape, f"Conv3DTranspose({filters}, {tup(kernel)}, strides={tup(strides)}, "
                                        f"padding={padding}, dilation_rate={tup(dilation)}{op})"), x)
    assert k.shape == ((kernel,) * 3 if isinstance(kernel, int) else kernel) + (filters, shape[-1])
    close(y, ref.conv_transpose(x, k, b, strides, padding, output_padding, dilation))


def test_conv3d_autoencoder(run, rng, close):
    src = """
model m {
    input x: float32[4, 6, 4, 1]
    Conv3D(3, 3, strides=2, padding=same, activation=relu)
    Conv3DTranspose(2, 3, strides=2, padding=same, activation=relu)
    Conv3D(1, 1, activation=sigmoid)
}"""
    x = random_input((4, 6, 4, 1), rng)
    y, (k1, b1, k2, b2, k3, b3) = run(src, x)
    h = np.maximum(ref.conv(x, k1, b1, strides=2, padding="same"), 0)
    h = np.maximum(ref.conv_transpose(h, k2, b2, strides=2, padding="same"), 0)
    assert y.shape == (2, 4, 6, 4, 1)
    close(y, ref.sigmoid(ref.conv(h, k3, b3)))


# ---------------------------------------------------------------- pooling
POOL3D_CASES = [
    # (input shape, pool_size, strides, padding)
    ((4, 4, 4, 2), 2, None, "valid"),
    ((5, 6, 7, 2), 2, None, "valid"),
    ((5, 6, 7, 2), 2, None, "same"),
    ((5, 6, 7, 2), 3, 2, "valid"),
    ((5, 6, 7, 2), 3, 2, "same"),
    ((5, 6, 7, 2), 2, 1, "valid"),
    ((5, 6, 7, 1), (1, 2, 3), None, "same"),
    ((5, 6, 7, 1), (3, 1, 2), (2, 3, 1), "valid"),
    ((3, 2, 3, 2), 4, 2, "same"),  # a window larger than the input
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,pool_size,strides,padding", POOL3D_CASES)
def test_pooling3d(run, rng, close, kind, shape, pool_size, strides, padding):
    layer = "MaxPooling3D" if kind == "max" else "AveragePooling3D"
    st = "" if strides is None else f", strides={tup(strides)}"
    x = random_input(shape, rng)
    y, _ = run(volume_model(shape, f"{layer}({tup(pool_size)}{st}, padding={padding})"), x)
    close(y, ref.pool(x, kind, pool_size, strides, padding))


@pytest.mark.parametrize("layer,kind", [("MaxPooling3D", "max"), ("AveragePooling3D", "avg")])
def test_pooling3d_defaults_and_negative_inputs(run, rng, close, layer, kind):
    """pool_size (2, 2, 2); same padding must not leak zeros into a max of negative numbers."""
    x = random_input((5, 4, 5, 2), rng)
    y, _ = run(volume_model((5, 4, 5, 2), f"{layer}()"), x)
    assert y.shape == (2, 2, 2, 2, 2)
    close(y, ref.pool(x, kind, 2))
    x = rng.uniform(-3, -1, (2, 3, 3, 3, 2)).astype(np.float32)
    y, _ = run(volume_model((3, 3, 3, 2), f"{layer}(2, padding=same)"), x)
    assert np.all(y < 0)
    close(y, ref.pool(x, kind, 2, padding="same"))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (1, 1, 1, 3)])
def test_global_pooling3d(run, rng, close, kind, keepdims, shape):
    layer = "GlobalMaxPooling3D" if kind == "max" else "GlobalAveragePooling3D"
    x = random_input(shape, rng)
    y, _ = run(volume_model(shape, f"{layer}({'keepdims=true' if keepdims else ''})"), x)
    assert y.shape == ((2, 1, 1, 1, shape[-1]) if keepdims else (2, shape[-1]))
    close(y, ref.global_pool(x, kind, keepdims))


# ---------------------------------------------------------------- padding, cropping, upsampling
@pytest.mark.parametrize("arg,pads", [
    ("", ((1, 1), (1, 1), (1, 1))),
    ("2", ((2, 2), (2, 2), (2, 2))),
    ("(1, 0, 2)", ((1, 1), (0, 0), (2, 2))),
    ("((1, 0), (0, 2), (3, 1))", ((1, 0), (0, 2), (3, 1))),
])
def test_zero_padding3d(run, rng, close, arg, pads):
    x = random_input((2, 3, 4, 2), rng)
    y, _ = run(volume_model((2, 3, 4, 2), f"ZeroPadding3D({arg})"), x)
    close(y, np.pad(x, ((0, 0),) + pads + ((0, 0),)))


@pytest.mark.parametrize("arg,crops", [
    ("", ((1, 1), (1, 1), (1, 1))),
    ("0", ((0, 0), (0, 0), (0, 0))),
    ("(1, 0, 2)", ((1, 1), (0, 0), (2, 2))),
    ("((1, 0), (0, 2), (3, 1))", ((1, 0), (0, 2), (3, 1))),
])
def test_cropping3d(run, rng, close, arg, crops):
    x = random_input((4, 5, 6, 2), rng)
    y, _ = run(volume_model((4, 5, 6, 2), f"Cropping3D({arg})"), x)
    close(y, x[(slice(None),) + tuple(slice(b, n - e) for (b, e), n in zip(crops, x.shape[1:4]))])


@pytest.mark.parametrize("arg,size", [("", (2, 2, 2)), ("3", (3, 3, 3)), ("(1, 2, 3)", (1, 2, 3))])
def test_upsampling3d(run, rng, close, arg, size):
    x = random_input((2, 3, 2, 2), rng)
    y, _ = run(volume_model((2, 3, 2, 2), f"UpSampling3D({arg})"), x)
    close(y, ref.upsample(x, size))


def test_padding_cropping_upsampling_between_convolutions(run, rng, close):
    src = """
model m {
    input x: float32[3, 4, 3, 2]
    Conv3D(3, 2, padding=same, activation=relu)
    ZeroPadding3D((1, 0, 1))
    UpSampling3D((2, 1, 1))
    Cropping3D(((1, 2), (0, 1), (1, 0)))
    Conv3D(2, 2)
}"""
    x = random_input((3, 4, 3, 2), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    h = np.pad(np.maximum(ref.conv(x, k1, b1, padding="same"), 0), ((0, 0), (1, 1), (0, 0), (1, 1), (0, 0)))
    h = ref.upsample(h, (2, 1, 1))[:, 1:-2, 0:-1, 1:]
    close(y, ref.conv(h, k2, b2))


# ---------------------------------------------------------------- gradients (float64)
@pytest.mark.parametrize("layer,shape", [
    ("Conv3D(2, 3)", (2, 4, 4, 4, 2)),                                   # 27-element window: the general form
    ("Conv3D(3, 2, padding=same)", (2, 3, 4, 3, 2)),                     # few channels: one-hot unfolding
    ("Conv3D(3, 2, strides=2, padding=same)", (2, 5, 4, 3, 2)),
    ("Conv3D(2, 2, padding=same, dilation_rate=(2, 1, 1))", (1, 5, 3, 3, 4)),  # sliced window offsets
    ("Conv3D(4, (1, 2, 3), strides=(2, 1, 2), groups=2, activation=tanh)", (2, 3, 4, 5, 4)),
    ("Conv3D(32, 2, use_bias=false)", (1, 3, 3, 3, 32)),                 # many channels: gathered im2col
    ("Conv3D(2, 3, strides=2, padding=same)", (2, 5, 5, 5, 1)),
    ("Conv3DTranspose(2, 3, strides=2, padding=same)", (2, 2, 3, 2, 2)),
    ("Conv3DTranspose(2, 2, strides=(2, 1, 3), output_padding=(1, 0, 2))", (1, 2, 3, 2, 2)),
    ("Conv3DTranspose(2, 2, padding=same, dilation_rate=2, use_bias=false)", (2, 3, 3, 2, 2)),
    ("MaxPooling3D(2)", (2, 4, 5, 4, 2)),                               # tiled windows, a size they do not divide
    ("MaxPooling3D((1, 2, 3))", (2, 3, 4, 6, 2)),
    ("MaxPooling3D(2, strides=1)", (2, 3, 4, 3, 2)),                     # overlapping windows
    ("MaxPooling3D(3, strides=2, padding=same)", (2, 4, 5, 3, 1)),
    ("AveragePooling3D(2)", (2, 4, 5, 4, 2)),
    ("AveragePooling3D(3, strides=(1, 2, 2), padding=same)", (2, 3, 5, 4, 1)),
    ("GlobalAveragePooling3D()", (2, 2, 3, 4, 2)),
    ("GlobalMaxPooling3D(keepdims=true)", (2, 2, 3, 4, 2)),
    ("UpSampling3D((1, 2, 3))", (2, 2, 3, 2, 2)),
    ("ZeroPadding3D(((1, 0), (0, 2), (1, 1)))", (2, 2, 3, 2, 2)),
    ("Cropping3D(((1, 0), (0, 1), (1, 1)))", (2, 3, 3, 4, 2)),
])
def test_gradients(grouped_conv_transpose, layer, shape):
    src = f"model m {{\n    input x: float64[{', '.join(map(str, shape[1:]))}]\n    y = {layer}(x)\n    output y\n}}\n"
    feeds = {"x": np.random.default_rng(1).normal(size=shape)}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)  # (every weight and the input)


def _generated_gradients(src, x, dtype, run):
    """The generated gradients of sum(outputs * r) with respect to every weight and the input x,
    for ``src`` compiled with ``dtype`` inputs and weights, evaluated by ``run(graph, feeds)``."""
    from kcompile.autodiff import gradients
    from kcompile.driver import compile_source
    from kcompile.ops import emit
    g = compile_source(src.replace("float64", dtype), "t.kdl", opt_level=0).graph
    rng = np.random.default_rng(5)
    (_, y), = g.outputs
    r = g.add_const(rng.normal(size=g.types[y].shape[1:]).astype(dtype))
    loss = emit(g, "ReduceSum", [emit(g, "Mul", [y, r])[0]], {"keepdims": 0})[0]
    wrt = list(g.params) + ["x"]
    grads = gradients(g, loss, wrt)
    g.outputs = [(f"d/{w}", grads[w]) for w in wrt]
    feeds = {name: rng.normal(0, 0.5, p.type.shape).astype(dtype) for name, p in g.params.items()}
    return run(g, {**feeds, "x": x.astype(dtype)})


@pytest.mark.parametrize("layer,shape", [
    ("MaxPooling3D(2)", (2, 4, 5, 4, 3)), ("MaxPooling3D((1, 2, 3), padding=same)", (2, 3, 4, 5, 2)),
    ("AveragePooling3D(2)", (2, 4, 5, 4, 3)), ("AveragePooling3D(3, strides=2, padding=same)", (2, 4, 5, 3, 2)),
    ("Conv3D(3, 2, strides=2, padding=same)", (2, 5, 4, 3, 2)), ("Conv3D(2, 2, padding=same)", (1, 5, 3, 3, 4)),
    ("Conv3D(2, 3, groups=2)", (2, 4, 4, 4, 2)), ("Conv3D(32, 2)", (1, 3, 3, 3, 32)),
    ("Conv3DTranspose(2, 3, strides=2, padding=same)", (2, 2, 3, 2, 2)),
])
def test_onnxruntime_runs_the_5d_gradients_in_float32(grouped_conv_transpose, layer, shape):
    """onnxruntime's CPU provider (graph optimizations on, as in training) runs every op a 3-D
    layer's gradient emits for 5-D tensors (MaxPool's Indices, MaxUnpool, ScatterElements,
    grouped ConvTranspose, Conv), giving the float64 gradients checked above (float64 graphs of
    convolutions run on onnx's reference evaluator, onnxruntime having no float64 Conv)."""
    import onnxruntime as ort

    from kcompile.backend import to_onnx

    def on_onnxruntime(g, feeds):
        session = ort.InferenceSession(to_onnx(g, params_as_inputs=True).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    def on_gradcheck_session(g, feeds):
        from gradcheck import _session
        return _session(g).run(None, feeds)

    src = f"model m {{\n    input x: float64[{', '.join(map(str, shape[1:]))}]\n    y = {layer}(x)\n    output y\n}}\n"
    x = np.random.default_rng(1).normal(size=shape)
    got = _generated_gradients(src, x, "float32", on_onnxruntime)
    want = _generated_gradients(src, x, "float64", on_gradcheck_session)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_training_rewrites_leave_volumes_alone_and_gradients_stay_exact():
    """The training pipeline's forward passes (transpose sinking, bias fusion, border cropping,
    pool before activation, conv-pool phases) on a few-channel Conv3D and its 2x2x2 max pool:
    no ConvMaxPool (a 2-D rewrite), and the gradients still match finite differences."""
    from kcompile.driver import compile_source
    from kcompile.passes.crop import crop_unread_borders
    from kcompile.passes.fusion import fuse_bias
    from kcompile.passes.reorder import conv_pool_phases, pool_before_activation
    from kcompile.passes.transpose import sink_transposes
    passes = (sink_transposes, fuse_bias, crop_unread_borders, pool_before_activation, conv_pool_phases)
    src = ("model m {\n    input x: float64[6, 5, 7, 1]\n"
           "    y = MaxPooling3D(2)(Conv3D(2, 2, activation=relu)(x))\n    output y\n}\n")
    g = compile_source(src, "t.kdl", opt_level=0).graph
    for rewrite in passes:
        g = rewrite(g)
    ops = Counter(n.op for n in g.nodes())
    assert ops["ConvMaxPool"] == 0 and ops["MaxPool"] == 1 and ops["Slice"] == 1, ops  # (the unread border)
    feeds = {"x": np.random.default_rng(4).normal(size=(2, 6, 5, 7, 1))}
    checked, _ = check_gradients(src, feeds, passes=passes)
    assert checked == expected_checks(src, feeds)


def test_blocked_convolutions_leave_volumes_alone():
    """onnxruntime's NCHWc convolutions and max pools are 2-D: 5-D ones stay standard."""
    from onnx import TensorProto, helper

    from kcompile.backend import nchwc

    def graph(node, x, w, y):
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, w)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    for node, x, w, y in [(helper.make_node("Conv", ["x", "w"], ["y"]), (1, 32, 4, 4, 4), (32, 32, 3, 3, 3),
                           (1, 32, 2, 2, 2)),
                          (helper.make_node("ConvTranspose", ["x", "w"], ["y"]), (1, 32, 2, 2, 2), (32, 32, 3, 3, 3),
                           (1, 32, 4, 4, 4))]:
        standard = graph(node, x, w, y)
        assert nchwc.use_nchwc(standard, block=16) is standard
    assert not nchwc._blocked_pool(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2]))


# ---------------------------------------------------------------- Keras 3 with the same weights
KERAS_CASES = [
    # (layer, positional arguments, keyword arguments, input [depth, height, width, channels])
    ("Conv3D", (4, 3), dict(strides=2, padding="same"), (5, 6, 7, 2)),
    ("Conv3D", (4, (2, 3, 1)), dict(padding="same", dilation_rate=(2, 1, 1), groups=2, activation="relu"),
     (6, 5, 4, 4)),
    ("Conv3D", (3, (3, 2, 2)), dict(strides=(1, 2, 3), use_bias=False), (5, 6, 7, 2)),
    ("Conv3DTranspose", (3, 3), dict(strides=2, padding="same"), (3, 4, 2, 2)),
    ("Conv3DTranspose", (2, (2, 3, 2)), dict(strides=(2, 1, 3), output_padding=(1, 0, 2)), (3, 2, 3, 3)),
    ("Conv3DTranspose", (2, 3), dict(padding="same", dilation_rate=2, activation="tanh"), (4, 3, 3, 2)),
    ("MaxPooling3D", (), dict(), (5, 6, 7, 2)),
    ("MaxPooling3D", (3,), dict(strides=2, padding="same"), (5, 6, 7, 2)),
    ("AveragePooling3D", (3,), dict(strides=(1, 2, 2), padding="same"), (5, 6, 7, 2)),
    ("AveragePooling3D", ((2, 1, 2),), dict(), (5, 6, 7, 2)),
    ("GlobalAveragePooling3D", (), dict(keepdims=True), (3, 4, 5, 2)),
    ("GlobalMaxPooling3D", (), dict(), (3, 4, 5, 2)),
    ("UpSampling3D", ((1, 2, 3),), dict(), (2, 3, 2, 2)),
    ("ZeroPadding3D", (((1, 0), (2, 1), (0, 3)),), dict(), (2, 3, 2, 2)),
    ("Cropping3D", (((1, 0), (0, 2), (1, 1)),), dict(), (3, 4, 5, 2)),
    ("Cropping3D", (), dict(), (3, 4, 5, 2)),
]


def written(v):
    return str(v).lower() if isinstance(v, bool) else str(v)


@pytest.mark.parametrize("layer,args,kwargs,shape", KERAS_CASES)
def test_matches_keras(keras, layer, args, kwargs, shape):
    x_in = keras.Input(shape)
    reference = keras.Model(x_in, getattr(keras.layers, layer)(*args, **kwargs)(x_in))
    rng = np.random.default_rng(2)
    reference.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in reference.get_weights()])
    call = ", ".join([written(a) for a in args] + [f"{k}={written(v)}" for k, v in kwargs.items()])
    m = kcompile.compile_string(volume_model(shape, f"{layer}({call})"))
    assert [w.shape for w in m.get_weights()] == [w.shape for w in reference.get_weights()]
    m.set_weights(reference.get_weights())
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), np.asarray(reference.predict(x, verbose=0)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- training
CNN3D = """model m {
    input x: float32[6, 7, 6, 1]
    Conv3D(4, 3, padding=same, activation=relu)
    MaxPooling3D(2)
    Conv3D(6, 2, activation=relu)
    AveragePooling3D((1, 2, 2), padding=same)
    UpSampling3D((2, 1, 1))
    ZeroPadding3D(1)
    Cropping3D(((1, 1), (0, 1), (1, 0)))
    Conv3DTranspose(3, 2, strides=2, padding=same)
    GlobalMaxPooling3D()
    Dense(2, activation=softmax)
    train {
        loss = categorical_crossentropy
        optimizer = Adam(0.01)
        metrics = [accuracy]
    }
}"""


@pytest.mark.parametrize("head", ["GlobalMaxPooling3D()", "Flatten()"])
def test_a_3d_cnn_trains_at_o0_and_o1(head):
    """A small 3-D CNN learns which half of the volume holds a bright blob; -O0 and -O1 give the
    same losses and weights (-O1's training rewrites: transposes sunk, or into the Dense kernel
    after a Flatten, borders cropped, pools before activations)."""
    rng = np.random.default_rng(0)
    n = 64
    x = rng.normal(0, 0.3, (n, 6, 7, 6, 1)).astype(np.float32)
    label = rng.integers(0, 2, n)
    for i, c in enumerate(label):
        d = rng.integers(0, 3) + 3 * c
        h, w = rng.integers(0, 6, 2)
        x[i, d, h:h + 2, w:w + 2, 0] += 2.0
    y = np.eye(2, dtype=np.float32)[label]
    results = []
    for level in (0, 1):
        m = kcompile.compile_string(CNN3D.replace("GlobalMaxPooling3D()", head), seed=0, opt_level=level)
        before = m.evaluate(x, y, verbose=0)
        history = m.fit(x, y, batch_size=16, epochs=15, verbose=0)
        after = m.evaluate(x, y, verbose=0)
        loss_before = before[0] if isinstance(before, (list, tuple)) else before
        loss_after = after[0] if isinstance(after, (list, tuple)) else after
        assert loss_after < 0.6 * loss_before and after[1] >= 0.95, (level, before, after)
        results.append((history.history["loss"], m.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- what Keras refuses
VOLUME = "model m {\n    input x: float32[4, 5, 6, 2]\n    %s\n}\n"


@pytest.mark.parametrize("layer,message", [
    ("Conv3D(2, 3, strides=2, dilation_rate=2)", "strides > 1 with dilation_rate > 1 is not supported"),
    ("Conv3DTranspose(2, 3, strides=(1, 2, 1), dilation_rate=2)", "strides > 1 with dilation_rate > 1"),
    ("Conv3D(2, (3, 3))", "argument 'kernel_size': expected an integer or a tuple of 3 integers, got (3, 3)"),
    ("Conv3D(2, 3, padding=causal)", "argument 'padding': expected valid or same, got causal"),
    ("Conv3D(3, 3, groups=2)", "filters (3) must be divisible by groups (2)"),
    ("Conv3D(4, 3, groups=4)", "input channels (2) must be divisible by groups (4)"),
    ("Conv3D(2, 5)", "the window (5) is larger than the padded input (4)"),
    ("Conv3DTranspose(2, 3, strides=2, output_padding=2)", "output_padding (2, 2, 2) must be below strides (2, 2, 2)"),
    ("MaxPooling3D((2, 2))", "argument 'pool_size': expected an integer or a tuple of 3 integers, got (2, 2)"),
    ("AveragePooling3D(2, strides=0)", "argument 'strides': expected integers >= 1, got 0"),
    ("GlobalMaxPooling3D(keepdims=1)", "argument 'keepdims': expected true or false, got 1"),
    ("ZeroPadding3D((1, 2))", "expected an integer, a tuple of 3 integers, or a tuple of 3 (before, after) pairs"),
    ("ZeroPadding3D(-1)", "expected sizes >= 0, got -1"),
    ("Cropping3D(((1, 1), (2, 3), (0, 0)))", "Cropping3D crops 2 + 3 from an axis of size 5, leaving nothing"),
    ("UpSampling3D((2, 2))", "argument 'size': expected an integer or a tuple of 3 integers, got (2, 2)"),
    ("UpSampling3D(2, interpolation=nearest)", "UpSampling3D has no argument 'interpolation'"),
])
def test_refused_arguments_are_located_errors(located, layer, message):
    located(VOLUME % layer, 3, message)


@pytest.mark.parametrize("layer", ["Conv3D(2, 3)", "Conv3DTranspose(2, 3)", "MaxPooling3D()", "AveragePooling3D()",
                                   "GlobalAveragePooling3D()", "GlobalMaxPooling3D()", "ZeroPadding3D()",
                                   "Cropping3D()", "UpSampling3D()"])
def test_an_image_input_is_a_located_error(located, layer):
    d = located(f"model m {{\n    input x: float32[8, 8, 3]\n    {layer}\n}}\n", 3, "[depth, height, width, channels]",
                col=5)
    assert "got [8, 8, 3]" in d.message, d.render()


def test_a_flat_input_hints_at_a_reshape():
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string("model m {\n    input x: float32[64]\n    Conv3D(2, 3)\n}\n", file="t.kdl")
    assert "add Reshape((depth, height, width, channels)) before it" in info.value.diagnostics[0].render()


def test_named_depth(run, rng, close):
    """A stride-1 window over a named depth gives an expression over it; the transposed
    convolution needs the sizes (as Conv2DTranspose)."""
    x = random_input((5, 4, 4, 2), rng)
    y, (k, b) = run("model m {\n    input x: float32[D, 4, 4, 2]\n"
                    "    y = MaxPooling3D((1, 2, 2))(Conv3D(3, 3, padding=same)(x))\n    output y\n}\n", x)
    close(y, ref.pool(ref.conv(x, k, b, padding="same"), "max", (1, 2, 2)))
    with pytest.raises(KcompileError, match="Conv3DTranspose needs known input depth, height and width") as info:
        kcompile.compile_string(VOLUME.replace("[4, 5, 6, 2]", "[D, 5, 6, 2]") % "Conv3DTranspose(2, 3)",
                                file="t.kdl")
    assert info.value.diagnostics[0].loc.line == 3


def test_automatic_names_are_keras(regularization_loss):
    m = kcompile.compile_string(VOLUME % "Conv3D(2, 1)\n    Conv3DTranspose(2, 1)\n    Conv3D(2, 1)")
    assert m.weight_names == ["conv3d/kernel", "conv3d/bias", "conv3d_transpose/kernel", "conv3d_transpose/bias",
                              "conv3d_1/kernel", "conv3d_1/bias"]
    source = VOLUME % "Conv3D(2, 3, kernel_regularizer=l2(0.1), bias_regularizer=l1(0.2))"
    loss, w = regularization_loss(source, np.random.default_rng(0).normal(size=(2, 4, 5, 6, 2)).astype(np.float32))
    np.testing.assert_allclose(loss, 0.1 * (w["conv3d/kernel"] ** 2).sum() + 0.2 * np.abs(w["conv3d/bias"]).sum(),
                               rtol=1e-5)
