"""Pooling over NCHW images: MaxPool2d, AvgPool2d, GlobalAvgPool2d.

With windows of size (kh, kw) moved by stride (sh, sw) (default: the kernel size, so the
windows tile the image) and no padding, Ho = (H - kh) // sh + 1, Wo likewise (floor, as
PyTorch with ceil_mode=False). Write win[n, c, k, ho, wo] for element k = (i, j) of the
window of output pixel (ho, wo), i.e. x[n, c, sh ho + i, sw wo + j], and K = kh kw.

Max pooling::

    out[n, c, ho, wo] = win[n, c, a, ho, wo],   a = argmax_k win[n, c, k, ho, wo]
    dx = add_windows(onehot(a) * dout)   the gradient goes to the argmax only

On ties the argmax is the first maximum in row-major window order, as PyTorch does; the
function has a kink there and any element of the subgradient is correct. Max pooling is
piecewise linear, so Rout = Rx gathered at the same argmax, and backward_rop is the
backward scatter applied to Rdout (no second-order term).

How it is computed. The direct way, ``window_argmax`` below, copies every window (K values
per output pixel), takes ``argmax`` over them and gathers with ``take_along_axis``. The layer
instead keeps a running maximum over the K window offsets, each offset (i, j) being one
strided slab x[:, :, i::sh, j::sw] of the image (no copy of the windows)::

    best = slab(0, 0);  a = 0
    for k = 1 .. K-1:   a = k where slab(k) > best;  best = max(best, slab(k))

The strict ">" keeps the first maximum on ties, so ``a`` is exactly the argmax above (a
test checks the two agree); the argmax is kept as int8 (1 byte per output pixel) when
K < 128, as int32 for larger windows. The backward pass loops over the same K offsets:
dx[slab(k)] += dout where a == k. Both passes run over pieces of a few examples of the
batch (``minidl.parallel``: a 1 MB piece stays in the CPU cache over the K offsets, and
with several threads allowed the pieces run side by side). On a (128, 64, 32, 32) batch,
forward and backward together took 37 ms against PyTorch's 82 ms at one thread on a 2-core
Xeon (ratio 0.47; ``benchmarks/RESULTS.md``).

Average pooling (linear in x)::

    out = (1/K) sum_k win[:, :, k]       dx = add_windows(dout / K broadcast over k)

Global average pooling: out[n, c] = mean_{h, w} x[n, c, h, w] (N, C), and
dx[n, c, h, w] = dout[n, c] / (H W).

For the linear layers, jvp is the forward map applied to Rx and backward_rop the backward
map applied to Rdout. Windows come from a strided view (see ``im2col``) and gradients are
put back with ``add_windows`` (col2im's core), so nothing loops over pixels in Python.

Reference: CS231n "Convolutional Networks" notes (pooling layer); PyTorch
``torch.nn.MaxPool2d`` / ``AvgPool2d`` for the conventions.
"""
from .. import backend, parallel
from .base import Layer, expect_forward_done, expect_ndim, expect_output_grad
from .im2col import add_windows, pair, sliding_windows

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "window_argmax"]


