"""Build the training-step and evaluation graphs of a model's train section.

The training step, one onnxruntime run, takes a batch, the targets, every weight,
the optimizer's slots, the learning rate ``lr``, the step count ``step`` (1-based)
and one uniform-noise input per Dropout; it returns the loss, the metrics'
statistics, and the new weights and slots (``new:<name>``). Everything is
generated: the backward graph by ``kcompile.autodiff``, the update by
``training.optimizers``. The evaluation graph runs the model in inference mode and
returns the loss and metrics.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from ..autodiff import GradContext, gradients
from ..errors import KcompileError, ShapeError, format_shape
from ..frontend import ast
from ..frontend.train import LOSS_ALIASES
from ..ir import Graph, TensorType
from ..ir.types import BATCH, NEXT_STATE, STATE, dim_names
from ..ops import OPS
from ..passes import optimize, run_pass
from ..passes.cse import common_subexpression_elimination
from ..passes.dce import dead_code_elimination
from ..passes.fold import constant_folding
from ..passes.dropout import remove_dropout
from ..passes.fusion import center_before_normalize, fuse_bias
from ..passes.crop import crop_unread_borders
from ..passes.upsample import upsampled_conv_as_transposed_in_training
from ..passes.reorder import conv_pool_phases, pool_before_activation
from ..passes.transpose import feature_major_dense, sink_transposes, transpose_into_dense_weights
from ..splitting import worth_splitting
from . import optimizers
from .losses import LOSS_FUNCTIONS
from .metrics import METRIC_FUNCTIONS

LR, STEP = "lr", "step"
# Each sample's weight in the loss ([N], float32; ones unless fit/evaluate are given
# sample_weight or class_weight): the losses' per-sample values are scaled by it, as Keras's.
# (A name no model value can have: source names have no ':'.) A model of several outputs
# weighs each output's loss terms by its own input, SAMPLE_WEIGHT:<output> (Keras's
# sample_weight={output: weights}); SAMPLE_WEIGHT then weighs only terms on other values.
SAMPLE_WEIGHT = "loss:sample_weight"
# A loss whose values have more axes than the sample's ([N, T]: a per-step loss) also takes
# weights of that shape (Keras's sample_weight [N, T]), as its weights' input + STEPS, of the
# values' shape (ones, or [N, 1] where a dimension is not fixed, unless given).
STEPS = ":steps"


@dataclass
class MetricSpec:
    name: str
    kind: str  # mean | ratio | auc
    outputs: dict  # statistic -> graph output name


@dataclass
class TrainingProgram:
    step: Graph
    eval: Graph
    inputs: list  # the model's data inputs
    targets: list  # [(name, TensorType)] in the order fit's y maps to them
    trainable: list  # weights the optimizer updates
    updated: list  # non-trainable weights the step also updates (BatchNorm statistics)
    slots: list  # [(input name, param, initial value)]
    noise: list  # [(input name, like value)] uniform noise for Dropout
    metrics: list = field(default_factory=list)
    optimizer: dict = field(default_factory=dict)
    transposed: list = field(default_factory=list)  # weights the step holds transposed, with their slots
    gradients: dict = field(default_factory=dict)  # trainable weight -> its gradient's value in the step
    # trainable weight -> {"updates", "ids"}: the values its rows' gradient is found from
    # (optimizers.Rows), for the weights whose update reads rows
    row_gradients: dict = field(default_factory=dict)
    per_sample: str = ""  # why the step cannot be split into parts of a batch ("" where it can)
    macs_per_sample: int = 0  # multiply-adds of the forward pass's products and convolutions, per sample
    recurrent_steps: int = 0  # the time steps of its recurrences, added up (sequential_steps)
    label_classes: dict = field(default_factory=dict)  # target of class labels -> the number of classes
    output_weights: dict = field(default_factory=dict)  # output -> its loss terms' sample weight input
    step_weights: list = field(default_factory=list)  # the inputs of weights per step (Objective.step_weights)
    weights_in_use: list = field(default_factory=list)  # the sample-weight inputs that weigh a loss term

    def describe(self) -> dict:
        return {
            "inputs": self.inputs,
            "targets": [{"name": n, "dtype": t.dtype, "shape": list(t.shape)} for n, t in self.targets],
            "trainable": self.trainable,
            "updated": self.updated,
            "slots": [{"name": n, "param": p, "init": v} for n, p, v in self.slots],
            "noise": [{"name": n, "shape": list(self.step.types[n].shape), "dtype": self.step.types[n].dtype}
                      for n, _ in self.noise],
            "metrics": [{"name": m.name, "kind": m.kind, "outputs": m.outputs} for m in self.metrics],
            "optimizer": self.optimizer,
            "transposed": self.transposed,
            "gradients": self.gradients,
            "row_gradients": self.row_gradients,
            "per_sample": self.per_sample or True,
            "sample_weight": SAMPLE_WEIGHT,  # (the step's and evaluation's input of per-sample weights)
            "output_sample_weights": self.output_weights,
            "step_sample_weights": self.step_weights,
            "sample_weights_in_use": self.weights_in_use,  # (one model of several outputs: the per-output ones)
            "label_classes": self.label_classes,
            "macs_per_sample": self.macs_per_sample,
            "recurrent_steps": self.recurrent_steps,
        }


# ---------------- training form of the forward graph ----------------
def training_form(g: Graph, order: dict | None = None) -> tuple[list, list]:
    """Each op's training-time computation (``Op.training_form``: dropout masks from noise
    inputs, BatchNormalization with batch statistics). Returns (noise inputs, [(moving
    statistic, new value)]). ``order`` ((layer, op) -> rank in the unoptimized graph) puts the
    noise inputs in the unoptimized graph's order, which passes that re-create a Dropout
    would change: the runtime draws them in this order, so the masks are those of -O0."""
    ctx = GradContext(g)
    order = order or {}
    noise, updates = [], {}
    for node in g.nodes():
        ctx.node = node
        # (the readers of a statistic updated already, before this node's form adds its own)
        readers = {i: set(g.readers.get(i, ())) for i in node.inputs if i in updates}
        form = OPS[node.op].training_form(ctx, node)
        if form is not None:
            rank = order.get((node.layer, node.op), len(order))
            noise += [(rank, item) for item in form[0]]
            for stat, value in form[1]:
                if stat in updates:  # (a layer called twice, a shared BatchNormalization: Keras updates
                    # its statistic at each call in turn, so this call's update starts from the last one's)
                    for made in [n for n in g.consumers(stat) if n.name not in readers[stat]]:
                        g.set_inputs(made, [updates[stat] if i == stat else i for i in made.inputs])
                updates[stat] = value
    noise.sort(key=lambda ranked: ranked[0])  # (stable: one node's inputs stay in order)
    return [item for _, item in noise], list(updates.items())


# ---------------- loss and metrics from the train section ----------------
class _Objective:
    """Evaluates the train section's loss and metric expressions on a graph."""

    def __init__(self, g: Graph, train: ast.Train, config: dict, env: dict):
        self.g, self.config = g, config
        self.ctx = GradContext(g)
        self.outputs = {o: v for o, v in g.outputs if not o.startswith(NEXT_STATE)}  # (the model's own)
        self.env = env
        self.targets: dict[str, str] = {}
        self.target_types: list = []
        declared = [s for s in train.statements if isinstance(s, ast.TargetDecl)]
        for name, spec in config.get("targets", {}).items():
            self._target(name, TensorType(spec["dtype"], tuple(spec["shape"])))
        self.declared = [d.name for d in declared]
        self.loss_of_output: dict[str, str] = {}
        # loss_weights: each output's factor on the loss terms computed on it
        self.loss_weights = dict(zip(self.outputs, config.get("loss_weights") or []))
        self.masks = dict(g.meta.get("output_masks") or {})  # output -> its step mask's value
        g.add_input(SAMPLE_WEIGHT, TensorType("float32", (BATCH,)))
        self.masked_loss = False  # a loss term left masked steps out (normalized per batch)
        self.output_losses: dict[str, list] = {}  # output -> its loss terms' batch means (Keras's <output>_loss)
        self.label_classes: dict[str, int] = {}  # a target of class labels -> its prediction's classes
        self.output_weights: dict[str, str] = {}  # output -> its SAMPLE_WEIGHT:<output> input (several outputs)
        # a weights input -> {name: its STEPS input, shape: the values' per-sample shape, target,
        # shapes: every weighted term's per-sample shape (more than one: no weights per step)}
        self.steps: dict[str, dict] = {}

    def _target(self, name, t):
        if name not in self.g.types:
            self.g.add_input(name, t)
        self.targets[name] = name
        self.target_types.append((name, t))
        return name

    def implicit_target(self, output: str, loss: str) -> str:
        name = f"{output}_target"
        if name in self.targets:
            return name
        t = self.g.types[self.outputs[output]]
        if loss == "sparse_categorical_crossentropy":
            t = TensorType("int64", t.shape[:-1])
        return self._target(name, t)

    def value(self, e) -> str:
        name = e.id
        if name in self.targets:
            return self.targets[name]
        if name in self.outputs:
            return self.outputs[name]
        return self.env[name]

    def loss(self, e):
        ctx = self.ctx
        if isinstance(e, ast.Number):
            return float(e.value)
        if isinstance(e, ast.Neg):
            v = self.loss(e.operand)
            return -v if isinstance(v, float) else ctx.op("Neg", v)
        if isinstance(e, ast.BinOp):
            a, b = self.loss(e.left), self.loss(e.right)
            if isinstance(a, float) and isinstance(b, float):
                return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[e.op]
            if isinstance(a, float):  # a number takes the dtype of the tensor it meets
                a = ctx.const(a, ctx.type(b).dtype)
            elif not isinstance(b, float) and ctx.type(a).shape != ctx.type(b).shape:
                # terms of other shapes (a per-step and a per-sample loss): each its own mean
                # first, as Keras reduces each output's loss before it adds them
                a, b = (ctx.op("ReduceMean", v, keepdims=0) if ctx.type(v).rank else v for v in (a, b))
            return ctx.op({"+": "Add", "-": "Sub", "*": "Mul", "/": "Div"}[e.op], a, b)
        if isinstance(e, ast.Name):
            output = next(iter(self.outputs))
            return self.term(LOSS_ALIASES.get(e.id, e.id), output, None, {})
        if isinstance(e, ast.Call):
            fn = e.func.id
            if fn in ("mean", "sum"):
                inner = self._scalar(self.loss(e.args[0]))
                return ctx.op("ReduceMean" if fn == "mean" else "ReduceSum", inner, keepdims=0)
            if fn in ("l1", "l2"):
                return self.regularization(fn)
            kwargs = {k.name: _literal(k.value) for k in e.kwargs}
            name = LOSS_ALIASES.get(fn, fn)
            if len(e.args) == 1:
                return self.term(name, e.args[0].id, None, kwargs)
            return self.term(name, None, (e.args[0], e.args[1]), kwargs)
        raise KcompileError("unsupported loss expression", e.loc)

    def _scalar(self, v):
        if isinstance(v, float):
            return self.ctx.const(v, "float32")
        return v

    def term(self, loss, output, pair, kwargs):
        """Per-sample loss values of one loss function."""
        if pair is None:
            prediction = self.outputs[output]
            target = self.implicit_target(output, loss)
        else:
            target, prediction = self.value(pair[0]), self.value(pair[1])
            output = next((o for o, v in self.outputs.items() if v == prediction), pair[1].id)
        self.loss_of_output[output] = loss
        self.check_batched(prediction)
        classes = self.g.types[prediction].shape[-1]
        if loss == "sparse_categorical_crossentropy" and target in self.targets.values() and isinstance(classes, int):
            self.label_classes[target] = classes  # (the runtime checks the labels: one out of range weighs 0)
        values = LOSS_FUNCTIONS[loss](self.ctx, target, prediction, **kwargs)
        if output in self.masks:
            values = self.masked(values, self.masks[output])
        values = self.weighted(values, output, target)
        if output in self.outputs and len(self.outputs) > 1:  # (Keras logs <output>_loss for several outputs)
            mean = self.ctx.op("ReduceMean", values, keepdims=0) if self.ctx.type(values).rank else values
            self.output_losses.setdefault(output, []).append(mean)
        weight = self.loss_weights.get(output, 1.0)
        return values if weight == 1.0 else self.ctx.op("Mul", values, self.ctx.const(weight, self.ctx.type(values).dtype))

    def weighted(self, values, output, target):
        """Per-sample loss values times the samples' weights (Keras's sample_weight: the batch
        mean of the weighted values, divided by the batch size, not by the weights' sum), those
        of ``output`` where the model has several; per-step values ([N, T]) times the weights
        per step too (the STEPS input)."""
        ctx = self.ctx
        rank, dtype = ctx.type(values).rank, ctx.type(values).dtype
        if not rank or ctx.type(values).shape[0] != BATCH:  # (no sample axis to weigh)
            return values
        weights = SAMPLE_WEIGHT
        if output in self.outputs and len(self.outputs) > 1:
            if output not in self.output_weights:
                self.output_weights[output] = f"{SAMPLE_WEIGHT}:{output}"
                self.g.add_input(self.output_weights[output], TensorType("float32", (BATCH,)))
            weights = self.output_weights[output]
        shape = tuple(ctx.type(values).shape[1:])
        steps = self.steps.setdefault(weights, {"name": weights + STEPS, "shape": None, "target": None, "shapes": []})
        steps["shapes"].append(shape)
        if rank > 1 and steps["shape"] in (None, shape):
            if steps["shape"] is None:
                steps.update(shape=shape, target=target if target in self.targets.values() else None)
                self.g.add_input(steps["name"], TensorType("float32", (BATCH,) + shape))
            values = ctx.op("Mul", values, steps["name"] if dtype == "float32" else ctx.op("Cast", steps["name"], to=dtype))
        weights = weights if dtype == "float32" else ctx.op("Cast", weights, to=dtype)
        if rank > 1:
            weights = ctx.op("Unsqueeze", weights, axes=tuple(range(1, rank)))
        return ctx.op("Mul", values, weights)

    @property
    def step_weights(self) -> list[dict]:
        """The STEPS inputs, for the manifest: each one's name, the weights input it goes with,
        the per-sample shape it has (a dimension not fixed: its name, or None), the target its
        values compare with (where it is one), and whether every term weighed by those weights
        has that shape (where not, the runtime refuses weights per step for them)."""
        return [{"name": e["name"], "weights": weights, "shape": list(e["shape"]), "target": e["target"],
                 "every_term": all(s == e["shape"] for s in e["shapes"])}
                for weights, e in self.steps.items() if e["shape"] is not None]

    def masked(self, values, mask):
        """Per-step loss values [N, T] with the masked steps out, as Keras 3 reduces them
        (losses.loss.apply_mask): each kept step weighs (N * T) / (kept + 1e-7), so that the
        batch mean is the kept steps' mean."""
        ctx = self.ctx
        if ctx.type(mask).rank != ctx.type(values).rank:  # (a loss reduced past the steps: no steps to leave out)
            return values
        self.masked_loss = True
        dtype = ctx.type(values).dtype
        keep = ctx.op("Cast", mask, to=dtype)
        total = ctx.op("Cast", ctx.op("Size", keep), to=dtype)
        kept = ctx.op("Add", ctx.op("ReduceSum", keep, keepdims=0), ctx.const(1e-7, dtype))
        return ctx.op("Mul", values, ctx.op("Mul", keep, ctx.op("Div", total, kept)))

    def check_batched(self, prediction):
        shape = self.g.types[prediction].shape
        if shape[:1] != (BATCH,):
            raise ValueError(f"the prediction has no batch axis (shape {format_shape(shape)}): losses and metrics "
                             f"compare each sample's prediction with its target; reduce over other axes "
                             f"(mean(x, axis=-1))")

    def regularization(self, kind):
        """l2(weights): sum of squares of the trainable kernels (weights of rank >= 2);
        l1: sum of absolute values. Biases and normalization scales are left out, as usual."""
        total = None
        for name, p in self.g.params.items():
            if not p.trainable or p.type.rank < 2:
                continue
            term = self.ctx.op("ReduceSum", self.ctx.op("Mul", name, name) if kind == "l2" else
                               self.ctx.op("Abs", name), keepdims=0)
            total = term if total is None else self.ctx.op("Add", total, term)
        return total if total is not None else 0.0

    def metric(self, e, loss_config):
        ctx = self.ctx
        name = e.id if isinstance(e, ast.Name) else e.func.id
        fn, kind = METRIC_FUNCTIONS[name]
        if isinstance(e, ast.Name) or len(e.args) == 1:
            output = next(iter(self.outputs)) if isinstance(e, ast.Name) else e.args[0].id
            prediction = self.outputs[output]
            target = self.implicit_target(output, self.loss_of_output.get(output, "")) \
                if f"{output}_target" in self.targets or not self.declared else self.targets[self.declared[0]]
        else:
            target, prediction = self.value(e.args[0]), self.value(e.args[1])
            output = next((o for o, v in self.outputs.items() if v == prediction), e.args[1].id)
        self.check_batched(prediction)
        # (a mean over the unmasked steps, as Keras 3: kept in ratio form, the sums of the
        # kept steps' values and of their count, over the epoch)
        mask = self.masks.get(output) if kind == "mean" else None
        if mask is not None and self.g.types[mask].rank != self.g.types[prediction].rank - 1:
            mask = None
        weights = None if mask is None else ctx.op("Cast", mask, to=self.g.types[prediction].dtype)
        if fn == "accuracy":
            acc_kind = name.split("_")[0] if name != "accuracy" else \
                _accuracy_kind(self.g.types[target].shape, self.g.types[prediction].shape)
            stats = METRIC_FUNCTIONS_ACCURACY(ctx, target, prediction, acc_kind, weights)
        elif weights is not None:
            stats = fn(ctx, target, prediction, weights)
        else:
            stats = fn(ctx, target, prediction)
        if weights is not None:
            kind = "ratio"
        label = name if len(self.outputs) == 1 else f"{output}_{name}"
        return label, kind, stats


