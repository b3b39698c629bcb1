"""Random image augmentations (Keras's RandomFlip, RandomCrop, RandomContrast, RandomBrightness):
channels-last [N, H, W, C], random in training and their last input at inference.

At inference each op is the value of its last input (the image itself, or RandomCrop's
deterministic crop), and the remove-dropout pass reads that input instead. In training
(``training_form``) each draws its transformation from uniform noise inputs, one draw per
sample (RandomCrop: one per batch, as Keras). They take no gradient: an augmentation whose
input depends on a trained weight is refused with the layer's location, rather than trained
through a transformation the backward graph would not see.
"""
from __future__ import annotations

import numpy as np

from ..errors import KcompileError
from ..ir import TensorType
from .base import Op, noise_input, register, replace_node


class Augmentation(Op):
    """Random in training; the value of the last input at inference."""

    def infer(self, ins, attrs):
        return [ins[-1]]

    def lower(self, ctx, inputs, outputs, attrs):
        ctx.emit("Identity", inputs[-1:], outputs)

    def grad(self, ctx, node, dys):  # (never reached: the training form replaces the node)
        raise NotImplementedError(f"{self.name} has no gradient")

    def training_form(self, ctx, node):
        if node.attrs.get("random", True):
            _refuse_trained_input(ctx, node)
        return self.train(ctx, node)

    def train(self, ctx, node):
        raise NotImplementedError

    @staticmethod
    def per_sample_noise(ctx, node, x):
        """Uniform [0, 1) noise [N, 1, 1, 1] (float32, as the runtime draws it): one draw per image."""
        return noise_input(ctx, node, TensorType("float32", (ctx.type(x).shape[0], 1, 1, 1)))


def _refuse_trained_input(ctx, node):
    g, seen, stack = ctx.g, set(), [node.inputs[0]]
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
    """u in [0, 1) -> lo + u (hi - lo), as ``dtype``."""
    u = u if dtype == "float32" else ctx.op("Cast", u, to=dtype)
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
