"""Shampoo: preconditioned stochastic tensor optimisation (Gupta, Koren & Singer 2018), with
the moving averages, inverse roots by coupled Newton and grafting of Anil et al. 2021.

For a weight matrix with gradient G (F, k) (a Linear W (out, in), or a Conv2d kernel
reshaped to W.reshape(F, C kh kw), the way the MBF paper's Shampoo and K-FAC see it), one
statistic per mode::

    L <- L + G G^T     (F, F)        R <- R + G^T G     (k, k)           (beta2 = 1)
    L <- beta2 L + (1 - beta2) G G^T,  R likewise                        (beta2 < 1)

(beta2 is ``stat_decay``, here in (0, 1] with 1 the plain sum) and the direction, with an
absolute ridge eps (``damping``; Gupta et al. start from L_0 = eps I, which for beta2 = 1
is the same thing)::

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

Conv kernels (``conv_form=``): ``"matrix"`` (default) reshapes W (F, C, kh, kw) to the
matrix (F, C kh kw) as above; ``"tensor"`` keeps the MBF paper's order-3 tensor
(F, C, kh kw) (its Algorithm 3, "filter-flattening"), with one statistic per mode,
H_j <- H_j + G_(j) G_(j)^T (G_(j) the mode-j unfolding, the other modes contracted), and
the direction G x_1 P_1 x_2 P_2 x_3 P_3 with P_j = (H_j + eps I)^{-1/6}; in the row-major
vec, (P_1 kron P_2 kron P_3) vec(G). Three factors of sizes F, C and kh kw are smaller
than the matrix form's (C kh kw)^2, at the price of a coarser approximation.

Blocking (Anil et al. 2021): a mode longer than ``block_size`` (default 256) is cut into
pieces of at most that length, and every block of the gradient gets its own statistics and
roots (with its modes of size 1 dropped too: the edge block (1, k) of a 257-row weight is
a vector, with the exponent -1/2); the direction is then Shampoo applied block by block,
i.e. the dense rule with block-diagonal statistics. Without it a 4096-wide layer needs two
4096^2 roots per update (134 s per step here), VGG16's 512-channel 3x3 convs a 4608^2 one.
The cost of the roots falls from O(n^3 + m^3) to O(n m b) for blocks of size b.
``block_size=None`` never blocks.

The bias (``bias=``):

* ``"separate"`` (default, Gupta et al.: every parameter tensor on its own): b is an
  order-1 tensor with one statistic L_b <- L_b + g_b g_b^T (F, F) and the direction
  (L_b + eps I)^{-1/2} g_b, i.e. full-matrix AdaGrad on the bias;
* ``"appended"``: the bias joins the weights as the last column, G = [dW | db] (F, k+1),
  as in K-FAC.

The inverse roots (every ``T2`` steps) come from the coupled Newton iteration
(``root="newton"``; see ``linalg.inverse_root_newton``) or from an eigendecomposition
(``root="eigh"``, the reference it is checked against). ``root="auto"`` (default) takes
eigh on the CPU backend and Newton on a GPU: Newton is 10-20 p matrix products, which a
GPU runs fast, but on a CPU one eigh costs less, and on a rank-deficient statistic (the
first steps) Newton needs many more iterations (a 4096-wide layer in 512-blocks: 201 s for
the first step with Newton, 37 s with eigh, 22 s with 256-blocks, here). Statistics
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

Defaults: damping (eps) 1e-4 (absolute; the middle of the MBF paper's Shampoo damping
grid), stat_decay (beta2) 1 (Gupta's sums), grafting "sgd", graft_eps 1e-6 (Anil et al.'s
diagonal_eps), root "auto", block_size 256 (between Anil et al.'s 128 and Meta's 1024),
T1 = T2 = 1 (the Google and Meta codes' defaults; raise T2 for big layers).

Memory per weight: F^2 + k^2 (n^2 for an order-1 piece). Cost: statistics O(F k (F + k))
every T1 steps, two roots of O(F^3 + k^3) times about 10-20 p matrix products every T2
steps, the product O(F k (F + k)) every step.
"""
import itertools

from .. import backend
from .base import Preconditioner, check_choice, check_number
from .kfactored import grad_matrix
from .linalg import inverse_root_eigh, inverse_root_newton

__all__ = ["Shampoo", "drop_unit_modes"]

MODES = ("L", "R", "S")  # the statistics of modes 0, 1, 2 (L and R as in Gupta et al.)


