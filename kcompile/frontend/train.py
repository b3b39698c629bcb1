"""Checking of a model's ``train { ... }`` section.

The section is checked here against the model (names, arguments, target and
prediction shapes) and described in the manifest; the training release compiles
it into gradient and optimizer graphs.
"""
from __future__ import annotations

import math

from ..errors import Diagnostic, KcompileError, did_you_mean, format_shape, show
from ..ir import BATCH, DTYPES
from ..ir.types import NEXT_STATE
from . import ast

# loss name -> allowed keyword arguments (defaults as Keras)
LOSSES = {
    "mean_squared_error": {}, "mean_absolute_error": {},
    "huber": {"delta": 1.0},
    "categorical_crossentropy": {"from_logits": False, "label_smoothing": 0.0},
    "sparse_categorical_crossentropy": {"from_logits": False},
    "binary_crossentropy": {"from_logits": False, "label_smoothing": 0.0},
}
LOSS_ALIASES = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "huber_loss": "huber",
                # Keras's loss classes (keras.losses.Huber(delta=0.5)): the same losses, configured
                "MeanSquaredError": "mean_squared_error", "MeanAbsoluteError": "mean_absolute_error",
                "Huber": "huber", "CategoricalCrossentropy": "categorical_crossentropy",
                "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
                "BinaryCrossentropy": "binary_crossentropy"}
SYMMETRIC_LOSSES = {"mean_squared_error", "mean_absolute_error", "huber"}  # (either argument may be the target)

_COMMON = {"clipnorm": None, "clipvalue": None, "global_clipnorm": None}
OPTIMIZERS = {
    "SGD": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": None, **_COMMON},
    "RMSprop": {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False,
                "weight_decay": None, **_COMMON},
    "Adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False,
             "weight_decay": None, **_COMMON},
    "AdamW": {"learning_rate": 0.001, "weight_decay": 0.004, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
              "amsgrad": False, **_COMMON},
    "Adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7,
                "weight_decay": None, **_COMMON},
    "Adamax": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": None,
               **_COMMON},
    "Adadelta": {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7, "weight_decay": None, **_COMMON},
    "Nadam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": None,
              **_COMMON},
    "Lion": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.99, "weight_decay": None, **_COMMON},
}
REQUIRED = object()  # a schedule argument without a default
SCHEDULES = {
    "ExponentialDecay": {"initial_learning_rate": REQUIRED, "decay_steps": REQUIRED, "decay_rate": REQUIRED,
                         "staircase": False},
    "CosineDecay": {"initial_learning_rate": REQUIRED, "decay_steps": REQUIRED, "alpha": 0.0,
                    "warmup_target": None, "warmup_steps": 0},
    "StepDecay": {"initial_learning_rate": REQUIRED, "step_size": REQUIRED, "factor": 0.5},
    "PiecewiseConstantDecay": {"boundaries": REQUIRED, "values": REQUIRED},
    "InverseTimeDecay": {"initial_learning_rate": REQUIRED, "decay_steps": REQUIRED, "decay_rate": REQUIRED,
                         "staircase": False},
}
# How many of a schedule's arguments go by position where not all do: Keras's CosineDecay has
# `name` between alpha and warmup_target.
SCHEDULE_POSITIONAL = {"CosineDecay": 3}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _shown(e) -> str:
    """An argument as written, saying so where a number is too large for a float."""
    v = _literal(e)
    return f"{unparse(e)} (too large for a float)" if isinstance(v, float) and math.isinf(v) else unparse(e)


