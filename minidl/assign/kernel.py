"""The Jupyter kernel that runs assignment notebooks: always the Python running minidl.

Otter executes a notebook with the kernel named in it, ``python3``. Looked up among the
user's and the system's kernel specs, that name may point at another Python (one without
minidl or Otter), or at one deleted since (a stale ``ipykernel install --user`` from an
old virtual environment): every notebook would then fail to start. Release and grading
therefore put a ``python3`` spec of their own first on ``JUPYTER_PATH``, one that runs
``sys.executable``, the Python that runs the release or the grader.
"""
import contextlib
import json
import os
import pathlib
import sys
import tempfile

__all__ = ["kernel_of_this_python", "this_python_kernel"]


def kernel_of_this_python(folder):
    """Write a kernel spec named ``python3`` running ``sys.executable`` into
    ``folder/kernels/python3``; return ``folder``, to put first on ``JUPYTER_PATH``."""
    spec = pathlib.Path(folder) / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minidl)", "language": "python"}))
    return pathlib.Path(folder)


@contextlib.contextmanager
def this_python_kernel():
    """Inside the ``with`` block, ``python3`` kernels of this process run this Python."""
    before = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="minidl-kernel-") as tmp:
        folder = kernel_of_this_python(tmp)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(folder)] + ([before] if before else []))
        try:
            yield folder
        finally:
            if before is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = before