def _accuracy_kind(target, prediction) -> str:
    """Which accuracy plain ``accuracy`` is, from the shapes, as Keras 3 chooses it
    (keras.src.trainers.compile_utils.is_binary_or_sparse_categorical): binary for a one-unit
    prediction, sparse for labels (a target of lower rank, or of one unit against several),
    else categorical. (Keras 2 chose by the loss.)"""
    units = prediction[-1] if isinstance(prediction[-1], int) else None
    if units == 1:
        return "binary"
    if len(target) < len(prediction) or (target[-1] == 1 and (units is None or units > 1)):
        return "sparse"
    return "categorical"


def METRIC_FUNCTIONS_ACCURACY(ctx, y, p, kind, weights=None):
    from .metrics import accuracy
    return accuracy(ctx, y, p, kind, weights)


def _literal(e):
    from ..frontend.train import _literal as lit
    return lit(e)


@contextlib.contextmanager
def _located(node, what):
    """Problems found while building the loss or a metric, reported at it in the source (those
    the train section's checks let through: a value that is not an output, a missing argument,
    an argument of the wrong type, targets and predictions of different dtypes)."""
    try:
        yield
    except KcompileError:
        raise
    except KeyError as e:
        raise KcompileError(f"{what}: {e.args[0]!r} is not an output or a declared target of the model", node.loc,
                            hint="losses and metrics take the model's outputs and the train section's "
                                 "targets") from None
    except IndexError:
        raise KcompileError(f"{what}: an argument is missing", node.loc) from None
    except (TypeError, ValueError, ZeroDivisionError, ShapeError) as e:
        raise KcompileError(f"{what}: {e}", node.loc, hint=getattr(e, "hint", None)) from None


