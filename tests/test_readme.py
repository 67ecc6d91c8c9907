"""The README's Python examples run as written."""
import pathlib
import re

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_python_examples_run(capsys):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README shows Python examples"
    namespace = {}
    for block in blocks:  # later blocks reuse names from earlier ones (model, crit, ...)
        exec(compile(block, str(README), "exec"), namespace)
    assert "PASSED" in capsys.readouterr().out
