"""Dense, Embedding, Dropout, and tensor arithmetic / built-in functions."""
import numpy as np
import pytest

import reference as ref
from reference import random_input


@pytest.mark.parametrize("units", [1, 3, 8])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_rank2(run, rng, close, units, use_bias):
    src = f"""
model m {{
    input x: float32[5]
    Dense({units}, use_bias={'true' if use_bias else 'false'})
}}"""
    x = random_input((5,), rng, batch=3)
    y, w = run(src, x)
    assert len(w) == (2 if use_bias else 1)
    assert w[0].shape == (5, units)
    close(y, ref.dense(x, *w))


@pytest.mark.parametrize("shape", [(4, 6), (1, 3), (7, 2)])
def test_dense_rank3(run, rng, close, shape):
    src = f"""
model m {{
    input x: float32[{shape[0]}, {shape[1]}]
    Dense(5)
}}"""
    x = random_input(shape, rng, batch=3)
    y, w = run(src, x)
    close(y, ref.dense(x, *w))


def test_dense_rank4(run, rng, close):
    src = """
model m {
    input x: float32[3, 2, 4]
    Dense(6, activation=tanh)
}"""
    x = random_input((3, 2, 4), rng)
    y, w = run(src, x)
    close(y, np.tanh(ref.dense(x, *w)))


def test_dense_stack(run, rng, close):
    src = """
model m {
    input x: float32[7]
    Dense(6, activation=relu)
    Dense(4, activation=sigmoid)
    Dense(3)
}"""
    x = random_input((7,), rng, batch=5)
    y, (k1, b1, k2, b2, k3, b3) = run(src, x)
    h = np.maximum(ref.dense(x, k1, b1), 0)
    h = ref.sigmoid(ref.dense(h, k2, b2))
    close(y, ref.dense(h, k3, b3))


def test_dense_functional_two_outputs(run, rng, close):
    src = """
model m {
    input x: float32[4]
    h = Dense(3)(x)
    y = Dense(2, activation=relu)(h)
    output h, y
}"""
    x = random_input((4,), rng)
    (h, y), (k1, b1, k2, b2) = run(src, x)
    close(h, ref.dense(x, k1, b1))
    close(y, np.maximum(ref.dense(ref.dense(x, k1, b1), k2, b2), 0))


def test_dense_batch_larger_than_batch_size(run, rng, close):
    src = """
model m {
    input x: float32[3]
    Dense(2)
}"""
    x = random_input((3,), rng, batch=70)  # predict runs 32 rows at a time
    y, w = run(src, x)
    close(y, ref.dense(x, *w))


@pytest.mark.parametrize("seq,vocab,dim", [(6, 10, 4), (1, 3, 2), (9, 50, 8)])
def test_embedding(run, rng, close, seq, vocab, dim):
    src = f"""
model m {{
    input ids: int64[{seq}]
    Embedding({vocab}, {dim})
}}"""
    ids = rng.integers(0, vocab, (3, seq)).astype(np.int64)
    y, (table,) = run(src, ids)
    assert table.shape == (vocab, dim)
    close(y, ref.embedding(ids, table))


def test_embedding_then_pool_and_dense(run, rng, close):
    src = """
model m {
    input ids: int64[5]
    Embedding(12, 6)
    GlobalAveragePooling1D()
    Dense(3, activation=softmax)
}"""
    ids = rng.integers(0, 12, (4, 5)).astype(np.int64)
    y, (table, k, b) = run(src, ids)
    close(y, ref.softmax(ref.dense(ref.embedding(ids, table).mean(axis=1), k, b)))


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9])
def test_dropout_is_identity(run, rng, close, rate):
    src = f"""
model m {{
    input x: float32[6]
    Dense(5)
    Dropout({rate})
    Dense(2)
}}"""
    x = random_input((6,), rng, batch=4)
    y, (k1, b1, k2, b2) = run(src, x)
    close(y, ref.dense(ref.dense(x, k1, b1), k2, b2))


def test_dropout_on_input(run, rng, close):
    src = """
model m {
    input x: float32[3, 4]
    y = Dropout(0.3)(x)
    output y
}"""
    x = random_input((3, 4), rng)
    y, _ = run(src, x)
    close(y, x)


# ---------------------------------------------------------------- tensor arithmetic
TWO_INPUTS = """
model m {{
    input a: float32[{sa}]
    input b: float32[{sb}]
    y = {expr}
    output y
}}"""


