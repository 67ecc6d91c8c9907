"""KFLR and KFRA against the exact Gauss-Newton matrix, built by brute force.

The reference GGN = sum_n J_n^T H_n J_n uses J_n (K, P), the Jacobian of example n's
output with respect to all parameters, one backward pass per output unit and example
(checked once against torch.func.jacrev on an equivalent torch model), and H_n =
loss.hessian()[n], the reduced loss's Hessian block. Blocks are read in the row-major
order of [W | b], the order in which the methods' Kronecker products G kron A live. The
brute-force helpers are shared with the other preconditioner tests, in reference.py.
"""
import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.layers import (BatchNorm1d, Conv2d, Flatten, Linear, ReLU, Residual, Sequential,
                           Sigmoid, Tanh)
from minidl.losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy
from minidl.precond import KFLR, KFRA, CoverageWarning

from conftest import torch_or_skip
from reference import (append_ones, assert_kron_blocks_equal, assert_same_params, block_index,
                       damped_kron_block, forward_backward, ggn_brute, jacobians, kron_block,
                       make_data, mlp, mlp_with_batchnorm, npz_round_trip, raw_grads,
                       single_location_cnn)

LOSSES = {"ce": SoftmaxCrossEntropy, "mse": MSELoss, "bce": BCEWithLogits}


def run(precond_cls, model, loss, x, y, **kw):
    """One forward/backward and one preconditioner step (factors = this batch's)."""
    forward_backward(model, loss, x, y)
    p = precond_cls(model, loss=loss, **kw)
    p.step()
    return p


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


# -- the harness itself ------------------------------------------------------------------
def test_brute_force_jacobian_matches_torch(rng):
    torch = torch_or_skip()
    model = mlp(rng)
    x = rng.standard_normal((2, 3))
    J = jacobians(model, x)  # (N, K, P)
    params = {f"{name}": torch.tensor(backend.to_numpy(layer.params[key]))
              for name, layer, key in model.parameters()}

    def f(p, xn):
        h = torch.tanh(xn @ p["0.W"].T + p["0.b"])
        return h @ p["2.W"].T + p["2.b"]

    for n in range(2):
        jac = torch.func.jacrev(f)(params, torch.tensor(x[n]))
        J_t = np.concatenate([jac[name].reshape(3, -1).numpy() for name in params], axis=1)
        np.testing.assert_allclose(J[n], J_t, rtol=1e-12, atol=1e-12)


def test_brute_force_ggn_matches_minidl_curvature(rng):
    curvature = pytest.importorskip("minidl.curvature")
    model = mlp(rng, act=Sigmoid)
    loss = SoftmaxCrossEntropy()
    x, y = make_data(rng, "ce", 4, (3,), 3)
    np.testing.assert_allclose(ggn_brute(model, loss, x, y),
                               backend.to_numpy(curvature.ggn(model, loss, x, y)),
                               rtol=1e-10, atol=1e-12)


