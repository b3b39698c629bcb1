"""Input data for fit/evaluate: arrays (checked against the model before the first step)
or iterables of (x, y) batches, sliced and shuffled reproducibly."""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeMismatch
from ..ir.types import BATCH, DTYPES, dim_names, evaluate_dim


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # without the batch dimension; None for a symbolic dimension
    batched: bool = True  # False: an output without the batch axis (`output mean(h, axis=0)`), shape whole

    def describe(self) -> str:
        dims = ", ".join("None" if d is None else str(d) for d in ((None,) if self.batched else ()) + self.shape)
        return f"({dims}{',' if len(self.shape) == 1 and not self.batched else ''})"


def tensor_specs(entries) -> list[TensorSpec]:
    """The manifest's inputs, outputs or targets as specs without the batch dimension (where
    they have it: an output may reduce over the batch)."""
    def spec(e):
        batched = e["shape"][:1] == [BATCH]
        dims = e["shape"][1:] if batched else e["shape"]
        return TensorSpec(e["name"], e["dtype"], tuple(d if isinstance(d, int) else None for d in dims), batched)
    return [spec(e) for e in entries]


def count(value, where: str, name: str, least: int = 1, none: bool = False):
    """``value``, an integer of at least ``least`` (or None, where ``none``), as Keras takes
    ``epochs``, ``steps_per_epoch`` and the like; else a ValueError naming the argument."""
    if value is None and none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < least:
        wanted = "a positive integer" if least == 1 else f"an integer of at least {least}"
        raise ValueError(f"{where}: {name} must be {wanted}{' or None' if none else ''}, got {value!r}")
    return int(value)


def as_arrays(data, specs, where: str, what: str) -> dict:
    """One array for one spec, a dict by name, or a list/tuple in order -> {name: array}."""
    names = [s.name for s in specs]
    if isinstance(data, dict) and what == "target":  # (keyed by the outputs' names, as Keras: probs for probs_target)
        renamed = {k: k if k in names or f"{k}_target" not in names else f"{k}_target" for k in data}
        twice = sorted(k for k, n in renamed.items() if k != n and n in data)
        if twice:
            raise ShapeMismatch(f"{where}: targets given twice: {', '.join(f'{k} and {renamed[k]}' for k in twice)}")
        data = {renamed[k]: v for k, v in data.items()}
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        extra = [k for k in data if k not in names]
        if missing or extra:
            raise ShapeMismatch(f"{where}: the model's {what}s are {names}; missing {missing}, unknown {extra}")
        return {n: data[n] for n in names}
    if isinstance(data, (list, tuple)) and len(specs) > 1:
        if len(data) != len(specs):
            raise ShapeMismatch(f"{where}: the model has {len(specs)} {what}s ({', '.join(names)}), got {len(data)} arrays")
        return dict(zip(names, data))
    if len(specs) > 1:
        raise ShapeMismatch(f"{where}: the model has {len(specs)} {what}s ({', '.join(names)}); pass a dict by name")
    if isinstance(data, (list, tuple)) and len(data) == 1 and isinstance(data[0], np.ndarray):
        return {names[0]: data[0]}  # ([x] for a one-input model: a list of the inputs, as Keras takes it)
    if one_shot(data):  # (a generator where arrays go: fit(gen, y), predict(gen) said "dtype object")
        raise ShapeMismatch(f"{where}: {what} is an iterator; arrays go here (fit and evaluate take an iterable of "
                            f"(x, y) batches as x alone, without y, validation_split or sample weights)")
    return {names[0]: data}


def one_shot(data) -> bool:
    """Whether ``data`` is an iterator (a generator, say), which numpy would take for one object."""
    try:
        return iter(data) is data
    except TypeError:
        return False


