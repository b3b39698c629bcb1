"""Bidirectional over a layer with ``return_state=true`` (Keras 3's order: the merged output, then
the forward layer's last states, then the backward layer's) and ``merge_mode=none`` (the two
outputs apart, before the states). Forward against Keras with copied weights (plain and masked
inputs, with and without return_sequences), gradients through the states against float64 finite
differences, located errors."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients, expected_checks  # noqa: E402

STATE_NAMES = {"SimpleRNN": ["h"], "GRU": ["h"], "LSTM": ["h", "c"]}


def result_names(kind, merge_mode):
    """The names on the left: the output(s), then forward states, then backward states."""
    outs = ["f", "b"] if merge_mode == "none" else ["y"]
    return outs + [f"f{s}" for s in STATE_NAMES[kind]] + [f"b{s}" for s in STATE_NAMES[kind]]


def keras_merge_mode(merge_mode):
    return None if merge_mode == "none" else merge_mode


def joins(states):
    """``h = Concatenate()(fh, bh)`` (and ``c = ...``): the two directions' states side by side."""
    return "\n".join(f"    {n} = Concatenate()(f{n}, b{n})" for n in states)


IDS = np.array([[3, 1, 0, 0, 0, 0], [0, 0, 4, 5, 0, 7], [2, 6, 8, 3, 8, 1], [0, 0, 0, 0, 0, 9]])

CASES = [(kind, rs, masked, merge_mode) for kind in ("SimpleRNN", "LSTM", "GRU")
         for rs, masked, merge_mode in [(False, False, "concat"), (True, False, "sum"), (False, True, "concat"),
                                        (True, True, "ave"), (True, True, "none"), (False, False, "none")]]


@pytest.mark.parametrize("kind, return_sequences, masked, merge_mode", CASES)
def test_outputs_and_states_match_keras(kind, return_sequences, masked, merge_mode, keras):
    L = keras.layers
    units = 4
    if masked:
        inp = keras.Input((6,), dtype="int64")
        x = L.Embedding(10, 3, mask_zero=True)(inp)
    else:
        inp = x = keras.Input((6, 3))
    results = L.Bidirectional(getattr(L, kind)(units, return_state=True, return_sequences=return_sequences),
                              merge_mode=keras_merge_mode(merge_mode))(x)
    names = result_names(kind, merge_mode)
    assert len(results) == len(names)  # Keras's own count
    reference_model = keras.Model(inp, list(results))
    rng = np.random.default_rng(len(kind) + 2 * return_sequences + masked)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    head = ("input x: int64[6]\n    e = Embedding(10, 3, mask_zero=true)(x)" if masked else
            "input x: float32[6, 3]\n    e = x")
    m = kcompile.compile_string(f"""model bi {{
    {head}
    {", ".join(names)} = Bidirectional({kind}({units}, return_state=true,
        return_sequences={str(return_sequences).lower()}), merge_mode={merge_mode})(e)
    output {", ".join(names)}
}}""")
    m.set_weights(reference_model.get_weights())
    x = IDS if masked else rng.normal(size=(4, 6, 3)).astype(np.float32)
    want = [np.asarray(w) for w in reference_model.predict(x, verbose=0)]
    got = m.predict(x)
    assert len(got) == len(want)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("return_state", [False, True])
