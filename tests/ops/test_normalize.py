"""Normalize (LayerNormalization's core) and GroupNormalize: ONNX's LayerNormalization over
trailing axes in float32, the two-pass moments elsewhere, both numpy's (population) moments; the
layers use them over their axes; and the runtime's sessions keep onnxruntime from fusing a
residual Add into its slow SkipLayerNormalization."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kcompile
from kcompile.backend import to_onnx
from kcompile.driver import compile_source
from kcompile.ir import Graph, TensorType
from kcompile.ops import emit


def normalize(x, axes, eps, centered=False):
    g = Graph("t")
    v = g.add_input("x", TensorType(str(x.dtype), ("N",) + x.shape[1:]))
    y, r = emit(g, "Normalize", [v], {"axes": axes, "epsilon": eps, **({"centered": 1} if centered else {})})
    g.outputs = [("y", y), ("r", r)]
    model = to_onnx(g)
    outs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return [n.op_type for n in model.graph.node], outs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,axes,trailing", [((3, 7), (1,), True), ((2, 3, 4, 5), (2, 3), True),
                                                 ((2, 3, 4), (1, 2), True), ((2, 3, 4, 5), (1,), False),
                                                 ((2, 3, 4, 5), (1, 3), False)])
def test_normalize_matches_numpys_moments(dtype, shape, axes, trailing):
    x = (100 + np.random.default_rng(0).normal(size=shape)).astype(dtype)  # (a mean far from 0)
    ops, (y, r) = normalize(x, axes, 1e-3)
    assert ("LayerNormalization" in ops) == (dtype == "float32" and trailing)
    x64 = x.astype(np.float64)
    var = x64.var(axis=axes, keepdims=True)
    tol = 1e-5 if dtype == "float32" else 1e-9  # (epsilon is a float32 attribute)
    np.testing.assert_allclose(r, 1 / np.sqrt(var + 1e-3), rtol=tol)
    np.testing.assert_allclose(y, (x64 - x64.mean(axis=axes, keepdims=True)) / np.sqrt(var + 1e-3), atol=10 * tol)


@pytest.mark.parametrize("axes", [(1,), (1, 3)])
def test_a_centered_normalize_takes_no_mean_of_its_zero_mean_input(axes):
    """A Normalize told its input's mean over its axes is zero (passes/fusion.py's
    center_before_normalize makes it so) takes one ReduceMean (the variance's) and subtracts
    nothing; over such an input it gives the moments' numbers."""
    x = np.random.default_rng(1).normal(size=(2, 6, 4, 5))
    x = (x - x.mean(axis=axes, keepdims=True)).astype(np.float32)
    ops, (y, r) = normalize(x, axes, 1e-3, centered=True)
    assert ops.count("ReduceMean") == 1 and "Sub" not in ops
    var = x.astype(np.float64).var(axis=axes, keepdims=True)
    np.testing.assert_allclose(r, 1 / np.sqrt(var + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(y, x / np.sqrt(var + 1e-3), atol=1e-5)


@pytest.mark.parametrize("layer,shape,axes", [
    ("LayerNormalization()", (3, 4), (2,)), ("LayerNormalization(axis=(1, 2))", (3, 4), (1, 2)),
    ("LayerNormalization(axis=1)", (3, 4), (1,)),
])
def test_layers_normalize_over_their_axes(layer, shape, axes):
    g = compile_source(f"model m {{\n input x: float32[{', '.join(map(str, shape))}]\n y = {layer}(x)\n output y\n}}",
                       "t.kdl").graph
    node, = [n for n in g.nodes() if n.op == "Normalize"]
    assert tuple(node.attrs["axes"]) == axes and "ReduceMean" not in {n.op for n in g.nodes()}


@pytest.mark.parametrize("conv", [True, False])
def test_group_normalization_normalizes_its_groups_with_layer_normalization_where_they_are_trailing(conv):
    """One GroupNormalize op; after a convolution it normalizes the channels-first map, whose
    groups [N, G, C/G, H, W] are trailing (ONNX's LayerNormalization); on a channels-last map
    [N, H, W, G, C/G] the moments are the two-pass ones."""
    src = ("model m {\n input x: float32[6, 6, 2]\n h = Conv2D(8, 3)(x)\n y = GroupNormalization(groups=4)(h)\n"
           " output y\n}" if conv else
           "model m {\n input x: float32[6, 6, 8]\n y = GroupNormalization(groups=4)(x)\n output y\n}")
    g = compile_source(src, "t.kdl").graph
    node, = [n for n in g.nodes() if n.op == "GroupNormalize"]
    assert g.types[node.inputs[0]].shape[1:] == ((8, 4, 4) if conv else (6, 6, 8))
    assert node.attrs["axis"] == (1 if conv else 3) and node.attrs["groups"] == 4
    ops = {n.op_type for n in to_onnx(g, params_as_inputs=True).graph.node}
    assert ("LayerNormalization" in ops) == conv and ("ReduceMean" in ops) != conv


def test_training_sessions_do_not_fuse_the_residual_add_into_skip_layer_normalization(tmp_path, monkeypatch):
    """(onnxruntime's SkipLayerNormalization ran 3-6x the time of the Add and LayerNormalization apart)"""
    from kcompile.runtime import training
    written = []
    original = training.session_options

    def keeping_the_optimized_graph(*args, **kwargs):
        options = original(*args, **kwargs)
        options.optimized_model_filepath = str(tmp_path / f"optimized{len(written)}.onnx")
        written.append(options.optimized_model_filepath)
        return options
    monkeypatch.setattr(training, "session_options", keeping_the_optimized_graph)
    m = kcompile.compile_string("""model m {
        input x: float32[5, 8]
        h = Dense(8)(x)
        y = Dense(2, activation=softmax)(GlobalAveragePooling1D()(LayerNormalization()(h + x)))
        output y
        train { loss = categorical_crossentropy; optimizer = Adam() }
    }""")
    rng = np.random.default_rng(0)
    m.fit(rng.random((8, 5, 8), dtype=np.float32), np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)],
          batch_size=8, epochs=1, verbose=0)
    ops = {n.op_type for path in written for n in onnx.load(path).graph.node}
    assert written and "LayerNormalization" in ops and "SkipLayerNormalization" not in ops
