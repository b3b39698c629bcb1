"""Regularization layers: Dropout, SpatialDropout1D/2D, GaussianNoise, GaussianDropout,
AlphaDropout, ActivityRegularization."""
import math

from ..errors import ShapeError, format_shape
from .base import ArgError, Converter, FloatArg, IntArg, Layer, Optional, Symbol, expect_rank, show


class NoiseShapeArg(Converter):
    """Keras's ``noise_shape``: the keep-mask's shape, batch included, with ``none`` for an
    axis the mask follows the input on and 1 where one mask value is shared:
    ``(none, 1, 1, 16)``. A bare ``none`` means no noise_shape."""
    describe = "a shape tuple such as (none, 1, 16)"

    def __call__(self, v):
        def is_none(i):
            return i is None or (isinstance(i, Symbol) and i in ("none", "None"))
        if is_none(v):
            return None
        items = tuple(v) if isinstance(v, (tuple, list)) else None
        if not items or any(not is_none(i) and (isinstance(i, bool) or not isinstance(i, int) or i < 1)
                            for i in items):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        return tuple(None if is_none(i) else i for i in items)


def dropout(ctx, x, rate, noise_shape=None, layer="Dropout", **attrs):
    """A Dropout op; ``noise_shape`` (Keras's, ``None`` entries following x) becomes the op's
    mask shape: x's dimensions, 1 where the mask is shared. ``attrs``: the op's others (alpha)."""
    if noise_shape is None:
        return ctx.op("Dropout", x, rate=rate, **attrs)
    if len(noise_shape) != x.rank:
        raise ShapeError(f"{layer} noise_shape {show(noise_shape).replace('None', 'none')} has {len(noise_shape)} "
                         f"entries; the input {format_shape(x.shape)} (batch included) has rank {x.rank}")
    mask = []
    for d, xd in zip(noise_shape, x.shape):
        if d is not None and d != 1 and d != xd:
            raise ShapeError(f"{layer} noise_shape entry {d} does not match the input's {xd} (input "
                             f"{format_shape(x.shape)}); use none or 1")
        mask.append(xd if d is None else d)
    if tuple(mask) == tuple(x.shape):
        return ctx.op("Dropout", x, rate=rate, **attrs)
    return ctx.op("Dropout", x, rate=rate, noise_shape=tuple(mask), **attrs)


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of the inputs in training and scales the rest by
    1 / (1 - rate); the identity at inference.

    Args:
        rate: fraction to drop, in [0, 1).
        noise_shape: none (drop elements independently); else the mask's shape, batch
            included, with none where it follows the input and 1 where one value is shared:
            (none, 1, 16) drops whole channels of a [steps, 16] input.
        seed: none (the model's seed decides).
    """
    propagates_mask = True

    def __init__(self, rate: FloatArg(0.0, 1.0), noise_shape: NoiseShapeArg() = None,
                 seed: Optional(IntArg(0)) = None):
        self.rate, self.noise_shape, self.seed = rate, noise_shape, seed

    def call(self, ctx, x):
        return dropout(ctx, x, self.rate, self.noise_shape)


class SpatialDropout1D(Layer):
    """Dropout of whole channels of ``[steps, channels]``: one keep/drop draw per batch item
    and channel (noise_shape (none, 1, channels)); the identity at inference.

    Args:
        rate: fraction to drop, in [0, 1).
        seed: none (the model's seed decides).
    """
    propagates_mask = True

    def __init__(self, rate: FloatArg(0.0, 1.0), seed: Optional(IntArg(0)) = None):
        self.rate, self.seed = rate, seed

    def call(self, ctx, x):
        expect_rank("SpatialDropout1D", x, 3, "[steps, channels]")
        return dropout(ctx, x, self.rate, (None, 1, None), "SpatialDropout1D")


class SpatialDropout2D(Layer):
    """Dropout of whole feature maps of ``[height, width, channels]``: one keep/drop draw per
    batch item and channel (noise_shape (none, 1, 1, channels)); the identity at inference.

    Args:
        rate: fraction to drop, in [0, 1).
        seed: none (the model's seed decides).
    """

    def __init__(self, rate: FloatArg(0.0, 1.0), seed: Optional(IntArg(0)) = None):
        self.rate, self.seed = rate, seed

    def call(self, ctx, x):
        expect_rank("SpatialDropout2D", x, 4, "[height, width, channels]")
        return dropout(ctx, x, self.rate, (None, 1, 1, None), "SpatialDropout2D")


class GaussianNoise(Layer):
    """Adds zero-mean Gaussian noise of standard deviation ``stddev`` in training; the
    identity at inference.

    Args:
        stddev: the noise's standard deviation (>= 0).
        seed: none (the model's seed decides).
    """
    propagates_mask = True

    def __init__(self, stddev: FloatArg(0.0), seed: Optional(IntArg(0)) = None):
        self.stddev, self.seed = stddev, seed

    def call(self, ctx, x):
        if not x.type.is_float:
            raise ShapeError(f"GaussianNoise needs a floating-point input, got {x.type}")
        return ctx.op("GaussianNoise", x, stddev=self.stddev)


class GaussianDropout(Layer):
    """Multiplies the inputs by 1-centred Gaussian noise of standard deviation
    sqrt(rate / (1 - rate)) in training (Keras's GaussianDropout); the identity at inference.

    Args:
        rate: drop probability as Dropout's, in [0, 1).
        seed: none (the model's seed decides).
    """
    propagates_mask = True

    def __init__(self, rate: FloatArg(0.0, 1.0), seed: Optional(IntArg(0)) = None):
        self.rate, self.seed = rate, seed

    def call(self, ctx, x):
        if not x.type.is_float:
            raise ShapeError(f"GaussianDropout needs a floating-point input, got {x.type}")
        return ctx.op("GaussianNoise", x, stddev=math.sqrt(self.rate / (1.0 - self.rate)), multiplicative=True)


# SELU's constants: AlphaDropout sets dropped entries to SELU's negative saturation value.
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


class AlphaDropout(Dropout):
    """Dropout that keeps the inputs' mean and variance (for SELU networks), as Keras's: in
    training, dropped entries are set to alpha_p = -selu_alpha * selu_scale and the result is
    a * x + b with a = ((1 - rate) (1 + rate alpha_p^2))^-1/2 and b = -a alpha_p rate; the
    identity at inference.

    Args:
        rate: fraction to drop, in [0, 1).
        noise_shape: none, or the mask's shape as Dropout's.
        seed: none (the model's seed decides).
    """

    def call(self, ctx, x):
        if not x.type.is_float:
            raise ShapeError(f"AlphaDropout needs a floating-point input, got {x.type}")
        return dropout(ctx, x, self.rate, self.noise_shape, "AlphaDropout", alpha=-SELU_ALPHA * SELU_SCALE)


class ActivityRegularization(Layer):
    """Passes its input on and adds ``l1 * sum(|x|) + l2 * sum(x^2)``, divided by the batch
    size, to the training loss (as any layer's activity_regularizer=l1_l2(l1, l2), which this
    layer does not take besides).

    Args:
        l1: L1 factor (0.0), >= 0.
        l2: L2 factor (0.0), >= 0.
    """
    propagates_mask = True
    takes_activity_regularizer = False

    def __init__(self, l1: FloatArg(0.0, math.inf) = 0.0, l2: FloatArg(0.0, math.inf) = 0.0):
        self.l1, self.l2 = l1, l2
        self.activity_regularizer = (l1, l2)

    def call(self, ctx, x):
        return x
