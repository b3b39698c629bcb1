"""Preprocessing layers inside the model (Keras's family of that name): Rescaling, Normalization,
and the image layers (channels-last [height, width, channels]): Resizing, CenterCrop, RandomFlip,
RandomCrop, RandomContrast, RandomBrightness, RandomTranslation, RandomRotation, RandomZoom."""
import numpy as np

from ..errors import ShapeError, format_shape
from .base import (ArgError, BoolArg, Choice, Converter, FloatArg, IntArg, Layer, Optional, expect_rank,
                   show)


class Rescaling(Layer):
    """``x * scale + offset``, computed in float32 (or the input's float dtype): ``Rescaling(1 /
    255)`` takes uint8 images to [0, 1], as Keras.

    Args:
        scale: the factor.
        offset: added after scaling, 0.0.

    Weights: none.
    """
    propagates_mask = True

    def __init__(self, scale: FloatArg(), offset: FloatArg() = 0.0):
        self.scale, self.offset = scale, offset

    def call(self, ctx, x):
        if not x.type.is_float:
            x = ctx.op("Cast", x, to="float32")
        y = ctx.op("Mul", x, ctx.const(self.scale, x.dtype))
        return ctx.op("Add", y, ctx.const(self.offset, x.dtype)) if self.offset else y


class Normalization(Layer):
    """Standardizes the last axis (Keras): ``(x - mean) / max(sqrt(variance), 1e-7)``, or with
    ``invert`` the way back, ``mean + x * max(sqrt(variance), 1e-7)``. The mean and variance are
    given (``mean=..., variance=...``: a number or one per feature, constants of the graph) or,
    without them, weights that ``model.get_layer(name).adapt(data)`` computes from data shaped
    like the layer's input (the population mean and variance of each feature, as Keras's adapt).

    Args:
        axis: -1, the feature axis (the only one here).
        mean, variance: none, or a number or a list of one per feature (both or neither).
        invert: false.

    Weights (adapted form only): mean [features], variance [features], not trainable (Keras also
    keeps a count, which kcompile leaves out).
    """
    propagates_mask = True

    def __init__(self, axis: IntArg() = -1, mean=None, variance=None, invert: BoolArg() = False):
        if axis != -1:
            raise ArgError("Normalization: axis must be -1, the feature axis (the only one kcompile takes)")
        if (mean is None) != (variance is None):
            raise ArgError("Normalization: give both mean and variance, or neither (then adapt the layer)")
        self.mean_value = _numbers("mean", mean)
        self.variance_value = _numbers("variance", variance)
        if self.variance_value is not None and any(v < 0 for v in self.variance_value):
            raise ArgError("Normalization: variance must not be negative")
        self.invert = invert

    def build(self, ctx, x):
        if not x.type.is_float or not x.rank or not isinstance(x.shape[-1], int):
            raise ShapeError(f"Normalization needs float features with a known last axis, got {x.type}")
        features = x.shape[-1]
        if self.mean_value is None:
            self.mean = ctx.add_weight(self, "mean", (features,), x.dtype, ("zeros", ()), trainable=False)
            self.variance = ctx.add_weight(self, "variance", (features,), x.dtype, ("ones", ()), trainable=False)
            return
        for what, values in (("mean", self.mean_value), ("variance", self.variance_value)):
            if len(values) not in (1, features):
                raise ShapeError(f"Normalization {what} has {len(values)} numbers for {features} features")
        self.mean = ctx.const(np.asarray(self.mean_value, dtype=x.dtype), x.dtype)
        self.variance = ctx.const(np.asarray(self.variance_value, dtype=x.dtype), x.dtype)

    def call(self, ctx, x):
        scale = ctx.op("Max", ctx.op("Sqrt", self.variance), ctx.const(1e-7, x.dtype))
        if self.invert:
            return ctx.op("Add", ctx.op("Mul", x, scale), self.mean)
        return ctx.op("Div", ctx.op("Sub", x, self.mean), scale)


