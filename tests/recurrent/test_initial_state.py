"""``initial_state=`` of SimpleRNN, LSTM and GRU (Keras 3's): the recurrence starts from the given
states, also going backwards; on a masked input it reads every step and passes the mask on, as
Keras 3; their gradients flow back (an encoder-decoder trains). Forward against numpy and Keras,
gradients against float64 finite differences, a short seq2seq run."""
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kcompile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients, expected_checks  # noqa: E402
from recurrence_reference import random_weights, recurrence as reference  # noqa: E402


STATES = {"SimpleRNN": ["h0"], "GRU": ["h0"], "LSTM": ["h0", "c0"]}


def state_model(kind, units, options=""):
    """A model whose initial states are inputs h0 (c0), giving the output and the last states."""
    states = STATES[kind]
    last = ", ".join(["h", "c"][:len(states)])
    decls = "".join(f"    input {s}: float32[{units}]\n" for s in states)
    return kcompile.compile_string(f"""model s {{
    input x: float32[6, 3]
{decls}    y, {last} = {kind}({units}, return_state=true{options})(x, initial_state=[{", ".join(states)}])
    output y, {last}
}}""")


FORWARD = [(kind, rs, gb, bias) for kind in ("SimpleRNN", "LSTM", "GRU")
           for rs, gb, bias in [(False, False, True), (True, False, True), (True, True, True), (False, True, False)]]


@pytest.mark.parametrize("kind, return_sequences, go_backwards, use_bias", FORWARD)
def test_forward_starts_from_the_initial_states(kind, return_sequences, go_backwards, use_bias):
    units = 4
    m = state_model(kind, units, f", return_sequences={str(return_sequences).lower()}, "
                                 f"go_backwards={str(go_backwards).lower()}, use_bias={str(use_bias).lower()}")
    rng = np.random.default_rng(len(kind) + 2 * return_sequences + go_backwards)
    weights = random_weights(m, rng)
    for n in (1, 3, 20):  # (the fused ONNX ops for a few rows, the Scan beyond)
        feeds = {"x": rng.normal(size=(n, 6, 3)).astype(np.float32)}
        feeds.update({s: rng.normal(size=(n, units)).astype(np.float32) for s in STATES[kind]})
        want = reference(kind, feeds["x"].astype(np.float64), weights, units, feeds["h0"], feeds.get("c0"),
                         return_sequences, go_backwards)
        got = m.predict(feeds, batch_size=None)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{n} rows")
        zeros = {**feeds, **{s: np.zeros_like(feeds[s]) for s in STATES[kind]}}  # zeros: as without it
        np.testing.assert_allclose(m.predict(zeros, batch_size=None)[0], reference(
            kind, feeds["x"].astype(np.float64), weights, units, np.zeros((n, units)), None, return_sequences,
            go_backwards)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_with_initial_state_masked_steps_are_read_and_the_mask_passes_on(kind, go_backwards):
    """Keras 3 hands a layer the input's mask only where the input is the call's one tensor
    argument: given initial_state, the recurrence reads every step (see the Keras test below),
    and with return_sequences the mask passes on (here: GlobalAveragePooling1D averages the
    unmasked steps only)."""
    units = 3
    states = STATES[kind]
    m = kcompile.compile_string(f"""model s {{
        input ids: int64[6]
        {" ".join(f"input {s}: float32[{units}]" + chr(10) for s in states)}
        x = Embedding(9, 3, mask_zero=true)(ids)
        y = {kind}({units}, return_sequences=true, go_backwards={str(go_backwards).lower()})(x,
                   initial_state=[{", ".join(states)}])
        pooled = GlobalAveragePooling1D()(y)
        output y, pooled
    }}""")
    rng = np.random.default_rng(7)
    weights = random_weights(m, rng)
    ids = np.array([[0, 2, 3, 0, 4, 0], [0, 0, 0, 0, 0, 1], [1, 2, 3, 4, 5, 6], [5, 0, 0, 7, 8, 0]])
    feeds = {"ids": ids, **{s: rng.normal(size=(4, units)).astype(np.float32) for s in states}}
    x = weights[0][ids].astype(np.float64)
    want, _, _ = reference(kind, x, weights[1:], units, feeds["h0"], feeds.get("c0"), True, go_backwards)
    keep = (ids != 0)[..., None]
    y, pooled = m.predict(feeds)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled, (want * keep).sum(1) / keep.sum(1), rtol=1e-5, atol=1e-5)


