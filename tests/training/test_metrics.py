"""Metrics of the train section against numpy, as Keras 3 computes and aggregates them.

evaluate() over several batches of unequal size (100 samples, batch_size=32: 32+32+32+4)
must report the values over the whole set: Keras weights batch means by batch size and
sums counts (precision, recall) and threshold tables (AUC) over batches.
"""
import numpy as np
import pytest

import kcompile
from kcompile import ShapeMismatch
from kcompile.training.metrics import auc_from_totals

N, BATCH = 100, 32
TOL = dict(rtol=1e-5, atol=1e-6)

CATEGORICAL = """
model cat {
    input x: float32[6]
    Dense(16, activation=relu)
    probs = Dense(4, activation=softmax)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = SGD(learning_rate=0.1)
        metrics = [accuracy, mae, mse, precision, recall, categorical_accuracy]
    }
}
"""

SPARSE_DECLARED = """
model sparse {
    input x: float32[6]
    Dense(16, activation=relu)
    probs = Dense(4, activation=softmax)
    output probs
    train {
        target label: int64[]
        loss = sparse_categorical_crossentropy(label, probs)
        optimizer = Adam()
        metrics = [accuracy(label, probs), sparse_categorical_accuracy(label, probs)]
    }
}
"""

SPARSE_BARE = """
model sparse_bare {
    input x: float32[6]
    Dense(16, activation=relu)
    probs = Dense(4, activation=softmax)
    output probs
    train {
        loss = sparse_categorical_crossentropy
        optimizer = Adam()
        metrics = [accuracy]
    }
}
"""

BINARY = """
model binary {
    input x: float32[6]
    Dense(16, activation=relu)
    p = Dense(1, activation=sigmoid)
    output p
    train {
        loss = binary_crossentropy
        optimizer = RMSprop(learning_rate=0.01)
        metrics = [accuracy, precision, recall, auc, binary_accuracy, mse]
    }
}
"""

SCORER = """
model scorer {
    input x: float32[1]
    p = Dense(1, activation=sigmoid)
    output p
    train {
        loss = binary_crossentropy
        optimizer = SGD()
        metrics = [auc, precision, recall]
    }
}
"""

TWO_OUTPUTS = """
model two {
    input x: float32[6]
    h = Dense(16, activation=relu)(x)
    kind = Dense(3, activation=softmax)(h)
    score = Dense(1)(h)
    output kind, score
    train {
        loss = categorical_crossentropy(kind) + 0.5 * mse(score)
        optimizer = SGD(learning_rate=0.05, momentum=0.9)
        metrics = [accuracy(kind), mae(score)]
    }
}
"""


def data(n=N, seed=0, classes=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    return x, labels


def batch_sizes(n, b):
    return [min(b, n - i) for i in range(0, n, b)]


def weighted_and_naive(per_sample, n=N, b=BATCH):
    """The mean over the set (Keras) and the unweighted mean of batch means (wrong)."""
    means = [per_sample[i:i + b].mean() for i in range(0, n, b)]
    return per_sample.mean(), float(np.mean(means))


# ---------------- numpy references ----------------
def keras_auc(y, p, num_thresholds=200):
    """keras.metrics.AUC(curve='ROC', summation_method='interpolation') on float32 predictions."""
    eps = 1e-7
    thresholds = np.array([0.0 - eps] + [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
                          + [1.0 + eps], dtype=np.float32)
    p = np.clip(np.asarray(p, np.float32), 0, 1).reshape(-1, 1)  # (Keras clips predictions to [0, 1])
    truth = np.asarray(y).reshape(-1, 1) != 0  # (Keras casts targets to bool)
    above = p > thresholds[None, :]
    tp = np.sum(above & truth, 0).astype(np.float64)
    fp = np.sum(above & ~truth, 0).astype(np.float64)
    fn = np.sum(~above & truth, 0).astype(np.float64)
    tn = np.sum(~above & ~truth, 0).astype(np.float64)
    tpr = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    fpr = np.divide(fp, fp + tn, out=np.zeros_like(fp), where=(fp + tn) > 0)
    return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))


