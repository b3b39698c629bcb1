"""Preprocessing layers inside the model (Keras's family of that name): Rescaling."""
from .base import FloatArg, Layer


class Rescaling(Layer):
    """``x * scale + offset``, computed in float32 (or the input's float dtype): ``Rescaling(1 /
    255)`` takes uint8 images to [0, 1], as Keras.

    Args:
        scale: the factor.
        offset: added after scaling, 0.0.

    Weights: none.
    """
    propagates_mask = True

    def __init__(self, scale: FloatArg(), offset: FloatArg() = 0.0):
        self.scale, self.offset = scale, offset

    def call(self, ctx, x):
        if x.dtype not in ("float16", "float32", "float64"):
            x = ctx.op("Cast", x, to="float32")
        y = ctx.op("Mul", x, ctx.const(self.scale, x.dtype))
        return ctx.op("Add", y, ctx.const(self.offset, x.dtype)) if self.offset else y