def test_merge_mode_none_passes_the_mask_to_each_output(kind, return_state, keras):
    """Each sequence of merge_mode=none keeps the input's mask (Keras's compute_mask), also with
    return_state: a GlobalAveragePooling1D after it averages the unmasked steps only."""
    L = keras.layers
    inp = keras.Input((6,), dtype="int64")
    results = L.Bidirectional(getattr(L, kind)(3, return_sequences=True, return_state=return_state),
                              merge_mode=None)(L.Embedding(10, 2, mask_zero=True)(inp))
    pool = L.GlobalAveragePooling1D()
    reference_model = keras.Model(inp, [pool(results[0]), pool(results[1])])
    rng = np.random.default_rng(11)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    names = result_names(kind, "none") if return_state else ["f", "b"]
    m = kcompile.compile_string(f"""model bi {{
    input ids: int64[6]
    {", ".join(names)} = Bidirectional({kind}(3, return_sequences=true, return_state={str(return_state).lower()}),
                                       merge_mode=none)(Embedding(10, 2, mask_zero=true)(ids))
    layer pool = GlobalAveragePooling1D()
    pf = pool(f)
    pb = pool(b)
    output pf, pb
}}""")
    m.set_weights(reference_model.get_weights())
    ids = IDS[:3]  # (a fully masked row averages nothing: Keras's 0 / 0)
    for g, w in zip(m.predict(ids), reference_model.predict(ids, verbose=0)):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_bidirectional_encoder_starts_a_decoder_as_keras(kind, keras):
    """The usual use: the concatenated last states of a bidirectional encoder start a decoder of
    twice the units (both sides masked)."""
    L = keras.layers
    layer = getattr(L, kind)
    source, target = keras.Input((6,), dtype="int64"), keras.Input((5,), dtype="int64")
    _, *states = L.Bidirectional(layer(4, return_state=True))(L.Embedding(10, 3, mask_zero=True)(source))
    half = len(states) // 2
    joined = [L.Concatenate()([states[i], states[half + i]]) for i in range(half)]
    dec = layer(8, return_sequences=True)(L.Embedding(7, 2, mask_zero=True)(target), initial_state=joined)
    reference_model = keras.Model([source, target], L.Dense(3)(dec))
    rng = np.random.default_rng(2)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    s = STATE_NAMES[kind]
    m = kcompile.compile_string(f"""model ed {{
    input source: int64[6]
    input target: int64[5]
    enc, {", ".join(f"f{n}" for n in s)}, {", ".join(f"b{n}" for n in s)} = Bidirectional({kind}(4,
        return_state=true))(Embedding(10, 3, mask_zero=true)(source))
{joins(s)}
    dec = {kind}(8, return_sequences=true)(
        Embedding(7, 2, mask_zero=true)(target), initial_state=[{", ".join(s)}])
    y = Dense(3)(dec)
    output y
}}""")
    m.set_weights(reference_model.get_weights())
    tgt = np.array([[0, 1, 2, 0, 0], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0], [6, 0, 1, 0, 2]])
    want = np.asarray(reference_model.predict([IDS, tgt], verbose=0))
    np.testing.assert_allclose(m.predict({"source": IDS, "target": tgt}), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kind, options, merge_mode", [
    ("SimpleRNN", "", "concat"), ("SimpleRNN", ", return_sequences=true", "none"),
    ("LSTM", "", "sum"), ("LSTM", ", return_sequences=true, use_bias=false", "concat"),
    ("GRU", ", return_sequences=true", "ave"), ("GRU", "", "none"),
])
def test_gradients_through_the_states(kind, options, merge_mode):
    names = result_names(kind, merge_mode)
    src = (f"model m {{\n input x: float64[5, 3]\n {', '.join(names)} = Bidirectional({kind}(3, "
           f"return_state=true{options}), merge_mode={merge_mode})(x)\n output {', '.join(names)}\n}}")
    feeds = {"x": np.random.default_rng(3).normal(size=(3, 5, 3))}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_masked_gradients_through_states_into_a_decoder(kind):
    """Only the states leave the encoder: the gradients reach its weights (and its Embedding's)
    through them, masked steps skipped."""
    s = STATE_NAMES[kind]
    src = f"""model m {{
        input ids: int64[5]
        input target: float64[4, 2]
        enc, {", ".join(f"f{n}" for n in s)}, {", ".join(f"b{n}" for n in s)} = Bidirectional({kind}(3,
            return_state=true, return_sequences=true))(Embedding(8, 3, mask_zero=true, dtype=float64)(ids))
{joins(s)}
        dec = {kind}(6, return_sequences=true)(target, initial_state=[{", ".join(s)}])
        y = Dense(2)(dec)
        output y
    }}"""
    rng = np.random.default_rng(4)
    feeds = {"ids": np.array([[1, 2, 0, 0, 3], [0, 0, 0, 0, 0], [6, 7, 1, 2, 3]]),
             "target": rng.normal(size=(3, 4, 2))}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)


def first_error(body):
    from kcompile.driver import check_module, parse_source
    source = "model m {\n    input x: float32[6, 3]\n    input h: float32[4]\n" + body + "\n    output y\n}\n"
    diagnostics = check_module(parse_source(source, "t.kdl"))
    assert diagnostics, "expected an error"
    return diagnostics[0]


