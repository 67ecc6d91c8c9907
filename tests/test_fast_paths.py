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


# -- im2col/col2im over the padded width (stride 1) vs the compact ones ------------------
@pytest.mark.parametrize("kernel,padding", [((3, 3), (1, 1)), ((3, 2), (0, 2)), ((1, 1), (0, 0)),
                                            ((5, 5), (2, 2)), ((2, 3), (1, 0))])
def test_wide_columns_hold_the_compact_ones(kernel, padding):
    from minidl.layers.im2col import col2im, col2im_wide, im2col, im2col_wide
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 6, 7))
    cols = im2col(x, kernel, (1, 1), padding)  # (C kh kw, N Ho Wo)
    wide = im2col_wide(x, kernel, padding)  # (C kh kw, N, Ho, Wp)
    CKK, N, Ho, Wp = wide.shape
    Wo = 7 + 2 * padding[1] - kernel[1] + 1
    assert Wp == 7 + 2 * padding[1]
    np.testing.assert_array_equal(wide[:, :, :, :Wo].reshape(CKK, -1), cols)
    # the adjoint: the wide columns' gradients (zero where thrown away) give col2im's dx
    dcols = rng.standard_normal(cols.shape)
    dwide = np.zeros(wide.shape)
    dwide[:, :, :, :Wo] = dcols.reshape(CKK, N, Ho, Wo)
    np.testing.assert_allclose(col2im_wide(dwide, x.shape, kernel, padding),
                               col2im(dcols, x.shape, kernel, (1, 1), padding),
                               rtol=0, atol=1e-13)


# -- col2im phase by phase vs the direct strided adds ------------------------------------
@st.composite
def col2im_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    H = draw(st.integers(max(1, kh - 2 * ph), 11))
    W = draw(st.integers(max(1, kw - 2 * pw), 11))
    return (draw(st.integers(0, 2)), draw(st.integers(1, 3)), H, W), (kh, kw), (sh, sw), (ph, pw)


@settings(max_examples=150, deadline=None)
@given(case=col2im_cases(), seed=st.integers(0, 2**16))
def test_col2im_by_phases_equals_the_strided_adds(case, seed):
    from minidl.layers.im2col import add_windows, col2im, output_size
    (N, C, H, W), kernel, stride, padding = case
    Ho, Wo = output_size(H, W, kernel, stride, padding)
    cols = np.random.default_rng(seed).standard_normal((C * kernel[0] * kernel[1], N * Ho * Wo))
    dwindows = cols.reshape(C, *kernel, N, Ho, Wo).transpose(0, 3, 1, 2, 4, 5)  # (C, N, ...)
    direct = add_windows(dwindows, (C, N, H, W), kernel, stride, padding).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(col2im(cols, (N, C, H, W), kernel, stride, padding), direct,
                               rtol=1e-13, atol=1e-13)


