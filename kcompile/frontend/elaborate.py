"""Elaboration: AST -> graph IR, checking every shape on the way.

Statements run top to bottom. A statement without an explicit input applies its
layer to the previous statement's value (Sequential); ``Layer(...)(a, b)`` is the
functional form. Layers, blocks and models called inside a model are built on
first use (weights created from the input types) and shared on later calls.

Errors are collected, not raised one by one: a statement that fails poisons the
names it defines, statements reading a poisoned name are skipped silently, and
the other statements are still checked, so one run reports every independent error.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import numpy as np

from .. import ops
from ..errors import Diagnostic, KcompileError, Loc, ShapeError, did_you_mean, format_shape
from ..initializers import ALIASES as INIT_ALIASES, INITIALIZERS
from ..ir import BATCH, DTYPES, Graph, Param, Tensor, TensorType
from ..ir.graph import LayerRecord
from ..ir.types import NEXT_STATE, STATE
from ..layers import FUNCTIONS, LAYERS, NUMBER_FUNCTIONS, Layer
from ..layers.base import (REGULARIZER_NAMES, ArgError, InitializerArg, InitializerSpec, RegularizerSpec, Symbol,
                           is_source_name, show, snake_case)
from . import ast
from .layer_order import Call, drop_unreached, keras_layer_order


class _Poisoned(Exception):
    """A value depends on a statement that already failed: skip quietly."""


class _Fail(Exception):
    """A located error inside elaboration."""

    def __init__(self, message, loc, hint=None):
        self.diagnostic = Diagnostic(message, loc, hint)
        super().__init__(message)


POISON = object()


@dataclass
class Unapplied:
    """A layer instance not yet given its inputs: ``Dense(10)`` before ``(x)``."""
    layer: Layer

    def __str__(self) -> str:  # (as error messages show it)
        return f"a {self.layer.kind()} layer"


@dataclass
class Ref:
    """A name that denotes something callable: a layer class, block, model, function or initializer."""
    kind: str  # "layer", "block", "model", "function", "initializer"
    name: str
    target: object = None

    def __str__(self) -> str:  # (as error messages show it)
        return f"the {self.kind} {self.name}"


@dataclass
class Frame:
    """The scope of one body being elaborated (a model, or a block/model call)."""
    env: dict = field(default_factory=dict)
    prev: object = None
    prefix: str = ""
    trainable: bool = True
    owner: Layer | None = None  # the BlockLayer whose body this is (for `weight`)
    call_loc: Loc | None = None  # where a block/model body was called from
    train_seen: bool = False  # (a model has one train section)


class BlockLayer(Layer):
    """An instance of a user ``block``: its parameters bound, its weights and inner layers shared across calls."""

    n_inputs = None  # as many as the block declares; checked in call_block

    def __init__(self, block: ast.Block, params: dict):
        self.block, self.params = block, params
        self.sublayers = {}  # id(statement ast) -> Layer, so a second call reuses the first call's layers
        self.weights = {}

    def kind(self):
        return self.block.name

    def auto_name(self):
        return snake_case(self.block.name)


class ModelLayer(Layer):
    """A model called inside another model: its layers' weights named ``<model>/...``."""

    n_inputs = None  # as many as the model declares; checked in call_model_body

    def __init__(self, model: ast.Model, trainable: bool):
        self.model, self.trainable = model, trainable
        self.sublayers = {}
        self.name = model.name

    def kind(self):
        return "Model"


