"""The safeguards of issue 9 against brute force: non-finite values stop a step before any
statistic changes, K-FAC's identity start, Levenberg-Marquardt damping and Botev's
rescaling against the dense Gauss-Newton quadratic, MBF's in-step warm start, step bound
and bias-corrected Adam direction, Shampoo's blocks and tensor form against explicit
Kronecker products, and ``methods.build`` passing the learning rate."""
import numpy as np
import pytest

import minidl
from minidl import backend, methods
from minidl.errors import NonFiniteError
from minidl.layers import Conv2d, Flatten, Linear, Sequential
from minidl.losses import SoftmaxCrossEntropy
from minidl.optim import SGD
from minidl.precond import KFAC, KFLR, KFRA, MBF, Shampoo
from minidl.precond import kfactored

from reference import (append_ones, flat_grads, forward_backward, ggn_brute, mlp,
                       mlp_with_batchnorm)


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


def mat_power(M, power):
    d, Q = np.linalg.eigh(M)
    return (Q * d ** power) @ Q.T


def set_flat_params(model, theta):
    start = 0
    for _, layer, k in model.parameters():
        p = layer.params[k]
        layer.params[k] = backend.asarray(theta[start:start + p.size].reshape(p.shape))
        start += p.size


def flat_params(model):
    return np.concatenate([backend.to_numpy(layer.params[k]).ravel()
                           for _, layer, k in model.parameters()])


# -- non-finite values ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bnp", "mbf", "kfac", "shampoo", "kfra", "kflr", "bdf"])
def test_nan_in_the_data_stops_the_step_before_the_statistics_change(rng, name):
    model, loss = mlp(rng, (3, 4, 3)), SoftmaxCrossEntropy()
    opt, pre = methods.build(name, model, loss, rng=minidl.default_rng(0))
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    forward_backward(model, loss, x, y)
    pre.step()
    before = pre.state_dict()
    x_bad = x.copy()
    x_bad[2, 1] = np.nan  # one NaN pixel
    with np.errstate(all="ignore"):
        forward_backward(model, loss, x_bad, y)
    with pytest.raises(NonFiniteError, match="layer 0"):
        pre.step()
    after = pre.state_dict()
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_a_failing_inverse_is_reported_as_non_finite(rng, monkeypatch):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    forward_backward(model, loss, x, y)
    p = KFAC(model, loss=loss, T1=1, T2=1, kl_clip=None)

    def no_convergence(M):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")
    monkeypatch.setattr(kfactored, "sym_eig", no_convergence)
    with pytest.raises(NonFiniteError, match="inverse for layer 0 failed"):
        p.step()
    p.state[0]["A"] = p.state[0]["A"] * np.inf  # an overflowed statistic
    with pytest.raises(NonFiniteError, match="statistic 'A'"):
        p.guarded_inverse(0, p.layers[0])



def test_a_statistic_that_overflows_is_not_said_to_be_unchanged(rng):
    # finite float32 inputs of 1e20 pass the data check, but A = x^T x / N overflows
    minidl.set_default_dtype("float32")
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    x = np.full((5, 3), 1e20, dtype="float32")
    with np.errstate(all="ignore"):
        forward_backward(model, loss, x, rng.integers(0, 3, 5))
    p = KFAC(model, loss=loss, T1=1, T2=1, kl_clip=None)
    with np.errstate(all="ignore"), pytest.raises(NonFiniteError) as info:
        p.step()
    assert not np.isfinite(p.state[0]["A"]).all()  # the statistic did change
    message = str(info.value)
    assert "statistic 'A'" in message and "left unchanged" not in message
    assert "overflow" in message  # what happened, not what did not

# -- K-FAC: identity start, KL clipping on when built by name ----------------------------
def test_kfac_factors_start_from_the_identity(rng):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    forward_backward(model, loss, x, y)
    dout = backend.to_numpy(model[0].cache["dout"]) * 6  # per-example output gradients
    p = KFAC(model, loss=loss, T1=1, T2=1, kl_clip=None)
    np.testing.assert_array_equal(p.state[0]["A"], np.eye(4))
    p.step()
    a_hat = append_ones(x)
    np.testing.assert_allclose(p.state[0]["A"], 0.95 * np.eye(4) + 0.05 * a_hat.T @ a_hat / 6,
                               rtol=1e-12)
    np.testing.assert_allclose(p.state[0]["G"], 0.95 * np.eye(4) + 0.05 * dout.T @ dout / 6,
                               rtol=1e-12)


