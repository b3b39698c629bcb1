"""One model called from several threads: its calls take turns (runtime/training.py,
one_call_at_a_time), so predicts running at once give each caller its own outputs (they share
the bound buffers of runtime/binding.py, and wrote into each other's before); fit takes its
turns step by step."""
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


def test_fit_takes_turns_step_by_step_so_its_data_may_use_the_model():
    """fit and evaluate take the model's turn for each step, not for their whole loop, which runs
    the data's own code: batches made on a worker thread that labels them with the model's own
    predict (a prefetch of pseudo-labels) finish, where a lock held through fit waited forever;
    each label is the model's output at some step, whole."""
    import queue
    m = kcompile.compile_string("""model r {
    input x: float32[4]
    y = Dense(1)(x)
    train { loss = mse; optimizer = SGD(learning_rate=0.01) }
}""", seed=0)
    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    labels = []

    def prefetched(steps):
        q = queue.Queue(maxsize=2)

        def work():
            for i in range(steps):
                xb = x[(i % 4) * 16:(i % 4 + 1) * 16]
                labels.append(m.predict(xb, verbose=0))
                q.put((xb, labels[-1] * 0.5))
        threading.Thread(target=work, daemon=True).start()
        for _ in range(steps):
            yield q.get(timeout=60)
    done = []
    trainer = threading.Thread(target=lambda: done.append(m.fit(prefetched(8), epochs=2, steps_per_epoch=4,
                                                                 verbose=0).history))
    trainer.start()
    trainer.join(timeout=120)
    assert done and len(done[0]["loss"]) == 2 and m.iterations == 8
    assert all(np.isfinite(label).all() and label.shape == (16, 1) for label in labels)
