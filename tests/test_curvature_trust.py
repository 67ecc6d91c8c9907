"""Curvature tools say when they did not converge, handle the +-lambda saddle, and refuse
random layers instead of answering differently on every call."""
import numpy as np
import pytest

import minidl
from minidl import curvature as C
from minidl.curvature import NotConvergedWarning
from minidl.layers import Dropout, Linear, Sequential, Tanh
from minidl.losses import MSELoss, SoftmaxCrossEntropy


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


def _saddle():
    """A deep linear network at its zero initialisation: H = [[0, B], [B^T, 0]] has
    eigenvalues in +-pairs, so the two of largest magnitude are -lambda and +lambda."""
    rng = minidl.default_rng(0)
    model = Sequential(Linear(3, 4, bias=False, rng=rng), Linear(4, 2, bias=False, rng=rng))
    for layer in model.layers:
        layer.params["W"][...] = 0
    x = rng.standard_normal((8, 3))
    t = x @ rng.standard_normal((3, 2))
    return model, MSELoss(), x, t


def test_power_iteration_at_the_saddle_returns_an_eigenvalue():
    model, loss, x, t = _saddle()
    H = C.hessian(model, loss, x, t)
    eig = np.linalg.eigvalsh(H)
    assert np.isclose(eig[0], -eig[-1])  # the +-lambda tie
    for seed in range(5):
        result = C.power_iteration(model, loss, x, t, minidl.default_rng(seed))
        lam, v = result  # still unpacks as a pair
        assert np.linalg.norm(H @ v - lam * v) <= 1e-6 * abs(lam), (seed, lam)
        np.testing.assert_allclose(abs(lam), np.abs(eig).max(), rtol=1e-10)
        assert result.converged and result.residual <= 1e-7
        assert "tie for the largest magnitude" in result.note


def test_power_iteration_that_did_not_converge_says_so():
    model, loss, x, t = _saddle()
    with pytest.warns(NotConvergedWarning, match=r"did not converge in \d+ products.*"
                                                 r"residual.*may not be an eigenvalue"):
        result = C.power_iteration(model, loss, x, t, minidl.default_rng(1), iters=3)
    assert not result.converged and result.residual > 1.5e-7
    assert result.iterations <= 4


def test_power_iteration_converges_normally_on_a_definite_ggn():
    rng = minidl.default_rng(3)
    model = Sequential(Linear(3, 4, rng=rng), Tanh(), Linear(4, 2, rng=rng))
    x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    G = C.ggn(model, MSELoss(), x, t)
    result = C.power_iteration(model, MSELoss(), x, t, minidl.default_rng(0),
                               curvature="ggn", iters=5000)
    assert result.converged and result.note in ("", "converged through Rayleigh-Ritz on "
                                                "span{v, A v}")
    np.testing.assert_allclose(result.eigenvalue, np.linalg.eigvalsh(G)[-1], rtol=1e-10)


def test_lanczos_reports_its_residuals_and_warns_when_short():
    rng = minidl.default_rng(4)
    model = Sequential(Linear(5, 6, rng=rng), Tanh(), Linear(6, 3, rng=rng))
    x, t = rng.standard_normal((10, 5)), rng.integers(0, 3, 10)
    loss = SoftmaxCrossEntropy()
    P = C.num_params(model)
    full = C.lanczos(model, loss, x, t, minidl.default_rng(0), steps=P)
    assert full.converged and full.residuals.shape == full.shape
    assert full.residuals.max() < 1e-8 * np.abs(full).max()
    with pytest.warns(NotConvergedWarning, match="did not converge.*more steps"):
        short = C.lanczos(model, loss, x, t, minidl.default_rng(0), steps=3)
    assert not short.converged
    with pytest.warns(NotConvergedWarning):
        top = C.top_eigenvalues(model, loss, x, t, minidl.default_rng(0), k=2, steps=3)
    assert not top.converged and top.shape == (2,)
    top = C.top_eigenvalues(model, loss, x, t, minidl.default_rng(0), k=2, steps=P)
    assert top.converged
    with pytest.warns(NotConvergedWarning, match="extreme_eigenvalues"):
        C.extreme_eigenvalues(model, loss, x, t, minidl.default_rng(0), steps=3)


