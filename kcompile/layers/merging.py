"""Merging layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot.

Step masks (``Embedding(mask_zero=true)``) pass through as in Keras 3: the element-wise merges
give a step the output mask "any input's step counts" when every input has a mask;
Multiply, Maximum and Minimum also keep masked steps out of the values; Concatenate
joins the masks (an input without one counts at every step).
"""
from functools import reduce

from ..errors import ShapeError, format_shape
from ..ir.types import check_one_dtype
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
        check_one_dtype(self.kind(), xs)
        masks = [ctx.mask_of(x) for x in xs]
        out = self.merge(ctx, xs, masks)
        if all(m is not None for m in masks):
            ctx.set_mask(out, reduce(lambda a, b: ctx.op("Max", a, b), masks))  # logical or of 0/1 masks
        return out

    def merge(self, ctx, xs, masks):
        return reduce(lambda a, b: ctx.op(self.op, a, b), xs)


def _steps(ctx, mask, x):
    """A [N, T] step mask as [N, T, 1, ...], broadcasting over x's features."""
    return ctx.op("Unsqueeze", mask, axes=tuple(range(2, x.rank))) if x.rank > 2 else mask


def _where(ctx, m, a, b):
    """a where the 0/1 mask m is 1, else b (differentiable in a and b)."""
    return ctx.op("Add", b, ctx.op("Mul", m, ctx.op("Sub", a, b)))


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
    """Element-wise product of two or more inputs of one shape. Masked steps of an input count
    as 1; with every input masked, steps no input keeps are 0 (Keras 3)."""
    op = "Mul"

    def merge(self, ctx, xs, masks):
        if all(m is None for m in masks):
            return super().merge(ctx, xs, masks)
        steps = [_steps(ctx, m, x) if m is not None else None for x, m in zip(xs, masks)]
        factors = [x if m is None else _where(ctx, m, x, ctx.const(1.0, x.dtype)) for x, m in zip(xs, steps)]
        out = reduce(lambda a, b: ctx.op("Mul", a, b), factors)
        if all(m is not None for m in steps):
            out = ctx.op("Mul", out, reduce(lambda a, b: ctx.op("Max", a, b), steps))
        return out


class _Extremum(_Merge):
    """Maximum/Minimum: a masked step of an input takes the running result's value, and the
    running result's masked steps take the input's (Keras 3)."""

    def merge(self, ctx, xs, masks):
        if all(m is None for m in masks):
            return super().merge(ctx, xs, masks)
        out, out_mask = xs[0], _steps(ctx, masks[0], xs[0]) if masks[0] is not None else None
        for x, m in zip(xs[1:], masks[1:]):
            m = _steps(ctx, m, x) if m is not None else None
            if m is not None:
                x = _where(ctx, m, x, out)
            if out_mask is not None:
                out = _where(ctx, out_mask, out, x)
            out_mask = ctx.op("Max", out_mask, m) if m is not None and out_mask is not None else None
            out = ctx.op(self.op, out, x)
        return out


class Maximum(_Extremum):
    """Element-wise maximum."""
    op = "Max"


class Minimum(_Extremum):
    """Element-wise minimum."""
    op = "Min"


class Average(_Merge):
    """Element-wise mean."""

    def merge(self, ctx, xs, masks):
        return ctx.op("Mul", super().merge(ctx, xs, masks), ctx.const(1.0 / len(xs), xs[0].dtype))


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
        check_one_dtype("Concatenate", xs)
        out = ctx.op("Concat", *xs, axis=self.axis)
        masks = [ctx.mask_of(x) for x in xs]
        if any(m is not None for m in masks) and out.rank >= 3:
            axis = self.axis % out.rank
            if axis == 1:  # along the steps: the masks join too (all steps count in an unmasked input)
                ones = [m if m is not None else ctx.op("ExpandLike", ctx.const(1.0, out.dtype),
                                                         ctx.op("ReduceMax", x, axes=tuple(range(2, x.rank)),
                                                                keepdims=0))
                        for x, m in zip(xs, masks)]
                ctx.set_mask(out, ctx.op("Concat", *ones, axis=1))
            elif all(m is not None for m in masks):  # along features: a step counts if any input's does
                ctx.set_mask(out, reduce(lambda a, b: ctx.op("Max", a, b), masks))
        return out


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
        check_one_dtype("Dot", (a, b))
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
