"""MBF against brute force: blocks from per-example loops, directions from dense solves."""
import numpy as np
import pytest
import scipy.linalg

import minidl
from minidl import backend
from minidl.layers import Conv2d, Flatten, Linear, Sequential, Tanh
from minidl.losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy
from minidl.optim import SGD
from minidl.precond import MBF, CoverageWarning

import reference
from reference import (empirical_fisher_loop, flat_grads, forward_backward, make_data,
                       mlp_with_batchnorm, npz_round_trip, run_directions, train_step)


# -- brute-force helpers (the shared ones are in reference.py) -----------------------------
def set_flat_grads(model, g):
    start = 0
    for _, layer, k in model.parameters():
        p = layer.params[k]
        layer.grads[k] = backend.asarray(g[start:start + p.size].reshape(p.shape))
        start += p.size


def mbf_blocks(model):
    """Index sets of MBF's mini-blocks in the flat order (no normalisation layers)."""
    blocks, start = [], 0
    for layer in model.leaves():
        if not layer.params:
            continue
        W = layer.params["W"]
        has_b = "b" in layer.params
        if W.ndim == 2:
            n, m = W.shape
            for o in range(n):
                idx = list(range(start + o * m, start + (o + 1) * m))
                blocks.append(idx + ([start + n * m + o] if has_b else []))
        else:
            F, C, kh, kw = W.shape
            k2 = kh * kw
            for oc in range(F * C):
                blocks.append(list(range(start + oc * k2, start + (oc + 1) * k2)))
            if has_b:
                blocks += [[start + W.size + o] for o in range(F)]
        start += W.size + (layer.params["b"].size if has_b else 0)
    return [np.array(b) for b in blocks]


class ReferenceMBF:
    """Algorithm 2 on the flat gradient, with a dense block-diagonal solve."""

    def __init__(self, blocks, damping, beta, T1, T2, momentum=0.0):
        self.blocks, self.damping, self.beta = blocks, damping, beta
        self.T1, self.T2, self.momentum = T1, T2, momentum
        self.F = [np.zeros((len(b), len(b))) for b in blocks]
        self.perm = np.concatenate(blocks)  # flat index of each row of the block_diag
        self.m, self.t = 0.0, 0

    def direction(self, g):
        if self.t % self.T1 == 0:
            self.F = [self.beta * F + (1 - self.beta) * np.outer(g[b], g[b])
                      for F, b in zip(self.F, self.blocks)]
        if self.t % self.T2 == 0:
            A = scipy.linalg.block_diag(*self.F)
            self.A = A + self.damping * np.eye(A.shape[0])
        self.m = self.momentum * self.m + g
        d = np.empty_like(g)
        d[self.perm] = np.linalg.solve(self.A, self.m[self.perm])
        self.t += 1
        return d


def mlp(rng, sizes=(4, 3, 3)):
    return reference.mlp(rng, sizes)