def evaluation_objective(graph: Graph, train: ast.Train, config: dict, env: dict):
    """(the inference-mode copy of ``graph``, its model outputs, and _objective's (objective, loss,
    metrics) on it): the evaluation graph's start, and kcompile check's test of what training will
    build (raises KcompileError at the statement that cannot be built)."""
    ev = graph.copy()
    _pin_activity(ev)
    remove_dropout(ev)
    _unpin_activity(ev)
    model_outputs = list(ev.outputs)  # after the removal, which may rename an output's value
    return ev, model_outputs, _objective(ev, train, config, env)


ACTIVITY = "activity:"  # (the outputs that pin activity-regularized values through the passes)


def _pin_activity(g):
    """The values layers' activity_regularizer penalize (graph.meta, from the elaborator), pinned
    as outputs while passes and training forms replace values (a Dropout by its masked value in
    training, by its input in evaluation): Keras penalizes what the layer outputs in that mode."""
    g.outputs += [(f"{ACTIVITY}{i}", v) for i, (v, _, _) in enumerate(g.meta.get("activity_regularizers", ()))]


def _unpin_activity(g):
    pinned = {int(o[len(ACTIVITY):]): v for o, v in g.outputs if o.startswith(ACTIVITY)}
    g.meta["activity_regularizers"] = [(pinned[i], l1, l2)
                                       for i, (_, l1, l2) in enumerate(g.meta.get("activity_regularizers", ()))]
    g.outputs = [o for o in g.outputs if not o[0].startswith(ACTIVITY)]


