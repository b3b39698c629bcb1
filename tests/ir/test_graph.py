"""The graph IR: types on every value, locations on every node, a printable form."""
import pytest

from kcompile.driver import compile_source
from kcompile.errors import ShapeError
from kcompile.ir import BATCH, TensorType, broadcast_shapes

SRC = """model m {
    input x: float32[6]
    h = Dense(4, activation=relu)(x)
    y = h * 2.0
    output y
}"""


def test_every_value_typed_every_node_located():
    g = compile_source(SRC, "m.kdl", opt_level=0).graph
    for node in g.nodes():
        assert node.loc is not None and node.loc.file == "m.kdl"
        for v in node.inputs + node.outputs:
            assert isinstance(g.types[v], TensorType)
    lines = {n.op: n.loc.line for n in g.nodes()}
    assert lines == {"MatMul": 3, "Add": 3, "Relu": 3, "Mul": 4}
    assert g.types[g.outputs[0][1]] == TensorType("float32", (BATCH, 4))


def test_printable_form():
    text = str(compile_source(SRC, "m.kdl", opt_level=0).graph)
    assert text.startswith("graph m {")
    assert "input  %x: float32[N, 6]" in text
    assert "param  %dense/kernel: float32[6, 4] = glorot_uniform" in text
    assert "= MatMul(%x, %dense/kernel)  # 3:9" in text
    assert text.rstrip().endswith("}")


def test_broadcasting_rules():
    assert broadcast_shapes((BATCH, 1, 3), (4, 1)) == (BATCH, 4, 3)
    assert broadcast_shapes((BATCH, 5), ()) == (BATCH, 5)
    with pytest.raises(ShapeError, match=r"\[N, 3\] and \[4\] do not broadcast"):
        broadcast_shapes((BATCH, 3), (4,))


def test_shared_layer_has_one_set_of_weights():
    src = """model m {
        input a: float32[3]
        layer d = Dense(2)
        y = d(a) + d(a * 2.0)
        output y
    }"""
    g = compile_source(src, "m.kdl", opt_level=0).graph
    assert list(g.params) == ["d/kernel", "d/bias"]
    assert [n.op for n in g.nodes()].count("MatMul") == 2


def test_blocks_and_models_inside_models_name_their_weights():
    src = """
    block Scale(units: int) {
        input x
        weight gamma: [units] = ones
        output x * gamma
    }
    model inner {
        input z: float32[3]
        out = Dense(3)
        output out
    }
    model outer {
        input x: float32[3]
        a = Scale(3)(x)
        b = Scale(3)(a)
        layer s = Scale(3)
        c = s(b) + s(a)
        y = inner(c, trainable=false)
        output y
    }"""
    g = compile_source(src, "m.kdl", model="outer", opt_level=0).graph
    assert list(g.params) == ["scale/gamma", "scale_1/gamma", "s/gamma", "inner/dense/kernel", "inner/dense/bias"]
    assert [p.trainable for p in g.params.values()] == [True, True, True, False, False]
    assert [r.name for r in g.layers] == ["scale", "scale_1", "s", "inner"]


def test_readers_follow_every_edit():
    """Graph.consumers (an index of each value's readers, kept through add_node, set_inputs,
    replace_uses and remove_node) against a scan of every node, after random edits of a graph
    of inputs, constants and nodes reading them (some one value twice)."""
    import random

    import numpy as np

    from kcompile.ir import Graph

    rng = random.Random(0)
    g = Graph("g")
    t = TensorType("float32", (3,))
    values = [g.add_input(f"x{i}", t) for i in range(3)] + [g.add_const(np.ones(3, np.float32)) for _ in range(2)]
    nodes = []
    for step in range(300):
        action = rng.random()
        if action < 0.4 or not nodes:
            inputs = [rng.choice(values) for _ in range(rng.randint(1, 4))]
            node = g.add_node("Sum", inputs, [t])
            nodes.append(node)
            values += node.outputs
        elif action < 0.7:  # (a node's inputs changed: some kept, one repeated)
            node = rng.choice(nodes)
            earlier = [v for v in values if v not in g.producer or g.node(g.producer[v]).seq < node.seq]
            kept = node.inputs[:rng.randint(0, len(node.inputs))]
            g.set_inputs(node, kept + [rng.choice(earlier)] * rng.randint(1, 2))
        elif action < 0.85:
            old = rng.choice(values)
            new = rng.choice([v for v in values if v not in g.producer])  # (an input or constant: no cycle)
            g.replace_uses(old, new)
        else:
            node = nodes.pop(rng.randrange(len(nodes)))
            for other in nodes:  # (its readers read an input instead)
                if set(node.outputs) & set(other.inputs):
                    g.set_inputs(other, [values[0] if v in node.outputs else v for v in other.inputs])
            g.remove_node(node)
            values = [v for v in values if v not in node.outputs]
        for v in values:
            scanned = sorted((n for n in g.nodes() if v in n.inputs), key=lambda n: n.seq)
            assert [n.name for n in g.consumers(v)] == [n.name for n in scanned], (step, v)
            assert g.uses(v) == sum(n.inputs.count(v) for n in scanned) + sum(1 for _, o in g.outputs if o == v)
    assert len(nodes) > 20
