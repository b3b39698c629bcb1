"""Layer wrappers: TimeDistributed, Bidirectional."""
from ..errors import ShapeError, format_shape
from ..ir import Tensor
from .base import ArgError, Choice, Layer, LayerArg, Optional


class TimeDistributed(Layer):
    """Applies ``layer`` to every step of ``[steps, ...]``, with one set of weights:
    the steps are folded into the batch (``[N, T, ...] -> [N * T, ...]``), the layer runs on
    the per-step shape ``[...]``, and the result is unfolded to ``[N, T, ...]``. A step mask
    passes on (Keras 3).

    Args:
        layer: an unapplied built-in layer, e.g. ``TimeDistributed(Dense(8))``.

    Weights: the wrapped layer's, named ``<this layer>/<inner layer>/...`` (or the inner
    layer's own name when it was bound with ``layer name = ...``).
    """

    propagates_mask = True
    wraps = ("layer",)

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
                inner.name = f"{self.name}/{inner.base_name()}"
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


class Bidirectional(Layer):
    """Runs a recurrent layer forwards and a copy of it backwards, and merges the two.

    Args:
        layer: an unapplied SimpleRNN, LSTM or GRU, e.g. ``Bidirectional(LSTM(32))``.
        merge_mode: concat (default: the last axis doubles), sum, mul or ave; none gives the two
            outputs apart (forward, backward), as Keras's list.

    Weights: the forward layer's, then the backward copy's, named
    ``<this layer>/forward_<inner>/...`` and ``<this layer>/backward_<inner>/...`` as Keras.
    With ``return_sequences`` the backward outputs are reversed to line up with the forward ones,
    and on a masked sequence both directions output 0 at the masked steps (Keras forces their
    ``zero_output_for_mask``), and the mask passes on (to each output with merge_mode=none).
    With the layer's ``return_state=true`` the merged output is followed by the forward layer's
    last states, then the backward layer's, as Keras 3:
    ``out, fh, fc, bh, bc = Bidirectional(LSTM(8, return_state=true))(x)`` (``out, fh, bh`` for a
    GRU or SimpleRNN; with merge_mode=none the two outputs come first: ``f, b, fh, bh``).
    Called with ``initial_state=[fh, fc, bh, bc]``, the first half starts the forward layer and
    the second the backward one, as Keras.
    """
    call_keywords = ("initial_state",)
    wraps = ("forward",)  # (the backward copy takes the forward layer's name)

    def __init__(self, layer: LayerArg(), merge_mode: Optional(Choice("concat", "sum", "mul", "ave")) = "concat"):
        from .recurrent import _Recurrent
        if not isinstance(layer, _Recurrent):
            raise ArgError(f"Bidirectional wraps SimpleRNN, LSTM or GRU, got {layer.kind()}")
        self.forward = layer
        # (LSTM(..., name=l): forward_l and backward_l, its regularizers on both)
        self.backward = layer.with_arguments(go_backwards=not layer.arguments.get("go_backwards", False))
        self.merge_mode = merge_mode
        for inner in (self.forward, self.backward):
            inner.zero_output_for_mask = layer.return_sequences

    @property
    def propagates_mask(self):
        return self.forward.return_sequences

    def build(self, ctx, x):
        for direction, inner in (("forward", self.forward), ("backward", self.backward)):
            inner.name = f"{self.name}/{direction}_{self.forward.base_name()}"
            inner.input_types = [x.type]
            inner.build(ctx, x)
            inner.built = True

    def call(self, ctx, x, initial_state=None):
        halves = (None, None)
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            n = self.forward.states
            if len(states) != 2 * n:
                names = ", ".join(f"{d}{s}" for d in "fb" for s in self.forward.state_names)
                raise ShapeError(f"Bidirectional({self.forward.kind()})'s initial_state takes {2 * n} tensors "
                                 f"[{names}]: the forward layer's states, then the backward's; got {len(states)}")
            halves = (states[:n], states[n:])
        forward = self.forward.call(ctx, x, initial_state=halves[0])
        backward = self.backward.call(ctx, x, initial_state=halves[1])
        states = ()
        if self.forward.return_state:  # (output, h[, c]) from each: Keras 3's forward states, then backward's
            (forward, *forward_states), (backward, *backward_states) = forward, backward
            states = tuple(forward_states) + tuple(backward_states)
        sequences = self.forward.return_sequences
        if sequences:  # back in time order, step by step with the forward pass
            backward = ctx.op("Flip", backward, axis=1)
        if self.merge_mode is None:
            outputs = (forward, backward)
        elif self.merge_mode == "concat":
            outputs = (ctx.op("Concat", forward, backward, axis=-1),)
        elif self.merge_mode == "ave":
            outputs = (ctx.op("Mul", ctx.op("Add", forward, backward), ctx.const(0.5, forward.dtype)),)
        else:
            outputs = (ctx.op({"sum": "Add", "mul": "Mul"}[self.merge_mode], forward, backward),)
        mask = ctx.mask_of(x)
        if sequences and mask is not None:  # (the states take none, as Keras)
            for output in outputs:
                ctx.set_mask(output, mask)
        results = outputs + states
        return results[0] if len(results) == 1 else results
