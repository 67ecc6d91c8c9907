"""Per-example gradients: one row per example, in the flat parameter order.

Write the reduced loss of a batch of N examples through the per-example losses l_n, where
l_n is the same loss object applied to example n alone (a batch of one)::

    "mean":  L = (1/N) sum_n l_n        "sum":  L = sum_n l_n

(For MSE and BCE, whose "mean" averages over all N D output elements, l_n is then the
mean over example n's own D elements, so the identity holds with the same 1/N.)

The per-example gradient is g_n = dl_n/dtheta, shape (P,). Stacked they form G (N, P) and

    dL/dtheta = (1/N) sum_n g_n   ("mean")      dL/dtheta = sum_n g_n   ("sum").

Two ways to get G:

* ``"layers"``: one forward and one backward over the batch. Each parameterised layer's
  ``per_example_grads()`` splits its ``grads`` into the N examples' shares (for Linear,
  dW_n = dout_n x_n^T). The shares sum to the batch gradient, so g_n = N share_n for a
  mean loss and g_n = share_n for a sum.
* ``"loop"``: forward and backward on each example alone (N passes). Slow but it needs
  nothing beyond ``forward``/``backward``, so it works for every layer.

``method="auto"`` takes ``"layers"`` when every parameterised layer has
``per_example_grads`` and ``"loop"`` otherwise.

Per-example gradients exist only when example n's output depends on example n alone.
BatchNorm in train mode normalises with batch statistics, which couples the examples,
so both methods raise a ``ValueError`` for it: call ``model.eval()`` first. Dropout in
train mode draws a new mask on every pass and is refused the same way (eval mode, or a
frozen mask, which only the "layers" method can use: the loop's one-example batches do
not fit a mask drawn for the whole batch, so the loop refuses it with a ``ValueError``).

The "layers" method covers layers that define ``per_example_grads()`` (Linear, Conv2d);
a model with any other parameterised layer (the normalisation layers) takes the loop.
"""
from .. import backend
from . import flat
from .products import check_deterministic, check_finite, preserved_state

__all__ = ["per_example_grads", "batch_coupled_layers", "check_per_example_ok",
           "check_batch"]


def batch_coupled_layers(model):
    """Names of the leaves whose train-mode forward mixes the examples of a batch.

    These are the layers normalising with batch statistics (BatchNorm): they keep
    ``running_mean`` in their buffers and use batch statistics while ``training`` is True.
    """
    return [name for name, leaf in model.named_leaves()
            if leaf.training and "running_mean" in leaf.buffers]


def check_per_example_ok(model, what):
    """Raise a ``ValueError`` naming the layers that couple examples (train-mode BatchNorm).

    Args:
        model: the network.
        what: the quantity asked for, for the message (e.g. "per_example_grads").
    """
    check_deterministic(model, what)
    coupled = batch_coupled_layers(model)
    if coupled:
        raise ValueError(
            f"{what}: layer(s) {coupled} normalise with batch statistics in train mode, so "
            "each example's output depends on the whole batch and per-example gradients "
            "are undefined; call model.eval() to use the running statistics instead")


