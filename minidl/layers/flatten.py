"""Flatten: (N, d1, d2, ...) -> (N, d1 * d2 * ...), in C order as PyTorch's flatten(1).

Backward and both R-operator passes just reshape back.
"""
from .base import Layer

__all__ = ["Flatten"]


class Flatten(Layer):
    """Keep the batch axis, join all the others."""

    def forward(self, x):
        self.cache["shape"] = x.shape
        return x.reshape(x.shape[0], -1)  # (N, prod(rest))

    def backward(self, dout):
        return dout.reshape(self.cache["shape"])

    def jvp(self, Rx):
        return Rx.reshape(Rx.shape[0], -1)

    def backward_rop(self, Rdout):
        return Rdout.reshape(self.cache["shape"])
