"""Tests for minidl.data.transforms: scaling, standardisation, PCA/ZCA whitening, crops, flips.

Each transform is compared with its formula restated here in NumPy, and checked for its
defining property (standardised features have mean 0 and std 1; whitened data has
identity covariance; a crop is a window of the padded image; a seed fixes the batch).
"""
import numpy as np
import pytest

import minidl
from minidl import data


def _correlated(n, d, seed):
    """(n, d) Gaussian data with a random full covariance (eigenvalues 0.25..9), mean != 0."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # (d, d) random rotation
    A = np.diag(np.linspace(0.5, 3.0, d)) @ Q  # (d, d) mixing matrix, covariance A^T A
    return rng.standard_normal((n, d)) @ A + rng.standard_normal(d) * 3  # (n, d)


def _cov(z):
    zc = z - z.mean(axis=0)
    return zc.T @ zc / z.shape[0]


# ---------------------------------------------------------------- scaling

def test_normalise_scales_to_unit_interval_in_the_default_dtype():
    x = np.array([[0, 51, 255]], dtype=np.uint8)
    out = data.normalise(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], rtol=1e-6)
    minidl.set_default_dtype("float64")
    assert data.to_float(x).dtype == np.float64
    z = data.normalise(x, mean=0.5, std=0.25)
    np.testing.assert_allclose(z, (x / 255.0 - 0.5) / 0.25)
    with pytest.raises(ValueError, match="both mean and std"):
        data.normalise(x, mean=0.5)


def test_normalise_per_channel_on_each_backend(on_backend):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 3, 2, 2), dtype=np.uint8)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    out = data.normalise(minidl.asarray(x), mean.reshape(1, 3, 1, 1), std.reshape(1, 3, 1, 1))
    assert minidl.array_module(out) is minidl.xp()
    expect = (x / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(minidl.to_numpy(out), expect, rtol=1e-5, atol=1e-6)


def test_normalise_refuses_statistics_that_do_not_fit_the_images():
    """normalise promises x's shape, but colour statistics (1, 3, 1, 1) broadcast grey-scale
    images (N, 1, H, W) up to three channels, and a per-channel mean of shape (3,) lines up
    with the image width (per column on 3-pixel-wide images, NumPy's error otherwise)."""
    grey = np.zeros((2, 1, 4, 4), np.uint8)
    colour_mean, colour_std = np.full((1, 3, 1, 1), 0.5), np.full((1, 3, 1, 1), 0.25)
    with pytest.raises(ValueError, match=r"mean of shape \(1, 3, 1, 1\).*images of shape "
                                         r"\(2, 1, 4, 4\)"):
        data.normalise(grey, colour_mean, colour_std)
    with pytest.raises(ValueError, match=r"std of shape \(1, 3, 1, 1\)"):
        data.normalise(grey, 0.5, colour_std)
    narrow = np.zeros((2, 3, 5, 3), np.uint8)  # width 3: a (3,) mean would apply per column
    with pytest.raises(ValueError, match=r"mean of shape \(3,\).*\(1, C, 1, 1\)"):
        data.normalise(narrow, np.full(3, 0.5), np.full(3, 0.25))
    # what fits: a number, per channel (1, C, 1, 1) or (C, 1, 1), per pixel (C, H, W)
    for mean in (0.5, np.full((1, 3, 1, 1), 0.5), np.full((3, 1, 1), 0.5),
                 np.full((3, 5, 3), 0.5)):
        assert data.normalise(narrow, mean, 0.25).shape == narrow.shape


# ---------------------------------------------------------------- standardisation

def test_standardise_fits_on_train_and_applies_to_test():
    train, test = _correlated(500, 4, 0), _correlated(100, 4, 1)
    s = data.Standardise().fit(train)
    z = s.transform(train)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)
    expect = (test - train.mean(axis=0)) / np.sqrt(train.var(axis=0) + 1e-8)
    np.testing.assert_allclose(s.transform(test), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.inverse_transform(s.transform(test)), test, rtol=1e-5)


def test_standardise_per_channel_for_images():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(20, 3, 5, 5), dtype=np.uint8)
    s = data.Standardise(axis=(0, 2, 3))
    z = s.fit_transform(x)
    assert z.shape == x.shape and z.dtype == np.float32 and s.mean_.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)


def test_standardise_errors():
    with pytest.raises(RuntimeError, match="call fit"):
        data.Standardise().transform(np.zeros((2, 3)))
    s = data.Standardise().fit(np.zeros((4, 3)))  # constant features: eps avoids 0/0
    assert np.isfinite(s.transform(np.ones((2, 3)))).all()
    with pytest.raises(ValueError, match="fitted on 2-d data"):
        s.transform(np.zeros((2, 3, 1)))


