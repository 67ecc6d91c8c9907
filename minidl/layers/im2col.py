"""im2col / col2im: a 2-D convolution as one matrix product (Chellapilla et al. 2006).

For an input x (N, C, H, W), a kernel of size (kh, kw), stride (sh, sw) and zero padding
(ph, pw), the output has spatial size::

    Ho = (H + 2 ph - kh) // sh + 1,    Wo = (W + 2 pw - kw) // sw + 1

and output pixel (ho, wo) sees the window of the padded input x_pad starting at
(sh ho, sw wo). im2col writes every window of every example as one column::

    cols[(c, i, j), (n, ho, wo)] = x_pad[n, c, sh ho + i, sw wo + j]      (C kh kw, N Ho Wo)

with the row index (c, i, j) in C order, the same order as ``W.reshape(F, -1)`` of a
convolution weight W (F, C, kh, kw). The whole batch's convolution is then ONE matrix
product, ``W.reshape(F, -1) @ cols`` (F, N Ho Wo). ``Conv2d`` applies it to chunks of a
few examples at a time, so that the columns stay in the CPU cache (see ``conv.py``).

The windows are read as a strided *view* of x_pad (``as_strided``, shape
(C, kh, kw, N, Ho, Wo), strides (sC, sH, sW, sN, sh sH, sw sW)); reshaping that view to
(C kh kw, N Ho Wo) makes the one copy. col2im is the adjoint of im2col (its transpose as a
linear map): each column entry is added back to the pixel it was read from, so pixels
shared by overlapping windows sum their contributions::

    dx_pad[n, c, sh ho + i, sw wo + j] += dcols[(c, i, j), (n, ho, wo)]

The direct way is kh kw strided adds of whole (N, C, Ho, Wo) slabs, one per kernel offset
(i, j) (``add_windows``), then the padding border is cut off; ``col2im`` does the same adds
grouped by the phase (row mod sh, column mod sw) of the pixel they land on, so that each
add runs over contiguous rows (23% faster for stride 2; see its docstring). Pooling layers
use the same windows.

Stride 1, the fast twin: "wide" columns. With stride 1 the window of output pixel
(ho, wo) starts at pixel (ho, wo) of x_pad. Flatten each padded image plane to one row of
Hp' Wp values (one extra zero row at the bottom, Hp' = Hp + 1) and let the column index run
over q = ho Wp + w' for every w' in [0, Wp), not only w' < Wo. Then::

    cols_wide[(c, i, j), (n, q)] = x_pad_flat[n, c, i Wp + j + q]      (C kh kw, N Ho Wp)

so for each kernel offset (i, j) the columns are ONE contiguous run of Ho Wp values per
(n, c) plane: im2col becomes kh kw slab copies of long runs (about twice as fast as
copying rows of Wo values), and col2im kh kw slab adds. Columns with w' >= Wo wrap round
into the next row; they are computed and thrown away (Wp / Wo more products, 6% for a
32-pixel image with padding 1); in backward their dout is set to zero, so they add
nothing to dW or dx. ``im2col_wide`` and ``col2im_wide`` are this; the tests check them
against ``im2col``/``col2im``.

Reference: K. Chellapilla, S. Puri, P. Simard, "High Performance Convolutional Neural
Networks for Document Processing", 2006; CS231n's im2col notes.
"""
from .. import backend

__all__ = ["pair", "output_size", "pad2d", "sliding_windows", "im2col", "col2im",
           "add_windows", "im2col_wide", "col2im_wide"]


