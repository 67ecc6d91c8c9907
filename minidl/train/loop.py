"""``fit``: the training loop, one step and one epoch at a time.

The pieces around the loop each live in their own module of ``minidl.train``:
``evaluate`` (validation), ``best`` (best epoch, its weights, early stopping),
``checkpointing`` (save after each epoch, resume), ``divergence`` (non-finite values and
failed factorisations found before they change anything) and ``modes`` (training and
evaluation mode without undoing a layer the user froze).
"""
import collections.abc
import dataclasses
import time

from ..optim.schedules import as_schedule
from ..progress import ProgressBar
from . import divergence
from .best import BestEpoch
from .checkpointing import generators, resume_run, save_run
from .evaluate import batch_accuracy, evaluate, wants_accuracy
from .history import History
from .modes import lean_backward, training_mode

__all__ = ["fit", "Trainer"]


@dataclasses.dataclass
class Trainer:
    """One training step, and one epoch of steps, for a model, a loss and a method.

    Attributes:
        model, loss, optimizer: the network, the loss object and the optimizer.
        precond: a preconditioner stepped between backward and the optimizer, or None.
        schedule: ``lr = schedule(k)`` set before update k (k from 0), a number for a
            constant rate, or None.
        with_acc: count correct predictions for the accuracy.
        progress: show a progress bar (True, False, or None: in a terminal or notebook).
        log_every: print the running loss every n steps (None or 0: never).
        log: the function receiving those lines.
    """
    model: object
    loss: object
    optimizer: object
    precond: object = None
    schedule: object = None
    with_acc: bool = False
    progress: object = None
    log_every: int = None
    log: object = print

    def __post_init__(self):
        # refused here, before fit loads or trains anything; a number is a constant rate
        if self.schedule is not None:
            self.schedule = as_schedule(self.schedule, owner=type(self).__name__)

    def step(self, x, y):
        """One update; returns ``(loss_value, out, diverged)``.

        ``diverged`` is None, or a ``divergence.Diverged`` found before the optimizer
        (and, for non-finite losses and gradients, the preconditioner) changed anything;
        BatchNorm's running statistics are then put back as they were.
        """
        buffers = divergence.BufferSnapshot(self.model)
        # out: (N, K) scores; loss_value: float, the batch mean
        out, loss_value, note = divergence.forward_loss(self.model, self.loss, x, y)
        try:
            divergence.check_loss(loss_value, note)
            self.model.backward(self.loss.backward())   # fills every layer.grads
            divergence.check_grads(self.model)
            if self.precond is not None:
                with divergence.guard("preconditioner"):
                    self.precond.step()                 # grads -> preconditioned directions
            with divergence.guard("optimizer"):
                self.optimizer.step()                   # params -= lr * direction
        except divergence.Diverged as diverged:
            buffers.restore()
            return loss_value, out, diverged
        # backward overwrites the grads (no accumulation), so no zero_grad is needed
        return loss_value, out, None

    def epoch(self, loader, epoch, epochs, history):
        """Train one epoch; returns its record (``history.divergence`` set on divergence)."""
        bar = ProgressBar(total=_length(loader), desc=f"epoch {epoch}/{epochs}",
                          enabled=self.progress)
        loss_sum, correct, seen, seconds = 0.0, 0, 0, 0.0
        # a "mean" batch loss is weighted by its size, a "sum" one already sums its examples
        mean = getattr(self.loss, "reduction", "mean") == "mean"
        time_before = history.last.get("time", 0.0)
        with training_mode(self.model), \
                lean_backward(self.model, keep_caches=self.precond is not None):
            tick = time.perf_counter()
            for x, y in loader:
                if self.schedule is not None:  # k = updates taken so far (kept on resume)
                    k = getattr(self.optimizer, "t", len(history.steps["step"]))
                    self.optimizer.lr = self.schedule(k)
                loss_value, out, diverged = self.step(x, y)
                n = int(x.shape[0])
                correct += batch_accuracy(out, y) if self.with_acc else 0
                seconds += time.perf_counter() - tick
                history.record_step(loss_value, time_before + seconds, epoch)
                loss_sum += loss_value * n if mean else loss_value
                seen += n
                bar.update(n, loss=loss_value)
                if diverged is not None:
                    history.divergence = {"epoch": epoch, "step": history.steps["step"][-1],
                                          "cause": diverged.cause, "detail": diverged.detail}
                    break
                self._log_step(history, loss_value)
                tick = time.perf_counter()
        bar.close()
        if seen == 0:
            raise ValueError("fit: the training loader gave no batches (is the data set "
                             "smaller than one batch with drop_last=True?)")
        record = {"epoch": epoch, "train_loss": loss_sum / seen}
        if self.with_acc:
            record["train_accuracy"] = correct / seen
        record.update(lr=float(self.optimizer.lr), epoch_time=seconds,
                      time=time_before + seconds, examples=seen,
                      throughput=seen / seconds if seconds > 0 else 0.0)
        return record

    def _log_step(self, history, loss_value):
        step = len(history.steps["step"])
        if self.log_every and step % self.log_every == 0:
            self.log(f"  step {step}  loss {loss_value:.4f}  lr {self.optimizer.lr:.3g}")