# -- Conv2d: chunks of the batch, the lazily made cols, no dx for the first layer --------
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels", [(3, 4), (4, 3)])  # F > C: col2im; F <= C: full conv
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), ((1, 2), 0), (1, (0, 2))])
def test_conv_in_chunks_equals_one_chunk(monkeypatch, stride, padding, channels, threads):
    from threadpoolctl import threadpool_limits
    from minidl.layers import Conv2d, conv
    rng = np.random.default_rng(2)
    C, F = channels
    layer = Conv2d(C, F, 3, stride=stride, padding=padding, rng=minidl.default_rng(0))
    layer.astype("float64")
    x = rng.standard_normal((5, C, 8, 7))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    Rx = rng.standard_normal(x.shape)
    layer.Rparams = {"W": rng.standard_normal(layer.params["W"].shape)}
    Rout = layer.jvp(Rx)
    Rdx = layer.backward_rop(dout)
    Rgrads = {k: v.copy() for k, v in layer.Rgrads.items()}
    monkeypatch.setattr(conv, "CHUNK_VALUES", 1)  # one example per chunk
    assert len(layer._chunks(x)) == 5
    with threadpool_limits(threads):  # 2: the chunks run in two threads (minidl.parallel)
        np.testing.assert_allclose(layer.forward(x), out, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(layer.backward(dout), dx, rtol=1e-13, atol=1e-13)
        for k in grads:
            np.testing.assert_allclose(layer.grads[k], grads[k], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.jvp(Rx), Rout, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(layer.backward_rop(dout), Rdx, rtol=1e-12, atol=1e-12)
        for k in Rgrads:
            np.testing.assert_allclose(layer.Rgrads[k], Rgrads[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,padding", [(3, 1), (3, 2), (3, 0), ((3, 2), (1, 0)),
                                            (1, 0), (5, 2), (5, 4)])  # all ph <= kh - 1
def test_conv_input_gradient_as_a_full_convolution_equals_col2im(kernel, padding):
    """For stride 1 and F <= C, dx is a convolution of dout with the flipped kernel
    (Conv2d._input_grad); its simple twin is col2im(W2^T dout_T), the adjoint of im2col."""
    from minidl.layers import Conv2d
    rng = np.random.default_rng(3)
    layer = Conv2d(5, 4, kernel, padding=padding, rng=minidl.default_rng(0))
    layer.astype("float64")
    assert not layer._col2im_route()  # backward below takes the full convolution
    x = rng.standard_normal((3, 5, 9, 8))
    dout = rng.standard_normal(layer.forward(x).shape)
    W2 = layer.params["W"].reshape(4, -1)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, layer._input_grad_col2im(dout, W2, x.shape),
                               rtol=1e-12, atol=1e-12)
    # the direct sum over kernel taps, one output pixel at a time
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    dx_pad = np.zeros((3, 5, 9 + 2 * ph, 8 + 2 * pw))
    W = layer.params["W"]
    for ho, wo in np.ndindex(*dout.shape[2:]):
        dx_pad[:, :, ho:ho + kh, wo:wo + kw] += np.einsum("nf,fcij->ncij", dout[:, :, ho, wo], W)
    np.testing.assert_allclose(dx, dx_pad[:, :, ph:ph + 9, pw:pw + 8], rtol=1e-12, atol=1e-12)


def test_conv_cols_are_made_when_read_not_stored():
    from minidl.layers import Conv2d
    from minidl.layers.im2col import im2col
    rng = np.random.default_rng(3)
    layer = Conv2d(2, 3, 3, padding=1, rng=minidl.default_rng(0))
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    layer.backward(np.ones_like(layer.forward(x)))
    assert set(layer.cache) == {"x", "dout"}  # 9x the input is not kept
    np.testing.assert_array_equal(layer.cache["cols"], im2col(x, (3, 3), (1, 1), (1, 1)))
    with pytest.raises(KeyError):
        layer.cache["nothing"]


def _cnn(rng_seed=0):
    from minidl import models
    return models.cnn5((3, 12, 12), 4, hidden=8, rng=minidl.default_rng(rng_seed))


@pytest.mark.parametrize("build", ["cnn5", "resnet", "mlp"])
def test_skipping_the_data_gradient_and_freeing_caches_keep_the_gradients(build):
    """needs_input_grad=False and free_after_backward=True change no parameter gradient."""
    from minidl import models
    from minidl.losses import SoftmaxCrossEntropy
    rng = np.random.default_rng(4)
    if build == "cnn5":
        make, x = _cnn, rng.standard_normal((3, 3, 12, 12))
    elif build == "resnet":
        def make():
            return models.resnet(8, input_shape=(3, 8, 8), num_classes=4,
                                 rng=minidl.default_rng(0))
        x = rng.standard_normal((3, 3, 8, 8))
    else:
        def make():
            return models.mlp((6, 5, 4), rng=minidl.default_rng(0), flatten=True)
        x = rng.standard_normal((3, 6))
    y = np.array([0, 3, 1])
    grads = []
    for lean in (False, True):
        model = make().astype("float64")
        model.needs_input_grad = not lean
        model.free_after_backward = lean
        loss = SoftmaxCrossEntropy()
        loss.forward(model.forward(x), y)
        dx = model.backward(loss.backward())
        assert (dx is None) == lean
        if lean:
            assert all(not leaf.cache for leaf in model.leaves())  # every cache freed
            assert all(leaf.needs_input_grad for leaf in model.leaves())  # flag restored
        grads.append({name: layer.grads[key].copy() for name, layer, key in model.parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name])


def test_first_layer_without_input_gradient_returns_none():
    from minidl.layers import Conv2d, Linear
    rng = np.random.default_rng(5)
    for layer, x in ((Conv2d(2, 3, 3, padding=1, rng=minidl.default_rng(0)),
                      rng.standard_normal((2, 2, 5, 5))),
                     (Linear(4, 3, rng=minidl.default_rng(0)), rng.standard_normal((2, 4)))):
        layer.astype("float64")
        out = layer.forward(x)
        layer.backward(np.ones_like(out))
        full = {k: v.copy() for k, v in layer.grads.items()}
        layer.needs_input_grad = False
        assert layer.backward(np.ones_like(out)) is None
        for k in full:
            np.testing.assert_array_equal(layer.grads[k], full[k])


# -- BatchNorm: the fused passes vs the general Normalization ones -----------------------
@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (3, 2, 4, 5)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batchnorm_fused_passes_equal_the_general_ones(shape, training, dtype):
    from minidl.layers import BatchNorm1d, BatchNorm2d
    from minidl.layers.batchnorm import Normalization
    rng = np.random.default_rng(6)
    make = BatchNorm2d if len(shape) == 4 else BatchNorm1d
    x = (3 * rng.standard_normal(shape) + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    layers = [make(shape[1]).astype(dtype) for _ in range(2)]
    for layer in layers:
        layer.params["gamma"] = (1 + rng.standard_normal(shape[1])).astype(dtype)
        layer.params["beta"] = rng.standard_normal(shape[1]).astype(dtype)
        layer.buffers["running_mean"] = rng.standard_normal(shape[1]).astype(dtype)
        layer.buffers["running_var"] = (1 + rng.random(shape[1])).astype(dtype)
        layer.params = {k: v.copy() for k, v in layers[0].params.items()}
        layer.buffers = {k: v.copy() for k, v in layers[0].buffers.items()}
        layer.training = training
    fast, general = layers
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
    out = fast.forward(x)
    ref = Normalization.forward(general, x)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, ref, **tol)
    for key in fast.buffers:
        np.testing.assert_allclose(fast.buffers[key], general.buffers[key], **tol)
    dx = fast.backward(dout)
    np.testing.assert_allclose(dx, Normalization.backward(general, dout), **tol)
    assert dx.dtype == np.dtype(dtype)
    for key in ("gamma", "beta"):
        np.testing.assert_allclose(fast.grads[key], general.grads[key], **tol)


def test_relu_keeps_only_its_output():
    from minidl.layers import ReLU
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    x[0, :2] = 0.0  # f'(0) = 0, as PyTorch
    layer = ReLU()
    layer.forward(x)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, np.where(x > 0, dout, 0))
    assert dx.dtype == np.float32 and set(layer.cache) == {"out", "dout"}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(), (3,), (600, 700), (9, 4, 130, 130)])  # 1, 1, 2, 3 pieces
