"""Element-wise ops: unary activations and broadcasting binary arithmetic.

Each unary op states its derivative as ops on (x, y); the gradient is dy times it.
"""
from __future__ import annotations

import math

from ..errors import ShapeError
from ..ir import TensorType, broadcast_shapes
from .base import Op, float_attr, register


class Unary(Op):
    """Same type in, same type out. ``derivative(ctx, x, y, attrs)`` gives dy/dx (None: zero)."""

    def infer(self, ins, attrs):
        self.check_float(ins)
        return [ins[0]]

    def derivative(self, ctx, x, y, attrs):
        raise NotImplementedError(f"no gradient for {self.name}")

    def grad(self, ctx, node, dys):
        x, y, dy = node.inputs[0], node.outputs[0], dys[0]
        d = self.derivative(ctx, x, y, node.attrs)
        return [None if d is None else ctx.op("Mul", dy, d)]


def _unary(name, derivative, onnx_op=None):
    cls = type(name, (Unary,), {"name": name, "onnx_op": onnx_op or name,
                                "derivative": lambda self, ctx, x, y, attrs: derivative(ctx, x, y, attrs)})
    return register(cls)


def _positive(ctx, x):
    return ctx.op("Greater", x, ctx.const(0.0, ctx.type(x).dtype))


def _mask(ctx, cond, like):
    return ctx.op("Cast", cond, to=ctx.type(like).dtype)


def _c(ctx, value, like):
    return ctx.const(value, ctx.type(like).dtype)


@register
class Relu(Unary):
    name = "Relu"
    onnx_op = "Relu"

    def grad(self, ctx, node, dys):
        # From the output (y > 0 exactly where x > 0), so the input is read by Relu alone and
        # onnxruntime can fuse Conv + Relu in training graphs too.
        # dy * [y > 0]: measured faster in onnxruntime than Where(y > 0, dy, 0).
        y = node.outputs[0]
        return [ctx.op("Mul", dys[0], _mask(ctx, _positive(ctx, y), y))]
_unary("Sigmoid", lambda ctx, x, y, a: ctx.op("Mul", y, ctx.op("Sub", _c(ctx, 1.0, y), y)))
_unary("Tanh", lambda ctx, x, y, a: ctx.op("Sub", _c(ctx, 1.0, y), ctx.op("Mul", y, y)))
_unary("Exp", lambda ctx, x, y, a: y)
_unary("Log", lambda ctx, x, y, a: ctx.op("Reciprocal", x))
_unary("Sqrt", lambda ctx, x, y, a: ctx.op("Div", _c(ctx, 0.5, y), y))
_unary("Abs", lambda ctx, x, y, a: ctx.op("Sign", x))
_unary("Neg", lambda ctx, x, y, a: _c(ctx, -1.0, x))
_unary("Erf", lambda ctx, x, y, a: ctx.op("Mul", _c(ctx, 2 / math.sqrt(math.pi), x),
                                          ctx.op("Exp", ctx.op("Neg", ctx.op("Mul", x, x)))))
_unary("Softplus", lambda ctx, x, y, a: ctx.op("Sigmoid", x))
_unary("Softsign", lambda ctx, x, y, a: ctx.op("Reciprocal", ctx.op("Mul", *[ctx.op(
    "Add", _c(ctx, 1.0, x), ctx.op("Abs", x))] * 2)))
_unary("Reciprocal", lambda ctx, x, y, a: ctx.op("Neg", ctx.op("Mul", y, y)))
_unary("Floor", lambda ctx, x, y, a: None)
_unary("Ceil", lambda ctx, x, y, a: None)
_unary("Sin", lambda ctx, x, y, a: ctx.op("Cos", x))
_unary("Cos", lambda ctx, x, y, a: ctx.op("Neg", ctx.op("Sin", x)))
# attrs: alpha (Keras default 1.0). For x < 0, elu = alpha * (e^x - 1), so the slope is y + alpha.
_unary("Elu", lambda ctx, x, y, a: ctx.op("Where", _positive(ctx, x), _c(ctx, 1.0, x),
                                          ctx.op("Add", y, _c(ctx, float_attr(a, "alpha", 1.0), x))))