def exact_auc(y, p):
    """The probability that a random positive scores above a random negative (ties count half)."""
    y, p = np.asarray(y).ravel() > 0.5, np.asarray(p, np.float64).ravel()
    pos, neg = p[y], p[~y]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def precision_recall(y, p, threshold=0.5):
    predicted, truth = np.asarray(p).ravel() > threshold, np.asarray(y).ravel() != 0
    tp = np.sum(predicted & truth)
    return (tp / predicted.sum() if predicted.sum() else 0.0), (tp / truth.sum() if truth.sum() else 0.0)


# ---------------- tests ----------------
def test_categorical_metrics_over_unequal_batches():
    m = kcompile.compile_string(CATEGORICAL, seed=0)
    x, labels = data()
    y = np.eye(4, dtype=np.float32)[labels]
    m.fit(x, y, epochs=2, batch_size=16, verbose=0)  # away from the initial weights
    logs = m.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "mae", "mse", "precision", "recall", "categorical_accuracy"}
    p = m.predict(x).astype(np.float64)
    hits = (p.argmax(1) == labels).astype(np.float64)
    loss = -np.sum(y * np.log(p), axis=1)
    np.testing.assert_allclose(logs["loss"], loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], hits.mean(), **TOL)
    np.testing.assert_allclose(logs["categorical_accuracy"], hits.mean(), **TOL)
    np.testing.assert_allclose(logs["mae"], np.abs(y - p).mean(), **TOL)
    np.testing.assert_allclose(logs["mse"], ((y - p) ** 2).mean(), **TOL)
    precision, recall = precision_recall(y, p)
    np.testing.assert_allclose(logs["precision"], precision, **TOL)
    np.testing.assert_allclose(logs["recall"], recall, **TOL)
    # the batches really are unequal and a plain mean of batch means would be wrong
    assert batch_sizes(N, BATCH) == [32, 32, 32, 4]
    for values, got in ((hits, logs["accuracy"]), (loss, logs["loss"])):
        right, naive = weighted_and_naive(values)
        assert abs(right - naive) > 1e-3 and abs(got - naive) > 1e-3
    # accuracy is categorical (argmax), not thresholded at 0.5
    assert abs(hits.mean() - np.mean((p > 0.5) == (y > 0.5))) > 1e-3
    # return_dict=False: [loss, metrics in their order]
    values = m.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert values == pytest.approx([logs[k] for k in ("loss", "accuracy", "mae", "mse", "precision", "recall",
                                                        "categorical_accuracy")], rel=1e-12)


@pytest.mark.parametrize("src", [SPARSE_DECLARED, SPARSE_BARE])
def test_sparse_accuracy_with_int_labels(src):
    m = kcompile.compile_string(src, seed=0)
    (target,) = m.manifest["training"]["targets"]
    assert target["dtype"] == "int64" and target["shape"] == ["N"]
    x, labels = data(seed=1)
    m.fit(x, labels, epochs=2, batch_size=16, verbose=0)
    logs = m.evaluate(x, labels, batch_size=BATCH, verbose=0, return_dict=True)
    p = m.predict(x).astype(np.float64)
    hits = (p.argmax(1) == labels).astype(np.float64)
    np.testing.assert_allclose(logs["accuracy"], hits.mean(), **TOL)
    if "sparse_categorical_accuracy" in logs:
        np.testing.assert_allclose(logs["sparse_categorical_accuracy"], hits.mean(), **TOL)
    np.testing.assert_allclose(logs["loss"], -np.log(p[np.arange(N), labels]).mean(), rtol=1e-5)


def test_binary_metrics_over_unequal_batches():
    m = kcompile.compile_string(BINARY, seed=0)
    x, _ = data(seed=2)
    y = ((x[:, 0] + 0.5 * x[:, 1] + 0.3 * np.random.default_rng(3).normal(size=N)) > 0).astype(np.float32)[:, None]
    m.fit(x, y, epochs=3, batch_size=16, verbose=0)
    logs = m.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "precision", "recall", "auc", "binary_accuracy", "mse"}
    p32 = m.predict(x)
    p = p32.astype(np.float64)
    hits = ((p > 0.5) == (y > 0.5)).astype(np.float64)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(logs["loss"], loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], hits.mean(), **TOL)
    np.testing.assert_allclose(logs["binary_accuracy"], hits.mean(), **TOL)
    np.testing.assert_allclose(logs["mse"], ((y - p) ** 2).mean(), **TOL)
    precision, recall = precision_recall(y, p)
    np.testing.assert_allclose(logs["precision"], precision, **TOL)
    np.testing.assert_allclose(logs["recall"], recall, **TOL)
    np.testing.assert_allclose(logs["auc"], keras_auc(y, p32), **TOL)
    assert 0.5 < logs["auc"] <= 1.0
    # a binary model's accuracy is thresholded: there is a single column, so argmax would be 100%
    assert hits.mean() < 1.0