def _check(spec, a, where, what):
    try:
        a = np.asarray(a)
    except ValueError as e:  # (ragged lists: numpy's "inhomogeneous shape", said for this input)
        raise ShapeMismatch(f"{where}: {what} {spec.name!r} is not an array of one shape ({e})") from None
    if a.dtype.kind not in "biuf":
        raise ShapeMismatch(f"{where}: {what} {spec.name!r} expects {spec.dtype} numbers, got dtype {a.dtype}")
    want_rank = len(spec.shape) + 1
    if what == "target" and a.ndim == want_rank + 1 and a.shape[-1] == 1 and \
            all(d is None or d == g for d, g in zip(spec.shape, a.shape[1:-1])):
        a = a.reshape(a.shape[:-1])  # (labels as [n, 1] for [n], say: Keras squeezes them too)
    elif what == "target" and a.ndim == want_rank - 1 and spec.shape and spec.shape[-1] == 1 and \
            all(d is None or d == g for d, g in zip(spec.shape[:-1], a.shape[1:])):
        a = a[..., None]  # (a regression's y as [n] for a Dense(1) output [n, 1], as Keras takes it)
    if a.ndim != want_rank or any(d is not None and d != g for d, g in zip(spec.shape, a.shape[1:])):
        hint = ""
        size = int(np.prod(spec.shape)) if all(d is not None for d in spec.shape) else None
        if a.ndim >= 1 and size and a.size == len(a) * size:
            hint = f"; reshape with x.reshape((-1, {', '.join(map(str, spec.shape))}))"
        elif a.ndim == want_rank + 1 and a.shape[-1] == 1 and spec.shape == a.shape[1:-1]:
            hint = "; drop the last axis with y.reshape(len(y), ...)"
        elif spec.shape and spec.shape[-1] is not None and a.ndim == want_rank - 1 and what == "target":
            hint = "; for class indices use sparse_categorical_crossentropy, or one-hot encode with " \
                   "kcompile.utils.to_categorical"
        raise ShapeMismatch(f"{where}: {what} {spec.name!r} expects shape {spec.describe()}, got {tuple(a.shape)}{hint}")
    want = DTYPES[spec.dtype]
    if a.dtype != want:
        if np.dtype(want).kind in "iu" and a.dtype.kind == "f" and not np.all(np.mod(a, 1) == 0):
            raise ShapeMismatch(f"{where}: {what} {spec.name!r} expects integer ids ({spec.dtype}), got "
                                f"non-integer {a.dtype} values")
        if np.dtype(want).kind in "iu" and a.size and a.dtype.kind in "iuf":  # (a cast would wrap them)
            info = np.iinfo(want)
            low, high = a.min(), a.max()
            if low < info.min or high > info.max:
                raise ShapeMismatch(f"{where}: {what} {spec.name!r} is {spec.dtype}, whose values run from "
                                    f"{info.min} to {info.max}; got values from {low} to {high}")
        with np.errstate(over="ignore"):  # (said below, as an error)
            cast = a.astype(want)
        narrowed = np.dtype(want).kind == "f" and a.size and (a.dtype.kind in "iu" or cast.itemsize < a.itemsize)
        if narrowed and not np.isfinite(cast.sum(dtype=np.float64)):  # (one pass; the values only where it fails)
            overflow = np.isinf(cast) & np.isfinite(a)  # (a cast would make them inf)
            if overflow.any():
                raise ShapeMismatch(f"{where}: {what} {spec.name!r} is {spec.dtype}, whose finite values reach "
                                    f"{np.finfo(want).max:.4g}; got {a[overflow].flat[0]:.4g}")
        a = cast
    return np.ascontiguousarray(a)


def check_arrays(xs: dict, ys: dict | None, x_specs, y_specs, where):
    """Convert and check every array; all must have one length. Returns (xs, ys, length)."""
    xs = {s.name: _check(s, xs[s.name], where, "input") for s in x_specs}
    ys = {s.name: _check(s, ys[s.name], where, "target") for s in y_specs} if ys is not None else {}
    lengths = {f"input {k!r}": len(v) for k, v in xs.items()}
    lengths.update({f"target {k!r}": len(v) for k, v in ys.items()})
    if len(set(lengths.values())) > 1:
        raise ShapeMismatch(f"{where}: {'inputs and targets' if ys else 'inputs'} have different lengths: " +
                            ", ".join(f"{k} has {v}" for k, v in lengths.items()))
    return xs, ys, next(iter(lengths.values()))


