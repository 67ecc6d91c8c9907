"""Losses: gradient checks, torch parity, stability, Hessians, bad input."""
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl.gradcheck import check_loss, numerical_gradient
from minidl.losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy

from conftest import torch_or_skip


def _targets(kind, rng, n, k):
    if kind == "labels":
        return rng.integers(0, k, n)
    if kind == "probs":
        p = rng.random((n, k))
        return p / p.sum(1, keepdims=True)
    if kind == "mse":
        return rng.standard_normal((n, k))
    return rng.random((n, k))  # bce


CASES = [(SoftmaxCrossEntropy, "labels"), (SoftmaxCrossEntropy, "probs"), (MSELoss, "mse"),
         (BCEWithLogits, "bce")]


@pytest.mark.parametrize("cls,kind", CASES, ids=["ce", "ce-probs", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@given(n=st.integers(1, 6), k=st.integers(1, 5), seed=st.integers(0, 999))
def test_loss_gradcheck(cls, kind, reduction, n, k, seed):
    rng = minidl.default_rng(seed)
    logits = 3 * rng.standard_normal((n, k))
    report = check_loss(cls(reduction), logits, _targets(kind, rng, n, k))
    assert report.ok, str(report)


def _torch_loss(torch, cls, reduction, logits, target):
    F = torch.nn.functional
    if cls is SoftmaxCrossEntropy:
        return F.cross_entropy(logits, target, reduction=reduction)
    if cls is MSELoss:
        return F.mse_loss(logits, target, reduction=reduction)
    return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)


@pytest.mark.parametrize("cls,kind", CASES, ids=["ce", "ce-probs", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_matches_torch(cls, kind, reduction, rng):
    torch = torch_or_skip()
    for n, k in [(1, 3), (7, 4), (16, 10)]:
        logits = 5 * rng.standard_normal((n, k))
        target = _targets(kind, rng, n, k)
        loss = cls(reduction)
        value = loss.forward(logits, target)
        grad = loss.backward()
        tl = torch.from_numpy(logits).requires_grad_()
        tt = torch.from_numpy(target)
        tv = _torch_loss(torch, cls, reduction, tl, tt)
        tv.backward()
        np.testing.assert_allclose(value, tv.item(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad, tl.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_is_finite_for_huge_logits():
    loss = SoftmaxCrossEntropy()
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]])
    assert loss.forward(logits, np.array([0, 0])) == pytest.approx(1e4)
    grad = loss.backward()
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-12)
    bce = BCEWithLogits()
    assert np.isfinite(bce.forward(logits, np.ones_like(logits)))
    assert np.isfinite(bce.backward()).all()


@pytest.mark.parametrize("target", [np.array([0, 2]),
                                    np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])],
                         ids=["labels", "probs"])
def test_cross_entropy_takes_minus_infinity_for_a_masked_class(target):
    """A logit of -inf (a class masked out) is a probability 0, as in PyTorch: the loss
    is that of the other classes, and no 0 * (-inf) = NaN is made on the way (it used to
    be, inside a masked ``where``, with NumPy's "invalid value" RuntimeWarning)."""
    logits = np.array([[0.0, -np.inf, 1.0], [2.0, -np.inf, -1.0]])
    Y = np.eye(3)[target] if target.ndim == 1 else target
    # softmax over the finite logits only, written out: p = exp(x) / sum exp(x)
    p = np.zeros((2, 3))
    for n, cols in enumerate([[0, 2], [0, 2]]):
        e = np.exp(logits[n, cols])
        p[n, cols] = e / e.sum()
    expected = -np.sum(Y[:, [0, 2]] * np.log(p[:, [0, 2]])) / 2
    loss = SoftmaxCrossEntropy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = loss.forward(logits, target)
        grad = loss.backward()
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, (p - Y) / 2, atol=1e-15)  # 0 for the masked class


