"""The README's Python examples run as written."""
import pathlib
import re
import warnings

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_python_examples_run(capsys):
    """... and without a warning: what a reader copies should show the recommended use
    (KFAC's step bound given the learning rate, not the lr = 1 fallback it warns about)."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README shows Python examples"
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in blocks:  # later blocks reuse names from earlier ones (model, crit, ...)
            exec(compile(block, str(README), "exec"), namespace)
    assert "PASSED" in capsys.readouterr().out