def test_accuracy_is_chosen_from_the_shapes_as_keras_3_does():
    """binary_crossentropy on a several-unit output: Keras 3's plain accuracy is categorical (by the
    shapes, not the loss, as Keras 2 chose); binary_accuracy is the thresholded, multi-label one."""
    src = BINARY.replace("Dense(1, activation=sigmoid)", "Dense(3, activation=sigmoid)")
    m = kcompile.compile_string(src.replace("accuracy, precision, recall, auc, binary_accuracy, mse",
                                            "accuracy, binary_accuracy"), seed=0)
    x, _ = data(seed=4)
    rng = np.random.default_rng(5)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, N)]
    logs = m.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    p = m.predict(x)
    categorical = (p.argmax(1) == y.argmax(1)).mean()
    thresholded = ((p > 0.5) == (y > 0.5)).mean()
    assert abs(categorical - thresholded) > 0.05  # (the data tells the two apart)
    np.testing.assert_allclose(logs["accuracy"], categorical, **TOL)
    np.testing.assert_allclose(logs["binary_accuracy"], thresholded, **TOL)


def test_auc_matches_keras_and_exact_auc_on_500_samples():
    m = kcompile.compile_string(SCORER, seed=0)
    rng = np.random.default_rng(5)
    n = 500
    x = rng.normal(size=(n, 1)).astype(np.float32)
    y = ((x[:, 0] + rng.normal(size=n)) > 0).astype(np.float32)[:, None]
    m.set_weights([np.array([[2.0]], np.float32), np.array([0.1], np.float32)])
    logs = m.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)  # 7 x 64 + 52
    p32 = m.predict(x)
    assert p32.min() < 0.05 and p32.max() > 0.95  # spread over the thresholds
    np.testing.assert_allclose(logs["auc"], keras_auc(y, p32), **TOL)
    exact = exact_auc(y, p32)
    assert abs(logs["auc"] - exact) < 0.01, (logs["auc"], exact)
    precision, recall = precision_recall(y, p32)
    np.testing.assert_allclose(logs["precision"], precision, **TOL)
    np.testing.assert_allclose(logs["recall"], recall, **TOL)
    # the same over one batch and over batches of 7 (tables summed over batches)
    for b in (n, 7):
        again = m.evaluate(x, y, batch_size=b, verbose=0, return_dict=True)
        np.testing.assert_allclose(again["auc"], logs["auc"], **TOL)


def test_auc_of_predictions_outside_0_1_clips_them_as_keras():
    """A linear output (logits, say): Keras clips to [0, 1] before its thresholds (1.0 for these
    numbers, where kcompile gave 0.0 before it did)."""
    m = kcompile.compile_string(SCORER.replace("activation=sigmoid", "activation=linear")
                                .replace("binary_crossentropy", "mse"), seed=0)
    m.set_weights([np.array([[1.0]], np.float32), np.array([0.0], np.float32)])
    p = np.array([[-2.0], [-0.5], [0.3], [1.7], [-1.2], [2.5]], np.float32)
    y = np.array([[0], [0], [1], [1], [0], [1]], np.float32)
    assert m.evaluate(p, y, verbose=0, return_dict=True)["auc"] == pytest.approx(1.0)
    assert keras_auc(y, p) == pytest.approx(1.0)
    assert m.evaluate(p - 5, y, verbose=0, return_dict=True)["auc"] == pytest.approx(keras_auc(y, p - 5)) == 0.5


