"""Attention (Luong) and AdditiveAttention (Bahdanau), Keras 3's: outputs against a float64 numpy
reference (scores, the value mask, the causal mask, the query mask zeroing the output), the
attention weights of return_attention_scores, gradients by finite differences, Keras/JAX with
copied weights (outputs and one SGD step), a small model that trains, and located errors."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.errors import KcompileError
from reference import random_input

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients, expected_checks  # noqa: E402

# (the layer call, the weights it has: Keras 3's names, in Keras's order)
LAYERS = [
    ("Attention()", []),
    ("Attention(use_scale=true)", ["scale"]),
    ("Attention(score_mode=concat)", ["concat_score_weight"]),
    ("Attention(use_scale=true, score_mode=concat)", ["scale", "concat_score_weight"]),
    ("AdditiveAttention()", ["scale"]),
    ("AdditiveAttention(use_scale=false)", []),
]


def reference(layer, weights, q, v, k=None, q_mask=None, v_mask=None, causal=False):
    """Keras 3's Attention / AdditiveAttention in float64 numpy: (output, attention weights)."""
    q, v = np.asarray(q, np.float64), np.asarray(v, np.float64)
    k = v if k is None else np.asarray(k, np.float64)
    w = dict(zip(dict(LAYERS)[layer], [np.asarray(x, np.float64) for x in weights]))
    pairs = q[:, :, None, :] + k[:, None, :, :]  # [N, Tq, Tv, dim]
    if layer.startswith("AdditiveAttention"):
        scores = (w.get("scale", 1.0) * np.tanh(pairs)).sum(-1)
    elif "concat" in layer:
        scores = w["concat_score_weight"] * np.tanh(w.get("scale", 1.0) * pairs).sum(-1)
    else:
        scores = np.einsum("nqd,nkd->nqk", q, k) * w.get("scale", 1.0)
    allowed = np.ones(scores.shape, bool)
    if v_mask is not None:
        allowed &= np.asarray(v_mask, bool)[:, None, :]
    if causal:
        allowed &= np.tril(np.ones(scores.shape[1:], bool))
    scores = np.where(allowed, scores, scores - 1e9)  # (Keras: subtracted, not replaced)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = p @ v
    if q_mask is not None:
        y = y * np.asarray(q_mask, np.float64)[..., None]
    return y, p


def random_weights(m, rng):
    """Uniform in [-1, 1], of the manifest's shapes (get_weights gives a scalar weight as [1])."""
    return [rng.uniform(-1, 1, p["shape"]).astype(np.float32) for p in m.manifest["parameters"]]


def model(inputs, body, dtype="float32"):
    decls = "\n".join(f"    input {n}: {dtype}[{', '.join(map(str, s))}]" for n, s in inputs)
    return f"model m {{\n{decls}\n    {body}\n}}"


@pytest.mark.parametrize("with_key", [False, True])
@pytest.mark.parametrize("layer,names", LAYERS)
def test_outputs_and_weights_against_numpy(run, rng, close, layer, names, with_key):
    inputs = [("q", (4, 6)), ("v", (5, 3))] + ([("k", (5, 6))] if with_key else [])
    if not with_key:
        inputs[1] = ("v", (5, 6))  # (the value is the key: the query's features)
    call = "(q, v, k)" if with_key else "(q, v)"
    feeds = {n: random_input(s, rng, batch=3) for n, s in inputs}
    m = kcompile.compile_string(model(inputs, f"y = {layer}{call}\n    output y"))
    y, w = run(model(inputs, f"y = {layer}{call}\n    output y"), feeds, weights=random_weights(m, rng))
    prefix = "additive_attention" if layer.startswith("Additive") else "attention"
    assert m.weight_names == [f"{prefix}/{n}" for n in names]
    assert [x.shape for x in w] == [(6,) if n == "scale" and prefix != "attention" else () for n in names]
    close(y, reference(layer, w, feeds["q"], feeds["v"], feeds.get("k"))[0])


def test_initial_weights_as_keras():
    """Attention's scale and concat_score_weight start at 1; AdditiveAttention's scale [dim] is
    glorot_uniform (fans dim and dim: within sqrt(3 / dim))."""
    src = model([("q", (4, 6)), ("v", (5, 6))], "a = Attention(use_scale=true, score_mode=concat)(q, v)\n"
                "    b = AdditiveAttention()(q, v)\n    output a, b")
    one, two, scale = kcompile.compile_string(src).get_weights()
    assert float(one.reshape(())) == float(two.reshape(())) == 1.0
    assert scale.shape == (6,) and np.abs(scale).max() <= np.sqrt(3 / 6) and np.abs(scale).min() > 0


