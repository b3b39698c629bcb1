"""Keras's configured-loss form: a loss called with keyword arguments only (`huber(delta=0.5)`,
as Keras's `loss=keras.losses.Huber(delta=0.5)`), and Keras's loss class names (`Huber`,
`CategoricalCrossentropy`, `MeanSquaredError()`, ...), mean that loss with those arguments on the
single output against its target, as a bare loss name does. Its loss value and one SGD step
equal the explicit `huber(y, delta=0.5)` form's and a numpy reference; errors stay located."""
import numpy as np
import pytest

import kcompile
from kcompile.errors import KcompileError

N, FEATURES, UNITS, LR = 8, 4, 3, 0.1

SOURCE = """model m {{
    input x: float32[4]
    y = Dense(3)
    output y
    train {{
        loss = {loss}
        optimizer = SGD(0.1)
    }}
}}
"""


def build(loss):
    return kcompile.compile_string(SOURCE.format(loss=loss), file="t.kdl", seed=0)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# numpy reference: (loss, d loss / d prediction) of the batch mean, float64
def huber(t, p, delta=1.0):
    err = p - t
    a = np.abs(err)
    loss = np.mean(np.where(a <= delta, 0.5 * err ** 2, delta * a - 0.5 * delta ** 2))
    return loss, np.clip(err, -delta, delta) / err.size


def mse(t, p):
    return np.mean((p - t) ** 2), 2 * (p - t) / t.size


def categorical_from_logits(t, z, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + label_smoothing / t.shape[-1]
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -np.mean(np.sum(t * log_p, -1)), (_softmax(z) - t) / len(t)


def binary_from_logits(t, z, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + 0.5 * label_smoothing
    loss = np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    return loss, (1 / (1 + np.exp(-z)) - t) / z.size


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    t = (2 * rng.normal(size=(N, UNITS))).astype(np.float32)  # |p - t| on both sides of delta
    onehot = np.eye(UNITS, dtype=np.float32)[rng.integers(0, UNITS, N)]
    bits = rng.integers(0, 2, (N, UNITS)).astype(np.float32)
    return x, {"real": t, "onehot": onehot, "bits": bits}


# (configured forms, explicit form, target kind, numpy reference, Keras loss object)
CASES = {
    "huber": (["huber(delta=0.5)", "Huber(delta=0.5)", "huber_loss(delta=0.5)"],
              "huber(y, delta=0.5)", "real", lambda t, p: huber(t, p, 0.5),
              lambda k: k.losses.Huber(delta=0.5)),
    "huber_default": (["huber()", "Huber()", "Huber"], "huber(y)", "real", huber, lambda k: k.losses.Huber()),
    "mse": (["MeanSquaredError()", "mse()", "MeanSquaredError", "mean_squared_error()"], "mse(y)",
            "real", mse, lambda k: k.losses.MeanSquaredError()),
    "categorical": (["categorical_crossentropy(label_smoothing=0.1, from_logits=true)",
                     "CategoricalCrossentropy(from_logits=true, label_smoothing=0.1)"],
                    "categorical_crossentropy(y, from_logits=true, label_smoothing=0.1)", "onehot",
                    lambda t, z: categorical_from_logits(t, z, 0.1),
                    lambda k: k.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)),
    "binary": (["BinaryCrossentropy(from_logits=true, label_smoothing=0.2)",
                "binary_crossentropy(from_logits=true, label_smoothing=0.2)"],
               "binary_crossentropy(y, from_logits=true, label_smoothing=0.2)", "bits",
               lambda t, z: binary_from_logits(t, z, 0.2),
               lambda k: k.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2)),
}


def one_step(loss, x, t):
    """The model's loss on (x, t) before the step and its weights after one SGD step."""
    m = build(loss)
    before = m.get_weights()
    value = m.evaluate(x, t, batch_size=N, verbose=0)
    value = value[0] if isinstance(value, list) else value
    m.train_on_batch(x, t)
    return before, value, m.get_weights()


@pytest.mark.parametrize("case", list(CASES))
def test_configured_loss_equals_the_explicit_form_and_numpy(case, data):
    forms, explicit, kind, reference, _ = CASES[case]
    x, targets = data
    t = targets[kind]
    before, explicit_value, explicit_after = one_step(explicit, x, t)
    w, b = (a.astype(np.float64) for a in before)
    p = x.astype(np.float64) @ w + b
    want, grad = reference(t.astype(np.float64), p)
    want_w, want_b = w - LR * (x.T.astype(np.float64) @ grad), b - LR * grad.sum(0)
    assert explicit_value == pytest.approx(want, rel=1e-5)
    for form in forms:
        _, value, after = one_step(form, x, t)
        assert value == pytest.approx(explicit_value, rel=1e-6), form
        for got, same, ref in zip(after, explicit_after, (want_w, want_b)):
            np.testing.assert_allclose(got, same, rtol=1e-6, atol=1e-7, err_msg=form)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=form)


