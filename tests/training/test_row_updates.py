"""An Embedding table's update computed on the rows the batch looked up (optimizers.Rows): the
same losses, weights and slots as the dense update, for every optimizer and gradient clipping."""
import numpy as np
import onnx
import pytest

import kcompile
from kcompile.training import optimizers

MODEL = """
model m {{
    input tokens: int64[10]
    Embedding({rows}, 16)
    GlobalAveragePooling1D()
    probs = Dense(1, activation=sigmoid)
    output probs
    train {{
        loss = binary_crossentropy
        optimizer = {optimizer}
    }}
}}
"""
BIG = 30_000  # 480k numbers
ROWS_FROM = 1 << 18  # (the tests take the rows path from a smaller table than models do)


def train(optimizer, rows_from, monkeypatch):
    monkeypatch.setattr(optimizers, "ROWS_MIN_ELEMENTS", rows_from)
    m = kcompile.compile_string(MODEL.format(rows=BIG, optimizer=optimizer))
    m._id_ranges = {}  # (fit refuses ids outside the table; the graphs themselves take them as Gather does)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, (48, 10))  # rows repeat within and across samples; most rows never seen
    x[0, :3] = [-1, BIG - 1, -2]  # (Gather reads -1 as the last row: so must the update)
    y = rng.integers(0, 2, (48, 1)).astype(np.float32)
    history = m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    return m, history.history["loss"]


@pytest.mark.parametrize("optimizer", [
    "SGD(learning_rate=0.5)", "SGD(learning_rate=0.5, momentum=0.9)", "SGD(learning_rate=0.5, momentum=0.9, nesterov=true)",
    "RMSprop()", "RMSprop(centered=true, momentum=0.5)", "RMSprop(clipnorm=0.01)", "Adagrad(learning_rate=0.5)",
    "Adam()", "AdamW(amsgrad=true, clipvalue=0.001)", "Adam(global_clipnorm=0.01, weight_decay=0.1)",
    "Adamax(learning_rate=0.01)", "Adamax(clipnorm=0.01, weight_decay=0.1)", "Adadelta(learning_rate=1.0)",
    "Adadelta(learning_rate=1.0, rho=0.5, clipvalue=0.001)", "Nadam(learning_rate=0.01)",
    "Nadam(beta_1=0.8, weight_decay=0.1, global_clipnorm=0.5)", "Lion(learning_rate=0.01)",
    "Lion(beta_2=0.5, weight_decay=0.1, clipvalue=0.001)"])
def test_row_update_matches_the_dense_update(optimizer, monkeypatch):
    rows, rows_losses = train(optimizer, ROWS_FROM, monkeypatch)
    dense, dense_losses = train(optimizer, 1 << 62, monkeypatch)
    assert "embedding/embeddings" not in rows.manifest["training"]["gradients"]  # (the rows path ran)
    assert "embedding/embeddings" in dense.manifest["training"]["gradients"]
    np.testing.assert_allclose(rows_losses, dense_losses, rtol=1e-6)
    for a, b in zip(rows.get_weights(), dense.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    rows_state, dense_state = rows.optimizer_state(), dense.optimizer_state()
    assert rows_state.keys() == dense_state.keys()
    for name in rows_state:
        # (the rows path sums a table's gradient in another order: slots of ~1e-6 differ by a few
        # float32 ulps of the gradient's terms, e.g. 4e-12 in Adamax's m)
        np.testing.assert_allclose(rows_state[name], dense_state[name], rtol=1e-6, atol=1e-10, err_msg=name)
    # the table moved where the batch looked, and (SGD and Adagrad) only there
    table = rows.get_weights()[0]
    initial = kcompile.compile_string(MODEL.format(rows=BIG, optimizer=optimizer)).get_weights()[0]
    moved = np.flatnonzero(np.any(table != initial, axis=1))
    assert {0, 39, BIG - 2, BIG - 1} <= set(moved)
    if optimizer.startswith(("SGD(learning_rate=0.5)", "Adagrad")):
        assert set(moved) <= set(range(40)) | {BIG - 2, BIG - 1}


@pytest.mark.parametrize("rows_from, whole", [(ROWS_FROM, False), (1 << 62, True)])
def test_the_rows_step_never_scatters_into_a_table_of_zeros(rows_from, whole, monkeypatch):
    m, _ = train("Adam()", rows_from, monkeypatch)
    step = onnx.load_from_string(m._graph_for("train_step")).graph
    made_by = {o: n.op_type for n in step.node for o in n.output}
    # (the rows' values are summed into a compact buffer of zeros, [rows, 16]; the dense
    # gradient into zeros the table's size)
    into_zeros = [n.output[0] for n in step.node if n.op_type == "ScatterND" and made_by.get(n.input[0]) == "ConstantOfShape"]
    assert any("UniqueRows" not in name for name in into_zeros) == whole, into_zeros


@pytest.mark.parametrize("optimizer", ["SGD(learning_rate=0.5)", "RMSprop()"])
def test_a_split_step_joins_the_parts_rows(optimizer, monkeypatch):
    # Each part gives the rows it looked up and their gradients times its share of the batch
    # (SGD's step shows the shares); the update joins them, and a row that both parts looked
    # up is summed before RMSprop squares it (x's rows repeat across the parts).
    from kcompile.runtime.binding import ShardedRunner, StateRunner
    monkeypatch.setattr(optimizers, "ROWS_MIN_ELEMENTS", ROWS_FROM)
    runs = []
    x = np.random.default_rng(1).integers(0, 50, (33, 10))  # (the last batch's second part is empty)
    y = np.random.default_rng(2).integers(0, 2, (33, 1)).astype(np.float32)
    for parts in (1, 2):
        m = kcompile.compile_string(MODEL.format(rows=BIG, optimizer=optimizer))
        m.batch_parts = parts
        history = m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
        assert type(m._runner) is (StateRunner if parts == 1 else ShardedRunner)
        runs.append((history, m.get_weights()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_only_a_large_table_takes_the_rows_path():
    from kcompile.driver import compile_source
    grads, passes = [], []
    for rows in (100, optimizers.ROWS_MIN_ELEMENTS // 16):
        report = []
        compiled = compile_source(MODEL.format(rows=rows, optimizer="Adam()"), "m.kdl",
                                  report=lambda name, before, after, changed: report.append(name))
        grads.append(compiled.training().gradients)
        passes.append(report)
    assert "embedding/embeddings" in grads[0] and "embedding/embeddings" not in grads[1]
    # (kcompile build --report says so)
    assert not any("row-updates" in p for p in passes[0]) and "train:row-updates (embedding/embeddings)" in passes[1]