def l1_l2_penalty(ctx, value, l1, l2, axes=None):
    """l1 * sum(|value|) + l2 * sum(value^2), each sum scaled after it is taken: summed over
    ``axes``, or over all of them (a scalar) where ``axes`` is None; None where l1 and l2 are
    both 0."""
    def scaled(v, factor):
        if axes is None or axes:  # (an empty tuple: nothing to sum, a value of rank 0 or 1)
            v = ctx.op("ReduceSum", v, keepdims=0, **({} if axes is None else {"axes": axes}))
        return ctx.op("Mul", v, factor)
    terms = ([scaled(ctx.op("Abs", value), l1)] if l1 else []) + ([scaled(ctx.op("Mul", value, value), l2)] if l2 else [])
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else ctx.op("Add", *terms)


def activity_penalty(ctx, value, l1, l2):
    """Keras 3's activity regularization loss of one layer output: (l1 * sum(|x|) + l2 *
    sum(x^2)) / batch size (the output's first dimension), i.e. the batch mean of each sample's
    penalty; a sum over the batch like the mean loss, so a step split into parts of the batch
    adds the parts' terms weighted by their sizes to the same value."""
    rank = ctx.type(value).rank
    penalty = l1_l2_penalty(ctx, value, l1, l2, axes=tuple(range(1, rank)) if rank else ())
    if penalty is None or not rank:
        return penalty
    return ctx.op("ReduceMean", penalty, keepdims=0)