def test_kl_clip_without_a_learning_rate_warns_and_build_passes_the_optimizer(rng):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    with pytest.warns(UserWarning, match="kl_clip"):
        KFAC(model, loss=loss)
    with pytest.warns(UserWarning, match="kl_clip"):
        MBF(model)
    for name in ("kfac", "mbf"):
        opt, pre = methods.build(name, model, loss)
        assert pre.lr is opt and pre.kl_clip > 0
    opt, pre = methods.build("kfac", model, loss)
    assert (pre.damping, pre.T1, pre.T2, pre.kl_clip) == (0.03, 1, 10, 1e-2)


def test_build_takes_every_constructor_keyword_and_refuses_others(rng):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    options = methods.precond_options("mbf")
    assert {"damping", "stat_decay", "T1", "T2", "kl_clip", "warm_start"} <= set(options)
    assert options["damping"] == 3e-3
    for name in ("bnp", "mbf", "kfac", "shampoo", "kfra", "kflr", "bdf"):
        _, pre = methods.build(name, model, loss, precond_kw={"T2": 7})
        assert pre.T2 == 7
    with pytest.raises(ValueError, match="does not take"):
        methods.build("kfac", model, loss, precond_kw={"dampnig": 0.1})
    with pytest.raises(ValueError, match="does not take"):
        methods.build("kfac", model, loss, precond_kw={"lr": 0.1})



@pytest.mark.parametrize("cls", [KFAC, MBF, KFLR, KFRA])
@pytest.mark.parametrize("lr", [-0.01, 0.0, float("nan"), float("inf"), "0.01", True],
                         ids=["negative", "zero", "nan", "inf", "string", "bool"])
def test_a_learning_rate_that_is_not_a_positive_number_is_refused(rng, cls, lr):
    # lr enters the step bound squared, so a negative one would pass unnoticed there, and
    # flip the sign of the Levenberg-Marquardt quadratic model
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="lr"):
        cls(model, loss=loss, lr=lr) if cls is not MBF else cls(model, lr=lr)


@pytest.mark.parametrize("cls", [KFAC, MBF, KFLR, KFRA])
def test_a_learning_rate_may_be_a_number_or_an_optimizer(rng, cls):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    opt = SGD(model, lr=0.1)
    for lr in (0.1, 1, np.float32(0.5), opt):
        pre = cls(model, loss=loss, lr=lr) if cls is not MBF else cls(model, lr=lr)
        assert pre.lr is lr or pre.lr == lr

# -- Levenberg-Marquardt damping and Botev's rescaling -----------------------------------
@pytest.mark.parametrize("lr", [0.05, 30.0], ids=["small-step", "huge-step"])
def test_levenberg_marquardt_rule_against_the_dense_quadratic(rng, lr):
    """rho = (h(theta - lr d) - h(theta)) / M(-lr d), M(s) = g^T s + s^T (GGN + lam I) s / 2,
    then lam * (19/20) if rho > 3/4, lam / (19/20) if rho < 1/4 (period 1)."""
    model, loss = mlp(rng, (3, 4, 3)), SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    lam = 0.1
    forward_backward(model, loss, x, y)
    g = flat_grads(model)
    p = KFLR(model, loss=loss, damping=lam, adapt_damping=True, adapt_every=1, lr=lr)
    p.step()
    d = flat_grads(model)
    GGN = ggn_brute(model, loss, x, y)
    theta = flat_params(model)
    h_old = loss.forward(model.forward(x), y)
    set_flat_params(model, theta - lr * d)
    h_new = loss.forward(model.forward(x), y)
    set_flat_params(model, theta)
    s = -lr * d
    rho = (h_new - h_old) / (g @ s + 0.5 * s @ (GGN + lam * np.eye(len(s))) @ s)
    expected = lam * 0.95 if rho > 0.75 else (lam / 0.95 if rho < 0.25 else lam)
    assert p.damping == pytest.approx(expected, rel=1e-12)
    assert p.damping != lam  # both cases move it: rho near 1, rho < 0
    assert float(p.state_dict()["damping"]) == p.damping


@pytest.mark.parametrize("method", [KFLR, KFRA])
def test_rescaling_is_the_minimiser_of_the_dense_ggn_quadratic(rng, method):
    """d <- alpha d, alpha = g^T d / (d^T GGN d + lam d^T d) (Botev et al. 2017)."""
    model, loss = mlp(rng, (3, 4, 3)), SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    lam = 0.05
    forward_backward(model, loss, x, y)
    g = flat_grads(model)
    method(model, loss=loss, damping=lam).step()
    d = flat_grads(model)
    forward_backward(model, loss, x, y)
    method(model, loss=loss, damping=lam, rescale=True).step()
    rescaled = flat_grads(model)
    GGN = ggn_brute(model, loss, x, y)
    alpha = (g @ d) / (d @ GGN @ d + lam * d @ d)
    np.testing.assert_allclose(rescaled, alpha * d, rtol=1e-9)
    assert alpha != pytest.approx(1.0)