def _numbers(what, value):
    """None, a number, or a list or tuple of numbers -> None or a list of floats."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise ArgError(f"Normalization {what}: expected a number or a list of numbers, got {show(value)}")
    return [float(v) for v in items]


# ---------------- image layers ----------------
def _lanczos(radius):
    def kernel(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            y = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius) / (np.pi ** 2 * x ** 2)
        return np.where(x > radius, 0.0, np.where(x > 1e-3, y, 1.0))
    return radius, kernel


def _keys_cubic(x):
    out = np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, ((1.5 * x - 2.5) * x) * x + 1.0)
    return np.where(x >= 2.0, 0.0, out)


# jax.image.resize's kernels (Keras 3 with the jax backend resizes with it)
_KERNELS = {"bilinear": (1, lambda x: np.maximum(0.0, 1.0 - np.abs(x))), "bicubic": (2, _keys_cubic),
            "lanczos3": _lanczos(3), "lanczos5": _lanczos(5)}
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5")


def resize_matrix(n_in, n_out, interpolation="bilinear", antialias=False):
    """[n_out, n_in]: the weights of jax.image.resize along one axis (half-pixel centres; each
    output's weights normalized to sum to 1 over the input, which clamps at the borders), so
    that resizing is two products with constants, exact, and its gradient the products'."""
    if n_in == n_out:  # (jax skips an axis whose size stays)
        return np.eye(n_in)
    m = np.zeros((n_out, n_in))
    if interpolation == "nearest":  # jax: floor((i + 0.5) * n_in / n_out), computed in float32
        src = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in) / np.float32(n_out))
        m[np.arange(n_out), src.astype(np.int64)] = 1.0
        return m
    _, kernel = _KERNELS[interpolation]
    inv_scale = n_in / n_out
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0  # (antialias widens the kernel when shrinking)
    sample = (np.arange(n_out) + 0.5) * inv_scale - 0.5
    w = kernel(np.abs(sample[:, None] - np.arange(n_in)[None, :]) / kernel_scale)
    total = w.sum(1, keepdims=True)
    w = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, w / np.where(total != 0, total, 1), 0.0)
    w[(sample < -0.5) | (sample > n_in - 0.5)] = 0.0
    return w


def image_input(layer, x):
    """Check [N, H, W, C] with known sizes."""
    expect_rank(layer, x, 4, "[height, width, channels]")
    if not all(isinstance(d, int) for d in x.shape[1:]):
        raise ShapeError(f"{layer} needs known sizes, got {format_shape(x.shape[1:])}")
    return x


def _float_image(ctx, layer, x):
    """Integer images become float32 (Keras computes in its float compute dtype)."""
    image_input(layer, x)
    return x if x.type.is_float else ctx.op("Cast", x, to="float32")


def _fits(layer, x, what, value, *computed):
    """Refuse an argument (and the numbers computed from it) that the images' dtype cannot hold:
    an infinity there would make the training form's outputs inf or nan."""
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.all(np.isfinite(np.hstack((value,) + computed).astype(np.float64).astype(x.dtype))):
            raise ShapeError(f"{layer} {what} {show(value)} does not fit {x.dtype}, the images' dtype",
                             hint=f"take a {what} within {x.dtype}'s range")


def resize(ctx, x, height, width, interpolation="bilinear", antialias=False):
    """[N, H, W, C] -> [N, height, width, C]: a product with the rows' weights [height, H] on
    [N, H, W * C], then with the columns' [width, W] on [N, height, W, C] (each broadcast over the
    leading axes)."""
    _, h, w, c = x.shape
    for n_in, n_out in ((h, height), (w, width)):  # (the weight's bound, before numpy tries to allocate it)
        if n_in != n_out and n_in * n_out > 2 ** 31 - 1:
            raise ShapeError(f"resizing {n_in} pixels to {n_out} takes a [{n_out}, {n_in}] interpolation matrix, "
                             f"{n_in * n_out:,} numbers, too many for one tensor (at most 2^31 - 1)")
    if height != h:
        rows = ctx.const(resize_matrix(h, height, interpolation, antialias), x.dtype)
        x = ctx.op("MatMul", rows, ctx.op("Reshape", x, shape=(0, h, w * c)))
        x = ctx.op("Reshape", x, shape=(0, height, w, c))
    if width != w:
        x = ctx.op("MatMul", ctx.const(resize_matrix(w, width, interpolation, antialias), x.dtype), x)
    return x


def crop(ctx, x, top, left, height, width):
    if (top, left, height, width) == (0, 0) + tuple(x.shape[1:3]):
        return x
    return ctx.op("Slice", x, starts=(top, left), ends=(top + height, left + width), axes=(1, 2))


def aspect_box(h, w, height, width):
    """Keras's largest centred window of an h x w image with the aspect ratio of height x width
    (crop_to_aspect_ratio, smart_resize): (top, left, rows, columns)."""
    rows = max(min(h, int(float(w * height) / width)), 1)
    cols = max(min(w, int(float(h * width) / height)), 1)
    return int(float(h - rows) / 2), int(float(w - cols) / 2), rows, cols


def smart_resize(ctx, x, height, width):
    """keras.utils.smart_resize: the largest centred window of the target's aspect ratio,
    resized (bilinear) to height x width."""
    return resize(ctx, crop(ctx, x, *aspect_box(*x.shape[1:3], height, width)), height, width)


