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


def save_image_grid(path, images, columns=None, scale=1):
    """Write images [n, h, w] or [n, h, w, 1|3] with values in [0, 1] as one PNG grid
    (no imaging library needed). Returns the path."""
    import struct
    import zlib
    from pathlib import Path

    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4):
        raise ValueError(f"save_image_grid expects [n, h, w] or [n, h, w, c] images, got shape {images.shape}")
    n, h, w = images.shape[:3]
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    channels = 3 if images.ndim == 4 else 1
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1) + ((3,) if channels == 3 else ()))
    for k in range(n):
        r, c = divmod(k, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = images[k]
    grid = np.kron(grid, np.ones((scale, scale) + ((1,) if channels == 3 else ()))) if scale > 1 else grid
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    color = 2 if channels == 3 else 0
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(png)
    return Path(path)