def pair(value, name, owner, minimum):
    """Read an int-or-pair hyperparameter (kernel_size, stride, padding) as ``(a, b)``.

    Args:
        value: an int, or a tuple/list of two ints.
        name: the argument's name, for the error message.
        owner: the layer's class name, for the error message.
        minimum: the smallest allowed value (1 for sizes and strides, 0 for padding).

    Returns:
        ``(int, int)``.
    """
    if isinstance(value, (tuple, list)):
        items = tuple(value)
    else:
        items = (value, value)
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise TypeError(f"{owner} expects {name} as an int or a pair of ints (h, w), "
                        f"got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{owner} expects {name} >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def _is_int(v):
    return not isinstance(v, bool) and hasattr(v, "__index__")


def output_size(H, W, kernel, stride, padding):
    """``(Ho, Wo)`` of a window sweep over an (H, W) image (floor division, as PyTorch)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def pad2d(x, padding):
    """Zero-pad the two spatial axes of x (N, C, H, W) by ``padding = (ph, pw)``.

    Returns x itself when there is no padding.
    """
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend.array_module(x)
    N, C, H, W = x.shape
    x_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)  # (N, C, Hp, Wp)
    x_pad[:, :, ph:ph + H, pw:pw + W] = x
    return x_pad


def sliding_windows(x_pad, kernel, stride):
    """A strided view of every window: (N, C, kh, kw, Ho, Wo), no copy.

    ``view[n, c, i, j, ho, wo] = x_pad[n, c, sh ho + i, sw wo + j]``. Only read it: it
    shares memory with x_pad, and its elements alias each other where windows overlap.
    """
    (kh, kw), (sh, sw) = kernel, stride
    N, C, Hp, Wp = x_pad.shape
    Ho, Wo = output_size(Hp, Wp, kernel, stride, (0, 0))
    sN, sC, sH, sW = x_pad.strides
    as_strided = backend.array_module(x_pad).lib.stride_tricks.as_strided
    return as_strided(x_pad, shape=(N, C, kh, kw, Ho, Wo),
                      strides=(sN, sC, sH, sW, sh * sH, sw * sW))  # (N, C, kh, kw, Ho, Wo)


def im2col(x, kernel, stride, padding):
    """The columns of every window of the batch, ready for one matrix product.

    Args:
        x: input (N, C, H, W).
        kernel, stride, padding: pairs ``(kh, kw)``, ``(sh, sw)``, ``(ph, pw)``.

    Returns:
        cols (C*kh*kw, N*Ho*Wo): rows in (c, i, j) C order, columns in (n, ho, wo) order.
    """
    (kh, kw) = kernel
    N, C = x.shape[:2]
    windows = sliding_windows(pad2d(x, padding), kernel, stride)  # (N, C, kh, kw, Ho, Wo)
    Ho, Wo = windows.shape[4:]
    # the same view with the batch axis moved next to the pixels (no copy yet)
    windows = windows.transpose(1, 2, 3, 0, 4, 5)  # (C, kh, kw, N, Ho, Wo)
    return windows.reshape(C * kh * kw, N * Ho * Wo)  # (C kh kw, N Ho Wo): the one copy


def col2im(cols, x_shape, kernel, stride, padding):
    """Adjoint of ``im2col``: add every column entry back to the pixel it came from.

    Args:
        cols: (C*kh*kw, N*Ho*Wo), laid out as ``im2col`` returns it.
        x_shape: (N, C, H, W) of the image the columns were taken from.
        kernel, stride, padding: the pairs used by ``im2col``.

    Returns:
        dx (N, C, H, W), C-contiguous.

    Computed phase by phase ("polyphase"): the padded pixels whose row is pi mod sh and
    column pj mod sw form one phase, a (Hq, Wq) grid P_{pi,pj}; kernel tap (i, j) with
    i = pi mod sh, j = pj mod sw sends its (Ho, Wo) slab of column entries to that grid,
    shifted by (i // sh, j // sw)::

        P_{pi,pj}[c, n, ho + i // sh, wo + j // sw] += dcols[(c, i, j), (n, ho, wo)]

    so every add is over contiguous rows (unlike adding into x_pad with a stride), and
    each phase is written once into its rows and columns of dx, the padding dropped.
    ``add_windows`` is the direct way (one strided add per tap); a test checks the two
    agree. With stride 1 there is one phase.
    """
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = output_size(H, W, kernel, stride, padding)
    xp = backend.array_module(cols)
    dcols = cols.reshape(C, kh, kw, N, Ho, Wo)  # a view
    dx = xp.zeros((N, C, H, W), dtype=cols.dtype)  # pixels in no window stay 0
    for pi in range(min(sh, kh)):
        Hq = Ho + (kh - 1 - pi) // sh  # rows of phase pi that some window reaches
        q0 = max(0, -(-(ph - pi) // sh))  # first of them inside the image (not padding)
        q1 = min(Hq, (H - 1 + ph - pi) // sh + 1)  # one past the last inside
        for pj in range(min(sw, kw)):
            Wq = Wo + (kw - 1 - pj) // sw
            r0 = max(0, -(-(pw - pj) // sw))
            r1 = min(Wq, (W - 1 + pw - pj) // sw + 1)
            if q1 <= q0 or r1 <= r0:
                continue  # the phase lies in the padding only
            P = xp.zeros((C, N, Hq, Wq), dtype=cols.dtype)  # (C, N, Hq, Wq)
            for i in range(pi, kh, sh):
                for j in range(pj, kw, sw):
                    P[:, :, i // sh:i // sh + Ho, j // sw:j // sw + Wo] += dcols[:, i, j]
            h0, w0 = pi + sh * q0 - ph, pj + sw * r0 - pw  # the phase's first pixel in dx
            rows = slice(h0, h0 + sh * (q1 - q0 - 1) + 1, sh)
            columns = slice(w0, w0 + sw * (r1 - r0 - 1) + 1, sw)
            dx[:, :, rows, columns] = P[:, :, q0:q1, r0:r1].transpose(1, 0, 2, 3)
    return dx  # (N, C, H, W)


def add_windows(dwindows, image_shape, kernel, stride, padding):
    """Add window gradients back onto the image: the adjoint of ``sliding_windows``.

    Args:
        dwindows: (A, B, kh, kw, Ho, Wo), any strides, with (A, B) the two leading image
            axes, (N, C) or (C, N); entry [a, b, i, j, ho, wo] belongs to pixel
            (sh ho + i - ph, sw wo + j - pw) of image [a, b].
        image_shape: (A, B, H, W) of the image.
        kernel, stride, padding: pairs ``(kh, kw)``, ``(sh, sw)``, ``(ph, pw)``.

    Returns:
        dx (A, B, H, W): a view of a padded accumulator (contiguous when no padding).
    """
    A, B, H, W = image_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = dwindows.shape[4:]
    xp = backend.array_module(dwindows)
    dx_pad = xp.zeros((A, B, H + 2 * ph, W + 2 * pw), dtype=dwindows.dtype)  # (A, B, Hp, Wp)
    # one strided add per kernel offset: the rows (or columns) hit by offset i are
    # i, i + sh, ..., i + sh (Ho - 1); overlapping windows accumulate
    for i in range(kh):
        rows = slice(i, i + sh * (Ho - 1) + 1, sh)
        for j in range(kw):
            columns = slice(j, j + sw * (Wo - 1) + 1, sw)
            dx_pad[:, :, rows, columns] += dwindows[:, :, i, j]
    return dx_pad[:, :, ph:ph + H, pw:pw + W]  # (A, B, H, W)


def _pad_wide(x, padding, dtype=None):
    """x (N, C, H, W) zero-padded, with one extra zero row at the bottom: (N, C, Hp + 1, Wp)."""
    ph, pw = padding
    xp = backend.array_module(x)
    N, C, H, W = x.shape
    x_pad = xp.zeros((N, C, H + 2 * ph + 1, W + 2 * pw), dtype=dtype or x.dtype)
    x_pad[:, :, ph:ph + H, pw:pw + W] = x
    return x_pad  # (N, C, Hp + 1, Wp)


def im2col_wide(x, kernel, padding):
    """Stride-1 im2col over the padded width (see the module doc): (C kh kw, N, Ho, Wp).

    Column (n, ho, w') holds the window starting at pixel (ho, w') of x_pad; only the
    columns with w' < Wo are windows of the convolution, the others are thrown away by the
    caller.
    """
    (kh, kw), (ph, pw) = kernel, padding
    xp = backend.array_module(x)
    N, C, H, W = x.shape
    x_pad = _pad_wide(x, padding)  # (N, C, Hp + 1, Wp)
    Wp = x_pad.shape[3]
    Ho = H + 2 * ph - kh + 1
    flat = x_pad.reshape(N, C, x_pad.shape[2] * Wp)  # (N, C, (Hp + 1) Wp), each plane one row
    cols = xp.empty((C, kh, kw, N, Ho * Wp), dtype=x.dtype)  # (C, kh, kw, N, Ho Wp)
    for i in range(kh):
        for j in range(kw):
            start = i * Wp + j  # where the window offset (i, j) starts in each plane
            cols[:, i, j] = flat[:, :, start:start + Ho * Wp].transpose(1, 0, 2)  # (C, N, Ho Wp)
    return cols.reshape(C * kh * kw, N, Ho, Wp)  # (C kh kw, N, Ho, Wp)


def col2im_wide(dcols, x_shape, kernel, padding):
    """Adjoint of ``im2col_wide``: dcols (C kh kw, N, Ho, Wp) -> dx (N, C, H, W), contiguous.

    Every column is added back, the thrown-away ones included, so give them zeros (they
    are zero when dcols = W2^T dout_wide with dout_wide zero there).
    """
    N, C, H, W = x_shape
    (kh, kw), (ph, pw) = kernel, padding
    xp = backend.array_module(dcols)
    Hp1, Wp = H + 2 * ph + 1, W + 2 * pw
    Ho = dcols.shape[2]
    d = dcols.reshape(C, kh, kw, N, Ho * Wp)  # (C, kh, kw, N, Ho Wp)
    dx_pad = xp.empty((N, C, Hp1 * Wp), dtype=dcols.dtype)  # (N, C, (Hp + 1) Wp)
    dx_pad[:, :, :Ho * Wp] = d[:, 0, 0].transpose(1, 0, 2)  # offset (0, 0) starts at 0
    dx_pad[:, :, Ho * Wp:] = 0
    for i in range(kh):
        for j in range(kw):
            if i == j == 0:
                continue
            start = i * Wp + j
            slab = dx_pad[:, :, start:start + Ho * Wp]  # (N, C, Ho Wp), a view
            slab += d[:, i, j].transpose(1, 0, 2)
    dx_pad = dx_pad.reshape(N, C, Hp1, Wp)  # (N, C, Hp + 1, Wp)
    return xp.ascontiguousarray(dx_pad[:, :, ph:ph + H, pw:pw + W])  # (N, C, H, W)
