"""BatchNorm1d/2d, LayerNorm, GroupNorm: gradient and R-operator checks, torch parity,
running statistics, properties, input errors, backends."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minidl
from minidl import backend
from minidl.gradcheck import check_backward_rop, check_jvp, check_layer
from minidl.layers import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm

from conftest import torch_or_skip

CHECKS = (check_layer, check_jvp, check_backward_rop)


def randomise(layer, rng):
    """Non-trivial gamma, beta (and running statistics) in float64, so no term hides."""
    for key in layer.params:
        layer.params[key] = rng.standard_normal(layer.params[key].shape)  # shape of param
    if "running_mean" in layer.buffers:
        C = layer.buffers["running_mean"].shape[0]
        layer.buffers["running_mean"] = rng.standard_normal(C)  # (C,)
        layer.buffers["running_var"] = rng.uniform(0.5, 2.0, C)  # (C,)
    return layer


def assert_all_checks(layer, x, rng):
    for check in CHECKS:
        report = check(layer, x, rng=rng)
        assert report.ok, str(report)


# -- gradient and R-operator checks (float64) ---------------------------------------------

@given(kind=st.sampled_from(["1d", "1d-seq", "2d"]), n=st.integers(1, 4), c=st.integers(1, 3),
       h=st.integers(1, 3), w=st.integers(1, 3), training=st.booleans(),
       seed=st.integers(0, 2**16))
def test_batchnorm_gradcheck(kind, n, c, h, w, training, seed):
    rng = minidl.default_rng(seed)
    shape = {"1d": (n, c), "1d-seq": (n, c, h), "2d": (n, c, h, w)}[kind]
    count = int(np.prod(shape)) // c
    assume(count > 1 or not training)  # train mode needs N*H*W > 1
    layer = (BatchNorm2d if kind == "2d" else BatchNorm1d)(c)
    randomise(layer, rng)
    layer.train() if training else layer.eval()
    assert_all_checks(layer, rng.standard_normal(shape), rng)


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       norm=st.lists(st.integers(1, 3), min_size=1, max_size=2), as_int=st.booleans(),
       seed=st.integers(0, 2**16))
def test_layernorm_gradcheck(lead, norm, as_int, seed):
    rng = minidl.default_rng(seed)
    normalized_shape = norm[0] if as_int and len(norm) == 1 else tuple(norm)
    layer = randomise(LayerNorm(normalized_shape), rng)
    assert_all_checks(layer, rng.standard_normal(tuple(lead) + tuple(norm)), rng)


@given(n=st.integers(1, 3), groups=st.integers(1, 3), per_group=st.integers(1, 2),
       spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2), seed=st.integers(0, 2**16))
def test_groupnorm_gradcheck(n, groups, per_group, spatial, seed):
    rng = minidl.default_rng(seed)
    c = groups * per_group  # groups of a single value (x_hat = 0, dx = 0) included
    layer = randomise(GroupNorm(groups, c), rng)
    assert_all_checks(layer, rng.standard_normal((n, c) + tuple(spatial)), rng)


def test_check_layer_leaves_running_statistics_unchanged(rng):
    layer = BatchNorm2d(3)
    layer.buffers["running_mean"] = rng.standard_normal(3).astype("float32")  # (3,)
    layer.buffers["running_var"] = rng.uniform(0.5, 2, 3).astype("float32")  # (3,)
    before = {k: v.copy() for k, v in layer.buffers.items()}
    params = {k: v.copy() for k, v in layer.params.items()}
    x = rng.standard_normal((4, 3, 2, 2))
    for check in CHECKS:
        assert check(layer, x, rng=rng).ok
        for key, value in before.items():
            assert layer.buffers[key].dtype == np.float32  # not left as float64 copies
            np.testing.assert_array_equal(layer.buffers[key], value)
        for key, value in params.items():
            np.testing.assert_array_equal(layer.params[key], value)
    # whereas one plain forward in train mode does move them
    layer.forward(x.astype("float32"))
    assert not np.array_equal(layer.buffers["running_mean"], before["running_mean"])


# -- reference formulas and properties -----------------------------------------------------

def test_batchnorm_running_statistics_formula(rng):
    momentum = 0.3
    layer = BatchNorm2d(2, momentum=momentum).astype("float64")
    running_mean, running_var = np.zeros(2), np.ones(2)
    for _ in range(3):
        x = 2 + 3 * rng.standard_normal((5, 2, 3, 2))
        layer.forward(x)
        mu = x.mean(axis=(0, 2, 3))  # (2,)
        var_unbiased = x.var(axis=(0, 2, 3), ddof=1)  # (2,)
        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var = (1 - momentum) * running_var + momentum * var_unbiased
    np.testing.assert_allclose(layer.buffers["running_mean"], running_mean, rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], running_var, rtol=1e-12)
    layer.eval()  # eval: affine map with the running statistics, buffers frozen
    x = rng.standard_normal((3, 2, 2, 2))
    out = layer.forward(x)
    expected = (x - running_mean[:, None, None]) / np.sqrt(running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_mean"], running_mean, rtol=1e-12)


@given(n=st.integers(2, 6), c=st.integers(1, 4), seed=st.integers(0, 999))
def test_batchnorm_train_output_is_standardised(n, c, seed):
    rng = minidl.default_rng(seed)
    layer = randomise(BatchNorm1d(c), rng)
    x = 5 + 4 * rng.standard_normal((n, c))
    out = layer.forward(x)
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    var = x.var(axis=0)
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-10)
    np.testing.assert_allclose(out.var(axis=0), gamma**2 * var / (var + 1e-5), rtol=1e-9)
    # sum(out) does not depend on x: with an all-ones dout the input gradient is zero,
    # which is why gradient checks need a random dout
    np.testing.assert_allclose(layer.backward(np.ones_like(out)), 0, atol=1e-10)


def test_layernorm_rows_standardised_and_groupnorm_one_group_is_layernorm(rng):
    x = 3 - 2 * rng.standard_normal((4, 3, 2, 2))
    ln = LayerNorm((3, 2, 2)).astype("float64")
    out = ln.forward(x)
    np.testing.assert_allclose(out.reshape(4, -1).mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(out.reshape(4, -1).std(axis=1), 1, rtol=1e-4)
    gn = GroupNorm(1, 3).astype("float64")
    np.testing.assert_allclose(gn.forward(x), out, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(x.shape)
    np.testing.assert_allclose(gn.backward(dout), ln.backward(dout), rtol=1e-10, atol=1e-12)


def test_layernorm_and_groupnorm_ignore_mode(rng):
    x = rng.standard_normal((3, 4, 2))
    for layer in (randomise(LayerNorm((4, 2)), rng), randomise(GroupNorm(2, 4), rng)):
        out_train = layer.train().forward(x)
        np.testing.assert_array_equal(layer.eval().forward(x), out_train)
        assert layer.buffers == {}


def test_parameter_names_shapes_and_state_dict():
    bn = BatchNorm2d(5)
    assert list(bn.params) == ["gamma", "beta"]
    assert [k for k, _, _ in bn.parameters()] == ["gamma", "beta"]
    assert list(bn.state_dict()) == ["gamma", "beta", "running_mean", "running_var"]
    assert all(v.shape == (5,) for v in bn.state_dict().values())
    assert all(v.dtype == np.float32 for v in bn.state_dict().values())
    assert LayerNorm((3, 4)).params["gamma"].shape == (3, 4)
    assert LayerNorm(7).params["beta"].shape == (7,)
    assert GroupNorm(2, 6).params["gamma"].shape == (6,)


# -- parity with PyTorch (CPU, float64) --------------------------------------------------

def _copy_affine(ours, theirs, torch):
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.params["gamma"]))
        theirs.bias.copy_(torch.from_numpy(ours.params["beta"]))


def _compare_step(torch, ours, theirs, x, dout):
    out = ours.forward(x)
    dx = ours.backward(dout)
    tx = torch.from_numpy(x).requires_grad_()
    theirs.zero_grad()
    tout = theirs(tx)
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ours.grads["gamma"], theirs.weight.grad.numpy(),
                               rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(ours.grads["beta"], theirs.bias.grad.numpy(),
                               rtol=1e-10, atol=1e-11)


@pytest.mark.torch
@settings(max_examples=15)
@given(kind=st.sampled_from(["1d", "1d-seq", "2d"]), n=st.integers(1, 5), c=st.integers(1, 4),
       h=st.integers(1, 4), w=st.integers(1, 3), momentum=st.sampled_from([0.1, 0.3, 0.9]),
       eps=st.sampled_from([1e-5, 1e-3]), seed=st.integers(0, 999))
def test_batchnorm_matches_torch(kind, n, c, h, w, momentum, eps, seed):
    torch = torch_or_skip()
    rng = minidl.default_rng(seed)
    shape = {"1d": (n, c), "1d-seq": (n, c, h), "2d": (n, c, h, w)}[kind]
    assume(int(np.prod(shape)) // c > 1)
    ours = (BatchNorm2d if kind == "2d" else BatchNorm1d)(c, eps=eps, momentum=momentum)
    ours.astype("float64")
    theirs = (torch.nn.BatchNorm2d if kind == "2d" else torch.nn.BatchNorm1d)(
        c, eps=eps, momentum=momentum).double()
    randomise(ours, rng)
    ours.buffers["running_mean"] = np.zeros(c)  # (C,), torch's initial state
    ours.buffers["running_var"] = np.ones(c)  # (C,)
    _copy_affine(ours, theirs, torch)
    for _ in range(4):  # several train steps on shifting data
        x = rng.uniform(-3, 3) + rng.uniform(0.5, 3) * rng.standard_normal(shape)
        _compare_step(torch, ours, theirs, x, rng.standard_normal(shape))
    np.testing.assert_allclose(ours.buffers["running_mean"], theirs.running_mean.numpy(),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.buffers["running_var"], theirs.running_var.numpy(),
                               rtol=1e-12, atol=1e-14)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((max(n - 1, 1),) + shape[1:])  # eval allows a single value
    _compare_step(torch, ours, theirs, x, rng.standard_normal(x.shape))


@pytest.mark.torch
@settings(max_examples=15)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       norm=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       eps=st.sampled_from([1e-5, 1e-2]), seed=st.integers(0, 999))
def test_layernorm_matches_torch(lead, norm, eps, seed):
    torch = torch_or_skip()
    rng = minidl.default_rng(seed)
    ours = randomise(LayerNorm(tuple(norm), eps=eps), rng)
    theirs = torch.nn.LayerNorm(tuple(norm), eps=eps).double()
    _copy_affine(ours, theirs, torch)
    shape = tuple(lead) + tuple(norm)
    _compare_step(torch, ours, theirs, 1 + 2 * rng.standard_normal(shape),
                  rng.standard_normal(shape))


@pytest.mark.torch
@settings(max_examples=15)
@given(n=st.integers(1, 4), groups=st.integers(1, 4), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), min_size=0, max_size=2),
       eps=st.sampled_from([1e-5, 1e-2]), seed=st.integers(0, 999))
def test_groupnorm_matches_torch(n, groups, per_group, spatial, eps, seed):
    torch = torch_or_skip()
    rng = minidl.default_rng(seed)
    c = groups * per_group
    # torch refuses N * (C/G) * prod(S) == 1 in group_norm (a batch-size check it shares
    # with batch_norm); minidl gives x_hat = 0 there, checked by the gradient test above
    assume(n * per_group * int(np.prod(spatial)) > 1)
    ours = randomise(GroupNorm(groups, c, eps=eps), rng)
    theirs = torch.nn.GroupNorm(groups, c, eps=eps).double()
    _copy_affine(ours, theirs, torch)
    shape = (n, c) + tuple(spatial)
    _compare_step(torch, ours, theirs, 1 + 2 * rng.standard_normal(shape),
                  rng.standard_normal(shape))


# -- bad input ---------------------------------------------------------------------------

def test_bad_input_messages():
    f32 = "float32"
    with pytest.raises(ValueError, match=r"BatchNorm2d expects input of shape \(N, C, H, W\), "
                                         r"got shape \(4, 3\) \(2-D\)"):
        BatchNorm2d(3).forward(np.zeros((4, 3), f32))
    with pytest.raises(ValueError, match=r"BatchNorm1d expects input of shape \(N, C\) or "
                                         r"\(N, C, L\), got shape \(2, 3, 4, 4\)"):
        BatchNorm1d(3).forward(np.zeros((2, 3, 4, 4), f32))
    with pytest.raises(ValueError, match=r"BatchNorm2d expects num_features \(channels C\) = 3 "
                                         r".*got input of shape \(2, 5, 4, 4\)"):
        BatchNorm2d(3).forward(np.zeros((2, 5, 4, 4), f32))
    with pytest.raises(ValueError, match=r"BatchNorm1d in train mode expects more than 1 value "
                                         r"per channel.*got input of shape \(1, 3\)"):
        BatchNorm1d(3).forward(np.zeros((1, 3), f32))
    BatchNorm1d(3).eval().forward(np.zeros((1, 3), f32))  # fine with running statistics
    with pytest.raises(ValueError, match=r"LayerNorm expects input whose last 2 dim\(s\) equal "
                                         r"normalized_shape \(3, 4\), got input of shape "
                                         r"\(2, 4, 3\)"):
        LayerNorm((3, 4)).forward(np.zeros((2, 4, 3), f32))
    with pytest.raises(ValueError, match=r"LayerNorm expects input of shape \(\*, 3, 4\), "
                                         r"got shape \(4,\) \(1-D\)"):
        LayerNorm((3, 4)).forward(np.zeros(4, f32))
    with pytest.raises(ValueError, match=r"GroupNorm expects num_groups to divide num_channels, "
                                         r"got num_groups=4 and num_channels=6"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm expects num_channels \(channels C\) = 6 "
                                         r".*got input of shape \(2, 4, 3\)"):
        GroupNorm(3, 6).forward(np.zeros((2, 4, 3), f32))
    with pytest.raises(ValueError, match=r"GroupNorm expects input of shape \(N, C, \*\), "
                                         r"got shape \(6,\)"):
        GroupNorm(3, 6).forward(np.zeros(6, f32))
    with pytest.raises(ValueError, match="BatchNorm2d expects momentum in \\[0, 1\\], got 1.5"):
        BatchNorm2d(3, momentum=1.5)
    with pytest.raises(ValueError, match="BatchNorm1d expects a positive integer num_features, got 0"):
        BatchNorm1d(0)
    with pytest.raises(ValueError, match="LayerNorm expects eps > 0, got eps=0"):
        LayerNorm(3, eps=0)
    with pytest.raises(TypeError, match="BatchNorm2d expects a floating-point input"):
        BatchNorm2d(3).forward(np.zeros((2, 3, 2, 2), "int64"))


# -- backends ------------------------------------------------------------------------------

@pytest.mark.parametrize("make, shape", [
    (lambda: BatchNorm1d(3), (4, 3)), (lambda: BatchNorm2d(2), (3, 2, 2, 3)),
    (lambda: LayerNorm((2, 3)), (3, 2, 3)), (lambda: GroupNorm(2, 4), (2, 4, 3))],
    ids=["bn1d", "bn2d", "ln", "gn"])
def test_on_backend(on_backend, make, shape):
    rng = minidl.default_rng(7)
    x_host = rng.standard_normal(shape)  # host float64
    dout_host = rng.standard_normal(shape)
    reference = make().astype("float64")
    out_ref = reference.forward(x_host)
    dx_ref = reference.backward(dout_host)
    layer = make()  # made after the switch: its arrays live on the active backend
    assert backend.array_module(layer.params["gamma"]) is backend.xp()
    x = minidl.asarray(x_host, dtype="float32")
    out = layer.forward(x)
    dx = layer.backward(minidl.asarray(dout_host, dtype="float32"))
    assert backend.array_module(out, dx) is backend.xp()
    assert out.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(minidl.to_numpy(out), out_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(minidl.to_numpy(dx), dx_ref, rtol=1e-3, atol=1e-3)
    for key in layer.buffers:  # running statistics were updated on the device
        assert backend.array_module(layer.buffers[key]) is backend.xp()
        np.testing.assert_allclose(minidl.to_numpy(layer.buffers[key]), reference.buffers[key],
                                   rtol=1e-5, atol=1e-6)
    layer.eval()
    layer.forward(x)
    for check in CHECKS:  # float64 checks run on the device too
        report = check(layer.train(), minidl.asarray(x_host), rng=rng)
        assert report.ok, str(report)
