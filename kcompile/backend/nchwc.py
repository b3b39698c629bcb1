"""onnxruntime's blocked-channel (NCHWc) convolutions on the CPU: for graphs whose kernels are
inputs, and the inference graph's forms that its own optimizer blocks.

onnxruntime's CPU provider rewrites a Conv into its fastest form, a convolution over channels
in blocks of 8 or 16 (``com.microsoft.nchwc``), only when the kernel is a constant it can
reorder once. In a training step, and in the graphs that read the weights as inputs, every
kernel is an input, so the second convolution of the MNIST CNN ran the generic im2col form:
3.2 ms forward where the blocked one takes 2.7, and its input gradient, a ConvTranspose, 4.3
ms where the blocked convolution of the flipped kernel takes 3.2 (both including the layout
conversions; results equal to 4e-7).

``use_nchwc`` rewrites such a graph for the session that runs it on the CPU: each Conv, and
each stride-1 ConvTranspose as the convolution of its flipped, transposed kernel, whose
output channels are a multiple of the block becomes an NCHWc Conv whose kernel the graph
reorders each run (a few thousand numbers), between ReorderInput (or none: fewer input
channels than a block are read as NCHW, as onnxruntime does for a first layer) and
ReorderOutput. (onnxruntime does not cancel a ReorderOutput and the next ReorderInput
between two rewritten convolutions, nor fuse a following Relu: each convolution converts
its own input and output, which the MNIST CNN's layout needs anyway; but max pools that are
all that reads a convolution run blocked on its output: _pool_blocked.) The files in a build
folder stay standard ONNX; only the CPU session runs the rewritten graph (the CUDA
provider has no such ops).

``predict``'s graph has its weights folded in as constants, so onnxruntime blocks its 2-D
convolutions itself; ``one_row_maps`` and ``global_pools`` rewrite it, in standard ONNX ops,
into the forms that rewrite also takes: 1-D convolutions and pools over a map of one row, and
global poolings as GlobalAveragePool/GlobalMaxPool rather than a ReduceMean.
"""
from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .reads import readers as readers_of

DOMAIN = "com.microsoft.nchwc"


