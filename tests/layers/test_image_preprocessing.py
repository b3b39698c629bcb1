"""Image preprocessing and augmentation layers (channels-last): Resizing and CenterCrop against
numpy and Keras 3 (jax backend), Resizing's gradient by finite differences; the random layers'
inference (the identity) and training forms (valid transforms of each image, and their
statistics; RandomTranslation, RandomRotation and RandomZoom against Keras's own layers on the
same draws), and small CNNs with augmentation first that train."""
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest

import kcompile
from kcompile.backend import to_onnx
from kcompile.driver import compile_source
from kcompile.errors import KcompileError
from kcompile.training.graphs import training_form

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "autodiff"))
from gradcheck import check_gradients, expected_checks  # noqa: E402

IMAGE = "model m {{\n    input x: {dtype}[{h}, {w}, {c}]\n    {layer}\n}}\n"


def compiled(layer, h=5, w=7, c=2, dtype="float32"):
    return kcompile.compile_string(IMAGE.format(layer=layer, h=h, w=w, c=c, dtype=dtype))


def images(shape, seed=0, batch=3):
    return np.random.default_rng(seed).uniform(0, 255, (batch,) + shape).astype(np.float32)


# ---------------- numpy references (from the definitions: half-pixel centres, clamped borders)
def ref_resize_axis(x, axis, size, interpolation):
    n = x.shape[axis]
    out = []
    for i in range(size):
        s = (i + 0.5) * n / size - 0.5
        if interpolation == "nearest":
            out.append(np.take(x, int(np.floor((i + 0.5) * n / size)), axis=axis))
            continue
        s = min(max(s, 0.0), n - 1.0)
        i0 = int(np.floor(s))
        f = s - i0
        out.append((1 - f) * np.take(x, i0, axis=axis) + f * np.take(x, min(i0 + 1, n - 1), axis=axis))
    return np.stack(out, axis=axis)


def ref_resize(x, height, width, interpolation="bilinear"):
    x = x.astype(np.float64)
    if height != x.shape[1]:
        x = ref_resize_axis(x, 1, height, interpolation)
    if width != x.shape[2]:
        x = ref_resize_axis(x, 2, width, interpolation)
    return x


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("height,width", [(9, 11), (3, 4), (2, 13), (5, 7), (1, 1)])
def test_resizing_against_numpy(interpolation, height, width):
    x = images((5, 7, 2))
    y = compiled(f"Resizing({height}, {width}, interpolation={interpolation})").predict(x)
    assert y.shape == (3, height, width, 2)
    np.testing.assert_allclose(y, ref_resize(x, height, width, interpolation), rtol=1e-5, atol=1e-3)


def test_center_crop_against_numpy():
    x = images((8, 9, 3))
    np.testing.assert_array_equal(compiled("CenterCrop(5, 4)", 8, 9, 3).predict(x), x[:, 1:6, 2:6])
    # smaller one way: the largest centred window of the target's aspect ratio (8 x 4), resized
    np.testing.assert_allclose(compiled("CenterCrop(10, 5)", 8, 9, 3).predict(x),
                               ref_resize(x[:, :, 2:6], 10, 5), rtol=1e-5, atol=1e-3)
    # integer images come out float32, as Keras's
    y = compiled("CenterCrop(2, 2)", 4, 4, 1, dtype="uint8").predict(np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1))
    assert y.dtype == np.float32 and y[0, :, :, 0].tolist() == [[5, 6], [9, 10]]


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic", "lanczos3", "lanczos5"])
@pytest.mark.parametrize("args", ["9, 11", "3, 4", "2, 13", "6, 3, crop_to_aspect_ratio=true", "3, 2, antialias=true",
                                  "4, 17, antialias=true"])
def test_resizing_matches_keras(keras, interpolation, args):
    x = images((8, 7, 2))
    kwargs = eval(f"dict({args.split(', ', 2)[2].replace('true', 'True')})") if args.count(",") == 2 else {}
    height, width = (int(v) for v in args.split(", ")[:2])
    want = np.asarray(keras.layers.Resizing(height, width, interpolation=interpolation, **kwargs)(x))
    got = compiled(f"Resizing({args}, interpolation={interpolation})", 8, 7, 2).predict(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-3)


