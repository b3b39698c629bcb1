"""benchmarks/survey.py: each case is the same model in kcompile and in Keras (as many weights,
of the same shapes) and, where torch has a faithful counterpart, in PyTorch (as many trainable
weights, torch's known extra RNN bias apart); a worker reports a case's time, or its error, as
a JSON line (the full survey runs for minutes)."""
import importlib.util
import json
import re

import numpy as np
import pytest

import kcompile

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
WITHOUT_TWIN = {"mlp_lion", "gru_reset_before", "gru_dropout", "lstm_dropout", "masked_lstm", "masked_gru"}


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


def test_the_predict_survey_times_a_predict_of_its_rows(survey, monkeypatch):
    """--predict: a worker process times predict; each predict takes PREDICT_ROWS rows at once,
    two to warm up and five timed."""
    rows = survey.run("kcompile", ["time_distributed"], predict=True)
    assert set(rows["time_distributed"]) == {"case", "ms"} and rows["time_distributed"]["ms"] > 0
    seen = []
    monkeypatch.setattr(survey, "PREDICT_ROWS", 8)
    monkeypatch.setattr(kcompile.runtime.model.Model, "predict",
                        lambda self, x, batch_size=None, **kw: seen.append((len(x), batch_size)))
    assert survey.time_predict("kcompile", "cnn_strided") >= 0
    assert set(seen) == {(8, 8)} and len(seen) == 7  # (two to warm up, five timed)


def test_a_case_where_kcompile_is_slower_runs_recheck_rounds_more(survey, monkeypatch, tmp_path, capsys):
    """A case where kcompile's best is above the faster peer's runs --recheck rounds more and keeps
    each framework's best over all its rounds; a case where kcompile is faster runs --rounds only."""
    times = {("kcompile", "mlp_rmsprop"): [5.0, 9.0], ("keras_jax", "mlp_rmsprop"): [6.0, 9.0],
             ("kcompile", "mlp_adamw"): [9.0, 4.0], ("keras_jax", "mlp_adamw"): [8.0, 7.0]}
    calls = []

    def fake_run(fw, names, predict=False):
        calls.append((fw, names[0]))
        return {names[0]: {"case": names[0], "ms": times[fw, names[0]].pop(0)}}
    monkeypatch.setattr(survey, "run", fake_run)
    monkeypatch.setattr("sys.argv", ["survey.py", "--cases", "mlp_rmsprop,mlp_adamw",
                                     "--json", str(tmp_path / "s.json")])
    monkeypatch.setattr(survey, "installed_frameworks", lambda: ["kcompile", "keras_jax"])
    survey.main()
    rows = {r["case"]: r for r in json.loads((tmp_path / "s.json").read_text())["cases"]}
    assert calls.count(("kcompile", "mlp_rmsprop")) == 1 and calls.count(("kcompile", "mlp_adamw")) == 2
    assert rows["mlp_rmsprop"]["rounds"] == 1 and rows["mlp_adamw"]["rounds"] == 2
    assert rows["mlp_adamw"]["kcompile_ms"] == 4.0 and rows["mlp_adamw"]["keras_jax_ms"] == 7.0
    assert rows["mlp_adamw"]["ratio"] == pytest.approx(7.0 / 4.0)
    assert "1 case(s) slower than the faster peer" in capsys.readouterr().out


def test_random_ids_leave_padding_for_masks(survey):
    x, y = survey.data(("ids", 20, 50), 64)
    assert x.dtype == np.int64 and x.shape == (64, 20) and y.shape == (64, 10)
    assert (x[:, :10] > 0).all() and (x[:, 10:] == 0).any() and x.max() < 50
    assert np.array_equal(y.sum(axis=1), np.ones(64))


def _spec(survey, name):
    return (survey.CASES.get(name) or survey.FUNCTIONAL[name])[0]


def _twins(survey):
    return [name for name in survey.NAMES if name not in WITHOUT_TWIN]


@needs_torch
def test_every_torch_twin_takes_its_cases_input_and_gives_ten_logits(survey):
    import torch
    for name in _twins(survey):
        net, opt = survey.torch_model(name)
        x, y = survey.torch_inputs(_spec(survey, name), *survey.data(_spec(survey, name), 4))
        assert x.dtype == (torch.int64 if _spec(survey, name)[0] == "ids" else torch.float32), name
        assert tuple(net(x).shape) == (4, 10) and tuple(y.shape) == (4, 10), name
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}, name
        for m in net.modules():  # Keras's constants
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                assert (m.eps, m.momentum) == (1e-3, 0.01), name
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                assert m.eps == 1e-3, name
    x = survey.torch_inputs(survey.RGB, survey.data(survey.RGB, 2)[0])
    assert tuple(x.shape) == (2, 3, 32, 32) and x.is_contiguous()  # (channels-first, as torch's convolutions)


