"""Fusions for inference: bias adds into Conv/Gemm, BatchNormalization into the
preceding Conv/Gemm, an element-wise activation into Conv/Gemm, and LayerNormalization's gamma
and beta into its Normalize, and the centering a Normalize over a convolution's channels does
into the convolution's filters.

Folded weights are computed by graph ops on the weights themselves (so the model's
weights stay in Keras layout and ``set_weights`` keeps working); onnxruntime
evaluates those ops once when the session starts.
"""
import numpy as np

from ..ir import Graph
from ..ops import OPS
from ..ops.elementwise import Unary
from .util import add, is_static, replace, sole_consumer

_FUSABLE = ("Conv", "ConvTranspose", "Gemm")


def _channel_vector(g: Graph, value: str, channels: int, axis: int, rank: int):
    """If ``value`` broadcasts as a per-channel vector along ``axis`` of a rank-``rank``
    tensor, return the length it must be reshaped to; else None."""
    shape = g.types[value].shape
    if len(shape) > rank:
        return None
    padded = (1,) * (rank - len(shape)) + tuple(shape)
    others = [d for i, d in enumerate(padded) if i != axis]
    if all(d == 1 for d in others) and padded[axis] in (channels, 1):
        return padded[axis]
    return None


def fuse_bias(g: Graph) -> Graph:
    """MatMul(x, W) + b -> Gemm(x, W, b) for rank-2 x; Conv(x, W) + b -> Conv(x, W, b)."""
    for node in g.nodes():
        if node.name not in g.nx or node.op not in ("MatMul", "Conv", "ConvTranspose"):
            continue
        if node.op == "MatMul" and (g.types[node.inputs[0]].rank != 2 or g.types[node.inputs[1]].rank != 2):
            continue
        if node.op != "MatMul" and len(node.inputs) == 3:
            continue
        out = node.outputs[0]
        user = sole_consumer(g, out)
        if user is None or user.op != "Add":
            continue
        bias = user.inputs[1] if user.inputs[0] == out else user.inputs[0]
        t = g.types[out]
        if not is_static(g, bias) or g.types[bias].dtype != t.dtype:
            continue
        channels = t.shape[1]
        if _channel_vector(g, bias, channels, 1, t.rank) != channels:
            continue
        if g.types[bias].shape != (channels,):
            bias = add(g, user, "Reshape", [bias], shape=(channels,))
        op = "Gemm" if node.op == "MatMul" else node.op
        fused = add(g, node, op, node.inputs + [bias], **node.attrs)
        replace(g, user.outputs[0], fused)
    return g


def fold_batchnorm(g: Graph) -> Graph:
    """Conv/Gemm followed by inference BatchNormalization on its channels -> one Conv/Gemm:
    W' = W * s, b' = (b - mean) * s + beta, with s = gamma / sqrt(var + epsilon)."""
    for bn in g.nodes():
        if bn.name not in g.nx or bn.op != "BatchNormalization":
            continue
        x = bn.inputs[0]
        node = g.producer_of(x)
        if node is None or node.op not in _FUSABLE or node.attrs.get("activation") or sole_consumer(g, x) is not bn:
            continue
        if node.attrs.get("transA") or node.attrs.get("transB"):  # (columns of W only when untransposed)
            continue
        stats = bn.inputs[1:5]  # (a step mask after them matters in training only)
        if bn.attrs["axis"] % g.types[x].rank != 1 or not all(is_static(g, v) for v in stats):
            continue
        if node.op != "Gemm" and node.attrs.get("group", 1) != 1 and node.op == "ConvTranspose":
            continue
        gamma, beta, mean, var = stats
        dtype = g.types[x].dtype
        eps = g.add_const(np.asarray(bn.attrs.get("epsilon", 1e-3), dtype=dtype), base="epsilon")
        scale = add(g, bn, "Div", [gamma, add(g, bn, "Sqrt", [add(g, bn, "Add", [var, eps])])])
        w = node.inputs[1]
        w_rank = g.types[w].rank
        if node.op == "Gemm":  # W [K, N]: scale columns
            w_scale = scale
        else:  # Conv W [O, I, k...] scales axis 0; ConvTranspose W [I, O, k...] axis 1
            shape = [1] * w_rank
            shape[0 if node.op == "Conv" else 1] = -1
            w_scale = add(g, bn, "Reshape", [scale], shape=tuple(shape))
        new_w = add(g, bn, "Mul", [w, w_scale])
        shifted = add(g, bn, "Sub", [node.inputs[2], mean]) if len(node.inputs) == 3 else add(g, bn, "Neg", [mean])
        new_b = add(g, bn, "Add", [add(g, bn, "Mul", [shifted, scale]), beta])
        fused = add(g, node, node.op, [node.inputs[0], new_w, new_b], **node.attrs)
        replace(g, bn.outputs[0], fused)
    return g


