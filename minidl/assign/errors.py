"""The two ways ``minidl assign`` refuses: a bad request, and a missing optional extra.

Both are raised before any work starts (nothing is written), and the command line turns
either into one line on stderr and exit status 2, as argparse does for its own errors.
"""
import importlib
import math
import os
import pathlib
import tempfile

__all__ = ["AssignError", "MissingExtraError", "require", "is_seconds",
           "file_in_the_way", "why_unwritable"]

INSTALL_HINT = 'pip install "minidl[assign]"'


class AssignError(Exception):
    """A request that cannot be carried out; the message says what was expected and what
    arrived (a missing folder, a file that is not a master, an output that would be lost)."""


class MissingExtraError(AssignError):
    """Otter-Grader or Jupytext is not installed."""


def require(module):
    """Import and return ``module`` (``"otter"``, ``"jupytext"``, ...) or raise
    ``MissingExtraError`` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"minidl assign needs the package {module!r}, which is not installed ({e}); "
            f"install the assignment tools with: {INSTALL_HINT}") from None


def is_seconds(value):
    """Whether ``value`` can be a time limit: a finite number of seconds above 0 (NaN would
    switch the per-cell alarm off, infinity overflows the timers)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value > 0


def file_in_the_way(path):
    """The nearest existing folder above ``path`` if it is a file (``path`` could never be
    made), else None."""
    parent = pathlib.Path(path).resolve().parent
    while not parent.exists():
        parent = parent.parent
    return None if parent.is_dir() else parent


def why_unwritable(folder):
    """Why no file can be made in ``folder`` (``"Permission denied"``, ...), or None.

    The folder and any missing folders above it are made for the test and taken away
    again, with the test file, so a request refused later leaves nothing behind.
    """
    folder = pathlib.Path(folder).resolve()
    made, missing = [], folder
    while not missing.exists():  # deepest first
        made.append(missing)
        missing = missing.parent
    try:
        for path in reversed(made):
            path.mkdir()
        fd, probe = tempfile.mkstemp(prefix=".minidl-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return err.strerror or str(err)
    finally:
        for path in made:
            try:
                path.rmdir()
            except OSError:
                pass
    return None
