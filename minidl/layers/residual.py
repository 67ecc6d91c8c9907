"""Residual connection (He et al. 2016): out = block(x) + shortcut(x).

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016.

The shortcut is the identity when None (or e.g. a 1x1 convolution when the block changes
the shape). Both branches read the same x, so every derivative is a sum of the two::

    out    = block(x) + shortcut(x)
    dx     = block.backward(dout) + shortcut.backward(dout)         (dout itself for identity)
    Rout   = block.jvp(Rx) + shortcut.jvp(Rx)
    R{dx}  = block.backward_rop(Rdout) + shortcut.backward_rop(Rdout)

Residual is a container: its parameters are the block's, then the shortcut's.
"""
from .. import backend
from .base import Layer

__all__ = ["Residual"]


class Residual(Layer):
    """``out = block(x) + shortcut(x)``, the shortcut being the identity when None.

    Args:
        block: the residual branch, any ``Layer``.
        shortcut: the skip branch, a ``Layer`` or None for the identity.

    Shapes: block(x) and shortcut(x) must have the same shape, which is that of out.
    """

    def __init__(self, block, shortcut=None):
        super().__init__()
        for name, layer in (("block", block), ("shortcut", shortcut)):
            if layer is not None and not isinstance(layer, Layer):
                raise TypeError(f"Residual expects a Layer as {name}, got {type(layer).__name__}")
        if block is None:
            raise TypeError("Residual expects a Layer as block, got None")
        self.block = block
        self.shortcut = shortcut

    def children(self):
        kids = [("block", self.block)]
        if self.shortcut is not None:
            kids.append(("shortcut", self.shortcut))
        return kids

    def forward(self, x):
        out_block = self.block.forward(x)  # shape of out
        out_short = x if self.shortcut is None else self.shortcut.forward(x)  # shape of out
        if tuple(out_block.shape) != tuple(out_short.shape):
            which = "the input x (identity shortcut)" if self.shortcut is None else "shortcut(x)"
            raise ValueError(
                f"Residual expects block(x) and {which} of the same shape, got block(x) of "
                f"shape {tuple(out_block.shape)} and {which} of shape "
                f"{tuple(out_short.shape)}; give a shortcut layer that maps x to the block's "
                "output shape")
        backend.check_same_device("Residual.forward(x)", out_block, out_short)
        return out_block + out_short  # shape of out

    def backward(self, dout):
        dx = self.block.backward(dout)  # shape of x
        if self.shortcut is None:
            dx = dx + dout  # not in place: dx may be a view of dout (e.g. Dropout(0))
        else:
            dx = dx + self.shortcut.backward(dout)
        if self.free_after_backward:
            self.clear_cache()  # the block's and the shortcut's
        return dx

    def jvp(self, Rx):
        Rout = self.block.jvp(Rx)  # shape of out
        if self.shortcut is None:
            return Rout + Rx
        return Rout + self.shortcut.jvp(Rx)

    def backward_rop(self, Rdout):
        Rdx = self.block.backward_rop(Rdout)  # shape of x
        if self.shortcut is None:
            return Rdx + Rdout
        return Rdx + self.shortcut.backward_rop(Rdout)
