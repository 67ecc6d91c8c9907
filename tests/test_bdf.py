"""BDF against a brute-force empirical Fisher, and the cosine-similarity helper."""
import numpy as np
import pytest
import scipy.linalg

import minidl
from minidl import backend
from minidl.layers import BatchNorm1d, Conv2d, Flatten, Linear, Sequential, Tanh
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.precond import BDF, MBF, CoverageWarning, cosine_similarity


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


def flat_grads(model):
    return np.concatenate([backend.to_numpy(layer.grads[k]).ravel()
                           for _, layer, k in model.parameters()])


def empirical_fisher_loop(model, loss, x, y):
    """(1/N) sum_n g_n g_n^T from one backward per example, in the flat order."""
    rows = []
    for n in range(x.shape[0]):
        loss.forward(model.forward(x[n:n + 1]), y[n:n + 1])
        model.backward(loss.backward())
        rows.append(flat_grads(model))
    G = np.stack(rows)  # (N, p)
    return G.T @ G / G.shape[0]


def layer_slices(model):
    out, start = [], 0
    for layer in model.leaves():
        size = sum(p.size for p in layer.params.values())
        if size:
            out.append(slice(start, start + size))
        start += size
    return out


def mlp(rng):
    return Sequential(Linear(4, 3, rng=rng), Tanh(), Linear(3, 3, rng=rng))


def cnn(rng):
    return Sequential(Conv2d(2, 2, 3, padding=1, rng=rng), Tanh(), Conv2d(2, 1, 3, rng=rng),
                      Flatten(), Linear(9, 3, rng=rng))


def data(rng, shape, N=5):
    return (backend.asarray(rng.standard_normal((N,) + shape)),
            backend.asarray(rng.integers(0, 3, N)))


@pytest.mark.parametrize("make, shape", [(mlp, (4,)), (cnn, (2, 5, 5))])
def test_blocks_and_direction_equal_the_brute_force_fisher(rng, make, shape):
    model, loss, lam = make(rng), SoftmaxCrossEntropy(), 1e-2
    x, y = data(rng, shape)
    EF = empirical_fisher_loop(model, loss, x, y)  # (p, p)
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    g = flat_grads(model)
    pre = BDF(model, damping=lam)
    pre.step()
    slices = layer_slices(model)
    for i, sl in enumerate(slices):
        np.testing.assert_allclose(pre.state[i]["F"], EF[sl, sl], rtol=1e-10, atol=1e-14)
    A = scipy.linalg.block_diag(*[EF[sl, sl] for sl in slices])  # layer blocks, flat order
    expected = np.linalg.solve(A + lam * np.eye(A.shape[0]), g)
    np.testing.assert_allclose(flat_grads(model), expected, rtol=1e-9)


def test_sum_reduction_and_moving_average(rng):
    model, loss, beta = mlp(rng), MSELoss(reduction="sum"), 0.9
    pre = BDF(model, stat_decay=beta, loss=loss, T2=2)
    F = 0.0
    for _ in range(3):
        x = backend.asarray(rng.standard_normal((4, 4)))
        y = backend.asarray(rng.standard_normal((4, 3)))
        F = beta * F + (1 - beta) * empirical_fisher_loop(model, loss, x, y)
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        pre.step()
    for i, sl in enumerate(layer_slices(model)):
        np.testing.assert_allclose(pre.state[i]["F"], F[sl, sl], rtol=1e-10)


def test_mbf_blocks_are_sub_blocks_of_bdf_at_batch_size_1(rng):
    model, loss = mlp(rng), SoftmaxCrossEntropy()
    x, y = data(rng, (4,), N=1)
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    g = {id(layer): dict(layer.grads) for layer in model.leaves()}
    bdf = BDF(model)
    bdf.step()
    for layer in model.leaves():
        layer.grads = dict(g[id(layer)])
    mbf = MBF(model, stat_decay=0.0)
    mbf.step()
    F = bdf.state[1]["F"]  # Linear(3, 3): [W (9), b (3)]
    for o in range(3):
        idx = [3 * o, 3 * o + 1, 3 * o + 2, 9 + o]
        np.testing.assert_allclose(mbf.state[1]["F"][o], F[np.ix_(idx, idx)], rtol=1e-12)


