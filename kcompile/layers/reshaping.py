"""Reshaping layers: Flatten, Reshape, Permute."""
from ..errors import ShapeError, format_shape
from .base import ArgError, Layer, ShapeArg


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


