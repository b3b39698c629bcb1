"""Whether a training step may be split into parts of its batch (TrainingProgram.per_sample), and the
multiply-adds per sample that decide whether it pays (macs_per_sample)."""
from pathlib import Path

import pytest

import kcompile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MODEL = """
model m {{
    input x: float32[6]
    {layers}
    y = Dense(3, activation=softmax)
    output y
    train {{
        loss = {loss}
        optimizer = Adam()
    }}
}}
"""


def per_sample(loss="categorical_crossentropy", layers="Dense(4, activation=relu)"):
    return kcompile.compile_string(MODEL.format(loss=loss, layers=layers)).manifest["training"]["per_sample"]


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mean(categorical_crossentropy(y)) + 1e-3 * l2(weights)",
                                  "0.5 * mse(y) - mse(y) / 4 + 2.0", "-categorical_crossentropy"])
def test_means_over_samples_and_weight_penalties_split(loss):
    assert per_sample(loss) is True


@pytest.mark.parametrize("loss", ["sum(categorical_crossentropy(y))", "mean(mse(y)) * mean(mse(y))",
                                  "1.0 / mean(mse(y))"])
def test_sums_and_products_of_batch_means_do_not(loss):
    assert "not a mean over samples" in per_sample(loss)


def test_batch_statistics_do_not():
    assert "BatchNormalization" in per_sample(layers="Dense(4)\n    BatchNormalization()")


def test_macs_per_sample_of_the_mnist_cnn():
    spec = kcompile.compile(EXAMPLES / "mnist_cnn.kdl").manifest["training"]
    # convolutions to 26x26x32 (9 each) and 11x11x64 (288 each), then 1600x128 and 128x10
    assert spec["macs_per_sample"] == 26 * 26 * 32 * 9 + 11 * 11 * 64 * 288 + 1600 * 128 + 128 * 10


GENERATOR_AND_ATTENTION = """
model m {
    input z: float32[2, 3, 6]
    h = Conv2DTranspose(5, 3, strides=2)(z)
    q = Reshape((35, 8))(Dense(8)(h))
    s = matmul(q, transpose(q))
    y = Dense(2)(s)
    output y
    train {
        loss = mse
        optimizer = SGD()
    }
}
"""


def test_macs_per_sample_counts_transposed_convolutions_and_products_of_activations():
    # Conv2DTranspose: each of 2x3x6 inputs feeds 5 filters x 3x3 taps -> h [5, 7, 5]; Dense(8)
    # over its 35 positions; q q^T: [35, 8] by [8, 35]; Dense(2) over [35, 35]
    spec = kcompile.compile_string(GENERATOR_AND_ATTENTION).manifest["training"]
    assert spec["macs_per_sample"] == 2 * 3 * 6 * 5 * 9 + 35 * 5 * 8 + 35 * 35 * 8 + 35 * 35 * 2


@pytest.mark.parametrize("layer, gates", [("SimpleRNN(5)", 1), ("GRU(5)", 3), ("LSTM(5)", 4)])
def test_macs_per_sample_counts_each_step_of_a_recurrence(layer, gates):
    # 2 steps, each an input product (3 features) and a recurrent one (5 units) into gates x 5
    # units; then the Dense(3) over 5 units
    src = MODEL.format(loss="categorical_crossentropy", layers=f"Reshape((2, 3))\n    {layer}")
    spec = kcompile.compile_string(src).manifest["training"]
    assert spec["macs_per_sample"] == 2 * (3 + 5) * gates * 5 + 5 * 3
