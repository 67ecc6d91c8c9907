"""minidl.curvature with inputs that used to give a silent wrong answer or a raw NumPy
error: empty batches, targets of another length, frozen dropout masks in the one-example
loop, malformed counts and tolerances, non-finite values."""
import warnings

import numpy as np
import pytest

import minidl
from minidl import curvature as C
from minidl.layers import Dropout, LayerNorm, Linear, Sequential, Tanh
from minidl.losses import MSELoss, SoftmaxCrossEntropy


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


def _mlp(norm=False):
    """Linear-Tanh-Linear; with ``norm`` a LayerNorm, which sends per-example gradients
    through the one-example loop."""
    rng = minidl.default_rng(0)
    body = [Linear(3, 4, rng=rng)] + ([LayerNorm(4)] if norm else []) + \
        [Tanh(), Linear(4, 2, rng=rng)]
    return Sequential(*body)


def _batch(n=5):
    rng = minidl.default_rng(1)
    return rng.standard_normal((n, 3)), rng.standard_normal((n, 2)), rng.integers(0, 2, n)


# -- empty batches -----------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [False, True], ids=["layers", "loop"])
def test_per_example_grads_of_an_empty_sum_batch_are_an_empty_matrix(norm):
    model = _mlp(norm)
    x, t, _ = _batch()
    G = C.per_example_grads(model, MSELoss("sum"), x[:0], t[:0])
    assert G.shape == (0, C.num_params(model))


@pytest.mark.parametrize("norm", [False, True], ids=["layers", "loop"])
@pytest.mark.parametrize("which", ["empirical_fisher", "true_fisher"])
def test_fisher_of_an_empty_batch_is_refused(norm, which):
    """(1/N) sum_n over no examples is 0/0, whatever the loss's reduction."""
    model = _mlp(norm)
    x, t, _ = _batch()
    args = (minidl.default_rng(0), 2) if which == "true_fisher" else ()
    with pytest.raises(ValueError, match=rf"{which}.*empty batch.*0/0"):
        getattr(C, which)(model, MSELoss("sum"), x[:0], t[:0], *args)


# -- targets of another length -----------------------------------------------------------------
@pytest.mark.parametrize("norm", [False, True], ids=["layers", "loop"])
@pytest.mark.parametrize("extra", [1, -2])
@pytest.mark.parametrize("kind", ["mse", "ce"])
def test_per_example_grads_refuse_targets_of_another_length(norm, extra, kind):
    """The one-example loop read target[n:n+1] for n < N, so surplus targets were dropped
    without a word; both paths now say what arrived."""
    model = _mlp(norm)
    x, t, y = _batch()
    loss, target = (MSELoss(), t) if kind == "mse" else (SoftmaxCrossEntropy(), y)
    target = np.concatenate([target, target])[:5 + extra]
    for fn in (C.per_example_grads, C.empirical_fisher):
        with pytest.raises(ValueError, match=rf"5 examples.*{5 + extra} targets"):
            fn(model, loss, x, target)


# -- a frozen dropout mask in the one-example loop ---------------------------------------------
@pytest.mark.parametrize("drawn", [False, True], ids=["no-mask-yet", "mask-drawn"])
def test_one_example_loop_refuses_a_frozen_dropout_mask(drawn):
    """A mask frozen for the batch cannot serve batches of one. With no mask drawn yet the
    loop's first one-example pass drew a (1, 4) mask and every example reused it, so the
    "per-example gradients" were those of another network, without a word."""
    rng = minidl.default_rng(2)
    drop = Dropout(0.5, rng=minidl.default_rng(3))
    model = Sequential(Linear(3, 4, rng=rng), drop, LayerNorm(4), Tanh(), Linear(4, 2, rng=rng))
    x, t, _ = _batch()
    loss = MSELoss()
    with drop.frozen_mask():
        if drawn:
            model.forward(x)
        for method in ("auto", "loop"):
            with pytest.raises(ValueError, match=r"\['1'\].*frozen.*one-example loop"):
                C.per_example_grads(model, loss, x, t, method=method)
        with pytest.raises(ValueError, match=r"\['1'\].*frozen.*one-example loop"):
            C.empirical_fisher(model, loss, x, t)
    # the layers path uses the batch's mask: rows average to the batch gradient
    plain = Sequential(Linear(3, 4, rng=rng), drop, Tanh(), Linear(4, 2, rng=rng))
    with drop.frozen_mask():
        G = C.per_example_grads(plain, loss, x, t)
        np.testing.assert_allclose(G.mean(0), C.loss_and_grad(plain, loss, x, t)[1],
                                   rtol=1e-10, atol=1e-13)


# -- counts and tolerances of the spectral methods ---------------------------------------------
def _spectral_calls(**kw):
    model = _mlp()
    x, t, _ = _batch()
    loss = MSELoss()
    rng = minidl.default_rng(0)
    return {
        "lanczos": lambda: C.lanczos(model, loss, x, t, rng, **kw),
        "top_eigenvalues": lambda: C.top_eigenvalues(model, loss, x, t, rng, **kw),
        "extreme_eigenvalues": lambda: C.extreme_eigenvalues(model, loss, x, t, rng, **kw),
        "condition_number": lambda: C.condition_number(model, loss, x, t, rng, **kw),
    }


