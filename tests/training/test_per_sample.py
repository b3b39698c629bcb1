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
