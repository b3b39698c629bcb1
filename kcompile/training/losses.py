"""Losses with Keras's semantics, built from primitive ops. Each returns the per-sample
loss (the last axis reduced); the caller averages over the batch."""
from __future__ import annotations

EPSILON = 1e-7  # keras.backend.epsilon()


def _producer_op(ctx, value, op):
    node = ctx.g.producer_of(value)
    return node if node is not None and node.op == op else None


def categorical_crossentropy(ctx, y, p, from_logits=False, label_smoothing=0.0, axis=-1):
    y = _smooth(ctx, y, p, label_smoothing)
    softmax = _producer_op(ctx, p, "Softmax")
    if from_logits or (softmax is not None and softmax.attrs.get("axis", -1) % ctx.type(p).rank ==
                       axis % ctx.type(p).rank):
        # Fused softmax + cross-entropy: log_softmax of the logits, whose gradient is p - y.
        logits = p if from_logits else softmax.inputs[0]
        log_p = ctx.op("LogSoftmax", logits, axis=axis)
    else:
        total = ctx.op("ReduceSum", p, axes=(axis,), keepdims=1)
        clipped = _clip(ctx, ctx.op("Div", p, total), EPSILON, 1 - EPSILON)
        log_p = ctx.op("Log", clipped)
    return ctx.op("Neg", ctx.op("ReduceSum", ctx.op("Mul", y, log_p), axes=(axis,), keepdims=0))


def sparse_categorical_crossentropy(ctx, labels, p, from_logits=False, axis=-1):
    classes = ctx.type(p).shape[-1]
    return categorical_crossentropy(ctx, one_hot(ctx, labels, classes, ctx.type(p).dtype), p, from_logits)


def binary_crossentropy(ctx, y, p, from_logits=False, label_smoothing=0.0):
    if label_smoothing:
        y = ctx.op("Add", ctx.op("Mul", y, 1.0 - label_smoothing), 0.5 * label_smoothing)
    sigmoid = _producer_op(ctx, p, "Sigmoid")
    if from_logits or sigmoid is not None:
        # on logits, stable, with the gradient sigmoid(x) - y (ops/elementwise.py)
        x = p if from_logits else sigmoid.inputs[0]
        per = ctx.op("SigmoidCrossEntropy", x, y)
    else:
        q = _clip(ctx, p, EPSILON, 1 - EPSILON)
        per = ctx.op("Neg", ctx.op("Add", ctx.op("Mul", y, ctx.op("Log", q)),
                                   ctx.op("Mul", ctx.op("Sub", 1.0, y), ctx.op("Log", ctx.op("Sub", 1.0, q)))))
    return ctx.op("ReduceMean", per, axes=(-1,), keepdims=0)


def mean_squared_error(ctx, y, p):
    d = ctx.op("Sub", y, p)
    return ctx.op("ReduceMean", ctx.op("Mul", d, d), axes=(-1,), keepdims=0)


def mean_absolute_error(ctx, y, p):
    return ctx.op("ReduceMean", ctx.op("Abs", ctx.op("Sub", y, p)), axes=(-1,), keepdims=0)


def huber(ctx, y, p, delta=1.0):
    err = ctx.op("Abs", ctx.op("Sub", y, p))
    small = ctx.op("Min", err, delta)
    # 0.5 * small^2 + delta * (err - small)
    per = ctx.op("Add", ctx.op("Mul", 0.5, ctx.op("Mul", small, small)),
                 ctx.op("Mul", delta, ctx.op("Sub", err, small)))
    return ctx.op("ReduceMean", per, axes=(-1,), keepdims=0)


LOSS_FUNCTIONS = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mean_squared_error": mean_squared_error,
    "mean_absolute_error": mean_absolute_error,
    "huber": huber,
}


def one_hot(ctx, labels, classes, dtype):
    """[..] integer labels -> [.., classes] one-hot (a constant w.r.t. the weights)."""
    import numpy as np
    labels = ctx.op("Cast", labels, to="int64") if ctx.type(labels).dtype != "int64" else labels
    if ctx.type(labels).rank and ctx.type(labels).shape[-1] == 1 and ctx.type(labels).rank > 1:
        labels = ctx.op("Squeeze", labels, axes=(-1,))
    hits = ctx.op("Equal", ctx.op("Unsqueeze", labels, axes=(-1,)), ctx.const(np.arange(classes), "int64"))
    return ctx.op("Cast", hits, to=dtype)


def _clip(ctx, x, lo, hi):
    return ctx.op("Min", ctx.op("Max", x, lo), hi)


def _smooth(ctx, y, p, label_smoothing):
    if not label_smoothing:
        return y
    classes = ctx.type(p).shape[-1]
    return ctx.op("Add", ctx.op("Mul", y, 1.0 - label_smoothing), label_smoothing / classes)