class Builder:
    """What layers see while they build and call: emit ops, make constants, add weights."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.masks: dict[str, Tensor] = {}  # value -> its [N, T] step mask (Embedding(mask_zero=true))
        self.loc: Loc | None = None
        self.layer: str | None = None
        self.record: LayerRecord | None = None
        self.trainable = True
        self.batch_size = None  # the inputs' batch_size=..., where given
        self.state_outputs = []  # (public name, Tensor): stateful layers' last states, the next batch's first

    def state(self, layer, short: str, units: int, dtype: str) -> Tensor:
        """A stateful recurrent layer's state ``short`` (h, c): a graph input ``state:<layer>/<short>``
        [batch_size, units] the runtime feeds (Keras's stateful=True: the last batch's final states,
        zeros after reset_states), not a weight: no gradient reaches it (truncated BPTT per batch)."""
        name = f"{STATE}{layer.name}/{short}"
        if name in self.graph.types:
            raise ShapeError(f"{layer.kind()}(stateful=true) {layer.name} is called twice; a stateful layer keeps "
                             f"one set of states, so it is called once")
        self.graph.add_input(name, TensorType(dtype, (self.batch_size, units)))
        return Tensor(name, self.graph.types[name])

    def set_state(self, state: Tensor, last: Tensor) -> None:
        """``last`` (the layer's final state) is what the runtime feeds as ``state`` next, published as
        output ``next_state:<layer>/<short>`` [batch_size, units]."""
        value = self.op("ReshapeLike", last, state)  # (the state's fixed batch in the graph's outputs)
        self.state_outputs.append((NEXT_STATE + state.name[len(STATE):], value))

    def op(self, op: str, *inputs, **attrs):
        like = next((i for i in inputs if isinstance(i, Tensor)), None)
        inputs = [self.const(i, like.dtype) if like is not None and isinstance(i, (int, float))
                  and not isinstance(i, bool) else i for i in inputs]
        names = [self._tensor(i).name for i in inputs]
        outs = ops.emit(self.graph, op, names, attrs, loc=self.loc, layer=self.layer)
        result = [Tensor(o, self.graph.types[o]) for o in outs]
        return result[0] if len(result) == 1 else result

    def const(self, value, dtype="float32") -> Tensor:
        if np.dtype(dtype).kind in "iu" and isinstance(value, (int, float)):
            info = np.iinfo(dtype)
            if not math.isfinite(value):
                raise ShapeError(f"{value} does not fit {dtype}", "cast the other operand to a float type")
            if value != int(value):
                raise ShapeError(f"{value} is not an integer, as {dtype} values are",
                                 "cast the other operand to a float type")
            if not info.min <= value <= info.max:
                raise ShapeError(f"{value} does not fit {dtype} (from {info.min} to {info.max})",
                                 "cast the other operand to a wider type")
        name = self.graph.add_const(np.asarray(value, dtype=dtype))
        return Tensor(name, self.graph.types[name])

    def add_weight(self, layer, short: str, shape, dtype, initializer, trainable=True) -> Tensor:
        name = f"{layer.name}/{short}"
        if name in self.graph.params:
            raise ShapeError(f"weight {name} is defined twice")
        t = TensorType(dtype, tuple(shape))
        if not all(isinstance(d, int) for d in shape):  # (a size named in an input's type: T)
            raise ShapeError(f"weight {name} would have the shape {format_shape(shape)}, which depends on an "
                             f"input's named size; a weight's sizes must be known",
                             "give that axis a number in the input's type")
        if math.prod(shape) >= 2 ** 31:  # (ONNX's and numpy's limits)
            raise ShapeError(f"weight {name} {list(shape)} holds {math.prod(shape):,} numbers, too many for one "
                             f"tensor (at most 2^31 - 1)")
        if initializer[0] in ("identity", "orthogonal") and len(shape) < 2 or initializer[0] == "identity" and \
                len(shape) > 2:  # (as Keras: matrices, and orthogonal's stacks of them)
            kind = "a 2-D weight" if initializer[0] == "identity" else "a weight of 2 or more dimensions"
            raise ShapeError(f"the {initializer[0]} initializer needs {kind}; {name} is {format_shape(shape)}",
                             "give this weight another initializer")
        regularizer = getattr(layer, "regularizers", {}).get(short)
        self.graph.add_param(Param(name, t, initializer, trainable and self.trainable, self.record.name, regularizer,
                                   statistic=not trainable))
        self.record.params.append(name)
        return Tensor(name, t)

    def mask_of(self, t: Tensor) -> Tensor | None:
        return self.masks.get(t.name)

    def set_mask(self, t: Tensor, mask: Tensor) -> None:
        self.masks[t.name] = mask

    def _tensor(self, v) -> Tensor:
        if isinstance(v, Tensor):
            return v
        raise ShapeError(f"expected a tensor, got {show(v)}")


class Elaborator:
    def __init__(self, module: ast.Module):
        self.module = module
        self.diagnostics: list[Diagnostic] = []
        self.blocks, self.models = {}, {}
        for d in module.definitions:
            table = self.blocks if isinstance(d, ast.Block) else self.models
            other = self.models if isinstance(d, ast.Block) else self.blocks
            if d.name in table or d.name in other:
                self.diagnostics.append(Diagnostic(f"{d.name} is defined twice", d.loc))
            elif d.name in LAYERS or d.name in FUNCTIONS:
                self.diagnostics.append(Diagnostic(f"{d.name} is a built-in name; choose another", d.loc))
            else:
                table[d.name] = d
            for i, p in enumerate(getattr(d, "params", [])):
                if any(q.name == p.name for q in d.params[:i]):
                    self.diagnostics.append(Diagnostic(f"{d.name} has two parameters named {p.name}", p.loc))

    # ---------------- models ----------------
    def model(self, name: str) -> Graph:
        model = self.models[name]
        graph = Graph(name)
        self.graph, self.builder = graph, Builder(graph)
        self.layer_names: set = set()
        self.submodels: dict = {}
        self.sublayer_caches: list = []
        self.stack = [name]
        self.block_stack: list = []  # the blocks being elaborated, outermost first
        self.calls: list[Call] = []  # the top level's layer calls and operations, for Keras's layer order
        frame = Frame()
        try:
            outputs = self.body(model.body, frame, top=True)
        except RecursionError:  # (each call of a block or model is a few Python frames deeper)
            raise KcompileError([Diagnostic(f"model {name} calls blocks or models nested too deeply for the compiler "
                                            f"(Python's recursion limit)", model.loc,
                                            "call fewer blocks inside each other")]) from None
        if not self.diagnostics:
            if not graph.inputs:
                self.diagnostics.append(Diagnostic(f"model {name} has no input", model.loc,
                                                   "declare one, e.g. `input x: float32[8]`"))
            if outputs is None:
                if isinstance(frame.prev, Tensor):
                    outputs = [("output", frame.prev)]
                else:
                    self.diagnostics.append(Diagnostic(f"model {name} has no output", model.loc,
                                                       "add `output <name>`"))
        if self.diagnostics:
            raise KcompileError(self.diagnostics)
        graph.outputs = [(public, t.name) for public, t in outputs]
        graph.outputs += [(public, t.name) for public, t in self.builder.state_outputs]
        # each output's step mask (Embedding(mask_zero=true) through the layers that pass it on):
        # losses and metrics leave the masked steps out, as Keras 3
        graph.meta["output_masks"] = {public: self.builder.mask_of(t).name for public, t in outputs
                                      if self.builder.mask_of(t) is not None}
        # (kept besides the outputs: their masks, and the values the train section names, which a
        # loss may read)
        train = next((s for s in model.body if isinstance(s, ast.Train)), None)
        live = [v for _, v in graph.outputs] + list(graph.meta["output_masks"].values()) + \
            [frame.env[n].name for n in sorted(ast.names_in(train) if train else ()) if isinstance(frame.env.get(n), Tensor)]
        graph.layers, unreached = keras_layer_order(graph, self.calls, [t.name for _, t in outputs])
        graph.layers += drop_unreached(graph, live, unreached)
        params = {p: graph.params[p] for r in graph.layers for p in r.params}
        graph.params = {**params, **{k: v for k, v in graph.params.items() if k not in params}}
        graph.meta["train"] = train
        graph.meta["env"] = {k: v for k, v in frame.env.items() if isinstance(v, Tensor) and v.name in graph.types}
        return graph

    def body(self, statements, frame: Frame, top=False):
        """Elaborate statements; return the output list [(public name, Tensor)] or None."""
        outputs = None
        first_output = None
        for stmt in statements:
            try:
                if isinstance(stmt, ast.OutputDecl):
                    if first_output is not None:
                        raise _Fail("a second `output` statement", stmt.loc,
                                    f"list every output in one statement (`output a, b`); the first is at "
                                    f"line {first_output.loc.line}")
                    first_output = stmt
                result = self.statement(stmt, frame, top)
                if isinstance(stmt, ast.OutputDecl):
                    outputs = result
            except _Poisoned:
                self._poison(stmt, frame)
                if not top:  # (a block's body stops at its first failed statement, reported once)
                    raise
            except _Fail as e:
                d = e.diagnostic
                if frame.call_loc is not None:
                    where = (f"block {frame.owner.block.name}" if isinstance(frame.owner, BlockLayer)
                             else f"model {frame.prefix.rstrip('/')}")
                    site = f"in {where}, called at {frame.call_loc}"
                    d.hint = site if d.hint is None else f"{d.hint} ({site})"
                self.diagnostics.append(d)
                self._poison(stmt, frame)
                if not top:
                    raise _Poisoned() from None  # report once, at the innermost statement
        return outputs

    def check_output_name(self, public, named, t, earlier, stmt, loc):
        """A model output's name ``public`` (``named``: written as a name, else made up) must
        differ from the ``earlier`` outputs', the other named outputs' and the inputs'."""
        if named and public in earlier:
            raise _Fail(f"{public} is listed twice", loc)
        if not named and public in (e.id for e in stmt.exprs if isinstance(e, ast.Name)):
            raise _Fail(f"this output would be named {public}, the name of another output", loc,
                        "name it: `y = ...`, then `output ..., y`")
        if public in self.graph.inputs:
            if t.name == public:
                raise _Fail(f"{public} is the model's input, unchanged", loc,
                            f"to output it, name a copy: `{public}_out = linear({public})`")
            raise _Fail(f"the output {public} has the name of the model's input {public}", loc,
                        "give the value another name")

    def _poison(self, stmt, frame):
        names = getattr(stmt, "names", None) or [getattr(stmt, "name", None)]
        for name in names:
            if name and not isinstance(stmt, (ast.Train,)):
                frame.env[name] = POISON
        frame.prev = POISON

    def statement(self, stmt, frame: Frame, top: bool):
        b = self.builder
        b.loc = stmt.loc
        if isinstance(stmt, ast.InputDecl):
            return self.input_decl(stmt, frame, top)
        if isinstance(stmt, ast.OutputDecl):
            outs = []
            for i, e in enumerate(stmt.exprs):
                t = self.tensor(self.expr(e, frame), e.loc, frame)
                named = isinstance(e, ast.Name)
                public = e.id if named else ("output" if len(stmt.exprs) == 1 else f"output_{i}")
                if top:  # (ONNX names each output once, and apart from the inputs)
                    self.check_output_name(public, named, t, [p for p, _ in outs], stmt, e.loc)
                outs.append((public, t))
            return outs
        if isinstance(stmt, ast.WeightDecl):
            return self.weight_decl(stmt, frame)
        if isinstance(stmt, ast.LayerDecl):
            value = self.expr(stmt.expr, frame)
            if not isinstance(value, Unapplied):
                raise _Fail(f"`layer {stmt.name} = ...` needs a layer, got {self.describe(value)}", stmt.expr.loc,
                            f"write `{stmt.name} = ...` to name a value")
            if not value.layer.name:
                value.layer.name = self.unique_layer_name(frame.prefix + (value.layer.requested_name or stmt.name),
                                                          stmt.loc)
                self.name_wrapped(value.layer, frame)
            self.check_rebind(stmt.name, stmt.loc, frame)
            frame.env[stmt.name] = value.layer
            return None
        if isinstance(stmt, (ast.Assign, ast.ExprStmt)):
            value = self.statement_value(stmt.expr, frame, stmt)
            names = (stmt.names or [stmt.name]) if isinstance(stmt, ast.Assign) else []
            if len(names) > 1:
                results = value if isinstance(value, tuple) else (value,)
                if len(results) != len(names):
                    raise _Fail(f"{len(names)} names for {len(results)} value{'s' * (len(results) != 1)}",
                                stmt.loc, "return_state=true makes a recurrent layer give its states too"
                                if len(results) == 1 else None)
                for name, result in zip(names, results):
                    self.check_rebind(name, stmt.loc, frame)
                    frame.env[name] = result
            elif names:
                self.check_rebind(stmt.name, stmt.loc, frame)
                frame.env[stmt.name] = value
            tensors = isinstance(value, Tensor) or (isinstance(value, tuple) and value and
                                                    all(isinstance(v, Tensor) for v in value))
            if tensors:
                frame.prev = value  # (what a following layer call reads: tensors, not other values)
            elif not names:  # (`relu` alone: nothing is applied, and it was silently dropped)
                hint = None
                if isinstance(value, Ref) and value.kind == "function":
                    hint = f"call it on a value, {value.name}(x), or apply it as a layer: Activation({value.name})"
                elif isinstance(value, Ref):
                    hint = f"call it: {value.name}(...)"
                raise _Fail(f"this statement computes nothing: it is {self.describe(value)}", stmt.loc, hint)
            return None
        if isinstance(stmt, ast.Train):
            if not top:
                raise _Fail("a train section belongs in a model, not a block", stmt.loc)
            if frame.train_seen:
                raise _Fail("a second train section; a model has one", stmt.loc)
            frame.train_seen = True
            return None
        raise AssertionError(stmt)

    def check_rebind(self, name, loc, frame):
        if name in self.models or name in self.blocks or name in LAYERS:
            raise _Fail(f"{name} names a {'model' if name in self.models else 'block' if name in self.blocks else 'layer'}"
                        "; choose another variable name", loc)

    def statement_value(self, expr, frame: Frame, stmt):
        value = self.expr(expr, frame)
        if isinstance(value, Unapplied):  # Sequential: apply to the previous value
            if frame.prev is None:
                raise _Fail(f"{value.layer.kind()} has no input", expr.loc,
                            "declare an input first, or call it on a value: Layer(...)(x)")
            if frame.prev is POISON:
                raise _Poisoned()
            prev = frame.prev if isinstance(frame.prev, tuple) else (frame.prev,)
            value = self.apply(value.layer, list(prev), expr.loc, frame)
        if isinstance(value, Layer):
            raise _Fail(f"{value.name} is a layer; call it on a value: {value.name}(x)", expr.loc)
        return value

    def input_decl(self, stmt: ast.InputDecl, frame: Frame, top: bool):
        if not top:
            # A block's inputs are bound by the call; see call_block.
            raise AssertionError("unreachable")
        if stmt.type is None:
            raise _Fail(f"input {stmt.name} needs a type in a model", stmt.loc, f"write `input {stmt.name}: float32[...]`")
        t = self.tensor_type(stmt.type, frame)
        if stmt.name in frame.env:
            raise _Fail(f"{stmt.name} is already defined", stmt.loc)
        self.check_rebind(stmt.name, stmt.loc, frame)
        if stmt.option is not None:
            self.input_batch_size(stmt)
        self.graph.add_input(stmt.name, t)
        tensor = Tensor(stmt.name, t)
        frame.env[stmt.name] = tensor
        frame.prev = tensor
        return None

    def input_batch_size(self, stmt: ast.InputDecl):
        """``input x: float32[10, 8], batch_size=4``: the model's fixed batch (Keras's Input
        batch_size), which stateful recurrent layers keep their states for. The types keep the
        batch symbolic; one model has one batch size."""
        key, value = stmt.option
        if key.id != "batch_size":
            raise _Fail(f"an input takes batch_size=..., got {key.id}", key.loc, "write `input x: float32[10, 8], "
                        "batch_size=4` (the fixed batch a stateful recurrent layer needs)")
        v = self.expr(value, Frame())
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _Fail(f"batch_size must be a positive integer, got {show(v)}", value.loc)
        if self.builder.batch_size not in (None, v):
            raise _Fail(f"input {stmt.name} has batch_size={v}, another input {self.builder.batch_size}", value.loc,
                        "a model has one batch size")
        self.builder.batch_size = v

    def tensor_type(self, texpr: ast.TensorTypeExpr, frame: Frame) -> TensorType:
        if texpr.dtype not in DTYPES:
            raise _Fail(f"unknown dtype {texpr.dtype}", texpr.loc,
                        did_you_mean(texpr.dtype, DTYPES) or "use one of " + ", ".join(DTYPES))
        dims = []
        for d in texpr.dims:
            if isinstance(d, ast.Name) and d.id not in frame.env:
                if d.id == BATCH:
                    raise _Fail(f"{BATCH} names the batch dimension, which is implicit", d.loc,
                                "give this dimension another name, such as T")
                dims.append(d.id)  # a named symbolic dimension, e.g. T
                continue
            v = self.expr(d, frame)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _Fail(f"a dimension must be a positive integer or a name, got {show(v)}", d.loc,
                            "the batch dimension is implicit: leave it out" if v in (-1, 0) or v is None else None)
            if v >= 2 ** 31:  # (numpy's and onnxruntime's sizes on every platform)
                raise _Fail(f"a dimension of {v:,} is too large (at most {2 ** 31 - 1:,})", d.loc)
            dims.append(v)
        return TensorType(texpr.dtype, (BATCH,) + tuple(dims))

    def weight_decl(self, stmt: ast.WeightDecl, frame: Frame):
        owner = frame.owner
        if owner is None:
            raise _Fail("`weight` declares a block's own weight; it belongs in a block", stmt.loc,
                        "move it into a block, or use a layer")
        if stmt.name in owner.weights:
            frame.env[stmt.name] = owner.weights[stmt.name]
            return None
        shape = []
        for d in stmt.dims:
            v = self.expr(d, frame)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _Fail(f"a weight dimension must be a positive integer, got {show(v)}", d.loc)
            shape.append(v)
        init = ("glorot_uniform", ()) if stmt.init is None else self.expr(stmt.init, frame)
        try:
            init = InitializerArg()(init) if not isinstance(init, tuple) else init
        except ArgError as e:
            raise _Fail(f"weight {stmt.name}: {e}", stmt.init.loc, e.hint) from None
        # The block's float dtype follows its first input (float32 by default), so a float64 block works.
        first = next(iter(getattr(owner, "input_types", None) or []), None)
        dtype = first.dtype if first is not None and first.is_float else "float32"
        t = self.builder.add_weight(owner, stmt.name, shape, dtype, init)
        owner.weights[stmt.name] = t
        frame.env[stmt.name] = t
        return None

    # ---------------- expressions ----------------
    def expr(self, e, frame: Frame):
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, ast.String):
            return Symbol(e.value)
        if isinstance(e, ast.Bool):
            return e.value
        if isinstance(e, ast.Name):
            return self.lookup(e, frame)
        if isinstance(e, ast.Tuple):
            return tuple(self.expr(i, frame) for i in e.items)
        if isinstance(e, ast.List):
            return [self.expr(i, frame) for i in e.items]
        if isinstance(e, ast.Neg):
            v = self.expr(e.operand, frame)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v
            return self.operation(frame, self.located(
                e.loc, lambda: self.builder.op("Neg", self.tensor(v, e.operand.loc, frame))))
        if isinstance(e, ast.BinOp):
            return self.operation(frame, self.binop(e, frame))
        if isinstance(e, ast.Call):
            return self.call(e, frame)
        raise AssertionError(e)

    def operation(self, frame: Frame, value):
        """A value computed between layers at the top level counts as one operation in Keras's
        layer order (as keras.ops.add or keras.ops.relu would)."""
        if frame.prefix == "" and isinstance(value, Tensor):
            self.calls.append(Call(None, None, [value.name]))
        return value

    def lookup(self, e: ast.Name, frame: Frame):
        name = e.id
        if name in frame.env:
            v = frame.env[name]
            if v is POISON:
                raise _Poisoned()
            return v
        if name in LAYERS:
            return Ref("layer", name, LAYERS[name])
        if name in self.blocks:
            return Ref("block", name, self.blocks[name])
        if name in self.models:
            return Ref("model", name, self.models[name])
        if name in FUNCTIONS:
            return Ref("function", name, FUNCTIONS[name])
        if name in INIT_ALIASES:
            return Ref("initializer", INIT_ALIASES[name])
        if name in ("none", "None"):  # Keras's None: an argument's default, or "not fixed" in a shape
            return None
        return Symbol(name)

    def binop(self, e: ast.BinOp, frame: Frame):
        a, b = self.expr(e.left, frame), self.expr(e.right, frame)
        numbers = (int, float)
        if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
            if e.op == "/":
                if b == 0:
                    raise _Fail("division by zero", e.loc)
                try:
                    return a / b
                except OverflowError:  # (integers past a float's range)
                    raise _Fail("the quotient is too large for a number", e.loc) from None
            return {"+": a + b, "-": a - b, "*": a * b}[e.op]
        op = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div"}[e.op]
        if op == "Div" and isinstance(b, numbers) and not isinstance(b, bool) and b == 0:
            # (every element inf or nan: a mistake, said here rather than as nan losses)
            raise _Fail("division by zero", e.right.loc, "every element would be inf or nan")
        if not isinstance(a, Tensor) and not isinstance(b, Tensor):
            raise _Fail(f"cannot apply {e.op} to {self.describe(a)} and {self.describe(b)}", e.loc,
                        self.unknown_hint(a if isinstance(a, Symbol) else b, frame))
        ta = a if isinstance(a, Tensor) else self.scalar(a, b, e.left.loc, frame)
        tb = b if isinstance(b, Tensor) else self.scalar(b, a, e.right.loc, frame)
        if op == "Div" and not ta.type.is_float and not tb.type.is_float:
            # true division, as numpy's and Keras's `/` (ONNX's Div of integers truncates, and
            # stops the run on a zero divisor)
            ta, tb = (self.builder.op("Cast", t, to="float32") for t in (ta, tb))

        def emit():
            try:
                return self.builder.op(op, ta, tb)
            except ShapeError as err:
                msg = str(err)
                detail = "they do not broadcast " + msg[msg.index("(dimension"):] if "(dimension" in msg else msg
                raise _Fail(f"cannot apply {e.op} to {format_shape(ta.shape)} and {format_shape(tb.shape)}: "
                            f"{detail}", e.loc,
                            err.hint or "shapes must be equal or broadcast (numpy rules)") from None
        return emit()

    def scalar(self, v, other: Tensor, loc, frame) -> Tensor:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Fail(f"expected a tensor or a number, got {self.describe(v)}", loc, self.unknown_hint(v, frame))
        return self.located(loc, lambda: self.builder.const(v, other.dtype))

    def call(self, e: ast.Call, frame: Frame):
        callee = self.expr(e.func, frame)
        args = [self.expr(a, frame) for a in e.args]
        kwargs = {}
        for k in e.kwargs:
            if k.name in kwargs:
                raise _Fail(f"argument {k.name} given twice", k.loc)
            kwargs[k.name] = self.expr(k.value, frame)
        b = self.builder
        if isinstance(callee, Ref):
            if callee.kind in ("layer", "block"):
                # Inside a block or called model, a layer is made on the first call of the
                # body and reused by later calls, which so share its weights.
                cache = self.sublayer_caches[-1] if self.sublayer_caches else None
                if cache is not None and id(e) in cache:
                    return Unapplied(cache[id(e)])
                # A bare word naming a function is an enum here: activation=relu.
                args = [Symbol(a.name) if isinstance(a, Ref) else a for a in args]
                kwargs = {k: Symbol(v.name) if isinstance(v, Ref) else
                          InitializerSpec(INIT_ALIASES[v.layer.kind()], {}) if k.endswith("_initializer")
                          and isinstance(v, Unapplied) and v.layer.kind() in INIT_ALIASES else v  # Identity()
                          for k, v in kwargs.items()}
                if callee.kind == "layer" and callee.name in INIT_ALIASES and (args or kwargs) and \
                        (not kwargs or any(k in INITIALIZERS[INIT_ALIASES[callee.name]] for k in kwargs)):
                    # Identity(gain=2.0): Keras's initializer of that name (its layer takes no arguments)
                    return self.initializer(INIT_ALIASES[callee.name], args, kwargs, e)
                if callee.kind == "layer":
                    try:
                        layer = callee.target.create(args, kwargs)
                    except ArgError as err:
                        raise _Fail(str(err), self.arg_loc(e, err), err.hint) from None
                else:
                    layer = self.instantiate_block(callee.target, args, kwargs, e)
                if cache is not None:
                    cache[id(e)] = layer
                return Unapplied(layer)
            if callee.kind == "model":
                return self.call_model(callee.target, args, kwargs, e, frame)
            if callee.kind == "function":
                tensors = [self.tensor(a, e.args[i].loc, frame) if not isinstance(a, (int, float, Symbol)) else a
                           for i, a in enumerate(args)]
                if not any(isinstance(t, Tensor) for t in tensors) and callee.name in NUMBER_FUNCTIONS and \
                        not kwargs and tensors and all(isinstance(t, (int, float)) for t in tensors):
                    try:
                        return float(NUMBER_FUNCTIONS[callee.name](*tensors))
                    except (ValueError, TypeError, OverflowError) as err:
                        raise _Fail(f"{callee.name}{tuple(tensors) if len(tensors) > 1 else f'({tensors[0]})'}: {err}",
                                    e.loc) from None
                if not any(isinstance(t, Tensor) for t in tensors):
                    raise _Fail(f"{callee.name} needs a tensor argument", e.loc,
                                f"write {callee.name}(x)" + (f", or Activation({callee.name}) as a layer"
                                                             if callee.name in ("relu", "sigmoid", "tanh") else ""))
                b.loc, b.layer = e.loc, None
                self.check_keywords(callee, kwargs, e)
                try:
                    return self.operation(frame, callee.target(b, *tensors, **kwargs))
                except (TypeError, ValueError) as err:  # (an argument of the wrong kind)
                    raise _Fail(f"{callee.name}: {err}".replace("<lambda>() ", "").replace("fn() ", ""), e.loc) from None
                except (ShapeError, ArgError) as err:
                    msg = str(err) if str(err).startswith(callee.name + " ") else f"{callee.name}: {err}"
                    raise _Fail(msg, e.loc, err.hint) from None
            if callee.kind == "initializer":
                return self.initializer(callee.name, args, kwargs, e)
        if isinstance(callee, Unapplied):
            return self.apply(callee.layer, self.tensors(args, e, frame), e.loc, frame, kwargs)
        if isinstance(callee, Layer):  # a layer bound with `layer name = ...`
            return self.apply(callee, self.tensors(args, e, frame), e.loc, frame, kwargs)
        if isinstance(callee, Tensor):
            raise _Fail(f"{getattr(e.func, 'id', 'this value')} is a tensor, not a layer; it cannot be called", e.loc)
        if isinstance(callee, Symbol) and callee in REGULARIZER_NAMES:  # kernel_regularizer=l2(0.01)
            try:
                return RegularizerSpec.from_call(str(callee), args, kwargs)
            except ArgError as err:
                raise _Fail(str(err), e.loc, err.hint) from None
        if isinstance(callee, Symbol) and callee in INITIALIZERS:  # random_normal(stddev=0.1)
            return self.initializer(str(callee), args, kwargs, e)
        if isinstance(callee, Symbol):
            candidates = list(LAYERS) + list(self.blocks) + list(self.models) + list(FUNCTIONS) + \
                [k for k, v in frame.env.items() if isinstance(v, Layer)]
            raise _Fail(f"unknown layer or function {show(callee)}", e.loc,
                        did_you_mean(callee, candidates))
        layer = next((k for k, v in INIT_ALIASES.items() if isinstance(callee, InitializerSpec) and v == callee.name
                      and k in LAYERS), None)
        if layer:  # Identity(3)(x): the initializer's arguments, then applied as the layer
            raise _Fail(f"{layer}(...) with arguments is Keras's {callee.name} initializer, and the {layer} layer "
                        f"takes none", e.loc, f"as a layer, write {layer}()(...)")
        raise _Fail(f"{self.describe(callee)} cannot be called", e.loc)

    @staticmethod
    def initializer(name: str, args, kwargs, e: ast.Call) -> InitializerSpec:
        """``RandomNormal(0.0, 0.02)`` or ``RandomNormal(stddev=0.02)``: positional arguments in
        Keras's order (mean, stddev; minval, maxval; value; gain)."""
        order = list(INITIALIZERS[name])
        if len(args) > len(order):
            raise _Fail(f"{name} takes {len(order)} argument{'s' * (len(order) != 1)}"
                        f"{' (' + ', '.join(order) + ')' if order else ''}, got {len(args)}", e.loc)
        for k, v in zip(order, args):
            if k in kwargs:
                raise _Fail(f"{name} got argument {k!r} twice", e.loc)
            kwargs[k] = v
        try:
            return InitializerSpec(name, kwargs)
        except ArgError as err:
            raise _Fail(str(err), e.loc, err.hint) from None

    def arg_loc(self, e: ast.Call, err: ArgError) -> Loc:
        """Point at the offending argument: the one a converter rejected, or a keyword the message names."""
        position, param = getattr(err, "position", None), getattr(err, "param", None)
        if position is not None and position < len(e.args):
            return e.args[position].loc
        for k in e.kwargs:
            if param is not None and k.name == param:
                return k.value.loc
        for k in e.kwargs:
            if f"'{k.name}'" in str(err):
                return k.loc
        return e.loc

    def tensors(self, args, e: ast.Call, frame) -> list:
        if len(args) == 1 and isinstance(args[0], list):  # Keras's list form: Concatenate()([a, b])
            locs = [i.loc for i in e.args[0].items] if isinstance(e.args[0], ast.List) else [e.args[0].loc] * len(args[0])
            return [self.tensor(a, loc, frame) for a, loc in zip(args[0], locs)]
        return [self.tensor(a, e.args[i].loc, frame) for i, a in enumerate(args)]

    def tensor(self, v, loc, frame) -> Tensor:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, tuple) and v and all(isinstance(i, Tensor) for i in v) and len(v) == 1:
            return v[0]
        if isinstance(v, Symbol):
            known = [k for k, x in frame.env.items() if isinstance(x, Tensor)]
            raise _Fail(f"unknown name {show(v)}", loc, self.unknown_hint(v, frame) or
                        ("defined here: " + ", ".join(known) if known else None))
        raise _Fail(f"expected a tensor, got {self.describe(v)}", loc)

    def unknown_hint(self, v, frame):
        if not isinstance(v, Symbol):
            return None
        return did_you_mean(v, [k for k, x in frame.env.items() if isinstance(x, Tensor)]) or \
            did_you_mean(v, list(LAYERS) + list(FUNCTIONS))

    @staticmethod
    def describe(v) -> str:
        if isinstance(v, Tensor):
            return f"a tensor {v.type}"
        if isinstance(v, Unapplied):
            return f"a layer {v.layer.kind()}(...)"
        if isinstance(v, Ref):
            return f"the {v.kind} {v.name}"
        if isinstance(v, Symbol):
            return f"the name {show(v)}"
        if isinstance(v, InitializerSpec):
            return f"the initializer {v.name}(...), which belongs in a layer's *_initializer argument"
        return show(v)

    def located(self, loc, fn):
        try:
            return fn()
        except ShapeError as err:
            raise _Fail(str(err), loc, err.hint) from None

    # ---------------- layers ----------------
    def unique_layer_name(self, base: str, loc) -> str:
        if base in self.layer_names:
            raise _Fail(f"a layer named {base} already exists", loc)
        self.layer_names.add(base)
        return base

    def auto_layer_name(self, layer: Layer, frame: Frame) -> str:
        base = frame.prefix + layer.auto_name()
        name, i = base, 0
        while name in self.layer_names:
            i += 1
            name = f"{base}_{i}"
        self.layer_names.add(name)
        self.name_wrapped(layer, frame)
        return name

    def name_wrapped(self, wrapper: Layer, frame: Frame) -> None:
        """The layers a wrapper wraps take automatic names from the model's count too, as Keras
        names them when they are made: LSTM after Bidirectional(LSTM(...)) is lstm_1."""
        for attr in wrapper.wraps:
            inner = getattr(wrapper, attr)
            if not inner.name and not inner.requested_name and inner.wrapped_name is None:
                inner.wrapped_name = self.auto_layer_name(inner, frame)[len(frame.prefix):]

    def apply(self, layer: Layer, inputs: list, loc: Loc, frame: Frame, kwargs=None):
        kwargs = dict(kwargs or {})
        # (a call's keyword arguments are tensors: a recurrent layer's initial_state=[h, c])
        extra = {k: kwargs.pop(k) for k in getattr(layer, "call_keywords", ()) if k in kwargs}
        flags = {k: kwargs.pop(k) for k in getattr(layer, "call_flags", ()) if k in kwargs}  # (true/false ones)
        for k, v in flags.items():
            if not isinstance(v, bool):
                raise _Fail(f"{layer.kind()}'s call argument {k} is true or false, got {self.describe(v)}", loc)
        for k in kwargs:  # (another layer's call argument: say which layers take it)
            takers = [n for n, cls in LAYERS.items() if k in getattr(cls, "call_keywords", ()) + getattr(cls, "call_flags", ())]
            if takers:
                raise _Fail(f"{layer.kind()} does not take {k}", loc, f"{', '.join(takers)} do")
        if kwargs:
            raise _Fail(f"unexpected keyword argument {next(iter(kwargs))} when calling a layer", loc,
                        "layer arguments go in the first parentheses: Dense(10, activation=relu)(x)")
        extra = {k: [self.tensor(t, loc, frame) for t in (v if isinstance(v, (list, tuple)) else [v])]
                 for k, v in extra.items()}
        if layer.n_inputs is not None and len(inputs) != layer.n_inputs:
            raise _Fail(f"{layer.kind()} takes {layer.n_inputs} input{'s' * (layer.n_inputs != 1)}, got {len(inputs)}",
                        loc, "use Concatenate() or Add() to merge" if len(inputs) > 1 else None)
        b = self.builder
        top = frame.prefix == ""
        saved = (b.loc, b.layer, b.record, b.trainable)
        first_call = not layer.built
        try:
            if not layer.built:
                if not layer.name:
                    if layer.requested_name:
                        layer.name = self.unique_layer_name(frame.prefix + layer.requested_name, loc)
                        self.name_wrapped(layer, frame)
                    else:
                        layer.name = self.auto_layer_name(layer, frame)
                if top:
                    b.record = LayerRecord(layer.name, layer.kind(), loc=loc)
                    self.graph.layers.append(b.record)
                else:  # (a layer inside a block or called model: model.get_layer("block/name") finds it)
                    layer.inner_entry = (layer.name, layer.kind(), [])  # (its output shapes, after the call)
                    self.graph.meta.setdefault("inner_layers", []).append(layer.inner_entry)
                b.trainable = frame.trainable
                b.loc, b.layer = loc, layer.name
                layer.input_types = [t.type for t in inputs]
                layer.build(b, *inputs)
                layer.built = True
                layer.record = b.record
            elif [t.type for t in inputs] != layer.input_types:
                given = ", ".join(str(t.type) for t in inputs)
                built = ", ".join(str(t) for t in layer.input_types)
                raise ShapeError(f"layer {layer.name} was built for {built} and is now called on {given}",
                                 "a shared layer needs inputs of one shape")
            b.loc, b.layer, b.record = loc, layer.name, layer.record
            b.trainable = frame.trainable
            if isinstance(layer, BlockLayer):
                out = self.call_block(layer, inputs, loc, frame)
            elif isinstance(layer, ModelLayer):
                out = self.call_model_body(layer, inputs, loc, frame)
            else:
                out = layer.call(b, *inputs, **extra, **flags)
            if layer.propagates_mask and len(inputs) == 1 and isinstance(out, Tensor) and \
                    b.mask_of(inputs[0]) is not None and b.mask_of(out) is None:
                b.set_mask(out, b.mask_of(inputs[0]))
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            activity = getattr(layer, "activity_regularizer", None)
            if activity is not None:  # (each call's outputs, as Keras: the loss adds their penalties)
                for t in outs:
                    if isinstance(t, Tensor):
                        if not t.type.is_float:
                            raise ShapeError(f"{layer.kind()}'s activity_regularizer needs a floating-point "
                                             f"output, got {t.type}")
                        self.graph.meta.setdefault("activity_regularizers", []).append((t.name,) + tuple(activity))
            if top:
                self.calls.append(Call(layer.record, [t.name for t in inputs + sum(extra.values(), [])],
                                       [t.name for t in outs]))
                if not layer.record.output_types:
                    layer.record.output_types = [t.type for t in outs]
            elif first_call and hasattr(layer, "inner_entry"):
                layer.inner_entry[2][:] = [list(t.shape) for t in outs]
            return tuple(out) if isinstance(out, list) else out
        except (ShapeError, ArgError) as err:
            self._unbuild(layer, first_call)
            raise _Fail(str(err), loc, err.hint) from None
        except (_Fail, _Poisoned):
            self._unbuild(layer, first_call)
            raise
        finally:
            b.loc, b.layer, b.record, b.trainable = saved

    @staticmethod
    def _unbuild(layer, first_call):
        """A shared block or called model whose first call failed is built by its next call (a
        call with the wrong inputs is reported, not taken as the shape of every later call)."""
        if first_call and isinstance(layer, (BlockLayer, ModelLayer)):
            layer.built, layer.input_types = False, None
            layer.sublayers.clear()  # (the layers its body built for the failed call's inputs)

    @staticmethod
    def check_keywords(callee: Ref, kwargs: dict, e: ast.Call):
        """A built-in function's keyword arguments must be among its parameters."""
        params = inspect.signature(callee.target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        names = [n for n, p in params.items() if n not in ("ctx", "x") and p.kind is not inspect.Parameter.VAR_POSITIONAL]
        for k in kwargs:
            if k not in names:
                at = next((a.loc for a in e.kwargs if a.name == k), e.loc)
                raise _Fail(f"{callee.name} has no argument {k!r}", at, did_you_mean(k, names) or (
                    f"it takes {', '.join(names)}" if names else f"{callee.name} takes no keyword arguments"))

    def instantiate_block(self, block: ast.Block, args, kwargs, e: ast.Call) -> BlockLayer:
        names = [p.name for p in block.params]
        requested = kwargs.pop("name", None) if "name" not in names else None  # (as every layer's name=)
        if requested is not None and not is_source_name(requested):
            raise _Fail(f"{block.name} argument 'name': expected a name such as res1, got {show(requested)}",
                        next((a.value.loc for a in e.kwargs if a.name == "name"), e.loc))
        if len(args) > len(names):
            raise _Fail(f"{block.name} takes {len(names)} argument{'s' * (len(names) != 1)}, got {len(args)}", e.loc)
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            at = next((a.loc for a in e.kwargs if a.name == k), e.loc)
            if k not in names:
                raise _Fail(f"{block.name} has no parameter {k!r}", at, did_you_mean(k, names))
            if k in bound:
                raise _Fail(f"{block.name} got argument {k!r} twice", at, "once by position, once by name")
            bound[k] = v
        for p in block.params:
            if p.name not in bound:
                if p.default is None:
                    raise _Fail(f"{block.name} needs the argument {p.name!r}", e.loc)
                bound[p.name] = self.expr(p.default, Frame())
            at = next((k.value.loc for k in e.kwargs if k.name == p.name), None)
            if at is None and names.index(p.name) < len(e.args):
                at = e.args[names.index(p.name)].loc
            bound[p.name] = self.check_param(block, p, bound[p.name], at or e.loc)
        layer = BlockLayer(block, bound)
        layer.requested_name = requested
        return layer

    _PARAM_TYPES = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "shape": lambda v: isinstance(v, tuple) and all(isinstance(i, int) for i in v),
        "any": lambda v: True,
    }

    def check_param(self, block, p: ast.BlockParam, v, loc):
        check = self._PARAM_TYPES.get(p.type)
        if check is None:
            raise _Fail(f"unknown parameter type {p.type}", p.loc,
                        did_you_mean(p.type, self._PARAM_TYPES) or "use int, float, bool, str, shape or any")
        if v is not None and not check(v):  # (none: Keras's None, for any type)
            raise _Fail(f"{block.name} parameter {p.name} is {p.type}, got {show(v)}", loc)
        return float(v) if p.type == "float" and v is not None else v

    def call_block(self, layer: BlockLayer, inputs, loc, frame: Frame):
        block = layer.block
        if block.name in self.block_stack:
            cycle = " -> ".join(self.block_stack[self.block_stack.index(block.name):] + [block.name])
            raise _Fail(f"block {block.name} uses itself ({cycle})", loc, "a block cannot call itself, "
                        "directly or through other blocks")
        decls = [s for s in block.body if isinstance(s, ast.InputDecl)]
        for decl in decls:
            if decl.option is not None:
                raise _Fail(f"block {block.name}'s input {decl.name}: {decl.option[0].id}= belongs to a model's "
                            f"input", decl.option[0].loc, "the model's inputs fix the batch")
        if len(decls) != len(inputs):
            raise ShapeError(f"{block.name} takes {len(decls)} input{'s' * (len(decls) != 1)}, got {len(inputs)}")
        inner = Frame(env=dict(layer.params), prefix=layer.name + "/", trainable=frame.trainable, owner=layer,
                      call_loc=loc)
        for decl, t in zip(decls, inputs):
            if decl.type is not None:
                want = self.tensor_type(decl.type, inner)
                if want.dtype != t.dtype or want.shape[1:] != t.shape[1:]:
                    raise ShapeError(f"{block.name} input {decl.name} expects {want}, got {t.type}")
            inner.env[decl.name] = t
            inner.prev = t
        body = [s for s in block.body if not isinstance(s, ast.InputDecl)]
        self.block_stack.append(block.name)
        try:
            return self.sub_body(layer, body, inner, f"block {block.name}", block.loc)
        finally:
            self.block_stack.pop()

    def sub_body(self, layer, body, inner: Frame, what: str, loc):
        """Elaborate a block's or called model's body, reusing its layers on later calls."""
        saved = (self.builder.loc, self.builder.layer)
        self.sublayer_caches.append(layer.sublayers)
        try:
            outputs = self.body(body, inner)
        finally:
            self.sublayer_caches.pop()
            self.builder.loc, self.builder.layer = saved
        if outputs is None:
            if isinstance(inner.prev, Tensor):
                return inner.prev
            raise ShapeError(f"{what} has no output", "add `output <value>` to its body")
        tensors = [t for _, t in outputs]
        return tensors[0] if len(tensors) == 1 else tensors

    def call_model(self, model: ast.Model, args, kwargs, e: ast.Call, frame: Frame):
        if model.name in self.stack:
            raise _Fail(f"model {model.name} uses itself", e.loc)
        trainable = kwargs.pop("trainable", True)
        if not isinstance(trainable, bool):
            raise _Fail("trainable must be true or false", e.loc)
        if kwargs:
            raise _Fail(f"a model call takes only trainable=..., got {next(iter(kwargs))}", e.loc)
        layer = self.submodels.get(model.name)
        if layer is None:
            layer = ModelLayer(model, trainable)
            self.unique_layer_name(model.name, e.loc)
            self.submodels[model.name] = layer
        elif layer.trainable != trainable:
            raise _Fail(f"model {model.name} is used both trainable and frozen", e.loc)
        return self.apply(layer, self.tensors(args, e, frame), e.loc, frame)

    def call_model_body(self, layer: ModelLayer, inputs, loc, frame: Frame):
        model = layer.model
        decls = [s for s in model.body if isinstance(s, ast.InputDecl)]
        if len(decls) != len(inputs):
            raise ShapeError(f"model {model.name} takes {len(decls)} input{'s' * (len(decls) != 1)}, got {len(inputs)}")
        inner = Frame(prefix=model.name + "/", trainable=frame.trainable and layer.trainable, call_loc=loc)
        self.stack.append(model.name)
        try:
            for decl, t in zip(decls, inputs):
                if decl.type is None:  # (the model's own check reports it where it is declared)
                    raise ShapeError(f"model {model.name}'s input {decl.name} has no type",
                                     f"write `input {decl.name}: float32[...]` in model {model.name}")
                want = self.tensor_type(decl.type, inner)
                if want.dtype != t.dtype or want.shape[1:] != t.shape[1:]:
                    raise ShapeError(f"model {model.name} input {decl.name} expects {want}, got {t.type}")
                inner.env[decl.name] = t
                inner.prev = t
            body = [s for s in model.body if not isinstance(s, (ast.InputDecl, ast.Train))]
            return self.sub_body(layer, body, inner, f"model {model.name}", model.loc)
        finally:
            self.stack.pop()

