"""Convolution layers: Conv1D, Conv2D, Conv3D, their transposed forms, and the 1D and 2D
depthwise and separable ones (channels-last, Keras kernels). Each 1D or 3D layer is its 2D
layer at ``rank = 1`` or ``rank = 3``.

The language keeps images channels-last; ONNX convolves channels-first. Each
layer wraps its Conv in transposes, and the transpose-sinking pass removes the
pairs that meet between consecutive layers.
"""
from ..errors import ShapeError, format_shape
from .activations import apply_activation
from .base import ActivationArg, ArgError, BoolArg, Choice, InitializerArg, IntArg, Ints, Layer, Optional


def same_padding(size, kernel, stride, dilation=1):
    """TensorFlow's SAME: output ceil(size/stride), the odd pixel of padding at the end."""
    effective = dilation * (kernel - 1) + 1
    if not isinstance(size, int):
        if stride != 1:
            raise ShapeError("padding=same with strides needs a known input size")
        total = effective - 1
    else:
        total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def to_channels_first(ctx, x):
    n = x.rank
    return ctx.op("Transpose", x, perm=(0, n - 1) + tuple(range(1, n - 1)))


def to_channels_last(ctx, x):
    n = x.rank
    return ctx.op("Transpose", x, perm=(0,) + tuple(range(2, n)) + (1,))


def kernel_to_onnx(ctx, kernel):
    """Keras [*k, in, out] -> ONNX [out, in, *k] (for ConvTranspose: [*k, out, in] -> [in, out, *k])."""
    n = kernel.rank
    return ctx.op("Transpose", kernel, perm=(n - 1, n - 2) + tuple(range(n - 2)))


