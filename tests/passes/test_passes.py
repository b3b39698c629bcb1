"""Each pass: the graph before and after, and the model's outputs equal through it."""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kcompile.backend import to_onnx
from kcompile.driver import compile_source, initial_weights
from kcompile.passes.util import is_static
from kcompile.passes import (PIPELINE, common_subexpression_elimination, constant_folding,
                             center_before_normalize, dead_code_elimination, fold_batchnorm, fuse_activation,
                             fuse_bias, fuse_normalize_affine, optimize, remove_dropout, sink_transposes)
from kcompile.passes.transpose import feature_major_dense, transpose_into_dense_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients  # noqa: E402


def graph_of(src, level=0):
    return compile_source(src, "t.kdl", opt_level=level).graph


def ops(g):
    return [n.op for n in g.nodes()]


def run(g, weights, feeds):
    session = ort.InferenceSession(to_onnx(g, weights).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_weights(g, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in g.params.items():
        w = rng.normal(0, 0.5, p.type.shape).astype(p.type.dtype)
        if "variance" in name:
            w = np.abs(w) + 0.5
        out[name] = w
    return out


def assert_same(before, after, feeds, weights=None):
    weights = weights or random_weights(before)
    for a, b in zip(run(before, weights, feeds), run(after, weights, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


CNN = """
model cnn {
    input image: float32[10, 9, 3]
    Conv2D(8, 3, padding=same, activation=relu)
    BatchNormalization()
    Conv2D(6, 3, strides=2)
    BatchNormalization()
    Activation(relu)
    MaxPooling2D(2, padding=same)
    Flatten()
    Dropout(0.3)
    probs = Dense(4, activation=softmax)
    output probs
}
"""


def image(shape=(3, 10, 9, 3), seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_remove_dropout():
    before = graph_of(CNN)
    after = remove_dropout(before.copy())
    assert "Dropout" in ops(before) and "Dropout" not in ops(after)
    assert len(ops(after)) == len(ops(before)) - 1
    assert_same(before, after, {"image": image()})


def test_dead_code_elimination_drops_unused_values():
    """(The frontend leaves no unused layer, as Keras's Model(inputs, outputs): the dead values
    a pass leaves behind are made here by hand.)"""
    src = """model m {
        input x: float32[4]
        y = relu(x) * 2.0
        output y
    }"""
    before = graph_of(src)
    from kcompile.ops import emit
    emit(before, "Exp", emit(before, "Sigmoid", ["x"]))
    after = dead_code_elimination(before.copy())
    assert ops(before) == ["Relu", "Mul", "Sigmoid", "Exp"]
    assert ops(after) == ["Relu", "Mul"]
    assert_same(before, after, {"x": image((2, 4))})


def test_constant_folding_evaluates_constant_subgraphs():
    src = """model m {
        input x: float32[4]
        y = x * (2.0 * 3.0)
        output y
    }"""
    g = graph_of(src)
    # Arithmetic on literals is static in the language; build a foldable node by hand.
    from kcompile.ops import emit
    c1, c2 = g.add_const(np.float32(2.0)), g.add_const(np.float32(3.0))
    prod, = emit(g, "Mul", [c1, c2])
    exp, = emit(g, "Exp", [prod])
    out, = emit(g, "Add", [g.outputs[0][1], exp])
    g.outputs = [("y", out)]
    after = constant_folding(g.copy())
    assert ops(g) == ["Mul", "Mul", "Exp", "Add"]
    assert ops(after) == ["Mul", "Add"]
    folded = [v for v in after.consts.values() if v.shape == ()]
    assert any(np.isclose(v, np.exp(6.0)) for v in folded)
    assert_same(g, after, {"x": image((2, 4))})


def test_cse_merges_identical_nodes():
    src = """model m {
        input x: float32[5]
        a = relu(x)
        b = relu(x)
        y = a + b
        output y
    }"""
    before = graph_of(src)
    after = common_subexpression_elimination(before.copy())
    assert ops(before).count("Relu") == 2 and ops(after).count("Relu") == 1
    assert_same(before, after, {"x": image((3, 5))})


def _sunk(src):
    """(the graph of ``src``, that graph after transpose sinking, the transposes of data (of
    batch-first values) left in it)."""
    before = graph_of(src)
    after = dead_code_elimination(sink_transposes(before.copy()))
    return before, after, [n for n in after.nodes() if n.op == "Transpose" and after.types[n.inputs[0]].shape[0] == "N"]


def test_transpose_sinking_leaves_one_transpose_per_edge():
    before = remove_dropout(graph_of(CNN))
    after = dead_code_elimination(sink_transposes(before.copy()))
    data_transposes = [n for n in after.nodes() if n.op == "Transpose" and n.inputs[0] not in after.params
                       and after.producer_of(n.inputs[0]) is None or
                       (n.op == "Transpose" and after.producer_of(n.inputs[0]) is not None
                        and after.producer_of(n.inputs[0]).op != "Unsqueeze")]
    # Before: 2 transposes around each of 2 convs and the pool (6) on data; after: image in, flatten out.
    data_before = [n for n in before.nodes() if n.op == "Transpose" and before.types[n.inputs[0]].shape[0] == "N"]
    data_after = [n for n in after.nodes() if n.op == "Transpose" and after.types[n.inputs[0]].shape[0] == "N"]
    assert len(data_before) == 6
    assert len(data_after) == 2
    assert data_transposes  # the graph still transposes at its edges
    # BatchNormalization now works on channels-first data.
    assert all(n.attrs["axis"] == 1 for n in after.nodes() if n.op == "BatchNormalization")
    assert_same(before, after, {"image": image()})


def test_transpose_through_global_pooling_disappears():
    src = """model m {
        input image: float32[6, 6, 2]
        Conv2D(3, 3, activation=relu)
        GlobalAveragePooling2D()
        y = Dense(2)
        output y
    }"""
    before, after, data_after = _sunk(src)
    assert len(data_after) == 1  # only the image's way in
    assert_same(before, after, {"image": image((2, 6, 6, 2))})


def test_a_concat_of_convolutions_joins_their_channels_first_maps():
    """Two convolutions' outputs joined on their channels: the Concat moves before the transposes
    (joining the channels-first maps on axis 1), which then cancel with the next convolution's."""
    src = """model m {
        input image: float32[6, 6, 2]
        a = Conv2D(3, 3, padding=same, activation=relu)(image)
        b = Conv2D(4, 3, padding=same)(a)
        c = Concatenate()([a, b])
        y = Dense(2)(GlobalAveragePooling2D()(Conv2D(5, 3)(c)))
        output y
    }"""
    before = graph_of(src)
    after = dead_code_elimination(sink_transposes(before.copy()))
    concat, = [n for n in after.nodes() if n.op == "Concat"]
    assert concat.attrs["axis"] == 1 and all(after.producer_of(v).op != "Transpose" for v in concat.inputs)
    data_after = [n for n in after.nodes() if n.op == "Transpose" and after.types[n.inputs[0]].shape[0] == "N"]
    assert len(data_after) == 1  # only the image's way in
    assert_same(before, after, {"image": image((2, 6, 6, 2))})


@pytest.mark.parametrize("between", ["ZeroPadding2D(((1, 0), (2, 1)))", "Cropping2D(((1, 0), (0, 2)))",
                                     "Softmax()", "Activation(log_softmax)", "UpSampling2D((2, 3))",
                                     "GroupNormalization(groups=3)", "GroupNormalization(groups=-1)",
                                     "LayerNormalization()", "LayerNormalization(axis=(-2, -1))"])
def test_padding_cropping_and_softmax_between_convolutions_keep_them_channels_first(between):
    """Pad, Slice, Softmax, Upsample and Normalize name the data's axes in their attributes: the
    transposes move past them on the source's axes (and past GroupNormalization's Reshapes, which
    split the channels into groups and join them back) and cancel with the next convolution's."""
    src = f"""model m {{
        input image: float32[7, 6, 2]
        Conv2D(3, 3, padding=same)
        {between}
        Conv2D(4, 2)
        GlobalAveragePooling2D()
        y = Dense(2)
        output y
    }}"""
    before, after, data_after = _sunk(src)
    assert len(data_after) == 1  # only the image's way in
    assert_same(before, after, {"image": image((2, 7, 6, 2))})


@pytest.mark.parametrize("target, moved", [((42, 3), True), ((7, 18), False), ((7, 6, 3, 1), True),
                                           ((1, 7, 6, 3), True), ((7, 3, 6, 1), False)])
def test_a_transpose_moves_past_a_reshape_that_splits_or_merges_axes_in_the_sources_order(target, moved):
    """Reshape((42, 3)) of a convolution's [7, 6, 3] output merges rows and columns, which its
    channels-first source holds next to each other: the Reshape runs on the source and the
    transpose after it cancels with the Conv1D's. Merging columns and channels (7, 18) is no
    such merge and keeps its transposes, as does a Reshape that regroups axes (6, 3 -> 3, 6); unit
    axes put in go anywhere. The numbers are the same either way."""
    rest = "Conv1D(2, 2)\n        GlobalAveragePooling1D()" if len(target) == 2 else "Flatten()"
    src = f"""model m {{
        input image: float32[7, 6, 2]
        Conv2D(3, 3, padding=same)
        Reshape({target})
        {rest}
        y = Dense(2)
        output y
    }}"""
    before, after, on_data = _sunk(src)
    if len(target) == 2:
        assert len(on_data) == (1 if moved else 3)  # (the image's way in; unmoved, the Reshape's two)
    else:  # before a Flatten the transpose stays: moved past the Reshape, or not
        assert any(getattr(after.producer_of(n.inputs[0]), "op", None) == "Reshape" for n in on_data) == moved
    assert_same(before, after, {"image": image((2, 7, 6, 2))})


def test_a_transpose_of_unit_axes_becomes_a_reshape():
    """A one-channel image goes channels-first by a Reshape (no copy in onnxruntime); a
    three-channel one keeps its Transpose."""
    src = """model m {
        input image: float32[6, 5, CHANNELS]
        Conv2D(2, 3)
        GlobalMaxPooling2D()
        y = Dense(2)
        output y
    }"""
    for channels, kept in (("1", 0), ("3", 1)):
        before = graph_of(src.replace("CHANNELS", channels))
        after = dead_code_elimination(sink_transposes(before.copy()))
        on_data = [n.op for n in after.nodes() if n.inputs == ["image"]]
        assert on_data == (["Transpose"] if kept else ["Reshape"]), on_data
        assert_same(before, after, {"image": image((2, 6, 5, int(channels)))})


def test_transpose_into_dense_weights():
    """The channels-last flatten's transpose moves onto the kernel's rows: no data transpose
    is left on the way out, the outputs are the same, and so are the gradients."""
    before = dead_code_elimination(fuse_bias(sink_transposes(remove_dropout(graph_of(CNN)))))
    after = dead_code_elimination(transpose_into_dense_weights(before.copy()))
    def data_transposes(g):
        return [n for n in g.nodes() if n.op == "Transpose" and g.types[n.inputs[0]].shape[0] == "N"]
    assert len(data_transposes(before)) == 2 and len(data_transposes(after)) == 1  # the image's way in
    assert_same(before, after, {"image": image()})
    src = """model m {
        input image: float64[5, 4, 2]
        Conv2D(3, (2, 2), activation=tanh)
        Flatten()
        y = Dense(2)
        output y
    }"""
    passes = [sink_transposes, fuse_bias, transpose_into_dense_weights]
    g = graph_of(src)
    for rewrite in passes:
        g = rewrite(g)
    flatten, = [n for n in g.nodes() if n.op == "Flatten"]
    assert g.producer_of(flatten.inputs[0]).op != "Transpose"
    checked, _ = check_gradients(src, {"image": np.random.default_rng(3).normal(size=(2, 5, 4, 2))}, passes=passes)
    assert checked > 0


MLP = """model mlp {
    input x: float32[6]
    a = Dense(5, activation=relu)(x)
    b = Dense(4, activation=tanh)(a)
    c = Dense(3)(b)
    d = Dense(2)(c * 2.0)
    output d
}"""


def test_feature_major_dense():
    """A Dense whose output reaches the next Dense through activations only runs feature-major on
    its transposed kernel; the transposes between layers become the products' trans flags."""
    before = fuse_bias(graph_of(MLP))
    after = dead_code_elimination(feature_major_dense(before.copy()))
    assert [n for n, p in after.params.items() if p.transposed] == ["dense/kernel", "dense_1/kernel"]
    assert after.types["dense/kernel"].shape == (5, 6) and before.types["dense/kernel"].shape == (6, 5)
    assert "Transpose" not in ops(after)
    flags = [(n.attrs.get("transA", 0), n.attrs.get("transB", 0)) for n in after.nodes() if n.op == "Gemm"]
    assert flags == [(0, 1), (0, 0), (1, 0), (0, 0)]  # W^T x^T, W^T h^T, h x W, and c * 2 is not an activation
    weights = random_weights(before)
    held = {k: np.ascontiguousarray(v.T) if after.params[k].transposed else v for k, v in weights.items()}
    x = np.random.default_rng(2).normal(size=(7, 6)).astype(np.float32)
    np.testing.assert_allclose(run(after, held, {"x": x})[0], run(before, weights, {"x": x})[0], rtol=1e-5, atol=1e-6)
    checked, _ = check_gradients(MLP.replace("float32", "float64"), {"x": x.astype(np.float64)},
                                 passes=[fuse_bias, feature_major_dense])
    assert checked > 0
    # Dropout between the layers keeps them feature-major; its training form draws the noise
    # batch-major (as the runtime does) and transposes it.
    with_dropout = MLP.replace("float32", "float64").replace("(a)", "(Dropout(0.4)(a))")
    g = feature_major_dense(fuse_bias(graph_of(with_dropout)))
    assert [n for n, p in g.params.items() if p.transposed] == ["dense/kernel", "dense_1/kernel"]
    checked, _ = check_gradients(with_dropout, {"x": x.astype(np.float64)}, training=True,
                                 passes=[fuse_bias, feature_major_dense])
    assert checked > 0


def test_bias_fusion():
    before = dead_code_elimination(sink_transposes(remove_dropout(graph_of(CNN))))
    after = dead_code_elimination(fuse_bias(before.copy()))
    assert "MatMul" in ops(before) and "MatMul" not in ops(after) and "Gemm" in ops(after)
    assert all(len(n.inputs) == 3 for n in after.nodes() if n.op in ("Conv", "Gemm"))
    assert ops(after).count("Add") < ops(before).count("Add")
    assert_same(before, after, {"image": image()})


def test_batchnorm_folding():
    g = dead_code_elimination(fuse_bias(sink_transposes(remove_dropout(graph_of(CNN)))))
    after = dead_code_elimination(fold_batchnorm(g.copy()))
    # The second BatchNormalization follows a Conv directly; the first follows a ReLU and stays.
    assert ops(g).count("BatchNormalization") == 2
    assert ops(after).count("BatchNormalization") == 1
    assert_same(g, after, {"image": image()})


def test_activation_fusion():
    g = dead_code_elimination(fuse_bias(sink_transposes(remove_dropout(graph_of(CNN)))))
    after = dead_code_elimination(fuse_activation(g.copy()))
    fused = [n for n in after.nodes() if n.attrs.get("activation")]
    assert [n.attrs["activation"][0] for n in fused] == ["Relu"]
    assert ops(after).count("Relu") == ops(g).count("Relu") - 1
    assert_same(g, after, {"image": image()})


def test_pipeline_o1_equals_o0_and_is_smaller():
    before = graph_of(CNN, level=0)
    after = graph_of(CNN, level=1)
    # Ops on weights only run once, at session start; count the ops each batch runs.
    def per_batch(g):
        return [n.op for n in g.nodes() if not is_static(g, n.outputs[0])]
    assert len(per_batch(before)) == 20
    # conv+bias+relu | BN (after a relu: cannot fold) | conv+bias+BN+relu | pool | one transpose to
    # channels-last for Flatten | dense+bias | softmax.
    assert per_batch(after) == ["Transpose", "Conv", "BatchNormalization", "Conv", "MaxPool",
                                "Transpose", "Flatten", "Gemm", "Softmax"]
    assert [n.attrs.get("activation", (None,))[0] for n in after.nodes() if n.op == "Conv"] == ["Relu", "Relu"]
    assert_same(before, after, {"image": image()}, random_weights(before))


def test_optimize_reports_each_pass():
    seen = []
    _, applied = optimize(graph_of(CNN), 1, report=lambda name, b, a, changed: seen.append((name, b, a)))
    assert [s[0] for s in seen] == applied == [p[0] for p in PIPELINE]
    assert optimize(graph_of(CNN), 0)[1] == []


@pytest.mark.parametrize("src_input", [
    ("model m {\n input x: float32[6]\n Dense(5, activation=tanh)\n BatchNormalization()\n y = Dense(2)\n output y\n}",
     (4, 6)),
    ("model m {\n input x: float32[8, 3]\n Conv1D(4, 3, padding=causal, activation=relu)\n"
     " BatchNormalization()\n GlobalMaxPooling1D()\n y = Dense(2)\n output y\n}", (2, 8, 3)),
    ("model m {\n input x: float32[7, 7, 2]\n Conv2DTranspose(3, 3, strides=2, padding=same)\n"
     " BatchNormalization()\n AveragePooling2D(2)\n y = Flatten()\n output y\n}", (2, 7, 7, 2)),
])
def test_pipeline_preserves_outputs(src_input):
    src, shape = src_input
    before, after = graph_of(src, 0), graph_of(src, 1)
    assert_same(before, after, {"x": image(shape)}, random_weights(before))


def test_initial_weights_feed_every_param():
    g = graph_of(CNN, 1)
    assert set(initial_weights(g)) == set(g.params)


@pytest.mark.parametrize("layer,shape,fused", [
    ("LayerNormalization()", (5,), True), ("LayerNormalization()", (3, 4), True),
    ("LayerNormalization(center=false)", (3, 4), True), ("LayerNormalization(scale=false)", (6,), False),
    ("LayerNormalization(axis=(1, 2))", (3, 4), True),
])
def test_layer_normalizations_gamma_and_beta_fold_into_its_normalize(layer, shape, fused):
    """Inference: Normalize then gamma's Mul and beta's Add become one Normalize (ONNX
    LayerNormalization's scale and bias), where gamma is shaped like the normalized axes; the
    same outputs."""
    src = f"""model m {{
        input x: float32[{', '.join(map(str, shape))}]
        y = {layer}(Dense({shape[-1]})(x))
        output y
    }}"""
    before = graph_of(src)
    after = dead_code_elimination(fuse_normalize_affine(before.copy()))
    normalize, = [n for n in after.nodes() if n.op == "Normalize"]
    assert len(normalize.inputs) == (3 if fused else 1)
    assert (ops(after).count("Mul") < ops(before).count("Mul")) == fused
    x = np.random.default_rng(0).normal(size=(4,) + shape).astype(np.float32)
    assert_same(before, after, {"x": x}, random_weights(before))  # (gamma and beta away from ones and zeros)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_layer_normalization_after_a_convolution_folds_gamma_and_beta_into_one_channel_pass(dtype):
    """After transpose sinking a Conv2D's LayerNormalization normalizes the channels-first map over
    axis 1, its gamma and beta [1, C, 1, 1]: they fold into the Normalize, which lowers them as one
    per-channel pass (an inference BatchNormalization of scale gamma, bias beta, mean 0, variance
    1, epsilon 0) after the moments; the same outputs."""
    src = f"""model m {{
        input x: {dtype}[6, 5, 3]
        y = LayerNormalization()(Conv2D(4, 3)(x))
        output y
    }}"""
    before = sink_transposes(graph_of(src))
    normalize, = [n for n in before.nodes() if n.op == "Normalize"]
    assert normalize.attrs["axes"] in ([1], (1,)) and before.types[normalize.inputs[0]].shape[1] == 4
    after = dead_code_elimination(fuse_normalize_affine(before.copy()))
    normalize, = [n for n in after.nodes() if n.op == "Normalize"]
    assert [after.types[v].shape for v in normalize.inputs[1:]] == [(4,), (4,)]
    weights = random_weights(before)
    onnx_ops = [n.op_type for n in to_onnx(after, weights).graph.node]
    assert onnx_ops.count("BatchNormalization") == 1 and "LayerNormalization" not in onnx_ops
    x = np.random.default_rng(0).normal(size=(3, 6, 5, 3)).astype(dtype)
    if dtype == "float32":
        assert_same(before, after, {"x": x}, weights)
    else:
        for a, b in zip(run(before, weights, {"x": x}), run(after, weights, {"x": x})):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-2)



@pytest.mark.parametrize("body, centered", [
    ("y = LayerNormalization()(Conv2D(5, 3, padding=same)(x))", True),
    ("y = LayerNormalization(center=false, scale=false)(Conv2D(5, 3, use_bias=false)(x))", True),
    ("y = LayerNormalization()(Conv2DTranspose(5, 3, strides=2, padding=same)(x))", True),
    ("y = LayerNormalization()(Conv1D(5, 3, dilation_rate=2)(Reshape((42, 5))(x)))", True),
    ("y = LayerNormalization()(Conv2D(5, 3, activation=relu)(x))", False),  # (not linear in the filters)
    ("y = LayerNormalization()(DepthwiseConv2D(3)(x))", False),  # (each channel its own filter)
    ("h = Conv2D(5, 3)(x)\n y = Add()([LayerNormalization()(h), h])", False),  # (the map read elsewhere too)
    ("y = LayerNormalization(axis=(1, 2, 3))(Conv2D(5, 3)(x))", False),  # (not over the channels alone)
])
def test_a_normalize_over_a_convolutions_channels_reads_the_convolution_by_centered_filters(body, centered):
    """Inference: the mean over channels of a convolution's map is the convolution by the filters'
    mean (plus the biases' mean), so a Normalize over a Conv2D's channels reads the convolution by
    filters and bias less their means, and takes no mean itself; the same outputs (a bias far from
    zero: the mean it no longer subtracts is large)."""
    src = f"""model m {{
        input x: float32[7, 6, 5]
        {body}
        output y
    }}"""
    before = dead_code_elimination(fuse_normalize_affine(fuse_bias(sink_transposes(graph_of(src)))))
    after = dead_code_elimination(center_before_normalize(before.copy()))
    normalize = [n for n in after.nodes() if n.op == "Normalize"]
    assert [bool(n.attrs.get("centered")) for n in normalize] == [centered]
    assert (ops(after).count("Sub") == ops(before).count("Sub") + 2 - ("use_bias=false" in body)) == centered
    weights = {name: w + (4.0 if w.ndim == 1 and "conv" in name else 0.0) for name, w in random_weights(before).items()}
    x = np.random.default_rng(0).normal(1.0, 1.0, size=(3, 7, 6, 5)).astype(np.float32)
    assert_same(before, after, {"x": x}, weights)
