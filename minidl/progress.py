"""Progress bars for training loops, drawn by tqdm (``tqdm.auto``).

::

    bar = ProgressBar(total=len(loader), desc="epoch 1/5")
    for xb, yb in loader:
        ...
        bar.update(len(xb), loss=loss_value)
    bar.close()

draws, on standard error in a terminal (or as a widget in a Jupyter notebook)::

    epoch 1/5:  50%|#####     | 235/469 [00:06<00:06, 37.1batch/s, loss=0.3121]

The bar appears only in a terminal or a notebook, so logs, pipes, CI output and test
captures never fill with carriage returns; ``enabled=True`` or ``False`` decides
yourself. tqdm redraws at most ten times a second, so a fast loop pays almost nothing.
"""
import sys

__all__ = ["ProgressBar", "is_terminal", "in_notebook", "format_seconds"]


def is_terminal(stream):
    """True when ``stream`` is an interactive terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def in_notebook():
    """True inside a Jupyter kernel (where tqdm.auto draws a notebook widget)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def format_seconds(seconds):
    """``h:mm:ss`` or ``m:ss`` for a duration in seconds."""
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _tqdm_class(stream):
    """tqdm.auto's class (a widget in notebooks), or the text bar for a given stream.

    tqdm's notebook widget needs ipywidgets; without it ``tqdm.auto`` warns inside the
    notebook and falls back to text, so we pick the text bar ourselves in that case.
    """
    import importlib.util
    if stream is None and (not in_notebook() or importlib.util.find_spec("ipywidgets")):
        from tqdm.auto import tqdm
        return tqdm
    from tqdm.std import tqdm
    return tqdm


class ProgressBar:
    """One bar per epoch: batches done, the running mean loss, batches per second.

    Args:
        total: the number of steps expected (``len(loader)``); None when unknown.
        desc: text shown before the bar, e.g. ``"epoch 3/10"``.
        stream: where a text bar draws (default: standard error, or a notebook widget).
        enabled: True or False to force the bar on or off; None (default) draws only in
            a terminal or a notebook.
    """

    def __init__(self, total=None, desc="", stream=None, enabled=None):
        if enabled is None:
            target = sys.stderr if stream is None else stream
            enabled = is_terminal(target) or (stream is None and in_notebook())
        self.enabled = bool(enabled)
        self.bar = None
        self.loss = None        # the running mean of the losses passed to update()
        self._loss_sum, self._loss_count = 0.0, 0
        if self.enabled:
            tqdm = _tqdm_class(stream)
            kw = {} if stream is None else {"file": stream}
            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=True,
                            dynamic_ncols=True, **kw)

    def update(self, examples=0, loss=None):
        """Record one finished step (``examples`` is kept for compatibility)."""
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_count += 1
            self.loss = self._loss_sum / self._loss_count
        if self.bar is not None:
            if self.loss is not None:
                self.bar.set_postfix_str(f"loss={self.loss:.4f}", refresh=False)
            self.bar.update(1)

    def close(self, message=None):
        """Finish the bar (idempotent); ``message`` is appended to its last line."""
        if self.bar is not None:
            if message:
                loss = f"loss={self.loss:.4f}, " if self.loss is not None else ""
                self.bar.set_postfix_str(loss + message, refresh=False)
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
