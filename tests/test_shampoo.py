"""Shampoo: the matrix update against its Kronecker form and dense solves, coupled Newton
against eigendecomposition roots, statistics restated, grafting, checkpoints, backends."""
import re
import warnings

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.layers import Conv2d, Flatten, Linear, Sequential
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.optim import SGD
from minidl.precond import CoverageWarning, Shampoo
from minidl.curvature import NotConvergedWarning
from minidl.precond.linalg import inverse_root_eigh, inverse_root_newton

from reference import (assert_same_params, forward_backward, mlp, mlp_with_batchnorm,
                       npz_round_trip, raw_grads, train_step)

SIZES = (3, 5, 4)  # the MLP of these tests: W (5, 3) and W (4, 5)


def mat_power(M, power):
    """M^power for symmetric PSD M, by numpy's eigh (the independent reference)."""
    d, Q = np.linalg.eigh(M)
    return (Q * d ** power) @ Q.T


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


@pytest.fixture
def batch(rng):
    return rng.standard_normal((6, 3)), rng.integers(0, 4, 6)


# -- the inverse roots -------------------------------------------------------------------
@pytest.mark.parametrize("p", [2, 4, 6])
@pytest.mark.parametrize("cond", [1e1, 1e5])
def test_coupled_newton_equals_eigen_root(rng, p, cond):
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    M = (Q * np.geomspace(1.0, 1.0 / cond, 6)) @ Q.T
    expected = mat_power(M + 1e-6 * np.eye(6), -1.0 / p)
    np.testing.assert_allclose(inverse_root_newton(M, p, ridge=1e-6), expected, rtol=1e-5,
                               atol=1e-8 * np.abs(expected).max())
    np.testing.assert_allclose(inverse_root_eigh(M, p, ridge=1e-6), expected, rtol=1e-9)


def test_coupled_newton_handles_a_singular_statistic(rng):
    g = rng.standard_normal((5, 1))
    M = g @ g.T  # rank one: only the ridge makes it invertible
    expected = mat_power(M + 1e-2 * np.eye(5), -0.25)
    np.testing.assert_allclose(inverse_root_newton(M, 4, ridge=1e-2), expected, rtol=1e-5)


@pytest.mark.parametrize("p", [2, 4])
def test_coupled_newton_reports_that_it_did_not_converge(rng, p):
    """cond 1e14: ||Y - I||_F meets tol, but round-off has made Y drift from X^p M, so X is
    far from M^{-1/p}; the warning gives the true residual ||X^p M - I||_F, which is
    computed here independently (and an iteration cut short by max_iter is reported)."""
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    M = (Q * np.geomspace(1.0, 1e-14, 20)) @ Q.T  # cond 1e14
    with pytest.warns(NotConvergedWarning, match="did not converge") as record:
        X = inverse_root_newton(M, p)
    residual = np.linalg.norm(np.linalg.matrix_power(X, p) @ M - np.eye(20))
    assert residual > 1e-3  # the warning is about a real failure
    reported = float(re.search(r"_F = ([0-9.e+-]+) after", str(record[0].message)).group(1))
    assert reported == pytest.approx(residual, rel=0.05)  # round-off in the products
    with pytest.warns(NotConvergedWarning, match="max_iter=2 ran out"):
        inverse_root_newton(np.diag([1.0, 2.0, 3.0]), p, max_iter=2)


def test_shampoo_with_newton_roots_is_quiet_on_its_normal_path(rng):
    """Shampoo's statistics with its default ridge (rank-deficient at first, then full)
    are well inside what the iteration handles: no NotConvergedWarning over 10 steps."""
    model = Sequential(Conv2d(2, 4, 3, padding=1, rng=minidl.default_rng(0)), Flatten(),
                       Linear(4 * 5 * 5, 3, rng=minidl.default_rng(1)))
    loss = SoftmaxCrossEntropy()
    pre, opt = Shampoo(model, root="newton"), SGD(model, lr=0.05, momentum=0.9)
    x, y = rng.standard_normal((8, 2, 5, 5)), rng.integers(0, 3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)
        for _ in range(10):
            forward_backward(model, loss, x, y)
            pre.step()
            opt.step()


