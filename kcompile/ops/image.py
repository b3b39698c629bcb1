"""Random image augmentations (Keras's RandomFlip, RandomCrop, RandomContrast, RandomBrightness,
RandomTranslation, RandomRotation, RandomZoom): channels-last [N, H, W, C], random in training
and their last input at inference.

At inference each op is the value of its last input (the image itself, or RandomCrop's
deterministic crop), and the remove-dropout pass reads that input instead. In training
(``training_form``) each draws its transformation from uniform noise inputs, one draw per
sample (RandomCrop: one per batch, as Keras). They take no gradient: an augmentation whose
input depends on a trained weight is refused with the layer's location, rather than trained
through a transformation the backward graph would not see.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import KcompileError
from ..ir import TensorType
from .base import OPS, Op, noise_input, register, replace_node


class Augmentation(Op):
    """Random in training; the value of the last input at inference."""
    random = True

    def infer(self, ins, attrs):
        return [ins[-1]]

    def grad(self, ctx, node, dys):  # (never reached: the training form replaces the node)
        raise NotImplementedError(f"{self.name} has no gradient")

    def training_form(self, ctx, node):
        if node.attrs.get("random", True):
            _refuse_trained_input(ctx.g, node)
        return self.train(ctx, node)

    def train(self, ctx, node):
        raise NotImplementedError

    @staticmethod
    def per_sample_noise(ctx, node, x):
        """Uniform [0, 1) noise [N, 1, 1, 1] (declared float32 whatever the images' dtype: it is
        compared with and scaled by float32 constants): one draw per image."""
        return noise_input(ctx, node, TensorType("float32", (ctx.type(x).shape[0], 1, 1, 1)))


def refuse_trained_inputs(g) -> None:
    """The training graph's check, made by `kcompile check` too: every random augmentation
    reads the model's input data, not a value a trained weight makes."""
    for node in g.nodes():
        if isinstance(OPS.get(node.op), Augmentation) and node.attrs.get("random", True):
            _refuse_trained_input(g, node)


def _refuse_trained_input(g, node):
    seen, stack = set(), [node.inputs[0]]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in g.params and g.params[v].trainable:
            raise KcompileError(f"{node.op} augments the model's input data in training; its input here depends "
                                f"on the trained weight {v}, through which it would pass no gradient", node.loc,
                                hint=f"put {node.op} before the trainable layers (as Keras models do), "
                                     "or freeze the layers before it")
        producer = g.producer_of(v)
        if producer is not None:
            stack.extend(producer.inputs)


def _uniform(ctx, u, lo, hi, dtype):
    """u in [0, 1) -> lo + u (hi - lo), as ``dtype`` (the bounds rounded to it first, as
    jax.random.uniform computes)."""
    u = u if dtype == "float32" else ctx.op("Cast", u, to=dtype)
    lo, hi = np.asarray(lo, dtype), np.asarray(hi, dtype)
    return ctx.op("Add", ctx.op("Mul", u, hi - lo), lo)


def _clip(ctx, y, low, high):
    return ctx.op("Max", ctx.op("Min", y, high), low)


@register
class RandomFlip(Augmentation):
    """attrs: mode. Keras flips an image with probability 1/2 (noise <= 0.5); in
    horizontal_and_vertical mode one draw flips both ways (a half turn) or neither, as Keras 3."""
    name = "RandomFlip"
    ir_only_attrs = ("mode",)

    def train(self, ctx, node):
        x, mode = node.inputs[0], node.attrs["mode"]
        name, u = self.per_sample_noise(ctx, node, x)
        flipped = x
        for axis, part in ((2, "horizontal"), (1, "vertical")):
            if part in mode:
                flipped = ctx.op("Flip", flipped, axis=axis)
        replace_node(ctx, node, [ctx.op("Where", ctx.op("LessOrEqual", u, 0.5), flipped, x)])
        return [(name, x)], []


