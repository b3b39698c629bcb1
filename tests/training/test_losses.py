"""Losses: (a) the value the evaluation graph computes equals Keras 3's formula in numpy;
(b) the generated gradient of each loss w.r.t. the prediction (float64) equals central
finite differences, and the fused softmax + cross-entropy gradient is (p - y) / batch."""
import os
import sys

import numpy as np
import pytest

import kcompile
from kcompile.autodiff import GradContext, gradients
from kcompile.ir import Graph, TensorType
from kcompile.training import losses

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "autodiff"))
from gradcheck import _session  # noqa: E402

EPS = 1e-7
N = 6


# ---------------- Keras 3's formulas (keras/src/backend/numpy/nn.py, keras/src/losses/losses.py) ----------------
def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def keras_categorical_crossentropy(y, p, from_logits=False, label_smoothing=0.0):
    y = y.astype(np.float64)
    if label_smoothing:
        y = y * (1 - label_smoothing) + label_smoothing / y.shape[-1]
    if from_logits:
        return -np.sum(y * _log_softmax(p.astype(np.float64)), -1)
    p = p / np.sum(p, -1, keepdims=True)
    p = np.clip(p, p.dtype.type(EPS), p.dtype.type(1 - EPS))  # in the prediction's dtype, as Keras
    return -np.sum(y * np.log(p.astype(np.float64)), -1)


def keras_sparse_categorical_crossentropy(labels, p, from_logits=False):
    return keras_categorical_crossentropy(np.eye(p.shape[-1])[labels], p, from_logits)


def keras_binary_crossentropy(y, p, from_logits=False, label_smoothing=0.0):
    y = y.astype(np.float64)
    if label_smoothing:
        y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        p = p.astype(np.float64)
        per = np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))
    else:
        # Keras clips in the prediction's dtype: in float32, 1 - 1e-7 rounds to 1 - 1.19e-7.
        p = np.clip(p, p.dtype.type(EPS), p.dtype.type(1 - EPS)).astype(np.float64)
        per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return per.mean(-1)


def keras_mse(y, p):
    return np.mean((y.astype(np.float64) - p) ** 2, -1)


def keras_mae(y, p):
    return np.mean(np.abs(y.astype(np.float64) - p), -1)


def keras_huber(y, p, delta=1.0):
    err = p.astype(np.float64) - y
    a = np.abs(err)
    return np.mean(np.where(a <= delta, 0.5 * err ** 2, delta * a - 0.5 * delta ** 2), -1)


# ---------------- (a) loss values of the evaluation graph ----------------
def _model(head, loss, features=5, extra=""):
    return (f"model m {{\n    input x: float32[{features}]\n    {head}\n    output p\n"
            f"    train {{\n        {extra}loss = {loss}\n        optimizer = SGD()\n    }}\n}}\n")


