"""Reshaping layers: Flatten, Reshape, Permute, RepeatVector, ZeroPadding1D/2D/3D,
Cropping1D/2D/3D, UpSampling1D/2D/3D (channels-last)."""
import numpy as np

from ..errors import ShapeError, format_shape
from .base import ArgError, Choice, Converter, IntArg, Ints, Layer, ShapeArg, expect_rank, expect_size, show


class Flatten(Layer):
    """Flattens each batch item to one axis (row-major over channels-last data, as Keras)."""

    def call(self, ctx, x):
        if x.rank == 1:
            return ctx.op("Reshape", x, shape=(0, 1))
        return ctx.op("Flatten", x, axis=1)


class Reshape(Layer):
    """Reshapes each batch item to ``target_shape`` (one entry may be -1).

    Args:
        target_shape: the new shape, without the batch.
    """

    def __init__(self, target_shape: ShapeArg()):
        if list(target_shape).count(-1) > 1:
            raise ArgError("Reshape target_shape may contain -1 only once")
        self.target_shape = target_shape

    def call(self, ctx, x):
        return ctx.op("Reshape", x, shape=(0,) + tuple(self.target_shape))


class Permute(Layer):
    """Permutes the non-batch axes; ``dims`` counts from 1, as in Keras.

    Args:
        dims: a permutation of 1..rank, e.g. (2, 1).
    """

    def __init__(self, dims: ShapeArg()):
        self.dims = tuple(dims)

    def call(self, ctx, x):
        if sorted(self.dims) != list(range(1, x.rank)):
            raise ShapeError(f"Permute dims {self.dims} is not a permutation of 1..{x.rank - 1} for an input "
                             f"{format_shape(x.shape[1:])}")
        return ctx.op("Transpose", x, perm=(0,) + self.dims)


class _Pairs(Converter):
    """Keras's padding/cropping argument for ``n`` spatial axes: an int (the same on both sides
    of every axis), an n-tuple of ints (symmetric per axis), or an n-tuple of (before, after)
    pairs. For n = 1 a pair of ints is (before, after), as ZeroPadding1D/Cropping1D take it.
    Given back as ((before, after),) * n."""

    def __init__(self, n):
        self.n = n
        self.describe = ("an integer or a pair (before, after)" if n == 1 else
                         f"an integer, a tuple of {n} integers, or a tuple of {n} (before, after) pairs")

    def __call__(self, v):
        def is_int(i):
            return isinstance(i, int) and not isinstance(i, bool)
        items = tuple(v) if isinstance(v, (tuple, list)) else None
        if is_int(v):
            out = ((v, v),) * self.n
        elif self.n == 1 and items is not None and len(items) == 2 and all(map(is_int, items)):
            out = (items,)
        elif items is not None and len(items) == self.n and all(map(is_int, items)):
            out = tuple((i, i) for i in items)
        elif items is not None and len(items) == self.n and all(
                isinstance(p, (tuple, list)) and len(p) == 2 and all(map(is_int, p)) for p in items):
            out = tuple(tuple(p) for p in items)
        else:
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        if any(i < 0 for p in out for i in p):
            raise ArgError(f"expected sizes >= 0, got {show(v)}")
        return out


class _ZeroPadding(Layer):
    n = 2
    layout = "[height, width, channels]"

    def call(self, ctx, x):
        expect_rank(self.kind(), x, self.n + 2, self.layout)
        begin = (0,) + tuple(p[0] for p in self.padding) + (0,)
        end = (0,) + tuple(p[1] for p in self.padding) + (0,)
        return ctx.op("Pad", x, pads=begin + end)


class ZeroPadding1D(_ZeroPadding):
    """Pads the steps axis of ``[steps, channels]`` with zeros.

    Args:
        padding: 1; an int (both sides) or a pair (left, right).
    """
    n = 1
    layout = "[steps, channels]"

    def __init__(self, padding: _Pairs(1) = ((1, 1),)):
        self.padding = padding


class ZeroPadding2D(_ZeroPadding):
    """Pads the rows and columns of ``[height, width, channels]`` with zeros.

    Args:
        padding: (1, 1); an int, a pair (rows, columns) padded symmetrically, or
            ((top, bottom), (left, right)).
    """

    def __init__(self, padding: _Pairs(2) = ((1, 1), (1, 1))):
        self.padding = padding


class ZeroPadding3D(_ZeroPadding):
    """Pads the depth, rows and columns of ``[depth, height, width, channels]`` with zeros.

    Args:
        padding: (1, 1, 1); an int, a triple (depth, rows, columns) padded symmetrically, or
            ((front, back), (top, bottom), (left, right)).
    """
    n = 3
    layout = "[depth, height, width, channels]"

    def __init__(self, padding: _Pairs(3) = ((1, 1), (1, 1), (1, 1))):
        self.padding = padding


