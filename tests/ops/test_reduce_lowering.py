"""ReduceSum over the batch axis lowers to a product with a row of ones (onnxruntime's
leading-axis ReduceSum is several times slower): the same sums, for every shape it takes."""
import numpy as np
import onnxruntime as ort
import pytest

from kcompile.backend import to_onnx
from kcompile.ir import Graph, TensorType
from kcompile.ops import emit


def lowered_sum(shape, axes, keepdims, dtype):
    g = Graph("t")
    x = g.add_input("x", TensorType(dtype, ("N",) + shape[1:]))
    g.outputs = [("y", emit(g, "ReduceSum", [x], {"axes": axes, "keepdims": keepdims})[0])]
    return to_onnx(g)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("shape, axes, as_product", [
    ((5, 80), (0,), True),              # a Dense bias gradient
    ((1, 80), (0,), True),              # a batch of one
    ((4, 70, 3, 2), (0, 2, 3), True),   # a Conv2D bias gradient
    ((4, 3, 30), (0, 1), False),         # two leading axes: ReduceSum
    ((4, 3, 30), (0,), True),            # rank 3, leading axis: [N, 90] rows
    ((6, 10), (0,), False),              # too few columns to pay for the extra nodes
    ((4, 70, 3), (1,), False),
])
def test_batch_sums_match_numpy(shape, axes, keepdims, dtype, as_product):
    model = lowered_sum(shape, axes, keepdims, dtype)
    assert ("MatMul" in {n.op_type for n in model.graph.node}) == as_product
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    y, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    expected = x.sum(axis=axes, keepdims=bool(keepdims))
    assert y.shape == expected.shape and y.dtype == expected.dtype
    np.testing.assert_allclose(y, expected, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)
