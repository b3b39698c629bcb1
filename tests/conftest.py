"""Fixtures shared across the test folders."""
import pytest


@pytest.fixture
def turns():
    """The process's turn-taking detector (runtime/devices.py), fresh: other tests' models took
    turns too. Put back to fresh afterwards."""
    from kcompile.runtime.devices import TURNS
    TURNS.reset()
    yield TURNS
    TURNS.reset()


@pytest.fixture
def taking_turns(turns):
    """As if this process's sessions had been seen taking turns: sessions are made to stop
    spinning after each run from the start, and never rebuilt for it."""
    turns.seen = True
    return turns


@pytest.fixture
def keras(monkeypatch):
    """Keras on JAX, for the tests that compare against it with copied weights; they skip where
    it is not installed (a benchmark extra, not a test dependency)."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("Keras was imported with another backend")
    return keras
