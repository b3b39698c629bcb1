"""Unread borders: compute only the rows and columns some output depends on.

A valid (unpadded) 2x2 max pool of an 11x11 image reads rows and columns 0-9 only; the
convolution producing the 11th row and column does work nobody reads. The Keras MNIST CNN
has this at both pools: its outputs depend on the top-left 26x26 pixels of the 28x28 input,
and pruning the border saves 15% of the first convolution's work and 17% of the second's.

The pass walks the graph backwards and records, for each value, the extent of every axis
that its readers need (a prefix: unpadded windows start at index 0). Where a value is
needed less than its full extent, the crop is taken at its source (a graph input, a weight,
or an op this pass does not see through) with one Slice, and the ops between the source and
the readers are re-emitted with their smaller shapes. The results are the same numbers:
only values no output depends on are dropped.
"""
from __future__ import annotations

from ..ir import Graph
from ..ops import OPS, emit
from ..ops.elementwise import Binary, Unary
from .util import add, remove_if_dead

WINDOWED = ("Conv", "MaxPool", "AveragePool")
SAME_EXTENT = ("Identity", "Cast")  # besides element-wise ops; not Dropout: its noise keeps the shape


def crop_unread_borders(g: Graph) -> Graph:
    need = _needed_extents(g)
    renamed: dict[str, str] = {}
    sources = list(g.inputs) + list(g.params) + list(g.consts)
    for node in g.nodes():
        if not _sees_through(g, node):
            sources.extend(node.outputs)
    for value in sources:
        shape = g.types[value].shape
        cut = [(axis, n) for axis, (n, full) in enumerate(zip(need.get(value, shape), shape)) if n != full]
        if cut and _shrinks_a_conv(g, value, need):
            like = g.consumers(value)[0]
            renamed[value] = add(g, like, "Slice", [value], starts=(0,) * len(cut),
                                 ends=tuple(n for _, n in cut), axes=tuple(a for a, _ in cut))
    if not renamed:
        return g
    slices = set(renamed.values())
    replaced = []
    for node in g.nodes():
        if node.outputs[0] in slices or not any(v in renamed for v in node.inputs):
            continue
        replaced.append(node)
        inputs = [renamed.get(v, v) for v in node.inputs]
        if isinstance(OPS[node.op], Binary):
            inputs = _match_extents(g, node, inputs)
        outs = emit(g, node.op, inputs, node.attrs, loc=node.loc, layer=node.layer)
        for old, new in zip(node.outputs, outs):
            if g.types[old].shape == g.types[new].shape:
                g.replace_uses(old, new)
            else:
                renamed[old] = new
    for node in replaced:
        remove_if_dead(g, node)
    return g


def _match_extents(g: Graph, node, inputs: list) -> list:
    """Operands of an element-wise op cropped from different sources may differ in extent (one
    of them is also read whole elsewhere): the larger is cut to the smaller here."""
    rank = max(g.types[v].rank for v in inputs)
    shapes = [(rank - g.types[v].rank) * (1,) + tuple(g.types[v].shape) for v in inputs]
    target = [min((s[a] for s in shapes if isinstance(s[a], int) and s[a] != 1), default=None) for a in range(rank)]
    matched = []
    for v, shape in zip(inputs, shapes):
        cut = [(a - (rank - g.types[v].rank), t) for a, t in enumerate(target)
               if t is not None and isinstance(shape[a], int) and shape[a] not in (1, t)]
        matched.append(add(g, node, "Slice", [v], starts=(0,) * len(cut), ends=tuple(t for _, t in cut),
                           axes=tuple(a for a, _ in cut)) if cut else v)
    return matched


def _cropped(g: Graph, value: str, need: dict) -> bool:
    return list(need.get(value, g.types[value].shape)) != list(g.types[value].shape)


def _shrinks_a_conv(g: Graph, source: str, need: dict) -> bool:
    """A Slice is a copy: worth it where a convolution downstream then computes fewer outputs
    (a convolution that only reads less, e.g. a strided one skipping a last row, saves nothing)."""
    stack, seen = [source], set()
    while stack:
        for node in g.consumers(stack.pop()):
            if node.name in seen or not _sees_through(g, node) or not _cropped(g, node.outputs[0], need):
                continue
            if node.op == "Conv":
                return True
            seen.add(node.name)
            stack.extend(node.outputs)
    return False


def _sees_through(g: Graph, node) -> bool:
    """Ops whose output shrinks with their input: re-emitted, never sliced."""
    return _window(g, node) is not None or node.op in SAME_EXTENT or node.op == "Transpose" \
        or isinstance(OPS[node.op], (Unary, Binary))


def _window(g: Graph, node):
    """(kernel, strides, dilations) of an unpadded Conv or pooling over the spatial axes, else None."""
    if node.op not in WINDOWED or any(node.attrs.get("pads", ())):
        return None
    if node.op == "MaxPool" and g.uses(node.outputs[1]):
        return None  # its indices count positions of the full input
    x = g.types[node.inputs[0]]
    n = x.rank - 2
    kernel = g.types[node.inputs[1]].shape[2:] if node.op == "Conv" else tuple(node.attrs["kernel_shape"])
    return (tuple(kernel), tuple(node.attrs.get("strides", (1,) * n)),
            tuple(node.attrs.get("dilations", (1,) * n)))


def _needed_extents(g: Graph) -> dict:
    """value -> the extent of each axis that its readers need (the full shape where unknown)."""
    need: dict[str, list] = {}
    for _, v in g.outputs:
        need[v] = list(g.types[v].shape)

    def require(value, extents):
        have = need.get(value, extents)
        need[value] = [max(n, h) if isinstance(n, int) and isinstance(h, int) else n for n, h in zip(extents, have)]

    for node in reversed(g.nodes()):
        out = need.get(node.outputs[0], list(g.types[node.outputs[0]].shape))
        window = _window(g, node)
        for i, value in enumerate(node.inputs):
            shape = list(g.types[value].shape)
            if window is not None and i == 0:
                kernel, strides, dilations = window
                spatial = [(e - 1) * s + (k - 1) * d + 1 if isinstance(e, int) else full  # a named size: all
                           for e, k, s, d, full in zip(out[2:], kernel, strides, dilations, shape[2:])]
                require(value, shape[:2] + spatial)
            elif node.op == "Transpose":
                extents = list(shape)
                for i_out, axis in enumerate(node.attrs["perm"]):
                    extents[axis] = out[i_out]
                require(value, extents)
            elif node.op in SAME_EXTENT or isinstance(OPS[node.op], (Unary, Binary)):
                # Broadcasting aligns trailing axes; an axis of size 1 is read whole.
                offset = len(out) - len(shape)
                require(value, [n if n == 1 else out[offset + a] for a, n in enumerate(shape)])
            else:
                require(value, shape)
    return need
