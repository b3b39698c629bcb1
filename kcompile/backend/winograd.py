"""Winograd's F(2x2, 3x3) for a 3x3 convolution that a 2x2 max pool reads, in inference graphs.

A 3x3 convolution's 2x2 block of outputs needs 36 multiplications per channel pair directly and
16 in Winograd's form: each 4x4 tile d of the input is transformed (B^T d B), multiplied
element-wise by the transformed kernel (G g G^T, computed here once), and transformed back
(A^T m A). Where a 2x2 max pool (stride 2) reads the convolution, the output tiles are its
windows: the pool is the max of a tile's four outputs, and the 2x2 blocks are never put back
into a map. In standard ONNX ops (channels C -> O, T tiles a sample, N samples):

    x [N, C, H, W] -> Transpose [H, W, N, C] -> Gather the 16 positions of every tile
    -> [16, T*N*C] -> MatMul by B^T (x) B^T (16x16) -> [16, T*N, C]
    -> MatMul by the 16 transformed kernels [16, C, O] -> [16, T*N, O]
    -> MatMul by A^T (x) A^T (4x16) -> [4, T*N*O] -> Split, Max -> + bias -> Relu -> [N, O, P, Q]

On the MNIST CNN's second convolution (32 -> 64 channels) the products took 17 us a sample
on one core where the blocked convolution took 35, and the transforms 14-16 more. Its tiles
add 150 KB a sample to the activations, so predict's one-core parts of a large batch
(runtime/model.py), which may use it, run fewer rows at a time to stay in the cache: 1.09x
the plain graph's samples/s at 1,024 rows on that machine (runs of 16 rows against the plain
graph's 28; in runs of 28 it gained 1.01x). On a machine whose blocked convolution ran at
about twice that rate (19 us a sample, both cores busy) it was 0.83x, so the parts time both
forms and keep the faster (Model._parts_predictors). A two-thread session ran it at
0.89-0.97x and a batch of one at 0.87x (docs/performance.md), so nothing else uses it. The
results equal the convolution's to float32 rounding (the transforms add and subtract a few
products). The files in a build folder keep the plain convolution.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .reads import readers as readers_of

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
_LAYOUT_OPS = ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Constant")
MIN_CHANNELS = 32  # measured on 32 -> 64 channels; with few channels the transforms outweigh the products


def use_winograd(model_bytes: bytes) -> tuple[bytes, int]:
    """``model_bytes`` with each qualifying convolution-and-pool in Winograd's form (the same
    bytes where none qualifies), and the bytes a sample's transformed tiles add to its
    activations (0 where none qualifies): predict's runs take fewer rows to stay in the cache."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    weights = _weight_values(graph)
    if not any(n.op_type == "Conv" and n.domain == "" and len(n.input) > 1 and n.input[1] in weights
               for n in graph.node):
        return model_bytes, 0
    readers = readers_of(graph.node)
    kept = {o.name for o in graph.output}
    shapes = _shapes(model)
    replaced, dropped, added, tile_bytes = {}, set(), [], 0
    for index, node in enumerate(graph.node):
        chain = _chain(node, readers, kept, weights, shapes)
        if chain is None:
            continue
        *_, last, after = chain
        name = f"winograd{index}"
        new, inits = _rewrite(node, weights, shapes[node.input[0]], name, last.output[0] if after is None else None,
                              after, relu=any(n.op_type == "Relu" for n in chain[1:-1]))
        replaced[id(node)] = new
        _, c, h, w = shapes[node.input[0]]
        tile_bytes += 4 * 16 * ((h - 2) // 2) * ((w - 2) // 2) * (c + weights[node.input[1]].shape[0])  # (v and m)
        dropped.update(id(n) for n in chain[1:] if n is not None)
        added += inits
    if not replaced:
        return model_bytes, 0
    nodes = []
    for node in graph.node:
        if id(node) not in dropped:
            nodes.extend(replaced.get(id(node), [node]))
    nodes = _without_dead(nodes, kept)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {v for node in nodes for v in node.input} | kept
    initializers = [i for i in list(graph.initializer) + added if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return model.SerializeToString(), tile_bytes


def _chain(conv, readers, kept, weights, shapes):
    """[conv, (Relu,) MaxPool, (Relu,) a Transpose to channels-last or None] where ``conv`` is a
    3x3 convolution (stride 1, no padding, no groups, constant kernel and bias) read only by
    a 2x2 max pool of stride 2, perhaps through a Relu on either side; else None."""
    if conv.op_type != "Conv" or conv.domain != "" or len(conv.input) < 2 or conv.input[1] not in weights:
        return None
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in weights:
        return None
    kernel = weights[conv.input[1]]
    a = _attrs(conv)
    if kernel.dtype != np.float32 or kernel.shape[2:] != (3, 3) \
            or min(kernel.shape[:2]) < MIN_CHANNELS or a.get("group", 1) != 1 \
            or any(v != 1 for v in a.get("strides", ()) + a.get("dilations", ())) or any(a.get("pads", ())) \
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        return None
    x = shapes.get(conv.input[0])
    if x is None or len(x) != 4 or None in x[1:] or x[1] != kernel.shape[1] or min(x[2:]) < 4:
        return None
    chain, value = [conv], conv.output[0]
    for want in ("Relu", "MaxPool", "Relu"):
        users = readers.get(value, [])
        if value in kept or len(users) != 1:
            break
        node = users[0]
        if node.op_type == "Relu" and want == "Relu" and node.domain == "":
            chain.append(node)
        elif node.op_type == "MaxPool" and want == "MaxPool" and _pool_2x2(node):
            chain.append(node)
        elif want == "MaxPool":
            return None
        else:
            continue
        value = node.output[0]
    if not any(n.op_type == "MaxPool" for n in chain):
        return None
    users = readers.get(value, [])
    after = users[0] if value not in kept and len(users) == 1 and users[0].op_type == "Transpose" \
        and tuple(_attrs(users[0]).get("perm", ())) == (0, 2, 3, 1) else None
    return chain + [after]


def _pool_2x2(node) -> bool:
    a = _attrs(node)
    return (node.domain == "" and len(node.output) == 1 and tuple(a.get("kernel_shape", ())) == (2, 2)
            and tuple(a.get("strides", ())) == (2, 2) and not any(a.get("pads", ())) and not a.get("ceil_mode")
            and all(d == 1 for d in a.get("dilations", ())) and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def _rewrite(conv, weights, x_shape, name, out, transpose, relu):
    """The nodes and initializers of one convolution-and-pool in Winograd's form. Their result
    is ``out`` ([N, O, P, Q], the pool's or its Relu's value) or, where ``transpose`` (to
    channels-last) reads it, that transpose's output [N, P, Q, O]."""
    _, c, h, w = x_shape
    kernel = weights[conv.input[1]].astype(np.float64)  # [O, C, 3, 3]
    o = kernel.shape[0]
    p, q = (h - 2) // 2, (w - 2) // 2  # the pool's output: tile (i, j) reads rows 2i..2i+3, columns 2j..2j+3
    tiles = [(2 * i + a) * w + 2 * j + b for a in range(4) for b in range(4) for i in range(p) for j in range(q)]
    consts = {
        "tiles": tiles,
        "BT": np.einsum("ia,jb->ijab", _BT, _BT).reshape(16, 16),
        "U": np.einsum("ia,ocab,jb->ijco", _G, kernel, _G).reshape(16, c, o),  # G g G^T, [16, C, O]
        "AT": np.einsum("pi,qj->pqij", _AT, _AT).reshape(4, 16),
        "flat": [h * w, -1], "rows16": [16, -1], "cols": [16, -1, c], "tnm": [p * q, -1, o],
    }
    if len(conv.input) > 2 and conv.input[2]:
        consts["bias"] = weights[conv.input[2]].reshape(o)
    inits = [_tensor(v, f"{name}/{k}") for k, v in consts.items()]
    n = lambda k: f"{name}/{k}"  # noqa: E731
    N = helper.make_node
    nodes = [
        N("Transpose", [conv.input[0]], [n("hwnc")], perm=[2, 3, 0, 1]),
        N("Reshape", [n("hwnc"), n("flat")], [n("positions")]),
        N("Gather", [n("positions"), n("tiles")], [n("d")], axis=0),  # [16 * T, N * C]
        N("Reshape", [n("d"), n("rows16")], [n("d16")]),
        N("MatMul", [n("BT"), n("d16")], [n("v")]),  # B^T d B of every tile and channel
        N("Reshape", [n("v"), n("cols")], [n("v3")]),
        N("MatMul", [n("v3"), n("U")], [n("m")]),  # [16, T*N, O]
        N("Reshape", [n("m"), n("rows16")], [n("m16")]),
        N("MatMul", [n("AT"), n("m16")], [n("y4")]),  # A^T m A: a tile's four outputs
        N("Split", [n("y4")], [n("y0"), n("y1"), n("y2"), n("y3")], axis=0),
        N("Max", [n("y0"), n("y1"), n("y2"), n("y3")], [n("pooled")]),  # (ReduceMax over axis 0 ran 3x slower)
        N("Reshape", [n("pooled"), n("tnm")], [n("tno")]),
    ]
    y = n("tno")
    if "bias" in consts:
        nodes.append(N("Add", [y, n("bias")], [n("biased")]))
        y = n("biased")
    if relu:
        nodes.append(N("Relu", [y], [n("relu")]))
        y = n("relu")
    if transpose is not None:
        inits.append(_tensor([-1, p, q, o], n("nhwc")))
        nodes += [N("Transpose", [y], [n("nto")], perm=[1, 0, 2]),
                  N("Reshape", [n("nto"), n("nhwc")], [transpose.output[0]])]
    else:
        inits.append(_tensor([-1, o, p, q], n("nchw")))
        nodes += [N("Transpose", [y], [n("not")], perm=[1, 2, 0]),
                  N("Reshape", [n("not"), n("nchw")], [out])]
    return nodes, inits


def _weight_values(graph) -> dict:
    """The initializers' values, and those of the nodes that only rearrange them (the kernel's
    transpose to [O, C, kh, kw], the bias's reshape), by name."""
    from onnx.reference import ReferenceEvaluator
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.domain == "" and node.op_type in _LAYOUT_OPS and all(v in values for v in node.input if v):
            outs = ReferenceEvaluator(node).run(None, {v: values[v] for v in node.input if v})
            values.update(zip(node.output, outs))
    return values


def _without_dead(nodes: list, kept: set) -> list:
    """``nodes`` less those whose outputs nothing reads (the rewritten kernels' layout ops)."""
    while True:
        read = {v for node in nodes for v in node.input} | kept
        alive = [node for node in nodes if any(v in read for v in node.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


def _tensor(value, name):
    """An initializer: a list of ints as int64 (shapes, indices), numbers as float32."""
    array = np.array(value, np.int64) if isinstance(value, list) or value.dtype == np.int64 else value.astype(np.float32)
    return numpy_helper.from_array(array, name)


def _shapes(model) -> dict:
    """Every value's shape that shape inference finds, None for a dimension it does not know."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for info in list(inferred.graph.input) + list(inferred.graph.value_info):
        dims = info.type.tensor_type.shape.dim
        out[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return out


def _attrs(node) -> dict:
    return {a.name: (tuple(v) if isinstance(v := helper.get_attribute_value(a), list) else v) for a in node.attribute}
