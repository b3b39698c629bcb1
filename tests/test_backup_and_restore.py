"""BackupAndRestore: a fit interrupted by an exception, then resumed by a second fit with the same
callback, ends with the weights of the uninterrupted fit (the same seed gives the same shuffling
and dropout noise, which follow the step count)."""
import os
import re

import numpy as np
import pytest

import kcompile
from kcompile.callbacks import BackupAndRestore, Callback
from kcompile.errors import KcompileError

SRC = """
model small {
    input x: float32[6]
    Dense(16, activation=relu)
    Dropout(0.3)
    BatchNormalization()
    probs = Dense(3, activation=softmax)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = Adam(learning_rate=0.01)
        metrics = [accuracy]
    }
}
"""
EPOCHS, BATCH = 5, 8  # 40 samples: 5 batches an epoch


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    return x, np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]


@pytest.fixture(scope="module")
def straight():
    model = kcompile.compile_string(SRC, seed=1)
    history = model.fit(*data(), epochs=EPOCHS, batch_size=BATCH, verbose=0)
    return history.history, model.get_weights()


class Interrupt(Callback):
    """Raises at the start of epoch ``epoch`` (at its batch ``batch``, when given)."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
        if epoch == self.epoch and self.batch is None:
            raise RuntimeError("interrupted")

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise RuntimeError("interrupted")


def fit(model, *callbacks):
    return model.fit(*data(), epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=list(callbacks))


def interrupted(backup, epoch, batch=None):
    model = kcompile.compile_string(SRC, seed=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, backup, Interrupt(epoch, batch))
    return model


def backups(folder):
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def assert_same_weights(model, weights):
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fresh, batch", [(True, None), (False, 3)], ids=["fresh-model", "same-model-mid-epoch"])
def test_resumes_at_the_interrupted_epoch(tmp_path, straight, fresh, batch):
    """A fresh model compiled from the same source, or the interrupted one itself (3 steps into
    epoch 2, which the backup at epoch 2's start undoes)."""
    backup = BackupAndRestore(tmp_path / "backup")
    model = interrupted(backup, epoch=2, batch=batch)
    assert backups(tmp_path / "backup") == ["epoch-2-batch-0"]  # (epochs 0 and 1 done)
    if fresh:
        model = kcompile.compile_string(SRC, seed=1)
    history = fit(model, backup)
    assert history.epoch == [2, 3, 4]  # only the remaining epochs run
    assert history.history["loss"] == straight[0]["loss"][2:]
    assert_same_weights(model, straight[1])
    assert model.iterations == EPOCHS * 5
    assert not (tmp_path / "backup").exists()  # removed once fit ends


def test_resumes_mid_epoch_with_save_freq_batches(tmp_path, straight):
    backup = BackupAndRestore(tmp_path / "backup", save_freq=3)
    interrupted(backup, epoch=2, batch=3)  # 13 batches done: backups after batches 3, 6, 9, 12
    assert backups(tmp_path / "backup") == ["epoch-2-batch-2"]
    model = kcompile.compile_string(SRC, seed=1)
    history = fit(model, backup)
    assert history.epoch == [2, 3, 4]
    # epoch 2's logs cover the 3 batches run after the resume; the later epochs are whole again
    assert history.history["loss"][1:] == straight[0]["loss"][3:]
    assert_same_weights(model, straight[1])
    assert not (tmp_path / "backup").exists()


def test_resumes_after_a_backup_of_an_epochs_last_batch(tmp_path, straight):
    """A batch count that ends an epoch saves at the epoch's end, as the next epoch's start."""
    backup = BackupAndRestore(tmp_path / "backup", save_freq=5)
    interrupted(backup, epoch=2)
    assert backups(tmp_path / "backup") == ["epoch-2-batch-0"]
    model = kcompile.compile_string(SRC, seed=1)
    assert fit(model, backup).epoch == [2, 3, 4]
    assert_same_weights(model, straight[1])


class EpochEnds(Callback):
    """Records on_epoch_begin/on_epoch_end; raises in on_epoch_end(``fail``)."""

    def __init__(self, fail=None):
        super().__init__()
        self.fail, self.calls = fail, []

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.fail:
            raise RuntimeError("interrupted")
        self.calls.append(("end", epoch))


def test_an_epoch_whose_end_was_interrupted_ends_on_resume(tmp_path, straight):
    """Interrupted in epoch 1's end (its validation, say) before the backup of its last batch
    was saved: the resumed fit runs epoch 1's batches again and ends it, every begun epoch ending."""
    backup = BackupAndRestore(tmp_path / "backup", save_freq=5)
    model = kcompile.compile_string(SRC, seed=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, EpochEnds(fail=1), backup)  # (it raises before the backup callback's epoch end)
    assert backups(tmp_path / "backup") == ["epoch-1-batch-0"]
    log = EpochEnds()
    model = kcompile.compile_string(SRC, seed=1)
    history = fit(model, backup, log)
    assert history.epoch == [1, 2, 3, 4]
    assert log.calls == [(kind, e) for e in range(1, 5) for kind in ("begin", "end")]
    assert_same_weights(model, straight[1])


def test_double_checkpoint_falls_back_when_the_latest_backup_is_truncated(tmp_path, straight):
    backup = BackupAndRestore(tmp_path / "backup", double_checkpoint=True)
    interrupted(backup, epoch=3)
    assert backups(tmp_path / "backup") == ["epoch-2-batch-0", "epoch-3-batch-0"]
    weights = tmp_path / "backup" / "epoch-3-batch-0" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    model = kcompile.compile_string(SRC, seed=1)
    with pytest.warns(UserWarning, match="latest backup could not be read"):
        history = fit(model, backup)
    assert history.epoch == [2, 3, 4]  # from the previous backup, epoch 2 again
    assert_same_weights(model, straight[1])
    assert not (tmp_path / "backup").exists()


def test_a_truncated_backup_without_double_checkpoint_is_an_error(tmp_path):
    backup = BackupAndRestore(tmp_path / "backup")
    interrupted(backup, epoch=3)
    assert backups(tmp_path / "backup") == ["epoch-3-batch-0"]
    weights = tmp_path / "backup" / "epoch-3-batch-0" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(KcompileError, match="weights.npz"):
        fit(kcompile.compile_string(SRC, seed=1), backup)
    assert backups(tmp_path / "backup") == ["epoch-3-batch-0"]  # left for the user to look at


def test_a_crash_while_saving_keeps_the_last_good_backup(tmp_path, straight, monkeypatch):
    real_fsync, crashing = os.fsync, []

    def fsync(fd):  # (the disk fills up while epoch 2's backup is written)
        if crashing:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    class FullDisk(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                crashing.append(True)

    monkeypatch.setattr(os, "fsync", fsync)
    backup = BackupAndRestore(tmp_path / "backup")
    with pytest.raises(OSError, match="No space left"):
        fit(kcompile.compile_string(SRC, seed=1), backup, FullDisk())
    crashing.clear()
    assert os.listdir(tmp_path / "backup") == ["epoch-2-batch-0"]  # whole; the half-written one's staging gone
    model = kcompile.compile_string(SRC, seed=1)
    assert fit(model, backup).epoch == [2, 3, 4]
    assert_same_weights(model, straight[1])


def test_delete_checkpoint_false_keeps_the_backup(tmp_path, straight):
    backup = BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)
    model = kcompile.compile_string(SRC, seed=1)
    fit(model, backup)
    assert_same_weights(model, straight[1])
    assert backups(tmp_path / "backup") == ["epoch-5-batch-0"]
    again = kcompile.compile_string(SRC, seed=1)
    assert fit(again, backup).epoch == []  # as Keras: the backup says all epochs are done
    assert_same_weights(again, straight[1])


def test_delete_leaves_files_it_did_not_write(tmp_path):
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "notes.txt").write_text("mine")
    fit(kcompile.compile_string(SRC, seed=1), BackupAndRestore(tmp_path / "backup"))
    assert os.listdir(tmp_path / "backup") == ["notes.txt"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(backup_dir=""), "backup_dir must be a non-empty path, got ''"),
    (dict(backup_dir=None), "backup_dir must be a non-empty path, got None"),
    (dict(backup_dir="b", save_freq=0), "save_freq must be 'epoch' or a positive integer (a number of batches), got 0"),
    (dict(backup_dir="b", save_freq="batch"), "save_freq must be 'epoch' or a positive integer"),
    (dict(backup_dir="b", save_freq=True), "got True"),
    (dict(backup_dir="b", save_freq=False), "got False"),
    (dict(backup_dir="b", double_checkpoint="yes"), "double_checkpoint must be True or False, got 'yes'"),
    (dict(backup_dir="b", delete_checkpoint=None), "delete_checkpoint must be True or False, got None"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match="BackupAndRestore: .*" + re.escape(message)):
        BackupAndRestore(**kwargs)


def test_a_file_as_backup_dir_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        fit(kcompile.compile_string(SRC, seed=1), BackupAndRestore(tmp_path / "file"))


@pytest.mark.parametrize("other", ["model other", "width"], ids=["another-name", "other-weights"])
def test_a_backup_of_another_model_in_backup_dir_is_refused(tmp_path, other):
    """Two models' fits given one backup_dir: the other's backup is neither restored into this
    model (its weights, or set_weights' shape error) nor deleted by this fit's backups."""
    backup = BackupAndRestore(tmp_path / "shared")
    interrupted(backup, epoch=2)
    source = SRC.replace("model small", "model other") if other == "model other" else SRC.replace("Dense(16", "Dense(12")
    model = kcompile.compile_string(source, seed=1)
    with pytest.raises(ValueError, match=r"BackupAndRestore: .*epoch-2-batch-0 holds a backup of model small"
                                         r".*give each model's fit a backup_dir of its own"):
        fit(model, backup)
    assert model.iterations == 0
    assert backups(tmp_path / "shared") == ["epoch-2-batch-0"]
