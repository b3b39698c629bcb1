"""kcompile.callbacks: Keras 3 callback semantics, driven by a scripted fit loop on a
fake model that implements the documented protocol."""
import io
import math
import os

import numpy as np
import pytest

from kcompile.callbacks import (Callback, CallbackList, CSVLogger, EarlyStopping,
                                History, LambdaCallback, LearningRateScheduler,
                                ModelCheckpoint, ProgbarLogger, ReduceLROnPlateau, TerminateOnNaN)


class FakeModel:
    """The protocol callbacks rely on. Each training step sets the weights to
    the current epoch number, so restored weights tell which epoch they are from."""

    def __init__(self, learning_rate=0.1):
        self.stop_training = False
        self._lr = learning_rate
        self.weights = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
        self.saved = []          # (kind, path, epoch the weights are from)
        self.lr_seen = []        # learning rate used at each training step

    @property
    def learning_rate(self):
        return self._lr

    @learning_rate.setter
    def learning_rate(self, value):
        self._lr = float(value)

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.array(w) for w in weights]

    def train_step(self, epoch):
        self.lr_seen.append(self._lr)
        self.weights = [np.full_like(w, epoch) for w in self.weights]

    def current_epoch_weights(self):
        return int(self.weights[0][0, 0])

    def save(self, path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "weights.npz"), "wb") as f:
            np.savez(f, *self.weights)
        self.saved.append(("model", str(path), self.current_epoch_weights()))

    def save_weights(self, path):
        with open(path, "wb") as f:
            np.savez(f, *self.weights)
        self.saved.append(("weights", str(path), self.current_epoch_weights()))


def fit(model, callbacks, epoch_logs, steps=2, batch_loss=None, verbose=0):
    """A minimal fit loop calling the hooks in Keras' order. ``epoch_logs[i]`` is the
    dict of epoch-end logs of epoch i; ``batch_loss(epoch, batch)`` the batch loss."""
    cbl = CallbackList(callbacks, add_history=True, model=model,
                       epochs=len(epoch_logs), steps=steps, verbose=verbose)
    model.stop_training = False
    cbl.on_train_begin()
    for epoch, end_logs in enumerate(epoch_logs):
        cbl.on_epoch_begin(epoch)
        for batch in range(steps):
            cbl.on_train_batch_begin(batch)
            model.train_step(epoch)
            loss = batch_loss(epoch, batch) if batch_loss else 1.0
            cbl.on_train_batch_end(batch, {"loss": loss})
            if model.stop_training:
                break
        logs = dict(end_logs)
        cbl.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbl.on_train_end()
    return cbl.history


def val_losses(*values):
    return [{"loss": 1.0, "val_loss": v} for v in values]


# ---- History / CallbackList / Callback ---------------------------------------------

def test_history_records_epoch_logs_and_params():
    model = FakeModel()
    logs = [{"loss": 0.9, "accuracy": 0.5, "val_loss": 1.0},
            {"loss": 0.7, "accuracy": 0.6, "val_loss": 0.8},
            {"loss": 0.5, "accuracy": 0.7, "val_loss": 0.9}]
    h = fit(model, [], logs, steps=4)
    assert isinstance(h, History)
    assert h.epoch == [0, 1, 2]
    assert h.history == {"loss": [0.9, 0.7, 0.5], "accuracy": [0.5, 0.6, 0.7],
                         "val_loss": [1.0, 0.8, 0.9]}
    assert h.params == {"epochs": 3, "steps": 4, "verbose": 0}
    assert h.model is model and model.history is h