# -- MBF ------------------------------------------------------------------------------------
def test_mbf_warm_start_averages_the_first_updates_and_inverts_at_doubling_counts(rng):
    """Updates j = 1 .. W average with weight 1/j; the inverse is recomputed after
    j = 1, 2, 4, ... and after j = W (here W = 3: after 1, 2 and 3), then every T2."""
    model, loss = mlp(rng, (3, 2, 2)), SoftmaxCrossEntropy()
    lam, beta, W = 1e-2, 0.9, 3
    pre = MBF(model, damping=lam, stat_decay=beta, T2=20, warm_start=W, kl_clip=None)
    outer = []
    for t in range(5):
        x, y = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
        forward_backward(model, loss, x, y)
        G = np.concatenate([backend.to_numpy(model[0].grads["W"]),
                            backend.to_numpy(model[0].grads["b"])[:, None]], 1)  # (2, 4)
        outer.append(G[:, :, None] * G[:, None, :])  # (2, 4, 4)
        pre.step()
        if t < W:  # inverted after every warm-start update j = 1, 2, 3 (the last)
            np.testing.assert_allclose(pre.state[0]["P"], np.linalg.inv(
                np.mean(outer, axis=0) + lam * np.eye(4)), rtol=1e-9)
        if t == W - 1:  # end of the warm start: the plain average, freshly inverted
            F = np.mean(outer, axis=0)
            np.testing.assert_allclose(pre.state[0]["F"], F, rtol=1e-12)
            np.testing.assert_allclose(pre.state[0]["P"], np.linalg.inv(F + lam * np.eye(4)),
                                       rtol=1e-9)
    F = beta * (beta * F + (1 - beta) * outer[3]) + (1 - beta) * outer[4]
    np.testing.assert_allclose(pre.state[0]["F"], F, rtol=1e-12)
    assert int(pre.state[0]["n_warm"]) == W
    np.testing.assert_allclose(pre.state[0]["P"], np.linalg.inv(  # not refreshed since j = 3
        np.mean(outer[:3], axis=0) + lam * np.eye(4)), rtol=1e-9)
    inverted = []
    pre = MBF(model, T2=100, warm_start=10, kl_clip=None)
    for t in range(12):
        forward_backward(model, loss, rng.standard_normal((4, 3)), rng.integers(0, 2, 4))
        P = pre.state[0]["P"].copy()
        pre.step()
        if not np.array_equal(P, pre.state[0]["P"]):
            inverted.append(t + 1)  # the update count j
    assert inverted == [1, 2, 4, 8, 10]


def test_mbf_step_bound_scales_every_direction_by_nu(rng):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    forward_backward(model, loss, x, y)
    g = flat_grads(model)
    MBF(model, kl_clip=None).step()
    d = flat_grads(model)
    lr, kl = 0.5, 1e-3
    nu = min(1.0, np.sqrt(kl / (lr ** 2 * (d @ g))))
    assert nu < 1
    forward_backward(model, loss, x, y)
    MBF(model, kl_clip=kl, lr=SGD(model, lr=lr)).step()
    np.testing.assert_allclose(flat_grads(model), nu * d, rtol=1e-10)


def test_mbf_adam_direction_for_batchnorm_is_bias_corrected_every_step(rng):
    model, loss = mlp_with_batchnorm(rng, (4, 3, 3)), SoftmaxCrossEntropy()
    beta, eps = 0.9, 1e-8
    pre = MBF(model, kl_clip=None, stat_decay=beta, norm_eps=eps, T1=5, T2=20)
    v = 0.0
    for k in range(1, 4):
        x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
        forward_backward(model, loss, x, y)
        g = backend.to_numpy(model[1].grads["gamma"]).copy()
        v = beta * v + (1 - beta) * g ** 2
        pre.step()
        expected = g / (np.sqrt(v / (1 - beta ** k)) + eps)
        np.testing.assert_allclose(model[1].grads["gamma"], expected, rtol=1e-12)


def test_mbf_averages_large_dense_layers_by_default(rng):
    model = Sequential(Flatten(), Linear(784, 100, rng=rng), Linear(100, 100, rng=rng),
                       Linear(100, 10, rng=rng))
    assert MBF(model, kl_clip=None).kinds == ["dense_avg", "dense", "dense"]


