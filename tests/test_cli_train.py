"""`kcompile train`: trains from an .npz, reports test metrics, saves and resumes checkpoints."""
from pathlib import Path

import numpy as np

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
    src = tmp_path / "plain.kdl"
    src.write_text("model plain {\n  input x: float32[2]\n  y = Dense(1)\n  output y\n}\n")
    assert main(["train", str(src), "--data", str(bad)]) == 1
    assert "model plain has no train section" in capsys.readouterr().err