def _keras_grouped_sizes(net):
    """The sizes of a twin's parameters grouped as Keras's weights: torch's two GRU biases one
    weight (Keras's GRU bias is [2, 3 units]), MultiheadAttention's packed query/key/value
    projection three, and torch's second LSTM/SimpleRNN bias (b_hh; Keras's have one) apart."""
    from torch import nn
    sizes, extra = [], 0
    for m in net.modules():
        for name, p in m.named_parameters(recurse=False):
            if isinstance(m, (nn.LSTM, nn.RNN)) and name.startswith("bias_hh"):
                extra += p.numel()
            elif isinstance(m, nn.GRU) and name.startswith("bias_"):
                sizes += [2 * p.numel()] if name.startswith("bias_ih") else []
            elif isinstance(m, nn.MultiheadAttention) and name.startswith("in_proj"):
                sizes += [p.numel() // 3] * 3
            else:
                sizes.append(p.numel())
    return sorted(sizes), extra


@needs_torch
def test_each_torch_twin_has_kcompiles_trainable_weights(survey):
    from torch import nn
    extras = {}
    for name in _twins(survey):
        m = kcompile.compile_string(survey.kdl_source(name), seed=0)
        ours = [tuple(p["shape"]) for p in m.manifest["parameters"] if p["trainable"]]  # (no moving mean/variance)
        net = survey.torch_model(name)[0]
        sizes, extras[name] = _keras_grouped_sizes(net)
        assert sizes == sorted(int(np.prod(s)) for s in ours), name
        assert sum(p.numel() for p in net.parameters()) == sum(sizes) + extras[name], name
        for rnn in (r for r in net.modules() if isinstance(r, nn.RNNBase)):  # the kernels, [in, gates x units] in Keras
            for weight in (p for n, p in rnn.named_parameters() if n.startswith("weight_")):
                assert tuple(weight.T.shape) in ours, name
    # the known difference: torch's second bias, 4 x 64 for each LSTM(64), 64 for SimpleRNN(64)
    assert {n: e for n, e in extras.items() if e} == {"lstm": 256, "lstm_stacked": 512, "simple_rnn": 64}


def test_the_cases_without_a_torch_twin_are_those_named_each_with_its_reason(survey):
    without = {name: survey.no_torch_twin(name) for name in survey.NAMES if survey.no_torch_twin(name)}
    assert set(without) == WITHOUT_TWIN
    assert "Lion" in without["mlp_lion"] and "reset_after" in without["gru_reset_before"]
    assert all("recurrent_dropout" in without[n] for n in ("gru_dropout", "lstm_dropout"))
    assert all("mask" in without[n] for n in ("masked_lstm", "masked_gru"))


@needs_torch
def test_no_twin_is_built_for_them_even_unlisted(survey, monkeypatch):
    for name in WITHOUT_TWIN:
        with pytest.raises(survey.NoTwin, match=re.escape(survey.no_torch_twin(name))):
            survey.torch_model(name)
    monkeypatch.setattr(survey, "NO_TWIN", {})  # the mapping itself refuses their options
    for name in WITHOUT_TWIN:
        with pytest.raises(survey.NoTwin):
            survey.torch_model(name)


@needs_torch
def test_a_torch_worker_reports_a_case_time_and_its_errors_as_json_lines(survey, capsys):
    survey.worker("torch", ["nope", "mlp_lion"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"case": "nope", "error": "KeyError: 'nope'"},
                    {"case": "mlp_lion", "error": f"NoTwin: {survey.no_torch_twin('mlp_lion')}"}]
    rows = survey.run("torch", ["mlp_sgd_nesterov"])
    assert list(rows) == ["mlp_sgd_nesterov"] and set(rows["mlp_sgd_nesterov"]) == {"case", "ms"}
    assert rows["mlp_sgd_nesterov"]["ms"] > 0
    assert survey.time_predict("torch", "cnn_strided") > 0


def test_every_case_predicts_the_same_through_its_folded_graph_as_with_weights_as_inputs(survey):
    """predict's folded graph (weights as constants, rewritten for the CPU session: 1-D maps in one
    row, global pools, onnxruntime's blocking) against the graph reading the weights as inputs,
    which the first predict after new weights runs: the same outputs for all 31 models."""
    for name in survey.NAMES:
        spec = (survey.CASES.get(name) or survey.FUNCTIONAL[name])[0]
        x, _ = survey.data(spec, 64, seed=3)
        model = kcompile.compile_string(survey.kdl_source(name), seed=1)
        folded = model.predict(x, batch_size=64)
        model.set_weights(model.get_weights())
        np.testing.assert_allclose(model.predict(x, batch_size=64), folded, atol=2e-6, err_msg=name)
