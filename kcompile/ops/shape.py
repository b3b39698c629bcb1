"""Ops that move data without arithmetic, and reductions."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError, format_shape
from ..ir import TensorType
from ..ir.types import normalize_axis
from .base import Op, register


@register
class Transpose(Op):
    """attrs: perm."""
    name = "Transpose"
    onnx_op = "Transpose"

    def infer(self, ins, attrs):
        x, = ins
        perm = tuple(attrs["perm"])
        if sorted(perm) != list(range(x.rank)):
            raise ShapeError(f"Transpose perm {perm} does not fit rank {x.rank}")
        return [x.with_shape(x.shape[p] for p in perm)]


def reshape_target(in_shape, shape):
    """ONNX Reshape semantics: 0 copies the input dimension, -1 is inferred."""
    out = [in_shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if -1 in out:
        known = [d for d in out if d != -1]
        rest = [d for d in in_shape]
        if all(isinstance(d, int) for d in rest + known):
            total, part = int(np.prod(rest)), int(np.prod(known))
            if part == 0 or total % part:
                raise ShapeError(f"cannot reshape {format_shape(in_shape)} to {format_shape(shape)}")
            out[out.index(-1)] = total // part
        else:
            # Symbolic: the -1 absorbs the symbolic dims if the static parts divide.
            sym_in = [d for d in rest if not isinstance(d, int)]
            sym_out = [d for d in known if not isinstance(d, int)]
            if sorted(map(str, sym_in)) != sorted(map(str, sym_out)):
                out[out.index(-1)] = "?"
            else:
                total = int(np.prod([d for d in rest if isinstance(d, int)]))
                part = int(np.prod([d for d in known if isinstance(d, int)]))
                if part == 0 or total % part:
                    raise ShapeError(f"cannot reshape {format_shape(in_shape)} to {format_shape(shape)}")
                out[out.index(-1)] = total // part
    else:
        def static(s):
            return int(np.prod([d for d in s if isinstance(d, int)]))
        if sorted(str(d) for d in in_shape if not isinstance(d, int)) != \
                sorted(str(d) for d in out if not isinstance(d, int)) or static(in_shape) != static(out):
            raise ShapeError(f"cannot reshape {format_shape(in_shape)} ({static(in_shape)} elements per "
                             f"batch item) to {format_shape(out)}")
    return tuple(out)


@register
class Reshape(Op):
    """attrs: shape (ONNX semantics: 0 copies the input dimension, -1 is inferred)."""
    name = "Reshape"

    def infer(self, ins, attrs):
        return [ins[0].with_shape(reshape_target(ins[0].shape, attrs["shape"]))]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Reshape", [inputs[0], ctx.const(list(attrs["shape"]), "int64")], outputs)


@register
class Flatten(Op):
    """[d0, ..., d_{axis-1}, rest...] -> [d0 * ... * d_{axis-1}, prod(rest)]; attrs: axis (1)."""
    name = "Flatten"
    onnx_op = "Flatten"

    def infer(self, ins, attrs):
        x, = ins
        axis = attrs.get("axis", 1)
        head, tail = x.shape[:axis], x.shape[axis:]
        def prod(s):
            return int(np.prod(s)) if all(isinstance(d, int) for d in s) else (s[0] if len(s) == 1 else "?")
        return [x.with_shape((prod(head), prod(tail)))]


@register
class Concat(Op):
    """attrs: axis."""
    name = "Concat"
    onnx_op = "Concat"

    def infer(self, ins, attrs):
        first = ins[0]
        axis = normalize_axis(attrs["axis"], first.rank)
        total = 0
        for t in ins:
            if t.rank != first.rank or t.dtype != first.dtype or \
                    any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
                raise ShapeError("concat needs equal shapes except on the joined axis; got " +
                                 ", ".join(format_shape(t.shape) for t in ins) + f" on axis {attrs['axis']}")
            total = total + t.shape[axis] if isinstance(t.shape[axis], int) and isinstance(total, int) else "?"
        shape = list(first.shape)
        shape[axis] = total
        return [first.with_shape(shape)]


@register
class Unsqueeze(Op):
    """attrs: axes (of the output)."""
    name = "Unsqueeze"

    def infer(self, ins, attrs):
        x, = ins
        rank = x.rank + len(attrs["axes"])
        axes = sorted(normalize_axis(a, rank) for a in attrs["axes"])
        shape = list(x.shape)
        for a in axes:
            shape.insert(a, 1)
        return [x.with_shape(shape)]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Unsqueeze", [inputs[0], ctx.const(list(attrs["axes"]), "int64")], outputs)


@register
class Squeeze(Op):
    """attrs: axes."""
    name = "Squeeze"

    def infer(self, ins, attrs):
        x, = ins
        axes = {normalize_axis(a, x.rank) for a in attrs["axes"]}
        for a in axes:
            if x.shape[a] != 1:
                raise ShapeError(f"cannot squeeze axis {a} of size {x.shape[a]}")
        return [x.with_shape(d for i, d in enumerate(x.shape) if i not in axes)]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Squeeze", [inputs[0], ctx.const(list(attrs["axes"]), "int64")], outputs)


class Reduce(Op):
    """attrs: axes, keepdims (0 or 1)."""

    def infer(self, ins, attrs):
        x, = ins
        axes = {normalize_axis(a, x.rank) for a in attrs.get("axes", range(x.rank))}
        keep = attrs.get("keepdims", 1)
        shape = [1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes]
        return [x.with_shape(shape)]

    def lower(self, ctx, inputs, outputs, attrs):
        attrs = dict(attrs)
        if "axes" in attrs:
            attrs["axes"] = list(attrs["axes"])
        if self.name == "ReduceSum":  # axes became an input of ReduceSum in opset 13
            axes = attrs.pop("axes", None)
            ins = [inputs[0]] + ([ctx.const(axes, "int64")] if axes is not None else [])
            ctx.emit("ReduceSum", ins, outputs, **attrs)
        else:
            ctx.emit(self.name, inputs, outputs, **attrs)


for _name in ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"]:
    register(type(_name, (Reduce,), {"name": _name}))