def drop_unit_modes(g):
    """The array without its modes of size 1 ((1, k) -> (k,), (F, 1, 9) -> (F, 9)).

    Anil et al.'s rule of dropping modes of size 1 before choosing the exponent
    -1/(2 order): a (1, k) matrix is an order-1 tensor (full-matrix AdaGrad, -1/2). An
    array of size 1 becomes the vector (1,).
    """
    shape = tuple(n for n in g.shape if n != 1)
    return g.reshape(shape if shape else (1,))


def blocks(shape, block_size):
    """The index tuples of the blocks of an array of ``shape``: every mode longer than
    ``block_size`` cut into consecutive pieces of at most that length."""
    ranges = []
    for n in shape:
        size = n if block_size is None or n <= block_size else int(block_size)
        ranges.append([slice(start, min(start + size, n)) for start in range(0, n, size)])
    return list(itertools.product(*ranges))


def mode_statistic(g, mode):
    """G_(mode) G_(mode)^T: the mode's unfolding times its transpose, (n_mode, n_mode)."""
    xp = backend.array_module(g)
    if g.ndim == 1:
        return g[:, None] * g[None, :]  # (n, n)
    if g.ndim == 2:
        return g @ g.T if mode == 0 else g.T @ g  # (F, F) or (k, k)
    others = [a for a in range(g.ndim) if a != mode]
    return xp.tensordot(g, g, axes=(others, others))  # (n_mode, n_mode)


def apply_roots(g, roots):
    """G x_1 P_1 x_2 ... x_K P_K for symmetric P_j (row-major: (P_1 kron ...) vec G)."""
    if g.ndim == 1:
        return roots[0] @ g  # (n,)
    if g.ndim == 2:
        return roots[0] @ g @ roots[1]  # (F, F) (F, k) (k, k)
    xp = backend.array_module(g)
    out = g
    for mode, P in enumerate(roots):
        out = xp.moveaxis(xp.tensordot(P, out, axes=([1], [mode])), 0, mode)  # like g
    return out