@pytest.mark.parametrize("axis, train_shape, other_shape", [
    ((0, 2, 3), (6, 1, 4, 4), (2, 3, 4, 4)),  # grey-scale statistics, colour images
    ((0, 2, 3), (6, 3, 4, 4), (2, 1, 4, 4)),
    (0, (6, 1), (2, 4)),                      # one feature's statistics, four features
    (0, (6, 2, 1), (2, 2, 5)),
])
def test_standardise_refuses_data_whose_kept_axes_differ(axis, train_shape, other_shape):
    """Statistics fitted per channel (or per feature) belong to those channels: data with
    another number of them used to broadcast against them without a word (one grey-scale
    mean applied to all three colour channels) or fail inside NumPy's broadcasting."""
    rng = np.random.default_rng(0)
    s = data.Standardise(axis=axis).fit(rng.standard_normal(train_shape))
    other = rng.standard_normal(other_shape)
    for method in (s.transform, s.inverse_transform):
        with pytest.raises(ValueError, match=r"fitted on data of shape .* got shape"):
            method(other)
    # the reduced axes may have any size: more examples, or images of another size
    per_channel = data.Standardise(axis=(0, 2, 3)).fit(rng.standard_normal((6, 3, 4, 4)))
    assert per_channel.transform(rng.standard_normal((2, 3, 8, 8))).shape == (2, 3, 8, 8)


# ---------------------------------------------------------------- whitening

def test_zca_whitened_data_has_identity_covariance():
    x = _correlated(4000, 6, 3)
    zca = data.ZCAWhiten(eps=1e-9).fit(x)
    z = zca.transform(x)
    np.testing.assert_allclose(_cov(z), np.eye(6), atol=1e-6)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-8)
    np.testing.assert_allclose(zca.W_, zca.W_.T, atol=1e-10)  # ZCA's map is symmetric
    # the formula, restated: W = U diag(1 / sqrt(l + eps)) U^T
    C = _cov(x)
    lam, U = np.linalg.eigh(C)
    W = U @ np.diag(1 / np.sqrt(lam + 1e-9)) @ U.T
    np.testing.assert_allclose(zca.W_, W, rtol=1e-6, atol=1e-8)
    # test data gets the training statistics
    test = _correlated(10, 6, 4)
    np.testing.assert_allclose(zca.transform(test), (test - x.mean(axis=0)) @ W, atol=1e-8)


def test_zca_keeps_image_shape_and_eps_damps_small_directions():
    x = (_correlated(300, 16, 6).reshape(300, 1, 4, 4)).astype(np.float32)
    z = data.ZCAWhiten(eps=1e-6).fit_transform(x)
    assert z.shape == x.shape and z.dtype == np.float32
    big = data.ZCAWhiten(eps=1e3).fit(x)
    np.testing.assert_allclose(
        _cov(big.transform(x).reshape(300, -1).astype(np.float64)),
        big.components_ @ np.diag(big.eigenvalues_ / (big.eigenvalues_ + 1e3))
        @ big.components_.T, atol=1e-4)


def test_pca_whitening_decorrelates():
    x = _correlated(3000, 5, 7)
    pca = data.PCAWhiten(eps=1e-9).fit(x)
    z = pca.transform(x)
    assert z.shape == (3000, 5)
    np.testing.assert_allclose(_cov(z), np.eye(5), atol=1e-6)
    assert (np.diff(pca.eigenvalues_) <= 0).all()  # descending variance
    top2 = data.PCAWhiten(n_components=2, eps=1e-9).fit(x).transform(x)
    np.testing.assert_allclose(np.abs(top2), np.abs(z[:, :2]), atol=1e-8)  # sign-free
    zca = data.ZCAWhiten(eps=1e-9).fit(x)
    np.testing.assert_allclose(z @ pca.components_.T, zca.transform(x), atol=1e-6)


def test_whitening_on_each_backend(on_backend):
    x = _correlated(400, 4, 8)
    ref = data.ZCAWhiten(eps=1e-6).fit(x).transform(x)
    z = data.ZCAWhiten(eps=1e-6).fit(minidl.asarray(x)).transform(minidl.asarray(x))
    np.testing.assert_allclose(minidl.to_numpy(z), ref, atol=1e-6)


def test_whitening_errors():
    with pytest.raises(RuntimeError, match="call fit"):
        data.PCAWhiten().transform(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="only 3 features"):
        data.PCAWhiten(n_components=4).fit(np.random.default_rng(0).standard_normal((9, 3)))
    zca = data.ZCAWhiten().fit(np.random.default_rng(0).standard_normal((9, 3)))
    with pytest.raises(ValueError, match="fitted on 3 features"):
        zca.transform(np.zeros((2, 4)))


