"""Linear, activations, Flatten, Sequential: gradient checks, R-operator checks, torch parity."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl.gradcheck import check_backward_rop, check_jvp, check_layer
from minidl.layers import (Flatten, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Tanh)

from conftest import torch_or_skip

ACTIVATIONS = [ReLU, lambda: LeakyReLU(0.1), Sigmoid, Tanh]


@given(n=st.integers(1, 5), m=st.integers(1, 6), k=st.integers(1, 5), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_linear_gradcheck(n, m, k, bias, seed):
    rng = minidl.default_rng(seed)
    layer = Linear(m, k, bias=bias, rng=rng)
    x = rng.standard_normal((n, m))
    for check in (check_layer, check_jvp, check_backward_rop):
        report = check(layer, x, rng=rng)
        assert report.ok, str(report)


@pytest.mark.parametrize("make", ACTIVATIONS, ids=["relu", "leaky", "sigmoid", "tanh"])
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_activation_gradcheck(make, shape, seed):
    rng = minidl.default_rng(seed)
    x = 3 * rng.standard_normal(shape)
    for check in (check_layer, check_jvp, check_backward_rop):
        report = check(make(), x, rng=rng)
        assert report.ok, str(report)


def test_flatten_sequential_gradcheck(rng):
    model = Sequential(Flatten(), Linear(12, 5, rng=rng), Tanh(), Linear(5, 2, rng=rng))
    x = rng.standard_normal((3, 3, 2, 2))
    for check in (check_layer, check_jvp, check_backward_rop):
        report = check(model, x, rng=rng)
        assert report.ok, str(report)


def test_sigmoid_is_finite_for_huge_inputs():
    x = minidl.asarray([[-1e4, 0.0, 1e4]], dtype="float64")
    out = Sigmoid().forward(x)
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])
    assert np.isfinite(out).all()


@given(n=st.integers(1, 6), m=st.integers(1, 7), k=st.integers(1, 5), seed=st.integers(0, 999))
def test_linear_matches_torch(n, m, k, seed):
    torch = torch_or_skip()
    rng = minidl.default_rng(seed)
    layer = Linear(m, k, rng=rng).astype("float64")
    x = rng.standard_normal((n, m))
    dout = rng.standard_normal((n, k))
    out = layer.forward(x)
    dx = layer.backward(dout)
    tl = torch.nn.Linear(m, k).double()
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(layer.params["W"]))
        tl.bias.copy_(torch.from_numpy(layer.params["b"]))
    tx = torch.from_numpy(x).requires_grad_()
    tout = tl(tx)
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], tl.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], tl.bias.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["relu", "leaky", "sigmoid", "tanh"])
def test_activations_match_torch(name, rng):
    torch = torch_or_skip()
    ours = {"relu": ReLU(), "leaky": LeakyReLU(0.2), "sigmoid": Sigmoid(), "tanh": Tanh()}[name]
    theirs = {"relu": torch.relu, "leaky": lambda t: torch.nn.functional.leaky_relu(t, 0.2),
              "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]
    x = 4 * rng.standard_normal((5, 7))
    dout = rng.standard_normal((5, 7))
    out = ours.forward(x)
    dx = ours.backward(dout)
    tx = torch.from_numpy(x).requires_grad_()
    tout = theirs(tx)
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_linear_per_example_grads_sum_to_grads(rng):
    layer = Linear(4, 3, rng=rng).astype("float64")
    x = rng.standard_normal((6, 4))
    layer.forward(x)
    layer.backward(rng.standard_normal((6, 3)))
    per = layer.per_example_grads()
    np.testing.assert_allclose(per["W"].sum(0), layer.grads["W"], rtol=1e-12)
    np.testing.assert_allclose(per["b"].sum(0), layer.grads["b"], rtol=1e-12)
    for n in range(6):  # each row is the gradient from example n alone
        single = Linear(4, 3, rng=rng).astype("float64")
        single.params = {k: v.copy() for k, v in layer.params.items()}
        single.forward(x[n:n + 1])
        single.backward(layer.cache["dout"][n:n + 1])
        np.testing.assert_allclose(per["W"][n], single.grads["W"], rtol=1e-12)


def test_linear_bad_input_messages(rng):
    layer = Linear(784, 10, rng=rng)
    with pytest.raises(ValueError, match=r"Linear expects input of shape \(N, in_features\).*"
                                         r"got shape \(2, 1, 28, 28\)"):
        layer.forward(np.zeros((2, 1, 28, 28), dtype="float32"))
    with pytest.raises(ValueError, match="in_features = 784.*got input of shape \\(2, 100\\)"):
        layer.forward(np.zeros((2, 100), dtype="float32"))
    with pytest.raises(TypeError, match="floating-point input, got dtype int64"):
        layer.forward(np.zeros((2, 784), dtype="int64"))
    with pytest.raises(TypeError, match="got list"):
        layer.forward([[0.0] * 784])
    with pytest.raises(ValueError, match="positive integer in_features, got 0"):
        Linear(0, 3)


def test_state_dict_round_trip_and_errors(rng):
    a = Sequential(Linear(3, 4, rng=rng), ReLU(), Linear(4, 2, rng=rng))
    b = Sequential(Linear(3, 4, rng=rng), ReLU(), Linear(4, 2, rng=rng))
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    assert list(a.state_dict()) == ["0.W", "0.b", "2.W", "2.b"]
    bad = a.state_dict()
    bad["0.W"] = np.zeros((5, 5))
    before = b.state_dict()
    with pytest.raises(ValueError, match=r"'0.W' expects shape \(4, 3\), got \(5, 5\)"):
        b.load_state_dict(bad)
    for key, value in before.items():  # nothing changed
        np.testing.assert_array_equal(value, b.state_dict()[key])
    with pytest.raises(ValueError, match="missing \\['2.b'\\]"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "2.b"})


def test_flat_parameter_order_and_modes(rng):
    model = Sequential(Linear(3, 4, rng=rng), Tanh(), Sequential(Linear(4, 2, rng=rng)))
    assert [name for name, _, _ in model.parameters()] == ["0.W", "0.b", "2.0.W", "2.0.b"]
    assert model.num_params() == 3 * 4 + 4 + 4 * 2 + 2
    model.eval()
    assert not any(leaf.training for leaf in model.leaves())
    model.train()
    assert all(leaf.training for leaf in model.leaves())
    with pytest.raises(TypeError, match="Sequential expects Layer objects"):
        Sequential(Linear(2, 2, rng=rng), "relu")


# every value where a sign select could go wrong: infinities, NaN, signed zeros, underflow
EXTREMES = [-np.inf, -1e4, -100.0, -88.0, -20.0, -1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0, 20.0,
            88.0, 100.0, 1e4, np.inf, np.nan]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["sigmoid", "leaky 0.2", "leaky 0", "leaky -0.5", "leaky 1.5"])
def test_branch_free_activations_match_torch_and_the_select_at_extremes(name, dtype, rng):
    """Sigmoid and LeakyReLU compute the sign select without ``where`` (faster): the same
    numbers as the select itself (the plain definition, written here) and as PyTorch, at
    +-inf, NaN, +-0, underflow and for slopes outside (0, 1)."""
    torch = torch_or_skip()
    x = np.concatenate([EXTREMES, 30 * rng.standard_normal(200)]).astype(dtype)  # (217,)
    dout = rng.standard_normal(x.shape).astype(dtype)
    if name == "sigmoid":
        layer, theirs = Sigmoid(), torch.sigmoid
        e = np.exp(-np.abs(x))
        select = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    else:
        a = float(name.split()[1])
        layer, theirs = LeakyReLU(a), lambda t: torch.nn.functional.leaky_relu(t, a)
        with np.errstate(invalid="ignore"):  # slope 0 at -inf: 0 * -inf is NaN, as in torch
            select = np.where(x > 0, x, a * x)
    with np.errstate(invalid="ignore"):
        out = layer.forward(x)
        dx = layer.backward(dout)
    assert out.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, select.astype(dtype))
    tx = torch.from_numpy(x).requires_grad_()
    tout = theirs(tx)
    tout.backward(torch.from_numpy(dout))
    tol = {"float64": 1e-15, "float32": 1e-6}[dtype]
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["sigmoid", "bce", "leaky 0.2", "leaky 0", "leaky -0.5",
                                  "leaky 1.5"])
def test_branch_free_sign_selects_equal_the_where_twin(name, dtype, rng):
    """The simple twin of the branch-free passes, without PyTorch: ``sigmoid`` (in Sigmoid
    and BCEWithLogits) and LeakyReLU's f and f' against the ``where`` they replace, to the
    last bit, at +-inf, NaN, +-0, underflow and random values."""
    from minidl.losses import BCEWithLogits
    x = np.concatenate([EXTREMES, 30 * rng.standard_normal(200)]).astype(dtype)  # (217,)
    dout = rng.standard_normal(x.shape).astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(-np.abs(x))
        s = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(dtype)  # the select
        if name == "sigmoid":
            layer = Sigmoid()
            out, dx = layer.forward(x), layer.backward(dout)
            np.testing.assert_array_equal(out, s)
            np.testing.assert_array_equal(dx, dout * (s * (1 - s)))
            assert out.dtype == dx.dtype == np.dtype(dtype)
        elif name == "bce":
            finite = np.isfinite(x)  # BCEWithLogits' s: infinite logits aside
            logits, y = x[None, finite], rng.random((1, int(finite.sum()))).astype(dtype)
            loss = BCEWithLogits("sum")
            value = loss.forward(logits, y)
            np.testing.assert_array_equal(loss.backward(), s[None, finite] - y)
            log1p_e = np.log1p(e[finite])  # the loss from log s, log(1 - s) by sign
            log_s = np.where(logits >= 0, -log1p_e, logits - log1p_e)
            log_1ms = np.where(logits >= 0, -logits - log1p_e, -log1p_e)
            direct = -(y * log_s + (1 - y) * log_1ms).astype(np.float64).sum()
            assert value == pytest.approx(direct, rel=1e-12 if dtype == "float64" else 1e-5)
        else:
            a = float(name.split()[1])
            layer = LeakyReLU(a)
            out, dx = layer.forward(x), layer.backward(dout)
            np.testing.assert_array_equal(out, np.where(x > 0, x, a * x).astype(dtype))
            np.testing.assert_array_equal(dx, dout * np.where(x > 0, 1, a).astype(dtype))
            assert out.dtype == dx.dtype == np.dtype(dtype)
