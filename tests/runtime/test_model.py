"""The Python API: weights, seeds, input checks, ONNX export, build folders, devices."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kcompile
from kcompile import ShapeMismatch
from kcompile.driver import compile_source, write_build

MLP = """
model mlp {
    input image: float32[28, 28, 1]
    Flatten()
    Dense(32, activation=relu)
    probs = Dense(10, activation=softmax)
    output probs
}
"""

TWO = """
model two {
    input a: float32[4]
    input ids: int64[3]
    e = Embedding(10, 2)(ids)
    f = Flatten()(e)
    joint = concat(a, f, axis=-1)
    score = Dense(1)(joint)
    kind = Dense(3, activation=softmax)(joint)
    output kind, score
}
"""


def test_get_weights_in_keras_order_and_layout():
    m = kcompile.compile_string(MLP)
    shapes = [w.shape for w in m.get_weights()]
    assert shapes == [(784, 32), (32,), (32, 10), (10,)]
    assert m.weight_names == ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"]
    assert m.count_params() == 784 * 32 + 32 + 330


def test_set_weights_get_weights_is_identity():
    m = kcompile.compile_string(MLP, seed=3)
    x = np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)
    before = m.predict(x)
    m.set_weights(m.get_weights())
    np.testing.assert_allclose(m.predict(x), before, rtol=1e-6, atol=1e-7)  # weights-as-inputs graph first
    for a, b in zip(m.get_weights(), kcompile.compile_string(MLP, seed=3).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (kcompile.compile_string(MLP, seed=s).get_weights() for s in (7, 7, 8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_glorot_uniform_limits_and_zero_bias():
    kernel, bias = kcompile.compile_string(MLP).get_weights()[:2]
    limit = np.sqrt(6 / (784 + 32))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert abs(kernel.mean()) < 0.01 and not bias.any()


def test_set_weights_changes_predictions_like_numpy():
    m = kcompile.compile_string(MLP)
    rng = np.random.default_rng(1)
    w = [rng.normal(0, 0.1, s.shape).astype(np.float32) for s in m.get_weights()]
    m.set_weights(w)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    h = np.maximum(x.reshape(4, -1) @ w[0] + w[1], 0)
    z = h @ w[2] + w[3]
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(m.predict(x), ref, rtol=1e-5, atol=1e-6)


def test_set_weights_rejects_wrong_shapes_and_counts():
    m = kcompile.compile_string(MLP)
    w = m.get_weights()
    with pytest.raises(ShapeMismatch, match=r"dense/kernel expects shape \(784, 32\), got \(32, 784\)"):
        m.set_weights([w[0].T] + w[1:])
    with pytest.raises(ValueError, match="has 4 weights, got 3"):
        m.set_weights(w[:3])


def test_predict_checks_shapes_and_names_them():
    m = kcompile.compile_string(MLP)
    with pytest.raises(ShapeMismatch, match=r"input 'image' expects shape \(None, 28, 28, 1\), got \(2, 784\)"
                                            r".*reshape"):
        m.predict(np.zeros((2, 784), np.float32))
    with pytest.raises(ShapeMismatch, match="expects float32 numbers, got dtype <U1"):
        m.predict(np.array([["a"]]))


def test_ids_outside_an_embedding_table_are_refused():
    """(onnxruntime's Gather failed with its own message on a large id, and took a negative id
    from the table's end without a word)"""
    m = kcompile.compile_string(TWO, seed=0)
    assert m.manifest["id_ranges"] == {"ids": 10}
    a = np.ones((2, 4), np.float32)
    for bad, shown in ((10, "from 1 to 10"), (-1, "from -1 to 1")):
        ids = np.ones((2, 3), np.int64)
        ids[1, 2] = bad
        with pytest.raises(ShapeMismatch, match=rf"input 'ids' holds ids {shown}; its Embedding table has 10 rows "
                                                r"\(ids 0 to 9\)"):
            m.predict({"a": a, "ids": ids})
    m.predict({"a": a, "ids": np.full((2, 3), 9)})
    cast = kcompile.compile_string("model c {\n    input ids: int32[2]\n    e = Embedding(10, 4)(cast(ids, int64))\n"
                                   "    output e\n}\n")  # (ids that reach the table through a Cast)
    assert cast.manifest["id_ranges"] == {"ids": 10}
    with pytest.raises(ShapeMismatch, match="input 'ids' holds ids from -1 to 9"):
        cast.predict(np.array([[-1, 9]], np.int32))


def test_integers_out_of_the_input_dtypes_range_are_refused_not_wrapped():
    m = kcompile.compile_string("""
model ints {
    input ids: int32[3]
    input pixels: uint8[2]
    e = Flatten()(Embedding(20, 2)(ids))
    output concat(e, cast(pixels, float32), axis=-1)
}
""")
    ids, pixels = np.array([[1, 2, 3]]), np.array([[255.0, 0.0]])
    assert m.predict({"ids": ids, "pixels": pixels})[0, -2:].tolist() == [255, 0]
    with pytest.raises(ShapeMismatch, match=r"input 'ids' is int32, whose values run from -2147483648 to 2147483647; "
                                            r"got values from 1 to 1099511627776"):
        m.predict({"ids": np.array([[1, 2, 2 ** 40]]), "pixels": pixels})  # (it was id 0)
    with pytest.raises(ShapeMismatch, match=r"input 'pixels' is uint8, whose values run from 0 to 255; got values "
                                            r"from -1.0 to 300.0"):
        m.predict({"ids": ids, "pixels": np.array([[300.0, -1.0]])})  # (it was 44)


def test_floats_beyond_the_input_dtypes_range_are_refused_not_made_inf(recwarn):
    m = kcompile.compile_string("model f {\n    input x: float32[2]\n    output Dense(1)(x)\n}\n")
    with pytest.raises(ShapeMismatch, match=r"input 'x' is float32, whose finite values reach 3.403e\+38; got -1e\+300"):
        m.predict(np.array([[1.0, -1e300]]))  # (float64; it was -inf, and the output nan)
    assert not [w for w in recwarn if "overflow" in str(w.message)]  # (said once, as the error)
    # inf and nan given as such pass through, as numbers the user chose; float64 within range is cast
    out = m.predict(np.array([[np.inf, 0.0], [1e30, 2.0]]))
    assert np.isfinite(out[1]).all() and np.allclose(m.predict(np.array([[1e30, 2.0]], np.float32)), out[1])


def test_predict_batches_and_dynamic_batch():
    m = kcompile.compile_string(MLP)
    x = np.random.default_rng(2).random((70, 28, 28, 1), dtype=np.float32)
    full = m.predict(x, batch_size=None)
    np.testing.assert_allclose(m.predict(x, batch_size=16), full, rtol=1e-6, atol=1e-7)
    assert m.predict(x[:1]).shape == (1, 10)
    np.testing.assert_allclose(m.predict(x.astype(np.float64)), full, rtol=1e-6)  # cast like Keras


def test_an_output_without_the_batch_axis_is_computed_over_all_rows():
    m = kcompile.compile_string("""
model reduced {
    input x: float32[4]
    h = Dense(3)(x)
    output mean(h), h, sum(h, axis=0)
}
""")
    x = np.random.default_rng(3).random((70, 4), dtype=np.float32)
    kernel, bias = m.get_weights()
    for batch_size in (7, 32, None):
        pooled, h, summed = m.predict(x, batch_size=batch_size)
        assert pooled.shape == () and h.shape == (70, 3) and summed.shape == (3,)
        np.testing.assert_allclose(pooled, (x @ kernel + bias).mean(), rtol=1e-5)
        np.testing.assert_allclose(summed, (x @ kernel + bias).sum(axis=0), rtol=1e-5)
    # the specs say which outputs have the batch axis (shape: without it, where it is there)
    assert [(o.shape, o.batched, o.describe()) for o in m.outputs] == [
        ((), False, "()"), ((3,), True, "(None, 3)"), ((3,), False, "(3,)")]
    with pytest.raises(kcompile.KcompileError, match=r"<string>:9:9: error: the loss: the prediction has no batch axis"):
        kcompile.compile_string("""
model reduced {
    input x: float32[4]
    h = Dense(3)(x)
    pooled = mean(h)
    output pooled, h
    train {
        optimizer = SGD()
        loss = mse(pooled)
    }
}
""").fit(x, [np.zeros(()), np.zeros((70, 3))], verbose=0)


def test_several_inputs_and_outputs_by_name():
    m = kcompile.compile_string(TWO)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.random((3, 4), dtype=np.float32), "ids": rng.integers(0, 10, (3, 3))}
    kind, score = m.predict(feeds)
    assert kind.shape == (3, 3) and score.shape == (3, 1)
    kind2, score2 = m.predict([feeds["a"], feeds["ids"]])
    np.testing.assert_array_equal(kind, kind2)
    with pytest.raises(ShapeMismatch, match=r"missing \['ids'\]"):
        m.predict({"a": feeds["a"]})
    with pytest.raises(ShapeMismatch, match="different lengths: input 'a' has 3, input 'ids' has 2"):
        m.predict({"a": feeds["a"], "ids": feeds["ids"][:2]})
    with pytest.raises(ShapeMismatch, match="integer ids"):
        m.predict({"a": feeds["a"], "ids": feeds["ids"] + 0.5})