def _objective(g, train, config, env):
    objective = _Objective(g, train, config, env)
    loss_stmt = next(s for s in train.statements if isinstance(s, ast.Assign) and s.name == "loss")
    with _located(loss_stmt, "the loss"):
        loss = objective.loss(loss_stmt.expr)
    if isinstance(loss, float):
        raise KcompileError("the loss does not depend on the model", loss_stmt.loc)
    ctx = objective.ctx
    if ctx.type(loss).rank:
        loss = ctx.op("ReduceMean", loss, keepdims=0)
    for name, p in g.params.items():  # kernel_regularizer / bias_regularizer penalties
        penalty = l1_l2_penalty(ctx, name, *p.regularizer) if p.regularizer and p.trainable else None
        if penalty is not None:
            loss = ctx.op("Add", loss, penalty)
    for value, l1, l2 in g.meta.get("activity_regularizers", ()):  # activity_regularizer penalties
        penalty = activity_penalty(ctx, value, l1, l2)
        if penalty is not None:
            if ctx.type(penalty).dtype != ctx.type(loss).dtype:
                penalty = ctx.op("Cast", penalty, to=ctx.type(loss).dtype)
            loss = ctx.op("Add", loss, penalty)
    metrics = []
    if len(objective.outputs) > 1:  # each output's loss, as Keras logs it (a_loss: before loss_weights)
        for output in objective.outputs:
            terms = objective.output_losses.get(output)
            if terms:
                total = terms[0]
                for term in terms[1:]:
                    total = ctx.op("Add", total, term)
                metrics.append((f"{output}_loss", "mean", {"value": total}))
    metrics_stmt = next((s for s in train.statements if isinstance(s, ast.Assign) and s.name == "metrics"), None)
    if metrics_stmt is not None:
        items = metrics_stmt.expr.items if isinstance(metrics_stmt.expr, ast.List) else [metrics_stmt.expr]
        for item in items:
            with _located(item, "the metric"):
                metrics.append(objective.metric(item, config))
    return objective, loss, metrics


