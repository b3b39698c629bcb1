"""Constant folding: a node whose inputs are all constants becomes a constant.

The node is evaluated by onnxruntime through its own lowering, so folding can never
disagree with what the op computes at run time. Weights are not constants (they
change in training); onnxruntime folds weight-only subgraphs when a session starts.
"""
from ..ir import Graph
from ..ops import OPS

MAX_FOLDED_ELEMENTS = 1 << 22  # do not bloat the file with huge folded tensors


def evaluate(g: Graph, node) -> list:
    import onnxruntime as ort
    from ..backend import to_onnx
    sub = Graph("fold")
    for v in node.inputs:
        sub.consts[v] = g.consts[v]
        sub.types[v] = g.types[v]
        sub._names.add(v)
    new = sub.add_node(node.op, node.inputs, [g.types[o] for o in node.outputs], node.attrs)
    sub.outputs = [(o, n) for o, n in zip(node.outputs, new.outputs)]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(to_onnx(sub).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {})


def constant_folding(g: Graph) -> Graph:
    for node in g.nodes():
        if OPS[node.op].random or not node.inputs or not all(g.kind(v) == "const" for v in node.inputs):
            continue
        types = [g.types[o] for o in node.outputs]
        if not all(t.is_static and t.size() <= MAX_FOLDED_ELEMENTS for t in types):
            continue
        values = evaluate(g, node)
        for out, value in zip(node.outputs, values):
            const = g.add_const(value, base=out + "/folded")
            g.replace_uses(out, const)
        g.remove_node(node)
    g.prune_unused()
    return g