# -- the update --------------------------------------------------------------------------
def test_matrix_update_equals_kronecker_form_and_dense_solve(rng, batch):
    model = mlp(rng, SIZES)
    loss = SoftmaxCrossEntropy()
    forward_backward(model, loss, *batch)
    raw = raw_grads(model)
    eps = 1e-3
    p = Shampoo(model, damping=eps, grafting=None, root="eigh")
    p.step()
    for layer in p.layers:
        G = raw[id(layer)]["W"]  # (F, k)
        L_eps = G @ G.T + eps * np.eye(G.shape[0])
        R_eps = G.T @ G + eps * np.eye(G.shape[1])
        got = backend.to_numpy(layer.grads["W"])
        matrix = mat_power(L_eps, -0.25) @ G @ mat_power(R_eps, -0.25)
        kron = np.kron(mat_power(L_eps, -0.25), mat_power(R_eps, -0.25)) @ G.ravel()
        solve = np.linalg.solve(np.kron(mat_power(L_eps, 0.25), mat_power(R_eps, 0.25)),
                                G.ravel())
        np.testing.assert_allclose(got, matrix, rtol=1e-8)
        np.testing.assert_allclose(got.ravel(), kron, rtol=1e-8)
        np.testing.assert_allclose(got.ravel(), solve, rtol=1e-7)
        # the bias is its own order-1 tensor: full-matrix AdaGrad, exponent -1/2
        g = raw[id(layer)]["b"]
        Lb = np.outer(g, g) + eps * np.eye(len(g))
        np.testing.assert_allclose(backend.to_numpy(layer.grads["b"]),
                                   mat_power(Lb, -0.5) @ g, rtol=1e-8)


def test_newton_and_eigh_directions_agree(rng, batch):
    model = mlp(rng, SIZES)
    loss = SoftmaxCrossEntropy()
    out = []
    for root in ("newton", "eigh"):
        forward_backward(model, loss, *batch)
        Shampoo(model, damping=1e-3, grafting=None, root=root).step()
        out.append([backend.to_numpy(layer.grads[k]).copy()
                    for _, layer, k in model.parameters()])
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8 * np.abs(b).max())


def test_statistics_sum_or_average_over_steps(rng):
    batches = [(rng.standard_normal((6, 3)), rng.integers(0, 4, 6)) for _ in range(3)]
    for beta2 in (1.0, 0.9):
        model = mlp(minidl.default_rng(2), SIZES)
        loss = SoftmaxCrossEntropy()
        p = Shampoo(model, stat_decay=beta2)
        L = None
        for x, y in batches:
            forward_backward(model, loss, x, y)
            G = backend.to_numpy(model[0].grads["W"])
            new = G @ G.T
            L = new if L is None else (L + new if beta2 == 1 else beta2 * L + (1 - beta2) * new)
            p.step()
        np.testing.assert_allclose(backend.to_numpy(p.state[0]["W.L"]), L, rtol=1e-12)


def test_appended_bias_preconditions_the_whole_matrix(rng, batch):
    model = mlp(rng, SIZES)
    loss = SoftmaxCrossEntropy()
    forward_backward(model, loss, *batch)
    raw = raw_grads(model)
    Shampoo(model, damping=1e-3, grafting=None, root="eigh", bias="appended").step()
    for layer in (model[0], model[2]):
        G = np.concatenate([raw[id(layer)]["W"], raw[id(layer)]["b"][:, None]], axis=1)
        P = (mat_power(G @ G.T + 1e-3 * np.eye(G.shape[0]), -0.25) @ G
             @ mat_power(G.T @ G + 1e-3 * np.eye(G.shape[1]), -0.25))
        np.testing.assert_allclose(backend.to_numpy(layer.grads["W"]), P[:, :-1], rtol=1e-8)
        np.testing.assert_allclose(backend.to_numpy(layer.grads["b"]), P[:, -1], rtol=1e-8)