@pytest.mark.parametrize("cls,kind", CASES, ids=["ce", "ce-probs", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_hessian_factor_and_hvp_agree_with_finite_differences(cls, kind, reduction, rng):
    n, k = 3, 4
    logits = rng.standard_normal((n, k))
    target = _targets(kind, rng, n, k)
    loss = cls(reduction)
    loss.forward(logits, target)
    H = loss.hessian()  # (n, k, k)
    S = loss.hessian_factor()
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", S, S), H, atol=1e-12)
    np.testing.assert_allclose(loss.hessian_sum(), H.sum(axis=0), atol=1e-12)
    v = rng.standard_normal((n, k))
    np.testing.assert_allclose(loss.hvp(v), np.einsum("nij,nj->ni", H, v), atol=1e-12)
    # H against central differences of the gradient, column by column
    x = logits.copy()
    for i in range(n):
        for j in range(k):
            def g():
                loss.forward(x, target)
                return loss.backward()
            x[i, j] += 1e-5
            gp = g()
            x[i, j] -= 2e-5
            gm = g()
            x[i, j] += 1e-5
            np.testing.assert_allclose((gp - gm)[i] / 2e-5, H[i, :, j], atol=1e-8)
            assert np.abs((gp - gm)[np.arange(n) != i]).max(initial=0) < 1e-12


def test_sample_target_matches_predictive_distribution():
    rng = minidl.default_rng(3)
    loss = SoftmaxCrossEntropy()
    logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    loss.forward(logits, np.array([0]))
    draws = np.array([int(loss.sample_target(rng)[0]) for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.7, 0.2, 0.1],
                               atol=0.03)
    bce = BCEWithLogits()
    bce.forward(np.zeros((1, 2000)), np.zeros((1, 2000)))
    assert abs(bce.sample_target(rng).mean() - 0.5) < 0.05


def test_bad_targets_get_clear_errors():
    loss = SoftmaxCrossEntropy()
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\] for 4 classes, got "
                                         r"values in \[0, 7\]"):
        loss.forward(logits, np.array([0, 1, 7]))
    with pytest.raises(ValueError, match="3 rows of logits but 2 labels"):
        loss.forward(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer class labels"):
        loss.forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\)"):
        loss.forward(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match=r"MSELoss expects target of shape \(3, 4\)"):
        MSELoss().forward(logits, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"targets in \[0, 1\]"):
        BCEWithLogits().forward(logits, np.full((3, 4), 2.0))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        MSELoss("avg")
    with pytest.raises(RuntimeError, match="call forward"):
        MSELoss().backward()


def test_cross_entropy_refuses_negative_target_probabilities():
    """A row such as [1.5, -0.5, 0] used to be taken: the loss is then unbounded below
    (send the logit of the negative class up) and, where a row sums below 0, the Hessian
    factor sqrt(c s_n) is NaN. Rows that do not sum to 1 stay allowed (they scale the
    row's loss by s_n, as in PyTorch), so that is what this checks alongside."""
    loss = SoftmaxCrossEntropy()
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"target probabilities >= 0, got a smallest entry "
                                         r"of -0\.5 \(in row 1\)"):
        loss.forward(logits, np.array([[1.0, 0.0, 0.0], [1.5, -0.5, 0.0]]))
    with pytest.raises(ValueError, match="got a smallest entry of -1"):
        loss.forward(logits, np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    assert loss.forward(logits, np.full((2, 3), 2 / 3)) == pytest.approx(2 * np.log(3))


def test_numerical_gradient_requires_float64():
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: 0.0, np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_matches_torch_at_extreme_logits(dtype, reduction, rng):
    """BCEWithLogits's branch-free sigmoid and log term against PyTorch at logits of
    +-1e4, +-100, +-88 (exp under/overflow in float32), +-0 and random ones, for targets
    0, 1 and in between."""
    torch = torch_or_skip()
    extremes = [-1e4, -100.0, -88.0, -20.0, -1e-30, -0.0, 0.0, 1e-30, 20.0, 88.0, 100.0, 1e4]
    logits = np.concatenate([np.repeat(extremes, 3), 20 * rng.standard_normal(64)])
    target = np.concatenate([np.tile([0.0, 0.3, 1.0], len(extremes)), rng.random(64)])
    logits, target = logits.astype(dtype)[None], target.astype(dtype)[None]  # (1, 100)
    loss = BCEWithLogits(reduction)
    value = loss.forward(logits, target)
    grad = loss.backward()
    tl = torch.from_numpy(logits).requires_grad_()
    tv = torch.nn.functional.binary_cross_entropy_with_logits(
        tl, torch.from_numpy(target), reduction=reduction)
    tv.backward()
    tol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    np.testing.assert_allclose(value, tv.item(), rtol=tol)
    np.testing.assert_allclose(grad, tl.grad.numpy(), rtol=tol, atol=tol * 1e-3)
