"""Ops that move data without arithmetic, and reductions."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..errors import ShapeError, format_shape
from ..ir import TensorType
from ..ir.types import BATCH, check_one_dtype, normalize_axis, offset_dim
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

    def grad(self, ctx, node, dys):
        perm = tuple(node.attrs["perm"])
        inverse = tuple(perm.index(i) for i in range(len(perm)))
        return [ctx.op("Transpose", dys[0], perm=inverse)]


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
            # Symbolic: the -1 absorbs the symbolic input dims the output does not name.
            remaining = [str(d) for d in rest if not isinstance(d, int)]
            for d in known:
                if not isinstance(d, int) and str(d) in remaining:
                    remaining.remove(str(d))
            total = int(np.prod([d for d in rest if isinstance(d, int)]))
            part = int(np.prod([d for d in known if isinstance(d, int)]))
            if part == 0 or total % part:
                raise ShapeError(f"cannot reshape {format_shape(in_shape)} to {format_shape(shape)}")
            if not remaining:
                out[out.index(-1)] = total // part
            elif len(remaining) == 1 and total == part:
                out[out.index(-1)] = remaining[0]
            else:
                out[out.index(-1)] = "?"
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

    def grad(self, ctx, node, dys):
        return [reshape_like(ctx, dys[0], node.inputs[0])]


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

    def grad(self, ctx, node, dys):
        return [reshape_like(ctx, dys[0], node.inputs[0])]


@register
class Concat(Op):
    """attrs: axis."""
    name = "Concat"
    onnx_op = "Concat"

    def infer(self, ins, attrs):
        first = ins[0]
        axis = normalize_axis(attrs["axis"], first.rank)
        check_one_dtype("concat", ins, "operands")
        total = 0
        for t in ins:
            if t.rank != first.rank or \
                    any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
                raise ShapeError("concat needs equal shapes except on the joined axis; got " +
                                 ", ".join(format_shape(t.shape) for t in ins) + f" on axis {attrs['axis']}")
            total = total + t.shape[axis] if isinstance(t.shape[axis], int) and isinstance(total, int) else "?"
        shape = list(first.shape)
        shape[axis] = total
        return [first.with_shape(shape)]

    def grad(self, ctx, node, dys):
        axis = node.attrs["axis"] % ctx.type(node.outputs[0]).rank
        grads, start = [], 0
        for v in node.inputs:
            size = ctx.type(v).shape[axis]
            if not isinstance(size, int):
                raise NotImplementedError(f"gradient of a concatenation along the named dimension {size}")
            grads.append(ctx.op("Slice", dys[0], starts=(start,), ends=(start + size,), axes=(axis,)))
            start += size
        return grads


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

    def grad(self, ctx, node, dys):
        return [ctx.op("Squeeze", dys[0], axes=tuple(node.attrs["axes"]))]


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

    def grad(self, ctx, node, dys):
        rank = ctx.type(node.inputs[0]).rank
        return [ctx.op("Unsqueeze", dys[0], axes=tuple(sorted(a % rank for a in node.attrs["axes"])))]


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
        if self.name == "ReduceSum" and _lower_sum_as_product(ctx, inputs[0], outputs[0], attrs):
            return
        if self.name == "ReduceSum":  # axes became an input of ReduceSum in opset 13
            axes = attrs.pop("axes", None)
            ins = [inputs[0]] + ([ctx.const(axes, "int64")] if axes is not None else [])
            ctx.emit("ReduceSum", ins, outputs, **attrs)
        else:
            ctx.emit(self.name, inputs, outputs, **attrs)


    def grad(self, ctx, node, dys):
        x, y = node.inputs[0], node.outputs[0]
        rank = ctx.type(x).rank
        axes = tuple(sorted(a % rank for a in node.attrs.get("axes", range(rank))))
        dy = dys[0]
        if not node.attrs.get("keepdims", 1):
            dy = ctx.op("Unsqueeze", dy, axes=axes)
            y = ctx.op("Unsqueeze", y, axes=axes)
        if self.name == "ReduceMean":  # dy / count, spread (divided before it is spread: fewer elements)
            dims = [ctx.type(x).shape[a] for a in axes]
            if all(isinstance(d, int) for d in dims):
                count = ctx.const(float(np.prod(dims)), ctx.type(x).dtype)
            elif ctx.type(node.outputs[0]).rank == 0:  # a mean of everything: count every element
                count = ctx.op("Cast", ctx.op("Size", x), to=ctx.type(x).dtype)
            else:  # a symbolic (batch) axis among others: count at run time
                count = ctx.op("Cast", ctx.op("Div", ctx.op("Size", x), ctx.op("Size", node.outputs[0])),
                               to=ctx.type(x).dtype)
            return [ctx.op("ExpandLike", ctx.op("Div", dy, count), x)]
        if self.name == "ReduceSum":
            return [ctx.op("ExpandLike", dy, x)]
        # Max/Min: the gradient flows to the elements equal to the result, shared equally where
        # several are (ties, as TensorFlow and JAX: a tie is common, say repeated ids into a
        # global max pooling)
        hit = ctx.op("Cast", ctx.op("Equal", x, ctx.op("ExpandLike", y, x)), to=ctx.type(x).dtype)
        ties = ctx.op("ReduceSum", hit, axes=axes, keepdims=1)
        return [ctx.op("Mul", ctx.op("ExpandLike", ctx.op("Div", dy, ties), x), hit)]


# onnxruntime's ReduceSum over the leading (batch) axis is slow: 45 us for a [128, 512] bias
# gradient, where a product with a row of ones takes 7 us. A convolution's bias gradient
# (axes 0, 2, 3) first sums each map's contiguous pixels: 40 -> 28 us for [128, 64, 10, 10].
SUM_AS_PRODUCT_MIN_COLUMNS = 64


def _lower_sum_as_product(ctx, x, out, attrs) -> bool:
    """ReduceSum over the leading axis (after summing any trailing spatial axes) as
    ones[1, N] @ x; False where the plain ReduceSum is kept."""
    shape = ctx.shape(x)
    rank = len(shape)
    axes = sorted(normalize_axis(a, rank) for a in attrs.get("axes", range(rank)))
    dtype = ctx.dtype(x)
    if rank < 2 or dtype not in ("float32", "float64") or not all(isinstance(d, int) for d in shape[1:]):
        return False
    if axes == [0]:
        columns = shape[1:]
    elif rank >= 3 and axes == [0] + list(range(2, rank)):  # per-channel sums of [N, C, *spatial]
        columns = shape[1:2]
    else:
        return False
    if int(np.prod(columns)) < SUM_AS_PRODUCT_MIN_COLUMNS:
        return False
    if axes == [0]:  # rows of [N, columns]; a reshape would copy a tensor the backward pass reads twice
        rows = x if rank == 2 else ctx.emit("Reshape", [x, ctx.const([0, int(np.prod(shape[1:]))], "int64")])
    else:
        rows = ctx.emit("ReduceSum", [ctx.emit("Reshape", [x, ctx.const([0, shape[1], -1], "int64")]),
                                      ctx.const([2], "int64")], keepdims=0)
    count = ctx.emit("Concat", [ctx.const([1], "int64"), ctx.emit("Shape", [x], end=1)], axis=0)
    ones = ctx.emit("ConstantOfShape", [count], value=numpy_helper.from_array(np.ones(1, dtype)))
    ctx.emit("Reshape", [ctx.emit("MatMul", [ones, rows]), ctx.const(list(ctx.shape(out)), "int64")], [out])
    return True


for _name in ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"]:
    register(type(_name, (Reduce,), {"name": _name, "onnx_types": _name}))


def reshape_like(ctx, value, like):
    """Reshape ``value`` to the shape of ``like`` (batch dimension copied at run time)."""
    shape = ctx.type(like).shape
    if all(isinstance(d, int) for d in shape):
        return ctx.op("Reshape", value, shape=tuple(shape))
    if all(isinstance(d, int) for d in shape[1:]):
        keep_batch = ctx.type(value).shape[:1] == shape[:1]
        return ctx.op("Reshape", value, shape=(0 if keep_batch else -1,) + tuple(shape[1:]))
    return ctx.op("ReshapeLike", value, like)


@register
class ReshapeLike(Op):
    """Reshape x to the (run-time) shape of like."""
    name = "ReshapeLike"

    def infer(self, ins, attrs):
        return [ins[0].with_shape(ins[1].shape)]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Reshape", [inputs[0], ctx.emit("Shape", [inputs[1]])], outputs)

    def grad(self, ctx, node, dys):
        return [reshape_like(ctx, dys[0], node.inputs[0]), None]


def grown_axes(have: tuple, want: tuple) -> list | None:
    """The axes along which a value of shape ``have`` broadcasts to ``want``, each from 1 to a
    fixed size; None where it broadcasts otherwise (another rank, a run-time size)."""
    if len(have) != len(want):
        return None
    grown = [i for i, (a, b) in enumerate(zip(have, want)) if a != b]
    return grown if all(have[i] == 1 and isinstance(want[i], int) for i in grown) else None


@register
class ExpandLike(Op):
    """Broadcast x to the (run-time) shape of like. Where only trailing axes of x grow, to fixed
    sizes (a pooled gradient spread back over the pooled positions), it is a Mul by ones of those
    sizes: onnxruntime's Expand of [128, 32, 1] to [128, 32, 48] took 456 us on two threads and
    232 on one, the Mul 103 and 155; [64, 16, 1, 1] to [64, 16, 28, 28] 543 and 437 against 155
    and 392. (Growing a middle axis, [128, 1, 64] to [128, 50, 64], the Mul took 268 us on one
    thread against Expand's 136, so that stays an Expand.)"""
    name = "ExpandLike"

    def infer(self, ins, attrs):
        from ..ir import broadcast_shapes
        return [ins[0].with_shape(broadcast_shapes(ins[0].shape, ins[1].shape))]

    def lower(self, ctx, inputs, outputs, attrs):
        want, dtype = ctx.shape(outputs[0]), ctx.dtype(outputs[0])
        grown = grown_axes(ctx.shape(inputs[0]), want)
        if grown and grown == list(range(grown[0], len(want))) and dtype in ("float32", "float64"):
            # (x * 1 is x, -0 and NaN included)
            ctx.emit("Mul", [inputs[0], ctx.const(np.ones(want[grown[0]:]), dtype)], outputs)
            return
        ctx.emit("Expand", [inputs[0], ctx.emit("Shape", [inputs[1]])], outputs)

    def grad(self, ctx, node, dys):
        return [ctx.sum_to(dys[0], node.inputs[0]), None]


@register
class Positions(Op):
    """The positions 0 .. n-1 along ``axis`` of x, int64 [n] (no batch axis): a transformer's
    position ids, n known at run time where the axis is a named size. attrs: axis."""
    name = "Positions"

    def infer(self, ins, attrs):
        x = ins[0]
        axis = normalize_axis(attrs["axis"], x.rank)
        if axis == 0:
            raise ShapeError("positions counts along a step or feature axis, not the batch")
        return [TensorType("int64", (x.shape[axis],))]

    def lower(self, ctx, inputs, outputs, attrs):
        axis = normalize_axis(attrs["axis"], len(ctx.shape(inputs[0])))
        n = ctx.emit("Squeeze", [ctx.emit("Shape", [inputs[0]], start=axis, end=axis + 1), ctx.const([0], "int64")])
        ctx.emit("Range", [ctx.const(0, "int64"), n, ctx.const(1, "int64")], outputs)

    def grad(self, ctx, node, dys):
        return [None]


@register
class Size(Op):
    """Number of elements, an int64 scalar."""
    name = "Size"
    onnx_op = "Size"

    def infer(self, ins, attrs):
        return [TensorType("int64", ())]

    def grad(self, ctx, node, dys):
        return [None]


@register
class Slice(Op):
    """attrs: starts, ends, axes, steps (static; steps default to 1)."""
    name = "Slice"

    def infer(self, ins, attrs):
        x, = ins
        shape = list(x.shape)
        steps = attrs.get("steps", (1,) * len(attrs["axes"]))
        for start, end, axis, step in zip(attrs["starts"], attrs["ends"], attrs["axes"], steps):
            size = shape[axis]
            if isinstance(size, int):
                lo, hi = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
                shape[axis] = max(-(-(hi - lo) // step), 0)
            elif step == 1 and start >= 0 and (end < 0 or end >= 2 ** 31):
                shape[axis] = offset_dim(size, (0 if end >= 2 ** 31 else end) - start)
            else:
                shape[axis] = "?"
        return [x.with_shape(shape)]

    def lower(self, ctx, inputs, outputs, attrs):
        ins = [inputs[0], ctx.const(list(attrs["starts"]), "int64"), ctx.const(list(attrs["ends"]), "int64"),
               ctx.const(list(attrs["axes"]), "int64")]
        if "steps" in attrs:
            ins.append(ctx.const(list(attrs["steps"]), "int64"))
        ctx.emit("Slice", ins, outputs)

    def grad(self, ctx, node, dys):
        if any(s != 1 for s in node.attrs.get("steps", ())):
            raise NotImplementedError("gradient of a strided slice")
        x = ctx.type(node.inputs[0])
        pads = [0] * (2 * x.rank)
        for start, end, axis in zip(node.attrs["starts"], node.attrs["ends"], node.attrs["axes"]):
            size = x.shape[axis]
            if not isinstance(size, int):  # a named size: a start from the front, an end from the back
                if start < 0 or 0 <= end < 2 ** 31:
                    raise NotImplementedError(f"gradient of a slice of the named dimension {size} "
                                              "counted from its other end")
                pads[axis], pads[x.rank + axis] = start, 0 if end >= 2 ** 31 else -end
                continue
            lo, hi = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
            pads[axis], pads[x.rank + axis] = lo, size - hi
        return [ctx.op("Pad", dys[0], pads=tuple(pads))]


@register
class Pad(Op):
    """Zero padding; attrs: pads (begin..., end...)."""
    name = "Pad"

    def infer(self, ins, attrs):
        x, = ins
        n, pads = x.rank, attrs["pads"]
        return [x.with_shape(d if d == BATCH else offset_dim(d, pads[i] + pads[n + i]) for i, d in enumerate(x.shape))]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Pad", [inputs[0], ctx.const(list(attrs["pads"]), "int64")], outputs)

    def grad(self, ctx, node, dys):
        x = ctx.type(node.inputs[0])
        n, pads = x.rank, node.attrs["pads"]
        starts = tuple(pads[i] for i in range(n))
        ends = tuple(pads[i] + d if isinstance(d, int) else -pads[n + i] or 2 ** 62 for i, d in enumerate(x.shape))
        return [ctx.op("Slice", dys[0], starts=starts, ends=ends, axes=tuple(range(n)))]


@register
class Upsample(Op):
    """Nearest-neighbour upsampling (UpSampling1D/2D/3D): axis ``axes[i]`` repeats each of its
    entries ``factors[i]`` times. attrs: axes, factors. One op, so that the transpose-sinking pass
    moves it with a convolution's channels-first map (its axes follow the layout) and a
    convolution's kernel gradient can take the small map it repeats (ops/nn.py)."""
    name = "Upsample"

    def infer(self, ins, attrs):
        x, = ins
        repeat = dict(zip((normalize_axis(a, x.rank) for a in attrs["axes"]), attrs["factors"]))
        if any(not isinstance(x.shape[a], int) for a in repeat):
            raise ShapeError(f"Upsample needs known sizes on its axes, got {format_shape(x.shape)}")
        return [x.with_shape(d * repeat.get(i, 1) for i, d in enumerate(x.shape))]

    def lower(self, ctx, inputs, outputs, attrs):
        shape = ctx.shape(inputs[0])
        repeat = dict(zip((a % len(shape) for a in attrs["axes"]), attrs["factors"]))
        if len(shape) - 1 in repeat and ctx.dtype(inputs[0]) in ("float32", "float16"):
            # The last axis repeated (a channels-first map): onnxruntime's nearest Resize, where the
            # product below broadcasts element by element ([128, 32, 14, 14] doubled: 0.7 against
            # 10.8 ms; channels-last the product is faster, 1.7 against 2.0; no Resize for float64).
            scales = ctx.const([float(repeat.get(i, 1)) for i in range(len(shape))], "float32")
            ctx.emit("Resize", [inputs[0], "", scales], outputs, mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            return
        # A unit axis after each repeated one, broadcast to the factor by a product with ones,
        # then merged into it: [N, H, W, C] -> [N, H, 1, W, 1, C] -> [N, H, f, W, f, C] -> [N, fH, fW, C].
        wide = [d for i, d in enumerate(shape) for d in ((1, 1) if i in repeat else (1,))]
        units = []
        for i in sorted(repeat):
            units.append(i + 1 + len(units))
            wide[units[-1]] = repeat[i]
        y = ctx.emit("Unsqueeze", [inputs[0], ctx.const(units, "int64")])
        y = ctx.emit("Mul", [y, ctx.const(np.ones(wide), ctx.dtype(inputs[0]))])
        target = [d * repeat.get(i, 1) if isinstance(d, int) else -1 for i, d in enumerate(shape)]
        ctx.emit("Reshape", [y, ctx.const(target, "int64")], outputs)

    def grad(self, ctx, node, dys):
        # each repeated axis of dy split into (size, factor), the factors summed
        x = ctx.type(node.inputs[0])
        repeat = dict(zip((normalize_axis(a, x.rank) for a in node.attrs["axes"]), node.attrs["factors"]))
        split, summed = [], []
        for i, d in enumerate(x.shape):
            split.append(d if isinstance(d, int) else (0 if len(split) == i else -1))
            if i in repeat:
                split.append(repeat[i])
                summed.append(len(split) - 1)
        blocks = ctx.op("Reshape", dys[0], shape=tuple(split))
        return [ctx.op("ReduceSum", blocks, axes=tuple(summed), keepdims=0)]


@register
class Flip(Op):
    """Reverse the order along ``axis`` (go_backwards of recurrent layers)."""
    name = "Flip"

    def infer(self, ins, attrs):
        return [ins[0]]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Slice", [inputs[0], ctx.const([-1], "int64"), ctx.const([-(2 ** 62)], "int64"),
                           ctx.const([attrs["axis"]], "int64"), ctx.const([-1], "int64")], outputs)

    def grad(self, ctx, node, dys):
        return [ctx.op("Flip", dys[0], axis=node.attrs["axis"])]


def _merged(dims):
    """The size of several axes merged into one: their product, or a symbol such as ``N*5``."""
    if all(isinstance(d, int) for d in dims):
        return int(np.prod(dims))
    return "*".join(str(d) for d in dims)


@register
class FoldBatch(Op):
    """Merge the leading ``axes`` axes into one: [N, T, *rest] -> [N*T, *rest] (TimeDistributed).
    attrs: axes (2)."""
    name = "FoldBatch"

    def infer(self, ins, attrs):
        x, = ins
        k = attrs.get("axes", 2)
        if x.rank < k + 1:
            raise ShapeError(f"FoldBatch of {k} axes needs a rank above {k}, got {format_shape(x.shape)}")
        return [x.with_shape((_merged(x.shape[:k]),) + tuple(x.shape[k:]))]

    def lower(self, ctx, inputs, outputs, attrs):
        k = attrs.get("axes", 2)
        rest = ctx.shape(inputs[0])[k:]
        if all(isinstance(d, int) for d in rest):
            target = ctx.const([-1] + list(rest), "int64")
        else:
            target = ctx.emit("Concat", [ctx.const([-1], "int64"), ctx.emit("Shape", [inputs[0]], start=k)], axis=0)
        ctx.emit("Reshape", [inputs[0], target], outputs)

    def grad(self, ctx, node, dys):
        return [ctx.op("UnfoldBatch", dys[0], node.inputs[0], axes=node.attrs.get("axes", 2))]


@register
class UnfoldBatch(Op):
    """The inverse of FoldBatch: value [N*T, *rest] -> [N, T, *rest], the leading ``axes``
    dimensions taken (at run time) from ``like``. inputs: value, like; attrs: axes (2)."""
    name = "UnfoldBatch"

    def infer(self, ins, attrs):
        value, like = ins
        k = attrs.get("axes", 2)
        if value.rank < 1 or like.rank < k:
            raise ShapeError(f"UnfoldBatch of {format_shape(value.shape)} like {format_shape(like.shape)}")
        merged = _merged(like.shape[:k])
        if isinstance(merged, int) and isinstance(value.shape[0], int) and merged != value.shape[0]:
            raise ShapeError(f"UnfoldBatch: {value.shape[0]} rows do not split into {format_shape(like.shape[:k])}")
        return [value.with_shape(tuple(like.shape[:k]) + tuple(value.shape[1:]))]

    def lower(self, ctx, inputs, outputs, attrs):
        value, like = inputs
        k = attrs.get("axes", 2)
        rest = ctx.shape(value)[1:]
        tail = ctx.const(list(rest), "int64") if all(isinstance(d, int) for d in rest) else \
            ctx.emit("Shape", [value], start=1)
        target = ctx.emit("Concat", [ctx.emit("Shape", [like], end=k), tail], axis=0)
        ctx.emit("Reshape", [value, target], outputs)

    def grad(self, ctx, node, dys):
        return [ctx.op("FoldBatch", dys[0], axes=node.attrs.get("axes", 2)), None]
