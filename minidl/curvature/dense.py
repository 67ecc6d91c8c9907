"""Dense curvature matrices (P x P) for tiny models, for teaching and for tests.

With the network output z = f(x; theta) (logits), J = dz/dtheta, the reduced loss
L = c sum_n l_n (c = 1/N for "mean", 1 for "sum"; l_n is example n's own loss, see
``per_example``) and H_L = d^2 L / dz^2 (block diagonal over examples, ``loss.hessian()``):

* Hessian           H   = d^2 L / dtheta^2 = J^T H_L J + sum_k (dL/dz_k) d^2 z_k/dtheta^2
* GGN               G   = J^T H_L J
* empirical Fisher  EF  = (1/N) sum_n g_n g_n^T,      g_n = dl_n/dtheta at the data labels
* true Fisher       F   = (1/N) sum_n E_{y ~ p(y|z_n)} [g_n(y) g_n(y)^T]   (Monte Carlo)

Each matrix is built column by column: H e_i from ``hvp``, G e_i from ``ggn_vp`` (one
forward pass, then one R-operator pass per column), EF and F from per-example gradients.

How the reduction scales them (N examples, D outputs per example for MSE and BCE; for
cross-entropy the "mean" averages over the N examples only, so read D = 1):

* H and G are derivatives of the reduced loss L itself: "sum" gives N D times "mean".
* EF and F average outer products of per-example gradients, so they carry no 1/N from
  the reduction. l_n is the same under both reductions for cross-entropy, so EF and F do
  not depend on it there; for MSE and BCE the "mean" l_n is 1/D of the "sum" one, so EF
  and F with "mean" are 1/D^2 of those with "sum".
* Fisher and GGN: when l_n is the negative log-likelihood of the distribution that
  ``loss.sample_target`` draws from (cross-entropy; MSE and BCE with "sum"), the
  expectation of F is (1/N) sum_n J_n^T H_{l_n} J_n, which is G for cross-entropy with
  "mean", G / N with "sum", and G_mean / D for MSE or BCE with "mean".

Models must be in an eval-consistent state: Dropout in eval mode, and for EF and F no
BatchNorm in train mode (it couples the examples, so per-example gradients do not exist;
a ``ValueError`` says so). H and G of a train-mode BatchNorm model are the batch loss's.
"""
from .. import backend
from . import flat
from .per_example import check_batch, check_per_example_ok, per_example_grads
from .products import check_finite, ggn_vp_fn, hvp_fn, preserved_state

__all__ = ["hessian", "ggn", "empirical_fisher", "true_fisher", "dense_from_products"]


def dense_from_products(matvec, P, xp, dtype):
    """Assemble the P x P matrix A from the products A e_i, one column at a time.

    Args:
        matvec: function mapping a vector (P,) to A times it (P,).
        P: the dimension.
        xp: array module for the result.
        dtype: dtype of the basis vectors and the result.

    Returns:
        A of shape (P, P).
    """
    A = xp.empty((P, P), dtype=dtype)  # (P, P)
    e = xp.zeros(P, dtype=dtype)  # (P,) basis vector, reused
    for i in range(P):
        e[i] = 1
        A[:, i] = matvec(e)
        e[i] = 0
    return A


def _refuse_empty(x, target, what):
    """The Fishers average over the N examples: refuse N = 0 (0/0) before any work."""
    if check_batch(x, target, what) == 0:
        raise ValueError(f"{what} got an empty batch (x of shape {tuple(x.shape)}): the "
                         "average (1/N) sum_n over no examples is 0/0")


def _dtype(model):
    return next(layer.params[key].dtype for _, layer, key in model.parameters())


def hessian(model, loss, x, target):
    """The exact Hessian of the reduced loss with respect to the flat parameters.

    Args:
        model: the network; every layer needs ``jvp`` and ``backward_rop``.
        loss: the loss object ("sum" gives N D times "mean"; see the module doc).
        x: input batch, shape (N, ...).
        target: targets as the loss expects them.

    Returns:
        H of shape (P, P), symmetric up to rounding (it is not symmetrised, so a wrong
        ``backward_rop`` shows up as asymmetry).
    """
    xp = flat.param_module(model)
    check_finite(model, x, target, "hessian")
    with preserved_state(model, loss):
        return dense_from_products(hvp_fn(model, loss, x, target), flat.num_params(model),
                                   xp, _dtype(model))