def test_scalar_weights_round_trip(tmp_path):
    """A 0-d weight stays 0-d through get/set_weights, training and a checkpoint (the runtime's
    buffers made it [1], which set_weights then refused)."""
    body = "y = Attention(use_scale=true)(q, q)\n    output y\n    train {\n loss = mse\n optimizer = SGD() }"
    m = kcompile.compile_string(model([("q", (4, 6))], body))
    assert m.get_weights()[0].shape == ()
    m.set_weights(m.get_weights())
    x = np.random.default_rng(0).normal(size=(8, 4, 6)).astype(np.float32)
    m.fit(x, x, epochs=2, verbose=0)
    trained = m.get_weights()[0]
    assert trained.shape == () and trained != 1.0
    loaded = kcompile.load(m.save(tmp_path / "m"))
    assert loaded.get_weights()[0].shape == () and loaded.get_weights()[0] == trained
    loaded.fit(x, x, verbose=0)
    m.fit(x, x, verbose=0)  # (the same epoch from the same state: the same 0-d weight)
    assert loaded.get_weights()[0].shape == ()
    np.testing.assert_allclose(loaded.get_weights()[0], m.get_weights()[0], rtol=1e-6)


# ---------------------------------------------------------------- masks, causal, scores
MASKED = """model m {{
    input a: int64[5]
    input b: int64[6]
    q = Embedding(9, 4, mask_zero=true{dtype})(a)
    v = Embedding(9, 4, mask_zero=true{dtype})(b)
    y, s = {layer}(q, v, return_attention_scores=true{causal})
    p = GlobalAveragePooling1D()(y)
    output y, s, p
}}"""
A = np.array([[3, 1, 0, 0, 2], [0, 0, 0, 0, 0], [5, 6, 7, 1, 8]])
B = np.array([[2, 0, 4, 0, 1, 0], [7, 0, 0, 3, 0, 0], [1, 5, 2, 8, 6, 3]])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layer", ["Attention()", "Attention(use_scale=true, score_mode=concat)",
                                   "AdditiveAttention()"])
def test_masks_causal_mask_and_scores_against_numpy(close, layer, causal):
    """The value's mask hides its padded steps, the query's zeroes the padded output steps and
    goes on with the output (GlobalAveragePooling1D averages the kept steps), use_causal_mask lets
    step i see steps 0..i; the scores are the attention weights [Tq, Tv]. A row that may attend
    nowhere (sample 1 under the causal mask) is Keras's softmax of scores - 1e9."""
    src = MASKED.format(layer=layer, causal=", use_causal_mask=true" if causal else "", dtype="")
    m = kcompile.compile_string(src)
    w = random_weights(m, np.random.default_rng(5))
    m.set_weights(w)
    y, s, p = m.predict({"a": A, "b": B})
    want_y, want_s = reference(layer, w[2:], w[0][A], w[1][B], q_mask=A != 0, v_mask=B != 0, causal=causal)
    assert s.shape == (3, 5, 6)
    close(s, want_s)
    close(y, want_y)
    keep = (A != 0)[..., None]
    close(p[[0, 2]], ((want_y * keep).sum(1) / keep.sum(1))[[0, 2]])
    unmasked = reference(layer, w[2:], w[0][A], w[1][B], causal=causal)[0]
    assert np.abs(want_y - unmasked).max() > 1e-2  # (the masks matter here)


def test_causal_mask_over_steps_known_at_run_time(close):
    """use_causal_mask with named step counts: the mask is made from the steps when it runs."""
    src = model([("q", ("T", 4)), ("v", ("S", 4))], "y = Attention()(q, v, use_causal_mask=true)\n    output y")
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(6)
    for tq, tv in ((3, 5), (4, 2)):
        q, v = random_input((tq, 4), rng), random_input((tv, 4), rng)
        close(m.predict({"q": q, "v": v}), reference("Attention()", [], q, v, causal=True)[0])


def test_call_options_per_call_of_a_shared_layer(close):
    """A shared layer takes return_attention_scores and use_causal_mask per call; dropout is the
    identity in inference."""
    src = model([("q", (4, 6)), ("v", (5, 6))], "layer att = AdditiveAttention(dropout=0.5)\n"
                "    y, s = att(q, v, return_attention_scores=true, use_causal_mask=true)\n"
                "    z = att(q, v)\n    output y, s, z")
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(7)
    q, v = random_input((4, 6), rng), random_input((5, 6), rng)
    y, s, z = m.predict({"q": q, "v": v})
    w = m.get_weights()
    want_y, want_s = reference("AdditiveAttention()", w, q, v, causal=True)
    close(y, want_y)
    close(s, want_s)
    close(z, reference("AdditiveAttention()", w, q, v)[0])


