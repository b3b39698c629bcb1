"""GaussianDropout, AlphaDropout, ActivityRegularization, Identity and every layer's
activity_regularizer, against Keras 3's semantics (keras/src/layers/regularization/*.py and
Layer.__call__'s activity loss: regularizer(output) / batch size)."""
import math
import os
import sys

import numpy as np
import pytest

import kcompile
from kcompile.driver import compile_source
from kcompile.errors import KcompileError
from kcompile.training.graphs import training_form

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "autodiff"))
from gradcheck import _session, check_gradients, expected_checks  # noqa: E402

ALPHA_P = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946


def model(body, inp="float32[16]", loss="mse", lr=0.0):
    return f"""model m {{
    input x: {inp}
{body}
    train {{
        loss = {loss}
        optimizer = SGD(learning_rate={lr})
    }}
}}"""


def training_outputs(src, x, noise_of):
    """The training form's outputs of ``src`` on ``x``, the noise inputs given by
    ``noise_of(shape)`` (uniform [0, 1) numbers, as the runtime draws), and the noise fed."""
    g = compile_source(src, opt_level=0).graph
    names = [n for n, _ in training_form(g)[0]]
    noise = {n: noise_of((len(x),) + tuple(g.types[n].shape[1:])).astype(g.types[n].dtype) for n in names}
    return _session(g).run(None, {"x": x, **noise}), [noise[n] for n in names]


