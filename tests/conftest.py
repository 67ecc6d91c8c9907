"""Shared fixtures: the backends present, explicit generators, hypothesis settings."""
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
