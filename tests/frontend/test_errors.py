"""Malformed and ill-typed programs: every error names its exact line, column and cause.

Each case gives the source, the (line, column) of the first diagnostic, a substring of
its message and (where one is promised) a substring of its hint.
"""
import textwrap

import numpy as np
import pytest

import kcompile
from kcompile.driver import check_module, parse_source
from kcompile.errors import KcompileError


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def diagnostics(source: str):
    """All diagnostics of a file: syntax errors raise, semantic ones are returned."""
    try:
        module = parse_source(source, "t.kdl")
    except KcompileError as e:
        return e.diagnostics
    return check_module(module)


def first_error(source: str):
    ds = diagnostics(source)
    assert ds, "expected an error"
    return ds[0]


IMG = "    input x: float32[28, 28, 1]\n"
VEC = "    input x: float32[8]\n"


def model(body: str, head: str = VEC, name: str = "m") -> str:
    return f"model {name} {{\n{head}{textwrap.indent(textwrap.dedent(body).strip(), '    ')}\n}}\n"


# (id, source, line, col, message substring, hint substring or None)
CASES = [
    # ---- syntax ----
    ("unclosed_paren", model("Dense(10"), 4, 1, "unexpected '}'; expected ')'", "'(' at line 3, column 10 is not closed"),
    ("unclosed_paren_next_line", model("Dense(10\nDense(3)"), 4, 5, "unexpected 'Dense'",
     "'(' at line 3, column 10 is not closed"),
    ("unclosed_bracket", "model m {\n    input x: float32[8, 4\n}\n", 3, 1, "unexpected '}'",
     "'[' at line 2, column 21 is not closed"),
    ("missing_close_brace", "model m {\n    input x: float32[8]\n    Dense(10)\n", 3, 14,
     "unexpected end of file; expected a statement or '}'", "'{' at line 1, column 9 is not closed"),
    ("missing_brace_before_next_model", "model a {\n    input x: float32[8]\n\nmodel b {\n}\n", 4, 1,
     "unexpected keyword 'model'", "'{' at line 1, column 9 is not closed"),
    ("extra_close_brace", model("Dense(3)") + "}\n", 5, 1, "unexpected '}'", "no matching opening bracket"),
    ("extra_close_paren", model("y = Dense(3)(x))"), 3, 20, "unexpected ')'", "no matching opening bracket"),
    ("stray_at", model("Dense(10) @ x"), 3, 15, "unexpected character '@'", "operators are"),
    ("stray_dollar", model("h = $x"), 3, 9, "unexpected character '$'", None),
    ("assign_nothing", model("h =\noutput h"), 3, 8, "unexpected end of line; expected a value", "must follow '='"),
    ("kwarg_nothing", model("Dense(10, activation=)"), 3, 26, "unexpected ')'; expected a value", "must follow '='"),
    ("bad_number_two_dots", model("Dense(1.2.3)"), 3, 11, "invalid number '1.2.3'", "numbers look like"),
    ("bad_number_letters", model("Dense(12abc)"), 3, 11, "invalid number '12abc'", None),
    ("keyword_as_variable", model("model = Dense(10)"), 3, 5, "unexpected keyword 'model'", "model is a keyword"),
    ("keyword_input_as_variable", model("input = Dense(10)"), 3, 11, "unexpected '='; expected a name",
     "input is a keyword"),
    ("unterminated_string", model('Dense(10, activation="relu)'), 3, 26, "unterminated string", 'close it with "'),
    ("missing_colon_in_input", "model m {\n    input x float32[8]\n}\n", 2, 13, "unexpected 'float32'",
     "':' missing before 'float32'"),
    ("two_statements_one_line", model("h = Dense(10)(x) Dense(3)"), 3, 22, "unexpected 'Dense'",
     "separate two statements"),
    ("model_without_name", "model {\n}\n", 1, 7, "unexpected '{'; expected a name", None),
    ("layer_outside_model", "Dense(3)\n", 1, 1, "unexpected 'Dense'", None),
    ("block_param_without_type", "block B(n) {\n    input x\n}\n", 1, 10, "unexpected ')'; expected ':'", None),
    # ---- names ----
    ("unknown_layer", model("Conv2d(32, 3)", IMG), 3, 5, "unknown layer or function Conv2d", "did you mean Conv2D?"),
    ("unknown_layer_functional", model("h = Dnse(10)(x)\noutput h"), 3, 9, "unknown layer or function Dnse",
     "did you mean Dense?"),
    ("unknown_name_in_call", model("h = Dense(10)(y)\noutput h"), 3, 19, "unknown name y", "defined here: x"),
    ("misspelled_input_name", model("h = Dense(10)(imag)\noutput h", "    input image: float32[8]\n"), 3, 19,
     "unknown name imag", "did you mean image?"),
    ("misspelled_kwarg", model("Dense(10, activaton=relu)"), 3, 15, "Dense has no argument 'activaton'",
     "did you mean activation?"),
    ("unknown_activation", model("Dense(10, activation=rellu)"), 3, 26, "unknown activation rellu",
     "did you mean relu?"),
    ("activation_in_another_case", model("Dense(10, activation=Relu)"), 3, 26, "unknown activation Relu",
     "did you mean relu?"),  # (it suggested elu, closer in spelling)
    ("unknown_padding", model("Conv2D(8, 3, padding=sme)", IMG), 3, 26, "expected valid or same, got sme",
     "did you mean same?"),
    ("unknown_dtype", model("Dense(2)", "    input x: flot32[8]\n"), 2, 14, "unknown dtype flot32",
     "did you mean float32?"),
    ("unknown_block_param_type", "block B(n: integer) {\n    input x\n    output Dense(n)(x)\n}\n"
     + model("B(3)"), 1, 9, "unknown parameter type integer", None),
    # ---- argument types ----
    ("float_units", model("Dense(2.5)"), 3, 11, "Dense argument 'units': expected an integer >= 1, got 2.5", None),
    ("negative_units_kwarg", model("Dense(units=-1)"), 3, 17, "expected an integer >= 1, got -1", None),
    ("kernel_three_dims", model("Conv2D(32, (3,3,3))", IMG), 3, 16,
     "Conv2D argument 'kernel_size': expected an integer or a tuple of 2 integers, got (3, 3, 3)", None),
    ("dropout_rate_out_of_range", model("Dropout(1.5)"), 3, 13, "Dropout argument 'rate'", None),
    ("missing_required_argument", model("Dense()"), 3, 5, "Dense needs the argument 'units'", "Dense(units=...)"),
    ("too_many_positional", model("Dense(1, relu, true, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)"), 3, 5,
     "Dense takes at most", None),
    ("argument_twice", model("Dense(10, units=3)"), 3, 15, "Dense got argument 'units' twice", None),
    ("zero_dimension", model("Dense(2)", "    input x: float32[0]\n"), 2, 22,
     "a dimension must be a positive integer", "batch dimension is implicit"),
    # ---- shapes ----
    ("conv_on_flat_vector", model("Conv2D(32, 3)", "    input x: float32[784]\n"), 3, 5,
     "Conv2D expects an input of shape [height, width, channels] (without the batch), got [784]", "Reshape("),
    ("add_shape_mismatch", model("c = a + b\noutput c", "    input a: float32[8]\n    input b: float32[5]\n"),
     4, 9, "cannot apply + to [N, 8] and [N, 5]", "broadcast"),
    ("concat_mismatch", model("c = concat(a, b, axis=-1)\noutput c",
                              "    input a: float32[4, 8]\n    input b: float32[5, 3]\n"),
     4, 9, "concat needs equal shapes except on the joined axis; got [N, 4, 8], [N, 5, 3]", None),
    ("concat_of_two_dtypes", model("c = concat(a, b)\noutput c", "    input a: int64[2]\n    input b: float32[2]\n"),
     4, 9, "concat of int64 and float32: operands must have one dtype", "cast one operand with cast(x, float32)"),
    ("reshape_incompatible", model("Reshape((3, 4))", "    input x: float32[10]\n"), 3, 5,
     "cannot reshape [N, 10] (10 elements per batch item) to [N, 3, 4]", None),
    ("pool_window_too_large", model("MaxPooling2D((5, 5))", "    input x: float32[4, 4, 1]\n"), 3, 5,
     "the window (5) is larger than the padded input (4)", "padding=same"),
    ("dense_on_image_then_flatten_missing", model("Dense(10)\nLSTM(4)", IMG), 4, 5, "LSTM expects", None),
    ("shared_layer_incompatible", model("layer d = Dense(3)\np = d(a)\nq = d(b)\noutput p, q",
                                        "    input a: float32[8]\n    input b: float32[4]\n"),
     6, 9, "layer d was built for float32[N, 8] and is now called on float32[N, 4]", "shared layer"),
    ("layer_takes_one_input", model("h = Dense(3)(a, b)\noutput h",
                                    "    input a: float32[8]\n    input b: float32[8]\n"),
     4, 9, "Dense takes 1 input, got 2", "Concatenate()"),
    # ---- models, blocks ----
    ("model_without_input", "model m {\n    h = 3\n}\n", 1, 7, "model m has no input", "input x: float32"),
    ("layer_before_input", "model m {\n    Dense(10)\n    input x: float32[8]\n}\n", 2, 5, "Dense has no input",
     "declare an input first"),
    ("weight_outside_block", model("weight w: [8]"), 3, 12, "belongs in a block", "move it into a block"),
    ("block_wrong_argument_type", "block B(n: int) {\n    input x\n    output Dense(n)(x)\n}\n" + model("B(2.5)"),
     7, 7, "B parameter n is int, got 2.5", None),
    ("block_missing_argument", "block B(n: int) {\n    input x\n    output Dense(n)(x)\n}\n" + model("B()"),
     7, 5, "B needs the argument 'n'", None),
    ("block_unknown_kwarg", "block B(units: int) {\n    input x\n    output Dense(units)(x)\n}\n"
     + model("B(unit=3)"), 7, 7, "B has no parameter 'unit'", "did you mean units?"),
    ("model_calls_itself", model("y = m(x)\noutput y"), 3, 9, "model m uses itself", None),
    ("submodel_wrong_input_shape", "model enc {\n    input x: float32[8]\n    Dense(4)\n}\n"
     + model("y = enc(x)\noutput y", "    input x: float32[10]\n"), 7, 9,
     "model enc input x expects float32[N, 8], got float32[N, 10]", None),
    ("duplicate_model", model("Dense(4)") + model("Dense(4)"), 5, 7, "m is defined twice", None),
    ("block_and_model_same_name", "block m(n: int) {\n    input x\n    output Dense(n)(x)\n}\n" + model("Dense(4)"),
     5, 7, "m is defined twice", None),
    ("model_named_like_layer", model("Dense(4)", name="Dense"), 1, 7, "Dense is a built-in name", None),
    ("variable_named_like_layer", model("Dense = Dense(3)"), 3, 5, "Dense names a layer", None),
    ("input_defined_twice", model("Dense(3)", "    input x: float32[8]\n    input x: float32[4]\n"), 3, 11,
     "x is already defined", None),
    ("call_a_tensor", model("y = x(3)\noutput y"), 3, 9, "x is a tensor, not a layer", None),
    ("layer_decl_needs_layer", model("layer d = x"), 3, 15, "needs a layer", None),
    ("division_by_zero", model("Dense(4 / 0)"), 3, 11, "division by zero", None),
    ("number_function_domain", model("y = x * log(-1.0)\noutput y"), 3, 13, "log(-1.0): math domain error", None),
    ("dimension_named_like_batch", model("Dense(4)", "    input x: float32[N, 8]\n"), 2, 22,
     "N names the batch dimension", "another name"),
    ("target_dimension_named_like_batch",
     model("y = Dense(4)\noutput y\ntrain {\n    target t: float32[N, 4]\n    loss = mse(t, y)\n"
           "    optimizer = SGD()\n}", "    input x: float32[T, 8]\n"), 6, 27, "N names the batch dimension", None),
    # ---- found by fuzzing: these raised Python exceptions (exit 3) instead of located errors ----
    ("block_calls_itself", "block B(n: int) {\n    input x\n    B(n)\n}\n" + model("B(1)"), 3, 5,
     "block B uses itself (B -> B)", "directly or through other blocks"),
    ("blocks_call_each_other", "block A(n: int) {\n    input x\n    B(n)(x)\n}\nblock B(n: int) {\n    input x\n"
     "    A(n)(x)\n}\n" + model("A(1)"), 7, 5, "block A uses itself (A -> B -> A)", None),
    ("bad_string_escape", model('Dense(3, activation="\\x")'), 3, 25, "invalid escape in a string", "\\x41"),
    ("initializer_argument_not_a_number", model('Dense(3, kernel_initializer=RandomNormal(stddev="a"))'), 3, 33,
     "stddev must be a number, got a", None),
    ("keepdims_not_a_bool", model('y = mean(x, keepdims="yes")\noutput y'), 3, 9,
     "mean: keepdims: expected true or false, got yes", None),
    ("bool_in_quotes", model('LSTM(4, unroll="true")'), 3, 20, "argument 'unroll': expected true or false, got 'true'",
     "write true (lowercase, no quotes)"),
    ("bool_capitalised", model("Dense(3, use_bias=False)"), 3, 23, "expected true or false, got 'False'",
     "write false (lowercase, no quotes)"),
    ("loss_on_a_value_not_an_output", model("h = Dense(4)\ny = Dense(3)\noutput y\ntrain {\n    loss = mse(h)\n"
                                            "    optimizer = SGD()\n}"), 7, 9,
     "the loss: 'h' is not an output or a declared target", "outputs and the train section's targets"),
    ("metric_without_arguments", model("y = Dense(3, activation=softmax)\noutput y\ntrain {\n    target label: int64[]\n"
                                       "    loss = sparse_categorical_crossentropy(label, y)\n    optimizer = SGD()\n"
                                       "    metrics = [accuracy()]\n}"), 9, 20, "the metric: an argument is missing", None),
    ("loss_divided_by_zero", model("y = Dense(3)\noutput y\ntrain {\n    loss = mse + 1/0\n    optimizer = SGD()\n}"),
     6, 9, "the loss: float division by zero", None),
    ("target_dtype_against_prediction", model("y = Dense(3)\noutput y\ntrain {\n    target label: int32[3]\n"
                                              "    loss = mse(label, y)\n    optimizer = SGD()\n}"),
     7, 9, "the loss: Sub of int32 and float32", "cast("),
    ("recurrence_in_float16", model("LSTM(3)", "    input x: float16[5, 4]\n"), 3, 5,
     "a recurrent layer computes in float32 or float64, got float16", "cast("),
    ("arithmetic_on_bool", model("y = x + x\noutput y", "    input x: bool[4]\n"), 3, 9, "Add of bool values", "cast("),
    ("embedding_of_bool", model("Embedding(10, 3)", "    input x: bool[4]\n"), 3, 5, "Embedding expects integer ids", None),
    ("softmax_axis_not_an_integer", model("y = softmax(x, axis=1.5)\noutput y"), 3, 9, "softmax: axis: expected an integer, got 1.5", None),
    ("uniform_initializer_reversed", model("Dense(3, kernel_initializer=RandomUniform(minval=1, maxval=0))"), 3, 33,
     "minval 1 is above maxval 0", None),
    ("loss_argument_of_the_wrong_kind", model("y = Dense(3, activation=softmax)\noutput y\ntrain {\n"
                                              "    loss = categorical_crossentropy(y, label_smoothing=2)\n"
                                              "    optimizer = SGD()\n}"), 6, 44,
     "label_smoothing must be a number from 0 to 1, got 2", None),
    ("layer_as_a_dimension", model("Dense(3)", "    input x: float32[Dense(3)]\n"), 2, 22,
     "a dimension must be a positive integer or a name, got a Dense layer", None),
    ("layer_name_in_a_tuple_argument", model("MaxPooling2D((Flatten, 2))", IMG), 3, 18, "got (the layer Flatten, 2)", None),
    ("weight_too_large", model("Dense(99999999999999999999)"), 3, 5, "too many for one tensor", None),
    ("weights_past_an_onnx_file", model("y = Dense(4)(x)\nz = Dense(300000)(x)\nw = Dense(290000)(x)\noutput y, z, w",
                                        "    input x: float32[1000]\n"), 4, 9,
     "its weights take 2.20 GiB (dense_1/kernel float32[1000, 300000] alone 1.12 GiB); an ONNX file", "fewer units"),
    ("two_train_sections", model("y = Dense(1)\noutput y\ntrain {\n    loss = mse\n    optimizer = SGD()\n}\n"
                                 "train {\n    loss = mae\n    optimizer = SGD()\n}"), 9, 5, "a second train section", None),
    ("two_output_statements", model("a = Dense(3)\noutput a\nb = Dense(2)(a)\noutput b"), 6, 5,
     "a second `output` statement", "list every output in one statement (`output a, b`); the first is at line 4"),
    ("two_output_statements_in_a_block", "block B() {\n    input x\n    output x\n    output x\n}\n" + model("B()"),
     4, 5, "a second `output` statement", None),
    ("loss_weights_not_numbers", model("y = Dense(1)\noutput y\ntrain {\n    loss = mse\n    optimizer = SGD()\n"
                                       "    loss_weights = garbage\n}"), 8, 24,
     "loss_weights must be a list of numbers, one per output", "loss_weights = [1.0] for y"),
    ("loss_weights_too_many", model("y = Dense(1)\noutput y\ntrain {\n    loss = mse\n    optimizer = SGD()\n"
                                    "    loss_weights = [1, 2]\n}"), 8, 24, "loss_weights has 2 numbers for 1 output (y)",
     None),
    ("output_listed_twice", model("h = Dense(3)\noutput h, h"), 4, 15, "h is listed twice", None),
    ("output_is_an_input", model("h = Dense(3)\noutput x, h"), 4, 12, "x is the model's input, unchanged",
     "`x_out = linear(x)`"),
    ("output_made_up_name_taken", model("output_1 = Dense(3)\noutput output_1, relu(x)"), 4, 22,
     "this output would be named output_1, the name of another output", "name it"),
    ("output_named_as_a_rebound_input", model("x = Dense(4)(x)\noutput x"), 4, 12,
     "the output x has the name of the model's input x", None),
    ("bare_function_statement", model("Dense(4)\nrelu\nDense(2)"), 4, 5, "this statement computes nothing: it is the "
     "function relu", "Activation(relu)"),
    ("bare_number_statement", model("Dense(4)\n3"), 4, 5, "this statement computes nothing: it is 3", None),
    ("constant_past_an_integer_range", model("y = cast(x, int8) + 300\noutput y"), 3, 25, "300 does not fit int8", "wider"),
    ("fraction_added_to_integers", model("y = cast(x, int32) * 0.5\noutput y"), 3, 26, "0.5 is not an integer", "float"),
    ("transpose_output_padding_not_below_strides", model("Conv2DTranspose(3, 3, strides=2, output_padding=(1, 2))", IMG),
     3, 5, "output_padding (1, 2) must be below strides (2, 2)", None),
    ("target_declared_twice", model("y = Dense(3)\noutput y\ntrain {\n    target t: float32[3]\n    target t: float32[4]\n"
                                    "    loss = mse(t, y)\n    optimizer = SGD()\n}"), 7, 16, "target t is declared twice", None),
    ("function_keyword_it_lacks", model("y = mean(x, axes=1)\noutput y"), 3, 17, "mean has no argument 'axes'",
     "did you mean axis?"),
    ("matmul_of_two_dtypes", model("y = matmul(x, w)\noutput y", "    input x: float32[4, 8]\n    input w: float64[8, 2]\n"),
     4, 9, "matmul of float32 and float64: operands must have one dtype", "cast one"),
    ("infinity_added_to_integers", model("y = cast(x, int32) + 1e309\noutput y"), 3, 26, "inf does not fit int32", None),
    ("initializer_as_a_statement", model("GlorotUniform()"), 3, 5, "it is the initializer glorot_uniform(...), which belongs in "
     "a layer's *_initializer argument", None),
    ("layer_named_as_a_called_model", "model sub {\n    input q: float32[8]\n    output Dense(2)(q)\n}\n"
     + model("a = Dense(3, name=sub)(x)\nb = sub(x)\noutput a, b"), 8, 9, "a layer named sub already exists", None),
    ("regularizer_a_depthwise_kernel_lacks", model("DepthwiseConv2D(3, kernel_regularizer=l2(0.1))", IMG), 3, 24,
     "DepthwiseConv2D has no argument 'kernel_regularizer'", "depthwise_regularizer"),
    ("recurrent_activation_on_a_simple_rnn", model("SimpleRNN(4, recurrent_activation=sigmoid)", "    input x: float32[5, 3]\n"),
     3, 18, "SimpleRNN has no argument 'recurrent_activation'", "LSTM and GRU take recurrent_activation"),
    ("block_parameter_twice", "block B(n: int, n: int) {\n    input x\n    Dense(n)\n}\n" + model("B(1, 2)"), 1, 17,
     "B has two parameters named n", None),
    ("block_argument_by_position_and_name", "block B(n: int) {\n    input x\n    Dense(n)\n}\n" + model("B(1, n=2)"),
     7, 10, "B got argument 'n' twice", "once by position, once by name"),
    # ---- found by a fuzzer: these were internal errors (a traceback) or passed check and failed at build ----
    ("l1_l2_unknown_keyword", model("Dense(2, kernel_regularizer=l1_l2(2, padding=same))"), 3, 33,
     "l1_l2 has no argument 'padding'", None),
    ("l1_l2_factor_twice", model("Dense(2, kernel_regularizer=l1_l2(1, l1=2))"), 3, 33, "l1_l2 got argument 'l1' twice",
     None),
    ("l2_infinite", model("Dense(2, kernel_regularizer=l2(1e400))"), 3, 33, "finite number >= 0, got inf", None),
    ("initializer_infinite", model("Dense(2, kernel_initializer=Constant(value=1e400))"), 3, 33,
     "value must be a finite number, got inf", None),
    ("initializer_too_many_positional", model("Dense(2, kernel_initializer=Constant(2.0, 3.0))"), 3, 33,
     "constant takes 1 argument (value), got 2", None),
    ("untyped_input_of_a_called_model", "model inner {\n    input z\n    output Dense(3)(z)\n}\n"
     + model("y = inner(x)\noutput y"), 2, 11, "input z needs a type in a model", None),
    ("quotient_too_large", model(f"y = x * ({10 ** 320} / 3)\noutput y"), 3, 14, "too large for a number", None),
    ("dimension_too_large", "model m {\n    input x: float32[9223372036854775808]\n}\n", 2, 22,
     "a dimension of 9,223,372,036,854,775,808 is too large", None),
    ("float_axis", model("y = mean(x, axis=0.5)\noutput y"), 3, 9, "an axis must be an integer, got 0.5", None),
    ("weight_of_a_named_size", "model m {\n    input x: float32[T]\n    y = BatchNormalization()(x)\n    output y\n}\n",
     3, 9, "weight batch_normalization/gamma would have the shape [T]", "give that axis a number"),
    ("bool_into_a_max_pool", "model m {\n    input x: bool[8, 4]\n    y = GlobalMaxPooling1D()(x)\n    output y\n}\n",
     3, 9, "ReduceMax does not take bool tensors", "cast it first"),
    ("uint8_mean", "model m {\n    input x: uint8[8, 4]\n    y = mean(x)\n    output y\n}\n", 3, 9,
     "ReduceMean does not take uint8 tensors", "cast it first"),
]


