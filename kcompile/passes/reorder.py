"""Max pooling before a monotonic activation: ``MaxPool(relu(z)) == relu(MaxPool(z))``.

The activation (and, in training, its gradient mask) then runs on the pooled tensor, a
quarter of the size for 2x2 windows. Gradients agree too: the window's argmax of z is the
argmax of relu(z) wherever the pooled value is positive, and elsewhere relu's gradient is
zero either way.
"""
from ..ir import Graph
from .util import add, replace, sole_consumer

MONOTONIC = ("Relu", "LeakyRelu")  # non-decreasing, and increasing where their gradient is non-zero


def pool_before_activation(g: Graph) -> Graph:
    for act in g.nodes():
        if act.name not in g.nx or act.op not in MONOTONIC:
            continue
        pool = sole_consumer(g, act.outputs[0])
        if pool is None or pool.op != "MaxPool" or g.uses(pool.outputs[1]):
            continue
        pooled = add(g, pool, "MaxPool", [act.inputs[0]], **pool.attrs)
        replace(g, pool.outputs[0], add(g, act, act.op, [pooled], **act.attrs))
    return g


# Measured on onnxruntime's CPU provider, a 3x3 convolution to 32 channels of 128 28x28
# images and its 2x2 max pool, forward with the pool's argmax plus MaxUnpool against the four
# stride-2 phase convolutions with their Max and masks: 1 input channel 6.3 vs 1.9 ms,
# 2: 7.4 vs 2.8, 4: 8.7 vs 3.7, 8: 9.7 vs 4.6; but 16 channels at 16x16: 3.1 vs 3.7, and
# 32 at 13x13: 3.9 vs 8.6 (strided convolutions of many channels are slow there).
PHASE_MAX_CHANNELS = 8


def conv_pool_phases(g: Graph) -> Graph:
    """Training graphs: a stride-1 Conv of few input channels read only by a 2x2, stride-2
    MaxPool becomes one ConvMaxPool, whose gradient needs no argmax (see kcompile/ops/nn.py)."""
    for pool in g.nodes():
        if pool.name not in g.nx or pool.op != "MaxPool" or g.uses(pool.outputs[1]):
            continue
        if tuple(pool.attrs["kernel_shape"]) != (2, 2) or tuple(pool.attrs.get("strides", (1, 1))) != (2, 2) \
                or any(pool.attrs.get("pads", ())):
            continue
        conv = g.producer_of(pool.inputs[0])
        if conv is None or conv.op != "Conv" or sole_consumer(g, conv.outputs[0]) is not pool:
            continue
        a = conv.attrs
        if a.get("activation") or a.get("group", 1) != 1 or any(s != 1 for s in a.get("strides", ())) \
                or any(d != 1 for d in a.get("dilations", ())):
            continue
        x = g.types[conv.inputs[0]]
        if x.rank != 4 or not all(isinstance(d, int) for d in x.shape[1:]) or x.shape[1] > PHASE_MAX_CHANNELS:
            continue
        fused = add(g, pool, "ConvMaxPool", conv.inputs, pads=tuple(a.get("pads", (0,) * 4)))
        replace(g, pool.outputs[0], fused)
    return g
