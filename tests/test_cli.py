"""The `kcompile` command line: check, summary, build, --help, exit codes; and a fuzz test
that no input, however malformed, makes the compiler crash."""
import contextlib
import importlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcompile.cli import main

MLP = """\
model {name} {{
    input image: float32[28, 28, 1]
    Flatten()
    Dense(512, activation=relu)
    probs = Dense(10, activation=softmax)
    output probs
}}
"""

BAD = """\
model bad {
    input x: float32[8]
    Dense(10, activaton=relu)
}
"""


def write(tmp_path: Path, text: str, name: str = "m.kdl") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- check ----
def test_check_valid_file_prints_nothing(tmp_path, capsys):
    assert main(["check", write(tmp_path, MLP.format(name="mlp"))]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_check_bad_file_prints_location_and_returns_1(tmp_path, capsys):
    path = write(tmp_path, BAD)
    assert main(["check", path]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}:3:15: error: Dense has no argument 'activaton'" in err
    assert "    Dense(10, activaton=relu)" in err
    assert "hint: did you mean activation?" in err
    assert "Traceback" not in err


def test_check_reports_every_error(tmp_path, capsys):
    path = write(tmp_path, "model m {\n    input x: float32[8]\n    a = Dense(2.5)(x)\n    b = Conv2d(3, 3)(x)\n}\n")
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:15: error:" in err and f"{path}:4:9: error:" in err
    assert err.rstrip().endswith("2 errors")


def test_check_syntax_error(tmp_path, capsys):
    path = write(tmp_path, "model m {\n    input x: float32[8]\n    Dense(10\n}\n")
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:4:1: error: unexpected '}}'" in err
    assert "hint: the '(' at line 3, column 10 is not closed" in err


def test_missing_file_is_a_clean_error(tmp_path, capsys):
    missing = str(tmp_path / "nope.kdl")
    for command in (["check", missing], ["summary", missing], ["build", missing, "-o", str(tmp_path)]):
        assert main(command) == 1
        out, err = capsys.readouterr()
        assert "no such file" in err and missing in err
        assert "Traceback" not in err and "internal error" not in err


def test_paths_that_are_not_what_they_should_be_are_said_in_words(tmp_path, capsys):
    source = str(Path(__file__).resolve().parents[1] / "examples" / "mnist_mlp.kdl")
    (tmp_path / "afile").write_text("")
    cases = [(["build", source, "-o", str(tmp_path / "afile" / "sub")],
              f"kcompile: error: {tmp_path / 'afile' / 'sub'}: a part of this path is a file, where a folder is needed"),
             (["train", source, "--data", str(tmp_path), "-o", str(tmp_path / "ck")],
              f"kcompile: error: {tmp_path}: it is a folder, where a file is needed")]
    for argv, message in cases:
        assert main(argv) == 1
        assert capsys.readouterr().err.strip() == message


def test_non_utf8_file_is_a_clean_error(tmp_path, capsys):
    path = tmp_path / "latin1.kdl"
    path.write_bytes(b"model m {\n  # caf\xe9\n}\n")
    assert main(["check", str(path)]) == 1
    assert "not UTF-8" in capsys.readouterr().err


# ---- summary ----
def test_summary_of_mnist_mlp(tmp_path, capsys):
    assert main(["summary", write(tmp_path, MLP.format(name="mnist_mlp"))]) == 0
    out = capsys.readouterr().out
    assert 'Model: "mnist_mlp"' in out
    assert "Total params: 407,050" in out
    assert "Trainable params: 407,050" in out
    assert "Non-trainable params: 0" in out
    rows = {line.split()[0]: line for line in out.splitlines() if "(" in line and ")" in line and line[0] != " "}
    assert "(None, 784)" in rows["flatten"]
    assert "(None, 512)" in rows["dense"] and "401,920" in rows["dense"]
    assert "(None, 10)" in rows["dense_1"] and "5,130" in rows["dense_1"]


def test_summary_selects_a_model(tmp_path, capsys):
    path = write(tmp_path, MLP.format(name="first") + MLP.format(name="second"))
    assert main(["summary", path, "--model", "second"]) == 0
    out = capsys.readouterr().out
    assert 'Model: "second"' in out and 'Model: "first"' not in out
    assert main(["summary", path, "--model", "thrid"]) == 1
    assert "has no model 'thrid'; it defines: first, second" in capsys.readouterr().err


def test_a_block_given_as_the_model_is_named_a_block(tmp_path, capsys):
    """(it said "has no model 'B'", as of a misspelled model)"""
    block = "block B(n: int) {\n    input h\n    output Dense(n)(h)\n}\n"
    path = write(tmp_path, block + MLP.format(name="first") + MLP.format(name="second"))
    assert main(["build", path, "--model", "B", "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: B is a block in {path}, which a model calls, not a model; " \
        "its models: first, second\n"
    path = write(tmp_path, block, "blocks.kdl")
    assert main(["build", path, "--model", "B", "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: B is a block in {path}, which a model calls, not a model; it " \
        "defines no model\nhint: define a model that calls it: model m { input x: float32[...]; B(...) }\n"


# ---- build ----
def test_build_writes_an_importable_package(tmp_path, capsys, monkeypatch):
    name = "cli_test_build_mlp"
    out_dir = tmp_path / "out"
    assert main(["build", write(tmp_path, MLP.format(name=name)), "-o", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"built {name} -> " in printed
    folder = out_dir / name
    for f in ("manifest.json", f"{name}.onnx", "weights.npz", "__init__.py", "source.kdl"):
        assert (folder / f).is_file(), f
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"] == name
    assert manifest["inputs"][0]["name"] == "image"
    assert sum(int(np.prod(p["shape"])) for p in manifest["parameters"]) == 407_050

    monkeypatch.syspath_prepend(str(out_dir))
    monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()
    try:
        mod = importlib.import_module(name)
        model = mod.load()
        x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
        probs = np.asarray(model.predict(x))
        assert probs.shape == (3, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    finally:
        sys.modules.pop(name, None)


def test_build_notes_a_model_name_that_cannot_import_as_its_package(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "out"))  # (the build itself, found there, is no clash)
    for name, note in [("json", "would hide the installed module json"), ("kcompile", "would hide"),
                       ("cli_test_plain_name", None), ("cli_test_plain_name", None)]:
        assert main(["build", write(tmp_path, MLP.format(name=name)), "-o", str(tmp_path / "out")]) == 0
        err = capsys.readouterr().err
        assert (note in err and "kcompile.load(" in err) if note else err == "", (name, err)


def test_build_notes_a_model_it_cannot_train_yet(tmp_path, capsys):
    source = write(tmp_path, """model m {
    input x: float32[T, 3]
    Conv1D(4, 3, strides=2)
    GlobalAveragePooling1D()
    y = Dense(1)
    train { loss = mse; optimizer = SGD() }
}
""")
    assert main(["build", source, "-o", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err.strip() == (
        "kcompile: note: model m is built for inference, but cannot be trained yet: gradient of a strided "
        "window over the named dimension T (give it a number to train this model)")


def test_build_quiet_and_opt_levels(tmp_path, capsys):
    path = write(tmp_path, MLP.format(name="cli_test_quiet"))
    for level in ("-O0", "-O1", "-O2"):
        assert main(["build", path, "-o", str(tmp_path / "o"), level, "-q", "--seed", "3"]) == 0
        assert capsys.readouterr().out == ""
    manifest = json.loads((tmp_path / "o" / "cli_test_quiet" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["opt_level"] == 2


def test_build_emit_ir_prints_the_graph(tmp_path, capsys):
    out_dir = tmp_path / "o"
    assert main(["build", write(tmp_path, MLP.format(name="cli_test_ir")), "--emit", "ir", "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "graph cli_test_ir {" in out
    assert "%image: float32[N, 28, 28, 1]" in out
    assert not (out_dir / "cli_test_ir").exists()


def test_build_bad_file_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "o"
    assert main(["build", write(tmp_path, BAD), "-o", str(out_dir)]) == 1
    assert ":3:15: error:" in capsys.readouterr().err
    assert not (out_dir / "bad").exists()


# ---- help ----
def help_text(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help(capsys):
    text = help_text(["--help"], capsys)
    for word in ("check", "summary", "build", "--version", "--help", "exit status"):
        assert word in text


@pytest.mark.parametrize("command,options", [
    ("check", ["FILE"]),
    ("summary", ["FILE", "--model"]),
    ("build", ["FILE", "-o", "--output", "--model", "-O0", "-O1", "-O2", "--emit", "--seed", "--report",
               "-q", "--quiet"]),
])
def test_subcommand_help_mentions_every_option(command, options, capsys):
    text = help_text([command, "--help"], capsys)
    for option in options + ["--help"]:
        assert re.search(rf"(^|[\s\[,]){re.escape(option)}\b", text), (option, text)


def test_version(capsys):
    text = help_text(["--version"], capsys)
    assert text.startswith("kcompile ")


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "usage: kcompile" in capsys.readouterr().out


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["build"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    capsys.readouterr()


# ---- fuzz: malformed input never crashes the compiler ----
# The six programs of the language spec (docs: "the look we want").
SPEC_EXAMPLES = [
    """model mnist_mlp {
    input image: float32[28, 28, 1]

    Flatten()
    Dense(512, activation=relu)
    probs = Dense(10, activation=softmax)

    output probs

    train {
        loss      = categorical_crossentropy
        optimizer = RMSprop(learning_rate=0.001)
        metrics   = [accuracy]
    }
}
""",
    """model mnist_cnn {
    input image: float32[28, 28, 1]
    Conv2D(32, (3, 3), activation=relu)
    MaxPooling2D((2, 2))
    Conv2D(64, (3, 3), activation=relu)
    MaxPooling2D((2, 2))
    Flatten()
    Dense(128, activation=relu)
    Dropout(0.5)
    probs = Dense(10, activation=softmax)
    output probs
    train {
        loss      = categorical_crossentropy
        optimizer = Adam()
        metrics   = [accuracy]
    }
}
""",
    """model two_heads {
    input image: float32[32, 32, 3]
    input meta:  float32[8]
    stem = Conv2D(32, 3, padding=same, activation=relu)(image)
    h    = Conv2D(32, 3, padding=same)(stem)
    h    = relu(stem + h)
    h    = GlobalAveragePooling2D()(h)
    layer embed = Dense(32, activation=relu)
    m1    = embed(meta)
    m2    = embed(meta * 2.0)
    joint = concat(h, m1, m2, axis=-1)
    kind  = Dense(5, activation=softmax)(joint)
    score = Dense(1)(joint)
    output kind, score
    train {
        loss      = categorical_crossentropy(kind) + 0.5 * mse(score)
        optimizer = SGD(learning_rate=0.01, momentum=0.9)
        metrics   = [accuracy(kind), mae(score)]
    }
}
""",
    """block Residual(filters: int) {
    input x
    h = Conv2D(filters, 3, padding=same, activation=relu)(x)
    h = Conv2D(filters, 3, padding=same)(h)
    output relu(x + h)
}

block Scale(units: int) {
    input x
    weight gamma: [units] = ones
    output x * gamma
}

model tiny_resnet {
    input image: float32[28, 28, 1]
    Conv2D(16, 3, padding=same, activation=relu)
    Residual(16)
    Residual(16)
    GlobalAveragePooling2D()
    Scale(16)
    logits = Dense(10)
    output logits
    train {
        target label: int64[]
        loss      = (mean(sparse_categorical_crossentropy(label, logits, from_logits=true))
                     + 1e-4 * l2(weights))
        optimizer = AdamW(learning_rate=3e-4, weight_decay=0.01)
        metrics   = [accuracy(label, logits)]
    }
}
""",
    """model sentiment {
    input tokens: int64[100]
    Embedding(20000, 128)
    LSTM(64)
    Dropout(0.2)
    probs = Dense(1, activation=sigmoid)
    output probs
    train {
        loss      = binary_crossentropy
        optimizer = Adam(learning_rate=1e-3)
        metrics   = [accuracy]
    }
}
""",
    """model generator {
    input z: float32[100]
    Dense(7 * 7 * 128, activation=relu)
    Reshape((7, 7, 128))
    Conv2DTranspose(64, 4, strides=2, padding=same, activation=relu)
    fake = Conv2DTranspose(1, 4, strides=2, padding=same, activation=sigmoid)
    output fake
}

model discriminator {
    input image: float32[28, 28, 1]
    Conv2D(64, 4, strides=2, padding=same)
    LeakyReLU(0.2)
    Flatten()
    real = Dense(1, activation=sigmoid)
    output real
    train {
        loss      = binary_crossentropy
        optimizer = Adam(learning_rate=2e-4, beta_1=0.5)
    }
}

model gan {
    input z: float32[100]
    real = discriminator(generator(z), trainable=false)
    output real
    train {
        loss      = binary_crossentropy
        optimizer = Adam(learning_rate=2e-4, beta_1=0.5)
    }
}
""",
]

@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.kdl"

# Pieces that are likely to reach the elaborator rather than stop in the lexer.
_SNIPPETS = ["model", "block", "input", "output", "weight", "layer", "train", "target", "(", ")", "{", "}",
             "[", "]", ",", "=", ":", ";", "\n", "+", "-", "*", "/", "0", "-1", "2.5", "1e9", "x", "h",
             "true", "\"s\"", "relu", "float32", "int64", "Dense(3)", "Conv2D(4, 3)", "Flatten()",
             "Reshape((2, -1))", "concat(", "axis=0", "trainable=false", "@", "#", "\\\n"]


@st.composite
def mutated_program(draw):
    text = draw(st.sampled_from(SPEC_EXAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "snippet"]))
        if kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 10)):]
        elif kind == "insert":
            text = text[:i] + draw(st.text(min_size=1, max_size=3)) + text[i:]
        elif kind == "duplicate":
            j = draw(st.integers(0, len(text)))
            text = text[:i] + text[j:j + draw(st.integers(1, 40))] + text[i:]
        else:
            text = text[:i] + draw(st.sampled_from(_SNIPPETS)) + text[i:]
    return text


def _check_never_crashes(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["check", str(path)])
    assert rc in (0, 1), (rc, err.getvalue(), text)
    if rc == 1:
        assert err.getvalue().strip(), text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_program())
def test_check_never_crashes_on_mutated_spec_programs(fuzz_file, text):
    _check_never_crashes(fuzz_file, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(_SNIPPETS + [" ", "m", "Dense", "Conv2D"]), max_size=40).map("".join),
    st.lists(st.sampled_from(_SNIPPETS), max_size=30).map(lambda xs: "model m {\n input x: float32[8]\n"
                                                                     + " ".join(xs) + "\n}\n"),
))
def test_check_never_crashes_on_random_text(fuzz_file, text):
    _check_never_crashes(fuzz_file, text)


def test_spec_examples_are_valid(tmp_path, capsys):
    for i, text in enumerate(SPEC_EXAMPLES):
        assert main(["check", write(tmp_path, text, f"spec{i}.kdl")]) == 0, capsys.readouterr().err


def test_build_report_says_what_each_pass_changed(tmp_path, capsys):
    """Node counts before and after each pass; "rewritten" where a pass changed nodes but not their
    number (it said "no change" there: pool-before-activation swaps the pool and the ReLU)."""
    assert main(["build", str(Path(__file__).resolve().parents[1] / "examples" / "mnist_cnn.kdl"),
                 "-o", str(tmp_path), "--report"]) == 0
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ")}
    assert lines["remove-dropout"] == "26 -> 25 (-1)" and lines["constant-folding"] == "no change"
    assert lines["train-forward:pool-before-activation"] == "25 nodes, rewritten"
