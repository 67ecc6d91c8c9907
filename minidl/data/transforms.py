"""Input transforms from the lecture: scaling, standardisation, PCA/ZCA whitening, and
random crops and flips for image batches.

* ``normalise(x)``: uint8 pixels 0..255 -> floats in [0, 1] (``x / 255``), optionally
  then ``(x - mean) / std``.
* ``Standardise``: fit the mean and standard deviation on the training set, apply the same
  numbers to the test set, ``z = (x - mu) / sqrt(var + eps)``. Per feature by default
  (``axis=0``), per channel for NCHW images with ``axis=(0, 2, 3)``.
* ``PCAWhiten`` and ``ZCAWhiten`` (Bell and Sejnowski 1997; Krizhevsky 2009, appendix A):
  with X the centred training data (N, D) and its covariance
  ``C = X^T X / N = U diag(l) U^T``,

  - PCA whitening ``z = x U diag(1 / sqrt(l + eps))`` rotates onto the principal axes and
    rescales them (optionally keeping the top k);
  - ZCA whitening ``z = x U diag(1 / sqrt(l + eps)) U^T`` rotates back, so the whitened
    data stays as close as possible to the input (Bell and Sejnowski's "zero-phase").

  Both give covariance ``diag(l / (l + eps))`` (PCA) or ``U diag(l / (l + eps)) U^T``
  (ZCA): the identity on directions whose variance is much larger than eps. A larger eps
  damps the noisy low-variance directions.
* ``random_crop`` (pad with zeros, cut a random window) and ``random_hflip`` (mirror left
  to right with probability p) for NCHW batches, drawing offsets from an explicit host
  generator so that a seed gives the same batch on either backend.

Fitted statistics live in attributes ending in ``_`` (scikit-learn's convention) on the
device of the data they were fitted on. Fits run in float64; outputs are in the default
floating dtype (``backend.get_default_dtype``) unless the input is already floating.
"""
import math

from .. import backend

__all__ = ["to_float", "normalise", "Standardise", "PCAWhiten", "ZCAWhiten", "random_crop",
           "random_hflip"]


def _float_dtype(x):
    """The dtype a transform outputs: x's own if floating, else the default float dtype."""
    if x.dtype.kind == "f":
        return x.dtype
    return backend.get_default_dtype()


def _is_real(value):
    """Whether value is a real number (Python or NumPy, not bool, not NaN)."""
    np = backend.host()
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and value == value)


def _check_eps(eps, owner):
    if not _is_real(eps) or eps < 0:
        raise ValueError(f"{owner}: eps must be a number >= 0, got {eps!r}")
    return float(eps)


def to_float(x, dtype=None):
    """Pixels to floats in [0, 1]: ``x / 255``, on the device ``x`` lives on.

    Args:
        x: array of uint8 pixels 0..255, any shape.
        dtype: output dtype; default the default floating dtype.

    Returns:
        array of the same shape with values in [0, 1].

    Raises:
        TypeError: x is not an array of integers (floats are taken to be scaled already:
            dividing them by 255 again, as ``normalise(normalise(x))`` did, left values
            up to 0.004 without a word).
    """
    xp = backend.array_module(x)
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind not in ("u", "i"):
        got = x.dtype if kind is not None else type(x).__name__
        hint = (" (already floating point: scaled already? then use it as it is; if it "
                "runs 0..255, divide by 255 yourself)" if kind == "f" else "")
        raise TypeError(f"to_float expects an array of integer pixels 0..255 (uint8), got "
                        f"{got}{hint}")
    dtype = backend.get_default_dtype() if dtype is None else backend.host().dtype(dtype)
    return xp.asarray(x, dtype=dtype) * dtype.type(1.0 / 255.0)  # same shape as x


def normalise(x, mean=None, std=None, dtype=None):
    """Scale uint8 pixels to [0, 1], then optionally standardise with given statistics.

    Args:
        x: uint8 array 0..255, e.g. (N, 1, 28, 28).
        mean: None, a number, or an array with an axis for every axis of an example, each
            of size 1 or x's size (``(1, C, 1, 1)`` or ``(C, 1, 1)`` per channel,
            ``(C, H, W)`` per pixel), in the [0, 1] scale. Usually computed on the
            training set.
        std: like mean; both or neither.
        dtype: output dtype; default the default floating dtype.

    Returns:
        float array of x's shape: x / 255, or (x / 255 - mean) / std.

    Raises:
        TypeError: x is not integer pixels (see ``to_float``).
        ValueError: only one of mean and std is given, std is not > 0, or mean or std
            would change x's shape or line up with the wrong axis (a ``(3,)`` mean of
            NCHW images would meet the width, not the channels).
    """
    if (mean is None) != (std is None):
        raise ValueError("normalise: give both mean and std, or neither")
    out = to_float(x, dtype)
    if mean is None:
        return out
    xp = backend.array_module(out)
    mean = xp.asarray(mean, dtype=out.dtype)
    std = xp.asarray(std, dtype=out.dtype)
    for name, stat in (("mean", mean), ("std", std)):
        _check_statistic(name, stat, x.shape)
    if not bool(xp.all(std > 0)):  # also catches NaN
        raise ValueError(f"normalise: std must be > 0 everywhere, got {std}; a constant "
                         "channel has std 0: leave it out or add a small epsilon")
    return (out - mean) / std  # same shape as x


