"""Preprocessing layers inside the model (Keras's family of that name): Rescaling, Normalization."""
import numpy as np

from ..errors import ShapeError
from .base import ArgError, BoolArg, FloatArg, IntArg, Layer, show


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
        if not x.type.is_float:
            x = ctx.op("Cast", x, to="float32")
        y = ctx.op("Mul", x, ctx.const(self.scale, x.dtype))
        return ctx.op("Add", y, ctx.const(self.offset, x.dtype)) if self.offset else y


class Normalization(Layer):
    """Standardizes the last axis (Keras): ``(x - mean) / max(sqrt(variance), 1e-7)``, or with
    ``invert`` the way back, ``mean + x * max(sqrt(variance), 1e-7)``. The mean and variance are
    given (``mean=..., variance=...``: a number or one per feature, constants of the graph) or,
    without them, weights that ``model.get_layer(name).adapt(data)`` computes from data shaped
    like the layer's input (the population mean and variance of each feature, as Keras's adapt).

    Args:
        axis: -1, the feature axis (the only one here).
        mean, variance: none, or a number or a list of one per feature (both or neither).
        invert: false.

    Weights (adapted form only): mean [features], variance [features], not trainable (Keras also
    keeps a count, which kcompile leaves out).
    """
    propagates_mask = True

    def __init__(self, axis: IntArg() = -1, mean=None, variance=None, invert: BoolArg() = False):
        if axis != -1:
            raise ArgError("Normalization: axis must be -1, the feature axis (the only one kcompile takes)")
        if (mean is None) != (variance is None):
            raise ArgError("Normalization: give both mean and variance, or neither (then adapt the layer)")
        self.mean_value = _numbers("mean", mean)
        self.variance_value = _numbers("variance", variance)
        if self.variance_value is not None and any(v < 0 for v in self.variance_value):
            raise ArgError("Normalization: variance must not be negative")
        self.invert = invert

    def build(self, ctx, x):
        if not x.type.is_float or not x.rank or not isinstance(x.shape[-1], int):
            raise ShapeError(f"Normalization needs float features with a known last axis, got {x.type}")
        features = x.shape[-1]
        if self.mean_value is None:
            self.mean = ctx.add_weight(self, "mean", (features,), x.dtype, ("zeros", ()), trainable=False)
            self.variance = ctx.add_weight(self, "variance", (features,), x.dtype, ("ones", ()), trainable=False)
            return
        for what, values in (("mean", self.mean_value), ("variance", self.variance_value)):
            if len(values) not in (1, features):
                raise ShapeError(f"Normalization {what} has {len(values)} numbers for {features} features")
        self.mean = ctx.const(np.asarray(self.mean_value, dtype=x.dtype), x.dtype)
        self.variance = ctx.const(np.asarray(self.variance_value, dtype=x.dtype), x.dtype)

    def call(self, ctx, x):
        scale = ctx.op("Max", ctx.op("Sqrt", self.variance), ctx.const(1e-7, x.dtype))
        if self.invert:
            return ctx.op("Add", ctx.op("Mul", x, scale), self.mean)
        return ctx.op("Div", ctx.op("Sub", x, self.mean), scale)


def _numbers(what, value):
    """None, a number, or a list or tuple of numbers -> None or a list of floats."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise ArgError(f"Normalization {what}: expected a number or a list of numbers, got {show(value)}")
    return [float(v) for v in items]
