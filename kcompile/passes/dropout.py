"""Dropout, GaussianNoise and the random image augmentations are the identity at inference:
remove them (an augmentation reads its last input, RandomCrop's inference crop)."""
from ..ir import Graph
from ..ops import OPS
from ..ops.image import Augmentation


def remove_dropout(g: Graph) -> Graph:
    for node in g.nodes():
        if node.op in ("Dropout", "GaussianNoise") or isinstance(OPS[node.op], Augmentation):
            g.replace_uses(node.outputs[0], node.inputs[-1])
            g.remove_node(node)
    return g
