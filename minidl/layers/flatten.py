"""Flatten: (N, d1, d2, ...) -> (N, d1 * d2 * ...), in C order as PyTorch's flatten(1).

Backward and both R-operator passes just reshape back.
"""
from .base import Layer, expect_forward_done, expect_input, expect_output_grad

__all__ = ["Flatten"]


def _rest(shape):
    """prod(shape[1:]), spelt out: reshape(N, -1) cannot infer it when N = 0."""
    size = 1
    for d in shape[1:]:
        size *= int(d)
    return size


class Flatten(Layer):
    """Keep the batch axis, join all the others."""

    def forward(self, x):
        expect_input(self, x)
        if x.ndim < 1:
            raise ValueError("Flatten expects input of shape (N, ...), got a 0-D array")
        self.cache["x"], self.cache["shape"] = x, x.shape
        return x.reshape(x.shape[0], _rest(x.shape))  # (N, prod(rest)); N = 0 works too

    def backward(self, dout):
        expect_forward_done(self, dout)
        shape = self.cache["shape"]
        expect_output_grad(self, dout, (shape[0], _rest(shape)))
        return dout.reshape(shape)

    def jvp(self, Rx):
        return Rx.reshape(Rx.shape[0], _rest(Rx.shape))

    def backward_rop(self, Rdout):
        return Rdout.reshape(self.cache["shape"])
