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


def test_integer_division_is_true_division_as_numpy():
    """ONNX's Div of integers truncates (3 / 2 = 1) and stops on a zero divisor; `/` of integer
    tensors divides as floats, as numpy and Keras."""
    import numpy as np
    import kcompile
    m = kcompile.compile_string("model m {\n    input a: int64[2]\n    input b: int64[2]\n    y = a / b\n"
                                "    z = a / 4\n    output y, z\n}\n")
    assert [o.dtype for o in m.outputs] == ["float32", "float32"]
    a, b = np.array([[3, 7]]), np.array([[2, 0]])
    y, z = m.predict({"a": a, "b": b})
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(y, (a / b).astype(np.float32))
    np.testing.assert_array_equal(z, np.array([[0.75, 1.75]], np.float32))


def test_uint8_ids_index_an_embedding_as_keras_takes_them():
    import numpy as np
    import kcompile
    m = kcompile.compile_string("model m {\n    input ids: uint8[3]\n    e = Embedding(300, 2)(ids)\n    output e\n}\n")
    table = m.get_weights()[0]
    ids = np.array([[1, 255, 0]], np.uint8)
    np.testing.assert_array_equal(m.predict(ids), table[ids])