class _Pool2d(Layer):
    """Shared arguments and input checks of the windowed pools."""

    def __init__(self, kernel_size, stride=None, *more, **options):
        super().__init__()
        owner = type(self).__name__
        if more or options:  # a PyTorch call such as MaxPool2d(3, 2, padding=1)
            given = [f"{len(more)} more positional argument(s)"] if more else []
            raise TypeError(
                f"{owner} takes kernel_size and stride only, got "
                f"{', '.join(given + sorted(options))}: PyTorch's padding, dilation, "
                "ceil_mode, return_indices and count_include_pad are not implemented here "
                "(windows start at the top-left corner and a remainder that no window "
                "covers is dropped, as PyTorch's defaults padding=0, ceil_mode=False do)")
        self.kernel_size = pair(kernel_size, "kernel_size", owner, 1)
        self.stride = pair(kernel_size if stride is None else stride, "stride", owner, 1)

    def _check_input(self, x):
        expect_ndim(self, x, (4,), "(N, C, H, W); add a batch axis with x[None]")
        H, W = x.shape[2:]
        kh, kw = self.kernel_size
        if kh > H or kw > W:
            raise ValueError(f"{type(self).__name__}: kernel_size {(kh, kw)} is larger than "
                             f"the input {(H, W)}; use a smaller kernel or a larger image")

    def _out_shape(self, x):
        """(Ho, Wo) of the output for input x (N, C, H, W)."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1

    def _check_output_grad(self, dout):
        """Both pools' first lines of backward: forward ran, dout (N, C, Ho, Wo)."""
        expect_forward_done(self, dout)
        x = self.cache["x"]
        expect_output_grad(self, dout, x.shape[:2] + self._out_shape(x))

    def _windows(self, x):
        """(N, C, K, Ho, Wo): the K = kh kw elements of every window (a copy)."""
        view = sliding_windows(x, self.kernel_size, self.stride)  # (N, C, kh, kw, Ho, Wo)
        N, C, kh, kw, Ho, Wo = view.shape
        return view.reshape(N, C, kh * kw, Ho, Wo)  # (N, C, K, Ho, Wo)

    def _add_windows(self, dwin, x_shape):
        """Add (N, C, K, Ho, Wo) window gradients back onto the image (N, C, H, W)."""
        N, C, K, Ho, Wo = dwin.shape
        kh, kw = self.kernel_size
        dwin = dwin.reshape(N, C, kh, kw, Ho, Wo)  # (N, C, kh, kw, Ho, Wo)
        return add_windows(dwin, x_shape, self.kernel_size, self.stride, (0, 0))  # no padding

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def window_argmax(x, kernel, stride):
    """The direct max pooling: ``(out, argmax)``, both (N, C, Ho, Wo).

    Copies every window to (N, C, K, Ho, Wo), takes the first argmax over its K elements and
    gathers them. Simple and slow; ``MaxPool2d`` computes the same two arrays with a
    running maximum (the tests check that they agree).
    """
    xp = backend.array_module(x)
    view = sliding_windows(x, kernel, stride)  # (N, C, kh, kw, Ho, Wo)
    N, C, kh, kw, Ho, Wo = view.shape
    win = view.reshape(N, C, kh * kw, Ho, Wo)  # (N, C, K, Ho, Wo), a copy
    argmax = win.argmax(axis=2)  # (N, C, Ho, Wo), first maximum on ties
    out = xp.take_along_axis(win, argmax[:, :, None], axis=2)[:, :, 0]  # (N, C, Ho, Wo)
    return out, argmax


