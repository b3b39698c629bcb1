"""Finite-difference checks of the generated backward graph, layer by layer and op by op.

Each case compiles a small float64 model; ``check_gradients`` (gradcheck.py) takes
loss = sum(outputs * random) and compares the generated gradient of every trainable
weight and float input with central differences (relative error below 1e-6).
Shapes are tiny: the float64 convolutions run in onnx's (slow) ReferenceEvaluator.
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from gradcheck import check_gradients  # noqa: E402

from kcompile.autodiff import gradients  # noqa: E402
from kcompile.backend import to_onnx  # noqa: E402
from kcompile.driver import compile_source  # noqa: E402
from kcompile.ops import emit  # noqa: E402


def model(body, shape, dtype="float64"):
    dims = ", ".join(map(str, shape[1:]))
    return f"model m {{\n    input x: {dtype}[{dims}]\n    {body}\n}}\n"


def normal(shape, seed=1, away_from_zero=False, dtype="float64"):
    x = np.random.default_rng(seed).normal(size=shape)
    if away_from_zero:  # keep |x| >= 0.2, away from the kinks of abs/relu at 0
        x = np.sign(x) * (np.abs(x) + 0.2)
    return x.astype(dtype)


def check(body, shape, away_from_zero=False, **kw):
    src = model(body, shape)
    checked, _ = check_gradients(src, {"x": normal(shape, away_from_zero=away_from_zero)}, **kw)
    assert checked > 0


# ---------------- Dense ----------------
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "gelu", "elu", "selu", "softplus",
               "softsign", "swish", "leaky_relu", "relu6", "hard_sigmoid", "hard_swish", "mish", "exponential"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_activation(activation):
    # Inputs scaled up so relu6 and hard_sigmoid/hard_swish see both their flat and their sloped parts.
    src = model(f"y = Dense(4, activation={activation})(x * 3.0)\n    output y", (3, 5))
    checked, _ = check_gradients(src, {"x": normal((3, 5))})
    assert checked > 0


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_with_transposed_operands(trans_a, trans_b):
    """Gemm's transA/transB (which the training passes set): Gemm(x, W) rewritten as
    Gemm(x^T, W^T, transA, transB), the same product, must give the same gradients."""
    from kcompile.passes.fusion import fuse_bias
    from kcompile.passes.util import add, replace

    def with_flags(g):
        for node in g.nodes():
            if node.op == "Gemm":
                x, w = node.inputs[:2]
                x = add(g, node, "Transpose", [x], perm=(1, 0)) if trans_a else x
                w = add(g, node, "Transpose", [w], perm=(1, 0)) if trans_b else w
                replace(g, node.outputs[0], add(g, node, "Gemm", [x, w] + node.inputs[2:],
                                                transA=trans_a, transB=trans_b))
        assert [n.attrs.get("transA", 0) for n in g.nodes() if n.op == "Gemm"] == [trans_a]
        return g

    src = model("y = Dense(4, activation=tanh)(x)\n    output y", (3, 5))
    checked, _ = check_gradients(src, {"x": normal((3, 5))}, passes=[fuse_bias, with_flags])
    assert checked > 0


@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a != "linear"])
def test_activation_function(activation):
    check(f"y = {activation}(x * 4.0)\n    output y", (3, 6), away_from_zero=True)


@pytest.mark.parametrize("use_bias", ["true", "false"])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)], ids=["rank2", "rank3"])
def test_dense(shape, use_bias):
    check(f"y = Dense(3, use_bias={use_bias}, activation=tanh)(x)\n    output y", shape)


def test_dense_rank3_no_bias_linear():
    check("y = Dense(2, use_bias=false)(x)\n    output y", (2, 3, 4))


# ---------------- convolutions ----------------
@pytest.mark.parametrize("layer,shape", [
    ("Conv2D(2, 3)", (2, 5, 5, 1)),
    ("Conv2D(2, 3, strides=2)", (2, 7, 7, 1)),
    ("Conv2D(2, 3, padding=same)", (2, 5, 5, 2)),
    ("Conv2D(2, 3, strides=2, padding=same)", (2, 7, 6, 2)),
    ("Conv2D(2, (2, 3), strides=(2, 1), padding=same)", (2, 5, 4, 2)),
    ("Conv2D(2, 3, dilation_rate=2)", (2, 7, 6, 2)),
    ("Conv2D(2, 2, padding=same, use_bias=false)", (1, 5, 5, 2)),
    ("Conv2D(3, 3, activation=relu)", (2, 5, 5, 2)),
    ("Conv1D(3, 3)", (2, 7, 2)),
    ("Conv1D(3, 3, padding=causal, dilation_rate=2)", (2, 9, 2)),
    ("Conv1D(2, 2, padding=causal)", (2, 5, 3)),
    ("Conv2DTranspose(2, 3)", (2, 4, 3, 2)),
    ("Conv2DTranspose(2, 3, padding=same)", (2, 3, 3, 2)),
    ("Conv2DTranspose(2, 3, strides=2, padding=same)", (2, 4, 3, 2)),
    ("Conv2DTranspose(2, 3, strides=2)", (2, 3, 3, 1)),
    ("Conv2DTranspose(2, 2, strides=3)", (2, 3, 3, 1)),
    ("Conv2DTranspose(2, 3, strides=3, padding=same)", (1, 3, 2, 2)),
    ("Conv2DTranspose(2, 3, strides=2, output_padding=1)", (1, 3, 3, 2)),
    ("Conv2DTranspose(2, 3, strides=2, padding=same, output_padding=0)", (1, 3, 3, 2)),
    # more channels: the kernel gradient's forms as kernel_grad_form chooses them (each form on
    # its own in test_kernel_gradient_forms, which also has Conv1D(3, 3, strides=2, padding=same))
    ("Conv2D(8, 3, padding=same)", (2, 5, 4, 8)),
    ("Conv2D(32, 3, strides=2, padding=same)", (2, 7, 6, 32)),
    ("Conv2D(33, (2, 3), dilation_rate=2)", (1, 6, 7, 34)),
    ("Conv1D(32, 3, strides=2, padding=causal)", (2, 8, 32)),
    ("Conv2DTranspose(32, 3, strides=2, padding=same)", (1, 3, 2, 32)),
])
def test_convolution(layer, shape):
    check(f"y = {layer}(x)\n    output y", shape)


@pytest.mark.parametrize("body,shape,small", [
    ("y = Conv2D(3, 3, padding=same)(UpSampling2D(2)(x))", (2, 3, 3, 2), True),
    ("y = Conv2D(2, (3, 5), padding=same)(UpSampling2D((2, 3))(x))", (1, 2, 3, 3), True),
    ("y = Conv1D(2, 3, padding=same)(UpSampling1D(3)(x))", (2, 4, 2), True),
    ("y = Conv3D(2, 3, padding=same)(UpSampling3D(2)(x))", (1, 2, 2, 2, 1), True),
    ("y = Conv2D(2, 3)(UpSampling2D(2)(x))", (1, 3, 3, 2), False),  # (valid padding: the usual forms)
    ("y = Conv2D(2, 3, padding=same, strides=2)(UpSampling2D(2)(x))", (1, 3, 3, 2), False),
    ("y = Conv2D(2, 2, padding=same)(UpSampling2D(2)(x))", (1, 3, 3, 2), False),  # (even kernel)
])
def test_kernel_gradient_of_an_upsampled_map(body, shape, small, monkeypatch):
    """A stride-1 "same" convolution of a nearest-upsampled map takes its kernel gradient from the
    small map (the output gradient summed over each offset's repeated positions): against finite
    differences, and the form used exactly where it applies."""
    from kcompile.ops import nn
    used = []
    made = nn._upsampled_conv_weight_grad
    monkeypatch.setattr(nn, "_upsampled_conv_weight_grad", lambda *a: used.append(1) or made(*a))
    monkeypatch.setattr(nn, "_small_map_pays", lambda *a: True)  # (so few channels would keep the usual forms)
    check(f"{body}\n    output y", shape)
    assert bool(used) == small


@pytest.mark.parametrize("channels,factors,kernel,pays", [
    (64, (2, 2), (3, 3), True), (32, (2, 2), (3, 3), True), (16, (2, 2), (3, 3), False), (8, (2, 2), (3, 3), False),
    (64, (2, 2), (5, 5), True), (32, (2, 2), (5, 5), False), (64, (1, 1), (5, 5), False), (32, (2,), (3,), True),
])
def test_the_small_maps_form_where_it_pays(channels, factors, kernel, pays):
    """As measured in fit: 32 -> 32 channels at 3x3 0.73x the step time, 16 -> 64 1.06x, 8 -> 64 1.33x,
    5x5 from 8 channels 1.7x, without upsampling 2.1x (ops.nn._small_map_pays)."""
    from kcompile.ops.nn import _small_map_pays
    assert _small_map_pays(channels, factors, kernel) == pays


def test_a_decoder_takes_the_small_maps_kernel_gradient(monkeypatch):
    """In the training step as compiled (the passes' layouts), and training like the usual form.
    (3-D: in 1-D and 2-D the pass upsampled-conv-as-transposed takes the convolution to the small map.)"""
    import kcompile
    from kcompile.ops import nn
    source = """model ae {
    input volume: float32[4, 4, 4, 1]
    Conv3D(4, 3, strides=2, padding=same, activation=relu)
    UpSampling3D(2)
    Conv3D(3, 3, padding=same, activation=relu)
    y = Conv3D(1, 3, padding=same)
    train { loss = mse; optimizer = SGD(learning_rate=0.1) }
}"""
    x = np.random.default_rng(0).random((16, 4, 4, 4, 1), dtype=np.float32)
    weights, made, match = [], nn._upsampled_conv_weight_grad, nn.nearest_upsampled
    monkeypatch.setattr(nn, "_small_map_pays", lambda *a: True)
    for small in (True, False):
        used = []
        monkeypatch.setattr(nn, "nearest_upsampled", match if small else lambda *a: None)
        monkeypatch.setattr(nn, "_upsampled_conv_weight_grad", lambda *a: used.append(1) or made(*a))
        m = kcompile.compile_string(source, seed=0)
        m.fit(x, x, epochs=3, batch_size=8, verbose=0)
        assert len(used) == small
        weights.append(m.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


FORM_CASES = [
    ("Conv2D(3, 3, padding=same)", (2, 5, 5, 4)),
    ("Conv2D(2, (2, 3), padding=same)", (1, 5, 6, 5)),
    ("Conv2D(3, 3, dilation_rate=2)", (2, 7, 6, 4)),
    ("Conv2D(2, 1)", (2, 3, 4, 4)),
    ("Conv2D(3, 3, strides=2, padding=same)", (2, 7, 6, 3)),
    ("Conv2D(2, (2, 3), strides=(2, 1), padding=same)", (1, 5, 4, 3)),
    ("Conv1D(3, 3, padding=causal, dilation_rate=2)", (2, 9, 4)),
    ("Conv1D(3, 3, strides=2, padding=same)", (2, 8, 2)),
    ("Conv3D(2, 2, padding=same)", (1, 3, 3, 3, 2)),
    ("Conv2DTranspose(4, 3, padding=same)", (2, 3, 3, 4)),
    ("Conv2DTranspose(2, 3, strides=2)", (1, 3, 3, 3)),
]


@pytest.mark.parametrize("form,layer,shape", [
    (form, layer, shape) for layer, shape in FORM_CASES for form in ("gather", "slices", "onehot", "transposed")
    # (the slices form takes stride 1; a transposed convolution's kernel gradient is strided too)
    if not (form == "slices" and ("strides=2" in layer or "strides=(2" in layer))])
def test_kernel_gradient_forms(form, layer, shape, monkeypatch):
    """Every form of the kernel gradient, whichever kernel_grad_form would choose."""
    from kcompile.ops import nn
    asked = []
    monkeypatch.setattr(nn, "kernel_grad_form", lambda *args, **kw: asked.append(args) or form)
    check(f"y = {layer}(x)\n    output y", shape)
    assert asked


@pytest.mark.parametrize("channels,out_channels,size,strides,form", [
    (32, 64, 11, 1, "gather"),    # the MNIST CNN's second convolution
    (1, 32, 26, 1, "onehot"),     # ... and its first
    (3, 32, 32, 1, "onehot"),     # more than twice the channels out
    (16, 128, 12, 1, "onehot"),
    (12, 24, 10, 1, "gather"),
    (16, 32, 28, 1, "gather"),    # 16 x 784 values: the largest gathered
    (16, 16, 32, 1, "slices"),
    (64, 16, 24, 1, "slices"),
    (64, 64, 16, 1, "slices"),
    (32, 64, 16, 2, "gather"),
    (16, 16, 32, 2, "onehot"),    # too large to gather, strided: no slices
    (4, 4, 28, 1, "onehot"),      # too few channels for the slices
])
def test_kernel_gradient_form_rule(channels, out_channels, size, strides, form):
    """The measured rule (ops/nn.py): 3x3 kernels, square maps of ``size`` output positions a
    side, in a step split into parts; a whole step (on every core) takes the one-hot form
    where a split one slices."""
    from kcompile.ops.nn import kernel_grad_form
    args = (channels, out_channels, size * size, 9, (strides, strides))
    assert kernel_grad_form(*args) == form
    assert kernel_grad_form(*args, in_parts=False) == ("onehot" if form == "slices" else form)


def test_kernel_gradient_of_a_large_window_is_a_convolution():
    from kcompile.ops.nn import kernel_grad_form
    assert kernel_grad_form(32, 64, 121, 25, (1, 1)) == "gather"
    assert kernel_grad_form(32, 64, 121, 49, (1, 1)) == "transposed"  # (7x7: too large to unfold)


def _forms_chosen(monkeypatch):
    """The (in_parts, form) of every kernel gradient the compiler builds from now on."""
    from kcompile.ops import nn
    chosen, rule = [], nn.kernel_grad_form
    monkeypatch.setattr(nn, "kernel_grad_form", lambda *a, **k: chosen.append((k["in_parts"], rule(*a, **k))) or chosen[-1][1])
    return chosen


@pytest.mark.parametrize("source,forms", [
    ("examples/two_heads.kdl", ["slices", "onehot"]),
    ("examples/mnist_cnn.kdl", ["gather"] + ["onehot"] * 4),  # (the first layer's four phases)
])
def test_kernel_gradient_forms_for_a_split_step(source, forms, monkeypatch):
    """The compiler picks the forms for the step as the runtime will run it: in parts where the
    runtime splits the batch (per-sample layers and loss, and enough arithmetic)."""
    from pathlib import Path
    import kcompile
    from kcompile.runtime import devices
    chosen = _forms_chosen(monkeypatch)
    m = kcompile.compile(Path(__file__).resolve().parents[2] / source)
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)  # (a one-core machine splits nothing)
    assert m._batch_parts() == 2
    assert chosen == [(True, f) for f in forms]


@pytest.mark.parametrize("words, parts", [(20000, 2), (7500, 1)])
def test_kernel_gradient_forms_leave_out_tables_updated_on_rows(words, parts, monkeypatch):
    """A text model's table updated on the rows looked up is not counted against the split,
    by the compiler as by the runtime: 3.9M multiply-adds per sample against 41k convolution
    weights (split), where the 2.56M-number table counted whole would have kept the step whole;
    a table of 960k numbers, under optimizers.ROWS_MIN_ELEMENTS, is updated whole and counted
    (4 x 1.0M weights outweigh 3.9M)."""
    import kcompile
    from kcompile.runtime import devices
    chosen = _forms_chosen(monkeypatch)
    m = kcompile.compile_string(f"""model m {{
    input tokens: int64[100]
    Embedding({words}, 128)
    Conv1D(64, 5, activation=relu)
    GlobalMaxPooling1D()
    y = Dense(1, activation=sigmoid)
    train {{ loss = binary_crossentropy; optimizer = Adam() }}
}}""")
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    assert bool(m.manifest["training"]["row_gradients"]) == (parts == 2)
    assert m._batch_parts() == parts
    assert [in_parts for in_parts, _ in chosen] == [parts == 2]


@pytest.mark.parametrize("per_exchange,parts", [(None, 2), (10**9, 1)])
def test_kernel_gradient_forms_of_a_normalizing_step(per_exchange, parts, monkeypatch):
    """A step with BatchNormalization runs in parts where its arithmetic outweighs the exchanges
    of the batch's statistics (splitting.SPLIT_MIN_MACS_PER_EXCHANGE), else whole: no slices
    there."""
    import kcompile
    from kcompile import splitting
    from kcompile.runtime import devices
    if per_exchange:
        monkeypatch.setattr(splitting, "SPLIT_MIN_MACS_PER_EXCHANGE", per_exchange)
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    chosen = _forms_chosen(monkeypatch)
    m = kcompile.compile_string("""model m {
    input image: float32[32, 32, 3]
    Conv2D(32, 3, padding=same)
    BatchNormalization()
    Conv2D(32, 3, padding=same)
    GlobalAveragePooling2D()
    y = Dense(2)
    train { loss = mse; optimizer = SGD() }
}""")
    assert m._batch_parts() == parts
    # (32 -> 32 at 32x32: sliced in parts)
    assert chosen == ([(True, "slices"), (True, "onehot")] if parts == 2 else [(False, "onehot"), (False, "onehot")])


@pytest.mark.parametrize("layer,shape", [
    ("Conv2D(4, 3, groups=2)", (2, 5, 5, 2)),
    ("DepthwiseConv2D(3, depth_multiplier=2, padding=same)", (2, 5, 5, 2)),
    ("SeparableConv2D(3, 3, strides=2)", (2, 5, 5, 2)),
    # more channels than a chunk of the depthwise kernel gradient (DEPTHWISE_CHUNK): 8 and 3
    ("DepthwiseConv2D(3, depth_multiplier=2, dilation_rate=2, padding=same)", (2, 5, 5, 11)),
    ("DepthwiseConv2D((2, 3), strides=2)", (1, 5, 6, 11)),
    ("Conv2D(6, 3, groups=3)", (2, 5, 4, 6)),  # (two input channels a group: one kernel gradient each)
    ("DepthwiseConv1D(3, depth_multiplier=2, padding=same)", (2, 7, 10)),
])
def test_grouped_conv2d_float32(layer, shape):
    # Grouped Conv in float64 has no onnxruntime CPU kernel, and onnx's ReferenceEvaluator
    # fails on grouped float64 convolutions ("cannot reshape array ..."), so these cases run
    # in float32 (onnxruntime), with a step and tolerances sized for float32 rounding.
    src = model(f"y = {layer}(x)\n    output y", shape, dtype="float32")
    checked, _ = check_gradients(src, {"x": normal(shape, dtype="float32")}, h=1e-2, rtol=1e-2, atol=1e-3)
    assert checked > 0


# ---------------- pooling ----------------
@pytest.mark.parametrize("layer,shape", [
    ("MaxPooling2D(2)", (2, 4, 5, 2)),
    ("MaxPooling2D(3, strides=2, padding=same)", (2, 5, 5, 2)),
    ("MaxPooling2D((2, 3), strides=1)", (1, 4, 5, 2)),
    ("AveragePooling2D(2)", (2, 4, 5, 2)),
    ("AveragePooling2D(3, strides=2, padding=same)", (2, 5, 5, 2)),
    ("AveragePooling2D(2, padding=same)", (1, 5, 5, 2)),
    ("MaxPooling1D(2)", (2, 7, 3)),
    ("MaxPooling1D(3, strides=2, padding=same)", (2, 7, 3)),
    ("AveragePooling1D(2)", (2, 7, 3)),
    ("AveragePooling1D(3, strides=2, padding=same)", (2, 7, 3)),
    ("GlobalAveragePooling2D()", (2, 3, 3, 2)),
    ("GlobalMaxPooling2D()", (2, 3, 3, 2)),
    ("GlobalAveragePooling1D()", (2, 5, 3)),
    ("GlobalMaxPooling1D()", (2, 5, 3)),
])
def test_pooling(layer, shape):
    check(f"y = {layer}(x)\n    output y", shape)


# ---------------- normalization, reshaping ----------------
@pytest.mark.parametrize("shape,axis", [((2, 3, 3, 2), -1), ((3, 4), -1), ((3, 3), 1), ((2, 3, 3, 2), 2),
                                        ((2, 3, 3, 2), -3)])
def test_batch_normalization_inference_form(shape, axis):
    # The compiled inference graph: the moving statistics are non-trainable; gamma, beta and x are
    # checked, with the channels on any axis (square shapes: a sum over the wrong axes fits them too)
    check(f"y = BatchNormalization(axis={axis})(x)\n    output y", shape)


@pytest.mark.parametrize("body,shape", [
    ("Flatten()\n    y = Dense(3)\n    output y", (2, 3, 2)),
    ("y = Reshape((3, 2))(x)\n    output y", (2, 6)),
    ("y = Dense(2)(Reshape((2, 3, 2))(x))\n    output y", (2, 12)),
    ("y = Permute((2, 1))(x)\n    output y", (2, 3, 2)),
    ("y = Dense(2)(Permute((3, 1, 2))(x))\n    output y", (2, 2, 3, 4)),
])
def test_reshaping(body, shape):
    check(body, shape)


# ---------------- embedding ----------------
def _embedding_gradient(src, ids, seed=0):
    """(generated d loss / d embeddings, random weights r) for loss = sum(output * r)."""
    g = compile_source(src, "grad.kdl", opt_level=0).graph
    (_, out), = g.outputs
    t = g.types[out]
    r = np.random.default_rng(seed).normal(size=t.shape[1:]).astype(t.dtype)
    loss = emit(g, "ReduceSum", [emit(g, "Mul", [out, g.add_const(r)])[0]], {"keepdims": 0})[0]
    table = next(n for n in g.params if n.endswith("embeddings"))
    assert g.params[table].trainable
    grad = gradients(g, loss, [table])[table]
    g.outputs = [("grad", grad)]
    session = ort.InferenceSession(to_onnx(g, params_as_inputs=True).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed + 1)
    weights = {n: rng.normal(size=p.type.shape).astype(p.type.dtype) for n, p in g.params.items()}
    return session.run(None, {"ids": ids, **weights})[0], r


def test_embedding_repeated_ids_accumulate():
    src = "model m {\n    input ids: int64[4]\n    y = Embedding(6, 3)(ids)\n    output y\n}\n"
    ids = np.array([[1, 1, 4, 1], [4, 0, 1, 4]], dtype=np.int64)  # ids 1 and 4 repeat within and across rows
    got, r = _embedding_gradient(src, ids)
    expected = np.zeros((6, 3))
    np.add.at(expected, ids.reshape(-1), np.broadcast_to(r, (2, 4, 3)).reshape(-1, 3))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.all(got[[2, 3, 5]] == 0)  # ids never looked up get no gradient


def test_embedding_bag_gradient_repeats_by_gather():
    """An average over the embedded steps: its gradient reaches the table's scatter as a Gather
    of the pooled gradient's one entry along the steps (not an Expand; faster there), and each
    looked-up row gets r / steps per occurrence."""
    src = "model m {\n    input ids: int64[4]\n    Embedding(6, 3)\n    y = GlobalAveragePooling1D()\n    output y\n}\n"
    ids = np.array([[1, 1, 4, 1], [4, 0, 1, 4]], dtype=np.int64)
    got, r = _embedding_gradient(src, ids)
    expected = np.zeros((6, 3))
    np.add.at(expected, ids.reshape(-1), np.broadcast_to(r / 4, (8, 3)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    g = compile_source(src, "grad.kdl", opt_level=0).graph
    (_, out), = g.outputs
    loss = emit(g, "ReduceSum", [out], {"keepdims": 0})[0]
    table = next(n for n in g.params if n.endswith("embeddings"))
    scatter = g.producer_of(gradients(g, loss, [table])[table])
    assert scatter.op == "ScatterAdd"
    repeat = g.producer_of(scatter.inputs[0])
    assert repeat.op == "Gather" and repeat.attrs["axis"] == 1


def test_embedding_finite_differences():
    # The Embedding table is created float32 (there is no float input to take a dtype from);
    # the loss is linear in the table, so a large step is exact up to float32 rounding.
    src = "model m {\n    input ids: int64[5]\n    y = Embedding(4, 3)(ids)\n    output y\n}\n"
    ids = np.array([[0, 2, 2, 3, 2], [3, 3, 1, 0, 2]], dtype=np.int64)
    checked, _ = check_gradients(src, {"ids": ids}, h=1e-2, rtol=1e-4, atol=1e-4, samples=12)
    assert checked == 12


def test_embedding_then_float64_dense():
    src = ("model m {\n    input ids: int64[3]\n    e = cast(Embedding(5, 2)(ids), float64)\n"
           "    y = Dense(3, activation=tanh)(e)\n    output y\n}\n")
    ids = np.array([[1, 1, 4], [4, 0, 1]], dtype=np.int64)
    g = compile_source(src, "grad.kdl", opt_level=0).graph
    dense = [n for n in g.params if n.startswith("dense/")]
    assert dense
    got, _ = _embedding_gradient(src, ids)
    assert got.shape == (5, 2) and np.all(got[[2, 3]] == 0) and np.any(got[1] != 0)


# ---------------- merging layers ----------------
@pytest.mark.parametrize("layer", ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"])
def test_merge(layer):
    body = (f"a = Dense(3)(x)\n    b = Dense(3, activation=tanh)(x)\n    c = x * 0.5\n"
            f"    y = {layer}()(a, b{'' if layer == 'Subtract' else ', c'})\n    output y")
    check(body, (4, 3))


def test_concatenate_axis():
    check("a = Dense(2)(x)\n    y = Concatenate(axis=1)(x, a)\n    output y", (2, 3, 2))


# ---------------- arithmetic and broadcasting ----------------
def test_broadcast_with_weight_vector():
    # x [N, 3, 4] times a weight of shape [4] (a block weight) and a bias broadcast along two axes.
    src = ("block Scale(units: int) {\n    input x\n    weight gamma: [units] = ones\n    output x * gamma\n}\n"
           "model m {\n    input x: float64[3, 4]\n    y = Scale(4)(x)\n    output y\n}\n")
    checked, _ = check_gradients(src, {"x": normal((2, 3, 4))})
    assert checked > 0


@pytest.mark.parametrize("expr", [
    "x * Dense(1)(x)",                # [N, 3, 4] * [N, 3, 1]
    "Dense(4)(x) / (abs(x) + 1.0)",
    "-x + Dense(4)(x)",
    "2.0 / (x * x + 1.0) - x / 3.0",
    "x - Dense(1)(x) * 0.5",
    "mean(x, axis=1, keepdims=true) * x",  # [N, 1, 4] * [N, 3, 4]
])
def test_arithmetic_broadcasting(expr):
    check(f"y = {expr}\n    output y", (2, 3, 4), away_from_zero=True)


# ---------------- built-in functions ----------------
@pytest.mark.parametrize("expr", [
    "mean(x)", "sum(x)", "max(x)", "min(x)",
    "mean(x, axis=1)", "mean(x, axis=(1, 2))", "mean(x, axis=-1, keepdims=true)",
    "sum(x, axis=2)", "sum(x, axis=(0, 1))",
    "max(x, axis=1)", "max(x, axis=-1, keepdims=true)", "min(x, axis=2)", "min(x, axis=(1, 2))",
    "square(x)", "sqrt(x * x + 0.5)", "exp(x)", "log(x * x + 1.0)", "abs(x)",
    "maximum(x, x * x)", "minimum(x, 0.5 - x)", "maximum(x, Dense(4)(x))",
    "transpose(x)", "transpose(x, perm=(0, 2, 1))",
    "concat(x, x * 2.0, axis=-1)", "concat(x, square(x), axis=1)",
    "matmul(x, transpose(x))",
    # ties, which share the gradient (each copy's share moves with x)
    "max(concat(x, x, axis=1), axis=1)", "min(concat(x, x * 1.0, x, axis=2), axis=(1, 2))",
    "max(concat(x, x, axis=1))", "GlobalMaxPooling1D()(UpSampling1D(2)(x))",
    "gelu(x, approximate=true)",
])
def test_function(expr):
    check(f"y = {expr}\n    output y", (2, 3, 4), away_from_zero=True)


# ---------------- sharing, residuals, blocks, models ----------------
def test_shared_layer_used_twice():
    check("layer d = Dense(3)\n    y = d(x) + d(x * 2.0)\n    output y", (3, 4))


def test_shared_layer_nonlinear():
    check("layer d = Dense(4, activation=tanh)\n    y = d(d(x)) * d(x)\n    output y", (3, 4))


def test_value_used_twice():
    check("h = Dense(4)(x)\n    y = h * h + h\n    output y", (3, 4))


def test_residual_block():
    src = ("block Residual(filters: int) {\n    input x\n"
           "    h = Conv2D(filters, 3, padding=same, activation=relu)(x)\n"
           "    h = Conv2D(filters, 3, padding=same)(h)\n    output relu(x + h)\n}\n"
           "model m {\n    input x: float64[4, 4, 2]\n    y = Residual(2)(x)\n    output y\n}\n")
    checked, _ = check_gradients(src, {"x": normal((2, 4, 4, 2))})
    assert checked > 0


def test_dense_residual():
    check("h = Dense(4, activation=gelu)(x)\n    y = x + Dense(4)(h)\n    output y", (3, 4))


def test_block_weight_float64():
    # A block's own weight takes the dtype of the block's first input (float64 here).
    src = ("block Scale(units: int) {\n    input x\n    weight gamma: [units] = ones\n    output x * gamma\n}\n"
           "model m {\n    input x: float64[3]\n    h = Dense(3)(x)\n    layer s = Scale(3)\n"
           "    y = s(h) + s(x) * h\n    output y\n}\n")
    g = compile_source(src, "grad.kdl", opt_level=0).graph
    assert g.params["s/gamma"].type.dtype == "float64"
    checked, _ = check_gradients(src, {"x": normal((3, 3))})
    assert checked > 0


INNER = ("model inner {\n    input x: float64[4]\n    h = Dense(3, activation=tanh)(x)\n"
         "    y = Dense(2)(h)\n    output y\n}\n")


def test_model_inside_model():
    src = INNER + ("model outer {\n    input x: float64[4]\n    h = Dense(4, activation=tanh)(x)\n"
                   "    y = inner(h) + Dense(2)(x)\n    output y\n}\n")
    g = compile_source(src, "grad.kdl", model="outer", opt_level=0).graph
    assert {n for n, p in g.params.items() if p.trainable} >= {"inner/dense/kernel", "dense/kernel"}
    checked, _ = check_gradients(src, {"x": normal((3, 4))}, model="outer")
    assert checked > 0


FROZEN_OUTER = ("model outer {\n    input x: float64[4]\n    h = Dense(4, activation=tanh)(x)\n"
                "    y = inner(h, trainable=false)\n    output y\n    train {\n"
                "        loss = mse\n        optimizer = SGD()\n    }\n}\n")


def test_frozen_inner_model_gets_no_gradient():
    src = INNER + FROZEN_OUTER
    compiled = compile_source(src, "grad.kdl", model="outer", opt_level=0)
    g = compiled.graph
    frozen = [n for n in g.params if n.startswith("inner/")]
    assert frozen and not any(g.params[n].trainable for n in frozen)
    assert all(g.params[n].trainable for n in g.params if not n.startswith("inner/"))
    # The gradient still flows through the frozen model to the weights before it.
    checked, _ = check_gradients(src, {"x": normal((3, 4))}, model="outer")
    assert checked > 0
    # The training step asks only for the trainable weights and updates only them (built in
    # float32: the optimizers' learning rate is a float32 input).
    compiled = compile_source(src.replace("float64", "float32"), "grad.kdl", model="outer")
    program = compiled.training()
    assert program is not None, compiled.training_error
    assert sorted(program.trainable) == sorted(n for n in g.params if not n.startswith("inner/"))
    updated = {o[len("new:"):] for o, _ in program.step.outputs if o.startswith("new:")}
    assert not updated & set(frozen)
    assert {"dense/kernel", "dense/bias"} <= updated


def test_gradients_of_frozen_weights_unrequested():
    # kcompile.autodiff.gradients gives a gradient exactly for what it is asked for:
    # asked only for the trainable weights, it returns nothing for the frozen ones.
    src = INNER + FROZEN_OUTER
    g = compile_source(src, "grad.kdl", model="outer", opt_level=0).graph
    (_, out), = g.outputs
    loss = emit(g, "ReduceSum", [out], {"keepdims": 0})[0]
    trainable = [n for n, p in g.params.items() if p.trainable]
    grads = gradients(g, loss, trainable)
    assert set(grads) == set(trainable)
    assert all(grads[n] is not None for n in trainable)
    assert not any(n.startswith("inner/") for n in grads)


@pytest.mark.parametrize("body, shape", [
    ("y = MaxPooling2D(2)(x)", (2, 5, 5, 2)),            # windows apart, a row and column left over
    ("y = MaxPooling2D((2, 3))(x)", (2, 5, 7, 2)),
    ("y = MaxPooling1D(2)(x)", (2, 7, 3)),
    ("y = MaxPooling2D(2, strides=1)(x)", (2, 4, 4, 2)),  # overlapping: the scatter path
    ("y = MaxPooling2D(2)(x)", (2, 4, 6, 2)),            # windows tile the input: no argmax
    ("y = MaxPooling2D((2, 3))(x)", (2, 4, 6, 2)),
    ("y = MaxPooling2D(3)(x)", (2, 6, 3, 1)),
    ("y = MaxPooling1D(3)(x)", (2, 9, 3)),
    ("Conv2D(3, 3, activation=relu)\n MaxPooling2D(2)\n Conv2D(2, 2, activation=relu)\n MaxPooling2D(2)\n"
     " Flatten()\n y = Dense(2)", (2, 13, 13, 1)),
])
def test_maxpool_gradient_paths(body, shape):
    """MaxPool's gradient: without the argmax where the windows do not overlap (MaxPoolTilesGrad),
    else through the forward argmax (a scatter-add for overlapping windows; MaxUnpool for
    windows apart over a named dimension: test_windows_over_a_named_dimension)."""
    src = "model m {\n input x: float64[%s]\n %s\n output y\n}" % (", ".join(map(str, shape[1:])), body)
    checked, _ = check_gradients(src, {"x": np.random.default_rng(3).normal(size=shape)})
    assert checked > 0


def _first_max_gradient(x, dy, k):
    """numpy: dy of each window [N, C, H, W] sent to its first maximum in row-major order."""
    dx = np.zeros_like(x)
    n, c, h, w = x.shape
    for i in range(n):
        for j in range(c):
            for p in range(h // k[0]):
                for q in range(w // k[1]):
                    window = x[i, j, p * k[0]:(p + 1) * k[0], q * k[1]:(q + 1) * k[1]]
                    a, b = np.unravel_index(np.argmax(window), window.shape)  # (the first maximum)
                    dx[i, j, p * k[0] + a, q * k[1] + b] += dy[i, j, p, q]
    return dx


@pytest.mark.parametrize("k", [(2, 2), (2, 3), (3, 2), (1, 2)])
@pytest.mark.parametrize("left_over", [0, 1])
def test_maxpool_tiles_gradient_picks_the_first_maximum(k, left_over):
    """Where windows do not overlap, MaxPoolTilesGrad finds each window's first maximum without
    MaxPool's argmax; with many ties (values in {0, 1, 2}) it must still pick the position the
    argmax picks, as Keras (TensorFlow's MaxPoolGrad) does: compared with numpy and with the
    argmax path, in float32 on onnxruntime; ``left_over``: rows and columns in no window."""
    from kcompile.ir import Graph, TensorType
    shape = (3, 4, 2 * k[0] * 2 + left_over, 3 * k[1] + left_over * (k[1] - 1))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, shape).astype(np.float32)
    dy = rng.normal(size=(shape[0], shape[1], shape[2] // k[0], shape[3] // k[1])).astype(np.float32)
    results = []
    for tiles in (True, False):
        g = Graph("m")
        g.add_input("x", TensorType("float32", shape))
        g.add_input("dy", TensorType("float32", dy.shape))
        y, indices = emit(g, "MaxPool", ["x"], {"kernel_shape": k, "strides": k, "pads": (0,) * 4})
        if tiles:
            dx, = emit(g, "MaxPoolTilesGrad", ["dy", y, "x"], {"kernel_shape": k})
        else:
            dx, = emit(g, "MaxPoolGrad", ["dy", indices, "x"], {"kernel_shape": k, "strides": k, "pads": (0,) * 4})
        g.outputs = [("dx", dx)]
        proto = to_onnx(g)
        argmax = [n for n in proto.graph.node if n.op_type == "MaxPool" and len(n.output) == 2]
        assert len(argmax) == (0 if tiles else 1)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        results.append(session.run(None, {"x": x, "dy": dy})[0])
    np.testing.assert_array_equal(results[0], _first_max_gradient(x, dy, k))
    np.testing.assert_array_equal(results[0], results[1])


# ---------------- windows over a named dimension ----------------
@pytest.mark.parametrize("body", [
    "Conv1D(3, 3)",
    "Conv1D(3, 3, padding=same)",
    "Conv1D(3, 3, padding=causal, dilation_rate=2)",
    "Conv1D(3, 2, activation=tanh)\n    MaxPooling1D(2)",
    "ZeroPadding1D((1, 2))\n    Conv1D(2, 3)",
    "Cropping1D((1, 2))\n    Conv1D(2, 2)",
    "Conv1D(2, 3)\n    Conv1D(2, 2, dilation_rate=2)",
])
def test_windows_over_a_named_dimension(body):
    """Shape rules carry T through a window as an expression (T-2, (T-1)//2), and a convolution's
    kernel gradient over T is a product per kernel offset; checked at two lengths."""
    src = f"model m {{\n    input x: float64[T, 2]\n    {body}\n    GlobalAveragePooling1D()\n    y = Dense(2)\n    output y\n}}\n"
    for steps in (9, 12):
        checked, _ = check_gradients(src, {"x": normal((2, steps, 2))})
        assert checked > 0


def test_mnist_cnn_step_computes_no_max_pool_argmax():
    """The MNIST CNN's training step pools twice: the first pool with its convolution as phase
    convolutions (ConvMaxPool), the second, whose windows tile the cropped map, through
    MaxPoolTilesGrad; neither computes MaxPool's Indices output (onnxruntime's slow path)."""
    from pathlib import Path

    import onnx

    import kcompile
    model = kcompile.compile(Path(__file__).resolve().parents[2] / "examples" / "mnist_cnn.kdl")
    nodes = onnx.load_from_string(model._training_onnx["train_step"]).graph.node
    assert [len(n.output) for n in nodes if n.op_type == "MaxPool" and len(n.output) > 1] == []
    assert sum(n.op_type == "MaxUnpool" for n in nodes) == 1