# ---------------------------------------------------------------- gradients
GRAD_A = np.array([[3, 1, 0, 2, 0], [4, 0, 0, 0, 5], [5, 6, 7, 1, 2]])
# (value step 0 kept: no row masked everywhere, where scores - 1e9 would swamp the finite differences)
GRAD_B = np.array([[2, 0, 4, 1, 0, 3], [7, 0, 3, 0, 0, 0], [1, 5, 2, 8, 6, 4]])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_gradients_with_masks(layer, causal):
    """Every weight (the two embedding tables, which are the query and the value, and the
    layer's), with both masks, the scores as a second output, and the causal mask."""
    src = MASKED.format(layer=layer, causal=", use_causal_mask=true" if causal else "", dtype=", dtype=float64")
    feeds = {"a": GRAD_A.astype(np.int64), "b": GRAD_B.astype(np.int64)}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("layer", ["Attention(use_scale=true)", "Attention(use_scale=true, score_mode=concat)",
                                   "AdditiveAttention()"])
def test_gradients_of_query_key_and_value_inputs(layer):
    src = model([("q", (3, 4)), ("v", (5, 2)), ("k", (5, 4))],
                f"y = {layer}(q, v, k)\n    output y", dtype="float64")
    rng = np.random.default_rng(8)
    feeds = {"q": rng.normal(size=(2, 3, 4)), "v": rng.normal(size=(2, 5, 2)), "k": rng.normal(size=(2, 5, 4))}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("layer", ["Attention(dropout=0.3)", "AdditiveAttention(dropout=0.3)"])
def test_gradients_through_the_dropout_in_training(layer):
    src = model([("q", (3, 4)), ("v", (5, 4))], f"y, s = {layer}(q, v, return_attention_scores=true)\n"
                "    output y, s", dtype="float64")
    rng = np.random.default_rng(9)
    feeds = {"q": rng.normal(size=(2, 3, 4)), "v": rng.normal(size=(2, 5, 4))}
    checked, _ = check_gradients(src, feeds, training=True)
    assert checked == expected_checks(src, feeds)


# ---------------------------------------------------------------- Keras
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layer", ["Attention(use_scale=true)", "Attention(use_scale=true, score_mode=concat)",
                                   "AdditiveAttention()"])
