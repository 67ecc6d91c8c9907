"""Divergence: find a non-finite value before it changes anything, and stop cleanly.

A training step can go wrong in three places, each checked before the next part of the
step changes any state:

1. the loss is NaN or infinite (a NaN pixel in the data, weights blown up by a large
   step): found right after the forward pass, before ``backward``; the warnings the
   layers (NumPy's overflow) and the loss (naming the rows of the batch to blame) give
   on the way go into the report instead of the terminal;
2. a gradient is NaN or infinite while the loss is finite (an overflow in a backward
   pass): found after ``backward``, before the preconditioner and the optimizer;
3. the preconditioner (or optimizer) refuses: it raises ``minidl.errors.NonFiniteError``
   before touching its statistics, or a factorisation fails with a ``LinAlgError``
   ("Eigenvalues did not converge").

Each becomes a ``Diverged`` exception that ``fit`` turns into a clean stop
(``history.divergence``) instead of a traceback. The training-mode forward pass updates
BatchNorm's running statistics before the loss is known, so ``BufferSnapshot`` keeps
the buffers of the step's start and puts them back when the step diverges (BatchNorm
replaces its buffer arrays rather than writing into them, so keeping references is
enough). A Dropout layer's generator has advanced; nothing else has changed.
"""
import contextlib
import math
import warnings

from .. import backend
from ..errors import NonFiniteError, NonFiniteWarning

__all__ = ["Diverged", "forward_loss", "check_loss", "check_grads", "guard", "BufferSnapshot"]


class Diverged(Exception):
    """A training step met a non-finite value or a failed factorisation.

    Attributes:
        cause: a few words for tables and legends (``"NaN loss"``, ``"non-finite
            gradient"``, ``"linear-algebra failure"``, ``"non-finite values in the
            preconditioner"``).
        detail: the longer story (the value, the layer and parameter, the library's
            message).
    """

    def __init__(self, cause, detail=""):
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail


def forward_loss(model, loss, x, target):
    """The forward pass and the loss and, when the value is not finite, the text of the
    ``NonFiniteWarning`` (or NumPy ``RuntimeWarning``: an overflow in a layer) that the
    model or the loss gave about it; other warnings pass through as usual.

    Returns:
        ``(out, loss_value, note)``; ``note`` is ``""`` for a finite value.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.forward(x)
        value = loss.forward(out, target)
    notes = []
    for w in caught:
        if not math.isfinite(value) and issubclass(w.category,
                                                   (NonFiniteWarning, RuntimeWarning)):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out, value, "; ".join(notes)


def check_loss(loss_value, note=""):
    """Raise ``Diverged`` when the mini-batch loss is NaN or infinite.

    Args:
        loss_value: the mini-batch loss (a float).
        note: what the loss said about it (``forward_loss``), added to the detail.
    """
    if not math.isfinite(loss_value):
        kind = "NaN" if loss_value != loss_value else "infinite"
        detail = f"the mini-batch loss is {loss_value}" + (f" ({note})" if note else "")
        raise Diverged(f"{kind} loss", detail)


def check_grads(model):
    """Raise ``Diverged`` naming the first parameter whose gradient is not finite.

    The fast path adds up every gradient's sum on the device and looks at one number
    (NaN and infinity survive a sum); only when that is not finite are the parameters
    searched one by one for the message.
    """
    params = model.parameters()
    if not params:
        return
    total = 0.0
    for _, layer, key in params:
        total = total + layer.grads[key].sum()  # a 0-d device array: one sync below
    if math.isfinite(float(total)):
        return
    for name, layer, key in params:
        xp = backend.array_module(layer.grads[key])
        bad = int(xp.sum(~xp.isfinite(layer.grads[key])))
        if bad:
            raise Diverged("non-finite gradient",
                           f"{bad} entries of the gradient of {name} "
                           f"({type(layer).__name__}) are NaN or infinite")
    raise Diverged("non-finite gradient", "the gradients add up to infinity")


@contextlib.contextmanager
def guard(who):
    """Turn ``NonFiniteError`` and ``LinAlgError`` raised inside into ``Diverged``.

    Args:
        who: the part of the step inside (``"preconditioner"``, ``"optimizer"``), named
            in the message.
    """
    try:
        yield
    except NonFiniteError as err:
        raise Diverged(f"non-finite values in the {who}", str(err)) from err
    except backend.linalg_errors() as err:
        raise Diverged("linear-algebra failure", f"in the {who}: {err}") from err


class BufferSnapshot:
    """The buffers (BatchNorm running statistics) of every layer, to undo one step."""

    def __init__(self, model):
        self.saved = [(leaf, dict(leaf.buffers)) for leaf in model.leaves() if leaf.buffers]

    def restore(self):
        for leaf, buffers in self.saved:
            leaf.buffers.update(buffers)
