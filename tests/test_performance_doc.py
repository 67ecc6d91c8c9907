"""docs/performance.md stays true: its code blocks run and print what the page shows, and
every twin it names exists."""
import pathlib
import re

import minidl

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"


def test_the_doc_runs_and_prints_what_it_shows(capsys):
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    namespace = {"__name__": "performance_doc"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out.split()
    shown = " ".join(re.findall(r"```text\n(.*?)```", text, re.S)).split()
    assert printed == shown == ["True", "True"]


def test_the_fast_paths_and_twins_it_names_exist():
    from minidl import parallel
    from minidl.layers import batchnorm, conv, im2col, pooling
    for module, name in ((im2col, "im2col_wide"), (im2col, "col2im_wide"), (im2col, "im2col"),
                         (im2col, "col2im"), (im2col, "add_windows"),
                         (pooling, "window_argmax"), (parallel, "map_pieces")):
        assert callable(getattr(module, name)), name
    for cls, name in ((conv.Conv2d, "_input_grad"), (conv.Conv2d, "_input_grad_col2im"),
                      (batchnorm.Normalization, "forward"), (batchnorm._BatchNorm, "forward")):
        assert callable(getattr(cls, name)), name
    assert hasattr(minidl.layers.Layer, "needs_input_grad")


def test_the_readme_links_the_doc():
    assert "docs/performance.md" in (ROOT / "README.md").read_text()


def test_the_budgets_it_states_are_the_codes():
    """The page names CHUNK_VALUES, PIECE_VALUES and THREADED_UPDATE_VALUES as powers of
    two; they must be the values the code uses."""
    from minidl import parallel
    from minidl.layers import conv
    from minidl.optim import base
    text = DOC.read_text()
    stated = dict(re.findall(r"`(?:parallel\.)?([A-Z_]+)` = 2\^(\d+)", text))
    assert stated.keys() == {"CHUNK_VALUES", "PIECE_VALUES", "THREADED_UPDATE_VALUES"}
    actual = {"CHUNK_VALUES": conv.CHUNK_VALUES, "PIECE_VALUES": parallel.PIECE_VALUES,
              "THREADED_UPDATE_VALUES": base.THREADED_UPDATE_VALUES}
    for name, power in stated.items():
        assert actual[name] == 2 ** int(power), name


def test_every_twin_in_its_table_exists():
    """Each name in the table's code spans that names minidl code resolves to it."""
    from minidl import parallel
    from minidl.layers import activations, batchnorm, conv, im2col, linear, pooling
    from minidl.optim import base
    where = {"im2col_wide": im2col, "col2im_wide": im2col, "im2col": im2col, "col2im": im2col,
             "add_windows": im2col, "window_argmax": pooling, "sigmoid": activations}
    classes = {"Conv2d": conv.Conv2d, "MaxPool2d": pooling.MaxPool2d, "ReLU": activations.ReLU,
               "_BatchNorm": batchnorm._BatchNorm, "Normalization": batchnorm.Normalization,
               "_Elementwise": activations._Elementwise, "Linear": linear.Linear,
               "Optimizer": base.Optimizer, "LeakyReLU": activations.LeakyReLU}
    table = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    spans = {span for line in table for span in re.findall(r"`([^`]+)`", line)}
    checked = 0
    for span in spans:
        head, _, attributes = span.partition(".")
        if head in classes:
            for attribute in filter(None, attributes.split("/")):
                assert callable(getattr(classes[head], attribute)), span
            checked += 1
        elif head in where and not attributes:
            assert callable(getattr(where[head], head)), span
            checked += 1
    assert checked >= 15
    assert callable(parallel.map_pieces)
    tests = ROOT / "tests"
    assert "def naive_conv(" in (tests / "test_conv.py").read_text()
    assert "def _conv_loops(" in (tests / "test_fast_paths.py").read_text()
