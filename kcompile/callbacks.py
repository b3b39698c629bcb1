"""Keras 3-style training callbacks for ``Model.fit``.

Model protocol
--------------
Callbacks only touch the model through this small interface (``set_model`` receives
it); any object providing it works, which is what the tests use:

* ``model.stop_training`` -- bool attribute; ``fit`` checks it after every batch and
  epoch and stops when True (``EarlyStopping``, ``TerminateOnNaN`` set it).
* ``model.learning_rate`` -- float property; setting it changes the optimizer's rate
  for the following steps without rebuilding anything (``LearningRateScheduler``).
  For Keras compatibility ``model.optimizer.learning_rate`` is used instead when
  the model has no ``learning_rate`` attribute but has an ``optimizer`` with one.
* ``model.save(path)`` -- writes a checkpoint folder atomically (``ModelCheckpoint``).
* ``model.save_weights(path)`` -- writes the weights only (``ModelCheckpoint`` with
  ``save_weights_only=True``).
* ``model.get_weights()`` -> list of numpy arrays, ``model.set_weights(list)``
  (``EarlyStopping(restore_best_weights=True)``).
* ``History`` also sets ``model.history`` to itself after each epoch, as Keras does.
* ``BackupAndRestore`` needs a kcompile ``Model``: it restores a backup with ``model._restore(path)``
  and tells ``fit`` where to go on with ``model._resume_at`` (as Keras's ``model._initial_epoch``).

Calling convention (what ``fit`` must do, as Keras does)
--------------------------------------------------------
``epoch`` and ``batch`` indices are 0-based. ``logs`` is a dict of floats: per batch,
the running means of the epoch so far (``loss``, metrics); at epoch end, the epoch's
metrics plus ``val_*`` entries. The same ``logs`` dict passed to ``on_epoch_end``
should be the one ``fit`` reads afterwards (``LearningRateScheduler`` adds
``learning_rate`` to it, which ``History`` records if it comes after the scheduler,
as with Keras' ordering: user callbacks first, ``History`` and the progress bar last).
``params`` is a dict with at least ``epochs``, ``steps`` (steps per epoch, or None)
and ``verbose``.
"""

from __future__ import annotations

import csv
import numbers
import os
import re
import shutil
import sys
import warnings

import numpy as np

from .errors import KcompileError

__all__ = [
    "Callback", "CallbackList", "History", "EarlyStopping", "ModelCheckpoint",
    "LearningRateScheduler", "ReduceLROnPlateau", "CSVLogger", "TerminateOnNaN", "LambdaCallback",
    "ProgbarLogger", "BackupAndRestore",
]


