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
the survey's conv_transpose case 173 -> 115 ms. 2-D only: that is what was measured (1-D and
3-D convolutions of an upsampled map keep ops/nn.py's kernel gradient from the small map).
The results equal the convolution's to float rounding (the summed taps).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from .util import add, replace


def upsampled_conv_as_transposed(g: Graph) -> Graph:
    for conv in g.nodes():
        if conv.name not in g.nx or conv.op != "Conv":
            continue
        found = _small_map(g, conv.inputs[0])
        if found is None:
            continue
        x, repeat, channels_last = found
        small = g.types[x].shape[1:3] if channels_last else g.types[x].shape[2:]
        w = conv.inputs[1]
        tw = g.types[w]
        n = tw.rank - 2
        kernel = tw.shape[2:]
        a = conv.attrs
        if n != 2 or set(repeat) != {2, 3} or a.get("activation") or a.get("group", 1) != 1 \
                or any(s != 1 for s in a.get("strides", (1,) * n)) or any(d != 1 for d in a.get("dilations", (1,) * n)) \
                or not all(isinstance(k, int) and k % 2 == 1 and k > 1 for k in kernel) \
                or tuple(a.get("pads", (0,) * 2 * n)) != tuple(k // 2 for k in kernel) * 2 \
                or not all(isinstance(d, int) for d in small):
            continue
        if channels_last:
            x = add(g, conv, "Transpose", [x], perm=(0, 3, 1, 2))
        factors = tuple(repeat[2 + i] for i in range(n))
        # tap k' of the transposed kernel sums taps k - 1 - k' ... k - 1 - k' + f - 1 of the kernel
        maps = []
        for k, f in zip(kernel, factors):
            m = np.zeros((k + f - 1, k))
            for k2 in range(k + f - 1):
                for t in range(max(0, k - 1 - k2), min(k, k - 1 - k2 + f)):
                    m[k2, t] = 1
            maps.append(m)
        both = np.kron(maps[0], maps[1]).T  # [kh * kw, K'h * K'w]: row-major taps of both axes
        out, cin = tw.shape[:2]
        flat = add(g, conv, "Reshape", [w], shape=(out * cin, kernel[0] * kernel[1]))
        summed = add(g, conv, "MatMul", [flat, g.add_const(both.astype(tw.dtype), "upsampled_taps")])
        big = tuple(k + f - 1 for k, f in zip(kernel, factors))
        transposed = add(g, conv, "Transpose", [add(g, conv, "Reshape", [summed], shape=(out, cin) + big)],
                         perm=(1, 0, 2, 3))  # (ConvTranspose's kernel is [C, O, k...])
        y = add(g, conv, "ConvTranspose", [x, transposed] + conv.inputs[2:], strides=factors,
                pads=tuple(k // 2 for k in kernel) * 2)
        replace(g, conv.outputs[0], y)
    return g


def _small_map(g: Graph, value: str):
    """(the map that ``value`` [N, C, H, W] repeats, {axis of [N, C, H, W]: factor}, whether
    that map is channels-last) where ``value`` is an Upsample's output, channels-first (the
    transposes sank) or channels-last before a Transpose to channels-first (a model's input
    upsampled); else None."""
    node = g.producer_of(value)
    channels_last = node is not None and node.op == "Transpose" and tuple(node.attrs["perm"]) == (0, 3, 1, 2)
    if channels_last:
        node = g.producer_of(node.inputs[0])
    if node is None or node.op != "Upsample":
        return None
    rank = g.types[node.inputs[0]].rank
    if rank != 4:
        return None
    axes = [ax % rank for ax in node.attrs["axes"]]
    if channels_last:  # (channels-last axes 1, 2 are channels-first axes 2, 3)
        axes = [{1: 2, 2: 3}.get(ax, -1) for ax in axes]
    return node.inputs[0], dict(zip(axes, node.attrs["factors"])), channels_last
