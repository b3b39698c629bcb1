"""Keras 3's PiecewiseConstantDecay, InverseTimeDecay and CosineDecay's warmup: the rate at each
step against numpy forms of Keras's formulas and against Keras's own schedule objects (Keras
evaluates a schedule at the optimizer's iteration count before the update, so the first step
uses the schedule at 0), the weights after a few SGD steps of fit, and located errors for bad
arguments."""

import numpy as np
import pytest

import kcompile
from kcompile.errors import KcompileError
from kcompile.runtime.training import learning_rate_at

SOURCE = """model m {{
    input x: float32[4]
    y = Dense(3)
    output y
    train {{
        loss = mse
        optimizer = SGD({schedule})
    }}
}}
"""


def build(schedule):
    return kcompile.compile_string(SOURCE.format(schedule=schedule), file="t.kdl", seed=0)


# ---------------- numpy forms of Keras 3's formulas ----------------
def piecewise(boundaries, values):
    def f(step):  # values[0] up to and at boundaries[0], values[i] for b[i-1] < step <= b[i], values[-1] past
        return values[int(np.searchsorted(np.asarray(boundaries), step, side="left"))]
    return f


def inverse_time(lr0, decay_steps, rate, staircase=False):
    def f(step):
        p = step / decay_steps
        return lr0 / (1 + rate * (np.floor(p) if staircase else p))
    return f


def cosine(lr0, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0):
    def decay(step, start):
        done = min(step, decay_steps) / decay_steps
        return start * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * done)) + alpha)

    def f(step):
        if warmup_target is None:
            return decay(step, lr0)
        step = min(step, decay_steps + warmup_steps)
        if step < warmup_steps:
            return (warmup_target - lr0) * (step / warmup_steps) + lr0
        return decay(step - warmup_steps, warmup_target)
    return f


# (kcompile source, numpy reference, Keras constructor)
CASES = {
    "piecewise": ("PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.01])", piecewise([2, 5], [0.1, 0.05, 0.01]),
                  lambda s: s.PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.01])),
    "piecewise_kwargs": ("PiecewiseConstantDecay(values=[0.3, 0.2], boundaries=[0])", piecewise([0], [0.3, 0.2]),
                         lambda s: s.PiecewiseConstantDecay(boundaries=[0], values=[0.3, 0.2])),
    "piecewise_many": ("PiecewiseConstantDecay([1, 2, 3, 6], [1, 0.5, 0.25, 0.125, 0])",
                       piecewise([1, 2, 3, 6], [1, 0.5, 0.25, 0.125, 0]),
                       lambda s: s.PiecewiseConstantDecay([1, 2, 3, 6], [1.0, 0.5, 0.25, 0.125, 0.0])),
    "inverse_time": ("InverseTimeDecay(0.1, 2, 0.5)", inverse_time(0.1, 2, 0.5),
                     lambda s: s.InverseTimeDecay(0.1, 2, 0.5)),
    "inverse_time_staircase": ("InverseTimeDecay(0.1, 3, 2.0, staircase=true)", inverse_time(0.1, 3, 2.0, True),
                               lambda s: s.InverseTimeDecay(0.1, 3, 2.0, staircase=True)),
    "inverse_time_kwargs": ("InverseTimeDecay(initial_learning_rate=0.2, decay_rate=1, decay_steps=1)",
                            inverse_time(0.2, 1, 1.0), lambda s: s.InverseTimeDecay(0.2, 1, 1.0)),
    "cosine_warmup": ("CosineDecay(0.0, 4, warmup_target=0.1, warmup_steps=3)",
                      cosine(0.0, 4, warmup_target=0.1, warmup_steps=3),
                      lambda s: s.CosineDecay(0.0, 4, warmup_target=0.1, warmup_steps=3)),
    "cosine_warmup_alpha": ("CosineDecay(0.02, 3, 0.25, warmup_target=0.2, warmup_steps=2)",
                            cosine(0.02, 3, 0.25, warmup_target=0.2, warmup_steps=2),
                            lambda s: s.CosineDecay(0.02, 3, 0.25, warmup_target=0.2, warmup_steps=2)),
    # a warmup target with no warmup steps: the decay starts from the target at step 0
    "cosine_target_only": ("CosineDecay(0.5, 4, warmup_target=0.1)", cosine(0.5, 4, warmup_target=0.1),
                           lambda s: s.CosineDecay(0.5, 4, warmup_target=0.1)),
    # warmup steps without a target: Keras ignores them
    "cosine_steps_only": ("CosineDecay(0.1, 4, warmup_steps=3)", cosine(0.1, 4, warmup_steps=3),
                          lambda s: s.CosineDecay(0.1, 4, warmup_steps=3)),
    "cosine_none_target": ("CosineDecay(0.1, 4, warmup_target=none, warmup_steps=0)", cosine(0.1, 4),
                           lambda s: s.CosineDecay(0.1, 4, warmup_target=None, warmup_steps=0)),
}
STEPS = 12  # past every boundary, warmup and decay of the cases


@pytest.fixture
def keras_schedules(keras):
    return keras.optimizers.schedules