class Resizing(Layer):
    """Resizes images ``[height, width, channels]`` to ``[height, width, channels]`` of the given
    sizes, as Keras 3 with the jax backend (jax.image.resize: half-pixel centres, borders
    clamped). Without ``antialias`` (Keras's default) bilinear shrinking interpolates between
    the two nearest pixels, as Keras does, and does not average the pixels it skips.

    Args:
        height, width: the output's size.
        interpolation: bilinear; or nearest, bicubic (Keys, a = -0.5), lanczos3, lanczos5.
        crop_to_aspect_ratio: false; true crops the largest centred window of the target's
            aspect ratio first, so that images are not distorted.
        antialias: false; true widens the kernel when shrinking (as jax.image.resize).

    Takes floating-point images (Keras rounds integer ones back to their type; put
    ``Rescaling`` first). Weights: none.
    """

    def __init__(self, height: IntArg(1), width: IntArg(1), interpolation: Choice(*INTERPOLATIONS) = "bilinear",
                 crop_to_aspect_ratio: BoolArg() = False, pad_to_aspect_ratio: BoolArg() = False,
                 antialias: BoolArg() = False):
        if pad_to_aspect_ratio:
            raise ArgError("Resizing: pad_to_aspect_ratio is not supported; crop_to_aspect_ratio is")
        self.height, self.width, self.interpolation = height, width, interpolation
        self.crop_to_aspect_ratio, self.antialias = crop_to_aspect_ratio, antialias

    def call(self, ctx, x):
        image_input("Resizing", x)
        if not x.type.is_float:
            raise ShapeError(f"Resizing needs floating-point images, got {x.type}",
                             hint="put Rescaling(1 / 255) (or cast(x, float32)) before it")
        if self.crop_to_aspect_ratio:
            x = crop(ctx, x, *aspect_box(*x.shape[1:3], self.height, self.width))
        return resize(ctx, x, self.height, self.width, self.interpolation, self.antialias)