def test_shared_state_tensor_and_single_tensor_form():
    # GRU(initial_state=h) as Keras's single-tensor form; a layer called with and without states
    m = kcompile.compile_string("""model s {
        input x: float32[5, 3]
        input h0: float32[4]
        layer gru = GRU(4)
        a = gru(x, initial_state=h0)
        b = gru(x)
        output a, b
    }""")
    rng = np.random.default_rng(3)
    weights = random_weights(m, rng)
    x, h0 = rng.normal(size=(2, 5, 3)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
    a, b = m.predict({"x": x, "h0": h0})
    np.testing.assert_allclose(a, reference("GRU", x.astype(np.float64), weights, 4, h0)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, reference("GRU", x.astype(np.float64), weights, 4, np.zeros((2, 4)))[0],
                               rtol=1e-5, atol=1e-5)


SEQ2SEQ = """model seq2seq {
    input source: float32[7, 5]
    input target_in: float32[6, 4]
    enc, h, c = LSTM(16, return_state=true)(source)
    dec = LSTM(16, return_sequences=true)(target_in, initial_state=[h, c])
    probs = Dense(4, activation=softmax)(dec)
    output probs
    train { loss = categorical_crossentropy; optimizer = Adam(0.01) }
}"""


def test_seq2seq_matches_keras_with_copied_weights(keras):
    L = keras.layers
    source, target = keras.Input((7, 5)), keras.Input((6, 4))
    _, h, c = L.LSTM(16, return_state=True)(source)
    dec = L.LSTM(16, return_sequences=True)(target, initial_state=[h, c])
    reference_model = keras.Model([source, target], L.Dense(4, activation="softmax")(dec))
    rng = np.random.default_rng(0)
    reference_model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    m = kcompile.compile_string(SEQ2SEQ)
    m.set_weights(reference_model.get_weights())
    for n in (2, 40):
        x, t = rng.normal(size=(n, 7, 5)).astype(np.float32), rng.normal(size=(n, 6, 4)).astype(np.float32)
        want = np.asarray(reference_model.predict([x, t], verbose=0))
        np.testing.assert_allclose(m.predict({"source": x, "target_in": t}), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_masked_backwards_encoder_decoder_matches_keras(kind, keras):
    """Both sides masked (Embedding(mask_zero=true)), the decoder going backwards from the
    encoder's states (Keras 3 skips the encoder's masked steps, not the decoder's); Keras's layer
    (so weight) order."""
    L = keras.layers
    layer = getattr(L, kind)
    source, target = keras.Input((6,), dtype="int64"), keras.Input((5,), dtype="int64")
    enc, *states = layer(4, return_state=True)(L.Embedding(9, 3, mask_zero=True)(source))
    dec = layer(4, return_sequences=True, go_backwards=True)(L.Embedding(7, 2, mask_zero=True)(target),
                                                             initial_state=states)
    reference_model = keras.Model([source, target], L.Dense(3)(dec))
    rng = np.random.default_rng(1)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    names = ", ".join(["h", "c"][:len(states)])
    m = kcompile.compile_string(f"""model ed {{
        input source: int64[6]
        input target: int64[5]
        enc, {names} = {kind}(4, return_state=true)(Embedding(9, 3, mask_zero=true)(source))
        dec = {kind}(4, return_sequences=true, go_backwards=true)(Embedding(7, 2, mask_zero=true)(target),
                                                              initial_state=[{names}])
        y = Dense(3)(dec)
        output y
    }}""")
    m.set_weights(reference_model.get_weights())
    src = np.array([[1, 2, 0, 3, 0, 0], [0, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 1], [0, 3, 3, 0, 2, 0]])
    tgt = np.array([[0, 1, 2, 0, 0], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0], [6, 0, 1, 0, 2]])
    want = np.asarray(reference_model.predict([src, tgt], verbose=0))
    np.testing.assert_allclose(m.predict({"source": src, "target": tgt}), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kind, options, shape", [
    ("SimpleRNN", ", return_sequences=true", (2, 6, 3)),
    ("SimpleRNN", ", go_backwards=true", (3, 6, 3)),
    ("LSTM", ", return_sequences=true", (2, 6, 3)),
    ("LSTM", ", use_bias=false, go_backwards=true", (3, 6, 3)),
    ("GRU", ", return_sequences=true, go_backwards=true", (2, 6, 3)),
    ("GRU", ", use_bias=false", (3, 6, 3)),
])
# (saved: the gates the training form keeps)
@pytest.mark.parametrize("training", [False, True], ids=["recomputed", "saved"])
def test_gradients_of_initial_states_and_weights(kind, options, shape, training):
    states = STATES[kind]
    last = ", ".join(["h", "c"][:len(states)])
    src = ("model m {\n input x: float64[6, 3]\n" + "".join(f" input {s}: float64[3]\n" for s in states) +
           f" y, {last} = {kind}(3, return_state=true{options})(x, initial_state=[{', '.join(states)}])\n"
           f" output y, {last}\n}}")
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(size=shape), **{s: rng.normal(size=(shape[0], 3)) for s in states}}
    checked, _ = check_gradients(src, feeds, training=training)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
