"""Eigenvalues of the Hessian or GGN from matrix-vector products, and the optimal step.

Why the spectrum matters (seed lecture on optimisation): near theta_t the loss is
approximately the quadratic L(theta_t) + g^T d + (1/2) d^T H d. Gradient descent with
step eta shrinks the error along eigenvector m by |1 - eta lambda_m|; the best single
step eta* = 2 / (lambda_min + lambda_max) gives the rate (kappa - 1) / (kappa + 1) with
the condition number kappa = lambda_max / lambda_min. Along the gradient itself, the
quadratic L(theta - alpha g) ~ L - alpha g^T g + (alpha^2/2) g^T H g is smallest at

    alpha* = g^T g / g^T H g          (``optimal_step``; needs g^T H g > 0).

Methods (all matrix-free: one ``hvp``/``ggn_vp`` per iteration, after a single forward
and backward pass):

* Power iteration: v <- A v / ||A v||. Converges to the eigenvalue of largest magnitude
  (sign kept, through the Rayleigh quotient v^T A v) at the rate |lambda_2 / lambda_1|.
  For an indefinite Hessian that may be the most negative eigenvalue.
* Lanczos (with full reorthogonalisation): builds an orthonormal basis Q_m of the Krylov
  space span{q, A q, ..., A^{m-1} q} in which A is tridiagonal, T_m = Q_m^T A Q_m
  (alpha_j on the diagonal, beta_j beside it). The eigenvalues of T_m (Ritz values)
  approach the extreme eigenvalues of A first. When the Krylov space closes early
  (beta_j ~ 0), a fresh random vector orthogonal to Q continues it, so m = P steps give
  the whole spectrum of a small model; T_m is diagonalised on the host.

Random starting vectors come from an explicit generator (``minidl.default_rng(seed)``),
drawn on the host and moved to the parameters' device.
"""
import math

from .. import backend
from . import flat
from .products import ggn_vp_fn, hvp_fn, preserved_state

__all__ = ["power_iteration", "lanczos", "top_eigenvalues", "extreme_eigenvalues",
           "condition_number", "optimal_step", "lanczos_ritz_values"]

_OPERATORS = {"hessian": hvp_fn, "ggn": ggn_vp_fn}


def _operator(model, loss, x, target, curvature):
    if curvature not in _OPERATORS:
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    return _OPERATORS[curvature](model, loss, x, target)


def _check_rng(rng, fn):
    if rng is None or not hasattr(rng, "standard_normal"):
        raise TypeError(f"{fn} needs an explicit generator, e.g. minidl.default_rng(0); "
                        f"got {rng!r}")


def _dtype(model):
    return next(layer.params[key].dtype for _, layer, key in model.parameters())


def _random_unit(rng, P, xp, dtype):
    v = xp.asarray(rng.standard_normal(P), dtype=dtype)  # (P,)
    return v / xp.linalg.norm(v)


def lanczos_ritz_values(matvec, P, rng, steps, xp, dtype):
    """Ritz values of a symmetric operator after ``steps`` Lanczos steps.

    Args:
        matvec: function mapping a vector (P,) to A times it (P,); A symmetric.
        P: the dimension.
        rng: host generator for the starting (and any restart) vector.
        steps: number m of Lanczos steps, 1 <= m <= P.
        xp: array module of the vectors.
        dtype: dtype of the vectors.

    Returns:
        The m eigenvalues of T_m in ascending order, a host NumPy array.
    """
    steps = int(steps)
    if not 1 <= steps <= P:
        raise ValueError(f"Lanczos needs 1 <= steps <= P = {P}, got steps={steps}")
    host = backend.host()
    tol = 1e3 * float(host.finfo(dtype).eps)
    Q = xp.zeros((steps, P), dtype=dtype)  # (m, P) orthonormal rows
    alphas, betas = [], []
    q = _random_unit(rng, P, xp, dtype)  # (P,)
    q_prev = xp.zeros(P, dtype=dtype)  # (P,)
    beta_prev = 0.0
    scale = 0.0
    for j in range(steps):
        Q[j] = q
        w = matvec(q)  # (P,)
        alpha = float(q @ w)
        w = w - alpha * q - beta_prev * q_prev
        basis = Q[:j + 1]  # (j+1, P)
        for _ in range(2):  # twice is enough to keep Q orthogonal in floating point
            w = w - basis.T @ (basis @ w)  # (P,)
        alphas.append(alpha)
        if j == steps - 1:
            break
        beta = float(xp.linalg.norm(w))
        scale = max(scale, abs(alpha), beta)
        if beta <= tol * scale:
            # invariant subspace: restart orthogonally to what has been seen
            r = _random_unit(rng, P, xp, dtype)
            for _ in range(2):
                r = r - basis.T @ (basis @ r)  # (P,)
            q_next, beta = r / xp.linalg.norm(r), 0.0
        else:
            q_next = w / beta
        betas.append(beta)
        q_prev, q, beta_prev = q, q_next, beta
    m = len(alphas)
    T = host.diag(host.asarray(alphas, dtype="float64"))  # (m, m)
    if m > 1:
        off = host.asarray(betas, dtype="float64")  # (m-1,)
        T += host.diag(off, 1) + host.diag(off, -1)
    return host.linalg.eigvalsh(T)


def _default_steps(P, k):
    return min(P, max(2 * k + 20, 40))


