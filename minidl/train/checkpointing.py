"""Writing a run to a checkpoint after each epoch, and picking it up again.

A run's checkpoint (``minidl.checkpoint``: atomic, pickle-free ``.npz``) holds the model,
optimizer and preconditioner state, every random generator the run draws from, the
``History`` so far, and the weights of the best epoch with the name of the metric that
chose it, so that ``fit(..., resume=path)`` continues exactly as if it had never stopped
and ``restore_best`` still keeps its promise.
"""
from .. import checkpoint as ckpt
from .history import History

__all__ = ["generators", "save_run", "resume_run"]


def generators(train_loader, val_loader, model, precond):
    """``{name: generator}`` of every random generator the run draws from."""
    found = {}
    for name, obj in (("train_loader", train_loader), ("val_loader", val_loader),
                      ("precond", precond)):
        rng = getattr(obj, "rng", None)
        if hasattr(rng, "bit_generator"):
            found[name] = rng
    for lname, leaf in model.named_leaves():
        rng = getattr(leaf, "rng", None)
        if hasattr(rng, "bit_generator"):
            found[f"layer.{lname}"] = rng
    return found


def save_run(path, model, optimizer, precond, rngs, history, best):
    """Write the run after its last finished epoch (atomically)."""
    ckpt.save(path, model, optimizer, precond, epoch=history.last["epoch"], rng=rngs,
              extra={"history": history.to_dict(), "best": best.to_meta()},
              best=best.state)


def resume_run(path, model, optimizer, precond, rngs, best, check=None):
    """Load a run's checkpoint into the given objects.

    Everything that can refuse the resume runs before anything is loaded: reading and
    checking the file, the preconditioner's presence, the best epoch's weights, and
    ``check(epochs_done)`` (the caller's own refusal, e.g. of a one-shot iterator); so a
    refused resume leaves the model, optimizer, preconditioner and generators as they were.

    Returns:
        ``(history, epochs_done)``; ``best`` knows the best epoch (and its weights), and
        ``history.stop_reason`` is set when its patience had already run out (an
        uninterrupted run would have stopped there).

    Raises:
        CheckpointError: the file is damaged or belongs to other objects, holds a
            preconditioner's state but none is given, or the best epoch's weights are
            wanted but not in the file; nothing was changed.
        Whatever ``check`` raises, also before anything changed.
    """
    ck = ckpt.read(path)
    saved_precond = ck.meta["classes"].get("precond")
    if saved_precond is not None and precond is None:
        raise ckpt.CheckpointError(
            f"checkpoint {ck.path!r}: it holds the state of a {saved_precond} "
            "preconditioner, but no precond was given; pass the same preconditioner to "
            "continue the run")
    if check is not None:
        check(ck.epoch)
    extra = ck.extra if isinstance(ck.extra, dict) else {}
    history = History()
    if isinstance(extra.get("history"), dict):
        history = History.from_dict(extra["history"])
        history.stop_reason, history.divergence = None, None
    try:  # the last epoch's weights are the checkpoint's model section
        best.from_checkpoint(history, ck.model, extra.get("best"), ck.best, ck.epoch)
    except ValueError as err:
        raise ckpt.CheckpointError(f"checkpoint {ck.path!r}: {err}") from None
    ckpt.load(ck, model, optimizer, precond, rng=rngs)
    if best.patience_ran_out(ck.epoch):
        history.stop_reason = best.stop_reason()
    return history, ck.epoch
