"""minidl.assign without running a notebook: refusals, the master checks, the leak search,
and the five masters as they are committed (fast; the release and grading runs are in
test_assign_grading.py, marked slow)."""
import io
import json
import pathlib
import subprocess
import sys
import zipfile

import pytest

from minidl.assign import main
from minidl.assign.errors import AssignError
from minidl.assign.leaks import find_leaks, text_lines

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSIGNMENTS = ["01_mlp_backprop", "02_cnn_layers", "03_normalisation", "04_optimizers",
               "05_curvature"]

pytest.importorskip("jupytext", reason="the assign extra (jupytext) is not installed")
pytest.importorskip("otter", reason="the assign extra (otter-grader) is not installed")

CONFIG = '''# %% [raw]
# # ASSIGNMENT CONFIG
# name: tiny
# export_cell: false

'''

QUESTION = '''# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2

# %% [markdown]
# Write double.

# %% [raw]
# # BEGIN SOLUTION

# %%
def double(x):
    # BEGIN SOLUTION
    return x * 2  # the secret doubling line
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert double(2) == 4

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert double(21) == 42, "hidden check of double(21)"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
'''


def write_master(tmp_path, text, name="tiny"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.py").write_text(text)
    return folder


def refusal(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# -- the masters of the five assignments ---------------------------------------------------
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_committed_master_parses(name):
    from minidl.assign.master import read_master
    master = read_master(ROOT / "assignments" / name)
    assert master.name == name
    assert len(master.questions) >= 3
    assert all(float(p) > 0 for p in master.questions.values())
    assert len(master.solution_lines) >= 10 and len(master.hidden_lines) >= 5
    # every question has a hidden test, so grading checks more than the student saw
    text = (ROOT / "assignments" / name / f"{name}.py").read_text()
    assert text.count("hidden: true") >= len(master.questions)


def _public_tests(name, question):
    """The source of the public test cells of one question of a committed master."""
    text = (ROOT / "assignments" / name / f"{name}.py").read_text()
    body = text.split(f"# name: {question}\n", 1)[1].split("# # END QUESTION", 1)[0]
    tests = body.split("# # BEGIN TESTS", 1)[1].split("# # END TESTS", 1)[0]
    return "\n".join(c for c in tests.split("# %%") if "hidden: true" not in c)


@pytest.mark.parametrize("name, question, needle", [
    ("04_optimizers", "q1", "nesterov=True"),   # Nesterov was only in the hidden test
    ("03_normalisation", "q1", ".eval()"),      # so was BatchNorm's eval mode
    ("02_cnn_layers", "q1", "stride=2"),        # and every stride > 1
    ("02_cnn_layers", "q2", "im2col(_x, 2, 3, 2, 1)"),
    ("02_cnn_layers", "q3", "stride=2"),
    ("03_normalisation", "q4", "(N=2, m=3)"),   # q = sqrt(m / N) > 1
    ("05_curvature", "q2", "(N = 3)"),          # K-FAC factors of more than one example
    ("01_mlp_backprop", "q4", "0.0, 50, _r"),   # what train_epoch returns (lr = 0)
    ("01_mlp_backprop", "q2", "changed its input"),  # ReLU leaves x and dout alone
    ("04_optimizers", "q4", "step_sizes=(0.02, 0.07)"),  # Rprop's clip of the step sizes
    ("04_optimizers", "q5", "gd(_A, np.array([1.0, 2.0])"),  # b != 0
    ("01_mlp_backprop", "q2", "standard_normal((3, 2, 5))"),  # x of 3 axes
    ("01_mlp_backprop", "q4", "0.5, 12, _r"),  # one full-batch step moves p by -lr g
    ("02_cnn_layers", "q3", "standard_normal((2, 3, 8, 5))"),  # Ho = 4, Wo = 3
    ("02_cnn_layers", "q4", "MaxPool2d(3)"),    # k = 3, not only 2
    ("03_normalisation", "q1", "(eval, gamma and beta not 1 and 0)"),  # and N != D
    ("03_normalisation", "q4", "(N=5, m=3, eps1=1e-3, eps2=1e-2)"),  # q = 1, eps given
    ("05_curvature", "q1", "standard_normal((5, 2))"),  # x not the shape of the logits
    ("05_curvature", "q3", "[6, 7, 11]"),      # F = 4 blocks of m + 1 = 3
])
def test_public_tests_cover_what_hidden_tests_grade(name, question, needle):
    # README: hidden tests check the same things on other shapes, so every behaviour they
    # grade has a public check the student can run with grader.check
    assert needle in _public_tests(name, question)


def _run_public_tests(name, question, planted=()):
    """Run a committed master as a student's kernel would (every code cell but the
    otter_ignore ones, the solution with each (old, new) of ``planted`` put in), then the
    public test cells of ``question``; the first failure's message, or None."""
    import contextlib
    from minidl.assign.master import read_master
    nb = read_master(ROOT / "assignments" / name).notebook
    code, tests, current, in_tests = [], [], None, False
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "raw":
            current = src.split("name: ", 1)[1].split()[0] if "BEGIN QUESTION" in src else \
                current
            in_tests = "BEGIN TESTS" in src or (in_tests and "END TESTS" not in src)
        elif cell.cell_type == "code" and "otter_ignore" not in cell.metadata.get("tags", []):
            if not in_tests:
                code.append(src)
            elif current == question and "hidden: true" not in src:
                tests.append(src)
    solution = "\n\n".join(code)
    for old, new in planted:
        assert solution.count(old) == 1, f"{old!r} is in the solution {solution.count(old)} times"
        solution = solution.replace(old, new)
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(solution, f"{name} (solution)", "exec"), namespace)
        assert tests, f"{name} {question} has no public test"
        for src in tests:
            try:
                exec(compile(src, f"{name} {question} (public test)", "exec"), namespace)
            except Exception as e:  # noqa: BLE001 - any failure is the student's message
                return f"{type(e).__name__}: {e}"
    return None


# Mistakes that only the hidden tests used to catch: a student passed grader.check and lost
# the question at grading. (assignment, question, [(solution line, the mistake)])
PUBLIC_TESTS_CATCH = [
    ("01_mlp_backprop", "q2", [("        return np.maximum(x, 0)\n",   # loops over 2 axes
                                "        out = x.copy()\n"
                                "        for i in range(x.shape[0]):\n"
                                "            for j in range(x.shape[1]):\n"
                                "                out[i, j] = max(x[i, j], 0)\n"
                                "        return out\n")]),
    ("01_mlp_backprop", "q4", [("layer.params[k] -= lr * layer.grads[k]",
                                "layer.params[k] -= lr / batch_size * layer.grads[k]")]),
    ("01_mlp_backprop", "q4", [("        for layer in layers:\n            for k in layer.params",
                                "        for layer in layers[-1:]:\n            for k in "
                                "layer.params")]),  # only the last layer learns
    # Wo computed from H: every public output was square
    ("02_cnn_layers", "q3", [("        Wo = (Wd + 2 * self.padding - self.k) // self.stride + 1",
                              "        Wo = (H + 2 * self.padding - self.k) // self.stride + 1")]),
    ("02_cnn_layers", "q3", [("    cols = cols.reshape(N, Ho, Wo, C, kh, kw)",
                              "    Wo = (H + 2 * padding - kw) // stride + 1\n"
                              "    cols = cols.reshape(N, Ho, Wo, C, kh, kw)")]),
    ("02_cnn_layers", "q4", [("        k = self.k\n", "        k = 2\n")]),  # every window 2 x 2
    # BatchNorm1d: eval mode without gamma and beta (the public ones were 1 and 0); N/(N-1)
    # with N = D (the public batch was 2 x 2); the running mean's old value dropped (one
    # public batch, from a running mean of 0)
    ("03_normalisation", "q1", [('            mu, var = self.buffers["running_mean"], '
                                 'self.buffers["running_var"]',
                                 '            return (x - self.buffers["running_mean"]) / '
                                 'np.sqrt(self.buffers["running_var"] + self.eps)')]),
    ("03_normalisation", "q1", [("            N = x.shape[0]\n", "            N = x.shape[1]\n")]),
    ("03_normalisation", "q1", [('(1 - m) * self.buffers["running_mean"] + m * mu', "m * mu")]),
    # BNP: q = sqrt(m / N) without max(., 1) (every public case had m >= N); eps1 and eps2
    # written as numbers (every public case used the defaults)
    ("03_normalisation", "q4", [("q = np.sqrt(max(m / N, 1.0))", "q = np.sqrt(m / N)")]),
    ("03_normalisation", "q4", [("s2t = s2 + eps1 * s2.max() + eps2",
                                 "s2t = s2 + 1e-4 * s2.max() + eps2")]),
    ("03_normalisation", "q4", [("s2t = s2 + eps1 * s2.max() + eps2",
                                 "s2t = s2 + eps1 * s2.max() + 1e-5")]),
    # the jvp's input shaped like the logits (public x had as many columns as classes)
    ("05_curvature", "q1", [("model.jvp(np.zeros_like(x))", "model.jvp(np.zeros_like(logits))")]),
    # one block per input + 1 instead of per neuron (public F = m + 1)
    ("05_curvature", "q3", [('    return np.einsum("no,ni,nj->oij", delta ** 2, a_hat, a_hat) / N',
                             "    return np.stack([(delta[:, o:o + 1] ** 2 * a_hat).T @ a_hat "
                             "for o in range(a_hat.shape[1])]) / N")]),
]


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_the_solution_passes_every_public_test(name):
    from minidl.assign.master import read_master
    for question in read_master(ROOT / "assignments" / name).questions:
        assert _run_public_tests(name, question) is None, question


@pytest.mark.parametrize("name, question, planted", PUBLIC_TESTS_CATCH)
def test_public_tests_catch_what_only_hidden_tests_caught(name, question, planted):
    """README: passing the public tests is necessary, and hidden tests check the same
    things on other shapes; so a mistake the hidden tests grade must fail a public test."""
    assert _run_public_tests(name, question, planted) is not None


def test_readme_explains_release_grade_and_check():
    text = (ROOT / "assignments" / "README.md").read_text()
    for needle in ("minidl assign release", "minidl assign grade", "grader.check",
                   "Gradescope", "python -m minidl.assign"):
        assert needle in text


def test_readme_says_what_gradescope_shows_students():
    # it promised hidden results "after release", but each question's entry (hidden tests'
    # code included) is marked "hidden", which Gradescope never shows to students
    from minidl.assign.release import _merge_config
    text = " ".join((ROOT / "assignments" / "README.md").read_text().split())
    assert "hidden ones after release" not in text
    assert "Gradescope never shows to students" in text
    generate = _merge_config({"name": "x"}, 60)["generate"]
    assert generate is True or not generate.get("show_hidden")  # Otter's default: hidden


# -- master checks ---------------------------------------------------------------------------
def test_reads_a_good_master(tmp_path):
    from minidl.assign.master import read_master
    master = read_master(write_master(tmp_path, CONFIG + QUESTION))
    assert master.questions == {"q1": 2}
    assert "return x * 2 # the secret doubling line" in master.solution_lines
    assert 'assert double(21) == 42, "hidden check of double(21)"' in master.hidden_lines
    assert "assert double(2) == 4" not in master.hidden_lines  # public


def test_refuses_solution_cell_without_markers(tmp_path, capsys):
    """The quick trial of the issue: no prompt, no markers -> Otter releases it intact."""
    leaky = QUESTION.replace("    # BEGIN SOLUTION\n", "").replace("    # END SOLUTION\n", "")
    folder = write_master(tmp_path, CONFIG + leaky)
    refusal(capsys, ["release", str(folder), "--out", str(tmp_path / "out")],
            "no '# BEGIN SOLUTION'", "q1", "unchanged")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, needle", [
    (QUESTION, "no raw cell starting with '# ASSIGNMENT CONFIG'"),
    (CONFIG + QUESTION.replace("# points: 2\n", ""), "has no 'points:'"),
    (CONFIG + QUESTION.replace("# # END QUESTION\n", ""), "ends inside an open QUESTION"),
    (CONFIG + QUESTION.replace("assert double(2) == 4", "double(2)"), "bare expression"),
    (CONFIG + QUESTION.replace("    # END SOLUTION\n", ""), "without '# END SOLUTION'"),
    (CONFIG, "no questions"),
    ("print('a plain script')\n", "not a Jupytext percent notebook"),
])
def test_refuses_bad_masters(tmp_path, capsys, text, needle):
    folder = write_master(tmp_path, text)
    refusal(capsys, ["release", str(folder), "--out", str(tmp_path / "out")], needle)
    assert not (tmp_path / "out").exists()