def test_precision_recall_auc_count_any_nonzero_target_as_positive_as_keras():
    """Smoothed targets (0.1, 0.9): Keras casts them to bool, so 0.1 is a positive. Keras 3.15
    gives precision 1.0, recall 0.8, AUC 0.8 here (kcompile gave 0.5, 1.0 and 0.875 when it
    thresholded targets at 0.5); the loss is unaffected."""
    m = kcompile.compile_string(SCORER, seed=0)
    m.set_weights([np.array([[1.0]], np.float32), np.array([0.0], np.float32)])
    x = np.array([[2.0], [1.0], [-1.0], [0.5], [-2.0], [3.0]], np.float32)
    y = np.array([[0.1], [0.9], [0.0], [0.1], [0.1], [1.0]], np.float32)
    logs = m.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["precision"] == pytest.approx(1.0)
    assert logs["recall"] == pytest.approx(0.8)
    assert logs["auc"] == pytest.approx(0.8, abs=1e-6)
    assert (logs["precision"], logs["recall"]) == pytest.approx(precision_recall(y, 1 / (1 + np.exp(-x))))
    assert logs["auc"] == pytest.approx(keras_auc(y, 1 / (1 + np.exp(-x))), abs=1e-6)
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logs["loss"] == pytest.approx(bce, rel=1e-5)


def test_auc_from_totals_is_keras_interpolation():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 300).astype(np.float32)
    p = np.clip(0.5 * y + 0.6 * rng.random(300), 0, 1).astype(np.float32)
    thresholds = np.array([-1e-7] + [(i + 1) / 199 for i in range(198)] + [1 + 1e-7], np.float32)
    above = p[:, None] > thresholds[None, :]
    truth = (y > 0.5)[:, None]
    tp, fp = np.sum(above & truth, 0).astype(float), np.sum(above & ~truth, 0).astype(float)
    got = auc_from_totals(tp, fp, float(truth.sum()), float((~truth).sum()))
    np.testing.assert_allclose(got, keras_auc(y, p), rtol=1e-12)
    assert abs(got - exact_auc(y, p)) < 0.01


def test_two_output_metrics():
    m = kcompile.compile_string(TWO_OUTPUTS, seed=0)
    assert [t["name"] for t in m.manifest["training"]["targets"]] == ["kind_target", "score_target"]
    x, labels = data(seed=4, classes=3)
    yk = np.eye(3, dtype=np.float32)[labels]
    ys = (x[:, :1] * 2 - x[:, 1:2]).astype(np.float32)
    m.fit(x, [yk, ys], epochs=2, batch_size=16, verbose=0)
    logs = m.evaluate(x, [yk, ys], batch_size=BATCH, verbose=0, return_dict=True)
    assert list(logs) == ["kind_loss", "score_loss", "kind_accuracy", "score_mae", "loss"]  # (Keras 3's keys)
    by_name = m.evaluate(x, {"kind_target": yk, "score_target": ys}, batch_size=BATCH, verbose=0, return_dict=True)
    assert by_name == pytest.approx(logs, rel=1e-12)
    by_output = m.evaluate(x, {"kind": yk, "score": ys}, batch_size=BATCH, verbose=0, return_dict=True)  # (Keras's keys)
    assert by_output == pytest.approx(logs, rel=1e-12)
    with pytest.raises(ShapeMismatch, match="targets given twice: kind and kind_target"):
        m.evaluate(x, {"kind": yk, "kind_target": yk, "score": ys}, verbose=0)
    pk, ps = (a.astype(np.float64) for a in m.predict(x))
    np.testing.assert_allclose(logs["kind_accuracy"], np.mean(pk.argmax(1) == labels), **TOL)
    np.testing.assert_allclose(logs["score_mae"], np.abs(ys - ps).mean(), **TOL)
    loss = -np.sum(yk * np.log(pk), axis=1) + 0.5 * ((ys - ps) ** 2).mean(axis=1)
    np.testing.assert_allclose(logs["loss"], loss.mean(), rtol=1e-5)
    # each output's own loss (unscaled by the expression's 0.5, as Keras's before loss_weights)
    np.testing.assert_allclose(logs["kind_loss"], (-np.sum(yk * np.log(pk), axis=1)).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["score_loss"], ((ys - ps) ** 2).mean(), rtol=1e-5)
    # the list form: loss, the outputs' losses, then the metrics, as Keras 3
    assert m.evaluate(x, [yk, ys], batch_size=BATCH, verbose=0) == pytest.approx(
        [logs[k] for k in ("loss", "kind_loss", "score_loss", "kind_accuracy", "score_mae")], rel=1e-6)
    history = m.fit(x, [yk, ys], epochs=1, batch_size=32, validation_data=(x, [yk, ys]), verbose=0)
    assert set(history.history) == {"loss", "kind_loss", "score_loss", "kind_accuracy", "score_mae", "val_loss",
                                    "val_kind_loss", "val_score_loss", "val_kind_accuracy", "val_score_mae"}


