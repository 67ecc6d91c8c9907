"""Shared fixtures: the backends present, explicit generators, hypothesis settings, a
folder that cannot be written."""
import builtins
import errno
import io
import os

import pytest

import minidl
from minidl import backend

try:
    from hypothesis import settings
    settings.register_profile("minidl", deadline=None, max_examples=25, derandomize=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minidl"))
except ImportError:  # hypothesis is in the test extras
    pass

GPU_REASON = "CuPy backend needs CuPy and a working NVIDIA GPU; neither is present here"


def backends():
    """numpy always; cupy as a case that skips with a stated reason where absent."""
    return ["numpy", pytest.param("cupy", marks=pytest.mark.skipif(
        not backend.cupy_available(), reason=GPU_REASON))]


@pytest.fixture(params=backends())
def on_backend(request):
    """Run the test on each backend present; restore numpy afterwards."""
    minidl.set_backend(request.param)
    yield request.param
    minidl.set_backend("numpy")


@pytest.fixture(autouse=True)
def _restore_defaults():
    yield
    minidl.set_backend("numpy")
    minidl.set_default_dtype("float32")


@pytest.fixture
def rng():
    return minidl.default_rng(1234)


def torch_or_skip():
    """Import torch, or skip the test with the reason."""
    return pytest.importorskip(
        "torch", reason="PyTorch is not installed: parity tests need `pip install torch` "
                        "(CI installs torch==2.13.0)")


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """An existing folder into which nothing can be written, also by root.

    It is made read-only (mode 555), and since root writes through permissions, creating a
    file or folder inside it (``os.mkdir``, ``os.open``, ``open`` for writing,
    ``os.replace``) fails with EACCES as the OS does for an ordinary user.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()
    inside = os.path.realpath(folder) + os.sep

    def is_inside(path):
        return (not isinstance(path, int)
                and (os.path.realpath(os.fspath(path)) + os.sep).startswith(inside))

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    def guard(real, writes):
        def guarded(path, *args, **kw):
            if is_inside(path) and writes(*args, **kw):
                refuse(path)
            return real(path, *args, **kw)
        return guarded

    def opens_to_write(mode="r", *args, **kw):
        return any(c in kw.get("mode", mode) for c in "wax+")

    def flags_write(flags, *args, **kw):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

    def always(*args, **kw):
        return True

    def guarded_replace(src, dst, *args, **kw):
        if is_inside(dst):
            refuse(dst)
        return real_replace(src, dst, *args, **kw)

    real_replace = os.replace
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, always))
    monkeypatch.setattr(os, "open", guard(os.open, flags_write))
    monkeypatch.setattr(io, "open", guard(io.open, opens_to_write))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, opens_to_write))
    monkeypatch.setattr(os, "replace", guarded_replace)
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)