@functools.lru_cache(maxsize=1)
def block_size() -> int | None:
    """The channel block onnxruntime's CPU provider uses here (16 with AVX-512, 8 with AVX2), or
    None where it has no blocked convolutions: read from how it rewrites a probe convolution."""
    import onnxruntime as ort
    o = 32
    kernel = np.arange(o * o, dtype=np.float32).reshape(o, o, 1, 1)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (1, o, 4, 4))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, (1, o, 4, 4))],
                              initializer=[numpy_helper.from_array(kernel, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    try:
        with tempfile.TemporaryDirectory() as folder:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.optimized_model_filepath = os.path.join(folder, "probe.onnx")
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath)
    except Exception:  # no usable temporary folder, or an onnxruntime that cannot do this: plain convolutions
        return None
    reordered = [numpy_helper.to_array(i) for i in optimized.graph.initializer]
    if not any(n.domain == DOMAIN and n.op_type == "Conv" for n in optimized.graph.node) or len(reordered) != 1:
        return None
    for block in (16, 8, 4):
        if np.array_equal(reordered[0].reshape(-1), _reorder_numpy(kernel, block).reshape(-1)):
            return block
    return None


def _reorder_numpy(kernel: np.ndarray, block: int) -> np.ndarray:
    o, i, kh, kw = kernel.shape
    return kernel.reshape(o // block, block, i // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)


def use_nchwc(model_bytes: bytes, block: int | None = None) -> bytes:
    """``model_bytes`` with its convolutions over input kernels in onnxruntime's blocked form
    (unchanged where none qualifies, or where this onnxruntime has no blocked convolutions)."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    if not any(n.domain == "" and n.op_type in ("Conv", "ConvTranspose") and n.input[1] not in constants
               for n in graph.node):
        return model_bytes
    block = block or block_size()  # (probed only for a graph that could use it: 0.1 s once)
    if block is None:
        return model_bytes
    shapes = _float32_static_shapes(model)
    nodes, changed = [], False
    for index, node in enumerate(graph.node):
        rewritten = None
        if node.domain == "" and node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in constants:
            rewritten = _rewrite(node, shapes.get(node.input[1]), block, f"nchwc{index}:{node.name or node.output[0]}")
        nodes.extend(rewritten or [node])
        changed |= rewritten is not None
    if not changed:
        return model_bytes
    nodes = _relu_fused(nodes, {o.name for o in graph.output})
    nodes = _pool_blocked(nodes, {o.name for o in graph.output})
    nodes = _reorders_cancelled(nodes, {o.name for o in graph.output}, block)
    nodes = _channels_last_edges(nodes, {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model.SerializeToString()


# Element-wise ops of one data input: the same on a map of one row, so that a chain of
# convolutions and pools stays on its row between them.
_ROW_WISE = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
             "Softsign", "Clip", "Identity", "Neg", "Abs", "Exp")


def one_row_maps(model_bytes: bytes) -> bytes:
    """``model_bytes`` (an inference graph, its weights folded in) with each 1-D Conv of a constant
    kernel, MaxPool and AveragePool as the 2-D one over a map of one row, and the element-wise
    ops between them on that row; a channels-last map transposed for them, or from them, is
    transposed as a 4-D NHWC map, which onnxruntime takes into its ReorderInput or ReorderOutput.
    onnxruntime's own graph optimizer blocks 2-D convolutions of constant kernels, and the pools
    and activations between them, but runs 1-D ones in the generic im2col form: the survey's
    conv1d_text (two Conv1D(64, 5) and a MaxPooling1D over 100 steps) predicted 1,024 rows in
    18.0-18.8 ms this way against 28.8-30.6 (alternating processes). Unchanged where nothing
    qualifies or onnxruntime has no blocked convolutions."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    if not any(n.op_type in ("Conv", "MaxPool", "AveragePool") for n in graph.node):
        return model_bytes  # (before the shape inference, which the others need)
    ranks = _float32_ranks(model)
    constant = {i.name for i in graph.initializer}
    for node in graph.node:  # (values computed from constants alone: onnxruntime folds them first)
        if all(v in constant for v in node.input if v) and not node.op_type.startswith("Random"):
            constant.update(node.output)

    def one_d(node):
        a = _attrs(node)
        return (node.domain == "" and node.op_type in ("Conv", "MaxPool", "AveragePool") and len(node.output) == 1
                and ranks.get(node.input[0]) == 3 and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
                and (node.op_type != "Conv" or node.input[1] in constant))
    if not any(one_d(node) for node in graph.node) or block_size() is None:
        return model_bytes
    producer = {o: n for n in graph.node for o in n.output}
    nodes, rows, squeezed, orphans = [], {}, set(), set()  # rows: a 3-D value -> its one-row map [N, C, 1, W]
    axis, nwc_axis = _constants(nodes, "one_row", "axis", [2], [1])

    def row(value):
        if value not in rows:
            rows[value] = f"{value}/row"
            before = producer.get(value)
            if before is not None and before.op_type == "Transpose" and list(_attrs(before)["perm"]) == [0, 2, 1]:
                # a channels-last [N, W, C] transposed for this: [N, 1, W, C] then NHWC -> NCHW, which
                # onnxruntime takes into its ReorderInput (one pass fewer)
                nodes.extend([helper.make_node("Unsqueeze", [before.input[0], nwc_axis], [f"{value}/nwc_row"]),
                              helper.make_node("Transpose", [f"{value}/nwc_row"], [rows[value]], perm=[0, 3, 1, 2])])
                orphans.add(value)
            else:
                nodes.append(helper.make_node("Unsqueeze", [value, axis], [rows[value]]))
        return rows[value]
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in squeezed and list(_attrs(node)["perm"]) == [0, 2, 1]:
            # going back to channels-last: NCHW -> NHWC, taken into onnxruntime's ReorderOutput
            nodes += [helper.make_node("Transpose", [rows[node.input[0]]], [f"{node.output[0]}/nwc_row"], perm=[0, 2, 3, 1]),
                      helper.make_node("Squeeze", [f"{node.output[0]}/nwc_row", nwc_axis], list(node.output))]
            continue
        if one_d(node):
            inputs = [row(node.input[0])]
            if node.op_type == "Conv":
                inputs += [row(node.input[1])] + list(node.input[2:])
            attrs = _one_row_attrs(_attrs(node))
        elif node.op_type in _ROW_WISE and node.domain == "" and node.input[0] in rows and ranks.get(node.input[0]) == 3 \
                and len(node.output) == 1:
            inputs, attrs = [rows[node.input[0]]] + list(node.input[1:]), _attrs(node)
        else:
            nodes.append(node)
            continue
        out = node.output[0]
        rows[out] = f"{out}/row"
        nodes += [helper.make_node(node.op_type, inputs, [rows[out]], name=node.name, **attrs),
                  helper.make_node("Squeeze", [rows[out], axis], [out])]
        squeezed.add(out)
    # the 3-D values still read (by the rest of the graph, or as its outputs) squeezed back
    # (and the channels-last transposes that only they read, dropped)
    read = set(readers_of(nodes)) | {o.name for o in graph.output}
    nodes = [n for n in nodes if not (n.output and n.output[0] in (squeezed | orphans) and n.output[0] not in read
                                      and n.op_type in ("Squeeze", "Transpose"))]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


def global_pools(model_bytes: bytes) -> bytes:
    """``model_bytes`` (an inference graph) with each mean or max over all the spatial axes of an
    [N, C, H, W] map (GlobalAveragePooling2D's and GlobalMaxPooling2D's ReduceMean/ReduceMax over
    axes 2 and 3, and the 1-D ones' over a map of one row, see one_row_maps) as ONNX's
    GlobalAveragePool/GlobalMaxPool, then a Flatten (or a Squeeze). onnxruntime runs those
    blocked on a blocked convolution's output, where a ReduceMean first needs the whole map
    converted back to NCHW: in a one-core part of the survey's cnn_dilated predict (512 rows),
    that ReorderOutput took 4.5 ms and the ReduceMean 2.3 of 37 ms."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    if not any(n.op_type in ("ReduceMean", "ReduceMax") for n in graph.node):
        return model_bytes
    ranks = _float32_ranks(model)
    producer = {o: n for n in graph.node for o in n.output}

    def over_all_spatial(node):
        """The [N, C, H, W] map ``node`` reduces over its spatial axes, else None."""
        if node.domain != "" or node.op_type not in ("ReduceMean", "ReduceMax") or len(node.input) != 1:
            return None
        x, axes = node.input[0], sorted(_attrs(node).get("axes", []))
        if ranks.get(x) == 4 and axes == [2, 3]:
            return x
        squeeze = producer.get(x)
        if ranks.get(x) == 3 and axes == [2] and squeeze is not None and squeeze.op_type == "Squeeze" and \
                ranks.get(squeeze.input[0]) == 4 and _constant_ints(squeeze, producer) == [2]:
            return squeeze.input[0]  # (a 1-D map kept as a row [N, C, 1, W])
        return None
    if not any(over_all_spatial(node) for node in graph.node):
        return model_bytes
    nodes, bypassed = [], set()
    for node in graph.node:
        x = over_all_spatial(node)
        if x is None:
            nodes.append(node)
            continue
        if x != node.input[0]:
            bypassed.add(node.input[0])
        pooled = f"{node.output[0]}/pooled"
        nodes.append(helper.make_node("Global" + ("AveragePool" if node.op_type == "ReduceMean" else "MaxPool"), [x],
                                      [pooled], name=node.name))
        if not _attrs(node).get("keepdims", 1):
            nodes.append(helper.make_node("Flatten", [pooled], list(node.output), axis=1))  # [N, C]
        elif ranks[node.input[0]] == 3:
            last, = _constants(nodes, node.output[0], "axis", [3])
            nodes.append(helper.make_node("Squeeze", [pooled, last], list(node.output)))  # [N, C, 1]
        else:
            nodes[-1].output[0] = node.output[0]
    read = set(readers_of(nodes)) | {o.name for o in graph.output}  # (a Squeeze left unread: dropped)
    nodes = [n for n in nodes if not (n.op_type == "Squeeze" and n.output[0] in bypassed and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


def _constant_ints(node, producer) -> list | None:
    """The ints of ``node``'s second input where a Constant node gives them."""
    const = producer.get(node.input[1]) if len(node.input) > 1 else None
    if const is None or const.op_type != "Constant":
        return None
    return numpy_helper.to_array(const.attribute[0].t).reshape(-1).tolist()


def _relu_fused(nodes: list, graph_outputs: set) -> list:
    """A Relu that is all that reads a rewritten convolution's output runs inside the blocked
    convolution (its ``activation``), whose ReorderOutput then gives the Relu's values: one pass
    over the map fewer, and the max pools after it read the blocked map directly
    (_pool_blocked)."""
    readers = readers_of(nodes)
    producer = {o: n for n in nodes for o in n.output}
    fused, dropped = {}, set()  # fused: id(ReorderOutput) -> the Relu's output
    for node in nodes:
        if node.domain != DOMAIN or node.op_type != "ReorderOutput" or node.output[0] in graph_outputs:
            continue
        users, conv = readers.get(node.output[0], []), producer.get(node.input[0])
        if len(users) != 1 or users[0].op_type != "Relu" or users[0].domain != "" or conv is None \
                or conv.op_type != "Conv" or conv.domain != DOMAIN or "activation" in _attrs(conv) \
                or len(readers.get(conv.output[0], [])) != 1:
            continue
        conv.attribute.append(helper.make_attribute("activation", "Relu"))
        fused[id(node)] = users[0].output[0]
        dropped.add(id(users[0]))
    for node in nodes:
        if id(node) in fused:
            node.output[0] = fused[id(node)]
    return [n for n in nodes if id(n) not in dropped]


def _pool_blocked(nodes: list, graph_outputs: set) -> list:
    """Max pools read a rewritten convolution's blocked output directly (onnxruntime's blocked
    MaxPool, then its own ReorderOutput), where they are all that reads the convolution: else
    onnxruntime converts the convolution's output back to blocks for each pool it rewrites
    itself (the MNIST CNN's second convolution and the four pools of its tiled gradient:
    ReorderOutput then ReorderInput of [64, 64, 10, 10] per part of its training step)."""
    readers = readers_of(nodes)
    replaced = {}  # id(MaxPool node) -> its blocked form
    dropped = set()  # ids of ReorderOutput nodes no longer read
    for node in nodes:
        if node.domain != DOMAIN or node.op_type != "ReorderOutput" or node.output[0] in graph_outputs:
            continue
        pools = readers.get(node.output[0], [])
        if not pools or not all(_blocked_pool(p) for p in pools):
            continue
        channels = _attrs(node)["channels"]
        for k, pool in enumerate(pools):
            blocked = f"{node.input[0]}/pool{k}"
            replaced[id(pool)] = [
                helper.make_node(pool.op_type, [node.input[0]], [blocked], domain=DOMAIN,
                                 **{k: v for k, v in _attrs(pool).items() if k != "storage_order"}),
                helper.make_node("ReorderOutput", [blocked], [pool.output[0]], domain=DOMAIN, channels_last=0,
                                 channels=channels)]
        dropped.add(id(node))
    out = []
    for node in nodes:
        if id(node) not in dropped:
            out.extend(replaced.get(id(node), [node]))
    return out


def _reorders_cancelled(nodes: list, graph_outputs: set, block: int) -> list:
    """A blocked map converted to NCHW and straight back (a blocked convolution's or pool's
    ReorderOutput, then the next blocked convolution's ReorderInput) is read blocked as it was:
    onnxruntime cancels the pairs it makes itself, not these (a depthwise convolution after a
    pointwise one: 1.2 ms and 1.5 ms of a 10.7 ms evaluation of 128 rows). Only where the channels
    fill whole blocks: else ReorderInput's padding channels are zeros where the map's need not be."""
    producer = {o: n for n in nodes for o in n.output}
    readers = readers_of(nodes)
    bypass, dropped = {}, set()
    for node in nodes:
        source = producer.get(node.input[0]) if node.input else None
        if node.domain != DOMAIN or node.op_type != "ReorderInput" or _attrs(node).get("channels_last") \
                or source is None or source.domain != DOMAIN or source.op_type != "ReorderOutput" \
                or _attrs(source).get("channels_last") or _attrs(source)["channels"] % block \
                or node.output[0] in graph_outputs \
                or any(node.output[0] not in r.input for r in readers.get(node.output[0], [])):  # (a body's read)
            continue
        bypass[node.output[0]] = source.input[0]
        dropped.add(id(node))
    if not bypass:
        return nodes
    kept = [n for n in nodes if id(n) not in dropped]
    for node in kept:
        for i, value in enumerate(node.input):
            if value in bypass:
                node.input[i] = bypass[value]
    read = set(readers_of(kept)) | graph_outputs
    return [n for n in kept if not (n.domain == DOMAIN and n.op_type == "ReorderOutput" and n.output[0] not in read)]


def _channels_last_edges(nodes: list, graph_outputs: set) -> list:
    """A blocked convolution's output that is only transposed channels-last (a Conv1D's or Conv2D's
    input gradient on its way back to a channels-last layer, [N, C, W] -> [N, W, C]) comes out of
    its ReorderOutput channels-last instead, and an input that is a channels-last map transposed
    for the convolution alone goes into its ReorderInput channels-last: onnxruntime converts
    between blocks and either layout in one pass, where the transpose was one more (a [128, 50, 64]
    one 0.46-0.61 ms, a seventh of a TimeDistributed(Dense) + Conv1D model's step)."""
    producer = {o: n for n in nodes for o in n.output}
    readers = readers_of(nodes)

    def sole(value):
        users = readers.get(value, [])
        return users[0] if len(users) == 1 and value not in graph_outputs else None

    def axes_of(node):  # a Squeeze's or Unsqueeze's axes, from its Constant input
        axes = _constant_ints(node, producer)
        return None if axes is None else tuple(axes)

    replaced, dropped = {}, set()
    for node in nodes:
        if node.domain != DOMAIN or _attrs(node).get("channels_last", 0):
            continue
        if node.op_type == "ReorderOutput":
            nxt = sole(node.output[0])
            squeeze = nxt if nxt is not None and nxt.op_type == "Squeeze" and axes_of(nxt) == (2,) else None
            t = sole(squeeze.output[0]) if squeeze is not None else nxt
            want = [0, 2, 1] if squeeze is not None else [0, 2, 3, 1]
            if t is None or t.op_type != "Transpose" or list(_attrs(t).get("perm", [])) != want:
                continue
            out = helper.make_node("ReorderOutput", list(node.input), [t.output[0] if squeeze is None else
                                                                       f"{node.output[0]}/nhwc"],
                                   domain=DOMAIN, channels_last=1, channels=_attrs(node)["channels"])
            replaced[id(node)] = [out]
            if squeeze is not None:  # [N, 1, W, C] -> [N, W, C]
                axis, = _constants(replaced[id(node)], node.output[0], "row_axis", [1])
                replaced[id(node)].append(helper.make_node("Squeeze", [out.output[0], axis], [t.output[0]]))
            dropped |= {id(t)} | ({id(squeeze)} if squeeze is not None else set())
        elif node.op_type == "ReorderInput":
            before = producer.get(node.input[0])
            unsqueeze = before if before is not None and before.op_type == "Unsqueeze" and axes_of(before) == (2,) \
                and sole(before.output[0]) is node else None
            t = producer.get(unsqueeze.input[0]) if unsqueeze is not None else before
            want = [0, 2, 1] if unsqueeze is not None else [0, 3, 1, 2]
            if t is None or t.op_type != "Transpose" or list(_attrs(t).get("perm", [])) != want or \
                    sole(t.output[0]) is not (unsqueeze or node):
                continue
            source = t.input[0]
            new = []
            if unsqueeze is not None:  # [N, W, C] -> [N, 1, W, C]
                source = f"{node.output[0]}/nhwc"
                axis, = _constants(new, node.output[0], "row_axis", [1])
                new.append(helper.make_node("Unsqueeze", [t.input[0], axis], [source]))
            replaced[id(node)] = new + [helper.make_node("ReorderInput", [source], list(node.output), domain=DOMAIN,
                                                         channels_last=1)]
            dropped |= {id(t)} | ({id(unsqueeze)} if unsqueeze is not None else set())
    if not replaced:
        return nodes
    out = []
    for node in nodes:
        if id(node) not in dropped:
            out.extend(replaced.get(id(node), [node]))
    return out


def _blocked_pool(node) -> bool:
    """Whether onnxruntime's blocked pools compute this node: a 2-d MaxPool without Indices, or a
    GlobalAveragePool or GlobalMaxPool (of a map the blocked convolution made: 2-d)."""
    if node.domain == "" and node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return True
    a = _attrs(node)
    return (node.domain == "" and node.op_type == "MaxPool" and len(node.output) == 1
            and len(a.get("kernel_shape", ())) == 2 and not a.get("storage_order"))


def _float32_shapes(model) -> dict:
    """The shapes of the graph's float32 values (the blocked kernels are float32 only) whose rank
    is known, None for a dimension whose size is not (the batch)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for info in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = info.type.tensor_type
        if tensor.elem_type == onnx.TensorProto.FLOAT and tensor.HasField("shape"):
            out[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return out


def _float32_static_shapes(model) -> dict:
    """The shapes of the graph's float32 values whose dimensions are all known."""
    return {name: shape for name, shape in _float32_shapes(model).items() if shape and None not in shape}


def _float32_ranks(model) -> dict:
    return {name: len(shape) for name, shape in _float32_shapes(model).items()}


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewrite(node, kernel_shape, block, name):
    """The blocked form of one Conv or ConvTranspose, or None where it does not apply; ``name``
    prefixes the values it adds (unique in the graph)."""
    if kernel_shape is not None and len(kernel_shape) == 3:
        return _rewrite_1d(node, kernel_shape, block, name)
    if kernel_shape is None or len(kernel_shape) != 4:
        return None
    a = _attrs(node)
    group = a.get("group", 1)
    # (depthwise: one input channel a group and one output channel, as onnxruntime blocks them)
    depthwise = group > 1 and kernel_shape[1] == 1 and kernel_shape[0] == group  # ([C, 1, kh, kw] either way)
    if (group != 1 and not depthwise) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kh, kw = kernel_shape[2:]
    kernel = node.input[1]
    new = []
    if node.op_type == "Conv":
        out_channels, in_channels = kernel_shape[:2]
        conv = {k: a[k] for k in ("strides", "pads", "dilations") if k in a}
    else:  # ConvTranspose, stride 1: the convolution of the flipped kernel, transposed to [O, I]
        # (dilated too: the convolution at the same dilation, padded by d (k - 1) less the pads)
        if any(s != 1 for s in a.get("strides", (1, 1))) or any(a.get("output_padding", (0, 0))) \
                or "output_shape" in a:
            return None
        in_channels, out_channels = kernel_shape[:2]
        pads = a.get("pads", (0, 0, 0, 0))
        dh, dw = a.get("dilations", (1, 1))
        full = (dh * (kh - 1), dw * (kw - 1), dh * (kh - 1), dw * (kw - 1))
        if any(p > f for p, f in zip(pads, full)):
            return None
        conv = {"pads": [f - p for p, f in zip(pads, full)], "dilations": [dh, dw]}
        reverse = _constants(new, name, "flip", [-1, -1], [-(2 ** 62), -(2 ** 62)], [2, 3], [-1, -1])
        if depthwise:  # (its kernel is [C, 1, kh, kw] as a depthwise convolution's)
            in_channels, out_channels = 1, group
        else:
            new.append(helper.make_node("Transpose", [kernel], [f"{name}/swapped"], perm=[1, 0, 2, 3]))
            kernel = f"{name}/swapped"
        new.append(helper.make_node("Slice", [kernel, *reverse], [f"{name}/flipped"]))
        kernel = f"{name}/flipped"
    if out_channels % block or (in_channels % block and in_channels >= block and not depthwise):
        return None
    reordered = f"{name}/kernel"
    if depthwise:  # the kernel [C/B, 1, kh, kw, B], the input converted to blocks
        blocked_shape, perm = [out_channels // block, block, 1, kh, kw], [0, 2, 3, 4, 1]
        source = f"{name}/in"
        new.append(helper.make_node("ReorderInput", [node.input[0]], [source], domain=DOMAIN, channels_last=0))
    elif in_channels % block:  # few input channels: the input stays NCHW, the kernel is [O/B, I, kh, kw, Bo]
        blocked_shape, perm = [out_channels // block, block, in_channels, kh, kw], [0, 2, 3, 4, 1]
        source = node.input[0]
    else:  # [O/B, I/B, kh, kw, Bi, Bo], and the input converted to blocks
        blocked_shape, perm = [out_channels // block, block, in_channels // block, block, kh, kw], [0, 2, 4, 5, 3, 1]
        source = f"{name}/in"
        new.append(helper.make_node("ReorderInput", [node.input[0]], [source], domain=DOMAIN, channels_last=0))
    blocked, plain = _constants(new, name, "shapes", blocked_shape, [out_channels, in_channels, kh, kw])
    new += [helper.make_node("Reshape", [kernel, blocked], [f"{name}/kernel_blocks"]),
            helper.make_node("Transpose", [f"{name}/kernel_blocks"], [f"{name}/kernel_t"], perm=perm),
            helper.make_node("Reshape", [f"{name}/kernel_t", plain], [reordered]),
            helper.make_node("Conv", [source, reordered] + list(node.input[2:]), [f"{name}/out"],
                             domain=DOMAIN, group=group, **conv),
            helper.make_node("ReorderOutput", [f"{name}/out"], [node.output[0]], domain=DOMAIN,
                             channels_last=0, channels=out_channels)]
    return new


def _one_row_attrs(attrs: dict) -> dict:
    """A 1-D Conv's, ConvTranspose's or pool's attributes for the 2-D op over a map of one row
    [N, C, 1, W]: nothing padded, strided, dilated or output-padded along the row axis."""
    two_d = {}
    for key, value in attrs.items():
        if key == "pads":
            value = [0, value[0], 0, value[1]]
        elif key in ("strides", "dilations", "kernel_shape", "output_shape", "output_padding"):
            value = [0 if key == "output_padding" else 1] + list(value)
        two_d[key] = value
    return two_d


def _rewrite_1d(node, kernel_shape, block, name):
    """A 1-D Conv or ConvTranspose as the blocked 2-D one over a map of one row: its input and
    kernel unsqueezed, its output squeezed (onnxruntime's 1-D convolutions run the generic
    im2col form: a Conv1D of 64 -> 32 channels over 50 steps, 64 rows, one thread, 0.61 ms
    forward and 0.92 for its input gradient, against 0.49 and 0.55 blocked; 64 -> 64 over 48
    steps, window 5: 1.90 and 2.19 against 1.33 and 1.44; over 100 and 400 steps 1.02-1.14x)."""
    two_d = _one_row_attrs(_attrs(node))
    new = []
    axis, = _constants(new, name, "row_axis", [2])
    rows = [f"{name}/x_rows", f"{name}/w_rows"]
    new += [helper.make_node("Unsqueeze", [v, axis], [r]) for v, r in zip(node.input[:2], rows)]
    conv = helper.make_node(node.op_type, rows + list(node.input[2:]), [f"{name}/y_rows"], **two_d)
    blocked = _rewrite(conv, tuple(kernel_shape[:2]) + (1, kernel_shape[2]), block, name)
    if blocked is None:
        return None
    return new + blocked + [helper.make_node("Squeeze", [f"{name}/y_rows", axis], [node.output[0]])]


def _constants(nodes: list, name: str, what: str, *values) -> list:
    """int64 Constant nodes for ``values`` (appended to ``nodes``); their output names."""
    names = []
    for k, value in enumerate(values):
        out = f"{name}/{what}{k}"
        nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.array(value, np.int64))))
        names.append(out)
    return names
