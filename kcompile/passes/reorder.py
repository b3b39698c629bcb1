"""Max pooling before a monotonic activation: ``MaxPool(relu(z)) == relu(MaxPool(z))``.

The activation (and, in training, its gradient mask) then runs on the pooled tensor, a
quarter of the size for 2x2 windows. Gradients agree too: the window's argmax of z is the
argmax of relu(z) wherever the pooled value is positive, and elsewhere relu's gradient is
zero either way.
"""
from ..ir import Graph
from .util import add, replace, sole_consumer

MONOTONIC = ("Relu", "LeakyRelu")  # non-decreasing, and increasing where their gradient is non-zero


def pool_before_activation(g: Graph) -> Graph:
    for act in g.nodes():
        if act.name not in g.nx or act.op not in MONOTONIC:
            continue
        pool = sole_consumer(g, act.outputs[0])
        if pool is None or pool.op != "MaxPool" or g.uses(pool.outputs[1]):
            continue
        pooled = add(g, pool, "MaxPool", [act.inputs[0]], **pool.attrs)
        replace(g, pool.outputs[0], add(g, act, act.op, [pooled], **act.attrs))
    return g
