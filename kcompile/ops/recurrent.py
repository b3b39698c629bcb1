"""Recurrent ops. LSTM takes Keras's weight layouts and gate order (i, f, c, o);
its lowering reorders them for ONNX's LSTM (i, o, f, c, weights transposed)."""
from __future__ import annotations

from ..errors import ShapeError, format_shape
from ..ir import TensorType
from .base import Op, register


@register
class LSTM(Op):
    """x [N, T, I], kernel [I, 4u], recurrent_kernel [u, 4u], bias [4u] (optional)
    -> sequence [N, T, u], last h [N, u], last c [N, u]."""
    name = "LSTM"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, k, r = ins[:3]
        u = attrs["units"]
        if x.rank != 3:
            raise ShapeError(f"LSTM expects an input of shape [timesteps, features], got {format_shape(x.shape[1:])}")
        if k.shape != (x.shape[2], 4 * u) or r.shape != (u, 4 * u) or (len(ins) == 4 and ins[3].shape != (4 * u,)):
            raise ShapeError("LSTM weights do not match the input and units")
        n, t = x.shape[0], x.shape[1]
        return [TensorType(x.dtype, (n, t, u)), TensorType(x.dtype, (n, u)), TensorType(x.dtype, (n, u))]

    def lower(self, ctx, inputs, outputs, attrs):
        x, kernel, recurrent = inputs[:3]
        u = attrs["units"]
        dtype = ctx.dtype(x)

        def onnx_gates(w, axis):  # Keras i, f, c, o -> ONNX i, o, f, c along ``axis``
            i, f, c, o = ctx.emit("Split", [w, ctx.const([u] * 4, "int64")], [ctx.fresh("gate") for _ in range(4)],
                                  axis=axis)
            return ctx.emit("Concat", [i, o, f, c], axis=axis)

        def weight(w):  # [in, 4u] -> [1, 4u, in]
            t = ctx.emit("Transpose", [onnx_gates(w, 1)], perm=[1, 0])
            return ctx.emit("Unsqueeze", [t, ctx.const([0], "int64")])

        ins = [ctx.emit("Transpose", [x], perm=[1, 0, 2]), weight(kernel), weight(recurrent)]
        if len(inputs) == 4:
            b = ctx.emit("Concat", [onnx_gates(inputs[3], 0), ctx.const([0.0] * (4 * u), dtype)], axis=0)
            ins.append(ctx.emit("Unsqueeze", [b, ctx.const([0], "int64")]))
        y, h, c = ctx.emit("LSTM", ins, [ctx.fresh("lstm_y"), ctx.fresh("lstm_h"), ctx.fresh("lstm_c")],
                           hidden_size=u,
                           activations=[attrs.get("recurrent_activation", "Sigmoid"), attrs.get("activation", "Tanh"),
                                        attrs.get("activation", "Tanh")])
        y = ctx.emit("Squeeze", [y, ctx.const([1], "int64")])  # [T, 1, N, u] -> [T, N, u]
        ctx.emit("Transpose", [y], [outputs[0]], perm=[1, 0, 2])
        ctx.emit("Squeeze", [h, ctx.const([0], "int64")], [outputs[1]])
        ctx.emit("Squeeze", [c, ctx.const([0], "int64")], [outputs[2]])
