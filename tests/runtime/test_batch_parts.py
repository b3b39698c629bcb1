"""Training steps split into per-core parts of the batch (backend/shards.py, binding.ShardedRunner):
the same losses, metrics and weights as the whole step, and the automatic choice of when to split."""
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.runtime import devices
from kcompile.callbacks import Callback
from kcompile.runtime.binding import ShardedRunner, StateRunner

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CONV = """
model conv {{
    input image: float32[9, 9, 2]
    Conv2D(8, 3, activation=relu)
    MaxPooling2D(2)
    Flatten()
    Dropout(0.25)
    probs = Dense(3, activation=softmax)
    output probs
    train {{
        loss = {loss}
        optimizer = {optimizer}
        metrics = [{metrics}]
    }}
}}
"""


def conv_model(loss="categorical_crossentropy", optimizer="Adam(learning_rate=0.01)", metrics="accuracy", parts=2):
    m = kcompile.compile_string(CONV.format(loss=loss, optimizer=optimizer, metrics=metrics), seed=0)
    m.batch_parts = parts
    return m


def data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 9, 9, 2), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    return x, y


def fit_both(make, x, y, **kw):
    runs = []
    for parts in (1, 2):
        m = make(parts=parts)
        history = m.fit(x, y, verbose=0, **kw).history
        assert type(m._runner) is (StateRunner if parts == 1 else ShardedRunner)
        runs.append((history, m.get_weights(), m))
    return runs


def assert_same(runs, rtol=1e-5):
    (h1, w1, _), (h2, w2, _) = runs
    assert h1.keys() == h2.keys()
    for key in h1:
        np.testing.assert_allclose(h1[key], h2[key], rtol=rtol, err_msg=key)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch_size", [32, 33])  # 70 = 32 + 32 + 6 (parts 16 + 16, 3 + 3), 33 + 33 + 4 (17 + 16, ...)
def test_split_steps_train_like_the_whole_step(batch_size):
    x, y = data()
    runs = fit_both(conv_model, x, y, epochs=3, batch_size=batch_size)
    assert_same(runs)
    assert runs[0][2].iterations == runs[1][2].iterations == 9


@pytest.mark.parametrize("layers", ["GroupNormalization(groups=4)\n    ReLU()",
                                    "DepthwiseConv2D(3, padding=same, activation=relu)"])
def test_split_steps_of_per_sample_normalization_and_depthwise_convolutions_train_like_the_whole_step(layers):
    """GroupNormalize's gamma and beta gradients are sums over the batch (each part's, added by the
    update); a depthwise convolution of 16 channels runs blocked in each part, its gradients too."""
    source = CONV.replace("Conv2D(8, 3, activation=relu)", f"Conv2D(16, 3, padding=same)\n    {layers}").format(
        loss="categorical_crossentropy", optimizer="Adam(learning_rate=0.01)", metrics="accuracy")

    def make(parts):
        m = kcompile.compile_string(source, seed=0)
        m.batch_parts = parts
        return m
    x, y = data()
    assert_same(fit_both(make, x, y, epochs=2, batch_size=32))


def test_split_steps_weigh_their_samples_as_the_whole_step():
    """sample_weight and class_weight are cut with the rows, so that the parts' losses still add
    up to the batch's (and weights change the trajectory: the check is not vacuous)."""
    x, y = data()
    weights = np.random.default_rng(5).random(len(x)).astype(np.float32) * 2
    weighted = fit_both(conv_model, x, y, epochs=2, batch_size=32, sample_weight=weights)
    assert_same(weighted)
    assert_same(fit_both(conv_model, x, y, epochs=2, batch_size=32, class_weight={0: 0.2, 2: 3.0}))
    plain = fit_both(conv_model, x, y, epochs=2, batch_size=32)
    assert abs(plain[0][0]["loss"][-1] - weighted[0][0]["loss"][-1]) > 1e-3


