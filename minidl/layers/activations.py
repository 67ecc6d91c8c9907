"""Elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh.

Each is out = f(x) elementwise, so backward is dx = dout * f'(x), and the R-operator
passes are Rout = f'(x) Rx and Rdx = Rdout * f'(x) + dout * f''(x) * Rx.

=========  ==============================  ==================  =========================
layer      f(x)                            f'(x)               f''(x)
=========  ==============================  ==================  =========================
ReLU       max(x, 0)                       [x > 0]             0 (almost everywhere)
LeakyReLU  x if x > 0 else a x             1 or a              0 (almost everywhere)
Sigmoid    s = 1 / (1 + exp(-x))           s (1 - s)           s (1 - s) (1 - 2 s)
Tanh       t = tanh(x)                     1 - t^2             -2 t (1 - t^2)
=========  ==============================  ==================  =========================

At x = 0 ReLU's derivative is taken as 0, as PyTorch does.

Memory: ReLU keeps only its output (f'(x) = [x > 0] = [out > 0]), not its input as well;
the output is usually the next layer's input, so keeping it costs nothing extra. The
others keep both x and out (``keeps``).
"""
from .. import backend, parallel
from .base import Layer, expect_forward_done, expect_input, expect_output_grad, expect_real

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "sigmoid"]


def sigmoid(x, e=None):
    """s = 1 / (1 + exp(-x)) without overflow, elementwise, in x's dtype.

    exp of a non-positive number only: with e = exp(-|x|) (it never overflows),
    s = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0. The numerator, 1 or e, is
    max(e, [x >= 0]) since e <= 1: no branch per element (a ``where`` on the sign measured
    5x slower with random signs), the same numbers.

    Args:
        x: array of any shape.
        e: exp(-|x|) when the caller has it already (``BCEWithLogits`` needs it too).
    """
    xp = backend.array_module(x)
    if e is None:
        e = xp.exp(-xp.abs(x))  # same shape as x
    return (xp.maximum(e, x >= 0) / (1 + e)).astype(x.dtype, copy=False)


class _Elementwise(Layer):
    """Shared passes for out = f(x): subclasses give f, f' and f''.

    ``keeps`` names what the forward pass caches for f' and f'': ``"x"``, ``"out"``.
    """

    keeps = ("x", "out")

    def f(self, x):
        raise NotImplementedError

    def df(self):
        """f'(x) at the cached input, same shape as x."""
        raise NotImplementedError

    def d2f(self):
        """f''(x) at the cached input, or None where it is zero almost everywhere."""
        return None

    def forward(self, x):
        expect_input(self, x)
        out = self.f(x)  # same shape as x
        self.cache = {key: value for key, value in (("x", x), ("out", out))
                      if key in self.keeps}
        return out

    def backward(self, dout):
        expect_forward_done(self, dout)
        kept = self.cache.get("out", self.cache.get("x"))  # the shape of x and of out
        if kept is not None:
            expect_output_grad(self, dout, kept.shape)
        self.cache["dout"] = dout
        return dout * self.df()

    def jvp(self, Rx):
        self.cache["Rx"] = Rx
        return self.df() * Rx

    def backward_rop(self, Rdout):
        Rdx = Rdout * self.df()
        d2 = self.d2f()
        if d2 is not None:
            Rdx = Rdx + self.cache["dout"] * d2 * self.cache["Rx"]
        return Rdx


class ReLU(_Elementwise):
    """out = max(x, 0).

    The fast twin of the shared passes: forward and backward go over the batch in pieces
    (``minidl.parallel``, in several threads where allowed), and backward multiplies dout
    by the boolean mask [out > 0] directly (one pass fewer than turning the mask into a
    float array first); ``f`` and ``df`` stay the plain definitions, and a test checks the
    two agree. A subclass that redefines ``f`` or ``df`` (an exercise, a planted bug) gets
    the shared passes built on them.
    """

    def f(self, x):
        xp = backend.array_module(x)
        return xp.maximum(x, 0)

    keeps = ("out",)

    def df(self):
        out = self.cache["out"]
        return (out > 0).astype(out.dtype)  # x > 0 exactly where out > 0

    def forward(self, x):
        if type(self).f is not ReLU.f:
            return super().forward(x)  # a redefined f: the shared pass uses it
        expect_input(self, x)
        xp = backend.array_module(x)
        out = xp.empty_like(x)  # same shape as x
        parallel.map_pieces(lambda p: xp.maximum(x[p], 0, out=out[p]), parallel.pieces_of(x),
                            like=x)
        self.cache = {"out": out}
        return out

    def backward(self, dout):
        if type(self).df is not ReLU.df:
            return super().backward(dout)  # a redefined df: the shared pass uses it
        expect_forward_done(self, dout)
        out = self.cache["out"]
        expect_output_grad(self, dout, out.shape)
        self.cache["dout"] = dout
        xp = backend.array_module(dout)
        dx = xp.empty(dout.shape, dtype=xp.result_type(dout.dtype, out.dtype))  # shape of x
        parallel.map_pieces(lambda p: xp.multiply(dout[p], out[p] > 0, out=dx[p]),
                            parallel.pieces_of(dout), like=dout)
        return dx  # dout * [x > 0]


class LeakyReLU(_Elementwise):
    """out = x for x > 0, ``negative_slope * x`` otherwise."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = expect_real("LeakyReLU", "negative_slope", negative_slope)

    # Both passes are written without ``where``: a select by the sign of each element is
    # a branch per element, and with random signs it measured 5-7x slower than these
    # three branch-free passes (which give the same numbers).
    def f(self, x):
        xp = backend.array_module(x)
        return xp.maximum(x, 0) + self.negative_slope * xp.minimum(x, 0)  # x or a x

    def df(self):
        x = self.cache["x"]
        positive = x > 0  # same shape as x
        return (positive + ~positive * self.negative_slope).astype(x.dtype)  # 1 or a

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(_Elementwise):
    """out = 1 / (1 + exp(-x)), computed without overflow for large |x|."""

    def f(self, x):
        return sigmoid(x)

    def df(self):
        s = self.cache["out"]
        return s * (1 - s)

    def d2f(self):
        s = self.cache["out"]
        return s * (1 - s) * (1 - 2 * s)


class Tanh(_Elementwise):
    """out = tanh(x)."""

    def f(self, x):
        return backend.array_module(x).tanh(x)

    def df(self):
        t = self.cache["out"]
        return 1 - t * t

    def d2f(self):
        t = self.cache["out"]
        return -2 * t * (1 - t * t)
