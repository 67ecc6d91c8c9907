"""The grading worker: Otter's local runner on one submission, in its own process.

``python -m minidl.assign.runner ZIP SUBMISSION.ipynb RESULTS.json`` runs
``otter.run.main`` (Otter Run: the autograder zip unpacked into a scratch folder laid out
as on Gradescope, the notebook executed in a local Jupyter kernel, no Docker) and writes
Otter's Gradescope JSON. ``minidl.assign.grade`` starts it with a wall-clock limit and
kills its process group (kernel included) if that runs out.

The submission is graded from a copy whose kernelspec says ``python3`` (a notebook saved
under another kernel name would otherwise fail to start), as Otter does on Gradescope.
If Otter itself fails (a kernel that died, a notebook for another assignment), or scores
none of the questions (a kernel that stopped during the tests), the JSON says so and gives
every question it lacks 0 of its points.
"""
import json
import pathlib
import sys
import tempfile
import traceback

from .results import complete_results, error_results

__all__ = ["run"]


def run(zip_path, submission, results_path):
    """Grade ``submission`` with ``zip_path``; write the results JSON; return it as a dict."""
    import nbformat
    from otter.run import main as otter_run

    with tempfile.TemporaryDirectory(prefix="minidl-grade-") as tmp:
        tmp = pathlib.Path(tmp)
        nb = nbformat.read(str(submission), as_version=nbformat.NO_CONVERT)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        copy = tmp / "submission" / pathlib.Path(submission).name
        copy.parent.mkdir()
        nbformat.write(nb, str(copy))
        out = tmp / "out"
        out.mkdir()
        try:
            otter_run(str(copy), autograder=str(zip_path), output_dir=str(out), no_logo=True)
            results = complete_results(zip_path,
                                       json.loads((out / "results.json").read_text()))
        except Exception as e:  # the student's notebook broke the run: score 0, say why
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            results = error_results(zip_path, f"Otter could not finish grading: {detail}")
    pathlib.Path(results_path).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run(*sys.argv[1:4])
