"""MNIST handwritten digits, Keras-style.

``load_data()`` returns ``(x_train, y_train), (x_test, y_test)``: uint8 images of shape
``[n, 28, 28]`` (pixel values 0..255) and uint8 labels 0..9 of shape ``[n]``.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, published under
Creative Commons Attribution-Share Alike 3.0.
"""
from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._download import fetch

__all__ = ["load_data", "load_idx", "DEFAULT_BASE_URL", "FILENAME", "SHA256"]

DEFAULT_BASE_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FILENAME = "mnist.npz"
SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type byte -> big-endian numpy dtype.
_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not) into a numpy array.

    The format is: two zero bytes, a type byte (0x08 = uint8, 0x09 = int8, 0x0B =
    int16, 0x0C = int32, 0x0D = float32, 0x0E = float64), a byte with the number of
    dimensions, one big-endian uint32 per dimension, then the data, big-endian, row
    major. Gzip is recognised by its magic bytes, whatever the file name. Raises
    ``ValueError`` naming the file on a bad magic number, bad dimensions, a truncated
    file or trailing bytes. Multi-byte types are returned in native byte order.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes, the header alone needs at least 4")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} "
            f"(expected 0x0000TTNN with type TT in {{08,09,0b,0c,0d,0e}})"
        )
    dtype = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated IDX file: header declares {ndim} dimensions "
            f"({header} header bytes) but the file has only {len(raw)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise ValueError(
            f"{path}: truncated IDX file: dimensions {list(dims)} need {expected} data bytes, "
            f"found {got}"
        )
    if got > expected:
        raise ValueError(
            f"{path}: IDX file has {got - expected} unexpected trailing bytes after the "
            f"{expected} data bytes of dimensions {list(dims)}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return data.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def _check(x: np.ndarray, y: np.ndarray, split: str, source) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"{source}: x_{split} must have shape [n, 28, 28], got {list(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{source}: y_{split} must have shape [{x.shape[0]}] to match x_{split}, got {list(y.shape)}"
        )
    for name, a in ((f"x_{split}", x), (f"y_{split}", y)):
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() > 255)):
                raise ValueError(f"{source}: {name} must hold integers 0..255, got dtype {a.dtype}")
    x, y = x.astype(np.uint8, copy=False), y.astype(np.uint8, copy=False)
    if y.size and y.max() > 9:
        raise ValueError(f"{source}: y_{split} holds label {int(y.max())}, expected 0..9")
    return x, y


def _empty():
    return np.empty((0, 28, 28), dtype=np.uint8), np.empty((0,), dtype=np.uint8)


def _load_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _IDX_FILES if k not in f.files]
            if missing:
                raise ValueError(
                    f"{path}: not a Keras-style mnist.npz: missing arrays {missing} "
                    f"(has {sorted(f.files)})"
                )
            arrays = {k: f[k] for k in _IDX_FILES}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{path}: cannot read as an .npz archive ({e})") from e
    return (_check(arrays["x_train"], arrays["y_train"], "train", path),
            _check(arrays["x_test"], arrays["y_test"], "test", path))


def _load_idx_dir(folder: Path):
    found = {k: _find_idx(folder, stem) for k, stem in _IDX_FILES.items()}
    if found["x_test"] is None or found["y_test"] is None:
        if (folder / FILENAME).is_file():
            return _load_npz(folder / FILENAME)
        raise FileNotFoundError(
            f"{folder}: no MNIST test set found: expected {_IDX_FILES['x_test']}[.gz] and "
            f"{_IDX_FILES['y_test']}[.gz] (and optionally the train-* files), or {FILENAME}"
        )
    test = _check(load_idx(found["x_test"]), load_idx(found["y_test"]), "test", folder)
    if found["x_train"] is None and found["y_train"] is None:
        train = _empty()
    elif found["x_train"] is None or found["y_train"] is None:
        have, lack = ("x_train", "y_train") if found["x_train"] else ("y_train", "x_train")
        raise FileNotFoundError(
            f"{folder}: found {found[have].name} but not {_IDX_FILES[lack]}[.gz]; "
            f"provide both training files or neither"
        )
    else:
        train = _check(load_idx(found["x_train"]), load_idx(found["y_train"]), "train", folder)
    return train, test


def load_data(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
              base_url: str = DEFAULT_BASE_URL, *, sha256: str = SHA256):
    """Load MNIST as ``(x_train, y_train), (x_test, y_test)``.

    Images are uint8 arrays of shape ``[n, 28, 28]``, labels uint8 arrays of shape ``[n]``.

    ``path`` may be:

    * a Keras-style ``mnist.npz`` holding ``x_train``, ``y_train``, ``x_test``, ``y_test``;
    * a directory holding the original IDX files ``train-images-idx3-ubyte``,
      ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
      ``t10k-labels-idx1-ubyte``, each optionally gzip-compressed (``.gz``).
      **If the directory holds only the two t10k (test) files, the training arrays
      are returned empty**, with shapes ``(0, 28, 28)`` and ``(0,)``; split the
      10,000 test images yourself for quick experiments (e.g. first 8,000 to train,
      last 2,000 to test).

    Without ``path``, ``mnist.npz`` is downloaded from ``base_url`` (the Keras
    mirror by default), verified against its SHA-256, and cached under
    ``cache_dir`` (default ``$KCOMPILE_DATA`` or ``~/.kcompile/datasets``); a cached
    copy is reused without network access. ``sha256`` is the expected checksum of
    the file at ``base_url`` (override it only for a mirror serving other bytes). Raises
    :class:`~kcompile.datasets.DatasetUnavailable` when it cannot be downloaded.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            return _load_idx_dir(p)
        if p.is_file():
            return _load_npz(p)
        raise FileNotFoundError(f"MNIST path {p} does not exist (expected mnist.npz or a folder of IDX files)")
    url = base_url if base_url.endswith("/") else base_url + "/"
    local = fetch(url + FILENAME, FILENAME, sha256, cache_dir=cache_dir)
    return _load_npz(local)
