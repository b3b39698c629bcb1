"""The CPU sessions' blocked convolutions (kcompile.backend.nchwc): the rewritten graph computes
what the standard one does, and a model trains to the same numbers with and without it."""
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import kcompile
from kcompile.backend import nchwc

CNN = Path(__file__).resolve().parents[2] / "examples" / "mnist_cnn.kdl"
BLOCK = nchwc.block_size()
needs_blocks = pytest.mark.skipif(BLOCK is None, reason="this onnxruntime has no blocked convolutions here")


def _graph(node, x_shape, w_shape, y_shape, bias=None, dtype=TensorProto.FLOAT):
    inputs = [helper.make_tensor_value_info("x", dtype, x_shape), helper.make_tensor_value_info("w", dtype, w_shape)]
    if bias:
        inputs.append(helper.make_tensor_value_info("b", dtype, (bias,)))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", dtype, y_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _run_all(model_bytes, feeds):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, feeds)


def _run(model_bytes, feeds):
    return _run_all(model_bytes, feeds)[0]


CASES = [  # node, x shape, kernel shape, y shape, bias
    (helper.make_node("Conv", ["x", "w"], ["y"]), (3, 32, 9, 8), (16, 32, 3, 3), (3, 16, 7, 6), None),
    (helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1], dilations=[1, 2]),
     (2, 16, 9, 8), (32, 16, 3, 2), (2, 32, 5, 8), 32),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"]), (3, 32, 7, 6), (32, 16, 3, 3), (3, 16, 9, 8), None),
    # few input channels: the input stays NCHW
    (helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 0, 0]), (4, 1, 11, 10), (16, 1, 3, 3),
     (4, 16, 5, 5), None),
    (helper.make_node("Conv", ["x", "w", "b"], ["y"]), (2, 3, 6, 6), (32, 3, 2, 2), (2, 32, 5, 5), 32),
    (helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 1]), (2, 16, 7, 6), (16, 32, 3, 4),
     (2, 32, 6, 8), 32),
    # dilated (a dilated convolution's input gradient): the convolution at the same dilation
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], dilations=[2, 3], pads=[1, 2, 0, 3]), (2, 32, 6, 7),
     (32, 16, 3, 3), (2, 16, 9, 8), None),
    # 1-D: the 2-D blocked form over one row
    (helper.make_node("Conv", ["x", "w"], ["y"]), (3, 32, 20), (16, 32, 3), (3, 16, 18), None),
    (helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[2, 1], strides=[2], dilations=[2]), (2, 16, 21),
     (32, 16, 5), (2, 32, 8), 32),
    (helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1]), (4, 3, 10), (16, 3, 3), (4, 16, 10), None),
    (helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], pads=[1, 2]), (2, 32, 12), (32, 16, 5), (2, 16, 13), 16),
    # depthwise (DepthwiseConv2D, SeparableConv2D): one channel a group; its input gradient, a
    # depthwise ConvTranspose, as the depthwise convolution of the flipped kernel
    (helper.make_node("Conv", ["x", "w", "b"], ["y"], group=32, pads=[1, 1, 1, 1]), (2, 32, 9, 8), (32, 1, 3, 3),
     (2, 32, 9, 8), 32),
    (helper.make_node("Conv", ["x", "w"], ["y"], group=16, strides=[2, 1], dilations=[1, 2]), (3, 16, 9, 8),
     (16, 1, 3, 3), (3, 16, 4, 4), None),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=32, pads=[1, 0, 1, 2]), (2, 32, 7, 6),
     (32, 1, 3, 3), (2, 32, 7, 6), None),
    (helper.make_node("Conv", ["x", "w"], ["y"], group=32), (2, 32, 20), (32, 1, 5), (2, 32, 16), None),
]


