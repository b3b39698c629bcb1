"""benchmarks/survey.py: each case is the same model in kcompile and in Keras (as many weights,
of the same shapes), and a worker times a case (the full survey runs for minutes)."""
import importlib.util

import numpy as np
import pytest

import kcompile


@pytest.fixture(scope="module")
def survey(load_benchmark):
    return load_benchmark("survey")


def test_every_case_compiles(survey):
    for name in survey.NAMES:
        m = kcompile.compile_string(survey.kdl_source(name), seed=0)
        assert m.manifest["training"], name


@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in ("keras", "jax")), reason="Keras on JAX not installed")
def test_each_case_is_the_same_model_in_keras(survey, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    for name in survey.NAMES:
        ours = [w.shape for w in kcompile.compile_string(survey.kdl_source(name), seed=0).get_weights()]
        theirs = [tuple(w.shape) for w in survey.keras_model(name).get_weights()]
        assert sorted(ours) == sorted(theirs), name  # (weights in Keras's shapes; the orders of some layers differ)


def test_a_worker_times_a_case_in_a_process_of_its_own(survey):
    rows = survey.run("kcompile", ["mlp_sgd_nesterov"])
    assert set(rows) == {"mlp_sgd_nesterov"}
    assert 0 < rows["mlp_sgd_nesterov"]["ms"] < 1000


def test_random_ids_leave_padding_for_masks(survey):
    x, y = survey.data(("ids", 20, 50), 64)
    assert x.dtype == np.int64 and x.shape == (64, 20) and y.shape == (64, 10)
    assert (x[:, :10] > 0).all() and (x[:, 10:] == 0).any() and x.max() < 50
