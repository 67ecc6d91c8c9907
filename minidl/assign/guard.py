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
"""
import os

__all__ = ["GradingGuard", "install", "DEFAULT_CELL_TIMEOUT", "CELL_TIMEOUT_ENV"]

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
        submission.cells.insert(0, nbformat.v4.new_code_cell(code))
        return submission


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

    def on_alarm(signum, frame):
        signal.setitimer(signal.ITIMER_REAL, 1.0)  # keep at it if the error is swallowed
        raise TimeoutError(f"this cell ran longer than the grader's limit of {limit:g} s "
                           "per cell and was stopped")

    def pre_run_cell(*args):
        signal.setitimer(signal.ITIMER_REAL, limit)

    def post_run_cell(*args):
        signal.setitimer(signal.ITIMER_REAL, 0)
        _restore(home, files)

    signal.signal(signal.SIGALRM, on_alarm)
    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
