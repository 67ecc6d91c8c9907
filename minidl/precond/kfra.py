"""KFRA: Kronecker-factored recursive approximation (Botev, Ritter & Barber 2017).

Like KFLR (see ``kflr.py``), KFRA approximates the Gauss-Newton block of every Linear
layer by Gbar_l kron Qbar_l (row-major vec of [W | b]) with the uncentred input
covariance Qbar_l = (1/N) A_hat^T A_hat. It gets the output factor without any extra
backward pass, by pushing one (D, D) matrix down the network. The exact per-example
pre-activation Gauss-Newton matrix obeys

    Gcal_l(n) = B_l(n) W_{l+1}^T Gcal_{l+1}(n) W_{l+1} B_l(n),   B = diag(f'(h_l(n)))

(W without its bias column). KFRA replaces Gcal_{l+1}(n) by its batch sum before the
product, and averages the diagonal Jacobians over the batch::

    Gbar_top = sum_n H_n                                           (K, K), the loss Hessian
    Gbar_l   = (W_{l+1}^T Gbar_{l+1} W_{l+1}) ⊙ (1/N) sum_n f'(h_n) f'(h_n)^T

with H_n = ``loss.hessian()[n]`` (summed by ``loss.hessian_sum()``), which carries the
1/N of a "mean" reduction: for "mean" the sum is the paper's batch-averaged loss Hessian
E_n[H_L(n)] itself, for "sum" N times it; either way it is the scale at which Gbar kron
Qbar approximates the GGN of the reduced loss (see ``kflr.py``). ⊙ is the elementwise
product. An activation after the last Linear layer multiplies Gbar_top the same way;
several activations in a row multiply their derivatives f' first, per example. For one
example (N = 1) every step is exact, so KFRA equals the exact GGN block and KFLR.

Scope: the recursion needs every layer between two Linear layers to be elementwise, so
KFRA takes a ``Sequential`` chain (nested ``Sequential`` allowed) of Linear layers and the
activations ReLU, LeakyReLU, Sigmoid, Tanh, plus Flatten (an identity on the (N, D)
arrays between Linear layers). Anything else (Conv2d, BatchNorm, Dropout, Residual, ...)
makes the constructor raise a ``ValueError`` naming the layer; use KFLR or KFAC there.
So there are no BatchNorm parameters to leave to the optimizer: a BatchNorm in the chain
is rejected, since the recursion cannot pass through it.

Damping, moving averages, T1/T2, the optional safeguards (``rescale``, ``adapt_damping``)
and defaults are KFLR's: factored Tikhonov with the norm rule, damping 0.03 (Botev et
al.'s 1e-3 belongs with their step rescaling, ``rescale=True``; see ``kflr.py``), stat_decay
0.9, factors from the first mini-batch, T1 = T2 = 1.

Cost: one (D_l, D_l) product W^T Gbar W per layer and an (N, D_l) outer-product average,
independent of the number of outputs K: the cheap relative of KFLR.
"""
from ..layers.activations import LeakyReLU, ReLU, Sigmoid, Tanh
from ..layers.flatten import Flatten
from ..layers.linear import Linear
from ..layers.sequential import Sequential
from .kfactored import KroneckerFactored, check_loss

__all__ = ["KFRA"]

_ACTIVATIONS = (ReLU, LeakyReLU, Sigmoid, Tanh)


def chain_leaves(model, prefix=""):
    """The leaves of a Sequential chain KFRA can recurse through, in forward order.

    Raises:
        ValueError: naming the first layer that is neither a Sequential, Linear,
            elementwise activation nor Flatten.
    """
    if isinstance(model, Sequential):
        out = []
        for name, child in model.children():
            out.extend(chain_leaves(child, f"{prefix}.{name}" if prefix else str(name)))
        return out
    if isinstance(model, (Linear, Flatten) + _ACTIVATIONS):
        return [model]
    where = f"layer {prefix} " if prefix else "the model "
    raise ValueError(
        f"KFRA supports Sequential chains of Linear layers and elementwise activations "
        f"(ReLU, LeakyReLU, Sigmoid, Tanh, and Flatten); {where}is a "
        f"{type(model).__name__}, through which its recursion "
        "Gbar_l = (W^T Gbar_{l+1} W) * E[f' f'^T] cannot pass. Use KFLR or KFAC for "
        "this model.")


class KFRA(KroneckerFactored):
    """KFRA for Sequential chains of Linear layers and activations (see the module doc).

    Args:
        model: a ``Sequential`` of Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Flatten.
        loss: the loss object (required): its ``hessian()`` starts the recursion.
        damping: lambda (default 0.03; Botev et al.'s 1e-3 belongs with ``rescale=True``).
        stat_decay: moving-average weight of the old factors (default 0.9).
        damping_mode: ``"factored"`` (default, the paper's) or ``"eigen"``.
        factor_init, rescale, adapt_damping, adapt_every, lr: as ``KFLR``.
        T1: update the factors every T1 steps (default 1).
        T2: recompute the damped inverses every T2 steps (default 1).
        warn: unused in practice (every parameterised layer of a valid chain is covered).
    """

    def __init__(self, model, loss=None, damping=0.03, stat_decay=0.9,
                 damping_mode="factored", factor_init="batch", rescale=False,
                 adapt_damping=False, adapt_every=5, lr=None, T1=1, T2=1, warn=True):
        check_loss("KFRA", loss)
        self.chain = chain_leaves(model)
        self.loss = loss
        super().__init__(model, damping, stat_decay, damping_mode, T1, T2, warn,
                         factor_init=factor_init, rescale=rescale,
                         adapt_damping=adapt_damping, adapt_every=adapt_every, lr=lr)

    def covered_types(self):
        return [Linear]

    def output_factors(self, step=None):
        """Gbar of every Linear layer, by the recursion from the loss Hessian down."""
        N = self.loss.logits().shape[0]
        M = self.loss.hessian_sum()  # (K, K), Gbar at the model's output: sum_n H_n
        fprime = None  # product of f'(h) of the activations since the last Linear, (N, D)
        G = {}
        linears = [leaf for leaf in self.chain if isinstance(leaf, Linear)]
        for leaf in reversed(self.chain):
            if isinstance(leaf, _ACTIVATIONS):
                d = leaf.df().reshape(N, -1)  # (N, D)
                fprime = d if fprime is None else fprime * d
            elif isinstance(leaf, Linear):
                if fprime is not None:
                    M = M * (fprime.T @ fprime / N)  # (D, D) ⊙ (D, D)
                    fprime = None
                G[id(leaf)] = M
                if leaf is not linears[0]:
                    W = leaf.params["W"]  # (out, in)
                    M = W.T @ M @ W  # (in, out) @ (out, out) @ (out, in) -> (in, in)
        return [G[id(layer)] for layer in self.layers]