@pytest.mark.parametrize("expr,fn", [
    ("a + b", lambda a, b: a + b),
    ("a - b", lambda a, b: a - b),
    ("a * b", lambda a, b: a * b),
    ("a / b", lambda a, b: a / b),
    ("a * 2.0", lambda a, b: a * 2.0),
    ("2.0 * a", lambda a, b: 2.0 * a),
    ("a + 1", lambda a, b: a + 1),
    ("a - 0.5", lambda a, b: a - 0.5),
    ("1.0 - a", lambda a, b: 1.0 - a),
    ("a / 4", lambda a, b: a / 4),
    ("3.0 / b", lambda a, b: 3.0 / b),
    ("-a", lambda a, b: -a),
    ("-a + b * 3.0", lambda a, b: -a + b * 3.0),
    ("(a - b) * (a + b)", lambda a, b: (a - b) * (a + b)),
    ("a - b - a", lambda a, b: a - b - a),
    ("a / b / 2.0", lambda a, b: a / b / 2.0),
    ("--a", lambda a, b: a),
])
def test_arithmetic(run, rng, close, expr, fn):
    src = TWO_INPUTS.format(sa="3, 4", sb="3, 4", expr=expr)
    a = random_input((3, 4), rng)
    b = rng.uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32) * rng.choice([-1, 1], (2, 3, 4)).astype(np.float32)
    y, _ = run(src, {"a": a, "b": b})
    close(y, fn(a.astype(np.float64), b.astype(np.float64)))


@pytest.mark.parametrize("sa,sb", [("3, 4", "1, 4"), ("3, 4", "3, 1"), ("2, 3, 4", "1, 1, 4"),
                                   ("1, 4", "3, 1"), ("5", "1")])
@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_broadcasting(run, rng, close, sa, sb, op):
    src = TWO_INPUTS.format(sa=sa, sb=sb, expr=f"a {op} b")
    shape_a = tuple(int(d) for d in sa.split(","))
    shape_b = tuple(int(d) for d in sb.split(","))
    a = random_input(shape_a, rng)
    b = rng.uniform(0.5, 2.0, (2,) + shape_b).astype(np.float32)
    y, _ = run(src, {"a": a, "b": b})
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = {"+": a64 + b64, "-": a64 - b64, "*": a64 * b64, "/": a64 / b64}[op]
    close(y, expected)


@pytest.mark.parametrize("sa,sb,axis,np_axis", [
    ("4", "3", -1, -1), ("2, 3", "2, 5", -1, -1), ("2, 3", "4, 3", 1, 1), ("2, 3, 2", "2, 1, 2", 2, 2),
])
def test_concat_function(run, rng, close, sa, sb, axis, np_axis):
    src = TWO_INPUTS.format(sa=sa, sb=sb, expr=f"concat(a, b, axis={axis})")
    a = random_input(tuple(int(d) for d in sa.split(",")), rng)
    b = random_input(tuple(int(d) for d in sb.split(",")), rng)
    y, _ = run(src, {"a": a, "b": b})
    close(y, np.concatenate([a, b], axis=np_axis))


def test_concat_three(run, rng, close):
    src = """
model m {
    input a: float32[2]
    input b: float32[3]
    input c: float32[1]
    y = concat(a, b, c, axis=-1)
    output y
}"""
    a, b, c = (random_input((n,), rng) for n in (2, 3, 1))
    y, _ = run(src, {"a": a, "b": b, "c": c})
    close(y, np.concatenate([a, b, c], axis=-1))


@pytest.mark.parametrize("shape,axis,keepdims", [
    ("5", "1", False), ("3, 4", "1", False), ("3, 4", "2", False), ("3, 4", "-1", False),
    ("3, 4", "1", True), ("2, 3, 4", "(1, 2)", False), ("2, 3, 4", "(1, 3)", True),
])
@pytest.mark.parametrize("fn", ["mean", "sum", "max", "min"])
def test_reductions(run, rng, close, shape, axis, keepdims, fn):
    src = f"""
model m {{
    input x: float32[{shape}]
    y = {fn}(x, axis={axis}, keepdims={'true' if keepdims else 'false'})
    output y
}}"""
    x = random_input(tuple(int(d) for d in shape.split(",")), rng)
    y, _ = run(src, x)
    np_axis = eval(axis)
    close(y, getattr(np, fn)(x.astype(np.float64), axis=np_axis, keepdims=keepdims))


def test_mean_default_keepdims(run, rng, close):
    src = """
model m {
    input x: float32[3, 4]
    y = mean(x, axis=1)
    output y
}"""
    x = random_input((3, 4), rng)
    y, _ = run(src, x)
    close(y, x.astype(np.float64).mean(axis=1))


