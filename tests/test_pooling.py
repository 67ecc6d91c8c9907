"""MaxPool2d, AvgPool2d, GlobalAvgPool2d: gradient checks, R-operator checks, torch parity,
ties, properties, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl.gradcheck import check_backward_rop, check_jvp, check_layer
from minidl.layers import AvgPool2d, GlobalAvgPool2d, MaxPool2d

from conftest import torch_or_skip


@st.composite
def pool_configs(draw, max_side=7):
    """A small valid pooling: (N, C, H, W, kernel, stride or None)."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    H, W = draw(st.integers(kh, max_side)), draw(st.integers(kw, max_side))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return N, C, H, W, (kh, kw), stride


POOLS = {"max": MaxPool2d, "avg": AvgPool2d}


def naive_pool(x, kernel, stride, reduce):
    """Reference: ``reduce`` over each window, one output pixel at a time (host NumPy)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    out = np.zeros((N, C, Ho, Wo))  # (N, C, Ho, Wo)
    for ho in range(Ho):
        for wo in range(Wo):
            window = x[:, :, sh * ho:sh * ho + kh, sw * wo:sw * wo + kw]  # (N, C, kh, kw)
            out[:, :, ho, wo] = reduce(window, axis=(2, 3))
    return out


# -- gradient checks (float64) ------------------------------------------------------------
@pytest.mark.parametrize("kind", list(POOLS))
@given(cfg=pool_configs(), seed=st.integers(0, 2**16))
def test_pool_gradcheck(kind, cfg, seed):
    N, C, H, W, kernel, stride = cfg
    rng = minidl.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    layer = POOLS[kind](kernel, stride)
    for check in (check_layer, check_jvp, check_backward_rop):
        report = check(layer, x, rng=rng)
        assert report.ok, str(report)


@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_global_avg_pool_gradcheck(n, c, h, w, seed):
    rng = minidl.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    for check in (check_layer, check_jvp, check_backward_rop):
        report = check(GlobalAvgPool2d(), x, rng=rng)
        assert report.ok, str(report)


@pytest.mark.parametrize("kernel,stride", [(2, None), ((2, 3), None), (2, 3), ((3, 2), (3, 4))])
def test_max_pool_ties_do_not_fail_the_gradient_check(kernel, stride, rng):
    """Constant and integer-valued inputs tie inside windows: kinks, not errors.

    Only windows that do not overlap: where an element ties in several overlapping
    windows, the argmax rule hands it the douts of some of them only, a valid
    subgradient that need not lie between the one-sided slopes (0 and the sum of all
    those douts) that check_layer's kink test accepts. That case is checked against
    PyTorch instead (test_max_pool_overlapping_ties_match_torch).
    """
    layer = MaxPool2d(kernel, stride)
    constant = np.full((2, 2, 6, 7), 0.5)
    report = check_layer(layer, constant, rng=rng)
    assert report.ok, str(report)
    assert sum(len(c.kinks) for c in report.checks) > 0  # the ties were seen as kinks
    integers = rng.integers(0, 3, size=(2, 2, 6, 7)).astype(np.float64)
    report = check_layer(layer, integers, rng=rng)
    assert report.ok, str(report)


@pytest.mark.parametrize("kernel,stride", [(3, 1), ((2, 3), (1, 2))])
def test_max_pool_overlapping_ties_match_torch(kernel, stride, rng):
    torch = torch_or_skip()
    for x in (np.full((2, 2, 6, 7), 0.5), rng.integers(0, 2, size=(2, 2, 6, 7)) * 1.0):
        layer = MaxPool2d(kernel, stride)
        out = layer.forward(x)
        dout = rng.standard_normal(out.shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        torch.nn.functional.max_pool2d(xt, kernel, stride).backward(torch.from_numpy(dout))
        np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12)


def test_max_pool_tie_goes_to_the_first_maximum():
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])  # one 2x2 window, max 3 twice
    layer = MaxPool2d(2)
    assert float(layer.forward(x)[0, 0, 0, 0]) == 3.0
    dx = layer.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx, [[[[0.0, 1.0], [0.0, 0.0]]]])


# -- reference comparisons ---------------------------------------------------------------
@pytest.mark.parametrize("kind,reduce", [("max", np.max), ("avg", np.mean)])
@given(cfg=pool_configs(), seed=st.integers(0, 999))
def test_pool_forward_matches_naive(kind, reduce, cfg, seed):
    N, C, H, W, kernel, stride = cfg
    x = minidl.default_rng(seed).standard_normal((N, C, H, W))
    expected = naive_pool(x, kernel, stride or kernel, reduce)
    np.testing.assert_allclose(POOLS[kind](kernel, stride).forward(x), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", list(POOLS))
@given(cfg=pool_configs(), ties=st.booleans(), seed=st.integers(0, 999))
def test_pool_matches_torch(kind, cfg, ties, seed):
    torch = torch_or_skip()
    N, C, H, W, kernel, stride = cfg
    rng = minidl.default_rng(seed)
    if ties:  # few distinct values: ties inside windows, where the argmax rule matters
        x = rng.integers(0, 3, size=(N, C, H, W)).astype(np.float64)
    else:
        x = rng.standard_normal((N, C, H, W))
    layer = POOLS[kind](kernel, stride)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    tpool = {"max": torch.nn.MaxPool2d, "avg": torch.nn.AvgPool2d}[kind](kernel, stride)
    xt = torch.from_numpy(x).requires_grad_(True)
    outt = tpool(xt)
    outt.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, outt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_global_avg_pool_matches_torch(rng):
    torch = torch_or_skip()
    x = rng.standard_normal((3, 4, 5, 2))
    layer = GlobalAvgPool2d()
    out = layer.forward(x)
    assert out.shape == (3, 4)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    xt = torch.from_numpy(x).requires_grad_(True)
    outt = torch.nn.functional.adaptive_avg_pool2d(xt, 1).flatten(1)
    outt.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, outt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)


# -- properties ----------------------------------------------------------------------------
@given(cfg=pool_configs(), seed=st.integers(0, 999))
def test_max_is_at_least_mean_and_gradients_conserve_mass(cfg, seed):
    N, C, H, W, kernel, stride = cfg
    rng = minidl.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    mx, avg = MaxPool2d(kernel, stride), AvgPool2d(kernel, stride)
    out_max, out_avg = mx.forward(x), avg.forward(x)
    assert (out_max >= out_avg - 1e-12).all()
    dout = rng.standard_normal(out_max.shape)
    # each output pixel hands out exactly its dout, whatever the overlap
    np.testing.assert_allclose(mx.backward(dout).sum(), dout.sum(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(avg.backward(dout).sum(), dout.sum(), rtol=1e-10, atol=1e-12)


def test_global_avg_pool_is_avg_pool_over_the_whole_image(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(GlobalAvgPool2d().forward(x),
                               AvgPool2d((4, 5)).forward(x)[:, :, 0, 0], rtol=1e-12)


def test_float32_stays_float32(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    for layer in (MaxPool2d(2), AvgPool2d(3, 1), GlobalAvgPool2d()):
        out = layer.forward(x)
        dx = layer.backward(np.ones_like(out))
        assert out.dtype == dx.dtype == np.float32, type(layer).__name__


def test_default_stride_is_the_kernel_size():
    assert MaxPool2d(3).stride == (3, 3)
    assert AvgPool2d((2, 3)).stride == (2, 3)
    assert MaxPool2d(3, 1).stride == (1, 1)


@pytest.mark.parametrize("make", [lambda: MaxPool2d(2), lambda: AvgPool2d((2, 3), 1),
                                  GlobalAvgPool2d], ids=["max", "avg", "global"])
def test_pools_on_each_backend(make, on_backend):
    rng = minidl.default_rng(5)
    x_host = rng.standard_normal((2, 3, 6, 7))
    x = minidl.asarray(x_host, dtype="float64")
    layer = make()
    out = layer.forward(x)
    assert minidl.array_module(out) is minidl.xp()
    dx = layer.backward(minidl.xp().ones_like(out))
    assert dx.shape == x.shape and minidl.array_module(dx) is minidl.xp()
    report = check_layer(layer, x)
    assert report.ok, str(report)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: MaxPool2d(2), lambda: AvgPool2d(2), GlobalAvgPool2d],
                         ids=["max", "avg", "global"])
def test_bad_inputs_give_clear_errors(make):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name} expects input of shape \(N, C, H, W\).*3-D"):
        layer.forward(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(TypeError, match=rf"{name} expects a floating-point input.*int64"):
        layer.forward(np.zeros((1, 3, 4, 4), np.int64))


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_kernel_larger_than_input(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: kernel_size \(3, 2\) is larger "
                                         r"than the input \(2, 5\)"):
        cls((3, 2)).forward(np.zeros((1, 1, 2, 5), np.float32))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(kernel_size=0), ValueError, "kernel_size >= 1"),
    (dict(kernel_size=2, stride=0), ValueError, "stride >= 1"),
    (dict(kernel_size=(1, 2, 3)), TypeError, "kernel_size as an int or a pair"),
])
@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_bad_hyperparameters(cls, kwargs, error, match):
    with pytest.raises(error, match=rf"{cls.__name__} expects {match}"):
        cls(**kwargs)


@pytest.mark.parametrize("make", [lambda cls: cls(3, 2, padding=1),
                                  lambda cls: cls(3, 2, 1),
                                  lambda cls: cls(2, ceil_mode=True)])
@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_pytorch_only_options_are_refused_naming_the_layer(cls, make):
    """MaxPool2d(3, 2, padding=1), a ResNet stem ported from PyTorch, failed with
    "_Pool2d.__init__() got an unexpected keyword argument", naming a private class."""
    with pytest.raises(TypeError, match=f"{cls.__name__} takes kernel_size and stride only"):
        make(cls)