@pytest.mark.parametrize("h,w,args", [(8, 9, "5, 4"), (8, 9, "8, 9"), (8, 9, "10, 5"), (5, 6, "7, 9"), (9, 4, "3, 6")])
def test_center_crop_matches_keras(keras, h, w, args):
    x = images((h, w, 3))
    want = np.asarray(keras.layers.CenterCrop(*(int(v) for v in args.split(", ")))(x))
    np.testing.assert_allclose(compiled(f"CenterCrop({args})", h, w, 3).predict(x), want, rtol=1e-5, atol=2e-3)


@pytest.mark.parametrize("h,w,args", [(8, 9, "5, 4"), (8, 9, "8, 4"), (5, 6, "7, 9"), (8, 6, "10, 4")])
def test_random_crop_at_inference_and_undrawn_training_match_keras(keras, h, w, args):
    """Keras 3's RandomCrop passes images through uncropped at inference (not the output shape it
    states); kcompile crops and resizes as its documentation says (smart_resize). Where the image is
    not larger than the window both ways, Keras's training crop draws nothing: compare it exactly."""
    height, width = (int(v) for v in args.split(", "))
    x = images((h, w, 3))
    m = compiled(f"RandomCrop({args})", h, w, 3)
    want = np.asarray(keras.preprocessing.image.smart_resize(x, (height, width)))
    np.testing.assert_allclose(m.predict(x), want, rtol=1e-5, atol=2e-3)
    if not (h > height and w > width):
        trained = np.asarray(keras.layers.RandomCrop(height, width)(x, training=True))
        np.testing.assert_allclose(training_run(f"RandomCrop({args})", x)[0], trained, rtol=1e-5, atol=2e-3)


RESIZE64 = """model r {{
    input x: float64[{h}, {w}, 2]
    y = Resizing({args})(x)
    output y
}}"""


@pytest.mark.parametrize("h,w,args", [(4, 5, "7, 3"), (5, 3, "2, 6, interpolation=nearest"),
                                      (6, 6, "4, 9, interpolation=bicubic, crop_to_aspect_ratio=true")])
def test_resizing_gradient_by_finite_differences(h, w, args):
    src = RESIZE64.format(h=h, w=w, args=args)
    feeds = {"x": np.random.default_rng(2).normal(size=(2, h, w, 2))}
    checked, _ = check_gradients(src, feeds)
    assert checked == expected_checks(src, feeds)


def test_resizing_arguments_are_located_errors():
    with pytest.raises(KcompileError, match=r"<string>:3:34: error: Resizing argument 'interpolation': expected "
                                            r"bilinear or nearest or bicubic"):
        compiled("Resizing(3, 3, interpolation=area)")
    with pytest.raises(KcompileError, match=r"<string>:3:5: error: .*pad_to_aspect_ratio is not supported"):
        compiled("Resizing(3, 3, pad_to_aspect_ratio=true)")
    with pytest.raises(KcompileError, match=r"<string>:3:5: .*Resizing needs floating-point images, got uint8"):
        compiled("Resizing(3, 3)", dtype="uint8")
    with pytest.raises(KcompileError, match=r"RandomContrast argument 'factor': expected a number or a pair of "
                                            r"numbers in \[0, 1\], got 2"):
        compiled("RandomContrast(2)")


# ---------------- random layers: inference, and the training form run on given noise
def training_run(layer, x, noise=None, seed=0):
    """The layer's training-form output for images ``x`` (of their dtype), drawing its noise from
    ``seed`` unless given. Returns (output, noise fed)."""
    h, w, c = x.shape[1:]
    g = compile_source(IMAGE.format(layer=layer, h=h, w=w, c=c, dtype=x.dtype.name), "t.kdl", opt_level=0).graph
    names = [n for n, _ in training_form(g)[0]]
    rng = np.random.default_rng(seed)
    feeds = {"x": x}
    for i, n in enumerate(names):
        shape = tuple(len(x) if d == "N" else d for d in g.types[n].shape)
        feeds[n] = noise[i] if noise is not None else rng.random(shape).astype(np.float32)
    session = ort.InferenceSession(to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0], [feeds[n] for n in names]


RANDOM = ["RandomFlip()", "RandomFlip(horizontal)", "RandomFlip(mode=vertical, seed=3)", "RandomContrast(0.5)",
          "RandomBrightness(0.2)"]


@pytest.mark.parametrize("layer", RANDOM)
def test_random_layers_are_the_identity_at_inference(layer):
    x = images((6, 5, 3))
    for level in (0, 1):
        m = kcompile.compile_string(IMAGE.format(layer=layer, h=6, w=5, c=3, dtype="float32"), opt_level=level)
        np.testing.assert_array_equal(m.predict(x), x)


