"""Each fast path of the layers against its simple twin (the direct, readable version).

The layers' own tests (gradient checks, PyTorch parity, R-operator checks) cover the
maths; these check that every speed- or memory-motivated rewrite computes the same
numbers as the straightforward code it replaced, on the awkward cases (ties, overlapping
windows, strides, odd sizes, float32).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minidl
from minidl.layers import MaxPool2d
from minidl.layers.pooling import window_argmax


# -- MaxPool2d: running maximum over the window offsets vs argmax over copied windows ----
@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(kh, 8)), draw(st.integers(kw, 8))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    ties = draw(st.booleans())
    return N, C, H, W, (kh, kw), (sh, sw), ties


@settings(max_examples=60, deadline=None)
@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_max_pool_running_max_equals_window_argmax(case, seed):
    N, C, H, W, kernel, stride, ties = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    if ties:  # few distinct values: many windows hold their maximum twice
        x = rng.integers(0, 2, size=x.shape).astype(np.float64)
    layer = MaxPool2d(kernel, stride)
    out = layer.forward(x)
    ref_out, ref_argmax = window_argmax(x, kernel, stride)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(layer.cache["argmax"], ref_argmax)
    # backward: the direct scatter, one window at a time
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    expected = np.zeros_like(x)
    (kh, kw), (sh, sw) = kernel, stride
    for n, c, ho, wo in np.ndindex(*out.shape):
        i, j = divmod(int(ref_argmax[n, c, ho, wo]), kw)
        expected[n, c, sh * ho + i, sw * wo + j] += dout[n, c, ho, wo]
    np.testing.assert_allclose(dx, expected, rtol=0, atol=1e-12)
    # jvp gathers the tangent at the same argmax
    Rx = rng.standard_normal(x.shape)
    Rref = np.take_along_axis(
        np.stack([Rx[:, :, i:i + sh * (out.shape[2] - 1) + 1:sh,
                     j:j + sw * (out.shape[3] - 1) + 1:sw]
                  for i in range(kh) for j in range(kw)], axis=2),
        ref_argmax[:, :, None].astype(np.int64), axis=2)[:, :, 0]
    np.testing.assert_array_equal(layer.jvp(Rx), Rref)


def test_max_pool_float32_and_large_windows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    for kernel, stride in ((2, None), (3, 2), (12, 1)):  # 144 elements: int32 argmax
        layer = MaxPool2d(kernel, stride)
        out = layer.forward(x)
        ref, argmax = window_argmax(x, layer.kernel_size, layer.stride)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(layer.cache["argmax"], argmax)
        assert layer.backward(np.ones_like(out)).dtype == np.float32
