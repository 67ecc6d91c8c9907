"""Hessian- and Gauss-Newton-vector products without forming the matrices.

For a network f(x; theta) with output z (the logits) and a reduced loss L(z, y) (``loss``),
the Hessian of L with respect to the P parameters splits into two terms (Botev, Ritter
and Barber 2017, "Practical Gauss-Newton Optimisation for Deep Learning")::

    H = J^T H_L J + sum_k (dL/dz_k) d^2 z_k / dtheta^2        J = dz/dtheta,  H_L = d^2L/dz^2

The first term alone is the generalised Gauss-Newton matrix G = J^T H_L J, positive
semi-definite whenever H_L is (true for all three losses here).

Both products come from Pearlmutter's R-operator, R{f} = d/dr f(theta + r v) at r = 0,
written by hand in every layer (``Layer.jvp`` and ``Layer.backward_rop``):

* ``hvp``: forward, backward, then ``jvp`` gives Rz = J v; R{dL/dz} = H_L Rz
  (``loss.hvp``); ``backward_rop`` carries it down and each layer's ``Rgrads`` is the
  layer's slice of H v. The second-order terms of the layers (e.g. D_l = f''(h) dL/da in
  the recursion H_l = B W^T H_{l+1} W B + D_l) enter through ``backward_rop``.
* ``ggn_vp``: forward, ``jvp`` gives J v, ``loss.hvp`` gives H_L J v, and an ordinary
  ``backward`` of that vector gives J^T H_L J v. No second derivatives of the layers.

Scaling: L is the reduced loss of the loss object, so with ``reduction="sum"`` both
products are N times (cross-entropy) or N D times (MSE, BCE with D outputs per example)
those of ``reduction="mean"``.

The input is held fixed (its tangent is zero). The model must compute the same function
on every call: a layer that draws random numbers (``Layer.is_random()``: Dropout in train
mode) is refused with a ``ValueError`` naming it, since each call would draw a new mask,
give a different answer and advance the layer's generator. Put it in eval mode, or freeze
its mask (``with d.frozen_mask():`` around the calls) to study the curvature of one
draw. BatchNorm in train mode is allowed here (its
batch statistics make H couple the examples, and that is the Hessian of the batch loss),
and its running statistics are restored after each call.

A NaN or infinity in x, in a floating target or in a parameter would make every entry
of every curvature NaN, so each public function of ``minidl.curvature`` refuses it with a
``ValueError`` naming the rows or the parameter, before any pass (``check_finite``); a
product's direction v must be finite and real as well.

Each public function leaves the model's ``cache``, ``grads``, ``Rparams``, ``Rgrads`` and
``buffers`` and the loss's ``cache`` as it found them, so it may be called between
``backward`` and an optimizer or preconditioner step.
"""
import contextlib

from .. import backend
from . import flat

__all__ = ["hvp", "ggn_vp", "loss_and_grad", "hvp_fn", "ggn_vp_fn", "preserved_state",
           "random_layers", "check_deterministic", "check_finite"]


def random_layers(model):
    """Names of the leaves whose next forward pass draws random numbers (``is_random()``)."""
    return [name or type(leaf).__name__ for name, leaf in model.named_leaves()
            if leaf.is_random()]


def check_deterministic(model, what):
    """Raise a ``ValueError`` naming the random layers (Dropout in train mode, unfrozen).

    Args:
        model: the network.
        what: the quantity asked for, for the message (e.g. "hvp").
    """
    names = random_layers(model)
    if names:
        raise ValueError(
            f"{what}: layer(s) {names} draw random numbers in train mode (Dropout draws a "
            "new mask on every forward pass), so the curvature would change from call to "
            "call and every call would advance the layer's generator. Call model.eval() "
            "for the network without dropout, or freeze the mask to study one draw: "
            "`with layer.frozen_mask(): ...` around the calls")


def check_finite(model, x, target, what):
    """Raise a ``ValueError`` when x, a floating target or a parameter holds NaN or inf.

    One NaN reaches every logit it touches and, through the shared weights, every entry
    of every curvature, so nothing useful comes out; the message names the rows (data) or
    the parameter (a diverged model). Reads the values once, before any pass.

    Args:
        model: the network.
        x: the input batch.
        target: the targets (integer labels are skipped: they cannot be NaN).
        what: the quantity asked for, for the message.
    """
    for name, a in (("x", x), ("target", target)):
        if not backend.is_array(a) or a.dtype.kind not in "fc" or a.size == 0 or a.ndim == 0:
            continue  # (an empty batch has nothing to check; reshape(0, -1) fails)
        xp = backend.array_module(a)
        finite = xp.isfinite(a).reshape(a.shape[0], -1).all(axis=1)  # (N,)
        if not bool(finite.all()):
            rows = backend.to_numpy(xp.nonzero(~finite)[0]).tolist()
            more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
            raise ValueError(f"{what}: {name} holds NaN or infinity in row(s) {rows[:10]}"
                             f"{more}; every curvature would be NaN. Check the batch with "
                             f"minidl.layers.base.expect_finite('{name}', {name})")
    for name, layer, key in model.parameters():
        p = layer.params[key]
        if not bool(backend.array_module(p).isfinite(p).all()):
            raise ValueError(f"{what}: parameter '{name}' holds NaN or infinity (the model "
                             "has diverged, or was loaded from a broken checkpoint); every "
                             "curvature would be NaN")


