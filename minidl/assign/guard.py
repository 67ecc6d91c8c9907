"""Grading guard: a time limit per notebook cell, and the grader's files kept in place.

Otter runs a submission top to bottom in a Jupyter kernel and checks each question in that
kernel, reading the test files from ``tests/`` in the submission's folder. Two things a
student's notebook can do would cost marks it earned, or hang the grader:

* a cell that never ends (``while True``, a training run left in): Otter sets no time limit;
* a cell that deletes or rewrites files in its folder, or changes directory: the checks of
  later questions can no longer find ``tests/``.

``GradingGuard`` is an Otter plugin (listed in the assignment config, so it runs in
``otter run``, in ``minidl assign grade`` and on Gradescope alike). Before execution it puts
one cell at the top of the submission that calls ``install``: from then on each cell gets a
SIGALRM after ``cell_timeout`` seconds, which raises ``TimeoutError`` inside it (and again
every second while something swallows it), and after each cell the working directory and
every file of ``tests/`` are put back as they were. The student's own outputs and the
remaining cells run on, so every question is scored on what the notebook actually did.
Whatever this cannot stop (a C loop that ignores signals, a dead kernel) is cut off by the
wall-clock limit of ``minidl.assign.grade`` around the whole run.

The tests run in the student's kernel, so a notebook could also fake a pass by replacing
what they call: ``minidl.gradcheck.check_layer = lambda *a, **k: ...``, ``numpy.allclose =
lambda *a, **k: True``, a method of a minidl, Otter or doctest class, or a module in
``sys.modules``. ``install`` records the functions and classes of those modules (numpy,
minidl, otter, doctest, pickle, math; the ones the tests use are imported first) before any
student code runs, and after every cell puts back whatever was replaced and removes
methods added to their classes, saying so on stderr. A check the notebook runs itself
(``grader.check("q1")`` right after such a patch, in the same cell) does not count either:
the results Otter recorded are dropped after every cell, so every question is scored by
Otter's last cell, which runs all the tests after the whole notebook (the release's own
``grader.check`` cells are left out of the graded copy: they would only run the tests
twice). This is a speed bump, not a sandbox: code in the same process that unhooks the
guard, patches while a test is calling it, or edits internal state can still cheat
(assignments/README.md says what is not prevented).
"""
import os
import re
import sys

__all__ = ["GradingGuard", "install", "Pristine", "PROTECTED", "DEFAULT_CELL_TIMEOUT",
           "CELL_TIMEOUT_ENV"]

DEFAULT_CELL_TIMEOUT = 60          # seconds per cell
CELL_TIMEOUT_ENV = "MINIDL_ASSIGN_CELL_TIMEOUT"   # overrides the zip's value when set

_CELL = """\
from minidl.assign.guard import install as _minidl_guard_install
_minidl_guard_install(cell_timeout={timeout!r}, tests_dir="tests")
del _minidl_guard_install"""


class GradingGuard:
    """Otter plugin; its config may set ``cell_timeout`` (seconds, default 60).

    Otter calls a plugin's event methods only where it has them (``hasattr``), so this class
    needs no Otter base class and importing it needs no Otter: it implements one event,
    ``before_execution``.
    """

    def __init__(self, submission_path, submission_metadata, plugin_config):
        self.submission_path = submission_path
        self.submission_metadata = submission_metadata
        self.plugin_config = plugin_config or {}

    def cell_timeout(self):
        """The limit in seconds: the environment override, the plugin config, or 60."""
        value = os.environ.get(CELL_TIMEOUT_ENV) or self.plugin_config.get(
            "cell_timeout", DEFAULT_CELL_TIMEOUT)
        return float(value)

    def before_execution(self, submission):
        """Put the guard cell first (a notebook; a script gets the same code prepended)."""
        code = _CELL.format(timeout=self.cell_timeout())
        if isinstance(submission, str):
            return code + "\n" + submission
        import nbformat
        submission.cells = [c for c in submission.cells
                            if not (c.cell_type == "code" and _CHECK_CELL.match(c.source))]
        submission.cells.insert(0, nbformat.v4.new_code_cell(code))
        return submission


