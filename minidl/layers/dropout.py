"""Dropout (Srivastava et al. 2014), in the "inverted" form PyTorch uses.

Reference: N. Srivastava, G. Hinton, A. Krizhevsky, I. Sutskever, R. Salakhutdinov,
"Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 15, 2014.

In train mode each element is kept with probability 1 - p and scaled so that the expected
output equals the input::

    mask = [u >= p] / (1 - p),   u ~ U[0, 1) drawn on the host from the layer's generator
    out  = mask * x,   dx = mask * dout,   Rout = mask * Rx,   R{dx} = mask * Rdout

In eval mode out = x. The mask is random, so a gradient check (which calls forward many
times) needs the same mask every time: set ``freeze_mask`` (or use ``with
layer.frozen_mask():``) and forward reuses the last mask instead of drawing a new one.
"""
import contextlib

from .. import backend
from .base import Layer, expect_forward_done, expect_input, expect_output_grad, expect_real

__all__ = ["Dropout"]


class Dropout(Layer):
    """Zero each element with probability ``p`` in train mode, scale the rest by 1/(1-p).

    Args:
        p: drop probability, in [0, 1).
        rng: host generator for the masks (``minidl.default_rng(seed)``); a fresh unseeded
            one when None.

    Attributes:
        freeze_mask: when True, forward reuses the last mask (drawing one if there is none).
        mask: the last mask drawn, shape of x, values 0 or 1/(1-p); None before the first.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        p = expect_real("Dropout", "p", p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout expects a drop probability p in [0, 1), got p={p}; "
                             "p=1 would drop everything")
        self.p = p
        self.rng = rng if rng is not None else backend.default_rng()
        self.freeze_mask = False
        self.mask = None

    @contextlib.contextmanager
    def frozen_mask(self):
        """Context manager: reuse one mask for every forward inside the block."""
        before = self.freeze_mask
        self.freeze_mask = True
        try:
            yield self
        finally:
            self.freeze_mask = before

    def is_random(self):
        """True in train mode with p > 0 and no frozen mask: forward draws a new mask."""
        return self.training and self.p > 0 and not self.freeze_mask

    @contextlib.contextmanager
    def fixed_randomness(self):
        """One mask for every forward inside the block, drawn by the first; afterwards the
        mask, ``freeze_mask`` and the generator's state are as they were on entry (so a
        gradient check leaves the training run's random stream untouched)."""
        saved = (self.mask, self.freeze_mask, self.rng.bit_generator.state)
        self.mask, self.freeze_mask = None, True
        try:
            yield self
        finally:
            self.mask, self.freeze_mask = saved[0], saved[1]
            self.rng.bit_generator.state = saved[2]

    def _draw_mask(self, x):
        if self.freeze_mask and self.mask is not None:
            if tuple(self.mask.shape) != tuple(x.shape):
                raise ValueError(
                    f"Dropout with freeze_mask set expects input of the frozen mask's shape "
                    f"{tuple(self.mask.shape)}, got {tuple(x.shape)}; unset freeze_mask to "
                    "draw a new mask")
            return self.mask
        keep = self.rng.random(x.shape) >= self.p  # (shape of x), on the host
        self.mask = backend.asarray(keep / (1.0 - self.p), dtype=x.dtype)  # shape of x
        return self.mask

    def forward(self, x):
        expect_input(self, x)
        self.cache["x"] = x
        if not self.training:
            self.cache["mask"] = None
            return x
        mask = self._draw_mask(x)
        backend.check_same_device("Dropout.forward(x)", x, mask)
        self.cache["mask"] = mask
        return mask * x  # shape of x

    def backward(self, dout):
        expect_forward_done(self, dout)
        expect_output_grad(self, dout, self.cache["x"].shape)
        self.cache["dout"] = dout
        mask = self.cache["mask"]
        return dout if mask is None else mask * dout

    def jvp(self, Rx):
        mask = self.cache["mask"]
        return Rx if mask is None else mask * Rx

    def backward_rop(self, Rdout):
        mask = self.cache["mask"]
        return Rdout if mask is None else mask * Rdout

    def extra_repr(self):
        return f"p={self.p:g}"
