"""Layer wrappers: TimeDistributed."""
from ..errors import ShapeError, format_shape
from ..ir import Tensor
from .base import Layer, LayerArg


class TimeDistributed(Layer):
    """Applies ``layer`` to every step of ``[steps, ...]``, with one set of weights:
    the steps are folded into the batch (``[N, T, ...] -> [N * T, ...]``), the layer runs on
    the per-step shape ``[...]``, and the result is unfolded to ``[N, T, ...]``.

    Args:
        layer: an unapplied built-in layer, e.g. ``TimeDistributed(Dense(8))``.

    Weights: the wrapped layer's, named ``<this layer>/<inner layer>/...`` (or the inner
    layer's own name when it was bound with ``layer name = ...``).
    """

    def __init__(self, layer: LayerArg()):
        if layer.n_inputs != 1:
            from .base import ArgError
            raise ArgError(f"TimeDistributed wraps a layer of one input, got {layer.kind()}")
        self.layer = layer

    def _step(self, ctx, x):
        if x.rank < 3:
            raise ShapeError(f"TimeDistributed needs an input [steps, ...] of rank >= 2 without the batch, "
                             f"got {format_shape(x.shape[1:])}")
        folded = getattr(self, "_folded", None)
        if folded is not None and folded[0] == x.name:  # folded by build() for this very call
            return folded[1]
        step = ctx.op("FoldBatch", x, axes=2)
        self._folded = (x.name, step)
        return step

    def build(self, ctx, x):
        inner = self.layer
        step = self._step(ctx, x)
        if not inner.built:
            if not inner.name:
                inner.name = f"{self.name}/{inner.auto_name()}"
            inner.input_types = [step.type]
            inner.build(ctx, step)
            inner.built = True
        elif inner.input_types != [step.type]:
            raise ShapeError(f"layer {inner.name} was built for {inner.input_types[0]} and is now applied to "
                             f"each step {step.type}")

    def call(self, ctx, x):
        y = self.layer.call(ctx, self._step(ctx, x))
        if not isinstance(y, Tensor):
            raise ShapeError(f"TimeDistributed needs a layer with one output, {self.layer.kind()} gives several")
        return ctx.op("UnfoldBatch", y, x, axes=2)
