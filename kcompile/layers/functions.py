"""Built-in tensor functions of the language: ``relu(x)``, ``concat(a, b, axis=-1)``, ``mean(x)``...

Each takes the builder context, tensors and keyword arguments. Activations are
functions too, by their names.
"""
import math

import numpy as np

from ..errors import ShapeError
from ..ir.types import DTYPES, normalize_axis
from .activations import ACTIVATIONS, gelu, log_softmax, softmax
from .base import ArgError, BoolArg, IntList, show


def _concat(ctx, *xs, axis=-1):
    if not xs:
        raise ArgError("concat needs at least one tensor")
    return xs[0] if len(xs) == 1 else ctx.op("Concat", *xs, axis=axis)


def _reduce(op):
    def fn(ctx, x, axis=None, keepdims=False):
        try:
            keepdims = BoolArg()(keepdims)
        except ArgError as e:
            raise ArgError(f"keepdims: {e}") from None
        if axis is None:
            axes = tuple(range(x.rank))
        else:
            axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
        return ctx.op(op, x, axes=axes, keepdims=int(keepdims))
    return fn


def _unary(op):
    return lambda ctx, x: ctx.op(op, x)


def _square(ctx, x):
    return ctx.op("Mul", x, x)


def _matmul(ctx, a, b):
    return ctx.op("MatMul", a, b)


def _cast(ctx, x, dtype):
    if str(dtype) not in DTYPES:
        raise ArgError(f"unknown dtype {show(dtype)}")
    return ctx.op("Cast", x, to=str(dtype))


def _maximum(ctx, a, b):
    return ctx.op("Max", a, b)


def _minimum(ctx, a, b):
    return ctx.op("Min", a, b)


def _positions(ctx, x, axis=1):
    """positions(x): 0, 1, ..., n-1 along x's ``axis`` (its steps by default), int64 [n] without
    a batch axis: ``Embedding(maxlen, d)(positions(x))`` adds to [N, n, d] by broadcasting, as
    Keras's ``Embedding(...)(ops.arange(maxlen))``; n may be a named size (T)."""
    n = x.shape[normalize_axis(axis, x.rank)] if isinstance(axis, int) and not isinstance(axis, bool) else None
    if isinstance(n, int):  # (a constant: the passes fold what reads it)
        return ctx.const(np.arange(n, dtype=np.int64), "int64")
    return ctx.op("Positions", x, axis=axis)


def _transpose(ctx, x, perm=None):
    if perm is None:
        perm = (0,) + tuple(range(x.rank - 1, 0, -1))
    else:
        try:
            perm = IntList()(perm)
        except ArgError as e:
            raise ArgError(f"perm: {e}") from None
    if perm[0] != 0:
        raise ShapeError("transpose cannot move the batch axis")
    return ctx.op("Transpose", x, perm=perm)


FUNCTIONS = {
    **{name: (lambda f: lambda ctx, x: f(ctx, x))(f) for name, f in ACTIVATIONS.items()},
    "softmax": lambda ctx, x, axis=-1: softmax(ctx, x, axis),
    "log_softmax": lambda ctx, x, axis=-1: log_softmax(ctx, x, axis),
    "gelu": gelu,
    "concat": _concat,
    "mean": _reduce("ReduceMean"),
    "sum": _reduce("ReduceSum"),
    "max": _reduce("ReduceMax"),
    "min": _reduce("ReduceMin"),
    "exp": _unary("Exp"),
    "log": _unary("Log"),
    "sqrt": _unary("Sqrt"),
    "abs": _unary("Abs"),
    "square": _square,
    "matmul": _matmul,
    "maximum": _maximum,
    "minimum": _minimum,
    "transpose": _transpose,
    "cast": _cast,
    "positions": _positions,
}

# The same names on plain numbers (block parameters: ``sqrt(dim)``), computed at compile time.
NUMBER_FUNCTIONS = {"exp": math.exp, "log": math.log, "sqrt": math.sqrt, "abs": abs, "square": lambda v: v * v,
                    "maximum": max, "minimum": min}
