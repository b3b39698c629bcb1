"""kcompile.utils.to_categorical, against explicit arrays."""
import numpy as np
import pytest

from kcompile.utils import to_categorical


def test_basic_infers_num_classes():
    out = to_categorical([0, 2, 1])
    np.testing.assert_array_equal(out, np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], np.float32))
    assert out.dtype == np.float32


def test_explicit_num_classes_and_dtype():
    out = to_categorical(np.array([1, 0]), num_classes=4, dtype="int64")
    np.testing.assert_array_equal(out, np.array([[0, 1, 0, 0], [1, 0, 0, 0]]))
    assert out.dtype == np.int64


def test_trailing_singleton_dimension_is_squeezed():
    out = to_categorical(np.array([[1], [0], [2]]), 3)
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out, np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32))


def test_multi_dimensional_labels():
    y = np.array([[0, 1], [2, 0]])
    out = to_categorical(y, 3)
    assert out.shape == (2, 2, 3)
    expected = np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [1, 0, 0]]], np.float32)
    np.testing.assert_array_equal(out, expected)


def test_non_trailing_singleton_is_kept():
    out = to_categorical(np.array([[0, 1]]), 2)  # shape (1, 2): last dim is not 1
    assert out.shape == (1, 2, 2)
    np.testing.assert_array_equal(out, np.array([[[1, 0], [0, 1]]], np.float32))


def test_scalar_and_1x1():
    np.testing.assert_array_equal(to_categorical(2, 3), np.array([0, 0, 1], np.float32))
    assert to_categorical(np.array([[1]]), 2).shape == (1, 2)


def test_integer_valued_floats_and_uint8():
    np.testing.assert_array_equal(to_categorical(np.array([1.0, 0.0])), np.array([[0, 1], [1, 0]], np.float32))
    np.testing.assert_array_equal(to_categorical(np.array([3], np.uint8)), np.array([[0, 0, 0, 1]], np.float32))


def test_empty_with_num_classes():
    out = to_categorical(np.array([], dtype=np.int64), 5)
    assert out.shape == (0, 5)


def test_negative_label():
    with pytest.raises(ValueError, match="non-negative"):
        to_categorical([0, -1, 2])


def test_label_too_large():
    with pytest.raises(ValueError, match=r"label 3 is out of range for num_classes=3"):
        to_categorical([0, 3], num_classes=3)


def test_non_integer_labels():
    with pytest.raises(ValueError, match="integer"):
        to_categorical([0.5, 1.0])
    with pytest.raises(ValueError, match="integer"):
        to_categorical(["a", "b"])


def test_bad_num_classes():
    with pytest.raises(ValueError):
        to_categorical([0], num_classes=0)
    with pytest.raises(ValueError):
        to_categorical([], num_classes=None)
