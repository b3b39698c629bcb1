"""Regularization layers: Dropout."""
from .base import FloatArg, IntArg, Layer, Optional, ShapeArg


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of the inputs in training and scales the rest by
    1 / (1 - rate); the identity at inference.

    Args:
        rate: fraction to drop, in [0, 1).
        noise_shape: none (drop elements independently).
        seed: none (the model's seed decides).
    """

    def __init__(self, rate: FloatArg(0.0, 1.0), noise_shape: Optional(ShapeArg()) = None,
                 seed: Optional(IntArg(0)) = None):
        self.rate, self.noise_shape, self.seed = rate, noise_shape, seed

    def call(self, ctx, x):
        return ctx.op("Dropout", x, rate=self.rate)
