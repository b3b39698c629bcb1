"""Comparisons, selection and arg-reductions (used by gradients, metrics and dropout masks)."""
from __future__ import annotations

from ..errors import ShapeError
from ..ir import TensorType, broadcast_shapes
from ..ir.types import normalize_axis
from .base import Op, register


class Compare(Op):
    """a OP b -> bool, broadcasting."""

    def infer(self, ins, attrs):
        a, b = ins
        if a.dtype != b.dtype:
            raise ShapeError(f"{self.name} of {a.dtype} and {b.dtype}")
        return [TensorType("bool", broadcast_shapes(a.shape, b.shape))]

    def grad(self, ctx, node, dys):
        return [None, None]


for _name in ["Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual"]:
    register(type(_name, (Compare,), {"name": _name, "onnx_op": _name}))


@register
class Where(Op):
    """cond ? a : b, broadcasting."""
    name = "Where"
    onnx_op = "Where"

    def infer(self, ins, attrs):
        c, a, b = ins
        if c.dtype != "bool" or a.dtype != b.dtype:
            raise ShapeError("Where needs a bool condition and two operands of one dtype")
        return [TensorType(a.dtype, broadcast_shapes(c.shape, broadcast_shapes(a.shape, b.shape)))]

    def grad(self, ctx, node, dys):
        c, a, b = node.inputs
        dy, = dys
        zero = ctx.const(0.0, ctx.type(dy).dtype)
        return [None, ctx.sum_to(ctx.op("Where", c, dy, zero), a), ctx.sum_to(ctx.op("Where", c, zero, dy), b)]


@register
class Sign(Op):
    name = "Sign"
    onnx_op = "Sign"

    def infer(self, ins, attrs):
        return [ins[0]]

    def grad(self, ctx, node, dys):
        return [None]


@register
class ArgMax(Op):
    """attrs: axis, keepdims -> int64 indices."""
    name = "ArgMax"
    onnx_op = "ArgMax"

    def infer(self, ins, attrs):
        x, = ins
        axis = normalize_axis(attrs.get("axis", 0), x.rank)
        keep = attrs.get("keepdims", 1)
        shape = [1 if i == axis else d for i, d in enumerate(x.shape) if keep or i != axis]
        return [TensorType("int64", shape)]

    def grad(self, ctx, node, dys):
        return [None]
