"""Upsample (UpSampling1D/2D/3D) lowers to onnxruntime's nearest Resize where its last axis repeats
(a channels-first map; the broadcast product is some 15x slower there) and to a product with ones
elsewhere and in float64 (which onnxruntime's Resize lacks): numpy's repeat either way."""
import numpy as np
import onnxruntime as ort
import pytest

from kcompile.backend import to_onnx
from kcompile.ir import Graph, TensorType
from kcompile.ops import emit


def upsample(x, axes, factors):
    g = Graph("t")
    v = g.add_input("x", TensorType(str(x.dtype), ("N",) + x.shape[1:]))
    g.outputs = [("y", emit(g, "Upsample", [v], {"axes": axes, "factors": factors})[0])]
    model = to_onnx(g)
    y, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return {n.op_type for n in model.graph.node}, y


def repeated(x, axes, factors):
    for a, f in zip(axes, factors):
        x = x.repeat(f, axis=a)
    return x


@pytest.mark.parametrize("shape,axes,factors,resize", [
    ((2, 3, 4, 5), (2, 3), (2, 3), True),        # channels-first 2-D
    ((2, 3, 7), (2,), (3,), True),               # channels-first 1-D
    ((2, 3, 2, 3, 2), (2, 3, 4), (2, 2, 2), True),
    ((2, 4, 5, 3), (1, 2), (2, 3), False),       # channels-last: the product
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_upsample_repeats_like_numpy(shape, axes, factors, resize, dtype):
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    x.flat[:3] = [np.nan, -0.0, np.inf]
    ops, y = upsample(x, axes, factors)
    assert ("Resize" in ops) == (resize and dtype == "float32")
    np.testing.assert_array_equal(y, repeated(x, axes, factors))
