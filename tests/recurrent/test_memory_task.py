"""The LSTM classifier learns a task that needs memory; the bag-of-embeddings baseline cannot."""
import sys
from pathlib import Path

import kcompile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from train_sequence_memory import make_data  # noqa: E402


def test_lstm_beats_bag_of_embeddings():
    x, y = make_data(4000, 12, seed=0)
    x_test, y_test = make_data(1000, 12, seed=1)
    accuracy = {}
    for name in ("memory_lstm", "bag_of_embeddings"):
        model = kcompile.compile(ROOT / "examples" / "sequence_memory.kdl", model=name, seed=0)
        model.fit(x, y, epochs=5, batch_size=64, verbose=0)
        accuracy[name] = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy["memory_lstm"] >= 0.95, accuracy
    assert accuracy["bag_of_embeddings"] <= 0.65, accuracy
