"""The one NumPy/CuPy switch.

Every array in minidl is made through this module, so a model runs on the CPU (NumPy) or
on an NVIDIA GPU (CuPy) without changing a line. The pattern is chainer's
``get_array_module``: code asks for the array module when it runs, never at import time::

    xp = backend.xp()                 # the active module (numpy or cupy)
    xp = backend.array_module(x, W)   # the module the given arrays live in

Nothing else in minidl imports NumPy or CuPy for array work.

The environment variable ``MINIDL_BACKEND`` (``numpy`` or ``cupy``) picks the backend at
import; ``set_backend`` changes it later. Training defaults to float32
(``set_default_dtype``); gradient checks always run in float64.
"""
import contextlib
import os

import numpy

__all__ = [
    "set_backend", "get_backend", "xp", "array_module", "asarray", "to_numpy",
    "set_default_dtype", "get_default_dtype", "default_rng", "cupy_available",
    "is_array", "on_device", "BackendError", "host", "check_same_device", "linalg_errors",
    "blas_threads", "blas_single_thread", "check_rng",
]

_state = {"name": "numpy", "module": numpy, "dtype": numpy.dtype("float32")}


class BackendError(RuntimeError):
    """Raised when the CuPy backend is asked for and cannot be used, or arrays are mixed."""


_ASKED = "set_backend('cupy')"                 # who asked for CuPy, for the messages
_INSTEAD = "keep the default 'numpy' backend"  # the way to stay on the CPU


def _load_cupy(asked=_ASKED, instead=_INSTEAD):
    """Import CuPy and check that a GPU answers; raise one clear error otherwise.

    ``asked`` names what asked for CuPy (the call, or the environment variable) and
    ``instead`` how to stay on the CPU, so the message fits the way the user got here.
    """
    try:
        import cupy
    except ImportError as err:
        raise BackendError(
            f"{asked}: CuPy is not installed ({err}). Install it with "
            "`pip install minidl[gpu]` (or the cupy-cudaXXx wheel matching your CUDA), "
            f"or {instead}.") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken
        raise BackendError(
            f"{asked}: CuPy is installed but no GPU can be used ({err}). "
            f"Check `nvidia-smi`, or {instead}.") from None
    if count < 1:
        raise BackendError(f"{asked}: CuPy found no GPU; {instead}.")
    return cupy


def cupy_available():
    """True when CuPy imports and a GPU answers (used by the tests to skip GPU cases)."""
    try:
        _load_cupy()
    except BackendError:
        return False
    return True


def set_backend(name):
    """Choose the array library: ``"numpy"`` (CPU) or ``"cupy"`` (GPU).

    Layers made before the switch keep their arrays where they are; move a model with
    ``model.to_backend()`` (or build it after the switch).
    """
    if name not in ("numpy", "cupy"):
        raise ValueError(f"set_backend expects 'numpy' or 'cupy', got {name!r}")
    _switch(name)


def _switch(name, asked=_ASKED, instead=_INSTEAD):
    module = numpy if name == "numpy" else _load_cupy(asked, instead)
    _state["name"], _state["module"] = name, module


def get_backend():
    """The name of the active backend, ``"numpy"`` or ``"cupy"``."""
    return _state["name"]


def xp():
    """The active array module (numpy or cupy)."""
    return _state["module"]


def is_array(a):
    """True for a NumPy or CuPy ndarray."""
    if isinstance(a, numpy.ndarray):
        return True
    return type(a).__module__.startswith("cupy")


def on_device(a):
    """True when ``a`` is a CuPy (GPU) array."""
    return type(a).__module__.startswith("cupy") and hasattr(a, "device")


def array_module(*arrays):
    """The module of the given arrays; raises a clear error when host and device mix.

    Non-arrays (Python numbers, None) are ignored. With no arrays, the active module.
    """
    where = {}
    for i, a in enumerate(arrays):
        if a is None or not is_array(a):
            continue
        where.setdefault("gpu" if on_device(a) else "cpu", []).append(i)
    if len(where) == 2:
        raise BackendError(
            "arrays live on different devices: arguments {} are NumPy (CPU) arrays and "
            "arguments {} are CuPy (GPU) arrays; move them with minidl.asarray() "
            "(to the active backend) or minidl.to_numpy() (to the CPU) first".format(
                where["cpu"], where["gpu"]))
    if "gpu" in where:
        import cupy
        return cupy
    if "cpu" in where:
        return numpy
    return _state["module"]