class CenterCrop(Layer):
    """Crops the centre ``height x width`` of images ``[height, width, channels]``: rows from
    (H - height) // 2, columns from (W - width) // 2. An image smaller than that either way is
    resized as Keras's smart_resize does instead (its largest centred window of the target's
    aspect ratio, resized bilinearly). Integer images become float32, as Keras.

    Args:
        height, width: the output's size.

    Weights: none.
    """

    def __init__(self, height: IntArg(1), width: IntArg(1)):
        self.height, self.width = height, width

    def call(self, ctx, x):
        x = _float_image(ctx, "CenterCrop", x)
        h, w = x.shape[1:3]
        if h >= self.height and w >= self.width:
            return crop(ctx, x, (h - self.height) // 2, (w - self.width) // 2, self.height, self.width)
        return smart_resize(ctx, x, self.height, self.width)


class FactorArg(Converter):
    """Keras's ``factor`` of the image augmentations: a number f gives the range
    (max(-|f|, lowest), |f|), a pair (a, b) the range (min, max); bounds as Keras checks them."""

    def __init__(self, lowest=-1.0, highest=1.0):
        self.lowest, self.highest = lowest, highest
        self.describe = f"a number or a pair of numbers in [{lowest:g}, {highest:g}]"

    def __call__(self, v):
        items = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if len(items) not in (1, 2) or any(isinstance(i, bool) or not isinstance(i, (int, float)) for i in items):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        if len(items) == 1:
            f = float(items[0])
            if not self.lowest <= f <= self.highest:
                raise ArgError(f"expected {self.describe}, got {show(v)}")
            return (max(-abs(f), self.lowest), abs(f))
        lower, upper = sorted(float(i) for i in items)
        if lower > self.highest or upper < self.lowest:
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        return (lower, upper)


class ValueRangeArg(Converter):
    describe = "a pair of numbers (low, high)"

    def __call__(self, v):
        if not isinstance(v, (tuple, list)) or len(v) != 2 or \
                any(isinstance(i, bool) or not isinstance(i, (int, float)) for i in v):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        return tuple(sorted(float(i) for i in v))


class RandomFlip(Layer):
    """Flips images ``[height, width, channels]`` at random in training, each with probability
    1/2; the identity at inference. As Keras 3, horizontal_and_vertical draws once per image
    and flips both ways (a half turn) or neither.

    Args:
        mode: horizontal_and_vertical; or horizontal (left-right), vertical (upside down).
        seed: none (the model's seed decides).

    Integer images become float32, as Keras. Weights: none.
    """

    def __init__(self, mode: Choice("horizontal_and_vertical", "horizontal", "vertical") = "horizontal_and_vertical",
                 seed: Optional(IntArg(0)) = None):
        self.mode, self.seed = mode, seed

    def call(self, ctx, x):
        return ctx.op("RandomFlip", _float_image(ctx, "RandomFlip", x), mode=self.mode)


class RandomCrop(Layer):
    """Crops images ``[height, width, channels]`` to ``height x width`` at a random place in
    training, one place for the whole batch (as Keras). At inference, and in training for an
    image not larger than the window both ways, it crops and resizes as Keras documents
    (smart_resize: the largest centred window of the target's aspect ratio, resized; Keras 3
    itself passes the image through uncropped at inference, contrary to its stated output shape).

    Args:
        height, width: the output's size.
        seed: none (the model's seed decides).

    Integer images become float32, as Keras. Weights: none.
    """

    def __init__(self, height: IntArg(1), width: IntArg(1), seed: Optional(IntArg(0)) = None):
        self.height, self.width, self.seed = height, width, seed

    def call(self, ctx, x):
        x = _float_image(ctx, "RandomCrop", x)
        h, w = x.shape[1:3]
        inference = smart_resize(ctx, x, self.height, self.width)
        if h > self.height and w > self.width:
            return ctx.op("RandomCrop", x, inference, height=self.height, width=self.width, random=True)
        if h >= self.height and w >= self.width:  # (one side equal: Keras crops the centre, as at inference)
            return inference
        # Keras's training form here: the window of the target's size from the aspect-ratio
        # window's corner (cut short by the image), resized to the target if short.
        top, left = aspect_box(h, w, self.height, self.width)[:2]
        rows, cols = min(self.height, h - top), min(self.width, w - left)
        training = resize(ctx, crop(ctx, x, top, left, rows, cols), self.height, self.width)
        return ctx.op("RandomCrop", training, inference, height=self.height, width=self.width, random=False)


class RandomContrast(Layer):
    """Scales each image's contrast at random in training: ``(x - mean) * factor + mean``, the
    mean per image and channel over height and width, factor uniform in [1 - lower, 1 + upper],
    the result clipped to value_range; the identity at inference.

    Args:
        factor: a number f in [0, 1] (the range (0, f), as Keras 3: factors in [1, 1 + f]), or a
            pair (lower, upper).
        value_range: (0, 255).
        seed: none (the model's seed decides).

    Integer images become float32, as Keras. Weights: none.
    """

    def __init__(self, factor: FactorArg(0.0, 1.0), value_range: ValueRangeArg() = (0.0, 255.0),
                 seed: Optional(IntArg(0)) = None):
        self.factor, self.value_range, self.seed = factor, value_range, seed

    def call(self, ctx, x):
        lower, upper = self.factor
        x = _float_image(ctx, "RandomContrast", x)
        _fits("RandomContrast", x, "value_range", self.value_range, self.value_range[1] - self.value_range[0])
        return ctx.op("RandomContrast", x, lower=1.0 - lower, upper=1.0 + upper, low=self.value_range[0],
                      high=self.value_range[1])


class RandomBrightness(Layer):
    """Adds a random brightness to each image in training: ``x + delta``, delta uniform in
    [lower, upper] times the value range's width, the result clipped to value_range; the
    identity at inference.

    Args:
        factor: a number f in [-1, 1] (the range (-|f|, |f|)), or a pair (lower, upper).
        value_range: (0, 255).
        seed: none (the model's seed decides).

    Integer images become float32, as Keras. Weights: none.
    """

    def __init__(self, factor: FactorArg(), value_range: ValueRangeArg() = (0.0, 255.0),
                 seed: Optional(IntArg(0)) = None):
        self.factor, self.value_range, self.seed = factor, value_range, seed

    def call(self, ctx, x):
        x = _float_image(ctx, "RandomBrightness", x)
        _fits("RandomBrightness", x, "value_range", self.value_range, self.value_range[1] - self.value_range[0])
        return ctx.op("RandomBrightness", x, lower=self.factor[0], upper=self.factor[1], low=self.value_range[0],
                      high=self.value_range[1])


class FractionArg(Converter):
    """RandomTranslation's and RandomZoom's factors (Keras checks them apart from ``factor``): a
    number f gives (-|f|, |f|), a pair (min, max); each number in [-1, 1], or with ``open_low``
    in (-1, 1] (a zoom of 1 + f must stay above 0)."""

    def __init__(self, open_low=False):
        self.open_low = open_low
        self.describe = f"a number or a pair of numbers in {'(' if open_low else '['}-1, 1]"

    def __call__(self, v):
        items = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if len(items) not in (1, 2) or any(isinstance(i, bool) or not isinstance(i, (int, float)) or i > 1
                                           or i < -1 or (self.open_low and i == -1) for i in items):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        if len(items) == 1:
            return (-abs(float(items[0])), abs(float(items[0])))
        return tuple(sorted(float(i) for i in items))


FILL_MODE = Choice("reflect", "wrap", "constant", "nearest")  # (Keras's; "mirror" its layers refuse too)
SAMPLING = Choice("bilinear", "nearest")


class _Affine(Layer):
    """What RandomTranslation, RandomRotation and RandomZoom share: how they fill and sample."""

    def __init__(self, fill_mode, interpolation, seed, fill_value):
        self.fill_mode, self.interpolation, self.seed, self.fill_value = fill_mode, interpolation, seed, fill_value

    def affine(self, ctx, x, **ranges):
        name = type(self).__name__
        x = _float_image(ctx, name, x)
        if self.fill_mode == "constant":  # (read only then)
            _fits(name, x, "fill_value", self.fill_value)
        return ctx.op(name, x, fill_mode=self.fill_mode,
                      interpolation=self.interpolation, fill_value=self.fill_value, **ranges)


class RandomTranslation(_Affine):
    """Shifts each image by a random fraction of its height and width in training (Keras 3 on
    jax: its affine_transform, pixels read at (i - dy, j - dx), dy = f * height with f uniform in
    height_factor's range, dx likewise), filling what comes in from outside by fill_mode; the
    identity at inference.

    Args:
        height_factor, width_factor: a number f in [-1, 1] (the range (-|f|, |f|)) or a pair;
            positive moves the image down (right).
        fill_mode: reflect (d c b a | a b c d), or wrap, constant (fill_value), nearest.
        interpolation: bilinear, or nearest.
        seed: none (the model's seed decides).
        fill_value: 0.0, read outside the image with fill_mode=constant.

    Integer images become float32, as Keras. Weights: none.
    """

    def __init__(self, height_factor: FractionArg(), width_factor: FractionArg(), fill_mode: FILL_MODE = "reflect",
                 interpolation: SAMPLING = "bilinear", seed: Optional(IntArg(0)) = None, fill_value: FloatArg() = 0.0):
        super().__init__(fill_mode, interpolation, seed, fill_value)
        self.height_factor, self.width_factor = height_factor, width_factor

    def call(self, ctx, x):
        return self.affine(ctx, x, height=self.height_factor, width=self.width_factor)


class RandomRotation(_Affine):
    """Rotates each image about its centre by a random angle in training (Keras 3 on jax), the
    angle uniform in factor's range times 360 degrees, counter-clockwise when positive; fills
    and samples as RandomTranslation; the identity at inference.

    Args:
        factor: a number f in [-1, 1] (the range (-|f|, |f|), in turns) or a pair.
        fill_mode, interpolation, seed, fill_value: as RandomTranslation's.

    Integer images become float32, as Keras. Weights: none.
    """

    def __init__(self, factor: FactorArg(), fill_mode: FILL_MODE = "reflect", interpolation: SAMPLING = "bilinear",
                 seed: Optional(IntArg(0)) = None, fill_value: FloatArg() = 0.0):
        super().__init__(fill_mode, interpolation, seed, fill_value)
        self.factor = factor

    def call(self, ctx, x):
        return self.affine(ctx, x, factor=self.factor)


class RandomZoom(_Affine):
    """Zooms each image about its centre at random in training (Keras 3 on jax): pixels read at
    zoom times their distance from the centre, the zoom 1 + f with f uniform in the factor's
    range (positive zooms out, negative in), for the rows by height_factor and the columns by
    width_factor (none: the rows' draw, keeping the aspect ratio); fills and samples as
    RandomTranslation; the identity at inference.

    Args:
        height_factor: a number f in (-1, 1] (the range (-|f|, |f|)) or a pair.
        width_factor: none, or as height_factor.
        fill_mode, interpolation, seed, fill_value: as RandomTranslation's.

    Integer images become float32, as Keras. Weights: none.
    """

    def __init__(self, height_factor: FractionArg(open_low=True),
                 width_factor: Optional(FractionArg(open_low=True)) = None, fill_mode: FILL_MODE = "reflect",
                 interpolation: SAMPLING = "bilinear", seed: Optional(IntArg(0)) = None, fill_value: FloatArg() = 0.0):
        super().__init__(fill_mode, interpolation, seed, fill_value)
        self.height_factor, self.width_factor = height_factor, width_factor

    def call(self, ctx, x):
        return self.affine(ctx, x, height=self.height_factor, width=self.width_factor)
