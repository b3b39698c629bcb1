"""Step masks (Embedding(mask_zero=true)) through the layers Keras 3 passes them through
unchanged: TimeDistributed, BatchNormalization, PReLU, GroupNormalization, Bidirectional
with return_sequences and a recurrent layer read backwards; and BatchNormalization's
training statistics taken over the unmasked steps only, as Keras 3."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autodiff"))
from gradcheck import check_gradients  # noqa: E402

IDS = np.array([[3, 5, 7, 0, 0, 0], [0, 0, 4, 2, 0, 9], [1, 2, 3, 4, 5, 6]])


def masked_mean(x, mask):
    return (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


@pytest.mark.parametrize("layer", ["TimeDistributed(Dense(4))", "BatchNormalization()", "PReLU()",
                                   "GroupNormalization(groups=5)", "Bidirectional(GRU(3, return_sequences=true))",
                                   "LSTM(3, return_sequences=true, go_backwards=true)"])
def test_layer_passes_the_mask_on(layer):
    """GlobalAveragePooling1D after the layer averages the unmasked steps of its output (the
    input's mask as it is, even for a layer reading the sequence backwards, as Keras)."""
    m = kcompile.compile_string(f"""model m {{
        input ids: int64[6]
        e = Embedding(20, 5, mask_zero=true)(ids)
        s = {layer}(e)
        y = GlobalAveragePooling1D()(s)
        output s, y
    }}""")
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(size=w.shape).astype(w.dtype) + ("variance" in n) * 2.0
                   for n, w in zip(m.weight_names, m.get_weights())])
    s, y = m.predict(IDS)
    np.testing.assert_allclose(y, masked_mean(s.astype(np.float64), (IDS > 0).astype(np.float64)),
                               rtol=1e-5, atol=1e-6)


BN = """model m {{
    input ids: int64[6]
    Embedding(20, 5, mask_zero=true{dtype})
    BatchNormalization({args})
    GlobalAveragePooling1D()
    p = Dense(1)
    output p
    train {{
        loss = mse
        optimizer = SGD(learning_rate=0.0)
    }}
}}"""


@pytest.mark.parametrize("axis", [-1, 1])
def test_batch_normalization_trains_on_the_unmasked_steps_statistics(axis):
    """With momentum 0 one step leaves the batch statistics as the moving ones: the mean and
    (biased) variance of the unmasked steps, each sum over the number of unmasked values + 1e-7."""
    m = kcompile.compile_string(BN.format(dtype="", args=f"axis={axis}, momentum=0.0"), seed=0)
    m.train_on_batch(IDS, np.zeros((3, 1), np.float32))
    weights = dict(zip(m.weight_names, m.get_weights()))
    x = weights["embedding/embeddings"].astype(np.float64)[IDS]
    w = np.broadcast_to((IDS > 0).astype(np.float64)[..., None], x.shape)
    axes = (0, 1) if axis == -1 else (0, 2)
    count = w.sum(axes, keepdims=True) + 1e-7
    mean = (x * w).sum(axes, keepdims=True) / count
    var = ((x - mean) ** 2 * w).sum(axes, keepdims=True) / count
    np.testing.assert_allclose(weights["batch_normalization/moving_mean"], mean.ravel(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(weights["batch_normalization/moving_variance"], var.ravel(), rtol=1e-5)


def test_masked_batch_statistics_gradients():
    src = BN.format(dtype=", dtype=float64", args="").split("    train {")[0] + "}"
    checked, _ = check_gradients(src, {"ids": IDS}, training=True)
    assert checked > 0