def lanczos(model, loss, x, target, rng, steps=None, curvature="hessian"):
    """All Ritz values of the Hessian (or GGN) after ``steps`` Lanczos steps.

    Args:
        model: the network (needs ``jvp``; ``backward_rop`` for the Hessian).
        loss: the loss object (the reduced loss's curvature).
        x: input batch, shape (N, ...).
        target: targets as the loss expects them.
        rng: explicit generator for the starting vector.
        steps: number of Lanczos steps m (default min(P, 40)); m = P gives every
            eigenvalue of a small model.
        curvature: ``"hessian"`` or ``"ggn"``.

    Returns:
        Host NumPy array of the m Ritz values in ascending order.
    """
    _check_rng(rng, "lanczos")
    P = flat.num_params(model)
    steps = _default_steps(P, 1) if steps is None else steps
    xp = flat.param_module(model)
    with preserved_state(model, loss):
        matvec = _operator(model, loss, x, target, curvature)
        return lanczos_ritz_values(matvec, P, rng, steps, xp, _dtype(model))


def top_eigenvalues(model, loss, x, target, rng, k=1, steps=None, curvature="hessian"):
    """The k largest eigenvalues (largest first), estimated by Lanczos.

    Args:
        model, loss, x, target: as for ``lanczos``.
        rng: explicit generator for the starting vector.
        k: how many eigenvalues.
        steps: Lanczos steps (default min(P, max(2k + 20, 40))).
        curvature: ``"hessian"`` or ``"ggn"``.

    Returns:
        Host NumPy array of shape (k,), descending.
    """
    P = flat.num_params(model)
    if not 1 <= int(k) <= P:
        raise ValueError(f"top_eigenvalues: k must lie in [1, {P}], got {k}")
    steps = _default_steps(P, int(k)) if steps is None else max(int(steps), int(k))
    ritz = lanczos(model, loss, x, target, rng, steps=steps, curvature=curvature)
    return ritz[::-1][:int(k)].copy()


def extreme_eigenvalues(model, loss, x, target, rng, steps=None, curvature="ggn"):
    """``(lambda_min, lambda_max)`` by Lanczos; ``steps`` defaults to P (exact, small P)."""
    P = flat.num_params(model)
    ritz = lanczos(model, loss, x, target, rng, steps=P if steps is None else steps,
                   curvature=curvature)
    return float(ritz[0]), float(ritz[-1])


def condition_number(model, loss, x, target, rng, steps=None, curvature="ggn",
                     damping=0.0):
    """kappa = lambda_max / lambda_min of the GGN (or Hessian) plus ``damping`` I.

    The lecture's kappa belongs to a positive-definite matrix; when the smallest
    eigenvalue (after damping) is not positive the answer is ``inf``: gradient descent on
    that quadratic has no finite rate. A GGN with fewer outputs than parameters is
    singular, so it usually needs a ``damping`` > 0 for a finite answer.

    Args:
        model, loss, x, target: as for ``lanczos``.
        rng: explicit generator for the starting vector.
        steps: Lanczos steps; the default P finds the true extremes of a small model,
            fewer give an estimate (lambda_min converges more slowly than lambda_max).
        curvature: ``"ggn"`` (default, positive semi-definite) or ``"hessian"``.
        damping: added to every eigenvalue (A + damping I).

    Returns:
        A float >= 1, or ``inf``.
    """
    lo, hi = extreme_eigenvalues(model, loss, x, target, rng, steps=steps,
                                 curvature=curvature)
    lo, hi = lo + float(damping), hi + float(damping)
    if lo <= 0:
        return math.inf
    return hi / lo


def power_iteration(model, loss, x, target, rng, iters=500, tol=1e-10, curvature="hessian"):
    """The eigenvalue of largest magnitude and its eigenvector, by power iteration.

    Args:
        model, loss, x, target: as for ``lanczos``.
        rng: explicit generator for the starting vector.
        iters: maximum number of products.
        tol: stop when successive Rayleigh quotients differ by at most tol * |lambda|.
        curvature: ``"hessian"`` or ``"ggn"``.

    Returns:
        ``(lambda, v)``: a float (sign kept) and the unit vector v of shape (P,) on the
        parameters' device.
    """
    _check_rng(rng, "power_iteration")
    P = flat.num_params(model)
    xp = flat.param_module(model)
    with preserved_state(model, loss):
        matvec = _operator(model, loss, x, target, curvature)
        v = _random_unit(rng, P, xp, _dtype(model))  # (P,)
        eig = 0.0
        for _ in range(int(iters)):
            w = matvec(v)  # (P,)
            new = float(v @ w)
            norm = float(xp.linalg.norm(w))
            if norm == 0.0:
                return 0.0, v
            v = w / norm
            if abs(new - eig) <= tol * abs(new):
                return new, v
            eig = new
        return eig, v


def optimal_step(model, loss, x, target, curvature="hessian"):
    """The lecture's step along -g that minimises the local quadratic: g^T g / g^T H g.

    Args:
        model: the network.
        loss: the loss object (g and H are those of its reduced loss).
        x: input batch, shape (N, ...).
        target: targets as the loss expects them.
        curvature: ``"hessian"`` (the lecture's H) or ``"ggn"`` (always >= 0 curvature).

    Returns:
        alpha* as a float; ``inf`` when g^T H g <= 0 (the quadratic has no minimum along
        -g), 0.0 when g = 0.
    """
    with preserved_state(model, loss):
        matvec = _operator(model, loss, x, target, curvature)
        if curvature == "ggn":
            model.backward(loss.backward())
        g = flat.flatten_grads(model)  # (P,)
        gg = float(g @ g)
        if gg == 0.0:
            return 0.0
        gHg = float(g @ matvec(g))
    if gHg <= 0:
        return math.inf
    return gg / gHg