def _print(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _scalar(value):
    """A float for a scalar log value (python number, numpy scalar or 0-d array)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            return None
        return float(value)
    if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, bool):
        return float(value)
    return None


class Callback:
    """Base class: override the hooks you need. ``self.model`` and ``self.params``
    are set by ``fit`` (through ``CallbackList``) before ``on_train_begin``."""

    def __init__(self):
        self.params = None
        self.model = None

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self.model = model

    # Keras keeps on_batch_* as aliases of on_train_batch_*.
    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass


class CallbackList(Callback):
    """Fans every hook out to a list of callbacks, in order.

    ``add_history=True`` appends a ``History`` unless one is in the list, then
    ``add_progbar=True`` a ``ProgbarLogger`` unless one is in the list (Keras order:
    user callbacks first, so e.g. ``learning_rate`` set by a scheduler reaches both).
    ``model`` and extra keyword ``params`` are forwarded with ``set_model`` /
    ``set_params``.
    """

    def __init__(self, callbacks=None, add_history=False, add_progbar=False,
                 model=None, **params):
        super().__init__()
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        if not isinstance(callbacks, (list, tuple)) or \
                not all(callable(getattr(cb, "set_model", None)) for cb in callbacks):
            raise ValueError(f"callbacks must be a list of Callback instances (kcompile.callbacks), got {callbacks!r}")
        self.callbacks = list(callbacks)
        self._history = None
        self._progbar = None
        for cb in self.callbacks:
            if isinstance(cb, History):
                self._history = cb
            elif isinstance(cb, ProgbarLogger):
                self._progbar = cb
        if add_history and self._history is None:
            self._history = History()
            self.callbacks.append(self._history)
        if add_progbar and self._progbar is None:
            self._progbar = ProgbarLogger()
            self.callbacks.append(self._progbar)
        if model is not None:
            self.set_model(model)
        if params:
            self.set_params(params)

    @property
    def history(self):
        return self._history

    def append(self, callback):
        self.callbacks.append(callback)
        if self.model is not None:
            callback.set_model(self.model)
        if self.params is not None:
            callback.set_params(self.params)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)

    def set_params(self, params):
        self.params = params
        for cb in self.callbacks:
            cb.set_params(params)

    def set_model(self, model):
        self.model = model
        for cb in self.callbacks:
            cb.set_model(model)

    def reads_batch_logs(self, hooks=("on_train_batch_end", "on_batch_end")) -> bool:
        """Whether any callback looks at a training batch's end, or at ``hooks`` (fit and evaluate
        skip computing the running logs for each batch otherwise)."""
        def overridden(cb, hook):  # by a subclass, or by a function set on the instance (LambdaCallback)
            method = getattr(cb, hook)
            return getattr(method, "__func__", method) is not getattr(Callback, hook)
        return any(overridden(cb, hook) for cb in self.callbacks for hook in hooks)

    def _call(self, name, *args, logs=None):
        logs = {} if logs is None else logs
        for cb in self.callbacks:
            getattr(cb, name)(*args, logs)

    def on_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs=logs)

    def on_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs=logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs=logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._call("on_test_batch_begin", batch, logs=logs)

    def on_test_batch_end(self, batch, logs=None):
        self._call("on_test_batch_end", batch, logs=logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._call("on_predict_batch_begin", batch, logs=logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._call("on_predict_batch_end", batch, logs=logs)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs=logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs=logs)

    def on_test_begin(self, logs=None):
        self._call("on_test_begin", logs=logs)

    def on_test_end(self, logs=None):
        self._call("on_test_end", logs=logs)

    def on_predict_begin(self, logs=None):
        self._call("on_predict_begin", logs=logs)

    def on_predict_end(self, logs=None):
        self._call("on_predict_end", logs=logs)


class History(Callback):
    """Records the epoch logs: ``history[name]`` is a list with one value per epoch,
    ``epoch`` the list of (0-based) epoch indices. ``fit`` returns it."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)
        if self.model is not None:
            try:
                self.model.history = self
            except AttributeError:
                pass


def _auto_mode_is_max(monitor: str) -> bool:
    name = monitor.lower()
    return any(key in name for key in ("acc", "accuracy", "auc", "precision", "recall"))


def _check_mode(mode: str, who: str) -> str:
    if mode not in ("auto", "min", "max"):
        warnings.warn(f"{who} mode {mode} is unknown, fallback to auto mode.", stacklevel=3)
        return "auto"
    return mode