@pytest.mark.parametrize("optimizer", ["RMSprop(learning_rate=0.01, clipnorm=0.05)",
                                       "SGD(learning_rate=0.1, momentum=0.9, global_clipnorm=0.1)"])
def test_clipping_sees_the_whole_batch_gradient(optimizer):
    """Clipping by norm is not linear: it must act on the parts' gradients summed."""
    x, y = data()
    assert_same(fit_both(lambda parts: conv_model(optimizer=optimizer, parts=parts), x, y, epochs=2, batch_size=32))


def test_ratio_and_count_metrics_add_up():
    """precision and recall (sums over the batch) and AUC (counts) combine by adding; the loss
    and accuracy (means) by the parts' sizes."""
    x, y = data(n=90, seed=1)
    make = lambda parts: conv_model(loss="categorical_crossentropy + 0.001 * l2(weights)",
                                    metrics="accuracy, precision, recall, auc", parts=parts)
    runs = fit_both(make, x, y, epochs=2, batch_size=45)
    assert {"precision", "recall", "auc"} <= set(runs[0][0])
    assert_same(runs)


def test_a_batch_of_one_sample_leaves_the_second_part_empty():
    x, y = data(n=1)
    results = [conv_model(parts=parts).train_on_batch(x, y) for parts in (1, 2)]
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_a_nonfinite_loss_goes_back_to_the_last_finite_weights(capsys, turns):
    x, y = data()
    m = conv_model()
    seen = []

    class Poison(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(self.model.get_weights())
            # (the step runs split; the non-finite step's batch end comes after its runner is dropped)
            assert isinstance(self.model._runner, ShardedRunner) or not np.isfinite(logs["loss"])
            if batch == 1:
                self.model._lr_override = float("nan")  # (a poisoned step: the public setter refuses NaN)

    m.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[Poison()])
    assert "the loss became nan at epoch 1, step 4" in capsys.readouterr().out
    assert m.iterations == 2
    for a, b in zip(m.get_weights(), seen[1]):
        np.testing.assert_array_equal(a, b)


def test_the_runtime_splits_convolutional_steps_only(monkeypatch):
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    assert conv_model(parts=None)._batch_parts() == 2  # (7k multiply-adds a sample: split at any size)
    assert kcompile.compile(EXAMPLES / "mnist_cnn.kdl")._batch_parts() == 2
    assert kcompile.compile(EXAMPLES / "mnist_mlp.kdl")._batch_parts() == 1  # its update outweighs it
    bn = kcompile.compile_string(CONV.format(loss="categorical_crossentropy", optimizer="Adam()",
                                             metrics="accuracy").replace("MaxPooling2D(2)", "BatchNormalization()"))
    bn.batch_parts = 2  # asked for, but batch statistics need the whole batch
    assert bn._batch_parts() == 1
    assert "BatchNormalization" in bn.manifest["training"]["per_sample"]
    monkeypatch.setattr(devices, "cpu_cores", lambda: 1)
    assert kcompile.compile(EXAMPLES / "mnist_cnn.kdl")._batch_parts() == 1


RECURRENT = """
model rnn {
    input x: float32[25, 3]
    GRU(8)
    y = Dense(1, activation=sigmoid)
    output y
    train {
        loss = binary_crossentropy
        optimizer = Adam(learning_rate=0.01)
    }
}
"""