# What each optimizer and schedule argument must be: Keras's ranges (SGD's momentum in [0, 1],
# decay_steps > 0), and past them where a value gives NaN or inf (Adam's beta_1 of 1 divides by
# 1 - 1, an epsilon of 0 gives 0 / 0 on a zero gradient, as does a clipnorm of 0) or trains
# nothing useful (a rho or beta_2 of 1 never accumulates the squared gradients: steps of g / sqrt(eps)).
_RANGES = {
    "learning_rate": ("a finite number >= 0", lambda v: _number(v) and v >= 0),
    "momentum": ("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
    "beta_1": ("a number >= 0 and < 1", lambda v: _number(v) and 0 <= v < 1),
    "epsilon": ("a finite number > 0", lambda v: _number(v) and v > 0),
    "weight_decay": ("a finite number >= 0", lambda v: _number(v) and v >= 0),
    "decay_steps": ("a finite number > 0", lambda v: _number(v) and v > 0),  # (Keras takes 1000.0)
    "step_size": ("a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
    "clipvalue": ("a finite number >= 0", lambda v: _number(v) and v >= 0),  # (0: every gradient 0, as Keras)
    "warmup_steps": ("a non-negative integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "alpha": ("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
    "nesterov": ("true or false", lambda v: isinstance(v, bool)),
}
_RANGES.update({name: _RANGES[like] for name, like in (
    ("initial_learning_rate", "learning_rate"), ("initial_accumulator_value", "learning_rate"),
    ("warmup_target", "learning_rate"),
    ("beta_2", "beta_1"), ("rho", "beta_1"), ("clipnorm", "epsilon"),
    ("global_clipnorm", "epsilon"), ("decay_rate", "epsilon"), ("factor", "epsilon"),
    ("centered", "nesterov"), ("amsgrad", "nesterov"), ("staircase", "nesterov"))})
METRICS = {"accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "binary_accuracy",
           "mae", "mse", "mean_absolute_error", "mean_squared_error", "precision", "recall", "auc"}
REGULARIZERS = {"l1", "l2"}
REDUCTIONS = {"mean", "sum"}
KEYS = {"loss", "optimizer", "metrics", "loss_weights"}


def unparse(e) -> str:
    """Source text of an expression, normalised."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Number):
        return repr(e.value)
    if isinstance(e, ast.String):
        return repr(e.value)
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, (ast.Tuple, ast.List)):
        inner = ", ".join(unparse(i) for i in e.items)
        return f"({inner})" if isinstance(e, ast.Tuple) else f"[{inner}]"
    if isinstance(e, ast.Neg):
        return f"-{unparse(e.operand)}"
    if isinstance(e, ast.BinOp):
        return f"({unparse(e.left)} {e.op} {unparse(e.right)})"
    if isinstance(e, ast.Call):
        args = [unparse(a) for a in e.args] + [f"{k.name}={unparse(k.value)}" for k in e.kwargs]
        return f"{unparse(e.func)}({', '.join(args)})"
    return "?"


def _literal(e):
    if isinstance(e, ast.Number):
        return e.value
    if isinstance(e, ast.Bool):
        return e.value
    if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number):
        return -e.operand.value
    if isinstance(e, (ast.List, ast.Tuple)):
        return [_literal(i) for i in e.items]
    if isinstance(e, ast.Name) and e.id in ("none", "None"):  # Keras's None, as everywhere in the language
        return None
    if isinstance(e, (ast.Name, ast.String)):
        return e.id if isinstance(e, ast.Name) else e.value
    return unparse(e)


def _loss_argument_problem(name: str, value) -> str | None:
    """What is wrong with a loss's keyword argument (its value as _literal gives it), or None."""
    if name == "from_logits":
        return None if isinstance(value, bool) else f"from_logits must be true or false, got {value}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "label_smoothing" and not (number and 0 <= value <= 1):
        return f"label_smoothing must be a number from 0 to 1, got {value}"
    if name == "delta" and not (number and value > 0):
        return f"delta must be a number above 0, got {value}"
    return None


class _Checker:
    def __init__(self, graph, model):
        self.graph, self.model = graph, model
        self.diagnostics: list[Diagnostic] = []
        self.env = dict(graph.meta.get("env", {}))
        self.outputs = {public: graph.types[v] for public, v in graph.outputs if not public.startswith(NEXT_STATE)}
        self.targets = {}
        self.compared = 0  # loss terms that compare a prediction with a target

    def error(self, message, loc, hint=None):
        self.diagnostics.append(Diagnostic(message, loc, hint))

    def value_type(self, e):
        """The type of a name used in the loss: a target, an output, or a named model value."""
        if not isinstance(e, ast.Name):
            self.error("expected the name of an output or a target", e.loc)
            return None
        if e.id in self.targets:
            return self.targets[e.id]
        if e.id in self.outputs:
            return self.outputs[e.id]
        if e.id in self.env:
            return self.env[e.id].type
        names = list(self.targets) + list(self.outputs) + list(self.env)
        self.error(f"unknown name {e.id} in the train section", e.loc,
                   did_you_mean(e.id, names) or f"outputs: {', '.join(self.outputs)}")
        return None

    def check(self, train: ast.Train) -> dict:
        _keras_spellings(train)
        seen = {}
        for s in train.statements:
            if isinstance(s, ast.TargetDecl):
                self.target(s)
            elif s.name not in KEYS:
                self.error(f"unknown train setting {s.name}", s.loc,
                           did_you_mean(s.name, KEYS) or f"settings: {', '.join(sorted(KEYS))}")
            elif s.name in seen:
                self.error(f"{s.name} is set twice", s.loc)
            else:
                seen[s.name] = s
        result = {"targets": {n: {"dtype": t.dtype, "shape": list(t.shape)} for n, t in self.targets.items()}}
        if "loss" not in seen:
            self.error("the train section needs a loss", train.loc, "e.g. loss = categorical_crossentropy")
        else:
            e, before = seen["loss"].expr, len(self.diagnostics)
            self.loss(e, top=True)
            if not self.compared and len(self.diagnostics) == before:  # fit would have no y to fit
                self.error("the loss needs a target: no term of it compares a prediction with a target", e.loc,
                           f"call a loss on an output (mse({next(iter(self.outputs))}) fits it to a target "
                           f"{next(iter(self.outputs))}_target; an autoencoder calls fit(x, x)), or declare "
                           f"`target t: float32[...]` and write mse(t, prediction)")
            result["loss"] = unparse(e)
        if "optimizer" not in seen:
            self.error("the train section needs an optimizer", train.loc, "e.g. optimizer = Adam()")
        else:
            result["optimizer"] = self.optimizer(seen["optimizer"].expr)
        if "metrics" in seen:
            result["metrics"] = self.metrics(seen["metrics"].expr)
        if "loss_weights" in seen:
            weights = self.loss_weights(seen["loss_weights"].expr)
            if weights is not None:
                result["loss_weights"] = weights
        return result

    def loss_weights(self, e):
        """``[w1, w2, ...]``: one number per model output, in output order, that scales the loss
        terms on that output (Keras's ``compile(loss_weights=...)``)."""
        names = list(self.outputs)
        values = _literal(e) if isinstance(e, (ast.List, ast.Tuple)) else None
        if values is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            self.error("loss_weights must be a list of numbers, one per output", e.loc,
                       f"e.g. loss_weights = [{', '.join('1.0' for _ in names)}] for {', '.join(names)}")
            return None
        bad = next((i for i, v in zip(e.items, values) if not (_number(v) and v >= 0)), None)
        if bad is not None:
            self.error(f"loss_weights must be finite numbers >= 0, got {_shown(bad)}", bad.loc)
            return None
        if len(values) != len(names):
            self.error(f"loss_weights has {len(values)} number{'s' * (len(values) != 1)} for {len(names)} "
                       f"output{'s' * (len(names) != 1)} ({', '.join(names)})", e.loc)
            return None
        return [float(v) for v in values]

    def target(self, s: ast.TargetDecl):
        if s.name in self.targets:
            self.error(f"target {s.name} is declared twice", s.loc)
            return
        t = s.type
        if t.dtype not in DTYPES:
            self.error(f"unknown dtype {t.dtype}", t.loc, did_you_mean(t.dtype, DTYPES))
            return
        dims = []
        for d in t.dims:
            if isinstance(d, ast.Number) and isinstance(d.value, int) and d.value > 0:
                dims.append(d.value)
            elif isinstance(d, ast.Name):
                if d.id == BATCH:  # (the target is still declared: no follow-on errors)
                    self.error(f"{BATCH} names the batch dimension, which is implicit", d.loc,
                               "give this dimension another name, such as T")
                dims.append(d.id)
            else:
                self.error("a dimension must be a positive integer or a name", d.loc)
                return
        if s.name in self.outputs or s.name in self.env:
            self.error(f"target {s.name} has the name of a model value", s.loc)
        from ..ir import TensorType
        self.targets[s.name] = TensorType(t.dtype, (BATCH,) + tuple(dims))

    def loss(self, e, top=False):
        if isinstance(e, ast.Number):
            return
        if isinstance(e, ast.BinOp):
            self.loss(e.left)
            self.loss(e.right)
            return
        if isinstance(e, ast.Neg):
            self.loss(e.operand)
            return
        if isinstance(e, ast.Name):
            name = LOSS_ALIASES.get(e.id, e.id)
            if name not in LOSSES:
                self.error(f"unknown loss {show(e.id)}", e.loc, did_you_mean(e.id, list(LOSSES) + list(LOSS_ALIASES)))
            elif len(self.outputs) != 1:
                self.error(f"the model has {len(self.outputs)} outputs; say which this loss is for", e.loc,
                           f"write {e.id}({next(iter(self.outputs))})")
            else:
                self.prediction_ok(name, next(iter(self.outputs.values())), e.loc)
                self.compared += 1
            return
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name):
            fn = e.func.id
            if fn in REDUCTIONS:
                for a in e.args:
                    self.loss(a)
                return
            if fn in REGULARIZERS:
                if len(e.args) != 1 or not isinstance(e.args[0], ast.Name) or e.args[0].id != "weights":
                    self.error(f"{fn} takes `weights`: {fn}(weights)", e.loc)
                return
            name = LOSS_ALIASES.get(fn, fn)
            if name not in LOSSES:
                self.error(f"unknown loss {fn}", e.loc,
                           did_you_mean(fn, list(LOSSES) + list(LOSS_ALIASES) + list(REDUCTIONS) + list(REGULARIZERS)))
                return
            for k in e.kwargs:
                if k.name not in LOSSES[name]:
                    self.error(f"{fn} has no argument {k.name!r}", k.loc, did_you_mean(k.name, LOSSES[name]))
                    continue
                problem = _loss_argument_problem(k.name, _literal(k.value))
                if problem:
                    self.error(f"{fn}: {problem}", k.loc)
            written = [a for a in e.args if isinstance(a, (ast.Number, ast.Neg, ast.Bool, ast.String))]
            if written:  # Keras's Huber(0.5): here the positions are what the loss compares
                given = [f"{n}={unparse(a)}" for n, a in zip(LOSSES[name], written)]
                compared = [unparse(a) for a in e.args if not any(a is w for w in written)]
                self.error(f"{fn} takes its arguments by name", written[0].loc,
                           f"{fn}({', '.join(compared + given)})" if len(given) == len(written) else
                           f"{fn} takes what it compares, (prediction) or (target, prediction)")
                return
            if not e.args:
                # Keras's configured loss (loss=Huber(delta=0.5)): on the single output against its
                # target, as a bare name; written out for the training graphs, which read the call
                if len(self.outputs) != 1:
                    first = next(iter(self.outputs))
                    given = [first] + [f"{k.name}={unparse(k.value)}" for k in e.kwargs]
                    self.error(f"the model has {len(self.outputs)} outputs; say which this loss is for", e.loc,
                               f"write {fn}({', '.join(given)})")
                    return
                e.args = [ast.Name(e.loc, next(iter(self.outputs)))]
            if len(e.args) == 1:
                pred = self.value_type(e.args[0])
                if pred is not None:
                    self.prediction_ok(name, pred, e.loc)
                    self.compared += 1
            elif len(e.args) == 2 and all(isinstance(a, ast.Name) for a in e.args) and \
                    e.args[0].id == e.args[1].id:
                self.error(f"{fn} compares {e.args[0].id} with itself", e.loc,
                           f"compare it with a target: {fn}({e.args[0].id}) or {fn}(TARGET, {e.args[0].id})")
            elif len(e.args) == 2:
                first, second = (isinstance(a, ast.Name) and a.id in self.targets for a in e.args)
                if second and not first and name not in SYMMETRIC_LOSSES:  # (the crossentropies are not)
                    self.error(f"{fn} takes the target first: {fn}({e.args[1].id}, {unparse(e.args[0])})", e.loc)
                    return
                self.compared += first or second  # (mse(out, t) is mse(t, out))
                target, pred = self.value_type(e.args[0]), self.value_type(e.args[1])
                if target is not None and pred is not None:
                    self.pair_ok(name, target, pred, e.loc)
            else:
                self.error(f"{fn} takes (prediction) or (target, prediction), got {len(e.args)} arguments", e.loc)
            return
        self.error(f"not a loss expression: {unparse(e)}", e.loc)

    def prediction_ok(self, name, pred, loc):
        if not pred.is_float:
            self.error(f"{name} needs a floating-point prediction, got {pred}", loc)

    def pair_ok(self, name, target, pred, loc):
        self.prediction_ok(name, pred, loc)
        if name == "sparse_categorical_crossentropy":
            if target.shape[1:] != pred.shape[1:-1]:
                self.error(f"{name}: class-index target {format_shape(target.shape[1:])} does not match "
                           f"prediction {format_shape(pred.shape[1:])} (expected {format_shape(pred.shape[1:-1])})",
                           loc)
            elif target.is_float:
                self.error(f"{name} needs integer class indices as target, got {target}", loc,
                           "declare it as int64[...]")
        elif target.shape[1:] != pred.shape[1:]:
            hint = None
            if pred.rank > 2 and target.rank == 2:
                hint = "add Flatten() or GlobalAveragePooling2D() before the last Dense"
            self.error(f"{name}: target {format_shape(target.shape[1:])} and prediction "
                       f"{format_shape(pred.shape[1:])} differ", loc, hint)

    def arguments(self, fn, call, allowed: dict, positional: int) -> dict:
        """``fn``'s arguments by name (their expressions): up to ``positional`` of them by position,
        in ``allowed``'s order, the others by keyword; extra, unknown and repeated ones are errors."""
        names = list(allowed)
        args, kwargs = (call.args, call.kwargs) if isinstance(call, ast.Call) else ([], [])
        if len(args) > positional:
            self.error(f"{fn} takes {positional} positional argument{'s' * (positional != 1)} "
                       f"({', '.join(names[:positional])}), got {len(args)}", args[positional].loc,
                       "give the others by name" if positional < len(names) else None)
        given = dict(zip(names, args[:positional]))
        for k in kwargs:
            if k.name not in allowed:
                self.error(f"{fn} has no argument {k.name!r}", k.loc, did_you_mean(k.name, allowed))
            elif k.name in given:
                self.error(f"{fn} got argument {k.name!r} twice", k.loc, "once by position, once by name"
                           if names.index(k.name) < len(args) else None)
            else:
                given[k.name] = k.value
        return given

    def argument(self, fn, name, e, default):
        """An optimizer's or schedule's argument, checked against _RANGES (none where its default is
        none: the default written out)."""
        if name == "learning_rate":
            return self.number_or_schedule(fn, e)
        if name in ("boundaries", "values"):
            return self.number_list(fn, name, e)
        v = _literal(e)
        if v is None and default is None:
            return None
        what, ok = _RANGES[name]
        if not ok(v):
            self.error(f"{fn}: {name} must be {what}{' or none' * (default is None)}, got {_shown(e)}", e.loc)
        return v

    def number_list(self, fn, name, e):
        """PiecewiseConstantDecay's ``boundaries`` (step counts: integers, strictly increasing, as
        Keras compares them with the integer step) or ``values`` (rates: finite numbers >= 0); the
        list, or None after an error at the list or at each bad item."""
        what = "a non-empty list of increasing integers" if name == "boundaries" else \
            "a list of finite numbers >= 0"
        if not isinstance(e, (ast.List, ast.Tuple)) or (name == "boundaries" and not e.items):
            self.error(f"{fn}: {name} must be {what}, got {_shown(e)}", e.loc)
            return None
        out, ok, before = [], True, None
        for item in e.items:
            v = _literal(item)
            if name == "values":
                if not _RANGES["learning_rate"][1](v):
                    self.error(f"{fn}: values must be finite numbers >= 0, got {_shown(item)}", item.loc)
                    ok = False
                out.append(float(v) if _number(v) else v)
                continue
            if not (_number(v) and float(v).is_integer()):
                self.error(f"{fn}: boundaries must be {what}, got {_shown(item)}", item.loc)
                ok, before = False, None
                continue
            if before is not None and int(v) <= out[-1]:
                self.error(f"{fn}: boundaries must be {what}, got {_shown(item)} after {unparse(before)}",
                           item.loc)
                ok = False
            out.append(int(v))
            before = item
        return out if ok else None

    def optimizer(self, e) -> dict:
        name = e.id if isinstance(e, ast.Name) else \
            e.func.id if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) else None
        if name not in OPTIMIZERS:
            self.error(f"unknown optimizer {show(name) if name else unparse(e)}", e.loc,
                       did_you_mean(name, OPTIMIZERS) if name else "e.g. Adam()")
            return {}
        allowed = OPTIMIZERS[name]
        values = dict(allowed)
        for arg, value in self.arguments(name, e, allowed, positional=1).items():
            values[arg] = self.argument(name, arg, value, allowed[arg])
        clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if values.get(k) is not None]
        if len(clips) > 1:  # as Keras 3
            self.error(f"{name}: set only one of clipnorm, clipvalue and global_clipnorm (got {', '.join(clips)})",
                       e.loc)
        return {"name": name, "args": values}

    def number_or_schedule(self, fn, e):
        """``fn``'s learning rate: a finite number >= 0, or a schedule of SCHEDULES and its arguments."""
        v = _literal(e)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not _RANGES["learning_rate"][1](v):
                self.error(f"{fn}: learning_rate must be {_RANGES['learning_rate'][0]}, got {_shown(e)}", e.loc)
            return float(v)
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in SCHEDULES:
            fn, allowed = e.func.id, SCHEDULES[e.func.id]
            given = self.arguments(fn, e, allowed, positional=SCHEDULE_POSITIONAL.get(fn, len(allowed)))
            values = {"schedule": fn}
            for n, default in allowed.items():
                if n in given:
                    values[n] = self.argument(fn, n, given[n], default)
                elif default is REQUIRED:
                    required = [k for k, d in allowed.items() if d is REQUIRED]
                    self.error(f"{fn} needs {n}", e.loc, f"{fn}({', '.join(required)})")
                else:
                    values[n] = default
            bounds, rates = values.get("boundaries"), values.get("values")
            if fn == "PiecewiseConstantDecay" and bounds is not None and rates is not None and \
                    len(rates) != len(bounds) + 1:
                self.error(f"{fn}: values has {len(rates)} number{'s' * (len(rates) != 1)} for {len(bounds)} "
                           f"boundar{'ies' if len(bounds) != 1 else 'y'}; it needs {len(bounds) + 1}, one more than "
                           f"boundaries (the rate up to the first boundary, between each two, after the last)",
                           given["values"].loc)
            return values
        self.error(f"{fn}: learning_rate must be a number or a schedule ({', '.join(SCHEDULES)}), "
                   f"got {unparse(e)}", e.loc)
        return None

    def metrics(self, e) -> list:
        items = e.items if isinstance(e, ast.List) else [e]
        out = []
        labels = set()  # (as fit's history and metrics_names name them)
        for m in items:
            name = m.id if isinstance(m, ast.Name) else m.func.id if isinstance(m, ast.Call) and \
                isinstance(m.func, ast.Name) else None
            if name not in METRICS:
                self.error(f"unknown metric {show(name) if name else unparse(m)}", m.loc,
                           did_you_mean(name, METRICS) if name else None)
                continue
            if isinstance(m, ast.Call):
                for a in m.args:
                    self.value_type(a)
            elif len(self.outputs) != 1:
                self.error(f"the model has {len(self.outputs)} outputs; say which this metric is for", m.loc,
                           f"write {name}({next(iter(self.outputs))})")
            # (Keras 3 computes a duplicate again as mae_1; here one name is one metric)
            label = name if len(self.outputs) == 1 else \
                f"{unparse(m.args[-1])}_{name}" if isinstance(m, ast.Call) and m.args else None
            if label is not None and label in labels:
                self.error(f"metric {label} is listed twice", m.loc)
            labels.add(label)
            out.append(unparse(m))
        return out


