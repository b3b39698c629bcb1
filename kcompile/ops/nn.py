"""Neural-network ops, channels-first as in ONNX: Conv, ConvTranspose, pooling,
BatchNormalization, Softmax, Dropout, GaussianNoise, Gather (embedding lookup)."""
from __future__ import annotations

import math

from ..errors import ShapeError, format_shape
from ..ir import TensorType
from ..ir.types import normalize_axis, offset_dim, window_output_dim
from .base import Op, float_attr, noise_input, register, replace_node
from .linalg import lower_fused
from .shape import grown_axes


def conv_output_size(size, kernel, stride, pad_begin, pad_end, dilation=1):
    """A window's output size: an int, or an expression over a named size (T-2)."""
    effective = dilation * (kernel - 1) + 1
    out = window_output_dim(size, effective - pad_begin - pad_end, stride)
    if isinstance(out, int) and out < 1:
        raise ShapeError(f"the window ({effective}) is larger than the padded input ({size + pad_begin + pad_end})",
                         hint="use padding=same, a smaller kernel, or remove a pooling layer")
    return out


def _spatial_attrs(attrs, n):
    strides = tuple(attrs.get("strides", (1,) * n))
    dilations = tuple(attrs.get("dilations", (1,) * n))
    pads = tuple(attrs.get("pads", (0,) * (2 * n)))
    return strides, dilations, pads


@register
class Conv(Op):
    """x [N, C, *spatial], W [O, C/group, *kernel], b [O] (optional).
    attrs: strides, pads, dilations, group, activation (fused, optional)."""
    name = "Conv"
    onnx_op = "Conv"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, w = ins[0], ins[1]
        n = x.rank - 2
        if n < 1 or w.rank != x.rank:
            raise ShapeError(f"Conv of input {format_shape(x.shape)} with kernel {format_shape(w.shape)}")
        group = attrs.get("group", 1)
        if x.shape[1] != w.shape[1] * group:
            raise ShapeError(f"Conv kernel expects {w.shape[1] * group} input channels, got {x.shape[1]}")
        if len(ins) == 3 and ins[2].shape != (w.shape[0],):
            raise ShapeError(f"Conv bias {format_shape(ins[2].shape)} does not match {w.shape[0]} filters")
        strides, dilations, pads = _spatial_attrs(attrs, n)
        spatial = tuple(conv_output_size(x.shape[2 + i], w.shape[2 + i], strides[i], pads[i], pads[n + i],
                                         dilations[i]) for i in range(n))
        return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + spatial)]

    def macs(self, ins, outs, attrs):
        return outs[0].shape[1:] + ins[1].shape[1:]  # each output reads C/group x kernel inputs

    def lower(self, ctx, inputs, outputs, attrs):
        lower_fused(ctx, self.onnx_op, inputs, outputs, attrs)

    def grad(self, ctx, node, dys):
        if node.attrs.get("activation"):
            raise NotImplementedError("gradient of a Conv with a fused activation (fuse after autodiff)")
        x, w = node.inputs[:2]
        dy, = dys
        tx, tw = ctx.type(x), ctx.type(w)
        n = tx.rank - 2
        strides, dilations, pads = _spatial_attrs(node.attrs, n)
        group = node.attrs.get("group", 1)
        kernel = tw.shape[2:]
        dx = conv_input_grad(ctx, x, w, node.attrs, dy)
        if group == 1:
            dw = conv_weight_grad(ctx, x, dy, kernel, strides, pads, dilations)
        elif group == tx.shape[1] and math.prod(kernel) <= IM2COL_MAX_WINDOW and all(
                isinstance(d, int) for d in tx.shape[2:]):
            dw = depthwise_weight_grad(ctx, x, dy, kernel, strides, pads, dilations)
        else:
            cin, cout = tx.shape[1] // group, tw.shape[0] // group
            parts = [conv_weight_grad(ctx, ctx.op("Slice", x, starts=(g * cin,), ends=((g + 1) * cin,), axes=(1,)),
                                      ctx.op("Slice", dy, starts=(g * cout,), ends=((g + 1) * cout,), axes=(1,)),
                                      kernel, strides, pads, dilations) for g in range(group)]
            dw = ctx.op("Concat", *parts, axis=0)
        grads = [dx, dw]
        if len(node.inputs) == 3:
            grads.append(ctx.op("ReduceSum", dy, axes=(0,) + tuple(range(2, n + 2)), keepdims=0))
        return grads


def require_known_window_sizes(t, what):
    """For gradients built from the static sizes they slide over: raises for a named one (T)."""
    named = [d for d in t.shape[2:] if not isinstance(d, int)]
    if named:
        raise NotImplementedError(f"gradient of {what} over the named dimension {named[0]} "
                                  f"(give {named[0]} a number to train this model)")


def conv_input_grad(ctx, x, w, attrs, dy):
    """d(loss)/dx of a Conv of x with kernel w giving dy: the transposed convolution."""
    tx, tw = ctx.type(x), ctx.type(w)
    n = tx.rank - 2
    strides, dilations, pads = _spatial_attrs(attrs, n)
    kernel = tw.shape[2:]
    out_pad = tuple(transposed_output_padding(ctx.type(dy).shape[2 + i], tx.shape[2 + i], kernel[i], strides[i],
                                              pads[i], pads[n + i], dilations[i]) for i in range(n))
    return ctx.op("ConvTranspose", dy, w, strides=strides, pads=pads, dilations=dilations,
                  group=attrs.get("group", 1), output_padding=out_pad)


IM2COL_MAX_WINDOW = 25  # kernel elements; above this the unfolded input grows too large
# The kernel gradient's form (kernel_grad_form) was chosen by timing fit's whole step in each
# form on the AVX-512 machine (two cores, batch 128): Conv2D(O, 3, padding=same) on [H, H, C]
# inputs, 98 shapes (H 8-32, C 3-64, O 16-128) and 20 others (strides 1 and 2, up to 128
# channels) in the step's two one-core parts of 64 rows, as the runtime splits it, and 63
# shapes whole, on two threads, as it runs steps that cannot be split (BatchNormalization).
# In parts, this rule's step is on average 0.7% slower than the fastest form of each shape
# (at most 19%); the earlier one, tuned on an AVX2 machine, 14.7% (12.1% on the 20 others, up
# to 1.9x: it sliced 12 -> 24 channels at 10x10, where gathering was 1.9x faster). Whole,
# 4.2% against 9.2%. benchmarks/kernel_grads.py measures it again on any machine.
# - More than UNFOLD_WIDENING output channels per input channel: the one-hot form (its
#   per-sample products are wide; 3 -> 32 at 32x32: 9.6 against 14.1-15.6 ms in parts).
UNFOLD_WIDENING = 2
# - Else at least GATHER_MIN_CHANNELS in and out, and an input of at most GATHER_MAX_VALUES
#   channels x output positions (16 channels at 28x28): the gathered im2col, batch last (12 ->
#   24 at 10x10: 3.6 against 5.4-6.9 ms). Beyond it the im2col leaves the caches (32 -> 32 at
#   32x32: 45.4 against 36.2 for the slices).
GATHER_MIN_CHANNELS = 8
GATHER_MAX_VALUES = 16 * 28 * 28
# - Else, in a step split into parts, at stride 1 and from SLICES_MIN_CHANNELS input channels:
#   each window offset's rows sliced out of the input (64 -> 16 at 24x24: 26.4 against 33.4
#   gathered, 44.0 one-hot). Not in a whole two-thread step, where the one-hot form is as fast
#   or faster (32 -> 32 at 32x32: 43.8 against 46.9 ms; a Conv-BN-ReLU CNN's step 1.01-1.03x
#   the time with slices, in alternating rounds).
SLICES_MIN_CHANNELS = 8
# - Else the one-hot form.


def kernel_grad_form(channels, out_channels, positions, window, strides, in_parts=True) -> str:
    """How conv_weight_grad computes a kernel gradient: "gather", "slices", "onehot" or, for
    windows too large to unfold, "transposed" (see the measurements above). ``in_parts``: the
    step runs in one-core parts of the batch (else whole, on every core)."""
    if window > IM2COL_MAX_WINDOW:
        return "transposed"
    if out_channels > UNFOLD_WIDENING * channels:
        return "onehot"
    values = channels * positions
    if min(channels, out_channels) >= GATHER_MIN_CHANNELS and values <= GATHER_MAX_VALUES:
        return "gather"
    if in_parts and channels >= SLICES_MIN_CHANNELS and all(s == 1 for s in strides):
        return "slices"
    return "onehot"


