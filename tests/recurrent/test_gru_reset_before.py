"""GRU(reset_after=false), Keras's reset-before form (one bias [3u]; hh = tanh(x W_h + b_h +
(r * h) R_h)): forward against Keras with copied weights and the numpy reference, on the fused
path (a few rows) and the Scan (many rows), gradients against float64 finite differences, and
training steps against Keras's."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients, expected_checks  # noqa: E402
from recurrence_reference import recurrence, random_weights  # noqa: E402


def test_weights_are_keras_reset_before_shapes():
    m = kcompile.compile_string("model g {\n input x: float32[5, 3]\n y = GRU(4, reset_after=false)\n output y\n}")
    assert [w.shape for w in m.get_weights()] == [(3, 12), (4, 12), (12,)]
    assert m.weight_names == ["gru/kernel", "gru/recurrent_kernel", "gru/bias"]


@pytest.mark.parametrize("units, return_sequences, go_backwards, use_bias", [
    (4, False, False, True), (3, True, False, True), (5, True, True, True), (2, False, True, False)])
@pytest.mark.parametrize("batch", [3, 40])  # the fused ONNX GRU (linear_before_reset=0), a Scan
def test_forward_matches_numpy_reference(units, return_sequences, go_backwards, use_bias, batch):
    src = f"""model r {{
        input x: float32[7, 3]
        y = GRU({units}, reset_after=false, return_sequences={str(return_sequences).lower()},
                go_backwards={str(go_backwards).lower()}, use_bias={str(use_bias).lower()})
        output y
    }}"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(units + batch)
    weights = random_weights(m, rng)
    x = rng.normal(size=(batch, 7, 3)).astype(np.float32)
    want = recurrence("GRU", x.astype(np.float64), [w.astype(np.float64) for w in weights], units,
                      return_sequences=return_sequences, go_backwards=go_backwards, reset_after=False)[0]
    # (and not the reset-after recurrence)
    other = recurrence("GRU", x.astype(np.float64), [w.astype(np.float64) for w in weights[:2]], units,
                       return_sequences=return_sequences, go_backwards=go_backwards)[0]
    assert np.abs(want - other).max() > 1e-2 or not use_bias
    np.testing.assert_allclose(m.predict(x, batch_size=None), want, rtol=1e-5, atol=1e-5)