def named_sizes(arrays: dict, entries) -> tuple[dict, dict]:
    """The size of each named dimension (the batch's N, and T) in ``arrays``, from the first of
    the manifest ``entries`` whose shape has it; and that entry's name, by dimension."""
    sizes, origin = {}, {}
    for e in entries:
        a = arrays.get(e["name"])
        for d, n in zip(e["shape"], () if a is None else a.shape):
            if isinstance(d, str) and d.isidentifier() and d not in sizes:
                sizes[d], origin[d] = n, e["name"]
    return sizes, origin


def check_named_dims(arrays: dict, entries: list, where: str) -> None:
    """Named dimensions must agree across the arrays: each name (T) takes its size from the first
    array that has it, and every other use of it, or of a size computed from it (T-2 after a
    window), must match. ``entries``: (manifest entry, "input" or "target"), inputs first."""
    sizes, origin = named_sizes(arrays, [e for e, _ in entries])
    for e, kind in entries:
        a = arrays.get(e["name"])
        if a is None or all(isinstance(d, int) for d in e["shape"][1:]):
            continue
        wanted = []
        for d in e["shape"][1:]:
            try:
                wanted.append(evaluate_dim(d, sizes))
            except ValueError:
                wanted.append(None)
        if any(w is not None and w != n for w, n in zip(wanted, a.shape[1:])):
            shown = ", ".join(["None"] + [str(d) if isinstance(d, int) or w is None else f"{d}={w}"
                                          for d, w in zip(e["shape"][1:], wanted)])
            names = sorted({name for d in e["shape"][1:] for name in dim_names(d)} & set(sizes))
            source = ", ".join(f"{name}={sizes[name]} from {origin[name]!r}" for name in names)
            raise ShapeMismatch(f"{where}: {kind} {e['name']!r} expects shape ({shown}), got {tuple(a.shape)} "
                                f"({source})")


def check_lengths(arrays: dict, manifest: dict, where: str, seen: set) -> None:
    """Before a run: no output, nor any layer's, may come out with a length below 1 for the named
    sizes of the inputs ``arrays`` (a window longer than its input: Conv1D(2, 10) on T = 5, whose
    length T-9 the manifest records); onnxruntime would fail, or return a made-up length.
    ``seen``: the sizes found good so far (a predict in a loop checks its sizes once)."""
    sizes, origin = named_sizes(arrays, manifest["inputs"])
    key = tuple(sorted(sizes.items()))
    if key in seen:
        return
    for name, axis, rows in manifest.get("position_ranges", []):
        steps = arrays[name].shape[axis] if name in arrays else 0
        if steps > rows:
            raise ShapeMismatch(f"{where}: input {name!r} has {steps} steps; positions({name}) look up an Embedding "
                                f"table of {rows} rows (positions 0 to {rows - 1})")
    shapes = [(f"output {o['name']}", o["shape"]) for o in manifest["outputs"]] + \
             [(f"layer {layer['name']}'s output", shape) for layer in manifest.get("layers", [])
              for shape in layer.get("output_shapes", [])]
    for what, shape in shapes:
        for d in shape:
            if not isinstance(d, str) or d.isidentifier():  # (a size given, or a named input size: T = 0 is the user's)
                continue
            try:
                length = evaluate_dim(d, sizes)
            except ValueError:
                continue
            if length < 1:
                given = ", ".join(f"{origin[k]}'s {k} = {sizes[k]}" for k in sorted(dim_names(d) & set(sizes)))
                raise ShapeMismatch(f"{where}: input {given} is too short: {what} would have length {length} ({d})")
    if len(seen) > 100:
        seen.clear()
    seen.add(key)


def check_ids(xs: dict, id_ranges: dict, where: str) -> None:
    """Each input an Embedding table looks up must hold ids within its rows (manifest id_ranges)."""
    for name, rows in id_ranges.items():
        ids = xs.get(name)
        if ids is not None and ids.size:
            low, high = ids.min(), ids.max()
            if low < 0 or high >= rows:
                raise ShapeMismatch(f"{where}: input {name!r} holds ids from {low} to {high}; its Embedding table has "
                                    f"{rows} rows (ids 0 to {rows - 1})")


