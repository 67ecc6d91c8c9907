"""Reading an assignment's master: a Jupytext percent ``.py`` in Otter Assign's format.

An assignment lives in ``assignments/NN_name/`` and its master is ``NN_name.py``. The file
is a notebook written as Python (``# %%`` code cells, ``# %% [markdown]`` text, ``# %% [raw]``
for Otter's structure cells), so that diffs stay readable. Otter Assign's format, briefly::

    # %% [raw]                         # once, first: the assignment's configuration (YAML)
    # # ASSIGNMENT CONFIG
    # name: 01_mlp_backprop

    # %% [raw]                         # a question, with its points
    # # BEGIN QUESTION
    # name: q1
    # points: 3
    # %% [markdown]                    # the prompt students read
    # %% [raw]
    # # BEGIN SOLUTION
    # %%                               # code; the hidden part sits between the markers
    # def forward(self, x):
    #     # BEGIN SOLUTION
    #     return x @ self.params["W"].T
    #     # END SOLUTION
    # %% [raw]
    # # END SOLUTION
    # %% [raw]
    # # BEGIN TESTS
    # %%                               # one code cell per test; public unless it opens
    # assert ...                       # with a TEST CONFIG docstring saying hidden: true
    # %% [raw]
    # # END TESTS
    # %% [raw]
    # # END QUESTION

Otter replaces each ``# BEGIN SOLUTION`` .. ``# END SOLUTION`` region (and the right-hand
side of a line ending in ``# SOLUTION``) by ``...`` in the student notebook, but only that:
a code cell inside a solution block that has no markers is released unchanged, solution
and all (what happens to a question written without a prompt). ``read_master`` refuses
such a master before any work starts, and collects the lines a release must never show
(``Master.secret_lines``), which ``minidl.assign.leaks`` then looks for in the released files.
"""
import dataclasses
import pathlib
import re

from .errors import AssignError, require

__all__ = ["Master", "read_master", "master_path", "normalise"]

_BOUNDARY = re.compile(r"#\s+(begin|end)\s+(question|prompt|solution|tests)\b", re.I)
_CONFIG = re.compile(r"#\s+assignment\s+config\b", re.I)
_INLINE_BEGIN = re.compile(r"\s*# BEGIN SOLUTION")
_INLINE_END = "# END SOLUTION"
_LINE_MARK = re.compile(r"^(?P<code>.*?)\s*# ?SOLUTION\s*$")
_TEST_CONFIG = re.compile(r'"""\s*# BEGIN TEST CONFIG(?P<yaml>.*?)"""\s*# END TEST CONFIG',
                          re.S)
MIN_SECRET_CHARS = 8   # shorter lines ("pass", "else:", "x = 0") prove nothing when found

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def normalise(line):
    """A line with its indentation dropped and runs of white space collapsed."""
    return " ".join(line.split())


@dataclasses.dataclass
class Master:
    """A parsed master.

    Attributes:
        path: the ``.py`` file.
        name: its stem (``01_mlp_backprop``), which names the released notebook.
        notebook: the master as an ``nbformat`` notebook, with a python3 kernelspec.
        config: the ``# ASSIGNMENT CONFIG`` YAML as a dict.
        config_index: the index of that raw cell in ``notebook.cells``.
        questions: ``{name: points}`` in order.
        solution_lines: normalised non-trivial lines of every solution region.
        hidden_lines: normalised non-trivial lines of every hidden test.
    """
    path: pathlib.Path
    name: str
    notebook: object
    config: dict
    config_index: int
    questions: dict
    solution_lines: set
    hidden_lines: set

    @property
    def secret_lines(self):
        """Everything a student release must not contain: solutions and hidden tests."""
        return self.solution_lines | self.hidden_lines


def master_path(folder):
    """``assignments/NN_name`` -> ``assignments/NN_name/NN_name.py``, or ``AssignError``."""
    folder = pathlib.Path(folder)
    if folder.is_file() and folder.suffix == ".py":
        folder = folder.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise AssignError(f"expected an assignment folder (assignments/NN_name), got "
                          f"'{folder}', which {state}")
    path = folder / f"{folder.resolve().name}.py"
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.py"))
        raise AssignError(f"expected the master '{path}' (a Jupytext percent .py named after its "
                          f"folder), found {found or 'no .py file'} in '{folder}'")
    return path


def _source(cell):
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def _inline_regions(lines):
    """Split a code cell's lines into (secret, public) by the inline solution markers."""
    secret, public, inside = [], [], False
    for line in lines:
        if _INLINE_BEGIN.match(line):
            inside = True
            continue
        if line.rstrip().endswith(_INLINE_END):
            inside = False
            continue
        mark = _LINE_MARK.match(line) if not line.rstrip().endswith("NO PROMPT") else None
        if inside:
            secret.append(line)
        elif mark:
            code = mark.group("code")
            secret.append(code)
            if "=" in code:  # "x = expr  # SOLUTION" releases "x = ...": expr is the secret
                secret.append(code.split("=", 1)[1])
        else:
            public.append(line)
    return secret, public, inside


def _has_markers(lines):
    return any(_INLINE_BEGIN.match(ln) or _LINE_MARK.match(ln) for ln in lines)


