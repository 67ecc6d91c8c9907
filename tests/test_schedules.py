"""Learning-rate schedules, LRScheduler, and the exponential moving average of parameters."""
import math

import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.layers import Linear, Sequential, Tanh
from minidl.optim import (EMA, SGD, Adam, Constant, Cosine, Inverse, InverseSqrt,
                          LinearWarmup, LRScheduler, StepDecay)

from conftest import torch_or_skip


# -- values at given k -------------------------------------------------------------------
@pytest.mark.parametrize("schedule,expected", [
    (Constant(0.1), {0: 0.1, 7: 0.1, 10 ** 6: 0.1}),
    (StepDecay(1.0, step_size=10, gamma=0.5), {0: 1.0, 9: 1.0, 10: 0.5, 25: 0.25}),
    (InverseSqrt(0.3), {0: 0.3, 3: 0.15, 8: 0.1}),
    (InverseSqrt(1.0, k0=4), {0: 0.5, 12: 0.25}),
    (Inverse(1.0), {0: 1.0, 1: 0.5, 9: 0.1}),
    (Inverse(2.0, k0=2), {0: 1.0, 2: 0.5}),
    (Cosine(1.0, total_steps=100), {0: 1.0, 50: 0.5, 100: 0.0, 150: 0.0}),
    (Cosine(1.0, total_steps=4, min_lr=0.2), {0: 1.0, 2: 0.6, 4: 0.2, 9: 0.2}),
], ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_values(schedule, expected):
    for k, lr in expected.items():
        assert schedule(k) == pytest.approx(lr, abs=1e-15), f"{schedule!r} at k={k}"


def test_lecture_counting():
    """The lecture's c/sqrt(k) and c/k for k = 1, 2, ... are ours at k - 1 with k0 = 1."""
    c = 0.7
    for k in range(1, 20):
        assert InverseSqrt(c)(k - 1) == pytest.approx(c / math.sqrt(k))
        assert Inverse(c)(k - 1) == pytest.approx(c / k)


def test_cosine_matches_torch_cosine_annealing():
    torch = torch_or_skip()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=0.01)
    ours = Cosine(0.3, total_steps=20, min_lr=0.01)
    for k in range(20):
        assert ours(k) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10)
        opt.step()
        sched.step()


def test_step_decay_matches_torch_step_lr():
    torch = torch_or_skip()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ours = StepDecay(0.3, step_size=3, gamma=0.5)
    for k in range(12):
        assert ours(k) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


@pytest.mark.filterwarnings("ignore::UserWarning")  # SequentialLR's step(epoch) notice
@pytest.mark.parametrize("W,T,floor", [(3, 10, 0.01), (1, 4, 0.0), (7, 3, 0.02)])
def test_warmup_then_cosine_matches_torch_linear_lr_then_cosine(W, T, floor):
    """LinearWarmup(Cosine(c, T), W) is torch's LinearLR(start_factor=1/(W+1), W) followed
    (SequentialLR, milestone W) by CosineAnnealingLR(T), for every update through W + T."""
    torch = torch_or_skip()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    lr_scheduler = torch.optim.lr_scheduler
    sched = lr_scheduler.SequentialLR(opt, [
        lr_scheduler.LinearLR(opt, start_factor=1 / (W + 1), total_iters=W),
        lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=floor)], milestones=[W])
    ours = LinearWarmup(Cosine(0.3, total_steps=T, min_lr=floor), warmup_steps=W)
    for k in range(W + T + 1):
        assert ours(k) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), f"k={k}"
        opt.step()
        sched.step()


# -- warm-up and composition -----------------------------------------------------------
def test_linear_warmup_then_constant():
    sched = LinearWarmup(0.4, warmup_steps=3)
    assert [sched(k) for k in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


def test_warmup_composes_with_cosine_like_nanogpt():
    peak, W, T, floor = 6e-4, 10, 90, 6e-5
    sched = LinearWarmup(Cosine(peak, total_steps=T, min_lr=floor), warmup_steps=W)
    lrs = [sched(k) for k in range(W + T + 20)]
    # linear rise with a constant slope peak / (W + 1), reaching the peak at k = W
    assert np.diff(lrs[:W + 1]) == pytest.approx(np.full(W, peak / (W + 1)))
    assert lrs[W] == pytest.approx(peak)
    # then the cosine with its clock started at W: halfway down at W + T/2, floor at W + T
    assert lrs[W + T // 2] == pytest.approx((peak + floor) / 2)
    assert lrs[W + T:] == pytest.approx([floor] * 20)
    assert all(a >= b for a, b in zip(lrs[W:], lrs[W + 1:]))  # never rises after warm-up
    # a plain function works as the schedule that follows
    shifted = LinearWarmup(lambda k: 1.0 / (k + 1), warmup_steps=2)
    assert [shifted(k) for k in range(5)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5, 1 / 3])
    assert LinearWarmup(0.5, warmup_steps=0)(0) == 0.5


def test_lr_scheduler_drives_the_optimizer():
    minidl.set_default_dtype("float64")
    model = Sequential(Linear(2, 1, rng=minidl.default_rng(0)))
    opt = SGD(model, lr=1.0)
    sched = LRScheduler(opt, StepDecay(0.8, step_size=2, gamma=0.5))
    seen = []
    for _ in range(6):
        seen.append(opt.lr)
        model.zero_grad()
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.2])
    resumed = LRScheduler(SGD(model, lr=1.0), StepDecay(0.8, step_size=2, gamma=0.5))
    resumed.load_state_dict(sched.state_dict())
    assert resumed.k == 6 and resumed.optimizer.lr == pytest.approx(0.1)


