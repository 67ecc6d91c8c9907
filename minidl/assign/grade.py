"""``minidl assign grade``: one submission, graded locally by Otter, within a time limit.

The checks that refuse before any work starts: the zip exists and is an Otter autograder
zip (``otter_config.json`` and ``tests/`` inside), the submission exists and is a Jupyter
notebook that ``nbformat`` can read, the results path is not a folder, not the submission
or the zip, not under a file, and its folder can be written.

Grading runs ``minidl.assign.runner`` in a child process of its own session. Inside it,
Otter executes the notebook with the guard plugin of the release (a time limit per cell,
``tests/`` restored after every cell); around it, ``timeout`` seconds of wall-clock time
for the whole run. When that runs out, the whole process group (the Jupyter kernel too) is
killed and the results give every question 0 with the reason, so a notebook that hangs
cannot hang the grader.

The child also gets a scratch home folder (``HOME`` points into the grading folder), so a
notebook that runs ``rm -rf ~`` deletes that, not the grader's own home; the grader's
Jupyter kernels and Python user packages stay visible (``JUPYTER_PATH``,
``PYTHONUSERBASE``), except that the kernel named ``python3`` is always the Python running
the grader (``minidl.assign.kernel``). Anything else a notebook can reach by an absolute
path, it can still touch: grade untrusted notebooks as a user without rights to your
files, or in a container.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import zipfile

from .errors import AssignError, file_in_the_way, is_seconds, require, why_unwritable
from .guard import CELL_TIMEOUT_ENV
from .kernel import kernel_of_this_python
from .results import error_results, scores

__all__ = ["grade", "DEFAULT_TIMEOUT", "check_inputs"]

DEFAULT_TIMEOUT = 600  # seconds for one whole submission


def check_inputs(zip_path, submission, results_path=None):
    """Refuse bad paths before any work starts (``AssignError`` saying what is wrong)."""
    zip_path, submission = pathlib.Path(zip_path), pathlib.Path(submission)
    if not zip_path.is_file():
        raise AssignError(f"expected the autograder zip written by 'minidl assign release' "
                          f"(OUT/autograder/*.zip), got '{zip_path}', which "
                          f"{'is a folder' if zip_path.is_dir() else 'does not exist'}")
    if not zipfile.is_zipfile(zip_path):
        raise AssignError(f"'{zip_path}' is not a zip file; pass the autograder zip from "
                          "OUT/autograder/")
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    if "otter_config.json" not in names or not any(n.startswith("tests/") for n in names):
        raise AssignError(f"'{zip_path}' is a zip but not an Otter autograder zip (no "
                          "otter_config.json and tests/ inside)")
    if not submission.is_file():
        raise AssignError(f"expected a submitted notebook (.ipynb), got '{submission}', which "
                          f"{'is a folder' if submission.is_dir() else 'does not exist'}")
    if submission.suffix != ".ipynb":
        raise AssignError(f"expected a Jupyter notebook (.ipynb), got '{submission.name}'")
    nbformat = require("nbformat")
    try:
        nbformat.read(str(submission), as_version=nbformat.NO_CONVERT)
    except Exception as e:
        raise AssignError(f"'{submission}' is not a readable Jupyter notebook: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if results_path is None:
        return
    results = pathlib.Path(results_path)
    if results.is_dir():
        raise AssignError(f"-o '{results_path}' is a folder; give a file name such as "
                          "results.json")
    for path, what in ((submission, "the submission"), (zip_path, "the autograder zip")):
        if results.resolve() == path.resolve():
            raise AssignError(f"-o '{results_path}' is {what}, which the results would "
                              "replace; give another file name such as results.json")
    blocker = file_in_the_way(results)
    if blocker is not None:
        raise AssignError(f"-o '{results_path}' cannot be written: '{blocker}' is a file, "
                          "not a folder")
    why = why_unwritable(results.parent)
    if why is not None:  # found only after grading, with a raw OSError
        raise AssignError(f"-o '{results_path}' cannot be written: {why}")


def _child_env(cell_timeout, home=None):
    env = dict(os.environ)
    if home is not None:
        import site

        from jupyter_core.paths import jupyter_data_dir
        own = kernel_of_this_python(pathlib.Path(home).parent / "jupyter")
        env["JUPYTER_PATH"] = os.pathsep.join(
            [str(own), jupyter_data_dir()] +
            [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p])
        env.setdefault("PYTHONUSERBASE", site.getuserbase())
        env["HOME"] = str(home)
    root = str(pathlib.Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in
                                                  env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if cell_timeout is not None:
        env[CELL_TIMEOUT_ENV] = str(float(cell_timeout))
    return env


def grade(zip_path, submission, results_path, timeout=DEFAULT_TIMEOUT, cell_timeout=None):
    """Grade one submission and write Gradescope-format JSON to ``results_path``.

    Args:
        zip_path: the autograder zip of a release.
        submission: the student's notebook.
        results_path: where the JSON goes.
        timeout: wall-clock seconds for the whole run (kernel start, every cell, the tests).
        cell_timeout: seconds per cell; None keeps the value the release put in the zip.

    Returns:
        The results dict (``minidl.assign.results.scores(...)`` gives per-question points).
    """
    require("otter")
    if not is_seconds(timeout):
        raise AssignError(f"--timeout must be a finite positive number of seconds, got "
                          f"{timeout!r}")
    if cell_timeout is not None and not is_seconds(cell_timeout):
        raise AssignError(f"--cell-timeout must be a finite positive number of seconds, got "
                          f"{cell_timeout!r}")
    check_inputs(zip_path, submission, results_path)
    results_path = pathlib.Path(results_path)
    with tempfile.TemporaryDirectory(prefix="minidl-grade-") as tmp:
        out = pathlib.Path(tmp) / "results.json"
        home = pathlib.Path(tmp) / "home"
        home.mkdir()
        env = _child_env(cell_timeout, home)
        env["TMPDIR"] = tmp  # Otter's scratch folders die with this one, even after a kill
        cmd = [sys.executable, "-m", "minidl.assign.runner", str(pathlib.Path(zip_path).resolve()),
               str(pathlib.Path(submission).resolve()), str(out)]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=float(timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            results = error_results(zip_path, f"grading stopped after the time limit of "
                                    f"{float(timeout):g} s for the whole notebook")
        except BaseException:  # Ctrl-C: it reaches only this process, not the child's
            os.killpg(proc.pid, signal.SIGKILL)  # session, so stop the grading (and kernel)
            proc.wait()
            raise
        else:
            if out.is_file():
                results = json.loads(out.read_text())
            else:
                tail = log.decode("utf-8", errors="replace")[-2000:]
                results = error_results(zip_path, "the grading process ended without results "
                                        f"(exit status {proc.returncode}):\n{tail}")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
    return results


def summary(results):
    """Lines ``q1: 3/3`` and the total, for the terminal."""
    table = scores(results)
    lines = [f"  {q}: {s:g}/{m:g}" for q, (s, m) in table.items()]
    total = sum(s for s, _ in table.values())
    possible = sum(m for _, m in table.values())
    errors = [t for t in results.get("tests", []) if t.get("name") == "Autograder Error"]
    if errors:
        lines.append("  " + errors[0]["output"].splitlines()[0])
    lines.append(f"  total: {total:g}/{possible:g}")
    return "\n".join(lines)