def test_callback_list_fans_out_in_order_and_passes_logs():
    events = []

    class Recorder(Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_train_begin(self, logs=None):
            events.append((self.name, "train_begin", self.model is model, self.params["epochs"]))

        def on_epoch_end(self, epoch, logs=None):
            events.append((self.name, "epoch_end", epoch, logs["val_loss"]))

        def on_batch_end(self, batch, logs=None):      # Keras alias of on_train_batch_end
            events.append((self.name, "batch_end", batch, logs["loss"]))

        def on_test_begin(self, logs=None):
            events.append((self.name, "test_begin"))

        def on_predict_batch_end(self, batch, logs=None):
            events.append((self.name, "predict_batch_end", batch))

    model = FakeModel()
    a, b = Recorder("a"), Recorder("b")
    fit(model, [a, b], val_losses(0.5), steps=1, batch_loss=lambda e, b: 2.5)
    assert events == [
        ("a", "train_begin", True, 1), ("b", "train_begin", True, 1),
        ("a", "batch_end", 0, 2.5), ("b", "batch_end", 0, 2.5),
        ("a", "epoch_end", 0, 0.5), ("b", "epoch_end", 0, 0.5),
    ]
    events.clear()
    cbl = CallbackList([a, b])
    cbl.on_test_begin()
    cbl.on_predict_batch_end(3)
    assert events == [("a", "test_begin"), ("b", "test_begin"),
                      ("a", "predict_batch_end", 3), ("b", "predict_batch_end", 3)]


def test_callback_list_defaults_and_existing_history():
    h = History()
    cbl = CallbackList([h], add_history=True, add_progbar=True)
    assert cbl.history is h
    assert [type(c) for c in cbl] == [History, ProgbarLogger]
    cbl2 = CallbackList(None, add_history=True)
    assert len(cbl2) == 1 and isinstance(cbl2.history, History)
    model = FakeModel()
    cbl2.set_model(model)
    cbl2.set_params({"epochs": 2})
    extra = Callback()
    cbl2.append(extra)
    assert extra.model is model and extra.params == {"epochs": 2}


def test_base_callback_hooks_are_noops():
    cb = Callback()
    for hook in ["on_train_begin", "on_train_end", "on_test_begin", "on_test_end",
                 "on_predict_begin", "on_predict_end"]:
        assert getattr(cb, hook)({}) is None
    for hook in ["on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
                 "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end",
                 "on_predict_batch_begin", "on_predict_batch_end"]:
        assert getattr(cb, hook)(0, {}) is None


# ---- EarlyStopping --------------------------------------------------------------------

def run_es(values, monitor="val_loss", **kw):
    model = FakeModel()
    es = EarlyStopping(monitor=monitor, **kw)
    h = fit(model, [es], [{monitor: v} for v in values])
    return es, h, model


def test_early_stopping_patience():
    es, h, model = run_es([1.0, 0.9, 0.95, 0.92, 0.5, 0.4], patience=2)
    # best 0.9 at epoch 1; epochs 2 and 3 don't improve -> stop at the end of epoch 3
    assert es.stopped_epoch == 3 and model.stop_training
    assert h.epoch == [0, 1, 2, 3]
    assert es.best == 0.9 and es.best_epoch == 1 and es.wait == 2


def test_early_stopping_patience_zero_stops_on_first_non_improvement():
    es, h, _ = run_es([1.0, 0.5, 0.5, 0.1], patience=0)
    assert es.stopped_epoch == 2 and h.epoch == [0, 1, 2]   # equal is not an improvement


def test_early_stopping_runs_out_of_epochs():
    es, h, model = run_es([1.0, 0.9, 0.8, 0.7], patience=1)
    assert es.stopped_epoch == 0 and not model.stop_training
    assert h.epoch == [0, 1, 2, 3]


def test_early_stopping_min_delta():
    # 0.95 is better than 1.0 but not by min_delta=0.1: no improvement -> stop
    es, h, _ = run_es([1.0, 0.95, 0.5], patience=1, min_delta=0.1)
    assert es.stopped_epoch == 1 and es.best == 1.0
    # 0.85 improves by more than 0.1; 0.8 then doesn't improve on 0.85 by 0.1
    es, h, _ = run_es([1.0, 0.85, 0.8, 0.1], patience=1, min_delta=-0.1)  # sign ignored
    assert es.stopped_epoch == 2 and es.best == 0.85


def test_early_stopping_auto_mode_max_for_accuracy():
    es, h, _ = run_es([0.5, 0.6, 0.55, 0.58, 0.9], monitor="val_accuracy", patience=2)
    assert es.monitor_op is np.greater
    assert es.stopped_epoch == 3 and es.best == 0.6
    for name in ["val_acc", "auc", "val_precision", "recall", "val_categorical_accuracy"]:
        assert EarlyStopping(monitor=name).monitor_op is np.greater
    for name in ["loss", "val_loss", "val_mae"]:
        assert EarlyStopping(monitor=name).monitor_op is np.less


def test_early_stopping_explicit_mode():
    # 'min' on an accuracy: the rise at epoch 1 is not an improvement
    es, _, _ = run_es([0.5, 0.6, 0.7], monitor="val_accuracy", patience=1, mode="min")
    assert es.stopped_epoch == 1
    es, _, _ = run_es([1.0, 2.0, 3.0, 2.5], monitor="val_loss", patience=1, mode="max")
    assert es.stopped_epoch == 3
    with pytest.warns(UserWarning, match="mode bogus is unknown"):
        assert EarlyStopping(mode="bogus").mode == "auto"


def test_early_stopping_baseline():
    # Improvements that don't beat the baseline don't reset wait
    es, h, _ = run_es([0.9, 0.95], patience=2, baseline=0.5)
    assert es.stopped_epoch == 1 and h.epoch == [0, 1]
    es, h, _ = run_es([0.9, 0.95, 0.97], patience=2)          # same without baseline
    assert es.stopped_epoch == 2
    # beating the baseline resets wait as usual
    es, h, _ = run_es([0.4, 0.45, 0.3, 0.35, 0.36], patience=2, baseline=0.5)
    assert es.stopped_epoch == 4 and es.best == 0.3


def test_early_stopping_start_from_epoch():
    es, h, _ = run_es([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], patience=1, start_from_epoch=2)
    assert es.best == 3.0 and es.best_epoch == 2 and es.stopped_epoch == 3


def test_early_stopping_restore_best_weights_when_stopped(capsys):
    es, h, model = run_es([0.5, 0.3, 0.4, 0.6, 0.1], patience=2,
                          restore_best_weights=True, verbose=1)
    assert es.stopped_epoch == 3
    assert model.current_epoch_weights() == 1
    assert all((w == 1).all() for w in model.weights)
    assert capsys.readouterr().out == (
        "Epoch 4: early stopping\n"
        "Restoring model weights from the end of the best epoch: 2.\n")


def test_early_stopping_restore_best_weights_when_epochs_run_out():
    # Keras 3 restores at train end even without early stopping
    es, h, model = run_es([0.5, 0.3, 0.4], patience=5, restore_best_weights=True)
    assert es.stopped_epoch == 0 and h.epoch == [0, 1, 2]
    assert model.current_epoch_weights() == 1


def test_early_stopping_without_restore_keeps_last_weights(capsys):
    es, h, model = run_es([0.5, 0.3, 0.4, 0.6], patience=2)
    assert model.current_epoch_weights() == 3
    assert capsys.readouterr().out == ""       # verbose=0


def test_early_stopping_missing_monitor_warns_and_never_stops():
    model = FakeModel()
    es = EarlyStopping(monitor="val_accuracy", patience=0)
    with pytest.warns(UserWarning, match=r"`val_accuracy` which is not available\. "
                                         r"Available metrics are: loss,val_loss"):
        h = fit(model, [es], val_losses(1.0, 2.0, 3.0))
    assert h.epoch == [0, 1, 2] and es.stopped_epoch == 0


def test_early_stopping_is_reusable():
    model = FakeModel()
    es = EarlyStopping(patience=1)
    fit(model, [es], val_losses(1.0, 2.0))
    assert es.stopped_epoch == 1
    h = fit(model, [es], val_losses(5.0, 4.0, 3.0))
    assert es.stopped_epoch == 0 and es.best == 3.0 and h.epoch == [0, 1, 2]


# ---- ModelCheckpoint --------------------------------------------------------------------

def test_checkpoint_every_epoch_formats_filepath(tmp_path):
    model = FakeModel()
    cp = ModelCheckpoint(tmp_path / "ckpt" / "model-{epoch:02d}-{val_loss:.2f}")
    fit(model, [cp], val_losses(0.5, 0.321, 0.4))
    names = [os.path.basename(p) for _, p, _ in model.saved]
    assert names == ["model-01-0.50", "model-02-0.32", "model-03-0.40"]
    assert [kind for kind, _, _ in model.saved] == ["model"] * 3
    assert [e for _, _, e in model.saved] == [0, 1, 2]
    assert sorted(os.listdir(tmp_path / "ckpt")) == names   # folder created


def test_checkpoint_save_best_only(tmp_path, capsys):
    model = FakeModel()
    path = tmp_path / "best"
    cp = ModelCheckpoint(path, save_best_only=True, verbose=1)
    fit(model, [cp], val_losses(0.5, 0.6, 0.3, 0.3, 0.4))
    assert [(p, e) for _, p, e in model.saved] == [(str(path), 0), (str(path), 2)]
    assert cp.best == 0.3
    out = capsys.readouterr().out
    assert f"Epoch 1: val_loss improved from None to 0.50000, saving model to {path}\n" in out  # (Keras 3.15's)
    assert f"Epoch 1: finished saving model to {path}\n" in out
    assert "Epoch 2: val_loss did not improve from 0.50000" in out
    assert f"Epoch 3: val_loss improved from 0.50000 to 0.30000, saving model to {path}" in out
    assert "Epoch 4: val_loss did not improve from 0.30000" in out


def test_checkpoint_weights_only_max_mode_and_threshold(tmp_path):
    model = FakeModel()
    cp = ModelCheckpoint(tmp_path / "w-{epoch}.npz", monitor="val_accuracy",
                         save_best_only=True, save_weights_only=True,
                         initial_value_threshold=0.6)
    logs = [{"val_accuracy": a} for a in (0.5, 0.7, 0.65, 0.8)]
    fit(model, [cp], logs)
    assert [(k, os.path.basename(p)) for k, p, _ in model.saved] == [
        ("weights", "w-2.npz"), ("weights", "w-4.npz")]
    assert (tmp_path / "w-4.npz").is_file()


def test_checkpoint_save_freq_batches(tmp_path):
    model = FakeModel()
    cp = ModelCheckpoint(tmp_path / "e{epoch}-b{batch}", save_freq=3)
    fit(model, [cp], val_losses(1.0, 1.0, 1.0), steps=2)
    # 6 batches in all: saved after the 3rd and the 6th
    assert [os.path.basename(p) for _, p, _ in model.saved] == ["e2-b1", "e3-b2"]
    with pytest.raises(ValueError, match="save_freq"):
        ModelCheckpoint("x", save_freq="batch")


def test_checkpoint_missing_monitor_and_bad_placeholder(tmp_path):
    model = FakeModel()
    cp = ModelCheckpoint(tmp_path / "m", monitor="val_auc", save_best_only=True)
    with pytest.warns(UserWarning, match="Can save best model only with val_auc available"):
        fit(model, [cp], val_losses(1.0, 2.0))
    assert [os.path.basename(p) for _, p, _ in model.saved] == ["m", "m"]  # saved anyway, as Keras 3
    cp = ModelCheckpoint(tmp_path / "m-{val_mse:.2f}")
    with pytest.raises(KeyError, match="Failed to format this callback filepath"):
        fit(model, [cp], val_losses(1.0))


# ---- ReduceLROnPlateau ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,rates", [
    # (the rates after each epoch, as Keras 3.15's ReduceLROnPlateau set them on these losses)
    (dict(patience=2), [0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001, 1e-4, 1e-4, 1e-5, 1e-5]),
    (dict(patience=1, cooldown=2, factor=0.5),
     [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125, 0.00625, 0.00625, 0.003125]),
    (dict(patience=0, min_lr=0.02, factor=0.5), [0.1, 0.1, 0.05, 0.025] + [0.02] * 8),
    (dict(patience=1, min_delta=0.0), [0.1, 0.1] + [10.0 ** -k for k in range(2, 6)] + [1e-5] + [10.0 ** -k for k in
                                                                                          range(6, 11)]),
])
def test_reduce_lr_on_plateau_steps_as_keras(kwargs, rates):
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.89, 0.9, 0.91, 0.92, 0.93, 0.94]
    model = FakeModel(learning_rate=0.1)
    history = fit(model, [ReduceLROnPlateau(**kwargs)], val_losses(*losses), steps=1)
    np.testing.assert_allclose(history.history["learning_rate"], [0.1] + rates[:-1], rtol=1e-9)  # (at epoch end,
    np.testing.assert_allclose(model.learning_rate, rates[-1], rtol=1e-9)                        # before reducing)
    np.testing.assert_allclose(model.lr_seen, [0.1] + rates[:-1], rtol=1e-9)  # each epoch trains at the rate set


