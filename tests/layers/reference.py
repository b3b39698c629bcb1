"""Independent numpy references for Keras's layer semantics (channels-last, float64).

Written from Keras/TensorFlow's definitions, not from kcompile's code: padding
arithmetic, window loops and activation formulas are all spelled out here.
"""
import math

import numpy as np


def random_input(shape, rng, scale=1.0, batch=2):
    """A float32 batch of ``batch`` items of ``shape``, uniform in [-scale, scale]."""
    return rng.uniform(-scale, scale, (batch,) + tuple(shape)).astype(np.float32)


def f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


# ---------------------------------------------------------------- padding
def same_pads(size, window, stride, dilation=1):
    """TensorFlow SAME: output ceil(size / stride); the odd padding pixel goes at the end."""
    eff = dilation * (window - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def pads_for(padding, size, window, stride, dilation=1):
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return dilation * (window - 1), 0
    if padding == "same":
        return same_pads(size, window, stride, dilation)
    raise ValueError(padding)


# ---------------------------------------------------------------- core
def dense(x, kernel, bias=None):
    x, kernel = f64(x, kernel)
    y = np.einsum("...i,io->...o", x, kernel)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def embedding(ids, table):
    return np.asarray(table, np.float64)[np.asarray(ids)]


# ---------------------------------------------------------------- convolution
def conv(x, kernel, bias=None, strides=1, padding="valid", dilation=1, groups=1):
    """N-d convolution (N = 1 or 2), channels-last. kernel [*k, in/groups, out]."""
    x, kernel = f64(x, kernel)
    nsp = x.ndim - 2
    strides = (strides,) * nsp if isinstance(strides, int) else tuple(strides)
    dilation = (dilation,) * nsp if isinstance(dilation, int) else tuple(dilation)
    ksize = kernel.shape[:nsp]
    cin, cout = x.shape[-1], kernel.shape[-1]
    assert kernel.shape[-2] * groups == cin
    pads = [pads_for(padding, x.shape[1 + i], ksize[i], strides[i], dilation[i]) for i in range(nsp)]
    xp = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    out_sizes = [(xp.shape[1 + i] - (dilation[i] * (ksize[i] - 1) + 1)) // strides[i] + 1 for i in range(nsp)]
    y = np.zeros((x.shape[0],) + tuple(out_sizes) + (cout,))
    gin, gout = cin // groups, cout // groups
    for pos in np.ndindex(*out_sizes):
        for koff in np.ndindex(*ksize):
            idx = tuple(pos[i] * strides[i] + koff[i] * dilation[i] for i in range(nsp))
            patch = xp[(slice(None),) + idx]  # [N, cin]
            w = kernel[koff]  # [cin/groups, cout]
            for g in range(groups):
                y[(slice(None),) + pos + (slice(g * gout, (g + 1) * gout),)] += \
                    patch[:, g * gin:(g + 1) * gin] @ w[:, g * gout:(g + 1) * gout]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def deconv_length(size, kernel, stride, padding, output_padding=None, dilation=1):
    """keras.src.utils / ops.operation_utils.deconv_output_length."""
    k = kernel + (kernel - 1) * (dilation - 1)
    if output_padding is None:
        return size * stride + max(k - stride, 0) if padding == "valid" else size * stride
    pad = k // 2 if padding == "same" else 0
    return (size - 1) * stride + k - 2 * pad + output_padding


def conv2d_transpose(x, kernel, bias=None, strides=1, padding="valid", output_padding=None, dilation=1):
    """Keras Conv2DTranspose (TensorFlow conv2d_transpose: the gradient of a forward conv2d
    from an output-sized image). kernel [kh, kw, out, in]."""
    x, kernel = f64(x, kernel)
    strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
    dilation = (dilation,) * 2 if isinstance(dilation, int) else tuple(dilation)
    if output_padding is not None and isinstance(output_padding, int):
        output_padding = (output_padding,) * 2
    n, h, w, _ = x.shape
    kh, kw, cout, _ = kernel.shape
    eff = [dilation[i] * (kernel.shape[i] - 1) + 1 for i in range(2)]
    full = [(x.shape[1 + i] - 1) * strides[i] + eff[i] for i in range(2)]
    outs = [deconv_length(x.shape[1 + i], kernel.shape[i], strides[i], padding,
                          None if output_padding is None else output_padding[i], dilation[i]) for i in range(2)]
    # Scatter every input pixel through the kernel into the uncropped output.
    big = np.zeros((n, max(full[0], outs[0]) + eff[0], max(full[1], outs[1]) + eff[1], cout))
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    big[:, i * strides[0] + a * dilation[0], j * strides[1] + b * dilation[1], :] += \
                        x[:, i, j, :] @ kernel[a, b].T
    # The forward conv with this padding from an output-sized image starts at pad_before.
    begin = []
    for i in range(2):
        if padding == "same":
            total = max((x.shape[1 + i] - 1) * strides[i] + eff[i] - outs[i], 0)
            begin.append(total // 2)
        else:
            begin.append(0)
    y = big[:, begin[0]:begin[0] + outs[0], begin[1]:begin[1] + outs[1], :]
    assert y.shape[1:3] == tuple(outs)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


# ---------------------------------------------------------------- pooling
def pool(x, kind, pool_size, strides=None, padding="valid"):
    """Max or average pooling, N-d channels-last; 'same' averages only the valid pixels."""
    (x,) = f64(x)
    nsp = x.ndim - 2
    pool_size = (pool_size,) * nsp if isinstance(pool_size, int) else tuple(pool_size)
    strides = pool_size if strides is None else ((strides,) * nsp if isinstance(strides, int) else tuple(strides))
    pads = [pads_for(padding, x.shape[1 + i], pool_size[i], strides[i]) for i in range(nsp)]
    out_sizes = [(x.shape[1 + i] + sum(pads[i]) - pool_size[i]) // strides[i] + 1 for i in range(nsp)]
    y = np.zeros((x.shape[0],) + tuple(out_sizes) + (x.shape[-1],))
    for pos in np.ndindex(*out_sizes):
        window = []
        for i in range(nsp):
            start = pos[i] * strides[i] - pads[i][0]
            lo, hi = max(start, 0), min(start + pool_size[i], x.shape[1 + i])
            window.append(slice(lo, hi))
        patch = x[(slice(None),) + tuple(window)]
        axes = tuple(range(1, nsp + 1))
        y[(slice(None),) + pos] = patch.max(axis=axes) if kind == "max" else patch.mean(axis=axes)
    return y


def global_pool(x, kind, keepdims=False):
    (x,) = f64(x)
    axes = tuple(range(1, x.ndim - 1))
    return x.max(axis=axes, keepdims=keepdims) if kind == "max" else x.mean(axis=axes, keepdims=keepdims)


# ---------------------------------------------------------------- normalization
def batch_norm(x, gamma, beta, mean, var, epsilon=1e-3, axis=-1):
    (x,) = f64(x)
    shape = [1] * x.ndim
    shape[axis] = -1
    gamma = np.ones(x.shape[axis]) if gamma is None else np.asarray(gamma, np.float64)
    beta = np.zeros(x.shape[axis]) if beta is None else np.asarray(beta, np.float64)
    mean, var = f64(mean, var)
    r = lambda v: v.reshape(shape)  # noqa: E731
    return r(gamma) * (x - r(mean)) / np.sqrt(r(var) + epsilon) + r(beta)


# ---------------------------------------------------------------- activations
_erf = np.vectorize(math.erf)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))


def relu6(x):
    return np.minimum(np.maximum(x, 0), 6)


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "elu": elu,
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * (np.exp(x) - 1)),
    "softplus": softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "swish": lambda x: x * sigmoid(x),
    "silu": lambda x: x * sigmoid(x),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x),
    "relu6": relu6,
    "hard_sigmoid": lambda x: relu6(x + 3) / 6,
    "hard_swish": lambda x: x * relu6(x + 3) / 6,
    "mish": lambda x: x * np.tanh(softplus(x)),
    "exponential": np.exp,
}