@pytest.mark.parametrize("mode", ["horizontal", "vertical", "horizontal_and_vertical"])
def test_random_flip_flips_each_image_or_not_half_the_time(mode):
    x = images((4, 5, 2), batch=400)
    y, (u,) = training_run(f"RandomFlip({mode})", x)
    flipped = x
    if "horizontal" in mode:
        flipped = flipped[:, :, ::-1]
    if "vertical" in mode:
        flipped = flipped[:, ::-1]
    is_flipped = (y == flipped).all(axis=(1, 2, 3))
    assert ((y == x).all(axis=(1, 2, 3)) | is_flipped).all()  # each image, or its flip
    np.testing.assert_array_equal(is_flipped, u.ravel() <= 0.5)  # Keras: flip where uniform <= 0.5
    assert abs(is_flipped.mean() - 0.5) < 0.1  # (400 draws: 4 standard deviations)


def test_random_crop_takes_one_window_per_batch_uniformly_placed():
    x = images((9, 8, 2), batch=2)
    starts = set()
    for seed in range(200):
        y, _ = training_run("RandomCrop(4, 6)", x, seed=seed)
        assert y.shape == (2, 4, 6, 2)
        found = [(t, l) for t in range(6) for l in range(3) if (x[:, t:t + 4, l:l + 6] == y).all()]
        assert len(found) == 1  # one window, the same for both images
        starts.add(found[0])
    assert starts == {(t, l) for t in range(6) for l in range(3)}  # every offset in [0, extent - size]
    edge, _ = training_run("RandomCrop(4, 6)", x, noise=[np.array([0.9999, 0.0], np.float32)])
    np.testing.assert_array_equal(edge, x[:, 5:9, 0:6])


def test_random_contrast_and_brightness_draw_in_keras_ranges():
    x = images((4, 4, 3), batch=500)
    y, (u,) = training_run("RandomContrast((0.2, 0.5), value_range=(-1000, 1000))", x)
    mean = x.mean(axis=(1, 2), keepdims=True)
    factor = ((y - mean) / (x - mean)).reshape(500, -1)  # one factor per image
    np.testing.assert_allclose(factor, np.broadcast_to(factor[:, :1], factor.shape), rtol=1e-3)
    np.testing.assert_allclose(factor[:, 0], 0.8 + 0.7 * u.ravel(), rtol=1e-3)  # uniform in [1 - 0.2, 1 + 0.5]
    assert factor.min() < 0.85 and factor.max() > 1.45
    clipped, _ = training_run("RandomContrast(0.9)", x)  # (factors in [1, 1.9]; the default range (0, 255))
    assert clipped.min() >= 0 and clipped.max() <= 255 and (clipped == 255).any()
    y, (u,) = training_run("RandomBrightness(0.1, value_range=(-1000, 1000))", x)
    delta = (y - x).reshape(500, -1)
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1], delta.shape), atol=1e-3)
    np.testing.assert_allclose(delta[:, 0], (-0.1 + 0.2 * u.ravel()) * 2000, atol=1e-3)
    y, _ = training_run("RandomBrightness((-0.5, -0.4))", x)  # darker, clipped at 0
    assert y.min() == 0 and (y <= np.maximum(x - 0.4 * 255, 0) + 1e-3).all()


def test_an_augmentation_after_trained_weights_is_a_located_error():
    src = """model m {
    input x: float32[6, 6, 1]
    Conv2D(2, 3)
    RandomFlip()
    Flatten()
    Dense(1)
    train {
        loss = mse
        optimizer = SGD(0.1)
    }
}"""
    with pytest.raises(KcompileError, match=r"<string>:4:5: error: RandomFlip augments the model's input data in "
                                            r"training; its input here depends on the trained weight conv2d/"):
        kcompile.compile_string(src)
    from kcompile.driver import check_module, parse_source  # (kcompile check says it too, not only build)
    ds = check_module(parse_source(src, "m.kdl"))
    assert [(d.loc.line, d.loc.col) for d in ds] == [(4, 5)] and "RandomFlip augments" in ds[0].message


CNN = """model aug {
    input x: uint8[12, 12, 1]
    Rescaling(1 / 255)
    RandomFlip(horizontal)
    RandomCrop(10, 10)
    RandomContrast(0.1, value_range=(0, 1))
    RandomBrightness(0.05, value_range=(0, 1))
    Resizing(8, 8)
    CenterCrop(6, 6)
    Conv2D(4, 3, activation=relu)
    Flatten()
    Dense(2, activation=softmax)
    train {
        loss = sparse_categorical_crossentropy
        optimizer = Adam(0.01)
        metrics = [accuracy]
    }
}"""


