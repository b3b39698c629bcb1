"""Train the iris MLP of examples/iris_mlp.kdl (SGD, 100 epochs) and report test accuracy.

    python examples/train_iris.py
"""
from pathlib import Path

import kcompile
from kcompile.datasets import iris
from kcompile.utils import to_categorical

HERE = Path(__file__).resolve().parent


def main():
    (x_train, y_train), (x_test, y_test) = iris.split(test_fraction=0.2, seed=0)
    mean, std = x_train.mean(0), x_train.std(0)  # standardize with the training statistics
    model = kcompile.compile(HERE / "iris_mlp.kdl")
    history = model.fit((x_train - mean) / std, to_categorical(y_train, 3), epochs=100, batch_size=16, verbose=0)
    loss, accuracy = model.evaluate((x_test - mean) / std, to_categorical(y_test, 3), verbose=0)
    print(f"final training loss {history.history['loss'][-1]:.4f}, accuracy {history.history['accuracy'][-1]:.4f}")
    print(f"test loss {loss:.4f}, test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
