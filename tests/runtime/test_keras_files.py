"""Keras 3's weight files (runtime/keras_files.py): keras_model.save_weights' .weights.h5 and a
.keras archive load into the same model written in kcompile, and kcompile's .weights.h5 loads
into Keras, each side then predicting what the other does."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile



@pytest.fixture
def h5py():
    """h5py, which Keras's files need (an optional dependency: those tests skip without it)."""
    return pytest.importorskip("h5py")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _mlp(k):
    L = k.layers
    return k.Sequential([k.Input((8,)), L.Dense(16, activation="relu"), L.Dense(4, activation="softmax")])


def _cnn(k):
    L = k.layers
    return k.Sequential([k.Input((28, 28, 1)), L.Conv2D(32, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)),
                         L.Conv2D(64, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)), L.Flatten(),
                         L.Dense(128, activation="relu"), L.Dropout(0.5), L.Dense(10, activation="softmax")])


def _branched(k):
    L = k.layers
    a, b = k.Input((4,), name="a"), k.Input((3,), name="b")
    x = L.Dense(7)(a)
    y = L.Dense(7)(L.Dense(7)(L.Dense(7)(b)))  # (Keras's model.layers: three of b's before a's)
    return k.Model([a, b], L.Dense(2)(L.Concatenate()([x, y])))


def _batchnorm(k):
    L = k.layers
    return k.Sequential([k.Input((6,)), L.Dense(8), L.BatchNormalization(), L.Dense(2)])


def _recurrent(k):
    L = k.layers
    return k.Sequential([k.Input((6, 3)), L.LSTM(5, return_sequences=True), L.Bidirectional(L.GRU(4)), L.Dense(2)])


def _attention(k):
    L = k.layers
    x = k.Input((5, 8))
    h = L.MultiHeadAttention(2, 4)(x, x)
    return k.Model(x, L.Dense(1)(L.GlobalAveragePooling1D()(h)))


def _embedding(k):
    L = k.layers
    return k.Sequential([k.Input((7,), dtype="int32"), L.Embedding(20, 6), L.GlobalAveragePooling1D(), L.Dense(3)])


def _normalization(k):
    L = k.layers
    return k.Sequential([k.Input((4,)), L.Normalization(), L.Dense(2)])


HEAD = "model m {\n"
CASES = {  # name: (the Keras model, kcompile's source, the inputs)
    "mlp": (_mlp, HEAD + "input x: float32[8]\nDense(16, activation=relu)\nDense(4, activation=softmax)\n}\n",
            lambda r: r.standard_normal((5, 8))),
    "mnist_cnn": (_cnn, (EXAMPLES / "mnist_cnn.kdl").read_text(), lambda r: r.random((3, 28, 28, 1))),
    "branched": (_branched, HEAD + """input a: float32[4]
    input b: float32[3]
    x = Dense(7)(a)
    y = Dense(7)(Dense(7)(Dense(7)(b)))
    o = Dense(2)(Concatenate()([x, y]))
    output o
}
""", lambda r: {"a": r.standard_normal((5, 4)), "b": r.standard_normal((5, 3))}),
    "batchnorm": (_batchnorm, HEAD + "input x: float32[6]\nDense(8)\nBatchNormalization()\nDense(2)\n}\n",
                  lambda r: r.standard_normal((5, 6))),
    "lstm_bidirectional_gru": (_recurrent, HEAD + """input x: float32[6, 3]
    LSTM(5, return_sequences=true)
    Bidirectional(GRU(4))
    Dense(2)
}
""", lambda r: r.standard_normal((4, 6, 3))),
    "multi_head_attention": (_attention, HEAD + """input x: float32[5, 8]
    h = MultiHeadAttention(2, 4)(x, x)
    o = Dense(1)(GlobalAveragePooling1D()(h))
    output o
}
""", lambda r: r.standard_normal((4, 5, 8))),
    "embedding": (_embedding, HEAD + "input ids: int64[7]\nEmbedding(20, 6)\nGlobalAveragePooling1D()\nDense(3)\n}\n",
                  lambda r: r.integers(0, 20, (4, 7))),
    # (Keras's Normalization keeps a sample count, vars/2, besides its mean and variance)
    "normalization": (_normalization, HEAD + "input x: float32[4]\nNormalization()\nDense(2)\n}\n",
                      lambda r: r.standard_normal((5, 4))),
}