@pytest.mark.parametrize("case", list(CASES))
def test_rate_at_each_step_matches_numpy_and_keras(case, keras_schedules):
    src, f, make = CASES[case]
    model = build(src)
    spec = model.manifest["training"]["optimizer"]["args"]["learning_rate"]
    keras_schedule = make(keras_schedules)
    for step in range(STEPS):
        got = learning_rate_at(spec, step)
        assert got == pytest.approx(f(step), rel=1e-12, abs=1e-15), (case, step)
        assert got == pytest.approx(float(keras_schedule(step)), rel=1e-6, abs=1e-9), (case, step)


def test_piecewise_boundary_steps():
    """A boundary step still has the value before it (Keras: step <= boundary)."""
    spec = build("PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.01])").manifest[
        "training"]["optimizer"]["args"]["learning_rate"]
    assert [learning_rate_at(spec, s) for s in range(7)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.01]


def test_schedule_arguments_in_the_manifest():
    args = lambda src: build(src).manifest["training"]["optimizer"]["args"]["learning_rate"]  # noqa: E731
    assert args("PiecewiseConstantDecay([2, 5.0], [1, 0.5, 0.25])") == {
        "schedule": "PiecewiseConstantDecay", "boundaries": [2, 5], "values": [1.0, 0.5, 0.25]}
    assert args("InverseTimeDecay(0.1, 2, 0.5)") == {
        "schedule": "InverseTimeDecay", "initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5,
        "staircase": False}
    assert args("CosineDecay(0.1, 2)") == {
        "schedule": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 2, "alpha": 0.0,
        "warmup_target": None, "warmup_steps": 0}


def test_an_older_cosine_spec_without_warmup_still_evaluates():
    spec = {"schedule": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 4, "alpha": 0.0}
    assert learning_rate_at(spec, 2) == pytest.approx(0.05)


# ---------------- a short fit against the reference ----------------
@pytest.mark.parametrize("case", ["piecewise", "inverse_time_staircase", "cosine_warmup"])
def test_fit_moves_the_weights_by_the_scheduled_rate(case):
    """Five SGD steps of fit (batches of 4 from 20 samples) equal a numpy float64 SGD on
    y = x W + b with mse, each step at the rate of the schedule at the step count before it."""
    src, f, _ = CASES[case]
    model = build(src)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    t = rng.normal(size=(20, 3)).astype(np.float32)
    w, b = (a.astype(np.float64) for a in model.get_weights())
    for k in range(5):
        xb, tb = x[4 * k:4 * k + 4].astype(np.float64), t[4 * k:4 * k + 4].astype(np.float64)
        g = -2 * (tb - (xb @ w + b)) / tb.size  # d mean((t - p)^2) / dp
        lr = f(k)
        w, b = w - lr * (xb.T @ g), b - lr * g.sum(0)
    model.fit(x, t, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert model.iterations == 5
    assert model.learning_rate == pytest.approx(f(5), rel=1e-12, abs=1e-15)
    got_w, got_b = model.get_weights()
    np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, b, rtol=1e-5, atol=1e-6)
    # as Keras, a scheduled rate is not settable (setting it ended the schedule, silently)
    with pytest.raises(TypeError, match=r"learning_rate: this optimizer's rate follows a schedule \(\w+\) and "
                                        r"cannot be set, as in Keras"):
        model.learning_rate = 0.3
    with pytest.raises(TypeError, match="follows a schedule"):
        model.optimizer.learning_rate = 0.3
    assert model.learning_rate == pytest.approx(f(5), rel=1e-12, abs=1e-15)