class _Conv(Layer):
    """Shared by the convolutions; they also take kernel_regularizer / bias_regularizer (see Layer)."""
    regularizable = True
    rank = 2
    layout = "[height, width, channels]"

    def __init__(self, filters, kernel_size, strides, padding, dilation_rate, groups, activation, use_bias,
                 kernel_initializer, bias_initializer):
        self.filters, self.kernel_size, self.strides, self.padding = filters, kernel_size, strides, padding
        self.dilation_rate, self.groups, self.activation, self.use_bias = dilation_rate, groups, activation, use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        if any(s > 1 for s in strides) and any(d > 1 for d in dilation_rate):
            raise ArgError(f"{self.kind()}: strides > 1 with dilation_rate > 1 is not supported (as in Keras)")
        if filters % groups:
            raise ArgError(f"{self.kind()}: filters ({filters}) must be divisible by groups ({groups})")

    def check_input(self, x):
        if x.rank != self.rank + 2:
            hint = None
            if x.rank == 2 and self.rank > 1:
                hint = f"add Reshape({self.layout.replace('[', '(').replace(']', ')')}) before it"
            raise ShapeError(f"{self.kind()} expects an input of shape {self.layout} (without the batch), "
                             f"got {format_shape(x.shape[1:])}", hint)
        if not isinstance(x.shape[-1], int):
            raise ShapeError(f"{self.kind()} needs a known number of channels")

    def build(self, ctx, x):
        self.check_input(x)
        channels = x.shape[-1]
        if channels % self.groups:
            raise ShapeError(f"{self.kind()}: input channels ({channels}) must be divisible by groups ({self.groups})")
        shape = self.kernel_size + (channels // self.groups, self.filters)
        self.kernel = ctx.add_weight(self, "kernel", shape, x.dtype, self.kernel_initializer)
        if self.use_bias:
            self.bias = ctx.add_weight(self, "bias", (self.filters,), x.dtype, self.bias_initializer)

    def pads(self, x):
        spatial = x.shape[1:-1]
        if self.padding == "valid":
            return (0,) * (2 * self.rank)
        if self.padding == "causal":
            return tuple(self.dilation_rate[i] * (self.kernel_size[i] - 1) for i in range(self.rank)) + (0,) * self.rank
        both = [same_padding(spatial[i], self.kernel_size[i], self.strides[i], self.dilation_rate[i])
                for i in range(self.rank)]
        return tuple(b for b, _ in both) + tuple(e for _, e in both)

    def onnx_kernel(self, ctx):
        """The kernel as ONNX's Conv takes it ([out, in / groups, *window])."""
        return kernel_to_onnx(ctx, self.kernel)

    def after_conv(self, ctx, y):
        """What follows the convolution, channels-first, before the bias (nothing here)."""
        return y

    def call(self, ctx, x):
        self.check_input(x)
        y = ctx.op("Conv", to_channels_first(ctx, x), self.onnx_kernel(ctx),
                   strides=self.strides, pads=self.pads(x), dilations=self.dilation_rate, group=self.groups)
        y = to_channels_last(ctx, self.after_conv(ctx, y))
        if self.use_bias:
            y = ctx.op("Add", y, self.bias)
        return apply_activation(ctx, self.activation, y)


class Conv2D(_Conv):
    """2-D convolution over [height, width, channels] images.

    Args:
        filters: number of output channels.
        kernel_size: an int or (kh, kw).
        strides: an int or (sh, sw); 1.
        padding: valid (no padding) or same (output = ceil(input / stride)).
        dilation_rate: an int or (dh, dw); 1.
        groups: channel groups; 1.
        activation: linear by default.
        use_bias: true.
        kernel_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [kh, kw, in_channels / groups, filters], bias [filters].
    """

    def __init__(self, filters: IntArg(1), kernel_size: Ints(2), strides: Ints(2) = (1, 1),
                 padding: Choice("valid", "same") = "valid", dilation_rate: Ints(2) = (1, 1),
                 groups: IntArg(1) = 1, activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, groups, activation, use_bias,
                         kernel_initializer, bias_initializer)


class Conv1D(_Conv):
    """1-D convolution over [steps, channels] sequences.

    Args:
        filters: number of output channels.
        kernel_size: an int.
        strides: 1.
        padding: valid, same or causal (left padding only, for sequence models).
        dilation_rate: 1.
        groups: 1.
        activation: linear by default.
        use_bias: true.
        kernel_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [k, in_channels / groups, filters], bias [filters].
    """
    rank = 1
    layout = "[steps, channels]"

    def __init__(self, filters: IntArg(1), kernel_size: Ints(1), strides: Ints(1) = (1,),
                 padding: Choice("valid", "same", "causal") = "valid", dilation_rate: Ints(1) = (1,),
                 groups: IntArg(1) = 1, activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, groups, activation, use_bias,
                         kernel_initializer, bias_initializer)


class Conv3D(_Conv):
    """3-D convolution over [depth, height, width, channels] volumes.

    Args:
        filters: number of output channels.
        kernel_size: an int or (kd, kh, kw).
        strides: an int or (sd, sh, sw); 1.
        padding: valid (no padding) or same (output = ceil(input / stride)).
        dilation_rate: an int or (dd, dh, dw); 1.
        groups: channel groups; 1.
        activation: linear by default.
        use_bias: true.
        kernel_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [kd, kh, kw, in_channels / groups, filters], bias [filters].
    """
    rank = 3
    layout = "[depth, height, width, channels]"

    def __init__(self, filters: IntArg(1), kernel_size: Ints(3), strides: Ints(3) = (1, 1, 1),
                 padding: Choice("valid", "same") = "valid", dilation_rate: Ints(3) = (1, 1, 1),
                 groups: IntArg(1) = 1, activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, groups, activation, use_bias,
                         kernel_initializer, bias_initializer)


class DepthwiseConv2D(_Conv):
    """Depthwise 2-D convolution: each input channel convolved with its own
    ``depth_multiplier`` kernels (a Conv2D with one group per channel), as Keras.

    Args:
        kernel_size: an int or (kh, kw).
        strides: an int or (sh, sw); 1.
        padding: valid or same.
        depth_multiplier: output channels per input channel; 1.
        dilation_rate: 1.
        activation: linear by default.
        use_bias: true.
        depthwise_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [kh, kw, in_channels, depth_multiplier] (Keras 3's name; Keras 2 called it
    depthwise_kernel), bias [in_channels * depth_multiplier] (output channel c * depth_multiplier
    + m); Keras's depthwise_regularizer and bias_regularizer.
    """
    depthwise_weight = "kernel"
    regularizer_arguments = {"depthwise_regularizer": "kernel", "bias_regularizer": "bias"}

    def __init__(self, kernel_size: Ints(2), strides: Ints(2) = (1, 1), padding: Choice("valid", "same") = "valid",
                 depth_multiplier: IntArg(1) = 1, dilation_rate: Ints(2) = (1, 1),
                 activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 depthwise_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(depth_multiplier, kernel_size, strides, padding, dilation_rate, 1, activation, use_bias,
                         depthwise_initializer, bias_initializer)
        self.depth_multiplier = depth_multiplier

    def build(self, ctx, x):
        self.build_depthwise(ctx, x)
        if self.use_bias:
            self.bias = ctx.add_weight(self, "bias", (self.filters,), x.dtype, self.bias_initializer)

    def build_depthwise(self, ctx, x):
        """The depthwise kernel; one group per input channel."""
        self.check_input(x)
        channels = x.shape[-1]
        self.groups, self.filters = channels, channels * self.depth_multiplier
        self.depthwise = ctx.add_weight(self, self.depthwise_weight, self.kernel_size + (channels, self.depth_multiplier),
                                        x.dtype, self.kernel_initializer)

    def onnx_kernel(self, ctx):
        """Keras's [kh, kw, in, multiplier] as the grouped convolution's [kh, kw, 1, in * multiplier]."""
        return kernel_to_onnx(ctx, ctx.op("Reshape", self.depthwise, shape=self.kernel_size + (1, self.filters)))


class SeparableConv2D(DepthwiseConv2D):
    """Depthwise then pointwise 2-D convolution (Keras's SeparableConv2D): each channel's own
    spatial kernels, then a 1x1 convolution to ``filters`` channels, the bias and activation
    after both.

    Args:
        filters: number of output channels.
        kernel_size, strides, padding, depth_multiplier, dilation_rate: the depthwise step's.
        activation: linear by default. use_bias: true.
        depthwise_initializer, pointwise_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: depthwise_kernel [kh, kw, in_channels, depth_multiplier], pointwise_kernel
    [1, 1, in_channels * depth_multiplier, filters], bias [filters]; Keras's
    depthwise_regularizer, pointwise_regularizer and bias_regularizer.
    """
    depthwise_weight = "depthwise_kernel"
    regularizer_arguments = {"depthwise_regularizer": "depthwise_kernel", "pointwise_regularizer": "pointwise_kernel",
                             "bias_regularizer": "bias"}

    def __init__(self, filters: IntArg(1), kernel_size: Ints(2), strides: Ints(2) = (1, 1),
                 padding: Choice("valid", "same") = "valid", depth_multiplier: IntArg(1) = 1,
                 dilation_rate: Ints(2) = (1, 1), activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 depthwise_initializer: InitializerArg() = ("glorot_uniform", ()),
                 pointwise_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(kernel_size, strides, padding, depth_multiplier, dilation_rate, activation, use_bias,
                         depthwise_initializer, bias_initializer)
        self.pointwise_filters, self.pointwise_initializer = filters, pointwise_initializer

    def build(self, ctx, x):
        self.build_depthwise(ctx, x)
        shape = (1,) * self.rank + (self.filters, self.pointwise_filters)
        self.pointwise = ctx.add_weight(self, "pointwise_kernel", shape, x.dtype, self.pointwise_initializer)
        if self.use_bias:
            self.bias = ctx.add_weight(self, "bias", (self.pointwise_filters,), x.dtype, self.bias_initializer)

    def after_conv(self, ctx, y):  # (the pointwise 1x1 convolution)
        return ctx.op("Conv", y, kernel_to_onnx(ctx, self.pointwise), strides=(1,) * self.rank,
                      pads=(0,) * (2 * self.rank), dilations=(1,) * self.rank, group=1)


class Conv2DTranspose(_Conv):
    """Transposed 2-D convolution (the gradient of Conv2D), upsampling by ``strides``.

    Args:
        filters: number of output channels.
        kernel_size: an int or (kh, kw).
        strides: an int or (sh, sw); 1.
        padding: valid (output = input * stride + max(k - stride, 0)) or same (input * stride).
        output_padding: none, or an int or pair added to the output size.
        dilation_rate: 1.
        activation: linear by default.
        use_bias: true.
        kernel_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [kh, kw, filters, in_channels] (Keras's layout), bias [filters].
    """

    def __init__(self, filters: IntArg(1), kernel_size: Ints(2), strides: Ints(2) = (1, 1),
                 padding: Choice("valid", "same") = "valid", output_padding: Optional(Ints(2, 0)) = None,
                 dilation_rate: Ints(2) = (1, 1), activation: ActivationArg() = "linear",
                 use_bias: BoolArg() = True, kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, 1, activation, use_bias,
                         kernel_initializer, bias_initializer)
        if output_padding is not None and any(p >= s for p, s in zip(output_padding, self.strides)):
            raise ArgError(f"{self.kind()}: output_padding {output_padding} must be below strides "
                           f"{self.strides} (as in Keras)")
        self.output_padding = output_padding

    def build(self, ctx, x):
        self.check_input(x)
        self.kernel = ctx.add_weight(self, "kernel", self.kernel_size + (self.filters, x.shape[-1]), x.dtype,
                                     self.kernel_initializer)
        if self.use_bias:
            self.bias = ctx.add_weight(self, "bias", (self.filters,), x.dtype, self.bias_initializer)

    def geometry(self, x):
        """ONNX pads and output_padding reproducing Keras's output size (as TensorFlow's
        conv2d_transpose pads: the gradient of a forward conv with the same padding)."""
        begin, end, out_pad = [], [], []
        for i in range(self.rank):
            size, s = x.shape[1 + i], self.strides[i]
            k = self.dilation_rate[i] * (self.kernel_size[i] - 1) + 1
            if not isinstance(size, int):
                sizes = {1: "steps", 2: "height and width", 3: "depth, height and width"}[self.rank]
                raise ShapeError(f"{self.kind()} needs known input {sizes}")
            extra = self.output_padding[i] if self.output_padding else None
            if extra is None:
                out = size * s if self.padding == "same" else size * s + max(k - s, 0)
            else:
                pad = k // 2 if self.padding == "same" else 0
                out = (size - 1) * s + k - 2 * pad + extra
            full = (size - 1) * s + k  # the output before any cropping
            total = max(full - out, 0) if self.padding == "same" else 0
            begin.append(total // 2)
            end.append(total - total // 2)
            out_pad.append(out - (full - total))
        return tuple(begin + end), tuple(out_pad)

    def call(self, ctx, x):
        self.check_input(x)
        pads, out_pad = self.geometry(x)
        y = ctx.op("ConvTranspose", to_channels_first(ctx, x), kernel_to_onnx(ctx, self.kernel), strides=self.strides,
                   pads=pads, output_padding=out_pad, dilations=self.dilation_rate)
        y = to_channels_last(ctx, y)
        if self.use_bias:
            y = ctx.op("Add", y, self.bias)
        return apply_activation(ctx, self.activation, y)


class Conv1DTranspose(Conv2DTranspose):
    """Transposed 1-D convolution over [steps, channels] (the gradient of Conv1D), upsampling by ``strides``.

    Args:
        filters: number of output channels.
        kernel_size: an int.
        strides: 1.
        padding: valid (output = steps * stride + max(k - stride, 0)) or same (steps * stride).
        output_padding: none, or an int (below strides) added to the output length.
        dilation_rate: 1.
        activation: linear by default.
        use_bias: true.
        kernel_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [k, filters, in_channels] (Keras's layout), bias [filters].
    """
    rank = 1
    layout = "[steps, channels]"

    def __init__(self, filters: IntArg(1), kernel_size: Ints(1), strides: Ints(1) = (1,),
                 padding: Choice("valid", "same") = "valid", output_padding: Optional(Ints(1, 0)) = None,
                 dilation_rate: Ints(1) = (1,), activation: ActivationArg() = "linear",
                 use_bias: BoolArg() = True, kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(filters, kernel_size, strides, padding, output_padding, dilation_rate, activation, use_bias,
                         kernel_initializer, bias_initializer)


class Conv3DTranspose(Conv2DTranspose):
    """Transposed 3-D convolution over [depth, height, width, channels] (the gradient of Conv3D),
    upsampling by ``strides``.

    Args:
        filters: number of output channels.
        kernel_size: an int or (kd, kh, kw).
        strides: an int or (sd, sh, sw); 1.
        padding: valid (output = input * stride + max(k - stride, 0)) or same (input * stride).
        output_padding: none, or an int or triple (each below strides) added to the output size.
        dilation_rate: an int or (dd, dh, dw); 1.
        activation: linear by default.
        use_bias: true.
        kernel_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [kd, kh, kw, filters, in_channels] (Keras's layout), bias [filters].
    """
    rank = 3
    layout = "[depth, height, width, channels]"

    def __init__(self, filters: IntArg(1), kernel_size: Ints(3), strides: Ints(3) = (1, 1, 1),
                 padding: Choice("valid", "same") = "valid", output_padding: Optional(Ints(3, 0)) = None,
                 dilation_rate: Ints(3) = (1, 1, 1), activation: ActivationArg() = "linear",
                 use_bias: BoolArg() = True, kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(filters, kernel_size, strides, padding, output_padding, dilation_rate, activation, use_bias,
                         kernel_initializer, bias_initializer)


class DepthwiseConv1D(DepthwiseConv2D):
    """Depthwise 1-D convolution over [steps, channels]: each input channel convolved with its
    own ``depth_multiplier`` kernels, as Keras.

    Args:
        kernel_size: an int.
        strides: 1.
        padding: valid or same (Keras takes no causal here).
        depth_multiplier: output channels per input channel; 1.
        dilation_rate: 1.
        activation: linear by default.
        use_bias: true.
        depthwise_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: kernel [k, in_channels, depth_multiplier], bias [in_channels * depth_multiplier]
    (output channel c * depth_multiplier + m); Keras's depthwise_regularizer and bias_regularizer.
    """
    rank = 1
    layout = "[steps, channels]"

    def __init__(self, kernel_size: Ints(1), strides: Ints(1) = (1,), padding: Choice("valid", "same") = "valid",
                 depth_multiplier: IntArg(1) = 1, dilation_rate: Ints(1) = (1,),
                 activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 depthwise_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(kernel_size, strides, padding, depth_multiplier, dilation_rate, activation, use_bias,
                         depthwise_initializer, bias_initializer)


class SeparableConv1D(SeparableConv2D):
    """Depthwise then pointwise 1-D convolution over [steps, channels] (Keras's SeparableConv1D),
    the bias and activation after both.

    Args:
        filters: number of output channels.
        kernel_size, strides, padding (valid or same), depth_multiplier, dilation_rate: the depthwise step's.
        activation: linear by default. use_bias: true.
        depthwise_initializer, pointwise_initializer: glorot_uniform. bias_initializer: zeros.

    Weights: depthwise_kernel [k, in_channels, depth_multiplier], pointwise_kernel
    [1, in_channels * depth_multiplier, filters], bias [filters]; Keras's depthwise_regularizer,
    pointwise_regularizer and bias_regularizer.
    """
    rank = 1
    layout = "[steps, channels]"

    def __init__(self, filters: IntArg(1), kernel_size: Ints(1), strides: Ints(1) = (1,),
                 padding: Choice("valid", "same") = "valid", depth_multiplier: IntArg(1) = 1,
                 dilation_rate: Ints(1) = (1,), activation: ActivationArg() = "linear", use_bias: BoolArg() = True,
                 depthwise_initializer: InitializerArg() = ("glorot_uniform", ()),
                 pointwise_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        super().__init__(filters, kernel_size, strides, padding, depth_multiplier, dilation_rate, activation,
                         use_bias, depthwise_initializer, pointwise_initializer, bias_initializer)