def activation(name, x):
    (x,) = f64(x)
    return ACTIVATIONS[name](x)


def leaky_relu(x, negative_slope):
    (x,) = f64(x)
    return np.where(x >= 0, x, negative_slope * x)


def relu(x, max_value=None, negative_slope=0.0):
    """keras.layers.ReLU (threshold 0)."""
    (x,) = f64(x)
    y = np.where(x >= 0, x, negative_slope * x)
    if max_value is not None:
        y = np.where(x >= max_value, max_value, y)
    return y


# ---------------------------------------------------------------- 1D transposed, depthwise, separable
def conv1d_transpose(x, kernel, bias=None, strides=1, padding="valid", output_padding=None, dilation=1):
    """Keras Conv1DTranspose: conv2d_transpose over images one pixel high. kernel [k, out, in]."""
    op = None if output_padding is None else (0, output_padding)
    return conv2d_transpose(np.asarray(x)[:, None], np.asarray(kernel)[None], bias, (1, strides), padding, op,
                            (1, dilation))[:, 0]


def depthwise_conv(x, kernel, bias=None, strides=1, padding="valid", dilation=1):
    """Keras depthwise convolution, channel by channel: output channel c * multiplier + m is input
    channel c convolved with kernel[..., c, m]. kernel [*k, in, multiplier]."""
    x, kernel = f64(x, kernel)
    cin, mult = kernel.shape[-2:]
    ys = [conv(x[..., c:c + 1], kernel[..., c:c + 1, m:m + 1], None, strides, padding, dilation)
          for c in range(cin) for m in range(mult)]
    y = np.concatenate(ys, axis=-1)
    return y if bias is None else y + np.asarray(bias, np.float64)