def fuse_activation(g: Graph) -> Graph:
    """Conv/Gemm followed by an element-wise activation -> the op with a fused ``activation``."""
    for node in g.nodes():
        if node.name not in g.nx or node.op not in _FUSABLE or node.attrs.get("activation"):
            continue
        user = sole_consumer(g, node.outputs[0])
        if user is None or not isinstance(OPS[user.op], Unary):
            continue
        activation = (user.op, tuple(sorted(user.attrs.items())))
        fused = add(g, node, node.op, node.inputs, **{**node.attrs, "activation": activation})
        replace(g, user.outputs[0], fused)
    return g


def center_before_normalize(g: Graph) -> Graph:
    """Conv or ConvTranspose (one group, no activation) read only by a Normalize over its channels
    (LayerNormalization after a Conv2D, axis 1 once transposes sink) -> it with each filter and
    bias less the filters' mean and bias, and a Normalize told its input is centered. A
    convolution is linear in its filters, padding included, so the mean over channels of its map
    is the convolution by the filters' mean, and the centered filters give x - mean(x) at once:
    the Normalize no longer takes the mean nor subtracts it, two passes over the map of its six
    (cnn_layernorm's one-thread run of 16 rows 2.77 -> 2.58 ms). Training steps run it too, before
    differentiation: the filters' centering is then a few small ops a step, differentiated like
    any other, and the Normalize's gradient loses its mean(dy) term (cnn_layernorm's step 69-72
    -> 61-67 ms)."""
    for norm in g.nodes():
        if norm.name not in g.nx or norm.op != "Normalize" or norm.attrs.get("centered") or g.uses(norm.outputs[1]):
            continue
        x = norm.inputs[0]
        conv = g.producer_of(x)
        if conv is None or conv.op not in ("Conv", "ConvTranspose") or conv.attrs.get("activation") or \
                conv.attrs.get("group", 1) != 1 or sole_consumer(g, x) is not norm or \
                {a % g.types[x].rank for a in norm.attrs["axes"]} != {1} or \
                not all(is_static(g, v) for v in conv.inputs[1:]):
            continue
        # (the mean over the output channels O: Conv's filters [O, C, k...], ConvTranspose's [C, O, k...], bias [O])
        centered = [add(g, conv, "Sub", [v, add(g, conv, "ReduceMean", [v], axes=(axis,), keepdims=1)])
                    for v, axis in zip(conv.inputs[1:], (int(conv.op == "ConvTranspose"), 0))]
        mapped = add(g, conv, conv.op, [conv.inputs[0]] + centered, **conv.attrs)
        fused = add(g, norm, "Normalize", [mapped] + norm.inputs[1:], **{**norm.attrs, "centered": 1})
        replace(g, norm.outputs[0], fused)
    return g


def fuse_normalize_affine(g: Graph) -> Graph:
    """Normalize -> Mul(gamma) [-> Add(beta)] -> one Normalize with gamma and beta as its scale and
    bias, where they are weights or constants with a number for each position of the normalized
    axes and none along the others (LayerNormalization's; not GroupNormalization's, per channel
    where it normalizes over groups and positions): over trailing axes they go into ONNX's
    LayerNormalization, over a channels-first map's channels (LayerNormalization after a
    Conv2D, its gamma [1, C, 1, 1]) into one per-channel pass; two passes over the values fewer,
    or one. Inference only: a training step's gradient reads the normalized values themselves."""
    for node in g.nodes():
        if node.name not in g.nx or node.op != "Normalize" or len(node.inputs) != 1 or g.uses(node.outputs[1]):
            continue
        x, = node.inputs
        t = g.types[x]
        axes = {a % t.rank for a in node.attrs["axes"]}
        inner = tuple(t.shape[a] for a in sorted(axes))
        weights = []
        value = node.outputs[0]
        for op in ("Mul", "Add"):
            user = sole_consumer(g, value)
            if user is None or user.op != op:
                break
            other = user.inputs[1] if user.inputs[0] == value else user.inputs[0]
            shape = tuple(g.types[other].shape)
            padded = (1,) * (t.rank - len(shape)) + shape  # (as it broadcasts against x)
            if not is_static(g, other) or g.types[other].dtype != t.dtype or len(shape) > t.rank or \
                    any(d != (t.shape[i] if i in axes else 1) for i, d in enumerate(padded)):
                break
            weights.append(add(g, user, "Reshape", [other], shape=inner) if shape != inner else other)
            value = user.outputs[0]
        if not weights:
            continue
        scale = weights[0]
        bias = weights[1] if len(weights) == 2 else g.add_const(np.zeros(inner, t.dtype))
        fused = add(g, node, "Normalize", [x, scale, bias], **node.attrs)
        replace(g, value, fused)
    return g
