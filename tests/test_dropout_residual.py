"""Dropout and Residual: scaling, masks, gradient and R-operator checks, torch parity, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl import backend
from minidl.gradcheck import check_backward_rop, check_jvp, check_layer
from minidl.layers import (BatchNorm1d, Dropout, LayerNorm, Linear, ReLU, Residual, Sequential,
                           Tanh)

from conftest import torch_or_skip

CHECKS = (check_layer, check_jvp, check_backward_rop)


# -- Dropout -------------------------------------------------------------------------------

def test_dropout_train_scales_kept_elements_and_eval_is_identity(rng):
    p = 0.25
    layer = Dropout(p, rng=minidl.default_rng(0))
    x = rng.standard_normal((6, 50)).astype("float32")
    out = layer.forward(x)
    assert out.dtype == np.float32
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
    dout = rng.standard_normal(x.shape).astype("float32")
    np.testing.assert_allclose(layer.backward(dout), kept * dout / (1 - p), rtol=1e-6)
    layer.eval()
    assert layer.forward(x) is x
    assert layer.backward(dout) is dout


def test_dropout_preserves_the_mean_statistically():
    p = 0.3
    layer = Dropout(p, rng=minidl.default_rng(2024))
    x = np.ones(200_000)
    out = layer.forward(x)
    # the mean of 200k scaled Bernoulli(0.7) draws has std sqrt(p/(1-p)/n) ~ 1.5e-3
    assert abs(out.mean() - 1.0) < 6e-3
    assert abs((out == 0).mean() - p) < 4e-3
    assert set(np.unique(out).tolist()) == {0.0, 1 / (1 - p)}


def test_dropout_same_seed_same_mask_and_fresh_masks_otherwise(rng):
    x = rng.standard_normal((8, 9))
    a, b = Dropout(0.5, rng=minidl.default_rng(5)), Dropout(0.5, rng=minidl.default_rng(5))
    out_a, out_b = a.forward(x), b.forward(x)
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.array_equal(a.forward(x), out_a)  # the next call draws a new mask
    c = Dropout(0.5, rng=minidl.default_rng(6))
    assert not np.array_equal(c.forward(x), out_a)


def test_dropout_frozen_mask(rng):
    layer = Dropout(0.5, rng=minidl.default_rng(1))
    x = rng.standard_normal((4, 5))
    with layer.frozen_mask():
        out = layer.forward(x)
        for _ in range(3):
            np.testing.assert_array_equal(layer.forward(x), out)
        with pytest.raises(ValueError, match=r"Dropout with freeze_mask set expects input of "
                                             r"the frozen mask's shape \(4, 5\), got \(3, 5\)"):
            layer.forward(x[:3])
    assert not layer.freeze_mask
    assert not np.array_equal(layer.forward(x), out)
    layer.freeze_mask = True  # the attribute works without the context manager
    np.testing.assert_array_equal(layer.forward(x), layer.forward(x))


def test_dropout_p_zero_is_identity(rng):
    x = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(Dropout(0.0, rng=rng).forward(x), x)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       p=st.sampled_from([0.0, 0.1, 0.5, 0.9]), training=st.booleans(),
       seed=st.integers(0, 2**16))
def test_dropout_gradcheck_with_frozen_mask(shape, p, training, seed):
    rng = minidl.default_rng(seed)
    layer = Dropout(p, rng=minidl.default_rng(seed + 1))
    layer.train() if training else layer.eval()
    x = rng.standard_normal(shape)
    with layer.frozen_mask():
        for check in CHECKS:
            report = check(layer, x, rng=rng)
            assert report.ok, str(report)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match=rf"Dropout expects a drop probability p in \[0, 1\), "
                                         rf"got p={p}"):
        Dropout(p)


@pytest.mark.torch
def test_dropout_scaling_matches_torch():
    torch = torch_or_skip()
    p = 0.4
    torch.manual_seed(0)
    theirs = torch.nn.functional.dropout(torch.ones(4000, dtype=torch.float64), p, True)
    ours = Dropout(p, rng=minidl.default_rng(0)).forward(np.ones(4000))
    # masks differ (different generators); the kept value 1/(1-p) is the same
    assert set(np.unique(ours).tolist()) == set(np.unique(theirs.numpy()).tolist())


# -- Residual ------------------------------------------------------------------------------

def _mlp(d, h, rng):
    return Sequential(Linear(d, h, rng=rng), Tanh(), Linear(h, d, rng=rng))


@given(n=st.integers(1, 4), d=st.integers(1, 4), h=st.integers(1, 4), d_out=st.integers(1, 4),
       kind=st.sampled_from(["identity", "linear-shortcut", "batchnorm-block"]),
       seed=st.integers(0, 2**16))
def test_residual_gradcheck(n, d, h, d_out, kind, seed):
    rng = minidl.default_rng(seed)
    if kind == "identity":
        model = Residual(_mlp(d, h, rng))
    elif kind == "linear-shortcut":
        model = Residual(Sequential(Linear(d, h, rng=rng), Tanh(), Linear(h, d_out, rng=rng)),
                         Linear(d, d_out, rng=rng))
    else:
        n = max(n, 2)  # BatchNorm in train mode needs two examples
        bn = BatchNorm1d(h)
        bn.params["gamma"] = rng.standard_normal(h)  # (h,)
        model = Residual(Sequential(Linear(d, h, rng=rng), bn, Tanh(), Linear(h, d, rng=rng)))
    x = rng.standard_normal((n, d))
    for check in CHECKS:
        report = check(model, x, rng=rng)
        assert report.ok, str(report)


def test_residual_with_dropout_gradcheck(rng):
    drop = Dropout(0.3, rng=minidl.default_rng(3))
    model = Residual(Sequential(Linear(4, 4, rng=rng), drop, ReLU()), LayerNorm(4))
    x = rng.standard_normal((3, 4))
    with drop.frozen_mask():
        for check in CHECKS:
            report = check(model, x, rng=rng)
            assert report.ok, str(report)


def test_residual_reference_formula_and_parameter_order(rng):
    block, shortcut = _mlp(3, 5, rng), Linear(3, 3, rng=rng)
    model = Residual(block, shortcut).astype("float64")
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(model.forward(x), block.forward(x) + shortcut.forward(x),
                               rtol=1e-14)
    assert [name for name, _, _ in model.parameters()] == [
        "block.0.W", "block.0.b", "block.2.W", "block.2.b", "shortcut.W", "shortcut.b"]
    assert [name for name, _ in model.children()] == ["block", "shortcut"]
    identity = Residual(block)
    assert [name for name, _ in identity.children()] == ["block"]
    np.testing.assert_allclose(identity.forward(x), block.forward(x) + x, rtol=1e-14)
    dout = rng.standard_normal((4, 3))
    np.testing.assert_allclose(identity.backward(dout), block.backward(dout) + dout, rtol=1e-14)
    model.eval()
    assert not any(leaf.training for leaf in model.leaves())
    assert list(Residual(BatchNorm1d(3)).state_dict()) == [
        "block.gamma", "block.beta", "block.running_mean", "block.running_var"]


def test_residual_shape_mismatch():
    rng = minidl.default_rng(0)
    x = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match=r"Residual expects block\(x\) and the input x "
                                         r"\(identity shortcut\) of the same shape, got "
                                         r"block\(x\) of shape \(2, 4\) and .* \(2, 3\)"):
        Residual(Linear(3, 4, rng=rng)).forward(x)
    with pytest.raises(ValueError, match=r"got block\(x\) of shape \(2, 4\) and shortcut\(x\) "
                                         r"of shape \(2, 5\)"):
        Residual(Linear(3, 4, rng=rng), Linear(3, 5, rng=rng)).forward(x)
    with pytest.raises(TypeError, match="Residual expects a Layer as shortcut, got str"):
        Residual(Linear(3, 4, rng=rng), "identity")


@pytest.mark.torch
@given(n=st.integers(1, 5), d=st.integers(1, 5), h=st.integers(1, 5), seed=st.integers(0, 999))
def test_residual_matches_torch(n, d, h, seed):
    torch = torch_or_skip()
    rng = minidl.default_rng(seed)
    ours = Residual(_mlp(d, h, rng), Linear(d, d, rng=rng)).astype("float64")
    lin1, lin2, short = (torch.nn.Linear(d, h).double(), torch.nn.Linear(h, d).double(),
                         torch.nn.Linear(d, d).double())
    with torch.no_grad():
        for tl, leaf in zip((lin1, lin2, short), (ours.block[0], ours.block[2], ours.shortcut)):
            tl.weight.copy_(torch.from_numpy(leaf.params["W"]))
            tl.bias.copy_(torch.from_numpy(leaf.params["b"]))
    x, dout = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    out = ours.forward(x)
    dx = ours.backward(dout)
    tx = torch.from_numpy(x).requires_grad_()
    tout = lin2(torch.tanh(lin1(tx))) + short(tx)
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    for tl, leaf in zip((lin1, lin2, short), (ours.block[0], ours.block[2], ours.shortcut)):
        np.testing.assert_allclose(leaf.grads["W"], tl.weight.grad.numpy(), rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(leaf.grads["b"], tl.bias.grad.numpy(), rtol=1e-12,
                                   atol=1e-12)


# -- backends ------------------------------------------------------------------------------

def test_dropout_and_residual_on_backend(on_backend):
    rng = minidl.default_rng(11)
    x_host = rng.standard_normal((4, 6))
    x = minidl.asarray(x_host, dtype="float32")
    drop = Dropout(0.5, rng=minidl.default_rng(0))
    out = drop.forward(x)
    assert backend.array_module(out, drop.mask) is backend.xp()
    reference = Dropout(0.5, rng=minidl.default_rng(0)).forward(x_host)  # same seed, host
    np.testing.assert_allclose(minidl.to_numpy(out), reference, rtol=1e-6)
    model = Residual(Sequential(Linear(6, 5, rng=rng), ReLU(), Linear(5, 6, rng=rng)),
                     Sequential(drop))
    with drop.frozen_mask():
        out = model.forward(x)
        dx = model.backward(minidl.asarray(np.ones((4, 6)), dtype="float32"))
        assert backend.array_module(out, dx) is backend.xp()
        for check in CHECKS:
            report = check(model, minidl.asarray(x_host), rng=rng)
            assert report.ok, str(report)