def _check_statistic(name, stat, shape):
    """Refuse a mean or std that would change the shape of data of ``shape`` or line up
    with the wrong axis: it must be one number, or have an axis for every axis of an
    example (``(1, C, 1, 1)`` or ``(C, 1, 1)`` per channel of NCHW images, ``(D,)`` per
    feature of (N, D) data), each of size 1 or the data's size."""
    ndim = len(shape)
    fits = stat.size == 1 and stat.ndim <= ndim
    if not fits and ndim - 1 <= stat.ndim <= ndim:
        fits = all(s in (1, n) for s, n in zip(stat.shape[::-1], shape[::-1]))
    if not fits:
        hint = " (per channel of NCHW images: shape (1, C, 1, 1))" if ndim == 4 else ""
        raise ValueError(f"normalise: {name} of shape {tuple(stat.shape)} does not fit images "
                         f"of shape {tuple(shape)}: give one number, or an array with an axis "
                         f"for every axis of an example, each of size 1 or the data's{hint}")


class Standardise:
    """z = (x - mean) / sqrt(var + eps), with mean and var fitted on training data.

    Args:
        axis: the axes averaged over: 0 for per-feature statistics of (N, D) data,
            (0, 2, 3) for per-channel statistics of NCHW images, None for one scalar.
        eps: added to the variance so constant features do not divide by zero; with
            eps=0, ``fit`` refuses data that has a constant feature.
    """

    def __init__(self, axis=0, eps=1e-8):
        self.axis = axis
        self.eps = _check_eps(eps, "Standardise")

    def fit(self, x):
        """Compute ``mean_`` and ``std_`` of the training data x; returns self."""
        xp = backend.array_module(x)
        x64 = xp.asarray(x, dtype="float64")
        if x64.size == 0:
            raise ValueError(f"Standardise.fit: no values to average over axis={self.axis} in "
                             f"data of shape {x.shape}")
        self.mean_ = x64.mean(axis=self.axis, keepdims=True)  # x's shape, reduced axes -> 1
        var = ((x64 - self.mean_) ** 2).mean(axis=self.axis, keepdims=True)  # like mean_
        if self.eps == 0:
            # a constant feature: the mean's round-off (n u |mean|) is all its variance
            n = x64.size // self.mean_.size
            noise = (n * backend.host().finfo("float64").eps * self.mean_) ** 2  # like mean_
            constant = int((var <= noise).sum())
            if constant:
                raise ValueError(f"Standardise: {constant} feature(s) have variance 0 (constant "
                                 "in the training data), and eps=0 would divide by zero; use "
                                 "eps > 0 (the default is 1e-8)")
        self.std_ = xp.sqrt(var + self.eps)  # like mean_
        self.shape_ = x.shape
        return self

    def _check(self, x, name):
        if not hasattr(self, "mean_"):
            raise RuntimeError(f"Standardise.{name}: call fit(x_train) first")
        if x.ndim != len(self.shape_):
            raise ValueError(f"Standardise.{name}: fitted on {len(self.shape_)}-d data "
                             f"{self.shape_}, got shape {x.shape}")
        # the statistics belong to the kept axes (channels, features): those must match,
        # or a grey-scale mean would broadcast over three colour channels without a word
        kept = [a for a in range(x.ndim) if not self._reduces(a)]
        if any(x.shape[a] != self.shape_[a] for a in kept):
            raise ValueError(f"Standardise.{name}: fitted on data of shape {self.shape_} "
                             f"with statistics of shape {self.mean_.shape} (axis="
                             f"{self.axis}), got shape {x.shape}; the axes not averaged "
                             "over must have the same sizes")
        return backend.check_same_device(f"Standardise.{name}", x, self.mean_)

    def _reduces(self, a):
        """Whether the fit averaged over axis ``a`` of the data it was fitted on."""
        if self.axis is None:
            return True
        ndim = len(self.shape_)
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        return a in {int(b) % ndim for b in axes}

    def transform(self, x):
        """(x - mean_) / std_ in the output float dtype; x's shape is kept."""
        self._check(x, "transform")
        dtype = _float_dtype(x)
        return (x.astype(dtype) - self.mean_.astype(dtype)) / self.std_.astype(dtype)

    def fit_transform(self, x):
        """fit(x) then transform(x)."""
        return self.fit(x).transform(x)

    def inverse_transform(self, z):
        """z * std_ + mean_: back to the original scale."""
        self._check(z, "inverse_transform")
        dtype = _float_dtype(z)
        return z.astype(dtype) * self.std_.astype(dtype) + self.mean_.astype(dtype)