def test_conv_kernel_is_reshaped_to_filters_by_patch(rng):
    model = Sequential(Conv2d(2, 3, 2, rng=rng), Flatten(), Linear(12, 2, rng=rng))
    loss = SoftmaxCrossEntropy()
    x, y = rng.standard_normal((4, 2, 3, 3)), rng.integers(0, 2, 4)
    forward_backward(model, loss, x, y)
    gW = backend.to_numpy(model[0].grads["W"]).copy()  # (3, 2, 2, 2)
    Shampoo(model, damping=1e-3, grafting=None, root="eigh").step()
    G = gW.reshape(3, -1)  # (F, C kh kw)
    P = (mat_power(G @ G.T + 1e-3 * np.eye(3), -0.25) @ G
         @ mat_power(G.T @ G + 1e-3 * np.eye(8), -0.25))
    np.testing.assert_allclose(backend.to_numpy(model[0].grads["W"]), P.reshape(gW.shape),
                               rtol=1e-8)


# Linear(m, n) has W (n, m): (4, 1) -> W (1, 4), (1, 5) -> W (5, 1), (1, 1) -> W (1, 1)
@pytest.mark.parametrize("in_out, bias, has_bias, root", [
    ((4, 1), "separate", True, "eigh"),    # W (1, 4) -> (4,), b (1,)
    ((4, 1), "appended", True, "eigh"),    # [W | b] (1, 5) -> (5,)
    ((4, 1), "appended", True, "newton"),
    ((1, 5), "separate", False, "eigh"),   # W (5, 1) -> (5,)
    ((1, 5), "separate", False, "newton"),
    ((1, 1), "appended", True, "eigh"),    # [W | b] (1, 2) -> (2,)
    ((1, 1), "separate", True, "eigh"),    # W (1, 1) -> (1,): a scalar
], ids=["W(1,4)", "Wb(1,5)", "Wb(1,5)-newton", "W(5,1)", "W(5,1)-newton", "Wb(1,2)",
        "W(1,1)"])
def test_size_one_modes_are_dropped_to_full_matrix_adagrad(rng, in_out, bias, has_bias, root):
    """A (1, k) or (F, 1) gradient is the order-1 tensor vec(G) (Anil et al.'s
    merge_small_dims): exponent -1/(2 * 1), P = (sum_t g_t g_t^T + eps I)^{-1/2} g, over
    several steps, and no second factor; not the matrix rule's quarter root."""
    m, n = in_out
    model = Linear(m, n, bias=has_bias, rng=rng)
    loss = MSELoss()
    eps = 1e-3
    p = Shampoo(model, damping=eps, grafting=None, root=root, bias=bias)
    S, S_b = 0.0, 0.0
    rtol = 1e-8 if root == "eigh" else 1e-5
    for _ in range(3):
        x, y = rng.standard_normal((6, m)), rng.standard_normal((6, n))  # (6, m), (6, n)
        forward_backward(model, loss, x, y)
        raw = raw_grads(model)[id(model)]
        if bias == "appended":
            g = np.concatenate([raw["W"], raw["b"][:, None]], axis=1).ravel()  # (n (m+1),)
        else:
            g = raw["W"].ravel()  # (n m,)
        S = S + np.outer(g, g)  # (n', n')
        p.step()
        P = mat_power(S + eps * np.eye(len(g)), -0.5) @ g  # (n',)
        got = backend.to_numpy(model.grads["W"])
        np.testing.assert_allclose(got.ravel(), P[:got.size], rtol=rtol)
        assert got.shape == raw["W"].shape
        if bias == "appended":
            np.testing.assert_allclose(backend.to_numpy(model.grads["b"]), P[got.size:],
                                       rtol=rtol)
        elif has_bias:  # b (1,): its own order-1 tensor, as before
            S_b = S_b + raw["b"] ** 2  # (1,)
            np.testing.assert_allclose(backend.to_numpy(model.grads["b"]),
                                       raw["b"] / np.sqrt(S_b + eps), rtol=rtol)
    assert not any(key.endswith(".R") for key in p.state[0]), sorted(p.state[0])
    quarter = mat_power(S + eps * np.eye(len(g)), -0.25) @ g
    if len(g) > 1:  # the rule matters: the quarter root is another direction
        cos = quarter @ P / np.linalg.norm(quarter) / np.linalg.norm(P)
        assert cos < 1 - 1e-6


