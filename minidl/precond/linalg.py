"""Small linear-algebra helpers shared by KFAC, KFLR, KFRA and Shampoo.

Everything runs on the arrays' own backend (NumPy or CuPy via ``array_module``); the
``eigh`` calls accept a stack of matrices (..., n, n) as both libraries do.

Symmetric eigendecomposition. ``sym_eig(M)`` symmetrises M (round-off makes a computed
covariance slightly asymmetric) and returns d, Q with M = Q diag(d) Q^T, d clamped at 0
(a covariance is PSD; tiny negative eigenvalues are round-off).

Damped Kronecker solve (KFAC's "eigen" damping, exact). For symmetric G (F, F) and A
(m, m) with G = Q_G diag(d_G) Q_G^T, A = Q_A diag(d_A) Q_A^T, and V (F, m)::

    (G kron A + lambda I)^{-1} vec(V) = vec( Q_G [ (Q_G^T V Q_A) / (d_G d_A^T + lambda) ] Q_A^T )

with vec the row-major (C order) ravel, since (G kron A) vec(V) = vec(G V A^T) there; the
division is elementwise.

Factored Tikhonov damping (Martens & Grosse 2015, section 6.3, the "pi rule")::

    (A + pi sqrt(lambda) I) kron (G + sqrt(lambda) / pi I),
    pi = sqrt( (tr(A) / dim A) / (tr(G) / dim G) )

pi balances the two factors by their mean eigenvalue (the "norm rule" of Botev et al.
2017 is the same mean-trace ratio). The product's damping term is lambda I plus the
cross terms, so it damps more than lambda I alone.

Inverse p-th root by the coupled Newton iteration (Guo & Higham 2006, as in the scalable
Shampoo code), for symmetric PSD M with ridge r::

    M <- M + r I ;  z = (1 + p) / (2 ||M||_F) ;  X = z^{1/p} I ;  Y = z M
    repeat until ||Y - I||_F < tol:
        P = (1 + 1/p) I - Y / p ;  X <- X P ;  Y <- P^p Y

The invariant Y = X^p M holds throughout (all matrices are polynomials in M, so they
commute), so Y -> I gives X -> M^{-1/p}. Each eigenvalue y of Y moves monotonically
towards 1 (y' = ((1 + 1/p) - y/p)^p y), so the Frobenius error ||Y - I||_F, unlike the
largest entry of |Y - I|, never grows in exact arithmetic; an iteration whose error grows
by more than 1.2x is round-off taking over, and is discarded with the previous X kept.
Iterates run in float64.

Convergence is checked, not assumed. In finite precision the invariant Y = X^p M drifts
by round-off of order cond(M) x machine epsilon, so ||Y - I||_F can fall below ``tol``
while X is far from M^{-1/p} (a matrix of condition 1e14: ||Y - I||_F < 1e-6, but
||X^p M - I||_F ~ 0.07). The result is therefore measured by its true residual
r = ||X^p (M + ridge I) - I||_F (p + 1 matrix products, once); when the iteration
stopped with ||Y - I||_F >= tol (its error grew, or ``max_iter`` ran out) or r > sqrt(tol)
(1e-3 by default), a ``NotConvergedWarning`` (``minidl.curvature``'s, as for power
iteration and Lanczos) gives r and the reason. Ill-conditioned statistics are the usual
cause: raise the ridge, or use the eigendecomposition (``inverse_root_eigh``).
"""
import warnings

from .. import backend
from ..curvature.spectra import NotConvergedWarning

__all__ = ["sym_eig", "damped_kron_solve", "pi_damping", "damped_inverse",
           "inverse_root_newton", "inverse_root_eigh", "kron_solve_factored"]


def sym_eig(M):
    """Eigendecomposition of a symmetric PSD matrix (or a stack of them).

    Args:
        M: (..., n, n) symmetric.

    Returns:
        (d, Q): eigenvalues (..., n) clamped at 0 and eigenvectors (..., n, n) with
        M = Q diag(d) Q^T.
    """
    xp = backend.array_module(M)
    S = 0.5 * (M + xp.swapaxes(M, -1, -2))  # (..., n, n)
    d, Q = xp.linalg.eigh(S)  # (..., n), (..., n, n)
    return xp.maximum(d, 0), Q


def damped_kron_solve(V, dG, QG, dA, QA, damping):
    """(G kron A + damping I)^{-1} vec(V), returned as an (F, m) matrix.

    Args:
        V: (F, m) the gradient matrix [dW | db].
        dG, QG: eigenvalues (F,) and eigenvectors (F, F) of G.
        dA, QA: eigenvalues (m,) and eigenvectors (m, m) of A.
        damping: lambda > 0 (may be 0 only when G kron A is nonsingular).

    Returns:
        (F, m) the preconditioned direction.
    """
    V_rot = QG.T @ V @ QA  # (F, F) @ (F, m) @ (m, m) -> (F, m)
    V_rot = V_rot / (dG[:, None] * dA[None, :] + damping)  # (F, m)
    return QG @ V_rot @ QA.T  # (F, m)


