# %% [raw]
# # ASSIGNMENT CONFIG
# name: 02_cnn_layers
# export_cell:
#   pdf: false
# check_all_cell: true

# %% [markdown]
# # Assignment 2: convolution and pooling layers
#
# You write a 2-D convolution three ways (naive loops, the im2col matrix, a vectorised
# `Conv2d` layer with its backward pass) and a max-pooling layer, check their gradients,
# and time your convolution against minidl's.
#
# Layout (PyTorch's and minidl's): images are `(N, C, H, W)`; a convolution has weights
# `W` of shape `(F, C, kh, kw)` and bias `b` of shape `(F,)`. With stride `s` and zero
# padding `p` the output is `(N, F, Ho, Wo)`, `Ho = (H + 2p - kh) // s + 1` (same for `Wo`),
#
# $$\text{out}[n, f, i, j] = b_f + \sum_{c, u, v} W[f, c, u, v]\;
#   x_{\text{pad}}[n, c, s i + u, s j + v].$$
#
# As in PyTorch this is a cross-correlation (the kernel is not flipped).

# %%
import time

import numpy as np

import minidl
from minidl.layers import Layer
from minidl.gradcheck import check_layer

rng = minidl.default_rng(0)

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2
# all_or_nothing: true

# %% [markdown]
# **Question 1 (2 points).** Write `conv2d_naive(x, W, b, stride, padding)` with explicit
# loops over the output positions (use `np.pad` for the padding). It is slow; it is the
# reference you can trust.

# %% [raw]
# # BEGIN SOLUTION

