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

from .reads import readers as _readers, reads as _reads


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
               ) -> tuple[list[bytes], bytes] | None:
    """(the parts' graphs, phase by phase; the apply graph) of ``step`` for ``parts`` parts of a
    batch; ``gradients``: weight -> the value of its gradient in the step; ``row_gradients``:
    weight -> {"updates", "ids"}, the values its rows' gradient is found from
    (training.optimizers.Rows), which each part gives for its own samples
    (``rows:<weight>:<updates|ids>``, the updates times its share) and the update concatenates.

    A step without exchanges is one phase. A step with them (BatchNormalization's sums,
    ops.nn.emit_exchange) is cut at each: the parts run a phase each, every part sends what it
    exchanges (``xchg:<value>``, times its share where the value is in the units of its loss),
    and the next phase reads every part's (``xchg:<value>:<part>``) and adds them up; a value
    that a later phase reads keeps its name, an output of the phase that makes it. Values that
    the update reads from the step besides its state, and that every part computes alike from
    exchanged sums (the moving statistics' batch values), are outputs of the parts (the update
    reads the first part's). None if the update reads anything else."""
    model = onnx.load_from_string(step)
    g = model.graph
    inputs = {i.name: i for i in g.input}
    outputs = {o.name: o for o in g.output}
    row_gradients = row_gradients or {}
    if any(v in inputs for cut in row_gradients.values() for v in cut.values()):
        return None  # (the update would make a value that is also the step's input)
    state = {n for n in inputs if f"new:{n}" in outputs}
    # (weights whose gradients are one value, as two biases added up: the parts give it once, and
    # the update's nodes of each read it)
    first = {}
    for w, value in gradients.items():
        first.setdefault(value, w)
    gradients = {w: value for value, w in first.items()}
    elem = {n: inputs[n].type.tensor_type.elem_type for n in list(gradients) + list(row_gradients)}

    # ---- a part: its loss, metrics and share of the gradients ----
    results = [o for o in g.output if not o.name.startswith("new:")]
    share = helper.make_tensor_value_info("share", onnx.TensorProto.FLOAT, [])
    scaled, grad_outputs = [], []
    folded = _constant_factors(g, gradients, elem, outputs)
    factors = set()

    def factor(name, op, inputs, **attrs):  # (a scalar factor, made once for every weight it scales)
        if name not in factors:
            factors.add(name)
            scaled.append(helper.make_node(op, inputs, [name], **attrs))
        return name

    def times_share(w, value, output):
        scale = "share"
        if elem[w] != onnx.TensorProto.FLOAT:
            scale = factor(f"share:as:{elem[w]}", "Cast", [scale], to=elem[w])
        if w in folded:  # (the update's constant factor, taken by each part on its share)
            scale = factor(f"{scale}:{folded[w][1]}", "Mul", [scale, folded[w][1]])
        scaled.append(helper.make_node("Mul", [value, scale], [output]))
    for w, value in gradients.items():
        times_share(w, value, f"grad:{w}")
        grad_outputs.append(helper.make_tensor_value_info(f"grad:{w}", elem[w], _dims(inputs[w])))
    for w, cut in row_gradients.items():
        times_share(w, cut["updates"], f"rows:{w}:updates")
        scaled.append(helper.make_node("Identity", [cut["ids"]], [f"rows:{w}:ids"]))
        grad_outputs += [helper.make_tensor_value_info(f"rows:{w}:updates", elem[w], ["rows"] + _dims(inputs[w])[1:]),
                         helper.make_tensor_value_info(f"rows:{w}:ids", onnx.TensorProto.INT64, ["rows"])]
    cuts = list(gradients.values()) + [v for cut in row_gradients.values() for v in cut.values()]

    # ---- the update: the parts' gradients summed where the step had its gradients ----
    new = [n for n in outputs if n.startswith("new:")]
    producer = {o: node for node in g.node for o in node.output}
    exchanges = _exchanges(g)
    alike = _alike_in_every_part(g, exchanges)
    from_data = _reading(g, {n for n in inputs if n not in state and n not in ("lr", "step")})
    joined = {w: folded[w][0] if w in folded else value for w, value in gradients.items()}
    made, read_from_parts, kept = set(cuts) | set(joined.values()), [], set()
    stack, seen = list(new), set()
    while stack:  # (what made the gradients goes: the update keeps only what it reads besides them)
        v = stack.pop()
        if v in seen or v in made or v not in producer:
            continue
        seen.add(v)
        if v in alike and v in from_data and v not in outputs:
            read_from_parts.append(v)
            continue
        kept.add(id(producer[v]))
        stack.extend(_reads(producer[v]))
    joins = [node for w, value in joined.items() for node in _added([f"grad:{w}:{k}" for k in range(parts)], value)]
    joins += [helper.make_node("Concat", [f"rows:{w}:{what}:{k}" for k in range(parts)], [cut[what]], axis=0)
              for w, cut in row_gradients.items() for what in ("updates", "ids")]
    update_nodes = joins + [node for node in g.node if id(node) in kept]
    grad_inputs = [helper.make_tensor_value_info(f"grad:{w}:{k}", elem[w], _dims(inputs[w]))
                   for w in gradients for k in range(parts)]
    grad_inputs += [info for w in row_gradients for k in range(parts) for info in (
        helper.make_tensor_value_info(f"rows:{w}:updates:{k}", elem[w], ["rows"] + _dims(inputs[w])[1:]),
        helper.make_tensor_value_info(f"rows:{w}:ids:{k}", onnx.TensorProto.INT64, ["rows"]))]
    types = _value_types(model) if exchanges else {}
    if any(v not in types for v in read_from_parts):
        return None
    reads = {v for node in update_nodes for v in _reads(node)} - {o for node in update_nodes for o in node.output}
    if reads - state - {"lr", "step", ""} - {i.name for i in grad_inputs} - {i.name for i in g.initializer} \
            - set(read_from_parts):
        return None
    if any(f"new:{n}" in outputs and n not in reads for n in state):
        return None  # (the update would not carry that state from step to step)
    stats = [types[v] for v in read_from_parts]
    apply = _graph(g, f"{g.name}_apply", update_nodes, list(g.input) + grad_inputs + stats, [outputs[n] for n in new])

    nodes = _scaled_operands(model, _needed(g, [o.name for o in results] + cuts + read_from_parts) + scaled,
                             [n for n in scaled if n.output[0].startswith("grad:")])
    wanted = results + grad_outputs + stats
    if not exchanges:
        part = _graph(g, f"{g.name}_part", nodes, list(g.input) + [share], wanted)
        return [_model(model, part)], _model(model, apply)
    if row_gradients:
        return None  # (rows of a size that changes, carried across phases: not made)
    types.update({n.output[0]: helper.make_tensor_value_info(n.output[0], n.attribute[0].i, [])
                  for n in scaled if n.op_type == "Cast"})  # (the share in a weight's type)
    phases = _phases(g, nodes, wanted, share, types, exchanges, parts)
    return None if phases is None else ([_model(model, p) for p in phases], _model(model, apply))