@pytest.mark.parametrize("case", list(CASES))
def test_configured_loss_equals_keras_loss_object(case, data, keras):
    forms, _, kind, _, make = CASES[case]
    x, targets = data
    t = targets[kind]
    m = build(forms[0])
    p = m.predict(x)
    value = m.evaluate(x, t, batch_size=N, verbose=0)
    value = value[0] if isinstance(value, list) else value
    assert value == pytest.approx(float(make(keras)(t, np.asarray(p))), rel=1e-5)


def test_sparse_configured_loss_with_class_name():
    src = SOURCE.format(loss="SparseCategoricalCrossentropy(from_logits=true)")
    m = kcompile.compile_string(src, seed=0)
    explicit = kcompile.compile_string(SOURCE.format(loss="sparse_categorical_crossentropy(y, from_logits=true)"),
                                       seed=0)
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(N, FEATURES)).astype(np.float32), rng.integers(0, UNITS, N)
    assert m.manifest["training"]["targets"] == explicit.manifest["training"]["targets"]
    a, b = m.train_on_batch(x, labels), explicit.train_on_batch(x, labels)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for got, want in zip(m.get_weights(), explicit.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_configured_loss_in_an_expression():
    """`huber(delta=0.5) + 0.01 * l2(weights)` trains as `huber(y, delta=0.5) + 0.01 * l2(weights)`."""
    rng = np.random.default_rng(1)
    x, t = rng.normal(size=(N, FEATURES)).astype(np.float32), rng.normal(size=(N, UNITS)).astype(np.float32)
    got, want = build("huber(delta=0.5) + 0.01 * l2(weights)"), build("huber(y, delta=0.5) + 0.01 * l2(weights)")
    np.testing.assert_allclose(got.train_on_batch(x, t), want.train_on_batch(x, t), rtol=1e-6)
    for a, b in zip(got.get_weights(), want.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_configured_loss_names_its_target_after_the_output():
    assert [t["name"] for t in build("Huber(delta=0.5)").manifest["training"]["targets"]] == ["y_target"]


# ---------------- errors ----------------
TWO_OUTPUTS = """model m {
    input x: float32[4]
    a = Dense(3)
    b = Dense(2)(x)
    output a, b
    train {
        loss = %s
        optimizer = SGD()
    }
}
"""


def located(source, line, col, message, hint=None):
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string(source, file="t.kdl", seed=0)
    d = info.value.diagnostics[0]
    assert (d.loc.file, d.loc.line, d.loc.col) == ("t.kdl", line, col), d.render()
    assert message in d.message, d.render()
    if hint is not None:
        assert hint in (d.hint or ""), d.render()
    assert d.render().splitlines()[2].startswith("    " + " " * (col - 1) + "^")
    return d


@pytest.mark.parametrize("loss,col,message,hint", [
    ("huber(delta=-1)", 22, "huber: delta must be a number above 0, got -1", None),
    ("Huber(delta=0)", 22, "Huber: delta must be a number above 0, got 0", None),
    ("CategoricalCrossentropy(label_smoothing=2)", 40, "label_smoothing must be a number from 0 to 1, got 2", None),
    ("BinaryCrossentropy(from_logits=1)", 35, "BinaryCrossentropy: from_logits must be true or false, got 1", None),
    ("Huber(dleta=0.5)", 22, "Huber has no argument 'dleta'", "delta"),
    ("MeanSquaredError(delta=0.5)", 33, "MeanSquaredError has no argument 'delta'", None),
    ("Huber(0.5)", 22, "Huber takes its arguments by name", "Huber(delta=0.5)"),
    ("Hubber(delta=0.5)", 16, "unknown loss Hubber", "Huber"),
    ("MeanSquaredErorr", 16, "unknown loss MeanSquaredErorr", "MeanSquaredError"),
])
def test_bad_configured_loss_is_a_located_error(loss, col, message, hint):
    located(SOURCE.format(loss=loss), 6, col, message, hint)


@pytest.mark.parametrize("loss,hint", [
    ("huber(delta=0.5)", "write huber(a, delta=0.5)"),
    ("Huber(delta=0.5)", "write Huber(a, delta=0.5)"),
    ("MeanSquaredError()", "write MeanSquaredError(a)"),
    ("mse", "write mse(a)"),  # (the bare-name rule, as before)
])
def test_configured_loss_on_several_outputs_says_which(loss, hint):
    located(TWO_OUTPUTS % loss, 7, 16, "the model has 2 outputs; say which this loss is for", hint)


def test_class_name_called_on_an_output():
    """Keras's class names are names of the loss everywhere: `Huber(a, delta=0.5) + mse(b)`."""
    m = kcompile.compile_string(TWO_OUTPUTS % "Huber(a, delta=0.5) + MeanSquaredError(b)", seed=0)
    assert [t["name"] for t in m.manifest["training"]["targets"]] == ["a_target", "b_target"]


def test_a_positional_loss_argument_hints_the_keyword_form():
    d = located(SOURCE.format(loss="huber(y, 0.5)"), 6, 25, "huber takes its arguments by name")
    assert d.hint == "huber(y, delta=0.5)"