@pytest.mark.parametrize("steps", [2.5, True, "5", 0, -1, 27])
def test_lanczos_steps_must_be_an_integer_in_range(steps):
    """2.5 ran 2 steps, True one and "5" five, without a word; top_eigenvalues turned 0
    and -1 into k steps."""
    for name, call in _spectral_calls(steps=steps).items():
        with pytest.raises(ValueError, match=rf"{name}: steps must be an integer in "
                                             r"\[1, 26\]"):
            call()


@pytest.mark.parametrize("k", [1.5, True, "a", 0, 27])
def test_top_eigenvalues_k_must_be_an_integer_in_range(k):
    call = _spectral_calls(k=k)["top_eigenvalues"]
    with pytest.raises(ValueError, match=r"top_eigenvalues: k must be an integer in \[1, 26\]"):
        call()


@pytest.mark.parametrize("iters", [0, -3, 2.7, False, "9"])
def test_power_iteration_iters_must_be_a_positive_integer(iters):
    """0 and -3 ran one product, 2.7 two, without a word."""
    model = _mlp()
    x, t, _ = _batch()
    with pytest.raises(ValueError, match="power_iteration: iters must be an integer in"):
        C.power_iteration(model, MSELoss(), x, t, minidl.default_rng(0), iters=iters)


@pytest.mark.parametrize("tol", [-1.0, 0.0, float("nan"), float("inf"), "1e-3", True])
def test_spectral_tolerance_must_be_a_positive_number(tol):
    """A negative or NaN tol can never be met: every result was reported as not converged,
    however exact it was."""
    model = _mlp()
    x, t, _ = _batch()
    calls = _spectral_calls(tol=tol)
    del calls["condition_number"]  # it has no tol
    calls["power_iteration"] = lambda: C.power_iteration(model, MSELoss(), x, t,
                                                         minidl.default_rng(0), tol=tol)
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"{name}: tol must be a number in \(0, inf\)"):
            call()


# -- non-finite values -------------------------------------------------------------------------
def _every_call(model, x, t, loss):
    P = C.num_params(model)
    v = np.ones(P)
    rng = minidl.default_rng(0)
    return {
        "hvp": lambda: C.hvp(model, loss, x, t, v),
        "ggn_vp": lambda: C.ggn_vp(model, loss, x, t, v),
        "loss_and_grad": lambda: C.loss_and_grad(model, loss, x, t),
        "hessian": lambda: C.hessian(model, loss, x, t),
        "ggn": lambda: C.ggn(model, loss, x, t),
        "per_example_grads": lambda: C.per_example_grads(model, loss, x, t),
        "empirical_fisher": lambda: C.empirical_fisher(model, loss, x, t),
        "true_fisher": lambda: C.true_fisher(model, loss, x, t, rng, 2),
        "lanczos": lambda: C.lanczos(model, loss, x, t, rng),
        "top_eigenvalues": lambda: C.top_eigenvalues(model, loss, x, t, rng),
        "power_iteration": lambda: C.power_iteration(model, loss, x, t, rng, iters=30),
        "condition_number": lambda: C.condition_number(model, loss, x, t, rng),
        "optimal_step": lambda: C.optimal_step(model, loss, x, t),
    }


@pytest.mark.parametrize("where", ["x", "target", "parameter"])
def test_non_finite_values_are_refused_before_any_work(where):
    """A NaN in the data or the weights made every curvature NaN (condition_number
    answered nan, though it promises a float >= 1 or inf); now each call names what holds
    it, before any pass, and warns nothing else."""
    model = _mlp()
    x, t, _ = _batch()
    if where == "x":
        x = x.copy()
        x[3, 1] = np.nan
        pattern = r"x holds NaN or infinity in row\(s\) \[3\]"
    elif where == "target":
        t = t.copy()
        t[1, 0] = np.inf
        pattern = r"target holds NaN or infinity in row\(s\) \[1\]"
    else:
        model[2].params["b"][1] = np.nan
        pattern = r"parameter '2.b' holds NaN or infinity"
    for name, call in _every_call(model, x, t, MSELoss()).items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no NonFiniteWarning from a pass that ran
            with pytest.raises(ValueError, match=rf"{name}: {pattern}"):
                call()


@pytest.mark.parametrize("bad", ["nan", "complex"])
def test_product_direction_must_be_a_finite_real_vector(bad):
    """A complex v lost its imaginary part with only NumPy's ComplexWarning; a NaN v gave a
    NaN product."""
    model = _mlp()
    x, t, _ = _batch()
    P = C.num_params(model)
    v = {"nan": np.r_[np.nan, np.ones(P - 1)], "complex": np.ones(P) * 1j}[bad]
    pattern = "non-finite" if bad == "nan" else "real"
    for fn in (C.hvp, C.ggn_vp):
        with pytest.raises(ValueError, match=rf"{fn.__name__}.*{pattern}"):
            fn(model, MSELoss(), x, t, v)
