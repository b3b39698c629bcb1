"""Reshaping (UpSampling, ZeroPadding, Cropping, RepeatVector), PReLU, Layer/GroupNormalization,
SpatialDropout/GaussianNoise (inference), Dot, TimeDistributed and MultiHeadAttention against
numpy references of Keras 3's semantics."""
import numpy as np
import pytest

import kcompile
import reference as ref
from reference import random_input


def model(inputs, body):
    decls = "\n".join(f"    input {n}: float32[{', '.join(map(str, s))}]" for n, s in inputs)
    return f"model m {{\n{decls}\n    {body}\n}}"


# ---------------------------------------------------------------- reshaping
@pytest.mark.parametrize("shape,size", [((3, 4, 2), (2, 2)), ((2, 3, 1), (3, 1)), ((1, 2, 3), 2)])
def test_upsampling2d(run, rng, close, shape, size):
    x = random_input(shape, rng)
    y, _ = run(model([("x", shape)], f"UpSampling2D({size})"), x)
    sh, sw = (size, size) if isinstance(size, int) else size
    close(y, x.repeat(sh, axis=1).repeat(sw, axis=2))


@pytest.mark.parametrize("size", [2, 3])
def test_upsampling1d(run, rng, close, size):
    x = random_input((4, 3), rng)
    y, _ = run(model([("x", (4, 3))], f"UpSampling1D({size})"), x)
    close(y, x.repeat(size, axis=1))


@pytest.mark.parametrize("padding,pads", [("", ((1, 1), (1, 1))), ("2", ((2, 2), (2, 2))),
                                          ("(1, 2)", ((1, 1), (2, 2))), ("((0, 2), (1, 0))", ((0, 2), (1, 0)))])
def test_zeropadding2d(run, rng, close, padding, pads):
    x = random_input((3, 4, 2), rng)
    y, _ = run(model([("x", (3, 4, 2))], f"ZeroPadding2D({padding})"), x)
    close(y, np.pad(x, ((0, 0),) + pads + ((0, 0),)))


@pytest.mark.parametrize("padding,pads", [("", (1, 1)), ("3", (3, 3)), ("(0, 2)", (0, 2))])
def test_zeropadding1d(run, rng, close, padding, pads):
    x = random_input((4, 3), rng)
    y, _ = run(model([("x", (4, 3))], f"ZeroPadding1D({padding})"), x)
    close(y, np.pad(x, ((0, 0), pads, (0, 0))))


@pytest.mark.parametrize("cropping,crops", [("", ((0, 0), (0, 0))), ("1", ((1, 1), (1, 1))),
                                            ("(2, 1)", ((2, 2), (1, 1))), ("((1, 0), (0, 3))", ((1, 0), (0, 3)))])
def test_cropping2d(run, rng, close, cropping, crops):
    x = random_input((6, 5, 2), rng)
    y, _ = run(model([("x", (6, 5, 2))], f"Cropping2D({cropping})"), x)
    (t, b), (l, r) = crops
    close(y, x[:, t:6 - b, l:5 - r, :])


@pytest.mark.parametrize("cropping,crops", [("", (1, 1)), ("2", (2, 2)), ("(0, 3)", (0, 3))])
def test_cropping1d(run, rng, close, cropping, crops):
    x = random_input((7, 3), rng)
    y, _ = run(model([("x", (7, 3))], f"Cropping1D({cropping})"), x)
    close(y, x[:, crops[0]:7 - crops[1], :])


def test_cropping_too_much():
    with pytest.raises(kcompile.KcompileError, match="leaving nothing"):
        kcompile.compile_string(model([("x", (3, 3, 1))], "Cropping2D(((2, 1), (0, 0)))"))


@pytest.mark.parametrize("n", [1, 4])
def test_repeat_vector(run, rng, close, n):
    x = random_input((5,), rng)
    y, _ = run(model([("x", (5,))], f"RepeatVector({n})"), x)
    close(y, np.repeat(x[:, None, :], n, axis=1))


# ---------------------------------------------------------------- PReLU
@pytest.mark.parametrize("shape,shared", [((6,), None), ((3, 4), None), ((3, 4), "1"), ((2, 3, 4), "(1, 2)")])
def test_prelu(run, rng, close, shape, shared):
    arg = "" if shared is None else f"shared_axes={shared}"
    x = random_input(shape, rng, scale=2.0)
    y, w = run(model([("x", shape)], f"PReLU({arg})"), x)
    axes = () if shared is None else eval(shared + ("," if "," not in shared else ""))
    axes = (axes,) if isinstance(axes, int) else axes
    assert w[0].shape == tuple(1 if i + 1 in axes else d for i, d in enumerate(shape))
    x64, alpha = ref.f64(x, w[0])
    close(y, np.maximum(x64, 0) + alpha * np.minimum(x64, 0))