# ONNX's default alpha and gamma equal Keras's.
_unary("Selu", lambda ctx, x, y, a: ctx.op("Where", _positive(ctx, x), _c(ctx, float_attr(a, "gamma", 1.0507009873554805), x),
                                           ctx.op("Add", y, _c(ctx, float_attr(a, "gamma", 1.0507009873554805) *
                                                                float_attr(a, "alpha", 1.6732632423543772), x))))
_unary("LeakyRelu", lambda ctx, x, y, a: ctx.op("Where", _positive(ctx, x), _c(ctx, 1.0, x),
                                                _c(ctx, float_attr(a, "alpha", 0.01), x)))


def _hard_sigmoid_derivative(ctx, x, y, a):
    inside = ctx.op("Mul", _mask(ctx, _positive(ctx, y), x), _mask(ctx, ctx.op("Less", y, _c(ctx, 1.0, y)), x))
    return ctx.op("Mul", inside, _c(ctx, float_attr(a, "alpha", 0.2), x))


_unary("HardSigmoid", _hard_sigmoid_derivative)  # attrs: alpha, beta


@register
class Identity(Op):
    name = "Identity"

    def infer(self, ins, attrs):
        return [ins[0]]

    def grad(self, ctx, node, dys):
        return [dys[0]]


@register
class Gelu(Unary):
    """Keras's exact gelu: x * 0.5 * (1 + erf(x / sqrt(2))); opset 17 has no Gelu op. Lowered in
    the form onnxruntime fuses into its own Gelu kernel (x divided by sqrt(2), not multiplied by
    its inverse, which it does not match): 0.17 against 0.44 ms for [512, 512] on one thread,
    the same numbers to 4e-7."""
    name = "Gelu"

    def lower(self, ctx, inputs, outputs, attrs):
        x, = inputs
        t = ctx.dtype(outputs[0])  # x may be a lowering-time name (a fused Conv/Gemm's result)
        scaled = ctx.emit("Div", [x, ctx.const(math.sqrt(2), t)])
        erf = ctx.emit("Erf", [scaled])
        one_plus = ctx.emit("Add", [erf, ctx.const(1.0, t)])
        half_x = ctx.emit("Mul", [x, ctx.const(0.5, t)])
        ctx.emit("Mul", [half_x, one_plus], outputs)

    def derivative(self, ctx, x, y, attrs):
        # Phi(x) + x * phi(x)
        cdf = ctx.op("Mul", _c(ctx, 0.5, x), ctx.op("Add", _c(ctx, 1.0, x),
                                                     ctx.op("Erf", ctx.op("Mul", x, _c(ctx, 1 / math.sqrt(2), x)))))
        pdf = ctx.op("Mul", _c(ctx, 1 / math.sqrt(2 * math.pi), x),
                     ctx.op("Exp", ctx.op("Mul", _c(ctx, -0.5, x), ctx.op("Mul", x, x))))
        return ctx.op("Add", cdf, ctx.op("Mul", x, pdf))


@register
class Cast(Op):
    """attrs: to (a dtype name)."""
    name = "Cast"

    def infer(self, ins, attrs):
        return [ins[0].with_dtype(attrs["to"])]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Cast", inputs, outputs, to=ctx.onnx_dtype(attrs["to"]))

    def grad(self, ctx, node, dys):
        src = ctx.type(node.inputs[0])
        if not src.is_float or not ctx.type(node.outputs[0]).is_float:
            return [None]
        return [ctx.op("Cast", dys[0], to=src.dtype)]