def test_huge_damping_and_coverage(rng):
    model = Sequential(Linear(4, 3, rng=rng), BatchNorm1d(3), Tanh(), Linear(3, 3, rng=rng))
    loss = SoftmaxCrossEntropy()
    with pytest.warns(CoverageWarning, match="BatchNorm1d"):
        pre = BDF(model, damping=1e9)
    x, y = data(rng, (4,))
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    g = [backend.to_numpy(layer.grads[k]).copy() for layer in pre.layers for k in layer.grads]
    pre.step()
    d = [backend.to_numpy(layer.grads[k]) for layer in pre.layers for k in layer.grads]
    scale = max(np.abs(b).max() for b in g)  # the bias before BatchNorm has g = 0
    for a, b in zip(d, g):
        np.testing.assert_allclose(a * 1e9, b, rtol=1e-6, atol=1e-6 * scale)


def test_state_dict_round_trip_continues_identically(rng, tmp_path):
    model, loss = cnn(rng), SoftmaxCrossEntropy()
    batches = [data(rng, (2, 5, 5)) for _ in range(6)]

    def run(pre, steps):
        out = []
        for x, y in steps:
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            pre.step()
            out.append(flat_grads(model))
        return out

    pre = BDF(model, stat_decay=0.9, T2=2)
    run(pre, batches[:3])
    np.savez(tmp_path / "bdf.npz", **pre.state_dict())
    expected = run(pre, batches[3:])
    restored = BDF(model, stat_decay=0.9, T2=2).load_state_dict(dict(np.load(tmp_path / "bdf.npz")))
    for a, b in zip(run(restored, batches[3:]), expected):
        np.testing.assert_array_equal(a, b)


def test_cosine_similarity(rng):
    a = {"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(3)}
    b = {"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(3)}
    fa = np.concatenate([a["W"].ravel(), a["b"]])
    fb = np.concatenate([b["W"].ravel(), b["b"]])
    expected = fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)
    assert cosine_similarity(a, b) == pytest.approx(expected, rel=1e-12)
    assert cosine_similarity([a, a], [a, a]) == pytest.approx(1.0)
    assert cosine_similarity(fa, -2 * fa) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="zero"):
        cosine_similarity(fa, 0 * fa)
    with pytest.raises(ValueError, match="entries"):
        cosine_similarity(fa, fb[:-1])


def test_backends_agree(on_backend, rng):
    host = minidl.default_rng(9)
    model = cnn(host)
    x, y = host.standard_normal((5, 2, 5, 5)), host.integers(0, 3, 5)
    out = []
    for name in ("numpy", on_backend):
        minidl.set_backend(name)
        model.to_backend()
        pre, loss = BDF(model, stat_decay=0.5), SoftmaxCrossEntropy()
        for _ in range(2):
            loss.forward(model.forward(minidl.asarray(x)), minidl.asarray(y))
            model.backward(loss.backward())
            pre.step()
        out.append(flat_grads(model))
    np.testing.assert_allclose(out[1], out[0], rtol=1e-9)


def test_a_layer_too_large_for_dense_blocks_is_refused_before_any_block_is_made(monkeypatch):
    """A 784-100-10 MLP's first layer has p = 78500: two dense p x p blocks are 46 GiB in
    float32 (92 in float64), which used to be allocated until the process was killed. Now
    a ValueError names the layer, p and the memory, before anything is allocated."""
    import minidl
    from minidl.layers import Linear, ReLU, Sequential

    rng = minidl.default_rng(0)
    model = Sequential(Linear(784, 100, rng=rng), ReLU(), Linear(100, 10, rng=rng))
    made = []
    real_zeros = np.zeros
    monkeypatch.setattr(np, "zeros", lambda *a, **k: made.append(a) or real_zeros(*a, **k))
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\) has p = 78500 parameters: "
                                         r"91\.8 GiB \(max_block=8192\)"):
        BDF(model)
    assert made == []
    small = Sequential(Linear(20, 10, rng=rng), ReLU(), Linear(10, 3, rng=rng))
    with pytest.raises(ValueError, match="layer 0 .* p = 210"):
        BDF(small, max_block=200)
    assert BDF(small, max_block=210).state[0]["F"].shape == (210, 210)
    for bad in (0, 2.5, "8192", True):
        with pytest.raises(ValueError, match="max_block must be a positive integer"):
            BDF(small, max_block=bad)
