"""The parser: what it accepts, the AST and locations it builds, and its syntax errors."""
import pytest

from kcompile.errors import KcompileError
from kcompile.frontend import ast
from kcompile.frontend.parser import parse


def syntax_error(source: str):
    with pytest.raises(KcompileError) as info:
        parse(source, "t.kdl")
    assert len(info.value.diagnostics) == 1
    return info.value.diagnostics[0]


def body(source: str):
    (model,) = parse(source, "t.kdl").definitions
    return model.body


# ---- what parses ----
def test_sequential_model_ast_and_locations():
    module = parse("model m {\n    input x: float32[28, 28, 1]\n    Flatten()\n"
                   "    probs = Dense(10, activation=softmax)\n    output probs\n}\n", "t.kdl")
    (m,) = module.definitions
    assert isinstance(m, ast.Model) and m.name == "m"
    assert (m.loc.line, m.loc.col) == (1, 7)
    inp, flat, assign, out = m.body
    assert isinstance(inp, ast.InputDecl) and inp.type.dtype == "float32"
    assert [d.value for d in inp.type.dims] == [28, 28, 1]
    assert isinstance(flat, ast.ExprStmt) and (flat.loc.line, flat.loc.col) == (3, 5)
    assert isinstance(assign, ast.Assign) and assign.name == "probs"
    call = assign.expr
    assert isinstance(call, ast.Call) and call.func.id == "Dense"
    assert (call.loc.line, call.loc.col, call.loc.length) == (4, 13, 5)
    assert [a.value for a in call.args] == [10]
    assert call.kwargs[0].name == "activation" and call.kwargs[0].value.id == "softmax"
    assert (call.kwargs[0].loc.line, call.kwargs[0].loc.col) == (4, 23)
    assert isinstance(out, ast.OutputDecl) and out.exprs[0].id == "probs"


def test_newlines_inside_brackets_continue_the_line():
    stmts = body("model m {\n    input x: float32[\n        8,\n    ]\n    Dense(\n        10,\n"
                 "        activation=relu,\n    )\n}\n")
    assert len(stmts) == 2
    assert stmts[1].expr.kwargs[0].name == "activation"


def test_semicolons_comments_and_line_continuation():
    stmts = body("# header\nmodel m {  # a model\n    input x: float32[8]; Dense(3)  # two statements\n"
                 "    h = x + \\\n        x\n}\n")
    assert [type(s).__name__ for s in stmts] == ["InputDecl", "ExprStmt", "Assign"]


def test_numbers_strings_booleans_and_operators():
    (stmt,) = body("model m {\n    y = f(1, 2.5, .5, 1e-4, 3E2, \"a\\tb\", 'q', true, false, -2, (1, 2), [3], (4,))\n}\n")
    args = stmt.expr.args
    assert [type(a).__name__ for a in args] == ["Number"] * 5 + ["String", "String", "Bool", "Bool", "Neg",
                                                                  "Tuple", "List", "Tuple"]
    assert [a.value for a in args[:5]] == [1, 2.5, 0.5, 1e-4, 300.0]
    assert isinstance(args[0].value, int)
    assert args[5].value == "a\tb" and args[6].value == "q"
    assert args[7].value is True and args[8].value is False
    assert len(args[10].items) == 2 and len(args[12].items) == 1


def test_precedence():
    (stmt,) = body("model m {\n    y = a + b * c - d / e\n}\n")
    e = stmt.expr
    assert e.op == "-" and e.left.op == "+" and e.left.right.op == "*" and e.right.op == "/"


def test_block_with_params_defaults_and_weight():
    module = parse("block Scale(units: int, eps: float = 1e-3) {\n    input x\n"
                   "    weight gamma: [units] = ones\n    output x * gamma\n}\n", "t.kdl")
    (b,) = module.definitions
    assert isinstance(b, ast.Block) and [p.name for p in b.params] == ["units", "eps"]
    assert b.params[1].type == "float" and b.params[1].default.value == 1e-3
    assert isinstance(b.body[1], ast.WeightDecl) and b.body[1].name == "gamma"


def test_keywords_are_names_where_a_name_is_expected():
    # the contextual lexer lets a model be called `input`
    (m,) = parse("model input {\n    input x: float32[8]\n}\n", "t.kdl").definitions
    assert m.name == "input"


def test_train_section():
    stmts = body("model m {\n    input x: float32[8]\n    train {\n        target y: int64[]\n"
                 "        loss = mse\n    }\n}\n")
    assert isinstance(stmts[1], ast.Train)


def test_empty_file_and_crlf():
    assert parse("", "t.kdl").definitions == []
    (m,) = parse("model m {\r\n    input x: float32[8]\r\n}\r\n", "t.kdl").definitions
    assert len(m.body) == 1


