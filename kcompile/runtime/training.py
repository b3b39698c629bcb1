"""Keras-like training on ONNX Runtime: fit, evaluate, train_on_batch, checkpoints.

Each step is one run of the generated training-step graph; Python only slices
batches, draws the dropout noise (seeded by the global step, so a resumed run
continues the exact trajectory), and keeps the running means of loss and metrics.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ShapeMismatch
from ..ir.types import evaluate_dim
from .data import (Batches, as_arrays, check_arrays, check_ids, check_lengths, check_named_dims, count, even_runs,
                   named_sizes, one_shot, per_output, sample_weights, tensor_specs)
from . import devices
from .devices import DISABLED_OPTIMIZERS, TURNS, built_at_once, create_session, session_options
from .fpenv import NoFlush, step_environment
from ..splitting import worth_splitting


# ---------------- learning-rate schedules ----------------
def learning_rate_at(spec, step: int) -> float:
    """Keras's schedules, by the optimizer's step count before the update (the arguments are
    checked at compile time: frontend/train.py). A rate that grows past a float is inf."""
    if not isinstance(spec, dict):
        return float(spec)
    kind = spec["schedule"]
    if kind == "PiecewiseConstantDecay":  # values[i] for boundaries[i - 1] < step <= boundaries[i]
        return float(spec["values"][bisect.bisect_left(spec["boundaries"], step)])
    lr0 = float(spec["initial_learning_rate"])
    try:
        if kind == "ExponentialDecay":
            p = step / spec["decay_steps"]
            if spec.get("staircase"):
                p = math.floor(p)
            return lr0 * spec["decay_rate"] ** p
        if kind == "InverseTimeDecay":
            p = step / spec["decay_steps"]
            if spec.get("staircase"):
                p = math.floor(p)
            return lr0 / (1 + spec["decay_rate"] * p)
        if kind == "CosineDecay":
            # With a warmup_target: from lr0 up to it linearly over warmup_steps, then the decay
            # from it; without one Keras leaves warmup_steps unused.
            decay_steps, start = spec["decay_steps"], lr0
            target, warmup = spec.get("warmup_target"), spec.get("warmup_steps", 0)
            if target is not None:
                step = min(step, decay_steps + warmup)
                if step < warmup:
                    return (float(target) - lr0) * (step / warmup) + lr0
                step, start = step - warmup, float(target)
            done = min(step, decay_steps) / decay_steps
            alpha = spec.get("alpha", 0.0)
            return start * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * done)) + alpha)
        if kind == "StepDecay":
            return lr0 * spec.get("factor", 0.5) ** (step // spec["step_size"])
    except OverflowError:
        return math.inf
    raise ValueError(f"unknown schedule {kind}")


# ---------------- metric aggregation ----------------
class RunningMetrics:
    """Running totals of loss and metrics over an epoch (weighted by batch size, as Keras)."""

    def __init__(self, metrics: list):
        self.metrics = metrics
        self.reset()

    def reset(self):
        self.count = 0
        self.loss = 0.0
        self.totals = {m["name"]: {} for m in self.metrics}

    def update(self, results: dict, batch: int):
        self.count += batch
        self.loss += float(results["loss"]) * batch
        for m in self.metrics:
            totals = self.totals[m["name"]]
            for stat, out in m["outputs"].items():
                value = results[out]  # a scalar as a Python float (cheaper per batch), else float64
                value = float(value) if value.ndim == 0 else np.asarray(value, dtype=np.float64)
                if m["kind"] == "mean":
                    value = value * batch
                totals[stat] = totals.get(stat, 0.0) + value

    def result(self) -> dict:
        from ..training.metrics import auc_from_totals
        logs = {}
        for m in self.metrics:
            t = self.totals[m["name"]]
            if not t:
                continue
            if m["kind"] == "mean":
                logs[m["name"]] = float(t["value"] / max(self.count, 1))
            elif m["kind"] == "ratio":
                logs[m["name"]] = float(t["numerator"] / t["denominator"]) if t["denominator"] else 0.0
            else:
                logs[m["name"]] = auc_from_totals(t["tp"], t["fp"], float(t["pos"]), float(t["neg"]))
        logs["loss"] = self.loss / max(self.count, 1)
        return logs


def _validation_epochs(freq):
    """Whether fit validates after 0-based ``epoch``, by Keras's ``validation_freq``: an int n
    (every n-th epoch) or a collection of 1-based epochs."""
    if isinstance(freq, (int, np.integer)) and not isinstance(freq, bool) and freq >= 1:
        return lambda epoch: (epoch + 1) % int(freq) == 0
    if isinstance(freq, (list, tuple, set, frozenset, range)):
        epochs = set(freq)
        return lambda epoch: epoch + 1 in epochs
    raise ValueError(f"validation_freq must be a positive integer or a list of epochs, got {freq!r}")


@dataclass
class NonFiniteLoss(Exception):
    epoch: int
    step: int
    value: float
    results: dict = field(default=None, repr=False, compare=False)  # (the step's outputs: its metrics' statistics)

    def __str__(self):
        return (f"the loss became {self.value} at epoch {self.epoch + 1}, step {self.step + 1}; training stopped and "
                f"the weights of the last finite step were kept")


def one_call_at_a_time(method):
    """A Model method that runs while no other thread runs one on the same model: predict,
    evaluate and training reuse bound buffers (binding.py), which two calls at once would
    share. fit and evaluate take turns step by step (their loops run callbacks and the data's
    own code, which may use the model from another thread: a batch producer that predicts).
    Re-entrant: a callback may predict."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class OptimizerView:
    """``model.optimizer``, for code written against Keras's (a callback's
    ``self.model.optimizer.learning_rate``): the train section's optimizer by name, its rate
    (read and set: the model's ``learning_rate``), its step count and arguments. The update
    itself is part of the compiled step."""

    def __init__(self, model):
        self._model = model

    @property
    def name(self) -> str:
        return self._model.manifest["training"]["optimizer"]["name"]

    @property
    def learning_rate(self) -> float:
        return self._model.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float):
        self._model.learning_rate = value

    @property
    def iterations(self) -> int:
        return self._model.iterations

    def get_config(self) -> dict:
        """Keras's config: name and arguments (a schedule's as its description)."""
        return {"name": self.name, **self._model.manifest["training"]["optimizer"]["args"]}

    def __repr__(self) -> str:
        return f"<{self.name} optimizer of model {self._model.name}>"