class Binary(Op):
    """numpy-broadcasting binary op; both operands of one dtype."""

    def infer(self, ins, attrs):
        a, b = ins
        if a.dtype != b.dtype:
            raise ShapeError(f"{self.name} of {a.dtype} and {b.dtype}: operands must have one dtype",
                             hint="cast one operand with cast(x, float32)")
        if a.dtype == "bool":  # (ONNX's arithmetic takes numbers; logic ops are not Binary)
            raise ShapeError(f"{self.name} of bool values", hint="cast them to numbers first: cast(x, float32)")
        return [TensorType(a.dtype, broadcast_shapes(a.shape, b.shape))]

    def grad(self, ctx, node, dys):
        a, b = node.inputs
        da, db = self.partials(ctx, a, b, node.outputs[0], dys[0])
        return [None if da is None else ctx.sum_to(da, a), None if db is None else ctx.sum_to(db, b)]


def _binary(name, partials):
    return register(type(name, (Binary,), {"name": name, "onnx_op": name,
                                           "partials": lambda self, ctx, a, b, y, dy: partials(ctx, a, b, y, dy)}))


_binary("Add", lambda ctx, a, b, y, dy: (dy, dy))
_binary("Sub", lambda ctx, a, b, y, dy: (dy, ctx.op("Neg", dy)))
_binary("Mul", lambda ctx, a, b, y, dy: (ctx.op("Mul", dy, b), ctx.op("Mul", dy, a)))
_binary("Div", lambda ctx, a, b, y, dy: (ctx.op("Div", dy, b), ctx.op("Neg", ctx.op("Div", ctx.op("Mul", dy, y), b))))
_binary("Pow", lambda ctx, a, b, y, dy: (
    ctx.op("Mul", dy, ctx.op("Mul", b, ctx.op("Pow", a, ctx.op("Sub", b, _c(ctx, 1.0, b))))),
    ctx.op("Mul", dy, ctx.op("Mul", y, ctx.op("Log", a)))))


@register
class SigmoidCrossEntropy(Binary):
    """Binary cross-entropy on logits x against targets y, element-wise: the stable
    ``max(x, 0) - x y + log(1 + exp(-|x|))``, whose gradient is stated here as ``sigmoid(x) - y``
    (the composed form's subgradients at x = 0, Relu's and Abs's both 0, gave -y, where Keras's
    gradient is 0.5 - y: a dead unit or a zero bias trained wrongly). inputs: x, y."""
    name = "SigmoidCrossEntropy"

    def lower(self, ctx, inputs, outputs, attrs):
        x, y = inputs
        negative = ctx.emit("Neg", [ctx.emit("Abs", [x])])
        if ctx.dtype(x) == "float32":
            tail = ctx.emit("Softplus", [negative])
        else:  # (onnxruntime's CPU provider has Softplus for float32 only; exp(-|x|) <= 1 keeps this stable)
            tail = ctx.emit("Log", [ctx.emit("Add", [ctx.const(1.0, ctx.dtype(x)), ctx.emit("Exp", [negative])])])
        ctx.emit("Add", [ctx.emit("Sub", [ctx.emit("Relu", [x]), ctx.emit("Mul", [x, y])]), tail], outputs)

    def partials(self, ctx, x, y, out, dy):
        return ctx.op("Mul", dy, ctx.op("Sub", ctx.op("Sigmoid", x), y)), ctx.op("Mul", dy, ctx.op("Neg", x))


# Ties send the gradient to the first operand only, so it is counted once.
_binary("Max", lambda ctx, a, b, y, dy: (
    ctx.op("Mul", dy, _mask(ctx, ctx.op("GreaterOrEqual", a, b), dy)),
    ctx.op("Mul", dy, _mask(ctx, ctx.op("Less", a, b), dy))))
_binary("Min", lambda ctx, a, b, y, dy: (
    ctx.op("Mul", dy, _mask(ctx, ctx.op("LessOrEqual", a, b), dy)),
    ctx.op("Mul", dy, _mask(ctx, ctx.op("Greater", a, b), dy))))
