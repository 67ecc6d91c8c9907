"""The gradient checker catches real bugs, skips kinks, reports readably; initialisers."""
import numpy as np
import pytest

import minidl
from minidl import init
from minidl.gradcheck import check_layer, check_model
from minidl.layers import Linear, ReLU, Sequential
from minidl.losses import SoftmaxCrossEntropy


class _BuggyLinear(Linear):
    """dW off by a factor 1.01 on one element: the checker must find exactly it."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"][1, 2] *= 1.01
        return dx


def test_checker_catches_a_one_percent_bug_and_names_the_element(rng):
    layer = _BuggyLinear(4, 3, rng=rng)
    report = check_layer(layer, rng.standard_normal((5, 4)))
    assert not report.ok
    assert report["W"].worst_index == (1, 2)
    assert report["W"].n_failed == 1
    text = str(report)
    assert "FAILED" in text and "worst at index (1, 2)" in text and "analytic" in text
    assert report["x"].ok and report["b"].ok


def test_checker_skips_relu_kink_but_not_a_wrong_slope():
    x = np.array([[0.0, 1.0, -2.0]])
    report = check_layer(ReLU(), x)
    assert report.ok and report["x"].kinks == [0]

    class WrongReLU(ReLU):
        def df(self):
            return 2.0 * super().df()
    assert not check_layer(WrongReLU(), np.array([[0.5, 1.0, -2.0]])).ok


def test_check_restores_parameters_and_dtype(rng):
    model = Sequential(Linear(3, 4, rng=rng), ReLU(), Linear(4, 3, rng=rng))
    before = model.state_dict()
    report = check_model(model, SoftmaxCrossEntropy(), rng.standard_normal((4, 3)),
                         rng.integers(0, 3, 4))
    assert report.ok, str(report)
    for key, value in model.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, before[key])


def test_check_rejects_nan_input(rng):
    x = rng.standard_normal((2, 3))
    x[1, 1] = np.nan
    with pytest.raises(ValueError, match="1 non-finite value"):
        check_layer(Linear(3, 2, rng=rng), x)


@pytest.mark.parametrize("shape", [(400, 300), (64, 16, 3, 3)])
def test_initialiser_variances(shape):
    rng = minidl.default_rng(0)
    fan_in, fan_out = init.fans(shape)
    cases = {
        "uniform": 1 / (3 * fan_in),
        "xavier_uniform": 2 / (fan_in + fan_out),
        "xavier_normal": 2 / (fan_in + fan_out),
        "he_normal": 2 / fan_in,
        "he_uniform": 2 / fan_in,
    }
    for name, var in cases.items():
        W = init.get(name)(shape, rng)
        assert W.shape == shape and W.dtype == np.float32
        assert abs(W.var() / var - 1) < 0.1, name
        assert abs(W.mean()) < 0.05 * np.sqrt(var) * 10


def test_orthogonal_and_sparse():
    rng = minidl.default_rng(1)
    W = init.orthogonal((5, 8), rng).astype(np.float64)
    np.testing.assert_allclose(W @ W.T, np.eye(5), atol=1e-6)
    W = init.orthogonal((8, 5), rng).astype(np.float64)
    np.testing.assert_allclose(W.T @ W, np.eye(5), atol=1e-6)
    S = init.sparse((10, 50), rng, k=15)
    assert ((S != 0).sum(axis=1) == 15).all()


def test_initialisers_need_an_explicit_generator():
    with pytest.raises(TypeError, match="explicit generator"):
        init.xavier_uniform((3, 3), None)
    with pytest.raises(ValueError, match="unknown initialiser 'glorot'"):
        init.get("glorot")


@pytest.mark.parametrize("name", sorted(init.INITIALISERS))
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 2, 3, 3), (2, 7, 1, 1)])
def test_every_initialiser_returns_a_c_ordered_array(name, shape):
    """orthogonal used to return Q.T, Fortran-ordered, for wide weights: W.reshape(-1) is
    then a copy, and code that writes through it (a finite-difference check) changes
    nothing."""
    W = init.get(name)(shape, minidl.default_rng(0))
    assert W.shape == shape and W.flags.c_contiguous