def test_reduce_lr_on_plateau_checks_its_factor_and_warns_without_its_monitor():
    with pytest.raises(ValueError, match="factor >= 1.0"):
        ReduceLROnPlateau(factor=1.0)
    model = FakeModel(learning_rate=0.1)
    with pytest.warns(UserWarning, match="conditioned on metric `val_auc` which is not available"):
        fit(model, [ReduceLROnPlateau(monitor="val_auc", patience=0)], val_losses(1.0, 2.0))
    assert model.learning_rate == 0.1


# ---- LearningRateScheduler ---------------------------------------------------------------

def test_lr_scheduler_sets_rate_each_epoch_and_logs_it(capsys):
    model = FakeModel(learning_rate=0.1)
    sched = LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr * 0.5, verbose=1)
    h = fit(model, [sched], val_losses(1.0, 1.0, 1.0), steps=2)
    assert model.lr_seen == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert h.history["learning_rate"] == [0.1, 0.05, 0.025]
    assert model.learning_rate == 0.025
    out = capsys.readouterr().out
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.05." in out


def test_lr_scheduler_single_argument_schedule_and_optimizer_owner():
    class Opt:
        learning_rate = 1.0

    class KerasLike:
        stop_training = False
        optimizer = Opt()

    model = KerasLike()
    sched = LearningRateScheduler(lambda epoch: 10.0 ** -epoch)
    sched.set_model(model)
    sched.on_epoch_begin(3)
    assert model.optimizer.learning_rate == pytest.approx(1e-3)
    logs = {}
    sched.on_epoch_end(3, logs)
    assert logs == {"learning_rate": pytest.approx(1e-3)}


