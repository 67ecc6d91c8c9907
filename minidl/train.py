"""The training loop, written out in full, and the ``History`` it returns.

One step of training, for a mini-batch (x, y), is the chain every lecture draws::

    out = model.forward(x)                 forward pass, layers cache what backward needs
    loss_value = loss.forward(out, y)      reduced loss (mean over the batch by default)
    model.backward(loss.backward())        every layer's grads = dL/dparams
    precond.step()                         optional: grads -> preconditioned directions
    optimizer.step()                       params -= lr * (the method's direction)

``fit`` repeats it over the batches of a ``DataLoader`` for some epochs, switching the
model to training mode for the updates and to evaluation mode for the validation pass
(BatchNorm uses its running statistics and Dropout turns off there), and records per-step
and per-epoch numbers with wall-clock seconds in a ``History``. On top of the loop it can
follow a learning-rate schedule (``optimizer.lr = schedule(k)`` before update k), stop
early when the monitored loss has not improved for ``early_stopping`` epochs, show a
progress bar, and write a checkpoint after every epoch (``minidl.checkpoint``) from which
``fit(..., resume=path)`` continues exactly as if it had never stopped.

Times: ``time`` is the training time (forward, backward, preconditioner and update) summed
over the epochs so far, the fair clock for comparing methods; ``wall`` also counts the
validation passes and checkpoints.
"""
import json
import math
import os
import sys
import time

from . import backend
from .losses import SoftmaxCrossEntropy
from .progress import ProgressBar, is_terminal

__all__ = ["fit", "evaluate", "History", "batch_accuracy"]


# -- history -----------------------------------------------------------------------------
def _json_safe(value):
    """Non-finite floats become None (strict JSON has no NaN); containers recurse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _from_json_number(value):
    return float("nan") if value is None else value


class History:
    """What ``fit`` measured: one record per epoch and a few numbers per step.

    Attributes:
        epochs: list of dicts, one per finished epoch, with keys ``epoch`` (1-based),
            ``train_loss``, ``train_accuracy`` (classification), ``val_loss`` and
            ``val_accuracy`` (with a validation loader), ``lr``, ``epoch_time`` (training
            seconds of this epoch), ``time`` (training seconds so far), ``wall`` (seconds
            since fit started, validation included), ``examples`` and ``throughput``
            (training examples per second).
        steps: dict of equal-length lists: ``step`` (update number, from 1), ``epoch``,
            ``loss`` (the mini-batch loss before the update) and ``time`` (training
            seconds so far, at the end of the step).
        meta: free-form description of the run (model, optimizer, settings).
        stop_reason: why training ended before ``epochs`` (early stopping, divergence),
            or None.

    ``history["val_loss"]`` gives one metric as a list over the epochs.
    """

    STEP_KEYS = ("step", "epoch", "loss", "time")

    def __init__(self, meta=None):
        self.meta = dict(meta or {})
        self.epochs = []
        self.steps = {key: [] for key in self.STEP_KEYS}
        self.stop_reason = None

    def __len__(self):
        return len(self.epochs)

    def __getitem__(self, key):
        if not any(key in e for e in self.epochs):
            have = sorted({k for e in self.epochs for k in e})
            raise KeyError(f"History has no metric {key!r}; it has {have}")
        return [e.get(key, float("nan")) for e in self.epochs]

    def keys(self):
        """The metric names recorded in at least one epoch."""
        seen = []
        for e in self.epochs:
            seen.extend(k for k in e if k not in seen)
        return seen

    @property
    def last(self):
        """The record of the last epoch (an empty dict before the first)."""
        return self.epochs[-1] if self.epochs else {}

    def best(self, key="val_loss", mode="min"):
        """The epoch record with the smallest (``mode="min"``) or largest value of ``key``."""
        finite = [e for e in self.epochs if key in e and math.isfinite(e[key])]
        if not finite:
            return None
        pick = min if mode == "min" else max
        return pick(finite, key=lambda e: e[key])

    def record_step(self, loss, seconds, epoch):
        """Append one step's loss and training time."""
        self.steps["step"].append(len(self.steps["step"]) + 1)
        self.steps["epoch"].append(int(epoch))
        self.steps["loss"].append(float(loss))
        self.steps["time"].append(float(seconds))

    # -- files ---------------------------------------------------------------------------
    def to_dict(self):
        """A JSON-able dict (NaN and infinity become null)."""
        return _json_safe({"meta": self.meta, "epochs": self.epochs, "steps": self.steps,
                           "stop_reason": self.stop_reason})

    @classmethod
    def from_dict(cls, data):
        """Rebuild a ``History`` from ``to_dict()`` output (null metrics become NaN)."""
        if not isinstance(data, dict) or "epochs" not in data:
            raise ValueError("History.from_dict expects a dict with 'epochs' (from to_dict), "
                             f"got {type(data).__name__}")
        h = cls(data.get("meta"))
        h.epochs = [{k: _from_json_number(v) for k, v in e.items()} for e in data["epochs"]]
        steps = data.get("steps") or {}
        h.steps = {key: [_from_json_number(v) for v in steps.get(key, [])]
                   for key in cls.STEP_KEYS}
        h.stop_reason = data.get("stop_reason")
        return h

    def to_json(self, path):
        """Write the history as JSON to ``path`` (folders are made); returns the path."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False)
            f.write("\n")
        return path

    @classmethod
    def from_json(cls, path):
        """Read a history written by ``to_json``."""
        path = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except ValueError as err:
                raise ValueError(f"{path}: not a history JSON file ({err})") from None
        return cls.from_dict(data)

    def plot(self, path=None, **kw):
        """Plot this history's curves (see ``minidl.plots.plot_histories``)."""
        from . import plots
        label = self.meta.get("label") or self.meta.get("optimizer") or "run"
        return plots.plot_histories({label: self}, path=path, **kw)

    def __repr__(self):
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.last.items()
                         if isinstance(v, float) and k not in ("time", "wall"))
        return f"History({len(self)} epochs; last: {last})"


