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
chunk: a chunk's columns (``CHUNK_VALUES``, 4 MB) stay in the CPU caches from im2col to
the product, which measured faster than one product over the whole batch. With several
threads allowed (``threadpool_limits``), the chunks run side by side, one per core
(``minidl.parallel``): the copies around the products then use every core too. With stride
1 the columns are the "wide" ones of ``im2col_wide`` (long contiguous copies; the extra
columns are cropped from the output and get zero gradient), and for F <= C and a padding
of at most kernel - 1 the input gradient is computed as a convolution of dout with the
flipped kernel (``_input_grad``) rather than through col2im. The im2col matrix is kh kw
times the input (9x for 3x3), so it is never kept: the forward pass makes it chunk by
chunk and the backward pass makes it again from the cached x. ``cache["cols"]`` still
reads as the (C kh kw, N Ho Wo) matrix: it is computed when read. A layer whose
``needs_input_grad`` is False (the first layer of a model, see ``Sequential``) skips the
input gradient and returns None.

References: CS231n "Convolutional Networks" notes; K. Chellapilla et al. 2006 (im2col);
PyTorch ``torch.nn.Conv2d`` for the conventions and the default initialisation.
"""
from .. import backend, init, parallel
from .base import Layer, expect_dim, expect_forward_done, expect_ndim, expect_output_grad
from .im2col import col2im, col2im_wide, im2col, im2col_wide, output_size, pair

# the most values one chunk of the im2col matrix holds: 1M (4 MB in float32). Measured on a
# 2-core Xeon (2 MB of L2 per core, a large shared L3), forward, weight and input gradient
# of ResNet-20's and the benchmark's layers: 256K-2M values ran within the timing noise of
# each other with one thread, 8M 15-40% slower; with two threads (two chunks at a time)
# 1M-2M ran 10-30% faster than 256K-512K. On the GPU: 32M (one large product per layer
# keeps the device busy).
CHUNK_VALUES = 2**20
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
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C kh kw, as in PyTorch. b is
            drawn from that uniform whatever ``init`` is.

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
    def _column_width(self, x_shape, padding=None):
        """Wc, the length of one row of output pixels in the columns of an input of shape
        x_shape (N, C, H, W): Wp (wide) or Wo."""
        padding = self.padding if padding is None else padding
        H, W = x_shape[2:]
        if self.stride == (1, 1):
            return W + 2 * padding[1]  # Wp: im2col_wide
        return output_size(H, W, self.kernel_size, self.stride, padding)[1]  # Wo: im2col

    def _columns(self, x, padding=None):
        """The columns of a chunk x (n, C, H, W): (C kh kw, n Ho Wc)."""
        padding = self.padding if padding is None else padding
        if self.stride == (1, 1):
            cols = im2col_wide(x, self.kernel_size, padding)  # (CKK, n, Ho, Wp)
            return cols.reshape(cols.shape[0], -1)  # (C kh kw, n Ho Wp)
        return im2col(x, self.kernel_size, self.stride, padding)  # (C kh kw, n Ho Wo)

    def _from_columns(self, dcols, x_shape, Ho, Wc):
        """Adjoint of ``_columns``: (C kh kw, n Ho Wc) -> dx (n, C, H, W)."""
        if self.stride == (1, 1):
            dcols = dcols.reshape(dcols.shape[0], x_shape[0], Ho, Wc)  # (CKK, n, Ho, Wp)
            return col2im_wide(dcols, x_shape, self.kernel_size, self.padding)
        return self._col2im(dcols, x_shape)

    def _chunks(self, x, padding=None):
        """Slices of the batch x whose columns hold at most ``CHUNK_VALUES`` values."""
        padding = self.padding if padding is None else padding
        Ho, _ = output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride, padding)
        per_example = (x.shape[1] * self.kernel_size[0] * self.kernel_size[1] * Ho
                       * self._column_width(x.shape, padding))
        return self._batch_slices(x.shape[0], per_example, x)

    @staticmethod
    def _batch_slices(N, per_example, like):
        """Slices of N examples whose columns (``per_example`` values each) fit the chunk
        budget of the device ``like`` lives on."""
        budget = CHUNK_VALUES_GPU if backend.on_device(like) else CHUNK_VALUES
        return parallel.batch_pieces(N, per_example, budget)

    def _conv(self, x, W2, b=None, padding=None):
        """out[n, f] = b[f] + sum_{c,i,j} W2[f, (c,i,j)] x_pad[n, c, sh ho + i, sw wo + j]:
        (N, F, Ho, Wo); no bias when b is None. ``padding`` replaces the layer's own
        (the input gradient below convolves with another padding)."""
        padding = self.padding if padding is None else padding
        xp = backend.array_module(x, W2)
        N, F = x.shape[0], W2.shape[0]
        Ho, Wo = output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride, padding)
        Wc = self._column_width(x.shape, padding)
        out = xp.empty((N, F, Ho, Wo), dtype=xp.result_type(x.dtype, W2.dtype))

        def chunk_of_output(chunk):
            out_T = W2 @ self._columns(x[chunk], padding)  # (F, CKK) @ (CKK, n Ho Wc)
            # drop the wide columns and swap the filter and batch axes: (n, F, Ho, Wo)
            out_T = out_T.reshape(F, -1, Ho, Wc)[:, :, :, :Wo].transpose(1, 0, 2, 3)
            if b is None:
                out[chunk] = out_T
            else:  # the bias added in the same pass
                xp.add(out_T, b[:, None, None], out=out[chunk])

        parallel.map_pieces(chunk_of_output, self._chunks(x, padding), like=x)
        return out  # (N, F, Ho, Wo)

    def _wide_output_grad(self, dout, chunk, Wc):
        """dout[chunk] as dout_T (F, n Ho Wc), zero in the wide columns (w' >= Wo) that the
        columns' products need."""
        xp = backend.array_module(dout)
        F, Ho, Wo = dout.shape[1:]
        d = dout[chunk]
        dout_T = xp.empty((F, d.shape[0], Ho, Wc), dtype=dout.dtype)  # (F, n, Ho, Wc)
        dout_T[:, :, :, :Wo] = d.transpose(1, 0, 2, 3)
        dout_T[:, :, :, Wo:] = 0
        return dout_T.reshape(F, -1)  # (F, n Ho Wc)

    def _grads_by_chunk(self, x, dout, bias=False, W2=None):
        """dW2 = dout_T @ cols^T (F, C kh kw), summed chunk by chunk over the batch, and
        with it what else one chunk of dout_T gives.

        Returns ``(dW2, db, dx)``: with ``bias``, also db = sum of dout over n and pixels
        (F,); with ``W2``, also dx = col2im(W2^T @ dout_T) (N, C, H, W), the col2im route
        of ``_input_grad``; each is None when not asked for. One chunk of dout_T serves all
        three.
        """
        xp = backend.array_module(x, dout)
        Wc = self._column_width(x.shape)
        dx = None if W2 is None else xp.empty(x.shape, dtype=xp.result_type(dout, W2))
        Ho = dout.shape[2]

        def chunk_of_sums(chunk):
            dout_T = self._wide_output_grad(dout, chunk, Wc)  # (F, n Ho Wc)
            # computed as (cols @ dout_T^T)^T: the same numbers, and OpenBLAS runs this
            # orientation of the long-inner-dimension product faster (measured)
            dW2 = (self._columns(x[chunk]) @ dout_T.T).T  # (F, C kh kw)
            if dx is not None:
                dx[chunk] = self._dx_of_chunk(W2, dout_T, x[chunk].shape, Ho, Wc)
            return dW2, (dout_T.sum(axis=1) if bias else None)  # (F,): the wide zeros add 0

        partial_sums = parallel.map_pieces(chunk_of_sums, self._chunks(x), like=x)
        dW2 = partial_sums[0][0].copy()  # (F, C kh kw)
        db = partial_sums[0][1]  # (F,) or None
        for dW2_part, db_part in partial_sums[1:]:  # added in chunk order: same bits each run
            dW2 += dW2_part
            if bias:
                db += db_part
        return dW2, db, dx

    def _dx_of_chunk(self, W2, dout_T, x_shape, Ho, Wc):
        """col2im(W2^T @ dout_T) for one chunk: dout_T (F, n Ho Wc) -> dx (n, C, H, W)."""
        dcols = W2.T @ dout_T  # (C kh kw, F) @ (F, n Ho Wc) -> (C kh kw, n Ho Wc)
        return self._from_columns(dcols, x_shape, Ho, Wc)

    def _col2im_route(self):
        """True when dx goes through col2im; False when ``_input_grad`` convolves."""
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        return (self.stride != (1, 1) or ph > kh - 1 or pw > kw - 1
                or self.out_channels > self.in_channels)

    def _input_grad(self, dout, W2, x_shape):
        """dx (N, C, H, W) for output gradient dout through weights W2 (F, C kh kw).

        In general dx = col2im(W2^T @ dout_T), the adjoint of the forward pass
        (``_input_grad_col2im``). With stride 1, pixel (h, w) of x meets output pixel
        (h + ph - i, w + pw - j) through kernel tap (i, j), so::

            dx[n, c, h, w] = sum_{f,i,j} W[f, c, i, j] dout[n, f, h + ph - i, w + pw - j]

        a stride-1 convolution of dout, zero-padded by (kh - 1 - ph, kw - 1 - pw), with the
        kernel flipped in both spatial axes and its two channel axes swapped,
        W_flip[c, f, i, j] = W[f, c, kh - 1 - i, kw - 1 - j] (the "full" convolution of the
        transposed-convolution literature: Dumoulin & Visin 2016, "A guide to convolution
        arithmetic", section 4). The same sums (in another order, so equal up to rounding),
        computed with an im2col copy in place of col2im's scatter-adds and a product whose
        inner dimension is F kh kw instead of F, which measured 10-15% faster for a layer
        with F <= C (ResNet's 3x3 layers) and slightly slower when F > C (the product then
        has only C output rows). Other strides and paddings larger than kernel - 1 (a
        negative padding) take the col2im route.
        """
        if self._col2im_route():
            return self._input_grad_col2im(dout, W2, x_shape)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        F, C = W2.shape[0], x_shape[1]
        W_flip = W2.reshape(F, C, kh, kw)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        W_flip = W_flip.reshape(C, F * kh * kw)  # (C, F kh kw), a copy
        return self._conv(dout, W_flip, padding=(kh - 1 - ph, kw - 1 - pw))  # (N, C, H, W)

    def _input_grad_col2im(self, dout, W2, x_shape):
        """dx = col2im(W2^T @ dout_T) (N, C, H, W), chunk by chunk over the batch."""
        xp = backend.array_module(dout, W2)
        Ho = dout.shape[2]
        Wc = self._column_width(x_shape)
        dx = xp.empty(x_shape, dtype=xp.result_type(dout.dtype, W2.dtype))  # (N, C, H, W)
        per_example = W2.shape[1] * Ho * Wc  # values of one example's columns

        def chunk_of_dx(chunk):
            dout_T = self._wide_output_grad(dout, chunk, Wc)  # (F, n Ho Wc)
            dx[chunk] = self._dx_of_chunk(W2, dout_T, dx[chunk].shape, Ho, Wc)

        parallel.map_pieces(chunk_of_dx, self._batch_slices(x_shape[0], per_example, dout),
                            like=dout)
        return dx

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
        Ho, Wo = output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride,
                             self.padding)
        expect_output_grad(self, dout, (x.shape[0], self.out_channels, Ho, Wo))
        self.cache["dout"] = dout
        W2 = W.reshape(self.out_channels, -1)  # (F, C kh kw)
        col2im_dx = self.needs_input_grad and self._col2im_route()  # dx from the same chunks
        dW2, db, dx = self._grads_by_chunk(x, dout, bias="b" in self.params,
                                        W2=W2 if col2im_dx else None)
        self.grads["W"] = dW2.reshape(W.shape)  # (F, C, kh, kw)
        if db is not None:
            self.grads["b"] = db  # (F,)
        if self.needs_input_grad and not col2im_dx:
            dx = self._input_grad(dout, W2, x.shape)  # the full convolution
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
        RdW2 = self._grads_by_chunk(x, Rdout)[0]  # Rdout_T @ cols^T
        RdW2 += self._grads_by_chunk(Rx, dout)[0]  # + dout_T @ Rcols^T
        Rdx = self._input_grad(Rdout, W2, x.shape)  # dx for Rdout through W
        if "W" in self.Rparams:  # + dx for dout through RW
            Rdx += self._input_grad(dout, self.Rparams["W"].reshape(F, -1), x.shape)
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