@pytest.mark.parametrize("source,line,col,message,hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_location_and_message(source, line, col, message, hint):
    d = first_error(source)
    assert d.loc is not None, d.render()
    assert (d.loc.line, d.loc.col) == (line, col), d.render()
    assert d.loc.file == "t.kdl"
    assert message in d.message, d.render()
    if hint is not None:
        assert d.hint is not None and hint in d.hint, d.render()
    # the rendered diagnostic always shows the line with a caret under the column
    text = d.render()
    assert text.startswith(f"t.kdl:{line}:{col}: error: ")
    lines = text.splitlines()
    assert lines[1] == "    " + d.loc.source_line
    assert lines[2].startswith("    " + " " * (col - 1) + "^")
    assert set(lines[2].strip()) <= {"^", "~"}


def test_strings_keep_their_characters_and_lines_count_as_the_grammar_does():
    d = first_error(model('Dense(3, activation="r\u00e9lu")'))
    assert "unknown activation r\u00e9lu" in d.message and d.loc.source_line.endswith('"r\u00e9lu")')
    # a form feed is a space to the grammar: the line shown is the line of the error
    d = first_error("model m {\n    input x: float32[3] # a\x0c comment\n    Conv2D(3, 3)\n}\n")
    assert (d.loc.line, d.loc.source_line) == (3, "    Conv2D(3, 3)"), d.render()


def test_at_least_35_cases():
    assert len(CASES) >= 35
    assert len({c[0] for c in CASES}) == len(CASES)


def test_compile_string_raises_with_location():
    source = model("Conv2d(32, 3)", IMG)
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string(source, file="t.kdl")
    err = info.value
    assert len(err.diagnostics) == 1
    d = err.diagnostics[0]
    assert (d.loc.line, d.loc.col) == (3, 5)
    assert d.hint == "did you mean Conv2D?"


def test_rendered_error_shows_file_line_source_and_caret():
    source = model("Conv2D(32, 3)", "    input x: float32[784]\n")
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string(source, file="t.kdl")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("t.kdl:3:5: error: Conv2D expects an input of shape [height, width, channels]")
    assert "[784]" in lines[0]
    assert lines[1] == "        Conv2D(32, 3)"
    assert lines[2] == "        ^~~~~~"
    assert lines[3].startswith("hint: ") and "Reshape(" in lines[3]


def test_rendered_syntax_error_caret():
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string(model("Dense(10) @ x"), file="t.kdl")
    text = str(info.value)
    assert "t.kdl:3:15: error: unexpected character '@'" in text
    assert "    Dense(10) @ x\n" in text
    assert "\n" + " " * (4 + 14) + "^\n" in text


def test_several_independent_errors_are_all_reported():
    source = src("""
        model m {
            input x: float32[8]
            a = Dense(4, activaton=relu)(x)
            b = Dense(4)(x)
            c = Conv2d(3, 3)(b)
            d = Dense(2.5)(x)
            e = Dense(3)(x)
            f = b + e
            g = Dense(2)(a)
            output e
        }
        """)
    ds = diagnostics(source)
    # line 10 reads `a`, which already failed: it is skipped, not reported again
    assert [(d.loc.line, d.loc.col) for d in ds] == [(3, 18), (5, 9), (6, 15), (8, 9)]
    assert "activaton" in ds[0].message and ds[0].hint == "did you mean activation?"
    assert "Conv2d" in ds[1].message and ds[1].hint == "did you mean Conv2D?"
    assert "got 2.5" in ds[2].message
    assert "[N, 4] and [N, 3]" in ds[3].message
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string(source, file="t.kdl")
    assert len(info.value.diagnostics) == 4
    assert str(info.value).endswith("4 errors")
    for line in (3, 5, 6, 8):
        assert f"t.kdl:{line}:" in str(info.value)


def test_a_shared_block_or_model_is_built_by_its_first_good_call():
    """A first call with the wrong inputs is reported; the good calls after it are not (they
    were: "layer inner was built for float32[N, 8] and is now called on ...")."""
    source = src("""
        model inner {
            input a: float32[8]
            input b: float32[4]
            output concat(a, b, axis=-1)
        }
        block R(n: int) {
            input x
            Dense(n)
        }
        model outer {
            input x: float32[8]
            input y: float32[4]
            q = inner(x)
            t = inner(x, Dense(4)(y))
            layer r = R(8)
            u = r(x, y)
            v = r(x)
            output t, v
        }
        """)
    ds = diagnostics(source)
    assert [(d.loc.line, d.message) for d in ds] == [(13, "model inner takes 2 inputs, got 1"),
                                                      (16, "R takes 1 input, got 2")]


def test_an_error_deep_in_blocks_is_reported_once():
    """(a follow-on "block A has no output" at the call was reported too)"""
    ds = diagnostics(src("""
        block A(n: int) {
            input x
            output B(n)(x)
        }
        block B(n: int) {
            input x
            output A(n)(x)
        }
        model m {
            input x: float32[8]
            A(3)
        }
        """))
    assert [(d.loc.line, d.message) for d in ds] == [(7, "block A uses itself (A -> B -> A)")]


def test_a_shared_block_that_fails_inside_is_built_anew_by_its_next_call():
    """(the layers its body built for the failed call kept that call's shapes: the good call
    after it was refused with "layer b/dense was built for float32[N, 4]")"""
    ds = diagnostics(src("""
        block B() {
            input h
            output Dense(2)(h) + h
        }
        model m {
            input x: float32[4]
            input x2: float32[2]
            layer b = B()
            y = b(x)
            z = b(x2)
            output z
        }
        """))
    assert [d.loc.line for d in ds] == [3] and "cannot apply +" in ds[0].message


def test_blocks_nested_past_the_recursion_limit_are_a_located_error():
    """(100 blocks each calling the next compile; 150 were an internal RecursionError)"""
    def chain(n):
        blocks = [f"block B{i}() {{\n    input x\n    output {f'B{i + 1}()(x)' if i + 1 < n else 'Dense(2)(x)'}\n}}"
                  for i in range(n)]
        return "\n".join(blocks) + "\nmodel m {\n    input x: float32[4]\n    y = B0()(x)\n    output y\n}\n"
    assert diagnostics(chain(100)) == []
    ds = diagnostics(chain(150))
    assert len(ds) == 1 and "nested too deeply" in ds[0].message and ds[0].loc.line == 4 * 150 + 1


def test_errors_in_several_models_are_all_reported():
    source = model("Dense(2.5)", name="a") + model("Conv2d(3, 3)", IMG, name="b")
    ds = diagnostics(source)
    assert [(d.loc.line, d.loc.col) for d in ds] == [(3, 11), (7, 5)]


def test_error_inside_block_body_points_at_block_with_call_site():
    source = src("""
        block Stem(n: int) {
            input x
            h = Conv2D(n, 3)(x)
            output h
        }
        model m {
            input x: float32[8]
            y = Stem(4)(x)
            output y
        }
        """)
    ds = diagnostics(source)
    assert len(ds) == 1
    d = ds[0]
    assert (d.loc.line, d.loc.col) == (3, 9)
    assert "Conv2D expects an input of shape [height, width, channels]" in d.message
    assert "got [8]" in d.message
    assert "in block Stem, called at t.kdl:8:9" in d.hint
    assert "Reshape(" in d.hint  # the layer's own hint is kept


def test_error_inside_block_without_own_hint_names_call_site():
    source = src("""
        block Mix(n: int) {
            input x
            h = Dense(n)(x)
            output h + x
        }
        model m {
            input x: float32[8]
            Mix(4)
        }
        """)
    d = first_error(source)
    assert (d.loc.line, d.loc.col) == (4, 12)
    assert "[N, 4] and [N, 8]" in d.message
    assert "called at t.kdl:8:5" in d.hint


def test_error_inside_called_model_names_call_site():
    source = src("""
        model enc {
            input x: float32[8]
            h = Dense(4)(x)
            output h + x
        }
        model m {
            input x: float32[8]
            y = enc(x)
            output y
        }
        """)
    ds = diagnostics(source)
    # enc is checked on its own, and again where m calls it
    assert [(d.loc.line, d.loc.col) for d in ds] == [(4, 12), (4, 12)]
    assert ds[0].hint == "shapes must be equal or broadcast (numpy rules)"
    assert "in model enc, called at t.kdl:8:9" in ds[1].hint


def test_model_without_input_also_lacks_output():
    ds = diagnostics("model empty {\n}\n")
    assert [d.message for d in ds] == ["model empty has no input", "model empty has no output"]
    assert all((d.loc.line, d.loc.col) == (1, 7) for d in ds)


def test_file_without_model():
    """Located at the file's first line, in check and in compile alike (an empty file too)."""
    ds = diagnostics("# nothing here\n")
    assert len(ds) == 1 and ds[0].message == "no model in this file"
    assert (ds[0].loc.line, ds[0].loc.col, ds[0].loc.source_line) == (1, 1, "# nothing here")
    for source in ("", "  \n\n", "# only\r\n# comments\r\n"):
        with pytest.raises(KcompileError) as e:
            kcompile.compile_string(source, file="empty.kdl")
        assert str(e.value).startswith("empty.kdl:1:1: error: no model in this file")


def test_deeply_nested_empty_lists_are_located_at_their_statement():
    d = first_error(model("h = " + "[" * 450 + "]" * 450 + "\noutput x"))
    assert "nests too deeply" in d.message and (d.loc.line, d.loc.col) == (3, 5)


def test_division_by_a_zero_number_is_a_located_error():
    d = first_error(model("y = Dense(1)(x / 0)\noutput y"))
    assert d.message == "division by zero" and (d.loc.line, d.loc.col) == (3, 22)  # (the 0)


def test_error_has_hint_line_in_render():
    d = first_error(model("Dense(10, activaton=relu)"))
    lines = d.render().splitlines()
    assert lines == [
        "t.kdl:3:15: error: Dense has no argument 'activaton'",
        "        Dense(10, activaton=relu)",
        "                  ^~~~~~~~~",
        "hint: did you mean activation?",
    ]


def test_caret_under_the_column_after_a_tab():
    """A tab before the error shows as four spaces; the caret follows it (it sat 3 columns left)."""
    with pytest.raises(KcompileError) as info:
        kcompile.compile_string("model m {\n\tinput x: float32[3]\n\tDense(2, activaton=relu)\n}\n", file="t.kdl")
    lines = str(info.value).splitlines()
    assert lines[1] == "        Dense(2, activaton=relu)"
    assert lines[2] == "    " + " " * lines[1][4:].index("activaton") + "^~~~~~~~~"


def test_a_long_chain_of_unary_minus_is_a_located_error_not_a_recursion_error():
    d = first_error(model("y = " + "-" * 1500 + "x\noutput y"))
    assert "nests too deeply" in d.message and d.loc.line == 3


def test_initializers_take_keras_positional_arguments():
    m = kcompile.compile_string(model("y = Dense(2, kernel_initializer=Constant(2.0), "
                                      "bias_initializer=RandomUniform(0.5, 1.0))(x)\noutput y"))
    kernel, bias = m.get_weights()
    assert (kernel == 2.0).all() and ((0.5 <= bias) & (bias <= 1.0)).all()


def test_identity_names_the_initializer_where_one_is_expected_and_the_layer_elsewhere():
    """Keras has a layer and an initializer called Identity: called with the initializer's
    arguments, or given as an initializer argument, it is the initializer."""
    m = kcompile.compile_string(model(
        "a = Dense(3, kernel_initializer=Identity(), use_bias=false)(x)\n"
        "b = Dense(3, kernel_initializer=Identity(gain=2.0), use_bias=false)(a)\n"
        "c = Dense(3, kernel_initializer=Identity(0.5), use_bias=false)(b)\n"
        "d = Dense(3, kernel_initializer=Identity, use_bias=false)(c)\n"
        "y = Identity()(d)\noutput y", "    input x: float32[3]\n"))
    for kernel, gain in zip(m.get_weights(), [1.0, 2.0, 0.5, 1.0]):
        np.testing.assert_array_equal(kernel, gain * np.eye(3, dtype=np.float32))
    assert [layer.class_name for layer in m.layers][-1] == "Identity"



@pytest.mark.parametrize("layer, message", [
    ("Dense(3, bias_initializer=Identity())", "the identity initializer needs a 2-D weight; dense/bias is [3]"),
    ("Conv1D(3, 2, kernel_initializer=identity)", "the identity initializer needs a 2-D weight; conv1d/kernel is "
                                                  "[2, 3, 3]"),
    ("Dense(3, bias_initializer=orthogonal)", "the orthogonal initializer needs a weight of 2 or more dimensions"),
    ("Dense(3, kernel_initializer=Identity(gain=2.0, seed=1))", "initializer identity has no argument 'seed'"),
])
def test_initializers_that_do_not_fit_their_weight_are_located_errors(layer, message):
    d = first_error(model(f"y = {layer}(x)\noutput y", "    input x: float32[4, 3]\n"))
    assert message in d.message and d.loc.line == 3


BOUND_LAYER = "block B(n: int) {\n    input h\n    output Dense(n)(h)\n}\n" + \
    "model m {\n    input x: float32[4]\n    layer d = Dense(3)\n    %s\n    output y\n}\n"


@pytest.mark.parametrize("statement, col, message", [
    ("y = Dropout(d)(x)", 17, "Dropout argument 'rate': expected a number in [0.0, 1.0), got the layer d (Dense)"),
    ("y = Dense(3, activation=d)(x)", 29,
     "Dense argument 'activation': expected an activation name, got the layer d (Dense)"),
    ("y = Dense(3, kernel_initializer=d)(x)", 37,
     "Dense argument 'kernel_initializer': expected an initializer, got the layer d (Dense)"),
    ("y = Reshape(d)(x)", 17,
     "Reshape argument 'target_shape': expected a shape tuple such as (7, 7, 128), got the layer d (Dense)"),
    ("y = B(d)(x)", 11, "B parameter n is int, got the layer d (Dense)"),
    ("y = concat(x, x, axis=d)", 9, "concat: an axis must be an integer, got the layer d (Dense)"),
    ("y = mean(x, axis=x)", 9, "mean: an axis must be an integer, got a tensor float32[N, 4]"),
    ("y = transpose(x, perm=d)", 9,
     "transpose: perm: expected an integer or a tuple of integers, got the layer d (Dense)"),
    ("y = Dense(3, activation=l2(0.1))(x)", 29,
     "Dense argument 'activation': expected an activation name, got the regularizer l1_l2(l1=0.0, l2=0.1)"),
    ("y = Dense(3, bias_initializer=x)(x)", 35,
     "Dense argument 'bias_initializer': expected an initializer, got a tensor float32[N, 4]"),
    # (a layer's name= and a regularizer pointed at the keyword: at the value, as other arguments)
    ("y = Dense(3, name=d)(x)", 23, "Dense argument 'name': expected a name such as priority, got the layer d (Dense)"),
    ("y = B(3, name=d)(x)", 19, "B argument 'name': expected a name such as res1, got the layer d (Dense)"),
    ("y = Dense(3, kernel_regularizer=3)(x)", 37,
     "Dense argument 'kernel_regularizer': expected a regularizer such as l2(0.01), got 3"),
])
def test_values_are_described_in_the_languages_terms(located, statement, col, message):
    """(a layer showed as <kcompile.layers.core.Dense object at 0x7f...>, a tensor as
    Tensor(name='x', type=TensorType(...)), a regularizer or initializer as its Python object)"""
    d = located(BOUND_LAYER % statement, 8, message, col)
    assert d.message == message


@pytest.mark.parametrize("statement, col, message", [
    ('y = Dense(3, name="my\\tname")(x)', 23, "Dense argument 'name': expected a name such as priority, got 'my\\tname'"),
    ('y = Dense(3, activation="re\\tlu")(x)', 29, "Dense argument 'activation': unknown activation 're\\tlu'"),
    ('y = Dense(3)("a\\tb")', 18, "unknown name 'a\\tb'"),
    ('y = cast(x, "float\\n32")', 9, "cast: unknown dtype 'float\\n32'"),
    ('y = Dense(3, name="a b")(x)', 23, "Dense argument 'name': expected a name such as priority, got 'a b'"),
    ('y = Dense(3, name="")(x)', 23, "Dense argument 'name': expected a name such as priority, got ''"),
    ('y = Dense(3, activation="r\u00e9lu")(x)', 29, "Dense argument 'activation': unknown activation r\u00e9lu"),
])
def test_text_that_is_not_one_word_is_quoted_with_escapes(located, statement, col, message):
    """(a tab or newline in a string was printed as it is, inside the message)"""
    d = located(model(f"{statement}\noutput y"), 3, message, col)
    assert d.message == message


@pytest.mark.parametrize("loss, optimizer, metrics, line, col, message", [
    ('"ms\\te"', "SGD()", "[mae]", 6, 16, "unknown loss 'ms\\te'"),
    ("mse", '"sg\\td"', "[mae]", 7, 21, "unknown optimizer 'sg\\td'"),
    ("mse", "SGD()", '["ma\\te"]', 8, 20, "unknown metric 'ma\\te'"),
])
def test_train_names_that_are_not_one_word_are_quoted_with_escapes(located, loss, optimizer, metrics, line, col,
                                                                   message):
    d = located(model(f"y = Dense(3)\noutput y\ntrain {{\n    loss = {loss}\n    optimizer = {optimizer}\n"
                      f"    metrics = {metrics}\n}}"), line, message, col)
    assert d.message == message
