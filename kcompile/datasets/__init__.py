"""Small data sets for examples and tests, Keras-style.

* :mod:`~kcompile.datasets.mnist` -- handwritten digits 28x28; downloaded (and cached) or
  read from a local ``mnist.npz`` / IDX folder.
* :mod:`~kcompile.datasets.iris` -- Fisher's iris, embedded (no download).
* :mod:`~kcompile.datasets.digits` -- the 8x8 UCI digits, from scikit-learn's copy or a
  local file.

Example::

    from kcompile.datasets import mnist
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
"""
from . import digits, iris, mnist
from ._download import ChecksumMismatch, DatasetUnavailable, default_cache_dir, fetch

__all__ = ["mnist", "iris", "digits", "fetch", "DatasetUnavailable", "ChecksumMismatch",
           "default_cache_dir"]