# modules whose functions and classes a submission must not replace, and the ones imported
# before student code runs (the tests' own imports; a module first imported by the student
# is recorded after the cell that imported it)
PROTECTED = ("numpy", "minidl", "otter", "doctest", "pickle", "math")
PRELOAD = ("numpy", "numpy.linalg", "numpy.testing", "doctest", "pickle", "math", "minidl",
           "minidl.gradcheck", "minidl.layers", "minidl.losses", "minidl.optim",
           "minidl.curvature", "minidl.precond", "minidl.assign.feedback", "otter.execute",
           "otter.test_files")


def _protected(name):
    return any(name == p or name.startswith(p + ".") for p in PROTECTED)


def _is_code(value):
    return callable(value) or isinstance(value, (staticmethod, classmethod, property))


class Pristine:
    """The functions and classes of the protected modules as they were, and their restorer."""

    def __init__(self):
        self.modules = {}   # name -> module object
        self.attrs = {}     # name -> {attribute: function or class}
        self.classes = {}   # id -> (class, {attribute: method or descriptor})

    def record(self):
        """Record every protected module in ``sys.modules`` not recorded yet."""
        for name, module in list(sys.modules.items()):
            if name in self.modules or module is None or not _protected(name):
                continue
            self.modules[name] = module
            saved = {k: v for k, v in list(vars(module).items()) if _is_code(v)}
            self.attrs[name] = saved
            for value in saved.values():
                if (isinstance(value, type) and getattr(value, "__module__", None) == name
                        and id(value) not in self.classes):
                    self.classes[id(value)] = (value, {k: a for k, a in vars(value).items()
                                                       if _is_code(a)})

    def restore(self):
        """Put back what was replaced; return the names put back."""
        fixed = []
        for name, module in self.modules.items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module
                fixed.append(name)
            current = vars(module)
            for key, value in self.attrs[name].items():
                if current.get(key) is not value:
                    current[key] = value
                    fixed.append(f"{name}.{key}")
        for cls, saved in self.classes.values():
            current = dict(vars(cls))
            added = [k for k, a in current.items() if k not in saved and _is_code(a)]
            changed = [k for k, a in saved.items() if current.get(k) is not a]
            for key in changed + added:
                try:
                    if key in added:
                        delattr(cls, key)
                    else:
                        setattr(cls, key, saved[key])
                except (AttributeError, TypeError):  # a built-in type: cannot be patched
                    continue
                fixed.append(f"{cls.__module__}.{cls.__qualname__}.{key}")
        return fixed


# a cell that only runs public tests, as the release has after each question
_CHECK_CELL = re.compile(r'\s*(grader\.check\(\s*"[^"]*"\s*\)|grader\.check_all\(\s*\))\s*\Z')


def _forget_checks():
    """Drop the check results Otter recorded so far (its last cell runs every test)."""
    try:
        from otter.execute import Checker
    except ImportError:
        return
    Checker.clear_results()


def _snapshot(tests_dir):
    files = {}
    for root, _, names in os.walk(tests_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[path] = f.read()
    return files


def _restore(home, files):
    try:
        os.chdir(home)
    except OSError:
        os.makedirs(home, exist_ok=True)
        os.chdir(home)
    for path, data in files.items():
        try:
            with open(path, "rb") as f:
                same = f.read() == data
        except OSError:
            same = False
        if not same:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)


def install(cell_timeout=DEFAULT_CELL_TIMEOUT, tests_dir="tests"):
    """Arm the per-cell time limit and the file restorer in the running IPython kernel."""
    import signal

    from IPython import get_ipython

    shell = get_ipython()
    home = os.getcwd()
    files = _snapshot(os.path.abspath(tests_dir))
    limit = float(cell_timeout)
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    pristine = Pristine()
    pristine.record()

    def on_alarm(signum, frame):
        signal.setitimer(signal.ITIMER_REAL, 1.0)  # keep at it if the error is swallowed
        raise TimeoutError(f"this cell ran longer than the grader's limit of {limit:g} s "
                           "per cell and was stopped")

    def pre_run_cell(*args):
        signal.setitimer(signal.ITIMER_REAL, limit)

    def post_run_cell(*args):
        signal.setitimer(signal.ITIMER_REAL, 0)
        _restore(home, files)
        fixed = pristine.restore()
        if fixed:
            print(f"grader: put back {', '.join(fixed[:5])}{' ...' if len(fixed) > 5 else ''}"
                  " (replaced by this notebook; tests use the originals)", file=sys.stderr)
        pristine.record()
        _forget_checks()

    signal.signal(signal.SIGALRM, on_alarm)
    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