def _metric_outputs(g, metrics) -> list:
    specs = []
    for label, kind, stats in metrics:
        outs = {}
        for stat, value in stats.items():
            public = f"metric:{label}:{stat}"
            g.outputs.append((public, value))
            outs[stat] = public
        specs.append(MetricSpec(label, kind, outs))
    return specs


# Passes of the training step, in order: on the forward graph before differentiation (so the
# generated backward graph inherits the layout and the fused biases), then on the whole step.
FORWARD_PASSES = [("transpose-sinking", sink_transposes), ("bias-fusion", fuse_bias),
                  ("upsampled-conv-as-transposed", upsampled_conv_as_transposed_in_training),
                  ("normalize-centering", center_before_normalize),
                  ("transpose-into-dense-weights", transpose_into_dense_weights),
                  ("feature-major-dense", feature_major_dense),
                  ("crop-unread-borders", crop_unread_borders),
                  ("pool-before-activation", pool_before_activation), ("conv-pool-phases", conv_pool_phases),
                  ("dead-code-elimination", dead_code_elimination)]
STEP_PASSES = [("constant-folding", constant_folding), ("cse", common_subexpression_elimination),
               ("transpose-sinking", sink_transposes), ("dead-code-elimination", dead_code_elimination)]


# ---------------- can a step be split into parts of its batch? ----------------
# Ops that combine samples while keeping the batch axis first (softmax-like ops over axis 0).
_AXIS_OPS = ("Softmax", "LogSoftmax", "CumSum", "Hardmax")


def sample_rows(g: Graph) -> dict | str:
    """{first dimension: rows a sample} of the values that depend on a model input, when each such
    value holds whole samples along its first axis, in order: the batch (1 row a sample), or the
    batch merged with fixed axes after it (TimeDistributed's FoldBatch: [N, T, ...] -> [N*T, ...],
    T rows a sample, kept together); else why not. (BatchNormalization's statistics in
    training: build_training, whose parts exchange their sums.)"""
    if any(n.startswith(STATE) for n in g.inputs):  # (predict then runs exactly batch_size rows a run)
        return "a stateful recurrent layer keeps states for whole batches"
    batch = {g.types[n].shape[0] for n in g.inputs if g.types[n].rank}
    if len(batch) != 1 or not isinstance(next(iter(batch)), str):
        return "the inputs do not share one named batch dimension"
    rows = {batch.pop(): 1}
    data = set(g.inputs)
    for node in g.nodes():
        if not any(v in data for v in node.inputs):
            continue
        data.update(node.outputs)
        if node.op == "FoldBatch":
            shape, k = g.types[node.inputs[0]].shape, node.attrs.get("axes", 2)
            if shape[0] in rows and all(isinstance(d, int) for d in shape[1:k]):
                rows[g.types[node.outputs[0]].shape[0]] = rows[shape[0]] * math.prod(shape[1:k])
        for out in node.outputs:
            t = g.types[out]
            if not t.rank or t.shape[0] not in rows:
                return f"{node.op} ({node.layer or 'a model expression'}) combines samples"
        if node.op in _AXIS_OPS and node.attrs.get("axis", -1) in (0, -g.types[node.inputs[0]].rank):
            return f"{node.op} over the batch axis ({node.layer or 'a model expression'})"
    return rows


def mixes_samples(g: Graph) -> str:
    """Why the model ``g`` is not computed sample by sample ("" if it is): a step split into
    parts of the batch must give the same per-sample values (sample_rows)."""
    rows = sample_rows(g)
    return rows if isinstance(rows, str) else ""


def recurrent_steps(g: Graph) -> int:
    """The time steps of ``g``'s recurrences, added up (each op's ``sequential_steps``)."""
    return sum(OPS[node.op].sequential_steps([g.types[v] for v in node.inputs], node.attrs) for node in g.nodes())


def macs_per_sample(g: Graph) -> int:
    """Multiply-adds per sample of ``g``'s products and convolutions (each op's ``macs``), those
    whose sizes are all numbers besides the batch: the bulk of a network's arithmetic."""
    import numpy as np
    rows = sample_rows(g)
    rows = {} if isinstance(rows, str) else rows
    total = 0
    for node in g.nodes():
        outs = [g.types[v] for v in node.outputs]
        dims = OPS[node.op].macs([g.types[v] for v in node.inputs], outs, node.attrs)
        if dims and all(isinstance(d, int) for d in dims):  # (per row: times a sample's rows)
            total += int(np.prod(dims, dtype=np.int64)) * rows.get(outs[0].shape[0] if outs[0].rank else None, 1)
    return total