def test_a_byte_order_mark_is_read_past():
    """(Windows editors start a UTF-8 file with one: it was "1:1: unexpected character '\\ufeff'")"""
    (m,) = parse("\ufeffmodel m {\n    input x: float32[8]\n}\n", "t.kdl").definitions
    assert (m.loc.line, m.loc.col) == (1, 7)
    d = syntax_error("\ufeffmodel m@ {\n}\n")
    assert (d.loc.line, d.loc.col) == (1, 8) and d.message == "unexpected character '@'"
    assert d.render().splitlines()[1:3] == ["    model m@ {", "    " + " " * 7 + "^"]


# ---- syntax errors: position, message, hint ----
@pytest.mark.parametrize("source,line,col,message,hint", [
    ("model m {\n    Dense(10\n}\n", 3, 1, "unexpected '}'; expected ')' or ','", "'(' at line 2, column 10"),
    ("model m {\n    Dense(10, activation=relu\n", 2, 30, "unexpected end of file", "'(' at line 2, column 10"),
    ("model m {\n    x = [1, 2\n}\n", 3, 1, "unexpected '}'", "'[' at line 2, column 9"),
    ("model m {\n", 1, 10, "unexpected end of file", "'{' at line 1, column 9"),
    ("model m {\n    h = 3 @ 4\n}\n", 2, 11, "unexpected character '@'", None),
    ("model m {\n    h = 3 % 4\n}\n", 2, 11, "unexpected character '%'", None),
    ("model m {\n    h = caf\u00e9\n}\n", 2, 12, "unexpected character '\u00e9'", None),
    ("model m {\n    h = 'abc\n}\n", 2, 9, "unterminated string", "close it with '"),
    ("model m {\n    h =\n}\n", 2, 8, "unexpected end of line; expected a value", "must follow '='"),
    ("model m {\n    h = 1.2.3\n}\n", 2, 9, "invalid number '1.2.3'", None),
    ("model m {\n    h = 3x\n}\n", 2, 9, "invalid number '3x'", None),
    ("model m {\n    layer = Dense(3)\n}\n", 2, 11, "unexpected '='; expected a name", "layer is a keyword"),
    ("model m {\n    weight = 3\n}\n", 2, 12, "unexpected '='", "weight is a keyword"),
    ("model m {\n    block = 3\n}\n", 2, 5, "unexpected keyword 'block'", "block is a keyword"),
    ("model m {\n    train = 3\n}\n", 2, 11, "unexpected '='; expected '{'", "train is a keyword"),
    ("model m {\n    output\n}\n", 2, 11, "unexpected end of line; expected a value", None),
    ("model m\n{\n}\n", 1, 8, "unexpected end of line; expected '{'", None),
    ("model m {\n    input x: float32[8]\n}\n}\n", 4, 1, "expected 'block', 'model' or end of file",
     "no matching opening bracket"),
    ("block B(n: int {\n}\n", 1, 16, "unexpected '{'", "'(' at line 1, column 8"),
    ("model m {\n    Dense(10,, 3)\n}\n", 2, 14, "unexpected ','; expected a value", None),
])
def test_syntax_errors(source, line, col, message, hint):
    d = syntax_error(source)
    assert (d.loc.line, d.loc.col) == (line, col), d.render()
    assert message in d.message, d.render()
    if hint is None:
        assert d.hint is None or d.hint, d.render()
    else:
        assert d.hint and hint in d.hint, d.render()
    assert d.render().startswith(f"t.kdl:{line}:{col}: error: ")


TOP_LEVEL = "; expected ';', 'block', 'model', end of file or end of line"


@pytest.mark.parametrize("source, line, col, message, hint", [
    # (a misspelled keyword was told to "separate two statements with a new line or ';'")
    ("mdoel m {\n}\n", 1, 1, "unexpected 'mdoel'" + TOP_LEVEL, "did you mean model?"),
    ("blokc B() {\n}\n", 1, 1, "unexpected 'blokc'" + TOP_LEVEL, "did you mean block?"),
    ("Model m {\n}\n", 1, 1, "unexpected 'Model'" + TOP_LEVEL, "did you mean model?"),
    ("Dense(3)\n", 1, 1, "unexpected 'Dense'" + TOP_LEVEL,
     "a file holds models and blocks; statements go inside one: model name { ... }"),
    ("model m {\n    ouput x\n}\n", 2, 11, "unexpected 'x'", "did you mean output?"),
    ("model m {\n    trian {\n    }\n}\n", 2, 11, "unexpected '{'", "did you mean train?"),
    # (an empty argument was told "the '(' at line 2, column 10 is not closed")
    ("model m {\n    Dense(3,, 4)\n}\n", 2, 13, "unexpected ','; expected a value or ')'",
     "an argument is missing between the two commas"),
    ("model m {\n    Dense(,3)\n}\n", 2, 11, "unexpected ','; expected a value or ')'",
     "an argument is missing before the ','"),
    ("model m {\n    Reshape((2,,2))\n}\n", 2, 16, "unexpected ','; expected a value or ')'",
     "a value is missing between the two commas"),
    ("block B(n: int,, k: int) {\n}\n", 1, 16, "unexpected ','; expected ')' or a name",
     "a parameter is missing between the two commas"),
])
def test_hints_name_the_likely_mistake(source, line, col, message, hint):
    d = syntax_error(source)
    assert ((d.loc.line, d.loc.col), d.message, d.hint) == ((line, col), message, hint)


