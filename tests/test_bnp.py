"""BNP against its two derivations: an explicitly normalised layer, and P P^T g."""
import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.layers import BatchNorm1d, Conv2d, Linear, Sequential, Tanh
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.precond import BNP, CoverageWarning


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


def shifted_scaled(rng, shape, axis=1):
    """Inputs whose features have means around 3 and scales from 0.01 to 100."""
    k = shape[axis]
    view = [1] * len(shape)
    view[axis] = k
    scale = np.logspace(-2, 2, k).reshape(view)
    shift = (3.0 + rng.standard_normal(k)).reshape(view)
    return shift + scale * rng.standard_normal(shape)


def loss_grads(layer, loss, x, target):
    loss.forward(layer.forward(backend.asarray(x)), backend.asarray(target))
    layer.backward(loss.backward())
    return {k: backend.to_numpy(v).copy() for k, v in layer.grads.items()}


# -- one BNP step = one SGD step on the layer fed (h - mu) / sigma --------------------------
def test_dense_equals_sgd_on_the_normalised_layer(rng):
    N, m, n, lr = 8, 3, 2, 0.1
    h = shifted_scaled(rng, (N, m))
    target = rng.standard_normal((N, n))
    layer, loss = Linear(m, n, rng=rng), MSELoss()
    W, b = backend.to_numpy(layer.params["W"]).copy(), backend.to_numpy(layer.params["b"])
    pre = BNP(layer, stat_decay=0.0, eps1=0.0, eps2=0.0)  # N >= m, so q = 1
    loss_grads(layer, loss, h, target)
    pre.step()
    W_bnp = W - lr * layer.grads["W"]
    b_bnp = b - lr * layer.grads["b"]

    mu, sigma = h.mean(axis=0), h.std(axis=0)
    normed = Linear(m, n, rng=rng)
    normed.params["W"] = W * sigma  # W' = W sigma, b' = b + W mu: the same function
    normed.params["b"] = b + W @ mu
    g = loss_grads(normed, loss, (h - mu) / sigma, target)
    W2 = normed.params["W"] - lr * g["W"]
    b2 = normed.params["b"] - lr * g["b"]
    np.testing.assert_allclose(W_bnp, W2 / sigma, rtol=1e-10)  # W = W' / sigma
    np.testing.assert_allclose(b_bnp, b2 - W2 @ (mu / sigma), rtol=1e-10)  # b' - W' mu/sigma


def test_conv_equals_sgd_on_the_channel_normalised_layer(rng):
    lr = 0.05
    x = shifted_scaled(rng, (4, 2, 5, 5))  # N H_out W_out = 64 >= m = C k k = 8: q = 1
    conv, loss = Conv2d(2, 3, 2, rng=rng), MSELoss()
    target = rng.standard_normal((4, 3, 4, 4))
    W, b = backend.to_numpy(conv.params["W"]).copy(), backend.to_numpy(conv.params["b"])
    pre = BNP(conv, stat_decay=0.0, eps1=0.0, eps2=0.0)
    loss_grads(conv, loss, x, target)
    pre.step()
    W_bnp, b_bnp = W - lr * conv.grads["W"], b - lr * conv.grads["b"]

    mu, sigma = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))  # (C,), per input channel
    c4 = (1, -1, 1, 1)
    normed = Conv2d(2, 3, 2, rng=rng)
    normed.params["W"] = W * sigma.reshape(c4)
    normed.params["b"] = b + (W * mu.reshape(c4)).sum(axis=(1, 2, 3))
    g = loss_grads(normed, loss, (x - mu.reshape(c4)) / sigma.reshape(c4), target)
    W2 = normed.params["W"] - lr * g["W"]
    b2 = normed.params["b"] - lr * g["b"]
    np.testing.assert_allclose(W_bnp, W2 / sigma.reshape(c4), rtol=1e-10)
    np.testing.assert_allclose(b_bnp, b2 - (W2 * (mu / sigma).reshape(c4)).sum(axis=(1, 2, 3)),
                               rtol=1e-10)


