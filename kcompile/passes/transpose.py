"""Transpose sinking and cancellation.

Layers wrap each channels-first op (Conv, pooling) in a pair of transposes so the
language can stay channels-last. This pass moves each transpose down through the
ops that do not care about layout (element-wise ops, bias adds with weights,
batch normalization, reductions) until it meets the next layer's inverse
transpose, where both cancel. What remains are transposes at the edges (e.g.
before a Flatten, whose element order Keras defines channels-last).
"""
from ..ir import Graph
from ..ops import OPS
from ..ops.elementwise import Binary, Unary
from ..ops.base import Op
from .util import add, is_static, replace, sole_consumer

_LAYOUT_FREE_UNARY = (Unary,)


def _compose(p, q):
    """Transpose(Transpose(x, q), p) == Transpose(x, compose(p, q))."""
    return tuple(q[i] for i in p)


def _inverse(p):
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return tuple(inv)


def _is_identity(p):
    return tuple(p) == tuple(range(len(p)))


def sink_transposes(g: Graph) -> Graph:
    changed = True
    while changed:
        changed = False
        for node in g.nodes():
            if node.op != "Transpose" or node.name not in g.nx:
                continue
            if _step(g, node):
                changed = True
                break
    return g


def _step(g: Graph, t) -> bool:
    x, = t.inputs
    perm = tuple(t.attrs["perm"])
    out = t.outputs[0]
    if _is_identity(perm):
        replace(g, out, x)
        return True
    inner = g.producer_of(x)
    if inner is not None and inner.op == "Transpose":
        composed = _compose(perm, tuple(inner.attrs["perm"]))
        replace(g, out, inner.inputs[0] if _is_identity(composed) else
                add(g, t, "Transpose", [inner.inputs[0]], perm=composed))
        return True
    user = sole_consumer(g, out)
    if user is None or is_static(g, out):
        return False
    definition: Op = OPS[user.op]
    if isinstance(definition, _LAYOUT_FREE_UNARY) or user.op in ("Identity", "Dropout", "Cast"):
        moved = add(g, user, user.op, [x] + user.inputs[1:], **user.attrs)
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if isinstance(definition, Binary):
        i = user.inputs.index(out)
        other = user.inputs[1 - i]
        other_t = g.types[other]
        producer = g.producer_of(other)
        if producer is not None and producer.op == "Transpose" and tuple(producer.attrs["perm"]) == perm:
            other_new = producer.inputs[0]
        elif is_static(g, other) and other_t.rank <= len(perm):
            # Re-lay the weight operand (a bias, a scale) for the un-transposed data.
            padded = other
            if other_t.rank < len(perm):
                padded = add(g, user, "Unsqueeze", [other], axes=tuple(range(len(perm) - other_t.rank)))
            other_new = add(g, user, "Transpose", [padded], perm=_inverse(perm))
        else:
            return False
        operands = [x, other_new] if i == 0 else [other_new, x]
        moved = add(g, user, user.op, operands, **user.attrs)
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if user.op == "BatchNormalization" and user.inputs[0] == out:
        axis = user.attrs["axis"] % len(perm)
        moved = add(g, user, user.op, [x] + user.inputs[1:], **{**user.attrs, "axis": perm[axis]})
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if user.op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum") and "axes" in user.attrs:
        n = len(perm)
        axes = [a % n for a in user.attrs["axes"]]
        moved = add(g, user, user.op, [x], **{**user.attrs, "axes": tuple(sorted(perm[a] for a in axes))})
        if user.attrs.get("keepdims", 1):
            result = add(g, t, "Transpose", [moved], perm=perm)
        else:
            remaining = [perm[i] for i in range(n) if i not in axes]
            order = sorted(remaining)
            rest = tuple(order.index(r) for r in remaining)
            result = moved if _is_identity(rest) else add(g, t, "Transpose", [moved], perm=rest)
        replace(g, user.outputs[0], result)
        return True
    return False
