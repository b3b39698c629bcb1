"""The train section's arguments are checked at compile time, each bad one a located error:
optimizer hyperparameters and learning-rate schedules within Keras's ranges (and past them
where a value can only give NaN or inf), losses that compare a prediction with a target,
loss_weights. The runtime's ``model.learning_rate`` refuses what the source refuses."""
import math

import numpy as np
import pytest

import kcompile
from kcompile.errors import KcompileError
from kcompile.runtime.training import learning_rate_at

SOURCE = """model m {{
    input x: float32[4]
    h = Dense(3); y = Dense(3)(h)
    output y
    train {{
        loss = {loss}
        optimizer = {optimizer}
    }}
}}
"""


def compile_train(optimizer="SGD()", loss="mse"):
    return kcompile.compile_string(SOURCE.format(optimizer=optimizer, loss=loss), file="t.kdl", seed=0)


def located_error(line, col, message, **kw):
    """The first diagnostic is at t.kdl:line:col, says ``message`` and shows its line with a caret."""
    with pytest.raises(KcompileError) as info:
        compile_train(**kw)
    d = info.value.diagnostics[0]
    assert (d.loc.file, d.loc.line, d.loc.col) == ("t.kdl", line, col), d.render()
    assert message in d.message, d.render()
    text = d.render().splitlines()
    assert text[0].startswith(f"t.kdl:{line}:{col}: error: ")
    assert text[2].startswith("    " + " " * (col - 1) + "^")
    return d


# (optimizer source, column of the error on line 7, message)
BAD_OPTIMIZERS = [
    # schedules: Keras's decay_steps > 0 (a ZeroDivisionError at training before)
    ("SGD(ExponentialDecay(0.1, 0, 0.5))", 47, "ExponentialDecay: decay_steps must be a finite number > 0, got 0"),
    ("SGD(CosineDecay(0.1, 0))", 42, "CosineDecay: decay_steps must be a finite number > 0, got 0"),
    ("SGD(StepDecay(0.1, 0))", 40, "StepDecay: step_size must be a positive integer, got 0"),
    ("SGD(CosineDecay(0.1, -3))", 42, "decay_steps must be a finite number > 0, got -3"),
    ("SGD(ExponentialDecay(0.1, 10, -1))", 51, "decay_rate must be a finite number > 0, got -1"),  # (complex)
    ("SGD(ExponentialDecay(0.1, 10, 0))", 51, "decay_rate must be a finite number > 0, got 0"),
    ('SGD(ExponentialDecay("a", 10, 0.5))', 42, "initial_learning_rate must be a finite number >= 0, got 'a'"),
    ("SGD(ExponentialDecay(x, y, z))", 42, "initial_learning_rate must be a finite number >= 0, got x"),
    ("SGD(ExponentialDecay(-0.1, 10, 0.5))", 42, "initial_learning_rate must be a finite number >= 0, got -0.1"),
    ("SGD(ExponentialDecay(1e400, 10, 0.5))", 42, "got inf (too large for a float)"),
    ("SGD(ExponentialDecay(0.1, none, 0.5))", 47, "decay_steps must be a finite number > 0, got none"),
    ("SGD(CosineDecay(0.1, 10, alpha=x))", 52, "CosineDecay: alpha must be a number from 0 to 1, got x"),
    ("SGD(CosineDecay(0.1, 10, alpha=1.5))", 52, "alpha must be a number from 0 to 1, got 1.5"),
    ("SGD(CosineDecay(0.1, 10, alpha=none))", 52, "alpha must be a number from 0 to 1, got none"),
    ("SGD(StepDecay(0.1, 2, factor=-0.5))", 50, "StepDecay: factor must be a finite number > 0, got -0.5"),
    ("SGD(CosineDecay(true, 10))", 37, "initial_learning_rate must be a finite number >= 0, got true"),
    ("SGD(ExponentialDecay(0.1, 10, 0.5, staircase=3))", 66, "staircase must be true or false, got 3"),
    ("SGD(CosineDecay(0.1, 10, 0.5, 3))", 51,
     "CosineDecay takes 3 positional arguments (initial_learning_rate, decay_steps, alpha), got 4"),
    ("SGD(CosineDecay(0.1, 10, decay_steps=3))", 46, "CosineDecay got argument 'decay_steps' twice"),
    ("SGD(CosineDecay(0.1, 10, warmup=3))", 46, "CosineDecay has no argument 'warmup'"),
    ("SGD(CosineDecay(0.1))", 25, "CosineDecay needs decay_steps"),
    # optimizers
    ("SGD(1e400)", 25, "SGD: learning_rate must be a finite number >= 0, got inf (too large for a float)"),
    ("SGD(-0.1)", 25, "SGD: learning_rate must be a finite number >= 0, got -0.1"),
    ("SGD(learning_rate=none)", 39, "SGD: learning_rate must be a number or a schedule"),
    ("SGD(0.1, learning_rate=0.2)", 30, "SGD got argument 'learning_rate' twice"),
    ("SGD(0.1, 0.9)", 30, "SGD takes 1 positional argument (learning_rate), got 2"),
    ("SGD(momentum=1.5)", 34, "SGD: momentum must be a number from 0 to 1, got 1.5"),
    ("SGD(momentum=0.5, momentum=0.6)", 39, "SGD got argument 'momentum' twice"),
    ("SGD(nesterov=1)", 34, "SGD: nesterov must be true or false, got 1"),
    ("RMSprop(momentum=2)", 38, "RMSprop: momentum must be a number from 0 to 1, got 2"),
    ("RMSprop(rho=1)", 33, "RMSprop: rho must be a number >= 0 and < 1, got 1"),
    ("RMSprop(rho=2)", 33, "RMSprop: rho must be a number >= 0 and < 1, got 2"),  # (a math domain error before)
    ("Adam(beta_1=1.0)", 33, "Adam: beta_1 must be a number >= 0 and < 1, got 1.0"),
    ("Adam(beta_1=1.5)", 33, "Adam: beta_1 must be a number >= 0 and < 1, got 1.5"),
    ("Adam(beta_2=2)", 33, "Adam: beta_2 must be a number >= 0 and < 1, got 2"),
    ("Adam(epsilon=0)", 34, "Adam: epsilon must be a finite number > 0, got 0"),
    ("Adam(amsgrad=none)", 34, "Adam: amsgrad must be true or false, got none"),
    ("AdamW(weight_decay=1e400)", 40, "AdamW: weight_decay must be a finite number >= 0, got inf"),
    ("AdamW(weight_decay=none)", 40, "AdamW: weight_decay must be a finite number >= 0, got none"),
    ("SGD(weight_decay=-0.1)", 38, "SGD: weight_decay must be a finite number >= 0 or none, got -0.1"),
    ("Adagrad(initial_accumulator_value=-1)", 55, "initial_accumulator_value must be a finite number >= 0, got -1"),
    ("SGD(clipnorm=0)", 34, "SGD: clipnorm must be a finite number > 0 or none, got 0"),
    ("SGD(clipvalue=-1)", 35, "SGD: clipvalue must be a finite number >= 0 or none, got -1"),
    ("SGD(global_clipnorm=1e999)", 41, "global_clipnorm must be a finite number > 0 or none, got inf"),
    ("Adam(clipnorm=1, clipvalue=1)", 21, "set only one of clipnorm, clipvalue and global_clipnorm"),
]