class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving (Keras 3).

    An epoch improves when ``current - min_delta`` beats the best value seen (mode
    ``min``; ``current + min_delta`` in mode ``max``). ``wait`` counts epochs since
    the last improvement; training stops at the end of the epoch where
    ``wait >= patience`` (never after the first epoch). With ``baseline``, an
    improvement only resets ``wait`` if it also beats the baseline. Epochs before
    ``start_from_epoch`` are ignored. ``restore_best_weights`` snapshots the weights
    of the best epoch and sets them back on the model at the end of training (as
    Keras 3 does, whether or not training was stopped early). ``stopped_epoch`` is
    the 0-based epoch at which training was stopped (0 if it never was).
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0,
                 mode="auto", baseline=None, restore_best_weights=False,
                 start_from_epoch=0):
        super().__init__()
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.min_delta = abs(min_delta)
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.mode = _check_mode(mode, "EarlyStopping")
        if self.mode == "max" or (self.mode == "auto" and _auto_mode_is_max(monitor)):
            self.monitor_op = np.greater
        else:
            self.monitor_op = np.less
            self.min_delta *= -1
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        # Allow instances to be re-used.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # If best weights were never set, the current weights are the best.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch

        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Only restart wait if we beat both the baseline and our previous best.
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return

        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print("Restoring model weights from the end of the best epoch: "
                       f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)

    def get_monitor_value(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not "
                f"available. Available metrics are: {','.join(list(logs.keys()))}",
                stacklevel=2,
            )
        return value

    def _is_improvement(self, monitor_value, reference_value):
        if reference_value is None:
            return True
        return bool(self.monitor_op(monitor_value - self.min_delta, reference_value))


