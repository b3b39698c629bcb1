"""Step masks (Embedding(mask_zero=true)) through merging and pooling layers, as Keras 3:
merges pass "any input's step counts" on, Multiply/Maximum/Minimum keep masked steps out
of the values, Concatenate joins masks, GlobalAveragePooling1D averages unmasked steps."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients  # noqa: E402

A = np.array([[3, 1, 0, 0], [0, 2, 4, 0], [5, 6, 7, 1]])
B = np.array([[2, 0, 0, 0], [0, 0, 0, 3], [1, 0, 2, 0]])


def two_embeddings(merge, after="y = GlobalAveragePooling1D()(j)"):
    return f"""model merged {{
        input a: int64[4]
        input b: int64[4]
        ea = Embedding(8, 3, mask_zero=true)(a)
        eb = Embedding(8, 3, mask_zero=true)(b)
        j = {merge}
        {after}
        output y
    }}"""


def embed(m, ids, which):
    table = m.get_weights()[which].astype(np.float64)
    return table[ids], (ids > 0).astype(np.float64)


def masked_mean(x, mask):
    return (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


@pytest.fixture
def weights_set():
    def setup(m):
        rng = np.random.default_rng(0)
        m.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in m.get_weights()])
        return m
    return setup


def test_global_average_pooling_1d_averages_unmasked_steps(weights_set):
    m = weights_set(kcompile.compile_string("""model p {
        input ids: int64[4]
        Embedding(8, 3, mask_zero=true)
        GlobalAveragePooling1D()
    }"""))
    x, mask = embed(m, A, 0)
    np.testing.assert_allclose(m.predict(A), masked_mean(x, mask), rtol=1e-6)
    keep = kcompile.compile_string("""model p {
        input ids: int64[4]
        Embedding(8, 3, mask_zero=true)
        GlobalAveragePooling1D(keepdims=true)
    }""")
    keep.set_weights(m.get_weights())
    np.testing.assert_allclose(keep.predict(A)[:, 0], masked_mean(x, mask), rtol=1e-6)


@pytest.mark.parametrize("layer", ["Add", "Subtract", "Average"])
def test_elementwise_merges_or_the_masks(weights_set, layer):
    m = weights_set(kcompile.compile_string(two_embeddings(f"{layer}()(ea, eb)")))
    (xa, ma), (xb, mb) = embed(m, A, 0), embed(m, B, 1)
    value = {"Add": xa + xb, "Subtract": xa - xb, "Average": (xa + xb) / 2}[layer]
    np.testing.assert_allclose(m.predict({"a": A, "b": B}), masked_mean(value, np.maximum(ma, mb)), rtol=1e-5)


def test_multiply_counts_masked_steps_as_one(weights_set):
    m = weights_set(kcompile.compile_string(two_embeddings("Multiply()(ea, eb)")))
    (xa, ma), (xb, mb) = embed(m, A, 0), embed(m, B, 1)
    both = np.maximum(ma, mb)
    value = np.where(ma[..., None] > 0, xa, 1) * np.where(mb[..., None] > 0, xb, 1) * both[..., None]
    np.testing.assert_allclose(m.predict({"a": A, "b": B}), masked_mean(value, both), rtol=1e-5)


@pytest.mark.parametrize("layer, fn", [("Maximum", np.maximum), ("Minimum", np.minimum)])
def test_extremum_takes_the_unmasked_value(weights_set, layer, fn):
    m = weights_set(kcompile.compile_string(two_embeddings(f"{layer}()(ea, eb)")))
    (xa, ma), (xb, mb) = embed(m, A, 0), embed(m, B, 1)
    xb_kept = np.where(mb[..., None] > 0, xb, xa)   # Keras: a masked step of b takes a's value
    xa_kept = np.where(ma[..., None] > 0, xa, xb_kept)  # and a masked step of a takes b's
    value = fn(xa_kept, xb_kept)
    np.testing.assert_allclose(m.predict({"a": A, "b": B}), masked_mean(value, np.maximum(ma, mb)), rtol=1e-5)


def test_concatenate_features_or_and_steps_join(weights_set):
    m = weights_set(kcompile.compile_string(two_embeddings("Concatenate()(ea, eb)")))
    (xa, ma), (xb, mb) = embed(m, A, 0), embed(m, B, 1)
    np.testing.assert_allclose(m.predict({"a": A, "b": B}),
                               masked_mean(np.concatenate([xa, xb], -1), np.maximum(ma, mb)), rtol=1e-5)
    m = weights_set(kcompile.compile_string(two_embeddings("Concatenate(axis=1)(ea, eb)")))
    (xa, ma), (xb, mb) = embed(m, A, 0), embed(m, B, 1)
    np.testing.assert_allclose(m.predict({"a": A, "b": B}),
                               masked_mean(np.concatenate([xa, xb], 1), np.concatenate([ma, mb], 1)), rtol=1e-5)


def test_concatenate_steps_with_an_unmasked_input_counts_all_its_steps():
    m = kcompile.compile_string("""model m {
        input a: int64[4]
        input v: float32[2, 3]
        ea = Embedding(8, 3, mask_zero=true)(a)
        c = Concatenate(axis=1)(ea, v)
        y = GlobalAveragePooling1D()(c)
        output y
    }""")
    v = np.random.default_rng(1).normal(size=(3, 2, 3)).astype(np.float32)
    xa, ma = embed(m, A, 0)
    want = masked_mean(np.concatenate([xa, v], 1), np.concatenate([ma, np.ones((3, 2))], 1))
    np.testing.assert_allclose(m.predict({"a": A, "v": v}), want, rtol=1e-5)


def test_merged_mask_reaches_a_recurrent_layer():
    """Steps masked in both inputs are skipped by the LSTM: its result equals the one on the
    unpadded steps alone."""
    src = two_embeddings("Add()(ea, eb)", "y = LSTM(4)(j)")
    m = kcompile.compile_string(src)
    a, b = np.array([[3, 1, 0, 0]]), np.array([[2, 0, 0, 0]])
    short = kcompile.compile_string(src.replace("int64[4]", "int64[2]"))
    short.set_weights(m.get_weights())
    np.testing.assert_allclose(m.predict({"a": a, "b": b}), short.predict({"a": a[:, :2], "b": b[:, :2]}),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge", ["Multiply()(ea, eb)", "Maximum()(ea, eb)", "Concatenate(axis=1)(ea, eb)"])
def test_masked_merge_gradients(merge):
    src = two_embeddings(merge, "y = GRU(2, return_sequences=true)(j)").replace(
        "mask_zero=true)", "mask_zero=true, dtype=float64)")
    checked, _ = check_gradients(src, {"a": A, "b": B})
    assert checked > 0
