"""Common-subexpression elimination: one node for each (op, inputs, attributes), one constant per value."""
from ..ir import Graph
from ..ops import OPS


def _freeze(v):
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(i) for i in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def common_subexpression_elimination(g: Graph) -> Graph:
    consts = {}
    for name, value in list(g.consts.items()):
        key = (str(value.dtype), value.shape, value.tobytes())
        if key in consts:
            g.replace_uses(name, consts[key])
        else:
            consts[key] = name
    seen = {}
    for node in g.nodes():
        if OPS[node.op].random:  # (two dropouts of one value differ in training)
            continue
        key = (node.op, tuple(node.inputs), _freeze(node.attrs))
        if key in seen:
            for mine, theirs in zip(node.outputs, seen[key].outputs):
                g.replace_uses(mine, theirs)
            g.remove_node(node)
        else:
            seen[key] = node
    g.prune_unused()
    return g
