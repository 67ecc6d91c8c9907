"""2-D convolution (cross-correlation, as in PyTorch), NCHW, via im2col.

Shapes: x (N, C, H, W), W (F, C, kh, kw), b (F,), out (N, F, Ho, Wo), with
Ho = (H + 2 ph - kh) // sh + 1 and Wo likewise (see ``im2col``)::

    out[n, f, ho, wo] = b[f] + sum_{c, i, j} W[f, c, i, j] x_pad[n, c, sh ho + i, sw wo + j]

With cols = im2col(x) (N, C kh kw, L), L = Ho Wo, and W2 = W.reshape(F, C kh kw) this is
one batched matrix product per example, ``out[n] = W2 @ cols[n] + b``. Backward, for
dout = dL/dout (N, F, Ho, Wo) seen as (N, F, L)::

    dW    = sum_n dout[n] @ cols[n]^T          (F, L) @ (L, C kh kw), summed over n
    db    = sum_{n, ho, wo} dout[n, :, ho, wo]  (F,)
    dcols = W2^T @ dout[n]                     (C kh kw, F) @ (F, L), for every n
    dx    = col2im(dcols)                      the adjoint of im2col

Per-example gradients are the terms of the sums: dW_n = dout[n] @ cols[n]^T, db_n =
sum_{ho, wo} dout[n]. R-operator (curvature) passes, with tangents Rx, RW, Rb
(Rcols = im2col(Rx), since im2col is linear)::

    Rout  = W2 @ Rcols + RW2 @ cols + Rb
    RdW   = sum_n (Rdout[n] @ cols[n]^T + dout[n] @ Rcols[n]^T)
    Rdb   = sum Rdout
    Rdx   = col2im(W2^T @ Rdout + RW2^T @ dout)

Performance: the windows come from a strided view (no Python loop over pixels), each
product is a BLAS GEMM with the patch matrix in the layout (N, C kh kw, L) so the output
lands directly in NCHW without a transpose, and col2im is kh kw strided slab adds.

References: CS231n "Convolutional Networks" notes; K. Chellapilla et al. 2006 (im2col);
PyTorch ``torch.nn.Conv2d`` for the conventions and the default initialisation.
"""
from .. import backend, init
from .base import Layer, expect_dim, expect_ndim
from .im2col import col2im, im2col, output_size, pair

__all__ = ["Conv2d"]


