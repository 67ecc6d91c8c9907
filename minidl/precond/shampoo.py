"""Shampoo: preconditioned stochastic tensor optimisation (Gupta, Koren & Singer 2018), with
the moving averages, inverse roots by coupled Newton and grafting of Anil et al. 2021.

For a weight matrix with gradient G (F, k) (a Linear W (out, in), or a Conv2d kernel
reshaped to W.reshape(F, C kh kw), the way the MBF paper's Shampoo and K-FAC see it), one
statistic per mode::

    L <- L + G G^T     (F, F)        R <- R + G^T G     (k, k)           (beta2 = 1)
    L <- beta2 L + (1 - beta2) G G^T,  R likewise                        (beta2 < 1)

and the direction, with an absolute ridge eps (Gupta et al. start from L_0 = eps I,
which for beta2 = 1 is the same thing)::

    P = (L + eps I)^{-1/4} G (R + eps I)^{-1/4}

An order-k tensor uses the exponent -1/(2k): -1/4 for the matrix's two modes, and -1/2
for a vector. In the row-major vec, vec(L^{-1/4} G R^{-1/4}) = (L^{-1/4} kron R^{-1/4})
vec(G), so Shampoo is the preconditioner (L^{1/4} kron R^{1/4})^{-1} on vec(G).

Modes of size 1 are dropped first, as in Anil et al.'s ``merge_small_dims`` (a shape
[1, 2, 768, 1, 2048] is preconditioned as [2, 768, 2048]): a piece G (1, k) (a Linear
with one output, a Conv2d with one filter, or such a layer with ``bias="appended"``) or
G (F, 1) (a Linear with one input and no bias) is the order-1 tensor g = vec(G) (n,)
with n = max(F, k), one statistic L <- L + g g^T (n, n) and the direction::

    P = (L + eps I)^{-1/2} g          (full-matrix AdaGrad on the layer, -1/(2 * 1))

instead of the matrix rule, whose size-1 factor is a scalar that only rescales, leaving
the other factor with the exponent -1/4: a quarter root of the second moments, which
evens out the eigenvalue spread (on a log scale) only half as far as full-matrix AdaGrad.
A (1, 1) piece is a vector of length 1: the scalar g / sqrt(L + eps).

The bias (``bias=``):

* ``"separate"`` (default, Gupta et al.: every parameter tensor on its own): b is an
  order-1 tensor with one statistic L_b <- L_b + g_b g_b^T (F, F) and the direction
  (L_b + eps I)^{-1/2} g_b, i.e. full-matrix AdaGrad on the bias;
* ``"appended"``: the bias joins the weights as the last column, G = [dW | db] (F, k+1),
  as in K-FAC.

The inverse roots (every ``T2`` steps) come from the coupled Newton iteration
(``root="newton"``, default; see ``linalg.inverse_root_newton``) or from an
eigendecomposition (``root="eigh"``, the reference it is checked against). Statistics
are updated every ``T1`` steps.

Grafting (Anil et al.) borrows each piece's step length from a simpler method and keeps
Shampoo's direction: P <- P ||D|| / (||P|| + 1e-16), where D is

* ``"sgd"`` (default): the gradient itself, so the step has the gradient's norm and the
  optimizer's learning rate keeps its SGD meaning;
* ``"adagrad"``: the diagonal AdaGrad direction g / (sqrt(v) + graft_eps), with
  v <- v + g^2 (beta2 = 1) or the same moving average as the statistics;
* ``None``: no grafting (the original method).

The optimizer then steps with P (Shampoo's own lr of 1 and momentum belong to it).
Layers other than Linear and Conv2d (BatchNorm, LayerNorm, ...) keep their plain
gradients; the base class's ``CoverageWarning`` names them.

Defaults: eps 1e-4 (absolute; the middle of the MBF paper's Shampoo damping grid), beta2 1
(Gupta's sums), grafting "sgd", graft_eps 1e-6 (Anil et al.'s diagonal_eps), root
"newton", T1 = T2 = 1 (the Google and Meta codes' defaults; raise T2 for big layers).

Memory per weight: F^2 + k^2 (n^2 for an order-1 piece). Cost: statistics O(F k (F + k))
every T1 steps, two roots of O(F^3 + k^3) times about 10-20 p matrix products every T2
steps, the product O(F k (F + k)) every step.
"""
from .. import backend
from ..layers.conv import Conv2d
from ..layers.linear import Linear
from .base import Preconditioner
from .kfac import grad_matrix
from .linalg import inverse_root_eigh, inverse_root_newton

__all__ = ["Shampoo", "drop_unit_modes"]


def drop_unit_modes(g):
    """A matrix (1, k) or (F, 1) as the vector (k,) or (F,); anything else unchanged.

    Anil et al.'s rule of dropping modes of size 1 before choosing the exponent
    -1/(2 order): such a matrix is an order-1 tensor (full-matrix AdaGrad, -1/2).
    """
    if g.ndim == 2 and 1 in g.shape:
        return g.reshape(-1)  # (max(F, k),)
    return g