def _random_weights(m, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    m.set_weights([rng.normal(0, scale, w.shape).astype(w.dtype) for w in m.get_weights()])


def _x(seed=0, n=N, features=5):
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def _one_hot(n, classes, seed):
    return np.eye(classes, dtype=np.float32)[np.random.default_rng(seed).integers(0, classes, n)]


def _soft_targets(n, classes, seed, dtype=np.float32):
    t = np.random.default_rng(seed).uniform(0.05, 1, size=(n, classes)).astype(dtype)
    return t / t.sum(-1, keepdims=True)  # rows sum to 1 in dtype


def _evaluate(src, y, weight_seed=3, scale=1.0):
    m = kcompile.compile_string(src)
    _random_weights(m, weight_seed, scale)
    x = _x()
    p = m.predict(x, batch_size=len(x))
    loss = m.evaluate(x, y, verbose=0, batch_size=len(x))
    return float(loss), p


CATEGORICAL = [
    # (head, loss in the source, keras formula kwargs)
    ("p = Dense(3, activation=softmax)", "categorical_crossentropy", {}),
    ("p = Dense(3, activation=softmax)", "categorical_crossentropy(p, label_smoothing=0.1)", {"label_smoothing": 0.1}),
    # not normalized: Keras divides by the sum before clipping
    ("p = Dense(3, activation=sigmoid)", "categorical_crossentropy", {}),
    ("p = Dense(3, activation=sigmoid)", "categorical_crossentropy(p, label_smoothing=0.2)", {"label_smoothing": 0.2}),
    # exact zeros (hard_sigmoid saturates): the clip to [1e-7, 1 - 1e-7] decides the value
    ("p = Dense(3, activation=hard_sigmoid)", "categorical_crossentropy", {}),
    ("p = Dense(3)", "categorical_crossentropy(p, from_logits=true)", {"from_logits": True}),
    ("p = Dense(3)", "categorical_crossentropy(p, from_logits=true, label_smoothing=0.1)",
     {"from_logits": True, "label_smoothing": 0.1}),
]


@pytest.mark.parametrize("targets", ["one_hot", "soft"])
@pytest.mark.parametrize("head,loss,kw", CATEGORICAL, ids=[f"{h.split('activation=')[-1]}-{l}" for h, l, _ in
                                                            CATEGORICAL])
def test_categorical_crossentropy_value(head, loss, kw, targets):
    y = _one_hot(N, 3, 1) if targets == "one_hot" else _soft_targets(N, 3, 1)
    scale = 4.0 if "hard_sigmoid" in head else 1.0
    value, p = _evaluate(_model(head, loss), y, scale=scale)
    if "hard_sigmoid" in head:
        assert np.any(p == 0), "the case needs saturated predictions"
        # Keras's clip makes each zero-probability hit cost -log(1e-7) ~ 16; the value is large.
    expected = keras_categorical_crossentropy(y, p, **kw).mean()
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("explicit", [False, True])
def test_sparse_categorical_crossentropy_value(from_logits, explicit):
    head = "p = Dense(4)" if from_logits else "p = Dense(4, activation=softmax)"
    args = ", from_logits=true" if from_logits else ""
    if explicit:
        src = _model(head, f"sparse_categorical_crossentropy(label, p{args})", extra="target label: int64[]\n        ")
    else:
        src = _model(head, f"sparse_categorical_crossentropy(p{args})")
    labels = np.random.default_rng(2).integers(0, 4, N).astype(np.int64)
    value, p = _evaluate(src, labels)
    expected = keras_sparse_categorical_crossentropy(labels, p, from_logits).mean()
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_sparse_categorical_crossentropy_not_normalized():
    src = _model("p = Dense(4, activation=sigmoid)", "sparse_categorical_crossentropy")
    labels = np.random.default_rng(2).integers(0, 4, N).astype(np.int64)
    value, p = _evaluate(src, labels)
    assert value == pytest.approx(keras_sparse_categorical_crossentropy(labels, p).mean(), rel=1e-5, abs=1e-5)


BINARY = [
    ("p = Dense(2, activation=sigmoid)", "binary_crossentropy", {}),
    ("p = Dense(2, activation=sigmoid)", "binary_crossentropy(p, label_smoothing=0.1)", {"label_smoothing": 0.1}),
    ("p = Dense(2)", "binary_crossentropy(p, from_logits=true)", {"from_logits": True}),
    ("p = Dense(2)", "binary_crossentropy(p, from_logits=true, label_smoothing=0.2)",
     {"from_logits": True, "label_smoothing": 0.2}),
    # probabilities not produced by a sigmoid: the clipped log formula
    ("p = Dense(2, activation=hard_sigmoid)", "binary_crossentropy", {}),
    ("p = Dense(2, activation=hard_sigmoid)", "binary_crossentropy(p, label_smoothing=0.1)",
     {"label_smoothing": 0.1}),
]


@pytest.mark.parametrize("head,loss,kw", BINARY, ids=[f"{h.split('activation=')[-1]}-{l}" for h, l, _ in BINARY])
def test_binary_crossentropy_value(head, loss, kw):
    y = np.random.default_rng(4).integers(0, 2, (N, 2)).astype(np.float32)
    scale = 4.0 if "hard_sigmoid" in head else 1.0
    value, p = _evaluate(_model(head, loss), y, scale=scale)
    if "hard_sigmoid" in head:
        assert np.any((p == 0) | (p == 1)), "the case needs saturated predictions"
    expected = keras_binary_crossentropy(y, p, **kw).mean()
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("loss,fn", [
    ("mean_squared_error", keras_mse), ("mse", keras_mse),
    ("mean_absolute_error", keras_mae), ("mae", keras_mae),
    ("huber", keras_huber), ("huber_loss", keras_huber),
    ("huber(p, delta=0.5)", lambda y, p: keras_huber(y, p, 0.5)),
    ("huber(p, delta=2.5)", lambda y, p: keras_huber(y, p, 2.5)),
])
def test_regression_loss_value(loss, fn):
    y = np.random.default_rng(5).normal(size=(N, 3)).astype(np.float32) * 2
    value, p = _evaluate(_model("p = Dense(3)", loss), y)
    assert value == pytest.approx(fn(y, p).mean(), rel=1e-5, abs=1e-6)


def test_rank3_prediction_reduces_last_axis():
    # Per-sample loss reduces the last axis only; the batch and time axes are averaged.
    src = ("model m {\n    input x: float32[4, 5]\n    p = Dense(3, activation=softmax)\n    output p\n"
           "    train {\n        loss = categorical_crossentropy\n        optimizer = SGD()\n    }\n}\n")
    m = kcompile.compile_string(src)
    _random_weights(m, 3)
    x = np.random.default_rng(0).normal(size=(N, 4, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.random.default_rng(1).integers(0, 3, (N, 4))]
    p = m.predict(x, batch_size=N)
    value = m.evaluate(x, y, verbose=0, batch_size=N)
    assert value == pytest.approx(keras_categorical_crossentropy(y, p).mean(), rel=1e-5)


TWO_OUTPUTS = """model m {
    input x: float32[5]
    h = Dense(4, activation=tanh)(x)
    a = Dense(3, activation=softmax)(h)
    b = Dense(2)(h)
    output a, b
    train {
        loss = LOSS
        optimizer = SGD(0.1)
    }
}
"""


@pytest.mark.parametrize("loss,combine", [
    ("categorical_crossentropy(a) + 0.5 * mse(b)", lambda ca, mb: ca + 0.5 * mb),
    ("2.0 * categorical_crossentropy(a) - mae(b) / 4.0", None),
    ("mean(categorical_crossentropy(a)) + huber(b, delta=0.5)", None),
])
def test_several_outputs_weighted_sum(loss, combine):
    m = kcompile.compile_string(TWO_OUTPUTS.replace("LOSS", loss))
    _random_weights(m, 7)
    x = _x()
    ya = _one_hot(N, 3, 8)
    yb = np.random.default_rng(9).normal(size=(N, 2)).astype(np.float32)
    pa, pb = m.predict(x, batch_size=N)
    ce = keras_categorical_crossentropy(ya, pa).mean()
    if loss.startswith("2.0"):
        expected = 2.0 * ce - keras_mae(yb, pb).mean() / 4.0
    elif loss.startswith("mean"):
        expected = ce + keras_huber(yb, pb, 0.5).mean()
    else:
        expected = combine(ce, keras_mse(yb, pb).mean())
    y = {"a_target": ya, "b_target": yb}
    value = m.evaluate(x, y, verbose=0, batch_size=N)[0]  # (then the outputs' own losses, as Keras)
    assert value == pytest.approx(expected, rel=1e-5)
    # One training step reports the loss of the batch before its update, then changes the weights.
    before = [w.copy() for w in m.get_weights()]
    assert m.train_on_batch(x, y)[0] == pytest.approx(expected, rel=1e-5)
    assert any(not np.array_equal(b, w) for b, w in zip(before, m.get_weights()))
    history = m.fit(x, y, batch_size=N, epochs=3, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))


def test_loss_weights_scale_each_outputs_terms_as_keras():
    """Keras's compile(loss_weights=[0.3, 2.0]): the loss is 0.3 * cce(a) + 2 * mse(b); it was
    read and ignored. Trained, it steps as the loss written with the factors does."""
    weighted = TWO_OUTPUTS.replace("LOSS", "categorical_crossentropy(a) + mse(b)\n        loss_weights = [0.3, 2.0]")
    written = TWO_OUTPUTS.replace("LOSS", "0.3 * categorical_crossentropy(a) + 2.0 * mse(b)")
    m, reference = kcompile.compile_string(weighted), kcompile.compile_string(written)
    _random_weights(m, 7)
    reference.set_weights(m.get_weights())
    x, ya = _x(), _one_hot(N, 3, 8)
    yb = np.random.default_rng(9).normal(size=(N, 2)).astype(np.float32)
    pa, pb = m.predict(x, batch_size=N)
    expected = 0.3 * keras_categorical_crossentropy(ya, pa).mean() + 2.0 * keras_mse(yb, pb).mean()
    assert m.evaluate(x, [ya, yb], verbose=0, batch_size=N) == pytest.approx(
        [expected, keras_categorical_crossentropy(ya, pa).mean(), keras_mse(yb, pb).mean()], rel=1e-5)
    for model in (m, reference):
        model.fit(x, [ya, yb], batch_size=8, epochs=2, verbose=0, shuffle=False)
    for a, b in zip(m.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------- (b) gradients w.r.t. the prediction, float64 ----------------
def _graph(pred_shape, target_shape, target_dtype="float64", softmax=False, sigmoid=False):
    g = Graph("loss")
    g.add_input("z", TensorType("float64", pred_shape))
    g.add_input("y", TensorType(target_dtype, target_shape))
    ctx = GradContext(g)
    p = "z"
    if softmax:
        p = ctx.op("Softmax", "z", axis=-1)
    if sigmoid:
        p = ctx.op("Sigmoid", "z")
    return g, ctx, p


def _batch_loss(ctx, per_sample):
    return ctx.op("ReduceMean", per_sample, keepdims=0)


def _check_fd(g, loss, feeds, wrt="z", h=1e-6, rtol=1e-6, atol=1e-9):
    """Compare the generated d loss / d wrt with central differences at every element."""
    grad = gradients(g, loss, [wrt])[wrt]
    assert grad is not None
    g.outputs = [("loss", loss), ("grad", grad)]
    session = _session(g)
    value, analytic = session.run(None, feeds)
    assert analytic.shape == feeds[wrt].shape
    g.outputs = [("loss", loss)]
    loss_session = _session(g)
    numeric = np.zeros_like(feeds[wrt])
    for i in range(feeds[wrt].size):
        f = {k: v.copy() for k, v in feeds.items()}
        f[wrt].reshape(-1)[i] += h
        up = loss_session.run(None, f)[0]
        f[wrt].reshape(-1)[i] -= 2 * h
        down = loss_session.run(None, f)[0]
        numeric.reshape(-1)[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)
    return value, analytic


def _probs(shape, seed, normalized=True):
    p = np.random.default_rng(seed).uniform(0.1, 0.9, size=shape)  # away from the clip at 1e-7
    return p / p.sum(-1, keepdims=True) if normalized else p


def _logits(shape, seed):
    return np.random.default_rng(seed).normal(size=shape) * 2


@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_categorical_crossentropy_gradient(normalized, label_smoothing):
    g, ctx, p = _graph((N, 4), (N, 4))
    loss = _batch_loss(ctx, losses.categorical_crossentropy(ctx, "y", p, label_smoothing=label_smoothing))
    y = _soft_targets(N, 4, 1, np.float64)
    z = _probs((N, 4), 2, normalized)
    value, _ = _check_fd(g, loss, {"z": z, "y": y})
    assert value == pytest.approx(keras_categorical_crossentropy(y, z, label_smoothing=label_smoothing).mean(),
                                  rel=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_categorical_crossentropy_from_logits_gradient(label_smoothing):
    g, ctx, p = _graph((N, 4), (N, 4))
    loss = _batch_loss(ctx, losses.categorical_crossentropy(ctx, "y", p, from_logits=True,
                                                            label_smoothing=label_smoothing))
    y = _one_hot(N, 4, 3).astype(np.float64)
    z = _logits((N, 4), 4)
    value, _ = _check_fd(g, loss, {"z": z, "y": y})
    assert value == pytest.approx(keras_categorical_crossentropy(y, z, True, label_smoothing).mean(), rel=1e-12)


@pytest.mark.parametrize("targets", ["one_hot", "soft"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_fused_softmax_crossentropy_gradient_is_p_minus_y(targets, label_smoothing):
    # The prediction comes from a Softmax: kcompile takes LogSoftmax of the logits instead of
    # log(softmax); the gradient w.r.t. the logits is (p - y) / batch size per sample.
    g, ctx, p = _graph((N, 4), (N, 4), softmax=True)
    loss = _batch_loss(ctx, losses.categorical_crossentropy(ctx, "y", p, label_smoothing=label_smoothing))
    assert any(n.op == "LogSoftmax" and n.inputs == ["z"] for n in g.nodes()), "not fused"
    assert not any(n.op == "Log" for n in g.nodes())
    y = (_one_hot(N, 4, 5) if targets == "one_hot" else _soft_targets(N, 4, 5, np.float64)).astype(np.float64)
    z = _logits((N, 4), 6)
    value, analytic = _check_fd(g, loss, {"z": z, "y": y})
    probs = np.exp(_log_softmax(z))
    smoothed = y * (1 - label_smoothing) + label_smoothing / 4
    np.testing.assert_allclose(analytic, (probs - smoothed) / N, rtol=1e-12, atol=1e-15)
    assert value == pytest.approx(keras_categorical_crossentropy(y, probs, label_smoothing=label_smoothing).mean(),
                                  rel=1e-10)


def test_fused_sparse_softmax_crossentropy_gradient():
    g, ctx, p = _graph((N, 5), (N,), target_dtype="int64", softmax=True)
    loss = _batch_loss(ctx, losses.sparse_categorical_crossentropy(ctx, "y", p))
    labels = np.random.default_rng(7).integers(0, 5, N).astype(np.int64)
    z = _logits((N, 5), 8)
    value, analytic = _check_fd(g, loss, {"z": z, "y": labels})
    probs = np.exp(_log_softmax(z))
    np.testing.assert_allclose(analytic, (probs - np.eye(5)[labels]) / N, rtol=1e-12, atol=1e-15)
    assert value == pytest.approx(keras_sparse_categorical_crossentropy(labels, probs).mean(), rel=1e-10)


def test_softmax_on_other_axis_is_not_fused():
    # Softmax over axis 1 of [N, 3, 4] and the loss over the last axis: no fusion, plain log.
    g, ctx, p = _graph((N, 3, 4), (N, 3, 4))
    p = ctx.op("Softmax", "z", axis=1)
    loss = _batch_loss(ctx, losses.categorical_crossentropy(ctx, "y", p))
    assert not any(n.op == "LogSoftmax" for n in g.nodes())
    y = np.eye(4)[np.random.default_rng(1).integers(0, 4, (N, 3))]
    z = _logits((N, 3, 4), 2) * 0.5
    value, _ = _check_fd(g, loss, {"z": z, "y": y})
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert value == pytest.approx(keras_categorical_crossentropy(y, probs).mean(), rel=1e-10)


@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_categorical_crossentropy_gradient(from_logits):
    g, ctx, p = _graph((N, 5), (N,), target_dtype="int64")
    loss = _batch_loss(ctx, losses.sparse_categorical_crossentropy(ctx, "y", p, from_logits=from_logits))
    labels = np.random.default_rng(9).integers(0, 5, N).astype(np.int64)
    z = _logits((N, 5), 10) if from_logits else _probs((N, 5), 10, normalized=False)
    value, _ = _check_fd(g, loss, {"z": z, "y": labels})
    assert value == pytest.approx(keras_sparse_categorical_crossentropy(labels, z, from_logits).mean(), rel=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_binary_crossentropy_gradient(from_logits, label_smoothing):
    g, ctx, p = _graph((N, 3), (N, 3))
    loss = _batch_loss(ctx, losses.binary_crossentropy(ctx, "y", p, from_logits=from_logits,
                                                       label_smoothing=label_smoothing))
    y = np.random.default_rng(11).integers(0, 2, (N, 3)).astype(np.float64)
    z = _logits((N, 3), 12) if from_logits else _probs((N, 3), 12, normalized=False)
    if from_logits:  # (logits of exactly 0, a dead unit's: the stable form's |x| and max(x, 0) have
        z[:2] = 0.0  # kinks there whose subgradients gave -y; the loss is smooth, its gradient 0.5 - y)
    value, analytic = _check_fd(g, loss, {"z": z, "y": y})
    if from_logits:
        y_smooth = y * (1 - label_smoothing) + 0.5 * label_smoothing
        np.testing.assert_allclose(analytic, (1 / (1 + np.exp(-z)) - y_smooth) / (N * 3), rtol=1e-10, atol=1e-15)
    assert value == pytest.approx(keras_binary_crossentropy(y, z, from_logits, label_smoothing).mean(), rel=1e-12)


def test_fused_sigmoid_binary_crossentropy_gradient():
    # A Sigmoid prediction: the stable logits form; the gradient w.r.t. the logits is
    # (sigmoid(z) - y) / (batch * units).
    g, ctx, p = _graph((N, 3), (N, 3), sigmoid=True)
    loss = _batch_loss(ctx, losses.binary_crossentropy(ctx, "y", p))
    y = np.random.default_rng(13).integers(0, 2, (N, 3)).astype(np.float64)
    z = _logits((N, 3), 14)
    z[0] = 0.0  # (a zero bias on all-zero features)
    value, analytic = _check_fd(g, loss, {"z": z, "y": y})
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(analytic, (s - y) / (N * 3), rtol=1e-10, atol=1e-15)
    assert value == pytest.approx(keras_binary_crossentropy(y, s).mean(), rel=1e-10)


@pytest.mark.parametrize("name,kw,fn", [
    ("mean_squared_error", {}, keras_mse),
    ("mean_absolute_error", {}, keras_mae),
    ("huber", {}, keras_huber),
    ("huber", {"delta": 0.5}, lambda y, p: keras_huber(y, p, 0.5)),
    ("huber", {"delta": 3.0}, lambda y, p: keras_huber(y, p, 3.0)),
])
def test_regression_loss_gradient(name, kw, fn):
    g, ctx, p = _graph((N, 3), (N, 3))
    loss = _batch_loss(ctx, losses.LOSS_FUNCTIONS[name](ctx, "y", p, **kw))
    y = np.random.default_rng(15).normal(size=(N, 3)) * 2
    err = np.random.default_rng(16).normal(size=(N, 3)) * 2
    # keep |p - y| away from 0 and from delta (kinks of abs and of huber's switch)
    err = np.sign(err) * (np.abs(err) + 0.05)
    delta = kw.get("delta", 1.0)
    err = np.where(np.abs(np.abs(err) - delta) < 0.05, err * 1.2, err)
    z = y + err
    value, analytic = _check_fd(g, loss, {"z": z, "y": y})
    assert value == pytest.approx(fn(y, z).mean(), rel=1e-12)
    if name == "mean_squared_error":
        np.testing.assert_allclose(analytic, 2 * (z - y) / (N * 3), rtol=1e-12)
    if name == "mean_absolute_error":
        np.testing.assert_allclose(analytic, np.sign(z - y) / (N * 3), rtol=1e-12)


def test_training_step_gradient_matches_loss():
    # The whole training graph on a model (float32): one SGD step moves each weight by
    # -lr * d loss / d w; compare with float64 finite differences of the numpy loss.
    src = _model("p = Dense(3, activation=softmax)", "categorical_crossentropy", features=4)
    m = kcompile.compile_string(src.replace("SGD()", "SGD(1.0)"))
    _random_weights(m, 3)
    x = _x(features=4)
    y = _one_hot(N, 3, 1)
    kernel, bias = [w.astype(np.float64) for w in m.get_weights()]

    def loss_of(k, b):
        return keras_categorical_crossentropy(y, np.exp(_log_softmax(x.astype(np.float64) @ k + b))).mean()

    m.train_on_batch(x, y)
    new_kernel, new_bias = m.get_weights()
    h = 1e-6
    for w, new, which in ((kernel, new_kernel, 0), (bias, new_bias, 1)):
        numeric = np.zeros_like(w)
        for i in range(w.size):
            up, down = w.copy(), w.copy()
            up.reshape(-1)[i] += h
            down.reshape(-1)[i] -= h
            args_up = (up, bias) if which == 0 else (kernel, up)
            args_down = (down, bias) if which == 0 else (kernel, down)
            numeric.reshape(-1)[i] = (loss_of(*args_up) - loss_of(*args_down)) / (2 * h)
        np.testing.assert_allclose(w - new, numeric, rtol=1e-4, atol=1e-6)


MASKED = """model s {
    input t: int64[5]
    Embedding(8, 3, mask_zero=true)
    LSTM(4, return_sequences=true)
    p = Dense(3, activation=softmax)
    output p
    train {
        loss = sparse_categorical_crossentropy
        optimizer = SGD(learning_rate=1.0)
        metrics = [accuracy]
    }
}
"""


def test_losses_and_metrics_leave_out_masked_steps_as_keras():
    """Keras 3 reduces a masked output's loss over the kept steps (sum / kept count) and its
    mean metrics too; kcompile took the plain mean over every step (1.169 where Keras/JAX gave
    1.2555 on these numbers; a scratch run matched Keras/JAX on the loss and one SGD step)."""
    m = kcompile.compile_string(MASKED)
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in m.get_weights()])
    ids = np.array([[1, 2, 0, 0, 3], [0, 3, 4, 0, 5], [6, 7, 1, 2, 3], [1, 0, 0, 0, 0]] * 3)
    y = np.random.default_rng(1).integers(0, 3, size=(12, 5))
    keep = ids != 0

    def reference(batch):
        p = m.predict(ids[batch])
        ce = -np.log(np.take_along_axis(p, y[batch][..., None], -1)[..., 0])
        hits = p.argmax(-1) == y[batch]
        return (ce * keep[batch]).sum() / keep[batch].sum(), hits[keep[batch]].sum(), keep[batch].sum()

    loss, hits, kept = reference(slice(0, 12))
    assert m.evaluate(ids, y, verbose=0, batch_size=12) == pytest.approx([loss, hits / kept], rel=1e-5)
    # over batches: the loss as Keras (the batches' losses by batch size), accuracy over kept steps
    parts = [reference(slice(i, i + 5)) for i in (0, 5, 10)]
    expected_loss = sum(p[0] * n for p, n in zip(parts, (5, 5, 2))) / 12
    assert m.evaluate(ids, y, verbose=0, batch_size=5) == pytest.approx(
        [expected_loss, sum(p[1] for p in parts) / sum(p[2] for p in parts)], rel=1e-5)
    before_step = reference(slice(0, 4))[0]
    assert m.train_on_batch(ids[:4], y[:4])[0] == pytest.approx(before_step, rel=1e-5)
    assert "masked output's loss" in m.manifest["training"]["per_sample"]  # (not split into parts)


def test_a_per_step_loss_and_a_per_sample_loss_add_as_their_means():
    """`mse(s) + categorical_crossentropy(c)` with s per step ([N, 4] losses) and c per sample
    ([N]): each is its own mean, as Keras reduces each output's loss (it was a broadcast error)."""
    m = kcompile.compile_string("""model m {
    input x: float32[4, 2]
    s = Dense(3)(x)
    c = Dense(2, activation=softmax)(Flatten()(x))
    output s, c
    train {
        loss = mse(s) + 0.5 * categorical_crossentropy(c)
        optimizer = SGD()
    }
}""")
    rng = np.random.default_rng(0)
    x, ys = rng.random((10, 4, 2), dtype=np.float32), rng.random((10, 4, 3), dtype=np.float32)
    yc = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 10)]
    ps, pc = m.predict(x)
    expected = ((ps - ys) ** 2).mean() + 0.5 * (-(yc * np.log(pc)).sum(-1)).mean()
    assert m.evaluate(x, [ys, yc], verbose=0, batch_size=10)[0] == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(m.fit(x, [ys, yc], verbose=0).history["loss"][0])


@pytest.mark.parametrize("kernel,kernel_factors", [("l2(0.01)", (0.0, 0.01)), ("l2", (0.0, 0.01)), ('"l1"', (0.01, 0.0)),
                                                   ("l1_l2(l1=0.02, l2=0.03)", (0.02, 0.03))])
def test_weight_regularizers_add_keras_penalties_to_the_loss(kernel, kernel_factors):
    """kernel_regularizer / bias_regularizer (Keras's, its string forms too: "l2" is l2(0.01)) add
    l1 * sum(|w|) + l2 * sum(w^2) to the loss; the loss expression's l2(weights) adds the sum of
    the kernels' squares; one SGD step moves the weights by the penalty's gradient too."""
    m = kcompile.compile_string(f"""model r {{
    input x: float32[3]
    y = Dense(2, kernel_regularizer={kernel}, bias_regularizer=l1(0.1))
    output y
    train {{
        loss = mse + 0.5 * l2(weights)
        optimizer = SGD(learning_rate=0.1)
    }}
}}""")
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)])
    x, y = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    kernel_w, bias = (w.astype(np.float64) for w in m.get_weights())
    l1, l2 = kernel_factors
    data = ((x @ kernel_w + bias - y) ** 2).mean()
    penalty = l1 * np.abs(kernel_w).sum() + l2 * (kernel_w ** 2).sum() + 0.1 * np.abs(bias).sum()
    expected = data + 0.5 * (kernel_w ** 2).sum() + penalty
    assert m.evaluate(x, y, batch_size=4, verbose=0) == pytest.approx(expected, rel=1e-5)
    m.train_on_batch(x, y)
    residual = (x @ kernel_w + bias - y) * 2 / y.size
    grad_kernel = x.T @ residual + kernel_w + l1 * np.sign(kernel_w) + 2 * l2 * kernel_w
    grad_bias = residual.sum(0) + 0.1 * np.sign(bias)
    np.testing.assert_allclose(m.get_weights()[0], kernel_w - 0.1 * grad_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.get_weights()[1], bias - 0.1 * grad_bias, rtol=1e-5, atol=1e-6)