def conv_weight_grad(ctx, x, dy, kernel_spatial, strides, pads, dilations):
    """d(loss)/d(kernel) [O, C, *k] of a group-1 convolution of x [N, C, *s] giving dy [N, O, *o],
    in the form kernel_grad_form chooses for small kernels:
    - "gather": x unfolded batch-last (im2col: one Gather of whole rows of the batch, rows (c,
      offset), columns (position, n)) and contracted with dy in one matrix product over every
      sample and position at once. (With rows (n, position) instead, its product [O, N*P] x
      [N*P, window*C] packed the large im2col, and the MNIST CNN's step was 1.05x the time.)
    - "slices" (stride 1): each window offset's input rows are one Slice of x, times dy sample
      by sample.
    - "onehot": a one-hot grouped convolution unfolds x, and per-sample products are summed
      over the batch.
    These were measured about 1.5x faster than the form for large kernels ("transposed"), a
    convolution of X^T [C, N, *s] with dY^T [O, N, *o] as its kernel."""
    import numpy as np
    n = len(kernel_spatial)
    tx, ty = ctx.type(x), ctx.type(dy)
    channels, out_channels = tx.shape[1], ty.shape[1]
    window = int(np.prod(kernel_spatial))
    outs = ty.shape[2:]
    if not all(isinstance(d, int) for d in tx.shape[2:]):
        return _named_conv_weight_grad(ctx, x, dy, kernel_spatial, strides, pads, dilations)
    positions = int(np.prod(outs))  # (all sizes are numbers)
    same = stride1_same(kernel_spatial, strides, pads, dilations)
    upsampled = nearest_upsampled(ctx.g, x, n) if same else None
    if upsampled and _small_map_pays(channels, upsampled[1], kernel_spatial):
        return _upsampled_conv_weight_grad(ctx, *upsampled, dy, kernel_spatial)
    form = kernel_grad_form(channels, out_channels, positions, window, strides,
                            in_parts=ctx.g.meta.get("step_in_parts", True))
    if form == "gather":
        x = _pad_spatial(ctx, x, pads)
        sizes = ctx.type(x).shape[2:]
        # batch last, as a 2-D transpose of [N, C * positions]: the Reshape keeps onnxruntime from
        # merging this Transpose with one that made x (a Conv1D's channels-last input) into one
        # general permutation, which it runs element by element (3.7 against 1.9 ms for
        # [128, 50, 64], with the convolution)
        rows = ctx.op("Reshape", x, shape=(0, -1))
        flat = ctx.op("Reshape", ctx.op("Transpose", rows, perm=(1, 0)),
                      shape=(channels, int(np.prod(sizes)), -1))  # [C, positions, N]
        # the input position that output position p reads at window offset k, for every (k, p)
        picks = [np.ravel_multi_index(tuple(p[i] * strides[i] + k[i] * dilations[i] for i in range(n)), sizes)
                 for k in np.ndindex(*kernel_spatial) for p in np.ndindex(*outs)]
        cols = ctx.op("Gather", flat, ctx.const(np.array(picks, np.int64), "int64"), axis=1)  # [C, window * P, N]
        cols = ctx.op("Reshape", cols, shape=(channels * window, -1))  # [C * window, P * N]
        dy_rows = ctx.op("Transpose", ctx.op("Reshape", dy, shape=(0, out_channels, positions)), perm=(2, 0, 1))
        dy_rows = ctx.op("Reshape", dy_rows, shape=(-1, out_channels))  # [P * N, O]
        dw = ctx.op("Reshape", ctx.op("MatMul", cols, dy_rows), shape=(channels,) + tuple(kernel_spatial) + (out_channels,))
        return ctx.op("Transpose", dw, perm=(n + 1, 0) + tuple(range(1, n + 1)))
    if form == "slices":
        # Each slice is multiplied while it is still in the cache; the sum over the batch comes last.
        x = _pad_spatial(ctx, x, pads)
        dy_t = _by_position(ctx, dy, positions)
        parts = []
        for k in np.ndindex(*kernel_spatial):
            starts = tuple(k[i] * dilations[i] for i in range(n))
            rows = x
            if any(starts) or tuple(ctx.type(x).shape[2:]) != tuple(outs):
                rows = ctx.op("Slice", x, starts=starts, ends=tuple(b + o for b, o in zip(starts, outs)),
                              axes=tuple(range(2, n + 2)))
            rows = ctx.op("Reshape", rows, shape=(0, channels, positions))
            parts.append(ctx.op("MatMul", rows, dy_t))  # [N, C, O]
        stacked = parts[0] if window == 1 else ctx.op("Concat", *parts, axis=1)  # [N, window * C, O]
        summed = ctx.op("ReduceSum", stacked, axes=(0,), keepdims=0)
        dw = ctx.op("Reshape", summed, shape=tuple(kernel_spatial) + (channels, out_channels))
        return ctx.op("Transpose", dw, perm=(n + 1, n) + tuple(range(n)))
    if form == "onehot":
        summed = _unfolded_products(ctx, x, dy, kernel_spatial, strides, pads, dilations)  # [C * window, O]
        dw = ctx.op("Reshape", summed, shape=(channels,) + tuple(kernel_spatial) + (out_channels,))
        return ctx.op("Transpose", dw, perm=(n + 1, 0) + tuple(range(1, n + 1)))
    perm = (1, 0) + tuple(range(2, n + 2))
    xt = ctx.op("Transpose", x, perm=perm)
    dyt = ctx.op("Transpose", dy, perm=perm)
    full = ctx.op("Conv", xt, dyt, strides=tuple(dilations), dilations=tuple(strides), pads=tuple(pads), group=1)
    sizes = ctx.type(full).shape[2:]
    if tuple(sizes) != tuple(kernel_spatial):
        full = ctx.op("Slice", full, starts=(0,) * n, ends=tuple(kernel_spatial), axes=tuple(range(2, n + 2)))
    return ctx.op("Transpose", full, perm=perm)


# A depthwise convolution's kernel gradient, this many channels at a time (one-hot unfold,
# products of every channel against every other of the chunk, the chunk's own pairs kept).
# One channel at a time (the general per-group form), two DepthwiseConv2D of 512 channels made
# a 10,474-node step whose first run took 9.8 s; 8 at a time, 2,156 nodes and 1.8 s, the steps
# after 1.005-1.05x the time (alternating rounds: 392 against 384 ms; a 32-64 channel model at
# 32x32 and 16x16, 122.2 against 121.6; whole, with BatchNormalization, 210.0 against 213.1).
# 16 at a time: 1,196 nodes, 1.03-1.13x the time.
DEPTHWISE_CHUNK = 8


def _unfolded_products(ctx, x, dy, kernel_spatial, strides, pads, dilations):
    """x [N, C, *s] unfolded by a grouped convolution whose one-hot kernels each pick one offset
    of the window (channel c * window + k of the result is x[c] shifted by offset k), times dy
    [N, O, *o] sample by sample, summed over the batch: [C * window, O]."""
    import numpy as np
    tx = ctx.type(x)
    channels, window = tx.shape[1], math.prod(kernel_spatial)
    positions = math.prod(ctx.type(dy).shape[2:])
    picks = np.zeros((channels * window, 1) + tuple(kernel_spatial), dtype=tx.dtype)
    for k, offset in enumerate(np.ndindex(*kernel_spatial)):
        picks[(slice(k, None, window), 0) + offset] = 1.0
    cols = ctx.op("Conv", x, ctx.const(picks, tx.dtype), strides=tuple(strides), pads=tuple(pads),
                  dilations=tuple(dilations), group=channels)  # [N, C * window, *o]
    cols = ctx.op("Reshape", cols, shape=(0, channels * window, positions))
    # (dy transposed, not the window-times larger unfolded input: 5-20% faster)
    return ctx.op("ReduceSum", ctx.op("MatMul", cols, _by_position(ctx, dy, positions)), axes=(0,), keepdims=0)


def depthwise_weight_grad(ctx, x, dy, kernel_spatial, strides, pads, dilations):
    """d(loss)/d(kernel) [C * M, 1, *k] of a depthwise convolution (one group per input channel,
    M outputs each) of x [N, C, *s] giving dy [N, C * M, *o], DEPTHWISE_CHUNK channels at a
    time: their one-hot unfold (one grouped Conv), times their output gradient sample by sample
    (every channel against every other of the chunk), summed over the batch, and the chunk's
    own pairs picked out."""
    import numpy as np
    channels, out_channels = ctx.type(x).shape[1], ctx.type(dy).shape[1]
    mult, window = out_channels // channels, math.prod(kernel_spatial)
    parts = []
    for start in range(0, channels, DEPTHWISE_CHUNK):
        b = min(DEPTHWISE_CHUNK, channels - start)
        xs, dys = x, dy
        if b < channels:
            xs = ctx.op("Slice", x, starts=(start,), ends=(start + b,), axes=(1,))
            dys = ctx.op("Slice", dy, starts=(start * mult,), ends=((start + b) * mult,), axes=(1,))
        summed = _unfolded_products(ctx, xs, dys, kernel_spatial, strides, pads, dilations)
        # [b * window, b * M]: rows (c, k), columns (c', m); the kernel's numbers are those of c == c', in order (c, m, k)
        own = [(c * window + k) * (b * mult) + c * mult + m for c in range(b) for m in range(mult) for k in range(window)]
        parts.append(ctx.op("Gather", ctx.op("Reshape", summed, shape=(-1,)), ctx.const(np.array(own, np.int64), "int64"),
                            axis=0))
    dw = parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=0)
    return ctx.op("Reshape", dw, shape=(out_channels, 1) + tuple(kernel_spatial))


def _pad_spatial(ctx, x, pads):
    """x [N, C, *s] zero-padded by ``pads`` (ONNX order: all begins, then all ends)."""
    if not any(pads):
        return x
    n = len(pads) // 2
    return ctx.op("Pad", x, pads=(0, 0) + tuple(pads[:n]) + (0, 0) + tuple(pads[n:]))


def _by_position(ctx, dy, positions):
    """dy [N, O, *o] as [N, positions, O]: the right operand of per-sample products."""
    return ctx.op("Transpose", ctx.op("Reshape", dy, shape=(0, ctx.type(dy).shape[1], positions)), perm=(0, 2, 1))


def _small_map_pays(channels, factors, kernel_spatial) -> bool:
    """Whether _upsampled_conv_weight_grad beats the usual forms: its sums' convolution (one
    input channel, f + k - 1 taps an axis) costs about 4 times a product's multiply-add, and
    saves (f^n - 1) C of the usual forms' per output position and offset. Measured in `fit`
    (batch 16-64, 14x14 -> 28x28 unless said; new against usual form): C 64 -> 32 channels, 3x3,
    9 against 31 ms a part; 64 -> 4 0.56x the step time; 32 -> 32 0.73x; 16 -> 64 1.06x; 8 -> 64
    1.33x, and 5x5 1.7x; no upsampling (f = 1), 5x5, 16 -> 32 2.1x."""
    import math
    taps = math.prod(f + k - 1 for f, k in zip(factors, kernel_spatial))
    return 4 * taps < (math.prod(factors) - 1) * channels


