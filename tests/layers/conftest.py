"""Helpers for the layer tests: compile a model at opt_level 1 (default) and 0,
give both the same random weights (Keras order and layouts), run both, check
they agree, and hand back the output and the weights for the numpy reference."""
import zlib

import numpy as np
import pytest

import kcompile

RTOL = ATOL = 1e-5


def random_weights(model, rng, scale=0.5):
    """Random weights for every parameter, in the model's (Keras) order.
    Moving variances are positive; everything else is uniform in [-scale, scale]."""
    out = []
    for name, w in zip(model.weight_names, model.get_weights()):
        if name.endswith("moving_variance"):
            out.append(rng.uniform(0.2, 2.0, w.shape).astype(w.dtype))
        else:
            out.append(rng.uniform(-scale, scale, w.shape).astype(w.dtype))
    return out


class Runner:
    def __init__(self, rng):
        self.rng = rng

    def __call__(self, src, x, weights=None, seed=0):
        """Compile ``src`` twice (opt_level=1 and 0), set ``weights`` (random when None),
        predict ``x`` with both and check that they agree. Returns (output, weights)."""
        fast = kcompile.compile_string(src, seed=seed)
        plain = kcompile.compile_string(src, seed=seed, opt_level=0)
        assert fast.weight_names == plain.weight_names
        if weights is None:
            weights = random_weights(fast, self.rng)
        weights = list(weights)
        if weights:
            fast.set_weights(weights)
            plain.set_weights(weights)
        y = fast.predict(x)
        y0 = plain.predict(x)
        if isinstance(y, list):
            assert isinstance(y0, list) and len(y) == len(y0)
            for a, b in zip(y, y0):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg="opt_level 0 and 1 differ")
        else:
            assert y.shape == y0.shape, f"opt_level 1 gives {y.shape}, opt_level 0 gives {y0.shape}"
            np.testing.assert_allclose(y, y0, rtol=RTOL, atol=ATOL, err_msg="opt_level 0 and 1 differ")
        return y, weights


@pytest.fixture
def rng(request):
    # A seed per test, stable across runs.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def run(rng):
    return Runner(rng)


def assert_close(actual, expected):
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.fixture
def close():
    return assert_close


@pytest.fixture
def grouped_conv_transpose(monkeypatch):
    """onnx's reference ConvTranspose (which gradcheck runs float64 graphs on) mishandles
    group > 1 with several output channels per group (it slices the kernel by output channels):
    give it one that runs each group as a group-1 ConvTranspose. Depthwise input gradients need it."""
    import onnx.reference
    from onnx.reference.ops import op_conv_transpose

    class ConvTranspose(op_conv_transpose.ConvTranspose):  # (the evaluator takes the op's name from the class's)
        op_domain = ""

        def _run(self, X, W, B=None, group=None, **attrs):
            if not group or group == 1:
                return super()._run(X, W, B, group=1, **attrs)
            c = X.shape[1] // group
            parts = [super(ConvTranspose, self)._run(X[:, g * c:(g + 1) * c], W[g * c:(g + 1) * c], None,
                                                            group=1, **attrs)[0] for g in range(group)]
            y = np.concatenate(parts, axis=1)
            return (y if B is None else y + B.reshape((1, -1) + (1,) * (y.ndim - 2)),)

    original = onnx.reference.ReferenceEvaluator
    monkeypatch.setattr(onnx.reference, "ReferenceEvaluator",
                        lambda model, new_ops=(), **kw: original(model, new_ops=[*new_ops, ConvTranspose], **kw))


@pytest.fixture
def regularization_loss():
    """(source, x) -> the evaluation loss of ``source``'s model (given an mse train section and
    random weights) against its own predictions, which is its regularization penalty alone, and
    the weights by name."""
    def loss(source, x):
        m = kcompile.compile_string(source.replace("\n}\n", "\n    train {\n        loss = mse\n"
                                                   "        optimizer = SGD(0.0)\n    }\n}\n"))
        m.set_weights(random_weights(m, np.random.default_rng(5)))
        return m.evaluate(x, m.predict(x), verbose=0), dict(zip(m.weight_names, m.get_weights()))
    return loss
