"""minidl.curvature: products, dense matrices, per-example gradients, spectra.

References are PyTorch autograd on an equivalent functional model with the same weights
(float64), finite differences of the gradient, and NumPy's dense eigensolvers.
"""
import math

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl import curvature as C
from minidl import layers as L
from minidl.losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy

from conftest import torch_or_skip

LOSSES = {"ce": SoftmaxCrossEntropy, "mse": MSELoss, "bce": BCEWithLogits}


# -- models, data and their PyTorch mirror -----------------------------------------------------
def _mlp(act, seed, sizes=(3, 4, 3)):
    rng = minidl.default_rng(seed)
    acts = {"relu": L.ReLU, "tanh": L.Tanh, "sigmoid": L.Sigmoid}
    return L.Sequential(L.Linear(sizes[0], sizes[1], rng=rng), acts[act](),
                        L.Linear(sizes[1], sizes[2], rng=rng))


def _cnn(kind, seed):
    rng = minidl.default_rng(seed)
    if kind == "cnn_max":
        body = [L.Conv2d(1, 2, 3, padding=1, rng=rng), L.ReLU(), L.MaxPool2d(2)]
    else:  # strided conv, tanh, average pooling
        body = [L.Conv2d(1, 2, 2, stride=1, rng=rng), L.Tanh(), L.AvgPool2d(2, stride=1)]
    probe = L.Sequential(*body).forward(np.zeros((1, 1, 4, 4)))
    return L.Sequential(*body, L.Flatten(), L.Linear(probe[0].size, 3, rng=rng))


def _model(name, seed=0):
    minidl.set_default_dtype("float64")
    if name.startswith("cnn"):
        return _cnn(name, seed)
    return _mlp(name.split("_")[1], seed)


def _input(name, n, rng):
    if name.startswith("cnn"):
        return rng.standard_normal((n, 1, 4, 4))
    return rng.standard_normal((n, 3))


def _target(loss_name, n, k, rng):
    if loss_name == "ce":
        return rng.integers(0, k, n)
    if loss_name == "mse":
        return rng.standard_normal((n, k))
    return rng.random((n, k))


def _batch(model_name, loss_name, n, seed=1):
    rng = minidl.default_rng(seed)
    return _input(model_name, n, rng), _target(loss_name, n, 3, rng)


def _torch_forward(torch, model, theta, x):
    """The minidl model as a function of the flat parameter vector, in PyTorch."""
    F = torch.nn.functional
    offset = 0

    def take(layer, key):
        nonlocal offset
        shape = tuple(layer.params[key].shape)
        size = int(np.prod(shape))
        out = theta[offset:offset + size].reshape(shape)
        offset += size
        return out

    for leaf in model.leaves():
        if isinstance(leaf, L.Linear):
            W = take(leaf, "W")
            b = take(leaf, "b") if "b" in leaf.params else None
            x = F.linear(x, W, b)
        elif isinstance(leaf, L.Conv2d):
            W = take(leaf, "W")
            b = take(leaf, "b") if "b" in leaf.params else None
            x = F.conv2d(x, W, b, stride=leaf.stride, padding=leaf.padding)
        elif isinstance(leaf, L.BatchNorm1d):
            gamma, beta = take(leaf, "gamma"), take(leaf, "beta")
            running = [torch.from_numpy(leaf.buffers[k].copy())
                       for k in ("running_mean", "running_var")]
            x = F.batch_norm(x, *running, gamma, beta, training=leaf.training, eps=leaf.eps)
        elif isinstance(leaf, L.ReLU):
            x = torch.relu(x)
        elif isinstance(leaf, L.Tanh):
            x = torch.tanh(x)
        elif isinstance(leaf, L.Sigmoid):
            x = torch.sigmoid(x)
        elif isinstance(leaf, L.MaxPool2d):
            x = F.max_pool2d(x, leaf.kernel_size, leaf.stride)
        elif isinstance(leaf, L.AvgPool2d):
            x = F.avg_pool2d(x, leaf.kernel_size, leaf.stride)
        elif isinstance(leaf, L.Flatten):
            x = x.flatten(1)
        else:
            raise NotImplementedError(type(leaf).__name__)
    assert offset == theta.shape[0]
    return x