# -- Shampoo --------------------------------------------------------------------------------
def test_shampoo_blocks_equal_the_dense_rule_with_block_diagonal_statistics(rng):
    """Linear(5, 7), block_size 3: W (7, 5) in blocks of rows {0:3, 3:6, 6:7} x columns
    {0:3, 3:5}, b (7,) in {0:3, 3:6, 6:7}. The direction is the dense preconditioner on
    vec(G) built from every block's Kronecker factor, over two steps of summed statistics.
    The edge blocks of row 6 are (1, k): vectors, with the exponent -1/2 (the size-1 rule
    of the module docstring; they used to get a 1 x 1 factor and the quarter root)."""
    model, loss = Linear(5, 7, rng=rng), SoftmaxCrossEntropy()
    eps = 1e-3
    p = Shampoo(model, damping=eps, grafting=None, root="eigh", block_size=3)
    rows, cols = [(0, 3), (3, 6), (6, 7)], [(0, 3), (3, 5)]
    sums = {}
    for _ in range(2):
        x, y = rng.standard_normal((6, 5)), rng.integers(0, 7, 6)
        forward_backward(model, loss, x, y)
        G = backend.to_numpy(model.grads["W"]).copy()  # (7, 5)
        gb = backend.to_numpy(model.grads["b"]).copy()  # (7,)
        p.step()
        dense = np.zeros((35, 35))
        for r0, r1 in rows:
            for c0, c1 in cols:
                B = G[r0:r1, c0:c1]
                idx = (np.arange(r0, r1)[:, None] * 5 + np.arange(c0, c1)[None, :]).ravel()
                if r1 - r0 == 1:  # a (1, k) block: the vector rule
                    V = sums[(r0, c0, "V")] = sums.get((r0, c0, "V"), 0) + np.outer(B, B)
                    dense[np.ix_(idx, idx)] = mat_power(V + eps * np.eye(c1 - c0), -0.5)
                    continue
                L = sums[(r0, c0, "L")] = sums.get((r0, c0, "L"), 0) + B @ B.T
                R = sums[(r0, c0, "R")] = sums.get((r0, c0, "R"), 0) + B.T @ B
                dense[np.ix_(idx, idx)] = np.kron(mat_power(L + eps * np.eye(r1 - r0), -0.25),
                                                  mat_power(R + eps * np.eye(c1 - c0), -0.25))
        np.testing.assert_allclose(backend.to_numpy(model.grads["W"]).ravel(),
                                   dense @ G.ravel(), rtol=1e-9)
        expected_b = np.empty(7)
        for r0, r1 in rows:
            Lb = sums[(r0, "b")] = sums.get((r0, "b"), 0) + np.outer(gb[r0:r1], gb[r0:r1])
            expected_b[r0:r1] = mat_power(Lb + eps * np.eye(r1 - r0), -0.5) @ gb[r0:r1]
        np.testing.assert_allclose(backend.to_numpy(model.grads["b"]), expected_b, rtol=1e-9)
    assert "W@3.3.R" in p.state[0] and "W.L" not in p.state[0]
    assert p.state[0]["W@6.0.L"].shape == (3, 3) and "W@6.0.R" not in p.state[0]


def test_shampoo_tensor_form_is_the_three_factor_kronecker_product(rng):
    """W (3, 2, 2, 2) as the tensor (F, C, k^2) = (3, 2, 4): H_j = G_(j) G_(j)^T per mode,
    vec(D) = ((H_1+eps)^(-1/6) kron (H_2+eps)^(-1/6) kron (H_3+eps)^(-1/6)) vec(G)."""
    model = Sequential(Conv2d(2, 3, 2, rng=rng), Flatten(), Linear(12, 2, rng=rng))
    loss, eps = SoftmaxCrossEntropy(), 1e-3
    x, y = rng.standard_normal((4, 2, 3, 3)), rng.integers(0, 2, 4)
    forward_backward(model, loss, x, y)
    G = backend.to_numpy(model[0].grads["W"]).reshape(3, 2, 4).copy()
    Shampoo(model, damping=eps, grafting=None, root="eigh", conv_form="tensor").step()
    unfold = [G.reshape(3, 8), G.transpose(1, 0, 2).reshape(2, 12),
              G.transpose(2, 0, 1).reshape(4, 6)]
    P = [mat_power(U @ U.T + eps * np.eye(len(U)), -1 / 6) for U in unfold]
    expected = np.kron(P[0], np.kron(P[1], P[2])) @ G.ravel()
    np.testing.assert_allclose(backend.to_numpy(model[0].grads["W"]).ravel(), expected,
                               rtol=1e-9)
