"""Conv2d and im2col: gradient checks, R-operator checks, torch parity, properties, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl.gradcheck import check_backward_rop, check_jvp, check_layer
from minidl.layers import (AvgPool2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, MaxPool2d,
                           Sequential, Tanh)
from minidl.layers.im2col import col2im, im2col

from conftest import torch_or_skip


@st.composite
def conv_configs(draw, max_side=6):
    """A small valid convolution: (N, C, F, H, W, kernel, stride, padding, bias)."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(max(1, kh - 2 * ph), max_side))
    W = draw(st.integers(max(1, kw - 2 * pw), max_side))
    N, C, F = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    bias = draw(st.booleans())
    return N, C, F, H, W, (kh, kw), (sh, sw), (ph, pw), bias


def naive_conv(x, W, b, stride, padding):
    """Reference: the defining sum, one output pixel at a time (host NumPy, float64)."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, Hp, Wp)
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (Wd + 2 * pw - kw) // sw + 1
    out = np.zeros((N, F, Ho, Wo))  # (N, F, Ho, Wo)
    for ho in range(Ho):
        for wo in range(Wo):
            window = x_pad[:, :, sh * ho:sh * ho + kh, sw * wo:sw * wo + kw]  # (N, C, kh, kw)
            out[:, :, ho, wo] = np.einsum("ncij,fcij->nf", window, W)
    if b is not None:
        out += b[:, None, None]
    return out


# -- gradient checks (float64) ------------------------------------------------------------
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv_gradcheck(cfg, seed):
    N, C, F, H, W, kernel, stride, padding, bias = cfg
    rng = minidl.default_rng(seed)
    layer = Conv2d(C, F, kernel, stride=stride, padding=padding, bias=bias, rng=rng)
    x = rng.standard_normal((N, C, H, W))
    report = check_layer(layer, x, rng=rng)
    assert report.ok, str(report)


@given(cfg=conv_configs(max_side=5), seed=st.integers(0, 2**16))
def test_conv_jvp_and_backward_rop(cfg, seed):
    N, C, F, H, W, kernel, stride, padding, bias = cfg
    rng = minidl.default_rng(seed)
    layer = Conv2d(C, F, kernel, stride=stride, padding=padding, bias=bias, rng=rng)
    x = rng.standard_normal((N, C, H, W))
    for check in (check_jvp, check_backward_rop):
        report = check(layer, x, rng=rng)
        assert report.ok, str(report)


def test_conv_gradcheck_non_square_batch_one(rng):
    layer = Conv2d(2, 3, (3, 1), stride=(1, 2), padding=(0, 1), rng=rng)
    x = rng.standard_normal((1, 2, 5, 4))
    report = check_layer(layer, x, rng=rng)
    assert report.ok, str(report)


def test_small_cnn_gradcheck(rng):
    """Conv, pooling and dense layers chained: input, every parameter and both R-ops."""
    model = Sequential(Conv2d(2, 3, 3, padding=1, rng=rng), Tanh(), MaxPool2d(2),
                       Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(0, 1), rng=rng), Tanh(),
                       AvgPool2d(2, 1), Flatten(), Linear(4, 3, rng=rng))
    x = rng.standard_normal((2, 2, 6, 8))
    for check in (check_layer, check_jvp, check_backward_rop):
        report = check(model, x, rng=rng)
        assert report.ok, str(report)
    gap = Sequential(Conv2d(2, 3, 3, rng=rng), GlobalAvgPool2d(), Linear(3, 2, rng=rng))
    assert check_layer(gap, x, rng=rng).ok


# -- reference comparisons ---------------------------------------------------------------
@given(cfg=conv_configs(), seed=st.integers(0, 999))
def test_conv_forward_matches_naive_sum(cfg, seed):
    N, C, F, H, W, kernel, stride, padding, bias = cfg
    rng = minidl.default_rng(seed)
    layer = Conv2d(C, F, kernel, stride=stride, padding=padding, bias=bias,
                   rng=rng).astype("float64")
    x = rng.standard_normal((N, C, H, W))
    b = layer.params["b"] if bias else None
    expected = naive_conv(x, layer.params["W"], b, stride, padding)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)


@given(cfg=conv_configs(max_side=7), seed=st.integers(0, 999))
def test_conv_matches_torch(cfg, seed):
    torch = torch_or_skip()
    N, C, F, H, W, kernel, stride, padding, bias = cfg
    rng = minidl.default_rng(seed)
    layer = Conv2d(C, F, kernel, stride=stride, padding=padding, bias=bias,
                   rng=rng).astype("float64")
    x = rng.standard_normal((N, C, H, W))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)

    tconv = torch.nn.Conv2d(C, F, kernel, stride=stride, padding=padding, bias=bias).double()
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(layer.params["W"]))
        if bias:
            tconv.bias.copy_(torch.from_numpy(layer.params["b"]))
    xt = torch.from_numpy(x).requires_grad_(True)
    outt = tconv(xt)
    outt.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, outt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], tconv.weight.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    if bias:
        np.testing.assert_allclose(layer.grads["b"], tconv.bias.grad.numpy(),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), ((2, 3), (2, 1), (0, 1))])
def test_per_example_grads_match_torch(kernel, stride, padding, rng):
    torch = torch_or_skip()
    layer = Conv2d(2, 3, kernel, stride=stride, padding=padding, rng=rng).astype("float64")
    x = rng.standard_normal((4, 2, 6, 5))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    layer.backward(dout)
    per = layer.per_example_grads()
    assert per["W"].shape == (4,) + layer.params["W"].shape
    assert per["b"].shape == (4, 3)
    Wt = torch.from_numpy(layer.params["W"]).requires_grad_(True)
    bt = torch.from_numpy(layer.params["b"]).requires_grad_(True)
    for n in range(4):
        outt = torch.nn.functional.conv2d(torch.from_numpy(x[n:n + 1]), Wt, bt,
                                          stride=stride, padding=padding)
        gW, gb = torch.autograd.grad(outt, (Wt, bt), torch.from_numpy(dout[n:n + 1]))
        np.testing.assert_allclose(per["W"][n], gW.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(per["b"][n], gb.numpy(), rtol=1e-10, atol=1e-12)


def test_per_example_grads_match_a_loop_of_backward(rng):
    layer = Conv2d(3, 2, 2, stride=2, padding=1, rng=rng).astype("float64")
    x = rng.standard_normal((3, 3, 5, 5))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    layer.backward(dout)
    per = layer.per_example_grads()
    grads = {k: v.copy() for k, v in layer.grads.items()}
    for key in ("W", "b"):
        np.testing.assert_allclose(per[key].sum(axis=0), grads[key], rtol=1e-12, atol=1e-12)
    for n in range(3):
        layer.forward(x[n:n + 1])
        layer.backward(dout[n:n + 1])
        for key in ("W", "b"):
            np.testing.assert_allclose(per[key][n], layer.grads[key], rtol=1e-12, atol=1e-12)


# -- properties ----------------------------------------------------------------------------
def test_patches_reproduce_the_output(rng):
    layer = Conv2d(2, 4, (3, 2), stride=(2, 1), padding=1, rng=rng).astype("float64")
    x = rng.standard_normal((3, 2, 7, 6))
    out = layer.forward(x)  # (N, F, Ho, Wo)
    patches = layer.patches()  # (N, Ho*Wo, C*kh*kw)
    N, F, Ho, Wo = out.shape
    assert patches.shape == (N, Ho * Wo, 2 * 3 * 2)
    W2 = layer.params["W"].reshape(F, -1)  # (F, C*kh*kw)
    rebuilt = patches @ W2.T + layer.params["b"]  # (N, Ho*Wo, F)
    np.testing.assert_allclose(rebuilt.transpose(0, 2, 1).reshape(out.shape), out, rtol=1e-12)


def test_patches_needs_a_forward_pass():
    with pytest.raises(RuntimeError, match="forward pass first"):
        Conv2d(1, 1, 1, rng=minidl.default_rng(0)).patches()


def test_col2im_is_the_adjoint_of_im2col(rng):
    """<im2col(x), c> = <x, col2im(c)> for every x and c: col2im is the transpose."""
    kernel, stride, padding = (3, 2), (2, 1), (1, 2)
    x = rng.standard_normal((2, 3, 6, 5))
    cols = im2col(x, kernel, stride, padding)  # (N, C*kh*kw, L)
    c = rng.standard_normal(cols.shape)
    lhs = float((cols * c).sum())
    rhs = float((x * col2im(c, x.shape, kernel, stride, padding)).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_one_by_one_conv_is_a_linear_layer_over_channels(rng):
    conv = Conv2d(5, 3, 1, rng=rng).astype("float64")
    lin = Linear(5, 3, rng=rng).astype("float64")
    lin.params["W"] = conv.params["W"].reshape(3, 5).copy()
    lin.params["b"] = conv.params["b"].copy()
    x = rng.standard_normal((2, 5, 4, 3))
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 5)  # (N*H*W, C)
    expected = lin.forward(rows).reshape(2, 4, 3, 3).transpose(0, 3, 1, 2)  # (N, F, H, W)
    np.testing.assert_allclose(conv.forward(x), expected, rtol=1e-12)


def test_float32_stays_float32(rng):
    layer = Conv2d(3, 4, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    out = layer.forward(x)
    dx = layer.backward(np.ones_like(out))
    assert out.dtype == dx.dtype == np.float32
    assert layer.grads["W"].dtype == layer.grads["b"].dtype == np.float32
    assert layer.cache["cols"].dtype == np.float32


def test_init_is_pytorch_default_and_reproducible():
    layer = Conv2d(4, 6, (3, 2), rng=minidl.default_rng(7))
    bound = 1 / np.sqrt(4 * 3 * 2)
    W, b = minidl.to_numpy(layer.params["W"]), minidl.to_numpy(layer.params["b"])
    assert W.shape == (6, 4, 3, 2) and b.shape == (6,)
    assert np.abs(W).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(W).max() > 0.8 * bound  # spread over the whole interval
    again = Conv2d(4, 6, (3, 2), rng=minidl.default_rng(7))
    np.testing.assert_array_equal(W, minidl.to_numpy(again.params["W"]))
    assert "b" not in Conv2d(4, 6, 3, bias=False, rng=minidl.default_rng(0)).params


def test_conv_on_each_backend(on_backend):
    rng = minidl.default_rng(3)
    minidl.set_default_dtype("float64")
    layer = Conv2d(2, 3, 3, stride=2, padding=1, rng=rng)
    x_host = rng.standard_normal((2, 2, 5, 6))
    x = minidl.asarray(x_host)
    out = layer.forward(x)
    assert minidl.array_module(out) is minidl.xp()
    W, b = minidl.to_numpy(layer.params["W"]), minidl.to_numpy(layer.params["b"])
    expected = naive_conv(x_host, W, b, (2, 2), (1, 1))
    np.testing.assert_allclose(minidl.to_numpy(out), expected, rtol=1e-10, atol=1e-12)
    dx = layer.backward(minidl.xp().ones_like(out))
    assert dx.shape == x.shape and minidl.array_module(dx) is minidl.xp()
    report = check_layer(layer, x)
    assert report.ok, str(report)


# -- bad input -------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(rng):
    layer = Conv2d(3, 2, 3, padding=1, rng=rng)
    with pytest.raises(ValueError, match=r"Conv2d expects input of shape \(N, C, H, W\).*3-D"):
        layer.forward(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d expects in_channels = 3.*\(2, 4, 5, 5\)"):
        layer.forward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(TypeError, match=r"Conv2d expects a floating-point input.*int64"):
        layer.forward(np.zeros((2, 3, 5, 5), np.int64))
    big = Conv2d(3, 2, (5, 3), padding=1, rng=rng)
    with pytest.raises(ValueError, match=r"Conv2d: kernel_size \(5, 3\) is larger than the "
                                         r"padded input \(4, 5\)"):
        big.forward(np.zeros((2, 3, 2, 3), np.float32))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(kernel_size=0), ValueError, "kernel_size >= 1"),
    (dict(kernel_size=(3, 3, 3)), TypeError, "kernel_size as an int or a pair"),
    (dict(kernel_size="3"), TypeError, "kernel_size as an int or a pair"),
    (dict(kernel_size=3, stride=0), ValueError, "stride >= 1"),
    (dict(kernel_size=3, padding=-1), ValueError, "padding >= 0"),
    (dict(kernel_size=3, padding=1.5), TypeError, "padding as an int or a pair"),
])
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        Conv2d(2, 2, rng=minidl.default_rng(0), **kwargs)


def test_bad_channel_counts():
    with pytest.raises(ValueError, match="positive integer in_channels, got 0"):
        Conv2d(0, 2, 3)
    with pytest.raises(ValueError, match="positive integer out_channels, got 2.0"):
        Conv2d(1, 2.0, 3)
