"""When a training step runs as one-core parts of its batch: the rule the compiler reads to
choose the step's forms (training/graphs.py) and the runtime to split it (runtime/training.py,
_batch_parts), kept apart from both so that neither imports the other."""

# A step is split (see _batch_parts) from this many multiply-adds per sample, and this many per
# trainable weight: measured in alternating processes on 2 cores, split against whole, the
# MNIST CNN (2.6M per sample, 12 per weight) 16.4-17.0 against 17.2-17.6 ms a step, and
# 27-28 ms when the cores were far apart; convolutional GAN halves (9-34 per weight)
# 0.65-0.93x; tiny_resnet (762) 0.85-0.98x; but the MNIST MLP (1 per weight: its RMSprop
# update over 400k weights is a quarter of its step) 1.3-2.2x slower, and the Iris MLP
# (a 0.09 ms step) 2.5x.
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


def worth_splitting(macs: int, weights: int, normalizations: int = 0) -> bool:
    """Whether a splittable step of ``macs`` multiply-adds per sample and ``weights`` trainable
    weights (those updated whole), with ``normalizations`` BatchNormalization layers normalizing
    by the batch, runs faster in one-core parts of its batch."""
    return (macs >= SPLIT_MIN_MACS and macs >= SPLIT_MIN_MACS_PER_WEIGHT * weights
            and macs >= SPLIT_MIN_MACS_PER_EXCHANGE * normalizations)
