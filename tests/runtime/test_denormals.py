"""Training steps flush denormal numbers to zero (as XLA and TensorFlow do on CPU); the
caller's own floating-point environment, numpy's, is left as it was."""
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.runtime.fpenv import FlushDenormals

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not FlushDenormals.available(), reason="no fegetenv/fesetenv here")

SRC = """model scale {
    input x: float32[1]
    y = Dense(1, use_bias=false, kernel_initializer=zeros)(x)
    train {
        loss = mean_squared_error
        optimizer = SGD(learning_rate=1.0)
    }
}"""
DENORMAL = np.float32(3e-39)


def numpy_keeps_denormals() -> bool:
    return bool(np.array([DENORMAL]) * np.float32(1.0) != 0)


@pytest.mark.parametrize("flush", [True, False])
def test_a_step_on_denormal_data(flush):
    """y = w x with w = 0 and x denormal: flushed, x reads as 0 and w stays 0; IEEE, each step's
    gradient 2 (w x - 1) x is -2x (w x underflows), so two steps make w = 4x."""
    assert numpy_keeps_denormals()
    m = kcompile.compile_string(SRC)
    m.flush_denormals = flush
    x, t = np.full((1, 1), DENORMAL), np.full((1, 1), 1.0, np.float32)
    (w0,) = m.get_weights()
    m.train_on_batch(x, t)
    m.train_on_batch(x, t)
    (w1,) = m.get_weights()
    moved = float(w1[0, 0] - w0[0, 0])
    if flush:
        assert moved == 0.0
    else:
        assert moved == pytest.approx(4 * float(DENORMAL), rel=1e-3, abs=0)
    assert numpy_keeps_denormals()  # the caller's environment, after session creation and runs


def test_opting_out_takes_effect_when_the_step_is_rebuilt():
    """flush_denormals = False after the first step: the step rebuilt by set_trainable computes
    with IEEE denormals, on the calling thread too."""
    m = kcompile.compile_string(SRC)
    x, t = np.full((1, 1), DENORMAL), np.full((1, 1), 1.0, np.float32)
    m.train_on_batch(x, t)
    assert float(m.get_weights()[0][0, 0]) == 0.0  # flushed: x read as 0
    m.flush_denormals = False
    m.set_trainable("dense", True)  # rebuilds the training step
    m.train_on_batch(x, t)
    assert float(m.get_weights()[0][0, 0]) == pytest.approx(2 * float(DENORMAL), rel=1e-3, abs=0)


def test_mlp_trains_the_same_with_and_without_flushing():
    """Away from denormals the two modes compute the same steps."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    losses = []
    for flush in (True, False):
        m = kcompile.compile(ROOT / "examples" / "mnist_mlp.kdl", seed=1)
        m.flush_denormals = flush
        losses.append([m.train_on_batch(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def test_a_first_session_leaves_numpy_alone(tmp_path):
    """onnxruntime sets the creating thread's flush bits when the training step is the first
    session of a process (a model loaded from a build folder): they must not stay set."""
    import subprocess
    import sys
    from kcompile.driver import compile_source, write_build
    write_build(compile_source(SRC, "scale.kdl"), tmp_path)
    code = f"""
import numpy as np, kcompile
m = kcompile.load({str(tmp_path / "scale")!r})
m.train_on_batch(np.ones((1, 1), np.float32), np.ones((1, 1), np.float32))
print(float((np.array([np.float32({float(DENORMAL)!r})]) * np.float32(1.0))[0]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) == float(DENORMAL)  # exactly: x * 1.0
