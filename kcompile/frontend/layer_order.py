"""Keras's order of a model's layers, and so of its weights (``get_weights``, ``model.layers``).

Keras 3 lists a functional model's layers by depth, the number of operations between a layer
and the model's outputs, deepest first; layers of one depth in the order a depth-first walk
back from the outputs first meets them (``map_graph`` in keras/src/ops/function.py). A model
whose branches differ in length so lists its weights in another order than its source, and a
user porting weights with ``set_weights(keras_model.get_weights())`` needs that order. For a
Sequential stack it is the source order.

The walk runs over the model's top-level calls: each layer call, and each operation written
between layers (``a + b``, ``relu(x)``), which Keras counts as one operation too.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph
from ..ir.graph import LayerRecord


@dataclass
class Call:
    """One top-level call: a layer's (``record``) or an operation's (``record`` None)."""
    record: LayerRecord | None
    inputs: list | None  # the values passed (an operation's are found in the graph)
    outputs: list


def keras_layer_order(graph: Graph, calls: list[Call], outputs: list[str]) -> tuple[list, list]:
    """(``graph.layers`` in Keras's order, the layers no value of ``outputs`` depends on)."""
    made_by: dict[str, int] = {}  # value -> the call that made it, among the calls so far

    def calls_behind(values) -> list[int]:
        """The calls that ``values`` come from, through the graph's values no call made (constants,
        a layer's inner values such as a mask); in first-met order, iteratively (deep models),
        each value once (a layer's inner graph may reach one value by many paths)."""
        found, stack, seen = [], list(reversed(values)), set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in made_by:
                found.append(made_by[v])
                continue
            node = graph.producer_of(v)
            if node is not None and v not in graph.inputs:
                stack += reversed(node.inputs)
        return found

    # In call order, each call's parents among the calls before it: an identity layer
    # (Activation(linear)) passes its input value on, and is its next reader's parent.
    parents = {}
    for i, call in enumerate(calls):
        if call.inputs is not None:
            parents[i] = calls_behind(call.inputs)
        else:  # an operation: its operands are its graph nodes' inputs (or its value, if it passed one on)
            operands = []
            for v in call.outputs:
                node = graph.producer_of(v)
                operands += [v] if v in made_by or node is None else node.inputs
            parents[i] = calls_behind(operands)
        made_by.update((v, i) for v in call.outputs)

    def operation(i):  # a shared layer is one operation, called at several nodes
        record = calls[i].record
        return ("layer", record.name) if record is not None else ("op", i)

    # Depth-first from each output, in order: operations numbered as first met, nodes listed
    # once all their parents are (keras's _build_map).
    index, finished, post_order = {}, set(), []
    for start in calls_behind(outputs):
        stack = [(start, None)]
        while stack:
            node, pending = stack.pop()
            if pending is None:
                if node in finished:
                    continue
                index.setdefault(operation(node), len(index))
                pending = iter(parents[node])
            child = next((p for p in pending if p not in finished), None)
            if child is None:
                finished.add(node)
                post_order.append(node)
            else:
                stack += [(node, pending), (child, None)]

    node_depth, op_depth = {}, {}
    for node in reversed(post_order):
        depth = max(node_depth.setdefault(node, 0), op_depth.get(operation(node), 0))
        op_depth[operation(node)] = node_depth[node] = depth
        for p in parents[node]:
            node_depth[p] = max(depth + 1, node_depth.get(p, 0))

    ordered = sorted(op_depth, key=lambda op: (-op_depth[op], index[op]))
    by_name = {r.name: r for r in graph.layers}
    reached = [by_name[name] for kind, name in ordered if kind == "layer"]
    seen = {r.name for r in reached}
    return reached, [r for r in graph.layers if r.name not in seen]


def drop_unreached(graph: Graph, live: list[str], unreached: list[LayerRecord]) -> list[LayerRecord]:
    """Drop the nodes no value of ``live`` (the outputs, and the values a train section reads)
    depends on, and of the layers ``unreached`` from the outputs those left without a node, with
    their weights: as Keras's Model(inputs, outputs), which holds the layers between them only,
    so that a layer written but never used does not add weights that a Keras model's
    get_weights() would not give. Returns the unreached layers kept (a loss reads them)."""
    needed, stack = {}, list(live)
    while stack:
        node = graph.producer_of(stack.pop())
        if node is not None and node.name not in needed:
            needed[node.name] = node
            stack += node.inputs
    for node in graph.nodes():
        if node.name not in needed:
            graph.remove_node(node)
    layers = {n.layer for n in needed.values()}
    kept = [r for r in unreached if any(n == r.name or n.startswith(f"{r.name}/") for n in layers if n)]
    gone = [r for r in unreached if r not in kept]
    for record in gone:
        for p in record.params:
            if p not in graph.readers:
                del graph.params[p], graph.types[p]
    graph.prune_unused()
    dead = tuple(f"{r.name}/" for r in gone)
    graph.meta["activity_regularizers"] = [a for a in graph.meta.get("activity_regularizers", ()) if a[0] in graph.types]
    graph.meta["inner_layers"] = [e for e in graph.meta.get("inner_layers", ()) if not e[0].startswith(dead)]
    return kept