def test_prelu_default_alpha_is_zero(run, rng, close):
    x = random_input((4,), rng)
    m = kcompile.compile_string(model([("x", (4,))], "PReLU()"))
    assert np.all(m.get_weights()[0] == 0)
    close(m.predict(x), np.maximum(x, 0))


# ---------------------------------------------------------------- normalization
def layer_norm(x, axes, gamma, beta, epsilon):
    (x,) = ref.f64(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    y = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        y = y * np.asarray(gamma, np.float64).reshape(shape)
    if beta is not None:
        y = y + np.asarray(beta, np.float64).reshape(shape)
    return y


@pytest.mark.parametrize("shape,axis,axes", [((6,), "-1", (1,)), ((3, 5), "-1", (2,)), ((3, 5), "1", (1,)),
                                             ((2, 3, 4), "(1, 2)", (1, 2)), ((2, 3, 4), "(-1, -2, -3)", (1, 2, 3))])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
def test_layer_normalization(run, rng, close, shape, axis, axes, center, scale):
    args = f"axis={axis}, center={str(center).lower()}, scale={str(scale).lower()}"
    x = random_input(shape, rng, scale=3.0)
    y, w = run(model([("x", shape)], f"LayerNormalization({args})"), x)
    w = list(w)
    gamma = w.pop(0) if scale else None
    beta = w.pop(0) if center else None
    assert not w
    full = (2,) + shape
    for v in (gamma, beta):
        assert v is None or v.shape == tuple(full[a] for a in axes)
    close(y, layer_norm(x, axes, gamma, beta, 1e-3))


@pytest.mark.parametrize("epsilon", [1e-5, 0.5])
def test_layer_normalization_epsilon(run, rng, close, epsilon):
    x = random_input((7,), rng, scale=0.1)
    y, (gamma, beta) = run(model([("x", (7,))], f"LayerNormalization(epsilon={epsilon})"), x)
    close(y, layer_norm(x, (1,), gamma, beta, epsilon))


def group_norm(x, groups, gamma, beta, epsilon, axis=-1):
    """Keras 3 GroupNormalization: channels split into groups at ``axis``; moments over all
    axes but the batch and the group axis."""
    (x,) = ref.f64(x)
    axis = axis % x.ndim
    c = x.shape[axis]
    shape = x.shape[:axis] + (groups, c // groups) + x.shape[axis + 1:]
    g = x.reshape(shape)
    red = tuple(i for i in range(1, g.ndim) if i != axis)
    y = ((g - g.mean(axis=red, keepdims=True)) / np.sqrt(g.var(axis=red, keepdims=True) + epsilon)).reshape(x.shape)
    bshape = [1] * x.ndim
    bshape[axis] = c
    if gamma is not None:
        y = y * np.asarray(gamma, np.float64).reshape(bshape)
    if beta is not None:
        y = y + np.asarray(beta, np.float64).reshape(bshape)
    return y


@pytest.mark.parametrize("shape,groups,axis", [((8,), 2, -1), ((5, 6), 3, -1), ((3, 4, 6), 2, -1),
                                               ((3, 4, 6), -1, -1), ((3, 4, 6), 1, -1), ((4, 3, 5), 2, 1)])
def test_group_normalization(run, rng, close, shape, groups, axis):
    x = random_input(shape, rng, scale=2.0)
    y, (gamma, beta) = run(model([("x", shape)], f"GroupNormalization(groups={groups}, axis={axis})"), x)
    c = ((2,) + shape)[axis]
    assert gamma.shape == beta.shape == (c,)
    close(y, group_norm(x, c if groups == -1 else groups, gamma, beta, 1e-3, axis))


@pytest.mark.parametrize("layer", ["GroupNormalization(groups=4)", "LayerNormalization()"])
@pytest.mark.parametrize("bias", [True, False])
def test_normalization_of_a_convolution_runs_channels_first(run, rng, close, bias, layer):
    """After a Conv2D (its bias too) Group- and LayerNormalization normalize the channels-first
    map: no transpose is left around them in the training step, and the values are the
    reference's of the convolution's channels-last output."""
    import onnx
    src = model([("x", (6, 5, 3))], f"h = Conv2D(8, 3, use_bias={str(bias).lower()})(x)\n"
                                     f"    y = ReLU()({layer}(h))\n    output y")
    x = random_input((6, 5, 3), rng)
    y, weights = run(src, x)
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), (3, 3), axis=(1, 2))
    conv = np.einsum("nhwcij,ijco->nhwo", windows, np.asarray(weights[0], np.float64))
    if bias:
        conv = conv + np.asarray(weights[1], np.float64)
    normalized = (group_norm(conv, 4, weights[-2], weights[-1], 1e-3) if layer.startswith("Group") else
                  layer_norm(conv, (3,), weights[-2], weights[-1], 1e-3))
    close(y, np.maximum(normalized, 0))
    src_train = src.replace("output y", "output y\n    train { loss = mse; optimizer = SGD() }")
    step = onnx.load_from_string(kcompile.compile_string(src_train)._step_graph())
    made_by = {o: n for n in step.graph.node for o in n.output}
    read = {i for n in step.graph.node if n.name.split("/")[0] in ("group_normalization", "layer_normalization")
            for i in n.input}
    assert not any(made_by[v].op_type == "Transpose" for v in read if v in made_by)
    assert sum(n.op_type == "Transpose" and n.input[0] == "x" for n in step.graph.node) == 1


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_group_normalization_center_scale(run, rng, close, center, scale):
    x = random_input((3, 4), rng)
    args = f"2, center={str(center).lower()}, scale={str(scale).lower()}"
    y, w = run(model([("x", (3, 4))], f"GroupNormalization({args})"), x)
    w = list(w)
    gamma = w.pop(0) if scale else None
    beta = w.pop(0) if center else None
    close(y, group_norm(x, 2, gamma, beta, 1e-3))


