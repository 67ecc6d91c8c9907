"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015; Grosse & Martens
2016 for convolutions).

A covered layer has weights W (F, m_in) (a Conv2d kernel (F, C, kh, kw) is seen as
W.reshape(F, C kh kw)) and bias b (F,). Put them side by side as W_hat = [W | b] (F, m),
m = m_in + 1, and append a ones column to the input: a_hat = [a; 1]. Example n's
gradient is the outer product dW_hat_n = delta_n a_hat_n^T (summed over output locations
t for a convolution), with delta the gradient at the layer's output. In the row-major
(C order) vec of W_hat its curvature block is approximated by a Kronecker product::

    block  ~  G kron A,   A = E[a_hat a_hat^T]  (m, m),   G = E[delta delta^T]  (F, F)

(papers that vec column by column write A kron G; it is the same matrix re-indexed).

Factors from a mini-batch of N examples (T = 1 for Linear; T = Ho Wo output locations and
a_hat the im2col patch of location t for Conv2d, ``layer.patches()``)::

    A = (1/N) sum_{n,t} a_hat_nt a_hat_nt^T              (Omega of Grosse & Martens)
    G = (kappa / T) sum_{n,t} dout_nt dout_nt^T          (Gamma: mean over n and t)

dout = ``layer.cache["dout"]`` is the share of the reduced loss's gradient; kappa turns
it back into per-example gradients: kappa = N when dout carries the 1/N of a mean loss
(``batch_averaged=True``; then G = (1/N) sum_n delta_n delta_n^T with delta_n = N dout_n),
kappa = 1/N for a sum loss. With these choices the convolution's product
A kron G = (1/(N^2 T)) sum aa^T kron sum delta delta^T, Grosse & Martens' Omega kron Gamma;
the 1/T sits on G, as in their paper (it only matters to the factored damping split).

``fisher`` picks what delta is:

* ``"empirical"``: the mini-batch's own labels (the dout of the backward pass just run).
  For one example and a Linear layer, G kron A is then exactly the empirical Fisher block
  g g^T of ``minidl.curvature.empirical_fisher``.
* ``"true"``: targets y ~ p(y | x) drawn by ``loss.sample_target(rng)`` and an extra
  backward pass through the model (``n_samples`` of them, averaged); the model's grads
  and caches are put back afterwards. Then G estimates the same block of
  ``minidl.curvature.true_fisher``, which equals the GGN for cross-entropy with "mean"
  (and GGN / D for MSE or BCE averaged over D outputs, GGN / N for "sum"; see that
  module). For a deep linear network with MSE, E[G] kron A equals that block exactly.

