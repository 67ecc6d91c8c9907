"""Layers with hand-written forward and backward passes (see ``base.Layer``)."""
from .base import Layer
from .linear import Linear
from .activations import ReLU, LeakyReLU, Sigmoid, Tanh
from .flatten import Flatten
from .sequential import Sequential
from .batchnorm import BatchNorm1d, BatchNorm2d
from .layernorm import LayerNorm
from .groupnorm import GroupNorm
from .dropout import Dropout
from .residual import Residual
from .conv import Conv2d
from .pooling import MaxPool2d, AvgPool2d, GlobalAvgPool2d