def cnn(rng, k=3, bias=True):
    return Sequential(Conv2d(2, 3, k, padding=k // 2, bias=bias, rng=rng), Tanh(),
                      Conv2d(3, 2, k, bias=bias, rng=rng), Flatten(),
                      Linear(2 * (5 - 2 * (k // 2)) ** 2, 3, rng=rng))


def data(rng, shape, K=3, N=6):
    return make_data(rng, "ce", N, shape, K)


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


# -- the blocks are sub-blocks of the empirical Fisher ------------------------------------
@pytest.mark.parametrize("make, shape", [(mlp, (4,)), (cnn, (2, 5, 5))])
def test_blocks_equal_empirical_fisher_sub_blocks_at_batch_size_1(rng, make, shape):
    model, loss = make(rng), SoftmaxCrossEntropy()
    x, y = data(rng, shape, N=1)
    EF = empirical_fisher_loop(model, loss, x, y)  # (p, p)
    forward_backward(model, loss, x, y)
    pre = MBF(model, kl_clip=None, damping=1e-3, stat_decay=0.0)
    pre.step()
    got = []
    for i, layer in enumerate(pre.layers):
        got.append(pre.state[i]["F"].reshape(-1, *pre.state[i]["F"].shape[-2:]))
        if pre.kinds[i] == "conv":
            got.append(pre.state[i]["v_b"].reshape(-1, 1, 1))
    got = [B for stack in got for B in stack]
    blocks = mbf_blocks(model)
    assert len(got) == len(blocks)
    for B, idx in zip(got, blocks):
        np.testing.assert_allclose(B, EF[np.ix_(idx, idx)], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make, shape, momentum", [(mlp, (4,), 0.0), (cnn, (2, 5, 5), 0.0),
                                                   (mlp, (4,), 0.9)])
def test_direction_equals_dense_block_diagonal_solve(rng, make, shape, momentum):
    model, loss = make(rng), SoftmaxCrossEntropy()
    pre = MBF(model, kl_clip=None, damping=3e-3, stat_decay=0.9, T1=2, T2=3, momentum=momentum,
              warm_start=0)
    ref = ReferenceMBF(mbf_blocks(model), 3e-3, 0.9, T1=2, T2=3, momentum=momentum)
    for _ in range(7):
        x, y = data(rng, shape)
        forward_backward(model, loss, x, y)
        g = flat_grads(model)
        pre.step()
        d = flat_grads(model)
        np.testing.assert_allclose(d, ref.direction(g), rtol=1e-9, atol=1e-12)
        for _, layer, k in model.parameters():
            layer.params[k] -= 1e-3 * layer.grads[k]


def test_one_by_one_blocks_are_adam_without_square_root(rng):
    """1x1 kernels (and a bias-free Linear(1, n)) give 1x1 blocks: d = g / (v + lambda)."""
    model = Sequential(Conv2d(3, 4, 1, rng=rng), Flatten(), Linear(4 * 9, 1, bias=False,
                                                                   rng=rng),
                       Linear(1, 3, bias=False, rng=rng))
    loss, lam, beta = SoftmaxCrossEntropy(), 1e-2, 0.8
    pre = MBF(model, kl_clip=None, damping=lam, stat_decay=beta, T2=1, warm_start=0)
    v = {"W": 0.0, "b": 0.0, "last": 0.0}  # EMA of g^2, elementwise
    conv, last = model[0], model[3]
    for _ in range(4):
        x, y = data(rng, (3, 3, 3))
        forward_backward(model, loss, x, y)
        g = {k: backend.to_numpy(conv.grads[k]) for k in ("W", "b")}
        g["last"] = backend.to_numpy(last.grads["W"])
        v = {k: beta * v[k] + (1 - beta) * g[k] ** 2 for k in g}
        pre.step()
        for key, got in (("W", conv.grads["W"]), ("b", conv.grads["b"]),
                         ("last", last.grads["W"])):
            np.testing.assert_allclose(got, g[key] / (v[key] + lam), rtol=1e-12)


def test_spatial_averaging_with_one_output_equals_plain_mbf(rng):
    model, loss = mlp(rng, (4, 3, 1)), MSELoss()
    plain = MBF(model, kl_clip=None, stat_decay=0.9, T2=2)
    averaged = MBF(model, kl_clip=None, stat_decay=0.9, T2=2,
                   spatial_threshold=0)  # every dense layer
    assert averaged.kinds == ["dense_avg", "dense_avg"]
    for _ in range(4):
        x = backend.asarray(rng.standard_normal((6, 4)))
        loss.forward(model.forward(x), backend.asarray(rng.standard_normal((6, 1))))
        model.backward(loss.backward())
        g = flat_grads(model)
        plain.step()
        d_plain = flat_grads(model)
        set_flat_grads(model, g)
        averaged.step()
        d_avg = flat_grads(model)
        np.testing.assert_allclose(d_avg[-4:], d_plain[-4:], rtol=1e-12)  # the 1-output layer
        assert not np.allclose(d_avg[:-4], d_plain[:-4])  # 3 outputs: averaging differs


def test_spatial_average_is_the_mean_of_the_neuron_blocks(rng):
    model, loss = mlp(rng, (4, 3, 3)), SoftmaxCrossEntropy()
    plain = MBF(model, stat_decay=0.5, kl_clip=None)
    averaged = MBF(model, stat_decay=0.5, spatial_average=True, kl_clip=None)
    for _ in range(3):
        x, y = data(rng, (4,))
        forward_backward(model, loss, x, y)
        g = flat_grads(model)
        plain.step()
        set_flat_grads(model, g)
        averaged.step()
    for i in range(2):
        np.testing.assert_allclose(averaged.state[i]["F"], plain.state[i]["F"].mean(axis=0))


def test_huge_damping_gives_gradient_over_damping(rng):
    model, loss = cnn(rng), SoftmaxCrossEntropy()
    pre = MBF(model, damping=1e8)
    x, y = data(rng, (2, 5, 5))
    forward_backward(model, loss, x, y)
    g = flat_grads(model)
    pre.step()
    np.testing.assert_allclose(flat_grads(model) * 1e8, g, rtol=1e-6)


def test_state_dict_round_trip_continues_identically(rng, tmp_path):
    model, loss = cnn(rng), SoftmaxCrossEntropy()
    pre = MBF(model, kl_clip=None, stat_decay=0.9, T1=2, T2=3, momentum=0.9)
    batches = [data(rng, (2, 5, 5)) for _ in range(8)]
    run_directions(model, loss, pre, batches[:4])
    saved = npz_round_trip(pre.state_dict(), tmp_path / "mbf.npz")
    expected = run_directions(model, loss, pre, batches[4:])
    restored = MBF(model, kl_clip=None, stat_decay=0.9, T1=2, T2=3, momentum=0.9)
    restored.load_state_dict(saved)
    assert restored.t == 4
    for a, b in zip(run_directions(model, loss, restored, batches[4:]), expected):
        np.testing.assert_array_equal(a, b)


# -- MBF-True, warm start, normalisation layers --------------------------------------------
def test_mbf_true_uses_sampled_labels_and_restores_the_model(rng):
    model, loss = mlp(rng, (4, 5, 3)), SoftmaxCrossEntropy()
    x, y = data(rng, (4,), N=5)
    pre = MBF(model, kl_clip=None, damping=1e-2, stat_decay=0.0, fisher="true", loss=loss,
              rng=minidl.default_rng(7))
    # reference: the same labels from the same generator, through a fresh backward
    loss.forward(model.forward(x), y)
    y_sampled = loss.sample_target(minidl.default_rng(7))
    forward_backward(model, loss, x, y_sampled)
    g_sampled = flat_grads(model)
    forward_backward(model, loss, x, y)
    g_true = flat_grads(model)
    douts = [layer.cache["dout"].copy() for layer in pre.layers]
    pre.step()
    blocks = mbf_blocks(model)
    perm = np.concatenate(blocks)
    A = scipy.linalg.block_diag(*[np.outer(g_sampled[b], g_sampled[b]) for b in blocks])
    expected = np.empty_like(g_true)
    expected[perm] = np.linalg.solve(A + 1e-2 * np.eye(A.shape[0]), g_true[perm])
    np.testing.assert_allclose(flat_grads(model), expected, rtol=1e-9)
    for layer, dout in zip(pre.layers, douts):
        np.testing.assert_array_equal(layer.cache["dout"], dout)
    np.testing.assert_array_equal(loss.backward(), loss.backward())  # loss usable again


@pytest.mark.parametrize("make_loss, target", [
    (MSELoss, lambda rng, N: rng.standard_normal((N, 3))),
    (BCEWithLogits, lambda rng, N: rng.integers(0, 2, (N, 3)).astype(float))])
def test_mbf_true_with_other_losses_preconditions_the_true_label_gradient(rng, make_loss,
                                                                          target):
    model, loss = mlp(rng), make_loss()
    pre = MBF(model, damping=1e9, fisher="true", loss=loss, rng=minidl.default_rng(1))
    x, y = backend.asarray(rng.standard_normal((5, 4))), backend.asarray(target(rng, 5))
    forward_backward(model, loss, x, y)
    g = flat_grads(model)
    pre.step()
    np.testing.assert_allclose(flat_grads(model) * 1e9, g, rtol=1e-6)
    assert np.abs(pre.state[0]["F"]).max() > 0


def test_warm_start_is_the_epoch_average(rng):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    batches = [data(rng, (4,)) for _ in range(3)]
    blocks = mbf_blocks(model)
    outer = []
    for x, y in batches:
        forward_backward(model, loss, x, y)
        g = flat_grads(model)
        outer.append([np.outer(g[b], g[b]) for b in blocks])
    pre = MBF(model, loss=loss).warm_start(batches)
    got = [B for i in range(2) for B in pre.state[i]["F"]]
    for j, B in enumerate(got):
        np.testing.assert_allclose(B, np.mean([o[j] for o in outer], axis=0), rtol=1e-12)
    assert int(pre.state[0]["n_warm"]) == 3
    np.testing.assert_allclose(pre.state[0]["P"][0],
                               np.linalg.inv(got[0] + 3e-3 * np.eye(got[0].shape[0])))


def test_normalisation_layers_get_adams_direction(rng):
    model = mlp_with_batchnorm(rng, (4, 3, 3))
    loss, beta = SoftmaxCrossEntropy(), 0.9
    pre = MBF(model, kl_clip=None, stat_decay=beta, norm_eps=1e-8, bias_correction=False)
    assert pre.kinds == ["dense", "norm", "dense"]
    x, y = data(rng, (4,))
    forward_backward(model, loss, x, y)
    g = backend.to_numpy(model[1].grads["gamma"])
    pre.step()
    expected = g / (np.sqrt((1 - beta) * g ** 2) + 1e-8)
    np.testing.assert_allclose(model[1].grads["gamma"], expected, rtol=1e-12)
    with pytest.warns(CoverageWarning, match="BatchNorm1d"):
        MBF(model, norm_params="skip")


# -- composing with the optimizer ---------------------------------------------------------
def flat_params(model):
    return np.concatenate([backend.to_numpy(layer.params[k]).ravel()
                           for _, layer, k in model.parameters()])


def test_algorithm_2_is_mbf_momentum_then_sgd_with_weight_decay(rng):
    """theta <- (1 - lr gamma) theta - lr P m, m <- mu m + g: MBF(momentum) + SGD(wd)."""
    model, loss, lr, gamma = mlp(rng), SoftmaxCrossEntropy(), 0.05, 0.1
    pre = MBF(model, kl_clip=None, damping=1e-2, stat_decay=0.9, T1=1, T2=2, momentum=0.9,
              warm_start=0)
    opt = SGD(model, lr=lr, weight_decay=gamma)
    ref = ReferenceMBF(mbf_blocks(model), 1e-2, 0.9, T1=1, T2=2, momentum=0.9)
    theta = flat_params(model)
    for _ in range(5):
        x, y = data(rng, (4,))
        forward_backward(model, loss, x, y)
        theta = (1 - lr * gamma) * theta - lr * ref.direction(flat_grads(model))
        pre.step()
        opt.step()
        np.testing.assert_allclose(flat_params(model), theta, rtol=1e-10)


def test_optimizer_momentum_equals_preconditioned_momentum_while_P_is_fixed(rng):
    """P fixed after step 0 (T1 = T2 = 100): sum_k mu^k P g_k = P m."""
    batches = [data(rng, (4,)) for _ in range(5)]
    results = []
    for mbf_momentum, sgd_momentum in ((0.0, 0.9), (0.9, 0.0)):
        model, loss = mlp(minidl.default_rng(0)), SoftmaxCrossEntropy()
        pre = MBF(model, kl_clip=None, T1=100, T2=100, momentum=mbf_momentum)
        opt = SGD(model, lr=1e-3, momentum=sgd_momentum)
        for x, y in batches:
            train_step(model, loss, x, y, pre, opt)
        results.append(flat_params(model))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-10)


def test_bad_arguments_say_what_to_do(rng):
    model = mlp(rng)
    with pytest.raises(ValueError, match="loss=crit"):
        MBF(model, fisher="true")
    with pytest.raises(ValueError, match="damping"):
        MBF(model, damping=0.0)
    with pytest.raises(RuntimeError, match="backward"):
        MBF(model).step()


def test_backends_agree(on_backend, rng):
    """Same model and data on each backend give the numpy direction."""
    host = minidl.default_rng(3)
    model = mlp(host, (4, 3, 2))
    x = host.standard_normal((6, 4))
    y = host.integers(0, 2, 6)
    loss = SoftmaxCrossEntropy()
    directions = []
    for name in ("numpy", on_backend):
        minidl.set_backend(name)
        model.to_backend()
        pre = MBF(model, kl_clip=None, stat_decay=0.5, momentum=0.5, spatial_threshold=20)
        batch = (minidl.asarray(x), minidl.asarray(y))
        directions.append(run_directions(model, loss, pre, [batch, batch])[-1])
    np.testing.assert_allclose(directions[1], directions[0], rtol=1e-10)