# -- random layers -----------------------------------------------------------------------------
def _dropout_model():
    rng = minidl.default_rng(5)
    drop = Dropout(0.5, rng=minidl.default_rng(9))
    model = Sequential(Linear(3, 6, rng=rng), Tanh(), drop, Linear(6, 2, rng=rng))
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    return model, drop, MSELoss(), x, t


def test_curvature_through_train_mode_dropout_is_refused():
    model, drop, loss, x, t = _dropout_model()
    v = minidl.default_rng(1).standard_normal(C.num_params(model))
    state = drop.rng.bit_generator.state
    calls = {
        "hvp": lambda: C.hvp(model, loss, x, t, v),
        "ggn_vp": lambda: C.ggn_vp(model, loss, x, t, v),
        "hessian": lambda: C.hessian(model, loss, x, t),
        "ggn": lambda: C.ggn(model, loss, x, t),
        "per_example_grads": lambda: C.per_example_grads(model, loss, x, t),
        "empirical_fisher": lambda: C.empirical_fisher(model, loss, x, t),
        "true_fisher": lambda: C.true_fisher(model, loss, x, t, minidl.default_rng(0), 2),
        "power_iteration": lambda: C.power_iteration(model, loss, x, t, minidl.default_rng(0)),
        "lanczos": lambda: C.lanczos(model, loss, x, t, minidl.default_rng(0)),
        "optimal_step": lambda: C.optimal_step(model, loss, x, t),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"layer\(s\) \['2'\] draw random numbers in "
                                             r"train mode.*model.eval\(\).*frozen_mask"):
            call()
        assert drop.rng.bit_generator.state == state, name  # no mask was drawn
    # a frozen mask is one fixed function: allowed, and the same on every call
    with drop.frozen_mask():
        first = C.hvp(model, loss, x, t, v)
        np.testing.assert_array_equal(C.hvp(model, loss, x, t, v), first)
        assert C.per_example_grads(model, loss, x, t, method="layers").shape[0] == 4
    model.eval()
    np.testing.assert_array_equal(C.hvp(model, loss, x, t, v), C.hvp(model, loss, x, t, v))


def test_on_each_backend(on_backend):
    """The new paths (two-direction checks, Rayleigh-Ritz, the loss's row search) keep
    arrays on the device they came from."""
    from minidl.errors import NonFiniteWarning
    from minidl.gradcheck import check_layer
    model, loss, x, t = _saddle()
    model.to_backend()
    x, t = minidl.asarray(x), minidl.asarray(t)
    result = C.power_iteration(model, loss, x, t, minidl.default_rng(0))
    assert result.converged and minidl.array_module(result.eigenvector) is minidl.xp()
    assert check_layer(model, x).ok
    bad = x.copy()
    bad[1, 0] = float("nan")
    with pytest.warns(NonFiniteWarning, match=r"row\(s\) \[1\]"):
        loss.forward(model.forward(bad), t)


def _small_problem():
    rng = minidl.default_rng(0)
    model = Sequential(Linear(3, 2, rng=rng), Tanh(), Linear(2, 2, rng=rng))
    return model, SoftmaxCrossEntropy(), rng.standard_normal((4, 3)), rng.integers(0, 2, 4)


@pytest.mark.parametrize("samples", [2.5, "3", 0, -1, True])
def test_true_fisher_refuses_a_sample_count_that_is_not_a_positive_integer(samples):
    model, loss, x, y = _small_problem()
    with pytest.raises(ValueError, match="samples"):
        C.true_fisher(model, loss, x, y, minidl.default_rng(1), samples=samples)


@pytest.mark.parametrize("damping", [-1.0, float("nan"), float("inf"), "0.1"])
def test_condition_number_refuses_a_damping_that_is_not_a_number_at_least_zero(damping):
    model, loss, x, y = _small_problem()
    with pytest.raises(ValueError, match="damping"):
        C.condition_number(model, loss, x, y, minidl.default_rng(1), damping=damping)


def test_condition_number_with_damping_is_that_of_the_damped_dense_ggn():
    model, loss, x, y = _small_problem()
    eig = np.linalg.eigvalsh(C.ggn(model, loss, x, y)) + 0.5
    assert C.condition_number(model, loss, x, y, minidl.default_rng(1), damping=0.5) == \
        pytest.approx(eig[-1] / eig[0], rel=1e-8)