# %%
def conv2d_naive(x, W, b, stride=1, padding=0):
    """out (N, F, Ho, Wo) of the convolution of x (N, C, H, W) with W (F, C, kh, kw)."""
    # BEGIN SOLUTION
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (Wd + 2 * padding - kw) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((N, F, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xpad[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("ncuv,fcuv->nf", patch, W) + b
    return out
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.layers as _L
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(1)
_ref = _L.Conv2d(2, 3, 3, stride=1, padding=1, rng=_r).astype("float64")
_x = _r.standard_normal((2, 2, 5, 5))
assert_close("conv2d_naive", conv2d_naive(_x, _ref.params["W"], _ref.params["b"], 1, 1), _ref.forward(_x))
_ref = _L.Conv2d(2, 2, (3, 2), stride=2, padding=0, rng=_r).astype("float64")
_x = _r.standard_normal((1, 2, 7, 5))
assert_close("conv2d_naive (stride 2, 3x2 kernel)", conv2d_naive(_x, _ref.params["W"], _ref.params["b"], 2, 0), _ref.forward(_x))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(21)
_ref = _L.Conv2d(3, 4, (2, 3), stride=2, padding=1, rng=_r).astype("float64")
_x = _r.standard_normal((2, 3, 7, 6))
assert_close("conv2d_naive", conv2d_naive(_x, _ref.params["W"], _ref.params["b"], 2, 1), _ref.forward(_x))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 2
# all_or_nothing: true

# %% [markdown]
# **Question 2 (2 points).** Write `im2col(x, kh, kw, stride, padding)`: one row per output
# position, rows ordered by `(n, i, j)`, and in each row the window `x_pad[n, :, s i:s i+kh,
# s j:s j+kw]` raveled in `(c, u, v)` order, so the result has shape
# `(N Ho Wo, C kh kw)` and the convolution becomes one matrix product,
# `cols @ W.reshape(F, -1).T`. Loop over the `kh * kw` kernel offsets at most, not over
# output positions.

# %% [raw]
# # BEGIN SOLUTION

# %%
def im2col(x, kh, kw, stride=1, padding=0):
    """cols (N*Ho*Wo, C*kh*kw): every receptive field of x (N, C, H, W) as one row."""
    # BEGIN SOLUTION
    N, C, H, Wd = x.shape
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (Wd + 2 * padding - kw) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((N, Ho, Wo, C, kh, kw), dtype=x.dtype)
    for u in range(kh):
        for v in range(kw):
            window = xpad[:, :, u:u + stride * Ho:stride, v:v + stride * Wo:stride]
            cols[:, :, :, :, u, v] = window.transpose(0, 2, 3, 1)
    return cols.reshape(N * Ho * Wo, C * kh * kw)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close
_x = np.arange(2 * 1 * 3 * 3, dtype=float).reshape(2, 1, 3, 3)
_expected = np.array([[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]], dtype=float)
assert_close("im2col", im2col(_x, 2, 2, 1, 0), np.concatenate([_expected, _expected + 9]))
_x = minidl.default_rng(6).standard_normal((1, 2, 5, 4))
_xp = np.pad(_x, ((0, 0), (0, 0), (1, 1), (1, 1)))
_rows = [_xp[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 3].ravel() for i in range(3) for j in range(2)]
assert_close("im2col (stride 2, padding 1, 2x3 kernel)", im2col(_x, 2, 3, 2, 1), np.array(_rows))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(22)
_x = _r.standard_normal((2, 3, 6, 5))
_xp = np.pad(_x, ((0, 0), (0, 0), (1, 1), (1, 1)))
_rows = [_xp[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 2].ravel() for n in range(2) for i in range(3) for j in range(3)]
assert_close("im2col (stride 2, padding 1)", im2col(_x, 3, 2, 2, 1), np.array(_rows))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 4
# all_or_nothing: true

# %% [markdown]
# **Question 3 (4 points).** Complete the vectorised `Conv2d` layer. Forward: im2col, one
# matrix product, reshape to `(N, F, Ho, Wo)`. Backward, with `D` = `dout` laid out as
# `(N Ho Wo, F)` and `Wm = W.reshape(F, -1)`:
#
# $$dW = (D^\top\, \text{cols}) \text{ reshaped to } (F, C, k_h, k_w), \quad
#   db = \textstyle\sum_{\text{rows}} D, \quad d\text{cols} = D\, W_m,$$
#
# and `dx` is `col2im(dcols)`: the adjoint of im2col, which adds each row back onto the
# window it came from (overlapping windows add up) and drops the padding. Write `col2im`
# too.

# %% [raw]
# # BEGIN SOLUTION

# %%
def col2im(cols, x_shape, kh, kw, stride=1, padding=0):
    """The adjoint of im2col: dx (N, C, H, W) from dcols (N*Ho*Wo, C*kh*kw)."""
    # BEGIN SOLUTION
    N, C, H, Wd = x_shape
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (Wd + 2 * padding - kw) // stride + 1
    cols = cols.reshape(N, Ho, Wo, C, kh, kw)
    xpad = np.zeros((N, C, H + 2 * padding, Wd + 2 * padding), dtype=cols.dtype)
    for u in range(kh):
        for v in range(kw):
            xpad[:, :, u:u + stride * Ho:stride, v:v + stride * Wo:stride] += \
                cols[:, :, :, :, u, v].transpose(0, 3, 1, 2)
    return xpad[:, :, padding:padding + H, padding:padding + Wd]
    # END SOLUTION


class Conv2d(Layer):
    """Convolution layer, W (F, C, kh, kw), b (F,), square kernel, stride, zero padding."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, rng=None):
        super().__init__()
        rng = rng if rng is not None else minidl.default_rng()
        bound = 1.0 / np.sqrt(in_channels * kernel_size ** 2)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.params["W"] = rng.uniform(-bound, bound, shape)
        self.params["b"] = rng.uniform(-bound, bound, (out_channels,))
        self.k, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        # BEGIN SOLUTION
        N, C, H, Wd = x.shape
        F = self.params["W"].shape[0]
        cols = im2col(x, self.k, self.k, self.stride, self.padding)
        Ho = (H + 2 * self.padding - self.k) // self.stride + 1
        Wo = (Wd + 2 * self.padding - self.k) // self.stride + 1
        out = cols @ self.params["W"].reshape(F, -1).T + self.params["b"]
        self.cache["x_shape"], self.cache["cols"] = x.shape, cols
        return out.reshape(N, Ho, Wo, F).transpose(0, 3, 1, 2)
        # END SOLUTION

    def backward(self, dout):
        # BEGIN SOLUTION
        W = self.params["W"]
        F = W.shape[0]
        D = dout.transpose(0, 2, 3, 1).reshape(-1, F)
        self.grads["W"] = (D.T @ self.cache["cols"]).reshape(W.shape)
        self.grads["b"] = D.sum(axis=0)
        dcols = D @ W.reshape(F, -1)
        return col2im(dcols, self.cache["x_shape"], self.k, self.k, self.stride, self.padding)
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# Conv2d is graded with minidl's im2col in place of yours (question 2 grades yours);
# minidl's columns (C kh kw, N Ho Wo), transposed, are question 2's (N Ho Wo, C kh kw)
from minidl.assign.feedback import assert_gradcheck, earlier_answers_from_reference
from minidl.layers import im2col as _im
def _ref_im2col(x, kh, kw, stride=1, padding=0):
    return _im.im2col(x, (kh, kw), (stride, stride), (padding, padding)).T
with earlier_answers_from_reference(Conv2d.forward, im2col=_ref_im2col):
    assert_gradcheck(Conv2d(2, 3, 3, stride=1, padding=1, rng=minidl.default_rng(3)), minidl.default_rng(4).standard_normal((2, 2, 4, 4)))
    assert_gradcheck(Conv2d(2, 2, 3, stride=2, padding=1, rng=minidl.default_rng(7)), minidl.default_rng(8).standard_normal((1, 2, 5, 6)))
    # taller than wide: the output is 4 x 3 (Ho from H, Wo from W)
    assert_gradcheck(Conv2d(3, 2, 3, stride=2, padding=1, rng=minidl.default_rng(9)), minidl.default_rng(10).standard_normal((2, 3, 8, 5)))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L
from minidl.assign.feedback import assert_close, assert_gradcheck, earlier_answers_from_reference
from minidl.layers import im2col as _im
def _ref_im2col(x, kh, kw, stride=1, padding=0):
    return _im.im2col(x, (kh, kw), (stride, stride), (padding, padding)).T
_r = minidl.default_rng(23)
_mine = Conv2d(3, 4, 3, stride=2, padding=1, rng=_r)
_ref = _L.Conv2d(3, 4, 3, stride=2, padding=1).astype("float64")
_ref.params["W"], _ref.params["b"] = _mine.params["W"].copy(), _mine.params["b"].copy()
_x = _r.standard_normal((2, 3, 7, 6))
_out = _ref.forward(_x)
_dout = _r.standard_normal(_out.shape)
with earlier_answers_from_reference(Conv2d.forward, im2col=_ref_im2col):
    assert_close("Conv2d forward", _mine.forward(_x), _out)
    assert_close("dx", _mine.backward(_dout), _ref.backward(_dout))
    assert_close("grads['W']", _mine.grads["W"], _ref.grads["W"])
    assert_close("grads['b']", _mine.grads["b"], _ref.grads["b"])
    assert_gradcheck(Conv2d(1, 2, 2, stride=2, padding=0, rng=_r), _r.standard_normal((2, 1, 4, 4)))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: 3
# all_or_nothing: true

# %% [markdown]
# **Question 4 (3 points).** Complete `MaxPool2d` with non-overlapping `k x k` windows
# (stride `k`; assume `H` and `W` are multiples of `k`). The backward pass sends each
# `dout` element to the position of its window's maximum.

# %% [raw]
# # BEGIN SOLUTION

# %%
class MaxPool2d(Layer):
    """Max over non-overlapping k x k windows."""

    def __init__(self, kernel_size):
        super().__init__()
        self.k = kernel_size

    def forward(self, x):
        # BEGIN SOLUTION
        N, C, H, Wd = x.shape
        k = self.k
        windows = x.reshape(N, C, H // k, k, Wd // k, k)
        out = windows.max(axis=(3, 5))
        self.cache["mask"] = windows == out[:, :, :, None, :, None]
        self.cache["x_shape"] = x.shape
        return out
        # END SOLUTION

    def backward(self, dout):
        # BEGIN SOLUTION
        dwin = self.cache["mask"] * dout[:, :, :, None, :, None]
        return dwin.reshape(self.cache["x_shape"])
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close, assert_gradcheck
_x = np.array([[[[1.0, 2.0, 0.0, -1.0], [3.0, 0.5, 4.0, 2.0]]]])
assert_close("MaxPool2d forward", MaxPool2d(2).forward(_x), [[[[3.0, 4.0]]]])
assert_gradcheck(MaxPool2d(2), minidl.default_rng(5).standard_normal((2, 2, 4, 4)))
# 3 x 3 windows (any k, not only 2) on a 6 x 3 image
import minidl.layers as _L
_x = minidl.default_rng(6).standard_normal((2, 2, 6, 3))
assert_close("MaxPool2d(3) forward", MaxPool2d(3).forward(_x), _L.MaxPool2d(3).forward(_x))
assert_gradcheck(MaxPool2d(3), _x)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L
from minidl.assign.feedback import assert_close, assert_gradcheck
_r = minidl.default_rng(24)
_x = _r.standard_normal((2, 3, 6, 6))
_mine, _ref = MaxPool2d(3), _L.MaxPool2d(3)
_out = _ref.forward(_x)
_dout = _r.standard_normal(_out.shape)
assert_close("MaxPool2d forward", _mine.forward(_x), _out)
assert_close("dx", _mine.backward(_dout), _ref.backward(_dout))
assert_gradcheck(MaxPool2d(2), _r.standard_normal((1, 2, 6, 4)))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# ## Timing (not autograded)
#
# Compare the naive loops, your vectorised layer and minidl's `Conv2d` (which also uses one
# large matrix product per pass) on a batch of MNIST-sized images. Which part of your
# forward pass takes the time? (The autograder skips this cell.)

# %% tags=["otter_ignore"]
x = rng.standard_normal((64, 8, 28, 28))
mine = Conv2d(8, 16, 3, padding=1, rng=rng)
lib = minidl.layers.Conv2d(8, 16, 3, padding=1).astype("float64")
lib.params["W"], lib.params["b"] = mine.params["W"].copy(), mine.params["b"].copy()
for name, run in [("naive", lambda: conv2d_naive(x, mine.params["W"], mine.params["b"], 1, 1)),
                  ("yours", lambda: mine.forward(x)), ("minidl", lambda: lib.forward(x))]:
    start = time.perf_counter()
    run()
    print(f"{name:>7}: {time.perf_counter() - start:.4f} s")
