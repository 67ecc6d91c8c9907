"""K-FAC against brute force: factors from per-example loops, blocks from dense matrices,
directions from dense solves, the sampled Fisher against the exact GGN."""
import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.layers import Conv2d, Flatten, Sequential
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.optim import SGD
from minidl.precond import KFAC, CoverageWarning
from minidl.precond.linalg import damped_kron_solve, sym_eig

from reference import (append_ones, assert_kron_blocks_equal, assert_same_params, block_index,
                       damped_kron_block, empirical_fisher_loop, forward_backward, ggn_brute,
                       kron_block, mlp, mlp_with_batchnorm, npz_round_trip, single_location_cnn,
                       train_step)


def grad_matrix(layer):
    return np.concatenate([backend.to_numpy(layer.grads["W"]).reshape(
        layer.grads["W"].shape[0], -1), backend.to_numpy(layer.grads["b"])[:, None]], 1)


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


# -- the factors -------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_factors_are_the_per_example_averages(rng, reduction):
    """A = (1/N) sum a_hat a_hat^T and G = (1/N) sum delta_n delta_n^T, delta_n the output
    gradient of example n's own loss (so the 1/N of a mean loss is undone)."""
    model = mlp(rng)
    loss = SoftmaxCrossEntropy(reduction=reduction)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    deltas = {0: [], 2: []}
    for n in range(6):
        forward_backward(model, loss, x[n:n + 1], y[n:n + 1])
        for j in deltas:
            deltas[j].append(backend.to_numpy(model[j].cache["dout"])[0])
    forward_backward(model, loss, x, y)
    p = KFAC(model, loss=loss, T1=1, T2=1, factor_init="batch")
    p.step()
    for i, j in enumerate(deltas):
        d = np.stack(deltas[j])  # (N, F)
        a = backend.to_numpy(model[j].cache["x"])
        a_hat = append_ones(a)
        np.testing.assert_allclose(backend.to_numpy(p.state[i]["A"]), a_hat.T @ a_hat / 6,
                                   rtol=1e-12)
        # the same for both reductions (batch_averaged read from loss.reduction): the
        # empirical Fisher (1/N) sum_n g_n g_n^T of minidl.curvature.empirical_fisher
        np.testing.assert_allclose(backend.to_numpy(p.state[i]["G"]), d.T @ d / 6,
                                   rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("make, shape, K", [(mlp, (3,), 3), (single_location_cnn, (2, 3, 3), 2)],
                         ids=["dense", "conv_single_output_location"])
def test_empirical_kfac_is_the_empirical_fisher_block_for_one_example(rng, make, shape, K):
    """N = 1 (and T = 1 for the conv): G kron A is the empirical Fisher's layer block."""
    model = make(rng)
    loss = SoftmaxCrossEntropy()
    x, y = rng.standard_normal((1,) + shape), rng.integers(0, K, 1)
    EF = empirical_fisher_loop(model, loss, x, y)  # g g^T, (P, P)
    forward_backward(model, loss, x, y)
    p = KFAC(model, loss=loss, T1=1, T2=1, factor_init="batch")
    p.step()
    assert_kron_blocks_equal(p, model, EF, rtol=1e-10, atol=1e-14)


def test_conv_factors_follow_grosse_martens(rng):
    """T > 1: A = (1/N) sum_{n,t} a a^T (Omega), G = (1/(N T)) sum_{n,t} delta delta^T."""
    conv = Conv2d(2, 3, 2, padding=1, rng=rng)
    model = Sequential(conv, Flatten())
    loss = MSELoss(reduction="sum")
    x = rng.standard_normal((2, 2, 3, 3))
    y = rng.standard_normal((2, 3 * 16))
    forward_backward(model, loss, x, y)
    p = KFAC(model, loss=loss, T1=1, T2=1, factor_init="batch")
    p.step()
    # patches by hand: the zero-padded 2x2 windows, in (c, i, j) order
    xp_ = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    a = np.array([[np.append(xp_[n, :, i:i + 2, j:j + 2].ravel(), 1.0)
                   for i in range(4) for j in range(4)] for n in range(2)])  # (N, T, m)
    dout = backend.to_numpy(conv.cache["dout"])  # (N, F, 4, 4)
    d = dout.reshape(2, 3, 16).transpose(0, 2, 1).reshape(-1, 3)  # (N T, F)
    a2 = a.reshape(-1, a.shape[2])
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["A"]), a2.T @ a2 / 2, rtol=1e-12)
    # sum loss: kappa = 1/N, then the mean over T
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["G"]), d.T @ d / (2 * 16),
                               rtol=1e-12)