def _torch_loss(torch, loss_name, reduction):
    F = torch.nn.functional
    if loss_name == "ce":
        return lambda z, t: F.cross_entropy(z, t, reduction=reduction)
    if loss_name == "mse":
        return lambda z, t: F.mse_loss(z, t, reduction=reduction)
    return lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction=reduction)


def _torch_reference(torch, model, loss_name, reduction, x, target, per_example=True):
    """Hessian, GGN, per-example gradients (when asked) and gradient from PyTorch."""
    func = torch.func
    theta = torch.from_numpy(minidl.to_numpy(C.flatten_params(model)))
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)
    lossf = _torch_loss(torch, loss_name, reduction)

    def total(th):
        return lossf(_torch_forward(torch, model, th, xt), tt)

    H = torch.autograd.functional.hessian(total, theta, vectorize=True)  # (P, P)
    g = func.grad(total)(theta)  # (P,)
    z = _torch_forward(torch, model, theta, xt)  # (N, K)
    J = func.jacrev(lambda th: _torch_forward(torch, model, th, xt).reshape(-1))(theta)
    HL = func.hessian(lambda zz: lossf(zz.reshape(z.shape), tt))(z.detach().reshape(-1))
    G = J.T @ HL @ J  # (P, NK) (NK, NK) (NK, P)

    def one(th, xi, ti):
        return lossf(_torch_forward(torch, model, th, xi[None]), ti[None])

    out = dict(H=H, G=G, g=g)
    if per_example:
        out["per_example"] = func.vmap(func.grad(one), in_dims=(None, 0, 0))(theta, xt,
                                                                             tt)  # (N, P)
    return {k: v.detach().numpy() for k, v in out.items()}


# -- flat vectors ------------------------------------------------------------------------------
def test_flat_order_and_roundtrip():
    model = _model("cnn_max")
    theta = C.flatten_params(model)
    assert theta.shape == (C.num_params(model),) == (model.num_params(),)
    pieces = C.unflatten(model, theta)
    assert list(pieces) == [name for name, _, _ in model.parameters()]
    for name, layer, key in model.parameters():
        np.testing.assert_array_equal(pieces[name], layer.params[key])
    C.set_params(model, 2 * theta)
    np.testing.assert_array_equal(C.flatten_params(model), 2 * theta)
    with pytest.raises(ValueError, match=r"shape \(47,\)"):
        C.set_rparams(model, np.zeros(3))


# -- products ----------------------------------------------------------------------------------
HVP_CASES = [("mlp_tanh", "ce"), ("mlp_sigmoid", "mse"), ("mlp_relu", "bce"),
             ("cnn_max", "ce"), ("cnn_avg", "bce")]


