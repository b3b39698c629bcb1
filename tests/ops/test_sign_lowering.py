"""Sign lowers to Clip(x * 2^e * 2^e, -1, 1) for floats (onnxruntime's Sign is several times
slower than a Mul): the same values as numpy's sign for every float, subnormals, zeros,
infinities and NaN included, and onnxruntime's own Sign for integers."""
import numpy as np
import onnxruntime as ort
import pytest

from kcompile.backend import to_onnx
from kcompile.ir import Graph, TensorType
from kcompile.ops import emit


def run_sign(x):
    g = Graph("t")
    v = g.add_input("x", TensorType(str(x.dtype), ("N",) + x.shape[1:]))
    g.outputs = [("y", emit(g, "Sign", [v], {})[0])]
    model = to_onnx(g)
    y, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return model, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_sign_matches_numpy_at_every_kind_of_value(dtype):
    info = np.finfo(dtype)
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny, -info.tiny,
               info.smallest_subnormal, -info.smallest_subnormal, 3 * info.smallest_subnormal, 1.0, -2.5]
    x = np.concatenate([np.array(special, dtype), np.random.default_rng(0).normal(size=200).astype(dtype)])
    x = x.reshape(2, -1)
    model, y = run_sign(x)
    assert "Sign" not in {n.op_type for n in model.graph.node}
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, np.sign(x))  # (NaN where x is NaN; equal compares NaN as equal)


def test_integer_sign_is_onnx_sign():
    x = np.array([[-3, 0, 5, -1]], np.int64)
    model, y = run_sign(x)
    assert "Sign" in {n.op_type for n in model.graph.node}
    np.testing.assert_array_equal(y, np.sign(x))