def test_single_filter_conv_kernel_is_a_vector(rng):
    """Conv2d with one filter: W (1, C, kh, kw) -> (C kh kw,), full-matrix AdaGrad. Three
    steps, since on the first (a rank-one statistic) both rules give g / sqrt(|g|^2 + eps)."""
    model = Sequential(Conv2d(2, 1, 2, bias=False, rng=rng), Flatten(), Linear(4, 2, rng=rng))
    loss = SoftmaxCrossEntropy()
    p = Shampoo(model, damping=1e-3, grafting=None, root="eigh")
    S = 0.0
    for _ in range(3):
        x, y = rng.standard_normal((4, 2, 3, 3)), rng.integers(0, 2, 4)
        forward_backward(model, loss, x, y)
        gW = backend.to_numpy(model[0].grads["W"]).copy()  # (1, 2, 2, 2)
        p.step()
        g = gW.ravel()  # (8,)
        S = S + np.outer(g, g)  # (8, 8)
        P = mat_power(S + 1e-3 * np.eye(8), -0.5) @ g  # (8,)
        np.testing.assert_allclose(backend.to_numpy(model[0].grads["W"]),
                                   P.reshape(gW.shape), rtol=1e-8)


def test_psd_bound_of_gupta_et_al(rng):
    """eps I + (1/r) sum_t g_t g_t^T <= (L^{1/2} kron R^{1/2}) with r = min(F, k), L and R
    starting from eps I (row-major vec)."""
    eps = 1e-2
    Gs = [rng.standard_normal((3, 4)) for _ in range(5)]
    L = eps * np.eye(3) + sum(G @ G.T for G in Gs)
    R = eps * np.eye(4) + sum(G.T @ G for G in Gs)
    lhs = eps * np.eye(12) + sum(np.outer(G.ravel(), G.ravel()) for G in Gs) / 3
    gap = np.kron(mat_power(L, 0.5), mat_power(R, 0.5)) - lhs
    assert np.linalg.eigvalsh(gap).min() > -1e-10


# -- grafting, identity statistics, huge epsilon -----------------------------------------
def test_grafting_takes_the_norm_of_sgd_or_adagrad(rng, batch):
    model = mlp(rng, SIZES)
    loss = SoftmaxCrossEntropy()
    for grafting in ("sgd", "adagrad"):
        forward_backward(model, loss, *batch)
        raw = raw_grads(model)
        Shampoo(model, grafting=grafting, graft_eps=1e-6).step()
        for layer in (model[0], model[2]):
            for k in ("W", "b"):
                g = raw[id(layer)][k]
                D = g if grafting == "sgd" else g / (np.sqrt(g * g) + 1e-6)
                np.testing.assert_allclose(np.linalg.norm(backend.to_numpy(layer.grads[k])),
                                           np.linalg.norm(D), rtol=1e-10)


def test_identity_statistics_and_huge_epsilon(rng, batch):
    model = mlp(rng, SIZES)
    loss = SoftmaxCrossEntropy()
    forward_backward(model, loss, *batch)
    raw = raw_grads(model)
    eps = 0.2
    p = Shampoo(model, damping=eps, grafting=None)
    for i, layer in enumerate(p.layers):
        F, k = layer.params["W"].shape
        p.state[i] = {"W.L": np.eye(F), "W.R": np.eye(k), "b.L": np.eye(F)}
        p.update_inverse(i, layer)
        p.precondition(i, layer)
        np.testing.assert_allclose(backend.to_numpy(layer.grads["W"]),
                                   raw[id(layer)]["W"] / (1 + eps) ** 0.5, rtol=1e-6)
        np.testing.assert_allclose(backend.to_numpy(layer.grads["b"]),
                                   raw[id(layer)]["b"] / (1 + eps) ** 0.5, rtol=1e-6)
    forward_backward(model, loss, *batch)
    Shampoo(model, damping=1e10, grafting=None).step()  # (eps I)^{-1/4} G (eps I)^{-1/4}
    for layer in p.layers:
        np.testing.assert_allclose(backend.to_numpy(layer.grads["W"]) * 1e5,
                                   raw[id(layer)]["W"], rtol=1e-6)