def ggn(model, loss, x, target):
    """The generalised Gauss-Newton matrix G = J^T H_L J of the reduced loss.

    Args:
        model: the network; every layer needs ``jvp``.
        loss: the loss object ("sum" gives N D times "mean").
        x: input batch, shape (N, ...).
        target: targets as the loss expects them.

    Returns:
        G of shape (P, P), positive semi-definite.
    """
    xp = flat.param_module(model)
    check_finite(model, x, target, "ggn")
    with preserved_state(model, loss):
        return dense_from_products(ggn_vp_fn(model, loss, x, target),
                                   flat.num_params(model), xp, _dtype(model))


def empirical_fisher(model, loss, x, target, method="auto"):
    """The empirical Fisher EF = (1/N) sum_n g_n g_n^T at the given targets.

    Args:
        model: the network (no train-mode BatchNorm).
        loss: the loss object; its reduction decides l_n (see the module doc).
        x: input batch, shape (N, ...).
        target: the data targets.
        method: how per-example gradients are computed (``per_example_grads``).

    Returns:
        EF of shape (P, P).

    Raises:
        ValueError: an empty batch (N = 0), targets of another length, or a layer that
            couples the examples (train-mode BatchNorm).
    """
    _refuse_empty(x, target, "empirical_fisher")
    check_finite(model, x, target, "empirical_fisher")
    G = per_example_grads(model, loss, x, target, method=method)  # (N, P)
    return G.T @ G / G.shape[0]  # (P, N) @ (N, P) -> (P, P)


def true_fisher(model, loss, x, target, rng, samples=100, method="auto"):
    """Monte Carlo estimate of the Fisher F = (1/N) sum_n E_{y ~ p(y|z_n)}[g_n g_n^T].

    For each of ``samples`` draws, targets for the whole batch are sampled from the
    model's own predictive distribution (``loss.sample_target(rng)``) and the outer
    products of the per-example gradients at those targets are averaged:

        F ~ 1/(S N) sum_s sum_n g_n(y^(s)) g_n(y^(s))^T.

    Args:
        model: the network (no train-mode BatchNorm).
        loss: the loss object; it defines the predictive distribution and l_n.
        x: input batch, shape (N, ...).
        target: data targets; used only to run ``loss.forward`` before sampling.
        rng: an explicit generator (``minidl.default_rng(seed)``).
        samples: number S of sampled target sets, a positive integer.
        method: how per-example gradients are computed (``per_example_grads``).

    Returns:
        F of shape (P, P). Its expectation equals the GGN for cross-entropy with "mean"
        (see the module doc for the other cases).

    Raises:
        TypeError: ``rng`` is not a generator.
        ValueError: ``samples`` is not a positive integer, an empty batch (N = 0),
            targets of another length, or a layer that couples the examples (train-mode
            BatchNorm).
    """
    backend.check_rng(rng, "true_fisher")
    if isinstance(samples, bool) or not hasattr(samples, "__index__") or int(samples) < 1:
        # int() would have turned 2.5 into 2 and "3" into 3 without a word
        raise ValueError(f"true_fisher: samples must be a positive integer, got {samples!r}")
    check_per_example_ok(model, "true_fisher")
    _refuse_empty(x, target, "true_fisher")
    check_finite(model, x, target, "true_fisher")
    xp = flat.param_module(model)
    with preserved_state(model, loss):
        loss.forward(model.forward(x), target)
        # draw every sample first, so the random stream does not depend on the method
        drawn = [loss.sample_target(rng) for _ in range(int(samples))]
    P = flat.num_params(model)
    F = xp.zeros((P, P), dtype=_dtype(model))  # (P, P)
    count = 0
    for y in drawn:
        G = per_example_grads(model, loss, x, y, method=method)  # (N, P)
        F += G.T @ G  # (P, P)
        count += G.shape[0]
    return F / count

