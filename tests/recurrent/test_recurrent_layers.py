"""SimpleRNN, LSTM and GRU: forward against numpy references of Keras's equations, gradients
against float64 finite differences, and a training graph whose size does not grow with the
sequence length."""
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

import kcompile
from kcompile.driver import compile_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients  # noqa: E402
from recurrence_reference import recurrence, sigmoid, random_weights  # noqa: E402,F401


def reference(kind, x, weights, units, return_sequences, go_backwards):
    return recurrence(kind, x, weights, units, return_sequences=return_sequences, go_backwards=go_backwards)[0]


CASES = [(kind, units, rs, gb, bias) for kind in ("SimpleRNN", "LSTM", "GRU")
         for units, rs, gb, bias in [(4, False, False, True), (3, True, False, True), (5, True, True, True),
                                     (2, False, True, False)]]


@pytest.mark.parametrize("kind, units, return_sequences, go_backwards, use_bias", CASES)
def test_forward_matches_keras_equations(kind, units, return_sequences, go_backwards, use_bias):
    src = f"""model r {{
        input x: float32[7, 3]
        y = {kind}({units}, return_sequences={str(return_sequences).lower()},
                   go_backwards={str(go_backwards).lower()}, use_bias={str(use_bias).lower()})
        output y
    }}"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(len(kind) + units)
    weights = random_weights(m, rng)
    x = rng.normal(size=(4, 7, 3)).astype(np.float32)
    want = reference(kind, x.astype(np.float64), weights, units, return_sequences, go_backwards)
    np.testing.assert_allclose(m.predict(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["SimpleRNN", "GRU"])
def test_small_batches_run_the_fused_op_and_large_ones_the_scan_alike(kind):
    # (an If on the batch size: ONNX's RNN/GRU op up to FUSED_MAX_BATCH rows, a Scan beyond)
    from kcompile.ops import OPS
    src = f"""model r {{
        input x: float32[7, 3]
        y = {kind}(4, return_sequences=true)(x)
        output y
    }}"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(5)
    weights = random_weights(m, rng)
    branches = {a.name: {n.op_type for n in a.g.node} for node in m.onnx_model().graph.node if node.op_type == "If"
                for a in node.attribute}
    assert {"RNN" if kind == "SimpleRNN" else "GRU"} <= branches["then_branch"] and "Scan" in branches["else_branch"]
    limit = OPS[kind].FUSED_MAX_BATCH
    for n in (1, limit, limit + 1, 2 * limit + 3):
        x = rng.normal(size=(n, 7, 3)).astype(np.float32)
        want = reference(kind, x.astype(np.float64), weights, 4, True, False)
        np.testing.assert_allclose(m.predict(x, batch_size=n), want, rtol=1e-5, atol=1e-5, err_msg=f"{n} rows")


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_float64_inference_matches_keras_equations(kind):
    # (onnxruntime's fused LSTM computes float32 only: a float64 LSTM runs as a Scan)
    src = f"""model r {{
        input x: float64[7, 3]
        y = Bidirectional({kind}(4, return_sequences=true), merge_mode=sum)(x)
        output y
    }}"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(11)
    weights = random_weights(m, rng)
    x = rng.normal(size=(4, 7, 3))
    half = len(weights) // 2
    want = (reference(kind, x, weights[:half], 4, True, False) +
            reference(kind, x, weights[half:], 4, True, True)[:, ::-1])
    got = m.predict(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_keras_weight_shapes_and_initial_values():
    src = """model w {
        input x: float32[5, 3]
        a = LSTM(4, return_sequences=true)(x)
        b = GRU(2, return_sequences=true)(a)
        y = SimpleRNN(6)(b)
        output y
    }"""
    m = kcompile.compile_string(src)
    shapes = [w.shape for w in m.get_weights()]
    assert shapes == [(3, 16), (4, 16), (16,), (4, 6), (2, 6), (2, 6), (2, 6), (6, 6), (6,)]
    lstm_bias = m.get_weights()[2]
    np.testing.assert_array_equal(lstm_bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])  # unit_forget_bias
    recurrent = m.get_weights()[1]
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(4), atol=1e-5)  # orthogonal


@pytest.mark.parametrize("body, shape", [
    ("y = SimpleRNN(4, return_sequences=true)(x)", (2, 5, 3)),
    ("y = SimpleRNN(3, go_backwards=true)(x)", (3, 6, 2)),
    ("y = SimpleRNN(4, activation=relu, return_sequences=true)(x)", (2, 5, 3)),
    ("y = SimpleRNN(3, activation=sigmoid, use_bias=false, go_backwards=true)(x)", (3, 6, 2)),
    ("y = LSTM(4, return_sequences=true)(x)", (2, 5, 3)),
    ("y = LSTM(3)(x)", (3, 6, 2)),
    ("y = LSTM(3, use_bias=false, go_backwards=true, return_sequences=true)(x)", (2, 4, 2)),
    ("y = LSTM(2, return_sequences=true)(x)", (4, 4, 9)),  # (more features than 4u; as many rows as steps)
    ("y = GRU(4, return_sequences=true)(x)", (2, 5, 3)),
    ("y = GRU(3, go_backwards=true)(x)", (3, 6, 2)),
    ("y = GRU(3, use_bias=false)(x)", (2, 4, 2)),
    ("h = LSTM(4, return_sequences=true)(x)\n y = GRU(2)(h)", (2, 5, 3)),
    ("y = LSTM(3, activation=relu, recurrent_activation=tanh, return_sequences=true)(x)", (2, 5, 3)),
    ("y = LSTM(3, activation=sigmoid, recurrent_activation=relu, go_backwards=true)(x)", (3, 6, 2)),
    ("y = GRU(3, activation=relu, recurrent_activation=tanh, return_sequences=true)(x)", (2, 5, 3)),
    ("y = GRU(3, activation=sigmoid, recurrent_activation=relu, reset_after=false)(x)", (3, 6, 2)),
    ("Flatten()\n Dense(12)\n Reshape((4, 3))\n y = SimpleRNN(2)", (2, 6)),
])
# (saved: the gates the training form keeps)
@pytest.mark.parametrize("training", [False, True], ids=["recomputed", "saved"])
def test_gradients_match_finite_differences(body, shape, training):
    src = "model m {\n input x: float64[%s]\n %s\n output y\n}" % (", ".join(map(str, shape[1:])), body)
    checked, _ = check_gradients(src, {"x": np.random.default_rng(3).normal(size=shape)}, training=training)
    assert checked > 0


def scan_axes(source):
    """Each Scan's *_axes attributes in a training step, in order (a GRU's or SimpleRNN's
    forward Scan is the else branch of an If: fused for few rows)."""
    import onnx

    def scans(graph):
        for n in graph.node:
            if n.op_type == "Scan":
                yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH and n.op_type == "If":
                    yield from scans(a.g)
    graph = onnx.load_from_string(kcompile.compile_string(source)._step_graph()).graph
    return [{a.name: list(a.ints) for a in n.attribute if a.name.endswith("_axes")} for n in scans(graph)]


@pytest.mark.parametrize("layer, forward, read, emitted", [("LSTM(4", [0] * 7, 3, [0]), ("GRU(4", [0] * 5, 2, [0]),
                                                           ("GRU(4, reset_after=false", [0] * 4, 5, [0]),
                                                           ("SimpleRNN(4", [0], 1, [0])])
def test_the_training_form_keeps_its_gradients_sequences_time_major(layer, forward, read, emitted):
    """The sequences the recurrences' training forms keep for their gradient ops are [T, N, u]
    (h too: the batch-major sequence is then its Transpose, made for what reads it), and the
    gate gradients their reverse Scans emit too, so that neither Scan transposes them (an
    input of fewer features than the gates' units is transposed instead of its projection); the
    gradients match finite differences above."""
    axes = scan_axes(f"""model s {{
        input x: float32[7, 3]
        h = {layer}, return_sequences=true)(x)
        y = Dense(1)(h)
        output y
        train {{ loss = mse; optimizer = SGD() }}
    }}""")
    backward = axes[1]
    assert axes[0] == {"scan_input_axes": [0], "scan_output_axes": forward}
    # (the sequence's gradient from the loss, then those the forward kept)
    assert backward["scan_input_axes"] == [1] + [0] * read and backward["scan_output_axes"] == emitted


@pytest.mark.parametrize("layer, kept", [("LSTM(4", 7), ("GRU(4", 5), ("GRU(4, reset_after=false", 4),
                                         ("SimpleRNN(4", 1)])
def test_a_sequence_only_the_gradient_reads_is_kept_time_major_alone(layer, kept):
    """Where the loss reads only the last state, the recurrences' training forms make no
    batch-major sequence: the forward Scan emits what the gradient reads, h too, time-major."""
    axes = scan_axes(f"""model s {{
        input x: float32[7, 3]
        y = Dense(1)({layer})(x))
        output y
        train {{ loss = mse; optimizer = SGD() }}
    }}""")
    assert axes[0]["scan_output_axes"] == [0] * kept


@pytest.mark.parametrize("layer", ["GRU(4, reset_after=true", "GRU(4, reset_after=false", "SimpleRNN(4"])
@pytest.mark.parametrize("sequences", ["true", "false"])
@pytest.mark.parametrize("initial", [False, True])
def test_a_small_batch_trains_through_the_fused_op_as_through_the_scan(layer, sequences, initial, monkeypatch):
    """At most FUSED_MAX_BATCH rows run onnxruntime's fused GRU or RNN, whose branch takes h and
    the gates the gradient reads from the sequence it returns (time-major); the step moves the
    weights as the Scan's branch does, with the sequence read by the loss or by the gradient alone."""
    from kcompile.ops import recurrent
    start = "(x, initial_state=[h0])" if initial else "(x)"
    src = f"""model g {{
        input x: float32[6, 3]
        input h0: float32[4]
        s = {layer}, return_sequences={sequences}){start}
        y = Dense(2)(s)
        output y
        train {{ loss = mse; optimizer = SGD(learning_rate=0.5) }}
    }}"""
    rng = np.random.default_rng(3)
    x, h0 = rng.normal(size=(4, 6, 3)).astype(np.float32), rng.normal(size=(4, 4)).astype(np.float32)
    y = rng.normal(size=(4, 6, 2) if sequences == "true" else (4, 2)).astype(np.float32)
    fused = kcompile.compile_string(src)
    weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in fused.get_weights()]
    fused.set_weights(weights)
    monkeypatch.setattr(getattr(recurrent, layer.split("(")[0]), "FUSED_MAX_BATCH", 0)
    scanned = kcompile.compile_string(src)
    scanned.set_weights(weights)
    losses = [m.train_on_batch({"x": x, "h0": h0}, y) for m in (fused, scanned)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for a, b, before in zip(fused.get_weights(), scanned.get_weights(), weights):
        assert not np.allclose(a, before)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def step_graph_size(kind, steps):
    src = f"""model s {{
        input tokens: int64[{steps}]
        Embedding(50, 8)
        {kind}(16)
        y = Dense(1, activation=sigmoid)
        output y
        train {{
            loss = binary_crossentropy
            optimizer = Adam()
        }}
    }}"""
    return len(compile_source(src, "s.kdl").training().step.nx)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_training_graph_does_not_grow_with_sequence_length(kind):
    sizes = {steps: step_graph_size(kind, steps) for steps in (10, 100, 1000)}
    assert sizes[10] == sizes[100] == sizes[1000], sizes


def test_lstm_inference_and_training_forward_agree():
    """Inference lowers LSTM to ONNX's fused op, training to a Scan: same numbers."""
    src = """model a {
        input x: float32[6, 3]
        y = Dense(1)(LSTM(5)(x))
        output y
        train { loss = mse
                optimizer = SGD(learning_rate=0.0) }
    }"""
    m = kcompile.compile_string(src, seed=2)
    x = np.random.default_rng(0).normal(size=(8, 6, 3)).astype(np.float32)
    y = np.zeros((8, 1), np.float32)
    expected = float(np.mean(m.predict(x) ** 2))
    np.testing.assert_allclose(m.train_on_batch(x, y), expected, rtol=1e-5)  # training graph's loss
    np.testing.assert_allclose(m.evaluate(x, y, verbose=0), expected, rtol=1e-5)


@pytest.mark.parametrize("kind, merge_mode, return_sequences", [
    ("LSTM", "concat", False), ("GRU", "sum", True), ("SimpleRNN", "ave", True), ("LSTM", "mul", True)])
def test_bidirectional_matches_two_keras_passes(kind, merge_mode, return_sequences):
    src = f"""model b {{
        input x: float32[6, 3]
        y = Bidirectional({kind}(4, return_sequences={str(return_sequences).lower()}), merge_mode={merge_mode})(x)
        output y
    }}"""
    m = kcompile.compile_string(src)
    names = m.weight_names
    assert names[0] == f"bidirectional/forward_{kind.lower().replace('simplernn', 'simple_rnn')}/kernel"
    rng = np.random.default_rng(7)
    weights = random_weights(m, rng)
    x = rng.normal(size=(3, 6, 3)).astype(np.float32)
    half = len(weights) // 2
    forward = reference(kind, x.astype(np.float64), weights[:half], 4, return_sequences, False)
    backward = reference(kind, x.astype(np.float64), weights[half:], 4, return_sequences, True)
    if return_sequences:
        backward = backward[:, ::-1]
    want = {"concat": np.concatenate([forward, backward], -1), "sum": forward + backward,
            "ave": (forward + backward) / 2, "mul": forward * backward}[merge_mode]
    np.testing.assert_allclose(m.predict(x), want, rtol=1e-5, atol=1e-5)


def test_bidirectional_gradients():
    src = "model m {\n input x: float64[5, 3]\n y = Bidirectional(GRU(3, return_sequences=true))(x)\n output y\n}"
    checked, _ = check_gradients(src, {"x": np.random.default_rng(4).normal(size=(2, 5, 3))})
    assert checked > 0


def test_return_state_gives_the_last_states():
    src = """model s {
        input x: float32[5, 3]
        seq, h, c = LSTM(4, return_sequences=true, return_state=true)(x)
        last, g = GRU(2, return_state=true)(seq)
        y = concat(h, c, last, g)
        output y
    }"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(1)
    weights = random_weights(m, rng)
    x = rng.normal(size=(3, 5, 3)).astype(np.float32)
    seq = reference("LSTM", x.astype(np.float64), weights[:3], 4, True, False)
    h = seq[:, -1]
    # c from the same recurrence
    kernel, recurrent, bias = weights[:3]
    hh, c = np.zeros((3, 4)), np.zeros((3, 4))
    for t in range(5):
        z = x[:, t] @ kernel + hh @ recurrent + bias
        i, f, g, o = (z[:, k * 4:(k + 1) * 4] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        hh = sigmoid(o) * np.tanh(c)
    last = reference("GRU", seq, weights[3:], 2, False, False)
    np.testing.assert_allclose(m.predict(x), np.concatenate([h, c, last, last], -1), rtol=1e-5, atol=1e-5)


def test_return_state_gradients_and_errors():
    src = ("model m {\n input x: float64[4, 2]\n seq, h, c = LSTM(3, return_sequences=true, return_state=true)(x)\n"
           " y = concat(c, mean(seq, axis=1))\n output y\n}")
    checked, _ = check_gradients(src, {"x": np.random.default_rng(2).normal(size=(2, 4, 2))})
    assert checked > 0
    with pytest.raises(kcompile.KcompileError, match="2 names for 1 value") as err:
        kcompile.compile_string("model m {\n input x: float32[4, 2]\n a, b = GRU(3)(x)\n output a\n}")
    assert err.value.diagnostics[0].hint == "return_state=true makes a recurrent layer give its states too"


def masked_reference(kind, x, mask, weights, units, return_sequences):
    """Keras's masking: a masked step keeps the previous state, and outputs it again."""
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    n, steps, _ = x.shape
    h, c = np.zeros((n, units)), np.zeros((n, units))
    outputs = []
    for t in range(steps):
        xt, m = x[:, t], mask[:, t:t + 1]
        if kind == "SimpleRNN":
            hn, cn = np.tanh(xt @ kernel + h @ recurrent + bias), c
        elif kind == "LSTM":
            z = xt @ kernel + h @ recurrent + bias
            i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
            cn = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            hn = sigmoid(o) * np.tanh(cn)
        else:
            xw, hr = xt @ kernel + bias[0], h @ recurrent + bias[1]
            z = sigmoid(xw[:, :units] + hr[:, :units])
            r = sigmoid(xw[:, units:2 * units] + hr[:, units:2 * units])
            hh = np.tanh(xw[:, 2 * units:] + r * hr[:, 2 * units:])
            hn, cn = z * h + (1 - z) * hh, c
        h, c = m * hn + (1 - m) * h, m * cn + (1 - m) * c
        outputs.append(h)
    return np.stack(outputs, 1) if return_sequences else h


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_mask_zero_skips_padded_steps(kind, return_sequences):
    src = f"""model m {{
        input tokens: int64[6]
        Embedding(10, 3, mask_zero=true)
        Dropout(0.1)
        y = {kind}(4, return_sequences={str(return_sequences).lower()})
        output y
    }}"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(3)
    weights = random_weights(m, rng)
    ids = np.array([[3, 1, 0, 0, 0, 0], [0, 0, 4, 5, 6, 7], [2, 0, 9, 0, 8, 1]])
    x = weights[0][ids].astype(np.float64)
    want = masked_reference(kind, x, (ids > 0).astype(np.float64), weights[1:], 4, return_sequences)
    np.testing.assert_allclose(m.predict(ids), want, rtol=1e-5, atol=1e-5)
    if not return_sequences:  # padding after the sequence does not change its result
        short = kcompile.compile_string(src.replace("int64[6]", "int64[2]"))
        short.set_weights(weights)
        np.testing.assert_allclose(m.predict(ids[:1]), short.predict(ids[:1, :2]), rtol=1e-5, atol=1e-6)


def masked_source(kind, units, return_sequences):
    """A recurrence of ``kind`` over sequences of any length (T) whose all-zero steps are masked."""
    return f"""model m {{
        input x: float32[T, 3]
        h = Masking(mask_value=0.0)(x)
        y = {kind}({units}, return_sequences={str(return_sequences).lower()})(h)
        output y
    }}"""


@pytest.mark.parametrize("kind, fused", [("LSTM", "LSTM"), ("GRU", "GRU"), ("SimpleRNN", "RNN")])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_inference_runs_the_fused_op_over_each_rows_counted_steps(kind, fused, return_sequences):
    """In inference a masked recurrence is onnxruntime's fused op over each row's counted steps
    moved first, its sequence_lens their counts (the LSTM always, no Scan; the GRU and
    SimpleRNN for the few rows where they take the fused op): a row of no counted steps gives
    zeros, masked steps before the first counted one output zeros, and the others repeat the
    last counted output; the sequence length is known only at run time."""
    m = kcompile.compile_string(masked_source(kind, 4, return_sequences))
    import onnx

    def nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(attr.g)
    graph = onnx.load_from_string(m._inference_graph()).graph
    recurrence, = [n for n in nodes(graph) if n.op_type == fused]
    assert recurrence.input[4]  # (sequence_lens)
    assert kind != "LSTM" or "Scan" not in {n.op_type for n in graph.node}
    rng = np.random.default_rng(4)
    weights = random_weights(m, rng)
    x = rng.normal(size=(4, 7, 3))
    counted = np.ones((4, 7))
    counted[0] = 0  # nothing counted
    counted[1, :4] = 0  # the first steps masked
    counted[2, [1, 2, 5]] = 0  # steps in the middle and at the end
    x = x * counted[..., None]
    want = masked_reference(kind, x, counted, weights, 4, return_sequences)
    got = m.predict(x.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not got[0].any()


@pytest.mark.parametrize("kind", ["GRU", "SimpleRNN"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_inference_over_many_rows_scans_each_rows_counted_steps_unmasked(kind, return_sequences):
    """Beyond the fused op's few rows, a masked GRU's or SimpleRNN's inference is a Scan without
    the mask's blending over each row's counted steps moved first; each row's last state is the
    Scan's after its own count of steps (none counted: zeros)."""
    m = kcompile.compile_string(masked_source(kind, 5, return_sequences))
    import onnx
    graph = onnx.load_from_string(m._inference_graph()).graph
    branch, = [a.g for n in graph.node if n.op_type == "If" for a in n.attribute if a.name == "else_branch"]
    scan, = [n for n in branch.node if n.op_type == "Scan"]
    body, = [a.g for a in scan.attribute if a.name == "body"]
    assert [i.name for i in body.input] == ["h_prev", "xw_t"]  # (no step mask)
    rng = np.random.default_rng(6)
    weights = random_weights(m, rng)
    rows, steps = 40, 9
    counted = (rng.random((rows, steps)) < 0.6).astype(np.float64)
    counted[0] = 0  # nothing counted
    counted[1] = 1  # every step
    counted[2, :6] = 0  # the first steps masked
    counted[3, 1:] = 0  # the first step alone
    x = rng.normal(size=(rows, steps, 3)) * counted[..., None]
    want = masked_reference(kind, x, counted, weights, 5, return_sequences)
    got = m.predict(x.astype(np.float32), batch_size=rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not got[0].any()
    np.testing.assert_allclose(m.predict(x[:3].astype(np.float32)), want[:3], rtol=1e-5, atol=1e-6)  # (fused)


STACKED_MASKED = """model m {{
    input x: float32[9, 3]
    h = Masking(mask_value=0.0)(x)
    s = Bidirectional({kind}(5, return_sequences=true))(h)
    y = {kind}(4)(s)
    output y
}}"""


@pytest.mark.parametrize("kind", ["GRU", "SimpleRNN"])
def test_fused_at_any_batch_runs_every_recurrence_fused_with_the_scans_results(kind):
    """fused_at_any_batch raises each fused-or-Scan threshold below the rows it is given past any
    batch (masked and unmasked, in a Bidirectional too), so that 40 rows run the fused ops, with the
    Scans' results; where no threshold is below the rows, the bytes come back unchanged."""
    import onnx
    import onnxruntime as ort

    from kcompile.ops import OPS
    from kcompile.ops.recurrent import FUSED_ROWS, fused_at_any_batch
    m = kcompile.compile_string(STACKED_MASKED.format(kind=kind))
    rng = np.random.default_rng(8)
    random_weights(m, rng)
    plain = m._inference_graph()
    limit = OPS[kind].FUSED_MAX_BATCH

    def thresholds(model_bytes):
        return [int(numpy_helper.to_array(t)) for t in onnx.load_from_string(model_bytes).graph.initializer
                if t.name.startswith(FUSED_ROWS)]
    assert thresholds(plain) == [limit] * 3
    assert fused_at_any_batch(plain, limit) is plain
    fused = fused_at_any_batch(plain, limit + 1)
    assert thresholds(fused) == [2 ** 62] * 3
    counted = (rng.random((40, 9)) < 0.7).astype(np.float32)
    counted[0] = 0
    x = rng.normal(size=(40, 9, 3)).astype(np.float32) * counted[..., None]
    scanned = m.predict(x, batch_size=40)
    session = ort.InferenceSession(fused, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], scanned, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused_faster", [True, False])
def test_predict_in_parts_times_the_fused_recurrence_against_the_scan(monkeypatch, turns, forced_parts_form,
                                                                     fused_faster):
    """A large predict's one-core parts run more rows a run than the fused GRU's threshold: the plain
    graph (a Scan there) and the one with the fused op at any batch are both made and timed, once;
    the one kept gives the same predictions, and after new weights only it is made again."""
    from kcompile.ops import recurrent
    from kcompile.runtime import model as runtime_model
    monkeypatch.setattr(runtime_model, "PREDICT_CACHE_BYTES", 1 << 16)  # (parts at a few hundred rows)
    rewritten, timed = forced_parts_form(recurrent, "fused_at_any_batch", int(fused_faster))
    from kcompile.backend import winograd
    convolutions = []  # (Winograd's rewrite is tried once, while no form is known: it has nothing to rewrite here)
    real_winograd = winograd.use_winograd
    monkeypatch.setattr(winograd, "use_winograd", lambda b: convolutions.append(1) or real_winograd(b))
    m = kcompile.compile_string(STACKED_MASKED.format(kind="GRU"))
    random_weights(m, np.random.default_rng(9))
    rows = runtime_model.cache_rows(m.manifest["activation_bytes_per_sample"], share=4)
    assert rows > recurrent.GRU.FUSED_MAX_BATCH
    counted = (np.random.default_rng(1).random((800, 9)) < 0.7).astype(np.float32)
    x = np.random.default_rng(2).normal(size=(800, 9, 3)).astype(np.float32) * counted[..., None]
    whole = m.predict(x, batch_size=800)
    assert timed == [[rows, rows]] and len(rewritten) == 1
    assert m._parts_form == ("fused" if fused_faster else "plain")
    np.testing.assert_allclose(m.predict(x[:10]), whole[:10], rtol=1e-5, atol=1e-6)  # (one run: the plain graph)
    np.testing.assert_allclose(m.predict(x, batch_size=800), whole, rtol=1e-5, atol=1e-6)
    assert len(timed) == 1
    made = len(rewritten)  # (once for the weights as inputs, once for the folded session that follows)
    m.set_weights([w * 0.5 for w in m.get_weights()])  # (new weights: a new session, its parts ...)
    m.predict(x, batch_size=800)  # (... the first predict after binds the weights as inputs)
    halved = m.predict(x, batch_size=800)
    # (... made again, in the form timed before; where that was the plain graph, without the rewrite)
    assert len(rewritten) == made + (2 if fused_faster else 0) and len(timed) == 1
    assert len(convolutions) == 1
    np.testing.assert_allclose(halved[:10], m.predict(x[:10]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_bidirectional_sequences_are_zero_at_masked_steps(kind, merge_mode):
    """Keras's Bidirectional with return_sequences sets zero_output_for_mask on both directions:
    each outputs 0 at the masked steps (so their merge is 0), its masked recurrence elsewhere.
    (A recurrent layer alone repeats its output there: test_mask_zero_skips_padded_steps.)"""
    src = f"""model m {{
        input tokens: int64[6]
        Embedding(10, 3, mask_zero=true)
        y = Bidirectional({kind}(4, return_sequences=true), merge_mode={merge_mode})
        output y
    }}"""
    m = kcompile.compile_string(src)
    weights = random_weights(m, np.random.default_rng(5))
    ids = np.array([[3, 1, 0, 0, 0, 0], [0, 0, 4, 5, 0, 7], [2, 6, 9, 3, 8, 1]])
    x, mask = weights[0][ids].astype(np.float64), (ids > 0).astype(np.float64)
    half = 1 + (len(weights) - 1) // 2
    forward = masked_reference(kind, x, mask, weights[1:half], 4, True)
    backward = masked_reference(kind, x[:, ::-1], mask[:, ::-1], weights[half:], 4, True)[:, ::-1]
    merged = {"concat": np.concatenate([forward, backward], -1), "sum": forward + backward,
              "ave": (forward + backward) / 2, "mul": forward * backward}[merge_mode]
    got = m.predict(ids)
    assert (got[ids == 0] == 0).all()
    np.testing.assert_allclose(got, merged * mask[..., None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["SimpleRNN(3, return_sequences=true)", "LSTM(3, return_sequences=true)",
                                   "GRU(3)", "LSTM(2, go_backwards=true)", "Bidirectional(GRU(2))",
                                   "Bidirectional(LSTM(2, return_sequences=true), merge_mode=mul)",
                                   "LSTM(3, activation=relu, recurrent_activation=tanh, return_sequences=true)",
                                   "GRU(3, activation=relu, recurrent_activation=tanh, return_sequences=true)"])
# (saved: the gates the training form keeps)
@pytest.mark.parametrize("training", [False, True], ids=["recomputed", "saved"])
def test_masked_gradients(layer, training):
    src = ("model m {\n input tokens: int64[5]\n Embedding(8, 3, mask_zero=true, dtype=float64)\n"
           f" y = {layer}\n output y\n}}")
    ids = np.array([[1, 2, 0, 0, 0], [0, 3, 4, 0, 5], [6, 7, 1, 2, 3]])
    checked, _ = check_gradients(src, {"tokens": ids}, training=training)
    assert checked > 0


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_input_dropout_one_mask_per_sequence(kind):
    src = f"""model d {{
        input x: float32[5, 3]
        y = {kind}(4, dropout=0.5)
        output y
        train {{
            loss = mse
            optimizer = SGD(learning_rate=0.0)
        }}
    }}"""
    m = kcompile.compile_string(src)
    assert [n["shape"] for n in m.manifest["training"]["noise"]] == [["N", 1, 3]]  # the same at every step
    x, y = np.ones((64, 5, 3), np.float32), np.zeros((64, 4), np.float32)
    inference = m.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(inference, float(np.mean(m.predict(x) ** 2)), rtol=1e-5)
    assert abs(m.train_on_batch(x, y) - inference) > 1e-4  # dropout acts in training only
    plain = kcompile.compile_string(src.replace("dropout=0.5", "dropout=0.0"))
    plain.set_weights(m.get_weights())
    np.testing.assert_allclose(plain.train_on_batch(x, y), inference, rtol=1e-5)


def dropped_reference(kind, x, weights, units, keep):
    """Keras 3's recurrent dropout: gate g's block of the recurrent kernel sees h_{t-1} * keep[:, g]
    (one mask per sequence, the same at every step); the GRU's blend uses the undropped h."""
    kernel, recurrent, bias = weights
    n, steps, _ = x.shape
    h, c = np.zeros((n, units)), np.zeros((n, units))
    outputs = []
    for t in range(steps):
        hr = np.concatenate([(h * keep[:, g]) @ recurrent[:, g * units:(g + 1) * units]
                             for g in range(keep.shape[1])], axis=1)
        if kind == "SimpleRNN":
            h = np.tanh(x[:, t] @ kernel + hr + bias)
        elif kind == "LSTM":
            z = x[:, t] @ kernel + hr + bias
            i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            xw, hr = x[:, t] @ kernel + bias[0], hr + bias[1]
            z = sigmoid(xw[:, :units] + hr[:, :units])
            r = sigmoid(xw[:, units:2 * units] + hr[:, units:2 * units])
            hh = np.tanh(xw[:, 2 * units:] + r * hr[:, 2 * units:])
            h = z * h + (1 - z) * hh
        outputs.append(h)
    return np.stack(outputs, 1)


@pytest.mark.parametrize("kind, gates", [("SimpleRNN", 1), ("LSTM", 4), ("GRU", 3)])
def test_recurrent_dropout_matches_keras_equations(kind, gates):
    rate, units = 0.4, 4
    src = f"""model d {{
        input x: float32[5, 3]
        y = {kind}({units}, recurrent_dropout={rate}, return_sequences=true)
        output y
        train {{
            loss = mse
            optimizer = SGD(learning_rate=0.0)
        }}
    }}"""
    m = kcompile.compile_string(src, seed=3)
    noise = m.manifest["training"]["noise"]
    assert [n["shape"] for n in noise] == [["N", gates, units]]  # one mask per sequence and gate
    rng = np.random.default_rng(5)
    weights = random_weights(m, rng)
    x, y = rng.normal(size=(6, 5, 3)).astype(np.float32), rng.normal(size=(6, 5, units)).astype(np.float32)
    # The runtime's noise for the first step, drawn as kcompile.runtime.training draws it.
    u = np.random.default_rng([m.seed, 7919, 0]).random((6, gates, units), dtype=np.float32)
    keep = (u >= rate) / (1 - rate)
    want = dropped_reference(kind, x.astype(np.float64), [w.astype(np.float64) for w in weights], units, keep)
    np.testing.assert_allclose(m.train_on_batch(x, y), np.mean((want - y) ** 2), rtol=1e-5)
    # Inference has no dropout: the plain recurrence.
    plain = reference(kind, x.astype(np.float64), weights, units, True, False)
    np.testing.assert_allclose(m.predict(x), plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.evaluate(x, y, verbose=0), np.mean((plain - y) ** 2), rtol=1e-5)


@pytest.mark.parametrize("layer", ["SimpleRNN(3, recurrent_dropout=0.3, return_sequences=true)",
                                   "LSTM(3, recurrent_dropout=0.3, dropout=0.2)",
                                   "GRU(3, recurrent_dropout=0.3, return_sequences=true)",
                                   "Bidirectional(LSTM(2, recurrent_dropout=0.5))"])
def test_recurrent_dropout_gradients(layer):
    src = f"model m {{\n input x: float64[4, 3]\n y = {layer}\n output y\n}}"
    x = np.random.default_rng(1).normal(size=(3, 4, 3))
    checked, _ = check_gradients(src, {"x": x}, training=True)
    assert checked > 0


def test_recurrent_dropout_with_masked_steps_gradients():
    src = ("model m {\n input tokens: int64[5]\n Embedding(8, 3, mask_zero=true, dtype=float64)\n"
           " y = GRU(3, recurrent_dropout=0.4, return_sequences=true)\n output y\n}")
    ids = np.array([[1, 2, 0, 0, 0], [0, 3, 4, 0, 5], [6, 7, 1, 2, 3]])
    checked, _ = check_gradients(src, {"tokens": ids}, training=True)
    assert checked > 0


def test_predict_of_no_rows_gives_empty_outputs_without_running_the_recurrence():
    """onnxruntime's recurrent kernels abort the process on zero rows (LSTM: terminate; a
    Bidirectional GRU: a floating-point exception), so this runs in a child process."""
    import subprocess
    code = """
import numpy as np, kcompile
m = kcompile.compile_string('''
model seq {
    input ids: int64[T]
    Embedding(20, 4, mask_zero=true)
    a = LSTM(3, return_sequences=true)
    b = Bidirectional(GRU(2))(a)
    output a, b
}
''')
a, b = m.predict(np.zeros((0, 5), np.int64))
print(a.shape, b.shape, a.dtype)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(0, 5, 3) (0, 4) float32"


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_simple_rnn_activations_match_keras_and_train_as_keras(activation, keras):
    """SimpleRNN(units, activation) as Keras's second argument, through the fused op (a few rows)
    and the Scan, and one SGD step equal to Keras's."""
    m = kcompile.compile_string(f"""model r {{
    input x: float32[7, 3]
    y = SimpleRNN(4, {activation}, return_sequences=true)(x)
    output y
    train {{ loss = mse; optimizer = SGD(0.1) }}
}}""")
    k = keras.Sequential([keras.Input((7, 3)), keras.layers.SimpleRNN(4, activation, return_sequences=True)])
    k.compile(loss="mse", optimizer=keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(5)
    k.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in k.get_weights()])
    m.set_weights(k.get_weights())
    for n in (2, 16):
        x = rng.normal(size=(n, 7, 3)).astype(np.float32)
        np.testing.assert_allclose(m.predict(x), k.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    y = rng.normal(size=(16, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(m.train_on_batch(x, y), float(k.train_on_batch(x, y)), rtol=1e-5)
    for a, b in zip(m.get_weights(), k.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["LSTM(4", "GRU(4", "GRU(4, reset_after=false"])
@pytest.mark.parametrize("activation, recurrent_activation", [("relu", "tanh"), ("sigmoid", "relu")])
@pytest.mark.parametrize("masked", [False, True])
def test_gated_activations_in_every_form(layer, activation, recurrent_activation, masked):
    """Keras's activation and recurrent_activation in the fused op, the Scan (a masked input) and
    training (3 rows: a GRU's fused op): predict matches numpy's recurrence, and one SGD step
    moves the weights as the finite-difference gradient of the loss says (a masked LSTM once
    computed tanh and sigmoid)."""
    src = f"""model m {{
        input ids: int64[5]
        Embedding(9, 3, mask_zero={str(masked).lower()})
        y = {layer}, activation={activation}, recurrent_activation={recurrent_activation})
        output y
        train {{ loss = mse; optimizer = SGD(learning_rate=0.5) }}
    }}"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(2)
    random_weights(m, rng)
    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [8, 0, 1, 2, 0]])
    table, kernel, recurrent, bias = (w.astype(np.float64) for w in m.get_weights())
    mask = (ids != 0).astype(np.float64) if masked else None

    def loss(weights, y):
        want = recurrence(layer[:layer.index("(")], weights[0][ids], weights[1:], 4, mask=mask,
                          reset_after="reset_after=false" not in layer, activation=activation,
                          recurrent_activation=recurrent_activation)[0]
        return want, np.mean((want - y) ** 2)
    weights = [table, kernel, recurrent, bias]
    want, _ = loss(weights, 0)
    np.testing.assert_allclose(m.predict(ids, verbose=0), want, rtol=1e-5, atol=1e-6)
    y = rng.normal(size=(3, 4))
    np.testing.assert_allclose(m.train_on_batch(ids, y), loss(weights, y)[1], rtol=1e-5)
    for w, before, after in zip(weights[1:], weights[1:], m.get_weights()[1:]):
        grad = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            keep = w[index]
            w[index] = keep + 1e-6
            up = loss(weights, y)[1]
            w[index] = keep - 1e-6
            grad[index] = (up - loss(weights, y)[1]) / 2e-6
            w[index] = keep
        np.testing.assert_allclose(after, before - 0.5 * grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_unroll_is_accepted_as_keras_and_needs_fixed_timesteps(kind):
    """Keras's unroll=True: the same outputs (the recurrence runs as the same Scan); like Keras,
    it refuses a sequence whose number of timesteps is not fixed."""
    src = "model m {\n input x: float32[5, 3]\n y = %s(4%s)\n output y\n}"
    plain, unrolled = (kcompile.compile_string(src % (kind, extra)) for extra in ("", ", unroll=true"))
    unrolled.set_weights(plain.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(unrolled.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    with pytest.raises(kcompile.KcompileError, match=f"{kind}\\(unroll=true\\) needs a fixed number of timesteps"):
        kcompile.compile_string(f"model m {{\n input x: float32[T, 3]\n y = {kind}(4, unroll=true)\n output y\n}}")