# -- exactness ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss_name", ["ce", "mse", "bce"])
@pytest.mark.parametrize("act", [Tanh, Sigmoid])
@pytest.mark.parametrize("method", [KFLR, KFRA])
def test_equals_exact_ggn_block_at_batch_size_one(rng, loss_name, act, method):
    model = mlp(rng, act=act)
    loss = LOSSES[loss_name]()
    x, y = make_data(rng, loss_name, 1, (3,), 3)
    GGN = ggn_brute(model, loss, x, y)
    p = run(method, model, loss, x, y, damping_mode="eigen")
    assert_kron_blocks_equal(p, model, GGN, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("method", [KFLR, KFRA])
def test_exact_for_deep_linear_network_with_mse_any_batch(rng, method, reduction):
    model = mlp(rng, (3, 4, 5, 2), act=None)
    loss = MSELoss(reduction=reduction)
    x, y = make_data(rng, "mse", 6, (3,), 2)
    GGN = ggn_brute(model, loss, x, y)
    p = run(method, model, loss, x, y)
    assert_kron_blocks_equal(p, model, GGN, rtol=1e-9, atol=1e-12)


def test_kfra_equals_kflr_at_batch_size_one_with_relu_and_stacked_activations(rng):
    model = Sequential(Linear(3, 5, rng=rng), Tanh(), Sigmoid(), Linear(5, 4, rng=rng),
                       ReLU(), Linear(4, 3, rng=rng), Sigmoid())
    loss = MSELoss()
    x, y = make_data(rng, "mse", 1, (3,), 3)
    a = run(KFLR, model, loss, x, y)
    b = run(KFRA, model, loss, x, y)
    GGN = ggn_brute(model, loss, x, y)
    for i, layer in enumerate(a.layers):
        idx = block_index(model, layer)
        np.testing.assert_allclose(kron_block(a, i), kron_block(b, i), rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(kron_block(a, i), GGN[np.ix_(idx, idx)],
                                   rtol=1e-9, atol=1e-13)


def test_kfra_recursion_restated_for_a_batch(rng):
    """N > 1: Gbar_1 = (W2^T (sum_n H_n) W2) * (1/N) sum_n f'(h_n) f'(h_n)^T, by hand."""
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = make_data(rng, "ce", 7, (3,), 3)
    p = run(KFRA, model, loss, x, y)
    xs = backend.to_numpy(x)
    W1 = backend.to_numpy(model[0].params["W"])  # (4, 3)
    b1 = backend.to_numpy(model[0].params["b"])  # (4,)
    W2 = backend.to_numpy(model[2].params["W"])  # (3, 4)
    fp = 1 - np.tanh(xs @ W1.T + b1) ** 2  # (N, 4)
    H = backend.to_numpy(loss.hessian()).sum(axis=0)  # (3, 3)
    expected = (W2.T @ H @ W2) * (fp.T @ fp / 7)
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["G"]), expected, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(p.state[1]["G"]), H, rtol=1e-12)
    a_hat = append_ones(xs)
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["A"]), a_hat.T @ a_hat / 7,
                               rtol=1e-12)


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
def test_kflr_conv_single_output_location_equals_ggn_block(rng, loss_name):
    # kernel as large as the input: T = Ho Wo = 1, where the Kronecker form is exact (N = 1)
    model = single_location_cnn(rng)
    loss = LOSSES[loss_name]()
    x, y = make_data(rng, loss_name, 1, (2, 3, 3), 2)
    GGN = ggn_brute(model, loss, x, y)
    p = run(KFLR, model, loss, x, y)
    assert_kron_blocks_equal(p, model, GGN, rtol=1e-9, atol=1e-12)


def test_kflr_conv_many_locations_uses_the_one_over_T_convention(rng):
    """T > 1, N = 1: G = (1/T) sum_{t,k} C C^T and A = sum_t a a^T; with one output channel
    and one output unit, G is the scalar (1/T) sum_t C_t^2 computed here independently."""
    model = Sequential(Conv2d(1, 1, 2, rng=rng), Flatten())  # (1,1,3,3) -> 4 outputs
    loss = MSELoss(reduction="sum")
    x, y = make_data(rng, "mse", 1, (1, 3, 3), 4)
    p = run(KFLR, model, loss, x, y)
    # S = sqrt(2) I over the 4 outputs: column k reaches location t = k with value sqrt 2
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["G"]), [[4 * 2.0 / 4]])
    patches = backend.to_numpy(model[0].patches())[0]  # (4, 4)
    a_hat = append_ones(patches)
    np.testing.assert_allclose(backend.to_numpy(p.state[0]["A"]), a_hat.T @ a_hat)


