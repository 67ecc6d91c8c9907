"""Parameter-norm penalties (L2 weight decay, L1 sparsity) and gradient-norm clipping.

Regularising adds a penalty to the loss, f~(w) = f(w) + r(w) (lecture 1). The penalties
and the terms they add to the gradient, with lambda >= 0::

    L2 (weight decay, Tikhonov):  r(w) = lambda/2 ||w||_2^2     grad r = lambda w
    L1 (sparse):                  r(w) = lambda ||w||_1         grad r = lambda sign(w)

(sign(0) = 0, a subgradient.) L2 shrinks the directions the loss is insensitive to towards
zero; the minimiser of the L1-penalised loss has small, insignificant weights exactly at
zero (a sparse solution), though subgradient steps with ``add_l1_grad`` only bring them
near zero (a proximal step, soft thresholding, lands on it). Biases need no
regularisation, so by default only weights of two or more dimensions (W of Linear and
Conv2d) are penalised, the rule nanoGPT uses; ``include_bias=True`` also penalises the
1-D parameters (b, and the gamma/beta of normalisation layers).

The optimizers' ``weight_decay`` acts on every parameter. SGD's and Adam's add lambda w
to the gradient, so ``add_l2_grad(model, lam, include_bias=True)`` before ``step()``
gives the same update as their weight_decay=lam. AdamW's is decoupled, w <- (1 - lr
lambda) w next to the Adam step, which for an adaptive method is not an L2 penalty
(Loshchilov and Hutter, "Decoupled weight decay regularization", ICLR 2019).

Call the ``add_*_grad`` functions after ``model.backward(...)`` and before ``opt.step()``,
and add the matching ``*_penalty`` to the loss value when reporting it.

Gradient-norm clipping rescales all gradients together when their joint norm is too
large, keeping the direction::

    n = sqrt(sum_p ||g_p||^2);   g_p <- g_p * max_norm / (n + 1e-6)   if that factor is < 1

as ``torch.nn.utils.clip_grad_norm_`` does. References: I. Goodfellow, Y. Bengio,
A. Courville, "Deep Learning", 2016, sections 7.1 (norm penalties) and 10.11.1 (clipping).
"""
import math

from .. import backend
from .base import check_number

__all__ = ["l2_penalty", "add_l2_grad", "l1_penalty", "add_l1_grad", "clip_grad_norm"]


def _penalised(model, include_bias):
    """``[(layer, key)]`` of the parameters a penalty applies to."""
    return [(layer, key) for _, layer, key in model.parameters()
            if include_bias or layer.params[key].ndim >= 2]


def l2_penalty(model, lam, include_bias=False):
    """r(w) = lambda/2 ||w||_2^2 over the penalised parameters, as a float.

    Args:
        model: the network.
        lam: lambda >= 0.
        include_bias: also penalise the 1-D parameters (biases, normalisation gains).
    """
    lam = check_number("l2_penalty", "lam", lam, low=0.0)
    total = 0.0
    for layer, key in _penalised(model, include_bias):
        w = layer.params[key]
        total += float((w * w).sum())
    return 0.5 * lam * total


def add_l2_grad(model, lam, include_bias=False):
    """Add lambda w to the gradient of each penalised parameter that has a gradient."""
    lam = check_number("add_l2_grad", "lam", lam, low=0.0)
    for layer, key in _penalised(model, include_bias):
        if key in layer.grads:
            layer.grads[key] = layer.grads[key] + lam * layer.params[key]


def l1_penalty(model, lam, include_bias=False):
    """r(w) = lambda ||w||_1 over the penalised parameters, as a float."""
    lam = check_number("l1_penalty", "lam", lam, low=0.0)
    total = 0.0
    for layer, key in _penalised(model, include_bias):
        w = layer.params[key]
        total += float(backend.array_module(w).abs(w).sum())
    return lam * total


def add_l1_grad(model, lam, include_bias=False):
    """Add lambda sign(w) to the gradient of each penalised parameter that has a gradient."""
    lam = check_number("add_l1_grad", "lam", lam, low=0.0)
    for layer, key in _penalised(model, include_bias):
        if key in layer.grads:
            w = layer.params[key]
            layer.grads[key] = layer.grads[key] + lam * backend.array_module(w).sign(w)


def clip_grad_norm(model, max_norm):
    """Rescale all gradients so that their joint L2 norm is at most ``max_norm``.

    Args:
        model: the network; parameters without a gradient are ignored.
        max_norm: the largest allowed norm, > 0.

    Returns:
        The joint norm before clipping, as a float (log it to watch for exploding
        gradients). It is computed in Python floats from each array's norm, so a finite
        gradient whose sum of squares overflows its dtype (float32 beyond ~1.8e19) still
        has a finite norm and is clipped. An inf or NaN in a gradient gives a norm that is
        not finite, and the gradients are then unusable (torch does the same); check it
        with ``math.isfinite`` before stepping.
    """
    max_norm = check_number("clip_grad_norm", "max_norm", max_norm, low=0.0, low_open=True)
    grads = [(layer, key) for _, layer, key in model.parameters() if key in layer.grads]
    n = math.hypot(*(_norm(layer.grads[key]) for layer, key in grads))
    factor = max_norm / (n + 1e-6)
    if factor < 1.0:
        for layer, key in grads:
            layer.grads[key] = layer.grads[key] * factor
    return n


def _norm(g):
    """||g||_2 as a Python float, also when sum(g^2) overflows g's dtype."""
    with backend.host().errstate(over="ignore"):  # an overflow is handled just below
        squares = float((g * g).sum())
    if math.isinf(squares):
        peak = float(backend.array_module(g).abs(g).max())  # ||g|| = peak ||g / peak||
        if math.isfinite(peak):
            return peak * math.sqrt(float(((g / peak) ** 2).sum()))
    return math.sqrt(squares)
