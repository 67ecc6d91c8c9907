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

``fisher`` picks what delta is (the default is the empirical Fisher: no extra pass):

* ``"empirical"``: the mini-batch's own labels (the dout of the backward pass just run).
  For one example and a Linear layer, G kron A is then exactly the empirical Fisher block
  g g^T of ``minidl.curvature.empirical_fisher``.
* ``"true"``: targets y ~ p(y | x) drawn by ``loss.sample_target(rng)`` and an extra
  backward pass through the model (``n_samples`` of them, averaged); the model's grads
  and caches are put back afterwards. Then G estimates the same block of
  ``minidl.curvature.true_fisher``, which equals the GGN for cross-entropy with "mean"
  (and GGN / D for MSE or BCE averaged over D outputs, GGN / N for "sum"; see that
  module). For a deep linear network with MSE, E[G] kron A equals that block exactly.

Moving averages, every ``T1`` steps::

    A <- stat_decay A + (1 - stat_decay) A_batch,    the same for G

starting from the identity (A = I, G = I; KFAC-Pytorch's start, ``factor_init="identity"``,
the default): a first mini-batch's factors are rank-deficient (rank <= N T), and with a
small damping their inverse multiplies the directions outside that span by 1/lambda
for T2 steps. ``factor_init="batch"`` starts from the first mini-batch's factors instead.
Every ``T2`` steps the damped inverse is prepared, by one of:

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
``lr`` is read at every step so schedules are followed); ``minidl.methods.build`` passes
the optimizer, so clipping is on whenever a method is built by name (and the command
line). Without ``lr`` (a KFAC built by hand and paired with any optimizer) the bound is
taken as if lr were 1, nu = min(1, sqrt(kl_clip / sum_layers <V', V>)): then
V'^T F V' <= kl_clip, and the step lr V' the optimizer takes changes the outputs by at
most lr^2 kl_clip <= kl_clip for every lr <= 1 (``base.kl_clip_factor``); the
constructor warns that the bound is tighter than needed, and that ``lr=`` makes it exact.

Optional safeguards shared with KFLR and KFRA (``kfactored.py``): Botev's step rescaling
by the exact Gauss-Newton quadratic (``rescale=True``) and Levenberg-Marquardt damping
adaptation (``adapt_damping=True``, Martens & Grosse 2015 sec. 6.5).

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

What KFLR and KFRA share with K-FAC (reading a layer as (a_hat, dout, [dW | db]), the
moving averages, damping and solve) is in ``kfactored.py``; the methods differ only in G.
"""

from .base import (check_choice, check_number, current_lr, kl_clip_factor, sampled_backward,
                   warn_if_kl_clip_has_no_lr)
from .kfactored import (KroneckerFactored, check_loss, covariance, grad_matrix,
                        set_grad_matrix)

__all__ = ["KFAC", "KroneckerFactored", "grad_matrix", "set_grad_matrix"]


class KFAC(KroneckerFactored):
    """K-FAC for Linear and Conv2d layers (equations in the module docstring).

    Args:
        model: the network.
        loss: the loss object; needed for ``fisher="true"`` and the optional safeguards,
            and when given its ``reduction`` sets ``batch_averaged``.
        fisher: ``"empirical"`` (default: the mini-batch's labels) or ``"true"`` (targets
            sampled from the model, one extra backward pass per update).
        lr: learning rate for KL clipping (and ``adapt_damping``): a number, or an
            optimizer whose ``lr`` is read at every step; None clips as if lr were 1.
        damping: lambda (default 1e-3).
        stat_decay: moving-average weight of the old factors (default 0.95).
        kl_clip: the KL bound (default 1e-3); None or 0 disables clipping.
        damping_mode: ``"eigen"`` (default) or ``"factored"``.
        factor_init: ``"identity"`` (default, KFAC-Pytorch) or ``"batch"``.
        batch_averaged: True when the loss averages over the batch (dout carries 1/N);
            None reads it from ``loss.reduction``, or assumes True without a loss.
        n_samples: sampled backward passes averaged per update for ``fisher="true"``.
        rng: generator for the sampled targets (``minidl.default_rng(seed)``); required
            for ``fisher="true"``.
        rescale: Botev's exact Gauss-Newton step rescaling (``kfactored.py``).
        adapt_damping: Levenberg-Marquardt adaptation of ``damping`` (needs ``lr``).
        adapt_every: its period in steps (default 5).
        T1: update the factors every T1 steps (default 10).
        T2: recompute the eigendecompositions or inverses every T2 steps (default 100).
        warn: issue the ``CoverageWarning`` for layers left to the optimizer.
    """

    def __init__(self, model, loss=None, fisher="empirical", lr=None, damping=1e-3,
                 stat_decay=0.95, kl_clip=1e-3, damping_mode="eigen", factor_init="identity",
                 batch_averaged=None, n_samples=1, rng=None, rescale=False,
                 adapt_damping=False, adapt_every=5, T1=10, T2=100, warn=True):
        check_choice("KFAC", "fisher", fisher, ("empirical", "true"))
        if fisher == "true":
            check_loss("KFAC(fisher='true')", loss)
            if rng is None or not hasattr(rng, "random"):
                raise ValueError("KFAC(fisher='true') samples targets and needs an explicit "
                                 "generator: rng=minidl.default_rng(seed)")
        if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"KFAC: n_samples must be a positive integer, got {n_samples!r}")
        if kl_clip is not None:
            check_number("KFAC", "kl_clip", kl_clip, low=0.0)
        self.loss = loss
        super().__init__(model, damping, stat_decay, damping_mode, T1, T2, warn,
                         factor_init=factor_init, rescale=rescale,
                         adapt_damping=adapt_damping, adapt_every=adapt_every, lr=lr)
        self.fisher = fisher
        self.kl_clip = float(kl_clip) if kl_clip else None
        warn_if_kl_clip_has_no_lr("KFAC", self.kl_clip, lr)
        if batch_averaged is None:
            batch_averaged = loss.reduction == "mean" if loss is not None else True
        self.batch_averaged = bool(batch_averaged)
        self.n_samples = int(n_samples)
        self.rng = rng

    def hyperparameters(self):
        return dict(super().hyperparameters(), fisher=self.fisher, kl_clip=self.kl_clip,
                    batch_averaged=self.batch_averaged, n_samples=self.n_samples)

    # -- G from the backward pass just run, or from sampled targets -------------------
    def factor_from_output_grads(self, d):
        """G = (kappa / T) sum_{n,t} dout dout^T for one layer's dout (N, T, F)."""
        N, T = d.shape[:2]
        kappa = N if self.batch_averaged else 1.0 / N
        return covariance(d, kappa / T)  # (F, F)

    def output_factors(self, step=None):
        if self.fisher == "empirical":
            return [self.factor_from_output_grads(layer.kron_output_grads())
                    for layer in self.layers]
        samples = sampled_backward(self.model, self.loss, self.layers, self.rng,
                                   lambda layer: layer.kron_output_grads(), self.n_samples)
        G = [self.factor_from_output_grads(d) for d in samples[0]]
        for douts in samples[1:]:
            G = [g + self.factor_from_output_grads(d) for g, d in zip(G, douts)]
        return [g / len(samples) for g in G]

    # -- KL clipping --------------------------------------------------------------------
    def current_lr(self):
        """The learning rate for KL clipping (an optimizer's current ``lr``), or None."""
        return current_lr(self.lr)

    def scale_step(self, step):
        """Scale all covered directions by nu = min(1, sqrt(kl_clip / (lr^2 vg)))."""
        nu = kl_clip_factor(self.kl_clip, self.current_lr(), step["vg"])
        if nu < 1.0:
            for layer in self.layers:
                for key in layer.params:
                    layer.grads[key] = layer.grads[key] * nu
        return nu