# -- the sampled (true) Fisher -----------------------------------------------------------
def _sampled_error(model, loss, x, y, reference, n_samples, seed):
    forward_backward(model, loss, x, y)
    p = KFAC(model, loss=loss, fisher="true", n_samples=n_samples,
             rng=minidl.default_rng(seed), T1=1, T2=1, kl_clip=None, factor_init="batch")
    p.step()
    errors = []
    for i, layer in enumerate(p.layers):
        idx = block_index(model, layer)
        ref = reference[np.ix_(idx, idx)]
        errors.append(np.linalg.norm(kron_block(p, i) - ref) / np.linalg.norm(ref))
    return max(errors)


def _mean_sampled_error(model, loss, x, y, reference, n_samples):
    """The relative error averaged over three seeds (one draw can be lucky)."""
    return np.mean([_sampled_error(model, loss, x, y, reference, n_samples, seed)
                    for seed in range(3)])


def test_sampled_kfac_approaches_the_ggn_block(rng):
    """One example, cross-entropy: E[G] kron A is the GGN block; the error shrinks like
    1/sqrt(samples)."""
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = rng.standard_normal((1, 3)), rng.integers(0, 3, 1)
    GGN = ggn_brute(model, loss, x, y)
    errors = [_mean_sampled_error(model, loss, x, y, GGN, m) for m in (2, 30, 1000)]
    assert errors[0] > 2 * errors[1] > 4 * errors[2]
    assert errors[2] < 0.08


def test_sampled_kfac_is_exact_in_expectation_for_a_deep_linear_network_with_mse(rng):
    """Deep linear network, MSE over D = 2 outputs, N = 4: A kron E[G] = GGN block / D for
    every layer (the documented scaling of the Fisher of a per-element mean)."""
    model = mlp(rng, (3, 4, 3, 2), act=None)
    loss = MSELoss()
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    GGN = ggn_brute(model, loss, x, y) / 2
    errors = [_mean_sampled_error(model, loss, x, y, GGN, m) for m in (2, 30, 1000)]
    assert errors[0] > 2 * errors[1] > 4 * errors[2]
    assert errors[2] < 0.08


