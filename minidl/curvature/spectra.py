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

Convergence is checked, never assumed. An approximate eigenpair (theta, y) is accepted
when its residual ||A y - theta y|| is at most ``tol`` times the spectral scale (|theta|
for power iteration, the largest |Ritz value| for Lanczos); ``tol`` defaults to
10 sqrt(u) of the parameters' dtype (1.5e-7 in float64, 3.5e-3 in float32). A Rayleigh
quotient that has stopped changing is not enough: when -lambda and +lambda are both
eigenvalues of largest magnitude (the zero-initialised deep linear network, the textbook
saddle), power iteration's vector alternates between two directions and its Rayleigh
quotient settles on a number that is no eigenvalue at all. Power iteration therefore
stops on the residual, and when it has not converged it solves the 2 x 2 eigenproblem of
A on span{v, A v} (Rayleigh-Ritz), which holds both +-lambda eigenvectors in that case.
For Lanczos, the residual of Ritz pair i is |beta_m s_mi| (beta_m the last off-diagonal
element, s_mi the last entry of T_m's eigenvector), known without another product.
Results carry ``residuals`` and ``converged``; a result that did not converge also
raises a ``NotConvergedWarning`` saying what to change.
"""
import math
import numbers
import warnings

from .. import backend
from . import flat
from .products import check_finite, ggn_vp_fn, hvp_fn, preserved_state

__all__ = ["power_iteration", "lanczos", "top_eigenvalues", "extreme_eigenvalues",
           "condition_number", "optimal_step", "lanczos_ritz_values", "EigenPair",
           "RitzValues", "NotConvergedWarning"]


class NotConvergedWarning(RuntimeWarning):
    """An iterative eigenvalue method stopped before its residual met the tolerance."""


class EigenPair(tuple):
    """``(eigenvalue, eigenvector)`` from ``power_iteration``, with how it was found.

    It unpacks as a pair (``lam, v = power_iteration(...)``) and also has:

    Attributes:
        eigenvalue: float (sign kept).
        eigenvector: unit vector (P,) on the parameters' device.
        residual: ||A v - lambda v|| / |lambda| (0 when A v = 0).
        converged: ``residual <= tol``.
        iterations: matrix-vector products used.
        note: a sentence when something needs saying (the +-lambda tie), else "".
    """

    def __new__(cls, eigenvalue, eigenvector, residual, converged, iterations, note=""):
        self = super().__new__(cls, (eigenvalue, eigenvector))
        self.eigenvalue, self.eigenvector = eigenvalue, eigenvector
        self.residual, self.converged = float(residual), bool(converged)
        self.iterations, self.note = int(iterations), note
        return self


class RitzValues(backend.host().ndarray):
    """Ritz values (a host NumPy array) that also carry their residuals.

    Attributes:
        residuals: host array of the same shape, ||A y_i - theta_i y_i|| for each value.
        converged: True when every value this result is about (the two extremes for
            ``lanczos``, the k values for ``top_eigenvalues``) has a residual of at most
            ``tol`` times the largest |Ritz value|.
        tol: that relative tolerance.
    """

    def __array_finalize__(self, obj):
        self.residuals = getattr(obj, "residuals", None)
        self.converged = getattr(obj, "converged", None)
        self.tol = getattr(obj, "tol", None)


def _ritz_result(values, residuals, wanted, tol, scale, what):
    """A ``RitzValues`` of ``values``, converged when ``residuals[wanted]`` are small."""
    host = backend.host()
    out = host.asarray(values, dtype="float64").view(RitzValues)
    out.residuals = host.asarray(residuals, dtype="float64")
    out.tol = tol
    worst = float(out.residuals[wanted].max()) if len(out) else 0.0
    out.converged = worst <= tol * scale
    if not out.converged:
        warnings.warn(
            f"{what}: the Ritz values did not converge: residual {worst:.2e} > tol "
            f"{tol:.1e} x {scale:.3g} (the largest |Ritz value|); they may be far from "
            "eigenvalues. Run more steps (steps=P gives every eigenvalue of a small model)",
            NotConvergedWarning, stacklevel=3)
    return out


def _default_tol(dtype):
    """10 sqrt(u): the residual a converged eigenpair reaches in this precision."""
    return 10.0 * float(backend.host().finfo(dtype).eps) ** 0.5


def _tolerance(tol, dtype, what):
    """``tol`` as a float in (0, inf), or the dtype's default when None; else ValueError.

    A tolerance of 0, below 0 or NaN can never be met, so every result would be reported
    as not converged however exact it was.
    """
    if tol is None:
        return _default_tol(dtype)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) \
            or not 0.0 < float(tol) < math.inf:
        raise ValueError(f"{what}: tol must be a number in (0, inf) (a relative residual), "
                         f"got {tol!r}")
    return float(tol)


def _count(value, name, what, high):
    """``value`` as an int in [1, high]; a ValueError for anything else.

    ``int()`` would have turned 2.5 into 2, True into 1 and "5" into 5 without a word.
    """
    if isinstance(value, bool) or not hasattr(value, "__index__") \
            or not 1 <= int(value) <= high:
        raise ValueError(f"{what}: {name} must be an integer in [1, {high}], got {value!r}")
    return int(value)

_OPERATORS = {"hessian": hvp_fn, "ggn": ggn_vp_fn}


def _operator(model, loss, x, target, curvature):
    if curvature not in _OPERATORS:
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    return _OPERATORS[curvature](model, loss, x, target)


def _dtype(model):
    return next(layer.params[key].dtype for _, layer, key in model.parameters())


def _random_unit(rng, P, xp, dtype):
    v = xp.asarray(rng.standard_normal(P), dtype=dtype)  # (P,)
    return v / xp.linalg.norm(v)


def lanczos_ritz_values(matvec, P, rng, steps, xp, dtype, return_residuals=False):
    """Ritz values of a symmetric operator after ``steps`` Lanczos steps.

    Args:
        matvec: function mapping a vector (P,) to A times it (P,); A symmetric.
        P: the dimension.
        rng: host generator for the starting (and any restart) vector.
        steps: number m of Lanczos steps, 1 <= m <= P.
        xp: array module of the vectors.
        dtype: dtype of the vectors.

        return_residuals: also return ||A y_i - theta_i y_i|| = |beta_m s_mi| per value.

    Returns:
        The m eigenvalues of T_m in ascending order, a host NumPy array (and, when asked,
        their residuals, a host array of the same shape).
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
        beta = float(xp.linalg.norm(w))
        if j == steps - 1:
            beta_last = beta  # A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T
            break
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
    theta, S = host.linalg.eigh(T)  # (m,), (m, m)
    if not return_residuals:
        return theta
    return theta, host.abs(beta_last * S[-1])  # (m,) residual of each Ritz pair


def _default_steps(P, k):
    return min(P, max(2 * k + 20, 40))


def _lanczos(model, loss, x, target, rng, steps, curvature, what):
    """(Ritz values, residuals, dtype) after ``steps`` steps (host arrays)."""
    backend.check_rng(rng, what)
    check_finite(model, x, target, what)
    P = flat.num_params(model)
    xp = flat.param_module(model)
    with preserved_state(model, loss):
        matvec = _operator(model, loss, x, target, curvature)
        theta, res = lanczos_ritz_values(matvec, P, rng, steps, xp, _dtype(model),
                                         return_residuals=True)
    return theta, res, _dtype(model)


def lanczos(model, loss, x, target, rng, steps=None, curvature="hessian", tol=None):
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
        tol: relative residual the two extreme Ritz values must reach (module doc).

    Returns:
        ``RitzValues``: a host NumPy array of the m Ritz values in ascending order, with
        ``.residuals`` and ``.converged`` (the smallest and the largest converged). The
        interior values of a short run are only estimates; a ``NotConvergedWarning``
        says when even the extremes are.

    Raises:
        ValueError: ``steps`` is not an integer in [1, P], or ``tol`` not a number in
            (0, inf).
    """
    P = flat.num_params(model)
    steps = _default_steps(P, 1) if steps is None else _count(steps, "steps", "lanczos", P)
    tol = _tolerance(tol, _dtype(model), "lanczos")
    theta, res, _ = _lanczos(model, loss, x, target, rng, steps, curvature, "lanczos")
    scale = float(abs(theta).max()) if len(theta) else 0.0
    return _ritz_result(theta, res, [0, len(theta) - 1], tol, scale, "lanczos")


def top_eigenvalues(model, loss, x, target, rng, k=1, steps=None, curvature="hessian",
                    tol=None):
    """The k largest eigenvalues (largest first), estimated by Lanczos.

    Args:
        model, loss, x, target: as for ``lanczos``.
        rng: explicit generator for the starting vector.
        k: how many eigenvalues, an integer in [1, P].
        steps: Lanczos steps, an integer in [1, P] (default min(P, max(2k + 20, 40)));
            at least k are run.
        curvature: ``"hessian"`` or ``"ggn"``.
        tol: relative residual each of the k values must reach (module doc).

    Returns:
        ``RitzValues`` of shape (k,), descending, with ``.residuals`` and ``.converged``
        (all k converged); a ``NotConvergedWarning`` when they did not.

    Raises:
        ValueError: ``k`` or ``steps`` is not an integer in [1, P], or ``tol`` not a
            number in (0, inf).
    """
    P = flat.num_params(model)
    k = _count(k, "k", "top_eigenvalues", P)
    steps = _default_steps(P, k) if steps is None else \
        max(_count(steps, "steps", "top_eigenvalues", P), k)
    tol = _tolerance(tol, _dtype(model), "top_eigenvalues")
    theta, res, _ = _lanczos(model, loss, x, target, rng, steps, curvature,
                             "top_eigenvalues")
    scale = float(abs(theta).max())
    return _ritz_result(theta[::-1][:k], res[::-1][:k], list(range(k)), tol, scale,
                        "top_eigenvalues")


def extreme_eigenvalues(model, loss, x, target, rng, steps=None, curvature="ggn", tol=None):
    """``(lambda_min, lambda_max)`` by Lanczos; ``steps`` defaults to P (exact, small P).

    A ``NotConvergedWarning`` says when either residual exceeds ``tol`` (module doc).

    Raises:
        ValueError: ``steps`` is not an integer in [1, P], or ``tol`` not a number in
            (0, inf).
    """
    return _extremes(model, loss, x, target, rng, steps, curvature, tol,
                     "extreme_eigenvalues")


def _extremes(model, loss, x, target, rng, steps, curvature, tol, what):
    """``extreme_eigenvalues`` with ``what`` (the public caller) named in its messages."""
    P = flat.num_params(model)
    steps = P if steps is None else _count(steps, "steps", what, P)
    tol = _tolerance(tol, _dtype(model), what)
    theta, res, _ = _lanczos(model, loss, x, target, rng, steps, curvature, what)
    ritz = _ritz_result(theta, res, [0, len(theta) - 1], tol, float(abs(theta).max()),
                        what)
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
        damping: added to every eigenvalue (A + damping I), a number >= 0.

    Returns:
        A float >= 1, or ``inf``.

    Raises:
        ValueError: ``damping`` is negative, not finite or not a number, or ``steps``
            not an integer in [1, P].
    """
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real) \
            or not 0.0 <= float(damping) < math.inf:
        raise ValueError(f"condition_number: damping must be a number in [0, inf), got "
                         f"{damping!r}")
    lo, hi = _extremes(model, loss, x, target, rng, steps, curvature, None,
                       "condition_number")
    lo, hi = lo + float(damping), hi + float(damping)
    if lo <= 0:
        return math.inf
    return hi / lo