def test_depthwise_and_pointwise_regularizers_penalize_their_kernels():
    """(Keras's depthwise_regularizer / pointwise_regularizer; kernel_regularizer on these layers
    was accepted and penalized nothing)"""
    m = kcompile.compile_string("""model r {
    input x: float32[5, 5, 2]
    SeparableConv2D(3, 3, depthwise_regularizer=l2(0.5), pointwise_regularizer=l1(0.25))
    Flatten()
    y = Dense(1)
    output y
    train {
        loss = mse
        optimizer = SGD()
    }
}""")
    x, y = np.zeros((2, 5, 5, 2), np.float32), np.zeros((2, 1), np.float32)
    depthwise, pointwise = (w.astype(np.float64) for w in m.get_weights()[:2])
    expected = 0.5 * (depthwise ** 2).sum() + 0.25 * np.abs(pointwise).sum()  # (zero data: the loss is the penalties)
    assert m.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_binary_crossentropy_trains_a_float64_model():
    """onnxruntime's CPU provider has Softplus for float32 only: the float64 lowering uses
    log(1 + exp(-|x|)); one SGD step against numpy."""
    m = kcompile.compile_string("model m {\n    input x: float64[3]\n    p = Dense(1, activation=sigmoid)(x)\n"
                                "    output p\n    train {\n        loss = binary_crossentropy\n"
                                "        optimizer = SGD(0.5)\n    }\n}\n", seed=0)
    kernel, bias = m.get_weights()
    x = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    y = np.array([[1.0], [0.0]])
    z = x @ kernel + bias
    p = 1 / (1 + np.exp(-z))
    loss = m.train_on_batch(x, y)
    assert loss == pytest.approx(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))), rel=1e-12)
    np.testing.assert_allclose(m.get_weights()[0], kernel - 0.5 * x.T @ (p - y) / 2, rtol=1e-12)