def test_recurrent_steps_split_by_their_batches_rows_times_steps(monkeypatch):
    """A recurrence's step (2k multiply-adds a sample here, far below the rule's million) splits
    for batches of 64 rows or more whose rows times time steps reach 2,500; the runner is made
    for the first batch's rows, and trains as the whole step does."""
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    m = kcompile.compile_string(RECURRENT, seed=0)
    assert m.manifest["training"]["recurrent_steps"] == 25
    assert [m._batch_parts(rows) for rows in (None, 32, 64, 99, 100, 128)] == [1, 1, 1, 1, 2, 2]
    stacked = kcompile.compile_string(RECURRENT.replace("GRU(8)", "LSTM(4, return_sequences=true)\n    GRU(8)"))
    assert stacked.manifest["training"]["recurrent_steps"] == 50 and stacked._batch_parts(64) == 2
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 25, 3)).astype(np.float32), (rng.random((300, 1)) > 0.5).astype(np.float32)
    runs = []
    for parts in (1, None):
        m = kcompile.compile_string(RECURRENT, seed=0)
        m.batch_parts = parts
        runs.append((m.fit(x, y, epochs=2, batch_size=128, verbose=0).history, m.get_weights(), m))
    assert type(runs[0][2]._runner) is StateRunner and type(runs[1][2]._runner) is ShardedRunner
    assert_same(runs)
    small = kcompile.compile_string(RECURRENT, seed=0)
    small.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert type(small._runner) is StateRunner


TIME_DISTRIBUTED = """
model frames {{
    input x: float32[{shape}]
    TimeDistributed({inner})
    {then}
    y = Dense(3, activation=softmax)
    output y
    train {{
        loss = categorical_crossentropy
        optimizer = Adam(learning_rate=0.01)
        metrics = [accuracy]
    }}
}}
"""


@pytest.mark.parametrize("shape, inner, then", [
    ("6, 5", "Dense(8, activation=relu)", "Conv1D(4, 3)\n    GlobalAveragePooling1D()"),
    ("3, 6, 6, 2", "Conv2D(4, 3, activation=relu)", "Flatten()")])
