"""The shipped examples: every .kdl checks, every model in them compiles and runs,
and the MNIST sample loads with the documented shapes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.driver import check_module, parse_source, read_source

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KDL_FILES = sorted(EXAMPLES.glob("*.kdl"))

# Output shapes (without the batch) of every model of every example, in output order.
EXPECTED_OUTPUTS = {
    ("mnist_mlp.kdl", "mnist_mlp"): [(10,)],
    ("mnist_cnn.kdl", "mnist_cnn"): [(10,)],
    ("mnist_augmented.kdl", "mnist_augmented"): [(10,)],
    ("two_heads.kdl", "two_heads"): [(5,), (1,)],
    ("tiny_resnet.kdl", "tiny_resnet"): [(10,)],
    ("sentiment.kdl", "sentiment"): [(1,)],
    ("gan.kdl", "generator"): [(28, 28, 1)],
    ("gan.kdl", "discriminator"): [(1,)],
    ("gan.kdl", "gan"): [(1,)],
    ("iris_mlp.kdl", "iris_mlp"): [(3,)],
    ("sequence_memory.kdl", "memory_lstm"): [(1,)],
    ("sequence_memory.kdl", "bag_of_embeddings"): [(1,)],
}


def _models(path: Path) -> list[str]:
    return [m.name for m in parse_source(read_source(path), str(path)).models()]


MODEL_CASES = [pytest.param(path, name, id=f"{path.stem}:{name}") for path in KDL_FILES for name in _models(path)]


def test_every_example_is_listed():
    found = {(p.name, name) for p in KDL_FILES for name in _models(p)}
    assert found == set(EXPECTED_OUTPUTS)


@pytest.mark.parametrize("path", KDL_FILES, ids=lambda p: p.name)
def test_example_checks(path):
    module = parse_source(read_source(path), str(path))
    diagnostics = check_module(module)
    assert diagnostics == [], "\n".join(d.render() for d in diagnostics)


def _zeros(spec, batch):
    shape = (batch,) + tuple(5 if d is None else d for d in spec.shape)
    return np.zeros(shape, dtype=spec.dtype)


@pytest.mark.parametrize("path, name", MODEL_CASES)
def test_example_compiles_and_predicts_on_zeros(path, name):
    model = kcompile.compile(path, model=name)
    batch = 3
    feeds = {spec.name: _zeros(spec, batch) for spec in model.inputs}
    out = model.predict(feeds)
    outs = out if isinstance(out, list) else [out]
    expected = EXPECTED_OUTPUTS[(path.name, name)]
    assert [tuple(o.shape) for o in outs] == [(batch,) + s for s in expected]
    assert [s.shape for s in model.outputs] == expected
    for o in outs:
        assert np.all(np.isfinite(o))


def test_softmax_heads_sum_to_one():
    model = kcompile.compile(EXAMPLES / "mnist_cnn.kdl")
    probs = model.predict(np.zeros((4, 28, 28, 1), np.float32))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_gan_freezes_the_discriminator():
    model = kcompile.compile(EXAMPLES / "gan.kdl", model="gan")
    params = {p["name"]: p["trainable"] for p in model.manifest["parameters"]}
    assert params and all(not t for n, t in params.items() if n.startswith("discriminator/"))
    assert all(t for n, t in params.items() if n.startswith("generator/"))


def test_mnist_sample():
    with np.load(EXAMPLES / "data" / "mnist_sample.npz") as data:
        assert sorted(data.files) == ["x", "y"]
        x, y = data["x"], data["y"]
    assert x.shape == (1000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (1000,) and y.dtype == np.uint8
    # the first 1,000 labels of the MNIST test set (see examples/data/README.md)
    assert np.bincount(y, minlength=10).tolist() == [85, 126, 116, 107, 110, 87, 87, 99, 89, 94]
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert 0 < x.mean() < 255 and x.max() == 255
    assert (EXAMPLES / "data" / "mnist_sample.npz").stat().st_size < 1_000_000


def test_sample_runs_through_mnist_cnn():
    with np.load(EXAMPLES / "data" / "mnist_sample.npz") as data:
        x = data["x"][:50].astype(np.float32)[..., None] / 255.0
    probs = kcompile.compile(EXAMPLES / "mnist_cnn.kdl").predict(x, batch_size=16)
    assert probs.shape == (50, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("path, name", MODEL_CASES)
def test_example_train_section_is_recorded(path, name):
    module = parse_source(read_source(path), str(path))
    has_train = any(type(s).__name__ == "Train" for s in next(m for m in module.models() if m.name == name).body)
    train = kcompile.compile(path, model=name).manifest["train"]
    if has_train:
        assert train["loss"] and train["optimizer"]["name"]
    else:
        assert train is None


@pytest.mark.parametrize("script, args, message", [
    ("train_mnist.py", ["--build", "/nonexistent-build"], "error: /nonexistent-build is not a kcompile build folder"),
    ("train_mnist.py", ["--data", "/nonexistent-data"], "error: MNIST path /nonexistent-data does not exist"),
    ("train_gan.py", ["--data", "/nonexistent-data"], "error: MNIST path /nonexistent-data does not exist"),
])
def test_example_scripts_say_a_users_mistake_without_a_traceback(script, args, message):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