def test_lr_scheduler_rejects_non_numbers():
    sched = LearningRateScheduler(lambda epoch, lr: "fast")
    sched.set_model(FakeModel())
    with pytest.raises(ValueError, match="should be a float"):
        sched.on_epoch_begin(0)


# ---- CSVLogger --------------------------------------------------------------------------

LOGS = [{"loss": 0.9, "accuracy": 0.5, "val_loss": 1.25},
        {"loss": 0.75, "accuracy": 0.625, "val_loss": 1.0}]


def test_csv_logger_writes_header_and_rows(tmp_path):
    path = tmp_path / "log.csv"
    fit(FakeModel(), [CSVLogger(path)], LOGS)
    assert path.read_text() == ("epoch,accuracy,loss,val_loss\n"
                                "0,0.5,0.9,1.25\n"
                                "1,0.625,0.75,1.0\n")
    assert path.read_bytes().count(b"\r\n") == 3  # (Keras's csv.excel lines)


def test_csv_logger_flushes_every_epoch(tmp_path):
    path = tmp_path / "log.csv"
    contents = []
    spy = LambdaCallback(on_epoch_end=lambda epoch, logs: contents.append(path.read_text()))
    fit(FakeModel(), [CSVLogger(path), spy], LOGS)
    assert contents == ["epoch,accuracy,loss,val_loss\n0,0.5,0.9,1.25\n",
                        "epoch,accuracy,loss,val_loss\n0,0.5,0.9,1.25\n1,0.625,0.75,1.0\n"]


