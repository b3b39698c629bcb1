"""Lower a graph IR to an ONNX ModelProto.

Each IR op lowers itself (``Op.lower``); this module owns naming, constants,
initializers and the model's signature. The opset and IR version are explicit
so that every onnxruntime from 1.14 on (and the GPU build) loads the file.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..ir import Graph
from ..ops import OPS
from ..ops.base import OPSET

IR_VERSION = 8

_ONNX_DTYPES = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64, "int32": TensorProto.INT32, "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL,
}


class LoweringContext:
    """What an op's ``lower`` may call: emit ONNX nodes, make constants, ask types."""

    def __init__(self, graph: Graph, rename: dict[str, str]):
        self.graph = graph
        self.rename = rename
        self.nodes: list = []
        self.initializers: list = []
        self._names = set(graph.types) | set(rename.values())
        self._const_cache: dict = {}
        self._count = 0
        self.declared: list = []  # (graph values whose types the graph states: declare)

    def fresh(self, base: str) -> str:
        name = base
        while name in self._names:
            self._count += 1
            name = f"{base}_{self._count}"
        self._names.add(name)
        return name

    def declare(self, value: str):
        """State graph value ``value``'s type in the ONNX graph, where ONNX's shape inference finds
        none (MaxUnpool given its output's shape at run time): the values after it then get
        theirs, which a step cut into phases needs for those crossing them."""
        self.declared.append(value)

    def emit(self, op_type: str, inputs, outputs=None, **attrs):
        """Append one ONNX node; returns its output name (or the list, for several)."""
        outputs = list(outputs) if outputs else [self.fresh(f"{op_type.lower()}")]
        attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, [self.rename.get(i, i) for i in inputs],
                                           [self.rename.get(o, o) for o in outputs],
                                           name=self.fresh(f"{outputs[0]}/{op_type}"), **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def subgraph(self, name: str, build, dtype: str) -> onnx.GraphProto:
        """A graph (an ``If``'s branch) of the nodes that ``build()`` emits; its outputs are the
        values ``build`` returns, of ``dtype`` (fresh names: a branch may not define an outer
        value). It reads the outer graph's values and constants by name."""
        outer, self.nodes = self.nodes, []
        try:
            values = build()
            nodes = self.nodes
        finally:
            self.nodes = outer
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(v, _ONNX_DTYPES[dtype], None)
                                                   for v in values])

    def const(self, value, dtype: str) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (dtype, array.shape, array.tobytes())
        if key not in self._const_cache:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def own_const(self, name: str, value, dtype: str) -> str:
        """A constant of its own (never shared with an equal one), named ``name`` or a fresh name
        that begins with it: a rewrite of the built graph finds it by that name and may change it
        (ops/recurrent.py's fused-op threshold)."""
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def used(self, value: str) -> bool:
        """Whether a node or a graph output reads this value (optional ONNX outputs are
        left out when nothing does)."""
        return self.graph.uses(value) > 0

    def zeros(self, shape_value: str, dtype: str) -> str:
        """A zero tensor of the (run-time) shape held in ``shape_value``."""
        return self.full(shape_value, dtype, 0)

    def full(self, shape_value: str, dtype: str, value) -> str:
        """A tensor of the (run-time) shape held in ``shape_value``, every element ``value``."""
        return self.emit("ConstantOfShape", [shape_value],
                         value=helper.make_tensor("value", _ONNX_DTYPES[dtype], [1], [value]))

    def dtype(self, value: str) -> str:
        return self.graph.types[value].dtype

    def shape(self, value: str) -> tuple:
        return self.graph.types[value].shape

    @staticmethod
    def onnx_dtype(name: str) -> int:
        return _ONNX_DTYPES[name]


def value_info(name: str, t) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, _ONNX_DTYPES[t.dtype], dims)


def to_onnx(graph: Graph, weights: dict[str, np.ndarray] | None = None, params_as_inputs: bool = False,
            doc: str = "") -> onnx.ModelProto:
    """Lower ``graph``. Parameters become initializers holding ``weights`` (by param name),
    or graph inputs when ``params_as_inputs`` (for callers that bind them at run time)."""
    # Name each output's value as the source does, unless that value is an input,
    # a weight, or feeds two outputs (then an Identity carries the public name).
    rename, identities = {}, []
    for public, value in graph.outputs:
        if graph.kind(value) == "node" and value not in rename and public not in graph.types:
            rename[value] = public
        elif rename.get(value) != public and value != public:
            identities.append((value, public))
    ctx = LoweringContext(graph, rename)
    for node in graph.nodes():
        OPS[node.op].lower(ctx, node.inputs, node.outputs, node.attrs)
    for value, public in identities:
        ctx.emit("Identity", [value], [public])

    inputs = [value_info(n, graph.types[n]) for n in graph.inputs]
    initializers = list(ctx.initializers)
    for name, array in graph.consts.items():
        initializers.append(numpy_helper.from_array(np.asarray(array), name))
    for name, p in graph.params.items():
        if params_as_inputs:
            inputs.append(value_info(name, p.type))
        else:
            if weights is None or name not in weights:
                raise ValueError(f"no value for weight {name}")
            initializers.append(numpy_helper.from_array(np.asarray(weights[name], dtype=p.type.dtype), name))
    outputs = [value_info(public, graph.types[value]) for public, value in graph.outputs]
    declared = [value_info(ctx.rename.get(v, v), graph.types[v]) for v in ctx.declared]
    onnx_graph = helper.make_graph(ctx.nodes, graph.name, inputs, outputs, initializers, value_info=declared)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kcompile", producer_version=__version__, doc_string=doc)
    model.ir_version = IR_VERSION
    return model
