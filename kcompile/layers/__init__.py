"""Layers, grouped by family as in Keras. ``LAYERS`` maps the language's layer names to classes."""
from .base import Layer
from .activations import ELU, Activation, LeakyReLU, PReLU, ReLU, Softmax
from .attention import AdditiveAttention, Attention, MultiHeadAttention
from .convolutional import (Conv1D, Conv1DTranspose, Conv2D, Conv2DTranspose, Conv3D, Conv3DTranspose,
                            DepthwiseConv1D, DepthwiseConv2D, SeparableConv1D, SeparableConv2D)
from .core import Dense, Embedding, Identity, Masking
from .merging import Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract
from .normalization import BatchNormalization, GroupNormalization, LayerNormalization, UnitNormalization
from .preprocessing import (CenterCrop, Normalization, RandomBrightness, RandomContrast, RandomCrop, RandomFlip,
                            RandomRotation, RandomTranslation, RandomZoom, Rescaling, Resizing)
from .pooling import (AveragePooling1D, AveragePooling2D, AveragePooling3D, GlobalAveragePooling1D,
                      GlobalAveragePooling2D, GlobalAveragePooling3D, GlobalMaxPooling1D, GlobalMaxPooling2D,
                      GlobalMaxPooling3D, MaxPooling1D, MaxPooling2D, MaxPooling3D)
from .recurrent import GRU, LSTM, SimpleRNN
from .regularization import (ActivityRegularization, AlphaDropout, Dropout, GaussianDropout, GaussianNoise,
                             SpatialDropout1D, SpatialDropout2D)
from .reshaping import (Cropping1D, Cropping2D, Cropping3D, Flatten, Permute, RepeatVector, Reshape, UpSampling1D,
                        UpSampling2D, UpSampling3D, ZeroPadding1D, ZeroPadding2D, ZeroPadding3D)
from .wrappers import Bidirectional, TimeDistributed
from .functions import FUNCTIONS, NUMBER_FUNCTIONS

LAYERS = {cls.__name__: cls for cls in [
    Dense, Embedding, Masking, Rescaling, Normalization,
    Resizing, CenterCrop, RandomFlip, RandomCrop, RandomContrast, RandomBrightness,
    RandomTranslation, RandomRotation, RandomZoom,
    Conv1D, Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D,
    Conv1DTranspose, DepthwiseConv1D, SeparableConv1D,
    Conv3D, Conv3DTranspose, MaxPooling3D, AveragePooling3D, GlobalAveragePooling3D, GlobalMaxPooling3D,
    MaxPooling1D, MaxPooling2D, AveragePooling1D, AveragePooling2D,
    GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalMaxPooling2D,
    SimpleRNN, LSTM, GRU,
    BatchNormalization, LayerNormalization, GroupNormalization, UnitNormalization,
    Dropout, SpatialDropout1D, SpatialDropout2D, GaussianNoise,
    GaussianDropout, AlphaDropout, ActivityRegularization, Identity,
    Flatten, Reshape, Permute, RepeatVector, ZeroPadding1D, ZeroPadding2D, Cropping1D, Cropping2D,
    UpSampling1D, UpSampling2D,
    ZeroPadding3D, Cropping3D, UpSampling3D,
    Activation, ReLU, LeakyReLU, PReLU, ELU, Softmax,
    Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot,
    TimeDistributed, Bidirectional, MultiHeadAttention, Attention, AdditiveAttention,
]}

__all__ = ["Layer", "LAYERS", "FUNCTIONS", "NUMBER_FUNCTIONS"]