def _loss_mixes_samples(train: ast.Train) -> str:
    """Why the loss is not a mean over the batch's samples plus terms of the weights alone ("" if
    it is): the loss of a split batch is then the parts' losses weighted by their sizes."""
    loss = next(s for s in train.statements if isinstance(s, ast.Assign) and s.name == "loss").expr

    def linear(e) -> bool:  # a constant-weighted sum of sample means, penalties and numbers
        if isinstance(e, (ast.Number, ast.Name)):
            return True
        if isinstance(e, ast.Neg):
            return linear(e.operand)
        if isinstance(e, ast.BinOp):
            if e.op in "+-":
                return linear(e.left) and linear(e.right)
            number = lambda side: isinstance(side, ast.Number)
            if e.op == "/":
                return linear(e.left) and number(e.right)
            return (number(e.left) and linear(e.right)) or (number(e.right) and linear(e.left))
        if isinstance(e, ast.Call):
            if e.func.id == "sum":
                return False
            return e.func.id in ("l1", "l2") or all(not isinstance(a, (ast.BinOp, ast.Call)) or linear(a)
                                                   for a in e.args)
        return False

    return "" if linear(loss) else "the loss is not a mean over samples (a sum, or a product of two terms)"


def _run_passes(g, passes, stage, report):
    for name, fn in passes:
        g = run_pass(g, f"{stage}:{name}", fn, report)
    return g


def _row_tables(g: Graph, trainable: list[str]) -> set[str]:
    """The weights whose gradients optimizers.as_rows will keep as rows, told before autodiff:
    a table read by one Gather on axis 0 and nothing else (its gradient is then that Gather's
    ScatterAdd), large enough for it (optimizers.updated_on_rows)."""
    tables = set()
    for n in trainable:
        readers = g.consumers(n)
        shape = g.types[n].shape
        if (len(readers) == 1 and readers[0].op == "Gather" and readers[0].inputs[0] == n
                and readers[0].inputs.count(n) == 1 and readers[0].attrs.get("axis", 0) == 0
                and not any(o == n for _, o in g.outputs)
                and optimizers.updated_on_rows(shape)):
            tables.add(n)
    return tables