def test_refuses_bad_paths(tmp_path, capsys):
    refusal(capsys, ["release", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
            "does not exist")
    (tmp_path / "empty").mkdir()
    refusal(capsys, ["release", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
            "empty.py", "no .py file")


def test_refuses_to_overwrite_a_release(tmp_path, capsys):
    folder = write_master(tmp_path, CONFIG + QUESTION)
    (tmp_path / "out" / "student").mkdir(parents=True)
    (tmp_path / "out" / "student" / "keep.txt").write_text("mine")
    refusal(capsys, ["release", str(folder), "--out", str(tmp_path / "out")], "--force")
    assert (tmp_path / "out" / "student" / "keep.txt").read_text() == "mine"


def test_release_refuses_an_out_folder_under_a_file(tmp_path, capsys):
    # found only after Otter had run: NotADirectoryError from mkdir, with a traceback
    folder = write_master(tmp_path, CONFIG + QUESTION)
    (tmp_path / "notes.txt").write_text("mine")
    refusal(capsys, ["release", str(folder), "--out", str(tmp_path / "notes.txt" / "a1")],
            "notes.txt", "is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_release_refuses_an_out_folder_it_cannot_write_before_otter_runs(
        tmp_path, capsys, monkeypatch, read_only_folder, where):
    # found only after Otter had run (minutes with its solution check): a raw OSError
    import otter.assign
    folder = write_master(tmp_path, CONFIG + QUESTION)

    def otter_ran(*args, **kw):
        raise AssertionError("Otter ran before --out was checked")

    monkeypatch.setattr(otter.assign, "main", otter_ran)
    out = read_only_folder / "a1" if where == "inside" else read_only_folder
    refusal(capsys, ["release", str(folder), "--out", str(out)],
            f"--out '{out}' cannot be written", "Permission denied")
    assert list(read_only_folder.iterdir()) == []


def test_release_leaves_no_folder_behind_when_it_stops(tmp_path, capsys, monkeypatch):
    """The check that --out can be written makes it for a moment, then takes it away."""
    import otter.assign
    folder = write_master(tmp_path, CONFIG + QUESTION)

    def otter_fails(*args, **kw):
        raise RuntimeError("the solution notebook failed")

    monkeypatch.setattr(otter.assign, "main", otter_fails)
    assert main(["release", str(folder), "--out", str(tmp_path / "build" / "a1")]) == 1
    capsys.readouterr()
    assert not (tmp_path / "build").exists()


def empty_submission_and_autograder(tmp_path):
    """An empty notebook ``alice.ipynb`` and a minimal Otter zip ``ag.zip`` in tmp_path;
    returns the notebook's path."""
    nb = tmp_path / "alice.ipynb"
    nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                              "nbformat_minor": 5}))
    with zipfile.ZipFile(tmp_path / "ag.zip", "w") as zf:
        zf.writestr("otter_config.json", "{}")
        zf.writestr("tests/q1.py", "OK_FORMAT = True\n")
    return nb


