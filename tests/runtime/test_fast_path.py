"""The optimized paths give the plain path's numbers: -O1 training graphs (sunk transposes,
fused biases, argmax-based pooling gradients) versus -O0, and the IOBinding runner versus
plain onnxruntime runs of the same graph."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import kcompile
from kcompile.errors import ShapeMismatch

ROOT = Path(__file__).resolve().parents[2]


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    return x, y


def test_o1_training_matches_o0():
    x, y = data()
    runs = {}
    for level in (0, 1):
        m = kcompile.compile(ROOT / "examples" / "mnist_cnn.kdl", seed=3, opt_level=level)
        h = m.fit(x, y, epochs=2, batch_size=16, verbose=0)
        runs[level] = (h.history["loss"], m.get_weights())
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-4)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_iobinding_runner_matches_plain_session_runs():
    x, y = data(32)
    m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=1)
    spec = m.manifest["training"]
    session = ort.InferenceSession(m._training_onnx["train_step"], providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    weights = dict(zip(m.weight_names, m.get_weights()))
    slots = m.optimizer_state()
    plain_losses = []
    for step in range(3):
        feeds = {"image": x, "probs_target": y, "loss:sample_weight": np.ones(len(x), np.float32),
                 "lr": np.array(0.001, np.float32), "step": np.array(step + 1, np.float32),
                 **weights, **slots}
        out = dict(zip(names, session.run(None, feeds)))
        plain_losses.append(float(out["loss"]))
        for k, v in out.items():
            if k.startswith("new:"):
                (weights if k[4:] in weights else slots)[k[4:]] = v
    fast_losses = [m.train_on_batch(x, y)[0] for _ in range(3)]
    assert not spec["noise"]
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-6)
    for name, w in zip(m.weight_names, m.get_weights()):
        np.testing.assert_allclose(w, weights[name], rtol=1e-6, atol=1e-7)


def test_predict_with_bound_outputs_matches_session_run():
    x, _ = data(70)
    m = kcompile.compile(ROOT / "examples" / "mnist_cnn.kdl", seed=0)
    session = ort.InferenceSession(m.onnx_model().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(m.predict(x, batch_size=32), session.run(None, {"image": x})[0], rtol=1e-5, atol=1e-6)


def test_small_predicts_reuse_bound_buffers_but_return_fresh_arrays():
    """Batch-1 predicts run on buffers bound once; each result must be the caller's own array."""
    x, _ = data(3)
    m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
    session = ort.InferenceSession(m.onnx_model().SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"image": x})[0]
    first = m.predict(x[:1])
    second = m.predict(x[1:2])
    assert not np.shares_memory(first, second)
    np.testing.assert_allclose(first, want[:1], rtol=1e-5, atol=1e-7)  # not overwritten by the 2nd call
    np.testing.assert_allclose(second, want[1:2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.predict(x[:2]), want[:2], rtol=1e-5, atol=1e-7)  # new shape, new buffers
    np.testing.assert_allclose(m.predict(x[2:3]), want[2:3], rtol=1e-5, atol=1e-7)
    # Weights changed by training: the small path must not keep serving the old weights.
    m.train_on_batch(x, np.eye(10, dtype=np.float32)[:3])
    m.predict(x[:1])
    session = ort.InferenceSession(m.onnx_model().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(m.predict(x[:1]), session.run(None, {"image": x[:1]})[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seen", [False, True])
def test_repeated_small_predicts_skip_the_checks_and_keep_every_rule(monkeypatch, turns, seen):
    """A small predict shaped as the last one runs its bound buffers without predict's general
    checks (batch-1 latency); every case the general path treats otherwise still takes it: a
    batch size below the rows, another shape or dtype, a bool or numpy batch size, steps, a
    dict, and new weights, whose first predict must see them. Once sessions take turns (seen),
    the repeated predicts run on the spinning copy, as the general path's back to back."""
    from kcompile.runtime.model import Model
    turns.seen = seen
    x, y = data(4)
    m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
    plain = lambda v: ort.InferenceSession(m.onnx_model().SerializeToString(),  # noqa: E731
                                           providers=["CPUExecutionProvider"]).run(None, {"image": v})[0]
    want = plain(x)
    general = []
    real = Model._prepare
    monkeypatch.setattr(Model, "_prepare", lambda self, v, where: general.append(where) or real(self, v, where))
    np.testing.assert_allclose(m.predict(x[:1]), want[:1], rtol=1e-5, atol=1e-7)
    assert general == ["predict"]
    out = m.predict(x[1:2])
    np.testing.assert_allclose(out, want[1:2], rtol=1e-5, atol=1e-7)
    out[:] = 7  # (the caller's own array: not the bound output, which the next predict writes)
    np.testing.assert_allclose(m.predict(x[1:2], batch_size=None), want[1:2], rtol=1e-5, atol=1e-7)
    assert (out == 7).all()
    assert general == ["predict"] * (1 + seen)  # (repeated: no general checks; once seen, from the copy's first)
    assert ("spinning" in m._copies) == seen
    np.testing.assert_allclose(m.predict(x[:2], batch_size=1), want[:2], rtol=1e-5, atol=1e-7)  # (two runs)
    np.testing.assert_allclose(m.predict(x[:2]), want[:2], rtol=1e-5, atol=1e-7)  # (new buffers)
    np.testing.assert_allclose(m.predict(x[2:4]), want[2:4], rtol=1e-5, atol=1e-7)
    assert len(general) == 3 + seen
    for bad in (True, np.int64(0)):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            m.predict(x[:2], batch_size=bad)
    with pytest.raises(ShapeMismatch):
        m.predict(x[:2].astype(np.float64) + np.zeros((2, 28, 28, 2)))
    np.testing.assert_allclose(m.predict(x[:2].astype(np.float64)), want[:2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.predict(x[:2], steps=1, batch_size=1), want[:1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m.predict({"image": x[:2]}), want[:2], rtol=1e-5, atol=1e-7)
    count = len(general)
    m.train_on_batch(x, y)  # (new weights: the first predict after binds them as inputs)
    for _ in range(3):
        np.testing.assert_allclose(m.predict(x[:2]), plain(x[:2]), rtol=1e-5, atol=1e-7)
    assert len(general) - count >= 2  # (until the folded session's predicts repeat)


def test_repeated_small_predicts_of_strided_arrays_and_a_call_read_before_another_shape():
    """A repeat may be any array of the shape (a strided view is copied in); and a call read
    before another thread's predict of another shape rebinds the buffers still runs whole, on
    its own buffers (the fast path reads Predictor._small once)."""
    from kcompile.runtime.binding import Predictor
    x, _ = data(4)
    m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
    want = ort.InferenceSession(m.onnx_model().SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    m.predict(x[:1])
    strided = np.asfortranarray(x[1:2])[:, ::-1][:, ::-1]
    assert not strided.flags.c_contiguous
    np.testing.assert_allclose(m.predict(strided), want[1:2], rtol=1e-5, atol=1e-7)
    call = m._predictor._small
    m._predictor._run_small({"image": x[1:3]}, 2)  # (another thread's predict of two rows)
    out = Predictor.run_small_again(call, x[2:3])
    assert out[0].shape == (1, 10)
    np.testing.assert_allclose(out[0], want[2:3], rtol=1e-5, atol=1e-7)


def test_repeated_small_predicts_still_check_ids_and_see_shared_weights_change():
    """Models with Embedding ids (checked every call) or shared weights (which another model's
    training changes) take the general path on every predict."""
    ids = kcompile.compile_string("model e {\n    input ids: int64[3]\n    y = Embedding(10, 4)(ids)\n"
                                  "    output y\n}\n", seed=0)
    table = ids.get_weights()[0]
    for _ in range(2):
        np.testing.assert_allclose(ids.predict(np.array([[1, 2, 9]])), table[[[1, 2, 9]]])
    with pytest.raises(ShapeMismatch, match="input 'ids' holds ids from 1 to 10"):
        ids.predict(np.array([[1, 2, 10]]))
    src = "model {name} {{\n    input x: float32[4]\n    y = Dense(3)\n    output y\n}}\n"
    a, b = (kcompile.compile_string(src.format(name=n), seed=i) for i, n in enumerate("ab"))
    a.share_weights(b)
    x = np.ones((1, 4), np.float32)
    for _ in range(2):
        a.predict(x)
    b.set_weights([np.full((4, 3), 0.5, np.float32), np.arange(3, dtype=np.float32)])
    np.testing.assert_allclose(a.predict(x), [[2, 3, 4]])


def test_in_place_scalars_are_bound_again_where_binding_copies():
    """lr and step are bound once over their buffers on the CPU; where binding copies to the
    device at once (CUDA), the runner binds their current values each run. Both paths must see
    a learning rate changed in place (the CUDA path forced here on the CPU provider)."""
    from kcompile.runtime.binding import StateRunner
    x, y = data(32)
    steps = {}
    for device in ("cpu", "cuda"):
        m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=1)
        session = m._session_for("train_step")
        runner = StateRunner(session, {**m._weights, **m._slots}, ["CPUExecutionProvider"],
                             transposed=m._held_transposed())  # (the step holds the first kernel transposed)
        runner.device = (device, 0)
        lr, step = np.zeros((), np.float32), np.ones((), np.float32)
        runner.bind_in_place({"lr": lr, "step": step})
        moved = []
        for rate in (0.0, 1e-3, 0.0):
            lr[...] = rate
            before = runner.current()["dense_1/bias"].copy()
            runner.run({"image": x, "probs_target": y, "loss:sample_weight": np.ones(len(x), np.float32)})
            moved.append(float(np.abs(runner.current()["dense_1/bias"] - before).max()))
        steps[device] = moved
    for moved in steps.values():
        assert moved[0] == 0.0 and moved[1] > 0.0 and moved[2] == 0.0
    np.testing.assert_allclose(steps["cuda"], steps["cpu"], rtol=1e-6)


SPIN_STOP = "session.force_spinning_stop"


def stops_spinning(session):
    return session.get_session_options().get_session_config_entry(SPIN_STOP) == "1"


def test_one_model_keeps_its_pools_spinning(turns):
    x, y = data(32)
    m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
    m.fit(x, y, epochs=3, batch_size=8, validation_data=(x, y), verbose=0)
    m.predict(x)  # the first predict after training binds the weights as inputs ...
    m.predict(x)  # ... a second with the same weights folds them into a session of its own
    sessions = [m._train_session, m._eval_session, m._weights_session, m._session]
    assert all(s is not None and not stops_spinning(s) for s in sessions)
    assert not turns.seen


def test_models_stepping_in_turn_rebuild_their_sessions_to_stop_spinning_and_train_as_alone(turns):
    """Two models taking turns (as a GAN's do) share the cores with each other's spinning pool
    threads unless the pools stop after each run (benchmarks/sessions.py): once the runtime sees
    it, each model's sessions are rebuilt that way, and training goes on from the same state."""
    x, y = data(32)
    alone = []
    for seed in (0, 1):
        m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=seed)
        alone.append([m.train_on_batch(x, y)[0] for _ in range(12)] + [m.get_weights(), m.optimizer_state()])
    turns.reset()
    models = [kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=seed) for seed in (0, 1)]
    losses = [[], []]
    for _ in range(12):
        for i, m in enumerate(models):
            losses[i].append(m.train_on_batch(x, y)[0])
    assert turns.seen
    for m, ref, got in zip(models, alone, losses):
        assert m._stops_spinning and stops_spinning(m._train_session)
        np.testing.assert_allclose(got, ref[:12], rtol=1e-6)
        for a, b in zip(m.get_weights(), ref[12]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        for name, slot in m.optimizer_state().items():
            np.testing.assert_allclose(slot, ref[13][name], rtol=1e-6, atol=1e-9)
        m.predict(x)
        m.predict(x)
        assert stops_spinning(m._weights_session) and stops_spinning(m._session)


def test_sessions_made_once_sessions_take_turns_stop_spinning_from_the_start(taking_turns):
    x, y = data(32)
    m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
    m.train_on_batch(x, y)
    session = m._train_session
    m.train_on_batch(x, y)
    m.predict(x)
    assert m._train_session is session and stops_spinning(session) and stops_spinning(m._weights_session)


def test_predicts_back_to_back_once_sessions_take_turns_run_on_a_spinning_copy(taking_turns):
    """Once pools stop after every run, a loop of predicts would wake a pool thread each call;
    predicts that follow a predict of the same session run on a copy whose pool spins, with the
    same numbers. A predict that follows another session's run takes the stopping session."""
    x, y = data(32)
    m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=0)
    m.train_on_batch(x, y)
    m.predict(x[:1])  # (the first predict after a change binds the weights as inputs ...)
    first = m.predict(x[:1])  # (... the second folds them into a session, whose first run this is)
    folded = m._session
    assert stops_spinning(folded) and "spinning" not in m._copies
    loop = [m.predict(x[i:i + 1]) for i in range(4)]
    copied, spinning = m._copies["spinning"]
    assert copied is folded and not stops_spinning(spinning.session)
    np.testing.assert_array_equal(loop[0], first)
    np.testing.assert_allclose(np.concatenate(loop), m.predict(x[:4], batch_size=4), rtol=1e-6, atol=1e-7)
    m.train_on_batch(x, y)  # the weights changed: the copy goes with the session it copies
    assert "spinning" not in m._copies
    m.predict(x[:1])
    after = m.predict(x[:1])
    assert m._session is not folded and "spinning" not in m._copies
    again = m.predict(x[:1])
    assert m._copies["spinning"][0] is m._session
    np.testing.assert_array_equal(again, after)