class ModelCheckpoint(Callback):
    """Save the model (``model.save``) or its weights (``model.save_weights``)
    every epoch, or every ``save_freq`` batches (an int).

    ``filepath`` may hold ``str.format`` fields filled from ``epoch`` (1-based),
    ``batch`` (1-based, for batch-level saving) and the logs, e.g.
    ``"ckpt/model-{epoch:02d}-{val_loss:.2f}"``. With ``save_best_only``, a save only
    happens when ``monitor`` improves on the best value so far (strictly; starting
    from ``initial_value_threshold`` if given). ``mode`` as ``EarlyStopping``. Where the
    logs lack ``monitor`` (no validation data for ``val_loss``), it warns and saves, as Keras 3.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        from .runtime.model import WEIGHTS_FILES, refuse_keras_folder_name
        name = self.filepath.lower()
        if save_weights_only and not name.endswith(WEIGHTS_FILES):
            raise ValueError(f"ModelCheckpoint: {self.filepath}: kcompile saves weights as .npz or as Keras 3's "
                             f".weights.h5: give a name such as model-{{epoch:02d}}.weights.h5")
        if not save_weights_only:  # (a checkpoint folder)
            refuse_keras_folder_name(self.filepath, "ModelCheckpoint")
        self.save_freq = save_freq
        self.best = initial_value_threshold
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0
        self._current_epoch = 0
        mode = _check_mode(mode, "ModelCheckpoint")
        self.mode = mode
        # (the best value so far: initial_value_threshold, or None until the first, as Keras 3)
        self.monitor_op = np.greater if mode == "max" or (mode == "auto" and _auto_mode_is_max(monitor)) else np.less
        if save_freq != "epoch" and not (isinstance(save_freq, int) and not isinstance(save_freq, bool)
                                         and save_freq > 0):
            raise ValueError(
                f"Unrecognized save_freq: {save_freq}. Expected save_freq are 'epoch' "
                "or a positive integer")

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save_model(epoch, None, logs)

    def _should_save_on_batch(self, batch):
        if self.save_freq == "epoch":
            return False
        if batch <= self._last_batch_seen:  # a new epoch
            add_batches = batch + 1
        else:
            add_batches = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add_batches
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _get_file_path(self, epoch, batch, logs):
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(
                f'Failed to format this callback filepath: "{self.filepath}". '
                f"Reason: {e}") from e

    def _write(self, filepath, epoch):
        if self.save_weights_only:
            self.model.save_weights(filepath)
        else:
            self.model.save(filepath)
        if self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")

    def _save_model(self, epoch, batch, logs):
        if _stopped_on_a_nonfinite_loss(self.model):
            return
        logs = logs or {}
        filepath = self._get_file_path(epoch, batch, logs)
        dirname = os.path.dirname(filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if not self.save_best_only:
            if self.verbose > 0:
                _print(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            self._write(filepath, epoch)
            return
        current = logs.get(self.monitor)
        if current is None:  # Keras 3 warns and saves (Keras 2 skipped the save)
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=2)
            self._write(filepath, epoch)
            return
        value = _scalar(current)
        if value is None:
            warnings.warn(f"Can save best model only when `monitor` is a scalar value. "
                          f"Received: {current}. Falling back to `save_best_only=False`.",
                          stacklevel=2)
            self._write(filepath, epoch)
            return
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self.best is None or self.monitor_op(value, self.best):
            if self.verbose > 0:
                _print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to {value:.5f}, saving model to "
                       f"{filepath}")
            self.best = value
            self._write(filepath, epoch)
        elif self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")


def _stopped_on_a_nonfinite_loss(model) -> bool:
    """The hooks fit calls for a non-finite step (the loss shown to the callbacks) come after its
    weights went back to an earlier step: a checkpoint or backup then would say a place in
    training its state is not at, so none is written (the last one stays)."""
    return getattr(model, "nonfinite", None) is not None


def _get_lr_owner(model):
    if hasattr(model, "learning_rate"):
        return model
    opt = getattr(model, "optimizer", None)
    if opt is not None and hasattr(opt, "learning_rate"):
        return opt
    raise ValueError('The model must have a "learning_rate" attribute.')


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to
    ``schedule(epoch, current_lr)`` (``schedule(epoch)`` is accepted too), and record
    it as ``logs["learning_rate"]`` at epoch end (Keras 3)."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        owner = _get_lr_owner(self.model)
        try:
            learning_rate = self.schedule(epoch, float(owner.learning_rate))
        except TypeError:  # old single-argument API
            learning_rate = self.schedule(epoch)
        if isinstance(learning_rate, np.ndarray) and learning_rate.ndim == 0:
            learning_rate = learning_rate.item()
        if not isinstance(learning_rate, (numbers.Real, np.floating, np.integer)) or \
                isinstance(learning_rate, bool):
            raise ValueError("The output of the `schedule` function should be a float. "
                             f"Got: {learning_rate}")
        learning_rate = float(learning_rate)
        owner.learning_rate = learning_rate
        if self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning "
                   f"rate to {learning_rate}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["learning_rate"] = float(_get_lr_owner(self.model).learning_rate)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` once ``monitor`` has not improved for
    ``patience`` epochs (Keras 3): an epoch improves when it beats the best value so far by
    more than ``min_delta``; after a reduction, ``cooldown`` epochs pass before counting
    again; the rate never goes below ``min_lr``. Records ``logs["learning_rate"]`` each epoch.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.cooldown, self.min_lr = cooldown, min_lr
        self.mode = _check_mode(mode, "ReduceLROnPlateau")
        self.min_delta = abs(min_delta)
        if self.mode == "max" or (self.mode == "auto" and _auto_mode_is_max(monitor)):
            self.monitor_op = np.greater
        else:
            self.monitor_op = np.less
            self.min_delta *= -1
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        owner = _get_lr_owner(self.model)
        logs["learning_rate"] = float(owner.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not "
                          f"available. Available metrics are: {','.join(list(logs.keys()))}.", stacklevel=2)
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self.best is None or self.monitor_op(current - self.min_delta, self.best):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(owner.learning_rate)
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    owner.learning_rate = new_lr
                    if self.verbose > 0:
                        _print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class CSVLogger(Callback):
    """Stream epoch results to a CSV file: a header ``epoch,<sorted log keys>``
    then one row per epoch (0-based epoch index, as Keras), flushed every epoch.

    If the first epoch's logs have no ``val_*`` key, ``val_<key>`` columns are added
    for every key (Keras does this for ``validation_freq > 1``); missing values are
    written as ``NA``. With ``append=True`` rows are added to an existing file and
    the header is only written if the file is empty or missing.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = append
        self.writer = None
        self.keys = None
        self.append_header = True
        self.csv_file = None

    def on_train_begin(self, logs=None):
        if self.append:
            self.append_header = True
            if os.path.exists(self.filename):
                with open(self.filename, "r", newline="") as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            self.append_header = True
            mode = "w"
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = open(self.filename, mode, newline="")
        self.writer = None
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}

        def handle_value(v):
            if isinstance(v, str):
                return v
            if isinstance(v, np.ndarray) and v.ndim == 0:
                return v.item()
            if isinstance(v, np.generic):
                return v.item()
            if isinstance(v, (list, tuple, np.ndarray)):
                return f"[{', '.join(map(str, v))}]"
            return v

        if self.csv_file is None:  # on_train_begin was not called
            self.on_train_begin()

        if self.keys is None:
            self.keys = sorted(logs.keys())
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys.extend(["val_" + k for k in self.keys])

        if self.writer is None:
            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys,
                                         delimiter=self.sep, lineterminator="\r\n")  # (as Keras: csv.excel)
            if self.append_header:
                self.writer.writeheader()

        row = {"epoch": epoch}
        row.update((k, handle_value(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite."""

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None:
            loss = np.asarray(loss, dtype=np.float64)
            if np.any(np.isnan(loss)) or np.any(np.isinf(loss)):
                _print(f"Batch {batch}: Invalid loss, terminating training")
                self.model.stop_training = True


class LambdaCallback(Callback):
    """Build a callback from plain functions, e.g.
    ``LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))``.

    Signatures: ``on_epoch_begin/end(epoch, logs)``, ``on_train_begin/end(logs)``,
    ``on_train_batch_begin/end(batch, logs)``; any other hook (``on_test_end=...``,
    ``on_predict_batch_end=...``) can be passed as a keyword too.
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        for name in kwargs:
            if not (name.startswith("on_") and callable(getattr(Callback, name, None))):
                raise TypeError(f"LambdaCallback got an unknown hook {name!r}")
        self.__dict__.update(kwargs)
        if on_epoch_begin is not None:
            self.on_epoch_begin = on_epoch_begin
        if on_epoch_end is not None:
            self.on_epoch_end = on_epoch_end
        if on_train_begin is not None:
            self.on_train_begin = on_train_begin
        if on_train_end is not None:
            self.on_train_end = on_train_end
        if on_train_batch_begin is not None:
            self.on_train_batch_begin = on_train_batch_begin
        if on_train_batch_end is not None:
            self.on_train_batch_end = on_train_batch_end


class ProgbarLogger(Callback):
    """Drives a ``kcompile.progress.ProgressBar`` from the hooks (Keras 3's
    ProgbarLogger): epoch header, per-batch updates (verbose 1) and the final line
    with the epoch logs (including ``val_*``). Needs ``params`` with ``verbose``,
    ``epochs`` and ``steps``. Keyword arguments are passed to ``ProgressBar``.
    """

    def __init__(self, **progbar_kwargs):
        super().__init__()
        self.seen = 0
        self.progbar = None
        self.target = None
        self.verbose = 1
        self.epochs = 1
        self._called_in_fit = False
        self._progbar_kwargs = progbar_kwargs

    def set_params(self, params):
        super().set_params(params)
        verbose = params.get("verbose", 1)
        self.verbose = 1 if verbose == "auto" else verbose
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    def on_train_begin(self, logs=None):
        self._called_in_fit = True

    def on_test_begin(self, logs=None):
        if not self._called_in_fit:
            self._reset_progbar()
            self._maybe_init_progbar()

    def on_predict_begin(self, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()

    def on_epoch_begin(self, epoch, logs=None):
        from .progress import epoch_header
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose:
            epoch_header(epoch, self.epochs, self.verbose, stream=self._progbar_kwargs.get("stream"))

    def on_train_batch_end(self, batch, logs=None):
        self._update_progbar(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        if not self._called_in_fit:
            self._update_progbar(batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._update_progbar(batch, None)

    def on_epoch_end(self, epoch, logs=None):
        self._finalize_progbar(logs)

    def on_test_end(self, logs=None):
        if not self._called_in_fit:
            self._finalize_progbar(logs)

    def on_predict_end(self, logs=None):
        self._finalize_progbar(logs)

    def _reset_progbar(self):
        self.seen = 0
        self.progbar = None

    def _maybe_init_progbar(self):
        if self.progbar is None:
            from .progress import ProgressBar
            self.progbar = ProgressBar(target=self.target, verbose=self.verbose,
                                       unit_name="step", **self._progbar_kwargs)

    def _update_progbar(self, batch, logs=None):
        self._maybe_init_progbar()
        self.seen = batch + 1
        if self.verbose == 1:
            self.progbar.update(self.seen, list((logs or {}).items()), finalize=False)

    def _finalize_progbar(self, logs):
        self._maybe_init_progbar()
        if self.target is None:
            self.target = self.seen
            self.progbar.target = self.target
        self.progbar.update(self.target, list((logs or {}).items()), finalize=True)


class BackupAndRestore(Callback):
    """Back up the training state so that an interrupted ``fit`` goes on where it stopped (Keras 3).

    Every epoch's end (or every ``save_freq`` batches, an int) the model is saved with
    ``model.save`` into ``backup_dir``: weights, optimizer slots, step count and learning rate,
    written atomically, so a crash mid-write leaves the previous backup whole. When ``fit`` starts
    with a backup in ``backup_dir``, the model takes its state and ``fit`` runs only what is left:
    from the backup's epoch, skipping the steps of that epoch it had taken. As the shuffling and
    the dropout noise follow the seed and the step count, the resumed run ends with the weights
    the uninterrupted one would have. ``double_checkpoint`` keeps the previous backup too, and
    falls back to it when the latest cannot be read. ``delete_checkpoint`` removes the backups
    when ``fit`` ends (not when it is interrupted by an exception). ``backup_dir`` holds the
    backups alone: no other run's, nor another callback's files.

    Each backup is a checkpoint folder named ``epoch-E-batch-B``: taken after B batches of the
    (0-based) epoch E; an epoch-end backup is ``epoch-E+1-batch-0``.
    """

    _NAME = re.compile(r"epoch-(\d+)-batch-(\d+)")

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError(f"BackupAndRestore: backup_dir must be a non-empty path, got {backup_dir!r}")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and not isinstance(save_freq, bool)
                                         and save_freq > 0):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive integer (a number of "
                             f"batches), got {save_freq!r}")
        for name, value in (("double_checkpoint", double_checkpoint), ("delete_checkpoint", delete_checkpoint)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"BackupAndRestore: {name} must be True or False, got {value!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._current_epoch = 0
        self._batches_seen_since_last_saving = 0
        self._save_at_epoch_end = False

    def _backups(self) -> list:
        """The backups in ``backup_dir``, oldest first, as ((epoch, batch), path). (A save that
        stopped midway leaves only its hidden staging folder, never one of these names.)"""
        if not os.path.isdir(self.backup_dir):
            return []
        found = []
        for name in os.listdir(self.backup_dir):
            match = self._NAME.fullmatch(name)
            if match:
                found.append(((int(match[1]), int(match[2])), os.path.join(self.backup_dir, name)))
        return sorted(found)

    def on_train_begin(self, logs=None):
        self._current_epoch = 0
        self._batches_seen_since_last_saving = 0
        self._save_at_epoch_end = False
        if os.path.exists(self.backup_dir) and not os.path.isdir(self.backup_dir):
            raise NotADirectoryError(f"BackupAndRestore: backup_dir {self.backup_dir} is a file, not a folder")
        backups = self._backups()
        for _, path in backups:  # (before any is restored, or deleted as older than this model's)
            self._refuse_another_models(path)
        error = None
        for i in range(len(backups) - 1, -1, -1):  # the latest first, then older ones
            at, path = backups[i]
            try:
                state = self.model._restore(path)
            except (OSError, ValueError, KcompileError) as e:  # (missing, damaged, another model's)
                error = error or e
                continue
            if error is not None:
                warnings.warn(f"BackupAndRestore: the latest backup could not be read ({error}); "
                              f"going on from the previous one, {path}", stacklevel=2)
                for _, newer in backups[i + 1:]:  # (unreadable, and ahead of where training goes on)
                    shutil.rmtree(newer, ignore_errors=True)
            if state.get("seed") != self.model.seed:
                warnings.warn(f"BackupAndRestore: the backup was taken with seed {state.get('seed')}, this model "
                              f"has seed {self.model.seed}: the data's order and the dropout noise will differ "
                              f"from the interrupted run's", stacklevel=2)
            self.model._resume_at = at  # (read by fit after on_train_begin, as Keras's model._initial_epoch)
            return
        if error is not None:
            raise error

    def _refuse_another_models(self, path):
        """A backup of another model (two models' fits given one backup_dir) is refused: restored,
        it would start this model from the other's weights (or fail in set_weights, for other
        shapes), and this fit's backups would delete it."""
        from pathlib import Path
        from .runtime.checkpoint import find_manifest, read_json
        try:
            theirs = read_json(find_manifest(Path(path)))
        except (OSError, ValueError, KcompileError):
            return  # (unreadable: on_train_begin's restore says why, or falls back)
        mine = self.model.manifest
        shapes = [[(p.get("name"), list(p.get("shape", []))) for p in m.get("parameters", [])] for m in (theirs, mine)]
        if theirs.get("model") != mine["model"] or shapes[0] != shapes[1]:
            what = f"model {theirs.get('model')}" + (" (other weights)" if theirs.get("model") == mine["model"] else "")
            raise ValueError(f"BackupAndRestore: {path} holds a backup of {what}, not of this model {mine['model']}; "
                             f"a backup_dir holds one model's backups: give each model's fit a backup_dir of its own")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_seen_since_last_saving += 1  # (one call per batch here: no steps_per_execution)
        if self._batches_seen_since_last_saving >= self.save_freq:
            if batch + 1 == (self.params or {}).get("steps"):
                # the epoch's last batch: saved at the epoch's end, as epoch E+1, batch 0, so that a
                # resumed run still validates and ends epoch E when the interruption came before
                self._save_at_epoch_end = True
                return
            self._batches_seen_since_last_saving = 0
            self._save((self._current_epoch, batch + 1))

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch" or self._save_at_epoch_end:
            self._save_at_epoch_end = False
            self._batches_seen_since_last_saving = 0
            self._save((epoch + 1, 0))

    def _save(self, at):
        if _stopped_on_a_nonfinite_loss(self.model):
            return
        epoch, batch = at
        path = self.model.save(os.path.join(self.backup_dir, f"epoch-{epoch}-batch-{batch}"))
        # Only once the new backup is in place, the older ones go (all but one with double_checkpoint).
        keep = 2 if self.double_checkpoint else 1
        backups = [p for _, p in self._backups() if os.path.abspath(p) != os.path.abspath(path)]
        for old in backups[:len(backups) - (keep - 1)]:
            shutil.rmtree(old, ignore_errors=True)

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint:
            return
        # Only what this callback wrote goes (Keras removes backup_dir whole, whatever it holds).
        for _, path in self._backups():
            shutil.rmtree(path, ignore_errors=True)
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):  # a stopped save's staging folder, .epoch-E-batch-B.*
                if name.startswith(".") and self._NAME.match(name[1:]):
                    shutil.rmtree(os.path.join(self.backup_dir, name), ignore_errors=True)
            try:
                os.rmdir(self.backup_dir)
            except OSError:  # (other files in it: left with them)
                pass
