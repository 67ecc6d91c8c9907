"""The best epoch so far, its weights, and early stopping.

``BestEpoch`` watches one metric of the epoch records (``val_loss`` by default; larger is
better for accuracies, smaller for everything else). After each epoch, ``update(record,
model)`` notes whether the metric improved and, if asked to, keeps a host copy of the
weights of that epoch; ``patience_ran_out(epoch)`` is the early-stopping test (no
improvement for ``patience`` epochs in a row); ``restore(model)`` puts the best weights
back, whatever ended the run. ``to_meta``/``from_checkpoint`` carry all of it across a
checkpoint, so a resumed run still knows its best epoch and its weights.
"""
import math

__all__ = ["BestEpoch"]


class BestEpoch:
    """Tracks the best value of ``monitor`` over the epochs.

    Args:
        monitor: the metric (a key of the epoch records), e.g. ``"val_loss"``.
        patience: early-stopping patience in epochs, or None to never stop early.
        keep_weights: keep a host copy of the weights of the best epoch.

    Attributes:
        value, epoch: the best value and its (1-based) epoch, or None before any.
        state: the best epoch's ``model.state_dict()`` (with ``keep_weights``), or None.
    """

    def __init__(self, monitor, patience=None, keep_weights=False):
        self.monitor = monitor
        self.patience = patience
        self.keep_weights = keep_weights
        self.higher_is_better = "accuracy" in monitor
        self.value, self.epoch, self.state = None, None, None

    def improves(self, value):
        """True when ``value`` is finite and better than the best so far."""
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.higher_is_better else value < self.value

    def update(self, record, model=None):
        """Look at one epoch's record; keep its weights when it is the best. Returns bool."""
        value = record.get(self.monitor, float("nan"))
        if not self.improves(value):
            return False
        self.value, self.epoch = value, record["epoch"]
        if self.keep_weights and model is not None:
            self.state = model.state_dict()  # host copies
        return True

    def patience_ran_out(self, epoch):
        """True when ``patience`` epochs have passed since the best one."""
        return (self.patience is not None and self.epoch is not None
                and epoch - self.epoch >= self.patience)

    def stop_reason(self):
        return (f"early stopping: {self.monitor} has not improved for {self.patience} "
                f"epochs (best {self.value:.4g} at epoch {self.epoch})")

    def restore(self, model):
        """Load the best epoch's weights into ``model`` (when they were kept)."""
        if self.state is not None:
            model.load_state_dict(self.state)

    # -- across a checkpoint -----------------------------------------------------------
    def to_meta(self):
        """JSON-able description of the best epoch (its weights travel separately)."""
        return {"monitor": self.monitor, "epoch": self.epoch, "value": self.value}

    def from_checkpoint(self, history, last_weights, saved_meta, saved_state, epochs_done):
        """Rebuild the best epoch of a resumed run.

        Args:
            history: the resumed ``History``; its records give the best epoch.
            last_weights: the checkpoint's own (last epoch's) weights, a model
                ``state_dict()`` (host arrays); nothing is loaded into the model here.
            saved_meta: ``to_meta()`` as stored in the checkpoint, or None.
            saved_state: the best weights stored in the checkpoint, or None.
            epochs_done: the epochs the checkpoint had finished.

        Raises:
            ValueError: weights are to be kept but the checkpoint does not hold those of
                the best epoch (it was written without them, or watched another metric).
        """
        keep, self.keep_weights = self.keep_weights, False
        for record in history.epochs:
            self.update(record)
        self.keep_weights = keep
        if not keep or self.epoch is None:
            return
        same = (isinstance(saved_meta, dict) and saved_meta.get("monitor") == self.monitor
                and saved_meta.get("epoch") == self.epoch)
        if same and saved_state:
            self.state = dict(saved_state)
        elif self.epoch == epochs_done:
            self.state = dict(last_weights)
        else:
            raise ValueError(
                f"cannot restore the best weights: the checkpoint's best {self.monitor} "
                f"is at epoch {self.epoch}, but it does not hold that epoch's weights "
                "(written by an older minidl, or watching another metric); resume "
                "without restore_best, or with the monitor it was written with")