def fit(model, loss, optimizer, train_loader, epochs=1, precond=None, val_loader=None,
        schedule=None, early_stopping=None, monitor=None, restore_best=False, metrics=None,
        progress=None, checkpoint=None, resume=None, log_every=None, log=None, meta=None):
    """Train ``model`` and return its ``History``.

    One step is ``forward -> loss -> backward -> precond.step() -> optimizer.step()``
    (``Trainer.step``); after each epoch come validation, the best-epoch and
    early-stopping bookkeeping, and the checkpoint.

    Args:
        model: the network (a ``Layer``). Layers it holds in evaluation mode inside a
            model in training mode (frozen by the user) stay so; every layer's mode is
            as before when ``fit`` returns.
        loss: the loss object, e.g. ``SoftmaxCrossEntropy()``.
        optimizer: a ``minidl.optim`` optimizer built from ``model``.
        train_loader: iterable of (x, y) mini-batches on the active device, re-iterated
            every epoch (a ``minidl.data.DataLoader`` reshuffles with its own ``rng``; a
            one-shot iterator such as a generator is refused when more than one epoch
            would read it).
        epochs: the total number of epochs (a resumed run counts the finished ones).
        precond: a ``minidl.precond`` preconditioner, or None.
        val_loader: batches evaluated after every epoch, or None.
        schedule: ``lr = schedule(k)`` before update k = 0, 1, ... (``minidl.optim.Cosine``),
            with k the optimizer's step count ``optimizer.t`` (so a resumed run continues
            the schedule where it stopped); a number is a constant rate. Anything else is
            refused before training starts.
        early_stopping: patience P: stop when the monitored metric has not improved for P
            epochs in a row. None never stops early.
        monitor: the metric watched for the best epoch (``"val_loss"`` with a validation
            loader, else ``"train_loss"``); smaller is better except for accuracies. It
            must be a metric the run records (``train_``/``val_`` ``loss``/``accuracy``).
        restore_best: put back the weights of the best epoch at the end, whatever ended
            the run (last epoch, early stopping, divergence), also after a resume.
        metrics: None (accuracy when the loss is cross-entropy), ``()`` or ``("accuracy",)``.
        progress: True or False for a progress bar (tqdm); None shows it only in a
            terminal or a notebook.
        checkpoint: path of a checkpoint written (atomically) after every epoch that did
            not diverge; checked to be writable before training starts.
        resume: path of a checkpoint to continue from; epochs already done are skipped.
        log_every: None prints one line per epoch; n > 0 also prints the running
            training loss every n steps; 0 prints nothing.
        log: function receiving each log line (default ``print``).
        meta: dict stored in ``history.meta`` (a label, settings).

    Returns:
        A ``History``; ``history.stop_reason`` and ``history.divergence`` say how it ended.

    Raises:
        ValueError: bad arguments, or an empty loader.
        CheckpointError: ``checkpoint`` cannot be written, ``resume`` cannot be read (or
            lacks the best epoch's weights that ``restore_best`` needs).
    """
    schedule = _check_arguments(epochs, early_stopping, log_every, checkpoint, schedule)
    with_acc = wants_accuracy(metrics, loss)
    log = print if log is None else log
    trainer = Trainer(model, loss, optimizer, precond, schedule, with_acc, progress,
                      log_every, log)
    rngs = generators(train_loader, val_loader, model, precond)
    best = BestEpoch(_monitor(monitor, val_loader, with_acc), patience=early_stopping,
                     keep_weights=restore_best or bool(checkpoint))
    history, done = History(meta), 0
    if resume is not None:  # refusals (one-shot iterators too) before anything is loaded
        history, done = resume_run(
            resume, model, optimizer, precond, rngs, best,
            check=lambda done: _check_reiterable(train_loader, val_loader, int(epochs) - done))
    else:
        _check_reiterable(train_loader, val_loader, int(epochs))
    _describe(history, model, optimizer, precond)
    wall_start = time.perf_counter() - history.last.get("wall", 0.0)
    last = int(epochs) if history.stop_reason is None else done  # early-stopped: no more
    for epoch in range(done + 1, last + 1):
        record = trainer.epoch(train_loader, epoch, epochs, history)
        if history.divergence is None:
            if val_loader is not None:
                val = evaluate(model, loss, val_loader, metrics=metrics)
                record.update({f"val_{k}": v for k, v in val.items() if k != "examples"})
            best.update(record, model)
        record["wall"] = time.perf_counter() - wall_start
        history.epochs.append(record)
        history.stop_reason = _stop_reason(history, best, epoch)
        if checkpoint is not None and history.divergence is None:
            save_run(checkpoint, model, optimizer, precond, rngs, history, best)
        if log_every != 0:
            log(_summary(record, epochs))
            if history.stop_reason is not None:
                log(history.stop_reason)
        if history.stop_reason is not None:
            break
    if restore_best:
        best.restore(model)
    model.clear_cache()
    return history


