"""Keras's order of a functional model's layers and weights (frontend/layer_order.py).

The expected orders were printed by Keras 3.15 (`[w.path for w in model.weights]`) for the
same graphs written in Keras."""
import numpy as np
import pytest

import kcompile

HEAD = """
model m {
    input a: float32[4]
    input b: float32[3]
"""

CASES = {
    # branches of different lengths: the deeper branch's first layers come first
    "branches": ("""
    x = Dense(5, name="da")(a)
    y = Dense(7, name="db1")(b)
    y = Dense(7, name="db2")(y)
    y = Dense(7, name="db3")(y)
    o = Dense(2, name="out")(Concatenate()([x, y]))
    output o
""", ["db1", "db2", "da", "db3", "out"]),
    "residual": ("""
    x = Dense(8, name="d1")(a)
    y = Dense(8, name="d2")(x)
    y = Dense(8, name="d3")(y)
    o = Dense(2, name="out")(Add()([x, y]))
    output o
""", ["d1", "d2", "d3", "out"]),
    "residual_plus": ("""
    x = Dense(8, name="d1")(a)
    y = Dense(8, name="d2")(x)
    y = Dense(8, name="d3")(y)
    o = Dense(2, name="out2")(x + y)
    output o
""", ["d1", "d2", "d3", "out2"]),
    # a shared layer takes the depth of its deepest call
    "shared": ("""
    layer s = Dense(4)
    p = s(a)
    q = Dense(4, name="q1")(b)
    q = s(q)
    o = Dense(1, name="o")(Concatenate()([p, q]))
    output o
""", ["q1", "s", "o"]),
    "multi_output": ("""
    t = Dense(6, name="trunk")(a)
    o1 = Dense(1, name="o1")(t)
    h = Dense(6, name="h1")(t)
    h = Dense(6, name="h2")(h)
    o2 = Dense(1, name="o2")(h)
    output o1, o2
""", ["trunk", "h1", "h2", "o1", "o2"]),
    "multi_output_reversed": ("""
    t = Dense(6, name="trunk")(a)
    o1 = Dense(1, name="o1")(t)
    h = Dense(6, name="h1")(t)
    h = Dense(6, name="h2")(h)
    o2 = Dense(1, name="o2")(h)
    output o2, o1
""", ["trunk", "h1", "h2", "o2", "o1"]),
    # an operation between layers counts as one level of depth, as in Keras
    "operation": ("""
    x1 = Dense(5, name="e1")(a) * 2.0
    x2 = Dense(5, name="e3")(Dense(5, name="e2")(a))
    o = Dense(1, name="eo")(Concatenate()([x1, x2]))
    output o
""", ["e1", "e2", "e3", "eo"]),
    "function": ("""
    x1 = relu(Dense(5, name="f1")(a))
    x2 = Dense(5, name="f3")(Dense(5, name="f2")(a))
    o = Dense(1, name="fo")(Concatenate()([x2, x1]))
    output o
""", ["f2", "f1", "f3", "fo"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_in_keras_order(case):
    body, layers = CASES[case]
    model = kcompile.compile_string(HEAD + body + "}\n")
    expected = [f"{name}/{w}" for name in layers for w in ("kernel", "bias")]
    assert model.weight_names == expected
    assert [layer.name for layer in model.layers if layer.weight_names] == layers
    # get_weights follows the same order, with each weight's own shape
    assert [w.shape for w in model.get_weights()] == \
        [tuple(p["shape"]) for name in expected for p in model.manifest["parameters"] if p["name"] == name]


def test_sequential_keeps_source_order():
    model = kcompile.compile_string("""
model m {
    input x: float32[4]
    Dense(3, name="z")
    Dense(3, name="a")
    Dense(2, name="m")
}
""")
    assert model.weight_names == ["z/kernel", "z/bias", "a/kernel", "a/bias", "m/kernel", "m/bias"]


def test_set_weights_from_keras_order_round_trips_through_predict():
    body, _ = CASES["branches"]
    model = kcompile.compile_string(HEAD + body + "}\n")
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()]
    model.set_weights(weights)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 3)).astype(np.float32)
    db1k, db1b, db2k, db2b, dak, dab, db3k, db3b, ok, ob = weights
    y = ((b @ db1k + db1b) @ db2k + db2b) @ db3k + db3b
    expected = np.concatenate([a @ dak + dab, y], axis=1) @ ok + ob
    np.testing.assert_allclose(model.predict({"a": a, "b": b}), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("body", ["Activation()", "Dense(3)\n    Activation(linear)\n    Dense(2)"])
def test_identity_layers_pass_their_input_on(body):
    """An identity layer's output is its input's value: it must not be its own parent (the
    first version of the order looped forever here)."""
    model = kcompile.compile_string(f"model m {{\n    input x: float32[4]\n    {body}\n}}\n")
    assert [layer.class_name for layer in model.layers] == [line.strip().split("(")[0] for line in body.split("\n")]
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    expected = x
    for layer in model.layers:
        if layer.class_name == "Dense":
            kernel, bias = layer.get_weights()
            expected = expected @ kernel + bias
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_identity_operation_between_layers():
    model = kcompile.compile_string("""
model m {
    input a: float32[4]
    x = Dense(4, name="first")(a)
    y = linear(x)
    z = Dense(2, name="last")(y + x)
    output z
}
""")
    assert [layer.name for layer in model.layers] == ["first", "last"]
    a = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    k1, b1, k2, b2 = model.get_weights()
    x = a @ k1 + b1
    np.testing.assert_allclose(model.predict(a), (x + x) @ k2 + b2, rtol=1e-5, atol=1e-5)


def test_layers_no_output_uses_are_left_out_as_by_keras():
    """Keras's Model(inputs, outputs) holds the layers between them only: a layer written but
    not used (a functional one, or the end of a Sequential stack past the named output) adds
    no weights, so the weights still port from Keras in order; a layer the loss reads stays
    (after the layers the outputs reach, as before)."""
    model = kcompile.compile_string(HEAD + """
    unused = Dense(3, name="unused")(a)
    also = Dense(3, name="also")(unused)
    x = Dense(5, name="da")(a)
    o = Dense(2, name="out")(Concatenate()([x, b]))
    output o
}
""")
    assert model.weight_names == ["da/kernel", "da/bias", "out/kernel", "out/bias"]
    assert [layer.name for layer in model.layers] == ["da", "concatenate", "out"] and model.count_params() == 43
    stack = kcompile.compile_string("""
model m {
    input x: float32[4]
    Dense(3, name="h")
    y = Dense(2, name="y")
    Dense(5, name="past")
    output y
}
""")
    assert stack.weight_names == ["h/kernel", "h/bias", "y/kernel", "y/bias"]
    aux = kcompile.compile_string(HEAD + """
    h = Dense(3, name="h")(a)
    side = Dense(2, name="side")(h)
    o = Dense(2, name="o")(h)
    output o
    train { target t: float32[2]
            loss = mse(o) + mse(t, side)
            optimizer = SGD() }
}
""")
    assert aux.weight_names == ["h/kernel", "h/bias", "o/kernel", "o/bias", "side/kernel", "side/bias"]
    rng = np.random.default_rng(0)
    a, t = rng.random((8, 4), dtype=np.float32), rng.random((8, 2), dtype=np.float32)
    before = aux.get_layer("side").get_weights()[0].copy()
    aux.fit({"a": a, "b": np.zeros((8, 3), np.float32)}, {"o_target": t, "t": t}, verbose=0)
    assert not np.allclose(aux.get_layer("side").get_weights()[0], before)  # (it trains: the loss reads it)


def test_an_outputs_mask_is_kept_with_the_layers():
    """The mask an output carries (Embedding(mask_zero=true) through a Dense) is no value an output
    is computed from, yet its loss reads it: kept (a review found it dropped)."""
    m = kcompile.compile_string("""model s {
    input t: int64[5]
    Embedding(8, 3, mask_zero=true)
    p = Dense(3, activation=softmax)
    train { loss = sparse_categorical_crossentropy; optimizer = SGD(learning_rate=1.0) }
}""")
    ids = np.array([[1, 2, 0, 0, 3], [0, 3, 4, 0, 5]])
    y = np.zeros((2, 5), np.int64)
    probs = m.predict(ids)
    kept = ids != 0
    want = -np.log(probs[..., 0][kept]).mean()  # (the mean over the unmasked steps)
    assert m.evaluate(ids, y, verbose=0) == pytest.approx(want, rel=1e-5)
