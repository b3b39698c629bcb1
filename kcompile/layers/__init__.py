"""Layers, grouped by family as in Keras. ``LAYERS`` maps the language's layer names to classes."""
from .base import Layer
from .activations import ELU, Activation, LeakyReLU, ReLU, Softmax
from .convolutional import Conv1D, Conv2D, Conv2DTranspose
from .core import Dense, Embedding
from .merging import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from .normalization import BatchNormalization
from .pooling import (AveragePooling1D, AveragePooling2D, GlobalAveragePooling1D, GlobalAveragePooling2D,
                      GlobalMaxPooling1D, GlobalMaxPooling2D, MaxPooling1D, MaxPooling2D)
from .recurrent import LSTM
from .regularization import Dropout
from .reshaping import Flatten, Permute, Reshape
from .functions import FUNCTIONS

LAYERS = {cls.__name__: cls for cls in [
    Dense, Embedding,
    Conv1D, Conv2D, Conv2DTranspose,
    MaxPooling1D, MaxPooling2D, AveragePooling1D, AveragePooling2D,
    GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalMaxPooling2D,
    LSTM,
    BatchNormalization, Dropout,
    Flatten, Reshape, Permute,
    Activation, ReLU, LeakyReLU, ELU, Softmax,
    Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate,
]}

__all__ = ["Layer", "LAYERS", "FUNCTIONS"]