def test_history_with_validation_data():
    m = kcompile.compile_string(CATEGORICAL, seed=0)
    x, labels = data(n=130, seed=6)
    y = np.eye(4, dtype=np.float32)[labels]
    xv, yv = x[100:], y[100:]
    history = m.fit(x[:100], y[:100], epochs=3, batch_size=BATCH, validation_data=(xv, yv), verbose=0)
    names = ["loss", "accuracy", "mae", "mse", "precision", "recall", "categorical_accuracy"]
    assert set(history.history) == set(names) | {f"val_{k}" for k in names}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    # val_* of the last epoch: evaluate with the final weights
    final = m.evaluate(xv, yv, batch_size=BATCH, verbose=0, return_dict=True)
    for k in names:
        np.testing.assert_allclose(history.history[f"val_{k}"][-1], final[k], rtol=1e-6, atol=1e-7)
    # with the rate at 0 the weights stay: the epoch's training logs equal evaluate over the
    # training set (batch means weighted by batch size over 32+32+32+4)
    m.learning_rate = 0.0
    history = m.fit(x[:100], y[:100], epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    train = m.evaluate(x[:100], y[:100], batch_size=BATCH, verbose=0, return_dict=True)
    for k in names:
        np.testing.assert_allclose(history.history[k][0], train[k], rtol=1e-5, atol=1e-7)


def test_history_with_validation_split():
    m = kcompile.compile_string(BINARY, seed=0)
    x, _ = data(n=120, seed=7)
    y = (x[:, :1] > 0).astype(np.float32)
    history = m.fit(x, y, epochs=2, batch_size=BATCH, validation_split=0.25, verbose=0)
    names = ["loss", "accuracy", "precision", "recall", "auc", "binary_accuracy", "mse"]
    assert set(history.history) == set(names) | {f"val_{k}" for k in names}
    assert all(len(v) == 2 for v in history.history.values())
    # Keras validates on the last 25% (not shuffled)
    final = m.evaluate(x[90:], y[90:], batch_size=BATCH, verbose=0, return_dict=True)
    for k in names:
        np.testing.assert_allclose(history.history[f"val_{k}"][-1], final[k], rtol=1e-6, atol=1e-7)
    assert m.iterations == 2 * 3  # 90 training samples: batches of 32, 32, 26


def test_fit_without_validation_has_no_val_keys():
    m = kcompile.compile_string(SPARSE_BARE, seed=0)
    x, labels = data(seed=8)
    history = m.fit(x, labels, epochs=2, batch_size=BATCH, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}
    assert len(history.history["loss"]) == 2


@pytest.mark.parametrize("metrics, col, message", [
    ("[mae, mae, accuracy]", 25, "metric mae is listed twice"),
    ('["mae", mae]', 27, "metric mae is listed twice"),
    ("[mae, mae(y)]", 25, "metric mae is listed twice"),  # (one output: both are named mae)
])
def test_a_metric_listed_twice_is_a_located_error(located, metrics, col, message):
    """(metrics_names had mae twice and evaluate returned 4 numbers, where fit's history had one
    mae; Keras 3 computes the second again as mae_1: one name is one metric here)"""
    d = located("model m {\n    input x: float32[4]\n    y = Dense(3)(x)\n    output y\n    train {\n        loss = mse\n"
                f"        optimizer = SGD()\n        metrics = {metrics}\n    }}\n}}\n", 8, message, col)
    assert d.message == message


def test_one_metric_on_two_outputs_is_two_metrics(located):
    """mae(kind) and mae(score) are kind_mae and score_mae; mae(score) twice is refused."""
    both = TWO_OUTPUTS.replace("[accuracy(kind), mae(score)]", "[mae(kind), mae(score)]")
    assert kcompile.compile_string(both, seed=0).metrics_names == ["loss", "kind_loss", "score_loss", "kind_mae",
                                                                   "score_mae"]
    d = located(TWO_OUTPUTS.replace("[accuracy(kind), mae(score)]", "[mae(score), mae(kind), mae(score)]"), 11,
                "metric score_mae is listed twice", col=43)
    assert d.message == "metric score_mae is listed twice"