def trains_on_bright_centres(source, centre):
    """``source``'s CNN, augmentations first, learns 2 classes of uint8 images (class 1: a bright
    ``centre`` square, wherever the augmentations move it) to 90% accuracy in 8 epochs."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    x = rng.integers(0, 60, (256, 12, 12, 1))
    x[labels == 1, centre, centre] += 150
    m = kcompile.compile_string(source, seed=1)
    history = m.fit(x.astype(np.uint8), labels, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert m.evaluate(x.astype(np.uint8), labels, verbose=0)[1] > 0.9
    assert m.predict(x[:4].astype(np.uint8)).shape == (4, 2)


def test_a_cnn_with_augmentation_first_trains():
    trains_on_bright_centres(CNN, slice(3, 9))


# ---------------- RandomTranslation, RandomRotation, RandomZoom: Keras's affine transforms
def keras_on_draws(keras, monkeypatch, layer, x, noise):
    """Keras 3's layer (jax backend) run in training on images x with its uniform draws taken,
    in the order it draws them, from our noise (jax.random.uniform's formula on them): the
    whole Keras computation from the draws on, affine_transform included."""
    import jax.numpy as jnp
    import keras.src.backend.jax.random as jax_random
    draws = list(noise)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        lo, hi = np.float32(minval), np.float32(maxval)
        return jnp.maximum(lo, jnp.asarray(draws.pop(0)).reshape(shape) * (hi - lo) + lo)
    monkeypatch.setattr(jax_random, "uniform", uniform)
    y = np.asarray(layer(x, training=True))
    assert not draws
    return y


# (the layer's source up to its fill arguments, and Keras's arguments; the second reads far outside the image)
AFFINE = [("RandomTranslation(0.4, (-0.3, 0.5)", dict(height_factor=0.4, width_factor=(-0.3, 0.5))),
          ("RandomTranslation((-1, 1), 1", dict(height_factor=(-1, 1), width_factor=1)),
          ("RandomRotation(0.5", dict(factor=0.5)),
          ("RandomRotation((-0.1, 0.3)", dict(factor=(-0.1, 0.3))),
          ("RandomZoom((-0.5, 0.6)", dict(height_factor=(-0.5, 0.6))),
          ("RandomZoom(0.5, (-0.4, 1)", dict(height_factor=0.5, width_factor=(-0.4, 1)))]


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "constant", "nearest"])
@pytest.mark.parametrize("layer,kwargs", AFFINE, ids=[a[0].split("(")[0] + str(i) for i, a in enumerate(AFFINE)])
def test_affine_augmentations_match_keras_on_the_same_draws(keras, monkeypatch, layer, kwargs, fill_mode,
                                                            interpolation):
    options = dict(fill_mode=fill_mode, interpolation=interpolation, fill_value=7.5)
    for shape in ((5, 7, 3), (3, 1, 2)):
        x = images(shape, batch=6)
        y, noise = training_run(f"{layer}, fill_mode={fill_mode}, interpolation={interpolation}, fill_value=7.5)", x,
                                seed=3)
        want = keras_on_draws(keras, monkeypatch, getattr(keras.layers, layer.split("(")[0])(**kwargs, **options),
                              x, noise)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-3 if interpolation == "bilinear" else 0)


def test_nearest_sampling_rounds_ties_away_from_zero_as_keras(keras, monkeypatch):
    x = images((4, 5, 1), batch=2)
    y, noise = training_run("RandomTranslation(0, (0.1, 0.1), interpolation=nearest, fill_mode=constant)", x)
    # (columns read at j - 0.5 exactly: j - 0.5 rounds to j, and -0.5 to -1, outside)
    np.testing.assert_array_equal(y[:, :, 1:], x[:, :, 1:])
    np.testing.assert_array_equal(y[:, :, 0], 0)
    layer = keras.layers.RandomTranslation(0, (0.1, 0.1), interpolation="nearest", fill_mode="constant")
    np.testing.assert_array_equal(y, keras_on_draws(keras, monkeypatch, layer, x, noise))


@pytest.mark.parametrize("layer", ["RandomTranslation(0.2, 0.3)", "RandomRotation(0.5, fill_mode=constant)",
                                   "RandomZoom(0.3, interpolation=nearest)", "RandomZoom(0.2, (-0.1, 0.4))"])
def test_affine_augmentations_are_the_identity_at_inference(layer):
    x = images((6, 5, 3))
    for level in (0, 1):
        m = kcompile.compile_string(IMAGE.format(layer=layer, h=6, w=5, c=3, dtype="float32"), opt_level=level)
        np.testing.assert_array_equal(m.predict(x), x)


def ramps(n, batch):
    """Images whose channels are each pixel's row and column: bilinear sampling inside the image
    returns the coordinates it read at."""
    return np.broadcast_to(np.indices((n, n), dtype=np.float32).transpose(1, 2, 0), (batch, n, n, 2)).copy()


def test_affine_draws_are_uniform_in_keras_ranges():
    n, batch, c = 21, 500, 10  # (pixel (10, 10) the centre; 500 draws: a range's ends within 2 %)
    x = ramps(n, batch)

    def check(value, u, lo, hi):
        np.testing.assert_allclose(value, lo + u.ravel() * (hi - lo), atol=1e-4)
        assert lo <= value.min() < lo + 0.02 * (hi - lo) and hi - 0.02 * (hi - lo) < value.max() <= hi
        assert abs(value.mean() - (lo + hi) / 2) < 4 * (hi - lo) / np.sqrt(12 * batch)

    y, (uy, ux) = training_run("RandomTranslation((-0.2, 0.3), 0.25)", x)  # shifts of fractions of 21 pixels
    check(c - y[:, c, c, 0], uy, -0.2 * n, 0.3 * n)  # (positive: the image moves down, right)
    check(c - y[:, c, c, 1], ux, -0.25 * n, 0.25 * n)
    y, (u,) = training_run("RandomRotation((-0.2, 0.3))", x)  # turns: degrees in [-72, 108]
    step = y[:, c, c + 1] - y[:, c, c]  # one column right reads (sin, cos) away: counter-clockwise
    check(np.degrees(np.arctan2(step[:, 0], step[:, 1])), u, -72.0, 108.0)
    np.testing.assert_allclose(y[:, c, c], c, atol=1e-4)  # about the centre
    y, (u,) = training_run("RandomZoom(0.3)", x)  # one zoom for both axes, 1 + f, f in [-0.3, 0.3]
    check(y[:, c, c + 1, 1] - y[:, c, c, 1], u, 0.7, 1.3)
    np.testing.assert_allclose(y[:, c + 1, c, 0] - y[:, c, c, 0], y[:, c, c + 1, 1] - y[:, c, c, 1], atol=1e-4)
    y, (uy, ux) = training_run("RandomZoom((0.1, 0.2), (-0.5, -0.4))", x)  # rows zoomed out, columns in
    check(y[:, c + 1, c, 0] - y[:, c, c, 0], uy, 1.1, 1.2)
    check(y[:, c, c + 1, 1] - y[:, c, c, 1], ux, 0.5, 0.6)


def test_affine_augmentation_arguments_are_located_errors():
    with pytest.raises(KcompileError, match=r"<string>:3:23: error: RandomTranslation argument 'height_factor': "
                                            r"expected a number or a pair of numbers in \[-1, 1\], got 1.5"):
        compiled("RandomTranslation(1.5, 0.1)")
    with pytest.raises(KcompileError, match=r"<string>:3:28: error: RandomTranslation argument 'width_factor': "
                                            r"expected .* got \(0.5, -2\)"):
        compiled("RandomTranslation(0.1, (0.5, -2))")
    with pytest.raises(KcompileError, match=r"<string>:3:16: error: RandomZoom argument 'height_factor': expected a "
                                            r"number or a pair of numbers in \(-1, 1\], got -1"):
        compiled("RandomZoom(-1)")
    with pytest.raises(KcompileError, match=r"<string>:3:35: error: RandomRotation argument 'fill_mode': expected "
                                            r"reflect or wrap or constant or nearest, got mirror"):
        compiled("RandomRotation(0.1, fill_mode=mirror)")
    with pytest.raises(KcompileError, match=r"<string>:3:35: error: RandomZoom argument 'interpolation': expected "
                                            r"bilinear or nearest, got bicubic"):
        compiled("RandomZoom(0.1, interpolation=bicubic)")
    with pytest.raises(KcompileError, match=r"<string>:3:5: .*RandomRotation expects an input of shape \[height, "
                                            r"width, channels\]"):
        kcompile.compile_string("model m {\n    input x: float32[5, 4]\n    RandomRotation(0.1)\n}\n")
    trained_first = "model m {\n    input x: float32[6, 6, 1]\n    Conv2D(2, 3)\n    RandomZoom(0.2)\n    Flatten()\n" \
                    "    Dense(1)\n    train {\n        loss = mse\n        optimizer = SGD(0.1)\n    }\n}"
    with pytest.raises(KcompileError, match=r"<string>:4:5: error: RandomZoom augments the model's input data"):
        kcompile.compile_string(trained_first)


@pytest.mark.parametrize("layer,dtype,message", [
    ("RandomRotation(0.1, fill_mode=constant, fill_value=1e300)", "float32",
     "RandomRotation fill_value 1e+300 does not fit float32, the images' dtype"),
    ("RandomZoom(0.1, fill_mode=constant, fill_value=1e5)", "float16",
     "RandomZoom fill_value 100000.0 does not fit float16, the images' dtype"),
    ("RandomTranslation(0.1, 0.1, fill_mode=constant, fill_value=1e400)", "uint8",
     "RandomTranslation fill_value inf does not fit float32, the images' dtype"),
    ("RandomBrightness(0.5, value_range=(0, 1e300))", "float32",
     "RandomBrightness value_range (0.0, 1e+300) does not fit float32, the images' dtype"),
    ("RandomContrast(0.5, value_range=(-60000, 60000))", "float16",
     "RandomContrast value_range (-60000.0, 60000.0) does not fit float16, the images' dtype"),
])
def test_numbers_beyond_the_images_dtype_are_located_errors(layer, dtype, message):
    """(Found by fuzzing: they trained to a nan or inf loss.) A fill_value the images' dtype
    cannot hold is refused with fill_mode=constant only, where it is read."""
    with pytest.raises(KcompileError) as info:
        compiled(layer, dtype=dtype)
    d = info.value.diagnostics[0]
    assert d.message == message, d.render()
    assert (d.loc.line, d.loc.col) == (3, 5), d.render()


@pytest.mark.parametrize("layer, dtype", [("RandomRotation(0.1, fill_value=1e300)", "float32"),
                                          ("RandomRotation(0.1, fill_mode=constant, fill_value=1e300)", "float64")])
def test_numbers_the_images_dtype_holds_or_never_reads_are_taken(layer, dtype):
    """reflect (the default fill_mode) reads no fill_value; float64 holds 1e300. Inference leaves
    the images as they are."""
    x = images((5, 7, 2)).astype(dtype)
    np.testing.assert_array_equal(compiled(layer, dtype=dtype).predict(x), x)
    if "constant" in layer:  # training reads the fill_value where a rotated image leaves the frame
        y, _ = training_run(layer.replace("0.1,", "0.5, interpolation=nearest,"), x, seed=1)
        outside = y == 1e300
        assert y.dtype == np.float64 and 0 < outside.sum() < y.size
        assert np.isin(y[~outside], x).all()


@pytest.mark.parametrize("layer,message", [
    ("Resizing(1000000000, 2)", "resizing 5 pixels to 1000000000 takes a [1000000000, 5] interpolation matrix, "
                                "5,000,000,000 numbers, too many for one tensor (at most 2^31 - 1)"),
    ("CenterCrop(2, 1000000000)", "resizing 7 pixels to 1000000000 takes a [1000000000, 7] interpolation matrix"),
    ("RandomCrop(1000000000, 2)", "resizing 5 pixels to 1000000000 takes a [1000000000, 5] interpolation matrix"),
])
def test_a_huge_size_is_a_located_error(layer, message):
    """(Found by fuzzing: numpy tried to allocate the interpolation matrix, 30 GiB, and failed or hung.)"""
    with pytest.raises(KcompileError) as info:
        compiled(layer)
    d = info.value.diagnostics[0]
    assert d.message.startswith(message), d.render()
    assert (d.loc.line, d.loc.col) == (3, 5), d.render()


AFFINE_CNN = """model aug {
    input x: uint8[12, 12, 1]
    Rescaling(1 / 255)
    RandomTranslation(0.1, 0.1, fill_mode=constant)
    RandomRotation(0.05, interpolation=nearest)
    RandomZoom((-0.1, 0.1), fill_mode=nearest)
    Conv2D(4, 3, activation=relu)
    MaxPooling2D(2)
    Flatten()
    Dense(2, activation=softmax)
    train {
        loss = sparse_categorical_crossentropy
        optimizer = Adam(0.01)
        metrics = [accuracy]
    }
}"""


def test_a_cnn_with_affine_augmentations_first_trains():
    trains_on_bright_centres(AFFINE_CNN, slice(4, 8))
