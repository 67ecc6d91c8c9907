"""2-D convolution (cross-correlation, as in PyTorch), NCHW, via im2col.

Shapes: x (N, C, H, W), W (F, C, kh, kw), b (F,), out (N, F, Ho, Wo), with
Ho = (H + 2 ph - kh) // sh + 1 and Wo likewise (see ``im2col``)::

    out[n, f, ho, wo] = b[f] + sum_{c, i, j} W[f, c, i, j] x_pad[n, c, sh ho + i, sw wo + j]

With cols = im2col(x) (C kh kw, N L), L = Ho Wo, columns in (n, ho, wo) order, and
W2 = W.reshape(F, C kh kw), the whole batch is one matrix product::

    out_T = W2 @ cols + b                    (F, C kh kw) @ (C kh kw, N L) -> (F, N L)

and out is out_T with its first two axes swapped. Backward, for dout = dL/dout
(N, F, Ho, Wo) and dout_T, the same numbers as (F, N L)::

    dW    = dout_T @ cols^T                  (F, N L) @ (N L, C kh kw): sums over n and pixels
    db    = sum_{n, ho, wo} dout[n, :, ho, wo]                           (F,)
    dcols = W2^T @ dout_T                    (C kh kw, F) @ (F, N L)
    dx    = col2im(dcols)                    the adjoint of im2col       (N, C, H, W)

Per-example gradients are the terms of the sum over n: dW_n = dout[n] @ cols_n^T with
cols_n the L columns of example n, and db_n = sum_{ho, wo} dout[n]. R-operator
(curvature) passes, with tangents Rx, RW, Rb (Rcols = im2col(Rx), since im2col is linear)::

    Rout  = W2 @ Rcols + RW2 @ cols + Rb
    RdW   = Rdout_T @ cols^T + dout_T @ Rcols^T
    Rdb   = sum Rdout
    Rdx   = col2im(W2^T @ Rdout_T + RW2^T @ dout_T)

Performance: the windows come from a strided view (no Python loop over pixels or
examples); each of the three products is a single large BLAS GEMM over the whole batch
(see ``im2col`` for why not one per example); col2im is kh kw strided slab adds. The two
axis swaps (out_T -> out, dout -> dout_T) move contiguous runs of L values, which is cheap.

References: CS231n "Convolutional Networks" notes; K. Chellapilla et al. 2006 (im2col);
PyTorch ``torch.nn.Conv2d`` for the conventions and the default initialisation.
"""
from .. import backend, init
from .base import Layer, expect_dim, expect_forward_done, expect_ndim
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

    Cache (read by the preconditioners): ``cache["x"]`` the input (N, C, H, W),
    ``cache["cols"]`` its im2col matrix (C kh kw, N Ho Wo), ``cache["dout"]`` the upstream
    gradient (N, F, Ho, Wo) once backward ran. ``patches()`` gives the same columns as
    (N, Ho Wo, C kh kw).
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
        return im2col(x, self.kernel_size, self.stride, self.padding)  # (C kh kw, N L)

    def _col2im(self, dcols, x_shape):
        return col2im(dcols, x_shape, self.kernel_size, self.stride, self.padding)

    def _to_nchw(self, out_T, x):
        """(F, N L) -> (N, F, Ho, Wo), contiguous: swap the filter and batch axes."""
        xp = backend.array_module(out_T)
        N, F = x.shape[0], self.out_channels
        Ho, Wo = output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride,
                             self.padding)
        out = out_T.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)  # (N, F, Ho, Wo), a view
        return xp.ascontiguousarray(out)  # (N, F, Ho, Wo)

    @staticmethod
    def _to_rows(dout):
        """(N, F, Ho, Wo) -> (F, N L), the layout of the products (one copy)."""
        return dout.transpose(1, 0, 2, 3).reshape(dout.shape[1], -1)  # (F, N L)

    # -- the passes ------------------------------------------------------------------
    def forward(self, x):
        self._check_input(x)
        W = self.params["W"]
        backend.check_same_device("Conv2d.forward(x)", x, W)
        cols = self._im2col(x)  # (C kh kw, N L)
        self.cache["x"], self.cache["cols"] = x, cols
        out_T = W.reshape(self.out_channels, -1) @ cols  # (F, CKK) @ (CKK, N L) -> (F, N L)
        if "b" in self.params:
            out_T += self.params["b"][:, None]  # (F, N L) + (F, 1)
        return self._to_nchw(out_T, x)  # (N, F, Ho, Wo)

    def backward(self, dout):
        expect_forward_done(self, dout)
        x, cols = self.cache["x"], self.cache["cols"]
        W = self.params["W"]
        self.cache["dout"] = dout
        dout_T = self._to_rows(dout)  # (F, N L)
        # computed as (cols @ dout_T^T)^T: the same numbers, and OpenBLAS runs this
        # orientation of the long-inner-dimension product 1.5-2.5x faster (measured)
        dW = (cols @ dout_T.T).T  # ((CKK, N L) @ (N L, F))^T -> (F, C kh kw)
        self.grads["W"] = dW.reshape(W.shape)  # (F, C, kh, kw)
        if "b" in self.params:
            self.grads["b"] = dout_T.sum(axis=1)  # (F,)
        dcols = W.reshape(self.out_channels, -1).T @ dout_T  # (CKK, F) @ (F, N L)
        return self._col2im(dcols, x.shape)  # (N, C, H, W)

    def jvp(self, Rx):
        x, cols = self.cache["x"], self.cache["cols"]
        W = self.params["W"]
        F = self.out_channels
        Rcols = self._im2col(Rx)  # (C kh kw, N L)
        self.cache["Rx"], self.cache["Rcols"] = Rx, Rcols
        Rout_T = W.reshape(F, -1) @ Rcols  # (F, N L)
        if "W" in self.Rparams:
            Rout_T += self.Rparams["W"].reshape(F, -1) @ cols  # (F, N L)
        if "b" in self.params and "b" in self.Rparams:
            Rout_T += self.Rparams["b"][:, None]  # (F, N L) + (F, 1)
        return self._to_nchw(Rout_T, x)  # (N, F, Ho, Wo)

    def backward_rop(self, Rdout):
        x, cols, Rcols = self.cache["x"], self.cache["cols"], self.cache["Rcols"]
        W = self.params["W"]
        F = self.out_channels
        Rdout_T = self._to_rows(Rdout)  # (F, N L)
        dout_T = self._to_rows(self.cache["dout"])  # (F, N L)
        RdW = (cols @ Rdout_T.T + Rcols @ dout_T.T).T  # (F, C kh kw)
        self.Rgrads["W"] = RdW.reshape(W.shape)  # (F, C, kh, kw)
        if "b" in self.params:
            self.Rgrads["b"] = Rdout_T.sum(axis=1)  # (F,)
        Rdcols = W.reshape(F, -1).T @ Rdout_T  # (C kh kw, N L)
        if "W" in self.Rparams:
            Rdcols += self.Rparams["W"].reshape(F, -1).T @ dout_T  # (C kh kw, N L)
        return self._col2im(Rdcols, x.shape)  # (N, C, H, W)

    def per_example_grads(self):
        """Each example's share of ``grads``: ``{"W": (N, F, C, kh, kw), "b": (N, F)}``.

        They sum over n to ``grads``; for a mean loss, multiply by N to get the gradient
        of example n's own loss.
        """
        dout = self.cache["dout"]
        xp = backend.array_module(dout)
        N, F = dout.shape[:2]
        dout3 = dout.reshape(N, F, -1)  # (N, F, L)
        patches = self.patches()  # (N, L, C kh kw)
        dW = xp.matmul(dout3, patches)  # (N, F, L) @ (N, L, CKK) -> (N, F, C kh kw)
        out = {"W": dW.reshape((N,) + tuple(self.params["W"].shape))}  # (N, F, C, kh, kw)
        if "b" in self.params:
            out["b"] = dout3.sum(axis=2)  # (N, F)
        return out

    def patches(self):
        """The im2col matrix of the cached input: (N, Ho*Wo, C*kh*kw).

        Row (n, ho*Wo + wo) is the window that output pixel (ho, wo) of example n sees,
        flattened in the (C, kh, kw) order of ``W.reshape(F, -1)``, so that
        ``out[n, :, ho, wo] = W.reshape(F, -1) @ patches()[n, ho*Wo + wo] + b``. It is a
        view of ``cache["cols"]`` (C kh kw, N L) with the axes reordered (no copy); do not
        write into it.
        """
        if "cols" not in self.cache:
            raise RuntimeError("Conv2d.patches() needs a forward pass first: it returns "
                               "the patches of the cached input")
        x, cols = self.cache["x"], self.cache["cols"]
        N = x.shape[0]
        return cols.reshape(cols.shape[0], N, -1).transpose(1, 2, 0)  # (N, L, C kh kw)


    # -- the layer as a matrix product, for the Kronecker-factored preconditioners --------
    def kron_inputs(self):
        """The im2col patches with a ones column for the bias: a_hat (N, T, m).

        T = Ho Wo output locations, m = C kh kw (+ 1); with W_hat = [W.reshape(F, -1) | b],
        ``out[n, :, t] = W_hat @ a_hat[n, t]`` (Grosse & Martens 2016's view of a
        convolution, read by ``minidl.precond.kfactored``).
        """
        a = self.patches()  # (N, T, C kh kw)
        if "b" in self.params:
            xp = backend.array_module(a)
            ones = xp.ones(a.shape[:2] + (1,), dtype=a.dtype)  # (N, T, 1)
            a = xp.concatenate([a, ones], axis=2)
        return a  # (N, T, m)

    def kron_output_grads(self):
        """The gradient at the output as (N, T, F), T = Ho Wo (from ``cache["dout"]``)."""
        dout = self.cache["dout"]  # (N, F, Ho, Wo)
        N, F = dout.shape[:2]
        return dout.reshape(N, F, -1).transpose(0, 2, 1)  # (N, T, F)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'b' in self.params}")


_init_module = init