# ---------------- inference ----------------
def test_inference_is_the_identity():
    src = model("""    a = GaussianDropout(0.4)(x)
    b = AlphaDropout(0.3, noise_shape=(none, 1, 3))(a)
    c = ActivityRegularization(l1=0.1, l2=0.2)(b)
    y = Identity()(c)
    output y""", inp="float32[5, 3]")
    m = kcompile.compile_string(src)
    x = np.random.default_rng(0).normal(size=(7, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(m.predict(x), x)
    ops = {n.op_type for n in m.onnx_model().graph.node}
    assert ops <= {"Identity"}, ops  # (the remove-dropout pass deleted the noise)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_noise_layers_pass_integers_and_bools_at_inference(dtype):
    """Dropout (an Identity at inference) takes any element type, as it did before random ops
    shared Op.lower: ONNX's own Dropout schema, which takes floats only, does not apply."""
    m = kcompile.compile_string(f"""model m {{
    input x: {dtype}[4]
    a = Dropout(0.5)(x)
    y = SpatialDropout1D(0.5)(Reshape((2, 2))(a))
    output y
}}""")
    x = (np.arange(8).reshape(2, 4) % 3).astype(dtype)
    np.testing.assert_array_equal(m.predict(x), x.reshape(2, 2, 2))


# ---------------- training: the exact rule, and statistics ----------------
def test_gaussian_dropout_multiplies_by_one_plus_stddev_z():
    rate = 0.3
    src = model("    y = GaussianDropout(rate=0.3, seed=5)(x)\n    output y", inp="float64[16]")
    x = np.random.default_rng(1).normal(size=(4, 16))
    (y,), (u1, u2) = training_outputs(src, x, np.random.default_rng(2).random)
    z = np.sqrt(-2 * np.log(1 - u1)) * np.cos(2 * np.pi * u2)  # (Box-Muller, as GaussianNoise)
    np.testing.assert_allclose(y, x * (1 + math.sqrt(rate / (1 - rate)) * z), rtol=1e-12)


def test_gaussian_dropout_statistics():
    # y = x (1 + s z), s^2 = rate / (1 - rate): with x = 1, mse to 1 is s^2 and mse to 0 is 1 + s^2
    # (so the noise's mean is 1). 5 x 512 x 16 samples: a relative error of about 0.5%.
    rate = 0.2
    m = kcompile.compile_string(model("    y = GaussianDropout(0.2)(x)\n    output y"), seed=0)
    x = np.ones((512, 16), np.float32)
    to_one = np.mean([m.train_on_batch(x, x) for _ in range(5)])
    to_zero = np.mean([m.train_on_batch(x, 0 * x) for _ in range(5)])
    np.testing.assert_allclose(to_one, rate / (1 - rate), rtol=0.03)
    np.testing.assert_allclose(to_zero, 1 + rate / (1 - rate), rtol=0.03)
    assert m.evaluate(x, x, verbose=0) == 0.0


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_alpha_dropout_rule(rate):
    src = model(f"    y = AlphaDropout({rate})(x)\n    output y", inp="float64[16]")
    x = np.random.default_rng(3).normal(size=(6, 16))
    (y,), (u,) = training_outputs(src, x, np.random.default_rng(4).random)
    a = ((1 - rate) * (1 + rate * ALPHA_P ** 2)) ** -0.5
    b = -a * ALPHA_P * rate
    keep = u >= rate  # Keras: kept where uniform >= rate
    np.testing.assert_allclose(y, np.where(keep, a * x + b, a * ALPHA_P + b), rtol=1e-12)


def test_alpha_dropout_noise_shape_shares_the_mask():
    src = model("    y = AlphaDropout(0.5, noise_shape=(none, 1, 3))(x)\n    output y", inp="float64[4, 3]")
    x = np.random.default_rng(5).normal(size=(8, 4, 3))
    (y,), (u,) = training_outputs(src, x, np.random.default_rng(6).random)
    assert u.shape == (8, 1, 3)
    a = (0.5 * (1 + 0.5 * ALPHA_P ** 2)) ** -0.5
    dropped = np.isclose(y, a * ALPHA_P - a * ALPHA_P * 0.5, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(dropped, np.broadcast_to(u < 0.5, y.shape))


def test_alpha_dropout_keeps_mean_and_variance():
    # Inputs of mean 0 and variance 1 keep them (the runtime's own noise): 5 x 512 x 16 samples.
    x = np.random.default_rng(7).normal(size=(512, 16)).astype(np.float32)
    x = (x - x.mean()) / x.std()
    zero = np.zeros_like(x)
    # mse to 0 is E[y^2] = var + mean^2; the mean, from mse to 1: E[(y - 1)^2] = E[y^2] - 2 mean + 1.
    src = model("    y = AlphaDropout(0.3)(x)\n    output y")
    m = kcompile.compile_string(src, seed=0)
    second = np.mean([m.train_on_batch(x, zero) for _ in range(5)])
    to_one = np.mean([m.train_on_batch(x, zero + 1) for _ in range(5)])
    mean = (second - to_one + 1) / 2
    assert abs(mean) < 0.03
    np.testing.assert_allclose(second - mean ** 2, 1.0, rtol=0.03)


def test_zero_rates_are_the_identity_in_training():
    src = model("    a = GaussianDropout(0.0)(x)\n    y = AlphaDropout(0.0)(a)\n    output y")
    m = kcompile.compile_string(src)
    assert m.manifest["training"]["noise"] == []
    x = np.random.default_rng(8).normal(size=(4, 16)).astype(np.float32)
    assert m.train_on_batch(x, x) == 0.0


# ---------------- gradients (fixed noise) ----------------
def test_noise_layers_gradients_with_fixed_noise():
    src = """model g {
    input x: float64[3, 4]
    h = Dense(5, activation=tanh)(x)
    a = GaussianDropout(0.3)(h)
    b = AlphaDropout(0.4)(a)
    c = AlphaDropout(0.5, noise_shape=(none, 1, 5))(b)
    d = ActivityRegularization(l2=0.1)(c)
    y = Dense(2)(Identity()(d))
    output y
}"""
    feeds = {"x": np.random.default_rng(9).normal(size=(3, 3, 4))}
    checked, _ = check_gradients(src, feeds, training=True)
    assert checked == expected_checks(src, feeds)


def test_activity_regularization_gradient_by_finite_differences():
    # The training step's gradient ((w - w') / lr after one SGD step) against central differences
    # of the loss with the penalties (evaluate: no noise layers, so the training loss).
    src = model("""    h = Dense(3, activation=tanh, activity_regularizer=l1_l2(l1=0.05, l2=0.2))(x)
    r = ActivityRegularization(l1=0.1, l2=0.3)(h)
    y = Dense(2, activity_regularizer=l2(0.5))(r)
    output y""", inp="float64[4]", lr=1.0)
    m = kcompile.compile_string(src, seed=0)
    rng = np.random.default_rng(10)
    x, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    w0 = m.get_weights()
    m.train_on_batch(x, t)
    analytic = [a - b for a, b in zip(w0, m.get_weights())]
    h = 1e-6
    for i, w in enumerate(w0):
        for j in range(w.size):
            moved = [v.copy() for v in w0]
            moved[i].reshape(-1)[j] += h
            m.set_weights(moved)
            up = m.evaluate(x, t, batch_size=5, verbose=0)
            moved[i].reshape(-1)[j] -= 2 * h
            m.set_weights(moved)
            down = m.evaluate(x, t, batch_size=5, verbose=0)
            np.testing.assert_allclose(analytic[i].reshape(-1)[j], (up - down) / (2 * h), rtol=1e-6, atol=1e-9)


# ---------------- activity regularization in the loss ----------------
def dense_tanh(x, w, b):
    return np.tanh(x @ w + b)


@pytest.mark.parametrize("form", ["argument", "layer"])
def test_loss_is_data_loss_plus_the_penalty(form):
    body = ("    h = Dense(4, activation=tanh, activity_regularizer=l1_l2(l1=0.01, l2=0.02))(x)\n"
            if form == "argument" else
            "    d = Dense(4, activation=tanh)(x)\n    h = ActivityRegularization(l1=0.01, l2=0.02)(d)\n")
    m = kcompile.compile_string(model(body + "    y = Dense(2)(h)\n    output y"), seed=0)
    rng = np.random.default_rng(11)
    x, t = rng.normal(size=(6, 16)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    w1, b1, w2, b2 = m.get_weights()
    hv = dense_tanh(x, w1, b1)
    data = np.mean((hv @ w2 + b2 - t) ** 2)
    penalty = (0.01 * np.abs(hv).sum() + 0.02 * (hv ** 2).sum()) / len(x)  # (Keras divides by the batch size)
    assert m.evaluate(x, t, batch_size=6, verbose=0) == pytest.approx(data + penalty, rel=1e-5)
    assert m.train_on_batch(x, t) == pytest.approx(data + penalty, rel=1e-5)  # (lr 0: same weights)


def test_penalty_follows_dropout_in_training_and_not_in_evaluation():
    # Dropout's output is what is penalized: the masked one in training, the input in evaluation.
    m = kcompile.compile_string(model("    y = Dropout(0.5, activity_regularizer=l1(1.0))(x)\n    output y"), seed=0)
    x = np.ones((256, 16), np.float32)
    assert m.evaluate(x, x, batch_size=256, verbose=0) == pytest.approx(16.0)  # (mse 0, 16 ones per sample)
    loss = m.train_on_batch(x, x)  # mse: 1 per element (kept 2 - 1, dropped 0 - 1); l1: 2 * 16 * kept share
    assert 0.4 < (loss - 1.0) / 32 < 0.6
    kept = (loss - 1.0) * 256 / 2
    assert kept == pytest.approx(round(kept), abs=1e-2)  # (whole kept entries: the masked output's sum)


def test_shared_layer_penalizes_each_call():
    src = """model m {
    input a: float32[3]
    input b: float32[3]
    layer d = Dense(2, activity_regularizer=l2(0.1))
    y = Add()([d(a), d(b)])
    output y
    train {
        loss = mse
        optimizer = SGD(learning_rate=0.0)
    }
}"""
    m = kcompile.compile_string(src, seed=0)
    rng = np.random.default_rng(12)
    a, b, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    w, bias = m.get_weights()
    da, db = a @ w + bias, b @ w + bias
    want = np.mean((da + db - t) ** 2) + 0.1 * ((da ** 2).sum() + (db ** 2).sum()) / 4
    got = m.evaluate({"a": a.astype(np.float32), "b": b.astype(np.float32)}, t.astype(np.float32), verbose=0)
    assert got == pytest.approx(want, rel=1e-5)


def test_activity_regularizer_on_conv_and_rank3_outputs():
    m = kcompile.compile_string(model("""    h = Conv1D(3, 2, activity_regularizer=l2(0.05))(x)
    y = Flatten()(h)
    output y""", inp="float32[5, 2]"), seed=0)
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 5, 2)).astype(np.float32)
    y = m.predict(x)
    t = np.zeros_like(y)
    want = np.mean(y ** 2) + 0.05 * (y ** 2).sum() / 3
    assert m.evaluate(x, t, verbose=0) == pytest.approx(want, rel=1e-5)


# ---------------- against Keras ----------------


@pytest.mark.parametrize("form", ["argument", "layer"])
def test_loss_step_and_history_match_keras(keras, form):
    kdl = ("    h = Dense(5, activation=tanh, activity_regularizer=l2(0.01))(x)\n" if form == "argument" else
           "    d = Dense(5, activation=tanh)(x)\n    h = ActivityRegularization(l2=0.01)(d)\n")
    m = kcompile.compile_string(model(kdl + "    y = Dense(2)(h)\n    output y", inp="float32[4]", lr=0.1), seed=0)
    inp = keras.Input((4,))
    if form == "argument":
        h = keras.layers.Dense(5, activation="tanh", activity_regularizer=keras.regularizers.l2(0.01))(inp)
    else:
        h = keras.layers.ActivityRegularization(l2=0.01)(keras.layers.Dense(5, activation="tanh")(inp))
    ref = keras.Model(inp, keras.layers.Dense(2)(h))
    ref.compile(loss="mse", optimizer=keras.optimizers.SGD(learning_rate=0.1))
    ref.set_weights(m.get_weights())
    rng = np.random.default_rng(14)
    x, t = rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=(10, 2)).astype(np.float32)

    assert m.evaluate(x, t, batch_size=4, verbose=0) == pytest.approx(
        ref.evaluate(x, t, batch_size=4, verbose=0), rel=1e-5)
    assert m.train_on_batch(x[:4], t[:4]) == pytest.approx(float(ref.train_on_batch(x[:4], t[:4])), rel=1e-5)
    for got, want in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # fit's loss: the batches' losses (penalty included, over each batch's size) weighted by batch size
    history = m.fit(x, t, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    want = ref.fit(x, t, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(history["loss"], want["loss"], rtol=1e-5)
    for got, want in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------- arguments ----------------
@pytest.mark.parametrize("body, message", [
    ("GaussianDropout(1.0)(x)", "GaussianDropout argument 'rate': expected a number in [0.0, 1.0), got 1.0"),
    ("AlphaDropout(-0.1)(x)", "AlphaDropout argument 'rate'"),
    ("AlphaDropout(0.1, noise_shape=(none, 3, 1))(x)", "AlphaDropout noise_shape entry 3"),
    ("ActivityRegularization(l1=-1)(x)", "ActivityRegularization argument 'l1'"),
    ("ActivityRegularization(activity_regularizer=l2(0.1))(x)",
     "ActivityRegularization has no argument 'activity_regularizer'"),
    ("Dense(2, activity_regularizer=relu)(x)", "Dense argument 'activity_regularizer': expected a regularizer"),
    ("Dense(2, activity_regularizer=l2(-1.0))(x)", "a regularization factor must be a finite number >= 0"),
    ("TimeDistributed(Dense(2, activity_regularizer=l2))(x)", "activity_regularizer is not supported"),
    ("Identity(3)(x)", "Identity(...) with arguments is Keras's identity initializer, and the Identity layer takes none"),
])
def test_bad_arguments_are_located_errors(body, message):
    src = f"model m {{\n    input x: float32[4, 2]\n    y = {body}\n    output y\n}}"
    with pytest.raises(KcompileError) as e:
        kcompile.compile_string(src, file="bad.kdl")
    assert message in str(e.value)
    assert "bad.kdl:3:" in str(e.value)


def test_activity_regularizer_string_form_and_layers_without_weights():
    # "l2" is l2(0.01), as Keras's string form; any layer takes it (here an activation layer).
    m = kcompile.compile_string(model("    y = ReLU(activity_regularizer=\"l2\")(x)\n    output y"), seed=0)
    x = np.random.default_rng(15).normal(size=(4, 16)).astype(np.float32)
    r = np.maximum(x, 0)
    assert m.evaluate(x, r, verbose=0) == pytest.approx(0.01 * (r ** 2).sum() / 4, rel=1e-5)


CONV = """model m {
    input x: float32[9, 9, 2]
    Conv2D(4, 3, activation=relu, activity_regularizer=l1_l2(l1=0.01, l2=0.02))
    Dropout(0.0)
    Flatten()
    ActivityRegularization(l2=0.05)
    y = Dense(3)
    output y
    train {
        loss = mse
        optimizer = SGD(learning_rate=0.01)
    }
}"""


def test_penalties_alike_at_O0_O1_and_in_split_steps():
    # -O1 runs the convolution channels-first (the pinned value keeps its layout), and a step split
    # into parts of the batch adds each part's penalty weighted by its size: the whole step's.
    rng = np.random.default_rng(16)
    x, t = rng.random((70, 9, 9, 2), dtype=np.float32), rng.random((70, 3), dtype=np.float32)
    runs = []
    for opt_level, parts in ((0, 1), (1, 1), (1, 2)):
        m = kcompile.compile_string(CONV, seed=0, opt_level=opt_level)
        m.batch_parts = parts
        assert m.manifest["training"]["per_sample"] is True
        runs.append((m.fit(x, t, batch_size=32, epochs=2, shuffle=False, verbose=0).history["loss"],
                     m.get_weights()))
    for losses, weights in runs[1:]:
        np.testing.assert_allclose(losses, runs[0][0], rtol=1e-5)
        for got, want in zip(weights, runs[0][1]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_noise_alike_at_O0_and_O1():
    # -O1 moves the noise ops into the convolution's channels-first layout; the draws stay -O0's.
    src = """model m {
    input x: float32[6, 6, 2]
    Conv2D(4, 3, activation=selu)
    AlphaDropout(0.3)
    GaussianDropout(0.2)
    Flatten()
    y = Dense(2, activity_regularizer=l1(0.01))
    output y
    train {
        loss = mse
        optimizer = SGD(learning_rate=0.01)
    }
}"""
    x = np.random.default_rng(17).random((8, 6, 6, 2), dtype=np.float32)
    t = np.zeros((8, 2), np.float32)
    losses = [[kcompile.compile_string(src, seed=3, opt_level=o).train_on_batch(x, t)] for o in (0, 1)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