def _fit_covariance(x, name):
    """Mean (D,), eigenvalues (D,) descending and eigenvectors (D, D) of x's covariance."""
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name}.fit expects x of shape (N, ...) with N >= 2, got {x.shape}")
    xp = backend.array_module(x)
    X = xp.asarray(x, dtype="float64").reshape(x.shape[0], -1)  # (N, D)
    mean = X.mean(axis=0)  # (D,)
    Xc = X - mean  # (N, D)
    C = Xc.T @ Xc / X.shape[0]  # (D, D)
    eigenvalues, U = xp.linalg.eigh(C)  # (D,) ascending, (D, D) columns are eigenvectors
    eigenvalues = xp.maximum(eigenvalues[::-1], 0.0)  # (D,) descending; clip round-off < 0
    U = U[:, ::-1]  # (D, D) matching order
    return mean, eigenvalues, U


def _check_whitened_variances(eigenvalues, eps, name, hint):
    """Refuse eps=0 when a kept direction has no variance beyond round-off (D u l_max,
    as numpy.linalg.matrix_rank counts): 1 / sqrt(l) would be infinite or huge noise."""
    if eps > 0 or eigenvalues.size == 0:
        return
    D = eigenvalues.size
    tol = float(eigenvalues.max()) * D * backend.host().finfo("float64").eps
    zero = int((eigenvalues <= tol).sum())
    if zero:
        raise ValueError(f"{name}: {zero} direction(s) of the data have variance 0 (constant "
                         f"or linearly dependent features), and eps=0 would divide by zero; "
                         f"use eps > 0 (the default is 1e-5){hint}")


class _Whiten:
    """Shared transform for the linear whitening maps z = (x - mean_) @ W_."""

    def _check(self, x, name):
        cls = type(self).__name__
        if not hasattr(self, "W_"):
            raise RuntimeError(f"{cls}.{name}: call fit(x_train) first")
        D = self.mean_.shape[0]
        if x.ndim < 2 or math.prod(x.shape[1:]) != D:  # features per example, also for N=0
            raise ValueError(f"{cls}.{name}: fitted on {D} features per example, got x of "
                             f"shape {x.shape}")
        backend.check_same_device(f"{cls}.{name}", x, self.W_)

    def _apply(self, x):
        dtype = _float_dtype(x)
        X = x.reshape(x.shape[0], self.mean_.shape[0]).astype(dtype)  # (N, D)
        return (X - self.mean_.astype(dtype)) @ self.W_.astype(dtype)  # (N, k)

    def fit_transform(self, x):
        """fit(x) then transform(x)."""
        return self.fit(x).transform(x)


class PCAWhiten(_Whiten):
    """PCA whitening: z = (x - mean) U_k diag(1 / sqrt(l_k + eps)).

    Args:
        n_components: number of principal directions kept (k); None keeps all D.
        eps: added to each eigenvalue before the inverse square root; with eps=0, ``fit``
            refuses data where a kept direction has variance 0.
    """

    def __init__(self, n_components=None, eps=1e-5):
        np = backend.host()
        if n_components is not None and (isinstance(n_components, (bool, np.bool_)) or
                                         not isinstance(n_components, (int, np.integer)) or
                                         n_components < 1):
            raise ValueError(f"PCAWhiten: n_components must be an integer >= 1 or None, got "
                             f"{n_components!r}")
        self.n_components = None if n_components is None else int(n_components)
        self.eps = _check_eps(eps, "PCAWhiten")

    def fit(self, x):
        """Fit mean_, eigenvalues_ (D,), components_ (D, k) and W_ (D, k) on x (N, ...)."""
        xp = backend.array_module(x)
        self.mean_, self.eigenvalues_, U = _fit_covariance(x, "PCAWhiten")
        D = U.shape[0]
        k = D if self.n_components is None else self.n_components
        if k > D:
            raise ValueError(f"PCAWhiten: n_components={k} but the data has only {D} features")
        _check_whitened_variances(self.eigenvalues_[:k], self.eps, "PCAWhiten",
                                  " or keep fewer directions (n_components)")
        self.components_ = U[:, :k]  # (D, k)
        self.W_ = self.components_ / xp.sqrt(self.eigenvalues_[:k] + self.eps)  # (D, k)
        return self

    def transform(self, x):
        """Whiten x (N, ...) -> (N, k)."""
        self._check(x, "transform")
        return self._apply(x)  # (N, k)