@register
class RandomCrop(Augmentation):
    """inputs: image, and the crop to use at inference; attrs: height, width, random. In
    training one window of height x width at a uniformly drawn offset, the same for the whole
    batch (Keras: "the layer will crop all the images in the same batch to the same cropping
    location"). With random false (an image not larger than the window both ways, where Keras
    crops and resizes without drawing) the first input is the training value itself."""
    name = "RandomCrop"
    ir_only_attrs = ("height", "width", "random")

    def infer(self, ins, attrs):
        return [ins[1]]

    def train(self, ctx, node):
        x = node.inputs[0]
        if not node.attrs["random"]:
            replace_node(ctx, node, [x])
            return [], []
        name = noise_input(ctx, node, TensorType("float32", (2,)))[0]
        y = x
        for i, (axis, size) in enumerate(((1, node.attrs["height"]), (2, node.attrs["width"]))):
            u = ctx.op("Slice", name, starts=(i,), ends=(i + 1,), axes=(0,))
            start = ctx.op("Cast", ctx.op("Floor", ctx.op("Mul", u, float(ctx.type(x).shape[axis] - size + 1))),
                           to="int64")  # an offset in [0, extent - size], as Keras's int(uniform(0, extent - size + 1))
            y = ctx.op("Gather", y, ctx.op("Add", start, np.arange(size, dtype=np.int64)), axis=axis)
        replace_node(ctx, node, [y])
        return [(name, x)], []


@register
class RandomContrast(Augmentation):
    """attrs: lower, upper (the contrast factor is uniform in [lower, upper]), low, high (the
    value range outputs are clipped to). (x - mean) * factor + mean, the mean per image and
    channel over height and width, as Keras."""
    name = "RandomContrast"
    ir_only_attrs = ("lower", "upper", "low", "high")

    def train(self, ctx, node):
        x, a = node.inputs[0], node.attrs
        name, u = self.per_sample_noise(ctx, node, x)
        factor = _uniform(ctx, u, a["lower"], a["upper"], ctx.type(x).dtype)
        mean = ctx.op("ReduceMean", x, axes=(1, 2), keepdims=1)
        y = ctx.op("Add", ctx.op("Mul", ctx.op("Sub", x, mean), factor), mean)
        replace_node(ctx, node, [_clip(ctx, y, a["low"], a["high"])])
        return [(name, x)], []


@register
class RandomBrightness(Augmentation):
    """attrs: lower, upper (the fraction of the value range added, uniform in [lower, upper]),
    low, high (the value range, which outputs are clipped to)."""
    name = "RandomBrightness"
    ir_only_attrs = ("lower", "upper", "low", "high")

    def train(self, ctx, node):
        x, a = node.inputs[0], node.attrs
        name, u = self.per_sample_noise(ctx, node, x)
        span = a["high"] - a["low"]
        delta = _uniform(ctx, u, a["lower"] * span, a["upper"] * span, ctx.type(x).dtype)
        replace_node(ctx, node, [_clip(ctx, ctx.op("Add", x, delta), a["low"], a["high"])])
        return [(name, x)], []


