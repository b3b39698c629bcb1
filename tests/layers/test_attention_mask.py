"""MultiHeadAttention's attention_mask call argument (Keras's): nonzero where query step i may
attend to value step j, joined with the padding and causal masks; against a numpy reference
(and Keras with copied weights where it is installed)."""
import numpy as np
import pytest

import kcompile
from kcompile.errors import KcompileError

SOURCE = """model m {{
    input q: float32[4, 6]
    input v: float32[5, 6]
    input mask: {dtype}[4, 5]
    y = MultiHeadAttention(2, 3{args})(q, v, attention_mask=mask)
    output y
}}"""


def reference(weights, q, v, mask, causal=False, with_probabilities=False):
    """Keras 3's MultiHeadAttention in numpy: -1e9 added to the scores where attention is not allowed."""
    qk, qb, kk, kb, vk, vb, ok, ob = [w.astype(np.float64) for w in weights]
    qh = np.einsum("ntf,fhd->nhtd", q, qk) + qb[None, :, None]
    kh = np.einsum("ntf,fhd->nhtd", v, kk) + kb[None, :, None]
    vh = np.einsum("ntf,fhd->nhtd", v, vk) + vb[None, :, None]
    scores = np.einsum("nhqd,nhkd->nhqk", qh / np.sqrt(qk.shape[-1]), kh)
    allowed = (mask != 0)[:, None].astype(np.float64)
    if causal:
        allowed = allowed * (np.arange(4)[:, None] >= np.arange(5)[None, :])
    scores = scores + (1 - allowed) * -1e9
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("nhqd,hdo->nqo", np.einsum("nhqk,nhkd->nhqd", p, vh), ok) + ob
    return (out, p) if with_probabilities else out


@pytest.mark.parametrize("dtype,args", [("int32", ""), ("bool", ""), ("float32", ", use_causal_mask=true")])
def test_attention_mask_against_numpy(dtype, args):
    m = kcompile.compile_string(SOURCE.format(dtype=dtype, args=args))
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in m.get_weights()]
    m.set_weights(weights)
    q, v = rng.standard_normal((3, 4, 6)).astype(np.float32), rng.standard_normal((3, 5, 6)).astype(np.float32)
    mask = rng.integers(0, 2, (3, 4, 5))
    mask[0, 1] = 0  # (a query step that may attend nowhere: a uniform softmax, as Keras)
    mask[:, :, 0] = 1  # (so that the causal mask leaves each step something)
    if dtype == "float32":
        mask = mask * 3.0  # (any nonzero number allows)
    got = m.predict({"q": q, "v": v, "mask": mask.astype(dtype)})
    want = reference(weights, q.astype(np.float64), v.astype(np.float64), mask, causal="causal" in args)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_mask_matches_keras(keras):
    q_in, v_in, m_in = keras.Input((4, 6)), keras.Input((5, 6)), keras.Input((4, 5), dtype="int32")
    layer = keras.layers.MultiHeadAttention(2, 3)
    ref = keras.Model([q_in, v_in, m_in], layer(q_in, v_in, attention_mask=m_in))
    rng = np.random.default_rng(1)
    ref.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in ref.get_weights()])
    m = kcompile.compile_string(SOURCE.format(dtype="int32", args=""))
    m.set_weights(ref.get_weights())
    q, v = rng.standard_normal((3, 4, 6)).astype(np.float32), rng.standard_normal((3, 5, 6)).astype(np.float32)
    mask = rng.integers(0, 2, (3, 4, 5)).astype(np.int32)
    np.testing.assert_allclose(m.predict({"q": q, "v": v, "mask": mask}),
                               np.asarray(ref.predict([q, v, mask], verbose=0)), rtol=1e-5, atol=1e-6)


