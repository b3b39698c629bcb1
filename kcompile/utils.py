"""Small array utilities, Keras-style."""
from __future__ import annotations

import numpy as np

__all__ = ["to_categorical"]


def to_categorical(y, num_classes: int | None = None, dtype="float32") -> np.ndarray:
    """One-hot encode integer class labels, like ``keras.utils.to_categorical``.

    ``y`` may have any shape; the result has shape ``y.shape + (num_classes,)``,
    except that a trailing dimension of size 1 (e.g. labels of shape ``[n, 1]``) is
    dropped first, as Keras does. ``num_classes`` defaults to ``max(y) + 1``.
    Labels must be integers (integer-valued floats are accepted) in
    ``0 .. num_classes - 1``; anything else raises ``ValueError``.
    """
    y = np.asarray(y)
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"to_categorical expects integer class labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.floor(y)):
            raise ValueError("to_categorical expects integer class labels, got non-integer values")
    shape = y.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    flat = y.reshape(-1).astype(np.int64)
    if num_classes is None:
        if flat.size == 0:
            raise ValueError("to_categorical: cannot infer num_classes from empty labels; pass num_classes")
        num_classes = int(flat.max()) + 1
    else:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        num_classes = int(num_classes)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0:
            raise ValueError(f"to_categorical: labels must be non-negative, got {lo}")
        if hi >= num_classes:
            raise ValueError(
                f"to_categorical: label {hi} is out of range for num_classes={num_classes} "
                f"(labels must be 0..{num_classes - 1})"
            )
    out = np.zeros((flat.size, num_classes), dtype=dtype)
    out[np.arange(flat.size), flat] = 1
    return out.reshape(shape + (num_classes,))
