"""What a command prints and writes: the results table, summary files and curves.

A run that diverged keeps its row: the status column says at which epoch and step and why
(``diverged at epoch 2, step 37: NaN loss``), and ``curves.png`` shows its curve up to the
divergence with a marker (``minidl.plots``). A run whose loss stayed finite but ended
above where it started (a step size at the edge of stability, the loss growing to 1e3
and beyond) says so too, rather than "ok": ``loss rose: 2.31 at the first step, 110 in
the last epoch``.
"""
import json
import os

__all__ = ["row", "format_table", "write_summary", "write_curves"]

# the command line validates on the test split, so its curves say so
_TEST_LABELS = {"val_loss": "test loss", "val_accuracy": "test accuracy"}


def _status(history, error):
    if error:
        return error
    d = getattr(history, "divergence", None)
    if d is not None:
        return f"diverged at epoch {d['epoch']}, step {d['step']}: {d['cause']}"
    if history.stop_reason:
        return history.stop_reason.split(":")[0]
    first = history.steps["loss"][0] if history.steps["loss"] else None
    last = history.last.get("train_loss")
    if first is not None and last is not None and last > first:
        return f"loss rose: {first:.3g} at the first step, {last:.3g} in the last epoch"
    return "ok"


def row(name, lr, history, error=None):
    """One method's line of the table (a dict of numbers and a status)."""
    last = history.last if history is not None else {}
    epochs = len(history) if history is not None else 0
    seconds = last.get("time", float("nan"))
    return {"method": name, "lr": lr, "epochs": epochs,
            "train_loss": last.get("train_loss", float("nan")),
            "test_loss": last.get("val_loss", float("nan")),
            "test_accuracy": last.get("val_accuracy", float("nan")),
            "seconds_per_epoch": seconds / epochs if epochs else float("nan"),
            "seconds": seconds, "status": _status(history, error)}


def format_table(rows):
    """The comparison table as text, one method per line."""
    head = (f"{'method':<10} {'lr':>8} {'epochs':>6} {'train loss':>10} {'test loss':>10} "
            f"{'test acc':>8} {'s/epoch':>8} {'total s':>8}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = r["test_accuracy"]
        acc_text = f"{100 * acc:7.2f}%" if acc == acc else f"{'-':>8}"
        lines.append(f"{r['method']:<10} {r['lr']:>8.3g} {r['epochs']:>6d} "
                     f"{r['train_loss']:>10.4f} {r['test_loss']:>10.4f} {acc_text} "
                     f"{r['seconds_per_epoch']:>8.2f} {r['seconds']:>8.1f}  {r['status']}")
    return "\n".join(lines)


def write_summary(out, args, rows, histories):
    """``summary.txt`` (the table), ``summary.json`` and ``histories/<method>.json``."""
    def clean(v):
        return None if isinstance(v, float) and v != v else v
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(format_table(rows) + "\n")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "func"},
                   "results": [{k: clean(v) for k, v in r.items()} for r in rows]}, f,
                  indent=1)
    for name, history in histories.items():
        history.to_json(os.path.join(out, "histories", f"{name}.json"))


def write_curves(path, histories, title=None):
    """``curves.png``: training loss, and test accuracy (or loss), against epochs and
    seconds; diverged runs end in a marker."""
    from .. import plots
    with_acc = any("val_accuracy" in h.keys() for h in histories.values())
    keys = ("train_loss", "val_accuracy" if with_acc else "val_loss")
    plots.plot_histories(histories, path, keys=keys, title=title, ylabels=_TEST_LABELS)
