"""Course assignments: release and grade minidl's Otter-Grader assignments.

Otter-Grader does the work (strip solutions and hidden tests, build the Gradescope
autograder, run a notebook and score it); this package is the glue and the checks around it:

* ``master``  reads a Jupytext percent master and refuses one that would leak;
* ``release`` runs Otter Assign on it, then searches the student files for every solution
  and hidden-test line (``leaks``) before anything is written to ``--out``;
* ``grade``   runs Otter's local runner (``runner``) in a child process with a wall-clock
  limit, and ``guard`` (an Otter plugin) limits each cell and keeps ``tests/`` in place;
* ``results`` reads Gradescope-format scores; ``command`` is the command line.

Otter-Grader and Jupytext are the optional extra ``pip install "minidl[assign]"``; they are
imported only when a command runs, so ``import minidl`` never needs them.
"""
from .command import main
from .errors import AssignError, MissingExtraError

__all__ = ["main", "release", "grade", "AssignError", "MissingExtraError"]


def release(*args, **kwargs):
    """``minidl.assign.release.release`` (imported on use)."""
    from .release import release as _release
    return _release(*args, **kwargs)


def grade(*args, **kwargs):
    """``minidl.assign.grade.grade`` (imported on use)."""
    from .grade import grade as _grade
    return _grade(*args, **kwargs)
