"""``minidl assign release``: master -> student notebook and Gradescope autograder.

Steps (nothing is written to ``--out`` until all of them succeed):

1. ``read_master`` parses and checks the Jupytext master (refusing one that would leak).
2. In a scratch folder: the master as ``NN_name.ipynb`` (Jupytext), the files its config
   lists, a copy of the ``minidl`` package and ``requirements.txt`` (minidl's own
   dependencies), and an assignment config completed with minidl's glue:

   * ``autograder_files: [minidl]``: the zip carries the library the assignment was
     released with. Otter appends the submission folder to ``sys.path``, so an installed
     minidl still comes first; on a Gradescope image, which has only ``requirements.txt``,
     this copy is the one imported;
   * ``plugins: [minidl.assign.guard.GradingGuard]`` (per-cell time limit, grader files
     restored; see ``guard``);
     the grading process imports this plugin before any notebook runs, from the zip's root
     (``/autograder/source`` on Gradescope, the only folder on its path), so after Otter
     Assign the package is added there too (without its bundled data);
   * ``strip_solutions_from_all_cells: true``: solution markers are honoured in every
     code cell, not only inside solution blocks.

3. Otter Assign writes ``student/`` and ``autograder/`` (and, unless ``run_tests=False``,
   grades the solution notebook with the autograder zip and fails unless it scores full
   marks).
4. ``find_leaks`` searches every file of ``student/`` (notebook, test files, zip members)
   for every solution and hidden-test line of the master; any hit aborts the release.
5. The two folders move to ``OUT/student`` and ``OUT/autograder``.
"""
import contextlib
import io
import logging
import pathlib
import shutil
import tempfile

from .errors import AssignError, file_in_the_way, is_seconds, require, why_unwritable
from .guard import DEFAULT_CELL_TIMEOUT
from .kernel import this_python_kernel
from .leaks import find_leaks
from .master import read_master

__all__ = ["release", "ReleaseResult", "REQUIREMENTS", "GUARD_PLUGIN"]

# minidl's install_requires (setup.cfg), installed into the Gradescope image
REQUIREMENTS = ["numpy>=1.23", "matplotlib>=3.5", "tqdm>=4.60", "threadpoolctl>=3.1"]
GUARD_PLUGIN = "minidl.assign.guard.GradingGuard"


class ReleaseResult:
    """Where a release went: ``student``, ``autograder``, ``zip`` and ``solution`` paths."""

    def __init__(self, out, name):
        self.out = pathlib.Path(out)
        self.student = self.out / "student"
        self.autograder = self.out / "autograder"
        self.notebook = self.student / f"{name}.ipynb"
        self.solution = self.autograder / f"{name}.ipynb"
        zips = sorted(self.autograder.glob("*.zip"))
        self.zip = zips[-1] if zips else None

    def __repr__(self):
        return f"ReleaseResult(student={self.student}, zip={self.zip})"


def _package_dir():
    return pathlib.Path(__file__).resolve().parent.parent


def _merge_config(config, cell_timeout):
    config = dict(config)
    config.setdefault("name", None)
    if config["name"] is None:
        del config["name"]
    config["strip_solutions_from_all_cells"] = True
    config.setdefault("generate", True)
    if config["generate"] is False:
        raise AssignError("the assignment config says 'generate: false', so Otter would make "
                          "no autograder zip; remove that line")
    plugins = [p for p in config.get("plugins", [])
               if not (p == GUARD_PLUGIN or (isinstance(p, dict) and GUARD_PLUGIN in p))]
    config["plugins"] = plugins + [{GUARD_PLUGIN: {"cell_timeout": cell_timeout}}]
    files = list(config.get("autograder_files", []))
    if "minidl" not in files:
        files.append("minidl")
    config["autograder_files"] = files
    if "requirements" in config:
        raise AssignError("the assignment config sets 'requirements'; minidl assign writes "
                          "requirements.txt itself (minidl's dependencies): remove the key")
    config["requirements"] = "requirements.txt"
    return config


def _add_package(zip_path):
    """Put the ``minidl`` package at the root of the autograder zip (for the guard plugin)."""
    import zipfile
    package = _package_dir()
    with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as zf:
        if any(n.startswith("minidl/") for n in zf.namelist()):
            return
        for path in sorted(package.rglob("*")):
            rel = path.relative_to(package.parent)
            if (path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc"
                    and "bundled" not in rel.parts):
                zf.write(path, rel.as_posix())