def test_csv_logger_append_and_overwrite(tmp_path):
    path = tmp_path / "log.csv"
    fit(FakeModel(), [CSVLogger(path, append=True)], LOGS[:1])      # new file: header
    fit(FakeModel(), [CSVLogger(path, append=True)], LOGS)          # no second header
    assert path.read_text() == ("epoch,accuracy,loss,val_loss\n"
                                "0,0.5,0.9,1.25\n"
                                "0,0.5,0.9,1.25\n"
                                "1,0.625,0.75,1.0\n")
    fit(FakeModel(), [CSVLogger(path)], LOGS[1:])                   # append=False rewrites
    assert path.read_text() == "epoch,accuracy,loss,val_loss\n0,0.625,0.75,1.0\n"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    fit(FakeModel(), [CSVLogger(empty, append=True)], LOGS[:1])
    assert empty.read_text().startswith("epoch,accuracy,loss,val_loss\n")


def test_csv_logger_separator_missing_val_keys_and_numpy_values(tmp_path):
    path = tmp_path / "log.tsv"
    logs = [{"loss": np.float32(0.5)}, {"loss": np.array(0.25), "val_loss": 0.125}]
    fit(FakeModel(), [CSVLogger(path, separator="\t")], logs)
    assert path.read_text() == ("epoch\tloss\tval_loss\n"
                                "0\t0.5\tNA\n"
                                "1\t0.25\t0.125\n")