def test_matches_keras_outputs_and_an_sgd_step(keras, layer, causal):
    """Keras/JAX with the same weights: outputs and scores through masked embeddings, then the
    weights after one SGD step on mse (Keras leaves the output's masked steps out of the loss)."""
    a_in, b_in = keras.Input((5,), dtype="int64"), keras.Input((6,), dtype="int64")
    q = keras.layers.Embedding(9, 4, mask_zero=True)(a_in)
    v = keras.layers.Embedding(9, 4, mask_zero=True)(b_in)
    if layer.startswith("Additive"):
        att = keras.layers.AdditiveAttention()
    else:
        att = keras.layers.Attention(use_scale=True, score_mode="concat" if "concat" in layer else "dot")
    y_out, s_out = att([q, v], return_attention_scores=True, use_causal_mask=causal)
    ref = keras.Model([a_in, b_in], [y_out, s_out])
    rng = np.random.default_rng(10)
    weights = [rng.uniform(-1, 1, w.shape).astype(np.float32) for w in ref.get_weights()]
    ref.set_weights(weights)
    src = MASKED.format(layer=layer, causal=", use_causal_mask=true" if causal else "", dtype="")
    m = kcompile.compile_string(src)
    assert [n.split("/", 1)[1] for n in m.weight_names[2:]] == [w.path.split("/")[-1] for w in att.weights]
    m.set_weights(weights)
    want_y, want_s = (np.asarray(t) for t in ref.predict([A, B], verbose=0))
    y, s, _ = m.predict({"a": A, "b": B})
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-6)

    # one SGD step on mse of the attention output alone
    train_ref = keras.Model([a_in, b_in], y_out)
    train_ref.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    target = rng.normal(size=(3, 5, 4)).astype(np.float32)
    train_ref.train_on_batch([A, B], target)
    body = src.replace("    output y, s, p\n", "    output y\n    train {\n        loss = mse\n"
                       "        optimizer = SGD(0.5)\n    }\n")
    t = kcompile.compile_string(body)
    t.set_weights(weights)
    t.train_on_batch({"a": A, "b": B}, target)
    for name, got, want in zip(t.weight_names, t.get_weights(), train_ref.get_weights()):
        np.testing.assert_allclose(np.reshape(got, np.shape(want)), want, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------- training a model
@pytest.mark.parametrize("layer", ["Attention(use_scale=true)", "AdditiveAttention(dropout=0.1)"])
def test_a_model_with_the_layer_trains(layer):
    """Whether a padded sequence holds token 4: causal self-attention over masked embeddings,
    pooled, then a classifier, which learns it (the base rate, 77% positives, would not pass)."""
    m = kcompile.compile_string(f"""model has_four {{
    input ids: int64[6]
    e = Embedding(5, 8, mask_zero=true)(ids)
    a = {layer}(e, e, use_causal_mask=true)
    p = GlobalAveragePooling1D()(a)
    y = Dense(1, activation=sigmoid)(p)
    output y
    train {{
        loss = binary_crossentropy
        optimizer = Adam(0.03)
        metrics = [accuracy]
    }}
}}""")
    rng = np.random.default_rng(11)
    ids = rng.integers(1, 5, (64, 6))
    for i, n in enumerate(rng.integers(3, 7, 64)):
        ids[i, n:] = 0
    y = (ids == 4).any(1).astype(np.float32)[:, None]
    history = m.fit(ids, y, batch_size=16, epochs=15, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert m.evaluate(ids, y, verbose=0)[1] >= 0.95


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("body,message", [
    ("y = Attention(score_mode=add)(q, v)", "Attention argument 'score_mode': expected dot or concat, got add"),
    ("y = Attention(dropout=1.5)(q, v)", "Attention argument 'dropout': expected a number in [0.0, 1.0), got 1.5"),
    ("y = AdditiveAttention(score_mode=concat)(q, v)", "AdditiveAttention has no argument 'score_mode'"),
    ("y = Attention()(q)", "Attention takes (query, value) or (query, value, key), got 1 input"),
    ("y = AdditiveAttention()(q, w)", "AdditiveAttention needs the query and the key to have one number of "
                                      "features, got 6 and 3"),
    ("y = Attention()(q, v, w)", "Attention key and value need one number of steps, got 4 and 5"),
    ("y = Attention()(q, flat)", "Attention expects the value as [steps, features] with known features, got [6]"),
    ("y = Attention()(q, v, return_attention_scores=1)",
     "Attention's call argument return_attention_scores is true or false, got 1"),
    ("y = Attention()(q, v, attention_mask=q)", "Attention does not take attention_mask"),
])
def test_located_errors(body, message):
    src = model([("q", (4, 6)), ("v", (5, 6)), ("w", (4, 3)), ("flat", (6,))], body + "\n    output y")
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string(src)
    d = info.value.diagnostics[0]
    assert message in d.message, d.render()
    assert d.loc is not None and d.loc.line == 6 and d.loc.col > 1, d.render()


@pytest.mark.parametrize("decls,body,message", [
    # (found by fuzzing: inputs of two float dtypes reached the ONNX checker, an internal error)
    ("input q: float32[4, 6]\n    input v: float64[5, 6]", "y = Attention()(q, v)",
     "Attention needs the query and the value to have one dtype, got float32 and float64"),
    ("input q: float32[4, 6]\n    input v: float32[5, 3]\n    input k: float16[5, 6]", "y = AdditiveAttention()(q, v, k)",
     "AdditiveAttention needs the query and the key to have one dtype, got float32 and float16"),
    ("input q: float32[4, 6]\n    input v: float64[5, 6]", "y = MultiHeadAttention(2, 3)(q, v)",
     "MultiHeadAttention needs the query and the value to have one dtype, got float32 and float64"),
    # (integer inputs were refused by an inner op: "MatMul needs a floating-point tensor")
    ("input q: int64[4, 6]\n    input v: int64[5, 6]", "y = Attention()(q, v)",
     "Attention needs floating-point inputs, got the query int64[N, 4, 6]"),
    ("input q: float32[4, 6]\n    input v: bool[5, 6]", "y = AdditiveAttention(use_scale=false)(q, v)",
     "AdditiveAttention needs floating-point inputs, got the value bool[N, 5, 6]"),
])
def test_input_dtypes_are_located_errors(decls, body, message):
    src = f"model m {{\n    {decls}\n    {body}\n    output y\n}}\n"
    line = src.count("\n", 0, src.index(body)) + 1
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string(src)
    d = info.value.diagnostics[0]
    assert d.message == message, d.render()
    assert (d.loc.line, d.loc.col) == (line, 9), d.render()