def test_dense_then_arithmetic(run, rng, close):
    src = """
model m {
    input x: float32[4]
    h = Dense(3)(x)
    g = Dense(3, activation=sigmoid)(x)
    y = h * g + h / 2.0 - g
    output y
}"""
    x = random_input((4,), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    h = ref.dense(x, k1, b1)
    g = ref.sigmoid(ref.dense(x, k2, b2))
    close(y, h * g + h / 2.0 - g)


@pytest.mark.parametrize("fn,np_fn", [
    ("exp", np.exp), ("abs", np.abs), ("square", np.square),
])
def test_unary_functions(run, rng, close, fn, np_fn):
    src = f"""
model m {{
    input x: float32[3, 4]
    y = {fn}(x)
    output y
}}"""
    x = random_input((3, 4), rng, scale=2.0)
    y, _ = run(src, x)
    close(y, np_fn(x.astype(np.float64)))


@pytest.mark.parametrize("fn,np_fn", [("log", np.log), ("sqrt", np.sqrt)])
def test_unary_functions_positive(run, rng, close, fn, np_fn):
    src = f"""
model m {{
    input x: float32[6]
    y = {fn}(x)
    output y
}}"""
    x = rng.uniform(0.1, 3.0, (2, 6)).astype(np.float32)
    y, _ = run(src, x)
    close(y, np_fn(x.astype(np.float64)))


@pytest.mark.parametrize("fn,np_fn", [("maximum", np.maximum), ("minimum", np.minimum)])
def test_binary_functions(run, rng, close, fn, np_fn):
    src = TWO_INPUTS.format(sa="3, 4", sb="3, 4", expr=f"{fn}(a, b)")
    a, b = random_input((3, 4), rng), random_input((3, 4), rng)
    y, _ = run(src, {"a": a, "b": b})
    close(y, np_fn(a, b))


def test_matmul_function(run, rng, close):
    src = TWO_INPUTS.format(sa="3, 4", sb="4, 5", expr="matmul(a, b)")
    a, b = random_input((3, 4), rng), random_input((4, 5), rng)
    y, _ = run(src, {"a": a, "b": b})
    close(y, a.astype(np.float64) @ b.astype(np.float64))


@pytest.mark.parametrize("perm", [None, (0, 2, 1), (0, 3, 1, 2)])
def test_transpose_function(run, rng, close, perm):
    shape = (2, 3) if perm in (None, (0, 2, 1)) else (2, 3, 4)
    arg = "" if perm is None else f", perm={perm}"
    src = f"""
model m {{
    input x: float32[{', '.join(map(str, shape))}]
    y = transpose(x{arg})
    output y
}}"""
    x = random_input(shape, rng)
    y, _ = run(src, x)
    expected = np.transpose(x, (0, 2, 1) if perm is None else perm)
    close(y, expected)


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_embedding_2d_ids(run, rng, close, dtype):
    src = f"""
model m {{
    input ids: {dtype}[2, 3]
    Embedding(7, 5)
}}"""
    ids = rng.integers(0, 7, (4, 2, 3)).astype(dtype)
    y, (table,) = run(src, ids)
    close(y, ref.embedding(ids, table))


def test_embedding_conv1d(run, rng, close):
    src = """
model m {
    input ids: int64[8]
    Embedding(20, 4)
    Conv1D(3, 3, padding=causal, activation=relu)
    GlobalMaxPooling1D()
}"""
    ids = rng.integers(0, 20, (3, 8)).astype(np.int64)
    y, (table, k, b) = run(src, ids)
    h = np.maximum(ref.conv(ref.embedding(ids, table), k, b, padding="causal"), 0)
    close(y, h.max(axis=1))


def test_shared_dense_layer(run, rng, close):
    src = """
model m {
    input a: float32[4]
    input b: float32[4]
    layer d = Dense(3, activation=tanh)
    y = d(a) + d(b) * 0.5
    output y
}"""
    a, b = random_input((4,), rng), random_input((4,), rng)
    y, w = run(src, {"a": a, "b": b})
    assert len(w) == 2
    close(y, np.tanh(ref.dense(a, *w)) + 0.5 * np.tanh(ref.dense(b, *w)))


def test_two_identical_dense_layers_keep_their_own_weights(run, rng, close):
    src = """
model m {
    input x: float32[4]
    a = Dense(3, kernel_initializer=zeros)(x)
    b = Dense(3, kernel_initializer=zeros)(x)
    output a, b
}"""
    x = random_input((4,), rng)
    (a, b), (k1, b1, k2, b2) = run(src, x)
    close(a, ref.dense(x, k1, b1))
    close(b, ref.dense(x, k2, b2))


def test_masking_zeroes_padded_steps_and_masks_them_downstream(run, rng, close):
    """Keras's Masking: a step whose features all equal mask_value outputs 0 and is left out by
    what reads the mask (here GlobalAveragePooling1D averages the other steps). A scratch run
    matched Keras/JAX through a masked LSTM and three SGD steps to 1.2e-7."""
    src = """
model m {
    input x: float32[5, 3]
    h = Masking(mask_value=-1.0)(x)
    p = GlobalAveragePooling1D()(h)
    output h, p
}"""
    x = random_input((5, 3), rng, batch=3)
    x[0, 3:] = -1.0   # padded steps
    x[1, 0, 1] = -1.0  # one feature at the padding value: the step is kept
    (h, p), _ = run(src, x)
    keep = ~np.all(x == -1.0, axis=-1)
    close(h, x * keep[..., None])
    close(p, (x * keep[..., None]).sum(1) / keep.sum(1, keepdims=True))