def _weight_array(w, n: int, where: str, what: str) -> np.ndarray:
    """One weight per sample, float32 [n], from [n] or [n, 1]; or weights per step, [n, T, ...]
    (the caller checks them against the loss's steps)."""
    w = np.asarray(w)
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim < 1 or len(w) != n:
        raise ShapeMismatch(f"{where}: {what} expects shape ({n},), one weight per sample, got {tuple(w.shape)}")
    if w.dtype.kind not in "biuf":
        raise ShapeMismatch(f"{where}: {what} expects numbers, got dtype {w.dtype}")
    return np.ascontiguousarray(w, dtype=np.float32)


def per_output(sample_weight, outputs: list) -> bool:
    """Whether ``sample_weight`` is Keras's per-output form: a dict by output, or (for several
    outputs) a list or tuple of arrays or None in output order; a list of numbers is one weight
    per sample."""
    if isinstance(sample_weight, dict):
        return True
    return isinstance(sample_weight, (list, tuple)) and len(outputs) > 1 and \
        not all(np.isscalar(v) for v in sample_weight)


def sample_weights(sample_weight, class_weight, ys: dict, n: int, where: str, outputs: list = (),
                   labels: bool = False):
    """The ``n`` samples' weights in the loss, float32 [n], and each output's, {output: [n]}:
    ``sample_weight`` ([n], or [n, 1]: every output's), or per output ({output: weights}, or a
    list in the order of ``outputs``; None for an output unweighted; Keras refuses a dict that
    leaves an output out); or ``class_weight`` ({class: weight}, 1 for a class it leaves out) by
    each sample's class in the one target (argmax of one-hot rows, else the rounded label), as
    Keras; else ones. Per output, the first is ones (for loss terms on other values)."""
    if sample_weight is not None and class_weight is not None:
        raise ValueError(f"{where}: give sample_weight or class_weight, not both (as Keras)")
    ones = np.ones(n, np.float32)
    if per_output(sample_weight, outputs):
        if isinstance(sample_weight, dict):
            missing = [o for o in outputs if o not in sample_weight]
            unknown = [k for k in sample_weight if k not in outputs]
            if missing or unknown:
                raise ShapeMismatch(f"{where}: sample_weight by output: the model's outputs are {list(outputs)}; "
                                    f"missing {missing}, unknown {unknown} (None leaves an output's loss unweighted)")
            given = sample_weight
        else:
            if len(sample_weight) != len(outputs):
                raise ShapeMismatch(f"{where}: sample_weight per output: the model has {len(outputs)} outputs "
                                    f"({', '.join(outputs)}), got {len(sample_weight)} items")
            given = dict(zip(outputs, sample_weight))
        weights = {o: ones if given[o] is None else _weight_array(given[o], n, where, f"sample_weight {o!r}")
                   for o in outputs}
        return (weights[outputs[0]] if len(outputs) == 1 else ones), weights
    if sample_weight is not None:
        w = _weight_array(sample_weight, n, where, "sample_weight")
        return w, dict.fromkeys(outputs, w)
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise ValueError(f"{where}: class_weight must be a dict {{class: weight}}, got {type(class_weight).__name__}")
        if len(ys) != 1:
            raise ValueError(f"{where}: class_weight is for a model with one target; this one has {len(ys)} "
                             f"({', '.join(ys)}): give sample_weight")
        y = target = next(iter(ys.values()))
        if labels:  # (class labels: [n], [n, 1] or, one per step, [n, T])
            y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
        elif y.ndim >= 2:  # (as Keras: one-hot rows' argmax, or a last axis of 1 dropped)
            y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[..., 0]
        if y.ndim > 2:
            raise ValueError(f"{where}: class_weight needs one class per sample, or per step; the target has "
                             f"shape {tuple(target.shape)}: give sample_weight")
        # (a class per step, [n, T]: each step weighs by its class, as weights per step)
        classes, at = np.unique(np.round(y).astype(np.int64), return_inverse=True)
        table = {int(k): float(v) for k, v in class_weight.items()}
        w = np.array([table.get(int(c), 1.0) for c in classes], np.float32)[at.reshape(-1)].reshape(y.shape)
        return w, dict.fromkeys(outputs, w)
    return ones, dict.fromkeys(outputs, ones)


