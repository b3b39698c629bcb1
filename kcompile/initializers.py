"""Keras's weight initialisers, by name, in numpy.

A spec is ``(name, kwargs)``; ``make(spec, shape, rng)`` draws the array. Fans
follow Keras: a kernel [..receptive field.., fan_in_channels, fan_out_channels].
"""
from __future__ import annotations

import zlib

import numpy as np

# name -> allowed keyword arguments with defaults
INITIALIZERS = {
    "zeros": {}, "ones": {}, "constant": {"value": 0.0},
    "glorot_uniform": {}, "glorot_normal": {}, "he_uniform": {}, "he_normal": {},
    "lecun_uniform": {}, "lecun_normal": {},
    "random_normal": {"mean": 0.0, "stddev": 0.05},
    "random_uniform": {"minval": -0.05, "maxval": 0.05},
    "uniform": {"minval": -0.05, "maxval": 0.05},  # Keras's Embedding default
    "truncated_normal": {"mean": 0.0, "stddev": 0.05},
    "orthogonal": {"gain": 1.0},
    "identity": {"gain": 1.0},
    "unit_forget_bias": {},  # LSTM bias: zeros, ones for the forget gate (second quarter)
}
# Keras's CamelCase class names are accepted too.
ALIASES = {"Zeros": "zeros", "Ones": "ones", "Constant": "constant", "GlorotUniform": "glorot_uniform",
           "GlorotNormal": "glorot_normal", "HeUniform": "he_uniform", "HeNormal": "he_normal",
           "LecunUniform": "lecun_uniform", "LecunNormal": "lecun_normal", "RandomNormal": "random_normal",
           "RandomUniform": "random_uniform", "TruncatedNormal": "truncated_normal",
           "Orthogonal": "orthogonal", "Identity": "identity"}


def fans(shape) -> tuple[float, float]:
    shape = tuple(shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = float(np.prod(shape[:-2])) if len(shape) > 2 else 1.0
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated(rng, shape, stddev):
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * stddev


def _variance_scaling(rng, shape, scale, mode, distribution):
    fan_in, fan_out = fans(shape)
    n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
    if distribution == "uniform":
        limit = np.sqrt(3.0 * scale / n)
        return rng.uniform(-limit, limit, shape)
    return _truncated(rng, shape, np.sqrt(scale / n) / 0.87962566103423978)


def make(spec, shape, rng: np.random.Generator, dtype="float32") -> np.ndarray:
    name, kw = spec
    args = {**INITIALIZERS[name], **dict(kw)}
    shape = tuple(shape)
    if name == "zeros":
        out = np.zeros(shape)
    elif name == "ones":
        out = np.ones(shape)
    elif name == "constant":
        out = np.full(shape, args["value"])
    elif name in ("glorot_uniform", "glorot_normal"):
        out = _variance_scaling(rng, shape, 1.0, "fan_avg", name.split("_")[1])
    elif name in ("he_uniform", "he_normal"):
        out = _variance_scaling(rng, shape, 2.0, "fan_in", name.split("_")[1])
    elif name in ("lecun_uniform", "lecun_normal"):
        out = _variance_scaling(rng, shape, 1.0, "fan_in", name.split("_")[1])
    elif name == "random_normal":
        out = rng.normal(args["mean"], args["stddev"], shape)
    elif name in ("random_uniform", "uniform"):
        out = rng.uniform(args["minval"], args["maxval"], shape)
    elif name == "truncated_normal":
        out = args["mean"] + _truncated(rng, shape, args["stddev"])
    elif name == "orthogonal":
        rows, cols = int(np.prod(shape[:-1])) if len(shape) > 1 else 1, shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        q = q if rows >= cols else q.T
        out = args["gain"] * q[:rows, :cols].reshape(shape)
    elif name == "unit_forget_bias":
        out = np.zeros(shape)
        u = shape[0] // 4
        out[u:2 * u] = 1.0
    elif name == "identity":
        out = args["gain"] * np.eye(*shape)
    else:
        raise KeyError(name)
    return np.asarray(out, dtype=dtype)


def seeded_rng(seed: int, weight_name: str) -> np.random.Generator:
    """One generator per weight, from the model seed and the weight's name: a weight's
    initial value does not depend on which other weights exist."""
    return np.random.default_rng([seed, zlib.crc32(weight_name.encode())])