def stride1_same(kernel_spatial, strides, pads, dilations) -> bool:
    """Whether a convolution is stride-1, undilated and "same" with an odd kernel (k // 2 padding
    each side): each output sits on the input position it is centred on."""
    n = len(kernel_spatial)
    return all(s == 1 for s in strides) and all(d == 1 for d in dilations) and all(
        isinstance(k, int) and k % 2 and pads[i] == pads[n + i] == k // 2 for i, k in enumerate(kernel_spatial))


def nearest_upsampled(g, x, n):
    """(the map that ``x`` [N, C, *spatial] of graph ``g`` repeats, the factors, whether that map is
    channels-last [N, *small, C] rather than [N, C, *small]) where x is an UpSampling layer's
    output: an Upsample of its spatial axes (the transpose-sinking pass moved it channels-first),
    or a channels-last one before the Transpose to channels-first (-O0, or a model's input
    upsampled); else None. (Also passes/upsample.py's pattern.)"""
    node = g.producer_of(x)
    channels_last = node is not None and node.op == "Transpose" and \
        tuple(node.attrs["perm"]) == (0, n + 1) + tuple(range(1, n + 1))
    if channels_last:
        node = g.producer_of(node.inputs[0])
    if node is None or node.op != "Upsample":
        return None
    spatial = tuple(range(1, n + 1)) if channels_last else tuple(range(2, n + 2))
    repeat = dict(zip((a % (n + 2) for a in node.attrs["axes"]), node.attrs["factors"]))
    if set(repeat) != set(spatial):
        return None
    return node.inputs[0], tuple(repeat[a] for a in spatial), channels_last


def _upsampled_conv_weight_grad(ctx, small, factors, channels_last, dy, kernel_spatial):
    """The kernel gradient of a stride-1 "same" convolution of a nearest-upsampled map, from the
    small map: upsampled position f i + t (t < f) holds small[i], so kernel offset k meets small[i]
    wherever output position y has f i <= y + k - k // 2 < f (i + 1). The output gradient is first
    summed over those f^n positions for each offset (one convolution of dy, a channel at a time,
    with a fixed kernel of ones, stride f), then contracted with the small map: f^n times fewer
    multiplications than at the upsampled size, and no copies of its shifted windows (a conv
    autoencoder's 64 -> 32 layer at 28x28 from 14x14: 9 against 31 ms a part). ``small``,
    ``factors``, ``channels_last``: as nearest_upsampled gives them."""
    import numpy as np
    n = len(kernel_spatial)
    if channels_last:
        small = ctx.op("Transpose", small, perm=(0, n + 1) + tuple(range(1, n + 1)))
    ty = ctx.type(dy)
    out_channels = ty.shape[1]
    small_t = ctx.type(small)
    channels, small_spatial = small_t.shape[1], small_t.shape[2:]
    # Along an axis of kernel size k (padding k // 2 each side), offset j meets small[i] at the
    # outputs f i - j + k // 2 + t (t < f): taps k - 1 - j + t of a window of f + k - 1
    # positions at stride f, padded by k - 1 - k // 2 before and k // 2 after.
    taps = []
    for f, k in zip(factors, kernel_spatial):
        t = np.zeros((k, f + k - 1), ty.dtype)
        for offset in range(k):
            t[offset, k - 1 - offset:k - 1 - offset + f] = 1
        taps.append(t)
    kernel = taps[0]
    for t in taps[1:]:  # (the outer product: offsets row-major, as the kernel's own)
        kernel = np.einsum("ab,cd->acbd", kernel, t).reshape(kernel.shape[0] * t.shape[0], -1)
    kernel = kernel.reshape((int(np.prod(kernel_spatial)), 1) + tuple(f + k - 1 for f, k in zip(factors, kernel_spatial)))
    # (a kernel made each run, a zero from dy's size added: as a constant, onnxruntime runs this
    # one-channel convolution in its blocked form, 1.6x the time with the reorder after it)
    zero = ctx.op("Cast", ctx.op("Equal", ctx.op("Size", dy), ctx.const(-1, "int64")), to=ty.dtype)  # (never inf)
    kernel = ctx.op("Add", ctx.const(kernel, ty.dtype), zero)
    pads = tuple(k - 1 - k // 2 for k in kernel_spatial) + tuple(k // 2 for k in kernel_spatial)
    window = int(np.prod(kernel_spatial))
    positions = int(np.prod(small_spatial))
    each = ctx.op("Unsqueeze", ctx.op("FoldBatch", dy, axes=2), axes=(1,))  # [N * O, 1, *spatial]
    sums = ctx.op("Conv", each, kernel, strides=factors, pads=pads, dilations=(1,) * n, group=1)  # [N * O, window, *small]
    sums = ctx.op("Reshape", ctx.op("UnfoldBatch", sums, dy, axes=2), shape=(0, out_channels * window, positions))
    rows = ctx.op("Transpose", ctx.op("Reshape", small, shape=(0, channels, positions)), perm=(0, 2, 1))
    dw = ctx.op("ReduceSum", ctx.op("MatMul", sums, rows), axes=(0,), keepdims=0)  # [O * window, C]
    dw = ctx.op("Reshape", dw, shape=(out_channels,) + tuple(kernel_spatial) + (channels,))
    return ctx.op("Transpose", dw, perm=(0, n + 1) + tuple(range(1, n + 1)))


def _named_conv_weight_grad(ctx, x, dy, kernel_spatial, strides, pads, dilations):
    """The kernel gradient of a stride-1 convolution over a named size (Conv1D over T): for
    each kernel offset, dy [N, O, T'] times the input rows that offset reads, [N, C, T']
    sliced with static offsets from both ends, summed over the batch."""
    if len(kernel_spatial) != 1 or any(s != 1 for s in strides):
        raise NotImplementedError("gradient of a strided, 2-d or 3-d convolution over a named dimension "
                                  "(give it a number to train this model)")
    (k,), (d,) = kernel_spatial, dilations
    x = _pad_spatial(ctx, x, pads)
    parts = []
    for offset in range(k):
        rest = (k - 1 - offset) * d  # rows after the last one this offset reads
        rows = ctx.op("Slice", x, starts=(offset * d,), ends=(-rest if rest else 2 ** 62,), axes=(2,))
        product = ctx.op("MatMul", dy, ctx.op("Transpose", rows, perm=(0, 2, 1)))  # [N, O, C]
        parts.append(ctx.op("Unsqueeze", product, axes=(3,)))
    stacked = parts[0] if k == 1 else ctx.op("Concat", *parts, axis=3)
    return ctx.op("ReduceSum", stacked, axes=(0,), keepdims=0)


def transposed_output_padding(in_size, out_size, kernel, stride, pad_begin, pad_end, dilation):
    """output_padding that makes a ConvTranspose of ``in_size`` produce ``out_size``."""
    if not (isinstance(in_size, int) and isinstance(out_size, int)):
        if stride == 1:
            return 0  # a stride-1 window's transpose gives back the input size exactly
        raise NotImplementedError(f"gradient of a strided window over the named dimension {out_size} "
                                  "(give it a number to train this model)")
    return out_size - (stride * (in_size - 1) + dilation * (kernel - 1) + 1 - pad_begin - pad_end)


@register
class ConvTranspose(Op):
    """x [N, C, *spatial], W [C, O/group, *kernel], b [O] (optional).
    attrs: strides, pads, output_padding, dilations, group, activation (fused, optional)."""
    name = "ConvTranspose"
    onnx_op = "ConvTranspose"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, w = ins[0], ins[1]
        n = x.rank - 2
        group = attrs.get("group", 1)
        if n < 1 or w.rank != x.rank or x.shape[1] != w.shape[0]:
            raise ShapeError(f"ConvTranspose of input {format_shape(x.shape)} with kernel {format_shape(w.shape)}")
        strides, dilations, pads = _spatial_attrs(attrs, n)
        out_pad = tuple(attrs.get("output_padding", (0,) * n))
        spatial = []
        for i in range(n):
            s, extra = x.shape[2 + i], out_pad[i] + (w.shape[2 + i] - 1) * dilations[i] + 1 - pads[i] - pads[n + i]
            if isinstance(s, int):
                s = strides[i] * (s - 1) + extra
            elif strides[i] == 1:
                s = offset_dim(s, extra - 1)
            else:
                s = offset_dim(f"{strides[i]}*({offset_dim(s, -1)})", extra)
            spatial.append(s)
        return [TensorType(x.dtype, (x.shape[0], w.shape[1] * group) + tuple(spatial))]

    def macs(self, ins, outs, attrs):
        return ins[0].shape[1:] + ins[1].shape[1:]  # each input feeds O/group x kernel outputs

    lower = Conv.lower

    def grad(self, ctx, node, dys):
        if node.attrs.get("activation") or node.attrs.get("group", 1) != 1:
            raise NotImplementedError("gradient of a grouped or activation-fused ConvTranspose")
        x, w = node.inputs[:2]
        dy, = dys
        n = ctx.type(x).rank - 2
        strides, dilations, pads = _spatial_attrs(node.attrs, n)
        # The adjoint of a transposed convolution is the convolution with the same kernel.
        dx = ctx.op("Conv", dy, w, strides=strides, pads=pads, dilations=dilations, group=1)
        if ctx.type(dx).shape[2:] != ctx.type(x).shape[2:]:
            dx = ctx.op("Slice", dx, starts=(0,) * n, ends=ctx.type(x).shape[2:], axes=tuple(range(2, n + 2)))
        # dW[c, o, k] pairs input channel c of x with output channel o of dy: the weight
        # gradient of a forward conv from dy to x.
        dw_oc = conv_weight_grad(ctx, dy, x, ctx.type(w).shape[2:], strides, pads, dilations)
        grads = [dx, dw_oc]
        if len(node.inputs) == 3:
            grads.append(ctx.op("ReduceSum", dy, axes=(0,) + tuple(range(2, n + 2)), keepdims=0))
        return grads


class Pool(Op):
    """x [N, C, *spatial]. attrs: kernel_shape, strides, pads (and count_include_pad for averages)."""

    def infer(self, ins, attrs):
        self.check_float(ins)
        x, = ins
        k = attrs["kernel_shape"]
        n = len(k)
        if x.rank != n + 2:
            raise ShapeError(f"{self.name} with a {n}-d window needs a rank-{n + 2} input, got {format_shape(x.shape)}")
        strides, _, pads = _spatial_attrs(attrs, n)
        spatial = tuple(conv_output_size(x.shape[2 + i], k[i], strides[i], pads[i], pads[n + i]) for i in range(n))
        return [TensorType(x.dtype, x.shape[:2] + spatial)]


@register
class MaxPool(Pool):
    """outputs: y, and the argmax of each window (int64, flattened over the whole input as
    ONNX's Indices). The lowering computes the indices only when a gradient reads them."""
    name = "MaxPool"
    onnx_op = "MaxPool"

    def infer(self, ins, attrs):
        y, = super().infer(ins, attrs)
        return [y, y.with_dtype("int64")]

    def lower(self, ctx, inputs, outputs, attrs):
        y, indices = outputs
        ctx.emit("MaxPool", inputs, [y, indices] if ctx.used(indices) else [y], **attrs)

    def grad(self, ctx, node, dys):
        x = node.inputs[0]
        if MaxPoolTilesGrad.tiles(ctx.type(x), node.attrs):
            return [ctx.op("MaxPoolTilesGrad", dys[0], node.outputs[0], x, kernel_shape=node.attrs["kernel_shape"])]
        return [ctx.op("MaxPoolGrad", dys[0], node.outputs[1], x, **node.attrs)]


@register
class MaxPoolGrad(Op):
    """Routes dy to the argmax of each window. inputs: dy, indices (from the forward MaxPool),
    x (for its shape); attrs: MaxPool's.

    Windows that do not overlap (strides >= kernel, no padding: the common case) send each
    input element at most one value: ONNX's MaxUnpool places dy at the indices in one pass
    (measured 20x cheaper than the scatter-add the general case needs)."""
    name = "MaxPoolGrad"

    def infer(self, ins, attrs):
        return [ins[2].with_dtype(ins[0].dtype)]

    def lower(self, ctx, inputs, outputs, attrs):
        dy, indices, x = inputs
        k = tuple(attrs["kernel_shape"])
        strides, _, pads = _spatial_attrs(attrs, len(k))
        if all(s >= kk for s, kk in zip(strides, k)) and not any(pads):
            shape = ctx.emit("Shape", [x])
            ctx.emit("MaxUnpool", [dy, indices, shape], outputs, kernel_shape=k, strides=tuple(strides))
            if not all(isinstance(d, int) for d in ctx.shape(x)):
                # (a size known only at run time: ONNX infers no rank for MaxUnpool's output,
                # which a recurrent layer's Scan before it needs)
                ctx.declare(outputs[0])
            return
        flat = ctx.const([-1], "int64")
        zeros = ctx.zeros(ctx.emit("Shape", [ctx.emit("Reshape", [x, flat])]), ctx.dtype(dy))
        summed = ctx.emit("ScatterElements", [zeros, ctx.emit("Reshape", [indices, flat]),
                                              ctx.emit("Reshape", [dy, flat])], axis=0, reduction="add")
        ctx.emit("Reshape", [summed, ctx.emit("Shape", [x])], outputs)


@register
class MaxPoolTilesGrad(Op):
    """MaxPool's gradient where its windows do not overlap (strides = kernel, no padding, sizes
    known: the common 2x2 pool; where the kernel does not divide a size, the last rows or
    columns are in no window and get no gradient): dy goes to each window's first maximum in
    row-major order, as to MaxPool's argmax, found without computing the argmax (onnxruntime
    computes MaxPool's Indices output about 20x slower than the pool: 2.2 of 16.4 ms in a part
    of the MNIST CNN's training step).

    The first maximum is at window position j (row-major) exactly when j is the first
    position whose corner rectangle, rows 0..a by columns 0..b of the window, holds the
    maximum: every position of a smaller such rectangle comes before j (as for the corner
    boxes of a 3-d window, or a 1-d one's prefixes: MaxPooling1D/3D use it too). The rectangles'
    maxima are MaxPools with smaller kernels and the same strides; where each falls short of y
    chooses each window's offset (in products and sums), and MaxUnpool places dy there.
    inputs: dy, y (the pool's output), x; attrs: kernel_shape."""
    name = "MaxPoolTilesGrad"

    @staticmethod
    def tiles(x: TensorType, attrs) -> bool:
        k = tuple(attrs["kernel_shape"])
        strides, dilations, pads = _spatial_attrs(attrs, len(k))
        return (strides == k and not any(pads) and all(d == 1 for d in dilations) and not attrs.get("ceil_mode")
                and all(isinstance(s, int) for s in x.shape[2:]))

    def infer(self, ins, attrs):
        return [ins[2].with_dtype(ins[0].dtype)]

    def lower(self, ctx, inputs, outputs, attrs):
        import itertools

        import numpy as np
        dy, y, x = inputs
        k = tuple(attrs["kernel_shape"])
        channels, *spatial = ctx.shape(x)[1:]
        step = [math.prod(spatial[i + 1:]) for i in range(len(k))]  # x's element strides along each axis
        size, rank = math.prod(spatial), len(spatial) + 2

        def flat(position):
            return sum(p * s for p, s in zip(position, step))

        pooled = [n // kk for n, kk in zip(spatial, k)]
        tiled = x
        if any(p * kk != n for p, kk, n in zip(pooled, k, spatial)):  # (the windows' rows and columns only)
            tiled = ctx.emit("Slice", [x, ctx.const([0] * len(k), "int64"),
                                       ctx.const([p * kk for p, kk in zip(pooled, k)], "int64"),
                                       ctx.const(list(range(2, rank)), "int64")])
        positions = list(itertools.product(*(range(kk) for kk in k)))  # row-major
        # Offsets within a sample in int32 (onnxruntime's Where over int32 and one Cast took 0.41
        # against 0.76 ms in int64 for the MNIST CNN's 128 samples), the batch's in int64.
        within_dtype = "int32" if channels * size < 2 ** 31 else "int64"
        # offset = p_0 + e_0 (p_1 - p_0 + e_1 (p_2 - p_1 + ...)), e_j = 1 where corner j misses the
        # window's maximum (a corner's maximum is at most the window's): products and sums, where
        # a cascade of Where took 0.8 ms a Where for [128, 32, 16, 16] on two threads, a Mul 0.23
        offset = None
        for j in reversed(range(len(positions) - 1)):
            corner = ctx.emit("MaxPool", [tiled], kernel_shape=[p + 1 for p in positions[j]], strides=k)
            missed = ctx.emit("Cast", [ctx.emit("Less", [corner, y])], to=ctx.onnx_dtype(within_dtype))
            gap = ctx.const(flat(positions[j + 1]) - flat(positions[j]), within_dtype)
            offset = ctx.emit("Mul", [missed, gap if offset is None else ctx.emit("Add", [offset, gap])])
        if offset is None:  # (a window of one position)
            offset = ctx.const(0, within_dtype)
        elif flat(positions[0]):
            offset = ctx.emit("Add", [offset, ctx.const(flat(positions[0]), within_dtype)])
        # + each window's first element in x, flattened over the whole tensor as MaxUnpool reads it:
        # n*C*S + c*S + sum_i p_i*k_i*step_i, the batch's share computed at run time
        # (per-axis vectors, which onnxruntime folds into one constant when it loads the graph)
        within = None
        for axis, scale in [(1, size)] + [(2 + i, k[i] * step[i]) for i in range(len(k))]:
            extent = channels if axis == 1 else pooled[axis - 2]
            shape = [extent if a == axis else 1 for a in range(1, rank)]
            term = ctx.const(np.arange(extent).reshape(shape) * scale, within_dtype)
            within = term if within is None else ctx.emit("Add", [within, term])
        offset = ctx.emit("Add", [offset, within])
        if within_dtype != "int64":
            offset = ctx.emit("Cast", [offset], to=ctx.onnx_dtype("int64"))
        batch = ctx.emit("Gather", [ctx.emit("Shape", [dy]), ctx.const(0, "int64")], axis=0)
        sample = ctx.const(channels * size, "int64")
        starts = ctx.emit("Range", [ctx.const(0, "int64"), ctx.emit("Mul", [batch, sample]), sample])
        starts = ctx.emit("Reshape", [starts, ctx.const([-1] + [1] * (rank - 1), "int64")])
        indices = ctx.emit("Add", [offset, starts])
        # (no output_shape input where the windows cover x: reading x's shape would make
        # onnxruntime convert x out of the blocked layout of the convolution that made it)
        shape = [] if tiled is x else [ctx.emit("Shape", [x])]
        ctx.emit("MaxUnpool", [dy, indices] + shape, outputs, kernel_shape=k, strides=k)
        if shape:  # (of which ONNX infers no rank)
            ctx.declare(outputs[0])


@register
class ConvMaxPool(Op):
    """A group-1, stride-1 Conv followed by a 2x2, stride-2 MaxPool, for training graphs whose
    convolution reads few channels (kcompile.passes.reorder.conv_pool_phases).

    The four positions of each pooling window are computed as four stride-2 convolutions
    (the "phases" of the convolution's output), whose element-wise Max is the pooled output
    and whose equality masks route the gradient: no MaxPool argmax (slow in onnxruntime)
    and no MaxUnpool. Ties go to the first position in row-major order, as MaxPool's argmax.
    inputs: x [N, C, H, W], W [O, C, kh, kw], b [O] (optional). attrs: the Conv's pads.
    outputs: y [N, O, Hc // 2, Wc // 2] and the first three phases' masks (1 where that phase
    equals the window's maximum), computed only when the gradient reads them."""
    name = "ConvMaxPool"
    PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))

    def infer(self, ins, attrs):
        conv, = Conv().infer(ins, {"pads": attrs.get("pads", (0,) * 4)})
        y = conv.with_shape(conv.shape[:2] + tuple(d // 2 if isinstance(d, int) else d for d in conv.shape[2:]))
        return [y] * len(self.PHASES)  # y, and the masks of all phases but the last

    @classmethod
    def phase_windows(cls, x_shape, w_shape, pads):
        """For each phase (a, b): the rows and columns of x its stride-2 convolution reads
        (starts, ends) and that convolution's pads."""
        conv_sizes = [conv_output_size(x_shape[2 + i], w_shape[2 + i], 1, pads[i], pads[2 + i]) for i in range(2)]
        windows = []
        for offsets in cls.PHASES:
            starts, ends, phase_pads = [], [], [0] * 4
            for i, a in enumerate(offsets):
                # Outputs 2r + a of the convolution read padded rows [2r + a, 2r + a + k): rows
                # lo.. of x for the first (negative lo: padding) to hi for the last.
                lo = a - pads[i]
                hi = lo + 2 * (conv_sizes[i] // 2 - 1) + w_shape[2 + i]
                starts.append(max(lo, 0))
                ends.append(min(hi, x_shape[2 + i]))
                phase_pads[i], phase_pads[2 + i] = max(-lo, 0), max(hi - x_shape[2 + i], 0)
            windows.append((tuple(starts), tuple(ends), tuple(phase_pads)))
        return windows

    def lower(self, ctx, inputs, outputs, attrs):
        x, w = inputs[:2]
        phases = []
        for starts, ends, phase_pads in self.phase_windows(ctx.shape(x), ctx.shape(w), attrs.get("pads", (0,) * 4)):
            part = ctx.emit("Slice", [x, ctx.const(list(starts), "int64"), ctx.const(list(ends), "int64"),
                                      ctx.const([2, 3], "int64")])
            phases.append(ctx.emit("Conv", [part] + list(inputs[1:]), strides=[2, 2], pads=list(phase_pads)))
        y = ctx.emit("Max", phases, [outputs[0]])
        for phase, mask in zip(phases, outputs[1:]):
            if ctx.used(mask):
                ctx.emit("Cast", [ctx.emit("Equal", [phase, y])], [mask], to=ctx.onnx_dtype(ctx.dtype(x)))

    def grad(self, ctx, node, dys):
        """Each phase's output gradient is dy where that phase holds the window's first maximum:
        phase 0 takes dy where it equals the maximum, phase 1 what is left where it does, and so
        on; the last phase takes the rest (a window's maximum is one of its phases). Three Mul and
        three Sub, exact, measured 20% faster than exclusive masks built with Not/And/Or.
        The kernel's gradient sums the four stride-2 phase convolutions' kernel gradients, the
        bias's is the sum of dy (each window passes dy to one position); x's interleaves the
        phases back to the full-resolution output gradient for the transposed convolution (dropped
        when x needs none: the first layer's input is data)."""
        dy = dys[0]
        x, w = node.inputs[:2]
        tx, tw = ctx.type(x), ctx.type(w)
        pads = tuple(node.attrs.get("pads", (0,) * 4))
        routed, rest = [], dy
        for mask in node.outputs[1:]:
            routed.append(ctx.op("Mul", rest, mask))
            rest = ctx.op("Sub", rest, routed[-1])
        routed.append(rest)
        kernel_grads = [conv_weight_grad(ctx, ctx.op("Slice", x, starts=starts, ends=ends, axes=(2, 3)), d,
                                         tw.shape[2:], (2, 2), phase_pads, (1, 1))
                        for d, (starts, ends, phase_pads) in zip(routed, self.phase_windows(tx.shape, tw.shape, pads))]
        dw = ctx.op("Add", ctx.op("Add", kernel_grads[0], kernel_grads[1]),
                    ctx.op("Add", kernel_grads[2], kernel_grads[3]))
        grads = [self.input_grad(ctx, node, routed), dw]
        if len(node.inputs) == 3:
            grads.append(ctx.op("ReduceSum", dy, axes=(0, 2, 3), keepdims=0))
        return grads

    @staticmethod
    def input_grad(ctx, node, routed):
        x, w = node.inputs[:2]
        _, o, p, q = ctx.type(routed[0]).shape
        routed = [ctx.op("Unsqueeze", d, axes=(3, 5)) for d in routed]
        rows = [ctx.op("Concat", routed[0], routed[1], axis=5), ctx.op("Concat", routed[2], routed[3], axis=5)]
        joined = ctx.op("Concat", *rows, axis=3)  # [N, O, P, 2, Q, 2]
        full = ctx.op("Reshape", joined, shape=(0, o, 2 * p, 2 * q))
        tx, tw = ctx.type(x), ctx.type(w)
        pads = tuple(node.attrs.get("pads", (0,) * 4))
        conv_sizes = [conv_output_size(tx.shape[2 + i], tw.shape[2 + i], 1, pads[i], pads[2 + i]) for i in range(2)]
        if conv_sizes != [2 * p, 2 * q]:  # odd sizes: the last row/column is in no window
            full = ctx.op("Pad", full, pads=(0, 0, 0, 0, 0, 0, conv_sizes[0] - 2 * p, conv_sizes[1] - 2 * q))
        return conv_input_grad(ctx, x, w, {"pads": pads}, full)


@register
class AveragePool(Pool):
    name = "AveragePool"
    onnx_op = "AveragePool"

    def grad(self, ctx, node, dys):
        """Spread dy / (window's valid count) back over each window: a transposed convolution
        with a ones kernel, one group per channel."""
        import numpy as np
        x, dy = node.inputs[0], dys[0]
        tx, ty = ctx.type(x), ctx.type(dy)
        require_known_window_sizes(tx, "an average pooling")
        k = tuple(node.attrs["kernel_shape"])
        n = len(k)
        strides, _, pads = _spatial_attrs(node.attrs, n)
        channels = tx.shape[1]
        if node.attrs.get("count_include_pad", 0):
            counts = np.full(ty.shape[2:], float(np.prod(k)))
        else:  # valid pixels per window, from the static sizes
            ones = np.ones(tx.shape[2:])
            padded = np.pad(ones, [(pads[i], pads[n + i]) for i in range(n)])
            counts = np.zeros(ty.shape[2:])
            for idx in np.ndindex(*ty.shape[2:]):
                window = tuple(slice(idx[i] * strides[i], idx[i] * strides[i] + k[i]) for i in range(n))
                counts[idx] = padded[window].sum()
        scaled = ctx.op("Div", dy, ctx.const(counts.reshape((1, 1) + counts.shape), tx.dtype))
        kernel = ctx.const(np.ones((channels, 1) + k), tx.dtype)
        out_pad = tuple(transposed_output_padding(ty.shape[2 + i], tx.shape[2 + i], k[i], strides[i], pads[i],
                                                  pads[n + i], 1) for i in range(n))
        return [ctx.op("ConvTranspose", scaled, kernel, strides=strides, pads=pads, group=channels,
                       output_padding=out_pad)]


@register
class BatchNormalization(Op):
    """Inference form: (x - mean) / sqrt(var + epsilon) * scale + bias along channel ``axis``.
    inputs: x, scale, bias, mean, var[, mask]. attrs: axis, epsilon, momentum and trainable (the
    training form of a trainable layer normalizes with batch statistics and updates the
    moving ones, as Keras). ``mask``, a step mask [N, T] (1 where a step counts), is read in
    training only: the batch statistics are those of the unmasked steps (Keras 3)."""
    name = "BatchNormalization"

    def infer(self, ins, attrs):
        self.check_float(ins)
        _check_per_channel(ins[:5], attrs)
        if len(ins) == 6 and ins[5].shape != ins[0].shape[:ins[5].rank]:
            raise ShapeError(f"BatchNormalization mask {format_shape(ins[5].shape)} does not match "
                             f"{format_shape(ins[0].shape)}")
        return [ins[0]]

    def lower(self, ctx, inputs, outputs, attrs):
        inputs = inputs[:5]  # (the mask matters in training only)
        x, scale, bias, mean, var = inputs
        rank = len(ctx.shape(x))
        axis = normalize_axis(attrs.get("axis", 1), rank)
        if axis == 1 and rank >= 2:
            ctx.emit("BatchNormalization", inputs, outputs, epsilon=attrs.get("epsilon", 1e-3))
            return
        _lower_normalize(ctx, x, scale, bias, mean, var, axis, float_attr(attrs, "epsilon", 1e-3), outputs)

    def training_form(self, ctx, node):
        if not node.attrs.get("trainable", True):
            return None  # a frozen layer runs in inference mode, as Keras
        x, gamma, beta, mean, var = node.inputs[:5]
        axis = node.attrs["axis"] % ctx.type(x).rank
        epsilon = node.attrs.get("epsilon", 1e-3)
        if len(node.inputs) == 6:
            y, batch_mean, batch_var = _masked_batch_norm(ctx, x, gamma, beta, node.inputs[5], axis,
                                                          float_attr(node.attrs, "epsilon", 1e-3))
        else:
            y, batch_mean, batch_var, _ = ctx.op("BatchNormTrain", x, gamma, beta, axis=axis, epsilon=epsilon)
        replace_node(ctx, node, [y])
        momentum = node.attrs.get("momentum", 0.99)
        updates = []
        for stat, value in ((mean, batch_mean), (var, batch_var)):
            if ctx.g.kind(stat) == "param":
                updates.append((stat, ctx.op("Add", ctx.op("Mul", stat, momentum), ctx.op("Mul", value, 1 - momentum))))
        return [], updates

    def grad(self, ctx, node, dys):
        """Inference form (frozen statistics): y = (x - mean) * s + beta, s = gamma / sqrt(var + eps)."""
        x, gamma, beta, mean, var = node.inputs[:5]
        dy, = dys
        rank = ctx.type(x).rank
        axis = node.attrs.get("axis", 1) % rank
        dtype = ctx.type(x).dtype
        shape = (-1,) + (1,) * (rank - axis - 1)
        inv_std = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.const(float_attr(node.attrs, "epsilon", 1e-3),
                                                                                  dtype))))
        s = ctx.op("Mul", gamma, inv_std)
        dx = ctx.op("Mul", dy, ctx.op("Reshape", s, shape=shape))
        xhat = ctx.op("Mul", ctx.op("Sub", x, ctx.op("Reshape", mean, shape=shape)), ctx.op("Reshape", inv_std, shape=shape))
        others = tuple(i for i in range(rank) if i != axis)  # (per channel: not sum_to, which aligns from the right)
        dgamma = ctx.op("ReduceSum", ctx.op("Mul", dy, xhat), axes=others, keepdims=0)
        return [dx, dgamma, ctx.op("ReduceSum", dy, axes=others, keepdims=0)] + [None] * (len(node.inputs) - 3)


def _masked_batch_norm(ctx, x, scale, bias, mask, axis, epsilon):
    """BatchNormalization as it trains on a masked sequence (Keras 3): the batch mean and
    (biased) variance of the unmasked steps only, each sum divided by the number of unmasked
    numbers + 1e-7 (Keras's epsilon). Composed of ops with gradient rules, so the statistics
    are differentiated as Keras does. Returns y and the batch mean and variance, each [C]."""
    t = ctx.type(x)
    weights = ctx.op("ExpandLike", ctx.op("Unsqueeze", mask, axes=tuple(range(ctx.type(mask).rank, t.rank))), x)
    axes = tuple(i for i in range(t.rank) if i != axis)
    count = ctx.op("Add", ctx.op("ReduceSum", weights, axes=axes, keepdims=1), 1e-7)
    mean = ctx.op("Div", ctx.op("ReduceSum", ctx.op("Mul", x, weights), axes=axes, keepdims=1), count)
    centered = ctx.op("Sub", x, mean)
    deviation = ctx.op("Mul", centered, weights)
    var = ctx.op("Div", ctx.op("ReduceSum", ctx.op("Mul", deviation, deviation), axes=axes, keepdims=1), count)
    inv_std = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, epsilon)))
    shape = (-1,) + (1,) * (t.rank - axis - 1)
    y = ctx.op("Add", ctx.op("Mul", ctx.op("Mul", centered, inv_std), ctx.op("Reshape", scale, shape=shape)),
               ctx.op("Reshape", bias, shape=shape))
    return y, ctx.op("Reshape", mean, shape=(-1,)), ctx.op("Reshape", var, shape=(-1,))


