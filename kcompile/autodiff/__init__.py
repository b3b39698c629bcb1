"""Reverse-mode automatic differentiation on the graph IR.

``gradients(g, loss, wrt)`` appends the backward graph of a scalar ``loss`` to
``g`` and returns the value holding d loss / d w for each ``w`` in ``wrt``. Each op's
rule lives in its op class (``Op.grad``); this module walks the graph backwards,
feeds each rule the gradients of its outputs, and sums the contributions of a
value used more than once (a shared layer, a residual connection).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ops import OPS, emit


class GradContext:
    """What a gradient rule sees: emit ops (tagged with the forward node's layer and location),
    make constants, ask types, and reduce a broadcast gradient to an operand's shape."""

    def __init__(self, g: Graph):
        self.g = g
        self.node = None

    def op(self, op: str, *inputs, **attrs):
        """Emit one op; returns its output (a list for ops with several)."""
        like = next((i for i in inputs if isinstance(i, str)), None)
        names = [self.const(i, self.g.types[like].dtype) if not isinstance(i, str) else i for i in inputs]
        loc = self.node.loc if self.node else None
        layer = self.node.layer if self.node else None
        outs = emit(self.g, op, names, attrs, loc=loc, layer=layer, name=f"grad/{op}")
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype="float32") -> str:
        return self.g.add_const(np.asarray(value, dtype=dtype), base="grad/const")

    def type(self, value: str):
        return self.g.types[value]

    def sum_to(self, grad: str, like: str) -> str:
        """Sum ``grad`` over the axes along which ``like`` was broadcast, giving like's shape."""
        gs, ts = self.type(grad).shape, self.type(like).shape
        if gs == ts:
            return grad
        lead = len(gs) - len(ts)
        inner = tuple(lead + i for i, d in enumerate(ts) if d == 1 and gs[lead + i] != 1)
        out = grad
        if inner:
            out = self.op("ReduceSum", out, axes=inner, keepdims=1)
        if lead:
            out = self.op("ReduceSum", out, axes=tuple(range(lead)), keepdims=0)
        return out


def gradients(g: Graph, loss: str, wrt: list[str]) -> dict[str, str | None]:
    """Append d loss / d w for each w in ``wrt`` to ``g``; None where the loss does not depend on w."""
    order = g.nodes()
    depends = set(wrt)
    for node in order:
        if any(v in depends for v in node.inputs):
            depends.update(node.outputs)
    if loss not in depends:
        return {w: None for w in wrt}
    contributions: dict[str, list[str]] = {loss: [GradContext(g).const(np.ones(g.types[loss].shape),
                                                                       g.types[loss].dtype)]}
    total: dict[str, str] = {}
    ctx = GradContext(g)

    def accumulated(value):
        if value in total:
            return total[value]
        parts = contributions.get(value)
        if not parts:
            return None
        result = parts[0]
        for p in parts[1:]:
            result = ctx.op("Add", result, p)
        total[value] = result
        return result

    for node in reversed(order):
        if not any(o in depends for o in node.outputs) or not any(o in contributions for o in node.outputs):
            continue
        if not any(v in depends for v in node.inputs):
            continue
        ctx.node = node
        dys = [accumulated(o) for o in node.outputs]
        input_grads = OPS[node.op].grad(ctx, node, dys)
        for value, grad in zip(node.inputs, input_grads):
            if grad is not None and value in depends:
                if ctx.type(grad).shape != ctx.type(value).shape and \
                        len(ctx.type(grad).shape) == len(ctx.type(value).shape):
                    grad = ctx.sum_to(grad, value)
                contributions.setdefault(value, []).append(grad)
    ctx.node = None
    return {w: accumulated(w) for w in wrt}
