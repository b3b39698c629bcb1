"""Keras's sample_weight per step, [N, T], for a loss that gives one value per step (a tagger's
sparse categorical crossentropy over [N, T, classes]): each step's loss times its weight, the
batch's sum over N * T (Keras's sum_over_batch_size), with a step mask too; per-sample weights
[N] still weigh every step of a sample. Against numpy from predict's outputs, and one training
step against Keras."""
import numpy as np
import pytest

import kcompile
from kcompile.errors import ShapeMismatch

TAGGER = """model tagger {{
    input ids: int64[{steps}]
    h = Embedding(20, 8{mask})(ids)
    h = SimpleRNN(5, return_sequences=true)(h)
    tags = Dense(3, activation=softmax)(h)
    output tags
    train {{
        loss = sparse_categorical_crossentropy
        optimizer = SGD(0.1)
    }}
}}
"""
N, T = 12, 6


def data(seed=0, zeros=False):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 20, (N, T))
    if zeros:  # (padding: the last steps of some rows, which mask_zero leaves out)
        ids[::3, 4:] = 0
    return ids, rng.integers(0, 3, (N, T)), rng.uniform(0.0, 2.0, (N, T)).astype(np.float32)


def reference_loss(model, ids, labels, weights, mask=None):
    """Keras 3's reduction: each step's crossentropy times its weight (and, with a mask, times
    N * T / kept), summed over the N * T steps."""
    p = model.predict(ids)
    values = -np.log(np.take_along_axis(p.astype(np.float64), labels[..., None], -1)[..., 0])
    if mask is not None:
        weights = weights * mask * mask.size / mask.sum()
    return float((values * weights).sum() / values.size)


def test_weights_per_step_weigh_each_steps_loss():
    m = kcompile.compile_string(TAGGER.format(steps=T, mask=""), seed=0)
    ids, labels, weights = data()
    entry = m.manifest["training"]["step_sample_weights"][0]
    assert entry["shape"] == [T] and entry["every_term"] and entry["target"] == "tags_target"
    loss = m.evaluate(ids, labels, sample_weight=weights, verbose=0)
    assert loss == pytest.approx(reference_loss(m, ids, labels, weights), rel=1e-5)
    # per-sample weights [N] still weigh every step; [N, 1] as [N]
    per_sample = weights[:, 0]
    want = reference_loss(m, ids, labels, np.repeat(per_sample[:, None], T, 1))
    assert m.evaluate(ids, labels, sample_weight=per_sample, verbose=0) == pytest.approx(want, rel=1e-5)
    assert m.evaluate(ids, labels, sample_weight=per_sample[:, None], verbose=0) == pytest.approx(want, rel=1e-5)
    assert m.evaluate(ids, labels, verbose=0) == pytest.approx(reference_loss(m, ids, labels, np.ones((N, T))),
                                                               rel=1e-5)
    # zero weights take steps out of the gradient: a step on weights zero after step 2 equals
    # a step where those steps' labels are anything else
    a, b = (kcompile.compile_string(TAGGER.format(steps=T, mask=""), seed=0) for _ in range(2))
    zeroed = weights.copy()
    zeroed[:, 2:] = 0
    other = labels.copy()
    other[:, 2:] = (labels[:, 2:] + 1) % 3
    a.train_on_batch(ids, labels, sample_weight=zeroed)
    b.train_on_batch(ids, other, sample_weight=zeroed)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert not np.allclose(a.get_weights()[-1], kcompile.compile_string(TAGGER.format(steps=T, mask=""),
                                                                        seed=0).get_weights()[-1])