def test_expected_tokens_are_words_not_terminal_names():
    d = syntax_error("model m {\n    input x float32[8]\n}\n")
    assert d.message == "unexpected 'float32'; expected ':', ';', '}' or end of line"
    for internal in ("NAME", "_NL", "RBRACE", "$END", "__"):
        assert internal not in d.message


def test_string_with_bracket_does_not_confuse_unclosed_hint():
    d = syntax_error("model m {\n    Dense(3, activation=\"(\"\n}\n")
    assert d.hint == "the '(' at line 2, column 10 is not closed"
    d = syntax_error("model m {  # (\n    Dense(3\n}\n")
    assert d.hint == "the '(' at line 2, column 10 is not closed"


def test_syntax_error_caret_spans_the_token():
    d = syntax_error("model m {\n    h = Dense(10)(x) Dense(3)\n}\n")
    lines = d.render().splitlines()
    assert lines[1] == "        h = Dense(10)(x) Dense(3)"
    assert lines[2] == "    " + " " * 21 + "^~~~~"


def test_math_functions_on_numbers_fold_at_compile_time():
    import numpy as np
    import kcompile
    m = kcompile.compile_string("""
block Scaled(dim: int) {
    input x
    output x / sqrt(dim) + square(2) + maximum(1, 3)
}
model m {
    input x: float32[4]
    y = Scaled(16)(x)
    output y
}""")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(m.predict(x), x / 4 + 4 + 3, rtol=1e-6)


def test_long_expressions_compile_to_the_nesting_limit_and_are_refused_past_it():
    """395 terms (400 levels of the parse tree) compile, train and give their sum; 500 are a
    located error, where they were a RecursionError."""
    import numpy as np

    import kcompile
    program = "model m {{\n    input x: float32[2]\n    y = {}\n    output y\n    train {{\n        loss = mse\n" \
              "        optimizer = SGD()\n    }}\n}}\n"
    m = kcompile.compile_string(program.format(" + ".join(["x"] * 395)))
    x = np.array([[1.0, -2.0]], np.float32)
    np.testing.assert_allclose(m.predict(x), 395 * x)
    m.fit(x, x, verbose=0)
    with pytest.raises(KcompileError, match=r"<string>:3:5: error: the expression nests too deeply"):
        parse(program.format(" + ".join(["x"] * 500)))


def test_the_train_section_takes_kerass_string_forms():
    """loss = "mse", optimizer = "adam" (any case), metrics = ["accuracy"] mean what the bare
    names do, as in Keras's compile(); they were refused."""
    import numpy as np

    import kcompile
    program = "model m {{\n    input x: float32[4]\n    Dense(3, activation=softmax)\n    train {{\n{}\n    }}\n}}\n"
    keras_like = kcompile.compile_string(program.format(
        '        loss = "categorical_crossentropy"\n        optimizer = "adam"\n        metrics = ["accuracy"]'))
    plain = kcompile.compile_string(program.format(
        "        loss = categorical_crossentropy\n        optimizer = Adam()\n        metrics = [accuracy]"))
    assert keras_like.manifest["train"] == plain.manifest["train"]
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 4), dtype=np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)]
    assert keras_like.fit(x, y, verbose=0).history == plain.fit(x, y, verbose=0).history
    for spelling, name in (("rmsprop(0.01)", "RMSprop"), ("'sgd'", "SGD"), ("ADAMW", "AdamW")):
        m = kcompile.compile_string(program.format(f"        loss = 'mse'\n        optimizer = {spelling}"))
        assert m.manifest["train"]["optimizer"]["name"] == name


