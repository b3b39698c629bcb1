"""Transpose sinking and cancellation.

Layers wrap each channels-first op (Conv, pooling) in a pair of transposes so the
language can stay channels-last. This pass moves each transpose down through the
ops that do not care about layout (element-wise ops, bias adds with weights,
batch normalization, reductions, a Concat of operands transposed alike, Pad, Slice,
Softmax, Upsample, Normalize and GroupNormalize on their axes, a Reshape that splits or
merges axes the source holds in the same order) until it meets the next layer's inverse
transpose, where both cancel. What remains are transposes at the edges (e.g.
before a Flatten, whose element order Keras defines channels-last).
"""
from ..ir import Graph
from ..ops import OPS
from ..ops.elementwise import Binary, Unary
from ..ops.base import Op
from .util import add, is_static, replace, sole_consumer

_LAYOUT_FREE_UNARY = (Unary,)


def _layout_free(node) -> bool:
    """An element-wise op of one input: it computes the same whatever the layout (a Dropout with
    a noise_shape does not: its shape is per axis)."""
    if node.op == "Dropout":
        return node.attrs.get("noise_shape") is None
    return isinstance(OPS[node.op], _LAYOUT_FREE_UNARY) or node.op in ("Identity", "Cast")


def _compose(p, q):
    """Transpose(Transpose(x, q), p) == Transpose(x, compose(p, q))."""
    return tuple(q[i] for i in p)


def _inverse(p):
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return tuple(inv)


def _is_identity(p):
    return tuple(p) == tuple(range(len(p)))


def sink_transposes(g: Graph) -> Graph:
    changed = True
    while changed:
        changed = False
        for node in g.nodes():
            if node.op != "Transpose" or node.name not in g.nx:
                continue
            if _step(g, node):
                changed = True
                break
    for node in g.nodes():
        if node.op == "Transpose" and node.name in g.nx:
            _as_reshape(g, node)
    return g


def _as_reshape(g: Graph, t) -> None:
    """A transpose that moves only axes of size 1 keeps the order of the numbers: a Reshape,
    which onnxruntime does without a copy (a one-channel image going channels-first: the MNIST
    CNN's inference at batch 256 about 5% faster in an alternating A/B)."""
    x, = t.inputs
    perm = tuple(t.attrs["perm"])
    shape = g.types[x].shape
    moved = [a for a in perm if shape[a] != 1]
    if moved != sorted(moved) or any(isinstance(shape[a], str) and a != i for i, a in enumerate(perm)):
        return
    target = tuple(0 if isinstance(shape[a], str) else shape[a] for a in perm)  # 0: the batch, as it is
    replace(g, t.outputs[0], add(g, t, "Reshape", [x], shape=target))


