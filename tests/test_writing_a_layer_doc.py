"""docs/writing-a-layer.md stays true: its code blocks run, the right layer passes its
gradient check, the planted bugs fail it, and the printed reports match the page."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-layer.md"


def _run_doc(capsys):
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    namespace = {"__name__": "writing_a_layer"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    return text, namespace, capsys.readouterr().out


def test_the_doc_runs_and_the_planted_bugs_fail(capsys):
    _, ns, _ = _run_doc(capsys)
    assert ns["report"].ok
    assert not ns["buggy_report"].ok
    assert not ns["buggy_report"]["a"].ok and ns["buggy_report"]["x"].ok
    assert not ns["shape_report"].ok and "has shape (6, 4), expected (4,)" in str(
        ns["shape_report"]["a"])


def test_the_printed_reports_are_the_ones_on_the_page(capsys):
    text, _, printed = _run_doc(capsys)
    shown = "\n".join(re.findall(r"```text\n(.*?)```", text, re.S))
    for line in printed.splitlines():
        assert line in shown, f"the page does not show this printed line:\n{line}"


def test_the_readme_links_the_doc():
    assert "docs/writing-a-layer.md" in (ROOT / "README.md").read_text()
