"""A training step split into per-core parts of the batch (data parallelism on one CPU).

``split_step`` cuts a training step at its gradients into two graphs:

- the *gradient* graph: a part of the batch in, the part's loss, metrics and gradients out,
  each gradient already multiplied by the part's share of the batch (``share``, the part's
  samples over the batch's), so that the gradients of the parts add up to the batch's;
- the *apply* graph: the weights, the optimizer's slots, ``lr``, ``step`` and each part's
  gradients in (``grad:<weight>:<part>``), their sum fed to the step's own optimizer update
  (clipping included), the new weights and slots out. A table updated on the rows the batch
  looked up (training.optimizers.Rows) gets each part's looked-up rows and their gradients
  (``rows:<weight>:<updates|ids>:<part>``, as many as the part's ids), joined.

The runtime runs the parts at once, each on its own core in a one-thread session, then the
update (binding.ShardedRunner). Why: onnxruntime runs every op of a step on all cores, and
each op's halves meet in the cores' caches; when this machine's two virtual cores sit far
apart (a cache line's round trip between them then takes 340-410 ns instead of 54-75, for
minutes at a time) the MNIST CNN's step went from 17 to 27 ms, where two one-thread parts and
the update took 16.4-17.0 ms in both states. A step whose loss or layers combine samples is
not split (``TrainingProgram.per_sample`` says why).
"""
from __future__ import annotations

import onnx
from onnx import helper


def _reads(node) -> set:
    """The values a node reads: its inputs, and what the graphs of its attributes (a Scan's or
    Loop's body) read from outside them."""
    names = set(node.input)
    for attribute in node.attribute:
        for body in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
            inner = {o for n in body.node for o in n.output} | {i.name for i in body.input} | \
                {i.name for i in body.initializer}
            names |= {v for n in body.node for v in _reads(n)} - inner
    return names


def _needed(graph, outputs) -> list:
    """The nodes the values ``outputs`` depend on, in graph order."""
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output}
    keep, stack = set(), [v for v in outputs if v in producer]
    while stack:
        i = producer[stack.pop()]
        if i in keep:
            continue
        keep.add(i)
        stack.extend(v for v in _reads(graph.node[i]) if v in producer)
    return [node for i, node in enumerate(graph.node) if i in keep]


def _graph(source, name, nodes, inputs, outputs):
    """A graph of ``nodes`` reading the ``source`` graph's initializers and inputs they use."""
    used = {v for node in nodes for v in _reads(node)}
    initializers = [i for i in source.initializer if i.name in used]
    known = {i.name for i in initializers}
    inputs = [i for i in inputs if i.name in used and i.name not in known]
    return helper.make_graph(nodes, name, inputs, outputs, initializers)


def _dims(info) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in info.type.tensor_type.shape.dim]


def _model(source, graph) -> bytes:
    model = helper.make_model(graph, opset_imports=source.opset_import)
    model.ir_version = source.ir_version
    onnx.checker.check_model(model)
    return model.SerializeToString()


def split_step(step: bytes, gradients: dict, parts: int = 2, row_gradients: dict | None = None
               ) -> tuple[bytes, bytes] | None:
    """(gradient graph, apply graph) of ``step`` for ``parts`` parts of a batch; ``gradients``:
    weight -> the value of its gradient in the step; ``row_gradients``: weight -> {"updates",
    "ids"}, the values its rows' gradient is found from (training.optimizers.Rows), which each
    part gives for its own samples (``rows:<weight>:<updates|ids>``, the updates times its
    share) and the update concatenates. None if the update reads anything but the weights,
    the slots, ``lr``, ``step`` and the gradients."""
    model = onnx.load_from_string(step)
    g = model.graph
    inputs = {i.name: i for i in g.input}
    outputs = {o.name: o for o in g.output}
    row_gradients = row_gradients or {}
    if any(v in inputs for cut in row_gradients.values() for v in cut.values()):
        return None  # (the update would make a value that is also the step's input)
    state = {n for n in inputs if f"new:{n}" in outputs}
    elem = {n: inputs[n].type.tensor_type.elem_type for n in list(gradients) + list(row_gradients)}

    # ---- a part: its loss, metrics and share of the gradients ----
    results = [o for o in g.output if not o.name.startswith("new:")]
    share = helper.make_tensor_value_info("share", onnx.TensorProto.FLOAT, [])
    scaled, grad_outputs = [], []

    def times_share(w, value, output):
        factor = "share"
        if elem[w] != onnx.TensorProto.FLOAT:
            factor = f"share:{w}"
            scaled.append(helper.make_node("Cast", ["share"], [factor], to=elem[w]))
        scaled.append(helper.make_node("Mul", [value, factor], [output]))
    for w, value in gradients.items():
        times_share(w, value, f"grad:{w}")
        grad_outputs.append(helper.make_tensor_value_info(f"grad:{w}", elem[w], _dims(inputs[w])))
    for w, cut in row_gradients.items():
        times_share(w, cut["updates"], f"rows:{w}:updates")
        scaled.append(helper.make_node("Identity", [cut["ids"]], [f"rows:{w}:ids"]))
        grad_outputs += [helper.make_tensor_value_info(f"rows:{w}:updates", elem[w], ["rows"] + _dims(inputs[w])[1:]),
                         helper.make_tensor_value_info(f"rows:{w}:ids", onnx.TensorProto.INT64, ["rows"])]
    cuts = list(gradients.values()) + [v for cut in row_gradients.values() for v in cut.values()]
    nodes = _needed(g, [o.name for o in results] + cuts) + scaled
    part = _graph(g, f"{g.name}_part", nodes, list(g.input) + [share], results + grad_outputs)

    # ---- the update: the parts' gradients summed where the step had its gradients ----
    new = [n for n in outputs if n.startswith("new:")]
    made = set(cuts)
    kept = [node for node in _needed(g, new) if not set(node.output) & made]
    joins = [helper.make_node("Sum", [f"grad:{w}:{k}" for k in range(parts)], [value])
             for w, value in gradients.items()]
    joins += [helper.make_node("Concat", [f"rows:{w}:{what}:{k}" for k in range(parts)], [cut[what]], axis=0)
              for w, cut in row_gradients.items() for what in ("updates", "ids")]
    # (what made the gradients goes: the update keeps only what it reads besides them)
    update_nodes = _needed(helper.make_graph(joins + kept, "update", [], []), new)
    grad_inputs = [helper.make_tensor_value_info(f"grad:{w}:{k}", elem[w], _dims(inputs[w]))
                   for w in gradients for k in range(parts)]
    grad_inputs += [info for w in row_gradients for k in range(parts) for info in (
        helper.make_tensor_value_info(f"rows:{w}:updates:{k}", elem[w], ["rows"] + _dims(inputs[w])[1:]),
        helper.make_tensor_value_info(f"rows:{w}:ids:{k}", onnx.TensorProto.INT64, ["rows"]))]
    reads = {v for node in update_nodes for v in _reads(node)} - {o for node in update_nodes for o in node.output}
    if reads - state - {"lr", "step", ""} - {i.name for i in grad_inputs} - {i.name for i in g.initializer}:
        return None
    apply = _graph(g, f"{g.name}_apply", update_nodes, list(g.input) + grad_inputs, [outputs[n] for n in new])
    return _model(model, part), _model(model, apply)