def check_batch(x, target, what):
    """Return N after checking that ``x`` is a batch (N, ...) with N targets.

    The one-example loop reads ``target[n:n+1]`` for n < N only, so without this check
    surplus targets would be dropped without a word.

    Args:
        x: the input batch.
        target: the targets; an array or a sequence indexed along the batch axis.
        what: the quantity asked for, for the message.

    Raises:
        ValueError: ``x`` is not an array with a batch axis, or ``target`` does not hold
            one entry per example.
    """
    if not backend.is_array(x) or x.ndim < 1:
        raise ValueError(f"{what} expects a batch x of shape (N, ...), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    N = int(x.shape[0])
    shape = getattr(target, "shape", None)
    if shape is not None:
        count = int(shape[0]) if len(shape) else None
    else:
        count = len(target) if hasattr(target, "__len__") else None
    if count != N:
        got = f"{count} targets" if count is not None else \
            f"a target without a batch axis ({type(target).__name__} of shape {shape})"
        raise ValueError(f"{what}: x holds {N} examples but target holds {got}; give one "
                         "target per example")
    return N


def _scale(loss, N):
    """N for a mean reduction (g_n = N share_n), 1 for a sum."""
    return float(N) if loss.reduction == "mean" else 1.0


def _has_layer_path(model):
    for leaf in model.leaves():
        if leaf.params and not hasattr(leaf, "per_example_grads"):
            return False
    return True


def _by_layers(model, loss, x, target):
    logits = model.forward(x)
    loss.forward(logits, target)
    model.backward(loss.backward())
    N = int(x.shape[0])
    xp = flat.param_module(model)
    rows = []
    shares = {}
    for leaf in model.leaves():
        if leaf.params:
            shares[id(leaf)] = leaf.per_example_grads()  # {key: (N, *shape)}
    for name, leaf, key in model.parameters():
        share = shares[id(leaf)].get(key)
        if share is None:
            raise RuntimeError(f"{type(leaf).__name__}.per_example_grads() returned no "
                               f"entry for parameter '{name}'")
        rows.append(share.reshape(N, int(leaf.params[key].size)))  # (N, size); N may be 0
    return xp.concatenate(rows, axis=1) * _scale(loss, N)  # (N, P)


def _by_loop(model, loss, x, target):
    N = int(x.shape[0])
    xp = flat.param_module(model)
    G = xp.empty((N, flat.num_params(model)), dtype=_dtype(model))  # (N, P)
    for n in range(N):
        logits = model.forward(x[n:n + 1])
        loss.forward(logits, target[n:n + 1])
        model.backward(loss.backward())
        G[n] = flat.flatten_grads(model)
    return G


def _check_no_frozen_masks(model):
    """Refuse train-mode layers with a frozen mask before the one-example loop runs.

    A mask frozen for the batch does not fit batches of one; and with no mask drawn yet,
    the loop's first pass would draw a one-example mask that every example then reuses.
    """
    frozen = [name or type(leaf).__name__ for name, leaf in model.named_leaves()
              if leaf.training and getattr(leaf, "freeze_mask", False)]
    if frozen:
        raise ValueError(
            f"per_example_grads: layer(s) {frozen} have a frozen mask in train mode, which "
            "the one-example loop cannot use (a batch's mask does not fit batches of one, "
            "and one drawn for a single example would be reused by all); call model.eval(), "
            "or use method='layers' on a model whose parameterised layers all have "
            "per_example_grads()")


def _dtype(model):
    return next(layer.params[key].dtype for _, layer, key in model.parameters())


def per_example_grads(model, loss, x, target, method="auto"):
    """Gradients of each example's own loss l_n, stacked in the flat parameter order.

    Args:
        model: the network (no train-mode BatchNorm; see the module doc).
        loss: the loss object. Its reduction decides what l_n is (see the module doc);
            with "mean", rows average to the batch gradient, with "sum" they add up to it.
        x: input batch, shape (N, ...).
        target: targets, indexable along the batch axis (``target[n:n+1]``).
        method: ``"auto"``, ``"layers"`` (one pass, via ``per_example_grads()`` of each
            layer) or ``"loop"`` (one pass per example).

    Returns:
        G of shape (N, P) with G[n] = dl_n/dtheta ((0, P) for an empty batch).

    Raises:
        ValueError: for a train-mode BatchNorm, an unknown ``method``, ``"layers"`` when
            a parameterised layer has no ``per_example_grads``, or a target that does not
            hold N entries.
    """
    if method not in ("auto", "layers", "loop"):
        raise ValueError(f"per_example_grads: method must be 'auto', 'layers' or 'loop', "
                         f"got {method!r}")
    check_per_example_ok(model, "per_example_grads")
    check_batch(x, target, "per_example_grads")
    check_finite(model, x, target, "per_example_grads")
    layer_path = _has_layer_path(model)
    if method == "layers" and not layer_path:
        missing = [name for name, leaf in model.named_leaves()
                   if leaf.params and not hasattr(leaf, "per_example_grads")]
        raise ValueError(f"per_example_grads(method='layers'): layer(s) {missing} have no "
                         "per_example_grads(); use method='loop' or 'auto'")
    use_layers = method == "layers" or (method == "auto" and layer_path)
    if not use_layers:
        _check_no_frozen_masks(model)
    with preserved_state(model, loss):
        if use_layers:
            return _by_layers(model, loss, x, target)
        return _by_loop(model, loss, x, target)
