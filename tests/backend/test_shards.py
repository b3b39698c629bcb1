"""backend/shards.py: a training step cut at its gradients into a per-part graph and an update."""
import numpy as np
import onnxruntime as ort

import kcompile
from kcompile.backend.shards import split_step

SGD = """
model sgd {
    input x: float32[5]
    Dense(4, activation=tanh)
    y = Dense(2)
    output y
    train {
        loss = mse + 0.01 * l2(weights)
        optimizer = SGD(learning_rate=0.5)
    }
}
"""


def run(graph, feeds):
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def test_the_parts_gradients_add_up_to_the_steps_update():
    m = kcompile.compile_string(SGD, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 5)).astype(np.float32), rng.standard_normal((7, 2)).astype(np.float32)
    step = m._step_graph()
    weights = rng.random(7).astype(np.float32)  # (each sample's weight in the loss: cut with the rows)
    feeds = m._step_feeds({"x": x}, {"y_target": y, "loss:sample_weight": weights}, training=True)
    whole = run(step, feeds)
    (part,), update = split_step(step, m.manifest["training"]["gradients"], parts=2)
    grads, losses = {}, []
    for rows in (slice(0, 4), slice(4, 7)):
        out = run(part, {**feeds, "x": x[rows], "y_target": y[rows], "loss:sample_weight": weights[rows],
                         "share": np.asarray(len(range(7)[rows]) / 7, np.float32)})
        losses.append(out["loss"] * len(range(7)[rows]) / 7)
        for w in m.manifest["training"]["gradients"]:
            grads.setdefault(w, []).append(out[f"grad:{w}"])
    np.testing.assert_allclose(sum(losses), whole["loss"], rtol=1e-6)
    for w, (g0, g1) in grads.items():  # SGD: new = w - lr * g
        np.testing.assert_allclose(feeds[w] - 0.5 * (g0 + g1), whole[f"new:{w}"], rtol=1e-5, atol=1e-7)
    applied = run(update, {**feeds, **{f"grad:{w}:{k}": g[k] for w, g in grads.items() for k in (0, 1)}})
    for w in grads:
        np.testing.assert_allclose(applied[f"new:{w}"], whole[f"new:{w}"], rtol=1e-5, atol=1e-7)


def test_an_update_that_reads_the_batch_is_not_split():
    """BatchNormalization's moving statistics are updated from the batch itself."""
    m = kcompile.compile_string(SGD.replace("Dense(4, activation=tanh)", "Dense(4)\n    BatchNormalization()"))
    assert split_step(m._step_graph(), m.manifest["training"]["gradients"]) is None
