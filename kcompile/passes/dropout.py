"""Dropout, GaussianNoise and the random image augmentations (ops with ``random``) are the
identity at inference: remove them, reading their last input (the value itself, or RandomCrop's
inference crop)."""
from ..ir import Graph
from ..ops import OPS


def remove_dropout(g: Graph) -> Graph:
    for node in g.nodes():
        if OPS[node.op].random:
            g.replace_uses(node.outputs[0], node.inputs[-1])
            g.remove_node(node)
    return g