def _added(values, out) -> list:
    """Nodes adding ``values`` up into ``out``: a chain of Adds, as onnxruntime runs ``Sum`` on one
    thread (two gradients of 400k weights: 178 us against 67 for Add on two)."""
    nodes, total = [], values[0]
    for i, v in enumerate(values[1:], 1):
        name = out if i == len(values) - 1 else f"{out}:added:{i}"
        nodes.append(helper.make_node("Add", [total, v], [name]))
        total = name
    return nodes or [helper.make_node("Identity", [total], [out])]


def _constant_factors(graph, gradients, elem, outputs) -> dict:
    """weight -> (the value, the scalar constant) for each gradient whose one reader in ``graph``
    multiplies it by a scalar constant (RMSprop's sqrt(1 - rho)): each part multiplies its own
    by its share times that constant instead, which _scaled_operands puts on a small operand,
    and the update adds them up into that value, one pass over the weights fewer."""
    scalars = {i.name: i.data_type for i in graph.initializer if len(i.dims) <= 1 and
               all(d == 1 for d in i.dims)}
    readers = _readers(graph.node)
    found = {}
    for w, value in gradients.items():
        reader = readers.get(value, [])
        if value in outputs or len(reader) != 1 or reader[0].op_type != "Mul":
            continue
        other = [v for v in reader[0].input if v != value]
        if len(other) == 1 and scalars.get(other[0]) == elem[w]:
            found[w] = (reader[0].output[0], other[0])
    return found


