"""Normalization layers: BatchNormalization, LayerNormalization, GroupNormalization."""
from ..errors import ShapeError, format_shape
from ..ir.types import normalize_axis
from .base import BoolArg, FloatArg, InitializerArg, IntArg, IntList, Layer


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
    propagates_mask = True

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
        # A frozen layer (trainable=false) keeps using its moving statistics in training, as Keras;
        # a trainable one on a masked sequence takes the batch statistics of the unmasked steps.
        mask = ctx.mask_of(x)
        return ctx.op("BatchNormalization", x, gamma, beta, self.moving_mean, self.moving_variance,
                      *([mask] if mask is not None else []), axis=axis, epsilon=self.epsilon,
                      momentum=self.momentum, trainable=ctx.trainable)


def _normalize(ctx, x, axes, epsilon):
    """(x - mean) / sqrt(var + epsilon), the (population) moments over ``axes``."""
    return ctx.op("Normalize", x, axes=tuple(axes), epsilon=epsilon)[0]


def _scale_shift(ctx, layer, y, shape):
    """y * gamma + beta, each reshaped to ``shape`` (y's shape without the batch, 1 elsewhere)."""
    for weight, op in (("gamma", "Mul"), ("beta", "Add")):
        w = getattr(layer, weight, None)
        if w is not None:
            if tuple(w.shape) != tuple(shape):
                w = ctx.op("Reshape", w, shape=tuple(shape))
            y = ctx.op(op, y, w)
    return y


class LayerNormalization(Layer):
    """Normalizes each batch item over ``axis`` (Keras 3):
    ``(x - mean) / sqrt(variance + epsilon) * gamma + beta``, mean and variance over ``axis``.

    Args:
        axis: -1; an axis or a tuple of axes (not the batch).
        epsilon: 1e-3.
        center: learn beta (true). scale: learn gamma (true).
        beta_initializer: zeros. gamma_initializer: ones.

    Weights: gamma, beta (each only if scale/center), shaped like the input on ``axis``
    (``[features]`` for the default).
    """
    propagates_mask = True

    def __init__(self, axis: IntList() = (-1,), epsilon: FloatArg(0.0) = 1e-3, center: BoolArg() = True,
                 scale: BoolArg() = True, beta_initializer: InitializerArg() = ("zeros", ()),
                 gamma_initializer: InitializerArg() = ("ones", ())):
        self.axis, self.epsilon, self.center, self.scale = axis, epsilon, center, scale
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer

    def axes(self, x):
        axes = tuple(sorted({normalize_axis(a, x.rank) for a in self.axis}))
        if 0 in axes:
            raise ShapeError("LayerNormalization cannot normalize along the batch axis")
        return axes

    def build(self, ctx, x):
        if x.rank < 2:
            raise ShapeError("LayerNormalization needs an input with a feature axis")
        axes = self.axes(x)
        shape = tuple(x.shape[a] for a in axes)
        if not all(isinstance(d, int) for d in shape):
            raise ShapeError(f"LayerNormalization needs known sizes on axis {self.axis}, got {format_shape(shape)}")
        if self.scale:
            self.gamma = ctx.add_weight(self, "gamma", shape, x.dtype, self.gamma_initializer)
        if self.center:
            self.beta = ctx.add_weight(self, "beta", shape, x.dtype, self.beta_initializer)

    def call(self, ctx, x):
        axes = self.axes(x)
        y = _normalize(ctx, x, axes, self.epsilon)
        return _scale_shift(ctx, self, y, tuple(x.shape[i] if i in axes else 1 for i in range(1, x.rank)))


class GroupNormalization(Layer):
    """Splits the channels into ``groups`` and normalizes each batch item over the other
    (spatial) axes and the channels of each group (Keras 3):
    ``(x - mean) / sqrt(variance + epsilon) * gamma + beta``.

    Args:
        groups: 32; must divide the channels (-1: one group per channel).
        axis: -1, the channel axis.
        epsilon: 1e-3.
        center: learn beta (true). scale: learn gamma (true).
        beta_initializer: zeros. gamma_initializer: ones.

    Weights: gamma, beta (each only if scale/center), each [channels].
    """
    propagates_mask = True

    def __init__(self, groups: IntArg(-1) = 32, axis: IntArg() = -1, epsilon: FloatArg(0.0) = 1e-3,
                 center: BoolArg() = True, scale: BoolArg() = True,
                 beta_initializer: InitializerArg() = ("zeros", ()),
                 gamma_initializer: InitializerArg() = ("ones", ())):
        if groups == 0:
            from .base import ArgError
            raise ArgError("GroupNormalization groups must be >= 1 (or -1: one group per channel)")
        self.groups, self.axis, self.epsilon, self.center, self.scale = groups, axis, epsilon, center, scale
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer

    def build(self, ctx, x):
        if x.rank < 2:
            raise ShapeError("GroupNormalization needs an input with a channel axis")
        axis = normalize_axis(self.axis, x.rank)
        if axis == 0:
            raise ShapeError("GroupNormalization cannot use the batch axis as channels")
        if not all(isinstance(d, int) for d in x.shape[1:]):
            raise ShapeError(f"GroupNormalization needs known sizes, got {format_shape(x.shape[1:])}")
        channels = x.shape[axis]
        groups = channels if self.groups == -1 else self.groups
        if groups > channels or channels % groups:
            raise ShapeError(f"GroupNormalization: {groups} groups do not divide {channels} channels")
        self.n_groups = groups
        if self.scale:
            self.gamma = ctx.add_weight(self, "gamma", (channels,), x.dtype, self.gamma_initializer)
        if self.center:
            self.beta = ctx.add_weight(self, "beta", (channels,), x.dtype, self.beta_initializer)

    def call(self, ctx, x):
        axis = normalize_axis(self.axis, x.rank)
        gamma = self.gamma if self.scale else ctx.const([1.0] * x.shape[axis], x.dtype)
        beta = self.beta if self.center else ctx.const([0.0] * x.shape[axis], x.dtype)
        return ctx.op("GroupNormalize", x, gamma, beta, axis=axis, groups=self.n_groups, epsilon=self.epsilon)[0]


class UnitNormalization(Layer):
    """Scales each batch item to unit L2 norm over ``axis`` (Keras 3): ``x / max(||x||, 1e-12)``,
    computed as Keras does, ``x * rsqrt(max(sum(x^2), 1e-24))`` (an all-zero item stays zero,
    and its gradient is finite).

    Args:
        axis: -1; an axis or a tuple of axes (not the batch).

    Weights: none.
    """
    propagates_mask = True

    def __init__(self, axis: IntList() = (-1,)):
        self.axis = axis

    def call(self, ctx, x):
        if not x.type.is_float:
            raise ShapeError(f"UnitNormalization needs a floating-point input, got {x.type}",
                             "cast it first: cast(x, float32)")
        axes = tuple(sorted({normalize_axis(a, x.rank) for a in self.axis}))
        if 0 in axes:
            raise ShapeError("UnitNormalization cannot normalize along the batch axis")
        squares = ctx.op("ReduceSum", ctx.op("Mul", x, x), axes=axes, keepdims=1)
        floor = ctx.const(1e-24, x.dtype)
        return ctx.op("Mul", x, ctx.op("Div", ctx.const(1.0, x.dtype), ctx.op("Sqrt", ctx.op("Max", squares, floor))))
