"""Merging layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""
from functools import reduce

from ..errors import ShapeError, format_shape
from .base import ArgError, BoolArg, IntArg, IntList, Layer, show


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


class Dot(Layer):
    """Batched dot product of two inputs (Keras's ``batch_dot``): contracts axis ``axes[0]`` of
    the first with axis ``axes[1]`` of the second, per batch item. ``[d] . [d] -> [1]``;
    ``[a, d] . [b, d]`` with axes (2, 2) ``-> [a, b]``; ``[a, d] . [d, b]`` with axes (2, 1)
    ``-> [a, b]``; one rank-2 and one rank-3 input also work (``[a, d] . [d] -> [a]``).

    Args:
        axes: an axis for both inputs, or a pair (counting the batch as axis 0; negative
            axes count from the end).
        normalize: L2-normalize both inputs along their axis first (cosine similarity), false.
    """
    n_inputs = 2

    def __init__(self, axes: IntList(), normalize: BoolArg() = False):
        if len(axes) not in (1, 2):
            raise ArgError(f"Dot axes must be an integer or a pair, got {show(axes)}")
        self.axes, self.normalize = axes, normalize

    def call(self, ctx, a, b):
        axes = []
        for x, axis in zip((a, b), self.axes * 2 if len(self.axes) == 1 else self.axes):
            if x.rank not in (2, 3):
                raise ShapeError(f"Dot supports inputs of rank 1 or 2 without the batch, got {format_shape(x.shape[1:])}")
            if not -x.rank <= axis < x.rank or axis % x.rank == 0:
                raise ShapeError(f"Dot axis {axis} does not fit an input {format_shape(x.shape[1:])} "
                                 "(axis 0 is the batch)")
            axes.append(axis % x.rank)
        if a.shape[axes[0]] != b.shape[axes[1]]:
            raise ShapeError(f"Dot of {format_shape(a.shape[1:])} and {format_shape(b.shape[1:])}: axis sizes "
                             f"{a.shape[axes[0]]} and {b.shape[axes[1]]} differ")
        if self.normalize:
            a, b = (_l2_normalize(ctx, x, axis) for x, axis in zip((a, b), axes))
        if a.rank == 2 and b.rank == 2:
            return ctx.op("ReduceSum", ctx.op("Mul", a, b), axes=(1,), keepdims=1)
        # Batched matrix product: a as [N, p, d] (contracted axis last), b as [N, d, q].
        squeeze = []
        if a.rank == 2:
            a = ctx.op("Unsqueeze", a, axes=(1,))
            squeeze.append(1)
        elif axes[0] == 1:
            a = ctx.op("Transpose", a, perm=(0, 2, 1))
        if b.rank == 2:
            b = ctx.op("Unsqueeze", b, axes=(2,))
            squeeze.append(2)
        elif axes[1] == 2:
            b = ctx.op("Transpose", b, perm=(0, 2, 1))
        y = ctx.op("MatMul", a, b)
        return ctx.op("Squeeze", y, axes=tuple(squeeze)) if squeeze else y


def _l2_normalize(ctx, x, axis):
    """x / max(||x||, 1e-7) along axis (keras.ops.normalize: x * min(rsqrt(sum x^2), 1e7))."""
    inv = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("ReduceSum", ctx.op("Mul", x, x), axes=(axis,), keepdims=1)))
    return ctx.op("Mul", x, ctx.op("Min", inv, 1e7))
