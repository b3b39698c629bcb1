"""Keras 3's per-output sample_weight ({output: weights}, or a list in output order) on a
two-output model, against Keras on JAX from the same weights and data: each output's loss is
sum(w * loss) / batch size (compile_utils.CompileLoss, losses.loss "sum_over_batch_size"),
scaled by its loss_weight into the loss; <output>_loss is that value before loss_weights."""
import numpy as np
import pytest

import kcompile
from kcompile.errors import ShapeMismatch

SOURCE = """
model two {
    input x: float32[6]
    h = Dense(8, activation=tanh)(x)
    kind = Dense(3, activation=softmax)(h)
    score = Dense(1)(h)
    output kind, score
    train {
        loss = categorical_crossentropy(kind) + mse(score)
        loss_weights = [0.3, 2.0]
        optimizer = SGD(learning_rate=0.1)
    }
}
"""
N = 10  # (batches of 4: 4, 4 and an uneven 2)
rng = np.random.default_rng(7)
X = rng.normal(size=(N, 6)).astype(np.float32)
Y = {"kind": np.eye(3, dtype=np.float32)[rng.integers(0, 3, N)], "score": rng.normal(size=(N, 1)).astype(np.float32)}
W = {"kind": rng.uniform(0, 3, N).astype(np.float32), "score": rng.uniform(0, 3, N).astype(np.float32)}
KEYS = ("loss", "kind_loss", "score_loss")


def models(keras, as_list=False):
    """(kcompile's model, Keras's with its weights): outputs as a dict by name, or a list."""
    model = kcompile.compile_string(SOURCE, seed=0)
    x = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh")(x)
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(h)
    score = keras.layers.Dense(1, name="score")(h)
    if as_list:
        reference = keras.Model(x, [kind, score])
        reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=["categorical_crossentropy", "mse"],
                          loss_weights=[0.3, 2.0])
    else:
        reference = keras.Model(x, {"kind": kind, "score": score})
        reference.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss={"kind": "categorical_crossentropy", "score": "mse"},
                          loss_weights={"kind": 0.3, "score": 2.0})
    reference.set_weights(model.get_weights())
    return model, reference


def same_weights(model, reference):
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def same_logs(got: dict, want: dict, prefix=""):
    for key in KEYS:
        np.testing.assert_allclose(got[prefix + key], want[prefix + key], rtol=1e-5, err_msg=prefix + key)


@pytest.mark.parametrize("weights", [W, {"kind": W["kind"], "score": None}, W["kind"]],
                         ids=["per-output", "one-output-None", "one-array"])
def test_train_and_test_on_batch_match_keras(weights, keras):
    """Each output's own weights (None: that output unweighted, as Keras), and the single
    array that weighs every output, as before."""
    model, reference = models(keras)
    for step in range(2):
        rows = slice(4 * step, 4 * step + 4)
        w = {k: None if v is None else v[rows] for k, v in weights.items()} if isinstance(weights, dict) \
            else weights[rows]
        y = {k: v[rows] for k, v in Y.items()}
        want = reference.train_on_batch(X[rows], y, sample_weight=w, return_dict=True)
        same_logs(model.train_on_batch(X[rows], y, sample_weight=w, return_dict=True), want)
    same_weights(model, reference)
    same_logs(model.test_on_batch(X, Y, sample_weight=weights, return_dict=True),
              reference.test_on_batch(X, Y, sample_weight=weights, return_dict=True))


def test_fit_two_epochs_with_an_uneven_last_batch_and_evaluate_match_keras(keras):
    model, reference = models(keras)
    validation = (X[:6], {k: v[:6] for k, v in Y.items()}, {k: v[:6] for k, v in W.items()})
    kw = dict(batch_size=4, epochs=2, shuffle=False, verbose=0, validation_data=validation)
    got = model.fit(X, Y, sample_weight=W, **kw).history
    want = reference.fit(X, Y, sample_weight=W, **kw).history
    for epoch in range(2):
        same_logs({k: v[epoch] for k, v in got.items()}, {k: v[epoch] for k, v in want.items()})
        same_logs({k: v[epoch] for k, v in got.items()}, {k: v[epoch] for k, v in want.items()}, "val_")
    same_weights(model, reference)
    same_logs(model.evaluate(X, Y, batch_size=4, sample_weight=W, verbose=0, return_dict=True),
              reference.evaluate(X, Y, batch_size=4, sample_weight=W, verbose=0, return_dict=True))