@register
class ImageSample(Op):
    """inputs: images [N, H, W, C], rows and cols [N, H, W, 1] (float32: where each output
    pixel reads, pixel centres at integers); attrs: interpolation, fill_mode, fill_value. What
    Keras 3's affine_transform samples with on jax (jax.scipy.ndimage.map_coordinates): nearest
    rounds half away from zero; bilinear weighs the 4 pixels around. reflect (d c b a | a b c d),
    wrap and nearest map each of those pixels' row and column into the image; with constant one
    outside reads fill_value (so bilinear blends it in at the border). Made only by the training
    forms below, on data no weight precedes: no gradient."""
    name = "ImageSample"
    ir_only_attrs = ("interpolation", "fill_mode", "fill_value")

    def infer(self, ins, attrs):
        return [ins[0]]

    def lower(self, ctx, inputs, outputs, attrs):
        x, rows, cols = inputs
        _, h, w, c = ctx.shape(x)
        dtype, mode = ctx.dtype(x), attrs["fill_mode"]
        flat = ctx.emit("Reshape", [x, ctx.const([0, h * w, c], "int64")])
        total = None
        for (r, wr, vr), (col, wc, vc) in itertools.product(self._taps(ctx, rows, h, attrs),
                                                              self._taps(ctx, cols, w, attrs)):
            index = ctx.emit("Add", [ctx.emit("Mul", [r, ctx.const(w, "int64")]), col])
            y = ctx.emit("GatherND", [flat, index], batch_dims=1)  # [N, H, W, C]: image n's pixels
            if mode == "constant":
                y = ctx.emit("Where", [ctx.emit("And", [vr, vc]), y, ctx.const(attrs["fill_value"], dtype)])
            if wr is not None:
                weight = ctx.emit("Mul", [wr, wc])
                if dtype != "float32":
                    weight = ctx.emit("Cast", [weight], to=ctx.onnx_dtype(dtype))
                y = ctx.emit("Mul", [weight, y])
            total = y if total is None else ctx.emit("Add", [total, y])  # (jax's order of the sum)
        ctx.emit("Identity", [total], outputs)

    @staticmethod
    def _taps(ctx, coord, size, attrs):
        """The pixels one axis reads at ``coord``: [(index int64, weight or None, inside or None)]."""
        f32 = lambda v: ctx.const(v, "float32")  # noqa: E731
        if attrs["interpolation"] == "nearest":
            # Round is half to even; a tie (the only case its difference is 0.5) goes away from 0
            rounded = ctx.emit("Round", [coord])
            tie = ctx.emit("Equal", [ctx.emit("Abs", [ctx.emit("Sub", [coord, rounded])]), f32(0.5)])
            away = ctx.emit("Add", [coord, ctx.emit("Mul", [ctx.emit("Sign", [coord]), f32(0.5)])])
            taps = [(ctx.emit("Where", [tie, away, rounded]), None)]
        else:
            low = ctx.emit("Floor", [coord])
            upper = ctx.emit("Sub", [coord, low])
            taps = [(low, ctx.emit("Sub", [f32(1.0), upper])), (ctx.emit("Add", [low, f32(1.0)]), upper)]
        i64 = lambda v: ctx.const(v, "int64")  # noqa: E731
        out = []
        for index, weight in taps:
            index = ctx.emit("Cast", [index], to=ctx.onnx_dtype("int64"))
            inside = None
            if attrs["fill_mode"] == "wrap":
                index = ctx.emit("Mod", [index, i64(size)])  # (integer Mod: the divisor's sign)
            elif attrs["fill_mode"] == "reflect":  # period 2 size, the edge pixel repeated
                m = ctx.emit("Mod", [index, i64(2 * size)])
                index = ctx.emit("Min", [m, ctx.emit("Sub", [i64(2 * size - 1), m])])
            else:  # nearest; constant too, where the clamped index only keeps the gather in bounds
                if attrs["fill_mode"] == "constant":
                    inside = ctx.emit("And", [ctx.emit("GreaterOrEqual", [index, i64(0)]),
                                              ctx.emit("Less", [index, i64(size)])])
                index = ctx.emit("Min", [ctx.emit("Max", [index, i64(0)]), i64(size - 1)])
            out.append((index, weight, inside))
        return out