@pytest.mark.parametrize("opt_level", [0, 1])
@pytest.mark.parametrize("layer", ["LSTM(4)", "GRU(4)", "GRU(4, reset_after=false)", "SimpleRNN(4)",
                                   "Bidirectional(LSTM(2))", "LSTM(4, recurrent_dropout=0.3)"])
def test_a_loss_on_a_layer_whose_training_form_differs(layer, opt_level):
    """A loss may read any named value, also one whose op the training form replaces (a
    recurrent layer's op gives its gates to the gradient in training; recurrent dropout draws
    masks): the step's loss is the evaluation's where no noise enters."""
    src = f"""model m {{
        input x: float32[5, 3]
        h = {layer}(x)
        y = Dense(1)(h)
        output y
        train {{ target t: float32[4]; loss = mse(y) + mse(t, h); optimizer = SGD(learning_rate=0.1) }}
    }}"""
    m = kcompile.compile_string(src, opt_level=opt_level)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5, 3)).astype(np.float32)
    targets = {"y": rng.normal(size=(6, 1)).astype(np.float32), "t": rng.normal(size=(6, 4)).astype(np.float32)}
    before = m.evaluate(x, targets, verbose=0)
    step = m.train_on_batch(x, targets)
    if "dropout" in layer:
        assert np.isfinite(step) and step != pytest.approx(before, rel=1e-6)
    else:
        np.testing.assert_allclose(step, before, rtol=1e-5)
    assert m.evaluate(x, targets, verbose=0) < before  # the step went down the loss's slope