def _inputs(case, seed=1):
    x = CASES[case][2](np.random.default_rng(seed))
    cast = lambda a: a.astype(np.float32) if a.dtype.kind == "f" else a
    return {k: cast(v) for k, v in x.items()} if isinstance(x, dict) else cast(x)


def _keras_inputs(x):
    x = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in x.items()} if isinstance(x, dict) else x
    return x.astype(np.int32) if isinstance(x, np.ndarray) and x.dtype == np.int64 else x


def _keras_model(keras, case, fresh_names=True):
    """The case's Keras model with random weights (a BatchNormalization's variance positive);
    fresh_names: Keras's automatic names start again (dense, dense_1, ...), as kcompile's."""
    if fresh_names:
        keras.backend.clear_session()
    model = CASES[case][0](keras)
    rng = np.random.default_rng(0)
    model.set_weights([np.zeros((), w.dtype) if w.path.endswith("count") else rng.uniform(0.5, 1.5, w.shape)
                       if w.path.endswith("variance") else rng.uniform(-0.5, 0.5, w.shape) for w in model.weights])
    for layer in model.layers:  # (Keras's Normalization computes with its weights once finalized)
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    return model


def _assert_same(kc, keras_model, case):
    x = _inputs(case)
    expected = keras_model.predict(_keras_inputs(x), verbose=0)
    np.testing.assert_allclose(kc.predict(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_weights_load_and_predict_as_keras(h5py, keras, case, tmp_path):
    keras_model = _keras_model(keras, case)
    keras_model.save_weights(tmp_path / "k.weights.h5")
    keras_model.save(tmp_path / "k.keras")
    for path in (tmp_path / "k.weights.h5", tmp_path / "k.keras"):
        kc = kcompile.compile_string(CASES[case][1])
        kc.load_weights(path)
        _assert_same(kc, keras_model, case)
        theirs = [np.asarray(w) for w in keras_model.weights if not w.path.endswith("count")]  # (kcompile keeps none)
        assert len(theirs) == len(kc.get_weights())
        for mine, their in zip(kc.get_weights(), theirs):
            np.testing.assert_array_equal(mine, their)


@pytest.mark.parametrize("case", ["branched", "mlp", "lstm_bidirectional_gru"])
def test_keras_names_of_another_session_load_by_each_class_order(h5py, keras, case, tmp_path):
    """Keras's automatic names count on through a session (dense_7): the layers then match as
    Keras's own load_weights matches them, by their place among the layers of their class."""
    keras.backend.clear_session()
    keras.layers.Dense(1), keras.layers.LSTM(1)  # (the next names: dense_1, lstm_1, ...)
    keras_model = _keras_model(keras, case, fresh_names=False)
    assert keras_model.layers[-1].name != kcompile.compile_string(CASES[case][1]).layers[-1].name
    keras_model.save_weights(tmp_path / "k.weights.h5")
    kc = kcompile.compile_string(CASES[case][1])
    kc.load_weights(tmp_path / "k.weights.h5")
    _assert_same(kc, keras_model, case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kcompile_weights_load_into_keras(h5py, keras, case, tmp_path):
    kc = kcompile.compile_string(CASES[case][1])
    rng = np.random.default_rng(2)
    kc.set_weights([rng.uniform(0.5, 1.5, w.shape) if name.endswith("variance") else rng.uniform(-0.5, 0.5, w.shape)
                    for name, w in zip(kc.weight_names, kc.get_weights())])
    path = kc.save_weights(tmp_path / "sub" / "kc.weights.h5")
    assert [p.name for p in path.parent.iterdir()] == ["kc.weights.h5"]  # (no temporary file left)
    keras_model = _keras_model(keras, case)
    keras_model.load_weights(path)
    _assert_same(kc, keras_model, case)
    again = kcompile.compile_string(CASES[case][1])  # (and back into kcompile)
    again.load_weights(path)
    for a, b in zip(again.get_weights(), kc.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_another_architecture_is_refused_saying_what_differs(h5py, keras, tmp_path):
    _keras_model(keras, "mlp").save_weights(tmp_path / "mlp.weights.h5")
    cnn = kcompile.compile_string(CASES["mnist_cnn"][1])
    before = cnn.get_weights()
    with pytest.raises(ValueError, match=r"holds the weights of another model.*no weights for layer conv2d"):
        cnn.load_weights(tmp_path / "mlp.weights.h5")
    for a, b in zip(cnn.get_weights(), before):  # (nothing loaded)
        np.testing.assert_array_equal(a, b)


def test_a_missing_layer_or_an_extra_one_is_refused(h5py, keras, tmp_path):
    _keras_model(keras, "mlp").save_weights(tmp_path / "mlp.weights.h5")
    three = kcompile.compile_string(HEAD + "input x: float32[8]\nDense(16)\nDense(4)\nDense(4)\n}\n")
    with pytest.raises(ValueError, match=r"no weights for layer dense_2 \(Keras's layers/dense_2\)"):
        three.load_weights(tmp_path / "mlp.weights.h5")
    one = kcompile.compile_string(HEAD + "input x: float32[8]\nDense(16)\n}\n")
    with pytest.raises(ValueError, match=r"weights of layers this model lacks: layers/dense_1 \(dense_1\)"):
        one.load_weights(tmp_path / "mlp.weights.h5")


def test_a_wrong_shape_is_refused_naming_the_weight(h5py, keras, tmp_path):
    _keras_model(keras, "mlp").save_weights(tmp_path / "mlp.weights.h5")
    wider = kcompile.compile_string(HEAD + "input x: float32[8]\nDense(12)\nDense(4)\n}\n")
    with pytest.raises(ValueError, match=r"weight dense/kernel has shape \(8, 12\) here, \(8, 16\) in the file"):
        wider.load_weights(tmp_path / "mlp.weights.h5")


def test_a_recurrent_layer_of_another_kind_is_refused(h5py, keras, tmp_path):
    _keras_model(keras, "lstm_bidirectional_gru").save_weights(tmp_path / "r.weights.h5")
    gru = kcompile.compile_string(HEAD + "input x: float32[6, 3]\nGRU(5, return_sequences=true)\n"
                                  "Bidirectional(GRU(4))\nDense(2)\n}\n")
    with pytest.raises(ValueError, match="another model"):
        gru.load_weights(tmp_path / "r.weights.h5")


@pytest.mark.parametrize("name", ["k.weights.h5", "k.keras"])
def test_a_truncated_file_is_an_error_naming_it(h5py, keras, name, tmp_path):
    model = _keras_model(keras, "mlp")
    path = tmp_path / name
    model.save_weights(path) if name.endswith(".h5") else model.save(path)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match=f"load_weights: cannot read {path}"):
        kcompile.compile_string(CASES["mlp"][1]).load_weights(path)


def test_a_legacy_keras_2_file_is_refused(h5py, tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense")
    with pytest.raises(ValueError, match="legacy Keras 2 HDF5 file"):
        kcompile.compile_string(CASES["mlp"][1]).load_weights(path)


def test_kcompile_weights_h5_round_trips_without_keras(h5py, tmp_path):
    a, b = (kcompile.compile_string(CASES["branched"][1], seed=s) for s in (0, 1))
    b.load_weights(a.save_weights(tmp_path / "w.weights.h5"))
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    with h5py.File(tmp_path / "w.weights.h5") as f:  # (Keras's tree: groups by class and place, names kept)
        assert f["layers/dense/vars"].attrs["name"] == "dense_1" and f["layers/dense/vars/0"].shape == (3, 7)


def test_layers_in_another_order_load_by_name_where_their_places_do_not_fit(h5py, tmp_path):
    """Where each class's order of layers does not fit (a file whose Dense groups come in another
    order) and the file's layer names are exactly the model's, the names match them."""
    a, b = (kcompile.compile_string(CASES["mlp"][1], seed=s) for s in (0, 1))
    path = a.save_weights(tmp_path / "w.weights.h5")
    with h5py.File(path, "a") as f:
        f.move("layers/dense", "layers/tmp")
        f.move("layers/dense_1", "layers/dense")
        f.move("layers/tmp", "layers/dense_1")
    b.load_weights(path)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    with h5py.File(path, "a") as f:  # (names of other layers: what did not fit by place is said)
        f["layers/dense/vars"].attrs["name"] = "other"
    with pytest.raises(ValueError, match=r"as Keras\): weight dense/kernel has shape \(8, 16\) here, \(16, 4\)"):
        b.load_weights(path)


def test_save_weights_refuses_keras_names_it_does_not_write(tmp_path):
    model = kcompile.compile_string(CASES["mlp"][1])
    for name in ("m.keras", "m.h5"):
        with pytest.raises(ValueError, match=r"names a Keras file.*NAME\.weights\.h5"):
            model.save_weights(tmp_path / name)
    with pytest.raises(ValueError, match="names a Keras file"):
        model.save_onnx(tmp_path / "m.h5")
    for name in ("m.keras", "m.h5", "m.weights.h5"):  # (a checkpoint folder under Keras's file name)
        with pytest.raises(ValueError, match=r"save: .* names a Keras file .*kcompile saves a checkpoint folder"):
            model.save(tmp_path / name)
    for name in ("w.txt", "w"):  # (as Keras, which asks for its suffix: not an .npz under another name)
        with pytest.raises(ValueError, match=r"must end in \.npz .* or \.weights\.h5"):
            model.save_weights(tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_without_h5py_keras_files_say_how_to_install_it(monkeypatch, tmp_path):
    model = kcompile.compile_string(CASES["mlp"][1])
    monkeypatch.setitem(sys.modules, "h5py", None)  # (import h5py: ImportError)
    for call in (lambda: model.save_weights(tmp_path / "x.weights.h5"), lambda: model.load_weights(tmp_path / "w.weights.h5"),
                 lambda: model.load_weights(tmp_path / "w.keras")):
        with pytest.raises(ImportError, match=r"pip install h5py"):
            call()
    saved = model.save_weights(tmp_path / "w.npz")  # (.npz needs no h5py)
    weights = model.get_weights()
    model.set_weights([w + 1 for w in weights])
    model.load_weights(saved)
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)


def test_a_model_called_in_the_model_is_refused_for_keras_files(h5py, tmp_path):
    """Keras 3 nests a called model's layers in groups of their own (layers/functional/layers/...),
    which kcompile does not write: refused rather than written as a file Keras cannot read."""
    m = kcompile.compile_string("""model enc {
    input q: float32[3]
    y = Dense(2)(q)
    output y
}
model m {
    input x: float32[3]
    a = enc(x)
    output Dense(1)(a)
}""", model="m")
    with pytest.raises(ValueError, match="layer enc is a Model .* save_weights and load_weights take .npz files"):
        m.save_weights(tmp_path / "m.weights.h5")
    assert not (tmp_path / "m.weights.h5").exists()
    weights = m.get_weights()  # (.npz files take it, and give its weights back)
    saved = m.save_weights(tmp_path / "m.weights.npz")
    m.set_weights([w + 1 for w in weights])
    m.load_weights(saved)
    for got, want in zip(m.get_weights(), weights):
        np.testing.assert_array_equal(got, want)


def test_skip_mismatch_reads_the_layers_that_fit_and_warns_of_the_others(h5py, tmp_path):
    """Keras's load_weights(skip_mismatch=True): a kcompile .weights.h5 of a model whose first
    layer is wider loads the second layer (it fits) and keeps the first (kernel and bias: a layer
    comes whole or not at all), with a warning naming the weight."""
    wide = kcompile.compile_string(HEAD + "input x: float32[8]\nDense(16)\nDense(4)\n}\n", seed=0)
    path = wide.save_weights(filepath=tmp_path / "w.weights.h5")
    narrow = kcompile.compile_string(HEAD + "input x: float32[8]\nDense(12)\nDense(4)\n}\n", seed=1)
    before = narrow.get_weights()
    with pytest.raises(ValueError, match=r"weight dense/kernel has shape \(8, 12\) here"):
        narrow.load_weights(path)
    with pytest.warns(UserWarning, match=r"skip_mismatch=True.*weight dense/kernel has shape \(8, 12\) here"):
        narrow.load_weights(filepath=path, skip_mismatch=True)
    got = narrow.get_weights()
    np.testing.assert_array_equal(got[0], before[0]), np.testing.assert_array_equal(got[1], before[1])
    np.testing.assert_array_equal(got[3], wide.get_weights()[3])  # (dense_1's bias: [4] either way)
    assert got[2].shape == (12, 4) and np.array_equal(got[2], before[2])  # (dense_1's kernel [12, 4] against [16, 4])
