"""Winograd's F(2x2, 3x3) for a convolution read by a 2x2 max pool (backend/winograd.py): the
rewritten graph gives the plain graph's numbers, and graphs it does not fit stay as they are."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from kcompile.backend import winograd


def use_winograd(model_bytes):
    return winograd.use_winograd(model_bytes)[0]


def conv_pool_model(c=32, o=48, h=12, w=12, bias=True, order=("Relu", "MaxPool"), channels_last=False,
                    kernel_as_input=False, conv_attrs=None, kernel_size=3, seed=0):
    """x [N, c, h, w] -> Conv(3x3) -> the ops in ``order`` -> (a transpose to channels-last)."""
    rng = np.random.default_rng(seed)
    kernel = (rng.normal(size=(o, c, kernel_size, kernel_size)) / np.sqrt(9 * c)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.normal(size=o).astype(np.float32), "b")] if bias else []
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ("N", c, h, w))]
    if kernel_as_input:
        inputs.append(helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, kernel.shape))
    else:
        inits.append(numpy_helper.from_array(kernel, "k"))
    nodes = [helper.make_node("Conv", ["x", "k"] + (["b"] if bias else []), ["v0"], **(conv_attrs or {}))]
    for i, op in enumerate(order):
        attrs = dict(kernel_shape=[2, 2], strides=[2, 2]) if op == "MaxPool" else {}
        nodes.append(helper.make_node(op, [f"v{i}"], [f"v{i + 1}"], **attrs))
    out = f"v{len(order)}"
    if channels_last:
        nodes.append(helper.make_node("Transpose", [out], ["y"], perm=[0, 2, 3, 1]))
        out = "y"
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), kernel


def run(model_bytes, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def ops(model_bytes):
    return [n.op_type for n in onnx.load_from_string(model_bytes).graph.node]


def numpy_conv_relu_pool(x, kernel, bias):
    """The reference in float64: valid 3x3 correlation, + bias, Relu, 2x2 max pool (floor)."""
    n, c, h, w = x.shape
    cols = np.stack([x[:, :, a:h - 2 + a, b:w - 2 + b] for a in range(3) for b in range(3)], axis=2)
    y = np.einsum("nckhw,ock->nohw", cols, kernel.reshape(kernel.shape[0], c, 9)) + bias[None, :, None, None]
    p, q = y.shape[2] // 2, y.shape[3] // 2
    y = y[:, :, :2 * p, :2 * q].reshape(n, -1, p, 2, q, 2).max(axis=(3, 5))
    return np.maximum(y, 0)


@pytest.mark.parametrize("h,w", [(12, 12), (13, 13), (11, 16), (4, 5)])
def test_matches_a_numpy_convolution_relu_and_pool(h, w):
    model, kernel = conv_pool_model(h=h, w=w)
    bias = numpy_helper.to_array(onnx.load_from_string(model).graph.initializer[0]).astype(np.float64)
    x = np.random.default_rng(1).normal(size=(5, 32, h, w)).astype(np.float32)
    rewritten = use_winograd(model)
    assert "Conv" not in ops(rewritten) and "MatMul" in ops(rewritten)
    expected = numpy_conv_relu_pool(x.astype(np.float64), kernel.astype(np.float64), bias)
    np.testing.assert_allclose(run(rewritten, {"x": x}), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(bias=False), dict(order=("MaxPool", "Relu")), dict(order=("MaxPool",)), dict(channels_last=True),
    dict(order=("MaxPool",), channels_last=True, bias=False), dict(c=40, o=32, h=9, w=14),
])
def test_variants_give_the_plain_graphs_numbers(kwargs):
    model, _ = conv_pool_model(**kwargs)
    rewritten = use_winograd(model)
    assert "Conv" not in ops(rewritten)
    if kwargs.get("channels_last"):  # the transpose to channels-last is the rewrite's own, not one more
        assert ops(rewritten).count("Transpose") == 2
    c, h, w = kwargs.get("c", 32), kwargs.get("h", 12), kwargs.get("w", 12)
    for n in (1, 3, 16):
        x = np.random.default_rng(n).normal(size=(n, c, h, w)).astype(np.float32)
        np.testing.assert_allclose(run(rewritten, {"x": x}), run(model, {"x": x}), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(conv_attrs=dict(strides=[2, 2])), dict(conv_attrs=dict(pads=[1, 1, 1, 1])),
    dict(conv_attrs=dict(dilations=[2, 2]), h=14, w=14), dict(conv_attrs=dict(group=2), c=64),
    dict(kernel_size=5), dict(kernel_as_input=True), dict(order=("Relu",)), dict(order=("Relu", "Relu", "MaxPool")),
    dict(order=("Sigmoid", "MaxPool")), dict(c=8), dict(o=16), dict(h=3),
])
def test_graphs_it_does_not_fit_are_unchanged(kwargs):
    model, _ = conv_pool_model(**kwargs)
    assert use_winograd(model) == model


def test_a_pool_read_twice_or_a_pool_of_another_size_is_left():
    model, _ = conv_pool_model()
    m = onnx.load_from_string(model)
    m.graph.output.append(helper.make_tensor_value_info("v1", onnx.TensorProto.FLOAT, None))  # the Relu read twice
    assert use_winograd(m.SerializeToString()) == m.SerializeToString()
    m = onnx.load_from_string(model)
    pool = m.graph.node[2]
    del pool.attribute[:]
    pool.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("strides", [2, 2])])
    assert use_winograd(m.SerializeToString()) == m.SerializeToString()


def test_the_tiles_bytes_per_sample():
    model, _ = conv_pool_model(c=32, o=48, h=12, w=13)  # 5 x 5 tiles
    assert winograd.use_winograd(model)[1] == 4 * 16 * 25 * (32 + 48)
    assert winograd.use_winograd(conv_pool_model(c=8)[0]) == (conv_pool_model(c=8)[0], 0)


@pytest.mark.parametrize("winograd_faster", [True, False])
def test_predict_in_parts_keeps_the_faster_form_and_the_same_predictions(monkeypatch, winograd_faster, turns,
                                                                         forced_parts_form):
    """The MNIST CNN's large predicts run in one-core parts. Both the plain graph and the one
    with its second convolution in Winograd's form are made and timed; the one kept runs
    (in runs of 16 rows, the floor: a quarter of predict's cache share over the largest value,
    Winograd's tiles added to it, is fewer), with the same predictions either way; smaller
    predicts run the plain graph. After new weights only the form kept is made again. (A fresh
    turn-taking detector: had earlier tests' models been seen taking turns, this model's
    sessions and their copies would be dropped to stop spinning, which is not this test's.)"""
    import kcompile
    rewritten, timed = forced_parts_form(winograd, "use_winograd", int(winograd_faster))
    runs = []
    model = kcompile.compile(Path(__file__).parents[2] / "examples" / "mnist_cnn.kdl")
    x = np.random.default_rng(0).random((1024, 28, 28, 1), dtype=np.float32)
    whole = model.predict(x, batch_size=1024)
    assert len(rewritten) == 1 and ops(rewritten[0][0]).count("Conv") == 1  # (the first is left: one input channel)
    assert timed == [[16, 16]]
    predictor = model._copies["parts"][1][0][0]
    real_run = type(predictor).run.__get__(predictor)
    monkeypatch.setattr(predictor, "run", lambda feeds, n, step, fixed: runs.append(step) or real_run(feeds, n, step, fixed))
    again = model.predict(x, batch_size=1024)
    assert runs == [16]  # (512 rows a part: 32 runs of 16)
    np.testing.assert_allclose(again, whole, atol=1e-6)
    for rows in (slice(0, 100), slice(-100, None)):  # (100 rows: one part, the plain graph; both halves)
        np.testing.assert_allclose(whole[rows], model.predict(x[rows]), atol=1e-6)
    odd = model.predict(x[:1023], batch_size=1023)  # (halves of 512 and 511 rows)
    np.testing.assert_allclose(odd, whole[:1023], atol=1e-6)
    assert len(rewritten) == 1 and len(timed) == 1  # (made and timed once per session)
    model.set_weights([w * 0.5 for w in model.get_weights()])  # (new weights: a new session, its parts ...)
    model.predict(x, batch_size=1024)  # (... the first predict after binds the weights as inputs)
    halved = model.predict(x, batch_size=1024)
    # (... made again, in the form timed before; where that was the plain graph, without the rewrite)
    assert len(rewritten) == (3 if winograd_faster else 1) and len(timed) == 1
    assert model._copies["parts"][1][1] == 16
    np.testing.assert_allclose(halved[-100:], model.predict(x[-100:]), atol=1e-6)


class _Clocked:
    """A stand-in Predictor whose runs advance a fake clock by ``cost`` per row."""
    clock = [0.0]

    def __init__(self, cost, first):
        self.cost, self.first, self.calls = cost, first, []

    def run(self, feeds, n, step, fixed):
        if self.first:  # (the second part runs on another thread: only the first moves the clock)
            self.clock[0] += self.cost * n
            self.calls.append((n, step))
        return [np.zeros((n, 1), np.float32)]


@pytest.mark.parametrize("costs, kept", [((1.0, 0.5), 1), ((1.0, 0.99), 0), ((1.0, 1.5), 0)])
def test_the_faster_parts_are_chosen_by_time_and_winograd_needs_a_margin(monkeypatch, costs, kept):
    """_faster_parts keeps the form whose parts ran the same rows (two runs a part of the
    largest run) in less time, each form in runs of its own size; a form other than the plain
    graph must be 3% faster to be kept."""
    import time

    from kcompile.runtime.model import Model
    monkeypatch.setattr(time, "perf_counter", lambda: _Clocked.clock[0])
    choices = [([_Clocked(c, True), _Clocked(c, False)], rows) for c, rows in zip(costs, (28, 16))]
    feeds = {"x": np.zeros((1024, 3), np.float32)}
    assert Model._faster_parts(Model.__new__(Model), choices, feeds, 1024, None) is choices[kept]
    assert [predictors[0].calls for predictors, _ in choices] == [[(56, 28)] * 4, [(56, 14)] * 4]  # (16 -> 4 even runs of 14)


@pytest.mark.parametrize("costs, kept", [((1.0, 0.9, 0.5), 2), ((1.0, 0.9, 0.99), 1), ((1.0, 0.99, 0.985), 0)])
def test_of_three_forms_the_fastest_is_kept_if_3_percent_faster_than_the_plain_graph(monkeypatch, costs, kept):
    """With Winograd's form and a recurrence's fused form both made, _faster_parts times all three,
    each in every round, and keeps the fastest where it beats the plain graph by 3%."""
    import time

    from kcompile.runtime.model import Model
    monkeypatch.setattr(time, "perf_counter", lambda: _Clocked.clock[0])
    choices = [([_Clocked(c, True), _Clocked(c, False)], 16) for c in costs]
    feeds = {"x": np.zeros((1024, 3), np.float32)}
    assert Model._faster_parts(Model.__new__(Model), choices, feeds, 1024, None) is choices[kept]
    assert [predictors[0].calls for predictors, _ in choices] == [[(32, 16)] * 4] * 3
