"""A small text progress bar for training loops: steps done, loss and examples per second.

::

    bar = ProgressBar(total=len(loader), desc="epoch 1/5")
    for xb, yb in loader:
        ...
        bar.update(len(xb), loss=loss_value)
    bar.close()

prints, redrawn in place on one line of standard error::

    epoch 1/5 [##########..........]  235/469 loss 0.3121  18,532 ex/s  0:06

The bar draws only when its stream is a terminal (``stream.isatty()``), so logs, pipes,
CI output and test captures never fill with carriage returns; pass ``enabled=True`` or
``False`` to decide yourself. It redraws at most every ``min_interval`` seconds, so a fast
loop pays almost nothing for it.
"""
import sys
import time

__all__ = ["ProgressBar", "is_terminal", "format_seconds"]


def is_terminal(stream):
    """True when ``stream`` is an interactive terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def format_seconds(seconds):
    """``h:mm:ss`` or ``m:ss`` for a duration in seconds."""
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """One-line progress bar with the running loss and the throughput.

    Args:
        total: the number of steps expected (``len(loader)``); None when unknown.
        desc: text shown before the bar, e.g. ``"epoch 3/10"``.
        stream: where to draw (default ``sys.stderr``, looked up when the bar is made).
        enabled: True or False to force the bar on or off; None (default) draws only when
            ``stream`` is a terminal.
        width: number of characters of the bar itself.
        min_interval: smallest time in seconds between two redraws.
        clock: the function giving the time in seconds (``time.perf_counter``); tests
            pass a fake one.
    """

    def __init__(self, total=None, desc="", stream=None, enabled=None, width=24,
                 min_interval=0.1, clock=time.perf_counter):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = is_terminal(self.stream) if enabled is None else bool(enabled)
        self.total = None if total is None else int(total)
        self.desc = desc
        self.width = int(width)
        self.min_interval = float(min_interval)
        self.clock = clock
        self.start = clock()
        self.steps = 0          # update() calls so far
        self.examples = 0       # examples counted so far
        self.loss = None        # the running mean of the losses passed to update()
        self.extra = {}         # other numbers shown after the loss
        self._loss_sum = 0.0
        self._loss_count = 0
        self._last_draw = -float("inf")
        self._width_drawn = 0
        self.closed = False

    def update(self, examples=0, loss=None, **extra):
        """Record one finished step.

        Args:
            examples: how many examples the step processed (for the ex/s figure).
            loss: the step's loss; the bar shows the mean over the steps so far.
            **extra: other numbers to show, e.g. ``acc=0.93``.
        """
        self.steps += 1
        self.examples += int(examples)
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_count += 1
            self.loss = self._loss_sum / self._loss_count
        self.extra.update(extra)
        now = self.clock()
        done = self.total is not None and self.steps >= self.total
        if self.enabled and (done or now - self._last_draw >= self.min_interval):
            self._draw(now)

    def text(self, now=None):
        """The line the bar would draw now (without the carriage return)."""
        now = self.clock() if now is None else now
        elapsed = now - self.start
        parts = [self.desc] if self.desc else []
        if self.total:
            filled = int(self.width * min(self.steps, self.total) / self.total)
            parts.append("[" + "#" * filled + "." * (self.width - filled) + "]")
            digits = len(str(self.total))
            parts.append(f"{self.steps:>{digits}}/{self.total}")
        else:
            parts.append(f"{self.steps} steps")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        for key, value in self.extra.items():
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        if elapsed > 0 and self.examples:
            parts.append(f"{self.examples / elapsed:,.0f} ex/s")
        parts.append(format_seconds(elapsed))
        return " ".join(parts)

    def _draw(self, now):
        line = self.text(now)
        pad = max(self._width_drawn - len(line), 0)  # blank out a longer previous line
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width_drawn = len(line)
        self._last_draw = now

    def close(self, message=None):
        """Finish the line (draw the final state, then a newline); idempotent.

        Args:
            message: text appended to the final line, e.g. the validation accuracy.
        """
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        line = self.text()
        if message:
            line = f"{line}  {message}"
        pad = max(self._width_drawn - len(line), 0)
        self.stream.write("\r" + line + " " * pad + "\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
