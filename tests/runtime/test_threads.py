"""One model called from several threads: its calls take turns (runtime/training.py,
one_call_at_a_time), so predicts running at once give each caller its own outputs (they share
the bound buffers of runtime/binding.py, and wrote into each other's before)."""
import threading
from pathlib import Path

import numpy as np
import pytest

import kcompile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_in_threads(fn, threads=3):
    errors = []

    def guarded(k):
        try:
            fn(k)
        except Exception as e:  # (an assertion in a thread: reported by the test)
            errors.append(e)
    ts = [threading.Thread(target=guarded, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("example, rows, calls", [
    ("mnist_mlp.kdl", 1, 1500),  # the repeated small predict's buffers
    ("mnist_mlp.kdl", 16, 400),
    ("mnist_cnn.kdl", 300, 6),  # the halves of a large batch, on two one-core copies
])
def test_predicts_at_once_on_one_model_each_get_their_own_outputs(example, rows, calls):
    m = kcompile.compile(EXAMPLES / example, seed=0)
    rng = np.random.default_rng(0)
    xs = [rng.random((rows, 28, 28, 1), dtype=np.float32) for _ in range(3)]
    want = [m.predict(x) for x in xs]
    assert not np.allclose(want[0], want[1])

    def predicts(k):
        for _ in range(calls):
            np.testing.assert_allclose(m.predict(xs[k]), want[k], rtol=1e-5, atol=1e-6)
    run_in_threads(predicts)


def test_training_and_predicts_at_once_take_turns():
    """A thread predicting while another trains sees the weights of some step, whole: its
    outputs are those of the weights before or after a call of train_on_batch, never a mix."""
    m = kcompile.compile(EXAMPLES / "mnist_mlp.kdl", seed=0)
    rng = np.random.default_rng(1)
    x = rng.random((32, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]
    seen, steps = [], 20

    def work(k):
        if k == 0:
            for _ in range(steps):
                m.train_on_batch(x, y)
                seen.append(("weights", m.get_weights()))
        else:
            for _ in range(200):
                seen.append(("predict", m.predict(x[:2])))
    run_in_threads(work, threads=2)
    assert m.iterations == steps
    # every predict equals the outputs of the weights of one step (the first predicts: the initial ones)
    fresh = kcompile.compile(EXAMPLES / "mnist_mlp.kdl", seed=0)
    outputs = [fresh.predict(x[:2])]
    for kind, value in seen:
        if kind == "weights":
            fresh.set_weights(value)
            outputs.append(fresh.predict(x[:2]))
    for kind, value in seen:
        if kind == "predict":
            assert min(np.abs(value - o).max() for o in outputs) < 1e-6
