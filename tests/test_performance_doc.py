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