@pytest.mark.parametrize("body, line, col, message", [
    ("    y, h1, c1 = Bidirectional(LSTM(4, return_state=true))(x)", 4, 5, "3 names for 5 values"),
    ("    y, f, b = Bidirectional(GRU(4, return_state=true), merge_mode=none)(x)", 4, 5,
     "3 names for 4 values"),
    ("    y = Bidirectional(GRU(4), merge_mode=max)(x)", 4, 42,
     "Bidirectional argument 'merge_mode': expected concat or sum or mul or ave or none, got max"),
    ("    t = Bidirectional(GRU(4, return_state=true))(x)\n    y = Dense(2)(t)", 5, 18, "expected a tensor, got ("),
    ("    y, fh, bh = Bidirectional(LSTM(4, return_state=true))(x, initial_state=[h, h])", 4, 17,
     "Bidirectional(LSTM)'s initial_state takes 4 tensors [fh, fc, bh, bc]"),
])
def test_errors_are_located(body, line, col, message):
    d = first_error(body)
    assert (d.loc.line, d.loc.col) == (line, col), d.render()
    assert message in d.message, d.render()


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_initial_state_splits_between_the_directions_as_keras(kind, keras):
    """initial_state=[forward states..., backward states...]: the first half starts the forward
    layer, the second the backward one (Keras's Bidirectional.call)."""
    L = keras.layers
    n = len(STATE_NAMES[kind])
    x, states = keras.Input((6, 3)), [keras.Input((4,)) for _ in range(2 * n)]
    y = L.Bidirectional(getattr(L, kind)(4, return_sequences=True))(x, initial_state=states)
    reference_model = keras.Model([x] + states, y)
    rng = np.random.default_rng(5)
    reference_model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                                 for w in reference_model.get_weights()])
    names = [f"s{i}" for i in range(2 * n)]
    src = ("model m {\n    input x: float32[6, 3]\n" + "".join(f"    input {s}: float32[4]\n" for s in names) +
           f"    y = Bidirectional({kind}(4, return_sequences=true))(x, initial_state=[{', '.join(names)}])\n"
           "    output y\n}\n")
    m = kcompile.compile_string(src)
    m.set_weights(reference_model.get_weights())
    feeds = {"x": rng.standard_normal((3, 6, 3)).astype(np.float32),
             **{s: rng.standard_normal((3, 4)).astype(np.float32) for s in names}}
    want = np.asarray(reference_model.predict([feeds["x"]] + [feeds[s] for s in names], verbose=0))
    np.testing.assert_allclose(m.predict(feeds), want, rtol=1e-5, atol=2e-6)
    # the states' own gradients, against float64 central differences
    src64 = src.replace("float32", "float64")
    feeds64 = {k: v.astype(np.float64) for k, v in feeds.items()}
    checked, _ = check_gradients(src64, feeds64)
    assert checked == expected_checks(src64, feeds64)


def test_wrapped_layers_take_names_from_the_models_count_as_keras(tmp_path):
    """Keras names a wrapped layer when it is made: LSTM after Bidirectional(LSTM(...)) is
    lstm_1, Dense after TimeDistributed(Dense(...)) dense_1. A weights file of the names before
    (the same shapes in the same order) still loads, in order, with a warning."""
    source = """model m {
    input x: float32[5, 3]
    h = Bidirectional(LSTM(4, return_sequences=true))(x)
    layer b = Bidirectional(GRU(2, return_sequences=true))
    h = b(h)
    h = LSTM(3, return_sequences=true)(h)
    h = TimeDistributed(Dense(2))(h)
    y = Dense(1)(h)
    output y
}"""
    m = kcompile.compile_string(source)
    names = [layer.name for layer in m.layers]
    assert names == ["bidirectional", "b", "lstm_1", "time_distributed", "dense_1"]
    assert "b/forward_gru/kernel" in m.weight_names and "time_distributed/dense/kernel" in m.weight_names
    assert m.get_layer("lstm_1").class_name == "LSTM"
    old = {n.replace("lstm_1/", "lstm/").replace("dense_1/", "dense/"): w
           for n, w in zip(m.weight_names, m.get_weights())}
    np.savez(tmp_path / "old.npz", **{f"{i:04d}": w for i, w in enumerate(old.values())}, names=np.array(list(old)))
    other = kcompile.compile_string(source, seed=1)
    with pytest.warns(UserWarning, match="numbers its layers otherwise .* read in that order"):
        other.load_weights(tmp_path / "old.npz")
    for a, b in zip(other.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