# -- the transform is (1/q) P P^T g per neuron, with running statistics ---------------------
def explicit_P(mu, s2t):
    """P = U D on [b; w]: U = [[1, -mu^T], [0, I]], D = diag(1, 1/sqrt(s2t))."""
    m = mu.size
    U = np.eye(m + 1)
    U[0, 1:] = -mu
    D = np.diag(np.concatenate([[1.0], 1 / np.sqrt(s2t)]))
    return U @ D


def test_dense_equals_explicit_P_Pt_g_with_running_statistics(rng):
    N, m, n = 4, 6, 3  # N < m, so q = sqrt(m / N) > 1
    rho, eps1, eps2 = 0.7, 1e-2, 1e-3
    model = Sequential(Linear(m, n, rng=rng), Tanh(), Linear(n, 2, rng=rng))
    loss, pre = SoftmaxCrossEntropy(), BNP(model, stat_decay=rho, eps1=eps1, eps2=eps2)
    mu = s2 = None
    for _ in range(3):
        h = shifted_scaled(rng, (N, m))
        loss.forward(model.forward(backend.asarray(h)), backend.asarray(rng.integers(0, 2, N)))
        model.backward(loss.backward())
        first = model[0]
        G_W, G_b = backend.to_numpy(first.grads["W"]), backend.to_numpy(first.grads["b"])
        mu_A, s2_A = h.mean(axis=0), h.var(axis=0)
        mu = mu_A if mu is None else rho * mu + (1 - rho) * mu_A
        s2 = s2_A if s2 is None else rho * s2 + (1 - rho) * s2_A
        s2t = s2 + eps1 * s2.max() + eps2
        P, q = explicit_P(mu, s2t), np.sqrt(m / N)
        expected = (P @ P.T @ np.concatenate([G_b[:, None], G_W], axis=1).T).T / q  # (n, m+1)
        pre.step()
        np.testing.assert_allclose(first.grads["b"], expected[:, 0], rtol=1e-10)
        np.testing.assert_allclose(first.grads["W"], expected[:, 1:], rtol=1e-10)


def test_layer_without_bias_is_only_scaled(rng):
    layer = Linear(3, 2, bias=False, rng=rng)
    h = shifted_scaled(rng, (5, 3))
    g = loss_grads(layer, MSELoss(), h, rng.standard_normal((5, 2)))
    BNP(layer, stat_decay=0.0, eps1=0.0, eps2=0.0).step()
    np.testing.assert_allclose(layer.grads["W"], g["W"] / h.var(axis=0), rtol=1e-12)


def test_preconditioning_shrinks_the_condition_number(rng):
    """Least squares on shifted, badly scaled inputs: cond(P^T H P) << cond(H)."""
    N, m = 200, 5
    h = shifted_scaled(rng, (N, m))
    layer = Linear(m, 1, rng=rng)
    pre = BNP(layer, stat_decay=0.0, eps1=0.0, eps2=0.0)
    loss_grads(layer, MSELoss(), h, rng.standard_normal((N, 1)))
    pre.step()
    H_hat = np.concatenate([np.ones((N, 1)), h], axis=1)  # (N, m+1), rows [1, h_j]
    H = 2 * H_hat.T @ H_hat / N  # Hessian of the mean squared error in [b; w]
    P = explicit_P(backend.to_numpy(pre.state[0]["P_mu"]),
                   backend.to_numpy(pre.state[0]["P_s2t"]))
    assert np.linalg.cond(H) > 1e7
    assert np.linalg.cond(P.T @ H @ P) < 10
    assert np.linalg.cond(P.T @ H @ P) < 1e-6 * np.linalg.cond(H)


