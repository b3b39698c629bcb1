"""Named dimensions through windows: one canonical spelling per size, evaluated at run time."""
import random

import pytest

from kcompile.ir.types import evaluate_dim, offset_dim, window_output_dim


def test_offsets_have_one_spelling():
    assert offset_dim("T", -2) == "T-2"
    assert offset_dim("T-2", 2) == "T"
    assert offset_dim("T-2", -2) == "T-4"
    assert offset_dim("T2", 1) == "T2+1"
    assert offset_dim("(T-2)//2", 1) == "T//2"
    assert offset_dim(7, -2) == 5


def test_windows_have_one_spelling():
    """(T + a)//s: two 2-step pools are one 4-step pool, a valid 3-wide convolution then a
    2-step pool is (T-2)//2."""
    pool2 = lambda d: window_output_dim(d, 2, 2)  # noqa: E731
    assert pool2(pool2("T")) == window_output_dim("T", 4, 4) == "T//4"
    assert pool2(window_output_dim("T", 3, 1)) == "(T-2)//2"


def test_chains_of_windows_and_offsets_evaluate_as_the_static_rules():
    rng = random.Random(0)
    for _ in range(500):
        steps = [(rng.choice("ow"), rng.randint(-4, 4), rng.randint(1, 3)) for _ in range(rng.randint(1, 4))]
        named = "T"
        for kind, a, s in steps:
            named = offset_dim(named, a) if kind == "o" else window_output_dim(named, a, s)
        for size in range(40):
            static = size
            for kind, a, s in steps:
                static = static + a if kind == "o" else window_output_dim(static, a, s)
            assert evaluate_dim(named, {"T": size}) == static, (steps, named, size)


@pytest.mark.parametrize("span,stride", [(3, 1), (1, 1), (2, 2), (3, 2), (0, 1), (-1, 3)])
@pytest.mark.parametrize("size", [5, 9, 12])
def test_window_expressions_evaluate_to_the_static_rule(size, span, stride):
    named = window_output_dim("T", span, stride)
    assert evaluate_dim(named, {"T": size}) == window_output_dim(size, span, stride)
    # and a window after a window
    second = window_output_dim(named, 2, 1)
    assert evaluate_dim(second, {"T": size}) == (size - span) // stride + 1 - 1


@pytest.mark.parametrize("name", ["None", "with", "True", "lambda", "L1"])
def test_any_identifier_is_a_name(name):
    """The names are substituted before the arithmetic is parsed: Python's keywords are names too."""
    assert evaluate_dim(window_output_dim(name, 3, 2), {name: 11}) == 5


def test_unknown_names_and_foreign_syntax_are_refused():
    with pytest.raises(ValueError, match="not known"):
        evaluate_dim("S-1", {"T": 4})
    with pytest.raises(ValueError):
        evaluate_dim("__import__('os')", {"T": 4})
    with pytest.raises(ValueError):
        evaluate_dim("?", {"T": 4})