@pytest.mark.parametrize("make, match", [
    (lambda: data.PCAWhiten(n_components=2.5), r"n_components must be an integer >= 1 or "
                                               r"None, got 2\.5"),
    (lambda: data.PCAWhiten(n_components=True), "n_components must be an integer"),
    (lambda: data.PCAWhiten(n_components="2"), "n_components must be an integer"),
    (lambda: data.PCAWhiten(eps="1e-5"), r"PCAWhiten: eps must be a number >= 0, got '1e-5'"),
    (lambda: data.ZCAWhiten(eps=None), r"ZCAWhiten: eps must be a number >= 0, got None"),
    (lambda: data.Standardise(eps=True), "Standardise: eps must be a number >= 0, got True"),
    (lambda: data.Standardise(eps=float("nan")), "eps must be a number >= 0, got nan"),
    (lambda: data.random_hflip(_images(), minidl.default_rng(0), p="0.5"),
     r"p must be a number in \[0, 1\], got '0\.5'"),
    (lambda: data.random_hflip(_images(), minidl.default_rng(0), p=True),
     r"p must be a number in \[0, 1\], got True"),
])
def test_settings_of_the_wrong_type_are_refused_by_name(make, match):
    """A fractional n_components failed when fit sliced with it ("slice indices must be
    integers"), True meant 1 component, a string eps or p failed inside a comparison
    ("'<' not supported between instances of 'str' and 'int'"), and eps=True meant 1."""
    with pytest.raises(ValueError, match=match):
        make()
    assert data.PCAWhiten(n_components=np.int64(2)).n_components == 2  # NumPy integers fit


@pytest.mark.parametrize("constant", [1.5, 0.1])  # 0.1: its mean has round-off
def test_eps_zero_on_a_direction_without_variance_is_refused_at_fit(constant):
    """With eps=0 a constant feature (or, for whitening, any direction of zero variance,
    such as the always-black border pixels of MNIST) divided by zero: fit stored inf or NaN
    with only NumPy's RuntimeWarning, and every transformed value was NaN (or, where the
    mean's round-off left a variance of 1e-34, scaled that round-off up by 1e17)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4))
    x[:, 2] = constant  # a constant feature
    with pytest.raises(ValueError, match=r"Standardise: 1 feature\(s\) have variance 0.*"
                                         r"eps=0"):
        data.Standardise(eps=0).fit(x)
    with pytest.raises(ValueError, match=r"ZCAWhiten: 1 direction\(s\) of the data have "
                                         r"variance 0.*eps=0"):
        data.ZCAWhiten(eps=0).fit(x)
    with pytest.raises(ValueError, match=r"PCAWhiten: 1 direction\(s\).*n_components"):
        data.PCAWhiten(eps=0).fit(x)
    # the directions that have variance are fine without eps
    assert np.isfinite(data.PCAWhiten(n_components=3, eps=0).fit(x).W_).all()
    assert np.isfinite(data.Standardise(eps=0).fit(x[:, :2]).std_).all()
    assert np.isfinite(data.ZCAWhiten(eps=1e-5).fit(x).W_).all()


def test_empty_data_is_refused_at_fit_and_passes_through_transform():
    """Whitening an empty batch (N=0) failed with IndexError (the size of example 0 was
    asked for), and Standardise.fit on no examples stored NaN statistics with only NumPy's
    "Mean of empty slice" warning."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 4))
    empty = np.zeros((0, 4))
    assert data.ZCAWhiten().fit(x).transform(empty).shape == (0, 4)
    assert data.PCAWhiten(n_components=2).fit(x).transform(empty).shape == (0, 2)
    assert data.Standardise().fit(x).transform(empty).shape == (0, 4)
    images = np.zeros((0, 3, 4, 4), np.uint8)
    assert data.ZCAWhiten().fit(rng.standard_normal((5, 3, 4, 4))).transform(images).shape \
        == (0, 3, 4, 4)
    with pytest.raises(ValueError, match=r"Standardise.fit: no values to average over axis=0 "
                                         r"in data of shape \(0, 4\)"):
        data.Standardise().fit(empty)
    with pytest.raises(ValueError, match=r"no values to average over axis=\(0, 2, 3\)"):
        data.Standardise(axis=(0, 2, 3)).fit(images)


# ---------------------------------------------------------------- crops and flips

