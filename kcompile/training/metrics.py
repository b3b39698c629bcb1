"""Metrics as graph ops. Each returns named per-batch statistics and how the runtime
turns their running totals into the reported value:

* ``mean``: the batch mean of a per-sample value (accuracy, mae, mse); the epoch value
  is the mean weighted by batch size, as Keras reports it.
* ``ratio``: (numerator, denominator) counts summed over batches (precision, recall).
* ``auc``: true/false positives and negatives at 200 thresholds (Keras's AUC, ROC,
  interpolated by the trapezoidal rule over the thresholds).
"""
from __future__ import annotations

import numpy as np


AUC_THRESHOLDS = 200


def _mean(ctx, per_sample, weights=None):
    """The batch mean of ``per_sample``; with ``weights`` (a step mask [N, T], as floats) the
    ratio statistics of the weighted mean instead, its values first averaged over any axes past
    the weights' (Keras's metrics: a mean over the last axis, then over the kept steps)."""
    if weights is None:
        return {"value": ctx.op("ReduceMean", per_sample, keepdims=0)}
    extra = tuple(range(ctx.type(weights).rank, ctx.type(per_sample).rank))
    if extra:
        per_sample = ctx.op("ReduceMean", per_sample, axes=extra, keepdims=0)
    return {"numerator": ctx.op("ReduceSum", ctx.op("Mul", per_sample, weights), keepdims=0),
            "denominator": ctx.op("ReduceSum", weights, keepdims=0)}


def _as_float(ctx, mask, dtype="float32"):
    return ctx.op("Cast", mask, to=dtype)


def accuracy(ctx, y, p, kind, weights=None):
    """kind: categorical (argmax vs argmax), sparse (argmax vs label) or binary (p > 0.5 vs y)."""
    dtype = ctx.type(p).dtype
    if kind == "binary":
        hit = ctx.op("Equal", _as_float(ctx, ctx.op("Greater", p, 0.5), dtype), y)
        return _mean(ctx, _as_float(ctx, hit, dtype), weights)
    predicted = ctx.op("ArgMax", p, axis=-1, keepdims=0)
    if kind == "sparse":
        truth = ctx.op("Cast", y, to="int64") if ctx.type(y).dtype != "int64" else y
        if ctx.type(truth).rank == ctx.type(predicted).rank + 1:
            truth = ctx.op("Squeeze", truth, axes=(-1,))
    else:
        truth = ctx.op("ArgMax", y, axis=-1, keepdims=0)
    return _mean(ctx, _as_float(ctx, ctx.op("Equal", predicted, truth), dtype), weights)


def mean_absolute_error(ctx, y, p, weights=None):
    return _mean(ctx, ctx.op("Abs", ctx.op("Sub", y, p)), weights)


def mean_squared_error(ctx, y, p, weights=None):
    d = ctx.op("Sub", y, p)
    return _mean(ctx, ctx.op("Mul", d, d), weights)


def _positive(ctx, y, dtype):
    """1 where a target counts as positive: any nonzero one, as Keras casts targets to bool for
    precision, recall and AUC (a smoothed 0.1 is positive there)."""
    return ctx.op("Sub", 1.0, _as_float(ctx, ctx.op("Equal", y, ctx.const(0.0, ctx.type(y).dtype)), dtype))


def _binary_counts(ctx, y, p, threshold=0.5):
    dtype = ctx.type(p).dtype
    predicted = _as_float(ctx, ctx.op("Greater", p, threshold), dtype)
    truth = _positive(ctx, y, dtype)
    tp = ctx.op("ReduceSum", ctx.op("Mul", predicted, truth), keepdims=0)
    return tp, ctx.op("ReduceSum", predicted, keepdims=0), ctx.op("ReduceSum", truth, keepdims=0)


def precision(ctx, y, p):
    tp, predicted, _ = _binary_counts(ctx, y, p)
    return {"numerator": tp, "denominator": predicted}


def recall(ctx, y, p):
    tp, _, actual = _binary_counts(ctx, y, p)
    return {"numerator": tp, "denominator": actual}


def auc(ctx, y, p):
    dtype = ctx.type(p).dtype
    eps = 1e-7
    thresholds = np.concatenate([[-eps], (np.arange(1, AUC_THRESHOLDS - 1) / (AUC_THRESHOLDS - 1)), [1 + eps]])
    # (predictions clipped to [0, 1] first, as Keras: logits or a linear output still give a
    # curve from (0, 0) to (1, 1))
    flat_p = ctx.op("Reshape", ctx.op("Min", ctx.op("Max", p, 0.0), 1.0), shape=(-1, 1))
    flat_y = _positive(ctx, ctx.op("Reshape", y, shape=(-1, 1)), dtype)
    above = _as_float(ctx, ctx.op("Greater", flat_p, ctx.const(thresholds.reshape(1, -1), dtype)), dtype)
    tp = ctx.op("ReduceSum", ctx.op("Mul", above, flat_y), axes=(0,), keepdims=0)
    fp = ctx.op("ReduceSum", ctx.op("Mul", above, ctx.op("Sub", 1.0, flat_y)), axes=(0,), keepdims=0)
    pos = ctx.op("ReduceSum", flat_y, keepdims=0)
    neg = ctx.op("Sub", ctx.op("Cast", ctx.op("Size", flat_y), to=dtype), pos)
    return {"tp": tp, "fp": fp, "pos": pos, "neg": neg}


def auc_from_totals(tp, fp, pos, neg) -> float:
    """Keras's ROC AUC from threshold counts (trapezoidal interpolation)."""
    tpr = tp / max(pos, 1e-7)
    fpr = fp / max(neg, 1e-7)
    return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))


# name -> (function, kind); plain accuracy's kind is chosen from the shapes, as Keras 3 does (graphs._accuracy_kind).
METRIC_FUNCTIONS = {
    "accuracy": ("accuracy", "mean"),
    "categorical_accuracy": ("accuracy", "mean"),
    "sparse_categorical_accuracy": ("accuracy", "mean"),
    "binary_accuracy": ("accuracy", "mean"),
    "mae": (mean_absolute_error, "mean"), "mean_absolute_error": (mean_absolute_error, "mean"),
    "mse": (mean_squared_error, "mean"), "mean_squared_error": (mean_squared_error, "mean"),
    "precision": (precision, "ratio"),
    "recall": (recall, "ratio"),
    "auc": (auc, "auc"),
}