def test_weights_per_step_with_a_mask_and_a_sequence_length_not_fixed():
    m = kcompile.compile_string(TAGGER.format(steps="T", mask=", mask_zero=true"), seed=0)
    assert m.manifest["training"]["step_sample_weights"][0]["shape"] == ["T"]
    ids, labels, weights = data(zeros=True)
    mask = (ids != 0).astype(np.float64)
    loss = m.evaluate(ids, labels, sample_weight=weights, verbose=0)
    assert loss == pytest.approx(reference_loss(m, ids, labels, weights, mask), rel=1e-5)
    assert m.evaluate(ids, labels, verbose=0) == pytest.approx(reference_loss(m, ids, labels, np.ones((N, T)), mask),
                                                               rel=1e-5)  # ([N, 1] ones: they broadcast)
    # fit takes them by batch, shuffled, and splits them for validation with their rows
    history = m.fit(ids, labels, sample_weight=weights, batch_size=4, epochs=2, validation_split=0.25, verbose=0)
    assert len(history.history["val_loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    with pytest.raises(ShapeMismatch, match=r"evaluate: sample_weight expects shape \(12,\), one weight per sample, "
                                            r"or \(12, 6\), one per step of its loss, got \(12, 5\)"):
        m.evaluate(ids, labels, sample_weight=weights[:, :5], verbose=0)


def test_weights_per_step_where_the_loss_gives_one_value_per_sample_are_refused():
    m = kcompile.compile_string("""model m {
    input x: float32[4]
    y = Dense(3, activation=softmax)(x)
    output y
    train { loss = categorical_crossentropy; optimizer = SGD(0.1) }
}""")
    x, y = np.ones((5, 4), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    assert m.manifest["training"]["step_sample_weights"] == []
    with pytest.raises(ShapeMismatch, match=r"fit: sample_weight expects shape \(5,\), one weight per sample \(the "
                                            r"loss terms it weighs give one value per sample\), got \(5, 3\)"):
        m.fit(x, y, sample_weight=np.ones((5, 3)), verbose=0)


def test_a_training_step_with_weights_per_step_equals_keras(keras):
    m = kcompile.compile_string(TAGGER.format(steps=T, mask=", mask_zero=true"), seed=0)
    L = keras.layers
    k = keras.Sequential([keras.Input((T,), dtype="int32"), L.Embedding(20, 8, mask_zero=True),
                          L.SimpleRNN(5, return_sequences=True), L.Dense(3, activation="softmax")])
    k.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.1))
    k.set_weights(m.get_weights())
    ids, labels, weights = data(1, zeros=True)
    want = k.train_on_batch(ids.astype(np.int32), labels, sample_weight=weights)
    got = m.train_on_batch(ids, labels, sample_weight=weights)
    got = got[0] if isinstance(got, list) else got
    assert got == pytest.approx(float(want if np.ndim(want) == 0 else want[0]), rel=1e-5)
    for a, b in zip(m.get_weights(), k.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_array_per_step_weighs_every_output_of_a_model_of_several():
    """As Keras: one sample_weight array for every output, [n, T] too (the same as the dict of it
    by output); [n, T, 1] is taken as [n, T]."""
    m = kcompile.compile_string("""model two {
    input ids: int64[6]
    h = SimpleRNN(5, return_sequences=true)(Embedding(20, 8)(ids))
    a = Dense(3, activation=softmax)(h)
    b = Dense(2, activation=softmax)(h)
    output a, b
    train { loss = sparse_categorical_crossentropy(a) + sparse_categorical_crossentropy(b); optimizer = SGD(0.1) }
}""", seed=0)
    ids, labels, weights = data()
    y = [labels, labels % 2]
    one = m.evaluate(ids, y, sample_weight=weights, verbose=0)
    by_output = m.evaluate(ids, y, sample_weight={"a": weights, "b": weights}, verbose=0)
    np.testing.assert_allclose(one, by_output, rtol=1e-6)
    np.testing.assert_allclose(m.evaluate(ids, y, sample_weight=weights[..., None], verbose=0), one, rtol=1e-6)
    pa, pb = m.predict(ids)
    want = sum(-(np.log(np.take_along_axis(p.astype(np.float64), t[..., None], -1)[..., 0]) * weights).mean()
               for p, t in ((pa, labels), (pb, labels % 2)))
    assert (one[0] if isinstance(one, list) else one) == pytest.approx(want, rel=1e-5)


def test_class_weight_of_a_class_per_step_weighs_each_step_by_its_class():
    """(It took the argmax over the steps of the labels, a step's place, for a class.) One-hot
    targets per step, [n, T, classes], weigh each step by its row's class too."""
    m = kcompile.compile_string(TAGGER.format(steps=T, mask=""), seed=0)
    ids, labels, _ = data()
    table = {0: 0.5, 1: 2.0, 2: 0.0}
    per_step = np.vectorize(table.get)(labels).astype(np.float32)
    want = m.evaluate(ids, labels, sample_weight=per_step, verbose=0)
    assert want == pytest.approx(reference_loss(m, ids, labels, per_step), rel=1e-5)
    a, b = (kcompile.compile_string(TAGGER.format(steps=T, mask=""), seed=0) for _ in range(2))
    np.testing.assert_allclose(a.train_on_batch(ids, labels, class_weight=table),
                               b.train_on_batch(ids, labels, sample_weight=per_step), rtol=1e-6)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    one_hot = kcompile.compile_string(TAGGER.format(steps=T, mask="").replace("sparse_categorical_crossentropy",
                                                                              "categorical_crossentropy"), seed=0)
    np.testing.assert_allclose(one_hot.train_on_batch(ids, np.eye(3, dtype=np.float32)[labels], class_weight=table),
                               kcompile.compile_string(TAGGER.format(steps=T, mask=""), seed=0).train_on_batch(
                                   ids, labels, sample_weight=per_step), rtol=1e-5)
