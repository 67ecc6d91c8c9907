"""Lessons as notebooks: every lesson converts (Jupytext) to a valid notebook, and converted
notebooks run end to end in a Jupyter kernel.

CI also runs every ``lessons/[0-9][0-9]_*.py`` as a script in fast mode (``.ci/run``), so
the lessons' own asserts are exercised there; here we check what only a notebook shows:
the conversion, the cell structure, figures displayed under the inline backend, and the
library's progress bar drawn in a cell's output.
"""
import os
import pathlib

import re

import pytest

jupytext = pytest.importorskip("jupytext", reason="jupytext is a test extra")
nbformat = pytest.importorskip("nbformat", reason="nbformat is a test extra")

ROOT = pathlib.Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


def test_lessons_are_there():
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers, "no lessons found"
    assert numbers == sorted(set(numbers)), f"lesson numbers repeat: {numbers}"


# an absolute path into a home, scratch or mount folder of some machine
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:home|root|Users|tmp|mnt|work|opt)/\w")

@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_converts_to_a_valid_notebook(path):
    nb = jupytext.read(path, fmt="py:percent")
    nbformat.validate(nb)
    kinds = [cell.cell_type for cell in nb.cells]
    assert kinds[0] == "markdown" and nb.cells[0].source.startswith("# Lesson"), \
        f"{path.name}: the first cell should be the markdown title '# Lesson N: ...'"
    assert kinds.count("code") >= 2 and kinds.count("markdown") >= 3, kinds
    # the round trip through the notebook keeps the code cells unchanged
    back = jupytext.reads(jupytext.writes(nb, fmt="ipynb"), fmt="ipynb")
    assert [c.source for c in back.cells if c.cell_type == "code"] == \
        [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_shape(path):
    """Each lesson saves figures through minidl.lesson, asserts what it shows, ends with
    exercises, and is listed in lessons/README.md with its figure."""
    text = path.read_text()
    assert "savefig(" in text, f"{path.name} saves no figure (use minidl.lesson.savefig)"
    assert "\nassert " in text, f"{path.name} asserts nothing"
    last_markdown = text.rsplit("# %% [markdown]", 1)[-1]
    assert "Exercises" in last_markdown, f"{path.name} should end with exercises"
    assert not MACHINE_PATH.search(text), f"{path.name} names a machine path"
    readme = (ROOT / "lessons" / "README.md").read_text()
    figure = f"figures/{path.stem}.png"
    assert f"`{path.name}`" in readme and figure in readme, \
        f"lessons/README.md should list {path.name} with its figure {figure}"
    assert (ROOT / "lessons" / figure).is_file(), f"lessons/{figure} is missing"
    assert f'"{path.stem}"' in text, f"{path.name} should save the figure {figure}"


def _execute(path, tmp_path, monkeypatch, timeout=600):
    """Convert ``path`` and run it in a fresh ``python3`` kernel, in fast mode, with the
    inline backend (as a student's notebook), figures into tmp_path."""
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a test extra")
    pytest.importorskip("ipykernel", reason="ipykernel is a test extra")
    monkeypatch.setenv("MINIDL_FAST", "1")
    monkeypatch.setenv("MINIDL_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("MPLBACKEND", raising=False)   # the kernel picks the inline backend
    # the kernel must import this checkout's minidl (installed or not)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    nb = jupytext.read(path, fmt="py:percent")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     resources={"metadata": {"path": str(tmp_path)}})
    from minidl.assign.kernel import this_python_kernel
    with this_python_kernel():  # python3 = this Python, whatever kernel specs ~ holds
        client.execute()
    nbformat.validate(nb)
    return nb


def _outputs(nb, kind):
    return [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.output_type == kind]


@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
    """Lesson 3 as a notebook: every cell runs, its figure is displayed inline and saved."""
    nb = _execute(ROOT / "lessons" / "03_backprop_and_gradient_check.py", tmp_path,
                  monkeypatch)
    assert not _outputs(nb, "error")
    images = [out for out in _outputs(nb, "display_data") if "image/png" in out["data"]]
    assert images, "the figure should be shown in the notebook"
    assert (tmp_path / "figures" / "03_backprop_and_gradient_check.png").is_file()


@pytest.mark.slow
def test_progress_bar_in_notebook(tmp_path, monkeypatch):
    """Lesson 1 trains with minidl.train.fit: in a notebook its progress bar is drawn."""
    nb = _execute(ROOT / "lessons" / "01_supervised_learning.py", tmp_path, monkeypatch)
    assert not _outputs(nb, "error")
    stderr = "".join(out["text"] for out in _outputs(nb, "stream") if out["name"] == "stderr")
    widgets = [out for out in _outputs(nb, "display_data")
               if "application/vnd.jupyter.widget-view+json" in out["data"]]
    assert "epoch 1/1" in stderr or widgets, \
        "fit's progress bar should appear in the cell output (text on stderr or a widget)"


# -- minidl.lesson, the helpers the lessons share -----------------------------------------
def test_quadratic_is_the_quadratic():
    """lesson.quadratic: Hessian A (exact, from minidl.curvature), and the MSE differs from
    1/2 w'Aw - b'w by the same constant at every w."""
    import minidl
    from minidl import curvature, lesson
    from minidl.losses import MSELoss

    rng = minidl.default_rng(0)
    xp = minidl.xp()
    B = xp.asarray(rng.standard_normal((4, 4)))
    A = B @ B.T + 0.5 * xp.eye(4)                          # (4, 4) SPD
    b = xp.asarray(rng.standard_normal(4))
    model, X, y = lesson.quadratic(A, b)
    crit = MSELoss()
    assert model.params["W"].dtype == X.dtype == y.dtype == A.dtype
    H = curvature.hessian(model, crit, X, y)
    assert float(abs(H - A).max()) < 1e-10
    offsets = []
    for _ in range(3):
        w = xp.asarray(rng.standard_normal(4))
        model.params["W"][0] = w
        mse = crit.forward(model.forward(X), y)
        offsets.append(mse - float(0.5 * w @ A @ w - b @ w))
    assert max(offsets) - min(offsets) < 1e-9 * max(1.0, abs(offsets[0]))
    with pytest.raises(ValueError, match="positive-definite"):
        lesson.quadratic(-A, b)
    with pytest.raises(ValueError, match="shape"):
        lesson.quadratic(A, b[:3])


def test_fast_mode_and_figures(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from minidl import lesson

    monkeypatch.setenv("MINIDL_FAST", "1")
    assert lesson.is_fast() and lesson.choose(full=10, fast=1) == 1
    monkeypatch.setenv("MINIDL_FAST", "0")
    assert not lesson.is_fast() and lesson.choose(full=10, fast=1) == 10
    monkeypatch.setenv("MINIDL_FIGURES", str(tmp_path / "figs"))
    fig = plt.figure()
    path = lesson.savefig(fig, "01_name")
    assert path == str(tmp_path / "figs" / "01_name.png") and os.path.isfile(path)
    assert not plt.fignum_exists(fig.number), "under Agg the figure is closed after saving"
    monkeypatch.delenv("MINIDL_FIGURES")
    monkeypatch.chdir(tmp_path)
    assert lesson.figures_dir() == os.path.join("lessons", "figures")
    (tmp_path / "lessons").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "lessons")
    assert lesson.figures_dir() == "figures"               # a notebook runs in lessons/
    # fast mode never overwrites the committed full-mode figures
    monkeypatch.setenv("MINIDL_FAST", "1")
    assert lesson.figures_dir() == os.path.join("figures", "fast")
    monkeypatch.chdir(tmp_path)
    assert lesson.figures_dir() == os.path.join("lessons", "figures", "fast")


@pytest.mark.parametrize("fast, expected", [("1", "1"), ("0", "unchanged")])
def test_fast_mode_uses_one_blas_thread(fast, expected):
    """In a fresh process, importing minidl.lesson in fast mode limits BLAS to one thread;
    in full mode it leaves the thread count alone."""
    import subprocess
    import sys
    pytest.importorskip("threadpoolctl")
    code = ("import numpy, threadpoolctl\n"
            "def blas():\n"
            "    return [i['num_threads'] for i in threadpoolctl.threadpool_info()\n"
            "            if i['user_api'] == 'blas']\n"
            "before = blas()\n"
            "import minidl.lesson\n"
            "after = blas()\n"
            "print('1' if after and set(after) == {1} else\n"
            "      'unchanged' if after == before else 'other')\n")
    env = dict(os.environ, MINIDL_FAST=fast, OPENBLAS_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [
                   p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == expected


def test_mnist_fast_mode_is_the_bundled_subset(monkeypatch):
    from minidl import lesson

    monkeypatch.setenv("MINIDL_FAST", "1")
    x, y, xt, yt = lesson.mnist(n_train=100, n_test=10)
    assert x.shape == (100, 784) and y.shape == (100,) and xt.shape == (10, 784)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and x.dtype.kind == "f"
    x4, *_ = lesson.mnist(n_train=5, n_test=5, flatten=False)
    assert x4.shape == (5, 1, 28, 28)
