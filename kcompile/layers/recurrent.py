"""Recurrent layers: LSTM (inference; training arrives with the recurrent release)."""
from ..errors import ShapeError, format_shape
from .base import BoolArg, Choice, InitializerArg, IntArg, Layer

_ONNX_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}


class LSTM(Layer):
    """Long short-term memory over [timesteps, features] sequences.

    Args:
        units: size of the hidden state.
        activation: tanh (also sigmoid, relu).
        recurrent_activation: sigmoid (also tanh, relu).
        use_bias: true.
        return_sequences: false (the last output only); true gives [timesteps, units].
        unit_forget_bias: true (the forget gate's bias starts at 1, as Keras).
        kernel_initializer: glorot_uniform. recurrent_initializer: orthogonal. bias_initializer: zeros.

    Weights: kernel [features, 4 * units], recurrent_kernel [units, 4 * units], bias [4 * units],
    gates in Keras's order i, f, c, o.
    """

    def __init__(self, units: IntArg(1), activation: Choice("tanh", "sigmoid", "relu") = "tanh",
                 recurrent_activation: Choice("sigmoid", "tanh", "relu") = "sigmoid", use_bias: BoolArg() = True,
                 return_sequences: BoolArg() = False, unit_forget_bias: BoolArg() = True,
                 kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 recurrent_initializer: InitializerArg() = ("orthogonal", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        self.units, self.activation, self.recurrent_activation = units, activation, recurrent_activation
        self.use_bias, self.return_sequences, self.unit_forget_bias = use_bias, return_sequences, unit_forget_bias
        self.kernel_initializer, self.recurrent_initializer = kernel_initializer, recurrent_initializer
        self.bias_initializer = bias_initializer

    def build(self, ctx, x):
        if x.rank != 3 or not isinstance(x.shape[2], int):
            raise ShapeError(f"LSTM expects an input of shape [timesteps, features] (without the batch), "
                             f"got {format_shape(x.shape[1:])}", "an Embedding before it makes [timesteps, dim]")
        u = self.units
        self.kernel = ctx.add_weight(self, "kernel", (x.shape[2], 4 * u), x.dtype, self.kernel_initializer)
        self.recurrent_kernel = ctx.add_weight(self, "recurrent_kernel", (u, 4 * u), x.dtype,
                                               self.recurrent_initializer)
        if self.use_bias:
            init = self.bias_initializer
            if self.unit_forget_bias and init == ("zeros", ()):
                init = ("unit_forget_bias", ())
            self.bias = ctx.add_weight(self, "bias", (4 * u,), x.dtype, init)

    def call(self, ctx, x):
        inputs = [x, self.kernel, self.recurrent_kernel] + ([self.bias] if self.use_bias else [])
        seq, h, _ = ctx.op("LSTM", *inputs, units=self.units,
                           activation=_ONNX_ACTIVATIONS[self.activation],
                           recurrent_activation=_ONNX_ACTIVATIONS[self.recurrent_activation])
        return seq if self.return_sequences else h