def test_group_normalization_default_groups_must_divide():
    with pytest.raises(kcompile.KcompileError, match="32 groups do not divide 16 channels"):
        kcompile.compile_string(model([("x", (4, 16))], "GroupNormalization()"))


# ---------------------------------------------------------------- noise layers at inference
@pytest.mark.parametrize("layer,shape", [("SpatialDropout1D(0.4)", (5, 3)), ("SpatialDropout2D(0.5)", (3, 4, 2)),
                                         ("GaussianNoise(0.3)", (4, 3)),
                                         ("Dropout(0.5, noise_shape=(none, 1, 3))", (5, 3))])
def test_noise_layers_are_identity_at_inference(run, rng, close, layer, shape):
    x = random_input(shape, rng)
    y, (k, b) = run(model([("x", shape)], f"{layer}\n    Dense(2)"), x)
    close(y, ref.dense(x, k, b))


@pytest.mark.parametrize("layer,shape,mask", [
    ("SpatialDropout1D(0.4)", (5, 3), ("N", 1, 3)),
    ("SpatialDropout2D(0.5)", (3, 4, 2), ("N", 1, 1, 2)),
    ("Dropout(0.5, noise_shape=(none, 1, 3))", (5, 3), ("N", 1, 3)),
    ("Dropout(0.5, noise_shape=(1, 5, none))", (5, 3), (1, 5, 3)),
    ("Dropout(0.5, noise_shape=(none, 5, 3))", (5, 3), None),
    ("Dropout(0.5)", (5, 3), None)])
def test_dropout_noise_shape_attr(layer, shape, mask):
    from kcompile.driver import compile_source
    g = compile_source(model([("x", shape)], layer), "t.kdl", opt_level=0).graph
    node, = [n for n in g.nodes() if n.op == "Dropout"]
    assert node.attrs.get("noise_shape") == mask


def test_gaussian_noise_op():
    from kcompile.driver import compile_source
    g = compile_source(model([("x", (3,))], "GaussianNoise(0.25)"), "t.kdl", opt_level=0).graph
    node, = [n for n in g.nodes() if n.op == "GaussianNoise"]
    assert node.attrs["stddev"] == 0.25
    g1 = compile_source(model([("x", (3,))], "GaussianNoise(0.25)\n    Dense(2)"), "t.kdl", opt_level=1).graph
    assert not [n for n in g1.nodes() if n.op == "GaussianNoise"]


@pytest.mark.parametrize("body,message", [
    ("Dropout(0.5, noise_shape=(none, 2, 3))", "does not match"),
    ("Dropout(0.5, noise_shape=(none, 3))", "has 2 entries"),
    ("SpatialDropout2D(0.5)", "expects an input of shape"),
])
def test_noise_shape_errors(body, message):
    with pytest.raises(kcompile.KcompileError, match=message):
        kcompile.compile_string(model([("x", (5, 3))], body))


