"""The op registry. Each op is defined once: its shape rule (``infer``) and its
ONNX lowering (``lower``) live together in one class, and the gradient rule
joins them there when autodiff arrives.

Ops are primitive and close to ONNX; layers (``kcompile.layers``) compose them.
Images inside ops follow ONNX (channels-first); layers add the transposes that
the language's channels-last convention needs, and passes remove what they can.
"""
from __future__ import annotations

from functools import lru_cache

from ..errors import ShapeError, format_shape
from ..ir import Graph, TensorType

OPS: dict[str, "Op"] = {}
OPSET = 17  # the ONNX opset every lowering targets (onnxruntime 1.14 on reads it)


def register(cls):
    """Class decorator: instantiate the op and enter it in the registry under ``cls.name``."""
    OPS[cls.name] = cls()
    return cls


class Op:
    name: str = ""
    onnx_op: str | None = None  # the ONNX op of the default one-to-one lowering
    # The ONNX op whose element types the inputs must have, for an op with its own lowering
    # (the default lowering's op is checked anyway).
    onnx_types: str | None = None
    # Attributes that do not go to ONNX (compiler bookkeeping) are listed here.
    ir_only_attrs: tuple = ()
    # Random in training and its last input at inference (Dropout, the noise layers, the image
    # augmentations): the inference graph drops it, and no pass merges or folds it.
    random: bool = False

    def infer(self, ins: list[TensorType], attrs: dict) -> list[TensorType]:
        raise NotImplementedError

    def lower(self, ctx, inputs, outputs, attrs) -> None:
        """Emit ONNX nodes computing ``outputs`` from ``inputs`` (a random op: its last input;
        its training form, made before lowering, draws the noise)."""
        if self.random:
            ctx.emit("Identity", inputs[-1:], outputs)
            return
        attrs = {k: v for k, v in attrs.items() if k not in self.ir_only_attrs}
        ctx.emit(self.onnx_op or self.name, inputs, outputs, **attrs)

    def grad(self, ctx, node, dys: list) -> list:
        """Gradients of the loss w.r.t. each input (None where none flows), given ``dys``,
        the gradients w.r.t. each output (None for outputs the loss does not use).
        ``ctx`` emits ops (see kcompile.autodiff.GradContext); forward values are reused by name."""
        raise NotImplementedError(f"{self.name} has no gradient rule")

    def training_form(self, ctx, node) -> tuple[list, list] | None:
        """Rewrite ``node`` into its training-time computation (dropout draws masks from noise,
        BatchNormalization uses batch statistics); None where training computes what inference
        does. Returns ([(noise input, like value)], [(moving statistic, its new value)]) and
        replaces the node in ``ctx.g``. Called on the forward graph before differentiation."""
        return None

    def macs(self, ins: list[TensorType], outs: list[TensorType], attrs: dict) -> tuple:
        """The sizes whose product is this op's multiply-adds per sample (axis 0 the batch), for
        ops whose arithmetic is a network's bulk (products, convolutions); () for the rest."""
        return ()

    def sequential_steps(self, ins: list[TensorType], attrs: dict) -> int:
        """How many steps a sample goes through one after another (a recurrence's time steps,
        each a handful of small ops in its training Scan); 0 for the rest."""
        return 0

    def check_float(self, ins, n=None):
        for t in ins[:n]:
            if not t.is_float:
                raise ShapeError(f"{self.name} needs a floating-point tensor, got {t}",
                                 hint="cast integer data to float32 first")


def float_attr(attrs: dict, key: str, default: float) -> float:
    """A float attribute as the ONNX op computes with it (ONNX float attributes are float32),
    for gradient rules that must use the forward op's exact number."""
    import numpy as np
    return float(np.float32(attrs.get(key, default)))


