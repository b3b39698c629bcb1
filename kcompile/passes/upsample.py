"""A "same" convolution of a nearest-upsampled map as one transposed convolution of the small map.

Along an axis upsampled by f, output y[f j + a] (a < f) of a stride-1 convolution of odd size k
(padding p = k // 2 each side) reads the upsampled positions f j + a - p ... f j + a + p, which
repeat small positions j - 1, j, j + 1 (for k = 3): several kernel taps meet the same small
value, and their weights can be summed first. That is a ConvTranspose of the small map with
stride f, padding p and kernel size k + f - 1, whose tap k' is the sum of the taps t with
k - 1 - k' <= t <= k - 2 - k' + f (for k = 3, f = 2: [w2, w1 + w2, w0 + w1, w0]). Each output
then costs ((k + f - 1) / f)^2 multiply-adds a channel pair instead of k^2 (3x3 after 2x: 4
against 9), the upsampled map is never made, and the gradients follow: the input's is a
stride-f convolution at the small map's size, not a convolution at the large size summed back.

The kernel is mapped in the graph (a MatMul by a fixed matrix of zeros and ones), so a
training step differentiates through it to the layer's own kernel, and an inference session
computes it once. Measured on onnxruntime's CPU provider (forward, 14x14 doubled, one thread,
batch 64): 32 -> 8 channels 15.7 -> 5.1 ms, 64 -> 32 57.8 -> 32.8, 32 -> 32 30.5 -> 19.7;
128 -> 64 at 16x16, batch 32, 138 -> 72 ms. In `fit`: a conv autoencoder's step 243 -> 189 ms,
the survey's conv_transpose case 173 -> 115 ms. 1-D maps in training only, 3-D maps not at
all (below: what was measured). The results equal the convolution's to float rounding (the summed taps).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..ir import Graph
from ..ops.nn import _spatial_attrs, nearest_upsampled, stride1_same
from .util import add, replace

# Where it was measured faster (3-D keeps ops/nn.py's kernel gradient from the small map): 2-D
# maps everywhere; 1-D maps in training steps only (a Conv1D decoder, 64 -> 64 channels at 50 ->
# 100 steps: fit 25.4 -> 22.5 ms a step, but predict of 1,024 rows 57.2 -> 59.9 ms, where the
# bare forward ops measured 1.36-1.71x faster alone).
INFERENCE_DIMS = (2,)
TRAINING_DIMS = (1, 2)


def upsampled_conv_as_transposed(g: Graph, dims=INFERENCE_DIMS) -> Graph:
    for conv in g.nodes():
        if conv.name not in g.nx or conv.op != "Conv":
            continue
        n = g.types[conv.inputs[0]].rank - 2
        found = nearest_upsampled(g, conv.inputs[0], n) if n in dims else None
        if found is None:
            continue
        x, factors, channels_last = found
        w = conv.inputs[1]
        tw = g.types[w]
        kernel = tw.shape[2:]
        a = conv.attrs
        strides, dilations, pads = _spatial_attrs(a, n)
        if a.get("activation") or a.get("group", 1) != 1 or not stride1_same(kernel, strides, pads, dilations) \
                or 1 in kernel:  # (a 1x1 kernel: no taps to sum)
            continue
        if channels_last:
            x = add(g, conv, "Transpose", [x], perm=(0, n + 1) + tuple(range(1, n + 1)))
        # along each axis, tap k' of the transposed kernel sums taps k - 1 - k' ... k - 2 - k' + f
        maps = []
        for k, f in zip(kernel, factors):
            new_tap, tap = np.arange(k + f - 1)[:, None], np.arange(k)
            maps.append((k - 1 - new_tap <= tap) & (tap <= k - 2 + f - new_tap))
        taps = functools.reduce(np.kron, maps).T  # [prod(kernel), prod(new kernel)]: taps row-major
        out, cin = tw.shape[:2]
        flat = add(g, conv, "Reshape", [w], shape=(out * cin, math.prod(kernel)))
        summed = add(g, conv, "MatMul", [flat, g.add_const(taps.astype(tw.dtype), "upsampled_taps")])
        big = tuple(k + f - 1 for k, f in zip(kernel, factors))
        transposed = add(g, conv, "Transpose", [add(g, conv, "Reshape", [summed], shape=(out, cin) + big)],
                         perm=(1, 0) + tuple(range(2, n + 2)))  # (ConvTranspose's kernel is [C, O, k...])
        y = add(g, conv, "ConvTranspose", [x, transposed] + conv.inputs[2:], strides=factors, pads=pads)
        replace(g, conv.outputs[0], y)
    return g


def upsampled_conv_as_transposed_in_training(g: Graph) -> Graph:
    return upsampled_conv_as_transposed(g, TRAINING_DIMS)
