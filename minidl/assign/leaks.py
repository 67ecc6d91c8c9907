"""Looking for solution and hidden-test lines in the files a student receives.

Otter Assign strips solutions and hidden tests, but only where the master marks them the
way it expects; ``minidl assign release`` therefore checks its own output. Every text a
student can see is split into lines: notebook cells (sources and outputs), the notebook's
metadata (where Otter keeps public tests), every string constant of a Python file (Otter's
OK-format tests hold their code as strings; doctest prompts ``>>>``/``...`` are removed),
plain text files, and the members of any zip file. A line of the master's solution regions
or hidden tests (``Master.secret_lines``: non-trivial, and absent from the public part of
the master) that turns up in one of them is a leak.
"""
import ast
import io
import json
import pathlib
import zipfile

from .master import normalise

__all__ = ["find_leaks", "text_lines"]

_TEXT_SUFFIXES = {".py", ".txt", ".md", ".json", ".yml", ".yaml", ".cfg", ".toml", ".csv",
                  ".html", ".tex", ".r", ".rmd", ".sh", ""}


def _strings(obj):
    """Every string inside a JSON-like object."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _python_strings(text):
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _unprompt(line):
    s = line.lstrip()
    for prompt in (">>> ", "... ", ">>>", "..."):
        if s.startswith(prompt) and (len(s) == len(prompt) or prompt.endswith(" ")):
            return s[len(prompt):]
    return line


def text_lines(name, data):
    """The normalised lines a student can read in one file (``name`` picks the parser)."""
    suffix = pathlib.PurePath(name).suffix.lower()
    out = set()
    if suffix == ".zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for member in zf.namelist():
                if not member.endswith("/"):
                    out |= text_lines(member, zf.read(member))
        return out
    if suffix not in _TEXT_SUFFIXES and suffix != ".ipynb":
        return out  # binary data (images, .npz arrays)
    text = data.decode("utf-8", errors="replace")
    chunks = [text]
    if suffix in (".ipynb", ".json"):
        try:
            chunks += list(_strings(json.loads(text)))
        except ValueError:
            pass
    if suffix == ".py":
        chunks += _python_strings(text)
    for chunk in chunks:
        for line in chunk.splitlines():
            out.add(normalise(line))
            out.add(normalise(_unprompt(line)))
    return out


def find_leaks(folder, secret_lines):
    """``{relative file path: sorted leaked lines}`` for every file under ``folder``."""
    folder = pathlib.Path(folder)
    leaks = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found = text_lines(path.name, path.read_bytes()) & secret_lines
            if found:
                leaks[str(path.relative_to(folder))] = sorted(found)
    return leaks