def test_save_onnx_is_standalone_checked_and_named(tmp_path):
    m = kcompile.compile_string(TWO)
    w = [x + 0.25 for x in m.get_weights()]
    m.set_weights(w)
    path = m.save_onnx(tmp_path / "two.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8 and proto.opset_import[0].version == 17
    assert (proto.producer_name, proto.producer_version) == ("kcompile", kcompile.__version__)
    assert [i.name for i in proto.graph.input] == ["a", "ids"]
    assert [o.name for o in proto.graph.output] == ["kind", "score"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"a": np.ones((2, 4), np.float32), "ids": np.ones((2, 3), np.int64)}
    for got, want in zip(session.run(None, feeds), m.predict(feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_build_folder_round_trip(tmp_path, monkeypatch):
    compiled = compile_source(MLP.replace("model mlp", "model rt_mlp"), "mlp.kdl")
    folder = write_build(compiled, tmp_path, seed=5)
    assert sorted(p.name for p in folder.iterdir()) == ["__init__.py", "manifest.json", "predict_weights.onnx", "rt_mlp.onnx",
                                                      "source.kdl", "weights.npz"]
    loaded = kcompile.load(folder)
    fresh = kcompile.compile_string(MLP, seed=5)
    for a, b in zip(loaded.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.manifest["seed"] == 5 and loaded.manifest["passes"][0] == "remove-dropout"
    assert [p["name"] for p in loaded.manifest["parameters"]] == fresh.weight_names
    monkeypatch.syspath_prepend(str(tmp_path))
    import rt_mlp
    x = np.zeros((2, 28, 28, 1), np.float32)
    np.testing.assert_array_equal(rt_mlp.load().predict(x), loaded.predict(x))
    # Rebuilding replaces the folder whole.
    write_build(compiled, tmp_path, seed=6)
    assert not np.array_equal(kcompile.load(folder).get_weights()[0], loaded.get_weights()[0])


def summary_text(model) -> str:
    lines = []
    assert model.summary(print_fn=lines.append) is None  # (as Keras: a REPL shows the table once)
    return "\n".join(lines)


def test_summary_counts_like_keras(capsys):
    model = kcompile.compile_string(MLP)
    text = summary_text(model)
    assert "dense (Dense)" in text and "(None, 32)" in text and "25,120" in text
    assert "Total params: 25,450" in text
    model.summary()
    assert capsys.readouterr().out == text + "\n"


def test_summary_takes_keras_arguments():
    """expand_nested (a called model's layers under it), show_trainable (Y, N, - without
    weights), layer_range (re.match, first to last), line_length and positions (the columns'
    right ends: fractions, or characters; a narrow column wraps)."""
    gan = kcompile.compile(Path(__file__).resolve().parents[2] / "examples" / "gan.kdl", model="gan")
    lines = summary_text(gan).splitlines()
    assert not any("conv2d_transpose" in line for line in lines)
    nested = summary_text_of(gan, expand_nested=True, show_trainable=True).splitlines()
    assert nested[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#", "Trainable"]
    rows = [line.split() for line in nested if "(" in line and not any(w in line for w in ("Model:", "(type)", "params"))]
    assert rows[0] == ["z", "(InputLayer)", "(None,", "100)", "0", "-"]
    assert rows[1] == ["generator", "(Model)", "(None,", "28,", "28,", "1)", "765,633", "Y"]
    assert rows[2] == ["└", "dense", "(Dense)", "(None,", "6272)", "633,472", "Y"]
    assert next(line for line in nested if "reshape" in line).startswith("   └ reshape (Reshape)")  # (Keras's)
    assert [r for r in rows if r[0] == "discriminator"][0][-2:] == ["138,561", "N"]  # (frozen in the gan)
    assert len(rows) == 3 + 4 + 6
    picked = summary_text_of(gan, layer_range=["gen", "disc"])
    assert "z (InputLayer)" not in picked and "generator (Model)" in picked and "discriminator (Model)" in picked
    assert "Total params: 904,194" in picked  # (the totals stay the model's)
    narrow = summary_text_of(gan, line_length=45, positions=[0.45, 0.8, 1.0]).splitlines()
    assert max(len(line) for line in narrow[:-3]) == 45 and narrow[1] == "━" * 45
    assert "discriminator (Mode" in summary_text_of(gan, positions=[20, 35, 45])  # (wrapped at 20)
    assert summary_text_of(gan, layer_range=["disc", "gen"]) == picked  # (the ends swapped, as Keras)
    # a range takes the model's own layers, each with the rows nested in it
    nested_range = summary_text_of(gan, layer_range=["generator$", "generator$"], expand_nested=True)
    assert "└ conv2d_transpose_1 (Conv2DTranspose)" in nested_range and "discriminator" not in nested_range
    # three positions with show_trainable: Keras's, times 0.9, the Trainable column after them
    four = summary_text_of(gan, positions=[0.45, 0.8, 1.0], line_length=100, show_trainable=True).splitlines()
    assert four[2].index("Output Shape") == 40 and four[1] == "━" * 100
    with pytest.raises(ValueError, match="layer_range .* matches no layer name"):
        gan.summary(layer_range=["nothing", "gen"])
    with pytest.raises(ValueError, match="positions must be 3 increasing right ends"):
        gan.summary(positions=[0.5, 0.4, 1.0])
    bn = kcompile.compile_string("model m {\n    input x: float32[3]\n    Dense(3)\n    BatchNormalization()\n"
                                 "    train { loss = mse; optimizer = SGD() }\n}\n")
    bn.set_trainable("dense", False)
    rows = {line.split()[0]: line.split()[-1] for line in summary_text_of(bn, show_trainable=True).splitlines()
            if line.startswith(("dense", "batch_normalization"))}
    assert rows == {"dense": "N", "batch_normalization": "Y"}  # (its moving statistics never train; Keras: Y)


def summary_text_of(model, **options) -> str:
    lines = []
    model.summary(print_fn=lines.append, **options)
    return "\n".join(lines)


def test_devices():
    from kcompile.runtime.devices import cuda_available, providers_for
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="unknown device"):
        providers_for("tpu")
    if not cuda_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU is usable"):
            kcompile.compile_string(MLP, device="cuda")
        m = kcompile.compile_string(MLP, device="auto")
        assert m.predict(np.zeros((1, 28, 28, 1), np.float32)).shape == (1, 10)


def test_save_weights_and_load_weights_from_a_file_or_a_folder(tmp_path):
    a = kcompile.compile_string(MLP, seed=1)
    b = kcompile.compile_string(MLP, seed=2)
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    assert not np.allclose(a.predict(x), b.predict(x))
    path = a.save_weights(tmp_path / "sub" / "w.npz")
    b.load_weights(path)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_allclose(b.predict(x), a.predict(x), rtol=1e-5, atol=1e-7)
    folder = write_build(compile_source(MLP.replace("model mlp", "model lw_mlp"), "mlp.kdl"), tmp_path, seed=5)
    b.load_weights(folder)  # a build (or checkpoint) folder's weights
    for wf, w5 in zip(b.get_weights(), kcompile.compile_string(MLP, seed=5).get_weights()):
        np.testing.assert_array_equal(wf, w5)


def test_a_graph_the_provider_cannot_run_says_so():
    """onnxruntime's CPU provider has no float64 convolution: fit and predict say which graph it
    cannot run and why, instead of onnxruntime's NOT_IMPLEMENTED."""
    m = kcompile.compile_string("""model c {
        input x: float64[6, 6, 2]
        Conv2D(4, 3)
        Flatten()
        y = Dense(2)
        output y
        train {
            loss = mse
            optimizer = SGD()
        }
    }""")
    x = np.ones((2, 6, 6, 2))
    with pytest.raises(RuntimeError, match=r"model c: onnxruntime's CPUExecutionProvider cannot run its "
                                           r"train step graph \(Could not find an implementation for Conv"):
        m.fit(x, np.zeros((2, 2)), verbose=0)
    with pytest.raises(RuntimeError, match="cannot run its inference graph"):
        m.predict(x)


# ---- folders that save and build write (found by a review: lost files, 0700 folders, symlinks) ----
def test_a_checkpoint_keeps_the_build_files_and_imports_as_a_package(tmp_path, monkeypatch):
    model = kcompile.compile_string(MLP, seed=0)
    folder = model.save(tmp_path / "mlp")
    assert {"source.kdl", "__init__.py", "manifest.json"} <= {p.name for p in folder.iterdir()}
    assert (folder / "source.kdl").read_text() == MLP
    again = kcompile.load(folder).save(tmp_path / "mlp2")  # (a loaded checkpoint keeps its source too)
    assert (again / "source.kdl").read_text() == MLP
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    package = importlib.import_module("mlp")
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(package.load().predict(x), model.predict(x))


def test_save_refuses_a_folder_it_did_not_write(tmp_path, monkeypatch):
    model = kcompile.compile_string(MLP, seed=0)
    mine = tmp_path / "project"
    (mine / "data").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files kcompile did not write"):
        model.save(mine)
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "data").is_dir()
    monkeypatch.chdir(mine)
    with pytest.raises(FileExistsError, match="did not write"):
        model.save(".")
    (tmp_path / "empty").mkdir()
    model.save(tmp_path / "empty")  # (an empty folder is fine)
    assert (tmp_path / "empty" / "manifest.json").exists()


def test_folders_get_the_mode_of_new_folders_and_symlinks_are_followed(tmp_path):
    import os
    model = kcompile.compile_string(MLP, seed=0)
    umask = os.umask(0o022)
    try:
        folder = model.save(tmp_path / "shared")
        files = [model.save_weights(tmp_path / "w.npz"), model.save_onnx(tmp_path / "m.onnx")]
    finally:
        os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o755
    # files written atomically get the mode of new files too (not mkstemp's 0600)
    assert [f.stat().st_mode & 0o777 for f in files + [folder / "mlp.onnx"]] == [0o644] * 3
    real = model.save(tmp_path / "real")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "mlp").symlink_to(real)
    compiled = compile_source(MLP)
    for seed in (1, 2):  # (twice: the second rebuild found the first one's leftovers)
        write_build(compiled, tmp_path / "build", seed=seed)
        assert (tmp_path / "build" / "mlp").is_symlink()
        np.testing.assert_array_equal(kcompile.load(tmp_path / "build" / "mlp").get_weights()[0],
                                      kcompile.compile_string(MLP, seed=seed).get_weights()[0])
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["mlp"]


def test_summary_counts_bytes_by_dtype():
    """Weights take the input's dtype: float16's are 2 bytes each (Keras: 19.73 KB for 10,100)."""
    text = summary_text(kcompile.compile_string("model h {\n    input x: float16[100]\n    y = Dense(100)\n    output y\n}\n"))
    assert "Total params: 10,100 (19.73 KB)" in text, text


def test_share_weights_refuses_weights_of_another_dtype():
    src = "model {name} {{\n    input x: {dtype}[4]\n    y = Dense(3)\n    output y\n}}\n"
    single = kcompile.compile_string(src.format(name="a", dtype="float32"))
    double = kcompile.compile_string(src.format(name="b", dtype="float64"))
    with pytest.raises(ValueError, match=r"a's dense/kernel is float32\[4, 3\], b's dense/kernel is float64\[4, 3\]"):
        single.share_weights(double)
    assert single.get_weights()[0].dtype == np.float32
    single.predict(np.zeros((1, 4), np.float32))


def test_an_input_passed_through_as_an_output_is_predicted_as_given():
    """(predict binds preallocated outputs, which onnxruntime leaves unwritten where an output is
    an input itself: the language makes such an output a named copy, an Identity)"""
    m = kcompile.compile_string("""
model through {
    input x: float32[4]
    h = Dense(3)(x)
    same = linear(x)
    output same, h
}
""")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for batch_size in (1, 2, None):
        np.testing.assert_array_equal(m.predict(x, batch_size=batch_size)[0], x)


def test_a_build_of_0_2_0_predicts_in_the_batches_asked_for(tmp_path):
    """Its manifest does not say whether the rows interact: predict keeps to batch_size."""
    import json
    folder = write_build(compile_source(MLP, "mlp.kdl"), tmp_path, seed=0)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert kcompile.load(folder)._rows_independent
    del manifest["rows_independent"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    old = kcompile.load(folder)
    assert not old._rows_independent
    x = np.random.default_rng(0).random((40, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(old.predict(x, batch_size=None), kcompile.load(tmp_path / "mlp").predict(x), rtol=1e-6)


def test_no_rows_and_an_output_without_the_batch_axis_is_an_error_not_a_crash():
    m = kcompile.compile_string("""
model pooled {
    input t: float32[5, 3]
    h = LSTM(4, return_sequences=true)(t)
    y = Dense(2)(h)
    output y, mean(y)
}
""")
    with pytest.raises(ValueError, match="predict: no rows, and an output without the batch axis"):
        m.predict(np.zeros((0, 5, 3), np.float32))  # (onnxruntime's LSTM aborted the process)


def test_a_model_that_mixes_rows_is_predicted_in_exactly_the_batches_asked_for():
    """predict may run fewer rows at once than asked, for speed (``_predict_rows``, forced low
    here), where each row's outputs depend on that row alone; `h - mean(h)` mixes the rows, so
    its batches are exactly ``batch_size`` rows (None: all of them)."""
    source = """
model centred {
    input x: float32[4]
    h = Dense(3)(x)
    output h - mean(h)
}
"""
    m = kcompile.compile_string(source)
    assert not m.manifest["rows_independent"]
    assert kcompile.compile_string(MLP).manifest["rows_independent"]
    m._predict_rows = 16
    x = np.random.default_rng(4).random((300, 4), dtype=np.float32)
    kernel, bias = m.get_weights()
    h = x @ kernel + bias
    np.testing.assert_allclose(m.predict(x, batch_size=None), h - h.mean(), rtol=1e-4, atol=1e-6)
    by_100 = np.concatenate([c - c.mean() for c in np.split(h, 3)])
    np.testing.assert_allclose(m.predict(x, batch_size=100), by_100, rtol=1e-4, atol=1e-6)


def test_layers_as_keras_shows_them():
    """model.layers / get_layer: names, classes, output shapes, each layer's weights read and
    written through the model, and trainable = False freezing the layer in the next fit."""
    m = kcompile.compile_string(MLP.replace("    output probs\n", "    output probs\n    train {\n        "
                                            "loss = categorical_crossentropy\n        optimizer = SGD(0.1)\n    }\n"))
    assert [(layer.name, layer.class_name, layer.output_shape) for layer in m.layers] == [
        ("flatten", "Flatten", (None, 784)), ("dense", "Dense", (None, 32)), ("dense_1", "Dense", (None, 10))]
    dense = m.get_layer("dense")
    kernel, bias = dense.get_weights()
    np.testing.assert_array_equal(kernel, m.get_weights()[0])
    assert dense.count_params() == 784 * 32 + 32 and m.get_layer(index=-1).name == "dense_1"
    dense.set_weights([kernel * 2, bias + 1])
    np.testing.assert_array_equal(m.get_weights()[0], kernel * 2)
    np.testing.assert_array_equal(m.get_weights()[1], bias + 1)
    x = np.random.default_rng(0).random((6, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(m(x), m.predict(x), rtol=1e-5, atol=1e-7)
    assert sum(w.size for w in m.trainable_weights) == m.count_params() and m.non_trainable_weights == []
    dense.trainable = False
    assert not dense.trainable and m.get_layer("dense_1").trainable
    assert [w.shape for w in m.trainable_weights] == [(32, 10), (10,)]
    assert [w.shape for w in m.non_trainable_weights] == [w.shape for w in dense.weights] == [(784, 32), (32,)]
    before = m.get_weights()
    m.fit(x, np.eye(10, dtype=np.float32)[:6], verbose=0)
    after = m.get_weights()
    np.testing.assert_array_equal(after[0], before[0])
    assert not np.array_equal(after[2], before[2])
    with pytest.raises(ValueError, match=r"no layer named 'dens' \(did you mean dense\?\)"):
        m.get_layer("dens")
    with pytest.raises(ValueError, match="get_layer: index must be an integer, got 'a'"):
        m.get_layer(index="a")
    with pytest.raises(ValueError, match="get_layer: give a layer's name or its index"):
        m.get_layer()
    with pytest.raises(ShapeMismatch, match=r"weight dense/kernel expects shape \(784, 32\), got \(32,\)"):
        dense.set_weights([bias, bias])


def test_layers_inside_blocks_and_called_models_have_output_shapes():
    """get_layer("block/name").output_shape, as Keras's nested layers have (it was None)."""
    m = kcompile.compile_string("""
block Pre(u: int) {
    input x
    h = Dense(u, name="proj")(x)
    output Reshape((u, 1), name="col")(h)
}
model head {
    input z: float32[6, 1]
    output Flatten()(z)
}
model m {
    input x: float32[3]
    y = head(Pre(6)(x))
    output y
}
""", model="m")
    assert m.get_layer("pre/proj").output_shape == (None, 6)
    assert m.get_layer("pre").get_layer("col").output_shape == (None, 6, 1)
    assert m.get_layer("head/flatten").output_shape == (None, 6)


BRANCHED = """
model m {
    input a: float32[4]
    input b: float32[4]
    x = Dense(4, name="da")(a)
    y = Dense(4, name="db1")(b)
    y = Dense(4, name="db2")(y)
    o = Dense(2, name="out")(Concatenate()([x, y]))
    output o
}
"""


def test_load_weights_goes_by_name_where_the_file_has_names(tmp_path):
    """Weights files of a kcompile that ordered a branched model's weights otherwise (source order:
    da, db1, db2, out; now Keras's db1, da, db2, out) load into the right layers, from a
    save_weights file with names and from a build folder's manifest; a file of another model is refused."""
    import io
    import json
    rng = np.random.default_rng(0)
    m = kcompile.compile_string(BRANCHED)
    assert m.weight_names[:4] == ["db1/kernel", "db1/bias", "da/kernel", "da/bias"]
    m.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in m.get_weights()])
    feeds = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal((3, 4)).astype(np.float32)}
    expected = m.predict(feeds)
    by_name = dict(zip(m.weight_names, m.get_weights()))
    old_order = ["da/kernel", "da/bias", "db1/kernel", "db1/bias", "db2/kernel", "db2/bias", "out/kernel", "out/bias"]
    # a save_weights file in the old order, with its names
    np.savez(tmp_path / "old.npz", **{f"{i:04d}": by_name[n] for i, n in enumerate(old_order)}, names=np.array(old_order))
    # a build folder whose manifest lists the parameters in the old order
    folder = m.save(tmp_path / "build")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["parameters"] = sorted(manifest["parameters"], key=lambda p: old_order.index(p["name"]))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    buf = io.BytesIO()
    np.savez(buf, **{f"{i:04d}": by_name[n] for i, n in enumerate(old_order)})
    (folder / "weights.npz").write_bytes(buf.getvalue())
    for source in (tmp_path / "old.npz", folder, m.save_weights(tmp_path / "new.npz")):
        other = kcompile.compile_string(BRANCHED, seed=1)
        other.load_weights(source)
        np.testing.assert_array_equal(other.predict(feeds), expected)
    np.savez(tmp_path / "foreign.npz", **{f"{i:04d}": by_name[n] for i, n in enumerate(old_order)},
             names=np.array([n.replace("da/", "dz/") for n in old_order]))
    with pytest.raises(ValueError, match="holds weights of another model; it lacks da/bias, da/kernel; it has dz/"):
        kcompile.compile_string(BRANCHED).load_weights(tmp_path / "foreign.npz")


def test_layers_with_nested_weights_inside_a_block_show_and_freeze_them():
    """A MultiHeadAttention (query/kernel, ...) or Bidirectional (forward_lstm/kernel, ...) inside a
    block: get_layer shows its weights, and trainable = False freezes them (it showed none, and
    freezing silently did nothing)."""
    m = kcompile.compile_string("""
block Enc(d: int) {
    input x
    h = MultiHeadAttention(2, 4)(x, x)
    output Bidirectional(LSTM(3))(h)
}
model m {
    input x: float32[5, 6]
    y = Dense(1)(Enc(4)(x))
    output y
    train {
        loss = mse
        optimizer = SGD(0.5)
    }
}
""")
    mha, bi = m.get_layer("enc/multi_head_attention"), m.get_layer("enc").get_layer("bidirectional")
    assert len(mha.get_weights()) == 8 and len(bi.get_weights()) == 6
    assert mha.count_params() == sum(w.size for w in mha.get_weights()) > 0
    mha.trainable = False
    before, bi_before = mha.get_weights(), bi.get_weights()
    x = np.random.default_rng(0).standard_normal((4, 5, 6)).astype(np.float32)
    m.fit(x, np.ones((4, 1), np.float32), verbose=0)
    for a, b in zip(mha.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(bi.get_weights()[0], bi_before[0])  # (the rest still trains)


def test_depthwise_conv2d_weights_have_keras_3_names():
    m = kcompile.compile_string("model m {\n    input x: float32[6, 6, 2]\n    y = DepthwiseConv2D(3, depth_multiplier=2)(x)\n"
                                "    z = SeparableConv2D(4, 3)(x)\n    output y, z\n}\n")
    assert m.weight_names == ["depthwise_conv2d/kernel", "depthwise_conv2d/bias", "separable_conv2d/depthwise_kernel",
                              "separable_conv2d/pointwise_kernel", "separable_conv2d/bias"]


def test_load_weights_takes_a_depthwise_kernel_saved_under_its_keras_2_name(tmp_path):
    """Files written before DepthwiseConv2D's kernel took Keras 3's name load into it."""
    m = kcompile.compile_string("model m {\n    input x: float32[6, 6, 2]\n    y = DepthwiseConv2D(3)(x)\n    output y\n}\n")
    kernel, bias = (w + 1 for w in m.get_weights())
    np.savez(tmp_path / "old.npz", **{"0000": kernel, "0001": bias},
             names=np.array(["depthwise_conv2d/depthwise_kernel", "depthwise_conv2d/bias"]))
    m.load_weights(tmp_path / "old.npz")
    np.testing.assert_array_equal(m.get_weights()[0], kernel)


def test_predict_takes_a_list_of_one_array_an_iterable_of_batches_and_callbacks():
    """As Keras: [x] for a one-input model, a generator of batches (or of (x, ...) tuples), and
    callbacks that see each batch's outputs; a generator where arrays go is said plainly."""
    from kcompile.callbacks import Callback
    m = kcompile.compile_string(MLP)
    x = np.random.default_rng(4).random((40, 28, 28, 1), dtype=np.float32)
    want = m.predict(x)
    np.testing.assert_allclose(m.predict([x]), want, rtol=1e-6)
    np.testing.assert_allclose(m.predict(iter([x[:15], x[15:]])), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.predict((b, None) for b in (x[:15], x[15:])), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.predict(iter([x[:15], x[15:]]), steps=1), want[:15], rtol=1e-6, atol=1e-7)
    seen = []

    class Hooks(Callback):
        def on_predict_begin(self, logs=None):
            seen.append("begin")

        def on_predict_batch_end(self, batch, logs=None):
            seen.append((batch, logs["outputs"].shape))

        def on_predict_end(self, logs=None):
            seen.append("end")
    np.testing.assert_allclose(m.predict(x, batch_size=16, callbacks=[Hooks()]), want, rtol=1e-6, atol=1e-7)
    assert seen == ["begin", (0, (16, 10)), (1, (16, 10)), (2, (8, 10)), "end"]



def test_predict_verbose_prints_keras_progress_and_callbacks_get_keras_params(capsys):
    from kcompile.callbacks import Callback
    m = kcompile.compile_string(MLP)
    x = np.random.default_rng(4).random((40, 28, 28, 1), dtype=np.float32)
    want = m.predict(x)
    assert capsys.readouterr().out == ""  # (verbose=0, the default here: nothing)
    np.testing.assert_allclose(m.predict(x, batch_size=16, verbose=1), want, rtol=1e-6, atol=1e-7)
    assert "3/3 ━" in capsys.readouterr().out
    np.testing.assert_allclose(m.predict(x, batch_size=16, verbose=2), want, rtol=1e-6, atol=1e-7)
    assert capsys.readouterr().out.startswith("3/3 - ")
    params = []

    class Params(Callback):
        def on_predict_begin(self, logs=None):
            params.append(dict(self.params))
    m.predict(x, batch_size=16, steps=2, callbacks=[Params()])
    assert params == [{"verbose": 0, "epochs": 1, "steps": 2}]  # (Keras's params)
    with pytest.raises(ValueError, match="predict: verbose must be 0, 1, 2 or 'auto', got 3"):
        m.predict(x, verbose=3)
    from pathlib import Path
    trainable = kcompile.compile(Path(__file__).resolve().parents[2] / "examples" / "mnist_mlp.kdl")
    with pytest.raises(ShapeMismatch, match=r"fit: input is an iterator; arrays go here \(fit and evaluate take an "
                                            r"iterable of \(x, y\) batches as x alone"):
        trainable.fit(iter([x]), np.zeros((40, 10), np.float32))
