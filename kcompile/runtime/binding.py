"""Zero-copy execution with onnxruntime's IOBinding.

Training keeps every weight and optimizer slot in buffers that onnxruntime reads
and writes in place: a step reads the state from one buffer and writes the new state
into the next, rotating through three (the state before the last step stays intact,
so a non-finite loss can go back to it). Batches are bound as views of the caller's
arrays. On the CPU the buffers are numpy arrays shared with onnxruntime; on CUDA they
are device OrtValues, copied to the host only when asked for.

A weight that several models hold (a model used inside another) is one
:class:`SharedWeight`: its buffers rotate on their own, and every model's runner binds
them directly, so a step of one model is the next step's input of the others, uncopied.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import wait

import numpy as np

from ..errors import ShapeMismatch
from ..ir.types import NEXT_STATE, STATE

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def _device(providers) -> tuple[str, int]:
    return ("cuda", 0) if providers[0] == "CUDAExecutionProvider" else ("cpu", 0)


def _ortvalue(ort, array, device, copy):
    """An OrtValue for ``array`` on ``device``: a numpy buffer shared with onnxruntime on the CPU
    (a copy of ``array``, or uninitialised), a device buffer on CUDA."""
    array = np.asarray(array, order="C")  # (not ascontiguousarray: it makes a 0-d weight 1-d)
    if device[0] == "cpu":
        return ort.OrtValue.ortvalue_from_numpy(array.copy() if copy else np.empty_like(array))
    if copy:
        return ort.OrtValue.ortvalue_from_numpy(array, *device)
    return ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, *device)


class SharedWeight:
    """One weight held by several models: three buffers (the current value, the one before
    it, the next to be written) and a version that counts changes, so a model knows when
    another one has changed it."""

    ROTATION = 3

    def __init__(self, value: np.ndarray, providers):
        import onnxruntime as ort
        self.device = _device(providers)
        self.values = [_ortvalue(ort, value, self.device, copy=True) for _ in range(self.ROTATION)]
        self.dtype = np.asarray(value).dtype
        self.index = 0
        self.version = 0

    def current(self):
        return self.values[self.index]

    def following(self):
        return self.values[(self.index + 1) % self.ROTATION]

    def advance(self, steps: int = 1):
        """The following buffer (written by a run) becomes current; -1 goes back one."""
        self.index = (self.index + steps) % self.ROTATION
        self.version += 1

    def numpy(self) -> np.ndarray:
        """The current value (a view of the buffer on the CPU: valid until the version changes)."""
        return self.current().numpy()

    def assign(self, value: np.ndarray):
        self.following().update_inplace(np.asarray(value, dtype=self.dtype, order="C"))
        self.advance()


class StateRunner:
    """Runs a graph whose outputs ``new:<name>`` are the next values of its inputs ``<name>``."""

    ROTATION = 3

    def __init__(self, session, state: dict[str, np.ndarray], providers, shared: dict | None = None,
                 flush=None, transposed=(), previous: dict | None = None):
        """``state``: every weight and slot by input name; ``shared``: name -> SharedWeight for
        the weights held with other models (bound from there, not copied); ``flush``: a context
        entered around each run (fpenv.FlushDenormals); ``transposed``: the 2-D state tensors
        the session reads and writes transposed (backend.layout), given and returned by the
        runner as they are outside it; ``previous``: the state before ``state``, as another
        runner's ``previous()`` gave it, for step_back to return to (a runner made again for the
        same training, not after new weights)."""
        import onnxruntime as ort
        self.ort = ort
        self.session = session
        self.device = _device(providers)
        inputs = [i.name for i in session.get_inputs()]
        outputs = {o.name: o for o in session.get_outputs()}
        self.state_names = [n for n in inputs if f"new:{n}" in outputs]
        self.fixed_names = [n for n in inputs if n in state and n not in self.state_names]
        self.data_names = [n for n in inputs if n not in state]
        self.result_names = [n for n in outputs if not n.startswith("new:")]
        shared = shared or {}
        self.transposed = set(transposed)
        state = {n: np.ascontiguousarray(v.T) if n in self.transposed else v for n, v in state.items()}
        self.shared_state = {n: shared[n] for n in self.state_names if n in shared}
        self.shared_fixed = {n: shared[n] for n in self.fixed_names if n in shared}
        # Three buffers per own state tensor; buffer 0 holds the current values.
        self.buffers = [{n: self._alloc(state[n], copy=(k == 0)) for n in self.state_names if n not in shared}
                        for k in range(self.ROTATION)]
        self.fixed = {n: self._alloc(state[n], copy=True) for n in self.fixed_names if n not in shared}
        self.results = {n: np.zeros([d if isinstance(d, int) else 1 for d in outputs[n].shape],
                                    dtype=_DTYPES[outputs[n].type]) for n in self.result_names}
        self.result_values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in self.results.items()}
        self.position = 0
        self.history = 0  # the runs step_back can undo: the buffers before them still hold their state
        if previous is not None:  # (in the buffer before the current one; names it lacks: the current value)
            before = self.buffers[self.ROTATION - 1]
            for n, value in before.items():
                if n in previous:
                    value.update_inplace(np.asarray(previous[n].T if n in self.transposed else previous[n], order="C"))
                else:
                    value.update_inplace(self.buffers[0][n].numpy())
            self.history = 1
        self.rebound = {}  # (bind_in_place on CUDA)
        self.bindings = [self._binding(k) for k in range(self.ROTATION)]
        self.flush = flush if flush is not None else contextlib.nullcontext()

    def _alloc(self, array, copy):
        return _ortvalue(self.ort, array, self.device, copy)

    def _binding(self, k):
        b = self.session.io_binding()
        current, following = self.buffers[k], self.buffers[(k + 1) % self.ROTATION]
        for n in current:
            b.bind_ortvalue_input(n, current[n])
            b.bind_ortvalue_output(f"new:{n}", following[n])
        for n, v in self.fixed.items():
            b.bind_ortvalue_input(n, v)
        for n, v in self.result_values.items():
            b.bind_ortvalue_output(n, v)
        return b

    def bind_in_place(self, arrays: dict[str, np.ndarray]) -> None:
        """Per-step inputs the caller changes in place (lr, step), no longer passed to run().
        On the CPU they are bound once, as OrtValues over the arrays' memory (binding an array
        costs a few microseconds a run); on CUDA binding copies to the device at once, so run()
        binds their current values each time."""
        arrays = {n: a for n, a in arrays.items() if n in self.data_names}
        self.data_names = [n for n in self.data_names if n not in arrays]
        if self.device[0] != "cpu":
            self.rebound = arrays
            return
        self.in_place = {n: self.ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}  # (keep them)
        for b in self.bindings:
            for n, v in self.in_place.items():
                b.bind_ortvalue_input(n, v)

    def run(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One run: ``data`` are the per-step inputs (batch, targets, noise; lr and step unless
        bound in place)."""
        b = self.bindings[self.position]
        for n in self.data_names:
            value = data[n]
            if isinstance(value, self.ort.OrtValue):  # (a value another session made)
                b.bind_ortvalue_input(n, value)
            else:
                b.bind_cpu_input(n, value)
        for n, a in self.rebound.items():
            b.bind_cpu_input(n, a)
        for n, w in self.shared_state.items():  # wherever the other models left them
            b.bind_ortvalue_input(n, w.current())
            b.bind_ortvalue_output(f"new:{n}", w.following())
        for n, w in self.shared_fixed.items():
            b.bind_ortvalue_input(n, w.current())
        with self.flush:
            self.session.run_with_iobinding(b)
        self.position = (self.position + 1) % self.ROTATION
        self.history = min(self.history + 1, self.ROTATION - 1)
        for w in self.shared_state.values():
            w.advance()
        return self.results

    def step_back(self):
        """Make the state before the last run current again (``history`` says how many runs back
        the buffers reach: a runner made after the last finite step has no record of it)."""
        if not self.history:
            raise RuntimeError("no earlier state to step back to")
        self.history -= 1
        self.position = (self.position - 1) % self.ROTATION
        for w in self.shared_state.values():
            w.advance(-1)

    def current(self) -> dict:
        """name -> the current value of each state tensor (numpy; a view of the buffer on the CPU,
        transposed back where it is held transposed)."""
        own = {n: v.numpy().T if n in self.transposed else v.numpy() for n, v in self.buffers[self.position].items()}
        return {n: own[n] if n in own else self.shared_state[n].numpy() for n in self.state_names}

    def previous(self) -> dict | None:
        """name -> a copy of this runner's own state before the last run (None where it keeps no
        earlier state): what a runner made again in its place starts ``previous`` from. Shared
        weights keep their earlier values in their own buffers."""
        if not self.history:
            return None
        before = self.buffers[(self.position - 1) % self.ROTATION]
        return {n: np.array(v.numpy().T if n in self.transposed else v.numpy(), order="C") for n, v in before.items()}