def test_uncovered_layers_keep_their_gradient(rng, batch):
    model = mlp_with_batchnorm(rng, SIZES)
    loss = SoftmaxCrossEntropy()
    forward_backward(model, loss, *batch)
    raw = raw_grads(model)
    with pytest.warns(CoverageWarning, match="BatchNorm1d"):
        p = Shampoo(model)
    p.step()
    for k, v in raw[id(model[1])].items():
        np.testing.assert_array_equal(backend.to_numpy(model[1].grads[k]), v)


def test_bad_arguments_say_what_is_allowed(rng):
    with pytest.raises(ValueError, match="grafting"):
        Shampoo(mlp(rng, SIZES), grafting="adam")
    with pytest.raises(ValueError, match="beta2"):
        Shampoo(mlp(rng, SIZES), stat_decay=0.0)


# -- checkpoints and backends -------------------------------------------------------------
def test_state_dict_round_trip_continues_identically(rng):
    batches = [(rng.standard_normal((6, 3)), rng.integers(0, 4, 6)) for _ in range(6)]
    models = [mlp(minidl.default_rng(9), SIZES) for _ in range(2)]
    losses = [SoftmaxCrossEntropy() for _ in range(2)]
    opts = [SGD(m, lr=0.1) for m in models]
    ps = [Shampoo(m, grafting="adagrad", stat_decay=0.9, T2=2) for m in models]
    for x, y in batches[:3]:
        train_step(models[0], losses[0], x, y, ps[0], opts[0])
    models[1].load_state_dict(models[0].state_dict())
    opts[1].load_state_dict(opts[0].state_dict())
    ps[1].load_state_dict(npz_round_trip(ps[0].state_dict()))
    for x, y in batches[3:]:
        for k in range(2):
            train_step(models[k], losses[k], x, y, ps[k], opts[k])
    assert_same_params(*models)


def test_loaded_state_is_a_copy_the_caller_keeps_unchanged(rng):
    """Shampoo updates its statistics in place; that must not reach the dict it was loaded
    from (a checkpoint kept in memory would otherwise change under the caller)."""
    model = mlp(minidl.default_rng(9), SIZES)
    loss, opt = SoftmaxCrossEntropy(), SGD(model, lr=0.1)
    p = Shampoo(model)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 4, 6)
    train_step(model, loss, x, y, p, opt)
    saved = p.state_dict()
    before = {k: np.array(v, copy=True) for k, v in saved.items()}  # arrays and settings
    p.load_state_dict(saved)
    train_step(model, loss, x, y, p, opt)
    for k in saved:
        np.testing.assert_array_equal(saved[k], before[k], err_msg=k)
    assert not np.array_equal(backend.to_numpy(p.state[0]["W.L"]), saved["0.W.L"])


def test_runs_on_each_backend(on_backend):
    rng = minidl.default_rng(6)
    model = mlp(rng, SIZES)
    loss = SoftmaxCrossEntropy()
    x = minidl.asarray(rng.standard_normal((6, 3)))
    y = minidl.asarray(rng.integers(0, 4, 6))
    forward_backward(model, loss, x, y)
    raw = raw_grads(model)
    Shampoo(model, damping=1e-3, grafting=None).step()
    assert type(model[0].grads["W"]).__module__.split(".")[0] == on_backend
    G = raw[id(model[0])]["W"]
    P = (mat_power(G @ G.T + 1e-3 * np.eye(5), -0.25) @ G
         @ mat_power(G.T @ G + 1e-3 * np.eye(3), -0.25))
    np.testing.assert_allclose(backend.to_numpy(model[0].grads["W"]), P, rtol=1e-4,
                               atol=1e-8 * np.abs(P).max())