def test_attention_mask_of_the_wrong_shape_is_a_located_error():
    with pytest.raises(KcompileError, match=r"MultiHeadAttention's attention_mask takes one tensor \[4, 5\] "
                                            r"\(query steps, value steps\), got int32\[N, 5, 4\]"):
        kcompile.compile_string(SOURCE.format(dtype="int32", args="").replace("int32[4, 5]", "int32[5, 4]"))


def test_a_query_masked_everywhere_trains_nothing_upstream_as_keras():
    """Keras's masked softmax is where(mask, scores, -1e9): a masked score takes no gradient, so
    a query step that may attend nowhere sends none to the query and key kernels (adding -1e9
    to the scores passed the uniform softmax's gradient through)."""
    m = kcompile.compile_string("""model m {
    input q: float32[1, 6]
    input v: float32[5, 6]
    input mask: int32[1, 5]
    y = MultiHeadAttention(2, 3)(q, v, attention_mask=mask)
    output y
    train {
        loss = mse
        optimizer = SGD(0.1)
    }
}""")
    rng = np.random.default_rng(2)
    before = dict(zip(m.weight_names, m.get_weights()))
    m.train_on_batch({"q": rng.standard_normal((4, 1, 6)).astype(np.float32),
                      "v": rng.standard_normal((4, 5, 6)).astype(np.float32), "mask": np.zeros((4, 1, 5), np.int32)},
                     rng.standard_normal((4, 1, 6)).astype(np.float32))
    after = dict(zip(m.weight_names, m.get_weights()))
    for name in ("query/kernel", "query/bias", "key/kernel", "key/bias"):
        np.testing.assert_array_equal(after[f"multi_head_attention/{name}"], before[f"multi_head_attention/{name}"])
    assert not np.array_equal(after["multi_head_attention/value/kernel"], before["multi_head_attention/value/kernel"])