def read_master(folder):
    """Read and check the master of an assignment folder.

    Refuses (``AssignError``) a file that is not an Otter master, unbalanced or misplaced
    blocks, a question without ``name``, ``points`` or tests, and a code cell in a solution
    block without solution markers (Otter would release it unchanged).

    Returns:
        ``Master``.
    """
    path = master_path(folder)
    jupytext = require("jupytext")
    yaml = require("yaml")
    text = path.read_text(encoding="utf-8")
    if "# %%" not in text:
        raise AssignError(f"'{path}' is not a Jupytext percent notebook (no '# %%' cell "
                          "markers); write the master with '# %%' cells as in "
                          "assignments/README.md")
    nb = jupytext.reads(text, fmt="py:percent")
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})

    config, config_index = None, None
    questions, stack, question = {}, [], None
    secret, hidden, public = [], [], []
    has_tests = set()
    for i, cell in enumerate(nb.cells):
        src = _source(cell)
        lines = src.splitlines()
        where = f"'{path.name}', cell {i + 1} (starting {lines[0][:50]!r})" if lines else \
            f"'{path.name}', cell {i + 1}"
        if cell.cell_type == "raw" and lines and _CONFIG.match(lines[0]):
            if config is not None:
                raise AssignError(f"{where}: a second '# ASSIGNMENT CONFIG' cell")
            config = yaml.safe_load("\n".join(lines[1:])) or {}
            if not isinstance(config, dict):
                raise AssignError(f"{where}: the assignment config must be a YAML mapping")
            config_index = i
            continue
        m = _BOUNDARY.match(lines[0]) if (cell.cell_type == "raw" and lines) else None
        if m:
            kind, block = m.group(1).lower(), m.group(2).lower()
            if kind == "begin":
                if block == "question":
                    if stack:
                        raise AssignError(f"{where}: BEGIN QUESTION inside another block")
                    qconf = yaml.safe_load("\n".join(lines[1:])) or {}
                    if not isinstance(qconf, dict) or "name" not in qconf:
                        raise AssignError(f"{where}: a question needs 'name:' in its config")
                    if "points" not in qconf:
                        raise AssignError(f"{where}: question {qconf['name']!r} has no "
                                          "'points:'; give every question its points")
                    question = str(qconf["name"])
                    if question in questions:
                        raise AssignError(f"{where}: question name {question!r} used twice")
                    questions[question] = qconf["points"]
                elif not stack:
                    raise AssignError(f"{where}: BEGIN {block.upper()} outside a question")
                stack.append(block)
            else:
                if not stack or stack[-1] != block:
                    raise AssignError(f"{where}: END {block.upper()} does not close the "
                                      f"open block ({stack[-1].upper() if stack else 'none'})")
                stack.pop()
                if block == "question":
                    if question not in has_tests:
                        raise AssignError(f"'{path.name}': question {question!r} has no "
                                          "tests (BEGIN TESTS .. END TESTS)")
                    question = None
            continue
        block = stack[-1] if stack else None
        if block == "tests":
            if cell.cell_type != "code":
                raise AssignError(f"{where}: only code cells belong in a tests block")
            has_tests.add(question)
            tc = _TEST_CONFIG.search(src)
            tconf = (yaml.safe_load(tc.group("yaml")) or {}) if tc else {}
            _check_test_statements(_TEST_CONFIG.sub("", src), where)
            body = _TEST_CONFIG.sub("", src).splitlines()
            (hidden if tconf.get("hidden") else public).extend(body)
        elif block == "solution" and cell.cell_type == "markdown":
            secret.extend(lines)
        elif block == "solution" and cell.cell_type == "code":
            if not _has_markers(lines):
                raise AssignError(
                    f"{where}: this code cell of question {question!r} is in a solution "
                    "block but has no '# BEGIN SOLUTION' / '# END SOLUTION' lines (or a line "
                    "ending in '# SOLUTION'), so Otter would release it to students "
                    "unchanged; mark the lines to hide")
            s, p, open_ = _inline_regions(lines)
            if open_:
                raise AssignError(f"{where}: '# BEGIN SOLUTION' without '# END SOLUTION'")
            secret.extend(s)
            public.extend(p)
        elif cell.cell_type == "code":
            s, p, open_ = _inline_regions(lines)
            if open_:
                raise AssignError(f"{where}: '# BEGIN SOLUTION' without '# END SOLUTION'")
            secret.extend(s)
            public.extend(p)
        else:
            public.extend(lines)
    if config is None:
        raise AssignError(f"'{path}' is not an Otter master: it has no raw cell starting "
                          "with '# ASSIGNMENT CONFIG'")
    if stack:
        raise AssignError(f"'{path.name}': the file ends inside an open {stack[-1].upper()} "
                          "block")
    if not questions:
        raise AssignError(f"'{path.name}': no questions (BEGIN QUESTION .. END QUESTION)")
    seen = {normalise(ln) for ln in public}
    solution_lines = _secrets(secret, seen)
    hidden_lines = _secrets(hidden, seen | {normalise(ln) for ln in secret})
    return Master(path=path, name=path.stem, notebook=nb, config=config,
                  config_index=config_index, questions=questions,
                  solution_lines=solution_lines, hidden_lines=hidden_lines)


def _check_test_statements(code, where):
    """Refuse a bare expression in a test: Otter runs tests as doctests, where its printed
    value would count as unexpected output and fail the test on a correct answer. Calls of
    ``assert_*`` helpers (which return None) are the exception."""
    import ast
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise AssignError(f"{where}: the test does not parse: {e}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Expr):
            continue
        value = node.value
        func = value.func if isinstance(value, ast.Call) else None
        name = getattr(func, "id", getattr(func, "attr", ""))
        docstring = isinstance(value, ast.Constant) and isinstance(value.value, str)
        if not docstring and not name.startswith("assert"):
            raise AssignError(
                f"{where}: line {node.lineno} of this test is a bare expression; Otter's "
                "doctest would print its value and fail the test; assign it (_ = ...) or "
                "assert on it")


def _secrets(lines, public):
    out = set()
    for line in lines:
        n = normalise(line)
        if len(n.replace(" ", "")) >= MIN_SECRET_CHARS and n not in public:
            out.add(n)
    return out