@needs_blocks
@pytest.mark.parametrize("case", range(len(CASES)))
def test_blocked_convolutions_compute_what_the_standard_ones_do(case):
    node, x_shape, w_shape, y_shape, bias = CASES[case]
    standard = _graph(node, x_shape, w_shape, y_shape, bias)
    blocked = nchwc.use_nchwc(standard)
    assert any(n.domain == nchwc.DOMAIN for n in onnx.load_from_string(blocked).graph.node)
    rng = np.random.default_rng(case)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32), "w": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        feeds["b"] = rng.standard_normal(bias).astype(np.float32)
    want = _run(standard, feeds)
    assert want.shape == y_shape
    np.testing.assert_allclose(_run(blocked, feeds), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("node,x_shape,w_shape,y_shape", [
    (helper.make_node("Conv", ["x", "w"], ["y"]), (1, 20, 5, 5), (16, 20, 3, 3), (1, 16, 3, 3)),  # 20 channels in
    (helper.make_node("Conv", ["x", "w"], ["y"], group=2), (1, 32, 5, 5), (32, 16, 3, 3), (1, 32, 3, 3)),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2]), (1, 16, 3, 3), (16, 16, 3, 3),
     (1, 16, 7, 7)),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2]), (1, 16, 5), (16, 16, 3), (1, 16, 11)),
    (helper.make_node("Conv", ["x", "w"], ["y"]), (1, 20, 5), (16, 20, 3), (1, 16, 3)),  # 1-D, 20 channels in
    (helper.make_node("Conv", ["x", "w"], ["y"], group=16), (1, 16, 5, 5), (32, 1, 3, 3), (1, 32, 3, 3)),  # 2 a group
    (helper.make_node("Conv", ["x", "w"], ["y"], group=20), (1, 20, 5, 5), (20, 1, 3, 3), (1, 20, 3, 3)),  # 20 channels
])
def test_other_convolutions_are_left_as_they_are(node, x_shape, w_shape, y_shape):
    standard = _graph(node, x_shape, w_shape, y_shape)
    assert nchwc.use_nchwc(standard, block=16) is standard


def test_float64_convolutions_are_left_as_they_are():
    """The blocked kernels are float32 only."""
    standard = _graph(helper.make_node("Conv", ["x", "w"], ["y"]), (1, 16, 5, 5), (16, 16, 3, 3), (1, 16, 3, 3),
                      dtype=TensorProto.DOUBLE)
    assert nchwc.use_nchwc(standard, block=16) is standard


@needs_blocks
def test_the_cnn_trains_to_the_same_numbers_with_blocked_convolutions(monkeypatch):
    """The MNIST CNN's second convolution and its input gradient run blocked on the CPU; two epochs
    give the losses and weights of the standard graph."""
    rng = np.random.default_rng(0)
    x = rng.random((192, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 192)]
    runs, rewritten = [], []
    real = nchwc.use_nchwc
    for blocked in (True, False):
        def spy(graph, block=None):  # what the runtime's sessions were given
            out = real(graph, block) if blocked else graph
            rewritten.append(any(n.domain == nchwc.DOMAIN for n in onnx.load_from_string(out).graph.node))
            return out
        monkeypatch.setattr(nchwc, "use_nchwc", spy)
        m = kcompile.compile(CNN, seed=0)
        m.batch_parts = 1  # (the whole step; tests/runtime/test_batch_parts.py splits it)
        runs.append((m.fit(x, y, epochs=2, batch_size=64, verbose=0).history["loss"], m.get_weights()))
    assert rewritten == [True, False]  # the training step, once per model
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


CONV1D = """model c {
    input x: float32[30, 8]
    h = Dense(16, activation=relu)(x)
    h = Conv1D(32, 3, padding=same, activation=relu)(h)
    h = Conv1D(16, 5, strides=2)(h)
    y = Dense(3, activation=softmax)(GlobalAveragePooling1D()(h))
    output y
    train { loss = categorical_crossentropy; optimizer = Adam(learning_rate=0.01) }
}"""


def _fit_blocked_and_standard(monkeypatch, source, x, y, count, **fit):
    """``source`` trained twice from seed 0 (whole steps), its sessions' graphs with use_nchwc and
    without: each run's (history, weights), and ``count``(nodes) of each graph the sessions got
    (the blocked run's first)."""
    runs, counts = [], []
    real = nchwc.use_nchwc
    for blocked in (True, False):
        def spy(graph, block=None):
            out = real(graph, block) if blocked else graph
            counts.append(count(onnx.load_from_string(out).graph.node))
            return out
        monkeypatch.setattr(nchwc, "use_nchwc", spy)
        m = kcompile.compile_string(source, seed=0)
        m.batch_parts = 1
        runs.append((m.fit(x, y, verbose=0, **fit).history, m.get_weights()))
    return runs, counts