# -- directions --------------------------------------------------------------------------
@pytest.mark.parametrize("method", [KFLR, KFRA])
def test_direction_is_the_dense_damped_solve(rng, method):
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = make_data(rng, "ce", 5, (3,), 3)
    forward_backward(model, loss, x, y)
    raw = raw_grads(model)
    lam = 0.05
    for mode in ("eigen", "factored"):
        for leaf in model.leaves():
            leaf.grads = {k: backend.asarray(v) for k, v in raw[id(leaf)].items()}
        p = method(model, loss=loss, damping=lam, damping_mode=mode)
        p.step()
        for i, layer in enumerate(p.layers):
            G = backend.to_numpy(p.state[i]["G"])
            A = backend.to_numpy(p.state[i]["A"])
            g = np.concatenate([raw[id(layer)]["W"], raw[id(layer)]["b"][:, None]], 1)
            # factored: pi = sqrt(mean eig A / mean eig G), gamma_A = pi sqrt(lam)
            block = damped_kron_block(G, A, lam, mode)
            d = np.linalg.solve(block, g.ravel()).reshape(g.shape)
            np.testing.assert_allclose(backend.to_numpy(layer.grads["W"]), d[:, :-1],
                                       rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(backend.to_numpy(layer.grads["b"]), d[:, -1],
                                       rtol=1e-8, atol=1e-12)


def test_huge_damping_gives_gradient_over_damping(rng):
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = make_data(rng, "ce", 4, (3,), 3)
    forward_backward(model, loss, x, y)
    g = backend.to_numpy(model[0].grads["W"]).copy()
    for mode in ("eigen", "factored"):
        model.backward(loss.backward())
        KFLR(model, loss=loss, damping=1e8, damping_mode=mode).step()
        np.testing.assert_allclose(backend.to_numpy(model[0].grads["W"]) * 1e8, g,
                                   rtol=1e-3)


def test_extra_backward_passes_leave_the_model_as_it_was(rng):
    model = mlp_with_batchnorm(rng)
    loss = SoftmaxCrossEntropy()
    x, y = make_data(rng, "ce", 5, (3,), 3)
    forward_backward(model, loss, x, y)
    bn_grads = {k: backend.to_numpy(v).copy() for k, v in model[1].grads.items()}
    douts = [backend.to_numpy(leaf.cache["dout"]).copy() for leaf in (model[0], model[3])]
    with pytest.warns(CoverageWarning, match="BatchNorm1d"):
        p = KFLR(model, loss=loss)
    p.step()
    for k, v in bn_grads.items():
        np.testing.assert_array_equal(backend.to_numpy(model[1].grads[k]), v)
    for leaf, d in zip((model[0], model[3]), douts):
        np.testing.assert_array_equal(backend.to_numpy(leaf.cache["dout"]), d)
    np.testing.assert_allclose(backend.to_numpy(loss.backward()),
                               backend.to_numpy(model[3].cache["dout"]))


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, name", [
    (lambda rng: Conv2d(1, 2, 3, rng=rng), "Conv2d"),
    (lambda rng: BatchNorm1d(4), "BatchNorm1d"),
    (lambda rng: Residual(Sequential(Linear(4, 4, rng=rng))), "Residual"),
])
def test_kfra_rejects_layers_its_recursion_cannot_pass(rng, bad, name):
    model = Sequential(Linear(3, 4, rng=rng), bad(rng), Linear(4, 2, rng=rng))
    with pytest.raises(ValueError, match=f"layer 1 is a {name}"):
        KFRA(model, loss=MSELoss())


@pytest.mark.parametrize("method", [KFLR, KFRA])
def test_loss_is_required(rng, method):
    with pytest.raises(ValueError, match="loss=crit"):
        method(mlp(rng))


# -- checkpoints and backends -------------------------------------------------------------
@pytest.mark.parametrize("method", [KFLR, KFRA])
def test_state_dict_round_trip_continues_identically(rng, method):
    batches = [make_data(rng, "ce", 5, (3,), 3) for _ in range(4)]

    def step(model, p, loss, xb, yb):
        forward_backward(model, loss, xb, yb)
        p.step()
        for _, layer, k in model.parameters():
            layer.params[k] = layer.params[k] - 0.1 * layer.grads[k]

    models = [mlp(minidl.default_rng(7)) for _ in range(2)]
    losses = [SoftmaxCrossEntropy() for _ in range(2)]
    ps = [method(m, loss=crit, T2=3) for m, crit in zip(models, losses)]
    for xb, yb in batches[:2]:
        step(models[0], ps[0], losses[0], xb, yb)
    models[1].load_state_dict(models[0].state_dict())
    ps[1].load_state_dict(npz_round_trip(ps[0].state_dict()))
    for xb, yb in batches[2:]:
        for m, p, crit in zip(models, ps, losses):
            step(m, p, crit, xb, yb)
    assert_same_params(*models)


@pytest.mark.parametrize("method", [KFLR, KFRA])
def test_runs_on_each_backend(on_backend, method):
    rng = minidl.default_rng(3)
    model = mlp(rng)
    loss = SoftmaxCrossEntropy()
    x, y = make_data(rng, "ce", 1, (3,), 3)
    GGN = ggn_brute(model, loss, x, y)
    p = run(method, model, loss, x, y)
    assert type(p.state[0]["G"]).__module__.split(".")[0] == on_backend
    assert_kron_blocks_equal(p, model, GGN, rtol=1e-9, atol=1e-12)
