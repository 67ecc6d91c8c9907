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


def _divergence_x(h, x, key):
    """Where a diverged run stopped on the x axis: its epoch (or fractional epoch for
    per-step curves), or its training time."""
    d = h.divergence
    steps = h.steps
    index = min(max(int(d["step"]) - 1, 0), len(steps["step"]) - 1) if steps["step"] else None
    if x == "time":
        return steps["time"][index] if index is not None else None
    if key == "step_loss" and index is not None:
        epoch = steps["epoch"][index]
        in_epoch = [i for i, e in enumerate(steps["epoch"]) if e == epoch]
        previous = [i for i, e in enumerate(steps["epoch"]) if e == epoch - 1]
        per_epoch = max(len(previous), len(in_epoch))
        return epoch - 1 + (in_epoch.index(index) + 1) / per_epoch
    return d["epoch"]


def _mark_divergence(ax, h, x, key, xs, ys, label, color):
    """An "x" where the run diverged, at the end of its curve (or at the top of the axes
    when nothing finite was drawn), labelled with the cause in the legend."""
    d = h.divergence
    where = _divergence_x(h, x, key)
    if where is None:
        return
    note = f"{label}: diverged ({d['cause']}, epoch {d['epoch']}, step {d['step']})"
    if ys:
        ax.plot([xs[-1], where], [ys[-1], ys[-1]], linestyle=":", color=color, linewidth=1)
        ax.plot([where], [ys[-1]], marker="X", markersize=9, color=color, linestyle="none",
                label=note)
    else:
        ax.plot([where], [0.97], marker="X", markersize=9, color=color, linestyle="none",
                label=note, transform=ax.get_xaxis_transform(), clip_on=False)


def plot_curves(ax, histories, key="train_loss", x="epoch", logy=None, ylabel=None):
    """Draw one line per run onto a matplotlib ``Axes``.

    A run that diverged (``history.divergence``) keeps its curve up to the divergence,
    ends in an "x" marker where it diverged, and says why in the legend; a run that
    diverged before any finite value still gets its marker (at the top of the axes).

    Args:
        ax: the axes.
        histories: ``{label: History}``.
        key: the per-epoch metric to plot (``"train_loss"``, ``"val_accuracy"``, ...), or
            ``"step_loss"`` for the per-step mini-batch losses.
        x: ``"epoch"`` or ``"time"`` (training seconds).
        logy: log-scale the y axis; None chooses it for losses whose values are positive.
        ylabel: the y axis label (default: the key with spaces).

    Returns:
        True when anything was drawn.
    """
    positive = True
    drawn = False
    for i, (label, h) in enumerate(histories.items()):
        color = f"C{i % 10}"
        diverged = getattr(h, "divergence", None) is not None
        if key == "step_loss":
            xs, ys = _step_curve(h, x)
        elif any(key in e for e in h.epochs):
            xs = h[x] if x == "time" else h["epoch"]
            ys = h[key]
        elif diverged and any("train_loss" in e for e in h.epochs):
            xs, ys = [], []  # diverged before the first validation: only the marker
        else:
            continue
        xs, ys = _finite_pairs(xs, ys)
        if xs:
            positive = positive and min(ys) > 0
            marker = "o" if key != "step_loss" and len(xs) <= 30 else None
            ax.plot(xs, ys, label=None if diverged else label, marker=marker, markersize=3,
                    linewidth=1.5, color=color)
            drawn = True
        if diverged:
            _mark_divergence(ax, h, x, key, xs, ys, label, color)
            drawn = True
    if logy is None:
        logy = "loss" in key and positive and drawn
    if logy:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if high < 10 * low:  # less than a decade: "2.25", not "2.25 x 10^0"
            from matplotlib.ticker import FuncFormatter
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("epoch" if x == "epoch" else "training time (s)")
    if x == "epoch":  # ticks at whole epochs, not at 1.2, 1.4, ...
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel or key.replace("_", " "))
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    return drawn


def _step_curve(h, x):
    """Per-step losses against training time or fractional epochs (step i of epoch e
    with n steps sits at e - 1 + (i + 1) / n)."""
    steps = h.steps
    if x == "time":
        return list(steps["time"]), list(steps["loss"])
    n_per_epoch = {}
    for e in steps["epoch"]:
        n_per_epoch[e] = n_per_epoch.get(e, 0) + 1
    seen, xs = {}, []
    for e in steps["epoch"]:
        seen[e] = seen.get(e, 0) + 1
        xs.append(e - 1 + seen[e] / n_per_epoch[e])
    return xs, list(steps["loss"])


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