class TrainingMixin:
    """fit/evaluate/... for :class:`kcompile.runtime.model.Model` (which holds the sessions and weights)."""

    # Training steps flush denormal numbers to zero, as XLA (Keras on JAX) and TensorFlow do on
    # CPU: decaying optimizer state would otherwise slow every step on CPUs with slow denormals
    # (see runtime/fpenv.py). False gives IEEE denormals, as PyTorch computes by default, from
    # the next build of the step (the first training call, or set_trainable).
    flush_denormals = True
    _batch_parts_chosen = None
    nonfinite = None  # the NonFiniteLoss that stopped the last fit, if one did (None: it ran to its end)

    @property
    def batch_parts(self) -> int | None:
        """Into how many parts the training step splits each batch, one per core: None (the
        default) two on a CPU of two or more cores where the step allows it, 1 never, 2 (or
        more) wherever the step allows it. See _batch_parts. A change applies from the next step."""
        return self._batch_parts_chosen

    @batch_parts.setter
    def batch_parts(self, value):
        value = count(value, "model", "batch_parts", none=True)
        with self._lock:
            if value != self._batch_parts_chosen:
                self._batch_parts_chosen = value
                if getattr(self, "_runner", None) is not None:  # (the step is made again, its state kept)
                    self._drop_runner(keep_history=True)

    # ---- state ----
    def _init_training(self, seed: int):
        spec = self.manifest.get("training")
        self.seed = seed
        self.stop_training = False
        self.history = None
        self._iterations = 0
        self._epoch = 0
        self._lr_override = None
        self._runner = None
        self._previous_state = None  # a dropped runner's state before its last run (_drop_runner)
        self._state_stale = False
        self._train_session = self._eval_session = self._weights_session = None
        self._split = None  # the split step's sessions (_split_sessions); False: the step cannot be split
        self._stops_spinning = False  # whether this model's sessions stop their pools after a run
        self._flush = NoFlush()  # what each training step runs in (fpenv)
        self._shared = {}  # weight -> the SharedWeight it is, when other models hold it too
        self._shared_seen = {}  # weight -> the SharedWeight's version this model last looked at
        self._generation = 0  # bumped whenever this model's weights change
        # stateful recurrent layers' states (binding.RecurrentStates), carried from batch to batch
        from .binding import RecurrentStates
        specs = self.manifest.get("states")
        self._states = RecurrentStates(specs, self.name) if specs else None
        if spec:
            self._slots = self._fresh_slots(spec)
        else:
            self._slots = {}

    @property
    def trainable(self) -> bool:
        return bool(self.manifest.get("training"))

    def _require_training(self, what):
        if self.manifest.get("training_error"):
            raise RuntimeError(f"{what}: model {self.name} cannot be trained yet: {self.manifest['training_error']}")
        if not self.trainable:
            raise RuntimeError(f"{what}: model {self.name} has no train section; add `train {{ loss = ... "
                               f"optimizer = ... }}` to it")

    @property
    def iterations(self) -> int:
        """Optimizer steps taken so far."""
        return self._iterations

    @property
    def optimizer(self) -> OptimizerView | None:
        """The optimizer, as Keras's ``model.optimizer`` (None without a train section)."""
        return OptimizerView(self) if self.trainable else None

    @property
    def epochs_done(self) -> int:
        """Epochs completed so far (a checkpoint's, after load): the ``initial_epoch`` that goes on
        where training stopped."""
        return self._epoch

    @property
    def stateful(self) -> bool:
        """Whether a layer keeps its states from batch to batch (``stateful=true``): such a model
        reads its sequences in order, in batches of exactly its batch size."""
        return self._states is not None

    @property
    def learning_rate(self) -> float:
        """The optimizer's rate at the current step: the schedule's, or the last one set."""
        self._require_training("learning_rate")
        if self._lr_override is not None:
            return self._lr_override
        return learning_rate_at(self.manifest["training"]["optimizer"]["args"]["learning_rate"], self._iterations)

    @learning_rate.setter
    def learning_rate(self, value: float):
        self._require_training("learning_rate")
        schedule = self.manifest["training"]["optimizer"]["args"]["learning_rate"]
        if isinstance(schedule, dict):  # (as Keras: a rate set would silently end the schedule)
            raise TypeError(f"learning_rate: this optimizer's rate follows a schedule ({schedule['schedule']}) and "
                            f"cannot be set, as in Keras; give the optimizer a number as its learning_rate to set it")
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"learning_rate must be a number, got {value!r}") from None
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"learning_rate must be a finite number >= 0, got {value!r}")
        self._lr_override = rate

    def _session_for(self, key):
        attr = {"train_step": "_train_session", "eval": "_eval_session", "predict_weights": "_weights_session"}[key]
        if getattr(self, attr) is None:
            environment = NoFlush()
            if key == "train_step":  # a rebuilt step follows flush_denormals as it is now
                environment = self._flush = step_environment(self.flush_denormals)
            setattr(self, attr, self._new_session(self._graph_for(key), key.replace("_", " "),
                                                  environment=environment))
        return getattr(self, attr)

    def _graph_for(self, key) -> bytes:
        """The graph a session of ``key`` (train_step, eval, predict_weights) runs here."""
        graph = self._step_graph() if key == "train_step" else self._training_onnx[key]
        if self.device == "cpu":  # blocked convolutions for the kernels that are inputs here
            from ..backend.nchwc import global_pools, use_nchwc
            graph = use_nchwc(graph if key == "train_step" else global_pools(graph))
        return graph

    def _new_session(self, graph: bytes, what: str, threads: int = 0, stop_spinning=None, environment=None):
        """An onnxruntime session of ``graph`` on this model's device. ``threads``: its intra-op
        threads (0: onnxruntime's choice); ``stop_spinning``: None follows this process's turn
        taking (_new_session_options); ``environment``: fpenv's, for training steps."""
        import onnxruntime as ort
        options = self._new_session_options() if stop_spinning is None else session_options(stop_spinning)
        if threads:
            options.intra_op_num_threads = threads
        environment = environment or NoFlush()
        return create_session(lambda: environment.session(
            lambda o: ort.InferenceSession(graph, o, providers=self._providers,
                                           disabled_optimizers=DISABLED_OPTIMIZERS if self.device == "cpu" else []),
            options), self.name, what, self._providers)

    # ---- stateful recurrent layers ----
    @one_call_at_a_time
    def reset_states(self) -> None:
        """Set the states of the stateful recurrent layers to zeros (Keras's reset_states); the
        next batch starts afresh. Nothing happens for a model without stateful layers."""
        if self._states is not None:
            self._states.reset()

    def _state_feeds(self, xb, where) -> dict:
        """A step's stateful-layer states, for a batch ``xb`` of the states' batch size ({} without them)."""
        if self._states is None:
            return {}
        first = next(iter(xb.values()))
        self._states.check(len(first), where, first.shape)
        return self._states.feeds()

    def _check_state_batches(self, n, batch_size, shuffle, where) -> None:
        """fit's and evaluate's arrays with stateful layers: whole batches of the states' size,
        in order (Keras's stateful training takes shuffle=False; kcompile refuses shuffle=True,
        which would make row i of a batch continue another sequence than row i of the last)."""
        states = self._states
        if states is None:
            return
        if shuffle:
            raise ValueError(f"{where}: model {self.name} has stateful recurrent layers ({states.layers()}), whose "
                             f"row i of each batch continues row i of the batch before; shuffle=True would mix "
                             f"the sequences: pass shuffle=False")
        states.check_batches(n, batch_size, where)

    def _step_graph(self) -> bytes:
        """The training step as this model runs it: with its held-transposed state (below)."""
        held = self._held_transposed()
        if not held:
            return self._training_onnx["train_step"]
        from ..backend.layout import hold_transposed
        return hold_transposed(self._training_onnx["train_step"], sorted(held))

    def _held_transposed(self) -> set:
        """Step inputs that the training buffers hold transposed (backend.layout): the kernels of
        feature-major Dense layers and their optimizer slots, but not a kernel that another model
        shares, which both models bind in Keras layout."""
        spec = self.manifest["training"]
        kernels = set(spec.get("transposed", []))
        return ({n for n in kernels if n not in self._shared} |
                {s["name"] for s in spec["slots"] if s["param"] in kernels})

    def _weights_changed(self):
        """The weights changed (a step, set_weights, a shared weight): a new generation, and the
        inference session must see them: rebuilt on the next predict (with predict's copies of it;
        copies of the weights-as-inputs session stay valid)."""
        self._generation += 1
        if self._session is not None:
            self._copies = {use: c for use, c in self._copies.items() if c[0] is not self._session}
            self._session = None
        self._onnx_weights_current = False

    # ---- data ----
    def _targets_spec(self):
        return self.manifest["training"]["targets"]

    def _check_xy(self, x, y, where, sample_weight=None, class_weight=None):
        """(inputs, targets, rows), checked; the targets hold the samples' weights too (under
        the step's input names: ones, ``sample_weight`` (one array, or per output), or
        ``class_weight`` by each sample's class), where the training graphs take them."""
        xs = as_arrays(x, self.inputs, where, "input")
        targets = tensor_specs(self._targets_spec())
        ys = as_arrays(y, targets, where, "target") if y is not None else None
        xs, ys, n = check_arrays(xs, ys, self.inputs, targets, where)
        if n == 0:  # (a step's loss is a mean over the batch)
            raise ValueError(f"{where}: no samples (the arrays have 0 rows)")
        if self._named_input_dims:  # (a window too long for the inputs first: the targets' sizes follow from them)
            check_lengths(xs, self.manifest, where, self._lengths_checked)
        check_named_dims({**xs, **ys}, [(e, "input") for e in self.manifest["inputs"]] +
                         [(e, "target") for e in self._targets_spec()], where)
        if self._named_input_dims:
            self._check_unsized_targets(xs, ys, where)
        check_ids(xs, self._id_ranges, where)
        for name, classes in self.manifest["training"].get("label_classes", {}).items():
            labels = ys[name]
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise ShapeMismatch(f"{where}: target {name!r} holds class labels from {labels.min()} to {labels.max()}; "
                                    f"its prediction has {classes} classes (0 to {classes - 1})")
        spec = self.manifest["training"]
        weights_input = spec.get("sample_weight")
        if weights_input is None:  # (a build of kcompile 0.2.0 and before)
            if sample_weight is not None or class_weight is not None:
                raise ValueError(f"{where}: this build's graphs take no sample weights; build it again")
            return xs, ys, n
        outputs = [o.name for o in self.outputs]
        if "output_sample_weights" not in spec and len(outputs) > 1 and per_output(sample_weight, outputs):
            raise ValueError(f"{where}: this build's graphs take one weight per sample for every output, not "
                             f"sample_weight per output; build it again")
        labels = bool(set(spec.get("label_classes", {})) & set(ys))  # (class labels, not one-hot rows)
        ys[weights_input], by_output = sample_weights(sample_weight, class_weight, ys, n, where, outputs, labels)
        for output, name in spec.get("output_sample_weights", {}).items():
            ys[name] = by_output[output]
        self._place_weights_per_step(ys, n, where)
        return xs, ys, n

    def _place_weights_per_step(self, ys: dict, n: int, where: str) -> None:
        """Weights of more axes than the samples' ([n, T]: Keras's per-step sample_weight) go to
        their STEPS input, the per-sample ones then being ones; a STEPS input not given gets ones
        ([n, 1] along a dimension that is not fixed, which broadcasts)."""
        spec = self.manifest["training"]
        steps = {e["weights"]: e for e in spec.get("step_sample_weights", [])}
        outputs = {name: output for output, name in spec.get("output_sample_weights", {}).items()}
        in_use = spec.get("sample_weights_in_use")
        for key in [spec["sample_weight"], *outputs]:
            w, e = ys[key], steps.get(key)
            if in_use is not None and key not in in_use:  # (it weighs no term: one array for several outputs)
                ys[key] = np.ones(n, np.float32)
                continue
            if e is not None and w.ndim == len(e["shape"]) + 2 and w.shape[-1] == 1:
                w = w[..., 0]  # ([n, T, 1] as [n, T], as Keras)
            if w.ndim == 1:
                if e is not None:
                    ys[e["name"]] = np.ones((n, *(d if isinstance(d, int) else 1 for d in e["shape"])), np.float32)
                continue
            what = f"sample_weight {outputs[key]!r}" if key in outputs else "sample_weight"
            if "step_sample_weights" not in spec:  # (a build made before weights per step)
                raise ShapeMismatch(f"{where}: {what} expects shape ({n},): this build's graphs take one weight per "
                                    f"sample; build it again for weights per step, got {tuple(w.shape)}")
            if e is None or not e["every_term"]:
                raise ShapeMismatch(f"{where}: {what} expects shape ({n},), one weight per sample (the loss terms "
                                    f"it weighs give " + ("one value per sample" if e is None else
                                                          "values of several shapes") + f"), got {tuple(w.shape)}")
            like = ys.get(e["target"]) if e["target"] else None
            want = tuple(d if isinstance(d, int) else like.shape[1 + i] if like is not None and like.ndim > 1 + i
                         else None for i, d in enumerate(e["shape"]))
            if w.ndim != 1 + len(want) or any(d is not None and d != g for d, g in zip(want, w.shape[1:])):
                shown = ", ".join(str(d) if d is not None else "?" for d in (n, *want))
                raise ShapeMismatch(f"{where}: {what} expects shape ({n},), one weight per sample, or ({shown}), "
                                    f"one per step of its loss, got {tuple(w.shape)}")
            ys[e["name"]], ys[key] = w, np.ones(n, np.float32)

    def _sample_weight_inputs(self) -> list:
        """The step's inputs of sample weights: the one for every loss term, then each output's,
        then the weights per step."""
        spec = self.manifest["training"]
        return [n for n in [spec.get("sample_weight")] + list(spec.get("output_sample_weights", {}).values()) if n] + \
            [e["name"] for e in spec.get("step_sample_weights", [])]

    def _check_unsized_targets(self, xs, ys, where):
        """Targets whose size the manifest cannot give (``?``: a Flatten of [2, T]) are checked
        against their output's shape for these inputs, from a run of one row (kept by the inputs'
        shapes): onnxruntime would otherwise fail inside the step."""
        outputs = [o["name"] for o in self.manifest["outputs"]]
        unsized = [t["name"] for t in self._targets_spec()
                   if t["name"][:-len("_target")] in outputs and any("?" in str(d) for d in t["shape"])]
        if not unsized:
            return
        key = tuple((k, v.shape[1:]) for k, v in xs.items())
        if key not in self._output_shapes:
            out = self.predict({k: v[:1] for k, v in xs.items()}, batch_size=None)
            self._output_shapes[key] = dict(zip(outputs, [o.shape[1:] for o in (out if len(outputs) > 1 else [out])]))
        for name in unsized:
            output = name[:-len("_target")]
            given = ys[name].shape
            wanted = self._output_shapes[key][output][:len(given) - 1]  # (labels: the output's without its last axis)
            if given[1:] != wanted:
                raise ShapeMismatch(f"{where}: target {name!r} expects shape {(None,) + wanted} (output {output!r}'s "
                                    f"shape for these inputs), got {given}")

    # ---- one step ----
    def _step_feeds(self, xb: dict, yb: dict, training: bool):
        feeds = dict(xb)
        feeds.update(yb)
        feeds.update(self._weights)
        if training:  # (for the step as _step_graph gives it)
            feeds.update(self._slots)
            feeds.update({n: np.ascontiguousarray(feeds[n].T) for n in self._held_transposed()})
            feeds["lr"] = np.asarray(self.learning_rate, np.float32)
            feeds["step"] = np.asarray(self._iterations + 1, np.float32)
            feeds.update(self._noise(xb))
        return feeds

    def _noise(self, xb: dict) -> dict:
        """The step's uniform noise for dropout-like layers, seeded by the step count: a resumed
        run draws what the uninterrupted one would have."""
        spec = self.manifest["training"]["noise"]
        if not spec:
            return {}
        sizes, _ = named_sizes(xb, self.manifest["inputs"])  # this batch's N, and T
        rng = np.random.default_rng([self.seed, 7919, self._iterations])
        noise = {}
        for item in spec:  # (a float64 model's: float64; a float16 model's drawn as float32, numpy's least)
            dtype = np.dtype(item.get("dtype", "float32"))
            shape = tuple(evaluate_dim(d, sizes) for d in item["shape"])
            noise[item["name"]] = rng.random(shape, dtype=dtype) if dtype.itemsize >= 4 else \
                rng.random(shape, dtype=np.float32).astype(dtype)
        return noise

    def _runner_for_training(self, rows: int | None = None):
        """The training step's runner, made for batches of ``rows`` rows (None: not known)."""
        if self._runner is None:
            from .binding import StateRunner
            parts = self._batch_parts(rows)
            if parts > 1:
                self._runner = self._sharded_runner(parts)
            if self._runner is None:
                self._runner = StateRunner(self._session_for("train_step"), {**self._weights, **self._slots},
                                           self._providers, shared=self._shared, flush=self._flush,
                                           transposed=self._held_transposed(), previous=self._previous_state)
            self._previous_state = None
            self._lr_buffer = np.zeros((), np.float32)
            self._step_buffer = np.zeros((), np.float32)
            self._runner.bind_in_place({"lr": self._lr_buffer, "step": self._step_buffer})
        return self._runner

    def _batch_parts(self, rows: int | None = None) -> int:
        """Into how many parts, one per core, the training step splits its batch (1: not split).
        ``batch_parts`` chooses; None (the default) splits in two on a CPU of two or more cores
        a step that the compiler found splittable (its layers and loss work sample by sample),
        whose weights are this model's own, and whose products and convolutions outweigh its
        optimizer update (splitting.worth_splitting, by which the compiler chose the step's forms;
        a step through recurrences also by its batches' ``rows``, where known)."""
        spec = self.manifest["training"]
        tables = spec.get("row_gradients", {})
        if self.device != "cpu" or self._shared or spec.get("per_sample") is not True or not (
                spec.get("gradients") or tables):
            return 1
        if self.batch_parts is not None:
            return self.batch_parts
        # (a table updated on the rows a batch looked up is left out: its gradient is as small
        # as the batch, and its update is no larger split or whole)
        weights = sum(int(np.prod(self._weights[n].shape)) for n in spec["trainable"] if n not in tables)
        macs = spec.get("macs_per_sample", 0)
        if devices.cpu_cores() < 2 or not worth_splitting(macs, weights, steps=spec.get("recurrent_steps", 0),
                                                          rows=rows):
            return 1
        return 2

    def _split_graphs(self, parts: int):
        """([a part's graph of each phase], the update's graph) of the training step as this model
        runs it, cut into ``parts`` parts of the batch (backend/shards.py, blocked convolutions
        on the CPU); None where the update reads more than the weights, slots, gradients and
        the batch statistics the parts exchange."""
        from ..backend.nchwc import use_nchwc
        from ..backend.shards import split_step
        spec = self.manifest["training"]
        graphs = split_step(self._step_graph(), spec["gradients"], parts, spec.get("row_gradients"))
        if graphs is None:
            return None
        return [use_nchwc(g) if self.device == "cpu" else g for g in graphs[0]], graphs[1]

    def _split_sessions(self, parts: int):
        """(the parts' sessions, the update's session) of the split step, made once and kept
        like the whole step's session (a new runner, after set_weights say, reuses them); None
        where the step cannot be cut so."""
        if self._split is None or (self._split and len(self._split[0][0]) != parts):
            graphs = self._split_graphs(parts)
            self._split = False
            if graphs is not None:
                environment = self._flush = step_environment(self.flush_denormals)
                threads = max(1, devices.cpu_cores() // parts)
                # The update's pool stops spinning after each run: the parts that follow need every core.
                makers = [lambda g=g: self._new_session(g, "train step", threads, self._stops_spinning, environment)
                          for g in graphs[0] for _ in range(parts)]
                made = built_at_once(makers + [lambda: self._new_session(graphs[1], "train step", 0, True,
                                                                         environment)])
                self._split = ([made[q * parts:(q + 1) * parts] for q in range(len(graphs[0]))], made[-1])
        return self._split or None

    def _sharded_runner(self, parts: int):
        """The training step as ``parts`` one-core parts of the batch and an update
        (binding.ShardedRunner); None where the step cannot be cut so."""
        from .binding import ShardedRunner, StateRunner
        sessions = self._split_sessions(parts)
        if sessions is None:
            return None
        spec = self.manifest["training"]
        update = StateRunner(sessions[1], {**self._weights, **self._slots}, self._providers, flush=self._flush,
                             transposed=self._held_transposed(), previous=self._previous_state)
        split = {s.name for s in self.inputs} | {t["name"] for t in spec["targets"]} | {
            n["name"] for n in spec["noise"] if n["shape"] and n["shape"][0] == spec["targets"][0]["shape"][0]} | set(
            self._sample_weight_inputs())
        return ShardedRunner(sessions[0], update, {**self._weights, **self._slots}, split, spec["metrics"],
                             flush=self._flush)

    def _sync_state(self):
        """Bring the weight and slot dictionaries up to date: this model's training buffers, and
        the shared weights other models changed."""
        self._sync_own_state()
        self._pull_shared()

    def _sync_own_state(self):
        """Copy the training buffers' current state into the weight and slot dictionaries."""
        if self._runner is None or not self._state_stale:
            return
        self._state_stale = False
        for name, value in self._runner.current().items():
            value = np.array(value, order="C")  # own copy: the buffers are reused by the next steps
            if name in self._weights:
                self._weights[name] = value
            else:
                self._slots[name] = value

    def _drop_runner(self, keep_history: bool = False):
        """Drop the training buffers, their state kept in the weight and slot dictionaries.
        ``keep_history``: the runner is made again for the same training (sessions rebuilt, weights
        frozen), so the next one can still step back past its first run to this one's previous
        state, as a non-finite loss needs; not after new weights (set_weights, share_weights)."""
        self._previous_state = self._runner.previous() if keep_history and self._runner is not None else None
        self._sync_state()
        self._runner = None

    def _drop_step_sessions(self):
        """The training step's sessions, whole and split (each made again when next needed)."""
        self._train_session = self._split = None

    def _new_session_options(self):
        """Options for a new session of this model (devices.session_options)."""
        self._follow_turns()
        return session_options(stop_spinning=self._stops_spinning)

    def _ran(self, session):
        """Note a run of one of this model's sessions."""
        if self.device == "cpu":  # (the pools that spin are the CPU's)
            TURNS.ran(session)
            self._follow_turns()

    def _follow_turns(self):
        """Once this process's sessions are seen taking turns, this model's sessions stop their
        pools spinning after each run: those made before are dropped, to be rebuilt."""
        if TURNS.seen and not self._stops_spinning and self.device == "cpu":
            self._stops_spinning = True
            self._drop_runner(keep_history=True)
            self._drop_step_sessions()
            self._eval_session = self._weights_session = self._session = None
            self._copies = {}

    # ---- freezing ----
    @one_call_at_a_time
    def set_trainable(self, layer: str, trainable: bool = True) -> list[str]:
        """Freeze (or unfreeze) the weights of a layer, or of every layer under a prefix such as a
        model used inside this one (``"discriminator"``). Only the training graphs are rebuilt,
        without gradient work for frozen weights; weights and the optimizer state of weights that
        stay trainable are kept. Returns the weights changed."""
        self._require_training("set_trainable")
        if not isinstance(layer, str) or not isinstance(trainable, (bool, np.bool_)):
            raise ValueError(f"set_trainable: expects a layer name and True or False, got {layer!r} and {trainable!r}")
        trainable = bool(trainable)
        compiled = self._compiled
        if compiled is None:
            raise RuntimeError("set_trainable needs a model from kcompile.compile (a loaded folder holds "
                               "compiled graphs only); compile its source.kdl")
        graph = compiled.elaborated
        names = [n for n in graph.params if n.startswith(layer + "/")]
        if not names:
            from ..errors import did_you_mean
            layers = sorted({n.rsplit("/", 1)[0] for n in graph.params})
            raise ValueError(f"no weights under {layer!r}; layers: {', '.join(layers)}"
                             + (f" ({did_you_mean(layer, layers)})" if did_you_mean(layer, layers) else ""))
        for n in names:  # (statistics, BatchNorm's moving ones and Normalization's adapted ones, never train)
            graph.params[n].trainable = trainable and not graph.params[n].statistic
        for node in graph.nodes():  # a frozen BatchNormalization runs in inference mode, as Keras
            if node.op == "BatchNormalization" and any(v in names for v in node.inputs):
                node.attrs["trainable"] = trainable
        self._sync_state()
        from ..driver import lower_training
        compiled._training = None
        self._training_onnx.update(lower_training(compiled))
        spec = compiled.training().describe()
        self.manifest["training"] = spec
        trainable_now = {p.name for p in graph.params.values() if p.trainable}
        for p in self.manifest["parameters"]:
            p["trainable"] = p["name"] in trainable_now
        self._slots = self._fresh_slots(spec, keep=self._slots)
        self._drop_runner(keep_history=True)
        self._drop_step_sessions()
        self._eval_session = None
        return names

    def _fresh_slots(self, spec, keep=None) -> dict:
        """The optimizer's slots of ``spec`` at their initial values, those in ``keep`` kept."""
        keep = keep or {}
        return {s["name"]: keep[s["name"]] if s["name"] in keep else
                np.full(self._weights[s["param"]].shape, s["init"], dtype=self._weights[s["param"]].dtype)
                for s in spec["slots"]}

    @one_call_at_a_time
    def reset_optimizer(self) -> None:
        """Start the optimizer afresh: every slot at its initial value and the step count at 0,
        as Keras's compile() with a new optimizer does (after changing what is trainable, say:
        set_trainable keeps the state of the weights that stay trainable). The learning rate set
        by hand, if any, stays."""
        self._require_training("reset_optimizer")
        self._drop_runner()
        spec = self.manifest["training"]
        self._slots = self._fresh_slots(spec)
        self._iterations = 0

    # ---- weights shared between models ----
    @one_call_at_a_time
    def share_weights(self, other, prefix: str = "") -> int:
        """Make this model's weights ``prefix + name`` and ``other``'s weights ``name`` one set of
        buffers (a model used inside another: ``gan.share_weights(generator, "generator/")``).
        Both models' training steps read and write those buffers directly, so a step of either
        is seen by the other without a copy. Starts from ``other``'s values. Returns the number
        of weights tied."""
        if not isinstance(other, TrainingMixin) or not isinstance(prefix, str):
            raise ValueError(f"share_weights: expects a kcompile model and a prefix (a str), got "
                             f"{type(other).__name__} and {prefix!r}")
        with other._lock:  # (its buffers change too)
            return self._tie_weights(other, prefix)

    def _tie_weights(self, other, prefix: str) -> int:
        from .binding import SharedWeight
        pairs = [(prefix + n, n) for n in other.weight_names if prefix + n in self._weights]
        if not pairs:
            raise ValueError(f"no weight of {self.name} is named {prefix}<a weight of {other.name}>")
        if self._providers[0] != other._providers[0]:
            raise ValueError(f"{self.name} runs on {self.device} and {other.name} on {other.device}; "
                             "tied weights need one device")
        self._pull_shared()
        other._pull_shared()
        for a, b in pairs:
            value_a, value_b = self._weights[a], other._weights[b]
            if value_a.shape != value_b.shape or value_a.dtype != value_b.dtype:
                raise ValueError(f"{self.name}'s {a} is {value_a.dtype}{list(value_a.shape)}, {other.name}'s {b} is "
                                 f"{value_b.dtype}{list(value_b.shape)}")
            mine, theirs = self._shared.get(a), other._shared.get(b)
            if mine is not None and theirs is not None and mine is not theirs:
                raise ValueError(f"{self.name}'s {a} and {other.name}'s {b} are each tied to other weights already")
        # The runners go: they are rebuilt binding the shared buffers (their own state is kept),
        # and so do the steps, which read a shared kernel in Keras layout (_held_transposed).
        for model in (self, other):
            model._drop_runner()
            model._drop_step_sessions()
        for a, b in pairs:
            weight = other._shared.get(b)
            if weight is None:
                weight = self._shared.get(a)
                if weight is None:
                    weight = SharedWeight(other._weights[b], other._providers)
                else:
                    weight.assign(other._weights[b])
            for model, name in ((self, a), (other, b)):
                model._shared[name] = weight
                model._shared_seen[name] = -1  # (taken by the next _pull_shared)
        self._pull_shared()
        other._pull_shared()
        return len(pairs)

    def _pull_shared(self):
        """Take the current values of shared weights that changed since this model last looked
        (views of the shared buffers: no copy)."""
        changed = [n for n, w in self._shared.items() if self._shared_seen.get(n) != w.version]
        if not changed:
            return
        self._sync_own_state()
        for name in changed:
            weight = self._shared[name]
            self._shared_seen[name] = weight.version
            self._weights[name] = weight.numpy()
        self._weights_changed()

    @one_call_at_a_time
    def _run_train_step(self, xb, yb, where="fit"):
        self._pull_shared()
        runner = self._runner_for_training(len(next(iter(xb.values()))) if xb else None)
        self._lr_buffer[...] = self.learning_rate
        self._step_buffer[...] = self._iterations + 1
        data = {**xb, **yb, **self._noise(xb), **self._state_feeds(xb, where)}  # (lr and step are bound in place)
        results = runner.run(data)
        loss = float(results["loss"])
        if not math.isfinite(loss):
            # The current weights gave a non-finite loss: go back to those of the previous
            # step, the last that gave a finite one, where this runner still holds them (not
            # where it was made after it: after set_weights, say, the current ones stay).
            runner.step_back()
            if self._iterations > 0 and runner.history:
                runner.step_back()
                self._iterations -= 1
            self._state_stale = True
            self._drop_runner()
            self._weights_changed()  # (a predict since the last step may have folded the weights undone)
            raise NonFiniteLoss(self._epoch, self._step_in_epoch, loss, results)
        self._iterations += 1
        self._state_stale = True
        if self._states is not None:
            self._states.update(results)
        self._weights_changed()  # (a predict between steps, a callback's, sees these weights)
        for name, weight in runner.shared_state.items():  # (this model's own writes)
            self._shared_seen[name] = weight.version
        self._ran(runner.session)
        return results

    @one_call_at_a_time
    def _run_eval_step(self, xb, yb, where="evaluate"):
        self._sync_state()
        session = self._session_for("eval")
        results = self._eval_run(session, xb, yb, where)
        self._ran(session)
        return results

    def _eval_run(self, session, xb, yb, where):
        """One run of an evaluation session on a batch: its outputs by name."""
        names = [o.name for o in session.get_outputs()]
        feeds = {**self._step_feeds(xb, yb, training=False), **self._state_feeds(xb, where)}
        needed = {i.name for i in session.get_inputs()}
        results = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in needed})))
        if self._states is not None:
            self._states.update(results)
        return results

    @one_call_at_a_time
    def _eval_runs(self, xb, yb, n, most, where) -> list:
        """A batch of ``n`` rows evaluated in runs of at most ``most`` rows, of even sizes (the loss
        and metric sums of the runs add up to the batch's): where it has four runs a half or more
        and the machine two cores, each half of the batch at once on a core of its own, by a
        one-thread copy of the evaluation session. evaluate of 10,240 rows in batches of 512 and
        1,024, against the two-thread session's runs: the MNIST CNN 176-185 -> 169-175 ms,
        separable 445 -> 390-405, cnn_strided 122 -> 100; in batches of 128 (halves of two runs)
        the MNIST CNN took 1-3% longer. [(outputs by name, rows)], in the batch's order."""
        from .binding import core_pool
        self._sync_state()
        session = self._session_for("eval")

        def runs(s, start, stop, step):
            cuts = [slice(i, min(stop, i + step)) for i in range(start, stop, step)]
            return [(self._eval_run(s, {k: v[c] for k, v in xb.items()}, {k: v[c] for k, v in yb.items()}, where),
                     c.stop - c.start) for c in cuts]
        copies = self._eval_copies(session) if n >= 8 * most and devices.cpu_cores() >= 2 else None
        if copies is None:
            out = runs(session, 0, n, even_runs(n, most))
        else:
            half = -(-n // 2)
            step = even_runs(half, most)
            second = core_pool().submit(runs, copies[1], half, n, step)
            out = runs(copies[0], 0, half, step) + second.result()
        self._ran(session)
        return out

    def _eval_copies(self, session) -> list:
        """Two one-thread copies of the evaluation session ``session`` (made once per session)."""
        copied = self._copies.get("eval_parts")
        if copied is None or copied[0] is not session:
            graph, threads = self._graph_for("eval"), max(1, devices.cpu_cores() // 2)
            copied = self._copies["eval_parts"] = (
                session, [self._new_session(graph, "evaluation part", threads=threads) for _ in range(2)])
        return copied[1]

    # ---- public API ----
    @one_call_at_a_time
    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on one batch; returns the loss and metrics of that batch."""
        self._require_training("train_on_batch")
        xs, ys, n = self._check_xy(x, y, "train_on_batch", sample_weight, class_weight)
        self._step_in_epoch = 0
        results = self._run_train_step(xs, ys, "train_on_batch")
        running = RunningMetrics(self.manifest["training"]["metrics"])
        running.update(results, n)
        return self._format(running.result(), return_dict)

    @one_call_at_a_time
    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        self._require_training("test_on_batch")
        xs, ys, n = self._check_xy(x, y, "test_on_batch", sample_weight)
        running = RunningMetrics(self.manifest["training"]["metrics"])
        running.update(self._run_eval_step(xs, ys, "test_on_batch"), n)
        return self._format(running.result(), return_dict)

    def _format(self, logs, return_dict):
        if return_dict:
            return logs
        values = [logs["loss"]] + [logs[m["name"]] for m in self.manifest["training"]["metrics"]]
        return values[0] if len(values) == 1 else values

    def evaluate(self, x=None, y=None, batch_size=32, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """Loss and metrics over (x, y) in inference mode (dropout off, moving statistics);
        ``sample_weight`` weighs each sample's loss, as Keras (the metrics are unweighted);
        ``steps``: the first that many batches only (None: all of them)."""
        self._require_training("evaluate")
        from ..callbacks import CallbackList
        steps = count(steps, "evaluate", "steps", 0, none=True) or None  # (0: all, as Keras)
        batches = Batches.of(self, x, y, batch_size, shuffle=False, seed=self.seed, where="evaluate",
                             steps=steps, sample_weight=sample_weight)
        verbose = 1 if verbose == "auto" else verbose
        cbs = CallbackList(callbacks, add_history=False, add_progbar=verbose != 0, model=self,
                           epochs=1, steps=batches.steps, verbose=verbose)
        return self._format(self._evaluate_batches(batches, cbs), return_dict)

    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        """Train for ``epochs`` (Keras semantics). ``x``/``y``: arrays (dicts by name for several
        inputs/targets), or ``x`` an iterable of (x, y) or (x, y, sample_weight) batches.
        ``sample_weight`` ([n], or per output: {output: [n]}) or ``class_weight`` ({class: weight})
        weigh each sample's loss.
        Validation runs after every ``validation_freq``-th epoch (an int), or after the epochs
        listed (1-based). Returns a History."""
        self._require_training("fit")
        from ..callbacks import CallbackList
        epochs, initial_epoch = count(epochs, "fit", "epochs", 0), count(initial_epoch, "fit", "initial_epoch", 0)
        steps_per_epoch = count(steps_per_epoch, "fit", "steps_per_epoch", none=True)
        validation_steps = count(validation_steps, "fit", "validation_steps", none=True)
        validation_batch_size = count(validation_batch_size, "fit", "validation_batch_size", none=True)
        if isinstance(validation_split, (bool, np.bool_)) or not isinstance(validation_split, (int, float, np.number)) \
                or not 0 <= validation_split < 1:
            raise ValueError(f"fit: validation_split must be a number at least 0 and below 1, got {validation_split!r}")
        validate_at = _validation_epochs(validation_freq)
        if validation_split and validation_data is None:
            xs, ys, n = self._check_xy(x, y, "fit", sample_weight, class_weight)
            for k in self._sample_weight_inputs():  # (each part's are made again from sample_weight)
                ys.pop(k, None)
            outputs = [o.name for o in self.outputs]

            def split(rows):
                if sample_weight is None:
                    return None
                if not per_output(sample_weight, outputs):
                    return np.asarray(sample_weight)[rows]
                given = sample_weight if isinstance(sample_weight, dict) else dict(zip(outputs, sample_weight))
                return {o: None if w is None else np.asarray(w)[rows] for o, w in given.items()}
            cut = int(n * (1 - validation_split))
            if cut in (0, n):  # (as Keras: neither part may be empty)
                raise ValueError(f"fit: {n} samples cannot be split into training and validation samples at "
                                 f"validation_split={validation_split} ({cut} and {n - cut}); give more data or "
                                 f"another validation_split")
            # (class_weight weighs the training samples alone, as Keras)
            validation_data = ({k: v[cut:] for k, v in xs.items()}, {k: v[cut:] for k, v in ys.items()},
                               split(slice(cut, None)))
            x, y = {k: v[:cut] for k, v in xs.items()}, {k: v[:cut] for k, v in ys.items()}
            sample_weight = split(slice(None, cut))
        batches = Batches.of(self, x, y, batch_size, shuffle=shuffle, seed=self.seed, where="fit",
                             steps=steps_per_epoch, sample_weight=sample_weight, class_weight=class_weight)
        val = None
        if validation_data is not None:  # (x, y[, sample_weight]) arrays, or an iterable of batches, as Keras
            if isinstance(validation_data, (tuple, list)):
                if len(validation_data) not in (2, 3):
                    raise ValueError(f"fit: validation_data must be (x, y), (x, y, sample_weight) or an iterable of "
                                     f"batches, got {len(validation_data)} items")
                val = Batches.of(self, validation_data[0], validation_data[1], validation_batch_size or batch_size,
                                 shuffle=False, seed=self.seed, where="fit validation_data", steps=validation_steps,
                                 sample_weight=validation_data[2] if len(validation_data) == 3 else None)
            else:  # (a one-shot iterator's batches are kept, to validate every epoch on them, as
                # Keras: its first validation_steps batches where given, so an endless generator
                # is not read to its end)
                items = validation_data
                if one_shot(validation_data):
                    items = list(itertools.islice(validation_data, count(validation_steps, "fit", "validation_steps",
                                                                         none=True)))
                val = Batches(self, None, None, None, validation_batch_size or batch_size, False, self.seed,
                              "fit validation_data", iterable=items, steps=validation_steps)
        verbose = 1 if verbose == "auto" else verbose
        cbs = CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=self, epochs=epochs,
                           steps=batches.steps, verbose=verbose)
        self.stop_training = False
        self.nonfinite = None  # (the NonFiniteLoss that stops this fit, if one does)
        running = RunningMetrics(self.manifest["training"]["metrics"])
        self.__dict__.pop("_resume_at", None)  # (an earlier fit's, whose on_train_begin failed after it was set)
        cbs.on_train_begin()
        batch_logs = cbs.reads_batch_logs()  # (after on_train_begin, which may attach a hook)
        # A backup restored in on_train_begin (BackupAndRestore) says where training goes on: its
        # epoch, and the steps of that epoch it had taken (skipped below, their batches drawn as before)
        resume = self.__dict__.pop("_resume_at", None)
        initial_epoch, skip = resume if resume is not None else (initial_epoch, 0)
        logs = {}
        for epoch in range(initial_epoch, epochs):
            self._epoch = epoch
            running.reset()
            cbs.on_epoch_begin(epoch)
            steps = 0
            for step, (xb, yb, n) in enumerate(batches.epoch(epoch)):
                steps += 1
                if step < skip:  # (taken before the restored backup was saved)
                    continue
                self._step_in_epoch = step
                cbs.on_train_batch_begin(step)
                try:
                    results = self._run_train_step(xb, yb)
                except NonFiniteLoss as e:  # (the weights went back to the last finite step's)
                    print(f"kcompile: {e}")
                    self.stop_training, self.nonfinite = True, e
                    # the callbacks see the loss and that batch's metrics, as Keras's (TerminateOnNaN's
                    # batch end; the epoch's end in the History, after the validation Keras runs too, here
                    # of the weights kept), and the epoch ends there, not counted as done
                    if e.results is not None:
                        running.update(e.results, n)
                    logs = {**running.result(), "loss": e.value}
                    cbs.on_train_batch_end(step, logs)
                    if val is not None and validate_at(epoch):
                        logs.update({f"val_{k}": v for k, v in self._evaluate_batches(val, cbs).items()})
                    cbs.on_epoch_end(epoch, logs)
                    break
                running.update(results, n)
                cbs.on_train_batch_end(step, running.result() if batch_logs else None)
                if self.stop_training:
                    break
            if self.nonfinite is not None:
                break
            ran_out = batches.iterable is not None and not self.stop_training and (
                not steps or (batches.steps is not None and steps < batches.steps))
            if ran_out:  # (as Keras: the epoch's steps so far count, and training stops)
                print(f"kcompile: the training data ran out at epoch {epoch + 1}; training stopped (an "
                      f"iterable must give at least steps_per_epoch x epochs batches)")
                self.stop_training = True
            if steps <= skip:  # (no epoch of made-up numbers)
                if not steps or self.stop_training:
                    break
                skip = 0  # (the restored backup had taken all of this epoch's steps)
                continue
            skip = 0
            logs = running.result()
            if val is not None and validate_at(epoch):
                logs.update({f"val_{k}": v for k, v in self._evaluate_batches(val, cbs).items()})
            self._epoch = epoch + 1  # (the epochs done, as a checkpoint saved at the epoch's end records)
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbs.on_train_end(logs)
        return cbs.history

    def _evaluate_batches(self, batches, cbs) -> dict:
        """Loss and metrics over ``batches`` in inference mode, with the callbacks' test hooks as
        Keras calls them (evaluate, and fit's validation)."""
        running = RunningMetrics(self.manifest["training"]["metrics"])
        batch_logs = cbs.reads_batch_logs(("on_test_batch_end",))
        cbs.on_test_begin()
        steps, most = 0, self._eval_rows()
        for steps, (xb, yb, n) in enumerate(batches, 1):
            cbs.on_test_batch_begin(steps - 1)
            if most is None or n <= most:
                running.update(self._run_eval_step(xb, yb, batches.where), n)
            else:  # (the loss and metrics are sums over the rows)
                for results, rows in self._eval_runs(xb, yb, n, most, batches.where):
                    running.update(results, rows)
            cbs.on_test_batch_end(steps - 1, running.result() if batch_logs else None)
        if not steps:  # (an iterable that ran out: no made-up loss of 0)
            raise ValueError(f"{batches.where}: the data gave no batches")
        logs = running.result()
        cbs.on_test_end(logs)
        return logs

    def _eval_rows(self):
        """The most rows an evaluation run takes (None: the whole batch): a large batch runs in
        parts whose activations stay nearer the cache, their loss and metric sums added. The
        MNIST CNN's evaluate of 10,240 rows took 416-427 ms in batches of 1,024 and 289 in
        batches of 64 or 128 (296 of 32, 315 of 16), a BatchNormalization CNN's (cnn_bn in
        benchmarks/survey.py) 811 ms in batches of 1,024 and 570-594 in batches of 64-128 (623 of
        32); twice predict's cache-sized runs, 32 to 128 rows. Only where rows are computed each
        on its own (no stateful layers)."""
        if self.device != "cpu" or not self._rows_independent or self._states is not None:
            return None
        return max(32, min(128, 2 * self._predict_rows))

    # ---- weights and checkpoints ----
    def _restore(self, path) -> dict:
        """Go on from the checkpoint folder ``path`` of this model (BackupAndRestore): its weights,
        optimizer slots, step count (which seeds the dropout noise) and learning rate. Returns its
        state.json (iterations, epoch, seed, ...)."""
        from pathlib import Path
        from .checkpoint import find_manifest, read_folder
        folder = read_folder(find_manifest(Path(path)))
        slots = folder.slots or {}
        if folder.state is None or sorted(folder.weights) != sorted(self._param_names) \
                or sorted(slots) != sorted(self._slots):
            raise ValueError(f"{path} holds a checkpoint of another model or optimizer than this {self.name}")
        self.set_weights([folder.weights[n] for n in self._param_names])  # (drops the training buffers)
        self._slots = {n: slots[n] for n in self._slots}
        self._resume_from(folder.state)
        return folder.state

    def _resume_from(self, state: dict) -> None:
        """A checkpoint's step count (which seeds the dropout noise), epoch and learning-rate
        override (its state.json), for Model.load and _restore."""
        self._iterations, self._epoch = state["iterations"], state["epoch"]
        self._lr_override = state.get("learning_rate_override")

    @one_call_at_a_time
    def optimizer_state(self) -> dict:
        self._sync_state()
        return {k: v.copy() for k, v in self._slots.items()}