def _check_direction(model, v, what):
    """``flat.check_vector`` plus: finite values (a NaN direction gives a NaN product)."""
    xp = flat.check_vector(model, v, what)
    if not bool(xp.isfinite(v).all()):
        raise ValueError(f"{what}: the direction v holds {int((~xp.isfinite(v)).sum())} "
                         "non-finite value(s) (NaN or inf)")


@contextlib.contextmanager
def preserved_state(model, loss):
    """Save the model's and loss's pass state on entry and put it back on exit.

    Restores every leaf's ``cache``, ``grads``, ``Rparams``, ``Rgrads`` (the dicts) and
    ``buffers`` (copies of the arrays, since BatchNorm updates running statistics in train
    mode), and ``loss.cache``.
    """
    saved = []
    for leaf in model.leaves():
        buffers = {k: v.copy() for k, v in leaf.buffers.items()}
        saved.append((leaf, dict(leaf.cache), dict(leaf.grads), dict(leaf.Rparams),
                       dict(leaf.Rgrads), buffers))
    loss_cache = dict(loss.cache)
    try:
        yield
    finally:
        for leaf, cache, grads, rparams, rgrads, buffers in saved:
            leaf.cache, leaf.grads, leaf.Rparams, leaf.Rgrads = cache, grads, rparams, rgrads
            leaf.buffers.update(buffers)
        loss.cache = loss_cache


def _zero_input_tangent(x):
    """Rx = 0: the data do not move when theta does."""
    return backend.array_module(x).zeros_like(x)  # same shape as x


def hvp_fn(model, loss, x, target):
    """Run forward and backward once and return ``v -> H v`` for this batch.

    The returned function reuses what the passes cached, so it stays valid only until the
    model runs another pass (another ``forward``/``backward``). It does not restore state;
    wrap its use in ``preserved_state`` when that matters (``hvp`` does).

    Args:
        model: the network (a ``Layer``) whose layers all implement jvp and backward_rop.
        loss: a loss object (``SoftmaxCrossEntropy``, ``MSELoss``, ``BCEWithLogits``).
        x: input batch, shape (N, ...).
        target: targets as the loss expects them.

    Returns:
        A function mapping v of shape (P,) to H v of shape (P,).
    """
    check_deterministic(model, "hvp")
    check_finite(model, x, target, "hvp_fn")
    logits = model.forward(x)
    loss.forward(logits, target)
    model.backward(loss.backward())
    Rx = _zero_input_tangent(x)

    def apply(v):
        flat.check_vector(model, v, "hvp")
        flat.set_rparams(model, v)
        Rlogits = model.jvp(Rx)  # (N, K): J v
        model.backward_rop(loss.hvp(Rlogits))  # fills Rgrads = H v
        return flat.flatten_rgrads(model)  # (P,)

    return apply


def ggn_vp_fn(model, loss, x, target):
    """Run forward once and return ``v -> G v = J^T H_L J v`` for this batch.

    Same validity rule as ``hvp_fn``: it reuses the forward cache, and each call
    overwrites the layers' ``grads`` with the product's pieces.

    Args:
        model: the network; its layers need ``jvp`` (``backward_rop`` is not used).
        loss: the loss object.
        x: input batch, shape (N, ...).
        target: targets as the loss expects them (H_L may depend on them, e.g. soft
            targets in cross-entropy scale it by their sum).

    Returns:
        A function mapping v of shape (P,) to G v of shape (P,).
    """
    check_deterministic(model, "ggn_vp")
    check_finite(model, x, target, "ggn_vp_fn")
    logits = model.forward(x)
    loss.forward(logits, target)
    Rx = _zero_input_tangent(x)

    def apply(v):
        flat.check_vector(model, v, "ggn_vp")
        flat.set_rparams(model, v)
        Rlogits = model.jvp(Rx)  # (N, K): J v
        model.backward(loss.hvp(Rlogits))  # grads = J^T H_L J v
        return flat.flatten_grads(model)  # (P,)

    return apply


def hvp(model, loss, x, target, v):
    """Exact Hessian-vector product H v of the reduced loss (Pearlmutter's R-operator).

    Args:
        model: the network; every layer must implement ``jvp`` and ``backward_rop``.
        loss: the loss object; its reduction sets the scale (see the module doc).
        x: input batch, shape (N, ...).
        target: targets as the loss expects them.
        v: direction in the flat parameter order, shape (P,), on the model's device.

    Returns:
        H v, shape (P,), in the dtype of the parameters.
    """
    _check_direction(model, v, "hvp(model, loss, x, target, v)")
    check_finite(model, x, target, "hvp")
    with preserved_state(model, loss):
        return hvp_fn(model, loss, x, target)(v)


def ggn_vp(model, loss, x, target, v):
    """Generalised Gauss-Newton-vector product G v = J^T H_L J v of the reduced loss.

    Args:
        model: the network; every layer must implement ``jvp``.
        loss: the loss object.
        x: input batch, shape (N, ...).
        target: targets as the loss expects them.
        v: direction in the flat parameter order, shape (P,).

    Returns:
        G v, shape (P,).
    """
    _check_direction(model, v, "ggn_vp(model, loss, x, target, v)")
    check_finite(model, x, target, "ggn_vp")
    with preserved_state(model, loss):
        return ggn_vp_fn(model, loss, x, target)(v)


def loss_and_grad(model, loss, x, target):
    """The reduced loss and its gradient g = dL/dtheta as a flat vector.

    Returns:
        ``(value, g)``: a float and an array of shape (P,).
    """
    check_finite(model, x, target, "loss_and_grad")
    with preserved_state(model, loss):
        value = loss.forward(model.forward(x), target)
        model.backward(loss.backward())
        return value, flat.flatten_grads(model)
