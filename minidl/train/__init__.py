"""The training loop, written out in full, and the ``History`` it returns.

One step of training, for a mini-batch (x, y), is the chain every lecture draws::

    out = model.forward(x)                 forward pass, layers cache what backward needs
    loss_value = loss.forward(out, y)      reduced loss (mean over the batch by default)
    model.backward(loss.backward())        every layer's grads = dL/dparams
    precond.step()                         optional: grads -> preconditioned directions
    optimizer.step()                       params -= lr * (the method's direction)

``fit`` (in ``loop.py``) repeats it over the batches of a ``DataLoader`` for some epochs.
Each concern around the loop is one small module:

=================  ==========================================================================
``loop``           ``fit`` and the ``Trainer`` (one step, one epoch)
``evaluate``       validation: mean loss and accuracy in evaluation mode
``best``           the best epoch, its weights (``restore_best``) and early stopping
``checkpointing``  a checkpoint after every epoch, and ``resume``
``divergence``     NaN/infinite loss or gradients, failed factorisations: a clean stop
``modes``          training/evaluation mode that leaves layers the user froze frozen
``history``        ``History``: per-epoch records, per-step losses, JSON files
=================  ==========================================================================

Times: ``time`` is the training time (forward, backward, preconditioner and update) summed
over the epochs so far, the fair clock for comparing methods; ``wall`` also counts the
validation passes and checkpoints.
"""
from .evaluate import batch_accuracy, evaluate
from .history import History
from .loop import Trainer, fit

__all__ = ["fit", "evaluate", "History", "batch_accuracy", "Trainer"]