def _assert_same_training(runs, keys=("loss",)):
    (history, weights), (standard_history, standard_weights) = runs
    for key in keys:
        np.testing.assert_allclose(history[key], standard_history[key], rtol=1e-5)
    for a, b in zip(weights, standard_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@needs_blocks
def test_a_conv1d_model_trains_to_the_same_numbers_with_blocked_convolutions(monkeypatch):
    """1-D convolutions run as the blocked 2-D ones over one row, their input gradients too (the
    stride-1 ConvTranspose); two epochs give the losses and weights of the standard graph."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 30, 8)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 96)]
    runs, blocked_convs = _fit_blocked_and_standard(
        monkeypatch, CONV1D, x, y, lambda nodes: sum(n.domain == nchwc.DOMAIN and n.op_type == "Conv" for n in nodes),
        epochs=2, batch_size=32)
    assert blocked_convs[0] >= 3 and blocked_convs[-1] == 0  # (both forwards and an input gradient at least)
    _assert_same_training(runs)


SEPARABLE = """model s {
    input x: float32[10, 10, 3]
    h = Conv2D(32, 3, padding=same, activation=relu)(x)
    h = SeparableConv2D(32, 3, padding=same, activation=relu)(h)
    h = DepthwiseConv2D(3, padding=same, activation=relu)(h)
    y = Dense(3, activation=softmax)(GlobalAveragePooling2D()(h))
    output y
    train { loss = categorical_crossentropy; optimizer = Adam(learning_rate=0.01) }
}"""


@needs_blocks
def test_a_separable_model_trains_and_evaluates_to_the_same_numbers_with_blocked_convolutions(monkeypatch):
    """Depthwise convolutions and their input gradients run blocked too, and the evaluation graph's
    global pool reads the blocked map: two epochs with validation give the losses, validation
    losses and weights of the standard graphs."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((96, 10, 10, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 96)]
    runs, depthwise = _fit_blocked_and_standard(
        monkeypatch, SEPARABLE, x[:64], y[:64],
        lambda nodes: sum(n.domain == nchwc.DOMAIN and n.op_type == "Conv" and _attr(n, "group") > 1 for n in nodes),
        epochs=2, batch_size=32, validation_data=(x[64:], y[64:]))
    half = len(depthwise) // 2
    assert max(depthwise[:half]) >= 4 and max(depthwise[half:]) == 0  # (two forwards, two input gradients)
    _assert_same_training(runs, ("loss", "val_loss"))


def test_without_a_temporary_folder_the_convolutions_stay_standard(monkeypatch):
    """The block size is read from a model onnxruntime writes to a temporary folder; without one
    the probe says None and graphs are left as they are, rather than failing fit."""
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/folder")
    nchwc.block_size.cache_clear()
    try:
        assert nchwc.block_size() is None
        standard = _graph(*CASES[0][:4])
        assert nchwc.use_nchwc(standard) is standard
    finally:
        nchwc.block_size.cache_clear()


def _conv_then(readers, outputs):
    """x [2, 32, 8, 8] -> Conv (kernel input) -> c, read by ``readers``; ``outputs``: (name, shape)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])] + readers
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 32, 8, 8)),
                                           helper.make_tensor_value_info("w", TensorProto.FLOAT, (32, 32, 3, 3))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@needs_blocks
@pytest.mark.parametrize("other", [None, "relu", "branch"])
def test_max_pools_read_a_blocked_convolution_directly(other):
    """Max pools that are all that reads a blocked convolution run blocked on its output, with no
    conversion back to NCHW and into blocks again in between (the tiled max-pool gradient's
    pools); with another reader, the convolution's output is converted as before (a reader
    inside an If's branch too)."""
    readers = [helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
               helper.make_node("MaxPool", ["c"], ["q"], kernel_shape=[1, 2], strides=[2, 2])]
    outputs = [("p", (2, 32, 3, 3)), ("q", (2, 32, 3, 3))]
    if other == "relu":
        readers.append(helper.make_node("Relu", ["c"], ["r"]))
        outputs.append(("r", (2, 32, 6, 6)))
    elif other == "branch":
        def branch(op):
            return helper.make_graph([helper.make_node(op, ["c"], [f"{op}_out"])], op, [],
                                     [helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, (2, 32, 6, 6))])
        readers += [helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("t", TensorProto.BOOL, (), [True])),
                    helper.make_node("If", ["cond"], ["r"], then_branch=branch("Relu"), else_branch=branch("Neg"))]
        outputs.append(("r", (2, 32, 6, 6)))
    standard = _conv_then(readers, outputs)
    blocked = nchwc.use_nchwc(standard)
    nodes = onnx.load_from_string(blocked).graph.node
    pools = [n for n in nodes if n.op_type == "MaxPool"]
    assert all(n.domain == (nchwc.DOMAIN if other is None else "") for n in pools) and len(pools) == 2
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 32, 8, 8)).astype(np.float32),
             "w": rng.standard_normal((32, 32, 3, 3)).astype(np.float32)}
    for got, want in zip(_run_all(blocked, feeds), _run_all(standard, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _channels_last_graph(dims, transpose_in, transpose_out, extra_reader=False):
    """x channels-last [2, (8,) 10, 32] -> (Transpose to channels-first, or x given so) -> Conv of
    a kernel input -> (Transpose back to channels-last) -> y; ``extra_reader``: a Relu reads the
    channels-first input too."""
    spatial = (8, 10)[-dims:]
    to_first = [0, dims + 1] + list(range(1, dims + 1))
    to_last = [0] + list(range(2, dims + 2)) + [1]
    nodes, x_shape = [], (2,) + spatial + (32,)
    if transpose_in:
        nodes.append(helper.make_node("Transpose", ["x"], ["xf"], perm=to_first))
    else:
        x_shape = (2, 32) + spatial
    nodes.append(helper.make_node("Conv", ["xf" if transpose_in else "x", "w"], ["c"], pads=[1] * 2 * dims))
    y_shape = (2, 16) + spatial
    if transpose_out:
        nodes.append(helper.make_node("Transpose", ["c"], ["y"], perm=to_last))
        y_shape = (2,) + spatial + (16,)
    else:
        nodes[-1].output[0] = "y"
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["xf"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, (2, 32) + spatial))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                                           helper.make_tensor_value_info("w", TensorProto.FLOAT, (16, 32) + (3,) * dims)],
                              outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString(), x_shape, dims