def test_relu_in_pieces_equals_its_plain_definition(shape, threads):
    """ReLU's forward/backward (in pieces, mask multiplied as booleans) against the shared
    _Elementwise passes with f and df, which are the plain definitions."""
    from threadpoolctl import threadpool_limits
    from minidl.layers import ReLU
    from minidl.layers.activations import _Elementwise
    rng = np.random.default_rng(8)
    x = np.asarray(rng.standard_normal(shape), dtype=np.float32)
    dout = np.asarray(rng.standard_normal(shape), dtype=np.float32)
    if x.size > 3:
        x.flat[::7] = 0.0
        x.flat[1] = np.nan
        dout.flat[2] = np.inf
    fast, plain = ReLU(), ReLU()
    with threadpool_limits(threads), np.errstate(invalid="ignore"):  # inf * 0: NaN in both
        out = fast.forward(x)
        dx = fast.backward(dout)
        ref_out = _Elementwise.forward(plain, x)
        ref_dx = _Elementwise.backward(plain, dout)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(dx, ref_dx)
    assert dx.dtype == out.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_batchnorm_and_maxpool_in_many_pieces_equal_their_twins(monkeypatch, dtype, threads):
    """Pieces of a few values each: BatchNorm's per-piece statistics combined (Chan et al.)
    against the general Normalization passes, MaxPool2d against window_argmax."""
    from threadpoolctl import threadpool_limits
    from minidl import parallel
    from minidl.layers import BatchNorm2d, MaxPool2d
    from minidl.layers.batchnorm import Normalization
    monkeypatch.setattr(parallel, "PIECE_VALUES", 40)  # one or two examples per piece
    rng = np.random.default_rng(9)
    x = (0.5 * rng.standard_normal((7, 3, 4, 6)) + 100).astype(dtype)  # mean >> spread
    dout = rng.standard_normal(x.shape).astype(dtype)
    fast, plain = BatchNorm2d(3).astype(dtype), BatchNorm2d(3).astype(dtype)
    with threadpool_limits(threads):
        assert len(fast._pieces(x.reshape(7, 3, -1))) == 7
        out, dx = fast.forward(x), fast.backward(dout)
        pool = MaxPool2d(2)
        pooled = pool.forward(x)
        assert len(parallel.pieces_of(x)) == 7
        dpool = pool.backward(np.ones_like(pooled))
    ref_out = Normalization.forward(plain, x)
    ref_dx = Normalization.backward(plain, dout)
    tol = 1e-12 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, ref_dx, rtol=tol, atol=tol)
    for key in ("gamma", "beta"):
        np.testing.assert_allclose(fast.grads[key], plain.grads[key], rtol=tol, atol=tol)
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(fast.buffers[key], plain.buffers[key], rtol=tol, atol=tol)
    ref_pooled, argmax = window_argmax(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(pooled, ref_pooled)
    np.testing.assert_array_equal(pool.cache["argmax"], argmax)
    expected = np.zeros_like(x)  # the direct scatter, one window at a time
    for n, c, ho, wo in np.ndindex(*pooled.shape):
        i, j = divmod(int(argmax[n, c, ho, wo]), 2)
        expected[n, c, 2 * ho + i, 2 * wo + j] += 1
    np.testing.assert_array_equal(dpool, expected)


def test_blas_threads_follows_threadpool_limits():
    import threadpoolctl
    from minidl import backend
    with threadpoolctl.threadpool_limits(1):
        assert backend.blas_threads() == 1
    with threadpoolctl.threadpool_limits(2):
        assert backend.blas_threads() in (1, 2)  # 1 where the BLAS has a single thread


# -- Conv2d's fast paths, every route and chunking, against the defining loops -----------
def _conv_loops(x, W, stride, padding, dout):
    """The defining sums of a convolution, one output pixel at a time (float64): out
    without bias, dx, dW for the output gradient dout."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, Hp, Wp)
    Ho, Wo = dout.shape[2:]
    out = np.zeros((N, F, Ho, Wo))
    dx_pad = np.zeros(x_pad.shape)
    dW = np.zeros(W.shape)
    for ho, wo in np.ndindex(Ho, Wo):
        rows, columns = slice(sh * ho, sh * ho + kh), slice(sw * wo, sw * wo + kw)
        window = x_pad[:, :, rows, columns]  # (N, C, kh, kw)
        out[:, :, ho, wo] = np.einsum("ncij,fcij->nf", window, W)
        dx_pad[:, :, rows, columns] += np.einsum("nf,fcij->ncij", dout[:, :, ho, wo], W)
        dW += np.einsum("nf,ncij->fcij", dout[:, :, ho, wo], window)
    return out, dx_pad[:, :, ph:ph + H, pw:pw + Wd], dW


# (C, F, kernel, stride, padding, (H, W), the input gradient's route)
CONV_ROUTES = [
    (3, 4, 3, 1, 1, (7, 6), "col2im"),  # F > C: wide columns, col2im_wide
    (4, 3, 3, 1, 1, (7, 6), "flipped"),  # F < C: a convolution with the flipped kernel
    (4, 4, (3, 2), 1, (2, 0), (5, 7), "flipped"),  # F = C, padding = kernel - 1
    (4, 3, 2, 1, 2, (5, 4), "col2im"),  # F < C but padding > kernel - 1
    (3, 2, (3, 2), 1, (0, 2), (6, 5), "col2im"),  # padding > kernel - 1 in one axis only
    (3, 4, 3, 2, 1, (7, 9), "col2im"),  # stride 2, odd sizes: col2im by phases
    (4, 3, 3, 2, 0, (9, 7), "col2im"),  # F < C but stride 2
    (2, 3, (3, 2), (2, 1), (1, 2), (8, 5), "col2im"),  # mixed strides
    (2, 3, 2, 3, 1, (7, 8), "col2im"),  # stride > kernel: pixels in no window
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("per_chunk", [1, 2, None])  # None: the whole batch in one chunk
@pytest.mark.parametrize("case", CONV_ROUTES,
                         ids=[f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}" for c in CONV_ROUTES])
def test_conv_chunks_and_routes_equal_the_defining_loops(monkeypatch, case, per_chunk, threads,
                                                         dtype):
    """Forward, backward and both R-operator passes of Conv2d, in chunks of 1 or 2 of 5
    examples (2 + 2 + 1: a short last chunk) or in one, with 1 or 2 threads, through
    every route of the input gradient, against the sums taken one output pixel at a time;
    and each route of ``_input_grad`` (the flipped kernel and col2im) against them."""
    from threadpoolctl import threadpool_limits
    from minidl.layers import Conv2d, conv
    C, F, kernel, stride, padding, (H, W), route = case
    rng = np.random.default_rng(10)
    layer = Conv2d(C, F, kernel, stride=stride, padding=padding,
                   rng=minidl.default_rng(0)).astype(dtype)
    assert layer._col2im_route() == (route == "col2im")
    N = 5
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    if per_chunk is not None:  # the budget of per_chunk examples' columns
        monkeypatch.setattr(conv, "CHUNK_VALUES", per_chunk * _columns_per_example(layer, x))
        assert len(layer._chunks(x)) == -(-N // per_chunk)
    Wt, b = layer.params["W"], layer.params["b"]
    RW = rng.standard_normal(Wt.shape).astype(dtype)
    Rb = rng.standard_normal(b.shape).astype(dtype)
    Rx = rng.standard_normal(x.shape).astype(dtype)
    with threadpool_limits(threads):
        out = layer.forward(x)
        dout = rng.standard_normal(out.shape).astype(dtype)
        Rdout = rng.standard_normal(out.shape).astype(dtype)
        dx = layer.backward(dout)
        grads = {k: v.copy() for k, v in layer.grads.items()}
        W2 = Wt.reshape(F, -1)
        routes = {"flipped or col2im": layer._input_grad(dout, W2, x.shape),
                  "col2im": layer._input_grad_col2im(dout, W2, x.shape)}
        layer.Rparams = {"W": RW, "b": Rb}
        Rout = layer.jvp(Rx)
        Rdx = layer.backward_rop(Rdout)
    f64 = [a.astype(np.float64) for a in (x, Wt, b, dout, Rx, RW, Rb, Rdout)]
    x64, W64, b64, dout64, Rx64, RW64, Rb64, Rdout64 = f64
    ref_out, ref_dx, ref_dW = _conv_loops(x64, W64, layer.stride, layer.padding, dout64)
    # the R-operator passes are the same loops, by linearity in each argument
    Rout_x, Rdx_W, RdW_x = _conv_loops(x64, RW64, layer.stride, layer.padding, Rdout64)
    Rout_R, Rdx_RW, RdW_R = _conv_loops(Rx64, W64, layer.stride, layer.padding, Rdout64)
    _, Rdx_dout, RdW_dout = _conv_loops(Rx64, RW64, layer.stride, layer.padding, dout64)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=3e-5, atol=3e-5)
    checks = [("out", out, ref_out + b64[:, None, None]), ("dx", dx, ref_dx),
              ("dW", grads["W"], ref_dW), ("db", grads["b"], dout64.sum(axis=(0, 2, 3))),
              ("Rout", Rout, Rout_R + Rout_x + Rb64[:, None, None]),
              ("Rdx", Rdx, Rdx_RW + Rdx_dout),  # Rdout through W, dout through RW
              ("RdW", layer.Rgrads["W"], RdW_x + RdW_dout),  # Rdout with x, dout with Rx
              ("Rdb", layer.Rgrads["b"], Rdout64.sum(axis=(0, 2, 3)))]
    checks += [(name, value, ref_dx) for name, value in routes.items()]
    for name, value, expected in checks:
        assert value.dtype == np.dtype(dtype), name
        np.testing.assert_allclose(value, expected, err_msg=name, **tol)


def _columns_per_example(layer, x):
    """Values of one example's columns in Conv2d's chunk budget (wide ones for stride 1)."""
    from minidl.layers.im2col import output_size
    Ho, _ = output_size(x.shape[2], x.shape[3], layer.kernel_size, layer.stride, layer.padding)
    kh, kw = layer.kernel_size
    return x.shape[1] * kh * kw * Ho * layer._column_width(x.shape)


# -- pieces of the batch with a short last piece, every shape the layers take ------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("per_piece", [1, 3])  # of 7 examples: 7 pieces, or 3 + 3 + 1
@pytest.mark.parametrize("shape,training", [((7, 3, 5, 3), True), ((7, 3, 5, 3), False),
                                            ((7, 4), True), ((7, 2, 9), True)])
def test_batchnorm_pieces_with_a_short_last_one_equal_normalization(
        monkeypatch, shape, training, per_piece, threads, dtype):
    """BatchNorm1d/2d in pieces (``parallel.PIECE_VALUES`` shrunk) against the general
    ``Normalization`` passes, in train mode (per-piece statistics combined) and in eval
    mode, for (N, C), (N, C, L) and (N, C, H, W) input; both R-operator passes read the
    fast forward's cache, so they are compared too."""
    from threadpoolctl import threadpool_limits
    from minidl import parallel
    from minidl.layers import BatchNorm1d, BatchNorm2d
    from minidl.layers.batchnorm import Normalization
    per_example = int(np.prod(shape[1:]))
    monkeypatch.setattr(parallel, "PIECE_VALUES", per_piece * per_example)
    rng = np.random.default_rng(11)
    make = BatchNorm2d if len(shape) == 4 else BatchNorm1d
    x = (0.5 * rng.standard_normal(shape) + 50).astype(dtype)  # mean >> spread
    dout, Rdout, Rx = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    C = shape[1]
    fast, plain = make(C).astype(dtype), make(C).astype(dtype)
    for layer in (fast, plain):
        layer.params = {"gamma": (1 + np.arange(C) / 4).astype(dtype),
                        "beta": (np.arange(C) - 1.0).astype(dtype)}
        layer.buffers = {"running_mean": np.full(C, 49.0, dtype=dtype),
                         "running_var": (0.5 + np.arange(C)).astype(dtype)}
        layer.training = training
        layer.Rparams = {"gamma": np.linspace(-1, 1, C).astype(dtype),
                         "beta": np.linspace(2, 1, C).astype(dtype)}
    with threadpool_limits(threads):
        assert len(fast._pieces(x.reshape(7, C, -1))) == -(-7 // per_piece)
        results = [fast.forward(x), fast.backward(dout), fast.jvp(Rx), fast.backward_rop(Rdout)]
    expected = [Normalization.forward(plain, x), Normalization.backward(plain, dout),
                Normalization.jvp(plain, Rx), Normalization.backward_rop(plain, Rdout)]
    tol = dict(rtol=1e-11, atol=1e-11) if dtype == "float64" else dict(rtol=3e-4, atol=3e-4)
    for name, value, ref in zip(("out", "dx", "Rout", "Rdx"), results, expected):
        assert value.dtype == np.dtype(dtype), name
        np.testing.assert_allclose(value, ref, err_msg=name, **tol)
    for store in ("grads", "Rgrads", "buffers"):
        for key, value in getattr(plain, store).items():
            np.testing.assert_allclose(getattr(fast, store)[key], value, err_msg=key, **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("per_piece", [1, 3])
@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (3, 1), (2, 3), ((3, 2), (1, 2))])
def test_max_pool_pieces_with_a_short_last_one_equal_window_argmax(
        monkeypatch, kernel, stride, per_piece, threads, dtype):
    """MaxPool2d in pieces of 1 or 3 of 7 examples, overlapping windows (stride < kernel),
    gaps (stride > kernel) and odd sizes, with ties, against the copied windows'
    argmax and the scatter one window at a time."""
    from threadpoolctl import threadpool_limits
    from minidl import parallel
    from minidl.layers import MaxPool2d
    shape = (7, 2, 7, 9)
    monkeypatch.setattr(parallel, "PIECE_VALUES", per_piece * int(np.prod(shape[1:])))
    rng = np.random.default_rng(12)
    x = rng.integers(0, 3, size=shape).astype(dtype)  # three values: many ties
    layer = MaxPool2d(kernel, stride)
    with threadpool_limits(threads):
        assert len(parallel.pieces_of(x)) == -(-7 // per_piece)
        out = layer.forward(x)
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx = layer.backward(dout)
    ref_out, argmax = window_argmax(x, layer.kernel_size, layer.stride)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(layer.cache["argmax"], argmax)
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    expected = np.zeros(shape)
    for n, c, ho, wo in np.ndindex(*out.shape):
        i, j = divmod(int(argmax[n, c, ho, wo]), kw)
        expected[n, c, sh * ho + i, sw * wo + j] += dout[n, c, ho, wo]
    assert dx.dtype == np.dtype(dtype)
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(dx, expected, rtol=tol, atol=tol)
