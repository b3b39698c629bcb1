"""Finite-difference checks of the gradients of the reshaping, PReLU, Layer/GroupNormalization,
noise, Dot, TimeDistributed and MultiHeadAttention layers (float64, see gradcheck.py)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from gradcheck import check_gradients  # noqa: E402


def normal(shape, seed=1, away_from_zero=False):
    x = np.random.default_rng(seed).normal(size=shape)
    if away_from_zero:
        x = np.sign(x) * (np.abs(x) + 0.2)
    return x


def check(body, inputs, away_from_zero=False, **kw):
    """inputs: {name: shape with the batch}."""
    decls = "\n".join(f"    input {n}: float64[{', '.join(map(str, s[1:]))}]" for n, s in inputs.items())
    src = f"model m {{\n{decls}\n    {body}\n}}\n"
    feeds = {n: normal(s, seed=i + 1, away_from_zero=away_from_zero) for i, (n, s) in enumerate(inputs.items())}
    checked, _ = check_gradients(src, feeds, **kw)
    assert checked > 0


@pytest.mark.parametrize("layer,shape", [
    ("UpSampling2D((2, 3))", (2, 3, 2, 2)),
    ("UpSampling1D(3)", (2, 4, 2)),
    ("ZeroPadding2D(((1, 0), (2, 1)))", (2, 3, 2, 2)),
    ("ZeroPadding1D((2, 1))", (2, 3, 2)),
    ("Cropping2D(((1, 0), (0, 2)))", (2, 4, 5, 2)),
    ("Cropping1D(1)", (2, 5, 2)),
    ("RepeatVector(3)", (2, 4)),
])
def test_reshaping(layer, shape):
    # A Dense after the layer gives the gradient a weight to reach as well as the input.
    check(f"y = Dense(3)({layer}(x))\n    output y", {"x": shape})


@pytest.mark.parametrize("args,shape", [("", (2, 3, 4)), ("shared_axes=1", (2, 3, 4)),
                                        ("shared_axes=(1, 2), alpha_initializer=ones", (2, 3, 2, 3))])
def test_prelu(args, shape):
    # Inputs away from 0 (the kink); gradcheck draws alpha at random, so it is not zero.
    check(f"y = PReLU({args})(x)\n    output y", {"x": shape}, away_from_zero=True)


@pytest.mark.parametrize("args,shape", [("", (2, 5)), ("axis=(1, 2)", (2, 3, 4)), ("axis=1, center=false", (2, 3, 4)),
                                        ("scale=false, epsilon=0.1", (2, 6))])
def test_layer_normalization(args, shape):
    check(f"y = LayerNormalization({args})(x)\n    output y", {"x": shape})


@pytest.mark.parametrize("args,shape", [("groups=2", (2, 6)), ("groups=3", (2, 2, 2, 6)), ("groups=-1", (2, 3, 4)),
                                        ("groups=2, axis=1, center=false", (2, 4, 3)),
                                        ("groups=1, scale=false", (2, 3, 4))])
def test_group_normalization(args, shape):
    check(f"y = GroupNormalization({args})(x)\n    output y", {"x": shape})


@pytest.mark.parametrize("layer", ["GroupNormalization(groups=3)", "LayerNormalization()"])
@pytest.mark.parametrize("bias", ["true", "false"])
def test_normalization_of_a_convolution(bias, layer):
    """After a convolution Group- and LayerNormalization normalize the channels-first map (then
    transposed), with the convolution's bias added channels-first too."""
    check(f"h = Conv2D(6, 2, use_bias={bias})(x)\n    y = Dense(2)({layer}(h))\n    output y", {"x": (2, 4, 3, 2)})


@pytest.mark.parametrize("layer,shape", [("SpatialDropout1D(0.3)", (2, 4, 3)), ("SpatialDropout2D(0.5)", (2, 2, 3, 2)),
                                         ("GaussianNoise(0.2)", (2, 4)),
                                         ("Dropout(0.5, noise_shape=(none, 1, 3))", (2, 4, 3))])
