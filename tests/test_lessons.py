"""Every lesson runs top to bottom (headless), so lectures never drift from the library."""
import pathlib
import runpy

import pytest

LESSONS = sorted((pathlib.Path(__file__).parent.parent / "lessons").glob("[0-9]*.py"))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(path, monkeypatch, capsys):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out  # a lesson shows the student something
