"""Where a training step keeps a state tensor transposed (the kernel of a feature-major Dense
and its optimizer slots, see passes.transpose.feature_major_dense).

The step written to a build folder reads and writes every weight and slot in Keras layout:
each transposed one passes through a Transpose on its way in (``<name>`` -> ``<name>:held``)
and on its way out (``new:<name>:held`` -> ``new:<name>``). The runtime takes those transposes
out again (``hold_transposed``) and keeps the tensor transposed in its own buffers, so a step
copies nothing; a kernel that another model shares keeps its transposes, so both models bind
one Keras-layout buffer.
"""
from __future__ import annotations

import onnx
from onnx import helper


def _held(name: str) -> str:
    return f"{name}:held"


def _swap_dims(graph, names) -> None:
    for info in list(graph.input) + list(graph.output):
        if info.name in names:
            dims = info.type.tensor_type.shape.dim
            dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value


def _rename(graph, renamed: dict) -> None:
    for node in graph.node:
        node.input[:] = [renamed.get(v, v) for v in node.input]
        node.output[:] = [renamed.get(v, v) for v in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)


def keras_layout(step: bytes, names) -> bytes:
    """``step`` (whose inputs ``names`` and outputs ``new:<name>`` are transposed [N, K]) with
    those inputs and outputs in Keras layout [K, N]."""
    model = onnx.load_from_string(step)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for name in names:
        new = f"new:{name}"
        _rename(graph, {name: _held(name), new: _held(new)})
        graph.node.insert(0, helper.make_node("Transpose", [name], [_held(name)], perm=[1, 0]))
        if new in outputs:  # (a kernel without a gradient is read only)
            graph.node.append(helper.make_node("Transpose", [_held(new)], [new], perm=[1, 0]))
        _swap_dims(graph, (name, new))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def hold_transposed(step: bytes, names) -> bytes:
    """The inverse of keras_layout for ``names``: the step reads and writes them transposed."""
    if not names:
        return step
    model = onnx.load_from_string(step)
    graph = model.graph
    wrappers = {(_held(n) if i == 0 else f"new:{n}") for n in names for i in (0, 1)}
    kept = [node for node in graph.node if not (node.op_type == "Transpose" and node.output[0] in wrappers)]
    del graph.node[:]
    graph.node.extend(kept)
    _rename(graph, {held: name for name in names for held, name in
                    ((_held(name), name), (_held(f"new:{name}"), f"new:{name}"))})
    _swap_dims(graph, {v for n in names for v in (n, f"new:{n}")})
    return model.SerializeToString()
