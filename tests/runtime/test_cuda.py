"""The CUDA provider runs the same graphs with the training state resident on the GPU, and
gives the CPU's numbers. Skipped where no usable NVIDIA GPU is present (onnxruntime's CUDA
provider may use TF32 products on Ampere and later: tolerances allow for it)."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kcompile
from kcompile.runtime.devices import cuda_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fast_path import ROOT, data  # noqa: E402

pytestmark = pytest.mark.skipif(not cuda_available(), reason="no usable CUDA GPU here")


@pytest.mark.parametrize("example", ["mnist_mlp", "mnist_cnn"])
def test_cuda_training_matches_the_cpu_with_state_on_the_gpu(example, tmp_path):
    x, y = data(256)
    runs = {}
    for device in ("cpu", "cuda"):
        m = kcompile.compile(ROOT / "examples" / f"{example}.kdl", seed=0, device=device)
        history = m.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0).history["loss"]
        runs[device] = (history, m.get_weights(), m.predict(x[:32]), m)
    gpu = runs["cuda"][3]
    assert gpu.device == "cuda"
    runner = gpu._runner_for_training()
    assert all(v.device_name().lower() == "cuda" for v in runner.buffers[runner.position].values())
    np.testing.assert_allclose(runs["cuda"][0], runs["cpu"][0], rtol=2e-2)
    for a, b in zip(runs["cuda"][1], runs["cpu"][1]):
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-3)
    np.testing.assert_allclose(runs["cuda"][2], runs["cpu"][2], rtol=5e-2, atol=5e-3)
    gpu.save(tmp_path / "ckpt")  # a checkpoint of GPU state loads and continues on the CPU
    resumed = kcompile.load(tmp_path / "ckpt")
    for a, b in zip(resumed.get_weights(), gpu.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(resumed.fit(x, y, epochs=1, batch_size=64, verbose=0).history["loss"][0])
