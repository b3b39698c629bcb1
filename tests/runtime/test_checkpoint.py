"""kcompile.load checks a build or checkpoint folder: a damaged, foreign or newer file is a
KcompileError naming the file and what is wrong, at load, not an error inside onnxruntime later."""
import json

import numpy as np
import pytest

import kcompile

MLP = """model mlp {
    input x: float32[4]
    h = Dense(8, activation=relu)(x)
    probs = Dense(3, activation=softmax)(h)
    output probs
    train {
        loss = categorical_crossentropy
        optimizer = Adam()
    }
}
"""


X, Y = np.ones((4, 4), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = kcompile.compile_string(MLP)
    model.fit(X, Y, verbose=0)
    return model.save(tmp_path_factory.mktemp("ck") / "mlp")


def damage(folder, tmp_path, name, change):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    change(copy / name)
    return copy


def edit_manifest(fn):
    def change(path):
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps(fn(manifest)))
    return change


def rewrite_npz(fn):
    def change(path):
        with np.load(path) as data:
            arrays = [data[k] for k in sorted(data.files)]
        np.savez(path, **{f"{i:04d}": a for i, a in enumerate(fn(arrays))})
    return change


def cut(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


CASES = {
    "manifest {}": ("manifest.json", edit_manifest(lambda m: {}), "its format is None, not 'kcompile-build'"),
    "format x": ("manifest.json", edit_manifest(lambda m: {**m, "format": "x"}), "its format is 'x'"),
    "format_version 99": ("manifest.json", edit_manifest(lambda m: {**m, "format_version": 99}),
                          "format_version 99: kcompile .* reads format_version 1 \\(a newer kcompile"),
    "no files": ("manifest.json", edit_manifest(lambda m: {k: v for k, v in m.items() if k != "files"}),
                 "no 'files' entry"),
    "truncated manifest": ("manifest.json", cut, "manifest.json: not valid JSON"),
    "reversed parameters": ("manifest.json", edit_manifest(lambda m: {**m, "parameters": m["parameters"][::-1]}),
                            "weights.npz: weight .* is float32\\[4, 8\\]; the manifest says float32\\[3\\]"),
    "a weight renamed": ("manifest.json", lambda p: p.write_text(p.read_text().replace('"dense/bias"', '"dense/biasX"')),
                         "it lists weight dense/biasX, which none of the folder's training graphs takes"),
    "float64 weights": ("weights.npz", rewrite_npz(lambda ws: [w.astype(np.float64) for w in ws]),
                        "weight dense/kernel is float64\\[4, 8\\]; the manifest says float32\\[4, 8\\]"),
    "wrong shape": ("weights.npz", rewrite_npz(lambda ws: [np.zeros((2, 2), np.float32)] + ws[1:]),
                    "weight dense/kernel is float32\\[2, 2\\]"),
    "a weight missing": ("weights.npz", rewrite_npz(lambda ws: ws[:-1]), "holds 3 arrays .* lists 4 weights"),
    "truncated weights": ("weights.npz", cut, "weights.npz: not a readable .npz file"),
    "object weights": ("weights.npz", lambda p: np.savez(p, **{"0000": np.array([None, 1], dtype=object)}),
                       "object arrays"),
    "truncated train step": ("train_step.onnx", cut, "train_step.onnx: not a readable ONNX file"),
    "another model's graph": ("mlp.onnx", lambda p: p.write_bytes(kcompile.compile_string(
        MLP.replace("float32[4]", "float32[5]")).onnx_model().SerializeToString()),
        "mlp.onnx: its graph's x is \\['N', 5\\]; the manifest's model mlp has x \\['N', 4\\]"),
    "bad state": ("state.json", cut, "state.json: not valid JSON"),
    "state without slots": ("state.json", lambda p: p.write_text('{"iterations": 1, "epoch": 1, "seed": 0}'),
                            "state.json: a checkpoint's state needs"),
    "truncated optimizer": ("optimizer.npz", cut, "optimizer.npz: not a readable .npz file"),
    "scrambled weights": ("weights.npz", lambda p: p.write_bytes(p.read_bytes()[:100] + b"garbage!" * 10
                                                               + p.read_bytes()[180:]),
                          "weights.npz: (an array in it is truncated or damaged|not a readable .npz file)"),
    "an op renamed": ("train_step.onnx", lambda p: p.write_bytes(p.read_bytes().replace(b"Relu", b"Relx")),
                      "train_step.onnx: its graph is not valid ONNX \\(.*Relx.*\\): damaged"),
    "no training graph": ("train_step.onnx", lambda p: p.unlink(),
                          "train_step.onnx: the file is missing; the manifest lists it as the train_step file"),
    "no optimizer slots": ("optimizer.npz", lambda p: p.unlink(), "optimizer.npz: the file is missing"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_folder_is_refused_at_load_naming_the_file(saved, tmp_path, case):
    name, change, message = CASES[case]
    folder = damage(saved, tmp_path, name, change)
    named = message if message.split(":")[0].endswith((".json", ".npz", ".onnx")) else f"{name}: .*{message}"
    with pytest.raises(kcompile.KcompileError, match=f"cannot load {folder}/{named}"):
        kcompile.load(folder)


def test_a_folder_of_several_builds_names_them(tmp_path):
    for name in ("b", "a"):
        kcompile.compile_string(f"model {name} {{\n input x: float32[2]\n y = Dense(1)(x)\n}}").save(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds 2 builds \\(a, b\\): load one of them, "
                                                f"such as {tmp_path / 'a'}"):
        kcompile.load(tmp_path)


def test_a_sound_checkpoint_loads_and_resumes(saved):
    model = kcompile.load(saved)
    assert model.iterations == 1 and model._epoch == 1 and set(model.optimizer_state()) == set(model._slots)
    # A second step from the checkpoint (Adam's moments and step count restored) lands where two
    # uninterrupted steps do.
    straight = kcompile.compile_string(MLP)
    straight.fit(X, Y, epochs=2, verbose=0)
    model.fit(X, Y, verbose=0)
    assert model.iterations == 2
    for got, want in zip(model.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_keras_keywords_of_save_save_weights_and_load_weights(tmp_path):
    """filepath=, overwrite=False (an existing file or folder kept: an error, where Keras asks),
    zipped= (a folder is never zipped) and skip_mismatch= for an .npz by names and in order."""
    import warnings
    m = kcompile.compile_string(MLP, seed=0)
    folder = m.save(filepath=tmp_path / "ck", overwrite=False, zipped=False)
    with pytest.raises(FileExistsError, match=r"save: .*ck exists, and overwrite=False keeps it"):
        m.save(tmp_path / "ck", overwrite=False)
    with pytest.raises(ValueError, match="zipped=True is not available"):
        m.save(tmp_path / "other", zipped=True)
    assert not (tmp_path / "other").exists() and (folder / "manifest.json").exists()
    weights = m.save_weights(filepath=tmp_path / "w.npz", overwrite=False)
    with pytest.raises(FileExistsError, match="save_weights: .*w.npz exists"):
        m.save_weights(weights, overwrite=False)
    m.save_weights(weights)  # (overwrite=True, the default, as Keras)

    other = kcompile.compile_string(MLP.replace("Dense(8", "Dense(5"), seed=1)
    before = other.get_weights()
    with pytest.raises(ValueError, match=r"holds weights of another model; .*has shape"):
        other.load_weights(weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other.load_weights(filepath=weights, skip_mismatch=True)
    assert any("skip_mismatch=True" in str(w.message) for w in caught)
    for got, was, mine, shape in zip(other.get_weights(), before, m.get_weights(), [p["shape"] for p in
                                                                                   other.manifest["parameters"]]):
        np.testing.assert_array_equal(got, mine if list(mine.shape) == shape else was)
    assert any(list(w.shape) != s for w, s in zip(m.get_weights(), [p["shape"] for p in other.manifest["parameters"]]))
    np.savez(tmp_path / "ordered.npz", *m.get_weights()[:-1])  # (no names: in order, as far as both go)
    before = other.get_weights()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other.load_weights(tmp_path / "ordered.npz", skip_mismatch=True)
    assert any("it lacks dense_1/bias" in str(w.message) for w in caught)
    for got, was, mine in zip(other.get_weights(), before, m.get_weights()[:-1] + [None]):
        np.testing.assert_array_equal(got, mine if mine is not None and mine.shape == was.shape else was)
    np.savez(tmp_path / "more.npz", *(m.get_weights() + [np.zeros(2)]))  # (an array more than the weights)
    with pytest.warns(UserWarning, match="it has 5 arrays, this model 4 weights"):
        m.load_weights(tmp_path / "more.npz", skip_mismatch=True)