def test_time_distributed_steps_split_and_train_like_the_whole_step(shape, inner, then, monkeypatch):
    """TimeDistributed merges the batch with time ([N, T, ...] -> [N*T, ...]): each sample's T
    rows stay together, so its step splits by samples, and its products count T times a sample."""
    source = TIME_DISTRIBUTED.format(shape=shape, inner=inner, then=then)
    spec = kcompile.compile_string(source).manifest["training"]
    assert spec["per_sample"] is True
    if inner.startswith("Dense"):  # 6 steps of Dense 5 -> 8; Conv1D over 4 steps, 8 x 3 -> 4; Dense 4 -> 3
        assert spec["macs_per_sample"] == 6 * 5 * 8 + 4 * 4 * 8 * 3 + 4 * 3
    else:  # predict sizes its batches by the largest value a sample: the frames merged, 3 x 6x6x2 floats
        assert kcompile.compile_string(source).manifest["activation_bytes_per_sample"] == 3 * 6 * 6 * 2 * 4

    def make(parts):
        m = kcompile.compile_string(source, seed=0)
        m.batch_parts = parts
        return m
    rng = np.random.default_rng(0)
    n = 70
    x = rng.random((n, *map(int, shape.split(","))), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    runs = fit_both(make, x, y, epochs=2, batch_size=33)
    assert_same(runs)
    m = runs[0][2]  # predict too runs its rows in cache-sized runs, split between the cores
    whole = m.predict(x, batch_size=None)
    monkeypatch.setattr(type(m), "_predict_parts", lambda self, n, step: 2)
    in_parts = type(m)._predict_in_parts
    calls = []
    monkeypatch.setattr(type(m), "_predict_in_parts", lambda self, *a: calls.append(a[3]) or in_parts(self, *a))
    m._predict_rows = 8
    np.testing.assert_allclose(m.predict(x, batch_size=None), whole, rtol=1e-5, atol=1e-6)
    assert calls == [70]


def test_a_loaded_build_folder_splits_its_step(tmp_path):
    x, y = data()
    m = conv_model()
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    m.save(tmp_path / "conv")
    loaded = kcompile.load(tmp_path / "conv")
    loaded.batch_parts = 2
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert isinstance(loaded._runner, ShardedRunner)
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def example_data(m, n=40):
    """Random inputs and targets for a model of examples/ (integer ids below 9, named sizes 7)."""
    rng = np.random.default_rng(0)

    def arrays(specs):
        out = {}
        for name, dtype, shape in specs:
            shape = (n,) + tuple(7 if isinstance(d, str) else d for d in shape)
            out[name] = rng.integers(0, 9, shape) if dtype.startswith("int") else rng.random(shape, dtype=np.float32)
        return out

    xs = arrays([(s.name, s.dtype, s.shape) for s in m.inputs])
    ys = arrays([(t["name"], t["dtype"], t["shape"][1:]) for t in m.manifest["training"]["targets"]])
    return xs, ys


@pytest.mark.parametrize("example, words", [
    ("sentiment.kdl", 20000),  # an LSTM (a Scan's body), its table updated on the rows looked up
    ("sentiment.kdl", 2000),  # the same with a table small enough for the dense update
    ("two_heads.kdl", None)])  # two outputs
def test_examples_train_alike_split_or_whole(example, words):
    source = (EXAMPLES / example).read_text().replace("Embedding(20000, 128)", f"Embedding({words}, 128)")
    m = kcompile.compile_string(source)
    assert bool(m.manifest["training"]["row_gradients"]) == (words == 20000)
    runs = []
    for parts in (1, 2):
        m = kcompile.compile_string(source, seed=0)
        m.batch_parts = parts
        xs, ys = example_data(m)
        history = m.fit(xs, ys, batch_size=15, epochs=2, verbose=0).history
        assert type(m._runner) is (StateRunner if parts == 1 else ShardedRunner)
        runs.append((history, m.get_weights(), m))
    assert_same(runs)


# ---------------- predict in parts ----------------
def test_large_predicts_split_and_give_the_same_outputs(monkeypatch):
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    m = kcompile.compile(EXAMPLES / "mnist_cnn.kdl", seed=0)
    x = np.random.default_rng(0).random((301, 28, 28, 1), dtype=np.float32)
    step = m._predict_rows
    assert m._predict_parts(301, step) == 2 and m._predict_parts(step, step) == 1
    monkeypatch.setattr(devices, "cpu_cores", lambda: 1)
    assert m._predict_parts(301, step) == 1
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    assert kcompile.compile(EXAMPLES / "mnist_mlp.kdl")._predict_parts(4096, 4096) == 1  # one run: small activations
    split = [m.predict(x, batch_size=None), m.predict(x, batch_size=None)]  # weights as inputs, then folded
    assert m._copies["parts"][0] is m._session
    m.fit(x, np.eye(10, dtype=np.float32)[np.arange(301) % 10], epochs=1, batch_size=64, verbose=0)
    assert "parts" not in m._copies  # (the copies of the folded session went with it)
    split.append(m.predict(x, batch_size=50))  # new weights: as inputs again, in runs of 50 rows
    monkeypatch.setattr(type(m), "_predict_parts", lambda self, n, step: 1)
    whole = kcompile.compile(EXAMPLES / "mnist_cnn.kdl", seed=0)
    reference = [whole.predict(x, batch_size=None)] * 2
    whole.fit(x, np.eye(10, dtype=np.float32)[np.arange(301) % 10], epochs=1, batch_size=64, verbose=0)
    reference.append(whole.predict(x, batch_size=50))
    for a, b in zip(split, reference):
        assert a.shape == (301, 10)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_three_parts_train_like_the_whole_step():
    x, y = data()  # batches of 32 in parts of 11, 11 and 10; the last 6 in three of 2
    runs = [(m.fit(x, y, epochs=2, batch_size=32, verbose=0).history, m.get_weights(), m)
            for m in (conv_model(parts=1), conv_model(parts=3))]
    assert isinstance(runs[1][2]._runner, ShardedRunner) and len(runs[1][2]._runner.parts) == 3
    assert_same(runs)


MLP = """
model mlp {{
    input image: float32[6, 6, 1]
    Flatten()
    Dense(16, activation=relu)
    probs = Dense(3, activation=softmax)
    output probs
    train {{
        loss = categorical_crossentropy
        optimizer = {optimizer}
        metrics = [accuracy]
    }}
}}
"""


@pytest.mark.parametrize("optimizer", ["RMSprop(learning_rate=0.01)", "Adam(learning_rate=0.01)",
                                       "RMSprop(learning_rate=0.01, clipnorm=0.05)"])
def test_parts_scale_their_products_small_side_and_the_update_adds_them(optimizer):
    """Each part's kernel gradients come straight from their products, their share (and
    RMSprop's constant sqrt(1 - rho), which the update would multiply by) put on the product's
    [rows, units] side; the update adds the parts' gradients with Add (onnxruntime's Sum runs on
    one thread). Training matches the whole step."""
    import onnx
    from kcompile.backend.shards import split_step
    make = lambda parts: _with_parts(kcompile.compile_string(MLP.format(optimizer=optimizer), seed=0), parts)
    m = make(2)
    gradients = m.manifest["training"]["gradients"]
    (part,), update = split_step(m._step_graph(), gradients, parts=2)
    part, update = onnx.load_from_string(part).graph, onnx.load_from_string(update).graph
    made = {o: n for n in part.node for o in n.output}
    for w in ("dense/kernel", "dense_1/kernel"):
        assert made[f"grad:{w}"].op_type == "MatMul"
    assert {n.op_type for n in update.node if any(i.startswith("grad:") for i in n.input)} == {"Add"}
    # (the parts' sum stands for the step's gradient times that constant, where that is all the
    # step does with it; clipping reads the gradient itself)
    summed = {n.input[0].split(":")[1]: n.output[0] for n in update.node if n.input[0].startswith("grad:")}
    assert (summed["dense/kernel"] != gradients["dense/kernel"]) == ("clipnorm" not in optimizer)
    x = np.random.default_rng(0).random((70, 6, 6, 1), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(70) % 3]
    for batch_size in (32, 33):
        runs = [(m.fit(x, y, epochs=3, batch_size=batch_size, verbose=0).history, m.get_weights(), m)
                for m in (make(1), make(2))]
        assert type(runs[1][2]._runner) is ShardedRunner
        assert_same(runs)
        assert runs[0][0]["loss"][-1] < 0.9 * runs[0][0]["loss"][0]


@pytest.mark.parametrize("optimizer", ["RMSprop(learning_rate=0.01)", "Adam(learning_rate=0.01)"])
def test_folded_shares_in_float64_match_the_whole_step_to_rounding(optimizer):
    """The share cast to float64 and multiplied by the update's float64 constant: equal to float64
    rounding (halves of even batches, shares exact in binary), which these optimizers magnify
    where a gradient is near zero (they divide it by its own size): 1e-16 -> 1e-8 relative."""
    make = lambda parts: _with_parts(kcompile.compile_string(
        MLP.format(optimizer=optimizer).replace("float32[6, 6, 1]", "float64[6, 6, 1]"), seed=0), parts)
    rng = np.random.default_rng(1)
    x, y = rng.random((64, 6, 6, 1)), np.eye(3)[np.arange(64) % 3]
    runs = [(m.fit(x, y, epochs=3, batch_size=16, verbose=0).history, m.get_weights(), m) for m in (make(1), make(2))]
    assert type(runs[1][2]._runner) is ShardedRunner
    np.testing.assert_allclose(runs[0][0]["loss"], runs[1][0]["loss"], rtol=1e-9)
    for a, b in zip(runs[0][1], runs[1][1]):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def _with_parts(m, parts):
    m.batch_parts = parts
    return m


def test_set_weights_keeps_the_split_sessions_and_trains_from_the_new_weights():
    """A new runner (after set_weights, say) binds new buffers but reuses the split step's
    sessions, as the whole step's session is reused: rebuilding them took some 0.1 s each time
    for the MNIST CNN. Training goes on from the weights set, as the whole step's does."""
    x, y = data()
    start = conv_model(parts=1)
    start.fit(x, y, epochs=1, batch_size=32, verbose=0)
    weights = start.get_weights()
    runs = []
    for parts in (1, 2):
        m = conv_model(parts=parts)
        m.fit(x, y, epochs=1, batch_size=32, verbose=0)
        sessions = m._split
        m.set_weights(weights)
        history = m.fit(x, y, epochs=1, batch_size=32, verbose=0).history
        assert m._split is sessions and (parts == 1) == (sessions is None)
        if parts == 2:
            assert m._runner.phases is sessions[0] and m._runner.update.session is sessions[1]
        runs.append((history, m.get_weights(), m))
    assert_same(runs)


def test_batch_parts_is_checked_and_a_change_applies_from_the_next_step():
    m = conv_model(parts=None)
    for bad in (0, -1, 2.5, "2", True):
        with pytest.raises(ValueError, match=r"model: batch_parts must be a positive integer or None, got"):
            m.batch_parts = bad
    assert m.batch_parts is None
    x, y = data()
    whole = conv_model(parts=1)
    whole.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    m.batch_parts = 2
    m.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert type(m._runner) is ShardedRunner
    m.batch_parts = 1  # (the split step's state goes on in the whole step)
    m.fit(x, y, epochs=2, initial_epoch=1, batch_size=16, shuffle=False, verbose=0)
    assert type(m._runner) is StateRunner and m.iterations == whole.iterations == 10
    for a, b in zip(m.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------- BatchNormalization: parts that exchange the batch's sums ----------------
NORMALIZED = """
model normalized {{
    input image: {dtype}[{image}]
    {conv}
    BatchNormalization()
    ReLU()
    Flatten()
    Dense(5)
    BatchNormalization(momentum=0.9, center=false)
    probs = Dense(3, activation=softmax)
    output probs
    train {{
        loss = categorical_crossentropy
        optimizer = {optimizer}
        metrics = [accuracy]
    }}
}}
"""


def normalized_model(parts, optimizer="SGD(learning_rate=0.1, momentum=0.9)", dtype="float32"):
    """A small model whose steps the compiler makes for parts of the batch (the rule would keep so
    small a step whole); float64 without the convolution (onnxruntime has none for it)."""
    image, conv = ("6, 6, 2", "Conv2D(4, 3, padding=same, use_bias=false)") if dtype == "float32" else ("7", "Dense(6)")
    m = kcompile.compile_string(NORMALIZED.format(image=image, conv=conv, optimizer=optimizer, dtype=dtype), seed=0)
    m.batch_parts = parts
    return m


@pytest.fixture
def worth_splitting(monkeypatch):
    import kcompile.training.graphs as graphs
    monkeypatch.setattr(graphs, "worth_splitting", lambda *args: True)


def normalized_data(n, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, 6, 6, 2) if dtype == "float32" else (n, 7)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)  # (a mean away from zero: the variance's two passes)
    return x, np.eye(3, dtype=dtype)[rng.integers(0, 3, n)]


@pytest.mark.parametrize("parts,batch_size", [(2, 32), (3, 33)])
def test_normalizing_parts_train_like_the_whole_step(parts, batch_size, worth_splitting):
    """Each BatchNormalization's statistics come from the parts' sums (the mean, then the
    squares about it), and its gradient from their gradient sums: the losses, metrics, weights
    and moving statistics of the whole step, over uneven parts."""
    x, y = normalized_data(70)
    runs = []
    for p in (1, parts):
        m = normalized_model(p)
        history = m.fit(x, y, epochs=2, batch_size=batch_size, shuffle=False, verbose=0).history
        assert type(m._runner) is (StateRunner if p == 1 else ShardedRunner)
        runs.append((history, m.get_weights(), m))
    assert len(runs[1][2]._runner.phases) == 7  # (two exchanges forward and one back for each, then the rest)
    assert_same(runs)
    moving = dict(zip(runs[1][2].weight_names, runs[1][2].get_weights()))["batch_normalization/moving_mean"]
    assert np.abs(moving).max() > 1e-3  # (the moving statistics moved)


@pytest.mark.parametrize("parts,batch_size", [(2, 32), (3, 2)])  # (batches of 2 rows in 3 parts: one empty)
def test_normalizing_parts_in_float64_match_the_whole_step_to_rounding(parts, batch_size, worth_splitting):
    """In float64, where float32's rounding does not blur them (a normalization over two samples
    turns rounding into differences of 1e-2 in float32): equal to 1e-11. (Shares exact in binary:
    the share is a float32 in every split step, so 3 parts of 10 rows differ by some 1e-8.)"""
    x, y = normalized_data(64 if batch_size > 2 else 7, "float64")
    runs = []
    for p in (1, parts):
        m = normalized_model(p, dtype="float64")
        history = m.fit(x, y, epochs=3, batch_size=batch_size, shuffle=False, verbose=0).history
        runs.append((history, m.get_weights()))
    assert type(m._runner) is ShardedRunner
    np.testing.assert_allclose(runs[0][0]["loss"], runs[1][0]["loss"], rtol=1e-12)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("image,channels,parts", [("32, 32, 3", 32, 2), ("16, 16, 3", 16, 1)])
def test_a_normalizing_step_is_split_where_its_arithmetic_outweighs_the_exchanges(image, channels, parts, monkeypatch):
    """From splitting.SPLIT_MIN_MACS_PER_EXCHANGE multiply-adds per sample per BatchNormalization
    (5.1M here, at 32x32; 0.3M at 16x16 with half the channels); a step kept whole normalizes
    with onnxruntime's training-mode op and has no exchanges to cut at."""
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    m = kcompile.compile_string(f"""model m {{
    input image: float32[{image}]
    Conv2D({channels}, 3, padding=same, use_bias=false)
    BatchNormalization()
    ReLU()
    Conv2D(32, 3, padding=same, use_bias=false)
    BatchNormalization()
    ReLU()
    GlobalAveragePooling2D()
    y = Dense(2)
    train {{ loss = mse; optimizer = SGD() }}
}}""")
    assert m._batch_parts() == parts
    import onnx
    step = onnx.load_from_string(m._step_graph()).graph
    exchanges = [n for n in step.node if n.name.startswith("exchange:")]
    training_mode = [n for n in step.node if n.op_type == "BatchNormalization" and any(
        a.name == "training_mode" and a.i == 1 for a in n.attribute)]
    assert (len(exchanges), len(training_mode)) == ((12, 0) if parts == 2 else (0, 2))
    if parts == 1:
        assert "BatchNormalization" in m.manifest["training"]["per_sample"]
        m.batch_parts = 2  # (asked for, a step without exchanges still runs whole)
        assert m._batch_parts() == 1


def test_a_shared_normalization_updates_its_moving_statistics_twice_in_parts(worth_splitting):
    """A BatchNormalization layer called twice: its second update reads the first, which reads the
    state; the update graph still carries the moving statistics from step to step."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 6, 6, 2)) * 3 + 2).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 32)]
    source = """model m {
    input x: float32[6, 6, 2]
    layer bn = BatchNormalization(momentum=0.8)
    a = bn(Conv2D(4, 3, padding=same)(x))
    b = bn(Conv2D(4, 1)(x) * 2.0 + 1.0)
    probs = Dense(3, activation=softmax)(Flatten()(relu(a) + b))
    output probs
    train { loss = categorical_crossentropy; optimizer = SGD(learning_rate=0.01) }
}"""
    runs = []
    for parts in (1, 2):
        m = kcompile.compile_string(source, seed=0)
        m.batch_parts = parts
        m.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        assert type(m._runner) is (StateRunner if parts == 1 else ShardedRunner)
        runs.append((dict(zip(m.weight_names, m.get_weights())), m.predict(x)))
    (whole, p1), (split, p2) = runs
    assert np.abs(whole["bn/moving_mean"]).max() > 0.1
    for name in ("bn/moving_mean", "bn/moving_variance"):
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p2, p1, atol=1e-5)


@pytest.mark.parametrize("body,reason", [
    ("input x: float16[8]\n    h = Dense(4)(x)", "overflow float16"),
    ("input x: int64[5]\n    h = Flatten()(Embedding(65536, 16)(x))", "table updated on its rows"),
])
def test_normalizing_steps_that_stay_whole(body, reason, worth_splitting, monkeypatch):
    """float16 sums overflow between sessions (80,000 numbers of 1 exceed float16's 65,504),
    and a table's looked-up rows are not carried across phases: such steps keep onnxruntime's
    training-mode BatchNormalization, whole."""
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    m = kcompile.compile_string(f"""model m {{
    {body}
    y = Dense(2)(BatchNormalization()(h))
    output y
    train {{ loss = mse; optimizer = SGD() }}
}}""")
    assert reason in m.manifest["training"]["per_sample"]
    m.batch_parts = 2
    assert m._batch_parts() == 1


@pytest.mark.parametrize("pool", [3, 4])
def test_a_normalization_before_a_pool_that_leaves_rows_over_splits(pool, worth_splitting):
    """A pool whose windows leave x's last rows out (7 rows, windows of 3 or 4) routes its
    gradient by MaxUnpool to x's shape read at run time, of which onnx infers no rank unless
    told: the values crossing the phases need one (this step used to fail to build)."""
    src = NORMALIZED.replace("    ReLU()\n", f"    ReLU()\n    MaxPooling2D({pool})\n", 1).format(
        image="7, 7, 2", conv="Conv2D(4, 3, padding=same, use_bias=false)",
        optimizer="SGD(learning_rate=0.1, momentum=0.9)", dtype="float32")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((40, 7, 7, 2)) * 3 + 2).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    runs = []
    for p in (1, 2):
        m = kcompile.compile_string(src, seed=0)
        m.batch_parts = p
        runs.append((m.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0).history, m.get_weights(), m))
    assert type(runs[1][2]._runner) is ShardedRunner and len(runs[1][2]._runner.phases) > 1
    assert_same(runs)


def test_weights_of_one_gradient_value_split():
    """Two biases added up get one gradient value (the graph computes it once); the parts give it
    once and the update reads it for both (this step used to fail to build)."""
    src = """model twin {
        input x: float32[6]
        h = Dense(8, activation=relu)(x)
        a = Dense(3)(h)
        b = Dense(3)(h)
        y = Add()(a, b)
        output y
        train { loss = mse; optimizer = Adam(learning_rate=0.01) }
    }"""
    gradients = kcompile.compile_string(src).manifest["training"]["gradients"]
    assert gradients["dense_1/bias"] == gradients["dense_2/bias"]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((70, 6)).astype(np.float32), rng.standard_normal((70, 3)).astype(np.float32)
    runs = []
    for p in (1, 2):
        m = kcompile.compile_string(src, seed=0)
        m.batch_parts = p
        runs.append((m.fit(x, y, epochs=3, batch_size=32, verbose=0).history, m.get_weights(), m))
    assert type(runs[1][2]._runner) is ShardedRunner
    assert_same(runs)


def test_a_masked_normalization_stays_whole(worth_splitting, monkeypatch):
    """A BatchNormalization over masked steps takes statistics of the unmasked steps, composed ops
    with no exchanges: its step is never split."""
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    m = kcompile.compile_string("""model m {
    input x: int64[5]
    h = GlobalAveragePooling1D()(BatchNormalization()(Embedding(50, 8, mask_zero=true)(x)))
    y = Dense(2)(h)
    output y
    train { loss = mse; optimizer = SGD() }
}""")
    assert m.manifest["training"]["per_sample"] == "a masked BatchNormalization normalizes by statistics of the whole batch"
    m.batch_parts = 2
    assert m._batch_parts() == 1
