"""Merging layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate."""
from functools import reduce

from ..errors import ShapeError, format_shape
from .base import IntArg, Layer


class _Merge(Layer):
    n_inputs = None  # two or more
    op = "Add"

    def call(self, ctx, *xs):
        if len(xs) < 2:
            raise ShapeError(f"{self.kind()} needs at least two inputs, got {len(xs)}")
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise ShapeError(f"{self.kind()} needs inputs of one shape, got " +
                             ", ".join(format_shape(x.shape[1:]) for x in xs))
        return reduce(lambda a, b: ctx.op(self.op, a, b), xs)


class Add(_Merge):
    """Element-wise sum of two or more inputs of one shape."""


class Subtract(_Merge):
    """``a - b`` for exactly two inputs."""
    op = "Sub"

    def call(self, ctx, *xs):
        if len(xs) != 2:
            raise ShapeError(f"Subtract needs exactly two inputs, got {len(xs)}")
        return super().call(ctx, *xs)


class Multiply(_Merge):
    """Element-wise product of two or more inputs of one shape."""
    op = "Mul"


class Maximum(_Merge):
    """Element-wise maximum."""
    op = "Max"


class Minimum(_Merge):
    """Element-wise minimum."""
    op = "Min"


class Average(_Merge):
    """Element-wise mean."""

    def call(self, ctx, *xs):
        total = super().call(ctx, *xs)
        return ctx.op("Mul", total, ctx.const(1.0 / len(xs), xs[0].dtype))


class Concatenate(Layer):
    """Joins inputs along ``axis`` (default -1, the channels).

    Args:
        axis: -1.
    """
    n_inputs = None

    def __init__(self, axis: IntArg() = -1):
        self.axis = axis

    def call(self, ctx, *xs):
        if len(xs) < 2:
            raise ShapeError(f"Concatenate needs at least two inputs, got {len(xs)}")
        return ctx.op("Concat", *xs, axis=self.axis)
