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


def worth_splitting(macs: int, weights: int) -> bool:
    """Whether a splittable step of ``macs`` multiply-adds per sample and ``weights`` trainable
    weights (those updated whole) runs faster in one-core parts of its batch."""
    return macs >= SPLIT_MIN_MACS and macs >= SPLIT_MIN_MACS_PER_WEIGHT * weights