def _images(n=6, c=2, h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(1, 256, size=(n, c, h, w), dtype=np.uint8)


def test_random_crop_windows_of_the_padded_image():
    x = _images()
    out = data.random_crop(x, (5, 7), minidl.default_rng(3), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    rng = np.random.default_rng(3)
    top, left = rng.integers(0, 5, size=6), rng.integers(0, 5, size=6)
    for i in range(6):
        np.testing.assert_array_equal(out[i], padded[i, :, top[i]:top[i] + 5,
                                                     left[i]:left[i] + 7])
    again = data.random_crop(x, (5, 7), minidl.default_rng(3), padding=2)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, data.random_crop(x, (5, 7), minidl.default_rng(4), 2))
    small = data.random_crop(x, 3, minidl.default_rng(0))
    assert small.shape == (6, 2, 3, 3) and (small > 0).all()  # no padding, no zeros
    np.testing.assert_array_equal(data.random_crop(x, (5, 7), minidl.default_rng(0)), x)


def test_random_hflip():
    x = _images()
    np.testing.assert_array_equal(data.random_hflip(x, minidl.default_rng(0), p=1.0),
                                  x[..., ::-1])
    np.testing.assert_array_equal(data.random_hflip(x, minidl.default_rng(0), p=0.0), x)
    out = data.random_hflip(x, minidl.default_rng(1))
    flipped = np.random.default_rng(1).random(6) < 0.5
    for i in range(6):
        np.testing.assert_array_equal(out[i], x[i, :, :, ::-1] if flipped[i] else x[i])
    np.testing.assert_array_equal(out, data.random_hflip(x, minidl.default_rng(1)))


def test_pixels_that_are_not_integers_or_a_zero_std_are_refused():
    """normalise(normalise(x)) divided by 255 twice (values up to 0.004, no warning), and a
    std of 0 gave inf with only NumPy's warning."""
    x = _images()  # uint8
    once = data.normalise(x)
    with pytest.raises(TypeError, match=r"integer pixels 0\.\.255 \(uint8\), got float.*"
                                        "scaled already"):
        data.normalise(once)
    with pytest.raises(TypeError, match="got bool"):
        data.to_float(x > 100)
    with pytest.raises(ValueError, match="std must be > 0"):
        data.normalise(x, mean=0.1, std=0.0)
    with pytest.raises(ValueError, match="std must be > 0"):
        data.normalise(x, mean=0.1, std=float("nan"))
    assert data.to_float(x.astype(np.int64)).max() <= 1.0  # integer pixels of another width


@pytest.mark.parametrize("call, error, match", [
    (lambda x: data.random_crop(x, 3, None), TypeError, "random_crop needs an explicit gen"),
    (lambda x: data.random_hflip(x, None), TypeError, "random_hflip needs an explicit gen"),
    (lambda x: data.random_crop(x, 3, minidl.default_rng(0), padding=2.5), ValueError,
     r"padding must be an integer >= 0 \(pixels of zeros on each side\), got 2.5"),
    (lambda x: data.random_crop(x, 2.5, minidl.default_rng(0)), ValueError,
     r"size must be an integer >= 1 \(pixels\), got 2.5"),
    (lambda x: data.random_crop(x, (3, 0), minidl.default_rng(0)), ValueError,
     r"size must be an integer >= 1 \(pixels\), got 0"),
])
def test_augmentation_refuses_what_it_cannot_use_by_name(call, error, match):
    """rng=None used to end in AttributeError ('NoneType' object has no attribute
    'integers') and padding=2.5 in NumPy's TypeError from inside np.pad."""
    with pytest.raises(error, match=match):
        call(_images())


def test_crop_and_flip_same_on_each_backend(on_backend):
    x = _images(8, 3, 6, 6, seed=2)
    dev = minidl.asarray(x)
    crop = data.random_crop(dev, 6, minidl.default_rng(9), padding=1)
    flip = data.random_hflip(dev, minidl.default_rng(9))
    assert minidl.array_module(crop, flip) is minidl.xp()
    np.testing.assert_array_equal(minidl.to_numpy(crop),
                                  data.random_crop(x, 6, minidl.default_rng(9), padding=1))
    np.testing.assert_array_equal(minidl.to_numpy(flip),
                                  data.random_hflip(x, minidl.default_rng(9)))


def test_crop_and_flip_errors():
    x = _images()
    with pytest.raises(ValueError, match="NCHW"):
        data.random_crop(x[0], 3, minidl.default_rng(0))
    with pytest.raises(ValueError, match="does not fit"):
        data.random_crop(x, 9, minidl.default_rng(0), padding=1)
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
        data.random_hflip(x, minidl.default_rng(0), p=1.5)
