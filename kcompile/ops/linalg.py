"""Matrix products: MatMul (numpy semantics) and Gemm (x @ W + b, optionally with a fused activation)."""
from __future__ import annotations

from ..errors import ShapeError, format_shape
from ..ir import TensorType, broadcast_shapes
from .base import Op, register


def lower_fused(ctx, onnx_op, inputs, outputs, attrs):
    """Lower an op that may carry a fused ``activation`` attribute: the op, then the activation."""
    act = attrs.get("activation")
    attrs = {k: v for k, v in attrs.items() if k != "activation"}
    out = [ctx.fresh(f"{outputs[0]}/{onnx_op.lower()}")] if act else outputs
    ctx.emit(onnx_op, inputs, out, **attrs)
    if act:
        lower_activation(ctx, act, out[0], outputs)


def lower_activation(ctx, activation, x, outputs=None):
    """Emit a fused activation: ``activation`` is (unary op name, ((attr, value), ...)) or None."""
    from .base import OPS
    outputs = outputs or [ctx.fresh("activation")]
    if not activation:
        ctx.emit("Identity", [x], outputs)
    else:
        op, attrs = activation
        OPS[op].lower(ctx, [x], outputs, dict(attrs))
    return outputs[0]


@register
class MatMul(Op):
    name = "MatMul"
    onnx_op = "MatMul"

    def infer(self, ins, attrs):
        a, b = ins
        self.check_float(ins)
        if a.rank < 1 or b.rank < 1:
            raise ShapeError("MatMul needs operands of rank >= 1")
        if a.dtype != b.dtype:
            raise ShapeError(f"matmul of {a.dtype} and {b.dtype}: operands must have one dtype",
                             "cast one: cast(x, float32)")
        sa = a.shape if a.rank > 1 else (1,) + a.shape
        sb = b.shape if b.rank > 1 else b.shape + (1,)
        if sa[-1] != sb[-2]:
            raise ShapeError(f"matmul of {format_shape(a.shape)} and {format_shape(b.shape)}: "
                             f"inner dimensions {sa[-1]} and {sb[-2]} differ")
        batch = broadcast_shapes(sa[:-2], sb[:-2])
        out = batch + (sa[-2],) * (a.rank > 1) + (sb[-1],) * (b.rank > 1)
        return [TensorType(a.dtype, out)]

    def macs(self, ins, outs, attrs):
        return outs[0].shape[1:] + ins[1].shape[-2 if ins[1].rank > 1 else -1:][:1]  # x the inner size

    def grad(self, ctx, node, dys):
        a, b = node.inputs
        dy, = dys
        ta, tb = ctx.type(a), ctx.type(b)
        if ta.rank < 2 or tb.rank < 2:
            raise NotImplementedError("gradient of matmul with a vector operand")
        swap = lambda v: ctx.op("Transpose", v, perm=tuple(range(ctx.type(v).rank - 2)) +
                                (ctx.type(v).rank - 1, ctx.type(v).rank - 2))
        da = ctx.sum_to(ctx.op("MatMul", dy, swap(b)), a)
        if tb.rank == 2 and ta.rank > 2:
            # Fold the batch axes into rows: one GEMM instead of a batched product and a sum.
            k, n = tb.shape
            a2 = ctx.op("Reshape", a, shape=(-1, k))
            dy2 = ctx.op("Reshape", dy, shape=(-1, n))
            db = ctx.op("MatMul", swap(a2), dy2)
        else:
            db = ctx.sum_to(ctx.op("MatMul", swap(a), dy), b)
        return [da, db]


def _flip(shape, transposed):
    return tuple(reversed(shape)) if transposed else tuple(shape)


@register
class Gemm(Op):
    """y = activation(op(x) @ op(W) + b), op transposing an operand whose flag is set; op(x) is
    [M, K], op(W) [K, N], b (optional) [N] or [1, N] per column, or [M, 1] per row (a
    feature-major Dense: W^T x^T + b). attrs: transA, transB (0), activation."""
    name = "Gemm"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, w = ins[0], ins[1]
        if x.rank != 2 or w.rank != 2:
            raise ShapeError(f"Gemm of {format_shape(x.shape)} and {format_shape(w.shape)}")
        (m, k), (k2, n) = _flip(x.shape, attrs.get("transA")), _flip(w.shape, attrs.get("transB"))
        if k != k2:
            raise ShapeError(f"Gemm of {format_shape(x.shape)} and {format_shape(w.shape)}")
        if len(ins) == 3 and ins[2].shape not in ((n,), (1, n), (m, 1)):
            raise ShapeError(f"Gemm bias {format_shape(ins[2].shape)} does not match {n} units")
        return [TensorType(x.dtype, (m, n))]

    def macs(self, ins, outs, attrs):
        return outs[0].shape[1:] + _flip(ins[1].shape, attrs.get("transB"))[:1]  # x the inner size

    def lower(self, ctx, inputs, outputs, attrs):
        lower_fused(ctx, "Gemm", inputs, outputs, {k: v for k, v in attrs.items() if v or k == "activation"})

    def grad(self, ctx, node, dys):
        if node.attrs.get("activation"):
            raise NotImplementedError("gradient of a Gemm with a fused activation (fuse after autodiff)")
        x, w = node.inputs[:2]
        ta, tb = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
        dy, = dys
        def op(v, transposed):
            return ctx.op("Transpose", v, perm=(1, 0)) if transposed else v
        # With A = op(x), B = op(W): dA = dy B^T and dB = A^T dy, each transposed back to its operand.
        dx = ctx.op("MatMul", op(w, tb), op(dy, 1)) if ta else ctx.op("MatMul", dy, op(w, not tb))
        dw = ctx.op("MatMul", op(dy, 1), op(x, ta)) if tb else ctx.op("MatMul", op(x, not ta), dy)
        grads = [dx, dw]
        if len(node.inputs) == 3:
            grads.append(ctx.sum_to(dy, node.inputs[2]))
        return grads
