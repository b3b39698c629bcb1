"""Keras (with JAX) for the tests that compare against it with copied weights; they skip where
it is not installed (it is a benchmark extra, not a test dependency)."""
import pytest


@pytest.fixture
def keras(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("Keras was imported with another backend")
    return keras