def test_grade_refuses_a_results_file_it_cannot_write_before_grading(
        tmp_path, capsys, monkeypatch, read_only_folder):
    # found only after the notebook had been graded: a raw OSError, the grading lost
    grade_module = sys.modules["minidl.assign.grade"]
    nb = empty_submission_and_autograder(tmp_path)

    def graded(*args, **kw):
        raise AssertionError("graded before -o was checked")

    monkeypatch.setattr(grade_module.subprocess, "Popen", graded)
    results = read_only_folder / "alice.json"
    refusal(capsys, ["grade", str(tmp_path / "ag.zip"), str(nb), "-o", str(results)],
            f"-o '{results}' cannot be written", "Permission denied")
    assert list(read_only_folder.iterdir()) == []


def test_an_interrupted_grading_stops_its_child_process(tmp_path, monkeypatch):
    """The grading child runs in a session of its own, which Ctrl-C does not reach; an
    interrupted grade left it (and its Jupyter kernel) running for up to --timeout."""
    grade_module = sys.modules["minidl.assign.grade"]
    nb = empty_submission_and_autograder(tmp_path)
    children = []
    real_popen = subprocess.Popen

    class InterruptedWhileGrading(real_popen):
        def communicate(self, *args, **kw):
            with pytest.raises(subprocess.TimeoutExpired):
                super().communicate(timeout=0.5)
            raise KeyboardInterrupt  # Ctrl-C while the notebook runs

    def popen(cmd, **kw):  # a child that would grade for a minute, in its own session
        child = InterruptedWhileGrading([sys.executable, "-c", "import time; time.sleep(60)"],
                                        **kw)
        children.append(child)
        return child

    monkeypatch.setattr(grade_module.subprocess, "Popen", popen)
    with pytest.raises(KeyboardInterrupt):
        grade_module.grade(tmp_path / "ag.zip", nb, tmp_path / "r.json")
    assert len(children) == 1
    try:
        assert children[0].wait(timeout=5) is not None
    except subprocess.TimeoutExpired:
        children[0].kill()
        pytest.fail("the grading child was still running after the interrupt")