def _stage(master, stage, cell_timeout):
    """Write the notebook and everything Otter Assign needs into ``stage``."""
    nbformat = require("nbformat")
    yaml = require("yaml")
    folder = master.path.parent
    for rel in master.config.get("files", []) + master.config.get("autograder_files", []):
        src = folder / rel
        if rel == "minidl":
            continue
        if not src.exists():
            raise AssignError(f"the assignment config lists the file '{rel}', which is not in "
                              f"'{folder}'")
        dst = stage / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    shutil.copytree(_package_dir(), stage / "minidl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (stage / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    config = _merge_config(master.config, cell_timeout)
    nb = master.notebook
    cell = nb.cells[master.config_index]
    cell.source = "# ASSIGNMENT CONFIG\n" + yaml.safe_dump(config, sort_keys=False)
    path = stage / f"{master.name}.ipynb"
    nbformat.write(nb, str(path))
    return path


def release(folder, out, run_tests=True, cell_timeout=DEFAULT_CELL_TIMEOUT, force=False,
            quiet=True):
    """Release one assignment.

    Args:
        folder: ``assignments/NN_name`` (or its master ``.py``).
        out: output folder; ``out/student`` and ``out/autograder`` must not exist yet
            unless ``force`` (then they are replaced, and only they).
        run_tests: let Otter grade the solution notebook and fail unless it gets full marks.
        cell_timeout: seconds per notebook cell when grading (the guard plugin's limit).
        quiet: hide Otter's log output (errors still raise).

    Returns:
        ``ReleaseResult``.

    Raises:
        AssignError: a bad folder or master, an output that exists or cannot be written, a
            leak, a failed solution check.
        MissingExtraError: Otter-Grader or Jupytext missing.
    """
    otter_assign = require("otter.assign")
    master = read_master(folder)
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise AssignError(f"--out '{out}' exists and is not a folder")
    blocker = file_in_the_way(out)
    if blocker is not None:
        raise AssignError(f"--out '{out}' cannot be made: '{blocker}' is a file, not a folder")
    targets = [out / "student", out / "autograder"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise AssignError(f"{' and '.join(existing)} already exist; choose another --out or "
                          "pass --force to replace them")
    if not is_seconds(cell_timeout):
        raise AssignError(f"cell_timeout must be a finite positive number of seconds, got "
                          f"{cell_timeout!r}")
    why = why_unwritable(out)
    if why is not None:  # found only after Otter had run, with a raw OSError
        raise AssignError(f"--out '{out}' cannot be written: {why}")
    with tempfile.TemporaryDirectory(prefix="minidl-release-") as tmp:
        stage = pathlib.Path(tmp) / "stage"
        stage.mkdir()
        nb_path = _stage(master, stage, cell_timeout)
        result_dir = pathlib.Path(tmp) / "result"
        log = io.StringIO()
        sink = contextlib.redirect_stdout(log) if quiet else contextlib.nullcontext()
        level = logging.getLogger("otter").level
        try:
            if quiet:
                logging.getLogger("otter").setLevel(logging.ERROR)
            with sink, contextlib.redirect_stderr(log) if quiet else contextlib.nullcontext(), \
                    this_python_kernel():
                otter_assign.main(str(nb_path), str(result_dir), no_pdfs=True,
                                  no_run_tests=not run_tests)
        except Exception as e:
            raise AssignError(f"Otter Assign failed on '{master.path}': {e}\n{log.getvalue()}")
        finally:
            logging.getLogger("otter").setLevel(level)
        for zip_path in (result_dir / "autograder").glob("*.zip"):
            _add_package(zip_path)
        leaks = find_leaks(result_dir / "student", master.secret_lines)
        if leaks:
            lines = "; ".join(f"{f}: {ls[:3]}" for f, ls in leaks.items())
            raise AssignError(f"release of '{master.path}' stopped: the student files would "
                              f"show solution or hidden-test lines ({lines})")
        out.mkdir(parents=True, exist_ok=True)
        for target in targets:
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(result_dir / target.name), str(target))
    return ReleaseResult(out, master.name)