# ---- TerminateOnNaN -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_terminate_on_nan(bad, capsys):
    model = FakeModel()
    h = fit(model, [TerminateOnNaN()], val_losses(1.0, 1.0, 1.0), steps=4,
            batch_loss=lambda e, b: bad if (e, b) == (1, 2) else 0.5)
    assert model.stop_training
    assert h.epoch == [0, 1]
    assert len(model.lr_seen) == 4 + 3                 # stopped right after batch 2
    assert capsys.readouterr().out == "Batch 2: Invalid loss, terminating training\n"


def test_terminate_on_nan_ignores_finite_losses(capsys):
    model = FakeModel()
    h = fit(model, [TerminateOnNaN()], val_losses(1.0, 1.0), steps=3)
    assert not model.stop_training and h.epoch == [0, 1]
    assert capsys.readouterr().out == ""


# ---- LambdaCallback -------------------------------------------------------------------------

def test_lambda_callback():
    calls = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: calls.append("begin"),
        on_epoch_begin=lambda epoch, logs: calls.append(f"e{epoch}"),
        on_train_batch_end=lambda batch, logs: calls.append(f"b{batch}:{logs['loss']}"),
        on_epoch_end=lambda epoch, logs: calls.append(f"end{epoch}:{logs['val_loss']}"),
        on_train_end=lambda logs: calls.append("done"),
        on_test_end=lambda logs: calls.append("test_end"),
    )
    fit(FakeModel(), [cb], val_losses(0.5, 0.25), steps=2)
    assert calls == ["begin", "e0", "b0:1.0", "b1:1.0", "end0:0.5",
                     "e1", "b0:1.0", "b1:1.0", "end1:0.25", "done"]
    cb.on_test_end({})
    assert calls[-1] == "test_end"
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_epoch_ending=print)