_POOL = None


def core_pool():
    """This process's threads that run parts of a batch beside the calling thread (training steps
    split by ShardedRunner, predicts split by Model.predict): one per other core."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        from .devices import cpu_cores
        _POOL = ThreadPoolExecutor(max_workers=max(1, cpu_cores() - 1), thread_name_prefix="kcompile-core")
    return _POOL


class ShardedRunner:
    """A training step as parts of the batch run at once, one per core, then the update
    (backend/shards.py); used as a StateRunner. The update's runner holds the weights and slots;
    each part reads the current weights from its buffers and writes its loss, metrics and
    gradients into arrays of its own, which the update reads in place. A step whose parts
    exchange sums (BatchNormalization's) runs phase by phase: every part runs a phase, then all
    run the next, which reads the sums every part sent into arrays bound once, and the values
    its own part made in earlier phases."""

    def __init__(self, phases: list, update: StateRunner, state: dict, split: set, metrics: list, flush=None):
        """``phases``: [phase][part] the sessions of the parts' graphs (one phase where nothing is
        exchanged); ``update``: the runner of the apply graph; ``state``: every weight by input
        name (the ones the update does not change are bound once); ``split``: the per-step
        inputs cut along their first axis (the batch, the targets, per-sample noise);
        ``metrics``: the manifest's metric specs. The parts after the first run on core_pool's
        threads."""
        import onnxruntime as ort
        self.phases, self.update = phases, update
        self.parts = phases[0]
        self.session = update.session
        self.shared_state = {}
        self.split = split
        # (means are weighted by the parts' sizes; counts and sums are added)
        self.weighted = {"loss"} | {out for m in metrics if m["kind"] == "mean" for out in m["outputs"].values()}
        self.flush = flush if flush is not None else contextlib.nullcontext()
        count = len(phases[0])
        inputs = [[i.name for i in ss[0].get_inputs()] for ss in phases]
        outputs = [{o.name: o for o in ss[0].get_outputs()} for ss in phases]
        made_in = {n: q for q, outs in enumerate(outputs) for n in outs}
        read_later = {n for ins in inputs for n in ins if n in made_in} | {i.name for i in update.session.get_inputs()}
        weights = {n for ins in inputs for n in ins if n in state}
        self.data_names = [[n for n in ins if n not in state and n != "share" and n not in made_in
                            and not n.startswith("xchg:")] for ins in inputs]
        own = [n for n in weights if n not in update.buffers[0]]
        fixed = {n: _ortvalue(ort, state[n], update.device, copy=True) for n in own}
        # The rows a part looked up in a table and their gradients (shards.split_step) are as
        # many as its ids: onnxruntime allocates them each run, and the update reads them so;
        # so do values of the batch's size that a later phase reads.
        self.rows = [n for n in outputs[-1] if n.startswith("rows:")]
        self.no_rows = {n: np.zeros([0] + [d if isinstance(d, int) else 1 for d in outputs[-1][n].shape[1:]],
                                    _DTYPES[outputs[-1][n].type]) for n in self.rows}
        sized = {n: o for outs in outputs for n, o in outs.items() if all(isinstance(d, int) for d in o.shape)
                 and n not in self.rows}
        self.carried = [[n for n in outs if n not in sized and n not in self.rows] for outs in outputs]
        self.outputs = [{n: np.zeros(o.shape, _DTYPES[o.type]) for n, o in sized.items()} for _ in range(count)]
        self.shares = [np.zeros((), np.float32) for _ in range(count)]
        self._keep = []  # (OrtValues over the arrays above, alive as long as the bindings)
        values = [{n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in self.outputs[k].items()} for k in range(count)]
        shares = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.shares]
        self._keep += [v for vs in values for v in vs.values()] + shares
        self.bindings = []  # [position][phase][part]
        for position in range(update.ROTATION):
            current = update.buffers[position]
            table = []
            for q, sessions in enumerate(phases):
                row = []
                for k, session in enumerate(sessions):
                    b = session.io_binding()
                    for n in inputs[q]:
                        if n in weights:
                            b.bind_ortvalue_input(n, current[n] if n in current else fixed[n])
                        elif n == "share":
                            b.bind_ortvalue_input(n, shares[k])
                        elif n.startswith("xchg:"):  # (what part j sent: xchg:<value>:<j>)
                            sent, j = n.rsplit(":", 1)
                            b.bind_ortvalue_input(n, values[int(j)][sent])
                        elif n in values[k]:
                            b.bind_ortvalue_input(n, values[k][n])
                    for n in outputs[q]:
                        if n in values[k]:
                            b.bind_ortvalue_output(n, values[k][n])
                    row.append(b)
                table.append(row)
            self.bindings.append(table)
        # (values read later that are carried across phases: read from the last run's outputs)
        self.carried_reads = [[n for n in ins if n in made_in and n not in sized] for ins in inputs]
        self._carried = [dict() for _ in range(count)]  # [part] {rows: (number, {value: OrtValue})}
        self._bound = {}  # (position, phase, part) -> the number of the carried buffers its binding holds
        self._made = 0
        update.bind_in_place({f"{n}:{k}": self.outputs[k][n] for k in range(count)
                              for n in self.outputs[k] if n.startswith("grad:")})
        # The values the update reads from the parts besides their gradients (the batch statistics
        # that BatchNormalization's moving ones take: every part has them alike): the first part's.
        stats = {n for n in self.outputs[0] if n in read_later and not n.startswith(("grad:", "xchg:"))
                 and n in {i.name for i in update.session.get_inputs()}}
        update.bind_in_place({n: self.outputs[0][n] for n in stats})
        self._pool = core_pool()
        self.results = {n: np.zeros_like(a) for n, a in self.outputs[0].items()
                        if not n.startswith(("grad:", "xchg:")) and n not in read_later}

    def bind_in_place(self, arrays):
        self.update.bind_in_place(arrays)

    def _run_part(self, q, k, rows):
        b = self.bindings[self.update.position][q][k]
        carried = self.carried[q]
        serial, buffers = self._carried_buffers(k, rows)
        bound = self._bound.get((self.update.position, q, k)) == serial  # (all bound: nothing to do)
        if not bound:
            # (bound anew for another row count: a bound output keeps the size of the run that made it)
            for n in carried:
                if n in buffers:
                    b.bind_ortvalue_output(n, buffers[n])
                else:
                    b.bind_output(n)
            for n in self.carried_reads[q]:
                b.bind_ortvalue_input(n, buffers[n])
            complete = all(n in buffers for n in carried)
            self._bound[(self.update.position, q, k)] = serial if complete else None
        last = q == len(self.phases) - 1
        if last:
            for n in self.rows:
                b.bind_output(n)
        with self.flush:
            self.phases[q][k].run_with_iobinding(b)
        if not bound and any(n not in buffers for n in carried):
            # Kept for the next runs of as many rows: onnxruntime's own outputs are new memory each
            # run, whose first touch costs more than the op. (A binding's outputs come in the
            # order they were first bound: the carried ones last, then the rows.)
            made = b.get_outputs()
            first = len(made) - len(carried) - (len(self.rows) if last else 0)
            assert first >= 0 and len(made) == len(self.phases[q][k].get_outputs())
            for i, n in enumerate(carried):
                buffers.setdefault(n, made[first + i])

    def _carried_buffers(self, k, rows) -> tuple[int, dict]:
        """(a number told to no other, part ``k``'s buffers of the values carried across phases)
        for runs of ``rows`` rows (those of the last two row counts kept: a batch's, and an
        epoch's last batch's)."""
        kept = self._carried[k]
        if rows not in kept:
            if len(kept) >= 2:
                kept.pop(next(iter(kept)))
            self._made += 1
            kept[rows] = (self._made, {})
        return kept[rows]

    def run(self, data: dict) -> dict:
        n = len(next(data[name] for names in self.data_names for name in names if name in self.split))
        count = len(self.parts)
        sizes = [n // count + (k < n % count) for k in range(count)]
        for q in range(len(self.phases)):
            start = 0
            for k, size in enumerate(sizes):
                b = self.bindings[self.update.position][q][k]
                for name in self.data_names[q]:
                    value = data[name]
                    b.bind_cpu_input(name, value[start:start + size] if name in self.split else value)
                start += size
        for k, size in enumerate(sizes):
            self.shares[k][...] = size / n
        busy = [k for k in range(count) if sizes[k]]
        for k in range(count):
            if not sizes[k]:  # (a batch smaller than the parts: an empty part adds nothing)
                for name, a in self.outputs[k].items():
                    a[...] = 0
        for q in range(len(self.phases)):
            waiting = [self._pool.submit(self._run_part, q, k, sizes[k]) for k in busy[1:]]
            try:
                self._run_part(q, busy[0], sizes[busy[0]])
            finally:  # (no part left running into the next step's buffers)
                wait(waiting)
            for w in waiting:
                w.result()
        self.update.run(self._rows(sizes))
        return self._combined(sizes, n)

    def _rows(self, sizes) -> dict:
        """The update's inputs of the rows each part looked up (none where a part had no samples)."""
        out = {}
        for k, size in enumerate(sizes):
            if not self.rows:
                break
            # (a binding's outputs come in the order they were first bound: the rows last)
            made = self.bindings[self.update.position][-1][k].get_outputs()[-len(self.rows):] if size else None
            for i, n in enumerate(self.rows):
                out[f"{n}:{k}"] = made[i] if size else self.no_rows[n]
        return out

    def _combined(self, sizes, n):
        """The batch's loss and metric statistics from the parts'."""
        for name, total in self.results.items():
            if name in self.weighted:
                total[...] = sum(self.outputs[k][name] * (size / n) for k, size in enumerate(sizes) if size)
            else:
                total[...] = sum(self.outputs[k][name] for k, size in enumerate(sizes) if size)
        return self.results

    def step_back(self):
        self.update.step_back()

    @property
    def history(self):
        return self.update.history

    def current(self) -> dict:
        return self.update.current()

    def previous(self) -> dict | None:
        return self.update.previous()


def _direct_run(session, binding):
    """A call running ``binding``: onnxruntime's own C++ method where this version has it (its
    Python wrapper adds about a microsecond, a tenth of a batch-1 predict), else the wrapper."""
    inner, bound = getattr(session, "_sess", None), getattr(binding, "_iobinding", None)
    if inner is not None and bound is not None and hasattr(inner, "run_with_iobinding"):
        return lambda: inner.run_with_iobinding(bound, None)
    return lambda: session.run_with_iobinding(binding)


class RecurrentStates:
    """The states of a model's stateful recurrent layers (Keras's ``stateful=True``), one [batch,
    units] array each by name (``lstm/h``): every run of the model's graphs (a predict batch, an
    evaluation batch, a training step) takes them as inputs ``state:<name>`` and gives the next
    batch's as ``next_state:<name>``, so row i of a batch continues row i of the one before, in
    training, evaluation and predict alike, until reset. They are not weights (no gradient
    reaches them: the state a step starts from is a constant of that step), and are not saved."""

    def __init__(self, specs: list, model: str):
        self.specs = {e["name"]: e for e in specs}
        self.model = model
        self.batch = specs[0]["shape"][0]
        self.values = {}
        self.reset()

    def reset(self, prefix: str = "") -> list[str]:
        """Zero the states under ``prefix`` (a layer's name; "": all). Returns their names."""
        names = [n for n in self.specs if n.startswith(prefix)]
        for n in names:
            e = self.specs[n]
            self.values[n] = np.zeros(e["shape"], e["dtype"])
        return names

    def layers(self) -> str:
        return ", ".join(sorted({n.rsplit("/", 1)[0] for n in self.specs}))

    def check(self, rows: int, where: str, shape=None) -> None:
        """A batch of ``rows`` rows (``shape``: one input's, for the message) must be the batch size."""
        if rows != self.batch:
            got = f"shape {tuple(shape)}" if shape is not None else f"{rows} row{'s' * (rows != 1)}"
            raise ShapeMismatch(f"{where}: model {self.model} has stateful recurrent layers ({self.layers()}) that "
                                f"keep states for batches of exactly {self.batch} rows (its input's batch_size); "
                                f"got a batch of {got} (give batch_size={self.batch} and a number of rows that "
                                f"is a multiple of {self.batch})")

    def feeds(self) -> dict:
        return {STATE + n: v for n, v in self.values.items()}

    def update(self, results: dict) -> None:
        """Keep a run's final states (copies: the results' buffers are reused)."""
        for n in self.values:
            self.values[n] = np.array(results[NEXT_STATE + n], order="C")

    def check_batches(self, n: int, step: int, where: str, row_shape=None) -> None:
        """``n`` rows run ``step`` at a time must make batches of exactly the batch size
        (``row_shape``: one row's, for the message)."""
        for rows in [min(step, n)] + ([n % step] if n % step else []):
            self.check(rows, where, None if row_shape is None else (rows,) + tuple(row_shape))

    def run(self, session, feeds: dict, names=None) -> list:
        """One run of ``session`` from the current states (``feeds``: its other inputs), keeping
        the states it ends with; its outputs in order, less the states' (``names``: the
        session's output names, where the caller keeps them)."""
        names = names or [o.name for o in session.get_outputs()]
        results = dict(zip(names, session.run(None, {**feeds, **self.feeds()})))
        self.update(results)
        return [results[o] for o in names if not o.startswith(NEXT_STATE)]


class Predictor:
    """Inference with outputs written straight into slices of the result arrays (CPU), so a
    batch costs one bound run and no output copies."""

    # Up to this many output numbers, a one-batch call runs on buffers bound once and returns
    # copies: copying a few floats is cheaper than wrapping fresh arrays for onnxruntime.
    SMALL = 4096

    def __init__(self, session, providers, output_dims=None, states=None):
        import onnxruntime as ort
        self.ort = ort
        self.session = session
        self.binding = session.io_binding()
        self.outputs = [o.name for o in session.get_outputs()]
        self.states = states  # (a stateful model's RecurrentStates: carried batch to batch)
        self.cpu = _device(providers)[0] == "cpu"
        # Non-batch dimensions of each output when all are static: results can be preallocated.
        self.output_dims = output_dims if output_dims and all(
            d is not None and all(isinstance(i, int) for i in d) for d in output_dims) else None
        self._row_size = sum(int(np.prod(d)) for d in self.output_dims) if self.output_dims else self.SMALL + 1
        # (run, input buffers, output buffers, the input buffer where there is one) of the last
        # small call; replaced whole, so that a caller that read it once runs one call's binding
        # (two threads predicting at once through one Predictor share its buffers, as before)
        self._small = None

    def _run_stateful(self, feeds, n, step, fixed):
        """Batches of exactly the states' batch size, one after another, each starting from the
        states the one before left (Keras's stateful predict)."""
        self.states.check_batches(n, step, "predict", next(iter(feeds.values())).shape[1:])
        chunks = [self.states.run(self.session, {**{name: array[start:start + step] for name, array in feeds.items()},
                                                 **(fixed or {})}, self.outputs)
                  for start in range(0, n, step)]
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def _run_small(self, feeds: dict, n: int) -> list[np.ndarray]:
        small = self._small
        if small is None or any(small[1][k].shape != a.shape or small[1][k].dtype != a.dtype
                                for k, a in feeds.items()):
            b = self.session.io_binding()
            inputs = {name: np.empty_like(a) for name, a in feeds.items()}
            outputs = [np.empty((n,) + tuple(d), np.float32) for d in self.output_dims]
            for name, buf in inputs.items():
                b.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(buf))
            for name, buf in zip(self.outputs, outputs):
                b.bind_ortvalue_output(name, self.ort.OrtValue.ortvalue_from_numpy(buf))
            small = self._small = (_direct_run(self.session, b), inputs, outputs,
                                   next(iter(inputs.values())) if len(inputs) == 1 else None)
        run, inputs, outputs, single = small
        if single is not None:
            return self.run_small_again(small, next(iter(feeds.values())))
        for name, a in feeds.items():
            np.copyto(inputs[name], a)
        run()
        return [o.copy() for o in outputs]

    @staticmethod
    def run_small_again(small: tuple, x: np.ndarray) -> list[np.ndarray]:
        """_run_small's call ``small`` (a _small the caller read once) for the one input ``x``, of
        the shape and dtype of that call's input buffer."""
        run, _, outputs, buffer = small
        np.copyto(buffer, x)
        run()
        return [o.copy() for o in outputs]

    def run(self, feeds: dict, n: int, step: int, fixed: dict | None = None) -> list[np.ndarray]:
        """``feeds`` are sliced into batches of ``step`` rows; ``fixed`` (weights) are bound whole."""
        if self.states is not None:
            return self._run_stateful(feeds, n, step, fixed)
        if self.cpu and fixed is None and n <= step and n * self._row_size <= self.SMALL:
            return self._run_small(feeds, n)
        b = self.binding
        for name, array in (fixed or {}).items():
            b.bind_cpu_input(name, array)
        if self.cpu and self.output_dims is not None:
            results = [np.empty((n,) + tuple(d), np.float32) for d in self.output_dims]
            for start in range(0, n, step):
                for name, array in feeds.items():
                    b.bind_cpu_input(name, array[start:start + step])
                for name, r in zip(self.outputs, results):
                    b.bind_ortvalue_output(name, self.ort.OrtValue.ortvalue_from_numpy(r[start:start + step]))
                self.session.run_with_iobinding(b)
            return results
        chunks = []
        for start in range(0, n, step):
            for name, array in feeds.items():
                b.bind_cpu_input(name, array[start:start + step])
            for name in self.outputs:
                b.bind_output(name, "cpu")
            self.session.run_with_iobinding(b)
            chunks.append(b.copy_outputs_to_cpu())
        return [np.concatenate([c[i] for c in chunks]) if len(chunks) > 1 else chunks[0][i]
                for i in range(len(self.outputs))]