# -- metrics -----------------------------------------------------------------------------
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


def _wants_accuracy(metrics, loss):
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

    The model goes back to the mode it was in. Batches are weighted by their size, so the
    result is the mean over examples whatever the last batch's size.

    Args:
        model: the network.
        loss: the loss object (its reduction decides what one batch's value means).
        loader: iterable of (x, y) batches.
        metrics: None (accuracy for cross-entropy), ``()``, or ``("accuracy",)``.

    Returns:
        ``{"loss": float, "accuracy": float}`` (accuracy only when measured) and
        ``"examples"``, the number of examples seen.
    """
    with_acc = _wants_accuracy(metrics, loss)
    was_training = model.training
    model.eval()
    total, correct, seen = 0.0, 0, 0
    try:
        for x, y in loader:
            n = int(x.shape[0])
            out = model.forward(x)
            value = loss.forward(out, y)
            mean = getattr(loss, "reduction", "mean") == "mean"
            total += value * n if mean else value  # the batch's sum over examples
            if with_acc:
                correct += batch_accuracy(out, y)
            seen += n
    finally:
        model.clear_cache()
        if was_training:
            model.train()
    if seen == 0:
        raise ValueError("evaluate: the loader gave no batches")
    result = {"loss": total / seen, "examples": seen}
    if with_acc:
        result["accuracy"] = correct / seen
    return result


# -- fit ---------------------------------------------------------------------------------
def _generators(train_loader, val_loader, model, precond):
    """``{name: generator}`` of every random generator the run draws from (for checkpoints)."""
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


def _monitor_key(monitor, val_loader):
    if monitor is not None:
        return monitor
    return "val_loss" if val_loader is not None else "train_loss"


def fit(model, loss, optimizer, train_loader, epochs=1, precond=None, val_loader=None,
        schedule=None, early_stopping=None, monitor=None, restore_best=False, metrics=None,
        progress=None, checkpoint=None, resume=None, log_every=None, log=None, meta=None):
    """Train ``model`` and return its ``History``.

    Args:
        model: the network (a ``Layer``).
        loss: the loss object, e.g. ``SoftmaxCrossEntropy()``.
        optimizer: a ``minidl.optim`` optimizer built from ``model``.
        train_loader: iterable of (x, y) mini-batches on the active device, re-iterated
            every epoch (a ``minidl.data.DataLoader`` reshuffles with its own ``rng``).
        epochs: the total number of epochs (a resumed run counts the finished ones).
        precond: a ``minidl.precond`` preconditioner, stepped between backward and the
            optimizer, or None.
        val_loader: batches evaluated after every epoch, or None.
        schedule: a learning-rate schedule, ``lr = schedule(k)`` for update k = 0, 1, ...
            (``minidl.optim.Cosine(...)`` or any function); set before each update.
        early_stopping: patience P: stop when the monitored metric has not improved for P
            epochs in a row. None never stops early.
        monitor: the metric early stopping watches (``"val_loss"`` by default with a
            validation loader, else ``"train_loss"``); smaller is better except for
            accuracies.
        restore_best: with early stopping, put back the weights of the best epoch at the
            end (a host copy is kept each time the monitored metric improves).
        metrics: None (accuracy when the loss is cross-entropy), ``()`` or ``("accuracy",)``.
        progress: True or False for a progress bar on standard error; None (default) shows
            it only when standard error is a terminal.
        checkpoint: path of a checkpoint written (atomically) after every epoch.
        resume: path of a checkpoint to continue from (model, optimizer, preconditioner,
            generators and history); epochs already done are skipped.
        log_every: None prints one line per epoch; n > 0 also prints the running
            training loss every n steps; 0 prints nothing.
        log: function receiving each log line (default ``print``).
        meta: dict stored in ``history.meta`` (a label, settings).

    Returns:
        A ``History``.
    """
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
    if early_stopping is not None and (int(early_stopping) != early_stopping
                                       or early_stopping < 1):
        raise ValueError(f"fit: early_stopping is a patience in epochs, an integer >= 1, "
                         f"got {early_stopping!r}")
    if log_every is not None and (int(log_every) != log_every or log_every < 0):
        raise ValueError(f"fit: log_every must be None or an integer >= 0, got {log_every!r}")
    log = print if log is None else log
    quiet = log_every == 0
    with_acc = _wants_accuracy(metrics, loss)
    generators = _generators(train_loader, val_loader, model, precond)
    monitor = _monitor_key(monitor, val_loader)
    higher_is_better = "accuracy" in monitor
    if progress is None:
        progress = is_terminal(sys.stderr)

    history = History(meta)
    history.meta.setdefault("optimizer", type(optimizer).__name__)
    history.meta.setdefault("precond", type(precond).__name__ if precond is not None else None)
    history.meta.setdefault("num_params", model.num_params())
    start_epoch = 0
    if resume is not None:
        from . import checkpoint as ckpt
        ck = ckpt.load(resume, model, optimizer, precond, rng=generators)
        start_epoch = ck.epoch
        if isinstance(ck.extra, dict) and isinstance(ck.extra.get("history"), dict):
            history = History.from_dict(ck.extra["history"])
            history.stop_reason = None
    time_so_far = history.last.get("time", 0.0)
    wall_offset = history.last.get("wall", 0.0)
    wall_start = time.perf_counter()
    best_value, best_epoch, best_state = None, None, None
    for e in history.epochs:  # a resumed run remembers its best epoch so far
        value = e.get(monitor, float("nan"))
        if math.isfinite(value) and (best_value is None or (
                value > best_value if higher_is_better else value < best_value)):
            best_value, best_epoch = value, e["epoch"]

    for epoch in range(start_epoch + 1, int(epochs) + 1):
        model.train()
        bar = ProgressBar(total=_length(train_loader), desc=f"epoch {epoch}/{epochs}",
                          enabled=progress)
        loss_sum, correct, seen = 0.0, 0, 0
        epoch_time = 0.0
        diverged = False
        tick = time.perf_counter()
        for x, y in train_loader:
            if schedule is not None:  # k = updates taken so far (restored on resume)
                optimizer.lr = schedule(getattr(optimizer, "t", len(history.steps["step"])))
            n = int(x.shape[0])
            out = model.forward(x)                      # (N, K) scores
            loss_value = loss.forward(out, y)           # a float: the mean over the batch
            model.backward(loss.backward())             # fills every layer.grads
            if precond is not None:
                precond.step()                          # grads -> preconditioned directions
            optimizer.step()                            # params -= lr * direction
            # backward overwrites the grads (no accumulation), so no zero_grad is needed
            if with_acc:
                correct += batch_accuracy(out, y)
            now = time.perf_counter()
            epoch_time += now - tick
            history.record_step(loss_value, time_so_far + epoch_time, epoch)
            loss_sum += loss_value * n
            seen += n
            bar.update(n, loss=loss_value)
            if log_every and len(history.steps["step"]) % log_every == 0:
                log(f"  step {len(history.steps['step'])}  loss {loss_value:.4f}  "
                    f"lr {optimizer.lr:.3g}")
            if not math.isfinite(loss_value):
                diverged = True
                break
            tick = time.perf_counter()
        bar.close()
        if seen == 0:
            raise ValueError("fit: the training loader gave no batches (is the data set "
                             "smaller than one batch with drop_last=True?)")
        time_so_far += epoch_time
        record = {"epoch": epoch, "train_loss": loss_sum / seen}
        if with_acc:
            record["train_accuracy"] = correct / seen
        if val_loader is not None and not diverged:
            val = evaluate(model, loss, val_loader, metrics=metrics)
            record["val_loss"] = val["loss"]
            if "accuracy" in val:
                record["val_accuracy"] = val["accuracy"]
        record.update(lr=float(optimizer.lr), epoch_time=epoch_time, time=time_so_far,
                      examples=seen, throughput=seen / epoch_time if epoch_time > 0 else 0.0)
        if diverged:
            history.stop_reason = (f"diverged: the training loss became {loss_value} in epoch "
                                   f"{epoch}, step {len(history.steps['step'])}")
        else:
            value = record.get(monitor, float("nan"))
            if math.isfinite(value) and (best_value is None or (
                    value > best_value if higher_is_better else value < best_value)):
                best_value, best_epoch = value, epoch
                if restore_best and early_stopping is not None:
                    best_state = model.state_dict()
            if early_stopping is not None and best_epoch is not None \
                    and epoch - best_epoch >= early_stopping:
                history.stop_reason = (f"early stopping: {monitor} has not improved for "
                                       f"{early_stopping} epochs (best {best_value:.4g} "
                                       f"at epoch {best_epoch})")
        record["wall"] = wall_offset + time.perf_counter() - wall_start
        history.epochs.append(record)
        if checkpoint is not None:
            from . import checkpoint as ckpt
            ckpt.save(checkpoint, model, optimizer, precond, epoch=epoch, rng=generators,
                      extra={"history": history.to_dict()})
        if not quiet:
            log(_summary(record, epochs))
        if history.stop_reason is not None:
            if not quiet:
                log(history.stop_reason)
            break
    if best_state is not None and history.stop_reason and \
            history.stop_reason.startswith("early"):
        model.load_state_dict(best_state)
    model.clear_cache()
    return history


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
