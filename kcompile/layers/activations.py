"""Activations by name (``activation=relu``, ``relu(x)``) and the Activation,
LeakyReLU, ReLU, ELU, PReLU and Softmax layers. Keras semantics and defaults."""

from ..errors import ShapeError
from .base import ActivationArg, ArgError, BoolArg, FloatArg, InitializerArg, IntArg, IntList, Layer, Optional


def _unary(op, **attrs):
    return lambda ctx, x: ctx.op(op, x, **attrs)


def _swish(ctx, x):
    return ctx.op("Mul", x, ctx.op("Sigmoid", x))


def _relu6(ctx, x):
    # (the constant first: Min's gradient goes to its first operand on a tie, so relu6'(6) = 0,
    # as Keras's relu6 on every backend, and PyTorch's)
    return ctx.op("Min", ctx.const(6.0, x.dtype), ctx.op("Relu", x))


def _mish(ctx, x):
    return ctx.op("Mul", x, ctx.op("Tanh", ctx.op("Softplus", x)))


def _hard_sigmoid(ctx, x):
    # Keras 3: relu6(x + 3) / 6
    return ctx.op("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5)


def _hard_swish(ctx, x):
    return ctx.op("Mul", x, _hard_sigmoid(ctx, x))


def gelu(ctx, x, approximate=False):
    """Keras's gelu: exact, x * 0.5 * (1 + erf(x / sqrt(2))), or with ``approximate`` the tanh
    form 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))."""
    try:
        approximate = BoolArg()(approximate)
    except ArgError as e:
        raise ArgError(f"approximate: {e}") from None
    if not approximate:
        return ctx.op("Gelu", x)
    cube = ctx.op("Mul", ctx.op("Mul", x, x), x)
    inner = ctx.op("Mul", ctx.op("Add", x, ctx.op("Mul", cube, ctx.const(0.044715, x.dtype))),
                   ctx.const(0.7978845608028654, x.dtype))  # sqrt(2 / pi)
    half = ctx.op("Mul", x, ctx.const(0.5, x.dtype))
    return ctx.op("Mul", half, ctx.op("Add", ctx.op("Tanh", inner), ctx.const(1.0, x.dtype)))


def _axis(axis):
    try:
        return IntArg()(axis)
    except ArgError as e:
        raise ArgError(f"axis: {e}") from None


def softmax(ctx, x, axis=-1):
    return ctx.op("Softmax", x, axis=_axis(axis))


def log_softmax(ctx, x, axis=-1):
    return ctx.op("LogSoftmax", x, axis=_axis(axis))


# name -> function(ctx, x) -> tensor
ACTIVATIONS = {
    "linear": lambda ctx, x: x,
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "softmax": softmax,
    "log_softmax": log_softmax,
    "gelu": gelu,
    "elu": _unary("Elu", alpha=1.0),
    "selu": _unary("Selu", alpha=1.6732632423543772, gamma=1.0507009873554805),
    "softplus": _unary("Softplus"),
    "softsign": _unary("Softsign"),
    "swish": _swish,
    "silu": _swish,
    "leaky_relu": _unary("LeakyRelu", alpha=0.2),  # keras.activations.leaky_relu default
    "relu6": _relu6,
    "hard_sigmoid": _hard_sigmoid,
    "hard_swish": _hard_swish,
    "mish": _mish,
    "exponential": _unary("Exp"),
}


def apply_activation(ctx, name: str, x):
    return ACTIVATIONS[name](ctx, x)


class Activation(Layer):
    """Applies an activation function.

    Args:
        activation: the activation's name (relu, sigmoid, tanh, softmax, gelu, elu,
            selu, softplus, swish, leaky_relu, linear, ...).
    """
    propagates_mask = True

    def __init__(self, activation: ActivationArg() = "linear"):
        self.activation = activation

    def call(self, ctx, x):
        return apply_activation(ctx, self.activation, x)


class LeakyReLU(Layer):
    """``x if x > 0 else negative_slope * x``.

    Args:
        negative_slope: slope for x < 0 (Keras default 0.3).
    """
    propagates_mask = True

    def __init__(self, negative_slope: FloatArg(0.0) = 0.3):
        self.negative_slope = negative_slope

    def call(self, ctx, x):
        return ctx.op("LeakyRelu", x, alpha=self.negative_slope)


class ReLU(Layer):
    """Rectified linear unit with Keras's options.

    Args:
        max_value: upper clip, none by default.
        negative_slope: slope for x < 0 (0).
    """
    propagates_mask = True

    def __init__(self, max_value: Optional(FloatArg(0.0)) = None, negative_slope: FloatArg(0.0) = 0.0):
        self.max_value, self.negative_slope = max_value, negative_slope

    def call(self, ctx, x):
        # As Keras computes it, whose derivatives at the kinks these keep: relu6 for max_value=6
        # (0 at 6), a clip otherwise (1 at max_value, as TensorFlow's); with both options,
        # clip(relu(x)) - negative_slope * relu(-x) (0 at 0)
        if self.max_value is None:
            return ctx.op("LeakyRelu", x, alpha=self.negative_slope) if self.negative_slope else ctx.op("Relu", x)
        y = _relu6(ctx, x) if self.max_value == 6 else ctx.op("Min", ctx.op("Relu", x), ctx.const(self.max_value, x.dtype))
        if self.negative_slope:
            y = ctx.op("Sub", y, ctx.op("Mul", ctx.const(self.negative_slope, x.dtype), ctx.op("Relu", ctx.op("Neg", x))))
        return y


class ELU(Layer):
    """Exponential linear unit. Args: alpha (1.0)."""
    propagates_mask = True

    def __init__(self, alpha: FloatArg() = 1.0):
        self.alpha = alpha

    def call(self, ctx, x):
        return ctx.op("Elu", x, alpha=self.alpha)


class Softmax(Layer):
    """Softmax along ``axis`` (default -1)."""

    def __init__(self, axis: IntArg() = -1):
        self.axis = axis

    def call(self, ctx, x):
        return softmax(ctx, x, self.axis)



class PReLU(Layer):
    """Parametric ReLU: ``max(0, x) + alpha * min(0, x)`` with a learned ``alpha``.

    Args:
        alpha_initializer: zeros.
        shared_axes: none; axes (counting from 1, the batch being 0, as Keras) along which
            one alpha is shared, e.g. (1, 2) for one alpha per channel of an image.

    Weights: alpha, shaped like the input without the batch, with 1 on the shared axes.
    """
    propagates_mask = True

    def __init__(self, alpha_initializer: InitializerArg() = ("zeros", ()),
                 shared_axes: Optional(IntList(1)) = None):
        self.alpha_initializer, self.shared_axes = alpha_initializer, shared_axes

    def build(self, ctx, x):
        shared = set(self.shared_axes or ())
        if any(a >= x.rank for a in shared):
            raise ShapeError(f"PReLU shared_axes {tuple(sorted(shared))} do not fit an input of rank "
                             f"{x.rank - 1} (axes count from 1)")
        shape = tuple(1 if i in shared else d for i, d in enumerate(x.shape) if i > 0)
        if not all(isinstance(d, int) for d in shape):
            raise ShapeError(f"PReLU needs known sizes on the axes it does not share, got {shape}",
                             hint="share the unknown axes with shared_axes=...")
        self.alpha = ctx.add_weight(self, "alpha", shape, x.dtype, self.alpha_initializer)

    def call(self, ctx, x):
        # (0 first: Min's gradient goes to its first operand on a tie, so the derivative at 0 is
        # 0, as Keras's relu(x) - alpha * relu(-x))
        negative = ctx.op("Min", 0.0, x)
        return ctx.op("Add", ctx.op("Relu", x), ctx.op("Mul", self.alpha, negative))
