"""benchmarks/survey.py: each case is the same model in kcompile and in Keras (as many weights,
of the same shapes), and a worker reports a case's time, or its error, as a JSON line (the full
survey runs for minutes)."""
import importlib.util
import json

import numpy as np
import pytest

import kcompile


@pytest.fixture(scope="module")
def survey(load_benchmark):
    return load_benchmark("survey")


def test_every_case_takes_its_input_and_gives_ten_classes(survey):
    for name in survey.NAMES:
        spec = (survey.CASES.get(name) or survey.FUNCTIONAL[name])[0]
        m = kcompile.compile_string(survey.kdl_source(name), seed=0)
        want = (spec[1],) if spec[0] == "ids" else tuple(spec)
        assert tuple(m.inputs[0].shape) == want, name
        assert tuple(m.outputs[0].shape) == (10,), name


@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in ("keras", "jax")), reason="Keras on JAX not installed")
def test_each_case_is_the_same_model_in_keras(survey, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    for name in survey.NAMES:
        ours = [w.shape for w in kcompile.compile_string(survey.kdl_source(name), seed=0).get_weights()]
        theirs = [tuple(w.shape) for w in survey.keras_model(name).get_weights()]
        assert sorted(ours) == sorted(theirs), name  # (weights in Keras's shapes; the orders of some layers differ)


def test_a_worker_reports_each_case_as_a_json_line_errors_included(survey, capsys):
    survey.worker("kcompile", ["nope"])
    row = json.loads(capsys.readouterr().out)
    assert row == {"case": "nope", "error": "KeyError: 'nope'"}


def test_the_parent_reads_a_worker_process_time(survey):
    rows = survey.run("kcompile", ["mlp_sgd_nesterov"])
    assert list(rows) == ["mlp_sgd_nesterov"] and set(rows["mlp_sgd_nesterov"]) == {"case", "ms"}
    assert rows["mlp_sgd_nesterov"]["ms"] > 0


def test_random_ids_leave_padding_for_masks(survey):
    x, y = survey.data(("ids", 20, 50), 64)
    assert x.dtype == np.int64 and x.shape == (64, 20) and y.shape == (64, 10)
    assert (x[:, :10] > 0).all() and (x[:, 10:] == 0).any() and x.max() < 50
    assert np.array_equal(y.sum(axis=1), np.ones(64))
