"""``stateful=true`` on SimpleRNN, LSTM and GRU (Keras's): the last states of each batch start the
next batch (row i continues row i) in predict, evaluate and training, until reset_states();
the model's input declares the fixed batch (``input x: float32[5, 3], batch_size=2``). Chunked
predicts against the whole sequence at once and against Keras's stateful layer called eagerly;
training steps against Keras with the carried states fed as initial_state (Keras 3 on JAX does
not carry a stateful layer's states through its compiled predict and train steps); errors; save
and load (the states are not saved: a loaded model starts from zeros, as Keras 3)."""
import numpy as np
import pytest

import kcompile
from kcompile.errors import KcompileError, ShapeMismatch

from recurrence_reference import random_weights, recurrence

KINDS = ["SimpleRNN", "LSTM", "GRU"]
STATES = {"SimpleRNN": 1, "GRU": 1, "LSTM": 2}


def stateful(kind, batch, steps=5, units=4, options="", train="    train { loss = mse; optimizer = SGD(0.1) }\n"):
    return kcompile.compile_string(f"""model s {{
    input x: float32[{steps}, 3], batch_size={batch}
    y = {kind}({units}, stateful=true{options})
    output y
{train}}}""")


def whole(kind, steps, units=4, options=""):
    return kcompile.compile_string(f"""model w {{
    input x: float32[{steps}, 3]
    y = {kind}({units}{options})
}}""")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [2, 6])  # (the fused ONNX ops for a few rows, the Scan beyond)
def test_predict_in_chunks_continues_the_sequence(kind, batch):
    rng = np.random.default_rng(batch)
    m = stateful(kind, batch, options=", return_sequences=true")
    w = whole(kind, 20, options=", return_sequences=true")
    w.set_weights([rng.normal(scale=0.5, size=a.shape).astype(np.float32) for a in w.get_weights()])
    m.set_weights(w.get_weights())
    x = rng.normal(size=(batch, 20, 3)).astype(np.float32)
    want = w.predict(x)
    for _ in range(2):  # after reset_states it starts again from zeros
        got = np.concatenate([m.predict(x[:, t:t + 5], batch_size=batch) for t in range(0, 20, 5)], axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        m.reset_states()
    # two batches in one predict: the second batch's rows continue the first batch's rows
    two = m.predict(np.concatenate([x[:, :5], x[:, 5:10]]), batch_size=batch)
    np.testing.assert_allclose(two, np.concatenate([want[:, :5], want[:, 5:10]]), rtol=1e-5, atol=1e-5)
    # evaluate carries them too, and so does the layer's reset
    m.get_layer(m.layers[0].name).reset_states()
    m.evaluate(x[:, :5], want[:, :5], batch_size=batch, verbose=0)
    np.testing.assert_allclose(m.predict(x[:, 5:10], batch_size=batch), want[:, 5:10], rtol=1e-5, atol=1e-5)
    assert len(m.get_weights()) == len(w.get_weights())  # the states are not weights
    assert m.stateful and not w.stateful


@pytest.mark.parametrize("kind", KINDS)
def test_predict_matches_keras_stateful_layer(keras, kind):
    rng = np.random.default_rng(3)
    m = stateful(kind, 2, options=", return_sequences=true")
    weights = [rng.normal(scale=0.5, size=a.shape).astype(np.float32) for a in m.get_weights()]
    m.set_weights(weights)
    inp = keras.Input(shape=(5, 3), batch_size=2)
    layer = getattr(keras.layers, kind)(4, stateful=True, return_sequences=True)
    k = keras.Model(inp, layer(inp))
    k.set_weights(weights)
    x = rng.normal(size=(2, 15, 3)).astype(np.float32)
    for t in range(0, 15, 5):  # (an eager call: Keras's compiled predict does not carry them on JAX)
        np.testing.assert_allclose(m.predict(x[:, t:t + 5], batch_size=2), np.asarray(k(x[:, t:t + 5])),
                                   rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(m.get_layer(m.layers[0].name).states, layer.states):
        np.testing.assert_allclose(mine, np.asarray(theirs), rtol=1e-5, atol=1e-5)


def keras_truncated_bptt(keras, kind, weights, batches, lr=0.1):
    """Keras's stateful training as its TensorFlow backend runs it: each batch starts from the
    last batch's final states (computed before the update), which no gradient reaches. Returns
    the losses, the weights and the last states."""
    n = STATES[kind]
    x_in = keras.Input(shape=(5, 3), batch_size=2)
    s_in = [keras.Input(shape=(4,), batch_size=2) for _ in range(n)]
    layer = getattr(keras.layers, kind)(4, return_state=True)
    y, *last = layer(x_in, initial_state=s_in)
    train = keras.Model([x_in] + s_in, y)
    states_of = keras.Model([x_in] + s_in, last)
    train.compile(keras.optimizers.SGD(lr), "mse")
    train.set_weights(weights)
    states = [np.zeros((2, 4), np.float32)] * n
    losses = []
    for x, target in batches:
        following = states_of.predict([x] + states, verbose=0)
        following = following if isinstance(following, list) else [following]
        losses.append(float(train.train_on_batch([x] + states, target)))
        states = [np.asarray(s) for s in following]
    return losses, train.get_weights(), states


@pytest.mark.parametrize("kind", KINDS)
def test_training_matches_keras(keras, kind):
    rng = np.random.default_rng(7)
    m = stateful(kind, 2)
    weights = [rng.normal(scale=0.5, size=a.shape).astype(np.float32) for a in m.get_weights()]
    m.set_weights(weights)
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)  # two batches, the second continuing the first
    y = rng.normal(size=(4, 4)).astype(np.float32)
    batches = [(x[:2], y[:2]), (x[2:], y[2:])] * 2  # (fit's two epochs)
    want_losses, want_weights, want_states = keras_truncated_bptt(keras, kind, weights, batches)
    losses = [float(m.train_on_batch(xb, yb)) for xb, yb in batches[:2]]
    history = m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(losses, want_losses[:2], rtol=1e-4)
    np.testing.assert_allclose(history.history["loss"], [np.mean(want_losses[2:])], rtol=1e-4)
    for mine, theirs in zip(m.get_weights(), want_weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(m.get_layer(m.layers[0].name).states, want_states):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)


def test_wrong_batch_sizes_and_shuffle_are_refused():
    m = stateful("LSTM", 2)
    x, y = np.zeros((4, 5, 3), np.float32), np.zeros((4, 4), np.float32)
    with pytest.raises(ShapeMismatch, match=r"batches of exactly 2 rows .*got a batch of shape \(4, 5, 3\)"):
        m.predict(x)  # (batch_size=32: all 4 rows at once)
    with pytest.raises(ShapeMismatch, match=r"batches of exactly 2 rows .*shape \(1, 5, 3\)"):
        m.predict(x[:3], batch_size=2)
    with pytest.raises(ShapeMismatch, match="train_on_batch: .* exactly 2 rows"):
        m.train_on_batch(x[:3], y[:3])
    with pytest.raises(ShapeMismatch, match="fit: .* exactly 2 rows"):
        m.fit(x[:3], y[:3], batch_size=2, shuffle=False, verbose=0)
    with pytest.raises(ShapeMismatch, match="evaluate: .* exactly 2 rows"):
        m.evaluate(x, y, verbose=0)
    with pytest.raises(ValueError, match="shuffle=True would mix the sequences: pass shuffle=False"):
        m.fit(x, y, batch_size=2, verbose=0)
    assert m.iterations == 0
    with pytest.raises(AttributeError, match="not stateful"):
        whole("LSTM", 5).get_layer("lstm").reset_states()


@pytest.mark.parametrize("source, message, where", [
    ("input x: float32[5, 3]\n    LSTM(4, stateful=true)", "the model's batch size is not fixed", (3, 5)),
    ("input x: float32[5, 3], batch_size=0\n    LSTM(4, stateful=true)", "batch_size must be a positive integer",
     (2, 40)),
    ("input x: float32[5, 3], batch=2\n    LSTM(4, stateful=true)", "an input takes batch_size=..., got batch",
     (2, 29)),
    ("input x: float32[5, 3], batch_size=2\n    input z: float32[5, 3], batch_size=3\n    GRU(4, stateful=true)(z)",
     "input z has batch_size=3, another input 2", (3, 40)),
    ("input x: float32[5, 3], batch_size=2\n    LSTM(4, stateful=3)", "stateful': expected true or false", (3, 22)),
    ("input x: float32[5, 3], batch_size=2\n    layer r = GRU(4, stateful=true)\n    a = r(x)\n    b = r(x)",
     "called twice", (5, 9)),
])
def test_source_errors_are_located(source, message, where):
    with pytest.raises(KcompileError, match=message) as e:
        kcompile.compile_string(f"model s {{\n    {source}\n}}")
    d = e.value.diagnostics[0]
    assert (d.loc.line, d.loc.col) == where, str(e.value)


def test_a_block_input_takes_no_batch_size():
    with pytest.raises(KcompileError, match="belongs to a model's input"):
        kcompile.compile_string("block b() {\n    input x: float32[3], batch_size=2\n    Dense(2)(x)\n}\n"
                                "model s {\n    input x: float32[3]\n    b()(x)\n}")


def test_save_and_load_keep_the_states_spec_not_their_values(tmp_path):
    """As Keras 3, whose states are not variables of the model: a loaded model starts from zeros."""
    m = stateful("GRU", 2, options=", return_sequences=true")
    x = np.random.default_rng(1).normal(size=(2, 10, 3)).astype(np.float32)
    first = m.predict(x[:, :5], batch_size=2)
    second = m.predict(x[:, 5:], batch_size=2)
    loaded = kcompile.load(m.save(tmp_path / "ck"))
    assert loaded.manifest["states"] == [{"name": "gru/h", "dtype": "float32", "shape": [2, 4]}]
    assert [i.name for i in loaded.inputs] == ["x"] and [o.name for o in loaded.outputs] == ["y"]
    np.testing.assert_allclose(loaded.predict(x[:, :5], batch_size=2), first, rtol=1e-6)
    np.testing.assert_allclose(loaded.predict(x[:, 5:], batch_size=2), second, rtol=1e-5, atol=1e-6)
    # fit goes on from the states the predicts left (the original's are there too): its loss is the
    # mse against zeros of the original's next predict.
    third = m.predict(x[:, :5], batch_size=2)
    history = loaded.fit(x[:, :5], np.zeros((2, 5, 4), np.float32), batch_size=2, shuffle=False, verbose=0).history
    assert history["loss"] == [pytest.approx(float(np.mean(np.square(third))), rel=1e-5)]


def test_bidirectional_carries_both_directions():
    """Each direction carries its own last states into the next batch, as Keras's stateful
    Bidirectional: the backward layer's are those after it read the batch's first step."""
    m = kcompile.compile_string("""model s {
    input x: float32[5, 3], batch_size=2
    y = Bidirectional(LSTM(4, stateful=true))
    train { loss = mse; optimizer = SGD(0.1) }
}""")
    assert [s["name"] for s in m.manifest["states"]] == [
        "bidirectional/forward_lstm/h", "bidirectional/forward_lstm/c",
        "bidirectional/backward_lstm/h", "bidirectional/backward_lstm/c"]
    rng = np.random.default_rng(5)
    weights = random_weights(m, rng)
    x = rng.normal(size=(2, 10, 3)).astype(np.float32)
    got = [m.predict(x[:, :5], batch_size=2), m.predict(x[:, 5:], batch_size=2)]
    f_states, b_states, want = (None, None), (None, None), []
    for chunk in (x[:, :5], x[:, 5:]):
        f, *f_states = recurrence("LSTM", chunk.astype(np.float64), weights[:3], 4, *f_states)
        b, *b_states = recurrence("LSTM", chunk.astype(np.float64), weights[3:], 4, *b_states, go_backwards=True)
        want.append(np.concatenate([f, b], axis=1))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
    assert np.abs(want[1][:, :4] - recurrence("LSTM", x[:, 5:], weights[:3], 4)[0]).max() > 1e-3  # (the states matter)
    m.get_layer("bidirectional").reset_states()
    np.testing.assert_allclose(m.predict(x[:, :5], batch_size=2), got[0], rtol=1e-6)
    assert len(m.get_layer("bidirectional").states) == 4


def test_an_empty_predict_is_the_batch_size_error():
    m = kcompile.compile_string("""model m {
    input x: float32[3, 2], batch_size=2
    y = LSTM(4, stateful=true)(x)
    output y
}""")
    with pytest.raises(kcompile.errors.ShapeMismatch, match="batches of exactly 2 rows"):
        m.predict(np.zeros((0, 3, 2), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_masked_steps_are_skipped_as_without_stateful(kind):
    """A stateful layer behind Masking reads its input's mask as the plain layer does (its carried
    states are not an initial_state argument): the first batch equals the plain layer's outputs."""
    body = "    input x: float32[5, 3]{batch}\n    h = Masking(mask_value=0.0)(x)\n    y = {kind}(4{opts})(h)\n"
    m = kcompile.compile_string("model s {\n" + body.format(batch=", batch_size=2", kind=kind,
                                                            opts=", stateful=true") + "}")
    plain = kcompile.compile_string("model p {\n" + body.format(batch="", kind=kind, opts="") + "}")
    rng = np.random.default_rng(5)
    plain.set_weights([rng.normal(scale=0.5, size=a.shape).astype(np.float32) for a in plain.get_weights()])
    m.set_weights(plain.get_weights())
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    x[0, 3:] = 0.0  # (row 0's last two steps masked)
    np.testing.assert_allclose(m.predict(x, batch_size=2), plain.predict(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [3, 20])
def test_a_masked_recurrences_carried_states_pass_rows_with_no_counted_steps(kind, rows):
    """A masked layer's inference form starts from the carried states (as the fused ops' initial
    states, or the Scan's over each row's counted steps beyond their few rows) and keeps them for
    a row whose steps are all masked (onnxruntime's own last states are zeros there); three
    batches' outputs are those of one sequence of their steps."""
    body = "    input x: float32[4, 3]{batch}\n    h = Masking(mask_value=0.0)(x)\n    y = {kind}(3{opts})(h)\n"
    m = kcompile.compile_string("model s {\n" + body.format(batch=f", batch_size={rows}", kind=kind,
                                                            opts=", stateful=true, return_sequences=true") + "}")
    whole = kcompile.compile_string("model w {\n" + body.format(batch="", kind=kind, opts=", return_sequences=true")
                                    .replace("float32[4, 3]", "float32[12, 3]") + "}")
    rng = np.random.default_rng(2)
    m.set_weights([rng.normal(scale=0.5, size=a.shape).astype(np.float32) for a in m.get_weights()])
    whole.set_weights(m.get_weights())
    x = rng.normal(size=(rows, 12, 3)).astype(np.float32)
    x[0, 4:8] = 0.0  # row 0: nothing counted in the second batch
    x[1, 5:7] = 0.0
    x[2:] *= rng.random((rows - 2, 12, 1)) < 0.7
    batches = [m.predict(x[:, i:i + 4], batch_size=rows) for i in (0, 4, 8)]
    np.testing.assert_allclose(np.concatenate(batches, 1), whole.predict(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batches[1][0], np.repeat(batches[0][0, -1:], 4, axis=0))


def test_an_output_without_the_batch_axis_carries_the_states():
    """An output reduced over the batch (mean(h)) runs all rows at once: the states go in and
    come out there too (onnxruntime missed the state inputs)."""
    m = kcompile.compile_string("""model m {
    input x: float32[5, 3], batch_size=2
    h = GRU(4, stateful=true)
    y = mean(h)
    output y
}""")
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    first, second = m.predict(x, batch_size=2), m.predict(x, batch_size=2)
    # (the second starts from the first's states: the GRU's second half of one 10-step sequence)
    whole = kcompile.compile_string("model w {\n    input x: float32[10, 3]\n    h = GRU(4, return_sequences=true)\n"
                                    "    output h\n}\n")
    whole.set_weights(m.get_weights())
    steps = whole.predict(np.concatenate([x, x], 1))
    np.testing.assert_allclose([first, second], [steps[:, 4].mean(), steps[:, 9].mean()], rtol=1e-5, atol=1e-7)
    m.reset_states()
    np.testing.assert_allclose(m.predict(x, batch_size=2), first, rtol=1e-6)
    with pytest.raises(ShapeMismatch, match="batches of exactly 2 rows"):
        m.predict(x[:1])
