"""Training curves: loss (or any metric) against epochs and against seconds, several runs on
one figure, saved as a PNG.

::

    from minidl import plots
    plots.plot_histories({"sgd": h1, "adam": h2}, path="runs/loss.png")

Plotting against seconds as well as epochs is what makes a comparison of optimizers fair:
a second-order method may win per epoch and lose per second.

Headless safety: figures are made with ``matplotlib.figure.Figure`` and rendered by the Agg
canvas directly, never through ``pyplot``, so nothing opens a window, no display is needed
(servers, CI, SSH sessions), and the global matplotlib backend is left alone. matplotlib
is imported only when a plot is made, so ``import minidl`` does not need it.
"""
import math
import os

__all__ = ["plot_histories", "plot_curves", "require_matplotlib"]


def require_matplotlib():
    """Import matplotlib's Figure and Agg canvas, or raise one clear error saying how to fix it."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as err:
        raise ImportError(f"minidl.plots needs matplotlib ({err}); install it with "
                          "`pip install matplotlib`") from None
    return Figure, FigureCanvasAgg


def _finite_pairs(xs, ys):
    """Drop points where x or y is missing or not finite (a diverged run ends at NaN)."""
    pairs = [(x, y) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(ax, histories, key="train_loss", x="epoch", logy=None, ylabel=None):
    """Draw one line per run onto a matplotlib ``Axes``.

    Args:
        ax: the axes.
        histories: ``{label: History}``.
        key: the per-epoch metric to plot (``"train_loss"``, ``"val_accuracy"``, ...), or
            ``"step_loss"`` for the per-step mini-batch losses.
        x: ``"epoch"`` or ``"time"`` (training seconds).
        logy: log-scale the y axis; None chooses it for losses whose values are positive.
        ylabel: the y axis label (default: the key with spaces).
    """
    positive = True
    drawn = False
    for label, h in histories.items():
        if key == "step_loss":
            steps = h.steps
            n_per_epoch = {}
            for e in steps["epoch"]:
                n_per_epoch[e] = n_per_epoch.get(e, 0) + 1
            if x == "time":
                xs = list(steps["time"])
            else:  # fractional epochs: step i of epoch e with n steps is at e - 1 + (i + 1) / n
                seen, xs = {}, []
                for e in steps["epoch"]:
                    seen[e] = seen.get(e, 0) + 1
                    xs.append(e - 1 + seen[e] / n_per_epoch[e])
            ys = list(steps["loss"])
        else:
            if not any(key in e for e in h.epochs):
                continue
            xs = h[x] if x == "time" else h["epoch"]
            ys = h[key]
        xs, ys = _finite_pairs(xs, ys)
        if not xs:
            continue
        positive = positive and min(ys) > 0
        marker = "o" if key != "step_loss" and len(xs) <= 30 else None
        ax.plot(xs, ys, label=label, marker=marker, markersize=3, linewidth=1.5)
        drawn = True
    if logy is None:
        logy = "loss" in key and positive and drawn
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch" if x == "epoch" else "training time (s)")
    ax.set_ylabel(ylabel or key.replace("_", " "))
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    return drawn


def plot_histories(histories, path=None, keys=("train_loss",), title=None, dpi=120,
                   ylabels=None):
    """One figure: a row per metric, columns against epochs and against seconds.

    Args:
        histories: ``{label: History}``, or a list of histories (labelled by their
            ``meta["label"]`` or their position).
        path: where to save the PNG (folders are made); None only returns the figure.
        keys: metrics to plot, one row each, e.g. ``("train_loss", "val_accuracy")``.
        title: figure title.
        dpi: resolution of the saved image.
        ylabels: ``{key: label}`` for the y axes, e.g. ``{"val_accuracy": "test accuracy"}``.

    Returns:
        The matplotlib ``Figure`` (shown inline by Jupyter; no window is ever opened).
    """
    Figure, FigureCanvasAgg = require_matplotlib()
    if not isinstance(histories, dict):
        histories = {h.meta.get("label") or f"run {i}": h for i, h in enumerate(histories)}
    if isinstance(keys, str):
        keys = (keys,)
    fig = Figure(figsize=(11, 3.6 * len(keys)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 2, squeeze=False)
    for row, key in enumerate(keys):
        for col, x in enumerate(("epoch", "time")):
            plot_curves(axes[row][col], histories, key=key, x=x,
                        ylabel=(ylabels or {}).get(key))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