# ---------------- located errors ----------------
# (schedule source, column of the error on line 7, message); `optimizer = SGD(` ends at column 24
BAD = [
    ("PiecewiseConstantDecay(5, [0.1, 0.2])", 48, "PiecewiseConstantDecay: boundaries must be a non-empty list of "
     "increasing integers, got 5"),
    ("PiecewiseConstantDecay([], [0.1])", 48, "boundaries must be a non-empty list of increasing integers, got []"),
    ("PiecewiseConstantDecay([2, 2], [0.1, 0.2, 0.3])", 52, "boundaries must be a non-empty list of increasing "
     "integers, got 2 after 2"),
    ("PiecewiseConstantDecay([5, 3], [0.1, 0.2, 0.3])", 52, "got 3 after 5"),
    ("PiecewiseConstantDecay([1, 2.5], [0.1, 0.2, 0.3])", 52, "boundaries must be a non-empty list of increasing "
     "integers, got 2.5"),
    ("PiecewiseConstantDecay([1, x], [0.1, 0.2, 0.3])", 52, "got x"),
    ("PiecewiseConstantDecay([1, 2], [0.1, -0.2, 0.3])", 62, "PiecewiseConstantDecay: values must be finite "
     "numbers >= 0, got -0.2"),
    ("PiecewiseConstantDecay([1, 2], [0.1, 1e400, 0.3])", 62, "values must be finite numbers >= 0, got inf"),
    ("PiecewiseConstantDecay([1, 2], [0.1, true, 0.3])", 62, "values must be finite numbers >= 0, got true"),
    ("PiecewiseConstantDecay([1, 2], 0.1)", 56, "values must be a list of finite numbers >= 0, got 0.1"),
    ("PiecewiseConstantDecay([1, 2], [0.1, 0.2])", 56, "PiecewiseConstantDecay: values has 2 numbers for "
     "2 boundaries; it needs 3, one more than boundaries"),
    ("PiecewiseConstantDecay([1], [0.1, 0.2, 0.3])", 53, "values has 3 numbers for 1 boundary; it needs 2"),
    ("PiecewiseConstantDecay([1, 2])", 25, "PiecewiseConstantDecay needs values"),
    ("InverseTimeDecay(0.1, 0, 0.5)", 47, "InverseTimeDecay: decay_steps must be a finite number > 0, got 0"),
    ("InverseTimeDecay(0.1, -1.5, 0.5)", 47, "decay_steps must be a finite number > 0, got -1.5"),
    ("InverseTimeDecay(0.1, 2, -0.5)", 50, "InverseTimeDecay: decay_rate must be a finite number > 0, got -0.5"),
    ("InverseTimeDecay(-0.1, 2, 0.5)", 42, "initial_learning_rate must be a finite number >= 0, got -0.1"),
    ("InverseTimeDecay(0.1, 2, 0.5, staircase=1)", 65, "InverseTimeDecay: staircase must be true or false, got 1"),
    ("InverseTimeDecay(0.1, 2)", 25, "InverseTimeDecay needs decay_rate"),
    ("CosineDecay(0.1, 4, warmup_steps=-1)", 58, "CosineDecay: warmup_steps must be a non-negative integer, got -1"),
    ("CosineDecay(0.1, 4, warmup_steps=2.5)", 58, "warmup_steps must be a non-negative integer, got 2.5"),
    ("CosineDecay(0.1, 4, warmup_steps=none)", 58, "warmup_steps must be a non-negative integer, got none"),
    ("CosineDecay(0.1, 4, warmup_target=-1)", 59, "CosineDecay: warmup_target must be a finite number >= 0 or none, "
     "got -1"),
    ("CosineDecay(0.1, 4, warmup_target=1e400)", 59, "warmup_target must be a finite number >= 0 or none, got inf"),
    ("CosineDecay(0.1, 4, 0.0, 0.2)", 50,
     "CosineDecay takes 3 positional arguments (initial_learning_rate, decay_steps, alpha), got 4"),
    ("CosineDecay(0.1, 4, warmup=3)", 45, "CosineDecay has no argument 'warmup'"),
]


@pytest.mark.parametrize("schedule,col,message", BAD, ids=[c[0] for c in BAD])
def test_bad_schedule_argument_is_a_located_error(schedule, col, message):
    with pytest.raises(KcompileError) as info:
        build(schedule)
    d = info.value.diagnostics[0]
    assert (d.loc.file, d.loc.line, d.loc.col) == ("t.kdl", 7, col), d.render()
    assert message in d.message, d.render()
    assert d.render().splitlines()[2].startswith("    " + " " * (col - 1) + "^")


def test_every_bad_piecewise_item_is_reported():
    with pytest.raises(KcompileError) as info:
        build("PiecewiseConstantDecay([3, 1, 0.5], [0.1, -1, 0.2, x])")
    assert [(d.loc.col, d.message) for d in info.value.diagnostics] == [
        (52, "PiecewiseConstantDecay: boundaries must be a non-empty list of increasing integers, got 1 after 3"),
        (55, "PiecewiseConstantDecay: boundaries must be a non-empty list of increasing integers, got 0.5"),
        (67, "PiecewiseConstantDecay: values must be finite numbers >= 0, got -1"),
        (76, "PiecewiseConstantDecay: values must be finite numbers >= 0, got x")]


@pytest.mark.parametrize("schedule,rates", [  # (rates: {step: the rate there})
    ("PiecewiseConstantDecay([0], [0, 0])", {0: 0.0, 1: 0.0}),
    ("PiecewiseConstantDecay([-3, 1e3], [1, 2, 3])", {0: 2.0, 1000: 2.0, 1001: 3.0}),
    ("PiecewiseConstantDecay(boundaries=[10.0], values=[0.1, 0.01])", {0: 0.1, 10: 0.1, 11: 0.01}),
    ("InverseTimeDecay(0, 1, 1e-9, false)", {0: 0.0, 5: 0.0}),
    ("CosineDecay(0.1, 1, 1, warmup_target=none, warmup_steps=0)", {0: 0.1, 1: 0.1, 5: 0.1}),
    ("CosineDecay(0, 1, warmup_target=0, warmup_steps=0)", {0: 0.0, 1: 0.0}),
    ("CosineDecay(0.1, 1, warmup_steps=0)", {0: 0.1, 1: 0.0, 5: 0.0})])
def test_arguments_at_the_ends_of_their_ranges_compile(schedule, rates):
    model = build(schedule)
    assert model.learning_rate == pytest.approx(rates[0], abs=1e-12)
    spec = model.manifest["training"]["optimizer"]["args"]["learning_rate"]
    assert {step: learning_rate_at(spec, step) for step in rates} == pytest.approx(rates, abs=1e-12)