EXCHANGE = "exchange:"  # the name of each exchange's node begins exchange:<kind>/


def emit_exchange(ctx, value: str, kind: str, outputs=None) -> str:
    """An ONNX ``Identity`` of ``value`` named exchange:<kind>/...: in a whole step the value
    itself; in a step split into parts of its batch (backend/shards.py), a point where the
    parts exchange it. ``sum``: every part sees the sum of the parts' values (sums over the
    whole batch: its statistics). ``loss``: the same for values in the units of a part's loss
    (sums of gradients): each part's weighted by its share of the batch, and the sum seen in
    the part's own units (divided by its share)."""
    out = ctx.emit("Identity", [value], outputs)
    ctx.nodes[-1].name = ctx.fresh(f"{EXCHANGE}{kind}/{out}")
    return out


@register
class Exchange(Op):
    """A value that a step split into parts of its batch adds up across the parts (see
    emit_exchange); in a whole step, the value itself. attrs: kind ("sum" or "loss")."""
    name = "Exchange"

    def infer(self, ins, attrs):
        return [ins[0]]

    def lower(self, ctx, inputs, outputs, attrs):
        emit_exchange(ctx, inputs[0], attrs["kind"], outputs)


@register
class BatchNormTrain(Op):
    """BatchNormalization as it trains: x normalized by its own batch statistics along channel
    ``axis``, (x - mean) / sqrt(var + epsilon) * scale + bias. inputs: x, scale, bias.
    outputs: y, the batch mean and the batch (biased) variance, each [C], and x - mean (made where
    read: the gradient in parts reads it, the whole one makes it again). attrs: axis, epsilon,
    parts (the step may run in parts of its batch: the statistics and the gradient's sums are
    exchanged between them, see emit_exchange).

    One op with its own gradient rule, where the composed form (ReduceMean, Sub, Mul, ...)
    differentiated op by op made some twenty passes over x. Channels-first and whole, it lowers
    to onnxruntime's training-mode BatchNormalization with momentum 0, whose "running" outputs
    are then the batch's own (forward of [128, 32, 32, 32] in 2.0 ms against 6.5 for the
    composed ops)."""
    name = "BatchNormTrain"

    def infer(self, ins, attrs):
        self.check_float(ins)
        stat = ins[0].with_shape((_check_per_channel(ins, attrs),))
        return [ins[0], stat, stat, ins[0]]

    def lower(self, ctx, inputs, outputs, attrs):
        x, scale, bias = inputs
        shape = ctx.shape(x)
        axis = normalize_axis(attrs.get("axis", 1), len(shape))
        t = ctx.dtype(x)
        if attrs.get("parts"):
            _lower_batch_norm_in_parts(ctx, x, scale, bias, axis, float_attr(attrs, "epsilon", 1e-3), outputs)
            return
        if axis == 1:
            # onnxruntime writes each running statistic into its input's buffer, even a constant's
            # or one it folded (after one batch holding inf, every later step gave NaN), and into
            # one buffer where both inputs are one tensor: so two tensors made afresh each step,
            # from x's (run-time) shape, and different (zeros and ones, which momentum 0 ignores)
            # lest onnxruntime merge them.
            channels = ctx.emit("Shape", [x], start=1, end=2)
            mean, var = ctx.full(channels, t, 0), ctx.full(channels, t, 1)
            ctx.emit("BatchNormalization", [x, scale, bias, mean, var], outputs[:3], epsilon=attrs.get("epsilon", 1e-3),
                     momentum=0.0, training_mode=1)
            if ctx.used(outputs[3]):  # (x - mean, where read: the gradient of the whole form makes its own)
                keep = [-1 if i == axis else 1 for i in range(len(shape))]
                ctx.emit("Sub", [x, ctx.emit("Reshape", [outputs[1], ctx.const(keep, "int64")])], [outputs[3]])
            return
        axes = [i for i in range(len(shape)) if i != axis]
        mean = ctx.emit("ReduceMean", [x], axes=axes, keepdims=1)
        centered = ctx.emit("Sub", [x, mean], [outputs[3]])
        var = ctx.emit("ReduceMean", [ctx.emit("Mul", [centered, centered])], axes=axes, keepdims=1)
        flat = ctx.const([-1], "int64")
        ctx.emit("Reshape", [mean, flat], [outputs[1]])
        ctx.emit("Reshape", [var, flat], [outputs[2]])
        _lower_normalize(ctx, x, scale, bias, outputs[1], outputs[2], axis, float_attr(attrs, "epsilon", 1e-3),
                         [outputs[0]])

    def grad(self, ctx, node, dys):
        """With c = x - mean, s = 1 / sqrt(var + eps), a = scale * s and M numbers per channel:
        dbias = sum(dy), dscale = s sum(dy c), and dx = a dy - a s^2 sum(dy c) / M c - a sum(dy) / M,
        the last two terms one per-channel affine map of c (an inference BatchNormalization)."""
        import numpy as np
        if any(d is not None for d in dys[1:]):
            raise NotImplementedError("gradient through BatchNormalization's batch statistics")
        x, scale, _ = node.inputs
        _, mean, var, centered = node.outputs
        dy = dys[0]
        t = ctx.type(x)
        axis = node.attrs.get("axis", 1) % t.rank
        axes = tuple(i for i in range(t.rank) if i != axis)
        shape = (-1,) + (1,) * (t.rank - axis - 1)
        inv_std = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, float_attr(node.attrs, "epsilon", 1e-3))))
        if not node.attrs.get("parts"):  # (one op less in the step's forward)
            centered = ctx.op("Sub", x, ctx.op("Reshape", mean, shape=shape))
        sum_dy = ctx.op("ReduceSum", dy, axes=axes, keepdims=0)
        sum_dyc = ctx.op("ReduceSum", ctx.op("Mul", dy, centered), axes=axes, keepdims=0)
        count = ctx.op("Cast", ctx.op("Div", ctx.op("Size", x), ctx.op("Size", mean)), to=t.dtype)  # M
        dscale, dbias = ctx.op("Mul", sum_dyc, inv_std), sum_dy
        if node.attrs.get("parts"):  # (dscale and dbias are each part's own: the update adds them)
            count = ctx.op("Exchange", count, kind="sum")
            sum_dy, sum_dyc = (ctx.op("Exchange", v, kind="loss") for v in (sum_dy, sum_dyc))
        a = ctx.op("Mul", scale, inv_std)
        slope = ctx.op("Neg", ctx.op("Div", ctx.op("Mul", ctx.op("Mul", a, inv_std),
                                                   ctx.op("Mul", sum_dyc, inv_std)), count))
        offset = ctx.op("Neg", ctx.op("Div", ctx.op("Mul", a, sum_dy), count))
        channels = t.shape[axis]
        affine = ctx.op("BatchNormalization", centered, slope, offset, ctx.const(np.zeros(channels), t.dtype),
                        ctx.const(np.ones(channels), t.dtype), axis=axis, epsilon=0.0)
        dx = ctx.op("Add", ctx.op("Mul", dy, ctx.op("Reshape", a, shape=shape)), affine)
        return [dx, dscale, dbias]