def test_batches_of_x_y_and_weights_per_output_train_as_the_arrays():
    """(x, y, {output: weights}) items of an iterable, and validation_split, slice each output's
    weights as the arrays' fit does."""
    one, two = kcompile.compile_string(SOURCE, seed=0), kcompile.compile_string(SOURCE, seed=0)
    batches = [(X[i:i + 4], {k: v[i:i + 4] for k, v in Y.items()}, {k: v[i:i + 4] for k, v in W.items()})
               for i in range(0, N, 4)]
    got = one.fit(iter(batches * 2), epochs=2, steps_per_epoch=3, verbose=0).history
    want = two.fit(X, Y, sample_weight=W, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
    split = one.fit(X, Y, sample_weight=W, batch_size=4, validation_split=0.4, shuffle=False, verbose=0).history
    np.testing.assert_allclose(split["val_loss"][0], one.evaluate(
        X[6:], {k: v[6:] for k, v in Y.items()}, sample_weight={k: v[6:] for k, v in W.items()}, verbose=0)[0],
        rtol=1e-6)


def test_a_list_in_output_order_matches_keras(keras):
    model, reference = models(keras, as_list=True)
    y, w = [Y["kind"], Y["score"]], [W["kind"], W["score"]]
    same_logs(model.train_on_batch(X, y, sample_weight=w, return_dict=True),
              reference.train_on_batch(X, y, sample_weight=w, return_dict=True))
    same_weights(model, reference)
    same_logs(model.evaluate(X, y, sample_weight=[None, W["score"]], batch_size=4, verbose=0, return_dict=True),
              reference.evaluate(X, y, sample_weight=[None, W["score"]], batch_size=4, verbose=0,
                                 return_dict=True))


def test_an_output_left_out_of_the_dict_is_refused_as_keras(keras):
    """Keras refuses a dict without every output ('You should provide one `sample_weight` array
    per output in `y`'; train_on_batch: KeyError); None leaves an output unweighted."""
    model, reference = models(keras)
    with pytest.raises(ValueError, match="one `sample_weight` array per output"):
        reference.evaluate(X, Y, sample_weight={"kind": W["kind"]}, verbose=0)
    for run in (lambda: model.fit(X, Y, sample_weight={"kind": W["kind"]}, verbose=0),
                lambda: model.evaluate(X, Y, sample_weight={"kind": W["kind"]}, verbose=0),
                lambda: model.train_on_batch(X, Y, sample_weight={"kind": W["kind"]})):
        with pytest.raises(ShapeMismatch, match=r"sample_weight by output: the model's outputs are \['kind', "
                                                r"'score'\]; missing \['score'\], unknown \[\] \(None leaves"):
            run()


def test_per_output_weights_errors():
    model = kcompile.compile_string(SOURCE, seed=0)
    for weights, message in (
            ({**W, "probs": W["kind"]}, r"missing \[\], unknown \['probs'\]"),
            ({"kind": W["kind"], "score": W["score"][:7]},
             r"fit: sample_weight 'score' expects shape \(10,\), one weight per sample, got \(7,\)"),
            ({"kind": np.ones((N, 2)), "score": None}, r"sample_weight 'kind' expects shape \(10,\), .*got \(10, 2\)"),
            ({"kind": np.array(["a"] * N), "score": None}, r"sample_weight 'kind' expects numbers, got dtype <U1"),
            ([W["kind"], W["score"], W["score"]], r"the model has 2 outputs \(kind, score\), got 3 items"),
            (W["kind"][:3], r"sample_weight expects shape \(10,\), one weight per sample, got \(3,\)")):
        with pytest.raises(ShapeMismatch, match=message):
            model.fit(X, Y, sample_weight=weights, verbose=0)
    with pytest.raises(ShapeMismatch, match=r"fit validation_data: sample_weight 'kind' expects shape \(4,\)"):
        model.fit(X, Y, validation_data=(X[:4], {k: v[:4] for k, v in Y.items()}, W), verbose=0)
    with pytest.raises(ValueError, match="give sample_weight or class_weight, not both"):
        model.train_on_batch(X, Y, sample_weight=W, class_weight={0: 1.0})
    assert model.iterations == 0


def test_a_step_split_into_parts_of_the_batch_cuts_each_outputs_weights():
    """The step split per core (batch_parts) slices every output's weights with the rows."""
    runs = []
    for parts in (1, 2):
        model = kcompile.compile_string(SOURCE, seed=0)
        model.batch_parts = parts
        runs.append(model.fit(X, Y, sample_weight=W, batch_size=5, epochs=2, shuffle=False, verbose=0).history)
        assert model._batch_parts() == parts
    for key in KEYS:
        np.testing.assert_allclose(runs[1][key], runs[0][key], rtol=1e-5)