class AffineAugmentation(Augmentation):
    """attrs: fill_mode, interpolation, fill_value, and the op's ranges. In training each image
    reads through Keras's affine transform of its own draw: output pixel (i, j) reads row
    b0 j + b1 i + b2, column a0 j + a1 i + a2 (coordinates computed as Keras's, in float32)."""
    ir_only_attrs = ("fill_mode", "interpolation", "fill_value", "height", "width", "factor")

    def train(self, ctx, node):
        x, a = node.inputs[0], node.attrs
        h, w = ctx.type(x).shape[1:3]
        grid = np.indices((h, w), dtype=np.float32)[..., None]  # [2, H, W, 1]
        noise, rows, cols = self.coordinates(ctx, node, x, ctx.const(grid[0]), ctx.const(grid[1]), h, w)
        y = ctx.op("ImageSample", x, rows, cols, interpolation=a["interpolation"], fill_mode=a["fill_mode"],
                   fill_value=a["fill_value"])
        replace_node(ctx, node, [y])
        return noise, []

    def coordinates(self, ctx, node, x, i, j, h, w):
        """([(noise input, like)], rows, cols) for the grids of output rows i and columns j."""
        raise NotImplementedError

    def draw(self, ctx, node, x, bounds, noise):
        """A uniform per-image [N, 1, 1, 1] float32 in ``bounds``; records its noise input."""
        name, u = self.per_sample_noise(ctx, node, x)
        noise.append((name, x))
        return _uniform(ctx, u, *bounds, "float32")


@register
class RandomTranslation(AffineAugmentation):
    """attrs: height, width (the shift's range as fractions of the size). Keras shifts by dy =
    uniform(height) * H rows and dx = uniform(width) * W columns: (i, j) reads (i - dy, j - dx)."""
    name = "RandomTranslation"

    def coordinates(self, ctx, node, x, i, j, h, w):
        noise = []
        dy = ctx.op("Mul", self.draw(ctx, node, x, node.attrs["height"], noise), float(h))
        dx = ctx.op("Mul", self.draw(ctx, node, x, node.attrs["width"], noise), float(w))
        return noise, ctx.op("Sub", i, dy), ctx.op("Sub", j, dx)


@register
class RandomRotation(AffineAugmentation):
    """attrs: factor (the angle's range in turns). Keras draws the angle in degrees (the range
    times 360), and rotates about the centre ((W - 1) / 2, (H - 1) / 2): counter-clockwise for
    a positive angle."""
    name = "RandomRotation"

    def coordinates(self, ctx, node, x, i, j, h, w):
        noise = []
        lower, upper = node.attrs["factor"]
        degrees = self.draw(ctx, node, x, (lower * 360.0, upper * 360.0), noise)
        angle = ctx.op("Mul", degrees, float(np.float32(np.pi / 180.0)))
        cos, sin = ctx.op("Cos", angle), ctx.op("Sin", angle)
        cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
        a2 = ctx.op("Add", ctx.op("Sub", cx, ctx.op("Mul", cos, cx)), ctx.op("Mul", sin, cy))
        b2 = ctx.op("Sub", ctx.op("Sub", cy, ctx.op("Mul", sin, cx)), ctx.op("Mul", cos, cy))
        rows = ctx.op("Add", ctx.op("Add", ctx.op("Mul", cos, i), ctx.op("Mul", sin, j)), b2)
        cols = ctx.op("Add", ctx.op("Sub", ctx.op("Mul", cos, j), ctx.op("Mul", sin, i)), a2)
        return noise, rows, cols


@register
class RandomZoom(AffineAugmentation):
    """attrs: height, width (ranges of f; the zoom is 1 + f, > 1 zooming out), width none for
    the height's draw. About the centre: (i, j) reads (zy i + (H - 1) / 2 (1 - zy), zx j + ...)."""
    name = "RandomZoom"

    def coordinates(self, ctx, node, x, i, j, h, w):
        noise, zooms = [], []
        for bounds in (node.attrs["height"], node.attrs["width"]):
            zooms.append(zooms[0] if bounds is None else
                         self.draw(ctx, node, x, (1.0 + bounds[0], 1.0 + bounds[1]), noise))
        (zy, zx), out = zooms, []
        for z, grid, size in ((zy, i, h), (zx, j, w)):
            offset = ctx.op("Mul", ctx.op("Sub", 1.0, z), (size - 1) / 2.0)
            out.append(ctx.op("Add", ctx.op("Mul", z, grid), offset))
        return (noise, *out)