@register
class Normalize(Op):
    """Each batch item normalized over ``axes`` by its own (population) moments,
    (x - mean) / sqrt(var + epsilon): LayerNormalization's and GroupNormalization's core, before
    gamma and beta. inputs: x[, scale, bias], scale and bias shaped like the normalized axes
    (inference graphs: passes.fusion.fuse_normalize_affine folds gamma and beta in). outputs: y
    (times scale, plus bias), and 1 / sqrt(var + epsilon) (x's shape, 1 on ``axes``) for the
    gradient. attrs: axes, epsilon, centered (passes.fusion.center_before_normalize made x's mean
    over ``axes`` zero, so none is subtracted: y = x r, whose gradient is r (dy - y mean(dy y))).

    One op with its own gradient rule, dx = r (dy - mean(dy) - y mean(dy y)), where the composed
    moments differentiated op by op made some fifteen passes over x, forward and backward. Over
    trailing axes of known sizes in float32 it lowers to ONNX's LayerNormalization (one pass;
    onnxruntime's moments as exact as the two-pass form's, 3e-5 against 7e-5 off for rows of 4,096
    numbers around 1,000); else to the two-pass moments (emit_normalize)."""
    name = "Normalize"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x = ins[0]
        axes = sorted({normalize_axis(a, x.rank) for a in attrs["axes"]})
        if not axes or axes[0] == 0:
            raise ShapeError(f"Normalize's axes {tuple(attrs['axes'])} must leave the batch axis of {format_shape(x.shape)}")
        inner = tuple(x.shape[a] for a in axes)
        if len(ins) > 1 and (len(ins) != 3 or any(t.shape != inner or t.dtype != x.dtype for t in ins[1:])):
            raise ShapeError(f"Normalize's scale and bias must be {x.dtype}{format_shape(inner)}, like its axes, "
                             f"got " + ", ".join(str(t) for t in ins[1:]))
        return [x, x.with_shape(1 if i in axes else d for i, d in enumerate(x.shape))]

    def lower(self, ctx, inputs, outputs, attrs):
        emit_normalize(ctx, inputs[0], ctx.shape(inputs[0]), ctx.dtype(inputs[0]), attrs["axes"],
                       float_attr(attrs, "epsilon", 1e-3), [outputs[0], outputs[1] if ctx.used(outputs[1]) else ""],
                       inputs[1:], mean_zero=attrs.get("centered", 0))

    def grad(self, ctx, node, dys):
        if dys[1] is not None:
            raise NotImplementedError("gradient through Normalize's 1 / sqrt(var + epsilon)")
        if len(node.inputs) > 1:  # (an inference pass: passes/fusion.py)
            raise NotImplementedError("gradient of Normalize with its scale and bias folded in")
        dy = dys[0]
        if dy is None:
            return [None]
        y, r = node.outputs
        axes = tuple(sorted(a % ctx.type(y).rank for a in node.attrs["axes"]))
        m2 = ctx.op("ReduceMean", ctx.op("Mul", dy, y), axes=axes, keepdims=1)
        if node.attrs.get("centered"):
            # y = x r with r = 1 / sqrt(mean(x^2) + epsilon): no mean(dy) term. The convolution's
            # centered filters take the gradient's mean over channels away (x - mean(x) exactly).
            return [ctx.op("Mul", ctx.op("Sub", dy, ctx.op("Mul", y, m2)), r)]
        m1 = ctx.op("ReduceMean", dy, axes=axes, keepdims=1)
        return [ctx.op("Mul", ctx.op("Sub", ctx.op("Sub", dy, m1), ctx.op("Mul", y, m2)), r)]