Moving averages (factors start at the first mini-batch's, then)::

    A <- stat_decay A + (1 - stat_decay) A_batch,    the same for G

every ``T1`` steps. Every ``T2`` steps the damped inverse is prepared, by one of:

* ``damping_mode="eigen"`` (default; KFAC-Pytorch): eigendecompositions A = Q_A d_A Q_A^T,
  G = Q_G d_G Q_G^T, then the exact damped Kronecker solve
  V' = Q_G [(Q_G^T V Q_A) / (d_G d_A^T + lambda)] Q_A^T = (G kron A + lambda I)^{-1} vec V;
* ``damping_mode="factored"`` (Martens & Grosse's factored Tikhonov, pi rule):
  V' = (G + sqrt(lambda)/pi I)^{-1} V (A + pi sqrt(lambda) I)^{-1}, with
  pi = sqrt((tr A / m) / (tr G / F)).

KL clipping (Ba, Grosse & Martens 2017, as in KFAC-Pytorch): after every covered layer is
preconditioned, all directions are scaled by

    nu = min(1, sqrt(kl_clip / (lr^2 sum_layers <V', V>)))

which bounds the predicted change lr^2 V'^T F V' of the model's outputs. It needs the
optimizer's learning rate: pass ``lr`` (a number, or the optimizer itself, whose current
``lr`` is read at every step so schedules are followed). Without ``lr`` no clipping is done.

Checkpoints: ``state_dict()`` holds the factors and their eigendecompositions or
inverses and the step count; the generator of ``fisher="true"`` and ``lr`` belong to the
caller (save the generator's ``bit_generator.state`` to resume a sampled run exactly).

BatchNorm (and any other layer that is neither Linear nor Conv2d) is left to the
optimizer with its plain gradient; the base class's ``CoverageWarning`` names those
layers (the MBF paper treats BN parameters the same way).

Defaults follow KFAC-Pytorch's optimizer class: stat_decay 0.95, damping 1e-3, kl_clip
1e-3, T1 = 10 (its TCov), T2 = 100 (its TInv). The MBF paper and the KFAC-Pytorch README
use damping 0.03 for CNNs; tune damping with the learning rate.

Memory per layer: m^2 + F^2. Cost: factors O(N T (m^2 + F^2)) every T1 steps, two
eigendecompositions O(m^3 + F^3) every T2 steps, the solve O(F m (F + m)) every step.

This file also holds what KFLR and KFRA share with K-FAC: reading a layer as
(a_hat, dout, [dW | db]) and the ``KroneckerFactored`` base class (moving averages,
damping, the solve); those methods differ only in how G is computed.
"""
from .. import backend
from ..curvature.products import preserved_state
from ..layers.conv import Conv2d
from ..layers.linear import Linear
from .base import Preconditioner
from .linalg import (damped_inverse, damped_kron_solve, kron_solve_factored, pi_damping,
                     sym_eig)

__all__ = ["KFAC", "KroneckerFactored", "layer_inputs", "output_grads", "grad_matrix",
           "set_grad_matrix"]


# -- reading a Linear or Conv2d layer as a matrix product --------------------------------
def layer_inputs(layer):
    """The layer's inputs with a ones column for the bias: a_hat of shape (N, T, m).

    Linear: T = 1, the rows of ``cache["x"]``. Conv2d: T = Ho Wo, the im2col patches from
    ``layer.patches()`` in the column order of ``W.reshape(F, -1)``.
    """
    if isinstance(layer, Conv2d):
        a = layer.patches()  # (N, T, C kh kw)
    else:
        a = layer.cache["x"][:, None, :]  # (N, 1, in)
    if "b" in layer.params:
        xp = backend.array_module(a)
        ones = xp.ones(a.shape[:2] + (1,), dtype=a.dtype)  # (N, T, 1)
        a = xp.concatenate([a, ones], axis=2)  # (N, T, m)
    return a


def output_grads(dout):
    """A layer's output gradient as (N, T, F): (N, F) for Linear, (N, F, Ho, Wo) for conv."""
    if dout.ndim == 2:
        return dout[:, None, :]  # (N, 1, F)
    N, F = dout.shape[:2]
    return dout.reshape(N, F, -1).transpose(0, 2, 1)  # (N, T, F)


def grad_matrix(layer):
    """[dW | db] of shape (F, m): the gradient as the matrix the Kronecker factors act on."""
    gW = layer.grads["W"]
    V = gW.reshape(gW.shape[0], -1)  # (F, m_in)
    if "b" in layer.params:
        xp = backend.array_module(V)
        V = xp.concatenate([V, layer.grads["b"][:, None]], axis=1)  # (F, m)
    return V


def set_grad_matrix(layer, V):
    """Write a direction V (F, m) back into ``layer.grads["W"]`` and ``layer.grads["b"]``."""
    xp = backend.array_module(V)
    W = layer.params["W"]
    m_in = W.size // W.shape[0]
    layer.grads["W"] = xp.ascontiguousarray(V[:, :m_in]).reshape(W.shape)  # W's shape
    if "b" in layer.params:
        layer.grads["b"] = xp.ascontiguousarray(V[:, m_in])  # (F,)


def check_loss(method, loss):
    """Raise a clear error unless ``loss`` is a loss object that ran forward."""
    if loss is None or not hasattr(loss, "hessian_factor"):
        raise ValueError(f"{method} needs the loss object: {method}(model, loss=crit, ...) "
                         f"with crit a minidl.losses loss; got {loss!r}")


# -- what KFAC, KFLR and KFRA share -------------------------------------------------------
class KroneckerFactored(Preconditioner):
    """Block ~ G kron A per layer: moving averages, damping and the solve (see above).

    Subclasses write ``output_factors()``, returning the mini-batch G of every covered
    layer (called once per curvature update, so a method may run passes through the whole
    model there); A is the same for all of them.

    Args:
        model: the network.
        damping: lambda > 0.
        stat_decay: moving-average weight of the old factors, in [0, 1).
        damping_mode: ``"eigen"`` (exact damped Kronecker inverse) or ``"factored"``.
        T1, T2, warn: as ``Preconditioner``.
    """

    def __init__(self, model, damping, stat_decay, damping_mode, T1, T2, warn):
        name = type(self).__name__
        if not float(damping) > 0:
            raise ValueError(f"{name}: damping must be > 0, got {damping!r}")
        if not 0 <= float(stat_decay) < 1:
            raise ValueError(f"{name}: stat_decay must lie in [0, 1), got {stat_decay!r}")
        if damping_mode not in ("eigen", "factored"):
            raise ValueError(f"{name}: damping_mode must be 'eigen' or 'factored', got "
                             f"{damping_mode!r}")
        super().__init__(model, T1=T1, T2=T2, warn=warn)
        self.damping = float(damping)
        self.stat_decay = float(stat_decay)
        self.damping_mode = damping_mode
        self._G_batch = None

    def covered_types(self):
        return [Linear, Conv2d]

    def output_factors(self):
        """The mini-batch G (F, F) of every covered layer, in order."""
        raise NotImplementedError

    def step(self):
        """As ``Preconditioner.step``; the G factors of all layers are computed first."""
        self.check_ready()
        if self.t % self.T1 == 0:
            self._G_batch = self.output_factors()
        try:
            super().step()
        finally:
            self._G_batch = None

    @staticmethod
    def input_factor(layer):
        """A = (1/N) sum_{n,t} a_hat a_hat^T, shape (m, m)."""
        a = layer_inputs(layer)  # (N, T, m)
        N = a.shape[0]
        a2 = a.reshape(-1, a.shape[2])  # (N T, m)
        return a2.T @ a2 / N  # (m, m)

    def update_curvature(self, i, layer):
        s = self.state[i]
        new = {"A": self.input_factor(layer), "G": self._G_batch[i]}
        for key, value in new.items():
            if key in s:
                s[key] = self.stat_decay * s[key] + (1 - self.stat_decay) * value
            else:  # the first mini-batch's factors, not an average with zeros
                s[key] = value

    def update_inverse(self, i, layer):
        s = self.state[i]
        if self.damping_mode == "eigen":
            s["dA"], s["QA"] = sym_eig(s["A"])  # (m,), (m, m)
            s["dG"], s["QG"] = sym_eig(s["G"])  # (F,), (F, F)
        else:
            gamma_A, gamma_G = pi_damping(s["A"], s["G"], self.damping)
            s["A_inv"] = damped_inverse(s["A"], gamma_A)  # (m, m)
            s["G_inv"] = damped_inverse(s["G"], gamma_G)  # (F, F)

    def damped_block(self, i):
        """The damped Kronecker factors (G_d, A_d) whose product the solve inverts.

        For ``"factored"``: (G + gamma_G I, A + gamma_A I), so the direction is
        (G_d kron A_d)^{-1} vec V. For ``"eigen"``: (G, A), and the direction is
        (G kron A + damping I)^{-1} vec V. Used by tests and for inspection.
        """
        s = self.state[i]
        if self.damping_mode == "eigen":
            return s["G"], s["A"]
        xp = backend.array_module(s["A"])
        gamma_A, gamma_G = pi_damping(s["A"], s["G"], self.damping)
        return (s["G"] + gamma_G * xp.eye(s["G"].shape[0], dtype=s["G"].dtype),
                s["A"] + gamma_A * xp.eye(s["A"].shape[0], dtype=s["A"].dtype))

    def solve(self, i, V):
        """The damped inverse block applied to V (F, m); returns (F, m)."""
        s = self.state[i]
        if self.damping_mode == "eigen":
            return damped_kron_solve(V, s["dG"], s["QG"], s["dA"], s["QA"], self.damping)
        return kron_solve_factored(V, s["G_inv"], s["A_inv"])

    def precondition(self, i, layer):
        set_grad_matrix(layer, self.solve(i, grad_matrix(layer)))


class KFAC(KroneckerFactored):
    """K-FAC for Linear and Conv2d layers (equations in the module docstring).

    Args:
        model: the network.
        loss: the loss object; needed for ``fisher="true"``, and when given its
            ``reduction`` sets ``batch_averaged``.
        fisher: ``"empirical"`` (the mini-batch's labels) or ``"true"`` (sampled targets).
        lr: learning rate for KL clipping: a number, or an optimizer whose ``lr`` is read
            at every step; None disables clipping.
        damping: lambda (default 1e-3).
        stat_decay: moving-average weight of the old factors (default 0.95).
        kl_clip: the KL bound (default 1e-3); None or 0 disables clipping.
        damping_mode: ``"eigen"`` (default) or ``"factored"``.
        batch_averaged: True when the loss averages over the batch (dout carries 1/N);
            None reads it from ``loss.reduction``, or assumes True without a loss.
        n_samples: sampled backward passes averaged per update for ``fisher="true"``.
        rng: generator for the sampled targets (``minidl.default_rng(seed)``); required
            for ``fisher="true"``.
        T1: update the factors every T1 steps (default 10).
        T2: recompute the eigendecompositions or inverses every T2 steps (default 100).
        warn: issue the ``CoverageWarning`` for layers left to the optimizer.
    """

    def __init__(self, model, loss=None, fisher="empirical", lr=None, damping=1e-3,
                 stat_decay=0.95, kl_clip=1e-3, damping_mode="eigen", batch_averaged=None,
                 n_samples=1, rng=None, T1=10, T2=100, warn=True):
        if fisher not in ("empirical", "true"):
            raise ValueError(f"KFAC: fisher must be 'empirical' or 'true', got {fisher!r}")
        if fisher == "true":
            check_loss("KFAC(fisher='true')", loss)
            if rng is None or not hasattr(rng, "random"):
                raise ValueError("KFAC(fisher='true') samples targets and needs an explicit "
                                 "generator: rng=minidl.default_rng(seed)")
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"KFAC: n_samples must be a positive integer, got {n_samples!r}")
        if kl_clip is not None and float(kl_clip) < 0:
            raise ValueError(f"KFAC: kl_clip must be >= 0 or None, got {kl_clip!r}")
        super().__init__(model, damping, stat_decay, damping_mode, T1, T2, warn)
        self.loss = loss
        self.fisher = fisher
        self.lr = lr
        self.kl_clip = float(kl_clip) if kl_clip else None
        if batch_averaged is None:
            batch_averaged = loss.reduction == "mean" if loss is not None else True
        self.batch_averaged = bool(batch_averaged)
        self.n_samples = int(n_samples)
        self.rng = rng
        self._vg = 0.0

    # -- G from the backward pass just run, or from sampled targets -------------------
    def _factor_from_douts(self, douts):
        """G = (kappa / T) sum_{n,t} dout dout^T for each layer's dout."""
        out = []
        for dout in douts:
            d = output_grads(dout)  # (N, T, F)
            N, T = d.shape[:2]
            kappa = N if self.batch_averaged else 1.0 / N
            d2 = d.reshape(N * T, d.shape[2])  # (N T, F)
            out.append(d2.T @ d2 * (kappa / T))  # (F, F)
        return out

    def sampled_douts(self):
        """Each covered layer's dout for targets drawn from the model, ``n_samples`` times.

        Returns a list (one entry per sample) of lists of douts; the model's grads and
        caches and the loss's cache are restored afterwards.
        """
        samples = []
        with preserved_state(self.model, self.loss):
            logits = self.loss.logits()  # (N, K)
            for _ in range(self.n_samples):
                y_sampled = self.loss.sample_target(self.rng)
                self.loss.forward(logits, y_sampled)
                self.model.backward(self.loss.backward())
                samples.append([layer.cache["dout"] for layer in self.layers])
        return samples

    def output_factors(self):
        if self.fisher == "empirical":
            return self._factor_from_douts([layer.cache["dout"] for layer in self.layers])
        samples = self.sampled_douts()
        G = self._factor_from_douts(samples[0])
        for douts in samples[1:]:
            G = [g + g_s for g, g_s in zip(G, self._factor_from_douts(douts))]
        return [g / len(samples) for g in G]

    # -- preconditioning and KL clipping ------------------------------------------------
    def precondition(self, i, layer):
        V = grad_matrix(layer)  # (F, m)
        V_new = self.solve(i, V)  # (F, m)
        self._vg += float((V_new * V).sum())
        set_grad_matrix(layer, V_new)

    def current_lr(self):
        """The learning rate for KL clipping (an optimizer's current ``lr``), or None."""
        return getattr(self.lr, "lr", self.lr)

    def step(self):
        """Precondition every covered layer, then scale all directions by the KL factor."""
        self._vg = 0.0
        super().step()
        lr = self.current_lr()
        if self.kl_clip is None or lr is None:
            return
        vg = float(lr) ** 2 * self._vg
        nu = min(1.0, (self.kl_clip / vg) ** 0.5) if vg > 0 else 1.0
        if nu < 1.0:
            for layer in self.layers:
                for key in layer.params:
                    layer.grads[key] = layer.grads[key] * nu