def build_training(graph: Graph, train: ast.Train, config: dict, env: dict, opt_level: int = 1,
                   report=None) -> TrainingProgram:
    """``graph``: the model's elaborated graph (no passes yet); ``train``/``config``: its train
    section and the checked description of it; ``env``: the model's named values.
    ``report(pass, nodes_before, nodes_after, changed)`` sees each pass of the training step."""

    # ---- evaluation: inference mode + loss + metrics ----
    ev, model_outputs, (objective, loss, metrics) = evaluation_objective(graph, train, config, env)
    ev.outputs = [("loss", loss)]
    metric_specs = _metric_outputs(ev, metrics)
    ev.outputs += [(f"output:{o}", v) for o, v in model_outputs if not o.startswith(NEXT_STATE)]
    ev.outputs += [o for o in model_outputs if o[0].startswith(NEXT_STATE)]  # (evaluation carries them too)
    ev, _ = optimize(ev, opt_level)

    # ---- training step ----
    g = graph.copy()
    _pin_activity(g)  # (unpinned after the training forms)
    # Values the train section names stay what they are: pinned as outputs, no pass rewrites
    # them away, and the names follow any renaming, also by the training forms (a Dropout's
    # output becomes its masked value; a recurrent layer's op gives its training form's outputs).
    pinned = [(f"pin:{n}", env[n]) for n in sorted(ast.names_in(train) & set(env)) if env[n] in g.types]
    pinned += [(f"mask:{o}", m) for o, m in g.meta.get("output_masks", {}).items()]  # (the losses' masks)
    g.outputs += pinned
    if opt_level >= 1:
        g = _run_passes(g, FORWARD_PASSES, "train-forward", report)
    order = {}
    for node in graph.nodes():
        order.setdefault((node.layer, node.op), len(order))
    noise, stat_updates = training_form(g, order)
    _unpin_activity(g)
    env = {**env, **{o[4:]: v for o, v in g.outputs if o.startswith("pin:")}}
    g.meta["output_masks"] = {o[5:]: v for o, v in g.outputs if o.startswith("mask:")}
    g.outputs = [o for o in g.outputs if not o[0].startswith(("pin:", "mask:"))]
    known = {d for n in graph.inputs for d in graph.types[n].shape if isinstance(d, str)}
    for n, _ in noise:  # the runtime draws noise at sizes it works out from the inputs' shapes
        for d in g.types[n].shape:
            if dim_names(d) - known or "?" in str(d):
                raise NotImplementedError(f"noise of a size ({d}) that the inputs' shapes do not give")
    # (judged on the model as written: the layout passes above move the batch axis on purpose)
    objective, loss, metrics = _objective(g, train, config, env)
    per_sample = mixes_samples(graph) or _loss_mixes_samples(train) or (
        "a masked output's loss is divided by the batch's count of unmasked steps" if objective.masked_loss else "")
    trainable = [n for n, p in g.params.items() if p.trainable]
    # Whether the runtime will likely run the step in one-core parts (runtime: _batch_parts), as
    # some gradients' fastest form differs then (ops.nn.kernel_grad_form)
    # and the runtime counts the weights updated whole: not the tables updated on their rows
    macs, steps = macs_per_sample(graph), recurrent_steps(graph)
    tables = _row_tables(g, trainable) if opt_level >= 1 else set()
    normalizations = [n for n in g.nodes() if n.op == "BatchNormTrain"]
    if any(n.op == "BatchNormalization" and len(n.inputs) == 6 and n.attrs.get("trainable", True)
           for n in graph.nodes()):  # (its training form is composed ops, without exchanges)
        per_sample = per_sample or "a masked BatchNormalization normalizes by statistics of the whole batch"
    if normalizations and tables:  # (rows of a size that changes are not carried across phases)
        per_sample = per_sample or "BatchNormalization beside a table updated on its rows"
    if any(g.types[n.inputs[0]].dtype not in ("float32", "float64") for n in normalizations):
        per_sample = per_sample or "BatchNormalization's sums overflow float16 between parts"
    g.meta["step_in_parts"] = not per_sample and worth_splitting(
        macs, sum(math.prod(g.types[n].shape) for n in trainable if n not in tables), len(normalizations), steps)
    if stat_updates:
        # A step split into parts exchanges BatchNormalization's sums between them (ops.nn,
        # emit_exchange); a step that will not be split normalizes as one, as it can then
        # only be run whole.
        if not g.meta["step_in_parts"]:
            per_sample = per_sample or "BatchNormalization normalizes by statistics of the whole batch"
        for node in normalizations:
            node.attrs["parts"] = g.meta["step_in_parts"]
    before = len(g.nx)
    grads = gradients(g, loss, trainable)
    if report:
        report("train:autodiff", before, len(g.nx), True)
    trainable = [n for n in trainable if grads[n] is not None]
    ctx = GradContext(g)
    opt = config["optimizer"]
    g.add_input(LR, TensorType("float32", ()))
    g.add_input(STEP, TensorType("float32", ()))
    raw_grads = {n: grads[n] for n in trainable}
    # (at -O1 an Embedding table's update computes on the rows the batch looked up)
    before = len(g.nx)
    grads = {n: optimizers.as_rows(ctx, v) for n, v in raw_grads.items()} if opt_level >= 1 else raw_grads
    rows = [n for n, v in grads.items() if isinstance(v, optimizers.Rows)]
    if report and rows:
        report(f"train:row-updates ({', '.join(rows)})", before, len(g.nx), True)
    grads = optimizers.clip(ctx, opt, grads)
    slot_list = optimizers.slots(opt)
    slots = []
    outputs = [("loss", loss)]
    metric_specs_step = _metric_outputs(g, metrics)
    for name in trainable:
        state = {}
        for slot in slot_list:
            inp = optimizers.slot_input(opt, slot, name)
            g.add_input(inp, g.types[name])
            state[slot.name] = inp
            slots.append((inp, name, slot.init))
        new_w, new_state = optimizers.update(ctx, opt, name, grads[name], state, LR, STEP)
        outputs.append((f"new:{name}", new_w))
        for slot_name, value in new_state.items():
            outputs.append((f"new:{state[slot_name]}", value))
    for stat, value in stat_updates:
        outputs.append((f"new:{stat}", value))
    # Each gradient's value, as the passes leave it: the runtime may split the step there
    # (kcompile/backend/shards.py). Pinned as outputs through the passes, then unpinned.
    pinned = [(f"grad:{name}", raw_grads[name]) for name in trainable]
    pinned += [(f"rows:{name}:{part}", getattr(grad, part)) for name, grad in grads.items()
               if isinstance(grad, optimizers.Rows) for part in ("updates", "ids")]
    g.outputs = outputs + [o for o in g.outputs if o[0].startswith(("metric:", NEXT_STATE))] + pinned
    g = _run_passes(g, STEP_PASSES if opt_level >= 1 else STEP_PASSES[-1:], "train-step", report)
    pinned_after = [o for o in g.outputs if o[0].startswith(("grad:", "rows:"))]
    g.outputs = [o for o in g.outputs if not o[0].startswith(("grad:", "rows:"))]
    dead_code_elimination(g)  # (a gradient that the update reads as rows is not computed whole)
    gradient_values = {o[5:]: v for o, v in pinned_after if o.startswith("grad:") and v in g.types}
    row_gradients = {}
    for o, v in pinned_after:
        if o.startswith("rows:"):
            name, part = o[5:].rsplit(":", 1)
            row_gradients.setdefault(name, {})[part] = v
    assert [m.name for m in metric_specs] == [m.name for m in metric_specs_step]
    return TrainingProgram(step=g, eval=ev, inputs=[n for n in graph.inputs if not n.startswith(STATE)], targets=objective.target_types,
                           trainable=trainable, updated=[s for s, _ in stat_updates], slots=slots,
                           noise=[(n, like) for n, like in noise], metrics=metric_specs_step, optimizer=opt,
                           transposed=[n for n, p in g.params.items() if p.transposed],
                           gradients=gradient_values, row_gradients=row_gradients, per_sample=per_sample,
                           macs_per_sample=macs, recurrent_steps=steps,
                           label_classes=objective.label_classes,
                           output_weights=objective.output_weights, step_weights=objective.step_weights,
                           weights_in_use=list(objective.steps))