def test_none_and_keras_case_write_out_the_defaults():
    """`none` (or `None`) is Keras's None: a default written out (activation=None is linear,
    strides=none, weight_decay=none, mean(x, axis=none)); enum-like words take any case
    (padding="SAME"). They were errors."""
    import numpy as np

    import kcompile
    program = """model m {{
    input x: float32[6, 6, 1]
    Conv2D(2, 3, {conv})
    MaxPooling2D(2, {pool})
    Flatten()
    y = Dense(3, {dense})
    output y - mean(y, {mean})
    train {{
        loss = mse
        optimizer = SGD({sgd})
    }}
}}
"""
    written = kcompile.compile_string(program.format(conv='padding="SAME", activation=None', pool="strides=none",
                                                     dense="activation=none", mean="axis=none", sgd="weight_decay=none"))
    implicit = kcompile.compile_string(program.format(conv="padding=same", pool="", dense="", mean="", sgd=""))
    x = np.random.default_rng(0).random((4, 6, 6, 1), dtype=np.float32)
    np.testing.assert_array_equal(written.predict(x), implicit.predict(x))
    assert written.manifest["train"] == implicit.manifest["train"]
    assert [layer["params"] for layer in written.manifest["layers"]] == [layer["params"] for layer in
                                                                          implicit.manifest["layers"]]


def test_layers_and_models_take_their_inputs_as_one_list_as_in_keras():
    import numpy as np

    import kcompile
    program = """model inner {{
    input a: float32[3]
    input b: float32[3]
    output a * b
}}
model m {{
    input x: float32[3]
    input y: float32[3]
    c = Concatenate(axis=-1)({pair})
    s = Add()({pair})
    p = inner({pair})
    output c, s, p
}}
"""
    named = kcompile.compile_string(program.format(pair="[x, y]").replace("    c = Concatenate(axis=-1)([x, y])",
                                                                          "    xy = [x, y]\n    c = Concatenate(axis=-1)(xy)"),
                                    model="m")  # (a list held in a name: an internal error before)
    listed = kcompile.compile_string(program.format(pair="[x, y]"), model="m")
    plain = kcompile.compile_string(program.format(pair="x, y"), model="m")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((2, 3), dtype=np.float32), "y": rng.random((2, 3), dtype=np.float32)}
    for a, b, c in zip(listed.predict(feeds), plain.predict(feeds), named.predict(feeds)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
    np.testing.assert_allclose(listed.predict(feeds)[2], feeds["x"] * feeds["y"], rtol=1e-6)


def test_a_block_parameter_may_default_to_none():
    import numpy as np

    import kcompile
    m = kcompile.compile_string("block B(act: str = none) {\n    input h\n    Dense(2, activation=act)\n}\n"
                                "model m {\n    input x: float32[3]\n    y = B()(x)\n    z = B(act=relu)(x)\n"
                                "    output y, z\n}\n")
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    (k1, b1, k2, b2), (y, z) = m.get_weights(), m.predict(x)
    np.testing.assert_allclose(y, x @ k1 + b1, rtol=1e-6)  # (none: linear)
    np.testing.assert_allclose(z, np.maximum(x @ k2 + b2, 0), rtol=1e-6)


def test_layers_take_kerass_name_argument():
    import kcompile
    m = kcompile.compile_string("model m {\n    input x: float32[4]\n    h = Dense(8, activation=relu, name=hidden)(x)\n"
                                "    p = Dense(1, name=priority)(h)\n    layer s = Dense(2, name=\"shared\")\n"
                                "    q = s(h)\n    output p, q\n}\n")
    assert m.weight_names == ["hidden/kernel", "hidden/bias", "priority/kernel", "priority/bias", "shared/kernel",
                              "shared/bias"]
    assert [layer.name for layer in m.layers] == ["hidden", "priority", "shared"]
    wrapped = kcompile.compile_string("model w {\n    input x: float32[5, 3]\n    a = Bidirectional(LSTM(2, name=l), name=bi)(x)\n"
                                      "    b = TimeDistributed(Dense(3, name=inner), name=td)(x)\n    output a, b\n}\n")
    assert wrapped.weight_names == [f"bi/{d}_l/{w}" for d in ("forward", "backward")
                                    for w in ("kernel", "recurrent_kernel", "bias")] + ["td/inner/kernel", "td/inner/bias"]
    blocks = kcompile.compile_string("block R(n: int) {\n    input x\n    Dense(n)\n}\nmodel b {\n    input x: float32[3]\n"
                                     "    a = R(2, name=first)(x)\n    y = R(2)(a)\n    output y\n}\n")
    assert [layer.name for layer in blocks.layers] == ["first", "r"]  # (a block call takes name= too)
    with pytest.raises(KcompileError, match="a layer named hidden already exists"):
        kcompile.compile_string("model m {\n    input x: float32[4]\n    Dense(8, name=hidden)\n    Dense(3, name=hidden)\n}\n")
    with pytest.raises(KcompileError, match="Dense argument 'name': expected a name such as priority, got a/b"):
        kcompile.compile_string("model m {\n    input x: float32[4]\n    Dense(8, name=\"a/b\")\n}\n")
