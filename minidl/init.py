"""Weight initialisers from the seed lectures, each drawing from an explicit generator.

For a weight of shape ``(out, in)`` (dense) or ``(F, C, kh, kw)`` (conv), the fans are
``fan_in = in * kh * kw`` and ``fan_out = out * kh * kw``.

* ``uniform_fan_in``: W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))  ("random init", lecture 1;
  also PyTorch's default for Linear and Conv2d weights and biases).
* ``xavier_uniform``: W ~ U(-sqrt(6/(fan_in+fan_out)), +sqrt(6/(fan_in+fan_out)))
  (Glorot and Bengio 2010): var W = 2/(fan_in+fan_out), the harmonic mean of the forward
  (1/fan_in) and backward (1/fan_out) variances.
* ``xavier_normal``: W ~ N(0, 2/(fan_in+fan_out)).
* ``he_normal`` / ``he_uniform``: var W = 2/fan_in (He et al. 2015), for ReLU networks.
* ``orthogonal``: rows (or columns) orthonormal, via QR of a Gaussian matrix (Saxe et al.
  2013), scaled by ``gain``.
* ``sparse``: each output unit gets ``k`` non-zero Gaussian incoming weights (Martens
  2010, k = 15), the rest zero.

Every function takes the shape and a ``numpy.random.Generator`` (``minidl.default_rng``)
and returns an array on the active backend in the default dtype.
"""
import math

from . import backend

__all__ = ["fans", "zeros", "ones", "uniform_fan_in", "xavier_uniform", "xavier_normal",
           "he_normal", "he_uniform", "orthogonal", "sparse", "INITIALISERS", "get"]


def fans(shape):
    """``(fan_in, fan_out)`` of a weight of shape (out, in) or (F, C, kh, kw)."""
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of at least 2 dimensions, got shape {shape}")
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return shape[1] * receptive, shape[0] * receptive


def _check_rng(rng, name):
    backend.check_rng(rng, f"init.{name}")


def _out(a, dtype):
    """``a`` on the current backend in ``dtype``, C-ordered (a transposed Q from the QR of
    ``orthogonal`` would otherwise come out Fortran-ordered, which anything that perturbs
    or views the weight through ``W.reshape(-1)`` gets wrong)."""
    xp = backend.xp()
    return xp.ascontiguousarray(backend.asarray(a, dtype=dtype or backend.get_default_dtype()))


def zeros(shape, dtype=None):
    """All zeros (biases, BatchNorm beta)."""
    return backend.xp().zeros(shape, dtype=dtype or backend.get_default_dtype())


def ones(shape, dtype=None):
    """All ones (BatchNorm gamma)."""
    return backend.xp().ones(shape, dtype=dtype or backend.get_default_dtype())


def uniform_fan_in(shape, rng, fan_in=None, dtype=None):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ``fan_in`` may be given (for biases)."""
    _check_rng(rng, "uniform_fan_in")
    if fan_in is None:
        fan_in, _ = fans(shape)
    bound = 1.0 / math.sqrt(fan_in)
    return _out(rng.uniform(-bound, bound, size=shape), dtype)


def xavier_uniform(shape, rng, gain=1.0, dtype=None):
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    _check_rng(rng, "xavier_uniform")
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _out(rng.uniform(-bound, bound, size=shape), dtype)


def xavier_normal(shape, rng, gain=1.0, dtype=None):
    """N(0, sigma^2) with sigma = gain * sqrt(2 / (fan_in + fan_out))."""
    _check_rng(rng, "xavier_normal")
    fan_in, fan_out = fans(shape)
    sigma = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return _out(sigma * rng.standard_normal(shape), dtype)


def he_normal(shape, rng, dtype=None):
    """N(0, 2 / fan_in) (Kaiming normal, for ReLU)."""
    _check_rng(rng, "he_normal")
    fan_in, _ = fans(shape)
    return _out(math.sqrt(2.0 / fan_in) * rng.standard_normal(shape), dtype)


def he_uniform(shape, rng, dtype=None):
    """U(-a, a) with a = sqrt(6 / fan_in), so var W = 2 / fan_in."""
    _check_rng(rng, "he_uniform")
    fan_in, _ = fans(shape)
    bound = math.sqrt(6.0 / fan_in)
    return _out(rng.uniform(-bound, bound, size=shape), dtype)


def orthogonal(shape, rng, gain=1.0, dtype=None):
    """A (semi-)orthogonal matrix (Saxe et al. 2013), reshaped to ``shape``.

    The weight is viewed as a ``rows x cols`` matrix (rows = shape[0]); the Q factor of a
    Gaussian matrix's QR decomposition, with the signs of R's diagonal fixed so the
    distribution is uniform (Haar), gives orthonormal rows or columns.
    """
    _check_rng(rng, "orthogonal")
    rows = shape[0]
    cols = 1
    for s in shape[1:]:
        cols *= s
    A = rng.standard_normal((max(rows, cols), min(rows, cols)))  # (big, small)
    Q, R = backend.host().linalg.qr(A)  # generator output lives on the host
    Q = Q * _sign(R)  # (big, small): make the decomposition unique
    if rows < cols:
        Q = Q.T  # (rows, cols)
    return _out(gain * Q.reshape(shape), dtype)


def _sign(R):
    d = R.diagonal()
    return (d >= 0) * 2.0 - 1.0


def sparse(shape, rng, k=15, sigma=1.0, dtype=None):
    """Martens' sparse init: each output unit has ``k`` non-zero N(0, sigma^2) inputs."""
    _check_rng(rng, "sparse")
    rows = shape[0]
    cols = 1
    for s in shape[1:]:
        cols *= s
    k = min(k, cols)
    W = backend.host().zeros((rows, cols))  # (rows, cols), on the host like rng's draws
    for r in range(rows):
        idx = rng.choice(cols, size=k, replace=False)
        W[r, idx] = sigma * rng.standard_normal(k)
    return _out(W.reshape(shape), dtype)


INITIALISERS = {
    "uniform": uniform_fan_in,
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "orthogonal": orthogonal,
    "sparse": sparse,
}


def get(name):
    """Look an initialiser up by name (``"uniform"``, ``"xavier_uniform"``, ...)."""
    if callable(name):
        return name
    if name not in INITIALISERS:
        raise ValueError(f"unknown initialiser {name!r}; choose one of {sorted(INITIALISERS)}")
    return INITIALISERS[name]