def test_grade_refusals(tmp_path, capsys):
    nb = tmp_path / "sub.ipynb"
    nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                              "nbformat_minor": 5}))
    refusal(capsys, ["grade", str(tmp_path / "none.zip"), str(nb)], "does not exist")
    (tmp_path / "plain.zip").write_text("not a zip")
    refusal(capsys, ["grade", str(tmp_path / "plain.zip"), str(nb)], "not a zip file")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("hello.txt", "hi")
    refusal(capsys, ["grade", str(tmp_path / "other.zip"), str(nb)], "not an Otter")
    with zipfile.ZipFile(tmp_path / "ag.zip", "w") as zf:
        zf.writestr("otter_config.json", "{}")
        zf.writestr("tests/q1.py", "OK_FORMAT = True\n")
    refusal(capsys, ["grade", str(tmp_path / "ag.zip"), str(tmp_path / "no.ipynb")],
            "does not exist")
    (tmp_path / "sub.py").write_text("x = 1\n")
    refusal(capsys, ["grade", str(tmp_path / "ag.zip"), str(tmp_path / "sub.py")], ".ipynb")
    (tmp_path / "broken.ipynb").write_text("{ not json")
    refusal(capsys, ["grade", str(tmp_path / "ag.zip"), str(tmp_path / "broken.ipynb")],
            "not a readable Jupyter notebook")
    refusal(capsys, ["grade", str(tmp_path / "ag.zip"), str(nb), "-o", str(tmp_path)],
            "is a folder")


