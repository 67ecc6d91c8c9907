"""Small helpers the lessons share: fast mode, where figures go, data, quadratics.

A lesson (``lessons/NN_name.py``, ``# %%`` cells) runs top to bottom as a script or cell
by cell in a notebook. Two environment variables steer it:

* ``MINIDL_FAST=1``: less data and fewer epochs (CI runs every lesson this way), and BLAS
  limited to one thread (``threadpoolctl``) when this module is imported: the lessons'
  matrices are small, and on a shared two-core machine two BLAS threads per process spin
  against each other (measured under a load of ~7: all fourteen lessons took 874 s with
  two threads, 113 s with one);
* ``MINIDL_FIGURES``: the folder its PNG figures are written to (default
  ``lessons/figures`` when run from the repository root, ``figures`` when run from inside
  ``lessons/``, as a notebook is; in fast mode the subfolder ``fast/`` of that, so that a
  quick check never overwrites the full-mode figures the lessons' README shows).

::

    from minidl import lesson
    epochs = lesson.choose(full=10, fast=1)
    x_train, y_train, x_test, y_test = lesson.mnist(n_train=lesson.choose(None, 3000))
    ...
    lesson.savefig(fig, "06_valley")      # lessons/figures/06_valley.png
"""
import os

from . import backend

__all__ = ["FAST", "is_fast", "choose", "figures_dir", "savefig", "mnist", "quadratic"]


def is_fast():
    """True when ``MINIDL_FAST`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get("MINIDL_FAST", "").strip().lower() in ("1", "true", "yes", "on")


FAST = is_fast()


def _one_blas_thread_in_fast_mode():
    """Limit BLAS to one thread in fast mode (see the module docstring); None otherwise."""
    if not FAST:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl is a dependency, but a bare checkout may lack it
        return None
    return threadpool_limits(limits=1, user_api="blas")


_BLAS_LIMIT = _one_blas_thread_in_fast_mode()


def choose(full, fast):
    """``fast`` in fast mode, else ``full`` (read when called, so tests may set the variable)."""
    return fast if is_fast() else full


def figures_dir():
    """The folder for figures (created if missing); see the module docstring."""
    path = os.environ.get("MINIDL_FIGURES")
    if not path:
        here = os.getcwd()
        if os.path.basename(here) == "lessons":
            path = "figures"
        else:
            path = os.path.join("lessons", "figures")
        if is_fast():  # less data, other curves: not the committed full-mode figures
            path = os.path.join(path, "fast")
    os.makedirs(path, exist_ok=True)
    return path


def savefig(fig, name, dpi=80):
    """Save matplotlib figure ``fig`` as ``<figures_dir>/<name>.png`` and return the path.

    Under a non-interactive backend (``MPLBACKEND=Agg``, a script or CI) the figure is
    closed after saving, so a long lesson never holds dozens of open figures; in a
    notebook it stays open and the notebook shows it below the cell.
    """
    path = os.path.join(figures_dir(), name if name.endswith(".png") else name + ".png")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    import matplotlib
    if matplotlib.get_backend().lower() in ("agg", "pdf", "ps", "svg", "cairo", "template"):
        import matplotlib.pyplot as plt
        plt.close(fig)
    return path


def mnist(n_train=None, n_test=None, flatten=True, dtype=None):
    """MNIST for a lesson as floats in [0, 1]: the real files in full mode, else bundled.

    Full mode reads the 60,000/10,000 images through ``minidl.data.mnist`` (which looks in
    ``MINIDL_DATA`` first); fast mode uses the 10,000/2,000-image subset shipped with the
    package (``minidl.data.bundled_mnist``), so it runs offline.

    Args:
        n_train: keep the first ``n_train`` training examples (None: all).
        n_test: keep the first ``n_test`` test examples (None: all).
        flatten: return x as (N, 784) instead of (N, 1, 28, 28).
        dtype: float dtype of x (default: minidl's default dtype).

    Returns:
        ``(x_train, y_train, x_test, y_test)`` on the active device; x float, y int64.
    """
    from . import data
    load = data.bundled_mnist if is_fast() else data.mnist
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = load(split)
        x, y = x[:n], y[:n]  # (n, 1, 28, 28) uint8, (n,) int64
        x = data.normalise(backend.asarray(x), dtype=dtype)  # floats in [0, 1]
        if flatten:
            x = x.reshape(x.shape[0], -1)  # (n, 784)
        out += [x, backend.asarray(y)]
    return tuple(out)


def quadratic(A, b):
    """A model whose mean squared error is the quadratic 1/2 w'Aw - b'w (plus a constant).

    Lessons run gradient descent and the optimizers on quadratics through minidl's own
    code path: a ``Linear(M, 1, bias=False)`` layer (its ``W`` of shape (1, M) is w) under
    ``MSELoss`` on M data rows. With X = sqrt(M/2) A^(1/2) the Hessian of the MSE,
    (2/M) X'X, is A, and targets y = sqrt(M/2) A^(-1/2) b give the linear term -b'w.

    Args:
        A: symmetric positive-definite matrix (M, M).
        b: vector (M,).

    Returns:
        ``(model, X, y)``: the layer (W initialised to zeros), inputs X (M, M) and
        targets y (M, 1), all in A's dtype; ``MSELoss().forward(model.forward(X), y)`` is
        the quadratic.

    Raises:
        ValueError: A is not square and symmetric positive definite, or b does not match.
    """
    from .layers import Linear
    xp = backend.array_module(A)
    M = A.shape[0] if A.ndim == 2 else -1
    if A.ndim != 2 or A.shape != (M, M) or b.shape != (M,):
        raise ValueError(f"quadratic expects A of shape (M, M) and b of shape (M,), got "
                         f"{tuple(A.shape)} and {tuple(b.shape)}")
    lam, Q = xp.linalg.eigh((A + A.T) / 2)  # (M,), (M, M)
    if float(lam.min()) <= 0 or float(abs(A - A.T).max()) > 1e-12 * float(abs(A).max()):
        raise ValueError("quadratic expects a symmetric positive-definite A, got eigenvalues "
                         f"from {float(lam.min()):.3g} to {float(lam.max()):.3g}")
    X = (M / 2) ** 0.5 * (Q * xp.sqrt(lam)) @ Q.T  # (M, M) = sqrt(M/2) A^(1/2)
    y = ((M / 2) ** 0.5 * (Q / xp.sqrt(lam)) @ Q.T @ b)[:, None]  # (M, 1)
    model = Linear(M, 1, bias=False, rng=backend.default_rng(0)).astype(A.dtype)
    model.params["W"][...] = 0
    return model, X, y