# -- bookkeeping -----------------------------------------------------------------------------
def test_state_dict_round_trip_continues_identically(rng, tmp_path):
    model = Sequential(Conv2d(2, 3, 3, padding=1, rng=rng), Tanh(), Conv2d(3, 1, 3, rng=rng))
    loss = MSELoss()
    batches = [(shifted_scaled(rng, (3, 2, 5, 5)), rng.standard_normal((3, 1, 3, 3)))
               for _ in range(6)]

    def run(pre, steps):
        out = []
        for x, y in steps:
            loss.forward(model.forward(backend.asarray(x)), backend.asarray(y))
            model.backward(loss.backward())
            pre.step()
            out.append([backend.to_numpy(layer.grads[k]).copy() for layer in pre.layers
                        for k in layer.grads])
        return out

    pre = BNP(model, stat_decay=0.9, T1=1, T2=2)
    run(pre, batches[:3])
    np.savez(tmp_path / "bnp.npz", **pre.state_dict())
    expected = run(pre, batches[3:])
    restored = BNP(model, stat_decay=0.9, T1=1, T2=2).load_state_dict(
        dict(np.load(tmp_path / "bnp.npz")))
    for a, b in zip(run(restored, batches[3:]), expected):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_batchnorm_is_left_to_the_optimizer(rng):
    with pytest.warns(CoverageWarning, match="BatchNorm1d"):
        pre = BNP(Sequential(Linear(3, 2, rng=rng), BatchNorm1d(2)))
    assert pre.names == ["0"]
    with pytest.raises(ValueError, match="rho"):
        BNP(Linear(3, 2, rng=rng), stat_decay=1.0)


def test_backends_agree(on_backend, rng):
    host = minidl.default_rng(5)
    model = Sequential(Conv2d(2, 2, 3, padding=1, rng=host), Tanh(), Conv2d(2, 1, 3, rng=host))
    x, y = shifted_scaled(host, (3, 2, 5, 5)), host.standard_normal((3, 1, 3, 3))
    out = []
    for name in ("numpy", on_backend):
        minidl.set_backend(name)
        model.to_backend()
        pre, loss = BNP(model), MSELoss()
        for _ in range(2):
            loss.forward(model.forward(minidl.asarray(x)), minidl.asarray(y))
            model.backward(loss.backward())
            pre.step()
        out.append(np.concatenate([backend.to_numpy(layer.grads[k]).ravel()
                                   for layer in pre.layers for k in layer.grads]))
    np.testing.assert_allclose(out[1], out[0], rtol=1e-10)


# -- the default variance floor keeps deep layers with faint inputs stable -------------------
def test_default_floor_trains_a_deep_mlp_on_mnist():
    """BNP divides each gradient column by its input's variance. At initialisation a deep
    ReLU network's inputs fade layer by layer (uniform 1/sqrt(fan_in) weights shrink the
    variance about sixfold per layer), so the last layers' inputs have variances near 1e-4
    and their gradients were amplified thousands of times: with eps2 = 1e-5 the method's
    defaults (lr 2e-3, SGD momentum 0.9) took this 784-100x5-10 MLP from 2.3 to 1.7e4
    in 3 epochs (float32; float64 the same way), and the 5-layer CNN of ``minidl compare``
    from 2.31 to 110 and beyond on every seed tried. The floor eps2 = 1e-3 bounds the
    amplification to 1e3."""
    from minidl import data, methods, models
    from minidl.train import fit
    x, y = data.load("mnist-small", "train")
    x, y = data.normalise(x[:3000]), y[:3000]  # (3000, 1, 28, 28) in [0, 1], (3000,)
    model = models.mlp([784] + [100] * 5 + [10], rng=minidl.default_rng(0))
    loss = SoftmaxCrossEntropy()
    opt, pre = methods.build("bnp", model, loss)
    loader = data.DataLoader(backend.asarray(x), backend.asarray(y), 128,
                             rng=minidl.default_rng(1))
    hist = fit(model, loss, opt, loader, epochs=3, precond=pre, log_every=0, progress=False)
    first, last = hist.steps["loss"][0], hist["train_loss"][-1]
    assert hist.divergence is None
    assert last < 0.5 * first, f"BNP's defaults: loss {first:.3g} at the first step, " \
                               f"{last:.3g} in the last epoch"
