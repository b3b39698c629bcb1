"""BatchNormalization in training form inside a CNN: gradients through the batch statistics
against float64 finite differences, Keras's moving statistics per channel, and a CNN with
BatchNormalization learning real MNIST digits."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.runtime.training import NonFiniteLoss

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "autodiff"))
from gradcheck import check_gradients  # noqa: E402

CNN = """model bn_cnn {
    input image: float32[28, 28, 1]
    Conv2D(16, 3)
    BatchNormalization()
    ReLU()
    MaxPooling2D(2)
    Conv2D(32, 3)
    BatchNormalization(momentum=0.9)
    ReLU()
    MaxPooling2D(2)
    Flatten()
    logits = Dense(10)
    output logits
    train {
        target label: int64[]
        loss = mean(sparse_categorical_crossentropy(label, logits, from_logits=true))
        optimizer = Adam(learning_rate=0.01)
        metrics = [accuracy(label, logits)]
    }
}"""


@pytest.fixture(params=["whole", "in parts"])
def form(request, monkeypatch):
    """The training form as a whole step computes it, and as a step that may run in parts of its
    batch does (the statistics and the gradient's sums through exchanges: ops.nn.emit_exchange,
    identities in a graph run whole)."""
    if request.param == "in parts":
        from kcompile.ops import nn
        made = nn.BatchNormalization.training_form

        def training_form(self, ctx, node):
            out = made(self, ctx, node)
            for n in ctx.g.nodes():
                if n.op == "BatchNormTrain":
                    n.attrs["parts"] = True
            return out
        monkeypatch.setattr(nn.BatchNormalization, "training_form", training_form)
    return request.param


def test_batch_statistics_gradients_inside_a_conv_net(form):
    src = """model m {
        input x: float64[5, 5, 2]
        h = Conv2D(3, 3)(x)
        h = BatchNormalization()(h)
        y = Conv2D(2, 2)(relu(h))
        output y
    }"""
    x = np.random.default_rng(0).normal(size=(4, 5, 5, 2))
    checked, _ = check_gradients(src, {"x": x}, training=True)
    assert checked > 0


@pytest.mark.parametrize("body,shape", [
    ("h = Dense(3)(x)\n    y = Dense(2)(relu(BatchNormalization()(h)))", (6, 4)),           # [N, C]: axis 1
    ("y = Conv2D(2, 2)(relu(BatchNormalization(axis=1)(x * 2.0 + 1.0)))", (3, 3, 4, 4)),  # channels first
    ("y = Dense(2)(relu(BatchNormalization(center=false)(x)))", (3, 4, 3)),              # channels last, rank 3
])
def test_batch_statistics_gradients(body, shape, form):
    """Every lowering of the training form: onnxruntime's training-mode BatchNormalization
    (channels on axis 1), the composed ops (channels elsewhere), and the form in parts."""
    dims = ", ".join(map(str, shape[1:]))
    src = f"model m {{\n    input x: float64[{dims}]\n    {body}\n    output y\n}}"
    x = np.random.default_rng(0).normal(size=shape)
    checked, _ = check_gradients(src, {"x": x}, training=True)
    assert checked > 0


def test_a_batch_holding_inf_does_not_poison_later_steps():
    """onnxruntime writes training-mode BatchNormalization's running statistics into its
    inputs' buffers: were those constants, one batch holding inf would make every later step
    NaN. With the weights restored, the next step gives the loss and the moving statistics
    of a step from the start."""
    m = kcompile.compile_string(CNN, seed=0)
    x = np.random.default_rng(1).random((16, 28, 28, 1), dtype=np.float32)
    labels = np.zeros(16, np.int64)
    start = m.get_weights()
    expected = m.train_on_batch(x, labels)
    first = dict(zip(m.weight_names, m.get_weights()))
    m.set_weights(start)
    bad = x.copy()
    bad[0, 3, 3, 0] = np.inf
    with pytest.raises(NonFiniteLoss):
        m.train_on_batch(bad, labels)
    m.set_weights(start)
    again = m.train_on_batch(x, labels)
    np.testing.assert_allclose(again, expected, rtol=1e-6)
    now = dict(zip(m.weight_names, m.get_weights()))
    statistics = [n for n in now if "moving_" in n]
    assert len(statistics) == 4
    for name in statistics:  # (the optimizer's slots differ from the first step's: not the weights)
        np.testing.assert_allclose(now[name], first[name], rtol=1e-6, err_msg=name)
    assert all(np.isfinite(w).all() for w in now.values())


def test_moving_statistics_per_channel_follow_keras():
    m = kcompile.compile_string(CNN, seed=0)
    x = np.random.default_rng(1).random((32, 28, 28, 1), dtype=np.float32)
    names = m.weight_names
    before = dict(zip(names, m.get_weights()))
    # The first conv's output, computed in numpy from the initial weights.
    k, b = before["conv2d/kernel"].astype(np.float64), before["conv2d/bias"].astype(np.float64)
    patches = np.lib.stride_tricks.sliding_window_view(x[..., 0].astype(np.float64), (3, 3), axis=(1, 2))
    conv = np.einsum("nhwij,ijc->nhwc", patches, k[:, :, 0, :]) + b
    m.train_on_batch(x, np.zeros(32, np.int64))
    after = dict(zip(names, m.get_weights()))
    mean = conv.mean((0, 1, 2))
    var = conv.var((0, 1, 2))
    np.testing.assert_allclose(after["batch_normalization/moving_mean"], 0.01 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(after["batch_normalization/moving_variance"], 0.99 + 0.01 * var, rtol=1e-4)


def test_cnn_with_batchnorm_learns_real_digits():
    with np.load(ROOT / "examples" / "data" / "mnist_sample.npz") as d:
        x, y = d["x"][..., None].astype(np.float32) / 255.0, d["y"].astype(np.int64)
    # (Keras's default momentum 0.99 needs more steps than this short run for its moving statistics)
    m = kcompile.compile_string(CNN.replace("BatchNormalization()", "BatchNormalization(momentum=0.9)"), seed=0)
    m.fit(x[:800], y[:800], batch_size=32, epochs=6, verbose=0)
    _, accuracy = m.evaluate(x[800:], y[800:], verbose=0)
    assert accuracy >= 0.85, accuracy  # 200 held-out real digits; chance is 0.1