# (saved: the gates the training form keeps)
@pytest.mark.parametrize("training", [False, True], ids=["recomputed", "saved"])
def test_gradients_on_a_masked_input_with_initial_states(kind, training):
    states = STATES[kind]
    src = ("model m {\n input ids: int64[5]\n" + "".join(f" input {s}: float64[3]\n" for s in states) +
           " x = Embedding(8, 3, mask_zero=true, dtype=float64)(ids)\n"
           f" y = {kind}(3, return_sequences=true)(x, initial_state=[{', '.join(states)}])\n output y\n}}")
    ids = np.array([[0, 2, 0, 0, 1], [0, 0, 0, 0, 0], [6, 7, 1, 2, 3]])
    rng = np.random.default_rng(6)
    feeds = {"ids": ids, **{s: rng.normal(size=(3, 3)) for s in states}}
    checked, _ = check_gradients(src, feeds, training=training)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_encoder_decoder_gradients_reach_the_encoder(kind):
    names = ", ".join(["h", "c"][:len(STATES[kind])])
    src = f"""model m {{
        input source: float64[5, 3]
        input target: float64[4, 2]
        enc, {names} = {kind}(3, return_state=true, go_backwards=true)(source)
        dec = {kind}(3, return_sequences=true, recurrent_dropout=0.3)(target, initial_state=[{names}])
        y = Dense(2)(dec)
        output y
    }}"""
    rng = np.random.default_rng(8)
    feeds = {"source": rng.normal(size=(3, 5, 3)), "target": rng.normal(size=(3, 4, 2))}
    checked, _ = check_gradients(src, feeds, training=True)
    assert checked == expected_checks(src, feeds)  # the encoder's weights and source included


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_training_forward_agrees_with_inference(kind):
    """The training graph (Scans) and inference (the fused ONNX op for a few rows, a Scan beyond)
    give the same loss from the encoder's states."""
    names = ", ".join(["h", "c"][:len(STATES[kind])])
    m = kcompile.compile_string(f"""model a {{
        input s: float32[5, 3]
        input t: float32[4, 2]
        e, {names} = {kind}(6, return_state=true)(s)
        d = {kind}(6, return_sequences=true)(t, initial_state=[{names}])
        y = Dense(1)(d)
        output y
        train {{ loss = mse; optimizer = SGD(learning_rate=0.0) }}
    }}""", seed=2)
    rng = np.random.default_rng(0)
    for n in (3, 40):
        x = {"s": rng.normal(size=(n, 5, 3)).astype(np.float32), "t": rng.normal(size=(n, 4, 2)).astype(np.float32)}
        expected = float(np.mean(m.predict(x, batch_size=None) ** 2))
        np.testing.assert_allclose(m.train_on_batch(x, np.zeros((n, 4, 1), np.float32)), expected, rtol=1e-5)