def test_float64_forward_matches_numpy_reference():
    m = kcompile.compile_string("model r {\n input x: float64[6, 2]\n"
                                " y = GRU(3, reset_after=false, return_sequences=true)\n output y\n}")
    rng = np.random.default_rng(2)
    weights = random_weights(m, rng)
    x = rng.normal(size=(4, 6, 2))
    want = recurrence("GRU", x, weights, 3, return_sequences=True, reset_after=False)[0]
    np.testing.assert_allclose(m.predict(x), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_forward_matches_numpy_reference(go_backwards, return_sequences):
    src = f"""model r {{
        input ids: int64[6]
        x = Embedding(9, 3, mask_zero=true)(ids)
        y = GRU(4, reset_after=false, return_sequences={str(return_sequences).lower()},
                go_backwards={str(go_backwards).lower()})(x)
        output y
    }}"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(3)
    embedding, *weights = [w.astype(np.float64) for w in random_weights(m, rng)]
    ids = np.array([[1, 2, 0, 0, 3, 0], [0, 4, 5, 0, 0, 6], [7, 8, 1, 2, 3, 4], [0, 0, 0, 0, 0, 1]])
    mask = (ids != 0).astype(np.float64)
    x = embedding[ids]
    if go_backwards:  # (the reference reads in order: reverse the input and its mask)
        x, mask = x[:, ::-1], mask[:, ::-1]
    want = recurrence("GRU", x, weights, 4, return_sequences=return_sequences, reset_after=False, mask=mask)[0]
    np.testing.assert_allclose(m.predict(ids), want, rtol=1e-5, atol=1e-5)


KERAS_CASES = {
    "plain": ("GRU(5, reset_after=false)", lambda L: L.GRU(5, reset_after=False)),
    "sequences_backwards": ("GRU(4, reset_after=false, return_sequences=true, go_backwards=true)",
                            lambda L: L.GRU(4, reset_after=False, return_sequences=True, go_backwards=True)),
    "no_bias": ("GRU(3, reset_after=false, use_bias=false, return_sequences=true)",
                lambda L: L.GRU(3, reset_after=False, use_bias=False, return_sequences=True)),
    "bidirectional": ("Bidirectional(GRU(3, reset_after=false, return_sequences=true), merge_mode=concat)",
                      lambda L: L.Bidirectional(L.GRU(3, reset_after=False, return_sequences=True))),
}


@pytest.mark.parametrize("case", list(KERAS_CASES))
@pytest.mark.parametrize("masked", [False, True])
def test_forward_matches_keras_with_copied_weights(keras, case, masked):
    layer_src, make = KERAS_CASES[case]
    L = keras.layers
    ids_in = keras.Input((6,), dtype="int32")
    x = L.Embedding(9, 3, mask_zero=masked)(ids_in)
    reference_model = keras.Model(ids_in, make(L)(x))
    rng = np.random.default_rng(11)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    m = kcompile.compile_string(f"""model k {{
        input ids: int64[6]
        x = Embedding(9, 3, mask_zero={str(masked).lower()})(ids)
        y = {layer_src}(x)
        output y
    }}""")
    m.set_weights(reference_model.get_weights())
    for n in (3, 40):
        ids = rng.integers(1, 9, size=(n, 6))
        ids[rng.random((n, 6)) < 0.3] = 0
        want = np.asarray(reference_model.predict(ids.astype(np.int32), verbose=0))
        got = m.predict(ids, batch_size=None)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_return_state_and_initial_state_match_keras(keras):
    L = keras.layers
    source, target = keras.Input((5, 3)), keras.Input((4, 2))
    _, h = L.GRU(6, reset_after=False, return_state=True)(source)
    dec, h2 = L.GRU(6, reset_after=False, return_sequences=True, return_state=True,
                    go_backwards=True)(target, initial_state=[h])
    reference_model = keras.Model([source, target], [dec, h2])
    rng = np.random.default_rng(4)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    m = kcompile.compile_string("""model encdec {
        input s: float32[5, 3]
        input t: float32[4, 2]
        e, h = GRU(6, reset_after=false, return_state=true)(s)
        d, h2 = GRU(6, reset_after=false, return_sequences=true, return_state=true,
                    go_backwards=true)(t, initial_state=[h])
        output d, h2
    }""")
    m.set_weights(reference_model.get_weights())
    for n in (2, 40):
        s, t = rng.normal(size=(n, 5, 3)).astype(np.float32), rng.normal(size=(n, 4, 2)).astype(np.float32)
        want = reference_model.predict([s, t], verbose=0)
        got = m.predict({"s": s, "t": t}, batch_size=None)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=2e-6)


def test_recurrent_dropout_matches_numpy_reference():
    rate, units = 0.4, 4
    src = f"""model d {{
        input x: float32[5, 3]
        y = GRU({units}, reset_after=false, recurrent_dropout={rate}, return_sequences=true)
        output y
        train {{
            loss = mse
            optimizer = SGD(learning_rate=0.0)
        }}
    }}"""
    m = kcompile.compile_string(src, seed=3)
    assert [n["shape"] for n in m.manifest["training"]["noise"]] == [["N", 3, units]]
    rng = np.random.default_rng(5)
    weights = [w.astype(np.float64) for w in random_weights(m, rng)]
    x, y = rng.normal(size=(6, 5, 3)).astype(np.float32), rng.normal(size=(6, 5, units)).astype(np.float32)
    u = np.random.default_rng([m.seed, 7919, 0]).random((6, 3, units), dtype=np.float32)
    keep = (u >= rate) / (1 - rate)
    want = recurrence("GRU", x.astype(np.float64), weights, units, return_sequences=True, reset_after=False,
                      keep=keep)[0]
    np.testing.assert_allclose(m.train_on_batch(x, y), np.mean((want - y) ** 2), rtol=1e-5)
    plain = recurrence("GRU", x.astype(np.float64), weights, units, return_sequences=True, reset_after=False)[0]
    np.testing.assert_allclose(m.predict(x), plain, rtol=1e-5, atol=1e-5)


GRAD_LAYERS = [
    "GRU(3, reset_after=false)",
    "GRU(3, reset_after=false, return_sequences=true)",
    "GRU(3, reset_after=false, return_sequences=true, go_backwards=true)",
    "GRU(2, reset_after=false, use_bias=false)",
    "Bidirectional(GRU(2, reset_after=false, return_sequences=true))",
]


@pytest.mark.parametrize("layer", GRAD_LAYERS)
# (saved: the gates the training form keeps)
@pytest.mark.parametrize("training", [False, True], ids=["recomputed", "saved"])
def test_gradients_match_finite_differences(layer, training):
    src = f"model m {{\n input x: float64[5, 3]\n y = {layer}\n output y\n}}"
    feeds = {"x": np.random.default_rng(4).normal(size=(2, 5, 3))}
    checked, _ = check_gradients(src, feeds, training=training)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("layer", ["GRU(3, reset_after=false, return_sequences=true)",
                                   "GRU(3, reset_after=false, go_backwards=true)",
                                   "Bidirectional(GRU(2, reset_after=false))"])
# (saved: the gates the training form keeps)
@pytest.mark.parametrize("training", [False, True], ids=["recomputed", "saved"])
def test_masked_gradients(layer, training):
    src = ("model m {\n input tokens: int64[5]\n Embedding(8, 3, mask_zero=true, dtype=float64)\n"
           f" y = {layer}\n output y\n}}")
    feeds = {"tokens": np.array([[1, 2, 0, 0, 0], [0, 3, 4, 0, 5], [6, 7, 1, 2, 3]])}
    checked, _ = check_gradients(src, feeds, training=training)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("options", [", return_sequences=true", ", go_backwards=true, use_bias=false"])
def test_gradients_of_initial_state(options):
    src = ("model m {\n input x: float64[6, 3]\n input h0: float64[3]\n"
           f" y, h = GRU(3, reset_after=false, return_state=true{options})(x, initial_state=[h0])\n"
           " output y, h\n}")
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(size=(3, 6, 3)), "h0": rng.normal(size=(3, 3))}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("layer", ["GRU(3, reset_after=false, recurrent_dropout=0.3, return_sequences=true)",
                                   "GRU(3, reset_after=false, recurrent_dropout=0.3, dropout=0.2)",
                                   "Bidirectional(GRU(2, reset_after=false, recurrent_dropout=0.5))"])
def test_dropout_gradients(layer):
    src = f"model m {{\n input x: float64[4, 3]\n y = {layer}\n output y\n}}"
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 4, 3))}
    checked, _ = check_gradients(src, feeds, training=True)
    assert checked == expected_checks(src, feeds)


def test_recurrent_dropout_with_masked_steps_gradients():
    src = ("model m {\n input tokens: int64[5]\n Embedding(8, 3, mask_zero=true, dtype=float64)\n"
           " y = GRU(3, reset_after=false, recurrent_dropout=0.4, return_sequences=true)\n output y\n}")
    feeds = {"tokens": np.array([[1, 2, 0, 0, 0], [0, 3, 4, 0, 5], [6, 7, 1, 2, 3]])}
    checked, _ = check_gradients(src, feeds, training=True)
    assert checked == expected_checks(src, feeds)


def test_training_steps_match_keras(keras):
    """SGD from copied weights, batches in order: the same losses and weights as Keras's."""
    L = keras.layers
    inp = keras.Input((6, 3))
    seq = L.GRU(5, reset_after=False, return_sequences=True)(inp)
    out = L.Dense(2)(L.GRU(4, reset_after=False, go_backwards=True)(seq))
    reference_model = keras.Model(inp, out)
    rng = np.random.default_rng(8)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    reference_model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    m = kcompile.compile_string("""model t {
        input x: float32[6, 3]
        s = GRU(5, reset_after=false, return_sequences=true)(x)
        y = Dense(2)(GRU(4, reset_after=false, go_backwards=true)(s))
        output y
        train { loss = mse; optimizer = SGD(learning_rate=0.1) }
    }""")
    m.set_weights(reference_model.get_weights())
    x, y = rng.normal(size=(24, 6, 3)).astype(np.float32), rng.normal(size=(24, 2)).astype(np.float32)
    for start in (0, 8):  # two single steps
        batch = slice(start, start + 8)
        want = float(reference_model.train_on_batch(x[batch], y[batch]))
        np.testing.assert_allclose(m.train_on_batch(x[batch], y[batch]), want, rtol=1e-4)
    want = reference_model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
    got = m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    for g, w in zip(m.get_weights(), reference_model.get_weights()):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-4, atol=1e-5)