def check_same_device(name, *arrays):
    """Raise a ``BackendError`` naming ``name`` when the arrays are not all on one device."""
    try:
        return array_module(*arrays)
    except BackendError as err:
        raise BackendError(f"{name}: {err}") from None


def asarray(a, dtype=None):
    """Move ``a`` (array, list, number) to the active backend's device, as ``dtype``."""
    module = _state["module"]
    if module is numpy and on_device(a):
        a = a.get()
    return module.asarray(a, dtype=dtype)


def to_numpy(a):
    """Bring an array home to a NumPy array (a no-op for NumPy arrays and numbers)."""
    if on_device(a):
        return a.get()
    return numpy.asarray(a)


def set_default_dtype(dtype):
    """Set the floating dtype of new parameters and data: ``"float32"`` or ``"float64"``.

    NumPy's spellings of the two work too (``numpy.float32``, ``"f8"``, ``"double"``);
    anything else, ``None`` included (NumPy would read it as float64), is a ``ValueError``.
    """
    problem = ValueError(f"set_default_dtype expects 'float32' or 'float64', got {dtype!r}")
    if dtype is None:
        raise problem
    try:
        d = numpy.dtype(dtype)
    except TypeError:  # not a dtype at all: 'f32', 'Float32'
        raise problem from None
    if d not in (numpy.float32, numpy.float64):
        raise problem
    _state["dtype"] = d


def get_default_dtype():
    """The floating dtype new parameters and data get (a NumPy dtype)."""
    return _state["dtype"]


def host():
    """The host array module (NumPy), for generator output, file I/O and host-side maths."""
    return numpy


def linalg_errors():
    """The exception classes a failed factorisation raises (``except backend.linalg_errors()``).

    NumPy's ``numpy.linalg.LinAlgError`` ("Eigenvalues did not converge", "Singular
    matrix"), and CuPy's where CuPy is loaded and has its own class.
    """
    errors = [numpy.linalg.LinAlgError]
    if _state["name"] == "cupy":
        cupy_error = getattr(_state["module"].linalg, "LinAlgError", None)
        if isinstance(cupy_error, type) and cupy_error not in errors:
            errors.append(cupy_error)
    return tuple(errors)


_blas_libs = []  # threadpoolctl's handles on the BLAS libraries NumPy loaded (made once)


def _blas_controllers():
    if not _blas_libs:
        try:
            import threadpoolctl
            libs = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                    if lib.user_api == "blas"]
        except Exception:  # no threadpoolctl, or it cannot read the library: assume 1
            libs = []
        _blas_libs.append(libs)
    return _blas_libs[0]


def blas_threads():
    """The number of threads NumPy's BLAS runs its products on right now (1 if unknown).

    Read through threadpoolctl on every call, so it follows ``threadpool_limits``; layers use
    it to size their work (``minidl.parallel``).
    """
    return max((lib.num_threads for lib in _blas_controllers()), default=1)


@contextlib.contextmanager
def blas_single_thread():
    """Hold NumPy's BLAS to one thread inside the ``with`` block, then restore it (used by
    ``minidl.parallel`` while it runs pieces of work in threads of its own)."""
    libs = _blas_controllers()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


def default_rng(seed=None):
    """An explicit random generator (NumPy's PCG64) on the host.

    Random numbers in minidl are drawn on the host from a generator the caller passes in,
    then moved to the device, so a seed gives the same model on either backend.
    """
    return numpy.random.default_rng(seed)


def check_rng(rng, owner):
    """Raise ``TypeError`` unless ``rng`` is a generator (``default_rng(seed)``): minidl
    draws from an explicit generator the caller passes, never from a hidden global one.

    Args:
        rng: what the caller passed.
        owner: who needs it, for the message (``"init.orthogonal"``, ``"random_crop"``).
    """
    if not all(hasattr(rng, name) for name in ("random", "integers", "standard_normal")):
        raise TypeError(f"{owner} needs an explicit generator, e.g. minidl.default_rng(0); "
                        f"got {rng!r}")


def _backend_from_environment(value):
    """Apply ``MINIDL_BACKEND`` at import; errors name the variable, not set_backend."""
    name = value.strip().lower()
    if not name:
        return
    if name not in ("numpy", "cupy"):
        raise ValueError(f"MINIDL_BACKEND={value!r}: expected 'numpy' or 'cupy'; correct the "
                         "variable, or unset it to use the default (numpy)")
    _switch(name, asked=f"MINIDL_BACKEND={value}",
            instead="unset MINIDL_BACKEND (or set it to numpy) to run on the CPU")


_backend_from_environment(os.environ.get("MINIDL_BACKEND", ""))
