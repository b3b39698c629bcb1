"""Normalization layers: BatchNormalization."""
from ..errors import ShapeError
from ..ir.types import normalize_axis
from .base import BoolArg, FloatArg, InitializerArg, IntArg, Layer


class BatchNormalization(Layer):
    """Normalizes with running statistics at inference:
    ``gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`` along ``axis``.

    Args:
        axis: the channel axis, -1 (channels-last).
        momentum: running-statistics momentum, 0.99 (used in training).
        epsilon: 1e-3.
        center: learn beta (true). scale: learn gamma (true).
        beta_initializer: zeros. gamma_initializer: ones.
        moving_mean_initializer: zeros. moving_variance_initializer: ones.

    Weights: gamma, beta (trainable), moving_mean, moving_variance (non-trainable), each [channels].
    """

    def __init__(self, axis: IntArg() = -1, momentum: FloatArg(0.0, 1.0) = 0.99, epsilon: FloatArg(0.0) = 1e-3,
                 center: BoolArg() = True, scale: BoolArg() = True,
                 beta_initializer: InitializerArg() = ("zeros", ()),
                 gamma_initializer: InitializerArg() = ("ones", ()),
                 moving_mean_initializer: InitializerArg() = ("zeros", ()),
                 moving_variance_initializer: InitializerArg() = ("ones", ())):
        self.axis, self.momentum, self.epsilon, self.center, self.scale = axis, momentum, epsilon, center, scale
        self.initializers = dict(beta=beta_initializer, gamma=gamma_initializer,
                                 moving_mean=moving_mean_initializer, moving_variance=moving_variance_initializer)

    def build(self, ctx, x):
        if x.rank < 2:
            raise ShapeError("BatchNormalization needs an input with a channel axis")
        axis = normalize_axis(self.axis, x.rank)
        if axis == 0:
            raise ShapeError("BatchNormalization cannot normalize along the batch axis")
        n = (x.shape[axis],)
        if self.scale:
            self.gamma = ctx.add_weight(self, "gamma", n, x.dtype, self.initializers["gamma"])
        if self.center:
            self.beta = ctx.add_weight(self, "beta", n, x.dtype, self.initializers["beta"])
        self.moving_mean = ctx.add_weight(self, "moving_mean", n, x.dtype, self.initializers["moving_mean"],
                                          trainable=False)
        self.moving_variance = ctx.add_weight(self, "moving_variance", n, x.dtype,
                                              self.initializers["moving_variance"], trainable=False)

    def call(self, ctx, x):
        axis = normalize_axis(self.axis, x.rank)
        n = x.shape[axis]
        gamma = self.gamma if self.scale else ctx.const([1.0] * n, x.dtype)
        beta = self.beta if self.center else ctx.const([0.0] * n, x.dtype)
        # A frozen layer (trainable=false) keeps using its moving statistics in training, as Keras.
        return ctx.op("BatchNormalization", x, gamma, beta, self.moving_mean, self.moving_variance,
                      axis=axis, epsilon=self.epsilon, momentum=self.momentum, trainable=ctx.trainable)