def power_iteration(model, loss, x, target, rng, iters=500, tol=None, curvature="hessian"):
    """The eigenvalue of largest magnitude and its eigenvector, by power iteration.

    v <- A v / ||A v|| until the residual ||A v - lambda v|| (lambda = v^T A v, the
    Rayleigh quotient) is at most ``tol * |lambda|``. If ``iters`` products do not get
    there, the 2 x 2 Rayleigh-Ritz problem on span{v, A v} (one more product) gives the
    answer when the two largest magnitudes are close or tied, as for +-lambda at a saddle
    (module doc); when -lambda and +lambda tie, +lambda is returned and ``note`` says so.

    Args:
        model, loss, x, target: as for ``lanczos``.
        rng: explicit generator for the starting vector.
        iters: maximum number of products, a positive integer.
        tol: relative residual for convergence, a number in (0, inf); default
            10 sqrt(u) of the dtype.
        curvature: ``"hessian"`` or ``"ggn"``.

    Returns:
        ``EigenPair``: unpacks as ``(lambda, v)`` (a float with its sign, the unit vector
        (P,) on the parameters' device) and has ``.residual``, ``.converged``,
        ``.iterations`` and ``.note``. When it did not converge a ``NotConvergedWarning``
        says so as well.

    Raises:
        ValueError: ``iters`` is not a positive integer, or ``tol`` not a number in
            (0, inf).
    """
    backend.check_rng(rng, "power_iteration")
    P = flat.num_params(model)
    xp = flat.param_module(model)
    dtype = _dtype(model)
    tol = _tolerance(tol, dtype, "power_iteration")
    iters = _count(iters, "iters", "power_iteration", math.inf)
    check_finite(model, x, target, "power_iteration")
    with preserved_state(model, loss):
        matvec = _operator(model, loss, x, target, curvature)
        v = _random_unit(rng, P, xp, dtype)  # (P,)
        history = []  # residual after each product
        products, found, best = 0, None, None
        while products < iters:
            w = matvec(v)  # (P,) = A v
            products += 1
            lam = float(v @ w)
            norm = float(xp.linalg.norm(w))
            if norm == 0.0:  # A v = 0: v is an eigenvector for 0 (A = 0 on this space)
                return EigenPair(0.0, v, 0.0, True, products)
            residual = float(xp.linalg.norm(w - lam * v)) / max(abs(lam), 1e-300)
            if residual <= tol:
                return EigenPair(lam, v, residual, True, products)
            history.append(residual)
            stalled = len(history) >= 20 and residual > 0.9 * history[-10]
            if stalled or products == iters:
                # the residual no longer falls (+-lambda, or two magnitudes very close):
                # Rayleigh-Ritz on span{v, A v}, one more product
                best, found = _ritz_on_pair(matvec, v, w, lam, xp, tol)
                products += 1
                if found is not None or products >= iters:
                    break
                history = []  # keep iterating; try again if it stalls again
            v = w / norm
    if found is not None:
        t, y, r, note = found
        return EigenPair(t, y, r, True, products, note)
    t, y, r = best
    warnings.warn(
        f"power_iteration did not converge in {products} products: the residual "
        f"||A v - lambda v|| / |lambda| is {r:.2e} > tol {tol:.1e}, so {t:.6g} may not be "
        "an eigenvalue. The largest eigenvalues are close in magnitude; use more iters, or "
        "lanczos / top_eigenvalues, which handle close and +-lambda spectra",
        NotConvergedWarning, stacklevel=2)
    return EigenPair(t, y, r, False, products)