@pytest.mark.parametrize("optimizer,col,message", BAD_OPTIMIZERS, ids=[c[0] for c in BAD_OPTIMIZERS])
def test_bad_optimizer_or_schedule_argument_is_a_located_error(optimizer, col, message):
    located_error(7, col, message, optimizer=optimizer)


def test_every_bad_argument_is_reported():
    with pytest.raises(KcompileError) as info:
        compile_train("Adam(ExponentialDecay(x, 0, -1), beta_1=1, epsilon=0)")
    assert [(d.loc.col, d.message.split(" must")[0]) for d in info.value.diagnostics] == [
        (43, "ExponentialDecay: initial_learning_rate"), (46, "ExponentialDecay: decay_steps"),
        (49, "ExponentialDecay: decay_rate"), (61, "Adam: beta_1"), (72, "Adam: epsilon")]


@pytest.mark.parametrize("optimizer", [
    "SGD(0, momentum=1, nesterov=true)", "SGD(momentum=0)", "Adam(beta_1=0, beta_2=0.5, epsilon=1e-3)",
    "RMSprop(rho=0, momentum=1, centered=true)", "Adagrad(initial_accumulator_value=0)",
    "AdamW(weight_decay=0)", "SGD(weight_decay=none, clipnorm=none, clipvalue=none, global_clipnorm=none)",
    "SGD(clipvalue=0.5)", "SGD(ExponentialDecay(initial_learning_rate=0, decay_steps=1, decay_rate=2))",
    "SGD(CosineDecay(0.1, 1, alpha=1))", "SGD(CosineDecay(0.1, 5, 0))", "SGD(StepDecay(0.1, 1, factor=3))",
    "SGD(ExponentialDecay(0.1, 10, 0.5, false))",
    # Keras takes these (the previous version did too): a float decay_steps, a clipvalue of 0
    "SGD(ExponentialDecay(0.1, decay_steps=1000.0, decay_rate=0.5))", "SGD(CosineDecay(0.1, 1e3))",
    "SGD(CosineDecay(0.1, 2.5))", "SGD(clipvalue=0.0)"])
