"""Dropout and GaussianNoise are the identity at inference: remove them."""
from ..ir import Graph


def remove_dropout(g: Graph) -> Graph:
    for node in g.nodes():
        if node.op in ("Dropout", "GaussianNoise"):
            g.replace_uses(node.outputs[0], node.inputs[0])
            g.remove_node(node)
    return g
