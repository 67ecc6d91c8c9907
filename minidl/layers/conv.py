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

Performance and memory. The windows come from strided views (no Python loop over pixels)
and the batch goes through in chunks of a few examples, each product one BLAS GEMM per
chunk: with one BLAS thread a chunk's columns (``CHUNK_VALUES``, 2 MB) stay in the CPU
cache from im2col to the product to col2im, which measured faster than one product over
the whole batch; with several threads the chunks are larger, so each product is worth
sharing out. With
stride 1 the columns are the "wide" ones of
``im2col_wide`` (long contiguous copies; the extra columns are cropped from the output and
get zero gradient). The im2col matrix is kh kw times the input (9x for 3x3), so it is never
kept: the forward pass makes it chunk by chunk and the backward pass makes it again from
the cached x. ``cache["cols"]`` still reads as
the (C kh kw, N Ho Wo) matrix: it is computed when read. A layer whose
``needs_input_grad`` is False (the first layer of a model, see ``Sequential``) skips dcols
and col2im and returns None.

References: CS231n "Convolutional Networks" notes; K. Chellapilla et al. 2006 (im2col);
PyTorch ``torch.nn.Conv2d`` for the conventions and the default initialisation.
"""
from .. import backend, init
from .base import Layer, expect_dim, expect_forward_done, expect_ndim
from .im2col import col2im, col2im_wide, im2col, im2col_wide, output_size, pair

# the most values one chunk of the im2col matrix holds. With one BLAS thread: 512K (2 MB in
# float32), so a chunk stays in the CPU cache between im2col, the product and col2im; on a
# 2-core Xeon with 2 MB of L2 per core, Conv2d fwd+bwd of a (128, 32, 32, 32) batch ran
# 15-30% faster with 0.5-1M values than with 8M or 32M, a 5-layer CNN step ~10% faster with
# 512K than with 1M or 2M. With several BLAS threads each product must be large enough to
# share out: 8M (32 MB) ran 2-3x faster there than 512K. On the GPU: 32M.
CHUNK_VALUES = 2**19
CHUNK_VALUES_THREADED = 2**23
CHUNK_VALUES_GPU = 2**25


class _ConvCache(dict):
    """Conv2d's cache: a dict in which ``"cols"`` is computed from ``"x"`` when read.

    The im2col matrix is kh kw times the input; storing it between the passes of every
    layer was most of a CNN's memory. Reading ``cache["cols"]`` makes it anew.
    """

    def __init__(self, layer, **entries):
        super().__init__(**entries)
        self._layer = layer

    def __missing__(self, key):
        if key == "cols" and "x" in self:
            return self._layer._im2col(self["x"])  # (C kh kw, N Ho Wo)
        raise KeyError(key)

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
    ``cache["cols"]`` its im2col matrix (C kh kw, N Ho Wo), computed when read (not
    stored), ``cache["dout"]`` the upstream gradient (N, F, Ho, Wo) once backward ran.
    ``patches()`` gives the same columns as (N, Ho Wo, C kh kw).
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

    # -- the products, chunk by chunk over the batch ---------------------------------------
    def _column_width(self, x):
        """Wc, the length of one row of output pixels in the columns: Wp (wide) or Wo."""
        if self.stride == (1, 1):
            return x.shape[3] + 2 * self.padding[1]  # Wp: im2col_wide
        return output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride,
                           self.padding)[1]  # Wo: im2col

    def _columns(self, x):
        """The columns of a chunk x (n, C, H, W): (C kh kw, n Ho Wc)."""
        if self.stride == (1, 1):
            cols = im2col_wide(x, self.kernel_size, self.padding)  # (CKK, n, Ho, Wp)
            return cols.reshape(cols.shape[0], -1)  # (C kh kw, n Ho Wp)
        return self._im2col(x)  # (C kh kw, n Ho Wo)

    def _from_columns(self, dcols, x_shape, Ho, Wc):
        """Adjoint of ``_columns``: (C kh kw, n Ho Wc) -> dx (n, C, H, W)."""
        if self.stride == (1, 1):
            dcols = dcols.reshape(dcols.shape[0], x_shape[0], Ho, Wc)  # (CKK, n, Ho, Wp)
            return col2im_wide(dcols, x_shape, self.kernel_size, self.padding)
        return self._col2im(dcols, x_shape)

    def _chunks(self, x):
        """Slices of the batch whose columns hold at most ``CHUNK_VALUES`` values."""
        N, C = x.shape[:2]
        Ho, _ = output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride,
                            self.padding)
        per_example = C * self.kernel_size[0] * self.kernel_size[1] * Ho * self._column_width(x)
        if backend.on_device(x):
            budget = CHUNK_VALUES_GPU
        else:
            budget = CHUNK_VALUES if backend.blas_threads() == 1 else CHUNK_VALUES_THREADED
        n = max(1, budget // per_example)
        return [slice(i, min(i + n, N)) for i in range(0, N, n)]

    def _conv(self, x, W2, b=None):
        """out[n, f] = b[f] + sum_{c,i,j} W2[f, (c,i,j)] x_pad[n, c, sh ho + i, sw wo + j]:
        (N, F, Ho, Wo); no bias when b is None."""
        xp = backend.array_module(x, W2)
        N, F = x.shape[0], W2.shape[0]
        Ho, Wo = output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride,
                             self.padding)
        Wc = self._column_width(x)
        out = xp.empty((N, F, Ho, Wo), dtype=xp.result_type(x.dtype, W2.dtype))
        for chunk in self._chunks(x):
            out_T = W2 @ self._columns(x[chunk])  # (F, CKK) @ (CKK, n Ho Wc) -> (F, n Ho Wc)
            # drop the wide columns and swap the filter and batch axes: (n, F, Ho, Wo)
            out_T = out_T.reshape(F, -1, Ho, Wc)[:, :, :, :Wo].transpose(1, 0, 2, 3)
            if b is None:
                out[chunk] = out_T
            else:  # the bias added in the same pass
                xp.add(out_T, b[:, None, None], out=out[chunk])
        return out  # (N, F, Ho, Wo)

    def _grads(self, x, dout, W2, need_dW=True, need_dx=True):
        """``(dW2, dx)`` for input x and output gradient dout through weights W2.

        dW2 = dout_T @ cols^T (F, C kh kw) and dx = col2im(W2^T @ dout_T) (N, C, H, W),
        either one None when not asked for.
        """
        xp = backend.array_module(x, dout, W2)
        N, F, Ho, Wo = dout.shape
        Wc = self._column_width(x)
        dtype = xp.result_type(x.dtype, dout.dtype, W2.dtype)
        dW2 = xp.zeros(W2.shape, dtype=dtype) if need_dW else None  # (F, C kh kw)
        dx = xp.empty(x.shape, dtype=dtype) if need_dx else None  # (N, C, H, W)
        for chunk in self._chunks(x):
            n = dout[chunk].shape[0]
            # dout_T (F, n Ho Wc), zero in the wide columns, as the columns' products need
            dout_T = xp.empty((F, n, Ho, Wc), dtype=dout.dtype)  # (F, n, Ho, Wc)
            dout_T[:, :, :, :Wo] = dout[chunk].transpose(1, 0, 2, 3)
            dout_T[:, :, :, Wo:] = 0
            dout_T = dout_T.reshape(F, -1)  # (F, n Ho Wc)
            if need_dW:
                # computed as (cols @ dout_T^T)^T: the same numbers, and OpenBLAS runs this
                # orientation of the long-inner-dimension product faster (measured)
                dW2 += (self._columns(x[chunk]) @ dout_T.T).T  # (F, C kh kw)
            if need_dx:
                dcols = W2.T @ dout_T  # (CKK, F) @ (F, n Ho Wc) -> (C kh kw, n Ho Wc)
                dx[chunk] = self._from_columns(dcols, x[chunk].shape, Ho, Wc)
        return dW2, dx

    # -- the passes ------------------------------------------------------------------
    def forward(self, x):
        self._check_input(x)
        W = self.params["W"]
        backend.check_same_device("Conv2d.forward(x)", x, W)
        self.cache = _ConvCache(self, x=x)
        return self._conv(x, W.reshape(self.out_channels, -1),
                          self.params.get("b"))  # (N, F, Ho, Wo)

    def backward(self, dout):
        expect_forward_done(self, dout)
        x, W = self.cache["x"], self.params["W"]
        self.cache["dout"] = dout
        dW2, dx = self._grads(x, dout, W.reshape(self.out_channels, -1),
                              need_dx=self.needs_input_grad)
        self.grads["W"] = dW2.reshape(W.shape)  # (F, C, kh, kw)
        if "b" in self.params:
            N, F, Ho, Wo = dout.shape
            self.grads["b"] = dout.reshape(N, F, Ho * Wo).sum(axis=2).sum(axis=0)  # (F,)
        return dx  # (N, C, H, W), or None when needs_input_grad is False

    def jvp(self, Rx):
        x, W = self.cache["x"], self.params["W"]
        F = self.out_channels
        self.cache["Rx"] = Rx
        Rout = self._conv(Rx, W.reshape(F, -1))  # (N, F, Ho, Wo)
        if "W" in self.Rparams:
            Rout += self._conv(x, self.Rparams["W"].reshape(F, -1))
        if "b" in self.params and "b" in self.Rparams:
            Rout += self.Rparams["b"][:, None, None]  # (N, F, Ho, Wo) + (F, 1, 1)
        return Rout

    def backward_rop(self, Rdout):
        x, Rx, dout = self.cache["x"], self.cache["Rx"], self.cache["dout"]
        W = self.params["W"]
        F = self.out_channels
        W2 = W.reshape(F, -1)  # (F, C kh kw)
        RdW2, Rdx = self._grads(x, Rdout, W2)  # Rdout_T @ cols^T, col2im(W2^T Rdout_T)
        RdW2 += self._grads(Rx, dout, W2, need_dx=False)[0]  # + dout_T @ Rcols^T
        if "W" in self.Rparams:  # + col2im(RW2^T dout_T)
            Rdx += self._grads(x, dout, self.Rparams["W"].reshape(F, -1), need_dW=False)[1]
        self.Rgrads["W"] = RdW2.reshape(W.shape)  # (F, C, kh, kw)
        if "b" in self.params:
            N, _, Ho, Wo = Rdout.shape
            self.Rgrads["b"] = Rdout.reshape(N, F, Ho * Wo).sum(axis=2).sum(axis=0)  # (F,)
        return Rdx  # (N, C, H, W)

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
        ``out[n, :, ho, wo] = W.reshape(F, -1) @ patches()[n, ho*Wo + wo] + b``. It is
        made from ``cache["x"]`` at each call (the im2col matrix (C kh kw, N L) with its
        axes reordered, a view of it).
        """
        if "x" not in self.cache:
            raise RuntimeError("Conv2d.patches() needs a forward pass first: it returns "
                               "the patches of the cached input")
        x = self.cache["x"]
        cols = self._im2col(x)  # (C kh kw, N L)
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