def test_noise_layers(layer, shape):
    # Their inference form (the graph autodiff sees before the training rewrite): dy flows through.
    check(f"y = Dense(2)({layer}(x))\n    output y", {"x": shape})


@pytest.mark.parametrize("sa,sb,axes", [((2, 4), (2, 4), "1"), ((2, 3, 4), (2, 5, 4), "(2, 2)"),
                                        ((2, 3, 4), (2, 4, 5), "(2, 1)"), ((2, 4, 3), (2, 4, 5), "(1, 1)"),
                                        ((2, 3, 4), (2, 4), "(2, 1)")])
@pytest.mark.parametrize("normalize", ["false", "true"])
def test_dot(sa, sb, axes, normalize):
    check(f"y = Dot({axes}, normalize={normalize})(a, b)\n    output y", {"a": sa, "b": sb})


@pytest.mark.parametrize("inner,shape", [("Dense(3)", (2, 4, 3)), ("Dense(2, activation=tanh)", (2, 3, 2, 4)),
                                         ("LayerNormalization()", (2, 3, 4))])
def test_time_distributed(inner, shape):
    check(f"y = TimeDistributed({inner})(x)\n    output y", {"x": shape})


@pytest.mark.parametrize("args,key", [("2, 3", False), ("2, 3, value_dim=2, output_shape=3", True),
                                      ("1, 2, use_bias=false", False)])
def test_multi_head_attention(args, key):
    inputs = {"q": (2, 3, 4), "v": (2, 2, 3)}
    if key:
        inputs["k"] = (2, 2, 5)
    call = "(q, v, k)" if key else "(q, v)"
    check(f"y = MultiHeadAttention({args}){call}\n    output y", inputs)


@pytest.mark.parametrize("conv,shape", [("Conv2D(6, 2, use_bias={bias})", (2, 4, 3, 2)),
                                        ("Conv1D(5, 3, padding=same, use_bias={bias})", (2, 6, 3)),
                                        ("Conv2DTranspose(4, 2, strides=2, use_bias={bias})", (2, 3, 2, 3))])
@pytest.mark.parametrize("bias", ["true", "false"])
def test_layer_normalization_of_a_convolution_by_centered_filters(conv, shape, bias):
    """The training step's normalize-centering (passes/fusion.py): the convolution reads its filters
    and bias less their mean over output channels, and the Normalize, told its input is centered,
    takes the gradient r (dy - y mean(dy y)) without mean(dy): the filters' centering removes it."""
    from kcompile.passes.fusion import center_before_normalize, fuse_bias
    from kcompile.passes.transpose import sink_transposes

    def centering(g):
        g = center_before_normalize(g)
        assert [n.attrs.get("centered") for n in g.nodes() if n.op == "Normalize"] == [1]
        return g
    check(f"h = {conv.format(bias=bias)}(x)\n    y = Dense(2)(LayerNormalization()(h))\n    output y", {"x": shape},
          passes=[sink_transposes, fuse_bias, centering])


@pytest.mark.parametrize("axis,shape", [("1", (2, 4, 3)), ("(1, 2)", (2, 3, 2, 2)), ("-1", (2, 5))])
def test_a_centered_normalize_has_the_gradient_of_what_it_computes(axis, shape):
    """A Normalize told its input is centered computes x / sqrt(mean(x^2) + epsilon) whatever its
    input: its gradient rule is that function's, checked here on inputs that are not centered
    (the rule with LayerNormalization's mean(dy) term fails this)."""
    def centered(g):
        for node in g.nodes():
            if node.op == "Normalize":
                node.attrs["centered"] = 1
        return g
    check(f"y = LayerNormalization(axis={axis}, center=false, scale=false)(x)\n    output y", {"x": shape},
          passes=[centered])
