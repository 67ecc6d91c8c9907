"""``History``: what ``fit`` measured, per epoch and per step, and how the run ended.

A history is plain data (lists of dicts of floats) so that it can be written to JSON,
read back, plotted and compared across runs. ``history["val_loss"]`` gives one metric as a
list over the epochs; ``history.divergence`` says where and why a run diverged.
"""
import json
import math
import os

__all__ = ["History"]


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
        divergence: None, or where and why the run diverged: ``{"epoch", "step",
            "cause", "detail"}`` (``cause`` is short, e.g. ``"NaN loss"`` or
            ``"linear-algebra failure"``; ``step`` counts updates from 1 over the run).

    ``history["val_loss"]`` gives one metric as a list over the epochs.
    """

    STEP_KEYS = ("step", "epoch", "loss", "time")

    def __init__(self, meta=None):
        self.meta = dict(meta or {})
        self.epochs = []
        self.steps = {key: [] for key in self.STEP_KEYS}
        self.stop_reason = None
        self.divergence = None

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
                           "stop_reason": self.stop_reason, "divergence": self.divergence})

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
        h.divergence = data.get("divergence")
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
        from .. import plots
        label = self.meta.get("label") or self.meta.get("optimizer") or "run"
        return plots.plot_histories({label: self}, path=path, **kw)

    def __repr__(self):
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.last.items()
                         if isinstance(v, float) and k not in ("time", "wall"))
        return f"History({len(self)} epochs; last: {last})"
