"""When a training step runs as one-core parts of its batch: the rule the compiler reads to
choose the step's forms (training/graphs.py) and the runtime to split it (runtime/training.py,
_batch_parts), kept apart from both so that neither imports the other."""

# A step is split (see _batch_parts) from this many multiply-adds per trainable weight: measured
# in alternating processes on 2 cores, split against whole, the MNIST CNN (2.6M per sample, 12
# per weight) 16.4-17.0 against 17.2-17.6 ms a step, and 27-28 ms when the cores were far apart;
# convolutional GAN halves (9-34 per weight) 0.65-0.93x; tiny_resnet (762) 0.85-0.98x; but the
# MNIST MLP (1 per weight: its RMSprop update over 400k weights is a quarter of its step)
# 1.3-2.2x slower, and the Iris MLP (a 0.09 ms step) 2.5x. A step without recurrences splits
# at any size past that (stop 35, on the AVX-512 machine: a 9x9x2 Conv2D(8) model of 7k
# multiply-adds a sample 0.62-0.67 against 0.98-1.02 ms a step at batch 128; 16x16x1 Conv2D(8),
# 18k, 0.86-0.88 against 0.85-0.87; Dense(64) over 50 steps of 16 features, 52k, 0.86-1.01
# against 1.02-1.03; Conv2D + GroupNormalization on 8x8x3, 28k, 1.02 against 1.26-1.30, and on
# 32x32x3, 885k, 19.5-20.1 against 22.4-22.9; Conv2D + LayerNormalization on 32x32x3 21.8-22.3
# against 27.2-28.2), once 1M made the floor for every step; one through recurrences from
# this many (or by its rows, below).
SPLIT_MIN_MACS = 1_000_000
SPLIT_MIN_MACS_PER_WEIGHT = 4
# A step whose parts exchange BatchNormalization's sums runs in phases, two for each such
# layer's forward and one for its gradient, each costing some 0.1-0.25 ms of handing over
# between the cores, and its statistics take more passes than onnxruntime's training-mode op:
# so from this many multiply-adds per sample per such layer. Measured in alternating processes
# on 32x32x3 Conv-BN-ReLU CNNs at batch 128, split against whole: 2.6M per layer (16 and 32
# channels) 0.98x the speed, 5.1M (32 and 32) 1.06x, 6.1M (32, 32, 64, 64) 1.07x, 9.9M (32
# and 64) 1.06x; 0.65M (16x16x3 inputs) 0.91x.
SPLIT_MIN_MACS_PER_EXCHANGE = 4_000_000


# A step through recurrences (their time steps added up: ``steps``) also splits at fewer
# multiply-adds, for batches of this many rows and more whose rows times steps reach the
# second number: a recurrence's Scan runs a handful of small ops a time step, which one core runs
# with less overhead than two. Measured split against whole in alternating rounds (Adam, 16
# features, T steps of u units): at 128 rows GRU T=50 u=64 8.5 against 11.8 ms, u=16 3.2 against
# 3.8, T=20 u=32 2.3 against 2.9, SimpleRNN T=100 u=32 3.0 against 4.3, but T=10 1.05 against
# 0.90 (GRU) and 0.90 against 0.76 (LSTM); at 64 rows GRU T=50 u=16 2.2 against 2.6, SimpleRNN
# T=50 u=64 2.0 against 2.1, but T=20 1.7 against 1.5 (GRU) and 1.6 against 1.4 (LSTM); at 32
# rows, where the GRU's and SimpleRNN's forward passes are onnxruntime's fused ops, 0.8-1.1x.
SPLIT_MIN_RECURRENT_ROWS = 64
SPLIT_MIN_RECURRENT_ROWS_X_STEPS = 2_500


def worth_splitting(macs: int, weights: int, normalizations: int = 0, steps: int = 0, rows: int | None = None) -> bool:
    """Whether a splittable step of ``macs`` multiply-adds per sample and ``weights`` trainable
    weights (those updated whole), with ``normalizations`` BatchNormalization layers normalizing
    by the batch and ``steps`` recurrent time steps, runs faster in one-core parts of its batch
    of ``rows`` (None: unknown)."""
    if macs < SPLIT_MIN_MACS_PER_WEIGHT * weights or macs < SPLIT_MIN_MACS_PER_EXCHANGE * normalizations:
        return False
    if not steps:
        return True
    return macs >= SPLIT_MIN_MACS or (rows is not None and rows >= SPLIT_MIN_RECURRENT_ROWS
                                      and rows * steps >= SPLIT_MIN_RECURRENT_ROWS_X_STEPS)
