"""Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate (functional form)."""
import numpy as np
import pytest

import reference as ref
from reference import random_input

MERGES = {
    "Add": lambda xs: sum(xs),
    "Subtract": lambda xs: xs[0] - xs[1],
    "Multiply": lambda xs: np.prod(xs, axis=0),
    "Average": lambda xs: np.mean(xs, axis=0),
    "Maximum": lambda xs: np.max(xs, axis=0),
    "Minimum": lambda xs: np.min(xs, axis=0),
}


def inputs_src(names, shape):
    return "\n".join(f"    input {n}: float32[{', '.join(map(str, shape))}]" for n in names)


@pytest.mark.parametrize("layer", list(MERGES))
@pytest.mark.parametrize("shape", [(4,), (3, 5), (4, 3, 2)])
def test_merge_two(run, rng, close, layer, shape):
    src = f"""
model m {{
{inputs_src("ab", shape)}
    y = {layer}()(a, b)
    output y
}}"""
    a, b = random_input(shape, rng), random_input(shape, rng)
    y, _ = run(src, {"a": a, "b": b})
    close(y, MERGES[layer]([a.astype(np.float64), b.astype(np.float64)]))


@pytest.mark.parametrize("layer", [name for name in MERGES if name != "Subtract"])
@pytest.mark.parametrize("n", [3, 4])
def test_merge_many(run, rng, close, layer, n):
    names = "abcd"[:n]
    src = f"""
model m {{
{inputs_src(names, (2, 3))}
    y = {layer}()({', '.join(names)})
    output y
}}"""
    xs = {k: random_input((2, 3), rng) for k in names}
    y, _ = run(src, xs)
    close(y, MERGES[layer]([xs[k].astype(np.float64) for k in names]))


@pytest.mark.parametrize("layer", list(MERGES))
def test_merge_same_tensor_twice(run, rng, close, layer):
    src = f"""
model m {{
    input a: float32[5]
    y = {layer}()(a, a)
    output y
}}"""
    a = random_input((5,), rng)
    y, _ = run(src, a)
    close(y, MERGES[layer]([a.astype(np.float64)] * 2))


@pytest.mark.parametrize("layer", list(MERGES))
def test_merge_dense_branches(run, rng, close, layer):
    src = f"""
model m {{
    input x: float32[4]
    h1 = Dense(3)(x)
    h2 = Dense(3, activation=tanh)(x)
    y = {layer}()(h1, h2)
    output y
}}"""
    x = random_input((4,), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    close(y, MERGES[layer]([ref.dense(x, k1, b1), np.tanh(ref.dense(x, k2, b2))]))


@pytest.mark.parametrize("layer", ["Add", "Maximum", "Average", "Subtract"])
def test_merge_conv_branches(run, rng, close, layer):
    src = f"""
model m {{
    input image: float32[6, 7, 2]
    h1 = Conv2D(3, 3, padding=same)(image)
    h2 = Conv2D(3, 1)(image)
    y = {layer}()(h1, h2)
    output y
}}"""
    x = random_input((6, 7, 2), rng)
    y, (k1, b1, k2, b2) = run(src, x)
    close(y, MERGES[layer]([ref.conv(x, k1, b1, padding="same"), ref.conv(x, k2, b2)]))


@pytest.mark.parametrize("sa,sb,axis", [
    ((4,), (3,), None), ((4,), (3,), -1), ((4,), (3,), 1), ((2, 3), (2, 5), -1), ((2, 3), (4, 3), 1),
    ((2, 3), (4, 3), -2), ((3, 2, 2), (3, 2, 5), 3), ((3, 2, 2), (3, 4, 2), 2), ((3, 2, 2), (1, 2, 2), 1),
])
def test_concatenate(run, rng, close, sa, sb, axis):
    arg = "" if axis is None else f"axis={axis}"
    src = f"""
model m {{
    input a: float32[{', '.join(map(str, sa))}]
    input b: float32[{', '.join(map(str, sb))}]
    y = Concatenate({arg})(a, b)
    output y
}}"""
    a, b = random_input(sa, rng), random_input(sb, rng)
    y, _ = run(src, {"a": a, "b": b})
    close(y, np.concatenate([a, b], axis=-1 if axis is None else axis))


def test_concatenate_three_and_list_input_order(run, rng, close):
    src = """
model m {
    input a: float32[2]
    input b: float32[3]
    input c: float32[4]
    y = Concatenate()(c, a, b)
    output y
}"""
    a, b, c = random_input((2,), rng), random_input((3,), rng), random_input((4,), rng)
    y, _ = run(src, [a, b, c])  # a list, in the model's input order
    close(y, np.concatenate([c, a, b], axis=-1))


def test_concatenate_conv_channels(run, rng, close):
    src = """
model m {
    input image: float32[5, 6, 2]
    h1 = Conv2D(3, 3, padding=same)(image)
    h2 = MaxPooling2D(3, strides=1, padding=same)(image)
    y = Concatenate()(h1, h2, image)
    output y
}"""
    x = random_input((5, 6, 2), rng)
    y, (k, b) = run(src, x)
    close(y, np.concatenate([ref.conv(x, k, b, padding="same"), ref.pool(x, "max", 3, 1, "same"), x], axis=-1))


def test_merge_two_outputs(run, rng, close):
    src = """
model m {
    input a: float32[3]
    input b: float32[3]
    s = Add()(a, b)
    d = Subtract()(a, b)
    output s, d
}"""
    a, b = random_input((3,), rng), random_input((3,), rng)
    (s, d), _ = run(src, {"a": a, "b": b})
    close(s, a.astype(np.float64) + b)
    close(d, a.astype(np.float64) - b)


@pytest.mark.parametrize("layer", [*MERGES, "Concatenate", "Dot"])
def test_inputs_of_two_dtypes_are_a_located_error(located, layer):
    """(Concatenate said "concat needs equal shapes except on the joined axis; got [N, 2], [N, 2]
    on axis -1" of equal shapes; the others named the op they emit: "Mul of int64 and float32")"""
    call = "Dot(1)" if layer == "Dot" else f"{layer}()"
    d = located(f"model m {{\n    input a: int64[2]\n    input b: float32[2]\n    c = {call}(a, b)\n    output c\n}}\n",
                4, f"{layer} of int64 and float32", col=9)
    assert d.message == f"{layer} of int64 and float32: inputs must have one dtype"
    assert d.hint == "cast one input with cast(x, float32)"


def test_three_inputs_of_two_dtypes_are_a_located_error(located):
    d = located("model m {\n    input a: float64[2]\n    input b: float32[2]\n    c = Concatenate()([a, b, b])\n"
                "    output c\n}\n", 4, "Concatenate of float64, float32 and float32", col=9)
    assert d.message == "Concatenate of float64, float32 and float32: inputs must have one dtype"
    assert d.hint == "cast the inputs to one dtype, e.g. with cast(x, float64)"