def _stop_reason(history, best, epoch):
    """Why the run stops after ``epoch`` (divergence, early stopping), or None."""
    d = history.divergence
    if d is not None:
        return (f"diverged: {d['cause']} in epoch {d['epoch']}, step {d['step']} "
                f"({d['detail']})")
    if best.patience_ran_out(epoch):
        return best.stop_reason()
    return None


def _check_arguments(epochs, early_stopping, log_every, checkpoint, schedule):
    """Refuse bad arguments before anything is loaded or trained; returns the schedule (a
    number made a ``Constant``)."""
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
    schedule = None if schedule is None else as_schedule(schedule, owner="fit")
    if early_stopping is not None and (int(early_stopping) != early_stopping
                                       or early_stopping < 1):
        raise ValueError(f"fit: early_stopping is a patience in epochs, an integer >= 1, "
                         f"got {early_stopping!r}")
    if log_every is not None and (int(log_every) != log_every or log_every < 0):
        raise ValueError(f"fit: log_every must be None or an integer >= 0, got {log_every!r}")
    if checkpoint is not None:
        from ..checkpoint import check_writable
        check_writable(checkpoint)  # fail now, not after the first epoch
    return schedule


def _monitor(monitor, val_loader, with_acc):
    """The metric watched for the best epoch; one the run never records is refused, since
    early stopping and ``restore_best`` would then silently do nothing."""
    if monitor is None:
        return "val_loss" if val_loader is not None else "train_loss"
    recorded = ["train_loss"] + (["train_accuracy"] if with_acc else [])
    if val_loader is not None:
        recorded += ["val_loss"] + (["val_accuracy"] if with_acc else [])
    if monitor not in recorded:
        why = ("; validation metrics need a val_loader" if str(monitor).startswith("val_")
               and val_loader is None else "")
        raise ValueError(f"fit: monitor {monitor!r} is not a metric this run records; it "
                         f"records {recorded}{why}")
    return monitor


def _check_reiterable(train_loader, val_loader, epochs_to_run):
    """Refuse a one-shot iterator (a generator, ``zip(...)``, ``iter(list)``) that more than
    one epoch would read: the second epoch would find it used up."""
    if epochs_to_run < 2:
        return
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if isinstance(loader, collections.abc.Iterator):
            raise ValueError(f"fit: {name} is a one-shot iterator ({type(loader).__name__}), "
                             f"used up after one epoch, but {epochs_to_run} epochs would "
                             "read it; pass a minidl.data.DataLoader or a list of (x, y) "
                             "batches")


def _describe(history, model, optimizer, precond):
    history.meta.setdefault("optimizer", type(optimizer).__name__)
    history.meta.setdefault("precond", type(precond).__name__ if precond is not None else None)
    history.meta.setdefault("num_params", model.num_params())


def _length(loader):
    try:
        return len(loader)
    except TypeError:
        return None


def _summary(record, epochs):
    """One line for an epoch: losses, accuracies, time and throughput."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    if "train_accuracy" in record:
        parts.append(f"acc {record['train_accuracy']:.4f}")
    if "val_loss" in record:
        parts.append(f"val_loss {record['val_loss']:.4f}")
    if "val_accuracy" in record:
        parts.append(f"val_acc {record['val_accuracy']:.4f}")
    parts.append(f"{record['epoch_time']:.2f}s")
    parts.append(f"{record['throughput']:,.0f} ex/s")
    return "  ".join(parts)