def reverse_task(n, seed, steps=5, symbols=4):
    """Source: one-hot symbols; target: the source reversed; the decoder reads the target shifted
    right by one step (teacher forcing, a zero vector to start)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, symbols, (n, steps))
    source = np.eye(symbols, dtype=np.float32)[ids]
    target = source[:, ::-1]
    target_in = np.concatenate([np.zeros_like(target[:, :1]), target[:, :-1]], 1)
    return {"source": source, "target_in": target_in}, np.ascontiguousarray(target)


def test_seq2seq_learns_to_reverse_a_sequence():
    m = kcompile.compile_string("""model seq2seq {
        input source: float32[5, 4]
        input target_in: float32[5, 4]
        enc, h, c = LSTM(32, return_state=true)(source)
        dec = LSTM(32, return_sequences=true)(target_in, initial_state=[h, c])
        probs = Dense(4, activation=softmax)(dec)
        output probs
        train { loss = categorical_crossentropy; optimizer = Adam(0.01); metrics = [accuracy] }
    }""", seed=0)
    x, y = reverse_task(2000, 0)
    x_test, y_test = reverse_task(500, 1)
    start = time.perf_counter()
    m.fit(x, y, epochs=8, batch_size=64, verbose=0)
    seconds = time.perf_counter() - start
    correct = m.predict(x_test).argmax(-1) == y_test.argmax(-1)
    assert correct.mean() >= 0.99, correct.mean()
    # The first symbol out is the last one in: only the encoder's states carry it (the decoder
    # reads a zero vector there), so the encoder trained through them.
    assert correct[:, 0].mean() >= 0.99, correct[:, 0].mean()
    assert m.evaluate(x_test, y_test, verbose=0)[1] >= 0.99
    assert seconds < 20, seconds  # (about 1 s)


def first_error(body):
    from kcompile.driver import check_module, parse_source
    source = ("model m {\n    input x: float32[6, 3]\n    input h: float32[16]\n    input c: float32[16]\n"
              "    input d: float64[16]\n    input w: float32[8]\n" + body + "\n    output y\n}\n")
    diagnostics = check_module(parse_source(source, "t.kdl"))
    assert diagnostics, "expected an error"
    return diagnostics[0]


@pytest.mark.parametrize("body, col, message", [
    ("    y = LSTM(16)(x, initial_state=[h])", 9,
     "LSTM's initial_state takes 2 tensors [h, c] of shape [N, 16], got float32[N, 16]"),
    ("    y = LSTM(16)(x, initial_state=[h, w])", 9,
     "LSTM's initial_state takes 2 tensors [h, c] of shape [N, 16], got float32[N, 16], float32[N, 8]"),
    ("    y = GRU(16)(x, initial_state=[h, c])", 9,
     "GRU's initial_state takes 1 tensor [h] of shape [N, 16], got float32[N, 16], float32[N, 16]"),
    ("    y = SimpleRNN(8)(x, initial_state=[h])", 9,
     "SimpleRNN's initial_state takes 1 tensor [h] of shape [N, 8], got float32[N, 16]"),
    ("    y = GRU(16)(x, initial_state=[d])", 9,
     "GRU's initial_state takes 1 tensor [h] of shape [N, 16] in float32, as its input, got float64[N, 16]"),
    ("    y = GRU(16)(x, initial_state=[])", 9, "GRU's initial_state takes 1 tensor [h] of shape [N, 16], got none"),
    ("    y = GRU(16)(x, initial_state=[hh])", 9, "unknown name hh"),
    ("    y = GRU(16)(x, initial_state=[3])", 9, "expected a tensor, got 3"),
    ("    y = Bidirectional(GRU(16))(x, initial_state=[h])", 9,
     "Bidirectional(GRU)'s initial_state takes 2 tensors [fh, bh]: the forward layer's states, then the backward's; "
     "got 1"),
    ("    y = Dense(16)(w, initial_state=[h])", 9, "Dense does not take initial_state"),
    ("    y = GRU(16)(x, mask=h)", 9, "unexpected keyword argument mask when calling a layer"),
    ("    y = GRU(16)(x, initial_state=[h], training=true)", 9,
     "unexpected keyword argument training when calling a layer"),
])
def test_initial_state_errors_are_located(body, col, message):
    d = first_error(body)
    assert (d.loc.line, d.loc.col) == (7, col), d.render()
    assert message == d.message or message in d.message, d.render()


def test_initial_state_error_hints():
    assert "return_state=true" in first_error("    y = LSTM(16)(x, initial_state=[h])").hint
    assert first_error("    y = Dense(16)(w, initial_state=[h])").hint == "SimpleRNN, LSTM, GRU, Bidirectional do"
