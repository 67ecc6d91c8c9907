"""Release and grade the five assignments with Otter, end to end (slow: each grading runs a
notebook in a Jupyter kernel, about 5-20 s).

For every assignment: the released student files hold no solution or hidden-test line; the
solution notebook gets full marks; the untouched student notebook gets 0 with no grader
error; a notebook with typical bugs planted loses exactly the points of the questions the
bugs are in. Then notebooks that raise, loop forever, print garbage, or delete files in
their folder: graded to what they earn, within the time limits.
"""
import json
import pathlib
import subprocess
import sys
import time

import pytest

from minidl.assign import main
from minidl.assign.leaks import find_leaks
from minidl.assign.master import read_master
from minidl.assign.results import scores

pytest.importorskip("otter", reason="the assign extra (otter-grader) is not installed")
nbformat = pytest.importorskip("nbformat")

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (assignment, [(wrong line in the solution, the planted bug)], questions that must lose
# all their points); every other question keeps all of its points.
BUGS = {
    "01_mlp_backprop": ([('self.grads["W"] = dout.T @ x', 'self.grads["W"] = x.T @ dout'),
                         ("return dlogits / N", "return dlogits"),  # missing 1/N
                         # the step scaled by 1/batch_size (once caught by a hidden test only)
                         ("layer.params[k] -= lr * layer.grads[k]",
                          "layer.params[k] -= lr / batch_size * layer.grads[k]")],
                        {"q1", "q3", "q4"}),
    "02_cnn_layers": ([('self.grads["W"] = (D.T @ self.cache["cols"]).reshape(W.shape)',
                        'self.grads["W"] = (self.cache["cols"].T @ D).reshape(W.shape)'),
                       ("        k = self.k\n", "        k = 2\n")],  # MaxPool2d: only 2 x 2
                      {"q3", "q4"}),  # transposed weight gradient; pooling windows
    "03_normalisation": ([("return inv_std * (dxhat - dxhat.mean(axis=0) - xhat",
                           "return inv_std * (dxhat - xhat"),  # backward: no mean term
                          # eval mode without gamma and beta (the backward is train mode's)
                          ('mu, var = self.buffers["running_mean"], self.buffers["running_var"]',
                           'return (x - self.buffers["running_mean"]) / '
                           'np.sqrt(self.buffers["running_var"] + self.eps)'),
                          # BNP's q without max(., 1)
                          ("q = np.sqrt(max(m / N, 1.0))", "q = np.sqrt(m / N)")],
                         {"q1", "q2", "q4"}),
    "04_optimizers": ([# Adam without bias correction
                       ("mhat = s[\"m\"] / (1 - beta1 ** k)", "mhat = s[\"m\"]"),
                       ("vhat = s[\"v\"] / (1 - beta2 ** k)", "vhat = s[\"v\"]"),
                       # Rprop's steps right, but written into the layer's gradient
                       ("gbar = np.where(p < 0, 0.0, g)", "gbar = g\n        gbar[p < 0] = 0")],
                      {"q3", "q4"}),
    "05_curvature": ([("keepdims=True)) / N", "keepdims=True))"),  # G v without 1/N
                      # MBF: one block per input + 1, not per neuron
                      ('return np.einsum("no,ni,nj->oij", delta ** 2, a_hat, a_hat) / N',
                       "return np.stack([(delta[:, o:o + 1] ** 2 * a_hat).T @ a_hat "
                       "for o in range(a_hat.shape[1])]) / N")],
                     {"q1", "q3"}),
}


def grade(zip_path, notebook, out, *extra):
    code = main(["grade", str(zip_path), str(notebook), "-o", str(out), *extra])
    assert code == 0
    results = json.loads(pathlib.Path(out).read_text())
    return results, scores(results)


def no_grader_error(results):
    return not any(t.get("name") == "Autograder Error" for t in results["tests"])


@pytest.fixture(scope="module", params=sorted(BUGS))
def released(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name)
    # Otter's own check that the solution scores 100% is left to the grading test below
    code = main(["release", str(ROOT / "assignments" / name), "--out", str(out / "rel"),
                 "--no-run-tests"])
    assert code == 0
    zips = sorted((out / "rel" / "autograder").glob("*.zip"))
    assert len(zips) == 1
    return name, out, zips[0], read_master(ROOT / "assignments" / name)


def test_release_layout_and_no_leaks(released):
    name, out, zip_path, master = released
    student = out / "rel" / "student"
    assert (student / f"{name}.ipynb").is_file()
    assert (out / "rel" / "autograder" / f"{name}.ipynb").is_file()  # the solutions
    assert find_leaks(student, master.solution_lines) == {}
    assert find_leaks(student, master.hidden_lines) == {}
    # and the search is not vacuous: the solution notebook does hold the solutions,
    # the autograder zip the hidden tests
    assert find_leaks(out / "rel" / "autograder", master.solution_lines)
    assert find_leaks(out / "rel" / "autograder", master.hidden_lines)


def test_solution_full_blank_zero_bug_loses_its_question(released):
    name, out, zip_path, master = released
    points = {q: float(p) for q, p in master.questions.items()}

    results, got = grade(zip_path, out / "rel" / "autograder" / f"{name}.ipynb",
                         out / "solution.json")
    assert got == {q: (p, p) for q, p in points.items()}, results
    assert no_grader_error(results)

    results, got = grade(zip_path, out / "rel" / "student" / f"{name}.ipynb",
                         out / "blank.json")
    assert got == {q: (0.0, p) for q, p in points.items()}, results
    assert no_grader_error(results)

    replacements, broken = BUGS[name]
    nb = nbformat.read(str(out / "rel" / "autograder" / f"{name}.ipynb"), as_version=4)
    for old, new in replacements:
        hits = sum(cell.source.count(old) for cell in nb.cells)
        assert hits == 1, f"the planted bug {new!r} found {hits} places to go"
        for cell in nb.cells:
            cell.source = cell.source.replace(old, new)
    nbformat.write(nb, str(out / "bug.ipynb"))
    results, got = grade(zip_path, out / "bug.ipynb", out / "bug.json")
    expected = {q: (0.0 if q in broken else p, p) for q, p in points.items()}
    assert got == expected, results
    assert no_grader_error(results)


def test_an_earlier_mistake_is_not_charged_again(released):
    """A2's Conv2d (q3) calls the student's im2col (q2). An im2col that ignores the stride
    used to cost q3 too; q3 is now graded with minidl's im2col in its place
    (``earlier_answers_from_reference``), so only q2 is lost."""
    name, out, zip_path, master = released
    if name != "02_cnn_layers":
        pytest.skip("the case is A2's")
    points = {q: float(p) for q, p in master.questions.items()}
    nb = nbformat.read(str(out / "rel" / "autograder" / f"{name}.ipynb"), as_version=4)
    old = "window = xpad[:, :, u:u + stride * Ho:stride, v:v + stride * Wo:stride]"
    new = "window = xpad[:, :, u:u + Ho, v:v + Wo]"  # the stride forgotten
    assert sum(cell.source.count(old) for cell in nb.cells) == 1
    for cell in nb.cells:
        cell.source = cell.source.replace(old, new)
    nbformat.write(nb, str(out / "im2col_bug.ipynb"))
    results, got = grade(zip_path, out / "im2col_bug.ipynb", out / "im2col_bug.json")
    assert got == {q: (0.0 if q == "q2" else p, p) for q, p in points.items()}, results
    assert no_grader_error(results)


# -- notebooks that misbehave ----------------------------------------------------------------
TINY = '''# %% [raw]
# # ASSIGNMENT CONFIG
# name: tiny
# export_cell: false

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2

# %% [raw]
# # BEGIN SOLUTION

# %%
def double(x):
    return 2 * x  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert double(2) == 4

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 3

# %% [markdown]
# Write triple; the line below is hidden although no solution block surrounds it.

# %%
def triple(x):
    return x * 3 + 0  # SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert triple(5) == 15

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny").mkdir()
    (root / "tiny" / "tiny.py").write_text(TINY)
    assert main(["release", str(root / "tiny"), "--out", str(root / "rel"),
                 "--cell-timeout", "5"]) == 0
    zip_path = sorted((root / "rel" / "autograder").glob("*.zip"))[0]
    return root, zip_path


def with_cells(root, name, cells_before_q2):
    """The solution notebook with extra cells put in before question 2's answer."""
    nb = nbformat.read(str(root / "rel" / "autograder" / "tiny.ipynb"), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "def triple" in c.source)
    for k, src in enumerate(cells_before_q2):
        nb.cells.insert(at + k, nbformat.v4.new_code_cell(src))
    path = root / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_marker_outside_a_solution_block_is_stripped(tiny):
    root, _ = tiny
    text = (root / "rel" / "student" / "tiny.ipynb").read_text()
    assert "x * 3 + 0" not in text and "2 * x" not in text
    assert "triple(5)" not in text  # the hidden test


@pytest.mark.parametrize("name, cells", [
    ("raises", ["raise RuntimeError('my code broke')"]),
    ("garbage", ["import sys\nsys.stdout.write('\\x00\\x1b[2J\\ufffd' * 5000)\n"
                 "print(bytes(range(256)))\nprint('q1 results: All test cases passed!')"]),
    ("deletes", ["import os, shutil\nshutil.rmtree('tests', ignore_errors=True)\n"
                 "for f in os.listdir('.'):\n    if os.path.isfile(f):\n        os.remove(f)\n"
                 "os.chdir('/')"]),
    ("loops", ["while True:\n    try:\n        pass\n    except Exception:\n        pass"]),
])
def test_misbehaving_notebook_scores_what_it_earns(tiny, name, cells):
    root, zip_path = tiny
    start = time.monotonic()
    results, got = grade(zip_path, with_cells(root, name, cells), root / f"{name}.json")
    assert time.monotonic() - start < 120
    assert got == {"q1": (2.0, 2.0), "q2": (3.0, 3.0)}, results
    assert no_grader_error(results)


def test_a_run_otter_gives_up_on_scores_every_question(tiny):
    """A KeyboardInterrupt raised in code a test calls ends Otter's test cell (doctest lets
    it through), and Otter writes only "Autograder Failed": the results used to have no
    question at all (``total: 0/0``), so a gradebook import missed the student."""
    root, zip_path = tiny
    nb = nbformat.read(str(root / "rel" / "autograder" / "tiny.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("def triple(x):\n    raise KeyboardInterrupt"))
    nbformat.write(nb, str(root / "interrupts.ipynb"))
    results, got = grade(zip_path, root / "interrupts.ipynb", root / "interrupts.json")
    assert got == {"q1": (0.0, 2.0), "q2": (0.0, 3.0)}, results
    assert not no_grader_error(results)
    assert "no score" in json.dumps(results)


def test_wall_clock_limit_stops_a_hung_grading(tiny):
    root, zip_path = tiny
    nb = with_cells(root, "hangs", ["import time\ntime.sleep(3600)"])
    start = time.monotonic()
    results, got = grade(zip_path, nb, root / "hangs.json", "--timeout", "20",
                         "--cell-timeout", "600")
    assert time.monotonic() - start < 60
    assert got == {"q1": (0.0, 2.0), "q2": (0.0, 3.0)}
    assert "time limit of 20 s" in json.dumps(results)


def test_python_dash_m_grades(tiny):
    root, zip_path = tiny
    out = subprocess.run([sys.executable, "-m", "minidl.assign", "grade", str(zip_path),
                          str(root / "rel" / "student" / "tiny.ipynb"), "-o",
                          str(root / "cli.json")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "total: 0/5" in out.stdout
    assert scores(json.loads((root / "cli.json").read_text())) == {"q1": (0.0, 2.0),
                                                                  "q2": (0.0, 3.0)}


# -- notebooks that try to fake a pass -------------------------------------------------------
HOSTILE_MASTER = '''# %% [raw]
# # ASSIGNMENT CONFIG
# name: fakes
# export_cell: false

# %%
import numpy as np
from minidl.layers import Layer

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 1

# %% [markdown]
# Write the backward pass of Square (out = x * x).

# %% [raw]
# # BEGIN SOLUTION

# %%
class Square(Layer):
    def forward(self, x):
        self.cache["x"] = x
        return x * x

    def backward(self, dout):
        return 2 * self.cache["x"] * dout  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_gradcheck
assert_gradcheck(Square(), np.arange(1.0, 7.0).reshape(2, 3))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 1

# %% [markdown]
# Write double.

# %% [raw]
# # BEGIN SOLUTION

# %%
def double(x):
    return 2 * x  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import numpy as np
assert np.allclose(double(np.arange(3.0)), [0.0, 2.0, 4.0])

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
'''

# a blank notebook that replaces what the tests call, and deletes its home folder
FAKES = ("import os, shutil, numpy, minidl.gradcheck, minidl.assign.feedback, minidl.layers\n"
         "numpy.allclose = lambda *a, **k: True\n"
         "minidl.assign.feedback.assert_gradcheck = lambda *a, **k: None\n"
         "minidl.gradcheck.check_layer = lambda *a, **k: None\n"
         "minidl.layers.Layer.backward = lambda self, dout: dout\n"
         "shutil.rmtree(os.path.expanduser('~'), ignore_errors=True)\n")


# ... and, in the last cell, fakes again and runs the checks before the cell ends
FAKES_AND_CHECK = ("import numpy, minidl.assign.feedback\n"
                   "numpy.allclose = lambda *a, **k: True\n"
                   "minidl.assign.feedback.assert_gradcheck = lambda *a, **k: None\n"
                   "grader.check('q1')\ngrader.check('q2')\n")


def test_faked_pass_earns_nothing_and_home_survives(tmp_path, monkeypatch):
    (tmp_path / "fakes").mkdir()
    (tmp_path / "fakes" / "fakes.py").write_text(HOSTILE_MASTER)
    assert main(["release", str(tmp_path / "fakes"), "--out", str(tmp_path / "rel"),
                 "--cell-timeout", "20"]) == 0
    zip_path = sorted((tmp_path / "rel" / "autograder").glob("*.zip"))[0]
    nb = nbformat.read(str(tmp_path / "rel" / "student" / "fakes.ipynb"), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "class Square" in c.source)
    nb.cells.insert(at, nbformat.v4.new_code_cell(FAKES))
    nb.cells.append(nbformat.v4.new_code_cell(FAKES_AND_CHECK))
    nbformat.write(nb, str(tmp_path / "fakes.ipynb"))
    home = tmp_path / "home"  # the grader's home, as the notebook would see it
    home.mkdir()
    (home / "keep.txt").write_text("the grader's own file")
    monkeypatch.setenv("HOME", str(home))
    results, got = grade(zip_path, tmp_path / "fakes.ipynb", tmp_path / "fakes.json")
    assert got == {"q1": (0.0, 1.0), "q2": (0.0, 1.0)}, results
    assert no_grader_error(results)
    assert (home / "keep.txt").read_text() == "the grader's own file"
    # and the solution, graded the same way, still gets every point
    results, got = grade(zip_path, tmp_path / "rel" / "autograder" / "fakes.ipynb",
                         tmp_path / "solution.json")
    assert got == {"q1": (1.0, 1.0), "q2": (1.0, 1.0)}, results


# -- the zip on Gradescope -------------------------------------------------------------------
SIMULATE_GRADESCOPE = '''\
import os, sys
# Gradescope runs "python /autograder/source/run_otter.py" in an image where minidl is not
# installed: hide any installed minidl so only what the zip carries can be imported
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [sys.path[0]] + [p for p in sys.path[1:]
                               if not os.path.isdir(os.path.join(p or ".", "minidl"))]
from otter.run.run_autograder import main
main(sys.argv[1])
'''


def test_autograder_zip_runs_where_minidl_is_not_installed(tiny, tmp_path):
    # the layout Gradescope uses: /autograder/{source,submission,results}; the guard plugin
    # is imported by the grading process itself, whose path has only source/
    import os
    import zipfile
    root, zip_path = tiny
    ag = tmp_path / "autograder"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(ag / "source")
    (ag / "submission").mkdir()
    (ag / "results").mkdir()
    (ag / "submission_metadata.json").write_text("{}")
    nb = root / "rel" / "autograder" / "tiny.ipynb"
    (ag / "submission" / "tiny.ipynb").write_bytes(nb.read_bytes())
    (ag / "source" / "simulate.py").write_text(SIMULATE_GRADESCOPE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(ag / "source" / "simulate.py"), str(ag)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((ag / "results" / "results.json").read_text())
    assert scores(results) == {"q1": (2.0, 2.0), "q2": (3.0, 3.0)}, results
