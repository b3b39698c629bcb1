"""The 8x8 optical-recognition handwritten digits (UCI, Alpaydin & Kaynak), 1,797 images.

The data is not shipped with kcompile. It is read from scikit-learn's copy
(``sklearn/datasets/data/digits.csv.gz``) when scikit-learn is installed, without
importing scikit-learn, or from a file you pass with ``path=``: a CSV (optionally
gzip-compressed) with 65 comma-separated numbers per row, 64 pixel counts 0..16
row-major then the label 0..9 -- the format of scikit-learn's ``digits.csv.gz`` and
of UCI's ``optdigits.tra`` / ``optdigits.tes``.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from ._download import DatasetUnavailable

__all__ = ["load_data", "sklearn_data_file"]


def sklearn_data_file() -> Path | None:
    """The path of scikit-learn's ``digits.csv.gz`` if scikit-learn is installed, else None."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if p.is_file():
            return p
    return None


def _read(path: Path) -> np.ndarray:
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot parse as a digits CSV ({e})") from e
    return table


def load_data(path: str | os.PathLike | None = None):
    """Return ``(x, y)``: float32 images ``[n, 8, 8]`` with values 0..16, int64 labels ``[n]``.

    With scikit-learn's copy, ``n`` is 1,797. Raises
    :class:`~kcompile.datasets.DatasetUnavailable` when no ``path`` is given and
    scikit-learn is not installed.
    """
    if path is None:
        src = sklearn_data_file()
        if src is None:
            raise DatasetUnavailable(
                "the 8x8 digits data set is not available: kcompile does not ship it, and it is "
                "read from scikit-learn's copy, but scikit-learn is not installed. Install it "
                "(`pip install scikit-learn`), or pass a local file with path= to a digits.csv "
                "or digits.csv.gz (65 comma-separated numbers per row: 64 pixels then the label)."
            )
    else:
        src = Path(path).expanduser()
        if not src.is_file():
            raise FileNotFoundError(f"digits file {src} does not exist")
    table = _read(src)
    if table.shape[1] != 65:
        raise ValueError(f"{src}: expected 65 columns (64 pixels + label), got {table.shape[1]}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.size and (pixels.min() < 0 or pixels.max() > 16):
        raise ValueError(f"{src}: pixel values must lie in 0..16, got {pixels.min()}..{pixels.max()}")
    if labels.size and (np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{src}: labels must be integers 0..9")
    return pixels.reshape(-1, 8, 8).astype(np.float32), labels.astype(np.int64)