class MaxPool2d(_Pool2d):
    """Max over each (kh, kw) window; the gradient goes to the (first) argmax.

    Args:
        kernel_size: int or pair (kh, kw).
        stride: int or pair (sh, sw); defaults to ``kernel_size``.

    Raises:
        TypeError: any other argument (PyTorch's padding, ceil_mode, ...: not implemented).

    Cache: ``cache["x"]`` the input, ``cache["argmax"]`` (N, C, Ho, Wo) the window offset
    k = i kw + j of each maximum (int8 for windows of up to 127 elements).
    """

    def _slab(self, a, k, out_shape):
        """Element k = (i, j) of every window: the strided view a[:, :, i::sh, j::sw]."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        Ho, Wo = out_shape
        i, j = divmod(k, kw)
        return a[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]  # (N, C, Ho, Wo)

    def forward(self, x):
        self._check_input(x)
        xp = backend.array_module(x)
        K = self.kernel_size[0] * self.kernel_size[1]
        hw = self._out_shape(x)
        best = xp.empty(x.shape[:2] + hw, dtype=x.dtype)  # (N, C, Ho, Wo), running maximum
        argmax = xp.empty(best.shape, dtype="int8" if K < 128 else "int32")  # (N, C, Ho, Wo)

        def running_max(piece):  # on the examples of one piece of the batch
            xs, b, a = x[piece], best[piece], argmax[piece]
            b[...] = self._slab(xs, 0, hw)
            a[...] = 0
            for k in range(1, K):
                slab = self._slab(xs, k, hw)  # (n, C, Ho, Wo), a view
                better = slab > b  # strict: the first maximum keeps ties
                # argmax = k where better: every offset so far is < k, so a maximum does it
                # (much faster than a masked copy)
                xp.maximum(a, better * a.dtype.type(k), out=a)
                xp.maximum(b, slab, out=b)

        # pieces of the batch: each stays in cache over the K offsets, and with several
        # threads allowed they run side by side (minidl.parallel)
        parallel.map_pieces(running_max, parallel.pieces_of(x), like=x)
        self.cache["x"], self.cache["argmax"] = x, argmax
        return best  # (N, C, Ho, Wo)

    def _scatter(self, dout):
        """Send each dout[n, c, ho, wo] to the argmax of its window: dx (N, C, H, W)."""
        x_shape, argmax = self.cache["x"].shape, self.cache["argmax"]
        xp = backend.array_module(dout)
        K = self.kernel_size[0] * self.kernel_size[1]
        hw = dout.shape[2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        dx = xp.zeros(x_shape, dtype=dout.dtype)  # (N, C, H, W)

        def scatter(piece):  # the examples of one piece of the batch
            d, a = dout[piece], argmax[piece]
            for k in range(K):
                slab = self._slab(dx[piece], k, hw)  # (n, C, Ho, Wo), a view of dx
                if sh >= kh and sw >= kw:  # windows do not overlap: each pixel gets <= 1
                    xp.multiply(d, a == k, out=slab)
                else:  # overlapping windows share pixels: accumulate
                    slab += d * (a == k)

        parallel.map_pieces(scatter, parallel.pieces_of(dx), like=dout)
        return dx

    def backward(self, dout):
        self._check_output_grad(dout)
        self.cache["dout"] = dout
        return self._scatter(dout)

    def jvp(self, Rx):
        argmax = self.cache["argmax"]
        K = self.kernel_size[0] * self.kernel_size[1]
        hw = argmax.shape[2:]
        Rout = self._slab(Rx, 0, hw) * (argmax == 0)  # (N, C, Ho, Wo)
        for k in range(1, K):
            Rout += self._slab(Rx, k, hw) * (argmax == k)
        return Rout  # Rx gathered at the argmax

    def backward_rop(self, Rdout):
        return self._scatter(Rdout)


class AvgPool2d(_Pool2d):
    """Mean over each (kh, kw) window.

    Args:
        kernel_size: int or pair (kh, kw).
        stride: int or pair (sh, sw); defaults to ``kernel_size``.

    Raises:
        TypeError: any other argument (PyTorch's padding, ceil_mode, ...: not implemented).
    """

    def _mean(self, x):
        view = sliding_windows(x, self.kernel_size, self.stride)  # (N, C, kh, kw, Ho, Wo)
        K = self.kernel_size[0] * self.kernel_size[1]
        return view.sum(axis=(2, 3)) / K  # (N, C, Ho, Wo), summed on the view: no copy

    def _spread(self, dout):
        """Give each window element dout / K and add them onto the image (N, C, H, W)."""
        xp = backend.array_module(dout)
        N, C, Ho, Wo = dout.shape
        K = self.kernel_size[0] * self.kernel_size[1]
        dwin = xp.broadcast_to((dout / K)[:, :, None], (N, C, K, Ho, Wo))  # (N, C, K, Ho, Wo)
        return self._add_windows(dwin, self.cache["x"].shape)  # (N, C, H, W)

    def forward(self, x):
        self._check_input(x)
        self.cache["x"] = x
        return self._mean(x)  # (N, C, Ho, Wo)

    def backward(self, dout):
        self._check_output_grad(dout)
        self.cache["dout"] = dout
        return self._spread(dout)

    def jvp(self, Rx):
        return self._mean(Rx)  # (N, C, Ho, Wo)

    def backward_rop(self, Rdout):
        return self._spread(Rdout)


class GlobalAvgPool2d(Layer):
    """Mean over all pixels of each channel: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        expect_ndim(self, x, (4,), "(N, C, H, W); add a batch axis with x[None]")
        self.cache["x"] = x
        return x.mean(axis=(2, 3))  # (N, C)

    def _spread(self, dout):
        x = self.cache["x"]
        xp = backend.array_module(dout)
        H, W = x.shape[2:]
        dx = xp.empty(x.shape, dtype=dout.dtype)  # (N, C, H, W)
        dx[...] = (dout / (H * W))[:, :, None, None]
        return dx

    def backward(self, dout):
        expect_forward_done(self, dout)
        expect_output_grad(self, dout, self.cache["x"].shape[:2])  # (N, C)
        self.cache["dout"] = dout
        return self._spread(dout)

    def jvp(self, Rx):
        return Rx.mean(axis=(2, 3))  # (N, C)

    def backward_rop(self, Rdout):
        return self._spread(Rdout)