class _Cropping(Layer):
    n = 2
    layout = "[height, width, channels]"

    def call(self, ctx, x):
        expect_rank(self.kind(), x, self.n + 2, self.layout)
        starts, ends = [], []
        for axis, (before, after) in enumerate(self.cropping, start=1):
            size = x.shape[axis]
            if isinstance(size, int):
                if before + after >= size:
                    raise ShapeError(f"{self.kind()} crops {before} + {after} from an axis of size {size}, "
                                     f"leaving nothing (input {format_shape(x.shape[1:])})")
                ends.append(size - after)
            else:
                ends.append(-after if after else 2 ** 62)
            starts.append(before)
        return ctx.op("Slice", x, starts=tuple(starts), ends=tuple(ends), axes=tuple(range(1, self.n + 1)))


class Cropping1D(_Cropping):
    """Crops the steps axis of ``[steps, channels]``.

    Args:
        cropping: (1, 1); an int (both sides) or a pair (start, end).
    """
    n = 1
    layout = "[steps, channels]"

    def __init__(self, cropping: _Pairs(1) = ((1, 1),)):
        self.cropping = cropping


class Cropping2D(_Cropping):
    """Crops the rows and columns of ``[height, width, channels]``.

    Args:
        cropping: ((0, 0), (0, 0)); an int, a pair (rows, columns) cropped symmetrically,
            or ((top, bottom), (left, right)).
    """

    def __init__(self, cropping: _Pairs(2) = ((0, 0), (0, 0))):
        self.cropping = cropping


class Cropping3D(_Cropping):
    """Crops the depth, rows and columns of ``[depth, height, width, channels]``.

    Args:
        cropping: ((1, 1), (1, 1), (1, 1)); an int, a triple (depth, rows, columns) cropped
            symmetrically, or ((front, back), (top, bottom), (left, right)).
    """
    n = 3
    layout = "[depth, height, width, channels]"

    def __init__(self, cropping: _Pairs(3) = ((1, 1), (1, 1), (1, 1))):
        self.cropping = cropping


class _UpSampling(Layer):
    n = 2
    layout = "[height, width, channels]"

    def call(self, ctx, x):
        expect_rank(self.kind(), x, self.n + 2, self.layout)
        spatial = x.shape[1:self.n + 1]
        if not all(isinstance(d, int) for d in x.shape[1:]):
            raise ShapeError(f"{self.kind()} needs known sizes, got {format_shape(x.shape[1:])}")
        expect_size(self.kind(), tuple(d * s for d, s in zip(spatial, self.size)) + (x.shape[-1],))
        return ctx.op("Upsample", x, axes=tuple(range(1, self.n + 1)), factors=tuple(self.size))


class UpSampling1D(_UpSampling):
    """Repeats each step ``size`` times: ``[steps, channels] -> [steps * size, channels]``.

    Args:
        size: 2.
    """
    n = 1
    layout = "[steps, channels]"

    def __init__(self, size: IntArg(1) = 2):
        self.size = (size,)


class UpSampling2D(_UpSampling):
    """Repeats rows and columns (nearest neighbour):
    ``[h, w, c] -> [h * size[0], w * size[1], c]``.

    Args:
        size: (2, 2); an int or a pair.
        interpolation: nearest (the only one so far).
    """

    def __init__(self, size: Ints(2) = (2, 2), interpolation: Choice("nearest") = "nearest"):
        self.size, self.interpolation = size, interpolation


class UpSampling3D(_UpSampling):
    """Repeats each depth slice, row and column (nearest neighbour):
    ``[d, h, w, c] -> [d * size[0], h * size[1], w * size[2], c]``.

    Args:
        size: (2, 2, 2); an int or a triple.
    """
    n = 3
    layout = "[depth, height, width, channels]"

    def __init__(self, size: Ints(3) = (2, 2, 2)):
        self.size = size


class RepeatVector(Layer):
    """Repeats a vector ``n`` times: ``[features] -> [n, features]``.

    Args:
        n: the number of repetitions.
    """

    def __init__(self, n: IntArg(1)):
        self.n = n

    def call(self, ctx, x):
        expect_rank("RepeatVector", x, 2, "[features]")
        expect_size("RepeatVector", (self.n, x.shape[1]) if isinstance(x.shape[1], int) else (self.n,))
        y = ctx.op("Unsqueeze", x, axes=(1,))
        return ctx.op("Mul", y, ctx.const(np.ones((self.n, 1), x.dtype), x.dtype))