@needs_blocks
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("transpose_in,transpose_out,extra_reader", [
    (True, True, False), (False, True, False), (True, False, False), (True, True, True)])
def test_transposes_to_and_from_channels_last_go_into_the_reorders(dims, transpose_in, transpose_out, extra_reader):
    """A blocked convolution's output transposed channels-last, and its input transposed from
    channels-last for it alone, convert between blocks and channels-last in their ReorderOutput
    and ReorderInput (channels_last=1) without the Transpose; an input another node reads
    keeps its Transpose."""
    standard, x_shape, dims = _channels_last_graph(dims, transpose_in, transpose_out, extra_reader)
    blocked = nchwc.use_nchwc(standard)
    nodes = onnx.load_from_string(blocked).graph.node
    last = {n.op_type for n in nodes if n.domain == nchwc.DOMAIN and
            any(a.name == "channels_last" and a.i == 1 for a in n.attribute)}
    assert last == ({"ReorderInput"} if transpose_in and not extra_reader else set()) | \
        ({"ReorderOutput"} if transpose_out else set())
    assert sum(n.op_type == "Transpose" and (n.input[0] == "x" or n.output[0] == "y") for n in nodes) == int(extra_reader)
    rng = np.random.default_rng(dims)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32),
             "w": rng.standard_normal((16, 32) + (3,) * dims).astype(np.float32)}
    for got, want in zip(_run_all(blocked, feeds), _run_all(standard, feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _one_d_graph(kernel_as_input=False):
    """x [N, 20, 32] channels-last -> Transpose -> Conv1D (a kernel folded from an initializer by a
    Transpose, or an input) -> Relu -> MaxPool 2 -> Conv1D (pads, stride, dilation, bias) ->
    Sigmoid -> AveragePool 3, transposed back channels-last as an output and averaged over the
    steps as another, with the Relu's 3-D output a graph output too."""
    rng = np.random.default_rng(0)
    k1 = onnx.numpy_helper.from_array(rng.standard_normal((5, 32, 32)).astype(np.float32), "k1_klo")  # [k, in, out]
    k2 = onnx.numpy_helper.from_array(rng.standard_normal((16, 32, 3)).astype(np.float32) * 0.2, "k2")
    b2 = onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b2")
    nodes = [] if kernel_as_input else [helper.make_node("Transpose", ["k1_klo"], ["k1"], perm=[2, 1, 0])]
    nodes += [helper.make_node("Transpose", ["x_nwc"], ["x"], perm=[0, 2, 1]),
              helper.make_node("Conv", ["x", "k1"], ["c1"], pads=[2, 2]),
              helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2], strides=[2]),
              helper.make_node("Conv", ["p1", "k2", "b2"], ["c2"], pads=[1, 2], strides=[2], dilations=[2]),
              helper.make_node("Sigmoid", ["c2"], ["s2"]),
              helper.make_node("AveragePool", ["s2"], ["a2"], kernel_shape=[3], strides=[1], pads=[1, 1],
                               count_include_pad=0),
              helper.make_node("ReduceMean", ["a2"], ["y"], axes=[2], keepdims=0),
              helper.make_node("Transpose", ["a2"], ["a2_nwc"], perm=[0, 2, 1])]
    inputs = [helper.make_tensor_value_info("x_nwc", TensorProto.FLOAT, ("N", 20, 32))]
    if kernel_as_input:
        inputs.append(helper.make_tensor_value_info("k1", TensorProto.FLOAT, (32, 32, 5)))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("N", 16)),
               helper.make_tensor_value_info("a2_nwc", TensorProto.FLOAT, ("N", 5, 16)),
               helper.make_tensor_value_info("r1", TensorProto.FLOAT, ("N", 32, 20))]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=([] if kernel_as_input else [k1]) + [k2, b2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@needs_blocks
def test_one_dimensional_convolutions_and_pools_of_inference_run_over_one_row_blocked():
    """An inference graph's 1-D convolutions of constant kernels, its pools and the activations
    between them run as 2-D ops over a map of one row, which onnxruntime's optimizer blocks
    (com.microsoft.nchwc ops in the session's graph), converting from and to the channels-last
    maps transposed around them in its reorders; the outputs are the same, a 3-D value the
    graph outputs included."""
    standard = _one_d_graph()
    rows = nchwc.one_row_maps(standard)
    nodes = onnx.load_from_string(rows).graph.node
    convs = [n for n in nodes if n.op_type in ("Conv", "MaxPool", "AveragePool")]
    assert len(convs) == 4 and all(len(_attr(n, "kernel_shape") or [1, 1]) == 2 for n in convs if n.op_type != "Conv")
    assert [n.op_type for n in nodes if n.op_type in ("Relu", "Sigmoid")] == ["Relu", "Sigmoid"]
    squeezed = {n.output[0] for n in nodes if n.op_type == "Squeeze"}
    assert squeezed == {"r1", "a2", "a2_nwc"}  # (the graph's 3-D outputs, and the mean's input)
    assert [list(_attr(n, "perm")) for n in nodes if n.op_type == "Transpose" and n.input[0] != "k1_klo"] == \
        [[0, 3, 1, 2], [0, 2, 3, 1]]  # (the channels-last ends as 4-D NHWC <-> NCHW)
    rng = np.random.default_rng(1)
    feeds = {"x_nwc": rng.standard_normal((3, 20, 32)).astype(np.float32)}
    for got, want in zip(_run_all(rows, feeds), _run_all(standard, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    optimized = _optimized_nodes(rows)
    assert sum(n.domain == nchwc.DOMAIN and n.op_type == "Conv" for n in optimized) == 2
    assert not [n for n in optimized if n.op_type == "Transpose"]  # (taken into the reorders)
    assert any(n.op_type == "ReorderInput" and _attr(n, "channels_last") for n in optimized)
    assert any(n.op_type == "ReorderOutput" and _attr(n, "channels_last") for n in optimized)


def _optimized_nodes(model_bytes):
    """The nodes of the graph onnxruntime's CPU session runs for ``model_bytes``."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        return list(onnx.load(options.optimized_model_filepath).graph.node)


def _attr(node, name):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def test_one_row_maps_leave_other_graphs_as_they_are():
    """A 1-D convolution whose kernel is an input (the training graphs', rewritten by use_nchwc)
    and a graph without 1-D ops keep their bytes."""
    with_input_kernel = _one_d_graph(kernel_as_input=True)
    rewritten = onnx.load_from_string(nchwc.one_row_maps(with_input_kernel)).graph.node
    assert [n for n in rewritten if n.op_type == "Conv"][0].input[0] == "x"  # (the first conv: as it was)
    node, x_shape, w_shape, y_shape, bias = CASES[0]
    plain = _graph(node, x_shape, w_shape, y_shape, bias)
    assert nchwc.one_row_maps(plain) == plain


def test_a_conv1d_model_predicts_the_same_with_its_maps_in_one_row(monkeypatch):
    """Model.predict of a Conv1D model: the same numbers as the standard graph's (the rewrite is the
    CPU session's only: the saved folder's m.onnx keeps its 1-D convolutions)."""
    src = """model m {
        input x: float32[24, 8]
        Conv1D(16, 3, padding=same, activation=relu)
        MaxPooling1D(2)
        Conv1D(16, 3, strides=2, activation=tanh)
        AveragePooling1D(2)
        Flatten()
        y = Dense(3)
        output y
    }"""
    x = np.random.default_rng(0).standard_normal((40, 24, 8)).astype(np.float32)
    got = kcompile.compile_string(src, seed=1).predict(x)
    monkeypatch.setattr(nchwc, "one_row_maps", lambda graph: graph)
    model = kcompile.compile_string(src, seed=1)
    want = model.predict(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        convs = [n for n in onnx.load(str(Path(folder) / "m.onnx")).graph.node if n.op_type == "Conv"]
    assert convs and all(len(_attr(n, "strides") or [1]) == 1 for n in convs)


@needs_blocks
@pytest.mark.parametrize("keepdims", [0, 1])
def test_global_means_and_maxima_of_maps_become_global_pools(keepdims):
    """A mean or maximum over a map's spatial axes (GlobalAveragePooling2D's ReduceMean over axes 2
    and 3; a Conv1D's GlobalAveragePooling1D over its map of one row) becomes ONNX's global pool,
    which onnxruntime runs blocked on the convolution's blocked output: the map is never
    converted back to NCHW. The numbers are the same."""
    rng = np.random.default_rng(0)
    k2 = onnx.numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "k2")
    nodes = [helper.make_node("Conv", ["x2", "k2"], ["c2"]),
             helper.make_node("ReduceMean", ["c2"], ["mean2"], axes=[2, 3], keepdims=keepdims),
             helper.make_node("ReduceMax", ["c2"], ["max2"], axes=[3, 2], keepdims=keepdims),
             helper.make_node("Transpose", ["k1_klo"], ["k1"], perm=[2, 1, 0]),
             helper.make_node("Conv", ["x1", "k1"], ["c1"]),
             helper.make_node("ReduceMean", ["c1"], ["mean1"], axes=[2], keepdims=keepdims)]
    k1 = onnx.numpy_helper.from_array(rng.standard_normal((3, 16, 32)).astype(np.float32), "k1_klo")
    inputs = [helper.make_tensor_value_info("x2", TensorProto.FLOAT, ("N", 16, 9, 8)),
              helper.make_tensor_value_info("x1", TensorProto.FLOAT, ("N", 16, 12))]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("mean2", "max2", "mean1")]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=[k1, k2]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    standard = model.SerializeToString()
    pooled = nchwc.global_pools(nchwc.one_row_maps(standard))
    ops = [n.op_type for n in onnx.load_from_string(pooled).graph.node]
    assert "ReduceMean" not in ops and "ReduceMax" not in ops
    assert ops.count("GlobalAveragePool") == 2 and ops.count("GlobalMaxPool") == 1
    feeds = {"x2": rng.standard_normal((3, 16, 9, 8)).astype(np.float32),
             "x1": rng.standard_normal((3, 16, 12)).astype(np.float32)}
    for got, want in zip(_run_all(pooled, feeds), _run_all(standard, feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    optimized = _optimized_nodes(pooled)
    blocked = [n.op_type for n in optimized if n.domain == nchwc.DOMAIN]
    assert blocked.count("GlobalAveragePool") == 2 and blocked.count("GlobalMaxPool") == 1
    assert nchwc.global_pools(_graph(*CASES[0][:4])) == _graph(*CASES[0][:4])  # (nothing to pool: the same bytes)


@needs_blocks
@pytest.mark.parametrize("other_reader", [False, True])
def test_a_relu_that_alone_reads_a_blocked_convolution_runs_inside_it(other_reader):
    """Conv -> Relu -> MaxPool: the Relu becomes the blocked convolution's activation, and the pool
    then reads the blocked map directly (no ReorderOutput, Relu and ReorderInput in between);
    where something else reads the convolution's output too, the Relu stays. Same numbers."""
    readers = [helper.make_node("Relu", ["c"], ["r"]),
               helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    outputs = [("p", (2, 32, 3, 3))]
    if other_reader:
        readers.append(helper.make_node("Neg", ["c"], ["n"]))
        outputs.append(("n", (2, 32, 6, 6)))
    standard = _conv_then(readers, outputs)
    blocked = nchwc.use_nchwc(standard)
    nodes = onnx.load_from_string(blocked).graph.node
    conv, = [n for n in nodes if n.op_type == "Conv"]
    assert (_attr(conv, "activation") == b"Relu") != other_reader
    assert ("Relu" in [n.op_type for n in nodes]) == other_reader
    assert [n.domain for n in nodes if n.op_type == "MaxPool"] == ["" if other_reader else nchwc.DOMAIN]
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 32, 8, 8)).astype(np.float32),
             "w": rng.standard_normal((32, 32, 3, 3)).astype(np.float32)}
    for got, want in zip(_run_all(blocked, feeds), _run_all(standard, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _chain(ops, channels=32):
    """x [2, C, 8, 8] -> ops, each (op type, attributes, kernel input or None) in turn -> y."""
    nodes, inputs, value = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, channels, 8, 8))], "x"
    for i, (op, attrs, kernel) in enumerate(ops):
        if kernel is not None:
            inputs.append(helper.make_tensor_value_info(f"w{i}", TensorProto.FLOAT, kernel))
        nodes.append(helper.make_node(op, [value] + ([f"w{i}"] if kernel is not None else []), [f"v{i}"], **attrs))
        value = f"v{i}"
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(value, TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _same_numbers(standard, blocked, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in onnx.load_from_string(standard).graph.input}
    for got, want in zip(_run_all(blocked, feeds), _run_all(standard, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@needs_blocks
@pytest.mark.parametrize("pool", ["GlobalAveragePool", "GlobalMaxPool"])
def test_separable_convolutions_and_a_global_pool_stay_blocked_between_them(pool):
    """A pointwise convolution, then a depthwise one, a Relu and a global pool (SeparableConv2D's
    and DepthwiseConv2D's evaluation graph, kernels as inputs): the map stays blocked from the
    first convolution to the pool (no ReorderOutput then ReorderInput between the convolutions,
    the pool onnxruntime's blocked one); same numbers."""
    standard = _chain([("Conv", {}, (32, 32, 1, 1)), ("Conv", {"group": 32, "pads": [1, 1, 1, 1]}, (32, 1, 3, 3)),
                       ("Relu", {}, None), (pool, {}, None)])
    blocked = nchwc.use_nchwc(standard)
    nodes = onnx.load_from_string(blocked).graph.node
    assert [n.op_type for n in nodes if n.domain == nchwc.DOMAIN] == [
        "ReorderInput", "Conv", "Conv", pool, "ReorderOutput"]
    _same_numbers(standard, blocked)


@needs_blocks
def test_a_blocked_map_read_in_nchw_too_keeps_its_conversion():
    """Where something besides the next blocked convolution reads a blocked convolution's output,
    that output is still converted to NCHW for it, and the next convolution reads the blocks."""
    standard = _chain([("Conv", {}, (32, 32, 3, 3)), ("Neg", {}, None), ("Conv", {}, (32, 32, 1, 1))])
    graph = onnx.load_from_string(standard)
    graph.graph.node[2].input[0] = "v0"  # (the second convolution reads the first's output; Neg is an output too)
    graph.graph.output.append(helper.make_tensor_value_info("v1", TensorProto.FLOAT, None))
    standard = graph.SerializeToString()
    blocked = nchwc.use_nchwc(standard)
    nodes = onnx.load_from_string(blocked).graph.node
    assert [n.op_type for n in nodes if n.domain == nchwc.DOMAIN].count("ReorderInput") == 1  # (x's alone)
    assert [n.op_type for n in nodes if n.domain == nchwc.DOMAIN].count("ReorderOutput") == 2
    _same_numbers(standard, blocked)