def _ritz_on_pair(matvec, v, w, lam, xp, tol):
    """Rayleigh-Ritz of A on span{v, A v}: ``(best, accepted)``.

    ``best`` is the Ritz pair ``(theta, y, residual)`` of largest |theta|. ``accepted`` is
    ``(theta, y, residual, note)`` when that pair's residual meets ``tol`` (when the two
    Ritz values are -lambda and +lambda, tied magnitudes, both must, and +lambda is
    taken), else None.
    """
    q2 = w - lam * v  # (P,), orthogonal to v
    q2 = q2 - (v @ q2) * v
    q2 = q2 / xp.linalg.norm(q2)
    Aq2 = matvec(q2)  # (P,)
    host = backend.host()
    T = host.array([[lam, float(v @ Aq2)], [float(q2 @ w), float(q2 @ Aq2)]])
    theta, S = host.linalg.eigh((T + T.T) / 2)  # (2,) ascending, (2, 2)
    pairs = []
    for j in range(2):
        s0, s1 = float(S[0, j]), float(S[1, j])  # host numbers, for either backend
        y = s0 * v + s1 * q2  # (P,) Ritz vector, unit length
        Ay = s0 * w + s1 * Aq2  # (P,) = A y without another product
        t = float(theta[j])
        pairs.append((t, y, float(xp.linalg.norm(Ay - t * y)) / max(abs(t), 1e-300)))
    best = max(pairs, key=lambda pair: abs(pair[0]))
    if abs(abs(pairs[0][0]) - abs(pairs[1][0])) <= tol * abs(best[0]):
        if all(r <= tol for _, _, r in pairs):
            t, y, r = pairs[1]  # +lambda
            return pairs[1], (t, y, r, (
                f"-lambda = {pairs[0][0]:.10g} and +lambda = {t:.10g} tie for the largest "
                "magnitude (a saddle): power iteration alternates between their "
                "eigenvectors, so Rayleigh-Ritz on span{v, A v} separated them; +lambda "
                "is returned"))
        return best, None
    if best[2] <= tol:
        return best, best + ("converged through Rayleigh-Ritz on span{v, A v}",)
    return best, None


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
    check_finite(model, x, target, "optimal_step")
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
