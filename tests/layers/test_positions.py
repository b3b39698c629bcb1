"""positions(x): a transformer's position ids, 0 .. n-1 along x's steps (Keras's
``Embedding(maxlen, d)(ops.arange(maxlen))``), for a fixed length or a named one (T)."""
import numpy as np
import pytest

import kcompile
from kcompile.errors import KcompileError

SOURCE = """model m {{
    input ids: int64[{length}]
    tok = Embedding(20, 4)(ids)
    pos = Embedding(10, 4)(positions(ids))
    y = tok + pos
    output y
    train {{
        loss = mse
        optimizer = SGD(0.5)
    }}
}}
"""


@pytest.mark.parametrize("length,steps", [("6", [6]), ("T", [6, 3, 9])])
def test_position_embeddings_add_to_token_embeddings(length, steps):
    m = kcompile.compile_string(SOURCE.format(length=length), seed=0)
    tok, pos = m.get_weights()
    rng = np.random.default_rng(0)
    for t in steps:
        ids = rng.integers(0, 20, (3, t))
        np.testing.assert_allclose(m.predict(ids), tok[ids] + pos[np.arange(t)][None], rtol=1e-6)
    # the position table trains, on the rows of the positions seen (one SGD step of mse)
    ids = rng.integers(0, 20, (2, steps[0]))
    before = m.get_weights()
    m.train_on_batch(ids, np.zeros((2, steps[0], 4), np.float32))
    d_pos = 2 * (before[0][ids] + before[1][np.arange(steps[0])][None]) / (2 * steps[0] * 4)
    np.testing.assert_allclose(m.get_weights()[1][:steps[0]], before[1][:steps[0]] - 0.5 * d_pos.sum(0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(m.get_weights()[1][steps[0]:], before[1][steps[0]:])


def test_positions_along_the_batch_is_a_located_error():
    with pytest.raises(KcompileError, match="positions counts along a step or feature axis, not the batch") as info:
        kcompile.compile_string("model m {\n    input x: float32[T, 3]\n    y = positions(x, axis=0)\n    output y\n}\n",
                                file="t.kdl")
    assert info.value.diagnostics[0].loc.line == 3


def test_positions_past_the_table_are_refused():
    """A fixed length at compile time; a named one at run time (onnxruntime's Gather failed, and
    predict's optimized graph clamped the positions silently)."""
    with pytest.raises(KcompileError, match=r"Embedding's ids run from 0 to 11; its table has 10 rows"):
        kcompile.compile_string(SOURCE.format(length="12"))
    m = kcompile.compile_string(SOURCE.format(length="T"))
    ids = np.ones((2, 12), np.int64)
    for run in (lambda: m.predict(ids), lambda: m.train_on_batch(ids, np.zeros((2, 12, 4), np.float32)),
                lambda: m.evaluate(ids, np.zeros((2, 12, 4), np.float32), verbose=0)):
        with pytest.raises(kcompile.ShapeMismatch, match=r"input 'ids' has 12 steps; positions\(ids\) look up an "
                                                         r"Embedding table of 10 rows"):
            run()
    assert m.predict(ids[:, :10]).shape == (2, 10, 4)