def _keras_spellings(train: ast.Train):
    """Keras's string forms, rewritten in place to the names they stand for: quoted names as
    the loss, optimizer and metrics (`loss = "mse"`, `metrics = ["accuracy"]`) and an optimizer
    in any case (`optimizer = "adam"`, `rmsprop(0.01)`)."""
    def named(e):
        return ast.Name(e.loc, e.value) if isinstance(e, ast.String) else e

    by_case = {name.lower(): name for name in OPTIMIZERS}
    for s in train.statements:
        if not isinstance(s, ast.Assign) or s.name not in ("loss", "optimizer", "metrics"):
            continue
        if s.name == "metrics" and isinstance(s.expr, ast.List):
            s.expr.items = [named(m) for m in s.expr.items]
        s.expr = named(s.expr)
        if s.name == "optimizer":
            head = s.expr.func if isinstance(s.expr, ast.Call) else s.expr
            if isinstance(head, ast.Name) and head.id not in OPTIMIZERS and head.id.lower() in by_case:
                head.id = by_case[head.id.lower()]


def check_train(graph, model_ast, module=None):
    """Return a JSON-able description of the train section, or None when the model has none.
    Raises KcompileError listing every problem found."""
    train = next((s for s in model_ast.body if isinstance(s, ast.Train)), None)
    if train is None:
        return None
    checker = _Checker(graph, model_ast)
    result = checker.check(train)
    if checker.diagnostics:
        raise KcompileError(sorted(checker.diagnostics, key=lambda d: (d.loc.line, d.loc.col) if d.loc else (0, 0)))
    return result