def _step(g: Graph, t) -> bool:
    x, = t.inputs
    perm = tuple(t.attrs["perm"])
    out = t.outputs[0]
    if _is_identity(perm):
        replace(g, out, x)
        return True
    inner = g.producer_of(x)
    if inner is not None and inner.op == "Transpose":
        composed = _compose(perm, tuple(inner.attrs["perm"]))
        replace(g, out, inner.inputs[0] if _is_identity(composed) else
                add(g, t, "Transpose", [inner.inputs[0]], perm=composed))
        return True
    user = sole_consumer(g, out)
    if user is None or is_static(g, out):
        return False
    if user.op == "Gemm" and perm == (1, 0) and user.inputs.index(out) < 2:
        # Gemm reads either operand transposed (its transA / transB flags): no copy.
        i = user.inputs.index(out)
        flag = ("transA", "transB")[i]
        operands = [x if k == i else v for k, v in enumerate(user.inputs)]
        flipped = {**user.attrs, flag: 1 - user.attrs.get(flag, 0)}
        replace(g, user.outputs[0], add(g, user, "Gemm", operands, **flipped))
        return True
    definition: Op = OPS[user.op]
    if _layout_free(user):
        attrs = dict(user.attrs)
        if user.op == "Dropout":  # its noise keeps the layout it had before (-O1 draws what -O0 does)
            noise = _compose(_inverse(perm), tuple(attrs.pop("noise_perm", range(len(perm)))))
            attrs.update({} if _is_identity(noise) else {"noise_perm": noise})
        moved = add(g, user, user.op, [x] + user.inputs[1:], **attrs)
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if isinstance(definition, Binary):
        i = user.inputs.index(out)
        other = user.inputs[1 - i]
        other_t = g.types[other]
        producer = g.producer_of(other)
        if producer is not None and producer.op == "Transpose" and tuple(producer.attrs["perm"]) == perm:
            other_new = producer.inputs[0]
        elif is_static(g, other) and other_t.rank <= len(perm):
            # Re-lay the weight operand (a bias, a scale) for the un-transposed data.
            padded = other
            if other_t.rank < len(perm):
                padded = add(g, user, "Unsqueeze", [other], axes=tuple(range(len(perm) - other_t.rank)))
            other_new = add(g, user, "Transpose", [padded], perm=_inverse(perm))
        else:
            return False
        operands = [x, other_new] if i == 0 else [other_new, x]
        moved = add(g, user, user.op, operands, **user.attrs)
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if user.op == "Concat":
        # every operand transposed alike (convolutions' outputs joined on their channels): the
        # sources joined on the axis that becomes the joined one, then one transpose
        producers = [g.producer_of(v) for v in user.inputs]
        if not all(p is not None and p.op == "Transpose" and tuple(p.attrs["perm"]) == perm for p in producers):
            return False
        axis = user.attrs["axis"] % len(perm)
        moved = add(g, user, "Concat", [p.inputs[0] for p in producers], axis=perm[axis])
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if user.op == "Reshape" and user.inputs[0] == out:
        moved = _reshape_moved(perm, g.types[out].shape, g.types[user.outputs[0]].shape)
        if moved is not None:  # (GroupNormalization's channels split into groups, and joined back)
            shape, after = moved
            reshaped = add(g, user, "Reshape", [x], shape=shape)
            replace(g, user.outputs[0], reshaped if _is_identity(after) else
                    add(g, t, "Transpose", [reshaped], perm=after))
            return True
    moved_attrs = _axes_moved(user, perm)
    if moved_attrs is not None and not any(g.uses(o) for o in user.outputs[1:]):  # (Normalize's r: unread)  # ops of data axes named in their attributes: the same on the source's axes
        moved = add(g, user, user.op, [x] + user.inputs[1:], **moved_attrs)
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if user.op == "BatchNormalization" and user.inputs[0] == out and len(user.inputs) == 5:  # (not a step mask's)
        axis = user.attrs["axis"] % len(perm)
        moved = add(g, user, user.op, [x] + user.inputs[1:], **{**user.attrs, "axis": perm[axis]})
        replace(g, user.outputs[0], add(g, t, "Transpose", [moved], perm=perm))
        return True
    if user.op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum") and "axes" in user.attrs:
        n = len(perm)
        axes = [a % n for a in user.attrs["axes"]]
        moved = add(g, user, user.op, [x], **{**user.attrs, "axes": tuple(sorted(perm[a] for a in axes))})
        if user.attrs.get("keepdims", 1):
            result = add(g, t, "Transpose", [moved], perm=perm)
        else:
            remaining = [perm[i] for i in range(n) if i not in axes]
            order = sorted(remaining)
            rest = tuple(order.index(r) for r in remaining)
            result = moved if _is_identity(rest) else add(g, t, "Transpose", [moved], perm=rest)
        replace(g, user.outputs[0], result)
        return True
    return False


