"""The user-facing Model: predict, summary, weights, ONNX export, on ONNX Runtime."""
from __future__ import annotations

import copy
import io
import itertools
import json
import re
import threading
import warnings
from pathlib import Path

import numpy as np

from ..errors import ShapeMismatch
from ..ir.types import BATCH, DTYPES
from . import devices
from .devices import providers_for
from .summary import format_summary
from .data import as_arrays, check_arrays, check_ids, check_lengths, count, even_runs, tensor_specs
from .layers import LayersMixin
from .fpenv import NoFlush
from .training import TrainingMixin, one_call_at_a_time


PREDICT_CACHE_BYTES = 4 << 20  # activations per predict run (about a core's share of a CPU's last-level cache)


def cache_rows(activation_bytes: int, share: int = 1) -> int:
    """The rows of a predict run whose activations, ``activation_bytes`` a row, take 1/``share`` of
    PREDICT_CACHE_BYTES (at least 16; unbounded where the manifest gives no size)."""
    return max(16, PREDICT_CACHE_BYTES // activation_bytes // share) if activation_bytes else 2 ** 62


class Model(LayersMixin, TrainingMixin):
    """A compiled model. Build it with :func:`kcompile.compile` or :func:`kcompile.load`."""

    def __init__(self, onnx_bytes: bytes, manifest: dict, weights: dict[str, np.ndarray], device: str = "cpu",
                 training_onnx: dict | None = None, seed: int | None = None):
        self._onnx = onnx_bytes
        self._lock = threading.RLock()  # (one_call_at_a_time)
        self.manifest = manifest
        self.name = manifest["model"]
        self.inputs = tensor_specs(manifest["inputs"])
        self.outputs = tensor_specs(manifest["outputs"])
        self._param_names = [p["name"] for p in manifest["parameters"]]
        self._weights = {n: np.asarray(weights[n], order="C") for n in self._param_names}
        self._providers = providers_for(device)
        self.device = "cuda" if self._providers[0] == "CUDAExecutionProvider" else "cpu"
        self._session = None
        self._predictor = None
        # predict's copies of its session, by use ("parts": one-core halves of a large batch,
        # (the session, (two Predictors, rows a run)); "spinning": a pool that spins, for
        # predicts back to back, (the session, Predictor))
        self._copies = {}
        # which form predict's parts run ("plain", "winograd" or "fused": _parts_forms), once timed:
        # new weights do not change which is faster
        self._parts_form = None
        # predict runs at most this many rows at once: a model with large activations (a CNN's
        # first feature maps) then keeps them in the cache (measured on the MNIST CNN at batch
        # 1024: about 60k samples/s in one run, 66k in runs of 48 rows)
        self._predict_rows = cache_rows(manifest.get("activation_bytes_per_sample") or 0)
        # an output that does not lead with the batch axis (`output mean(h)`) is computed over
        # all the rows at once: predict cannot run it in batches and join the results
        self._batched_outputs = all(o["shape"][:1] == [BATCH] for o in manifest["outputs"])
        # where one row's outputs depend on other rows (`h - mean(h, axis=0)`), predict runs
        # exactly batch_size rows at a time, not in the runs it would choose for speed
        self._rows_independent = manifest.get("rows_independent", False)  # (unknown in 0.2.0's builds)
        self._id_ranges = manifest.get("id_ranges", {})  # input -> the rows of the Embedding table it indexes
        # inputs with sizes named in the source (T): the lengths they give are checked before a run
        self._named_input_dims = any(isinstance(d, str) for i in manifest["inputs"] for d in i["shape"][1:])
        self._output_shapes = {}  # the inputs' shapes -> each output's, where a target's size is unknown (?)
        self._lengths_checked = set()  # the named sizes check_lengths found good
        self._predicted_generation = -1
        self._onnx_weights_current = True  # the .onnx bytes hold exactly self._weights
        self._training_onnx = training_onnx or {}
        self._compiled = None  # the compiler's result, when this model was compiled in this process
        self._source = None  # the .kdl text it was compiled from, where known (save writes it again)
        self._init_training(manifest.get("seed", 0) if seed is None else seed)

    def __getstate__(self):
        """copy.deepcopy and pickle: the weights, optimizer slots, step and history, brought up to
        date from the training buffers; onnxruntime's sessions and the buffers bound to them are
        made again when the copy first needs them, and the lock is made anew. A weight shared
        with other models (share_weights) is the copy's own."""
        with self._lock:  # (the values of one step: another thread's call may change them after)
            self._sync_state()
            state = dict(self.__dict__)
            state.update(_weights=dict(self._weights), _slots=dict(self._slots), _states=copy.deepcopy(self._states),
                         _previous_state=self._runner.previous() if self._runner is not None else self._previous_state)
        del state["_lock"]
        state.update(_session=None, _predictor=None, _copies={}, _runner=None, _train_session=None,
                     _eval_session=None, _weights_session=None, _flush=NoFlush(), _shared={}, _shared_seen={},
                     _split=None if state["_split"] is not False else False, _state_stale=False)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ---------------- construction ----------------
    @classmethod
    def from_compiled(cls, compiled, seed: int = 0, device: str = "cpu") -> "Model":
        from ..driver import initial_weights, lower_all, manifest_for
        weights = initial_weights(compiled.graph, seed)
        files = lower_all(compiled, weights)
        manifest = manifest_for(compiled, seed)
        model = cls(files.pop("inference"), manifest, weights, device, files)
        model._compiled = compiled
        model._source = compiled.source
        return model

    @classmethod
    def load(cls, path, device: str = "cpu") -> "Model":
        """A build or checkpoint folder, each file checked against the manifest (checkpoint.py)."""
        from .checkpoint import find_manifest, read_folder
        folder = read_folder(find_manifest(Path(path)))
        model = cls(folder.inference, folder.manifest, folder.weights, device, folder.training)
        model._source = folder.source
        if folder.state is not None:  # a checkpoint: optimizer slots, step and epoch
            model._slots = folder.slots
            model._resume_from(folder.state)
            model.seed = folder.state["seed"]
        return model

    # ---------------- weights ----------------
    @one_call_at_a_time
    def get_weights(self) -> list[np.ndarray]:
        """All weights in Keras's order and layouts (Dense kernel [in, out], Conv2D kernel [kh, kw, in, out])."""
        self._sync_state()
        return [self._weights[n].copy() for n in self._param_names]

    @one_call_at_a_time
    def set_weights(self, weights) -> None:
        weights = list(weights)
        if len(weights) != len(self._param_names):
            raise ValueError(f"set_weights: the model has {len(self._param_names)} weights, got {len(weights)}")
        new = {}
        for name, spec, w in zip(self._param_names, self.manifest["parameters"], weights):
            w = np.asarray(w)
            if tuple(w.shape) != tuple(spec["shape"]):
                raise ShapeMismatch(f"set_weights: weight {name} expects shape {tuple(spec['shape'])}, "
                                    f"got {tuple(w.shape)}")
            new[name] = np.array(w, dtype=spec["dtype"], order="C")  # (a copy: the caller's arrays stay theirs)
        self._drop_runner()  # training buffers start again from these weights (and see shared ones)
        self._weights = new
        for name, weight in self._shared.items():  # the models holding these see them too
            weight.assign(new[name])
            self._shared_seen[name] = weight.version
        self._weights_changed()

    @property
    def weight_names(self) -> list[str]:
        return list(self._param_names)

    def count_params(self) -> int:
        return int(sum(w.size for w in self._weights.values()))

    # ---------------- inference ----------------
    def _weight_inputs(self, session):
        return [i.name for i in session.get_inputs() if i.name in self._weights]

    def _inference_session(self):
        """The session with the weights folded in; None while the weights keep changing between
        predicts (then the weights-as-inputs graph runs instead of rebuilding a session each time)."""
        if self._session is None and not self._onnx_weights_current and "predict_weights" in self._training_onnx:
            # The first predict after a change uses the weights as inputs; a second one with the
            # same weights rebuilds the faster folded session.
            if self._generation != self._predicted_generation:
                self._predicted_generation = self._generation
                return None
        if self._session is None:
            self._session = self._new_session(self._inference_graph(), "inference")
        return self._session

    def _inference_graph(self) -> bytes:
        """The inference graph with the current weights folded in."""
        # The weights go into the model bytes rather than SessionOptions.add_initializer:
        # onnxruntime folds weight-only subgraphs (layout transposes, folded BatchNorm)
        # from the file's own initializers, before any override would apply.
        graph = self._onnx if self._onnx_weights_current else self.onnx_model().SerializeToString()
        if self.device == "cpu":  # (in the forms onnxruntime blocks: backend/nchwc.py)
            from ..backend.nchwc import global_pools, one_row_maps
            graph = global_pools(one_row_maps(graph))
        return graph

    def _prepare(self, x, where: str) -> dict[str, np.ndarray]:
        """Check and convert inputs: one array for one input, else a dict by name or a list in order."""
        if len(self.inputs) == 1 and type(x) is np.ndarray and x.flags.c_contiguous:
            # The common case, checked in a few comparisons (batch-1 latency is a few microseconds).
            spec = self.inputs[0]
            if x.dtype == DTYPES[spec.dtype] and x.shape[1:] == spec.shape and x.ndim == len(spec.shape) + 1:
                if self._id_ranges:
                    check_ids({spec.name: x}, self._id_ranges, where)
                return {spec.name: x}
        xs, _, _ = check_arrays(as_arrays(x, self.inputs, where, "input"), None, self.inputs, [], where)
        check_ids(xs, self._id_ranges, where)
        if self._named_input_dims:
            check_lengths(xs, self.manifest, where, self._lengths_checked)
        return xs

    def predict(self, x, batch_size: int | None = 32, verbose: int = 0, steps: int | None = None, callbacks=None):
        """Outputs for ``x`` (an array, a dict by input name, or an iterable of such batches: each
        predicted, the outputs joined), computed ``batch_size`` rows at a time (None: all at once;
        always all at once where an output has no batch axis, which batches cannot give). Where each row's outputs depend on that row alone, it may run
        fewer rows at a time, for speed, with the same results. ``steps``: the first that many
        batches only, as Keras. ``callbacks`` see on_predict_begin, each batch's begin and end
        (``logs["outputs"]``) and on_predict_end, as Keras's. ``verbose``: 1 (or "auto") prints
        Keras's progress bar over the batches, 2 one line; 0, the default here (Keras's is
        "auto"), prints nothing, as a predict of one sample takes some 15 us. Returns an array
        for a one-output model, else a list in the model's output order."""
        if callbacks is not None or verbose != 0 or (type(x) is not np.ndarray and _batches_of_inputs(x)):
            return self._predict_in_batches(x, batch_size, steps, callbacks, verbose)
        with self._lock:  # (one_call_at_a_time, written out: a batch-1 predict takes some 15 us)
            if type(x) is np.ndarray and steps is None and self._predictor is not None:
                outs = self._repeated_small_predict(x, batch_size)
                if outs is not None:
                    return outs
            return self._predict(x, batch_size, steps)

    def _predict_in_batches(self, x, batch_size, steps, callbacks, verbose=0):
        """predict batch by batch, with the callbacks' hooks around each (Keras's batches:
        ``batch_size`` rows, or an iterable's own), each batch's run one call at a time, the
        callbacks and the iterable's code outside the lock (they may use the model too)."""
        from ..callbacks import CallbackList
        verbose = 1 if verbose == "auto" else verbose
        if verbose not in (0, 1, 2):
            raise ValueError(f"predict: verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
        steps = count(steps, "predict", "steps", 0, none=True) or None  # (0: all, as Keras)
        total = None  # (the batches, where known: the progress bar's target and params["steps"])
        if _batches_of_inputs(x):
            if not self._batched_outputs:
                raise ValueError("predict: an output without the batch axis is computed over all the rows at "
                                 "once; give the arrays, not batches of them")
            batches = (b[0] if isinstance(b, tuple) else b for b in itertools.islice(x, steps))
        else:
            feeds = self._prepare(x, "predict")
            n = next(iter(feeds.values())).shape[0]
            step = count(batch_size, "predict", "batch_size", none=True) or max(n, 1)
            if not self._batched_outputs:  # (computed over all the rows: one batch)
                step = max(n, 1)
            batches = itertools.islice(({k: v[i:i + step] for k, v in feeds.items()} for i in range(0, n, step)),
                                       steps)
            total = min(-(-n // step), steps or n) if n else 0
        cbs = CallbackList(callbacks, add_progbar=verbose != 0, model=self, verbose=verbose, epochs=1, steps=total)
        cbs.on_predict_begin()
        outs = []
        for i, batch in enumerate(batches):
            cbs.on_predict_batch_begin(i)
            with self._lock:
                outs.append(self._predict(batch, None, None))
            cbs.on_predict_batch_end(i, {"outputs": outs[-1]})
        cbs.on_predict_end()
        if not outs:
            raise ValueError("predict: no batches")
        if len(outs) == 1:
            return outs[0]
        if not isinstance(outs[0], list):
            return np.concatenate(outs)
        return [np.concatenate(parts) for parts in zip(*outs)]

    def _predict(self, x, batch_size, steps):
        batch_size = count(batch_size, "predict", "batch_size", none=True)
        steps = count(steps, "predict", "steps", 0, none=True) or None  # (0: all, as Keras)
        feeds = self._prepare(x, "predict")
        if steps is not None and batch_size is not None:
            feeds = {k: v[:steps * batch_size] for k, v in feeds.items()}
        self._pull_shared()
        session, graph = self._inference_session(), self._inference_graph
        fixed = None
        if session is None:  # weights changed since the last predict: bind them as inputs
            session, graph = self._session_for("predict_weights"), lambda: self._graph_for("predict_weights")
            self._sync_state()
            fixed = {n: self._weights[n] for n in self._weight_inputs(session)}
        n = next(iter(feeds.values())).shape[0]
        step = n if not batch_size or batch_size >= n else int(batch_size)
        if self._rows_independent:
            step = min(step, self._predict_rows)
        if n == 0:
            if self._states is not None:  # (stateful layers: batches of exactly their batch size)
                self._states.check(0, "predict", next(iter(feeds.values())).shape)
            # the shapes of one row of zeros, cut to none: onnxruntime's recurrent kernels abort
            # the process on zero rows
            if not self._batched_outputs:
                raise ValueError("predict: no rows, and an output without the batch axis reduces over the rows")
            one = {k: np.zeros((1,) + a.shape[1:], a.dtype) for k, a in feeds.items()}
            outs = [o[:0] for o in session.run(None, {**one, **(fixed or {})})]
        elif not self._batched_outputs:
            if self._states is not None:  # (stateful layers: their states in, the next ones out)
                self._states.check(n, "predict", next(iter(feeds.values())).shape)
                outs = self._states.run(session, {**feeds, **(fixed or {})})
            else:
                outs = session.run(None, {**feeds, **(fixed or {})})
        else:
            if self._predictor is None or self._predictor.session is not session:
                self._predictor = self._new_predictor(session)
            if self._rows_independent and n >= 2 * step and self._predict_parts(n, step) > 1:
                outs = self._predict_in_parts(session, graph, feeds, n, step, fixed)
            elif self._stops_spinning and devices.TURNS.follows_itself(session):
                outs = self._spinning_predictor(session, graph).run(feeds, n, step, fixed)
            else:
                outs = self._predictor.run(feeds, n, step, fixed)
        self._ran(session)
        return outs[0] if len(outs) == 1 else outs

    def _repeated_small_predict(self, x, batch_size):
        """The outputs of a small predict of one array shaped as the last small predict's input,
        run as predict's general path would run it (Predictor._run_small on the folded session)
        without repeating the checks that input passed then: some 4 us of a 20 us batch-1
        predict of the MNIST MLP. None where any condition fails: the general path runs. (Written
        flat, each value read once: every 0.1 us here is 1% of a batch-1 predict.)"""
        session, turns = self._session, devices.TURNS
        if self._stops_spinning:  # (predicts back to back: the spinning copy, as the general path)
            copied = self._copies.get("spinning")
            if copied is None or copied[0] is not session or not turns.follows_itself(session):
                return None
            predictor = copied[1]
        else:
            predictor = self._predictor
            if predictor.session is not session:
                return None
        small = predictor._small  # (read once: another thread's predict may replace it)
        if small is None:
            return None
        run, _, outputs, buffer = small
        if (buffer is None or x.shape != buffer.shape or x.dtype != buffer.dtype
                or not (batch_size is None or (type(batch_size) is int and batch_size >= x.shape[0]))
                or self._shared or self._id_ranges or self._states is not None):
            return None
        np.copyto(buffer, x)
        run()
        outs = outputs[0].copy() if len(outputs) == 1 else [o.copy() for o in outputs]
        turns.ran(session)  # (self._ran, written out)
        if turns.seen and not self._stops_spinning:
            self._follow_turns()
        return outs

    def predict_on_batch(self, x):
        """The outputs for ``x`` in one run (Keras's predict_on_batch)."""
        return self.predict(x, batch_size=None)

    def __call__(self, x):  # (Keras's model(x), outside any graph: the outputs as arrays)
        return self.predict_on_batch(x)

    def _new_predictor(self, session):
        from .binding import Predictor
        float_outputs = all(o["dtype"] == "float32" for o in self.manifest["outputs"])
        return Predictor(session, self._providers, [o.shape for o in self.outputs] if float_outputs else None,
                         self._states)

    def _spinning_predictor(self, session, graph):
        """Predicts back to back, once this process's sessions take turns and so stop their pools
        after every run (runtime/devices.py), run on a copy of ``session`` (whose graph ``graph()``
        gives) that keeps its pool spinning: a loop of batch-1 predicts of the MNIST MLP took 23
        us a call that way against 43 us with the pool stopping (benchmarks/sessions.py). The
        first predict of a run of them, and every predict that follows another session's run,
        takes the stopping session. The copy is a second session (of the folded weights too, for
        the folded graph), dropped with the session it copies."""
        copied = self._copies.get("spinning")
        if copied is None or copied[0] is not session:
            copied = self._copies["spinning"] = (
                session, self._new_predictor(self._new_session(graph(), "inference", stop_spinning=False)))
        return copied[1]

    def _predict_parts(self, n: int, step: int) -> int:
        """Into how many parts a predict of ``n`` rows splits, one per core, each part's rows run
        by a one-thread session of its own (1: not split): two on a CPU of two or more cores, for
        a batch whose activations fill at least two of predict's cache-sized runs."""
        activations = self.manifest.get("activation_bytes_per_sample") or 0
        if self.device != "cpu" or n < 2 * step or activations * n < 2 * PREDICT_CACHE_BYTES or devices.cpu_cores() < 2:
            return 1
        return 2

    def _predict_in_parts(self, session, graph, feeds, n, step, fixed):
        """predict's rows in two halves at once (in runs of at most ``step`` rows), each on a core
        of its own with a one-thread copy of ``session``, whose graph ``graph()`` gives. Measured
        on the MNIST CNN at 1,024 rows: 38-41k samples/s in both states of this 2-core machine,
        where the two-thread session gave 42k with its cores close together and 26-27k with them
        far apart (backend/shards.py explains the two states)."""
        predictors, rows = self._parts_predictors(session, graph, feeds, n, fixed)
        return self._run_halves(predictors, feeds, n, min(step, rows), fixed)

    @staticmethod
    def _run_halves(predictors, feeds, n, step, fixed):
        """``feeds``' ``n`` rows run by two predictors at once, the second on core_pool's thread,
        each half in as many runs as ``step`` rows a run would take, of even sizes (so that both
        take the same time: halves of whole runs of 28 rows, 532 and 492 of 1,024, were 1.6%
        slower); their outputs joined."""
        from .binding import core_pool
        half = -(-n // 2)
        step = even_runs(half, step)
        rest = {name: array[half:] for name, array in feeds.items()}
        second = core_pool().submit(predictors[1].run, rest, n - half, step, fixed)
        first = predictors[0].run({name: array[:half] for name, array in feeds.items()}, half, step, fixed)
        return [np.concatenate([a, b]) for a, b in zip(first, second.result())]

    def _parts_predictors(self, session, graph, feeds, n, fixed):
        """The two one-thread Predictors of predict's parts and the rows of their runs, made once
        per session copied. Each part's run takes a quarter of PREDICT_CACHE_BYTES of activations
        (its largest value), about half a core's 2 MB L2, so that a layer's input and output stay in
        it (at 1,024 rows: 39k samples/s in runs of 28 rows against 37k in runs of 56 on an earlier
        machine; on the AVX-512 one, 72.2k in runs of 16 against 69.5-70.4k in runs of 28, 71.4-71.9k
        in runs of 12-14, for the MNIST CNN; tiny_resnet 17.5k in runs of 20 against 17.0k in runs of
        40). Where a convolution can run in
        Winograd's form (backend/winograd.py), or a recurrence's fused op at any batch
        (ops/recurrent.py, fused_at_any_batch), each form is made, timed on ``feeds``' first rows,
        and the fastest kept (and remembered: after new weights only that form is made): Winograd's
        gave 1.11x the MNIST CNN's predict on one machine and 0.83x on another, the fused GRU 1.2x
        on one and 0.81x on another (docs/performance.md)."""
        copied = self._copies.get("parts")
        if copied is not None and copied[0] is session:
            return copied[1]
        threads = max(1, devices.cpu_cores() // 2)
        forms = self._parts_forms(graph(), self.manifest.get("activation_bytes_per_sample") or 0, self._parts_form)
        choices = [([self._new_predictor(self._new_session(data, "inference", threads)) for _ in range(2)], run_rows)
                   for _, data, run_rows in forms]
        chosen = choices[0]
        if len(choices) > 1:  # (one form: nothing to learn, as for weights bound as inputs, which Winograd's needs folded)
            chosen = self._faster_parts(choices, feeds, n, fixed)
            self._parts_form = forms[choices.index(chosen)][0]
        self._copies["parts"] = (session, chosen)
        return chosen

    @staticmethod
    def _parts_forms(plain: bytes, activation_bytes: int, only: str | None = None) -> list:
        """[(name, graph, rows a run)] of predict's parts: the plain graph, then where each applies
        Winograd's form ("winograd") and the recurrences' fused op at any batch ("fused"); with
        ``only`` (the form timed faster before) that form alone, without the other rewrites (each
        costs up to some 30 ms)."""
        from ..backend.winograd import use_winograd
        from ..ops.recurrent import fused_at_any_batch
        rows = cache_rows(activation_bytes, share=4)
        forms = [("plain", plain, rows)]
        if only in (None, "winograd"):
            rewritten, tile_bytes = use_winograd(plain)
            if tile_bytes:  # (its tiles add to the activations: fewer rows a run)
                forms.append(("winograd", rewritten, cache_rows(activation_bytes + tile_bytes, share=4)))
        if only in (None, "fused"):
            fused = fused_at_any_batch(plain, rows)
            if fused is not plain:
                forms.append(("fused", fused, rows))
        return forms if only is None else forms[-1:]

    def _faster_parts(self, choices, feeds, n, fixed, rounds=3):
        """Of [(predictors, rows)], the plain graph's first, the one whose parts ran the first rows
        of ``feeds`` (the same rows for each: two runs a part of the largest run) in the least
        time, each in its own runs, the best of ``rounds`` rounds (the forms' order reversed every
        other round) after one to warm up; another form only where it was 3% faster than the
        plain graph (a form's timing moves a few percent from round to round)."""
        import time
        times = [[] for _ in choices]
        m = min(n, 4 * max(rows for _, rows in choices))
        part = {name: array[:m] for name, array in feeds.items()}
        order = list(range(len(choices)))
        for r in range(rounds + 1):
            for i in order if r % 2 else order[::-1]:
                predictors, rows = choices[i]
                start = time.perf_counter()
                self._run_halves(predictors, part, m, rows, fixed)
                if r:
                    times[i].append(time.perf_counter() - start)
        best = [min(t) for t in times]
        fastest = min(order[1:], key=best.__getitem__)
        return choices[fastest] if best[fastest] < 0.97 * best[0] else choices[0]

    # ---------------- description and export ----------------
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False, show_trainable=False,
                layer_range=None) -> None:
        """Print the layer table, with Keras's arguments: ``print_fn`` takes the text instead of
        ``print`` (nothing is returned, so a REPL does not show the table twice); the others as
        summary.format_summary says (``expand_nested`` lists the layers inside blocks and called
        models, ``show_trainable`` adds a Trainable column, ``layer_range`` picks rows)."""
        (print_fn or print)(format_summary(self.manifest, line_length, positions, expand_nested, show_trainable,
                                           layer_range))

    @one_call_at_a_time
    def onnx_model(self):
        """The inference graph as an onnx.ModelProto holding the current weights."""
        import onnx
        from onnx import numpy_helper
        self._sync_state()
        proto = onnx.load_from_string(self._onnx)
        by_name = {t.name: i for i, t in enumerate(proto.graph.initializer)}
        for name, w in self._weights.items():
            proto.graph.initializer[by_name[name]].CopyFrom(numpy_helper.from_array(w, name))
        return proto

    def save_onnx(self, path) -> Path:
        """Write a standalone .onnx (the inference graph with the current weights), atomically."""
        path = _file_path(path, "save_onnx", ".onnx")
        with _naming(path):
            _write_file(path, self.onnx_model().SerializeToString())
        return path

    def weights_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{f"{i:04d}": w for i, w in enumerate(self.get_weights())})
        return buf.getvalue()

    def save_weights(self, filepath, overwrite: bool = True) -> Path:
        """Write the weights (Keras order, 0000, 0001, ...) and their names (``names``) to an .npz
        file, or to a Keras 3 weights file for a name ending .weights.h5 (keras_model.load_weights
        reads it into the same model built in Keras; needs h5py), atomically. ``overwrite=False``:
        a FileExistsError where the file exists (Keras asks at a prompt)."""
        path = Path(filepath)
        _keep_unless_overwrite(path, overwrite, "save_weights")
        if path.name.lower().endswith(KERAS_WEIGHTS) and not path.is_dir():
            from .keras_files import write_weights
            data = write_weights(self.manifest, dict(zip(self._param_names, self.get_weights())))
        else:
            path = _file_path(path, "save_weights", ".npz")
            if not path.name.lower().endswith(WEIGHTS_FILES):  # (as Keras, which asks for its one suffix)
                raise ValueError(f"save_weights: {path} must end in .npz (numpy's arrays) or .weights.h5 "
                                 f"(Keras 3's weights file)")
            buf = io.BytesIO()
            np.savez(buf, **{f"{i:04d}": w for i, w in enumerate(self.get_weights())}, names=np.array(self._param_names))
            data = buf.getvalue()
        with _naming(path):
            _write_file(path, data)
        return path

    @one_call_at_a_time
    def load_weights(self, filepath, skip_mismatch: bool = False) -> None:
        """Read weights written by save_weights, or the weights of a build or checkpoint folder, by
        their names (so a file stays right where another kcompile orders the weights otherwise);
        or a file without names (np.savez(path, *weights), or an older save_weights) in order; or
        Keras 3's weights (keras_model.save_weights' .weights.h5, or a .keras archive's; needs
        h5py: keras_files.py), matched to this model's layers (the optimizer's are not read).
        What does not fit (a weight missing, of another shape, or one this model lacks) is a
        ValueError; with ``skip_mismatch`` (Keras's), a warning, and the weights that fit are
        read (of a Keras file, whole layers), the others kept."""
        from .checkpoint import find_manifest, read_json, read_npz
        path = Path(filepath)
        names = None
        if path.is_dir():
            manifest = read_json(find_manifest(path))
            path = find_manifest(path).parent / "weights.npz"
            names = [p["name"] for p in manifest.get("parameters", [])]
        elif path.name.lower().endswith(KERAS_SUFFIXES):
            from .keras_files import read_weights
            self._set_some_weights(read_weights(path, self.manifest, skip_mismatch))
            return
        arrays = read_npz(path)  # (np.savez's arr_0, arr_1, ..., arr_10 in their order, as save_weights' 0000, ...)
        if "names" in arrays:
            names = [str(n) for n in arrays.pop("names")]
        ordered = [arrays[k] for k in sorted(arrays, key=lambda k: (len(k), k))]
        surplus = ""
        if names is None:
            if not skip_mismatch:
                self.set_weights(ordered)
                return
            if len(ordered) > len(self._param_names):
                surplus = f"; it has {len(ordered)} arrays, this model {len(self._param_names)} weights"
            names = self._param_names[:len(ordered)]  # (in order: as far as both go)
            ordered = ordered[:len(names)]
        names = _renamed_since(names, self._param_names)
        shapes = {p["name"]: tuple(p["shape"]) for p in self.manifest["parameters"]}
        by_name = dict(zip(names, ordered))
        missing, extra = set(self._param_names) - set(names), set(names) - set(self._param_names)
        wrong = [f"{n} has shape {shapes[n]} here, {tuple(np.shape(a))} in the file" for n, a in by_name.items()
                 if n in shapes and tuple(np.shape(a)) != shapes[n]]
        if (missing or extra) and [_unnumbered(n) for n in names] == [_unnumbered(n) for n in self._param_names] \
                and all(tuple(np.shape(a)) == shapes[n] for a, n in zip(ordered, self._param_names)):
            # (the same layers in the same order, numbered otherwise: dense for dense_1, as a wrapped
            # layer's count of names did before stop 25; read in order, and said)
            warnings.warn(f"load_weights: {path} numbers its layers otherwise ({', '.join(sorted(extra)[:3])}, ...); "
                          f"its weights have this model's layers and shapes in order, and are read in that order",
                          stacklevel=3)
            self.set_weights(ordered)
            return
        if missing or extra or len(names) != len(ordered) or wrong or surplus:
            message = ((f"; it lacks {', '.join(sorted(missing)[:5])}" if missing else "") + surplus
                       + (f"; it has {', '.join(sorted(extra)[:5])}, which this model does not" if extra else "")
                       + (f"; {'; '.join(wrong[:5])}" if wrong else ""))
            if not skip_mismatch:
                raise ValueError(f"load_weights: {path} holds weights of another model" + message)
            warnings.warn(f"load_weights: skipped what does not fit in {path} (skip_mismatch=True){message}",
                          stacklevel=3)
        self._set_some_weights({n: a for n, a in by_name.items() if n in shapes and tuple(np.shape(a)) == shapes[n]})

    def _set_some_weights(self, by_name: dict) -> None:
        """set_weights with the weights ``by_name`` gives, the others as they are."""
        self._sync_state()
        self.set_weights([by_name.get(n, self._weights[n]) for n in self._param_names])

    @one_call_at_a_time
    def save(self, filepath, overwrite: bool = True, zipped=None) -> Path:
        """A checkpoint folder: the build files with the current weights, plus the optimizer's
        slots, step and epoch, so that ``kcompile.load(filepath)`` resumes training exactly.
        Written to a temporary folder and renamed: a crash never leaves a half-written checkpoint
        in place of the previous one (one between the previous folder's rename aside and the new
        one's into place leaves the previous as ``.NAME.old``, which ``kcompile.load`` reads).
        ``overwrite=False``: a FileExistsError where the folder exists (Keras asks at a prompt);
        ``zipped``: a folder is never zipped (True is a ValueError)."""
        from ..driver import write_folder_atomic
        path = Path(filepath)
        refuse_keras_folder_name(path, "save")
        if zipped:
            raise ValueError("save: kcompile writes a checkpoint folder, not an archive; zipped=True is not "
                             "available (save_weights writes a Keras .weights.h5)")
        _keep_unless_overwrite(path, overwrite, "save")
        self._sync_state()
        manifest = dict(self.manifest)
        files = dict(manifest["files"])
        files.update({"state": "state.json", "optimizer": "optimizer.npz"})
        manifest["files"] = files
        state = {"iterations": self._iterations, "epoch": self._epoch, "seed": self.seed,
                 "learning_rate_override": self._lr_override, "slots": list(self._slots)}
        buf = io.BytesIO()
        np.savez(buf, **{f"{i:04d}": v for i, v in enumerate(self._slots.values())})
        contents = {files["inference"]: self.onnx_model().SerializeToString(),
                    files["weights"]: self.weights_npz(),
                    "state.json": (json.dumps(state, indent=2) + "\n").encode(),
                    "optimizer.npz": buf.getvalue()}
        from ..driver import PACKAGE_INIT, TRAINING_FILES
        for key in TRAINING_FILES:
            if key in files:
                contents[files[key]] = self._training_onnx[key]
        if self._source is not None:  # (the build folder's files too: it still imports as a package)
            contents[files.get("source", "source.kdl")] = self._source.encode()
        else:
            files.pop("source", None)
        contents["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
        contents["__init__.py"] = PACKAGE_INIT.format(name=self.name).encode()
        with _naming(path):
            return write_folder_atomic(path, contents)

    @property
    def metrics_names(self) -> list[str]:
        """The names of what evaluate returns, in its order (Keras's): the loss, then each metric."""
        spec = self.manifest.get("training")
        return ["loss"] + [m["name"] for m in spec["metrics"]] if spec else []

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.inputs)
        return f"<kcompile.Model {self.name}({ins}) {self.count_params():,} params on {self.device}>"


KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
KERAS_WEIGHTS = ".weights.h5"  # (the Keras file save_weights writes, as keras_model.save_weights)
WEIGHTS_FILES = (".npz", KERAS_WEIGHTS)  # the names save_weights takes
# Weight names earlier kcompile versions wrote, by the name that replaced them (Keras 3's).
RENAMED = {"depthwise_kernel": "kernel"}  # (DepthwiseConv2D's kernel, renamed in 0.2.0's successor)


def _unnumbered(name: str) -> str:
    """A weight's name without its layers' numbers (lstm_1/kernel -> lstm/kernel)."""
    return re.sub(r"_\d+(?=/)", "", name)


def _renamed_since(names: list, current: list) -> list:
    """A weights file's names, each old one the model lacks taken for its new name."""
    have = set(current)
    out = []
    for name in names:
        layer, _, short = name.rpartition("/")
        new = f"{layer}/{RENAMED[short]}" if short in RENAMED else None
        out.append(new if name not in have and new in have and new not in names else name)
    return out


def _refuse_keras_file(path: Path, where: str) -> None:
    """A Keras file name that ``where`` does not write (save_weights writes .weights.h5 only: a
    .keras archive holds Keras's own config too, and a plain .h5 is Keras 2's full model): say
    so, rather than write another format under Keras's name."""
    if path.name.lower().endswith(KERAS_SUFFIXES):
        keras = (" or Keras 3's weights as NAME.weights.h5 (keras_model.load_weights reads it; a .keras "
                 "archive also holds Keras's model config, which kcompile does not write)") if where == "save_weights" else ""
        raise ValueError(f"{where}: {path} names a Keras file ({path.suffix}); kcompile writes weights as "
                         f".npz (give a name such as model.weights.npz){keras}")


def _batches_of_inputs(x) -> bool:
    """Whether predict's ``x`` is an iterable of batches (a generator, a dataset: each an input
    array, a dict of them, or an (x, ...) tuple whose first item is taken, as Keras), not arrays."""
    if isinstance(x, (np.ndarray, dict, list, tuple, str, bytes)) or hasattr(x, "__array__"):
        return False
    try:
        iter(x)
    except TypeError:
        return False
    return True


def refuse_keras_folder_name(path, where: str) -> None:
    """save writes a checkpoint folder: not under a Keras file's name, which Keras would then
    fail to open as its archive."""
    path = Path(path)
    if path.name.lower().endswith(KERAS_SUFFIXES):
        weights = "save_weights_only=True" if where == "ModelCheckpoint" else "save_weights"
        raise ValueError(f"{where}: {path} names a Keras file ({path.suffix}); kcompile saves a checkpoint "
                         f"folder (give a folder name such as {path.with_suffix('')}); for Keras, {weights} "
                         f"to NAME.weights.h5 writes weights that keras_model.load_weights reads")


def _keep_unless_overwrite(path: Path, overwrite, where: str) -> None:
    """Keras's ``overwrite=False``: an existing file or folder is kept (an error, where Keras asks)."""
    if not isinstance(overwrite, (bool, np.bool_)):
        raise ValueError(f"{where}: overwrite must be True or False, got {overwrite!r}")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{where}: {path} exists, and overwrite=False keeps it")


def _file_path(path, where: str, suffix: str) -> Path:
    """The file ``where`` (save_onnx, save_weights) writes: not a folder, nor a Keras file name."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{where}: {path} is a folder; give a file name such as {path / ('model' + suffix)}")
    _refuse_keras_file(path, where)
    return path


def _write_file(path: Path, data: bytes) -> None:
    from ..driver import write_atomic
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


class _naming:
    """An OSError while writing ``path`` names ``path``, not the temporary file beside it."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, OSError) and error.errno is not None and error.filename != str(self.path) \
                and Path(str(error.filename)).name.startswith(f".{self.path.name}."):  # (the temporary file's)
            raise type(error)(error.errno, error.strerror, str(self.path)) from None
        return False
