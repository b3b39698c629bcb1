"""Element-wise ops: unary activations and broadcasting binary arithmetic."""
from __future__ import annotations

import math

from ..errors import ShapeError
from ..ir import TensorType, broadcast_shapes
from .base import Op, register


class Unary(Op):
    """Same type in, same type out."""

    def infer(self, ins, attrs):
        self.check_float(ins)
        return [ins[0]]


def _unary(name, onnx_op=None, **defaults):
    cls = type(name, (Unary,), {"name": name, "onnx_op": onnx_op or name, "defaults": defaults})
    return register(cls)


for _name in ["Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Erf", "Softplus",
              "Softsign", "Reciprocal", "Floor", "Ceil", "Sin", "Cos"]:
    _unary(_name)
_unary("Elu")          # attrs: alpha (Keras default 1.0)
_unary("Selu")         # ONNX defaults equal Keras's alpha and scale
_unary("LeakyRelu")    # attrs: alpha
_unary("HardSigmoid")  # attrs: alpha, beta


@register
class Identity(Op):
    name = "Identity"

    def infer(self, ins, attrs):
        return [ins[0]]


@register
class Gelu(Unary):
    """Keras's exact gelu: x * 0.5 * (1 + erf(x / sqrt(2))); opset 17 has no Gelu op."""
    name = "Gelu"

    def lower(self, ctx, inputs, outputs, attrs):
        x, = inputs
        t = ctx.dtype(outputs[0])  # x may be a lowering-time name (a fused Conv/Gemm's result)
        scaled = ctx.emit("Mul", [x, ctx.const(1 / math.sqrt(2), t)])
        erf = ctx.emit("Erf", [scaled])
        one_plus = ctx.emit("Add", [erf, ctx.const(1.0, t)])
        half_x = ctx.emit("Mul", [x, ctx.const(0.5, t)])
        ctx.emit("Mul", [half_x, one_plus], outputs)


@register
class Cast(Op):
    """attrs: to (a dtype name)."""
    name = "Cast"

    def infer(self, ins, attrs):
        return [ins[0].with_dtype(attrs["to"])]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Cast", inputs, outputs, to=ctx.onnx_dtype(attrs["to"]))


class Binary(Op):
    """numpy-broadcasting binary op; both operands of one dtype."""

    def infer(self, ins, attrs):
        a, b = ins
        if a.dtype != b.dtype:
            raise ShapeError(f"{self.name} of {a.dtype} and {b.dtype}: operands must have one dtype",
                             hint="cast one operand with cast(x, float32)")
        return [TensorType(a.dtype, broadcast_shapes(a.shape, b.shape))]


for _name in ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"]:
    register(type(_name, (Binary,), {"name": _name, "onnx_op": _name}))