class ZCAWhiten(_Whiten):
    """ZCA whitening: z = (x - mean) U diag(1 / sqrt(l + eps)) U^T, reshaped like x.

    Args:
        eps: added to each eigenvalue before the inverse square root; with eps=0, ``fit``
            refuses data where a direction has variance 0 (rank-deficient covariance).
    """

    def __init__(self, eps=1e-5):
        self.eps = _check_eps(eps, "ZCAWhiten")

    def fit(self, x):
        """Fit mean_ (D,), eigenvalues_ (D,), components_ (D, D) and W_ (D, D) on x (N, ...)."""
        xp = backend.array_module(x)
        self.mean_, self.eigenvalues_, self.components_ = _fit_covariance(x, "ZCAWhiten")
        _check_whitened_variances(self.eigenvalues_, self.eps, "ZCAWhiten", "")
        U = self.components_
        self.W_ = (U / xp.sqrt(self.eigenvalues_ + self.eps)) @ U.T  # (D, D), symmetric
        return self

    def transform(self, x):
        """Whiten x (N, ...) -> the same shape."""
        self._check(x, "transform")
        return self._apply(x).reshape(x.shape)  # (N, ...) like x


def _check_images(x, name):
    if not backend.is_array(x) or x.ndim != 4:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{name} expects an NCHW batch (N, C, H, W), got {shape}")


def _check_size(value, name, what, low):
    if isinstance(value, bool) or not hasattr(value, "__index__") or value < low:
        raise ValueError(f"random_crop: {name} must be an integer >= {low} ({what}), got "
                         f"{value!r}")
    return int(value)


def random_crop(x, size, rng, padding=0):
    """Pad each image with zeros, then cut a random window of ``size`` (one per image).

    Args:
        x: batch (N, C, H, W), on either backend.
        size: output (h, w), or one int for a square.
        rng: host generator (``backend.default_rng(seed)``) that draws the offsets.
        padding: zeros added on each side of H and W before cropping.

    Returns:
        (N, C, h, w) array on x's device, same dtype.

    Raises:
        TypeError: ``rng`` is not a generator.
        ValueError: x is not (N, C, H, W); size or padding is not a whole number of
            pixels; the window does not fit the padded images.
    """
    _check_images(x, "random_crop")
    backend.check_rng(rng, "random_crop")
    if isinstance(size, (tuple, list)) and len(size) != 2:
        raise ValueError(f"random_crop: size must be (h, w) or one int, got {size!r}")
    h, w = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    h = _check_size(h, "size", "pixels", 1)
    w = _check_size(w, "size", "pixels", 1)
    padding = _check_size(padding, "padding", "pixels of zeros on each side", 0)
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * padding, W + 2 * padding
    if not (0 < h <= Hp and 0 < w <= Wp):
        raise ValueError(f"random_crop: window {(h, w)} does not fit images of {(H, W)} "
                         f"padded by {padding} to {(Hp, Wp)}")
    xp = backend.array_module(x)
    np = backend.host()
    pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    padded = xp.pad(x, pad) if padding else x  # (N, C, Hp, Wp)
    top = rng.integers(0, Hp - h + 1, size=N)  # (N,) host
    left = rng.integers(0, Wp - w + 1, size=N)  # (N,) host
    rows = xp.asarray(top[:, None] + np.arange(h))  # (N, h)
    cols = xp.asarray(left[:, None] + np.arange(w))  # (N, w)
    n = xp.arange(N)[:, None, None, None]  # (N, 1, 1, 1)
    c = xp.arange(C)[None, :, None, None]  # (1, C, 1, 1)
    return padded[n, c, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, h, w)


def random_hflip(x, rng, p=0.5):
    """Mirror each image left to right with probability p.

    Args:
        x: batch (N, C, H, W), on either backend.
        rng: host generator that draws which images flip.
        p: flip probability in [0, 1].

    Returns:
        (N, C, H, W) array on x's device, same dtype.

    Raises:
        TypeError: ``rng`` is not a generator.
        ValueError: x is not (N, C, H, W), or p is not in [0, 1].
    """
    _check_images(x, "random_hflip")
    backend.check_rng(rng, "random_hflip")
    if not _is_real(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"random_hflip: p must be a number in [0, 1], got {p!r}")
    xp = backend.array_module(x)
    flip = xp.asarray(rng.random(x.shape[0]) < p)  # (N,) bool
    return xp.where(flip[:, None, None, None], x[:, :, :, ::-1], x)  # (N, C, H, W)
