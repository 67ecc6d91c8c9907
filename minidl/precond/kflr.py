"""KFLR: Kronecker-factored low-rank Gauss-Newton (Botev, Ritter & Barber 2017).

The Gauss-Newton block of layer l (weights W_hat = [W | b], row-major vec as in
``kfac.py``) is, for example n with layer input a_hat_n and pre-activation h_n::

    GGN_l = sum_n (J_n^T H_n J_n) kron (a_hat_n a_hat_n^T),   J_n = d(output)/d h_n

where H_n = ``loss.hessian()[n]`` is the Hessian of the reduced loss with respect to
example n's logits (it carries the 1/N of a "mean" reduction). Botev et al. approximate
the expectation of the Kronecker product by the product of expectations::

    GGN_l ~ Gbar_l kron Qbar_l,
    Qbar_l = (1/N) A_hat^T A_hat                        (m, m), the uncentred input covariance
    Gbar_l = sum_n sum_k C_l^k(n) C_l^k(n)^T            (F, F)

KFLR computes Gbar exactly through the loss Hessian's square-root factor
S_n = ``loss.hessian_factor()[n]`` (K, K) with S_n S_n^T = H_n: column k of S, fed into
the backward pass as if it were dL/dlogits, arrives at layer l as

    C_l^k = B_l W_{l+1}^T C_{l+1}^k,     C_L^k = S[:, k]     (B = diag f'(h))

which is exactly what ``model.backward`` computes, so KFLR runs K backward passes per
mini-batch (K = number of outputs; one pass handles all N examples at once) and reads
each covered layer's ``cache["dout"]``. The model's grads and caches are put back
afterwards. Since S carries the reduction, Gbar is a sum over examples for both "mean"
and "sum": the block approximates the GGN of the reduced loss exactly as
``minidl.curvature.ggn`` defines it, and equals it for one example (N = 1) or a deep
linear network (any N). KFAC with sampled targets is the Monte Carlo version of this.

Conv2d (T = Ho Wo output locations, patches from ``layer.patches()``) follows K-FAC's
convention: Qbar = (1/N) sum_{n,t} a_hat a_hat^T, Gbar = (1/T) sum_{n,t,k} C C^T; both
are exact when T = 1.

Damping as in the paper (and Botev's Lasagne code): factored Tikhonov with the norm rule,
(Gbar + sqrt(lambda)/omega I) kron (Qbar + omega sqrt(lambda) I), omega =
sqrt((tr Qbar / m) / (tr Gbar / F)) (``damping_mode="factored"``, default);
``damping_mode="eigen"`` gives the exact (Gbar kron Qbar + lambda I)^{-1} instead. The
moving averages, T1 and T2 are those of ``KroneckerFactored`` (``kfac.py``).

Defaults: damping 0.03. Botev et al. use 1e-3 (Lasagne's tikhonov_damping) together with
their step rescaling (``rescale=True``, with SGD at lr 1), which shortens every step to the
minimiser of the damped Gauss-Newton quadratic; without it the direction goes straight to
an ordinary optimizer, and at damping 1e-3 ``SGD(lr=0.05, momentum=0.9)`` diverged on a
small MLP in 2 of 5 seeds (KFRA: 3 of 5), so without the rescaling we default to 0.03
(the KFAC-Pytorch README's and the MBF paper's K-FAC damping; ``minidl.methods`` uses it
too); pass ``damping=1e-3, rescale=True`` for the paper's setting. stat_decay 0.9
(Lasagne's example curvature_avg; 0 uses the current mini-batch only), factors from the first
mini-batch (``factor_init="batch"``), T1 = T2 = 1 (the paper recomputes the curvature at
every update). The paper's step-size safeguard, the rescaling of the step by the exact
Gauss-Newton quadratic, alpha = g^T d / (d^T G d + lambda d^T d), is ``rescale=True``
(use it with ``SGD(lr=1)``, as the paper does); Levenberg-Marquardt damping adaptation is
``adapt_damping=True`` (both in ``kfactored.py``). Momentum is the optimizer's business.

BatchNorm and other layers without a Kronecker form keep their plain gradients (the base
class's ``CoverageWarning`` names them); the backward passes still go through them.

Cost: K backward passes every T1 steps, factors O(N T K F^2 + N T m^2).
"""
from .. import backend
from ..curvature.products import preserved_state
from .kfactored import KroneckerFactored, check_loss, covariance

__all__ = ["KFLR"]


class KFLR(KroneckerFactored):
    """KFLR for Linear and Conv2d layers (equations in the module docstring).

    Args:
        model: the network.
        loss: the loss object (required): its ``hessian_factor()`` starts the passes.
        damping: lambda (default 0.03; Botev et al.'s 1e-3 belongs with ``rescale=True``).
        stat_decay: moving-average weight of the old factors (default 0.9).
        damping_mode: ``"factored"`` (default, the paper's) or ``"eigen"``.
        factor_init: ``"batch"`` (default) or ``"identity"``.
        rescale: Botev's exact Gauss-Newton step rescaling (default False).
        adapt_damping: Levenberg-Marquardt adaptation of ``damping`` (needs ``lr``).
        adapt_every: its period in steps (default 5).
        lr: the learning rate (a number or the optimizer), for ``adapt_damping``.
        T1: update the factors every T1 steps (default 1).
        T2: recompute the damped inverses every T2 steps (default 1).
        warn: issue the ``CoverageWarning`` for layers left to the optimizer.
    """

    def __init__(self, model, loss=None, damping=0.03, stat_decay=0.9,
                 damping_mode="factored", factor_init="batch", rescale=False,
                 adapt_damping=False, adapt_every=5, lr=None, T1=1, T2=1, warn=True):
        check_loss("KFLR", loss)
        self.loss = loss
        super().__init__(model, damping, stat_decay, damping_mode, T1, T2, warn,
                         factor_init=factor_init, rescale=rescale,
                         adapt_damping=adapt_damping, adapt_every=adapt_every, lr=lr)

    def output_factors(self, step=None):
        """Gbar = (1/T) sum_{n,t,k} C^k C^k^T per layer, from K backward passes."""
        S = self.loss.hessian_factor()  # (N, K, K), S_n S_n^T = H_n
        xp = backend.array_module(S)
        logits_shape = self.loss.backward().shape  # (N, ...) with K entries per example
        G = [None] * len(self.layers)
        with preserved_state(self.model, self.loss):
            for k in range(S.shape[2]):
                column = xp.ascontiguousarray(S[:, :, k]).reshape(logits_shape)  # (N, ...)
                self.model.backward(column)
                for i, layer in enumerate(self.layers):
                    C = layer.kron_output_grads()  # (N, T, F)
                    term = covariance(C, 1.0 / C.shape[1])  # (F, F)
                    G[i] = term if G[i] is None else G[i] + term
        return G
