"""Gradescope-format results: reading scores back, and the all-zero result of a failed run.

Otter writes ``{"tests": [{"name", "score", "max_score", "visibility", "output"}, ...]}``
with one entry per question (plus a "Public Tests" summary without a score). When a run
cannot finish (time limit, dead kernel), ``error_results`` gives the same shape: every
question of the autograder zip with score 0 and its max_score, and an "Autograder Error"
entry saying what happened, so a gradebook import never meets a missing question.
"""
import pathlib
import tempfile
import zipfile

__all__ = ["complete_results", "error_results", "question_points", "scores"]


def question_points(zip_path):
    """``{question: max_score}`` from the test files of an Otter autograder zip."""
    from otter.test_files import create_test_file
    from otter.nbmeta_config import NBMetadataConfig

    points = {}
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(zip_path) as zf:
        for member in sorted(zf.namelist()):
            if member.startswith("tests/") and member.endswith(".py"):
                path = pathlib.Path(tmp) / member
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(zf.read(member))
                test = create_test_file(str(path), NBMetadataConfig())
                points[test.name] = float(test.possible)
    return points


def error_results(zip_path, message):
    """A Gradescope result scoring every question 0, with ``message`` as the reason."""
    tests = [{"name": q, "score": 0.0, "max_score": pts, "visibility": "visible",
              "output": message} for q, pts in question_points(zip_path).items()]
    tests.append({"name": "Autograder Error", "visibility": "visible", "output": message})
    return {"score": 0.0, "tests": tests}


def complete_results(zip_path, results):
    """``results`` with every question of the zip: one Otter left out scores 0, and an
    "Autograder Error" entry says which and repeats Otter's visible messages."""
    points = question_points(zip_path)
    missing = [q for q in points if q not in scores(results)]
    if not missing:
        return results
    said = " ".join(t.get("output", "") for t in results.get("tests", [])
                    if t.get("visibility") != "hidden" and "score" not in t).strip()
    message = (f"Otter gave no score for {', '.join(missing)} (the notebook's kernel stopped "
               "while the tests ran, e.g. a KeyboardInterrupt raised or tests/ deleted by "
               f"code a test called), so they score 0.{' Otter: ' + said if said else ''}")
    tests = list(results.get("tests", []))
    tests += [{"name": q, "score": 0.0, "max_score": points[q], "visibility": "visible",
               "output": message} for q in missing]
    tests.append({"name": "Autograder Error", "visibility": "visible", "output": message})
    return dict(results, tests=tests,
                score=sum(float(t["score"]) for t in tests if "score" in t))


def scores(results):
    """``{question: (score, max_score)}`` of a results dict (entries without a score skipped)."""
    return {t["name"]: (float(t["score"]), float(t["max_score"]))
            for t in results.get("tests", []) if "max_score" in t and "score" in t}