def test_grade_refuses_a_results_path_it_would_lose_work_on(tmp_path, capsys):
    # both were found out only after grading: -o SUBMISSION replaced the student's notebook
    # with the JSON, -o under a file crashed with FileExistsError once the notebook had run
    nb = tmp_path / "alice.ipynb"
    text = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    nb.write_text(text)
    with zipfile.ZipFile(tmp_path / "ag.zip", "w") as zf:
        zf.writestr("otter_config.json", "{}")
        zf.writestr("tests/q1.py", "OK_FORMAT = True\n")
    ag = str(tmp_path / "ag.zip")
    refusal(capsys, ["grade", ag, str(nb), "-o", str(nb)], "-o", "the submission")
    refusal(capsys, ["grade", ag, str(nb), "-o", ag], "-o", "the autograder zip")
    assert nb.read_text() == text and zipfile.is_zipfile(ag)
    (tmp_path / "notes.txt").write_text("mine")
    refusal(capsys, ["grade", ag, str(nb), "-o", str(tmp_path / "notes.txt" / "r.json")],
            "notes.txt", "is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_otter_says_how_to_install(tmp_path, capsys, monkeypatch):
    folder = write_master(tmp_path, CONFIG + QUESTION)
    for name in ("otter", "otter.assign", "jupytext"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    err = refusal(capsys, ["release", str(folder), "--out", str(tmp_path / "out")],
                  'pip install "minidl[assign]"')
    assert "otter" in err or "jupytext" in err
    refusal(capsys, ["grade", str(tmp_path / "a.zip"), str(tmp_path / "b.ipynb")],
            'pip install "minidl[assign]"')


def test_bad_numbers_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["grade", "a.zip", "b.ipynb", "--timeout", "-3"])
    assert e.value.code == 2
    assert "positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--timeout", "inf"),        # crashed after the notebook had run (OverflowError)
    ("--timeout", "nan"),
    ("--cell-timeout", "nan"),   # accepted, and no cell was ever stopped
    ("--cell-timeout", "inf"),
])
def test_timeouts_that_are_not_finite_are_usage_errors(capsys, option, value):
    with pytest.raises(SystemExit) as e:
        main(["grade", "a.zip", "b.ipynb", option, value])
    assert e.value.code == 2
    assert f"expected a finite positive number of seconds, got '{value}'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["release", "assignments/01_mlp_backprop", "--out", "o", "--cell-timeout", value])
    assert e.value.code == 2


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0])
def test_library_refuses_timeouts_that_are_not_finite(tmp_path, value):
    from minidl.assign.grade import grade
    from minidl.assign.release import release
    with pytest.raises(AssignError, match="positive number of seconds"):
        release(write_master(tmp_path, CONFIG + QUESTION), tmp_path / "out",
                cell_timeout=value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(AssignError, match="positive number of seconds"):
        grade(tmp_path / "a.zip", tmp_path / "b.ipynb", tmp_path / "r.json", timeout=value)


def test_no_subcommand_names_release_and_grade(capsys):
    # it said "the following arguments are required: command"
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "{release,grade}" in capsys.readouterr().err


def test_python_dash_m_runs():
    out = subprocess.run([sys.executable, "-m", "minidl.assign", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "release" in out.stdout and "grade" in out.stdout


# -- the leak search -------------------------------------------------------------------------
def test_text_lines_read_ok_format_tests_and_notebooks():
    ok_test = ("OK_FORMAT = True\ntest = {'name': 'q1', 'suites': [{'cases': [{'code': "
               "'>>> assert double(21) == 42\\n>>> y = 1'}]}]}\n")
    lines = text_lines("q1.py", ok_test.encode())
    assert "assert double(21) == 42" in lines
    nb = {"cells": [{"cell_type": "code", "source": ["def f():\n", "    return 123456789\n"],
                     "metadata": {}, "outputs": []}], "metadata": {}}
    assert "return 123456789" in text_lines("a.ipynb", json.dumps(nb).encode())
    assert text_lines("a.npz", b"\x00return 123456789") == set()


def test_find_leaks_looks_inside_zips(tmp_path):
    secret = {"return x * 2 # the secret doubling line"}
    (tmp_path / "clean.py").write_text("def double(x):\n    ...\n")
    assert find_leaks(tmp_path, secret) == {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("inner/nb.py",
                    "def double(x):\n      return x * 2  # the secret doubling line\n")
    (tmp_path / "export.zip").write_bytes(buf.getvalue())
    assert find_leaks(tmp_path, secret) == {"export.zip": sorted(secret)}


def test_short_or_public_lines_are_not_secrets(tmp_path):
    from minidl.assign.master import read_master
    text = CONFIG + QUESTION.replace(
        "    return x * 2  # the secret doubling line\n",
        "    y = x\n    return x * 2  # the secret doubling line\n")
    text += "\n# %%\nprint('return x * 2 # the secret doubling line')\n"
    master = read_master(write_master(tmp_path, text))
    assert "y = x" not in master.solution_lines           # too short to prove anything
    assert "return x * 2 # the secret doubling line" in master.solution_lines


# -- the feedback assertions used by the tests of the assignments -----------------------------
def _linear_with(backward_W):
    import minidl
    from minidl.layers import Linear

    class Student(Linear):
        def backward(self, dout):
            dx = super().backward(dout)
            self.grads["W"] = backward_W(self.cache["x"], dout)
            return dx
    return Student(4, 3, rng=minidl.default_rng(0)).astype("float64")


def test_feedback_names_a_transposed_gradient():
    import minidl
    from minidl.assign.feedback import assert_gradcheck
    x = minidl.default_rng(1).standard_normal((5, 4))
    assert_gradcheck(_linear_with(lambda x, dout: dout.T @ x), x)  # correct: passes
    with pytest.raises(AssertionError, match=r"grads\['W'\] has shape \(4, 3\).*transposed"):
        assert_gradcheck(_linear_with(lambda x, dout: x.T @ dout), x)
    report = r"gradient check of .*FAILED[\s\S]*FAIL\] W [\s\S]*worst at index"
    with pytest.raises(AssertionError, match=report):
        assert_gradcheck(_linear_with(lambda x, dout: 0.5 * dout.T @ x), x)


def test_feedback_gradcheck_takes_a_float32_layer_as_check_layer_does():
    """check_layer runs a float32 layer in float64 itself; the feedback must not refuse it."""
    import minidl
    from minidl.assign.feedback import assert_gradcheck
    from minidl.layers import Linear
    layer = Linear(4, 3, rng=minidl.default_rng(0))  # the default dtype: float32
    assert layer.params["W"].dtype == "float32"
    assert_gradcheck(layer, minidl.default_rng(1).standard_normal((5, 4)))


def test_feedback_assert_close_reports_the_worst_element():
    import numpy as np
    from minidl.assign.feedback import assert_close
    assert_close("a", np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(AssertionError, match=r"a: 1 of 6 .*index \(1, 2\): got 5, expected 1"):
        assert_close("a", np.array([[1, 1, 1], [1, 1, 5.0]]), np.ones((2, 3)))
    with pytest.raises(AssertionError, match="not written yet"):
        assert_close("forward", None, np.ones(2))
    with pytest.raises(AssertionError, match=r"shape \(3, 2\), expected \(2, 3\) \(the transpose"):
        assert_close("dW", np.ones((3, 2)), np.ones((2, 3)))


def test_same_updates_catches_adam_without_bias_correction():
    import numpy as np
    from minidl import optim
    from minidl.assign.feedback import assert_same_updates

    class NoBiasCorrection(optim.Adam):
        def adam_step(self, theta, g, s):
            b1, b2 = self.betas
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            theta -= self.lr * s["m"] / (np.sqrt(s["v"]) + self.eps)

    assert_same_updates(lambda m: optim.Adam(m, 0.01), lambda m: optim.Adam(m, 0.01))
    with pytest.raises(AssertionError, match="step 1, parameter"):
        assert_same_updates(lambda m: NoBiasCorrection(m, 0.01), lambda m: optim.Adam(m, 0.01))


@pytest.mark.parametrize("method", ["AdaGrad", "RMSProp", "Adam"])
def test_same_updates_catches_eps_inside_the_square_root(method):
    """g / sqrt(v + eps) for torch's g / (sqrt(v) + eps), at the default eps: the two differ
    only where sqrt(v) is near eps, and the made-up gradients were all of order 1, so the
    public tests of A4's AdaGrad and Adam passed it (only the hidden ones, with eps =
    1e-6, failed it)."""
    import numpy as np
    from minidl import optim
    from minidl.assign.feedback import assert_same_updates

    class AdaGrad(optim.AdaGrad):
        def update(self, theta, g, s):
            s["u"] = s["u"] + g * g
            theta -= self.lr * g / np.sqrt(s["u"] + self.eps)

    class RMSProp(optim.RMSProp):
        def update(self, theta, g, s):
            s["v"] = self.alpha * s["v"] + (1 - self.alpha) * g * g
            theta -= self.lr * g / np.sqrt(s["v"] + self.eps)

    class Adam(optim.Adam):
        def update(self, theta, g, s):
            (b1, b2), k = self.betas, s["step"]
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            mhat, vhat = s["m"] / (1 - b1 ** k), s["v"] / (1 - b2 ** k)
            theta -= self.lr * mhat / np.sqrt(vhat + self.eps)

    inside = {"AdaGrad": AdaGrad, "RMSProp": RMSProp, "Adam": Adam}[method]
    ref = lambda m: getattr(optim, method)(m, 0.01)  # noqa: E731
    assert_same_updates(ref, ref)
    with pytest.raises(AssertionError, match="step 1, parameter"):
        assert_same_updates(lambda m: inside(m, 0.01), ref)


@pytest.mark.parametrize("method", ["nesterov", "rprop"])
def test_same_updates_names_an_optimizer_that_changes_the_gradient(method):
    """The update is right but written through g (``g += mu * m``, ``gbar = g; gbar[p < 0] =
    0``): the layer's gradient changes under a preconditioner, a clip or a log that reads it
    after step(), and torch.optim never changes p.grad. It used to pass."""
    import numpy as np
    from minidl import optim
    from minidl.assign.feedback import assert_same_updates

    class NesterovThroughG(optim.SGD):
        def update(self, theta, g, s):
            s["m"] = self.momentum * s["m"] + g
            g += self.momentum * s["m"]
            theta -= self.lr * g

    class RpropThroughG(optim.Rprop):
        def update(self, theta, g, s):
            p = g * s["gprev"]
            factor = np.where(p > 0, self.eta_plus, np.where(p < 0, self.eta_minus, 1.0))
            s["eta"] = np.clip(s["eta"] * factor, self.eta_min, self.eta_max)
            gbar = g
            gbar[p < 0] = 0
            theta -= np.sign(gbar) * s["eta"]
            s["gprev"] = gbar.copy()

    if method == "nesterov":
        mine = lambda m: NesterovThroughG(m, 0.1, momentum=0.9, nesterov=True)  # noqa: E731
        ref = lambda m: optim.SGD(m, 0.1, momentum=0.9, nesterov=True)  # noqa: E731
        step = 1
    else:
        mine, ref = (lambda m: RpropThroughG(m, 0.01)), (lambda m: optim.Rprop(m, 0.01))
        step = 2  # the first sign flip
    with pytest.raises(AssertionError, match=f"step {step}: your optimizer changed the "
                                             "gradient of parameter 0.W in place"):
        assert_same_updates(mine, ref)
    assert_same_updates(ref, ref)


def test_minidl_command_forwards_assign(tmp_path, capsys):
    from minidl.cli import main as minidl_main
    code = minidl_main(["assign", "release", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("minidl assign release: error:") and "does not exist" in err


def test_an_interrupted_command_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    # Ctrl-C during grading or a release ended in a KeyboardInterrupt traceback
    command = sys.modules["minidl.assign.command"]

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "grade", interrupted)
    try:
        code = main(["grade", "a.zip", "b.ipynb"])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped main() (a traceback on the command line)")
    assert code == 130
    assert capsys.readouterr().err == "minidl assign grade: interrupted\n"


def test_a_closed_standard_output_does_not_lose_a_release(tmp_path):
    """`minidl assign release ... | head -1`: the release was made, then printing its paths
    ended in a BrokenPipeError traceback."""
    folder = write_master(tmp_path, CONFIG + QUESTION)
    out = tmp_path / "rel"
    proc = subprocess.Popen([sys.executable, "-m", "minidl", "assign", "release", str(folder),
                             "--out", str(out), "--no-run-tests"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 1 and "standard output failed" in err, err
    assert (out / "student" / "tiny.ipynb").is_file()


def test_notebooks_run_in_this_python_even_with_a_stale_python3_kernel(tmp_path, monkeypatch):
    """A user's 'python3' kernel spec pointing at a deleted Python (a stale
    `ipykernel install --user`) must not decide which Python runs the notebooks: release
    and grading put a spec of their own, running sys.executable, first."""
    from jupyter_client.kernelspec import KernelSpecManager
    from minidl.assign.grade import _child_env
    from minidl.assign.kernel import this_python_kernel
    stale = tmp_path / "user-data" / "kernels" / "python3"
    stale.mkdir(parents=True)
    (stale / "kernel.json").write_text(json.dumps({
        "argv": [str(tmp_path / "gone" / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"], "display_name": "stale", "language": "python"}))
    # on JUPYTER_PATH, searched first (in or out of a virtual environment), as the grader's
    # child process used to put the user's folder
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "user-data"))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] != sys.executable  # stale
    with this_python_kernel():  # release
        assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    assert __import__("os").environ["JUPYTER_PATH"] == str(tmp_path / "user-data")  # restored
    home = tmp_path / "grading" / "home"
    home.mkdir(parents=True)
    env = _child_env(None, home)  # grading: the child's environment
    monkeypatch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


def test_earlier_answers_from_reference_swaps_and_always_restores():
    """The student's function sees the reference inside the block and its own answer
    after it, also when a check inside fails."""
    from minidl.assign.feedback import earlier_answers_from_reference
    namespace = {}
    exec("def helper(x):\n    return 'mine'\n\ndef uses(x):\n    return helper(x)\n", namespace)
    uses = namespace["uses"]
    with earlier_answers_from_reference(uses, helper=lambda x: "reference"):
        assert uses(0) == "reference"
    assert uses(0) == "mine"
    with pytest.raises(AssertionError):
        with earlier_answers_from_reference(uses, helper=lambda x: "reference"):
            assert uses(0) == "mine", "a failing check"
    assert uses(0) == "mine"
    with earlier_answers_from_reference(uses, extra=1):  # a name the notebook lacks
        assert namespace["extra"] == 1
    assert "extra" not in namespace


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_feedback_gradcheck_names_a_pass_that_changes_its_input(where):
    """check_layer works on copies, so a ReLU with x[x < 0] = 0 (or dout[...] = 0) passed
    assert_gradcheck; the caller's array changed under it."""
    from minidl.assign.feedback import assert_gradcheck
    from minidl.layers import ReLU

    class InPlace(ReLU):
        def f(self, x):
            if where == "forward":
                x[x < 0] = 0
                return x
            return super().f(x)

        def df(self):
            return super().df()

        def backward(self, dout):
            if where == "backward":
                dout[self.cache["out"] <= 0] = 0
                return dout
            return super().backward(dout)

    import minidl
    x = minidl.default_rng(0).standard_normal((3, 4))
    arg = "x" if where == "forward" else "dout"
    with pytest.raises(AssertionError, match=f"InPlace.{where} changed its input {arg} in "
                                             "place"):
        assert_gradcheck(InPlace(), x)
    assert_gradcheck(ReLU(), x)  # the library's ReLU leaves both alone
