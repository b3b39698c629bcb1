"""Freezing from Python: set_trainable rebuilds the training graphs without the frozen weights'
gradient work; their values stay bit-identical and their optimizer state goes."""
import numpy as np
import onnx
import pytest

import kcompile

SRC = """model f {
    input x: float32[4]
    a = Dense(8, activation=relu)
    b = BatchNormalization()
    y = Dense(1)
    output y
    train {
        loss = mse
        optimizer = Adam(learning_rate=0.05)
    }
}"""


def step_nodes(model):
    return len(onnx.load_from_string(model._training_onnx["train_step"]).graph.node)


def test_freeze_and_unfreeze_a_layer():
    m = kcompile.compile_string(SRC, seed=0)
    rng = np.random.default_rng(0)
    x, t = rng.random((32, 4), dtype=np.float32), rng.random((32, 1), dtype=np.float32)
    m.train_on_batch(x, t)
    full = step_nodes(m)
    assert m.set_trainable("dense", False) == ["dense/kernel", "dense/bias"]
    assert step_nodes(m) < full  # no gradient or update work for the frozen kernel and bias
    assert "dense/kernel" not in m.manifest["training"]["trainable"]
    assert not [s for s in m.optimizer_state() if s.endswith("/dense/kernel")]
    kept = m.optimizer_state()["adam/m/dense_1/kernel"]
    assert np.any(kept)  # the state of weights that stay trainable is kept
    before = dict(zip(m.weight_names, m.get_weights()))
    for _ in range(3):
        m.train_on_batch(x, t)
    after = dict(zip(m.weight_names, m.get_weights()))
    assert np.array_equal(after["dense/kernel"], before["dense/kernel"])
    assert np.array_equal(after["dense/bias"], before["dense/bias"])
    assert not np.array_equal(after["dense_1/kernel"], before["dense_1/kernel"])
    m.set_trainable("dense", True)
    assert step_nodes(m) == full
    m.train_on_batch(x, t)
    assert not np.array_equal(dict(zip(m.weight_names, m.get_weights()))["dense/kernel"], after["dense/kernel"])


def test_set_trainable_errors():
    m = kcompile.compile_string(SRC)
    with pytest.raises(ValueError, match="no weights under 'dens'.*did you mean dense"):
        m.set_trainable("dens", False)
