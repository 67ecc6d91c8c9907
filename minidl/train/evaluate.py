"""Validation: the mean loss (and accuracy) of a model over a loader, in evaluation mode."""
from .. import backend
from ..losses import SoftmaxCrossEntropy
from .modes import evaluation_mode

__all__ = ["evaluate", "batch_accuracy", "wants_accuracy"]


def batch_accuracy(out, y):
    """Number of correct predictions in a batch (an int).

    Args:
        out: scores of shape (N, K).
        y: integer labels (N,), or one-hot / probability targets (N, K).
    """
    xp = backend.array_module(out)
    pred = out.argmax(axis=1)  # (N,)
    if y.ndim == 2:
        y = y.argmax(axis=1)  # (N,)
    return int(xp.sum(pred == y))


def wants_accuracy(metrics, loss):
    """Whether to measure accuracy: ``metrics`` None means "for cross-entropy"."""
    if metrics is None:
        return isinstance(loss, SoftmaxCrossEntropy)
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m != "accuracy"]
    if unknown:
        raise ValueError(f"fit: unknown metrics {unknown}; the available one is 'accuracy'")
    return "accuracy" in metrics


def evaluate(model, loss, loader, metrics=None):
    """Mean loss (and accuracy) of ``model`` over every batch of ``loader``, in eval mode.

    Every layer goes back to the mode it was in (``minidl.train.modes``), so a layer the
    user froze stays frozen. Batches are weighted by their size, so the result is the mean
    over examples whatever the last batch's size.

    Args:
        model: the network.
        loss: the loss object (its reduction decides what one batch's value means).
        loader: iterable of (x, y) batches.
        metrics: None (accuracy for cross-entropy), ``()``, or ``("accuracy",)``.

    Returns:
        ``{"loss": float, "accuracy": float}`` (accuracy only when measured) and
        ``"examples"``, the number of examples seen.

    Raises:
        ValueError: the loader gave no batches, or an unknown metric.
    """
    with_acc = wants_accuracy(metrics, loss)
    total, correct, seen = 0.0, 0, 0
    mean = getattr(loss, "reduction", "mean") == "mean"
    with evaluation_mode(model):
        try:
            for x, y in loader:
                n = int(x.shape[0])
                out = model.forward(x)  # (N, K)
                value = loss.forward(out, y)
                total += value * n if mean else value  # the batch's sum over examples
                if with_acc:
                    correct += batch_accuracy(out, y)
                seen += n
        finally:
            model.clear_cache()
    if seen == 0:
        raise ValueError("evaluate: the loader gave no batches")
    result = {"loss": total / seen, "examples": seen}
    if with_acc:
        result["accuracy"] = correct / seen
    return result