# ---------------------------------------------------------------- N-d transposed convolution, upsampling
def conv_transpose(x, kernel, bias=None, strides=1, padding="valid", output_padding=None, dilation=1):
    """Keras ConvNDTranspose for any number of spatial axes (conv2d_transpose's arithmetic: every
    input pixel scattered through the kernel, then the output window cropped). kernel [*k, out, in]."""
    x, kernel = f64(x, kernel)
    nsp = x.ndim - 2
    strides = (strides,) * nsp if isinstance(strides, int) else tuple(strides)
    dilation = (dilation,) * nsp if isinstance(dilation, int) else tuple(dilation)
    if isinstance(output_padding, int):
        output_padding = (output_padding,) * nsp
    ksize, cout = kernel.shape[:nsp], kernel.shape[-2]
    eff = [dilation[i] * (ksize[i] - 1) + 1 for i in range(nsp)]
    outs = [deconv_length(x.shape[1 + i], ksize[i], strides[i], padding,
                          None if output_padding is None else output_padding[i], dilation[i]) for i in range(nsp)]
    full = [(x.shape[1 + i] - 1) * strides[i] + eff[i] for i in range(nsp)]
    big = np.zeros((x.shape[0],) + tuple(max(f, o) + e for f, o, e in zip(full, outs, eff)) + (cout,))
    for pos in np.ndindex(*x.shape[1:-1]):
        for koff in np.ndindex(*ksize):
            at = tuple(pos[i] * strides[i] + koff[i] * dilation[i] for i in range(nsp))
            big[(slice(None),) + at] += x[(slice(None),) + pos] @ kernel[koff].T
    begin = [max((x.shape[1 + i] - 1) * strides[i] + eff[i] - outs[i], 0) // 2 if padding == "same" else 0
             for i in range(nsp)]
    y = big[(slice(None),) + tuple(slice(b, b + o) for b, o in zip(begin, outs))]
    return y if bias is None else y + np.asarray(bias, np.float64)


def upsample(x, size):
    """Nearest-neighbour upsampling of every spatial axis (Keras's UpSampling1D/2D/3D)."""
    (y,) = f64(x)
    for axis, s in enumerate(size, start=1):
        y = np.repeat(y, s, axis=axis)
    return y