def even_runs(n: int, most: int) -> int:
    """Rows a run, for ``n`` rows in as few runs of at most ``most`` rows as can be, of even sizes
    (a short last run takes as long as a full one)."""
    return -(-n // -(-n // most))


class Batches:
    """Batches of arrays (shuffled per epoch with a seeded generator) or of a user iterable."""

    def __init__(self, model, xs, ys, n, batch_size, shuffle, seed, where, iterable=None, steps=None):
        self.model, self.xs, self.ys, self.n = model, xs, ys, n
        self.batch_size, self.shuffle, self.seed, self.where = batch_size, shuffle, seed, where
        self.iterable = iterable
        self._order_pass = self._order_rows = None  # (_order's last pass and its rows)
        if iterable is not None:
            self.steps = steps or (len(iterable) if hasattr(iterable, "__len__") else None)
        else:
            self.steps = steps or max(1, -(-n // batch_size))
            model._check_state_batches(n, batch_size, shuffle, where)  # (stateful layers: whole batches, in order)

    @classmethod
    def of(cls, model, x, y, batch_size, shuffle, seed, where, steps=None, sample_weight=None, class_weight=None):
        if batch_size is None:
            batch_size = 32
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        if y is None and x is not None and not isinstance(x, (np.ndarray, dict, list, tuple)):
            if sample_weight is not None or class_weight is not None:
                raise ValueError(f"{where}: with an iterable of batches, give each batch's weights in it: "
                                 f"(x, y, sample_weight)")
            return cls(model, None, None, None, batch_size, shuffle, seed, where, iterable=x, steps=steps)
        if y is None:
            raise ValueError(f"{where}: y (the targets) is missing")
        xs, ys, n = model._check_xy(x, y, where, sample_weight, class_weight)  # (which refuses 0 rows)
        return cls(model, xs, ys, n, batch_size, shuffle, seed, where, steps=steps)

    def epoch(self, epoch: int):
        if self.iterable is not None:
            # (islice: exactly ``steps`` items, none taken and dropped; a generator goes on from
            # there in the next epoch, as Keras)
            items = itertools.islice(self.iterable, self.steps) if self.steps is not None else self.iterable
            for item in items:
                if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                    raise ShapeMismatch(f"{self.where}: a data iterable must yield (x, y) or (x, y, sample_weight) "
                                        f"batches, got " + (f"{len(item)} items" if isinstance(item, (tuple, list))
                                                            else type(item).__name__))
                xs, ys, n = self.model._check_xy(item[0], item[1], self.where, item[2] if len(item) == 3 else None)
                yield xs, ys, n
            return
        # Passes over the arrays, each shuffled by its own seed, as Keras 3's EpochIterator takes
        # them: an epoch of steps_per_epoch steps goes on where the last one stopped, an epoch
        # that reaches the end of a pass stops there (Keras warns), and the next one starts the
        # next pass; an epoch of a whole pass is pass ``epoch``. (Worked out from ``epoch``
        # alone, so that a resumed run draws what the uninterrupted one would.)
        per_pass = -(-self.n // self.batch_size)
        epochs_per_pass = -(-per_pass // self.steps)
        data_pass, part = divmod(epoch, epochs_per_pass)
        first = part * self.steps
        last = min(first + self.steps, per_pass)
        if last - first < self.steps:
            warnings.warn(f"{self.where}: the arrays ran out of batches {last - first} steps into an epoch of "
                          f"{self.steps}; the next epoch starts a new pass over them (as Keras)", stacklevel=3)
        order = self._order(data_pass)
        for i in range(first, last):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if not self.shuffle:  # contiguous slices are views: no copy
                s = slice(idx[0], idx[-1] + 1)
                yield ({k: v[s] for k, v in self.xs.items()}, {k: v[s] for k, v in self.ys.items()}, len(idx))
            else:
                yield ({k: v[idx] for k, v in self.xs.items()}, {k: v[idx] for k, v in self.ys.items()}, len(idx))

    def _order(self, data_pass: int) -> np.ndarray:
        """The rows' order in one pass over the arrays (kept for the pass's batches)."""
        if self._order_pass != data_pass:
            order = np.arange(self.n)
            if self.shuffle:
                np.random.default_rng([self.seed, 104729, data_pass]).shuffle(order)
            self._order_pass, self._order_rows = data_pass, order
        return self._order_rows

    def __iter__(self):
        return self.epoch(0)