def test_lambda_callback_can_stop_training():
    model = FakeModel()
    stopper = LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(model, "stop_training", epoch == 1))
    h = fit(model, [stopper], val_losses(1, 1, 1, 1))
    assert h.epoch == [0, 1]


# ---- ProgbarLogger ----------------------------------------------------------------------------

class _StillClock:
    def __call__(self):
        return 50.0


def test_progbar_logger_verbose2():
    out = io.StringIO()
    pl = ProgbarLogger(stream=out, clock=_StillClock())
    sched = LearningRateScheduler(lambda epoch, lr: lr / 10)
    logs = [{"accuracy": 0.9, "loss": 0.3, "val_accuracy": 0.875, "val_loss": 0.35},
            {"accuracy": 0.95, "loss": 0.2, "val_accuracy": 0.9, "val_loss": 0.3}]
    fit(FakeModel(learning_rate=1.0), [sched, pl], logs, steps=469, verbose=2)
    assert out.getvalue() == (
        "Epoch 1/2\n"
        "469/469 - 0s - 0s/step - accuracy: 0.9000 - loss: 0.3000 - val_accuracy: 0.8750"
        " - val_loss: 0.3500 - learning_rate: 0.1000\n"
        "Epoch 2/2\n"
        "469/469 - 0s - 0s/step - accuracy: 0.9500 - loss: 0.2000 - val_accuracy: 0.9000"
        " - val_loss: 0.3000 - learning_rate: 0.0100\n")


def test_progbar_logger_verbose1_non_tty_and_verbose0():
    out = io.StringIO()
    fit(FakeModel(), [ProgbarLogger(stream=out, clock=_StillClock())],
        val_losses(0.5), steps=3, verbose=1)
    assert out.getvalue() == "3/3 " + "━" * 20 + " 0s 0s/step - loss: 1.0000 - val_loss: 0.5000\n"
    out = io.StringIO()
    fit(FakeModel(), [ProgbarLogger(stream=out)], val_losses(0.5, 0.4), steps=3, verbose=0)
    assert out.getvalue() == ""


def test_model_checkpoint_takes_weights_files_only():
    """Weights go to .npz or Keras 3's .weights.h5 (as Keras 3 asks of save_weights_only); a .keras
    or plain .h5 name would promise Keras's model config too."""
    from kcompile.callbacks import ModelCheckpoint
    for name in ("ck/model-{epoch:02d}.keras", "ck/model-{epoch:02d}.h5", "ck/model-{epoch:02d}.txt"):
        with pytest.raises(ValueError, match="kcompile saves weights as .npz or as Keras 3's .weights.h5"):
            ModelCheckpoint(name, save_weights_only=True)
    ModelCheckpoint("ck/model-{epoch:02d}.weights.npz", save_weights_only=True)
    ModelCheckpoint("ck/model-{epoch:02d}.weights.h5", save_weights_only=True)
    # a whole checkpoint is a folder: not under a Keras file's name, which Keras could not open
    for name in ("ck/model-{epoch:02d}.keras", "ck/model.weights.h5"):
        with pytest.raises(ValueError, match=r"names a Keras file .*save_weights_only=True to NAME\.weights\.h5"):
            ModelCheckpoint(name)
    ModelCheckpoint("ck/model-{epoch:02d}")


def test_model_checkpoint_writes_keras_weights_files(tmp_path):
    pytest.importorskip("h5py")
    import kcompile
    from kcompile.callbacks import ModelCheckpoint
    src = """model m {
    input x: float32[3]
    y = Dense(2)
    output y
    train { loss = mse
            optimizer = SGD(0.1) }
}"""
    m = kcompile.compile_string(src)
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    m.fit(x, y, epochs=2, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "w-{epoch}.weights.h5"),
                                                                 save_weights_only=True)])
    other = kcompile.compile_string(src, seed=5)
    other.load_weights(tmp_path / "w-2.weights.h5")
    for a, b in zip(other.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