def noise_input(ctx, node, t: TensorType) -> tuple[str, str]:
    """A uniform [0, 1) noise input for ``node``'s training form and the value of type ``t`` to
    use: (input name, value). The noise is drawn in the layout the model had before the passes,
    so that -O1 draws the numbers -O0 does, and transposed to ``t``'s by the ``noise_perm``
    that transpose sinking records when it moves a Dropout into another layout (a convolution's
    channels-first one, or a feature-major Dense's [units, N])."""
    name = ctx.g.fresh(f"noise:{node.layer or node.name}")
    perm = node.attrs.get("noise_perm")
    if perm is None:
        ctx.g.add_input(name, t)
        return name, name
    drawn = [None] * t.rank
    for i, axis in enumerate(perm):  # Transpose(drawn, perm) has t's shape
        drawn[axis] = t.shape[i]
    ctx.g.add_input(name, t.with_shape(drawn))
    return name, ctx.op("Transpose", name, perm=tuple(perm))


def replace_node(ctx, node, values) -> None:
    """Readers of ``node``'s outputs read ``values`` instead; the node goes."""
    for old, new in zip(node.outputs, values):
        ctx.g.replace_uses(old, new)
    ctx.g.remove_node(node)


def emit(graph: Graph, op: str, inputs, attrs=None, loc=None, layer=None, name=None) -> list[str]:
    """Add a node after checking its input types with the op's shape rule (and, for an op that
    lowers to its ONNX op as it is, with that op's element types); return its outputs."""
    definition = OPS[op]
    attrs = dict(attrs or {})
    ins = [graph.types[i] for i in inputs]
    types = definition.infer(ins, attrs)  # (first: its own messages are the more specific)
    if definition.onnx_types or (type(definition).lower is Op.lower and not definition.random):  # (random: an Identity)
        check_onnx_types(definition.onnx_types or definition.onnx_op or definition.name, ins)
    return graph.add_node(op, inputs, types, attrs, loc=loc, layer=layer, name=name).outputs


_ONNX_TYPE_NAMES = {"float32": "float", "float64": "double"}


@lru_cache(maxsize=None)
def _onnx_input_types(onnx_op: str) -> tuple | None:
    """For each formal input of ``onnx_op`` at OPSET, the element types it takes (the last one
    repeats for variadic inputs); None for an op ONNX does not define."""
    import onnx.defs
    try:
        schema = onnx.defs.get_schema(onnx_op, OPSET)
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: {s[len("tensor("):-1] for s in c.allowed_type_strs if s.startswith("tensor(")}
               for c in schema.type_constraints}
    return tuple(allowed.get(f.type_str, {f.type_str[len("tensor("):-1]}) for f in schema.inputs)


def check_onnx_types(onnx_op: str, ins: list[TensorType]) -> None:
    """Refuse element types the ONNX op does not take (ReduceMean on bool, Gather with uint8
    indices), which the ONNX checker would otherwise reject only at build, without a location."""
    formal = _onnx_input_types(onnx_op)
    if not formal:
        return
    for i, t in enumerate(ins):
        takes = formal[min(i, len(formal) - 1)]
        if _ONNX_TYPE_NAMES.get(t.dtype, t.dtype) not in takes:
            names = sorted(k for k, v in _ONNX_TYPE_NAMES.items() if v in takes) + \
                sorted(d for d in takes if d not in _ONNX_TYPE_NAMES.values() and d in KNOWN_DTYPES)
            raise ShapeError(f"{onnx_op} does not take {t.dtype} tensors" +
                             (f" (input {i + 1} takes {', '.join(names)})" if names else ""),
                             hint=f"cast it first: cast(x, {names[0]})" if names else None)


KNOWN_DTYPES = ("float16", "int8", "int32", "int64", "uint8", "bool")


def expect_rank(op: str, t: TensorType, rank: int, what: str) -> None:
    if t.rank != rank:
        raise ShapeError(f"{op} expects an input of rank {rank} {what}, got {format_shape(t.shape)}")