def pi_damping(A, G, damping):
    """The factored Tikhonov split: (gamma_A, gamma_G) with gamma_A gamma_G = damping.

    Args:
        A: (m, m) input-side factor.
        G: (F, F) output-side factor.
        damping: lambda > 0.

    Returns:
        (pi sqrt(lambda), sqrt(lambda) / pi) as Python floats.
    """
    xp = backend.array_module(A, G)
    mean_A = float(xp.trace(A)) / A.shape[0]
    mean_G = float(xp.trace(G)) / G.shape[0]
    if mean_A > 0 and mean_G > 0:
        pi = (mean_A / mean_G) ** 0.5
    else:  # a zero factor (no signal yet): split evenly
        pi = 1.0
    root = float(damping) ** 0.5
    return pi * root, root / pi


def damped_inverse(M, gamma):
    """(M + gamma I)^{-1} for a symmetric PSD M (n, n) and gamma > 0."""
    xp = backend.array_module(M)
    eye = xp.eye(M.shape[0], dtype=M.dtype)  # (n, n)
    inv = xp.linalg.inv(M + gamma * eye)  # (n, n)
    return 0.5 * (inv + inv.T)


def kron_solve_factored(V, G_inv, A_inv):
    """(G_d kron A_d)^{-1} vec(V) = vec(G_d^{-1} V A_d^{-1}) for the damped inverses."""
    return G_inv @ V @ A_inv  # (F, F) @ (F, m) @ (m, m) -> (F, m)


def inverse_root_eigh(M, p, ridge=0.0):
    """(M + ridge I)^{-1/p} through an eigendecomposition (the reference path).

    Args:
        M: (n, n) symmetric PSD.
        p: the root (2 for a vector's full-matrix AdaGrad, 4 for a matrix's factors).
        ridge: added to every eigenvalue; must make them all positive.

    Returns:
        (n, n) symmetric, in M's dtype.
    """
    d, Q = sym_eig(M)  # (n,), (n, n)
    B = Q * (d + ridge) ** (-0.5 / p)  # (n, n): columns scaled by the half power
    return B @ B.T  # (n, n) = Q diag((d + ridge)^(-1/p)) Q^T, as one symmetric product


def inverse_root_newton(M, p, ridge=0.0, max_iter=100, tol=1e-6):
    """(M + ridge I)^{-1/p} by the coupled Newton iteration (see the module doc).

    Args:
        M: (n, n) symmetric PSD.
        p: positive integer root.
        ridge: r >= 0 added to the diagonal first; M + r I must be positive definite.
        max_iter: iteration cap.
        tol: stop when ||Y - I||_F falls below this.

    Returns:
        (n, n) in M's dtype (the last iterate kept, also when it did not converge).

    Warns:
        NotConvergedWarning: when the iteration stopped (its error grew by more than
        1.2x, or ``max_iter`` ran out) with ||Y - I||_F above ``tol``, or the true
        residual ||X^p (M + ridge I) - I||_F exceeds sqrt(tol); the message gives that
        residual, the reason and the iterations used.
    """
    xp = backend.array_module(M)
    p = int(p)
    n = M.shape[0]
    eye = xp.eye(n, dtype="float64")  # (n, n)
    Mr = M.astype("float64") + ridge * eye  # (n, n), iterate in float64
    z = (1.0 + p) / (2.0 * float(xp.linalg.norm(Mr)))
    X = z ** (1.0 / p) * eye  # (n, n)
    Y = z * Mr  # (n, n)
    error = float(xp.linalg.norm(Y - eye))
    reason, iterations = f"max_iter={int(max_iter)} ran out", 0
    for _ in range(int(max_iter)):
        if error < tol:
            break
        P = (1.0 + 1.0 / p) * eye - Y / p  # (n, n)
        P_pow = P
        for _ in range(p - 1):
            P_pow = P_pow @ P  # (n, n)
        X_new = X @ P  # (n, n)
        Y_new = P_pow @ Y  # (n, n)
        new_error = float(xp.linalg.norm(Y_new - eye))
        if new_error > 1.2 * error:  # diverging in finite precision: keep the last X
            reason = f"its error grew to {new_error:.2e} (round-off)"
            break
        X, Y, error = X_new, Y_new, new_error
        iterations += 1
    X = 0.5 * (X + X.T)
    Xp = X
    for _ in range(p - 1):
        Xp = Xp @ X  # (n, n)
    residual = float(xp.linalg.norm(Xp @ Mr - eye))  # ||X^p (M + r I) - I||_F
    if error < tol:
        reason = f"||Y - I||_F = {error:.1e} met tol, but round-off made Y drift from X^p M"
    if not (error < tol and residual <= tol ** 0.5):
        warnings.warn(
            f"inverse_root_newton: (M + ridge I)^(-1/{p}) did not converge: residual "
            f"||X^{p} (M + ridge I) - I||_F = {residual:.2e} after {iterations} iterations "
            f"({reason}; n = {n}, ridge {ridge:g}). An ill-conditioned matrix is the usual "
            "cause: raise the ridge (or max_iter), or use inverse_root_eigh",
            NotConvergedWarning, stacklevel=2)
    return X.astype(M.dtype)