class Shampoo(Preconditioner):
    """Shampoo for Linear and Conv2d layers (equations in the module docstring).

    Args:
        model: the network.
        damping: eps, the absolute ridge added to every statistic before its root (1e-4).
        stat_decay: beta2; 1 sums the statistics, below 1 it is the moving-average weight
            of the old statistic (the first update then sets it).
        grafting: ``"sgd"`` (default), ``"adagrad"`` or None.
        graft_eps: AdaGrad grafting's epsilon (default 1e-6).
        root: ``"auto"`` (default: eigh on the CPU, Newton on a GPU), ``"newton"``
            (coupled Newton) or ``"eigh"``.
        bias: ``"separate"`` (default) or ``"appended"``.
        conv_form: ``"matrix"`` (default, W as (F, C kh kw)) or ``"tensor"`` ((F, C, kh kw)).
        block_size: the longest mode preconditioned as one block (default 256; None: no
            blocking).
        T1: update the statistics every T1 steps (default 1).
        T2: recompute the inverse roots every T2 steps (default 1).
        warn: issue the ``CoverageWarning`` for layers left to the optimizer.
    """

    reads_cache = ()  # the statistics are built from the gradients alone

    def __init__(self, model, damping=1e-4, stat_decay=1.0, grafting="sgd", graft_eps=1e-6,
                 root="auto", bias="separate", conv_form="matrix", block_size=256, T1=1,
                 T2=1, warn=True):
        self.eps = check_number("Shampoo", "damping (eps)", damping, low=0.0, low_open=True)
        self.beta2 = check_number("Shampoo", "stat_decay (beta2)", stat_decay, 0.0, 1.0,
                                  low_open=True, allowed="(0, 1] (1: the plain sum)")
        self.grafting = check_choice("Shampoo", "grafting", grafting, ("sgd", "adagrad", None))
        self.graft_eps = check_number("Shampoo", "graft_eps", graft_eps, low=0.0)
        self.root = check_choice("Shampoo", "root", root, ("auto", "newton", "eigh"))
        self.bias = check_choice("Shampoo", "bias", bias, ("separate", "appended"))
        self.conv_form = check_choice("Shampoo", "conv_form", conv_form, ("matrix", "tensor"))
        if conv_form == "tensor" and bias == "appended":
            raise ValueError("Shampoo: conv_form='tensor' keeps the kernel as a 3-tensor, to "
                             "which no bias column can be appended; use bias='separate'")
        if block_size is not None:
            if isinstance(block_size, bool) or int(block_size) != block_size or block_size < 1:
                raise ValueError(f"Shampoo: block_size must be a positive integer or None, "
                                 f"got {block_size!r}")
            block_size = int(block_size)
        self.block_size = block_size
        super().__init__(model, T1=T1, T2=T2, warn=warn)

    def applies_to(self, layer):
        return hasattr(layer, "kron_inputs") and "W" in layer.params

    def hyperparameters(self):
        return dict(super().hyperparameters(), damping=self.eps, stat_decay=self.beta2,
                    grafting=self.grafting, graft_eps=self.graft_eps, root=self.root,
                    bias=self.bias, conv_form=self.conv_form, block_size=self.block_size)

    def covered_types(self):
        from ..layers.conv import Conv2d
        from ..layers.linear import Linear
        return [Linear, Conv2d]

    # -- the gradient as tensors ---------------------------------------------------------
    def pieces(self, layer):
        """``{name: gradient piece}``: matrices (F, k), 3-tensors (F, C, kh kw) for a conv
        kernel with ``conv_form="tensor"``, and, for a separate bias, vectors (F,).

        Modes of size 1 are dropped (module docstring).
        """
        gW = layer.grads["W"]
        if gW.ndim == 4 and self.conv_form == "tensor":
            W_piece = gW.reshape(gW.shape[0], gW.shape[1], -1)  # (F, C, kh kw)
        else:
            W_piece = gW.reshape(gW.shape[0], -1)  # (F, k)
        if "b" not in layer.params:
            out = {"W": W_piece}
        elif self.bias == "appended":
            out = {"Wb": grad_matrix(layer)}  # (F, k + 1)
        else:
            out = {"W": W_piece, "b": layer.grads["b"]}  # ..., (F,)
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
            layer.grads["b"] = pieces["b"].reshape(layer.params["b"].shape)

    def block_names(self, name, g):
        """[(key prefix, index tuple)] of the blocks of piece ``name`` (one: the name)."""
        index = blocks(g.shape, self.block_size)
        if len(index) == 1:
            return [(name, index[0])]
        return [(f"{name}@{'.'.join(str(sl.start) for sl in idx)}", idx) for idx in index]

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
    def update_curvature(self, i, layer, step=None):
        s = self.state[i]
        for name, g in self.pieces(layer).items():
            for prefix, idx in self.block_names(name, g):
                block = drop_unit_modes(g[idx])  # an edge block (1, k) is a vector too
                for mode in range(block.ndim):
                    self._accumulate(s, f"{prefix}.{MODES[mode]}", mode_statistic(block, mode))

    def inverse_root(self, M, p):
        """(M + eps I)^{-1/p} by the chosen method."""
        root = self.root
        if root == "auto":
            root = "eigh" if backend.array_module(M) is backend.host() else "newton"
        if root == "newton":
            return inverse_root_newton(M, p, ridge=self.eps)
        return inverse_root_eigh(M, p, ridge=self.eps)

    def update_inverse(self, i, layer, step=None):
        s = self.state[i]
        for prefix in [key[:-2] for key in list(s) if key.endswith(".L")]:
            modes = [m for m in MODES if f"{prefix}.{m}" in s]
            p = 2 * len(modes)  # the exponent -1/(2 order)
            for m in modes:
                s[f"{prefix}.{m}_root"] = self.inverse_root(s[f"{prefix}.{m}"], p)

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

    def precondition(self, i, layer, step=None):
        s = self.state[i]
        out = {}
        for name, g in self.pieces(layer).items():
            xp = backend.array_module(g)
            names = self.block_names(name, g)
            if len(names) == 1:
                prefix = names[0][0]
                P = apply_roots(g, [s[f"{prefix}.{MODES[m]}_root"] for m in range(g.ndim)])
            else:
                P = xp.empty_like(g)  # like g, filled block by block
                for prefix, idx in names:
                    block = drop_unit_modes(g[idx])  # as in update_curvature
                    roots = [s[f"{prefix}.{MODES[m]}_root"] for m in range(block.ndim)]
                    P[idx] = apply_roots(block, roots).reshape(g[idx].shape)
            D = self.graft_direction(s, name, g)
            if D is not None:
                P = P * (float(xp.linalg.norm(D)) / (float(xp.linalg.norm(P)) + 1e-16))
            out[name] = P
        self.write(layer, out)