class Conv2d(Layer):
    """2-D convolution over NCHW images.

    Args:
        in_channels: C, channels of the input.
        out_channels: F, number of filters.
        kernel_size: int or pair (kh, kw).
        stride: int or pair (sh, sw), default 1.
        padding: int or pair (ph, pw) of zeros added on each side, default 0.
        bias: learn an additive bias ``b`` (F,) (default True).
        rng: generator for the initial weights (``minidl.default_rng(seed)``); a fresh
            unseeded one when None.
        init: initialiser for W (name or function of (shape, rng)); the default is
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C kh kw, for W and b, as in
            PyTorch.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, rng=None, init="uniform"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not hasattr(value, "__index__") or value <= 0:
                raise ValueError(f"Conv2d expects a positive integer {name}, got {value!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d", 1)
        self.stride = pair(stride, "stride", "Conv2d", 1)
        self.padding = pair(padding, "padding", "Conv2d", 0)
        rng = rng if rng is not None else backend.default_rng()
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.params["W"] = _init_module.get(init)(shape, rng)  # (F, C, kh, kw)
        if bias:
            fan_in = self.in_channels * kh * kw
            self.params["b"] = _init_module.uniform_fan_in(
                (self.out_channels,), rng, fan_in=fan_in)  # (F,)

    # -- helpers ---------------------------------------------------------------------
    def _check_input(self, x):
        expect_ndim(self, x, (4,), "(N, C, H, W); add a batch axis with x[None]")
        expect_dim(self, x, 1, self.in_channels, "in_channels")
        H, W = x.shape[2:]
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if kh > H + 2 * ph or kw > W + 2 * pw:
            raise ValueError(
                f"Conv2d: kernel_size {(kh, kw)} is larger than the padded input "
                f"{(H + 2 * ph, W + 2 * pw)} (input {(H, W)} with padding {(ph, pw)}); "
                "use a smaller kernel, more padding or a larger image")

    def _im2col(self, x):
        return im2col(x, self.kernel_size, self.stride, self.padding)  # (N, C kh kw, L)

    def _col2im(self, dcols, x_shape):
        return col2im(dcols, x_shape, self.kernel_size, self.stride, self.padding)

    def _out_shape(self, x):
        Ho, Wo = output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride,
                             self.padding)
        return x.shape[0], self.out_channels, Ho, Wo

    # -- the passes ------------------------------------------------------------------
    def forward(self, x):
        self._check_input(x)
        W = self.params["W"]
        backend.check_same_device("Conv2d.forward(x)", x, W)
        xp = backend.array_module(x)
        cols = self._im2col(x)  # (N, C kh kw, L)
        self.cache["x"], self.cache["cols"] = x, cols
        out = xp.matmul(W.reshape(self.out_channels, -1), cols)  # (F, CKK) @ (N, CKK, L)
        if "b" in self.params:
            out += self.params["b"][:, None]  # (N, F, L) + (F, 1)
        return out.reshape(self._out_shape(x))  # (N, F, Ho, Wo)

    def backward(self, dout):
        x, cols = self.cache["x"], self.cache["cols"]
        W = self.params["W"]
        xp = backend.array_module(dout)
        self.cache["dout"] = dout
        N, F, L = dout.shape[0], self.out_channels, cols.shape[2]
        dout2 = dout.reshape(N, F, L)  # (N, F, L)
        # per-example products (N small GEMMs) then a sum: no copy of the big cols
        dW = xp.matmul(dout2, cols.transpose(0, 2, 1)).sum(axis=0)  # (F, C kh kw)
        self.grads["W"] = dW.reshape(W.shape)  # (F, C, kh, kw)
        if "b" in self.params:
            self.grads["b"] = dout2.sum(axis=(0, 2))  # (F,)
        dcols = xp.matmul(W.reshape(F, -1).T, dout2)  # (CKK, F) @ (N, F, L) -> (N, CKK, L)
        return self._col2im(dcols, x.shape)  # (N, C, H, W)

    def jvp(self, Rx):
        x, cols = self.cache["x"], self.cache["cols"]
        W = self.params["W"]
        xp = backend.array_module(x)
        F = self.out_channels
        Rcols = self._im2col(Rx)  # (N, C kh kw, L)
        self.cache["Rx"], self.cache["Rcols"] = Rx, Rcols
        Rout = xp.matmul(W.reshape(F, -1), Rcols)  # (N, F, L)
        if "W" in self.Rparams:
            Rout += xp.matmul(self.Rparams["W"].reshape(F, -1), cols)  # (N, F, L)
        if "b" in self.params and "b" in self.Rparams:
            Rout += self.Rparams["b"][:, None]  # (N, F, L) + (F, 1)
        return Rout.reshape(self._out_shape(x))  # (N, F, Ho, Wo)

    def backward_rop(self, Rdout):
        x, cols, Rcols = self.cache["x"], self.cache["cols"], self.cache["Rcols"]
        dout = self.cache["dout"]
        W = self.params["W"]
        xp = backend.array_module(Rdout)
        N, F, L = Rdout.shape[0], self.out_channels, cols.shape[2]
        Rdout2 = Rdout.reshape(N, F, L)  # (N, F, L)
        dout2 = dout.reshape(N, F, L)  # (N, F, L)
        RdW = xp.matmul(Rdout2, cols.transpose(0, 2, 1)).sum(axis=0)  # (F, C kh kw)
        RdW += xp.matmul(dout2, Rcols.transpose(0, 2, 1)).sum(axis=0)  # (F, C kh kw)
        self.Rgrads["W"] = RdW.reshape(W.shape)  # (F, C, kh, kw)
        if "b" in self.params:
            self.Rgrads["b"] = Rdout2.sum(axis=(0, 2))  # (F,)
        Rdcols = xp.matmul(W.reshape(F, -1).T, Rdout2)  # (N, C kh kw, L)
        if "W" in self.Rparams:
            Rdcols += xp.matmul(self.Rparams["W"].reshape(F, -1).T, dout2)  # (N, CKK, L)
        return self._col2im(Rdcols, x.shape)  # (N, C, H, W)

    def per_example_grads(self):
        """Each example's share of ``grads``: ``{"W": (N, F, C, kh, kw), "b": (N, F)}``.

        They sum over n to ``grads``; for a mean loss, multiply by N to get the gradient
        of example n's own loss.
        """
        cols, dout = self.cache["cols"], self.cache["dout"]
        xp = backend.array_module(cols)
        N, F, L = dout.shape[0], self.out_channels, cols.shape[2]
        dout2 = dout.reshape(N, F, L)  # (N, F, L)
        dW = xp.matmul(dout2, cols.transpose(0, 2, 1))  # (N, F, C kh kw)
        out = {"W": dW.reshape((N,) + tuple(self.params["W"].shape))}  # (N, F, C, kh, kw)
        if "b" in self.params:
            out["b"] = dout2.sum(axis=2)  # (N, F)
        return out

    def patches(self):
        """The im2col matrix of the cached input: (N, Ho*Wo, C*kh*kw).

        Row (n, ho*Wo + wo) is the window that output pixel (ho, wo) of example n sees,
        flattened in the (C, kh, kw) order of ``W.reshape(F, -1)``, so that
        ``out[n, :, ho, wo] = W.reshape(F, -1) @ patches()[n, ho*Wo + wo] + b``. It is a
        transposed view of ``cache["cols"]`` (no copy); do not write into it.
        """
        if "cols" not in self.cache:
            raise RuntimeError("Conv2d.patches() needs a forward pass first: it returns "
                               "the patches of the cached input")
        return self.cache["cols"].transpose(0, 2, 1)  # (N, L, C kh kw)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'b' in self.params}")


_init_module = init
