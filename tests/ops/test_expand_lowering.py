"""ExpandLike lowers to a Mul by ones where only trailing axes grow to fixed sizes (onnxruntime's
Expand is several times slower there), else to Expand: the same values either way."""
import numpy as np
import onnxruntime as ort
import pytest

from kcompile.backend import to_onnx
from kcompile.ir import Graph, TensorType
from kcompile.ops import emit


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("small, like, as_mul", [
    ((4, 3, 1), (4, 3, 6), True),              # a channels-first GlobalAveragePooling1D's gradient
    ((4, 3, 1, 1), (4, 3, 5, 7), True),        # GlobalAveragePooling2D's
    ((4, 1), (4, 10), True),                   # a loss's per-sample gradient over the classes
    ((4, 1, 3), (4, 6, 3), False),             # a middle axis: Expand
    ((1, 3), (4, 3), False),                   # the batch axis (a run-time size): Expand
])
def test_expand_like_matches_numpy(small, like, dtype, as_mul):
    g = Graph("t")
    x = g.add_input("x", TensorType(dtype, (small[0] if small[0] == 1 else "N",) + small[1:]))
    y = g.add_input("y", TensorType(dtype, ("N",) + like[1:]))
    g.outputs = [("out", emit(g, "ExpandLike", [x, y], {})[0])]
    model = to_onnx(g)
    ops = {n.op_type for n in model.graph.node}
    assert ("Mul" in ops, "Expand" in ops) == ((as_mul, not as_mul) if dtype != "int64" else (False, True))
    rng = np.random.default_rng(0)
    xv = (rng.normal(size=small) * 10).astype(dtype)
    out, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": xv, "y": np.zeros(like, dtype)})
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.broadcast_to(xv, like))
