"""Neural-network ops, channels-first as in ONNX: Conv, ConvTranspose, pooling,
BatchNormalization, Softmax, Dropout, Gather (embedding lookup)."""
from __future__ import annotations

from ..errors import ShapeError, format_shape
from ..ir import TensorType
from ..ir.types import normalize_axis
from .base import Op, register
from .linalg import lower_activation


def conv_output_size(size, kernel, stride, pad_begin, pad_end, dilation=1):
    if not isinstance(size, int):
        return size
    effective = dilation * (kernel - 1) + 1
    out = (size + pad_begin + pad_end - effective) // stride + 1
    if out < 1:
        raise ShapeError(f"the window ({effective}) is larger than the padded input ({size + pad_begin + pad_end})",
                         hint="use padding=same, a smaller kernel, or remove a pooling layer")
    return out


def _spatial_attrs(attrs, n):
    strides = tuple(attrs.get("strides", (1,) * n))
    dilations = tuple(attrs.get("dilations", (1,) * n))
    pads = tuple(attrs.get("pads", (0,) * (2 * n)))
    return strides, dilations, pads


@register
class Conv(Op):
    """x [N, C, *spatial], W [O, C/group, *kernel], b [O] (optional).
    attrs: strides, pads, dilations, group, activation (fused, optional)."""
    name = "Conv"
    onnx_op = "Conv"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, w = ins[0], ins[1]
        n = x.rank - 2
        if n < 1 or w.rank != x.rank:
            raise ShapeError(f"Conv of input {format_shape(x.shape)} with kernel {format_shape(w.shape)}")
        group = attrs.get("group", 1)
        if x.shape[1] != w.shape[1] * group:
            raise ShapeError(f"Conv kernel expects {w.shape[1] * group} input channels, got {x.shape[1]}")
        if len(ins) == 3 and ins[2].shape != (w.shape[0],):
            raise ShapeError(f"Conv bias {format_shape(ins[2].shape)} does not match {w.shape[0]} filters")
        strides, dilations, pads = _spatial_attrs(attrs, n)
        spatial = tuple(conv_output_size(x.shape[2 + i], w.shape[2 + i], strides[i], pads[i], pads[n + i],
                                         dilations[i]) for i in range(n))
        return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + spatial)]

    def lower(self, ctx, inputs, outputs, attrs):
        act = attrs.get("activation")
        attrs = {k: v for k, v in attrs.items() if k != "activation"}
        out = [ctx.fresh(outputs[0] + "/conv")] if act else outputs
        ctx.emit(self.onnx_op, inputs, out, **attrs)
        if act:
            lower_activation(ctx, act, out[0], outputs)


@register
class ConvTranspose(Op):
    """x [N, C, *spatial], W [C, O/group, *kernel], b [O] (optional).
    attrs: strides, pads, output_padding, dilations, group, activation (fused, optional)."""
    name = "ConvTranspose"
    onnx_op = "ConvTranspose"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, w = ins[0], ins[1]
        n = x.rank - 2
        group = attrs.get("group", 1)
        if n < 1 or w.rank != x.rank or x.shape[1] != w.shape[0]:
            raise ShapeError(f"ConvTranspose of input {format_shape(x.shape)} with kernel {format_shape(w.shape)}")
        strides, dilations, pads = _spatial_attrs(attrs, n)
        out_pad = tuple(attrs.get("output_padding", (0,) * n))
        spatial = []
        for i in range(n):
            s = x.shape[2 + i]
            if isinstance(s, int):
                s = strides[i] * (s - 1) + out_pad[i] + (w.shape[2 + i] - 1) * dilations[i] + 1 - pads[i] - pads[n + i]
            spatial.append(s)
        return [TensorType(x.dtype, (x.shape[0], w.shape[1] * group) + tuple(spatial))]

    lower = Conv.lower


class Pool(Op):
    """x [N, C, *spatial]. attrs: kernel_shape, strides, pads (and count_include_pad for averages)."""

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, = ins
        k = attrs["kernel_shape"]
        n = len(k)
        if x.rank != n + 2:
            raise ShapeError(f"{self.name} with a {n}-d window needs a rank-{n + 2} input, got {format_shape(x.shape)}")
        strides, _, pads = _spatial_attrs(attrs, n)
        spatial = tuple(conv_output_size(x.shape[2 + i], k[i], strides[i], pads[i], pads[n + i]) for i in range(n))
        return [TensorType(x.dtype, x.shape[:2] + spatial)]


@register
class MaxPool(Pool):
    name = "MaxPool"
    onnx_op = "MaxPool"


@register
class AveragePool(Pool):
    name = "AveragePool"
    onnx_op = "AveragePool"


@register
class BatchNormalization(Op):
    """Inference form: (x - mean) / sqrt(var + epsilon) * scale + bias along channel ``axis``.
    inputs: x, scale, bias, mean, var. attrs: axis, epsilon."""
    name = "BatchNormalization"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x = ins[0]
        axis = normalize_axis(attrs.get("axis", 1), x.rank)
        for t in ins[1:]:
            if t.shape != (x.shape[axis],):
                raise ShapeError(f"BatchNormalization statistics {format_shape(t.shape)} do not match "
                                 f"{x.shape[axis]} channels")
        return [x]

    def lower(self, ctx, inputs, outputs, attrs):
        x, scale, bias, mean, var = inputs
        rank = len(ctx.shape(x))
        axis = normalize_axis(attrs.get("axis", 1), rank)
        eps = attrs.get("epsilon", 1e-3)
        if axis == 1 and rank >= 2:
            ctx.emit("BatchNormalization", inputs, outputs, epsilon=eps)
            return
        # Channels elsewhere: y = x * s + (bias - mean * s), s = scale / sqrt(var + eps), broadcast on axis.
        t = ctx.dtype(x)
        s = ctx.emit("Div", [scale, ctx.emit("Sqrt", [ctx.emit("Add", [var, ctx.const(eps, t)])])])
        shift = ctx.emit("Sub", [bias, ctx.emit("Mul", [mean, s])])
        shape = [1] * (rank - axis)
        shape[0] = -1
        s, shift = (ctx.emit("Reshape", [v, ctx.const(shape, "int64")]) for v in (s, shift))
        ctx.emit("Add", [ctx.emit("Mul", [x, s]), shift], outputs)


@register
class Softmax(Op):
    """attrs: axis (default -1)."""
    name = "Softmax"
    onnx_op = "Softmax"

    def infer(self, ins, attrs):
        self.check_float(ins)
        normalize_axis(attrs.get("axis", -1), ins[0].rank)
        return [ins[0]]


@register
class LogSoftmax(Softmax):
    name = "LogSoftmax"
    onnx_op = "LogSoftmax"


@register
class Dropout(Op):
    """attrs: rate. Identity at inference (removed by a pass); training arrives with autodiff."""
    name = "Dropout"
    ir_only_attrs = ("rate", "noise_shape")

    def infer(self, ins, attrs):
        return [ins[0]]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Identity", inputs[:1], outputs)


@register
class Gather(Op):
    """table [V, D...], indices (int) -> indices.shape + table.shape[1:]. attrs: axis (0)."""
    name = "Gather"
    onnx_op = "Gather"

    def infer(self, ins, attrs):
        table, idx = ins
        if idx.is_float:
            raise ShapeError(f"Gather indices must be integers, got {idx}")
        axis = normalize_axis(attrs.get("axis", 0), table.rank)
        return [TensorType(table.dtype, table.shape[:axis] + idx.shape + table.shape[axis + 1:])]