def test_lr_scheduler_state_round_trips_through_npz(tmp_path):
    model = Sequential(Linear(2, 1, rng=minidl.default_rng(0)))
    sched = LRScheduler(SGD(model, lr=1.0), Cosine(0.5, total_steps=10))
    for _ in range(4):
        sched.step()
    np.savez(tmp_path / "sched.npz", **sched.state_dict())
    resumed = LRScheduler(SGD(model, lr=1.0), Cosine(0.5, total_steps=10))
    with np.load(tmp_path / "sched.npz") as f:
        resumed.load_state_dict(f)  # the NpzFile itself, a mapping
    assert resumed.k == 4 and resumed.optimizer.lr == sched.optimizer.lr == Cosine(0.5, 10)(4)


@pytest.mark.parametrize("state", [{"k": 2.5}, {"k": -3}, {"k": "3"}, {"k": True}, {},
                                   {"k": np.array([1, 2])}])
def test_lr_scheduler_refuses_a_bad_state_and_keeps_its_own(state):
    model = Sequential(Linear(2, 1, rng=minidl.default_rng(0)))
    sched = LRScheduler(SGD(model, lr=1.0), StepDecay(0.8, step_size=2, gamma=0.5))
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match="LRScheduler.load_state_dict"):
        sched.load_state_dict(state)
    assert sched.k == 2 and sched.optimizer.lr == pytest.approx(0.4)