def test_true_fisher_uses_the_real_gradient_and_restores_the_model(rng):
    model = mlp_with_batchnorm(rng)
    loss = SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    forward_backward(model, loss, x, y)
    g = {id(leaf): {k: backend.to_numpy(v).copy() for k, v in leaf.grads.items()}
         for leaf in model.leaves()}
    dlogits = backend.to_numpy(loss.backward()).copy()
    with pytest.warns(CoverageWarning, match="BatchNorm1d"):
        p = KFAC(model, loss=loss, fisher="true", rng=minidl.default_rng(0), damping=1e9,
                 T1=1, T2=1, kl_clip=None)
    p.step()
    for layer in model.leaves():
        for k, v in g[id(layer)].items():
            scale = 1e9 if layer in p.layers else 1.0  # covered: ~ g / damping
            np.testing.assert_allclose(backend.to_numpy(layer.grads[k]) * scale, v,
                                       rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(backend.to_numpy(loss.backward()), dlogits)


# -- directions --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eigen", "factored"])
def test_direction_is_the_damped_kronecker_solve(rng, mode):
    """eigen: (G kron A + lam I)^{-1} g; factored: the pi rule (see damped_kron_block)."""
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    forward_backward(model, loss, x, y)
    raw = [grad_matrix(layer) for layer in (model[0], model[2])]
    lam = 0.03
    p = KFAC(model, loss=loss, kl_clip=None, damping=lam, damping_mode=mode, T1=1, T2=1)
    p.step()
    for i, layer in enumerate(p.layers):
        A = backend.to_numpy(p.state[i]["A"])
        G = backend.to_numpy(p.state[i]["G"])
        block = damped_kron_block(G, A, lam, mode)
        d = np.linalg.solve(block, raw[i].ravel()).reshape(raw[i].shape)
        np.testing.assert_allclose(grad_matrix(layer), d, rtol=1e-8, atol=1e-12)


def test_damped_kron_solve_helper_against_dense(rng):
    G = rng.standard_normal((3, 5))
    G = G @ G.T
    A = rng.standard_normal((4, 2))
    A = A @ A.T  # singular: the damping makes the system solvable
    V = rng.standard_normal((3, 4))
    dG, QG = sym_eig(G)
    dA, QA = sym_eig(A)
    d = damped_kron_solve(V, dG, QG, dA, QA, 1e-2)
    expected = np.linalg.solve(np.kron(G, A) + 1e-2 * np.eye(12), V.ravel())
    np.testing.assert_allclose(d.ravel(), expected, rtol=1e-9)


@pytest.mark.parametrize("mode", ["eigen", "factored"])
def test_identity_statistics_and_huge_damping(rng, mode):
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    forward_backward(model, loss, x, y)
    raw = [grad_matrix(layer) for layer in (model[0], model[2])]
    lam = 0.01
    p = KFAC(model, loss=loss, kl_clip=None, damping=lam, damping_mode=mode, T1=1, T2=1)
    for i, layer in enumerate(p.layers):  # A = I, G = I
        p.state[i]["A"] = np.eye(raw[i].shape[1])
        p.state[i]["G"] = np.eye(raw[i].shape[0])
        p.update_inverse(i, layer)
        p.precondition(i, layer)
        factor = 1 + lam if mode == "eigen" else (1 + np.sqrt(lam)) ** 2  # pi = 1
        np.testing.assert_allclose(grad_matrix(layer), raw[i] / factor, rtol=1e-12)
    forward_backward(model, loss, x, y)
    KFAC(model, loss=loss, damping=1e12, damping_mode=mode, T1=1, T2=1).step()
    for i, layer in enumerate((model[0], model[2])):
        np.testing.assert_allclose(grad_matrix(layer) * 1e12, raw[i], rtol=1e-5)


def test_kl_clipping_scales_every_layer_by_nu(rng):
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    forward_backward(model, loss, x, y)
    raw = [grad_matrix(layer) for layer in (model[0], model[2])]
    KFAC(model, loss=loss, damping=0.01, kl_clip=None, T1=1, T2=1).step()
    unclipped = [grad_matrix(layer) for layer in (model[0], model[2])]
    vg = sum(float((u * r).sum()) for u, r in zip(unclipped, raw))
    lr, kl = 0.5, 1e-4
    nu = min(1.0, np.sqrt(kl / (lr ** 2 * vg)))
    assert nu < 1
    opt = SGD(model, lr=lr)  # lr read from the optimizer
    for lr_arg in (lr, opt):
        forward_backward(model, loss, x, y)
        KFAC(model, loss=loss, damping=0.01, kl_clip=kl, lr=lr_arg, T1=1, T2=1).step()
        for layer, u in zip((model[0], model[2]), unclipped):
            np.testing.assert_allclose(grad_matrix(layer), nu * u, rtol=1e-10)


def test_moving_averages_and_update_frequencies(rng):
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    batches = [(rng.standard_normal((4, 3)), rng.integers(0, 3, 4)) for _ in range(5)]
    p = KFAC(model, loss=loss, stat_decay=0.5, T1=2, T2=4, factor_init="batch")
    A_seen = []
    for t, (x, y) in enumerate(batches):
        forward_backward(model, loss, x, y)
        a = backend.to_numpy(model[0].cache["x"])
        a_hat = append_ones(a)
        A_seen.append(a_hat.T @ a_hat / 4)
        QA = p.state[0].get("QA")
        p.step()
        if t in (1, 3):  # no factor update, no inverse: the eigenvectors are the old ones
            np.testing.assert_array_equal(p.state[0]["QA"], QA)
    expected = 0.5 * (0.5 * A_seen[0] + 0.5 * A_seen[2]) + 0.5 * A_seen[4]  # t = 0, 2, 4
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["A"]), expected, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["dA"]),
                               np.linalg.eigvalsh(expected), rtol=1e-10, atol=1e-13)


