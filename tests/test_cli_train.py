"""`kcompile train`: trains from an .npz, reports test metrics, saves and resumes checkpoints."""
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.cli import main

ROOT = Path(__file__).resolve().parents[1]


def sample_npz(tmp_path):
    with np.load(ROOT / "examples" / "data" / "mnist_sample.npz") as d:
        x = d["x"][..., None].astype(np.float32) / 255
        y = d["y"]
    path = tmp_path / "mnist.npz"
    np.savez(path, x=x[:600], y=y[:600], x_test=x[600:800], y_test=y[600:800])
    return path


def test_train_saves_a_checkpoint_and_resumes(tmp_path, capsys):
    data = sample_npz(tmp_path)
    out = tmp_path / "ckpt"
    args = ["train", str(ROOT / "examples" / "mnist_mlp.kdl"), "--data", str(data), "-o", str(out)]
    assert main(args + ["--epochs", "2"]) == 0
    text = capsys.readouterr().out
    assert "Epoch 2/2" in text and "test: accuracy: " in text and f"saved {out}/" in text
    accuracy = float(text.split("test: accuracy: ")[1].split()[0])
    assert accuracy > 0.8
    assert kcompile.load(out).iterations == 2 * 19  # 600 samples / 32 per batch, rounded up
    assert main(args + ["--epochs", "3", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "resuming mnist_mlp" in text and "Epoch 3/3" in text and "Epoch 2/3" not in text
    assert kcompile.load(out).iterations == 3 * 19


def test_train_reports_missing_arrays_and_untrainable_models(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.zeros(3))
    assert main(["train", str(ROOT / "examples" / "mnist_mlp.kdl"), "--data", str(bad)]) == 1
    assert "needs arrays ['image', 'probs_target'] (or x and y)" in capsys.readouterr().err
    assert main(["train", str(ROOT / "examples" / "two_heads.kdl"), "--data", str(bad)]) == 1
    err = capsys.readouterr().err  # (x and y name one input and one target: not offered for two)
    assert "needs arrays ['image', 'meta', 'kind_target', 'score_target']; it has ['a']" in err
    src = tmp_path / "plain.kdl"
    src.write_text("model plain {\n  input x: float32[2]\n  y = Dense(1)\n  output y\n}\n")
    assert main(["train", str(src), "--data", str(bad)]) == 1
    assert "model plain has no train section" in capsys.readouterr().err


def test_train_data_problems_are_errors_with_exit_1(tmp_path, capsys):
    """Wrong shapes, lengths, labels, empty or unreadable data: a message and exit 1, no 'internal error'."""
    model = str(ROOT / "examples" / "iris_mlp.kdl")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 3, 30)
    cases = {
        "shape.npz": (dict(x=x[:, :3], y=y), "input 'features' expects shape (None, 4), got (30, 3)"),
        "lengths.npz": (dict(x=x, y=y[:20]), "different lengths"),
        "labels.npz": (dict(x=x, y=y + 5), "out of range for num_classes=3"),
        "empty.npz": (dict(x=x[:0], y=y[:0]), "no samples"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        assert main(["train", model, "--data", str(tmp_path / name), "-o", str(tmp_path / "ck"), "--verbose", "0"]) == 1
        err = capsys.readouterr().err
        assert message in err and "internal error" not in err, (name, err)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "shape.npz").read_bytes()[:100])
    np.save(tmp_path / "one.npy", x)
    (tmp_path / "none.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("model m {\n}\n")  # (numpy took it for a pickle, and said so)
    for name, message in [("cut.npz", "not a readable .npz file"), ("one.npy", "holds one array, not named arrays"),
                          ("none.npz", "not a readable .npz file"),
                          ("text.npz", "not an .npz file (write one with np.savez(")]:
        assert main(["train", model, "--data", str(tmp_path / name), "-o", str(tmp_path / "ck")]) == 1
        err = capsys.readouterr().err
        assert message in err and "internal error" not in err, (name, err)
    assert not (tmp_path / "ck").exists()


def test_a_file_where_the_output_folder_goes_is_left_alone(tmp_path, capsys):
    model = str(ROOT / "examples" / "iris_mlp.kdl")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(30, 4)).astype(np.float32), y=rng.integers(0, 3, 30))
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert main(["train", model, "--data", str(tmp_path / "d.npz"), "-o", str(mine), "--verbose", "0"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["build", model, "-o", str(mine)]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(NotADirectoryError, match="left as it is"):
        kcompile.compile(model).save(mine)
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "notes.txt"]
    project = tmp_path / "project"  # (a folder of the user's: refused before training, not after it)
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    assert main(["train", model, "--data", str(tmp_path / "d.npz"), "-o", str(project), "--verbose", "2"]) == 1
    out, err = capsys.readouterr()
    assert "kcompile did not write" in err and "loss:" not in out  # (no epoch ran)
    assert [p.name for p in project.iterdir()] == ["notes.txt"]


def test_bad_test_arrays_are_found_before_training(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(30, 4)).astype(np.float32), y=rng.integers(0, 3, 30),
             x_test=rng.normal(size=(10, 5)).astype(np.float32), y_test=rng.integers(0, 3, 10))
    args = ["train", str(ROOT / "examples" / "iris_mlp.kdl"), "--data", str(tmp_path / "d.npz"),
            "-o", str(tmp_path / "ck"), "--verbose", "2"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "the test arrays: input 'features' expects shape (None, 4), got (10, 5)" in err and "loss:" not in out


def test_nan_data_saves_the_last_finite_weights_and_exits_1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    x[7] = np.nan  # (the first batch's)
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, 3, 30))
    out = tmp_path / "ck"
    args = ["train", str(ROOT / "examples" / "iris_mlp.kdl"), "--data", str(tmp_path / "d.npz"), "-o", str(out),
            "--verbose", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"kcompile: error: the loss became nan at epoch 1, step 1; {out}/ holds the weights of the last finite" in err
    saved = kcompile.load(out)
    assert saved.iterations == 0
    for a, b in zip(saved.get_weights(), kcompile.compile(ROOT / "examples" / "iris_mlp.kdl").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_nan_data_in_a_later_step_saves_the_weights_of_the_step_before(tmp_path, capsys):
    """The weights saved are the last that gave a finite loss (those step k - 1 started from,
    where step k's loss is not finite), not the initial ones: the same weights as the Python
    API's fit leaves on the same data and seed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 4)).astype(np.float32)
    y = rng.integers(0, 3, 320)
    x[200] = np.nan  # (one row: its batch, after shuffling, is one of epoch 1's ten)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out, source = tmp_path / "ck", ROOT / "examples" / "iris_mlp.kdl"
    args = ["train", str(source), "--data", str(tmp_path / "d.npz"), "-o", str(out), "--verbose", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    step = int(err.split("the loss became nan at epoch 1, step ")[1].split(";")[0])
    assert step > 2  # (a later step: seed 0's shuffle)
    saved = kcompile.load(out)
    assert saved.iterations == step - 2
    api = kcompile.compile(source, seed=0)
    api.fit(x, np.eye(3, dtype=np.float32)[y], batch_size=32, epochs=1, verbose=0)
    assert api.nonfinite is not None and api.iterations == step - 2
    initial = kcompile.compile(source, seed=0).get_weights()
    for a, b, c in zip(saved.get_weights(), api.get_weights(), initial):
        assert np.isfinite(a).all() and not np.array_equal(a, c)
        np.testing.assert_array_equal(a, b)


def test_half_a_test_set_and_epochs_already_trained_are_noted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(30, 4)).astype(np.float32), y=rng.integers(0, 3, 30),
             x_test=rng.normal(size=(10, 4)).astype(np.float32))
    args = ["train", str(ROOT / "examples" / "iris_mlp.kdl"), "--data", str(tmp_path / "d.npz"),
            "-o", str(tmp_path / "ck"), "--verbose", "0", "--epochs", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"note: {tmp_path / 'd.npz'} has test inputs without test targets: no test evaluation" in out
    assert main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert f"note: {tmp_path / 'ck'}/ has trained 2 epochs already; --epochs 2 trains none" in out
    assert kcompile.load(tmp_path / "ck").epochs_done == 2


def test_bad_option_values_are_usage_errors(tmp_path, capsys):
    model = str(ROOT / "examples" / "iris_mlp.kdl")
    for args, message in [(["train", model, "--data", "d.npz", "--batch-size", "0"], "--batch-size: must be at least 1"),
                          (["train", model, "--data", "d.npz", "--epochs", "-1"], "--epochs: must be at least 1"),
                          (["train", model, "--data", "d.npz", "--validation-split", "1.5"], "below 1, got 1.5"),
                          (["build", model, "--seed", "-5"], "--seed: must be at least 0, got -5")]:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def iris_data(tmp_path, name="d.npz"):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / name, x=rng.normal(size=(30, 4)).astype(np.float32), y=rng.integers(0, 3, 30))
    return str(tmp_path / name)


def test_npz_members_that_cannot_be_read_are_errors_with_exit_1(tmp_path, capsys):
    model = str(ROOT / "examples" / "iris_mlp.kdl")
    np.savez(tmp_path / "obj.npz", x=np.array([None] * 30, dtype=object), y=np.zeros(30, np.int64))
    whole = Path(iris_data(tmp_path)).read_bytes()
    import zipfile
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as z:  # (a member cut short: numpy's EOF on its header)
        z.writestr("x.npy", np.lib.format.magic(1, 0) + b"\x76\x00{'descr'")
        z.writestr("y.npy", whole[:10])
    for name, message in [("obj.npz", "holds object arrays"), ("cut.npz", "an array in it is truncated or damaged")]:
        assert main(["train", model, "--data", str(tmp_path / name), "-o", str(tmp_path / "ck")]) == 1
        err = capsys.readouterr().err
        assert message in err and "internal error" not in err, (name, err)


def test_a_model_the_cpu_cannot_train_is_an_error_with_exit_1(tmp_path, capsys):
    src = tmp_path / "c.kdl"
    src.write_text("model c {\n input x: float64[6, 6, 2]\n Conv2D(4, 3)\n Flatten()\n y = Dense(2)\n output y\n"
                   " train {\n loss = mse\n optimizer = SGD()\n }\n}\n")
    np.savez(tmp_path / "c.npz", x=np.ones((4, 6, 6, 2)), y=np.zeros((4, 2)))
    assert main(["train", str(src), "--data", str(tmp_path / "c.npz"), "-o", str(tmp_path / "ck")]) == 1
    err = capsys.readouterr().err
    assert "cannot run its train step graph" in err and "internal error" not in err


def test_resume_refuses_a_changed_source_or_another_model(tmp_path, capsys):
    source = (ROOT / "examples" / "iris_mlp.kdl").read_text()
    data, out = iris_data(tmp_path), str(tmp_path / "ck")
    first = tmp_path / "iris_mlp.kdl"
    first.write_text(source)
    assert main(["train", str(first), "--data", data, "-o", out, "--verbose", "0"]) == 0
    capsys.readouterr()
    changed = tmp_path / "changed.kdl"
    changed.write_text(source.replace("Dense(16", "Dense(32") + "\n")
    renamed = tmp_path / "renamed.kdl"
    renamed.write_text(source.replace("model iris_mlp", "model other"))
    for src, message in [(changed, f"ck's weights do not fit {changed}'s model iris_mlp any more (the source "
                                   f"changed since: dense/bias, dense/kernel, "),
                         (renamed, "holds a checkpoint of model iris_mlp, not other")]:
        assert main(["train", str(src), "--data", data, "-o", out, "--resume", "--epochs", "2"]) == 1
        out_text, err = capsys.readouterr()
        assert message in err and "run without --resume to start afresh" in err and "loss" not in out_text, err
    assert kcompile.load(out).iterations == 1  # (left as it was)
    # a comment added: the weights still fit, and training goes on, with a note
    commented = tmp_path / "commented.kdl"
    commented.write_text(source + "# a comment\n")
    assert main(["train", str(commented), "--data", data, "-o", out, "--resume", "--epochs", "2", "--verbose", "0"]) == 0
    assert f"note: {commented} changed since" in capsys.readouterr().out
    assert kcompile.load(out).epochs_done == 2


def test_resume_from_a_damaged_checkpoint_is_an_error_with_exit_1(tmp_path, capsys):
    model, data = str(ROOT / "examples" / "iris_mlp.kdl"), iris_data(tmp_path)
    out = tmp_path / "ck"
    assert main(["train", model, "--data", data, "-o", str(out), "--verbose", "0"]) == 0
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    for name, damage in [("weights.npz", saved["weights.npz"][:50]), ("state.json", b"{"),
                         ("manifest.json", b"{}"), ("train_step.onnx", saved["train_step.onnx"][:99])]:
        (out / name).write_bytes(damage)
        assert main(["train", model, "--data", data, "-o", str(out), "--resume", "--epochs", "2"]) == 1
        err = capsys.readouterr().err
        assert f"cannot load {out / name}" in err and "internal error" not in err, (name, err)
        (out / name).write_bytes(saved[name])


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "ck"
    assert main(["train", str(ROOT / "examples" / "iris_mlp.kdl"), "--data", iris_data(tmp_path), "-o", str(out)]) == 1
    text, err = capsys.readouterr()
    assert f"cannot write the checkpoint {out}" in err and "loss:" not in text, err


def test_resume_takes_a_checkpoint_with_depthwise_conv2ds_old_kernel_name():
    """A checkpoint written before DepthwiseConv2D's kernel took Keras 3's name still fits the
    source (its weights are the same), so --resume goes on (it was refused)."""
    import types

    from kcompile.cli import _check_resumable
    from kcompile.driver import compile_source
    source = ("model m {\n    input x: float32[6, 6, 2]\n    y = DepthwiseConv2D(3)(x)\n    output y\n"
              "    train {\n        loss = mse\n        optimizer = SGD(0.1)\n    }\n}\n")
    compiled = compile_source(source, "m.kdl")
    params = [{"name": p.name.replace("/kernel", "/depthwise_kernel"), "shape": list(p.type.shape),
               "dtype": p.type.dtype} for p in compiled.graph.params.values()]
    assert params[0]["name"] == "depthwise_conv2d/depthwise_kernel"
    old = types.SimpleNamespace(name="m", manifest={"parameters": params, "source": {"sha256": ""}})
    _check_resumable(old, compiled, "ck", "m.kdl")  # (a note that the source changed, no error)
    params[0]["shape"] = [3, 3, 2, 2]
    with pytest.raises(kcompile.KcompileError, match="weights do not fit m.kdl's model m any more"):
        _check_resumable(old, compiled, "ck", "m.kdl")


def test_resume_reads_a_checkpoint_a_save_left_between_its_renames(tmp_path, capsys):
    """A save stopped between its two renames leaves the checkpoint as .NAME.old: --resume goes
    on from it (it started over), and the next save leaves no .old behind. --seed on a resumed
    checkpoint is noted as not used (the checkpoint's seed goes on)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(30, 4)).astype(np.float32), y=rng.integers(0, 3, (30, 1)))
    out = tmp_path / "ck"
    args = ["train", str(ROOT / "examples" / "iris_mlp.kdl"), "--data", str(tmp_path / "d.npz"), "-o", str(out),
            "--verbose", "0"]
    assert main(args + ["--epochs", "1"]) == 0  # (labels as [n, 1]: one-hot encoded as [n] ones)
    capsys.readouterr()
    out.rename(tmp_path / ".ck.old")
    assert main(args + ["--epochs", "2", "--resume", "--seed", "7"]) == 0
    text = capsys.readouterr().out
    assert f"resuming iris_mlp from {out}/ at epoch 1" in text
    assert "note: --seed 7 is not used: the checkpoint goes on with its seed, 0" in text
    assert kcompile.load(out).epochs_done == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["ck", "d.npz"]