# ---------------------------------------------------------------- Dot
def batch_dot(a, b, axes, normalize=False):
    a, b = ref.f64(a, b)
    ax = [axes[0] % a.ndim, axes[1] % b.ndim]
    if normalize:
        a = a / np.maximum(np.sqrt((a * a).sum(axis=ax[0], keepdims=True)), 1e-7)
        b = b / np.maximum(np.sqrt((b * b).sum(axis=ax[1], keepdims=True)), 1e-7)
    out = np.stack([np.tensordot(a[i], b[i], axes=(ax[0] - 1, ax[1] - 1)) for i in range(a.shape[0])])
    return out.reshape(a.shape[0], 1) if out.ndim == 1 else out


@pytest.mark.parametrize("sa,sb,axes", [
    ((4,), (4,), "1"), ((4,), (4,), "-1"), ((4,), (4,), "(1, 1)"),
    ((3, 4), (5, 4), "(2, 2)"), ((3, 4), (5, 4), "-1"), ((3, 4), (4, 5), "(2, 1)"), ((4, 3), (4, 5), "(1, 1)"),
    ((4, 3), (5, 4), "(1, 2)"), ((3, 4), (4,), "(2, 1)"), ((4,), (4, 5), "(1, 1)"), ((4, 3), (4,), "(1, 1)")])
@pytest.mark.parametrize("normalize", [False, True])
def test_dot(run, rng, close, sa, sb, axes, normalize):
    src = model([("a", sa), ("b", sb)], f"y = Dot({axes}, normalize={str(normalize).lower()})(a, b)\n    output y")
    a, b = random_input(sa, rng), random_input(sb, rng)
    y, _ = run(src, {"a": a, "b": b})
    parsed = eval(axes)
    parsed = (parsed, parsed) if isinstance(parsed, int) else parsed
    close(y, batch_dot(a, b, parsed, normalize))


def test_dot_mismatch():
    with pytest.raises(kcompile.KcompileError, match="differ"):
        kcompile.compile_string(model([("a", (3,)), ("b", (4,))], "y = Dot(1)(a, b)\n    output y"))


# ---------------------------------------------------------------- TimeDistributed
@pytest.mark.parametrize("inner,shape", [("Dense(8)", (5, 3)), ("Dense(4, activation=tanh, use_bias=false)", (2, 3, 6)),
                                         ("Conv2D(2, 3, padding=same)", (3, 5, 5, 2))])
def test_time_distributed(run, rng, close, inner, shape):
    x = random_input(shape, rng)
    y, w = run(model([("x", shape)], f"TimeDistributed({inner})"), x)
    if inner.startswith("Conv2D"):
        k, b = w
        steps = x.reshape((-1,) + shape[1:])
        expected = ref.conv(steps, k, b, padding="same").reshape((2, shape[0]) + (5, 5, 2))
    else:
        k = w[0]
        b = w[1] if len(w) > 1 else None
        expected = ref.dense(x, k, b)
        if "tanh" in inner:
            expected = np.tanh(expected)
    close(y, expected)


def test_time_distributed_weight_names_and_shared_layer(run, rng, close):
    src = """
model m {
    input x: float32[4, 3]
    layer d = Dense(2)
    h = TimeDistributed(d)(x)
    g = TimeDistributed(d)(x)
    y = h + g
    output y
}"""
    m = kcompile.compile_string(src)
    assert m.weight_names == ["d/kernel", "d/bias"]
    x = random_input((4, 3), rng)
    y, (k, b) = run(src, x)
    close(y, 2 * ref.dense(x, k, b))
    m = kcompile.compile_string(model([("x", (4, 3))], "TimeDistributed(Dense(2))"))
    assert m.weight_names == ["time_distributed/dense/kernel", "time_distributed/dense/bias"]


def test_time_distributed_rejects_non_layers():
    with pytest.raises(kcompile.KcompileError, match="expected a layer"):
        kcompile.compile_string(model([("x", (4, 3))], "TimeDistributed(3)"))