@pytest.mark.parametrize("make,match", [
    (lambda: Constant(-1.0), "c must be"),
    (lambda: StepDecay(0.1, step_size=0), "step_size"),
    (lambda: StepDecay(0.1, step_size=2, gamma=1.5), "gamma"),
    (lambda: InverseSqrt(0.1, k0=0), "k0"),
    (lambda: Cosine(0.1, total_steps=0), "total_steps"),
    (lambda: Cosine(0.1, total_steps=5, min_lr=0.2), "min_lr"),
    (lambda: LinearWarmup(0.1, warmup_steps=-1), "warmup_steps"),
    (lambda: LinearWarmup("cosine", warmup_steps=2), "schedule"),
    (lambda: Constant(0.1)(-1), "iteration number"),
    (lambda: Cosine(0.1, total_steps=5)(2.5), "iteration number"),
    (lambda: LRScheduler(object(), Constant(0.1)), "lr attribute"),
])
def test_bad_schedules(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- EMA of the parameters ---------------------------------------------------------------
def _model():
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(0)
    return Sequential(Linear(3, 4, rng=rng), Tanh(), Linear(4, 2, rng=rng))


def _random_step(model, gen):
    for _, layer, key in model.parameters():
        layer.params[key] -= 0.1 * backend.asarray(gen.standard_normal(layer.params[key].shape))


def test_ema_formula():
    model, gamma = _model(), 0.9
    gen = np.random.default_rng(0)
    ema = EMA(model, gamma=gamma)
    expected = {n: layer.params[k].copy() for n, layer, k in model.parameters()}
    for _ in range(5):
        _random_step(model, gen)
        ema.update()
        for n, layer, k in model.parameters():
            expected[n] = gamma * expected[n] + (1 - gamma) * layer.params[k]
    for n in expected:
        np.testing.assert_allclose(ema.averages[n], expected[n], rtol=1e-14)
    assert ema.t == 5


def test_ema_swap_restores_parameters_exactly():
    model = _model()
    gen = np.random.default_rng(1)
    ema = EMA(model, gamma=0.7)
    for _ in range(4):
        _random_step(model, gen)
        ema.update()
    arrays = {n: layer.params[k] for n, layer, k in model.parameters()}
    before = {n: a.copy() for n, a in arrays.items()}
    averages = {n: a.copy() for n, a in ema.averages.items()}
    x = np.ones((2, 3))
    with ema.averaged() as m:
        assert m is model
        for n, layer, k in model.parameters():
            np.testing.assert_array_equal(layer.params[k], averages[n])
            assert layer.params[k] is arrays[n], "the swap must copy into the same arrays"
        out_avg = model.forward(x)
    for n, layer, k in model.parameters():
        np.testing.assert_array_equal(layer.params[k], before[n])
        np.testing.assert_array_equal(ema.averages[n], averages[n])
    assert not np.array_equal(out_avg, model.forward(x))
    # the swap is undone even when evaluation raises
    with pytest.raises(KeyError):
        with ema.averaged():
            raise KeyError("boom")
    for n, layer, k in model.parameters():
        np.testing.assert_array_equal(layer.params[k], before[n])


def test_ema_with_an_optimizer_and_state_dict(tmp_path):
    model = _model()
    opt = Adam(model, lr=0.01)
    ema = EMA(model, gamma=0.95)
    for _ in range(3):
        for _, layer, key in model.parameters():
            layer.grads[key] = layer.params[key] - 1.0
        opt.step()
        ema.update()
    with ema.averaged():
        with pytest.raises(RuntimeError, match="inside ema.averaged"):
            ema.update()
    np.savez(tmp_path / "ema.npz", **ema.state_dict())
    other = EMA(_model(), gamma=0.5)
    with np.load(tmp_path / "ema.npz") as f:
        other.load_state_dict(dict(f))
    assert other.gamma == 0.95 and other.t == 3
    for n in ema.averages:
        np.testing.assert_array_equal(other.averages[n], ema.averages[n])
    copy = ema.copy_to(_model())
    for n, layer, k in copy.parameters():
        np.testing.assert_array_equal(layer.params[k], ema.averages[n])


def test_ema_load_state_dict_inside_averaged_is_refused():
    """Loading while the averages are swapped in would hand the loaded averages to the
    model on leaving the block and lose the training weights."""
    model, gen = _model(), np.random.default_rng(3)
    ema = EMA(model, gamma=0.9)
    _random_step(model, gen)
    ema.update()
    saved = ema.state_dict()
    theta = {n: layer.params[k].copy() for n, layer, k in model.parameters()}
    with ema.averaged():
        with pytest.raises(RuntimeError, match="load_state_dict.*outside ema.averaged"):
            ema.load_state_dict(saved)
    for n, layer, k in model.parameters():
        np.testing.assert_array_equal(layer.params[k], theta[n])


@pytest.mark.parametrize("change,match", [
    (lambda s: s.update({"ema.9.W": np.zeros((2, 2))}), "'ema.9.W'.*does not have"),
    (lambda s: s.update({"t": 2.5}), "t must be an integer >= 0"),
    (lambda s: s.update({"t": -1}), "t must be an integer >= 0"),
    (lambda s: s.update({"gamma": 1.0}), "gamma"),
    (lambda s: s.update({"momentum": 0.9}), "'momentum'"),
])
def test_ema_load_state_dict_refuses_state_of_another_model(change, match):
    model, gen = _model(), np.random.default_rng(4)
    ema = EMA(model, gamma=0.9)
    _random_step(model, gen)
    ema.update()
    state = ema.state_dict()
    change(state)
    fresh = EMA(_model(), gamma=0.8)
    before = {n: a.copy() for n, a in fresh.averages.items()}
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
    assert fresh.t == 0 and fresh.gamma == 0.8
    for n, a in fresh.averages.items():
        np.testing.assert_array_equal(a, before[n])


def test_ema_of_something_without_parameters_is_refused():
    with pytest.raises(TypeError, match="EMA expects a model"):
        EMA([np.zeros(3)])
    with pytest.raises(ValueError, match="no trainable parameters"):
        EMA(Sequential(Tanh()))


def test_ema_bad_gamma():
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\)"):
        EMA(_model(), gamma=1.0)


def test_ema_on_each_backend(on_backend):
    model = _model()
    ema = EMA(model, gamma=0.5)
    gen = np.random.default_rng(2)
    _random_step(model, gen)
    ema.update()
    before = {n: backend.to_numpy(layer.params[k]).copy() for n, layer, k in model.parameters()}
    with ema.averaged():
        pass
    for n, layer, k in model.parameters():
        assert backend.array_module(layer.params[k]) is backend.xp()
        assert backend.array_module(ema.averages[n]) is backend.xp()
        np.testing.assert_array_equal(backend.to_numpy(layer.params[k]), before[n])