@register
class GroupNormalize(Op):
    """GroupNormalization: the channels on ``axis`` split into ``groups``, each batch item's group
    normalized by its own (population) moments over the group's channels and every other axis
    but the batch, then times gamma plus beta. inputs: x, gamma [C], beta [C]. outputs: y, x
    normalized (before gamma and beta) and 1 / sqrt(var + epsilon) [N, groups], the last two for
    the gradient. attrs: axis, groups, epsilon.

    One op, not Normalize between Reshapes then gamma and beta, so that its gradient sees gamma:
    with P and Q the sums of dy x^ and of dy per item and channel over the spatial axes, dgamma,
    dbeta and the group means of gamma dy and gamma dy x^ all come from those [N, C] numbers,
    and dx = gamma r dy - r mean(gamma dy x^) x^ - r mean(gamma dy) is one affine map per item
    and channel: seven passes over the map where the composed ops' gradients made eleven."""
    name = "GroupNormalize"

    def infer(self, ins, attrs):
        self.check_float(ins)
        x = ins[0]
        axis = normalize_axis(attrs["axis"], x.rank)
        channels, groups = x.shape[axis], attrs["groups"]
        if axis == 0 or not all(isinstance(d, int) for d in x.shape[1:]) or channels % groups:
            raise ShapeError(f"GroupNormalize of {format_shape(x.shape)}: {groups} groups on axis {axis}")
        if any(t.shape != (channels,) or t.dtype != x.dtype for t in ins[1:3]) or len(ins) != 3:
            raise ShapeError(f"GroupNormalize's gamma and beta must be {x.dtype}[{channels}], got "
                             + ", ".join(str(t) for t in ins[1:]))
        return [x, x, x.with_shape((x.shape[0], groups))]

    def lower(self, ctx, inputs, outputs, attrs):
        x, gamma, beta = inputs
        shape, t = ctx.shape(x), ctx.dtype(x)
        axis, groups = attrs["axis"] % len(shape), attrs["groups"]
        # [N, ..., C, ...] -> [N, ..., G, C / G, ...]; moments over every axis but the batch and G.
        dims = tuple(shape[:axis]) + (groups, shape[axis] // groups) + tuple(shape[axis + 1:])
        grouped = ctx.emit("Reshape", [x, ctx.const((0,) + dims[1:], "int64")])
        normalized, r = ctx.fresh("grouped_normalized"), ctx.fresh("grouped_inv_std")
        emit_normalize(ctx, grouped, dims, t, [i for i in range(1, len(dims)) if i != axis],
                       float_attr(attrs, "epsilon", 1e-3), [normalized, r])
        ctx.emit("Reshape", [normalized, ctx.const((0,) + tuple(shape[1:]), "int64")], [outputs[1]])
        if ctx.used(outputs[2]):
            ctx.emit("Reshape", [r, ctx.const((0, groups), "int64")], [outputs[2]])
        keep = ctx.const([shape[axis] if i == axis else 1 for i in range(1, len(shape))], "int64")
        scaled = ctx.emit("Mul", [outputs[1], ctx.emit("Reshape", [gamma, keep])])
        ctx.emit("Add", [scaled, ctx.emit("Reshape", [beta, keep])], [outputs[0]])

    def grad(self, ctx, node, dys):
        if dys[1] is not None or dys[2] is not None:
            raise NotImplementedError("gradient through GroupNormalize's normalized x or 1 / sqrt(var + epsilon)")
        import numpy as np
        dy = dys[0]
        if dy is None:
            return [None, None, None]
        x, gamma, _ = node.inputs
        _, normalized, r = node.outputs
        t = ctx.type(x)
        axis, groups = node.attrs["axis"] % t.rank, node.attrs["groups"]
        channels = t.shape[axis]
        spatial = tuple(i for i in range(1, t.rank) if i != axis)
        per_group = (groups, channels // groups)
        dy_x = ctx.op("Mul", dy, normalized)
        if spatial:  # P and Q, [N, C]
            dy_x, dy_sum = (ctx.op("ReduceSum", v, axes=spatial, keepdims=0) for v in (dy_x, dy))
        else:
            dy_sum = dy
        dgamma, dbeta = (ctx.op("ReduceSum", v, axes=(0,), keepdims=0) for v in (dy_x, dy_sum))
        count = ctx.const(math.prod(t.shape[1:]) // groups, t.dtype)
        gamma_g = ctx.op("Reshape", gamma, shape=per_group)

        def group_mean(v):  # [N, C] -> the mean of gamma v over each group, [N, G, 1]
            weighted = ctx.op("Mul", ctx.op("Reshape", v, shape=(0,) + per_group), gamma_g)
            return ctx.op("Div", ctx.op("ReduceSum", weighted, axes=(2,), keepdims=1), count)
        mean_dy, mean_dy_x = group_mean(dy_sum), group_mean(dy_x)
        r = ctx.op("Reshape", r, shape=(0, groups, 1))
        ones = ctx.const(np.ones(per_group), t.dtype)
        keep = (0,) + tuple(channels if i == axis else 1 for i in range(1, t.rank))

        def per_channel(v):  # [N, G, 1] or [N, G, C / G] -> one number per item and channel, on axis
            return ctx.op("Reshape", v, shape=keep)
        scale = per_channel(ctx.op("Mul", gamma_g, r))
        slope = per_channel(ctx.op("Mul", ctx.op("Neg", ctx.op("Mul", r, mean_dy_x)), ones))
        offset = per_channel(ctx.op("Mul", ctx.op("Neg", ctx.op("Mul", r, mean_dy)), ones))
        dx = ctx.op("Add", ctx.op("Mul", dy, scale), ctx.op("Add", ctx.op("Mul", normalized, slope), offset))
        return [dx, dgamma, dbeta]


def emit_normalize(ctx, x, shape, t, axes, eps, outputs, affine=(), mean_zero=False):
    """Normalize's ONNX nodes for ``x`` of ``shape`` and dtype ``t`` (the shape given: GroupNormalize
    normalizes a grouped view that the graph has no type for); ``outputs``: y, 1 / sqrt(var + eps)
    ("" where nothing reads it); ``affine``: scale and bias shaped like the axes; ``mean_zero``: x's
    mean over ``axes`` is zero (no mean taken, none subtracted: two passes over x of six)."""
    import numpy as np
    rank = len(shape)
    axes = sorted(a % rank for a in axes)
    inner = tuple(shape[a] for a in axes)
    y, r = outputs
    # (onnxruntime's LayerNormalization: trailing axes, float32 and float16 only)
    if t == "float32" and axes == list(range(axes[0], rank)) and all(isinstance(d, int) for d in inner):
        affine = list(affine) or [ctx.const(np.full(inner, v), t) for v in (1.0, 0.0)]
        ctx.emit("LayerNormalization", [x] + affine, [y, "", r], axis=axes[0], epsilon=eps)
        return
    # Over other axes onnxruntime's LayerNormalization between transposes that move them last was
    # slower: on a channels-first map's 32 channels ([16, 32, 32, 32], one thread) 1.28 ms for it
    # alone against 1.04 for these moments, gamma and beta.
    if mean_zero:  # (x through a Reshape to its own shape: onnxruntime reorders a blocked convolution's map
        # back once for both readers, where Mul(x, x) ran blocked and had its square reordered too:
        # cnn_layernorm's one-thread run of 16 rows 2.77 ms before centering, 3.05 without the Reshape, 2.58)
        centered = ctx.emit("Reshape", [x, ctx.const([0] * rank, "int64")])
    else:
        centered = ctx.emit("Sub", [x, ctx.emit("ReduceMean", [x], axes=axes, keepdims=1)])
    var = ctx.emit("ReduceMean", [ctx.emit("Mul", [centered, centered])], axes=axes, keepdims=1)
    r = ctx.emit("Reciprocal", [ctx.emit("Sqrt", [ctx.emit("Add", [var, ctx.const(eps, t)])])], [r] if r else None)
    if not affine:
        ctx.emit("Mul", [centered, r], [y])
    elif axes == [1]:  # (a channels-first map's channels: gamma and beta in one pass, an inference BatchNormalization's)
        ctx.emit("BatchNormalization", [ctx.emit("Mul", [centered, r]), *affine, ctx.const(np.zeros(inner), t),
                                        ctx.const(np.ones(inner), t)], [y], epsilon=0.0)
    else:
        keep = ctx.const([shape[i] if i in axes else 1 for i in range(rank)], "int64")
        scale, bias = (ctx.emit("Reshape", [v, keep]) for v in affine)
        ctx.emit("Add", [ctx.emit("Mul", [ctx.emit("Mul", [centered, r]), scale]), bias], [y])


def _lower_batch_norm_in_parts(ctx, x, scale, bias, axis, eps, outputs):
    """BatchNormTrain's forward in a step that may run in parts of its batch: the mean from the
    parts' sums and counts, then the (biased) variance from their sums of squares about it (two
    exchanges: the two-pass form, exact where E[x^2] - E[x]^2 would cancel), then x normalized."""
    import numpy as np
    rank = len(ctx.shape(x))
    t = ctx.dtype(x)
    axes = [i for i in range(rank) if i != axis]
    channels = ctx.shape(x)[axis]
    keep = [channels if i == axis else 1 for i in range(rank)]
    count = ctx.emit("Div", [ctx.emit("Cast", [ctx.emit("Size", [x])], to=ctx.onnx_dtype(t)), ctx.const(channels, t)])
    count = emit_exchange(ctx, count, "sum")
    total = emit_exchange(ctx, ctx.emit("ReduceSum", [x, ctx.const(axes, "int64")], keepdims=1), "sum")
    mean = ctx.emit("Div", [total, count])  # [1, C, 1, 1] for axis 1
    centered = ctx.emit("Sub", [x, mean], [outputs[3]])
    # (Mul and ReduceSum: onnxruntime's ReduceSumSquare adds in float32 one by one, 1e-5 off
    # over a part's 2M numbers, against 4e-7)
    squares = ctx.emit("ReduceSum", [ctx.emit("Mul", [centered, centered]), ctx.const(axes, "int64")], keepdims=1)
    squares = emit_exchange(ctx, squares, "sum")
    var = ctx.emit("Div", [squares, count])
    flat = ctx.const([-1], "int64")
    ctx.emit("Reshape", [mean, flat], [outputs[1]])
    ctx.emit("Reshape", [var, flat], [outputs[2]])
    if axis == 1:  # (one pass: an inference BatchNormalization of the centered values)
        ctx.emit("BatchNormalization", [centered, scale, bias, ctx.const(np.zeros(channels), t), outputs[2]],
                 [outputs[0]], epsilon=eps)
        return
    s = ctx.emit("Div", [scale, ctx.emit("Sqrt", [ctx.emit("Add", [outputs[2], ctx.const(eps, t)])])])
    shape = ctx.const(keep, "int64")
    ctx.emit("Add", [ctx.emit("Mul", [centered, ctx.emit("Reshape", [s, shape])]), ctx.emit("Reshape", [bias, shape])],
             [outputs[0]])


def _check_per_channel(ins, attrs) -> int:
    """BatchNormalization's shape rule: every input after x is one number per channel of x's
    ``axis``; returns the channel count."""
    x = ins[0]
    channels = x.shape[normalize_axis(attrs.get("axis", 1), x.rank)]
    for t in ins[1:]:
        if t.shape != (channels,):
            raise ShapeError(f"BatchNormalization statistics {format_shape(t.shape)} do not match {channels} channels")
    return channels


def _lower_normalize(ctx, x, scale, bias, mean, var, axis, eps, outputs):
    """BatchNormalization's arithmetic with channels on any axis: y = x * s + (bias - mean * s),
    s = scale / sqrt(var + eps), the [C] vectors broadcast along ``axis``."""
    t = ctx.dtype(x)
    s = ctx.emit("Div", [scale, ctx.emit("Sqrt", [ctx.emit("Add", [var, ctx.const(eps, t)])])])
    shift = ctx.emit("Sub", [bias, ctx.emit("Mul", [mean, s])])
    shape = ctx.const([-1] + [1] * (len(ctx.shape(x)) - axis - 1), "int64")
    s, shift = (ctx.emit("Reshape", [v, shape]) for v in (s, shift))
    ctx.emit("Add", [ctx.emit("Mul", [x, s]), shift], outputs)


@register
class Softmax(Op):
    """attrs: axis (default -1)."""
    name = "Softmax"
    onnx_op = "Softmax"

    def infer(self, ins, attrs):
        self.check_float(ins)
        normalize_axis(attrs.get("axis", -1), ins[0].rank)
        return [ins[0]]

    def grad(self, ctx, node, dys):
        y, dy = node.outputs[0], dys[0]
        axis = node.attrs.get("axis", -1)
        inner = ctx.op("ReduceSum", ctx.op("Mul", dy, y), axes=(axis,), keepdims=1)
        return [ctx.op("Mul", y, ctx.op("Sub", dy, inner))]


@register
class LogSoftmax(Softmax):
    name = "LogSoftmax"
    onnx_op = "LogSoftmax"

    def grad(self, ctx, node, dys):
        y, dy = node.outputs[0], dys[0]
        total = ctx.op("ReduceSum", dy, axes=(node.attrs.get("axis", -1),), keepdims=1)
        return [ctx.op("Sub", dy, ctx.op("Mul", ctx.op("Exp", y), total))]


@register
class Dropout(Op):
    """attrs: rate, and optionally noise_shape: the shape of the keep-mask, the input's shape
    (batch included, symbolic dims as they are) with 1 on the axes where one mask value is
    shared (SpatialDropout: [N, 1, 1, C]); noise_perm: set by transpose sinking, the noise's
    transpose from the layout it is drawn in (see ops.base.noise_input). Identity at inference
    (removed by a pass); in training, x * (noise >= rate) / (1 - rate) with a uniform noise
    input. With ``alpha`` (AlphaDropout's alpha_p = -selu_alpha * selu_scale) dropped entries
    become alpha instead of 0 and the result is a * x + b, as Keras's AlphaDropout, which keeps
    the mean and variance of SELU activations. (One op with Dropout: the passes that remove,
    keep apart and do not fold noise take it as it is.)"""
    name = "Dropout"
    random = True
    ir_only_attrs = ("rate", "noise_shape", "noise_perm", "alpha")

    def infer(self, ins, attrs):
        x = ins[0]
        shape = attrs.get("noise_shape")
        if shape is not None:
            if len(shape) != x.rank or any(d != 1 and d != xd for d, xd in zip(shape, x.shape)):
                raise ShapeError(f"Dropout noise_shape {format_shape(shape)} does not fit an input "
                                 f"{format_shape(x.shape)}: each entry is the input's dimension or 1")
        return [ins[0]]

    def training_form(self, ctx, node):
        x, rate = node.inputs[0], node.attrs["rate"]
        if rate == 0:
            replace_node(ctx, node, [x])
            return [], []
        t = ctx.type(x)
        mask = node.attrs.get("noise_shape")
        if mask is None:
            name, u = noise_input(ctx, node, t)
        else:
            name, u = noise_input(ctx, node, t.with_shape((t.shape[0],) + tuple(mask[1:])))
            if mask[0] == 1:  # one mask for the whole batch: row 0 (ReduceMax keeps the typing)
                u = ctx.op("ReduceMax", ctx.op("Slice", name, starts=(0,), ends=(1,), axes=(0,)), axes=(0,), keepdims=1)
        keep = ctx.op("Cast", ctx.op("GreaterOrEqual", u, rate), to=t.dtype)
        alpha = node.attrs.get("alpha")
        if alpha is None:
            replace_node(ctx, node, [ctx.op("Mul", ctx.op("Mul", x, keep), 1.0 / (1.0 - rate))])
            return [(name, x)], []
        a = ((1 - rate) * (1 + rate * alpha ** 2)) ** -0.5
        b = -a * alpha * rate
        dropped = ctx.op("Mul", ctx.op("Sub", ctx.const(1.0, t.dtype), keep), alpha)
        y = ctx.op("Add", ctx.op("Mul", x, keep), dropped)
        replace_node(ctx, node, [ctx.op("Add", ctx.op("Mul", y, a), b)])
        return [(name, x)], []

    def grad(self, ctx, node, dys):
        return [dys[0]]  # (the training form replaces Dropout by its mask before autodiff)


@register
class GaussianNoise(Op):
    """Additive zero-mean Gaussian noise of standard deviation ``stddev`` in training; the
    identity at inference (removed by the remove-dropout pass). attrs: stddev, and
    multiplicative (GaussianDropout's 1-centred noise). In training, x + stddev * z, or
    x * (1 + stddev * z) when multiplicative, z standard-normal from two uniform noise inputs."""
    name = "GaussianNoise"
    random = True
    ir_only_attrs = ("stddev", "multiplicative")

    def infer(self, ins, attrs):
        self.check_float(ins)
        return [ins[0]]

    def training_form(self, ctx, node):
        x, stddev = node.inputs[0], node.attrs["stddev"]
        t = ctx.type(x)
        if stddev == 0:
            replace_node(ctx, node, [x])
            return [], []
        # Box-Muller: z = sqrt(-2 ln(1 - u1)) * cos(2 pi u2).
        (n1, u1), (n2, u2) = noise_input(ctx, node, t), noise_input(ctx, node, t)
        radius = ctx.op("Sqrt", ctx.op("Mul", ctx.op("Log", ctx.op("Sub", ctx.const(1.0, t.dtype), u1)), -2.0))
        z = ctx.op("Mul", radius, ctx.op("Cos", ctx.op("Mul", u2, 2 * math.pi)))
        if node.attrs.get("multiplicative"):
            replace_node(ctx, node, [ctx.op("Mul", x, ctx.op("Add", ctx.op("Mul", z, stddev), 1.0))])
        else:
            replace_node(ctx, node, [ctx.op("Add", x, ctx.op("Mul", z, stddev))])
        return [(n1, x), (n2, x)], []

    def grad(self, ctx, node, dys):
        return [dys[0]]  # (the training form replaces the node before autodiff)


@register
class Gather(Op):
    """table [V, D...], indices (int) -> indices.shape + table.shape[1:]. attrs: axis (0)."""
    name = "Gather"
    onnx_op = "Gather"

    def infer(self, ins, attrs):
        table, idx = ins
        if idx.is_float:
            raise ShapeError(f"Gather indices must be integers, got {idx}")
        axis = normalize_axis(attrs.get("axis", 0), table.rank)
        return [TensorType(table.dtype, table.shape[:axis] + idx.shape + table.shape[axis + 1:])]

    def grad(self, ctx, node, dys):
        if node.attrs.get("axis", 0) != 0:
            raise NotImplementedError("gradient of Gather on an axis other than 0")
        table, idx = node.inputs
        return [ctx.op("ScatterAdd", _repeated_by_gather(ctx, dys[0]), idx, table), None]


def _repeated_by_gather(ctx, dy):
    """``dy``, where it broadcasts one size-1 axis to a fixed length (an average pool's gradient
    over the embedded steps), as a Gather of that axis's one entry: the ScatterND of an embedding
    bag's gradient ([128, 100, 64] updates into a 5,000 x 64 table) then took 0.73 ms where it took
    0.93 after the Expand, and the Gather 0.17 ms where the Expand took 0.41 (embedding_bag in
    benchmarks/survey.py: 3.04 -> 2.72 ms a step). Elsewhere an Expand stays: where an element-wise
    op reads it, the Gather was 4-5% slower a step (time_distributed, conv1d_text)."""
    src = ctx.g.producer_of(dy)
    if src is None or src.op != "ExpandLike":
        return dy
    want = ctx.type(dy).shape
    grown = grown_axes(ctx.type(src.inputs[0]).shape, want)
    if grown is None or len(grown) != 1:
        return dy
    axis, = grown
    return ctx.op("Gather", src.inputs[0], ctx.const([0] * want[axis], "int64"), axis=axis)


@register
class ScatterAdd(Op):
    """Rows of updates [idx..., D...] summed into zeros shaped like table [V, D...] at idx (int)."""
    name = "ScatterAdd"

    def infer(self, ins, attrs):
        return [ins[2]]

    def lower(self, ctx, inputs, outputs, attrs):
        updates, idx, table = inputs
        if ctx.dtype(idx) != "int64":
            idx = ctx.emit("Cast", [idx], to=ctx.onnx_dtype("int64"))
        _add_at_rows(ctx, ctx.zeros(ctx.emit("Shape", [table]), ctx.dtype(table)), idx, updates, outputs)


def _add_at_rows(ctx, data, rows, values, outputs):
    """data with values [rows..., D...] added to its rows at ``rows`` (int64): ScatterND."""
    ctx.emit("ScatterND", [data, ctx.emit("Unsqueeze", [rows, ctx.const([-1], "int64")]), values], outputs,
             reduction="add")


@register
class UniqueRows(Op):
    """A ScatterAdd's gradient as the rows it touches: updates [n, D...] at ids [n] (int64) into
    a table of V rows -> rows [K] (int64, each row once; negative ids counted from the end) and
    their summed values [K, D...], each sum in the order of the updates. For optimizer updates
    that touch those rows alone (training/optimizers.py). attrs: rows (V)."""
    name = "UniqueRows"

    def infer(self, ins, attrs):
        updates, ids = ins
        return [TensorType("int64", ("?",)), TensorType(updates.dtype, ("?",) + updates.shape[1:])]

    def lower(self, ctx, inputs, outputs, attrs):
        updates, ids = inputs
        # (Gather reads index -1 as the last row: so must the rows, or a row would come twice)
        ids = ctx.emit("Where", [ctx.emit("Less", [ids, ctx.const(0, "int64")]),
                                 ctx.emit("Add", [ids, ctx.const(attrs["rows"], "int64")]), ids])
        # Each row once without a sort (onnxruntime's Unique took 1.4 ms for 6,400 ids): every
        # occurrence writes its position into a row-sized buffer, one of them stays, and the
        # occurrences whose position stayed stand for their rows (in the order they come).
        positions = ctx.emit("Range", [ctx.const(0, "int64"), ctx.emit("Squeeze", [ctx.emit("Shape", [ids])]),
                                       ctx.const(1, "int64")])
        kept = ctx.emit("ScatterElements", [ctx.zeros(ctx.const([attrs["rows"]], "int64"), "int64"), ids, positions])
        standing = ctx.emit("Gather", [kept, ids])  # [n]: the position standing for each occurrence's row
        first = ctx.emit("Equal", [standing, positions])
        ctx.emit("Compress", [ids, first], [outputs[0]], axis=0)
        slot = ctx.emit("Sub", [ctx.emit("CumSum", [ctx.emit("Cast", [first], to=ctx.onnx_dtype("int64")),
                                                   ctx.const(0, "int64")]), ctx.const(1, "int64")])
        inverse = ctx.emit("Gather", [slot, standing])  # [n]: each occurrence's row among the rows
        inner = list(ctx.shape(updates)[1:])
        shape = ctx.emit("Concat", [ctx.emit("Shape", [outputs[0]]), ctx.const(inner, "int64")], axis=0)
        _add_at_rows(ctx, ctx.zeros(shape, ctx.dtype(updates)), inverse, updates, [outputs[1]])


@register
class ScatterRows(Op):
    """data [V, D...] with values [K, D...] added to its rows [K] (int64, each once)."""
    name = "ScatterRows"

    def infer(self, ins, attrs):
        return [ins[0]]

    def lower(self, ctx, inputs, outputs, attrs):
        _add_at_rows(ctx, *inputs, outputs)
