"""Core layers: Dense, Embedding, Masking, Identity."""
from ..errors import ShapeError, format_shape
from .activations import apply_activation
from .base import ActivationArg, BoolArg, Choice, FloatArg, InitializerArg, IntArg, Layer


class Dense(Layer):
    """``activation(x @ kernel + bias)`` on the last axis of the input.
    Also takes kernel_regularizer / bias_regularizer (see Layer).

    Args:
        units: size of the output's last axis.
        activation: applied to the output; linear by default.
        use_bias: whether to add a bias (true).
        kernel_initializer: glorot_uniform.
        bias_initializer: zeros.

    Weights: kernel [input_dim, units], bias [units].
    """
    propagates_mask = True

    regularizable = True

    def __init__(self, units: IntArg(1), activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        self.units, self.activation, self.use_bias = units, activation, use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def build(self, ctx, x):
        if x.rank < 2:
            raise ShapeError("Dense needs an input with a feature axis, got a scalar per batch item")
        if not isinstance(x.shape[-1], int):
            raise ShapeError(f"Dense needs a known last dimension, got {x.shape[-1]}")
        self.kernel = ctx.add_weight(self, "kernel", (x.shape[-1], self.units), x.dtype, self.kernel_initializer)
        if self.use_bias:
            self.bias = ctx.add_weight(self, "bias", (self.units,), x.dtype, self.bias_initializer)

    def call(self, ctx, x):
        y = ctx.op("MatMul", x, self.kernel)
        if self.use_bias:
            y = ctx.op("Add", y, self.bias)
        return apply_activation(ctx, self.activation, y)


class Embedding(Layer):
    """Looks up rows of a table: int ids [..] -> [.., output_dim].

    Args:
        input_dim: vocabulary size (largest id + 1).
        output_dim: size of each embedding vector.
        embeddings_initializer: uniform in [-0.05, 0.05].
        mask_zero: id 0 is padding: recurrent layers after it skip those steps (the state carries over).
        dtype: float32 (float64 for exact gradient checks).

    Weights: embeddings [input_dim, output_dim].
    """

    def __init__(self, input_dim: IntArg(1), output_dim: IntArg(1),
                 embeddings_initializer: InitializerArg() = ("uniform", ()), mask_zero: BoolArg() = False,
                 dtype: Choice("float32", "float64") = "float32"):
        self.input_dim, self.output_dim = input_dim, output_dim
        self.embeddings_initializer, self.mask_zero, self.dtype = embeddings_initializer, mask_zero, dtype

    def build(self, ctx, ids):
        if ids.type.is_float or ids.type.dtype == "bool":
            raise ShapeError(f"Embedding expects integer ids, got {ids.type}",
                             hint="declare the input as int64[...]")
        self.embeddings = ctx.add_weight(self, "embeddings", (self.input_dim, self.output_dim), self.dtype,
                                         self.embeddings_initializer)

    def call(self, ctx, ids):
        known = ctx.graph.consts.get(ids.name)  # (positions(x) of a fixed length: 0 .. n-1)
        if known is not None and known.size and (known.min() < 0 or known.max() >= self.input_dim):
            raise ShapeError(f"Embedding's ids run from {known.min()} to {known.max()}; its table has {self.input_dim} "
                             f"rows (ids 0 to {self.input_dim - 1})",
                             f"Embedding({known.max() + 1}, ...) or more rows" if known.min() >= 0 else None)
        if ids.dtype not in ("int32", "int64"):  # (uint8/int8 ids, as Keras takes them: ONNX's Gather does not)
            ids = ctx.op("Cast", ids, to="int32")
        out = ctx.op("Gather", self.embeddings, ids, axis=0)
        if self.mask_zero:
            ctx.set_mask(out, ctx.op("Cast", ctx.op("Greater", ids, 0), to=out.dtype))
        return out


class Masking(Layer):
    """Marks the steps whose features all equal ``mask_value`` as padding (Keras): such a step's
    output is 0, and the step mask [steps] goes on to the layers that read one (recurrent layers,
    global average pooling, attention, the losses).

    Args:
        mask_value: the padding value, 0.0.

    Weights: none.
    """

    def __init__(self, mask_value: FloatArg() = 0.0):
        self.mask_value = mask_value

    def call(self, ctx, x):
        if x.rank != 3:  # (the mask is one flag a step: what recurrent layers and the losses read)
            raise ShapeError(f"Masking needs steps of features, [steps, features], got {format_shape(x.shape[1:])}")
        if not x.type.is_float:
            raise ShapeError(f"Masking reads float features, got {x.dtype}", "cast(x, float32) first")
        differs = ctx.op("Sub", 1.0, ctx.op("Cast", ctx.op("Equal", x, ctx.const(self.mask_value, x.dtype)), to=x.dtype))
        keep = ctx.op("ReduceMax", differs, axes=(-1,), keepdims=1)  # [N, T, 1]: a feature differs
        y = ctx.op("Mul", x, keep)
        ctx.set_mask(y, ctx.op("Squeeze", keep, axes=(-1,)))
        return y


class Identity(Layer):
    """Returns its input as it is (a placeholder, as Keras's Identity). No arguments."""
    propagates_mask = True

    def call(self, ctx, x):
        return x