class Shampoo(Preconditioner):
    """Shampoo for Linear and Conv2d layers (equations in the module docstring).

    Args:
        model: the network.
        eps: absolute ridge added to every statistic before its root (default 1e-4).
        beta2: 1 sums the statistics; below 1 it is the moving-average weight of the old
            statistic (the first update then sets it).
        grafting: ``"sgd"`` (default), ``"adagrad"`` or None.
        graft_eps: AdaGrad grafting's epsilon (default 1e-6).
        root: ``"newton"`` (coupled Newton, default) or ``"eigh"``.
        bias: ``"separate"`` (default) or ``"appended"``.
        T1: update the statistics every T1 steps (default 1).
        T2: recompute the inverse roots every T2 steps (default 1).
        warn: issue the ``CoverageWarning`` for layers left to the optimizer.
    """

    def __init__(self, model, eps=1e-4, beta2=1.0, grafting="sgd", graft_eps=1e-6,
                 root="newton", bias="separate", T1=1, T2=1, warn=True):
        if not float(eps) > 0:
            raise ValueError(f"Shampoo: eps must be > 0, got {eps!r}")
        if not 0 < float(beta2) <= 1:
            raise ValueError(f"Shampoo: beta2 must lie in (0, 1], got {beta2!r}")
        if grafting not in ("sgd", "adagrad", None):
            raise ValueError(f"Shampoo: grafting must be 'sgd', 'adagrad' or None, got "
                             f"{grafting!r}")
        if root not in ("newton", "eigh"):
            raise ValueError(f"Shampoo: root must be 'newton' or 'eigh', got {root!r}")
        if bias not in ("separate", "appended"):
            raise ValueError(f"Shampoo: bias must be 'separate' or 'appended', got {bias!r}")
        super().__init__(model, T1=T1, T2=T2, warn=warn)
        self.eps = float(eps)
        self.beta2 = float(beta2)
        self.grafting = grafting
        self.graft_eps = float(graft_eps)
        self.root = root
        self.bias = bias

    def covered_types(self):
        return [Linear, Conv2d]

    # -- the gradient as matrices and vectors --------------------------------------------
    def pieces(self, layer):
        """``{name: gradient piece}``: matrices (F, k) and, for a separate bias, (F,).

        A matrix with a mode of size 1, (1, k) or (F, 1), comes back as the vector
        (k,) or (F,): size-1 modes are dropped (module docstring).
        """
        gW = layer.grads["W"]
        if "b" not in layer.params:
            out = {"W": gW.reshape(gW.shape[0], -1)}  # (F, k)
        elif self.bias == "appended":
            out = {"Wb": grad_matrix(layer)}  # (F, k + 1)
        else:
            out = {"W": gW.reshape(gW.shape[0], -1), "b": layer.grads["b"]}  # (F, k), (F,)
        return {name: drop_unit_modes(g) for name, g in out.items()}

    def write(self, layer, pieces):
        """Put the preconditioned pieces back into ``layer.grads``."""
        xp = backend.array_module(layer.params["W"])
        W = layer.params["W"]
        if "Wb" in pieces:
            P = pieces["Wb"].reshape(W.shape[0], -1)  # (F, k + 1), also from a vector
            layer.grads["W"] = xp.ascontiguousarray(P[:, :-1]).reshape(W.shape)
            layer.grads["b"] = xp.ascontiguousarray(P[:, -1])  # (F,)
            return
        layer.grads["W"] = pieces["W"].reshape(W.shape)
        if "b" in pieces:
            layer.grads["b"] = pieces["b"]

    def _accumulate(self, s, key, new):
        """s[key] <- s[key] + new (beta2 = 1) or its moving average, in place.

        ``new`` is a fresh array, so the first update may keep it; in-place updates
        spare an allocation of an (F, F) matrix per statistic per step.
        """
        if key not in s:
            s[key] = new
        elif self.beta2 == 1.0:
            s[key] += new
        else:
            s[key] *= self.beta2
            s[key] += (1 - self.beta2) * new

    # -- the three steps -----------------------------------------------------------------
    def update_curvature(self, i, layer):
        s = self.state[i]
        for name, g in self.pieces(layer).items():
            if g.ndim == 2:
                self._accumulate(s, f"{name}.L", g @ g.T)  # (F, F)
                self._accumulate(s, f"{name}.R", g.T @ g)  # (k, k)
            else:
                self._accumulate(s, f"{name}.L", g[:, None] * g[None, :])  # (F, F)

    def inverse_root(self, M, p):
        """(M + eps I)^{-1/p} by the chosen method."""
        if self.root == "newton":
            return inverse_root_newton(M, p, ridge=self.eps)
        return inverse_root_eigh(M, p, ridge=self.eps)

    def update_inverse(self, i, layer):
        s = self.state[i]
        for name in [key[:-2] for key in s if key.endswith(".L")]:
            matrix = f"{name}.R" in s  # a matrix piece has two statistics, a vector one
            p = 4 if matrix else 2  # exponent -1/(2 order)
            s[f"{name}.L_root"] = self.inverse_root(s[f"{name}.L"], p)  # (F, F)
            if matrix:
                s[f"{name}.R_root"] = self.inverse_root(s[f"{name}.R"], p)  # (k, k)

    def graft_direction(self, s, name, g):
        """The direction whose norm the Shampoo direction takes, or None."""
        if self.grafting == "sgd":
            return g
        if self.grafting == "adagrad":
            key = f"{name}.graft_v"
            self._accumulate(s, key, g * g)  # g's shape
            xp = backend.array_module(g)
            return g / (xp.sqrt(s[key]) + self.graft_eps)
        return None

    def precondition(self, i, layer):
        s = self.state[i]
        out = {}
        for name, g in self.pieces(layer).items():
            if g.ndim == 2:
                P = s[f"{name}.L_root"] @ g @ s[f"{name}.R_root"]  # (F, F) (F, k) (k, k)
            else:
                P = s[f"{name}.L_root"] @ g  # (F, F) @ (F,) -> (F,)
            D = self.graft_direction(s, name, g)
            if D is not None:
                xp = backend.array_module(P)
                P = P * (float(xp.linalg.norm(D)) / (float(xp.linalg.norm(P)) + 1e-16))
            out[name] = P
        self.write(layer, out)