def test_state_dict_round_trip_continues_identically(rng):
    batches = [(rng.standard_normal((5, 3)), rng.integers(0, 3, 5)) for _ in range(6)]
    models = [mlp(minidl.default_rng(5)) for _ in range(2)]
    losses = [SoftmaxCrossEntropy() for _ in range(2)]
    opts = [SGD(m, lr=0.1, momentum=0.9) for m in models]
    ps = [KFAC(m, loss=crit, lr=o, T1=2, T2=3) for m, crit, o in zip(models, losses, opts)]
    for x, y in batches[:3]:
        train_step(models[0], losses[0], x, y, ps[0], opts[0])
    models[1].load_state_dict(models[0].state_dict())
    opts[1].load_state_dict(opts[0].state_dict())
    ps[1].load_state_dict(npz_round_trip(ps[0].state_dict()))
    assert ps[1].t == 3
    for x, y in batches[3:]:
        for k in range(2):
            train_step(models[k], losses[k], x, y, ps[k], opts[k])
    assert_same_params(*models)


def test_training_with_kfac_then_sgd_reduces_the_loss(rng):
    model = mlp(rng, (2, 16, 1))
    loss = MSELoss()
    x = rng.standard_normal((64, 2))
    y = np.sin(x[:, :1]) * np.cos(x[:, 1:])
    opt = SGD(model, lr=0.5)
    p = KFAC(model, loss=loss, lr=opt, damping=0.03, T1=1, T2=5)
    first = forward_backward(model, loss, x, y)
    for _ in range(30):
        train_step(model, loss, x, y, p, opt)
    assert forward_backward(model, loss, x, y) < 0.3 * first


# -- errors and backends -----------------------------------------------------------------
def test_true_fisher_needs_loss_and_rng(rng):
    with pytest.raises(ValueError, match="loss=crit"):
        KFAC(mlp(rng), fisher="true", rng=rng)
    with pytest.raises(ValueError, match="rng=minidl.default_rng"):
        KFAC(mlp(rng), loss=MSELoss(), fisher="true")
    with pytest.raises(ValueError, match="damping_mode"):
        KFAC(mlp(rng), damping_mode="svd")


def test_step_before_backward_says_so(rng):
    with pytest.raises(RuntimeError, match="model.backward"):
        KFAC(mlp(rng)).step()


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_runs_on_each_backend(on_backend, fisher):
    rng = minidl.default_rng(4)
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x = minidl.asarray(rng.standard_normal((5, 3)))
    y = minidl.asarray(rng.integers(0, 3, 5))
    forward_backward(model, loss, x, y)
    raw = [grad_matrix(layer) for layer in (model[0], model[2])]
    p = KFAC(model, loss=loss, fisher=fisher, rng=minidl.default_rng(0), damping=0.03,
             T1=1, T2=1, lr=0.1)
    p.step()
    assert type(model[0].grads["W"]).__module__.split(".")[0] == on_backend
    # without clipping taking effect the direction is the dense solve (nu <= 1 rescales)
    d = [np.linalg.solve(kron_block(p, i) + 0.03 * np.eye(r.size), r.ravel()).reshape(
        r.shape) for i, r in enumerate(raw)]
    got = [grad_matrix(layer) for layer in (model[0], model[2])]
    nu = np.linalg.norm(got[0]) / np.linalg.norm(d[0])
    assert 0 < nu <= 1 + 1e-12
    for g, e in zip(got, d):
        np.testing.assert_allclose(g, nu * e, rtol=1e-8, atol=1e-12)