# ---------------------------------------------------------------- MultiHeadAttention
def mha(query, value, key, w, heads, key_dim, value_dim, use_bias, allowed=None):
    query, value, key = ref.f64(query, value, key)
    w = [np.asarray(v, np.float64) for v in w]
    if use_bias:
        qk, qb, kk, kb, vk, vb, ok, ob = w
    else:
        (qk, kk, vk, ok), qb, kb, vb, ob = w, 0, 0, 0, 0
    q = np.einsum("abc,cde->abde", query, qk) + qb
    k = np.einsum("abc,cde->abde", key, kk) + kb
    v = np.einsum("abc,cde->abde", value, vk) + vb
    q = q / np.sqrt(key_dim)
    scores = np.einsum("aecd,abcd->acbe", k, q)
    if allowed is not None:  # [N, Tq, Tk]: Keras adds -1e9 where attention is not allowed
        scores = scores + (1.0 - allowed[:, None]) * -1e9
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores = scores / scores.sum(-1, keepdims=True)
    out = np.einsum("acbe,aecd->abcd", scores, v)
    return np.einsum("abcd,cde->abe", out, ok) + ob


@pytest.mark.parametrize("args,with_key,use_bias", [
    ("2, 8", False, True), ("1, 4", True, True), ("3, 4, value_dim=5", True, True),
    ("2, 3, use_bias=false", False, False), ("2, 4, output_shape=7, dropout=0.2", True, True)])
def test_multi_head_attention(run, rng, close, args, with_key, use_bias):
    sq, sv, sk = (5, 6), (4, 3), (4, 2)
    inputs = [("q", sq), ("v", sv)] + ([("k", sk)] if with_key else [])
    call = "(q, v, k)" if with_key else "(q, v)"
    src = model(inputs, f"y = MultiHeadAttention({args}){call}\n    output y")
    feeds = {"q": random_input(sq, rng), "v": random_input(sv, rng)}
    if with_key:
        feeds["k"] = random_input(sk, rng)
    y, w = run(src, feeds)
    heads, key_dim = (int(a) for a in args.split(",")[:2])
    value_dim = 5 if "value_dim" in args else key_dim
    out = 7 if "output_shape" in args else sq[-1]
    kdim = sk[-1] if with_key else sv[-1]
    shapes = [(sq[-1], heads, key_dim), (heads, key_dim), (kdim, heads, key_dim), (heads, key_dim),
              (sv[-1], heads, value_dim), (heads, value_dim), (heads, value_dim, out), (out,)]
    if not use_bias:
        shapes = shapes[0::2]
    assert [v.shape for v in w] == shapes
    close(y, mha(feeds["q"], feeds["v"], feeds.get("k", feeds["v"]), w, heads, key_dim, value_dim, use_bias))


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_leaves_out_masked_steps_as_keras(rng, close, causal):
    """Padding masks (Embedding(mask_zero=true)) on the query and the value: no query step
    attends to a padded value step, a padded query step attends uniformly (Keras 3's -1e9),
    and the output carries the query's mask on (GlobalAveragePooling1D then averages the kept
    steps). Before, the padding was attended to. use_causal_mask: step i sees steps 0..i too.
    (Scratch runs matched Keras/JAX's outputs and three SGD steps to 1.5e-7, with and without.)"""
    causal_arg = ", use_causal_mask=true" if causal else ""
    src = model([("ids", (5,))], "e = Embedding(10, 4, mask_zero=true)(ids)\n    v = Embedding(10, 4, mask_zero=true)(ids)\n"
                f"    a = MultiHeadAttention(2, 3{causal_arg})(e, v)\n    p = GlobalAveragePooling1D()(a)\n    output a, p")
    src = src.replace("float32[5]", "int64[5]")
    m = kcompile.compile_string(src)
    ids = np.array([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    w = m.get_weights()
    keep = (ids != 0).astype(np.float64)
    allowed = keep[:, :, None] * keep[:, None, :]
    if causal:
        allowed = allowed * np.tril(np.ones((5, 5)))[None]
    a, p = m.predict(ids)
    e, v = w[0][ids], w[1][ids]
    expected = mha(e, v, v, w[2:], 2, 3, 3, True, allowed)
    close(a, expected)
    close(p, (expected * keep[..., None]).sum(1) / keep.sum(1, keepdims=True))
    assert np.abs(expected - mha(e, v, v, w[2:], 2, 3, 3, True)).max() > 1e-3  # (the mask matters here)


def test_multi_head_attention_weight_names():
    m = kcompile.compile_string(model([("q", (3, 4))], "y = MultiHeadAttention(2, 4)(q, q)\n    output y"))
    assert m.weight_names == [f"multi_head_attention/{p}/{w}" for p in ("query", "key", "value", "attention_output")
                              for w in ("kernel", "bias")]
