"""A recurrent gradient op recomputes its gates only without recurrent dropout: dropout exists
only in the training form, which saves the gates for its gradient op (ops/recurrent.py,
_grad_inputs), so masks reaching the recomputing form are refused, not silently ignored. (The
recomputing form's numbers: the finite-difference checks of tests/autodiff and tests/recurrent.)"""
import pytest

from kcompile.backend import to_onnx
from kcompile.ir import Graph, TensorType
from kcompile.ops import emit


def lstm_grad_graph(**attrs):
    n, t, f, u = 2, 3, 4, 5
    g = Graph("t")
    x = g.add_input("x", TensorType("float32", (n, t, f)))
    k = g.add_input("k", TensorType("float32", (f, 4 * u)))
    r = g.add_input("r", TensorType("float32", (u, 4 * u)))
    seq = g.add_input("seq", TensorType("float32", (n, t, u)))
    cells = g.add_input("cells", TensorType("float32", (n, t, u)))
    dh = g.add_input("dh", TensorType("float32", (n, u)))
    dc = g.add_input("dc", TensorType("float32", (n, u)))
    drop = g.add_input("drop", TensorType("float32", (n, 4, u)))
    ins = [x, k, r, seq, cells, dh, dc] + ([drop] if attrs.get("rdrop") else [])
    outs = emit(g, "LSTMGrad", ins, dict(units=u, seq_grad=False, has_bias=False, **attrs))
    g.outputs = [(f"o{i}", v) for i, v in enumerate(outs)]
    return g


def test_recomputing_gradient_refuses_dropout_masks():
    with pytest.raises(ValueError, match="recurrent dropout's gradient reads the gates its training form saved"):
        to_onnx(lstm_grad_graph(rdrop=True))
