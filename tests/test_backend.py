"""The backend switch: module lookup, device moves, dtype defaults, clear errors."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.layers import Linear

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_default_is_numpy_float32():
    assert minidl.get_backend() == "numpy"
    assert minidl.xp() is np
    assert minidl.get_default_dtype() == np.float32


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="'numpy' or 'cupy'"):
        minidl.set_backend("jax")


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU with CuPy")
def test_cupy_unavailable_gives_one_clear_error():
    with pytest.raises(minidl.BackendError, match="set_backend\\('cupy'\\)"):
        minidl.set_backend("cupy")
    assert minidl.get_backend() == "numpy"  # unchanged after the failure


def test_set_default_dtype():
    minidl.set_default_dtype("float64")
    assert Linear(3, 2, rng=minidl.default_rng(0)).params["W"].dtype == np.float64
    with pytest.raises(ValueError, match="float32' or 'float64"):
        minidl.set_default_dtype("int8")


def test_to_numpy_and_asarray_round_trip(on_backend):
    a = minidl.asarray([[1.0, 2.0], [3.0, 4.0]])
    assert minidl.array_module(a) is minidl.xp()
    back = minidl.to_numpy(a)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, [[1, 2], [3, 4]])


def test_array_module_ignores_non_arrays():
    assert backend.array_module(None, 3.0, np.zeros(2)) is np


class _FakeDeviceArray:
    """Stands in for a CuPy array (module name 'cupy...', has .device) without a GPU."""
    __module__ = "cupy._core.core"
    device = 0


def test_mixing_host_and_device_arrays_names_which_is_where():
    with pytest.raises(minidl.BackendError) as err:
        backend.array_module(np.zeros(2), _FakeDeviceArray(), np.ones(1))
    msg = str(err.value)
    assert "arguments [0, 2] are NumPy (CPU)" in msg and "arguments [1] are CuPy (GPU)" in msg


def test_default_rng_is_explicit_and_reproducible():
    a = minidl.default_rng(7).standard_normal(3)
    b = minidl.default_rng(7).standard_normal(3)
    np.testing.assert_array_equal(a, b)


def test_model_moves_and_state_dict_is_host(on_backend):
    layer = Linear(4, 3, rng=minidl.default_rng(0))
    layer.to_backend()
    assert minidl.array_module(layer.params["W"]) is minidl.xp()
    sd = layer.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())


def test_every_random_draw_needs_an_explicit_generator_and_says_who_asked():
    """One check (backend.check_rng) for every function that draws: None, a seed or
    NumPy's global np.random module is a TypeError naming the function."""
    import minidl
    from minidl import curvature, data, init
    from minidl.layers import Linear
    from minidl.losses import MSELoss
    net, x = Linear(2, 1, rng=minidl.default_rng(0)).astype("float64"), np.ones((3, 2))
    images = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    calls = {"init.orthogonal": lambda rng: init.orthogonal((3, 2), rng),
             "random_crop": lambda rng: data.random_crop(images, 2, rng),
             "random_hflip": lambda rng: data.random_hflip(images, rng),
             "lanczos": lambda rng: curvature.lanczos(net, MSELoss(), x, np.ones((3, 1)), rng),
             "true_fisher": lambda rng: curvature.true_fisher(net, MSELoss(), x,
                                                              np.ones((3, 1)), rng)}
    for owner, call in calls.items():
        for bad in (None, 0, np.random):
            with pytest.raises(TypeError, match=f"{owner} needs an explicit generator"):
                call(bad)
        call(minidl.default_rng(0))  # a generator is fine


@pytest.mark.parametrize("bad", [None, "f32", "Float32", "float16", "int32", "half"])
def test_set_default_dtype_refuses_what_is_not_float32_or_float64(bad):
    """None would be NumPy's float64 and 'f32' NumPy's TypeError 'not understood':
    both get the message that says which two values work, and the dtype stays."""
    before = minidl.get_default_dtype()
    with pytest.raises(ValueError, match=r"expects 'float32' or 'float64', got "
                                         + re.escape(repr(bad))):
        minidl.set_default_dtype(bad)
    assert minidl.get_default_dtype() == before


@pytest.mark.parametrize("spelling, dtype", [("float64", np.float64), (np.float32, np.float32),
                                             ("f8", np.float64), ("double", np.float64)])
def test_set_default_dtype_takes_numpys_spellings_of_the_two(spelling, dtype):
    minidl.set_default_dtype(spelling)
    assert minidl.get_default_dtype() == dtype


def _import_with_backend(value):
    """Import minidl in a fresh interpreter with MINIDL_BACKEND=value: (returncode, stderr)."""
    env = dict(os.environ, MINIDL_BACKEND=value)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "")
                                                       .split(os.pathsep) if p])
    done = subprocess.run([sys.executable, "-c", "import minidl; print(minidl.get_backend())"],
                          env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout.strip(), done.stderr


@pytest.mark.parametrize("typo", ["numpyy", "gpu"])
def test_a_misspelt_minidl_backend_names_the_variable(typo):
    code, _, err = _import_with_backend(typo)
    assert code != 0
    assert f"ValueError: MINIDL_BACKEND='{typo}': expected 'numpy' or 'cupy'" in err, err
    assert "unset it" in err and "set_backend" not in err.splitlines()[-1], err


def test_minidl_backend_is_read_without_case_or_spaces():
    assert _import_with_backend(" NumPy ")[:2] == (0, "numpy")
    assert _import_with_backend("")[:2] == (0, "numpy")


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU with CuPy")
def test_minidl_backend_cupy_without_cupy_says_how_to_stay_on_the_cpu():
    code, _, err = _import_with_backend("cupy")
    last = err.strip().splitlines()[-1]
    assert code != 0 and last.startswith("minidl.backend.BackendError: MINIDL_BACKEND=cupy: "), err
    assert "unset MINIDL_BACKEND (or set it to numpy)" in last and "set_backend" not in last