def _scaled_operands(model, nodes, scalings) -> list:
    """``nodes`` with each of ``scalings`` (a gradient times its part's share: Mul(value, factor))
    moved onto the smaller operand of the product that makes the value, through the views and
    transposes between them: a kernel gradient, [in, out] from [in, rows] by [rows, out], is
    scaled on its [rows, out] side, 64 x 512 values against 784 x 512 for the MLP's first layer,
    whose scaling took 105 of a part's 727 us. Only where the product's summed dimension is the
    batch's: a convolution's sums over the batch's positions too, where the product is smaller."""
    made = {o: node for node in nodes for o in node.output}
    readers = _readers(nodes)
    inputs = list(model.graph.input)
    batch = inputs[0].type.tensor_type.shape.dim[0].dim_param if inputs and \
        inputs[0].type.tensor_type.shape.dim else ""
    types, replaced = None, {}
    for scaling in scalings:
        value, factor = scaling.input
        chain, v = [], value
        while v in made and made[v].op_type in ("Reshape", "Transpose", "Squeeze", "Unsqueeze") and \
                len(readers.get(v, ())) == 1:
            chain.append(made[v])
            v = made[v].input[0]
        product = made.get(v)
        if product is None or product.op_type != "MatMul" or len(readers.get(v, ())) != 1 or not batch:
            continue
        if types is None:
            types = _value_types(model)
        a, b = (types.get(n) for n in product.input)
        if a is None or b is None:
            continue
        da, db = _dims(a), _dims(b)
        if len(da) != 2 or len(db) != 2 or batch not in (da[1], db[0]) or not all(
                isinstance(d, int) for d in (da[0], db[1])):
            continue
        side = 0 if da[0] <= db[1] else 1  # ([m, rows] by [rows, n]: the side of the smaller m or n)
        operand = product.input[side]
        mul = helper.make_node("Mul", [operand, factor], [f"{scaling.output[0]}:operand"])
        last = [helper.make_node(product.op_type, [mul.output[0] if i == side else x for i, x in
                                                   enumerate(product.input)], list(product.output))]
        for view in reversed(chain):
            copy = onnx.NodeProto()
            copy.CopyFrom(view)
            last.append(copy)
        last[-1].output[0] = scaling.output[0]
        replaced[id(product)] = [mul, last[0]]
        for view, copy in zip(reversed(chain), last[1:]):
            replaced[id(view)] = [copy]
        replaced[id(scaling)] = []
    nodes = [n for node in nodes for n in replaced.get(id(node), [node])]
    return _in_order(nodes) if replaced else nodes


def _exchanges(graph) -> dict:
    """The step's exchanges (ops.nn.emit_exchange): output value -> (kind, input value)."""
    from ..ops.nn import EXCHANGE
    return {node.output[0]: (node.name[len(EXCHANGE):].split("/", 1)[0], node.input[0])
            for node in graph.node if node.op_type == "Identity" and node.name.startswith(EXCHANGE)}


def _alike_in_every_part(graph, kinds) -> set:
    """The values every part computes alike from the sums that the parts exchange (``kinds``:
    _exchanges; of kind ``sum``) and constants alone. (Not from the state too: a shared BatchNormalization's second
    moving-statistics update reads the first, whose own reading of the state the update must
    keep.)"""
    alike = {i.name for i in graph.initializer} | {""}
    for node in graph.node:
        if (node.output[0] in kinds and kinds[node.output[0]][0] == "sum") or set(_reads(node)) <= alike:
            alike.update(node.output)
    return alike


def _reading(graph, sources) -> set:
    """The values computed from any of ``sources``, and those."""
    found = set(sources)
    for node in graph.node:
        if set(_reads(node)) & found:
            found.update(node.output)
    return found


