"""Pooling layers, channels-last: Max/AveragePooling1D/2D/3D, GlobalAverage/GlobalMaxPooling1D/2D/3D.
Each 1D or 3D layer is its 2D layer at ``rank = 1`` or ``rank = 3``."""
from ..errors import ShapeError, format_shape
from .base import BoolArg, Choice, Ints, Layer, Optional
from .convolutional import same_padding, to_channels_first, to_channels_last


class _Pooling(Layer):
    rank = 2
    op = "MaxPool"
    layout = "[height, width, channels]"

    def __init__(self, pool_size, strides, padding):
        self.pool_size = pool_size
        self.strides = strides if strides is not None else pool_size
        self.padding = padding

    def call(self, ctx, x):
        if x.rank != self.rank + 2:
            raise ShapeError(f"{self.kind()} expects an input of shape {self.layout} (without the batch), "
                             f"got {format_shape(x.shape[1:])}")
        if self.padding == "same":
            both = [same_padding(x.shape[1 + i], self.pool_size[i], self.strides[i]) for i in range(self.rank)]
            pads = tuple(b for b, _ in both) + tuple(e for _, e in both)
        else:
            pads = (0,) * (2 * self.rank)
        attrs = dict(kernel_shape=self.pool_size, strides=self.strides, pads=pads)
        if self.op == "AveragePool":
            attrs["count_include_pad"] = 0  # Keras averages over the valid pixels only
        y = ctx.op(self.op, to_channels_first(ctx, x), **attrs)
        if isinstance(y, list):  # MaxPool also gives its argmax (for the gradient)
            y = y[0]
        return to_channels_last(ctx, y)


_POOL_DOC = """{what} pooling over {layout} inputs.

    Args:
        pool_size: window size; {default}.
        strides: step; defaults to pool_size.
        padding: valid or same.
    """


class MaxPooling2D(_Pooling):
    __doc__ = _POOL_DOC.format(what="Max", layout="[height, width, channels]", default="(2, 2)")

    def __init__(self, pool_size: Ints(2) = (2, 2), strides: Optional(Ints(2)) = None,
                 padding: Choice("valid", "same") = "valid"):
        super().__init__(pool_size, strides, padding)


class AveragePooling2D(_Pooling):
    __doc__ = _POOL_DOC.format(what="Average", layout="[height, width, channels]", default="(2, 2)")
    op = "AveragePool"

    def __init__(self, pool_size: Ints(2) = (2, 2), strides: Optional(Ints(2)) = None,
                 padding: Choice("valid", "same") = "valid"):
        super().__init__(pool_size, strides, padding)


class MaxPooling1D(_Pooling):
    __doc__ = _POOL_DOC.format(what="Max", layout="[steps, channels]", default="2")
    rank = 1
    layout = "[steps, channels]"

    def __init__(self, pool_size: Ints(1) = (2,), strides: Optional(Ints(1)) = None,
                 padding: Choice("valid", "same") = "valid"):
        super().__init__(pool_size, strides, padding)


class AveragePooling1D(MaxPooling1D):
    __doc__ = _POOL_DOC.format(what="Average", layout="[steps, channels]", default="2")
    op = "AveragePool"


class MaxPooling3D(_Pooling):
    __doc__ = _POOL_DOC.format(what="Max", layout="[depth, height, width, channels]", default="(2, 2, 2)")
    rank = 3
    layout = "[depth, height, width, channels]"

    def __init__(self, pool_size: Ints(3) = (2, 2, 2), strides: Optional(Ints(3)) = None,
                 padding: Choice("valid", "same") = "valid"):
        super().__init__(pool_size, strides, padding)


class AveragePooling3D(MaxPooling3D):
    __doc__ = _POOL_DOC.format(what="Average", layout="[depth, height, width, channels]", default="(2, 2, 2)")
    op = "AveragePool"


class _GlobalPooling(Layer):
    rank = 2
    op = "ReduceMean"
    layout = "[height, width, channels]"

    def __init__(self, keepdims: BoolArg() = False):
        self.keepdims = keepdims

    def call(self, ctx, x):
        if x.rank != self.rank + 2:
            raise ShapeError(f"{self.kind()} expects an input of shape {self.layout} (without the batch), "
                             f"got {format_shape(x.shape[1:])}")
        return ctx.op(self.op, x, axes=tuple(range(1, self.rank + 1)), keepdims=int(self.keepdims))


class GlobalAveragePooling2D(_GlobalPooling):
    """Mean over height and width: [h, w, c] -> [c]. Args: keepdims (false)."""


class GlobalMaxPooling2D(_GlobalPooling):
    """Max over height and width: [h, w, c] -> [c]. Args: keepdims (false)."""
    op = "ReduceMax"


class GlobalAveragePooling1D(_GlobalPooling):
    """Mean over steps: [steps, c] -> [c]; after ``Embedding(mask_zero=true)``, the mean of the
    unmasked steps only (Keras). Args: keepdims (false)."""
    rank = 1
    layout = "[steps, channels]"

    def call(self, ctx, x):
        mask = ctx.mask_of(x)
        if mask is None:
            return super().call(ctx, x)
        super().call(ctx, x)  # (the shape check)
        m = ctx.op("Unsqueeze", mask, axes=(2,))
        total = ctx.op("ReduceSum", ctx.op("Mul", x, m), axes=(1,), keepdims=int(self.keepdims))
        return ctx.op("Div", total, ctx.op("ReduceSum", m, axes=(1,), keepdims=int(self.keepdims)))


class GlobalMaxPooling1D(_GlobalPooling):
    """Max over steps: [steps, c] -> [c]. Args: keepdims (false)."""
    rank = 1
    layout = "[steps, channels]"
    op = "ReduceMax"


class GlobalAveragePooling3D(_GlobalPooling):
    """Mean over depth, height and width: [d, h, w, c] -> [c]. Args: keepdims (false)."""
    rank = 3
    layout = "[depth, height, width, channels]"


class GlobalMaxPooling3D(GlobalAveragePooling3D):
    """Max over depth, height and width: [d, h, w, c] -> [c]. Args: keepdims (false)."""
    op = "ReduceMax"
