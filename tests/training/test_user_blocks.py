"""User-defined layers as blocks with weights of their own (an activation, a normalization and
an attention variant): their gradients against float64 finite differences, and a model built
from them training with a custom loss expression."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients  # noqa: E402

BLOCKS = """
block Swish(units: int) {            # x * sigmoid(beta * x) with a trainable beta per unit
    input x
    weight beta: [units] = ones
    output x * sigmoid(beta * x)
}

block RMSNorm(units: int, epsilon: float = 1e-6) {
    input x
    weight gamma: [units] = ones
    output x / sqrt(mean(square(x), axis=-1, keepdims=true) + epsilon) * gamma
}

block SelfAttention(dim: int) {      # one head of scaled dot-product attention over the steps
    input x
    weight wq: [dim, dim] = glorot_uniform
    weight wk: [dim, dim] = glorot_uniform
    weight wv: [dim, dim] = glorot_uniform
    q = matmul(x, wq)
    k = matmul(x, wk)
    v = matmul(x, wv)
    scores = softmax(matmul(q, transpose(k, perm=(0, 2, 1))) / sqrt(dim))
    output matmul(scores, v)
}
"""


@pytest.mark.parametrize("body, shape", [
    ("y = Swish(4)(Dense(4)(x))", (3, 4)),
    ("y = RMSNorm(4)(Dense(4)(x))", (3, 4)),
    ("y = SelfAttention(4)(x)", (2, 5, 4)),
])
def test_block_weights_get_exact_gradients(body, shape):
    src = BLOCKS + f"model m {{\n    input x: float64[{', '.join(map(str, shape[1:]))}]\n    {body}\n    output y\n}}\n"
    checked, _ = check_gradients(src, {"x": np.random.default_rng(0).normal(size=shape)})
    assert checked >= 12


def test_block_forward_matches_numpy():
    src = BLOCKS + """model m {
        input x: float32[5, 4]
        a = SelfAttention(4)(x)
        n = RMSNorm(4)(a)
        y = Swish(4)(n)
        output y
    }"""
    m = kcompile.compile_string(src)
    rng = np.random.default_rng(1)
    weights = dict(zip(m.weight_names, [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in m.get_weights()]))
    m.set_weights(list(weights.values()))
    w = {n.split("/")[-1]: v.astype(np.float64) for n, v in weights.items()}
    x = rng.normal(size=(3, 5, 4))
    q, k, v = x @ w["wq"], x @ w["wk"], x @ w["wv"]
    s = q @ k.transpose(0, 2, 1) / 2.0
    s = np.exp(s - s.max(-1, keepdims=True))
    a = (s / s.sum(-1, keepdims=True)) @ v
    n = a / np.sqrt(np.mean(a * a, -1, keepdims=True) + 1e-6) * w["gamma"]
    want = n / (1 + np.exp(-w["beta"] * n))
    np.testing.assert_allclose(m.predict(x.astype(np.float32)), want, rtol=1e-4, atol=1e-5)


def test_model_of_blocks_trains_with_a_custom_loss():
    """Which of 6 steps holds the largest value: attention over the steps, then a per-step score.
    The custom loss adds an L2 term on the weights to the cross-entropy."""
    src = BLOCKS + """model finder {
        input x: float32[6, 1]
        h = Dense(8)(x)
        h = SelfAttention(8)(h) + h
        h = RMSNorm(8)(h)
        h = Swish(8)(h)
        s = Dense(1)(h)
        logits = Flatten()(s)
        output logits
        train {
            target label: int64[]
            loss = (mean(sparse_categorical_crossentropy(label, logits, from_logits=true))
                    + 1e-4 * l2(weights))
            optimizer = Adam(learning_rate=0.01)
            metrics = [accuracy(label, logits)]
        }
    }"""
    m = kcompile.compile_string(src, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6, 1)).astype(np.float32)
    y = x[:, :, 0].argmax(1)
    m.fit(x[:2500], y[:2500], batch_size=64, epochs=15, verbose=0)
    loss, accuracy = m.evaluate(x[2500:], y[2500:], verbose=0)
    assert accuracy >= 0.9, accuracy  # chance is 1/6
    # The loss is the stated expression: cross-entropy plus 1e-4 * the sum of squared kernels
    # (the weights of rank 2 or more: the blocks' attention matrices included).
    logits = m.predict(x[2500:]).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ce = -np.mean(np.log(p[np.arange(500), y[2500:]]))
    l2 = sum(float(np.sum(w.astype(np.float64) ** 2)) for w in m.get_weights() if w.ndim >= 2)
    np.testing.assert_allclose(loss, ce + 1e-4 * l2, rtol=1e-4)