@pytest.mark.parametrize("model_name,loss_name", HVP_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_hvp_matches_finite_differences_of_gradient(model_name, loss_name, reduction):
    model = _model(model_name)
    loss = LOSSES[loss_name](reduction)
    x, t = _batch(model_name, loss_name, 4)
    theta = C.flatten_params(model)
    v = minidl.default_rng(7).standard_normal(theta.shape[0])
    Hv = C.hvp(model, loss, x, t, v)
    h = 1e-5
    C.set_params(model, theta + h * v)
    g_plus = C.loss_and_grad(model, loss, x, t)[1]
    C.set_params(model, theta - h * v)
    g_minus = C.loss_and_grad(model, loss, x, t)[1]
    C.set_params(model, theta)
    np.testing.assert_allclose(Hv, (g_plus - g_minus) / (2 * h), rtol=1e-5,
                               atol=1e-8 * np.abs(Hv).max())


def _other_model(kind, rng):
    if kind in ("batchnorm_train", "batchnorm_eval", "layernorm"):
        layer = L.LayerNorm(4) if kind == "layernorm" else L.BatchNorm1d(4)
        return L.Sequential(L.Linear(3, 4, rng=rng), layer, L.Tanh(),
                            L.Linear(4, 2, rng=rng)), (5, 3)
    if kind == "batchnorm2d_train":
        body = [L.Conv2d(2, 3, 3, rng=rng), L.BatchNorm2d(3), L.Sigmoid()]
    elif kind == "groupnorm":
        body = [L.Conv2d(2, 4, 3, rng=rng), L.GroupNorm(2, 4), L.Tanh(),
                L.Conv2d(4, 3, 1, rng=rng)]
    else:  # residual block with a 1x1 convolution shortcut
        block = L.Sequential(L.Conv2d(2, 3, 3, padding=1, rng=rng), L.Tanh())
        body = [L.Residual(block, L.Conv2d(2, 3, 1, rng=rng)), L.LeakyReLU(0.1)]
    return L.Sequential(*body, L.GlobalAvgPool2d(), L.Linear(3, 2, rng=rng)), (5, 2, 5, 5)


OTHER_MODELS = ["batchnorm_train", "batchnorm_eval", "layernorm", "batchnorm2d_train",
                "groupnorm", "residual"]


@pytest.mark.parametrize("kind", OTHER_MODELS)
def test_hvp_through_normalisation_and_residual_layers(kind):
    """BatchNorm in train mode couples the batch: H is that of the batch loss."""
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(3)
    model, x_shape = _other_model(kind, rng)
    if kind == "batchnorm_eval":
        model.train()
        model.forward(rng.standard_normal((8, 3)))  # move the running statistics
        model.eval()
    loss = SoftmaxCrossEntropy()
    x, t = rng.standard_normal(x_shape), rng.integers(0, 2, x_shape[0])
    theta = C.flatten_params(model)
    v = rng.standard_normal(theta.shape[0])
    state = model.state_dict()
    Hv = C.hvp(model, loss, x, t, v)
    for key, value in model.state_dict().items():  # running statistics restored
        np.testing.assert_array_equal(value, state[key])
    h = 1e-5
    C.set_params(model, theta + h * v)
    g_plus = C.loss_and_grad(model, loss, x, t)[1]
    C.set_params(model, theta - h * v)
    g_minus = C.loss_and_grad(model, loss, x, t)[1]
    np.testing.assert_allclose(Hv, (g_plus - g_minus) / (2 * h), rtol=1e-5,
                               atol=1e-8 * np.abs(Hv).max())


def test_products_leave_model_state_alone():
    model = _model("mlp_tanh")
    loss = SoftmaxCrossEntropy()
    x, t = _batch("mlp_tanh", "ce", 5)
    loss.forward(model.forward(x), t)
    model.backward(loss.backward())
    before = {name: layer.grads[key].copy() for name, layer, key in model.parameters()}
    cached_x = model[0].cache["x"]
    v = np.ones(C.num_params(model))
    C.hvp(model, loss, x[:2], t[:2], v)
    C.ggn_vp(model, loss, x[:2], t[:2], v)
    for name, layer, key in model.parameters():
        np.testing.assert_array_equal(layer.grads[key], before[name])
    assert model[0].cache["x"] is cached_x
    assert loss.cache["p"].shape == (5, 3)


# -- dense matrices against PyTorch ------------------------------------------------------------
DENSE_MODELS = ["mlp_relu", "mlp_tanh", "mlp_sigmoid", "cnn_max", "cnn_avg"]
DENSE_CASES = [(name, 4) for name in DENSE_MODELS] + [("mlp_tanh", 1), ("cnn_max", 1)]


@pytest.mark.parametrize("model_name,n", DENSE_CASES)
@pytest.mark.parametrize("loss_name", ["ce", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dense_matrices_match_torch(model_name, n, loss_name, reduction):
    torch = torch_or_skip()
    model = _model(model_name)
    loss = LOSSES[loss_name](reduction)
    x, t = _batch(model_name, loss_name, n)
    ref = _torch_reference(torch, model, loss_name, reduction, x, t)
    H = C.hessian(model, loss, x, t)
    G = C.ggn(model, loss, x, t)
    EF = C.empirical_fisher(model, loss, x, t)
    scale = np.abs(ref["H"]).max()
    np.testing.assert_allclose(H, ref["H"], rtol=1e-7, atol=1e-10 * scale)
    np.testing.assert_allclose(G, ref["G"], rtol=1e-7, atol=1e-10 * scale)
    per = ref["per_example"]
    np.testing.assert_allclose(EF, per.T @ per / n, rtol=1e-7,
                               atol=1e-10 * np.abs(per).max() ** 2)
    np.testing.assert_allclose(H, H.T, atol=1e-12 * scale)
    assert np.linalg.eigvalsh(G).min() > -1e-10 * scale  # PSD


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("loss_name", ["ce", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dense_matrices_through_batchnorm_match_torch(mode, loss_name, reduction):
    """BatchNorm1d: gamma before beta in the flat order (API.md); in train mode the batch
    statistics couple the examples, and H and G are those of the batch loss."""
    torch = torch_or_skip()
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(13)
    norm = L.BatchNorm1d(4)
    model = L.Sequential(L.Linear(3, 4, rng=rng), norm, L.Tanh(), L.Linear(4, 3, rng=rng))
    norm.params["gamma"][...] = 1 + rng.standard_normal(4)  # gamma and beta told apart
    norm.params["beta"][...] = rng.standard_normal(4)
    x, t = _batch("mlp_tanh", loss_name, 5, seed=14)
    model.forward(x + 1)  # running statistics away from (0, 1)
    getattr(model, mode)()
    loss = LOSSES[loss_name](reduction)
    ref = _torch_reference(torch, model, loss_name, reduction, x, t,
                           per_example=mode == "eval")
    scale = np.abs(ref["H"]).max()
    np.testing.assert_allclose(C.hessian(model, loss, x, t), ref["H"], rtol=1e-7,
                               atol=1e-10 * scale)
    np.testing.assert_allclose(C.ggn(model, loss, x, t), ref["G"], rtol=1e-7,
                               atol=1e-10 * scale)
    np.testing.assert_allclose(C.loss_and_grad(model, loss, x, t)[1], ref["g"], rtol=1e-9,
                               atol=1e-13)
    if mode == "eval":
        np.testing.assert_allclose(C.per_example_grads(model, loss, x, t),
                                   ref["per_example"], rtol=1e-9, atol=1e-13)


def test_reduction_scaling_of_the_matrices():
    """sum = N D x mean for H and G; EF with mean is EF with sum / D^2 (MSE, D outputs)."""
    model = _model("mlp_tanh")
    x, t = _batch("mlp_tanh", "mse", 4)
    N, D = 4, 3
    mean, total = MSELoss("mean"), MSELoss("sum")
    np.testing.assert_allclose(C.hessian(model, total, x, t),
                               N * D * C.hessian(model, mean, x, t), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(C.ggn(model, total, x, t), N * D * C.ggn(model, mean, x, t),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(C.empirical_fisher(model, total, x, t),
                               D ** 2 * C.empirical_fisher(model, mean, x, t), rtol=1e-10,
                               atol=1e-14)


def test_ggn_equals_hessian_for_linear_model_with_mse():
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(5)
    model = L.Sequential(L.Linear(3, 2, rng=rng))
    x, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    loss = MSELoss()
    H = C.hessian(model, loss, x, t)
    np.testing.assert_allclose(H, C.ggn(model, loss, x, t), rtol=1e-12, atol=1e-14)
    # and the closed form of the lecture: H = (2 / (N D)) (x_hat^T x_hat (x) I) in the
    # order [vec_C(W); b] -- check the weight block: d^2L / dW_oi dW_pj = 2/(ND) d_op x^T x
    xtx = x.T @ x  # (3, 3)
    W_block = np.kron(np.eye(2), xtx) * 2 / (6 * 2)
    np.testing.assert_allclose(H[:6, :6], W_block, rtol=1e-12)


def test_ggn_equals_hessian_for_deep_linear_network_at_zero_residual():
    """With two Linear layers the output is bilinear in (W1, W2), so H = G + residual
    terms; at targets equal to the outputs the residual vanishes and H = G."""
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(6)
    model = L.Sequential(L.Linear(3, 4, rng=rng), L.Linear(4, 2, rng=rng))
    x = rng.standard_normal((5, 3))
    loss = MSELoss()
    t_exact = model.forward(x).copy()
    np.testing.assert_allclose(C.hessian(model, loss, x, t_exact),
                               C.ggn(model, loss, x, t_exact), rtol=1e-10, atol=1e-14)
    t_off = t_exact + rng.standard_normal(t_exact.shape)
    assert np.abs(C.hessian(model, loss, x, t_off) - C.ggn(model, loss, x, t_off)).max() > 1e-3


@pytest.mark.parametrize("loss_name,reduction,factor", [
    ("ce", "mean", lambda N, D: 1.0),        # F = G
    ("ce", "sum", lambda N, D: 1.0 / N),     # F = G / N
    ("mse", "sum", lambda N, D: 1.0 / N),    # Gaussian NLL: F = G / N
    ("mse", "mean", lambda N, D: 1.0 / D),   # l_n = NLL / D: F = G_mean / D
    ("bce", "sum", lambda N, D: 1.0 / N),    # Bernoulli NLL: F = G / N
    ("bce", "mean", lambda N, D: 1.0 / D),   # l_n = NLL / D: F = G_mean / D
], ids=["ce-mean", "ce-sum", "mse-sum", "mse-mean", "bce-sum", "bce-mean"])
def test_true_fisher_is_ggn_in_expectation(loss_name, reduction, factor):
    model = _model("mlp_tanh", seed=2)
    loss = LOSSES[loss_name](reduction)
    x, t = _batch("mlp_tanh", loss_name, 3, seed=4)
    G = C.ggn(model, loss, x, t) * factor(3, 3)
    F = C.true_fisher(model, loss, x, t, minidl.default_rng(11), samples=2000)
    assert np.linalg.norm(F - G) / np.linalg.norm(G) < 0.1  # wrong factors give >= 0.5
    # same seed, same estimate; the brute-force per-example path agrees
    F_loop = C.true_fisher(model, loss, x, t, minidl.default_rng(11), samples=5,
                           method="loop")
    F_layers = C.true_fisher(model, loss, x, t, minidl.default_rng(11), samples=5)
    np.testing.assert_allclose(F_loop, F_layers, rtol=1e-10, atol=1e-14)


# -- per-example gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["mlp_relu", "cnn_max", "cnn_avg"])
@pytest.mark.parametrize("loss_name", ["ce", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_per_example_grads_combine_to_batch_gradient(model_name, loss_name, reduction):
    model = _model(model_name)
    loss = LOSSES[loss_name](reduction)
    x, t = _batch(model_name, loss_name, 5)
    G = C.per_example_grads(model, loss, x, t)
    assert G.shape == (5, C.num_params(model))
    g = C.loss_and_grad(model, loss, x, t)[1]
    combined = G.mean(axis=0) if reduction == "mean" else G.sum(axis=0)
    np.testing.assert_allclose(combined, g, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(C.per_example_grads(model, loss, x, t, method="loop"), G,
                               rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("model_name", ["mlp_sigmoid", "cnn_max"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_per_example_grads_match_torch(model_name, reduction):
    torch = torch_or_skip()
    model = _model(model_name)
    loss = MSELoss(reduction)
    x, t = _batch(model_name, "mse", 4)
    ref = _torch_reference(torch, model, "mse", reduction, x, t)
    np.testing.assert_allclose(C.per_example_grads(model, loss, x, t), ref["per_example"],
                               rtol=1e-9, atol=1e-13)


def test_per_example_quantities_refuse_train_mode_batchnorm():
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(0)
    model = L.Sequential(L.Linear(3, 4, rng=rng), L.BatchNorm1d(4), L.ReLU(),
                         L.Linear(4, 2, rng=rng))
    x, t = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    loss = SoftmaxCrossEntropy()
    for fn in (lambda: C.per_example_grads(model, loss, x, t),
               lambda: C.empirical_fisher(model, loss, x, t),
               lambda: C.true_fisher(model, loss, x, t, rng, samples=2)):
        with pytest.raises(ValueError, match=r"\['1'\].*model.eval\(\)"):
            fn()
    model.eval()  # running statistics: examples independent, brute-force loop path
    G = C.per_example_grads(model, loss, x, t)
    np.testing.assert_allclose(G.mean(0), C.loss_and_grad(model, loss, x, t)[1], rtol=1e-10,
                               atol=1e-13)
    with pytest.raises(ValueError, match="per_example_grads"):
        C.per_example_grads(model, loss, x, t, method="layers")


# -- spectra and the optimal step --------------------------------------------------------------
@pytest.mark.parametrize("model_name,loss_name", [("mlp_tanh", "ce"), ("cnn_avg", "mse")])
def test_lanczos_and_power_iteration_match_dense_eigenvalues(model_name, loss_name):
    model = _model(model_name)
    loss = LOSSES[loss_name]()
    x, t = _batch(model_name, loss_name, 4)
    eig_H = np.linalg.eigvalsh(C.hessian(model, loss, x, t))
    eig_G = np.linalg.eigvalsh(C.ggn(model, loss, x, t))
    top = C.top_eigenvalues(model, loss, x, t, minidl.default_rng(0), k=3)
    np.testing.assert_allclose(top, eig_H[::-1][:3], rtol=1e-8)
    top_G = C.top_eigenvalues(model, loss, x, t, minidl.default_rng(0), k=2, curvature="ggn")
    np.testing.assert_allclose(top_G, eig_G[::-1][:2], rtol=1e-8)
    P = C.num_params(model)
    ritz = C.lanczos(model, loss, x, t, minidl.default_rng(1), steps=P)  # whole spectrum
    np.testing.assert_allclose(ritz, eig_H, atol=1e-9 * np.abs(eig_H).max())
    lam, v = C.power_iteration(model, loss, x, t, minidl.default_rng(2), curvature="ggn",
                               iters=3000, tol=1e-13)
    np.testing.assert_allclose(lam, eig_G[-1], rtol=1e-6)
    Gv = C.ggn_vp(model, loss, x, t, v)
    assert np.linalg.norm(Gv - lam * v) < 1e-3 * lam


def test_condition_number_matches_dense():
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(8)
    model = L.Sequential(L.Linear(3, 2, rng=rng))
    x = rng.standard_normal((10, 3)) * np.array([1.0, 3.0, 0.2]) + 0.5
    t = rng.standard_normal((10, 2))
    loss = MSELoss()
    eig = np.linalg.eigvalsh(C.hessian(model, loss, x, t))
    kappa = C.condition_number(model, loss, x, t, minidl.default_rng(0))
    np.testing.assert_allclose(kappa, eig[-1] / eig[0], rtol=1e-7)
    kappa_d = C.condition_number(model, loss, x, t, minidl.default_rng(0), damping=0.1,
                                 curvature="hessian")
    np.testing.assert_allclose(kappa_d, (eig[-1] + 0.1) / (eig[0] + 0.1), rtol=1e-7)
    # a singular GGN (fewer outputs than parameters) has no finite condition number
    mlp = _model("mlp_tanh")
    xs, ts = _batch("mlp_tanh", "ce", 1)
    assert C.condition_number(mlp, SoftmaxCrossEntropy(), xs, ts,
                              minidl.default_rng(0)) == math.inf


@pytest.mark.parametrize("model_name,loss_name,reduction", [
    ("mlp_tanh", "ce", "mean"), ("mlp_sigmoid", "mse", "sum"), ("cnn_max", "bce", "mean")])
def test_optimal_step_is_the_lecture_formula(model_name, loss_name, reduction):
    model = _model(model_name)
    loss = LOSSES[loss_name](reduction)
    x, t = _batch(model_name, loss_name, 4)
    g = C.loss_and_grad(model, loss, x, t)[1]
    H = C.hessian(model, loss, x, t)
    G = C.ggn(model, loss, x, t)
    expected = g @ g / (g @ H @ g) if g @ H @ g > 0 else math.inf
    np.testing.assert_allclose(C.optimal_step(model, loss, x, t), expected, rtol=1e-9)
    np.testing.assert_allclose(C.optimal_step(model, loss, x, t, curvature="ggn"),
                               g @ g / (g @ G @ g), rtol=1e-9)


def test_optimal_step_minimises_the_quadratic_along_the_gradient():
    """For a linear model with MSE the loss is exactly quadratic: alpha* is the line
    minimum of L(theta - alpha g)."""
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(9)
    model = L.Sequential(L.Linear(3, 2, rng=rng))
    x, t = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    loss = MSELoss()
    alpha = C.optimal_step(model, loss, x, t)
    theta = C.flatten_params(model)
    g = C.loss_and_grad(model, loss, x, t)[1]

    def along(a):
        C.set_params(model, theta - a * g)
        return C.loss_and_grad(model, loss, x, t)[0]

    assert along(alpha) < min(along(0.99 * alpha), along(1.01 * alpha))


def test_spectra_need_an_explicit_generator():
    model = _model("mlp_tanh")
    x, t = _batch("mlp_tanh", "ce", 2)
    with pytest.raises(TypeError, match="explicit generator"):
        C.lanczos(model, SoftmaxCrossEntropy(), x, t, None)
    with pytest.raises(ValueError, match="curvature"):
        C.power_iteration(model, SoftmaxCrossEntropy(), x, t, minidl.default_rng(0),
                          curvature="fisher")


# -- the losses' output Hessians and their square-root factors ---------------------------------
@pytest.mark.parametrize("kind", ["ce", "ce-probs", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 3])
def test_loss_hessian_and_factor_match_torch(kind, reduction, n):
    torch = torch_or_skip()
    rng = minidl.default_rng(12)
    K = 4
    z = 2 * rng.standard_normal((n, K))
    if kind == "ce-probs":
        t = rng.random((n, K))
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = _target(kind, n, K, rng)
    loss = LOSSES[kind.split("-")[0]](reduction)
    loss.forward(z, t)
    lossf = _torch_loss(torch, kind.split("-")[0], reduction)
    tt = torch.from_numpy(t)
    full = torch.func.hessian(lambda zz: lossf(zz.reshape(n, K), tt))(
        torch.from_numpy(z).reshape(-1)).numpy().reshape(n, K, n, K)
    blocks = np.stack([full[i, :, i, :] for i in range(n)])  # (n, K, K)
    off = full.copy()
    for i in range(n):
        off[i, :, i, :] = 0
    assert np.abs(off).max() == 0  # block diagonal over examples
    H = loss.hessian()
    S = loss.hessian_factor()
    np.testing.assert_allclose(H, blocks, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(S @ S.transpose(0, 2, 1), H, rtol=1e-10, atol=1e-15)
    Rz = rng.standard_normal((n, K))
    np.testing.assert_allclose(loss.hvp(Rz), np.einsum("nkl,nl->nk", H, Rz), rtol=1e-10,
                               atol=1e-15)


# -- backends ----------------------------------------------------------------------------------
def test_curvature_on_each_backend(on_backend):
    minidl.set_default_dtype("float64")
    model = _cnn("cnn_max", 0)
    xp = backend.array_module(model[0].params["W"])
    assert xp is backend.xp()
    rng = minidl.default_rng(1)
    x = minidl.asarray(rng.standard_normal((3, 1, 4, 4)))
    t = minidl.asarray(rng.integers(0, 3, 3))
    loss = SoftmaxCrossEntropy()
    P = C.num_params(model)
    v = minidl.asarray(rng.standard_normal(P))
    Hv = C.hvp(model, loss, x, t, v)
    Gv = C.ggn_vp(model, loss, x, t, v)
    assert backend.array_module(Hv, Gv) is xp
    H = C.hessian(model, loss, x, t)
    G = C.ggn(model, loss, x, t)
    EF = C.empirical_fisher(model, loss, x, t)
    assert backend.array_module(H, G, EF) is xp
    np.testing.assert_allclose(minidl.to_numpy(H @ v), minidl.to_numpy(Hv), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(minidl.to_numpy(G @ v), minidl.to_numpy(Gv), rtol=1e-9,
                               atol=1e-12)
    top = C.top_eigenvalues(model, loss, x, t, minidl.default_rng(0), k=1)
    np.testing.assert_allclose(top[0], np.linalg.eigvalsh(minidl.to_numpy(H))[-1], rtol=1e-8)
    assert np.isfinite(C.optimal_step(model, loss, x, t))
