"""Tensor types: a dtype and a shape whose dimensions are ints or symbols (the batch is "N")."""
from __future__ import annotations

import ast as pyast
import operator
import re
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError, format_shape, show

BATCH = "N"  # the symbolic batch dimension, fixed only at run time
# Stateful recurrent layers' states: graph inputs STATE + "<layer>/h", outputs NEXT_STATE + "<layer>/h"
# (the manifest lists them under "states", apart from the model's inputs and outputs).
STATE, NEXT_STATE = "state:", "next_state:"

DTYPES = {
    "float32": np.float32, "float64": np.float64, "float16": np.float16,
    "int64": np.int64, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
FLOAT_DTYPES = ("float32", "float64", "float16")



@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def size(self) -> int:
        """Number of elements; only for static shapes."""
        return int(np.prod(self.shape, dtype=np.int64))

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{format_shape(self.shape)}"


# A size computed from one named dimension by windows and offsets is (T + a) // s: spelled
# T, T-2, (T-2)//2 or T//4, one spelling per size, so that equal sizes compare equal (two
# 2-step pools and one 4-step pool give the same spelling).
_AFFINE = re.compile(r"(?:\((?P<n1>[A-Za-z_]\w*)(?P<a1>[+-]\d+)\)|(?P<n2>[A-Za-z_]\w*)(?P<a2>[+-]\d+)?)"
                     r"(?://(?P<s>\d+))?")


def _affine(size):
    """(name, a, s) with size == (name + a) // s, or None for another expression."""
    match = _AFFINE.fullmatch(size)
    if not match or (match["n1"] and not match["s"]):
        return None
    name = match["n1"] or match["n2"]
    return name, int(match["a1"] or match["a2"] or 0), int(match["s"] or 1)


def _spell(name, a, s):
    inner = name if a == 0 else f"{name}{a:+d}"
    if s == 1:
        return inner
    return f"{inner}//{s}" if a == 0 else f"({inner})//{s}"


def offset_dim(size, delta: int):
    """``size + delta`` for an int or a named dimension: ``T`` and -2 give ``T-2``, ``T-2`` and +2
    give ``T`` again, ``(T-2)//2`` and +1 give ``T//2``."""
    if isinstance(size, int):
        return size + delta
    affine = _affine(size)
    if affine:
        name, a, s = affine
        return _spell(name, a + delta * s, s)  # (T + a)//s + d == (T + a + d s)//s
    match = re.fullmatch(r"(.+?)([+-]\d+)", size)
    if match:
        size, delta = match.group(1), delta + int(match.group(2))
    return size if delta == 0 else f"{size}{delta:+d}"


def window_output_dim(size, span: int, stride: int):
    """The size after a sliding window that covers ``span`` of the (padded) input per output:
    ``(size - span) // stride + 1``, kept as an expression over a named size (``T-2``,
    ``(T-2)//2``), a dimension equal only to itself that the runtime evaluates."""
    if isinstance(size, int):
        return (size - span) // stride + 1
    affine = _affine(size)
    if affine:  # ((T + a)//s - span + stride)//stride == (T + a + (stride - span) s)//(s stride)
        name, a, s = affine
        return _spell(name, a + (stride - span) * s, s * stride)
    if stride == 1:
        return offset_dim(size, 1 - span)
    return f"({offset_dim(size, -span)})//{stride}+1"


_NAME = re.compile(r"[A-Za-z_]\w*")


def dim_names(dim) -> set:
    """The names a dimension's size depends on ({"T"} for ``(T-2)//2``)."""
    return set(_NAME.findall(dim)) if isinstance(dim, str) else set()


_ARITHMETIC = {pyast.Add: operator.add, pyast.Sub: operator.sub, pyast.Mult: operator.mul,
               pyast.FloorDiv: operator.floordiv}


def evaluate_dim(dim, sizes: dict) -> int:
    """A dimension's size, given the named dimensions' sizes (``{"N": 32, "T": 7}``): each name is
    replaced by its size, and what is left must be integer arithmetic (+, -, *, //)."""
    if isinstance(dim, int):
        return dim
    if dim in sizes:  # a name itself (the batch's N, each training step)
        return sizes[dim]
    missing = dim_names(dim) - set(sizes)
    if missing:
        raise ValueError(f"the size of dimension {dim} is not known here ({', '.join(sorted(missing))})")

    def value(node):
        if isinstance(node, pyast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, pyast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"the size of dimension {dim} is not known here")
    try:
        tree = pyast.parse(_NAME.sub(lambda m: str(sizes[m.group(0)]), dim), mode="eval")
    except SyntaxError:
        raise ValueError(f"the size of dimension {dim} is not known here") from None
    return value(tree.body)


def normalize_axis(axis: int, rank: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ShapeError(f"an axis must be an integer, got {show(axis)}")
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def check_one_dtype(what: str, values, called: str = "inputs") -> None:
    """``what``'s ``values`` (tensors or tensor types) share one dtype; where they do not, a
    ShapeError naming the dtypes (not their shapes, which may well be equal) and the cast."""
    dtypes = [v.dtype for v in values]
    if len(set(dtypes)) > 1:
        listed = ", ".join(dtypes[:-1]) + " and " + dtypes[-1]
        to = next((d for d in dtypes if d in FLOAT_DTYPES), dtypes[0])
        raise ShapeError(f"{what} of {listed}: {called} must have one dtype",
                         f"cast one {called[:-1]} with cast(x, {to})" if len(dtypes) == 2 else
                         f"cast the {called} to one dtype, e.g. with cast(x, {to})")


def broadcast_shapes(a: tuple, b: tuple) -> tuple:
    """numpy broadcasting, with symbolic dimensions equal only to themselves."""
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ShapeError(f"shapes {format_shape(a)} and {format_shape(b)} do not broadcast "
                             f"(dimension {da} vs {db})")
    return tuple(reversed(out))


@dataclass(frozen=True)
class Tensor:
    """A value of a graph under construction: its name and type (what layers see)."""
    name: str
    type: TensorType

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def rank(self) -> int:
        return self.type.rank

    @property
    def dtype(self) -> str:
        return self.type.dtype