def _value_types(model) -> dict:
    """Every value's type (onnx's shape inference, with sizes read from shapes computed in the
    graph; the batch dimension stays symbolic), those of an unknown rank left out (a graph's
    input or output needs one: a phase crossed by such a value is not made)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    return {i.name: i for i in list(inferred.value_info) + list(inferred.input) + list(inferred.output)
            if i.type.tensor_type.elem_type and i.type.tensor_type.HasField("shape")}


def _phases(g, nodes, wanted, share, types, exchanges, parts):
    """The part graph of ``nodes`` (giving ``wanted``) cut at its ``exchanges`` into phases (see
    split_step): a node runs in the phase of its last-made input, an exchange's sum in the phase
    after the one that made its value. None where a value crossing phases has no known type."""
    phase, consumers = {}, {}
    for node in nodes:
        for v in _reads(node):
            consumers.setdefault(v, []).append(node)
        before = max((phase.get(v, 0) for v in _reads(node)), default=0)
        for o in node.output:
            phase[o] = before + 1 if o in exchanges else before
    count = max(phase.values(), default=0) + 1
    # Then each node as late as what reads it allows: a value made just before its use is still
    # in the cache (a kernel gradient's slices made in the forward phase and read in the
    # backward one cost 1.6x), and fewer values are carried.
    wanted_names = {o.name for o in wanted}
    latest = {}
    for node in reversed(nodes):
        out = node.output[0]
        if out in exchanges:
            latest[out] = phase[out]
            continue
        bound = [count - 1] if any(o in wanted_names for o in node.output) else []
        for o in node.output:
            for reader in consumers.get(o, ()):
                r = reader.output[0]
                bound.append(phase[r] - 1 if r in exchanges else latest[r])
        for o in node.output:
            phase[o] = max(phase[o], min(bound, default=count - 1))
        latest[out] = phase[out]
    # A view (a Reshape, say) whose value a later phase reads is made again there from its input:
    # onnxruntime copies a view that is a graph's output.
    readers = _readers(nodes)
    views = [[] for _ in range(count)]
    for node in nodes:
        if node.op_type in _VIEWS and node.output[0] not in exchanges:
            for q in {phase[r.output[0]] for r in readers.get(node.output[0], ())}:
                if q != phase[node.output[0]]:
                    views[q].append(node)
    staged = [list(v) for v in views]  # each phase's nodes, the sums of what it receives first
    casts = [set() for _ in range(count)]

    def share_as(elem, q):  # the share in the type of the values it scales, in phase q
        if elem == onnx.TensorProto.FLOAT:
            return "share"
        if elem not in casts[q]:
            casts[q].add(elem)
            staged[q].insert(0, helper.make_node("Cast", ["share"], [f"share:{elem}"], to=elem))
        return f"share:{elem}"
    for node in nodes:
        out = node.output[0]
        if out not in exchanges:
            staged[phase[out]].append(node)
            continue
        kind, value = exchanges[out]
        q = phase[out]
        received = [f"xchg:{out}:{k}" for k in range(parts)]
        if kind == "loss":  # (each part's value times its share; the sum seen in the part's units)
            if value not in types:
                return None
            elem = types[value].type.tensor_type.elem_type
            staged[q - 1].append(helper.make_node("Mul", [value, share_as(elem, q - 1)], [f"xchg:{out}"]))
            staged[q].insert(0, helper.make_node("Div", [f"{out}:total", share_as(elem, q)], [out]))
            staged[q][:0] = _added(received, f"{out}:total")
        else:
            staged[q - 1].append(helper.make_node("Identity", [value], [f"xchg:{out}"]))
            staged[q][:0] = _added(received, out)
    given = {i.name for i in g.input} | {i.name for i in g.initializer} | {"share", ""}
    graphs = []
    for q in range(count):
        made = {o for n in staged[q] for o in n.output}
        staged[q] = _in_order(staged[q])
        later = {v for r in range(q + 1, count) for n in staged[r] for v in _reads(n)} - {
            o for r in range(q + 1, count) for n in staged[r] for o in n.output}  # (a share cast: in each phase)
        ins, outs = list(g.input) + [share], [o for o in wanted if o.name in made]
        sent = {v for v in made if v.startswith("xchg:")}
        for v in sorted((made & later - wanted_names) | sent):
            info = types.get(exchanges[v[5:]][1] if v in sent else v)
            if info is None:
                return None
            outs.append(_renamed(info, v))
        for v in sorted({v for n in staged[q] for v in _reads(n)} - made - given):
            info = types.get(exchanges[v[5:v.rindex(":")]][1] if v.startswith("xchg:") else v)
            if info is None:
                return None
            ins.append(_renamed(info, v))
        graphs.append(_graph(g, f"{g.name}_part{q}", staged[q], ins, outs))
    return graphs


_VIEWS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def _in_order(nodes) -> list:
    """``nodes`` in an order where each comes after the nodes that make what it reads."""
    made = {o: i for i, node in enumerate(nodes) for o in node.output}
    done, ordered = set(), []
    for first in range(len(nodes)):
        stack = [(first, False)]
        while stack:  # (depth first, without recursion: a phase may hold thousands of nodes)
            i, ready = stack.pop()
            if ready:
                ordered.append(nodes[i])
                continue
            if i in done:
                continue
            done.add(i)
            stack.append((i, True))
            stack.extend((made[v], False) for v in _reads(nodes[i]) if v in made and made[v] not in done)
    return ordered


def _renamed(info, name):
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    return copy
