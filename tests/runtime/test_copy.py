"""A model copies (copy.deepcopy) and pickles at any point of its life: after predicts (bound
buffers, predict's copies of its session), training (the weights in the training buffers) and
with stateful layers or weights shared with another model. The copy holds the same weights,
optimizer state and step, and goes on as the original would; neither changes the other."""
import copy
import pickle
from pathlib import Path

import numpy as np
import pytest

import kcompile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m))}


def data(rows, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, 28, 28, 1), dtype=np.float32), np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)]


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("example", ["mnist_mlp.kdl", "mnist_cnn.kdl"])
def test_a_trained_model_copies_and_both_go_on_alike(example, how):
    m = kcompile.compile(EXAMPLES / example, seed=0)
    x, y = data(256)
    m.predict(x[:1]), m.predict(x)  # (the bound small-predict buffers; the CNN's one-core copies)
    m.fit(x, y, batch_size=64, epochs=1, verbose=0)
    m.predict(x[:1])
    twin = COPIES[how](m)
    assert twin.iterations == m.iterations == 4 and twin.epochs_done == m.epochs_done == 1
    for a, b in zip(twin.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(twin.optimizer_state().values(), m.optimizer_state().values()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(twin.predict(x[:1]), m.predict(x[:1]), rtol=1e-6, atol=1e-7)
    # both train on: the same seed's shuffles, the same steps, the same weights
    before = [w.copy() for w in m.get_weights()]
    twin.fit(x, y, batch_size=64, epochs=2, initial_epoch=1, verbose=0)
    assert twin.iterations == 8 and m.iterations == 4
    for a, b in zip(m.get_weights(), before):  # (the copy's training left the original alone)
        np.testing.assert_array_equal(a, b)
    m.fit(x, y, batch_size=64, epochs=2, initial_epoch=1, verbose=0)
    for a, b in zip(twin.get_weights(), m.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_copy_keeps_stateful_states_and_owns_shared_weights():
    src = """model s {
    input x: float32[4, 3], batch_size=2
    y = LSTM(5, stateful=true)
    output y
}"""
    m = kcompile.compile_string(src)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    m.predict(x)  # (states carried to the next batch)
    twin = copy.deepcopy(m)
    np.testing.assert_array_equal(twin.predict(x), m.predict(x))  # (both continue from the same states)

    a = kcompile.compile(EXAMPLES / "mnist_mlp.kdl", seed=0)
    b = kcompile.compile(EXAMPLES / "mnist_mlp.kdl", seed=1)
    a.share_weights(b)
    twin = copy.deepcopy(a)
    x, y = data(64)
    b.fit(x, y, batch_size=32, epochs=1, verbose=0)  # (changes the weights a and b share)
    shared = a.get_layer("dense").get_weights()[0]
    np.testing.assert_array_equal(b.get_layer("dense").get_weights()[0], shared)
    assert not np.array_equal(twin.get_layer("dense").get_weights()[0], shared)


def test_a_copy_steps_back_from_a_non_finite_loss_as_the_original_does():
    m = kcompile.compile(EXAMPLES / "iris_mlp.kdl", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    m.train_on_batch(x, y), m.train_on_batch(x, y)
    twin = copy.deepcopy(m)
    bad = x.copy()
    bad[0] = np.nan
    for model in (m, twin):  # (each goes back to the weights that gave the last finite loss)
        with pytest.raises(Exception, match="the loss became nan"):
            model.train_on_batch(bad, y)
    assert twin.iterations == m.iterations == 1
    for a, b in zip(twin.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_copys_state_is_taken_in_one_turn_of_the_models_calls():
    """copy.deepcopy and pickle read the state __getstate__ returns after the model's lock is
    released: another thread's step and weights read may come between, and must not change it."""
    m = kcompile.compile(EXAMPLES / "iris_mlp.kdl", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)]
    m.train_on_batch(x, y)
    state = m.__getstate__()
    taken = {k: v.copy() for k, v in state["_weights"].items()}
    slots = {k: v.copy() for k, v in state["_slots"].items()}
    m.train_on_batch(x, y)
    m.get_weights()  # (brings the model's weight and slot dictionaries up to date)
    assert state["_iterations"] == 1 and m.iterations == 2
    for name, value in taken.items():
        np.testing.assert_array_equal(state["_weights"][name], value)
    for name, value in slots.items():
        np.testing.assert_array_equal(state["_slots"][name], value)