def _reshape_moved(perm, before, after):
    """A Reshape of a transpose by ``perm`` (shape ``before``) to ``after`` as a Reshape of the
    transpose's source, then a transpose: (its shape attribute, the transpose's perm), where the
    Reshape splits axes and merges runs of axes that the source holds next to each other in
    the same order; else None. A dimension whose size is not known (the batch) must stay
    where it is, on axis 0 of both."""
    groups, i, j = [], 0, 0  # groups: (axes of ``before``, axes of ``after``) with equal products
    while i < len(before) or j < len(after):
        if j < len(after) and after[j] == 1 and (i == len(before) or before[i] != 1):
            groups.append(([], [j]))  # a unit axis put in
            j += 1
            continue
        if i < len(before) and before[i] == 1 and (j == len(after) or after[j] != 1):
            groups.append(([i], []))  # a unit axis taken out
            i += 1
            continue
        if i == len(before) or j == len(after):
            return None
        if isinstance(before[i], str) or isinstance(after[j], str):
            if (i, j) != (0, 0) or before[0] != after[0] or perm[0] != 0:
                return None
            groups.append(([0], [0]))
            i, j = 1, 1
            continue
        first_i, first_j, a, b = i, j, before[i], after[j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b and i < len(before) and isinstance(before[i], int):
                a, i = a * before[i], i + 1
            elif b < a and j < len(after) and isinstance(after[j], int):
                b, j = b * after[j], j + 1
            else:
                return None
        groups.append((list(range(first_i, i)), list(range(first_j, j))))
    for ins, outs in groups:
        if len(ins) > 1 and (len(outs) > 1 or any(perm[k + 1] != perm[k] + 1 for k in ins[:-1])):
            return None  # (neither a split nor a merge of axes in the source's order)
    # The groups in the source's order; a unit axis put in goes with the group before it.
    keys, key = [], -1
    for ins, outs in groups:
        key = perm[ins[0]] if ins else key + 1e-3
        keys.append(key)
    order = [group for _, group in sorted(zip(keys, groups), key=lambda kg: kg[0]) if group[1]]
    shape, start = [], {}
    for ins, outs in order:
        start[outs[0]] = len(shape)
        shape += [0 if isinstance(after[k], str) else after[k] for k in outs]  # (0: the batch, as it is)
    moved = [None] * len(after)
    for _, outs in order:
        for k, axis in enumerate(outs):
            moved[axis] = start[outs[0]] + k
    return tuple(shape), tuple(moved)


def _axes_moved(user, perm):
    """The attributes of ``user`` (reading a transpose by ``perm``) for reading the transpose's
    source instead, where its attributes name the data's axes: Pad (ZeroPadding2D), Slice
    (Cropping2D), Softmax and LogSoftmax over one axis, Upsample (UpSampling2D), Normalize
    (LayerNormalization's moments), GroupNormalize (its channel axis); else None."""
    n = len(perm)
    if user.op == "Pad" and len(user.inputs) == 1:
        pads = user.attrs["pads"]
        moved = [0] * (2 * n)
        for i, axis in enumerate(perm):
            moved[axis], moved[n + axis] = pads[i], pads[n + i]
        return {**user.attrs, "pads": tuple(moved)}
    if user.op == "Slice" and len(user.inputs) == 1:
        return {**user.attrs, "axes": tuple(perm[a % n] for a in user.attrs["axes"])}
    if user.op in ("Softmax", "LogSoftmax"):
        return {**user.attrs, "axis": perm[user.attrs.get("axis", -1) % n]}
    if user.op == "Upsample":
        return {**user.attrs, "axes": tuple(perm[a % n] for a in user.attrs["axes"])}
    if user.op == "Normalize" and len(user.inputs) == 1:
        return {**user.attrs, "axes": tuple(sorted(perm[a % n] for a in user.attrs["axes"]))}
    if user.op == "GroupNormalize" and perm[0] == 0:  # (its moments: all axes but the batch, channels in groups)
        return {**user.attrs, "axis": perm[user.attrs["axis"] % n]}
    return None


def transpose_into_dense_weights(g: Graph) -> Graph:
    """Training graphs: ``Transpose -> Flatten -> Dense`` becomes ``Flatten -> Dense`` with the
    kernel's rows permuted instead (Keras flattens channels-last, the convolutions before run
    channels-first). The permutation moves whole kernel rows, where the activation's transpose
    moved single numbers: measured 50 us against 410 us per MNIST CNN step (forward and gradient),
    the same 205k numbers. Inference keeps the activation's transpose, which onnxruntime folds
    into its own layout change, and whose kernel would otherwise be permuted every run."""
    for t in g.nodes():
        if t.name not in g.nx or t.op != "Transpose":
            continue
        perm = tuple(t.attrs["perm"])
        x, = t.inputs
        flatten = sole_consumer(g, t.outputs[0])
        if perm[0] != 0 or flatten is None or flatten.op != "Flatten" or flatten.attrs.get("axis", 1) != 1:
            continue
        dense = sole_consumer(g, flatten.outputs[0])
        if dense is None or dense.op not in ("Gemm", "MatMul") or dense.inputs[0] != flatten.outputs[0] \
                or dense.attrs.get("transA") or dense.attrs.get("transB"):
            continue
        kernel = dense.inputs[1]
        seen = g.types[t.outputs[0]].shape[1:]  # the kernel's rows, as the flattened transpose orders them
        if not is_static(g, kernel) or g.types[kernel].rank != 2 or not all(isinstance(d, int) for d in seen):
            continue
        out = g.types[kernel].shape[1]
        # Row axis j of the result is axis inverse[j] of the transposed order (less the batch).
        rows = tuple(a - 1 for a in _inverse(perm)[1:])
        grid = add(g, dense, "Reshape", [kernel], shape=tuple(seen) + (out,))
        moved = add(g, dense, "Transpose", [grid], perm=rows + (len(rows),))
        permuted = add(g, dense, "Reshape", [moved], shape=g.types[kernel].shape)
        flat = add(g, flatten, "Flatten", [x], axis=1)
        replace(g, dense.outputs[0], add(g, dense, dense.op, [flat, permuted] + dense.inputs[2:], **dense.attrs))
    return g


def feature_major_dense(g: Graph) -> Graph:
    """Training graphs: a Dense whose output reaches the next Dense's input through activations
    only runs feature-major, ``h^T = W^T x^T + b``, with its kernel held transposed in the
    training step (``Param.transposed``; the runtime transposes it, and its optimizer slots, on
    the way in and out). onnxruntime then packs the small activation operand of each product
    instead of the kernel: the MNIST MLP's training step about 6% faster in alternating-process
    A/B runs (its 784x512 kernel's forward and gradient products together 7% at batch 128, 4%
    at 512). The transposes left at either end fold into the neighbouring products (their
    trans flags). Only a Dense read by activations and Dropout alone qualifies (a Dropout of
    feature-major values draws its noise batch-major and transposes it); a loss or an output
    would want the batch-major layout back."""
    for node in g.nodes():
        if node.name not in g.nx or node.op != "Gemm" or node.attrs.get("activation"):
            continue
        x, w = node.inputs[:2]
        param = g.params.get(w)
        if param is None or not param.trainable or param.transposed or param.type.rank != 2 or \
                len(g.consumers(w)) != 1 or g.types[x].rank != 2 or not _reaches_dense(g, node.outputs[0]):
            continue
        k, n = param.type.shape
        param.type = g.types[w] = param.type.with_shape((n, k))
        param.transposed = True
        bias = [add(g, node, "Reshape", [node.inputs[2]], shape=(n, 1))] if len(node.inputs) == 3 else []
        h_t = add(g, node, "Gemm", [w, x] + bias, transB=1)
        replace(g, node.outputs[0], add(g, node, "Transpose", [h_t], perm=(1, 0)))
    return sink_transposes(g)


def _reaches_dense(g: Graph, value: str) -> bool:
    """``value`` flows through layout-free ops alone (activations, Dropout) into a Dense's input
    (its only reader)."""
    while True:
        user = sole_consumer(g, value)
        if user is None:
            return False
        if user.op == "Gemm" and user.inputs[0] == value:
            return True
        if not _layout_free(user):
            return False
        value = user.outputs[0]