def test_arguments_at_the_ends_of_their_ranges_compile_and_train(optimizer):
    """Each compiles, records its optimizer, and takes steps whose loss and weights stay finite
    (a range too wide would let NaN through here)."""
    m = compile_train(optimizer)
    assert m.manifest["training"]["optimizer"]["name"] == optimizer.split("(")[0]
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    losses = [m.train_on_batch(x, np.zeros((8, 3), np.float32)) for _ in range(3)]
    assert all(np.isfinite(losses)) and all(np.isfinite(w).all() for w in m.get_weights())


def test_schedule_arguments_in_the_manifest():
    spec = compile_train("SGD(ExponentialDecay(0.1, decay_rate=0.5, decay_steps=4))").manifest[
        "training"]["optimizer"]["args"]["learning_rate"]
    assert spec == {"schedule": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 4,
                    "decay_rate": 0.5, "staircase": False}


def test_a_growing_schedule_reaches_inf_not_an_overflow_error():
    spec = {"schedule": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 1, "decay_rate": 10.0}
    assert learning_rate_at(spec, 3) == pytest.approx(100.0)
    assert learning_rate_at(spec, 400) == math.inf


# ---------------- losses without a target, loss_weights ----------------
@pytest.mark.parametrize("loss,line,col,message", [
    ("mse(y, y)", 6, 16, "mse compares y with itself"),
    ("mse + mae(y, y)", 6, 22, "mae compares y with itself"),
    ("l2(weights)", 6, 16, "the loss needs a target"),
    ("0.5 * l1(weights)", 6, 16, "the loss needs a target"),
    ("mse(h, y)", 6, 16, "the loss needs a target"),
    ("mse\n        loss_weights = [-1]", 7, 25, "loss_weights must be finite numbers >= 0, got -1"),
    ("mse\n        loss_weights = [1e400]", 7, 25, "loss_weights must be finite numbers >= 0, got inf"),
])
def test_loss_without_a_target_is_a_located_error(loss, line, col, message):
    """Such a loss compiled, then fit, evaluate and train_on_batch failed with an IndexError:
    the step had no target to feed."""
    located_error(line, col, message, loss=loss)


def test_a_declared_target_may_come_second_in_a_symmetric_loss():
    """mse(y, t) is mse(t, y) (it trained before the target check, and must still); a
    crossentropy is not symmetric, so its target must come first."""
    src = ("model m {{\n    input x: float32[4]\n    y = Dense(3, activation=softmax)(x)\n    output y\n"
           "    train {{\n        target t: float32[3]\n        loss = {loss}\n        optimizer = SGD(0.1)\n    }}\n}}\n")
    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    t = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    losses = [kcompile.compile_string(src.format(loss=loss), seed=0).train_on_batch(x, t)
              for loss in ("mse(y, t)", "mse(t, y)")]
    assert losses[0] == pytest.approx(losses[1])
    with pytest.raises(KcompileError, match=r"categorical_crossentropy takes the target first: "
                                            r"categorical_crossentropy\(t, y\)"):
        kcompile.compile_string(src.format(loss="categorical_crossentropy(y, t)"))


def test_loss_weight_zero_and_a_loss_with_penalty_train():
    m = compile_train("SGD(0.1)", "mse + 0.01 * l2(weights)\n        loss_weights = [0]")
    before = m.get_weights()
    x = np.ones((4, 4), np.float32)
    m.fit(x, np.zeros((4, 3), np.float32), verbose=0)
    kernel = before[0] * (1 - 0.1 * 0.01 * 2)  # only the penalty's gradient: 2 w * 0.01
    np.testing.assert_allclose(m.get_weights()[0], kernel, rtol=1e-6)


# ---------------- model.learning_rate at runtime ----------------
@pytest.mark.parametrize("value", [-1, -1e-9, float("nan"), float("inf")])
def test_setting_a_negative_or_non_finite_rate_is_refused(value):
    m = compile_train("SGD(0.1)")
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        m.learning_rate = value
    assert m.learning_rate == pytest.approx(0.1)
    with pytest.raises(TypeError, match="learning_rate must be a number, got 'fast'"):
        m.learning_rate = "fast"
    m.learning_rate = np.float32(0.25)
    assert m.learning_rate == 0.25


def test_learning_rate_of_a_model_without_train_section():
    m = kcompile.compile_string("model m {\n    input x: float32[4]\n    y = Dense(3)\n    output y\n}\n")
    with pytest.raises(RuntimeError, match="learning_rate: model m has no train section"):
        m.learning_rate
    with pytest.raises(RuntimeError, match="learning_rate: model m has no train section"):
        m.learning_rate = 0.1