def test_return_attention_scores_and_use_causal_mask_in_the_call():
    """y, scores = MultiHeadAttention(...)(q, v, return_attention_scores=true): the probabilities
    [heads, Tq, Tv] before dropout, as Keras; use_causal_mask=true in the call as in the layer's
    arguments (a shared layer keeps its own setting for its other calls)."""
    m = kcompile.compile_string("""model m {
    input q: float32[4, 6]
    input v: float32[5, 6]
    input mask: int32[4, 5]
    layer att = MultiHeadAttention(2, 3, dropout=0.5)
    y, s = att(q, v, attention_mask=mask, return_attention_scores=true, use_causal_mask=true)
    z = att(q, v, attention_mask=mask)
    output y, s, z
}""")
    rng = np.random.default_rng(3)
    weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in m.get_weights()]
    m.set_weights(weights)
    q, v = rng.standard_normal((3, 4, 6)).astype(np.float32), rng.standard_normal((3, 5, 6)).astype(np.float32)
    mask = rng.integers(0, 2, (3, 4, 5)).astype(np.int32)
    mask[:, :, 0] = 1
    y, s, z = m.predict({"q": q, "v": v, "mask": mask})
    want_y, want_s = reference(weights, q.astype(np.float64), v.astype(np.float64), mask, causal=True,
                               with_probabilities=True)
    assert s.shape == (3, 2, 4, 5)
    np.testing.assert_allclose(s, want_s, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z, reference(weights, q.astype(np.float64), v.astype(np.float64), mask),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(KcompileError, match="MultiHeadAttention's call argument return_attention_scores is true "
                                            "or false, got 1"):
        kcompile.compile_string(SOURCE.format(dtype="int32", args="").replace(
            "attention_mask=mask)", "attention_mask=mask, return_attention_scores=1)"))


def test_another_layers_call_argument_says_which_layers_take_it():
    with pytest.raises(KcompileError, match="Dense does not take attention_mask") as info:
        kcompile.compile_string(SOURCE.format(dtype="int32", args="").replace(
            "y = MultiHeadAttention(2, 3)(q, v, attention_mask=mask)", "y = Dense(2)(q, attention_mask=mask)"))
    assert info.value.diagnostics[0].hint == "MultiHeadAttention do"


def test_causal_self_attention_over_a_named_length():
    """use_causal_mask over steps named in the source (a decoder over sequences of any length):
    the same outputs as the fixed-length model with the same weights, and it trains."""
    body = """    y = MultiHeadAttention(2, 3)(x, x, use_causal_mask=true)
    output y
    train {{
        loss = mse
        optimizer = SGD(learning_rate=0.1)
    }}
}}"""
    named = kcompile.compile_string("model m {\n    input x: float32[T, 6]\n" + body.format())
    fixed = kcompile.compile_string("model m {\n    input x: float32[5, 6]\n" + body.format())
    rng = np.random.default_rng(4)
    weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in fixed.get_weights()]
    named.set_weights(weights)
    fixed.set_weights(weights)
    x = rng.standard_normal((3, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(named.predict(x), fixed.predict(x), rtol=1e-5, atol=1e-6)
    mask = (np.arange(5)[:, None] >= np.arange(5)[None, :]).astype(np.int32)[None].repeat(3, 0)
    np.testing.assert_allclose(fixed.predict(x), reference(weights, x.astype(np.float64), x.astype(np.float64),
                                                           mask, causal=False), rtol=1e-4, atol=1e-5)
    short = x[:, :3]  # (step i sees steps 0..i: a prefix's outputs are the longer sequence's)
    np.testing.assert_allclose(named.predict(short), named.predict(x)[:, :3], rtol=1e-5, atol=1e-6)
    y = rng.standard_normal((3, 5, 6)).astype(np.float32)
    assert named.fit(x, y, epochs=2, verbose=0).history["loss"] == pytest.approx(
        fixed.fit(x, y, epochs=2, verbose=0).history["loss"], rel=1e-5)


@pytest.mark.parametrize("how", ["scores", "dropout"])
def test_a_query_step_allowed_nowhere_attends_nowhere_where_keras_uses_its_softmax(keras, how):
    """Keras 3.15 computes MultiHeadAttention with its masked Softmax (which zeroes masked
    probabilities) where the layer has dropout or returns its scores, else with
    dot_product_attention (uniform over a row masked everywhere: the test above); kcompile
    follows both."""
    q_in, v_in, m_in = keras.Input((4, 6)), keras.Input((5, 6)), keras.Input((4, 5), dtype="int32")
    layer = keras.layers.MultiHeadAttention(2, 3, dropout=0.25 if how == "dropout" else 0.0)
    out = layer(q_in, v_in, attention_mask=m_in, return_attention_scores=how == "scores")
    ref = keras.Model([q_in, v_in, m_in], out)
    rng = np.random.default_rng(5)
    ref.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in ref.get_weights()])
    m = kcompile.compile_string(SOURCE.format(dtype="int32", args=", dropout=0.25" if how == "dropout" else "")
                                if how == "dropout" else SOURCE.format(dtype="int32", args="").replace(
                                    "y = MultiHeadAttention(2, 3)(q, v, attention_mask=mask)\n    output y",
                                    "y, s = MultiHeadAttention(2, 3)(q, v, attention_mask=mask, "
                                    "return_attention_scores=true)\n    output y, s"))
    m.set_weights(ref.get_weights())
    q, v = rng.standard_normal((3, 4, 6)).astype(np.float32), rng.standard_normal((3, 5, 6)).astype(np.float32)
    mask = rng.integers(0, 2, (3, 4, 5)).astype(np.int32)
    mask[1, 3] = 0  # (a query step allowed nowhere)
    got, want = m.predict({"q": q, "v": v, "mask": mask}), ref.predict([q, v, mask], verbose=0)
    got, want = (got, want) if how == "scores" else ([got], [want])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-6)
    if how == "scores":
        assert not got[1][1, :, 3].any()  # (all its probabilities 0)
