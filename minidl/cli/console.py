"""Standard output that cannot stop a run.

``minidl compare | head -1`` closes the pipe after one line, ``> /dev/full`` has no room:
either way the next ``print`` raises ``OSError`` (``BrokenPipeError``), which used to end
the command with a traceback before it had written any of its files. Inside
``guarded_stdout()`` the first failed write is remembered and everything printed after it
is dropped, so training goes on and the files are written; the command then says so on
standard error and exits with status 1.
"""
import contextlib
import os
import sys

__all__ = ["GuardedStdout", "guarded_stdout"]


class GuardedStdout:
    """Wraps a text stream: writes go through until one fails, then are dropped.

    ``error`` is the first ``OSError`` (None while every write succeeded).
    """

    def __init__(self, stream):
        self.stream = stream
        self.error = None

    def write(self, text):
        if self.error is None:
            try:
                return self.stream.write(text)
            except OSError as err:
                self._failed(err)
        return len(text)

    def flush(self):
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as err:
                self._failed(err)

    def _failed(self, err):
        self.error = err
        # the interpreter flushes the real stdout once more at exit, which would fail again
        # ("Exception ignored ... BrokenPipeError"): point its file descriptor at /dev/null
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
            pass

    def __getattr__(self, name):  # isatty, encoding, fileno, ... of the wrapped stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def guarded_stdout():
    """``sys.stdout`` is a ``GuardedStdout`` inside; yields it (its ``error`` says whether a
    write failed)."""
    real = sys.stdout
    guard = GuardedStdout(real)
    if real is None:  # started with standard output closed: print() already prints nothing
        yield guard
        return
    sys.stdout = guard
    try:
        yield guard
    finally:
        sys.stdout = real
