"""Optimizers: parity with torch.optim, restated formulas, the parabola, checkpoints, errors.

Every optimizer gets (style.md 3.9): a reference comparison (50 steps against torch.optim
on a small float64 MLP, and a restated formula for single steps), a property (it converges
on optax's parabola) and its failure modes (bad hyperparameters, checkpoint round trips).
"""
import numpy as np
import pytest

import minidl
from minidl import backend
from minidl.layers import Linear, Sequential, Tanh
from minidl.losses import MSELoss
from minidl.optim import (OPTIMIZERS, SGD, AdaGrad, Adam, AdamW, RMSProp, Rprop,
                          add_l1_grad, add_l2_grad, clip_grad_norm, l1_penalty, l2_penalty,
                          make_optimizer)

from conftest import torch_or_skip

N_IN, N_HID, N_OUT, BATCH, STEPS = 4, 8, 3, 16, 50

# (id, minidl class, minidl kwargs, torch class name, torch kwargs)
CASES = [
    ("sgd", SGD, dict(lr=0.1), "SGD", dict(lr=0.1)),
    ("sgd-wd", SGD, dict(lr=0.1, weight_decay=0.01), "SGD", dict(lr=0.1, weight_decay=0.01)),
    ("momentum", SGD, dict(lr=0.05, momentum=0.9), "SGD", dict(lr=0.05, momentum=0.9)),
    ("momentum-wd", SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01), "SGD",
     dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("nesterov", SGD, dict(lr=0.05, momentum=0.9, nesterov=True), "SGD",
     dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("nesterov-wd", SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02), "SGD",
     dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("adagrad", AdaGrad, dict(lr=0.1), "Adagrad", dict(lr=0.1)),
    ("adagrad-wd", AdaGrad, dict(lr=0.1, eps=1e-8, weight_decay=0.01), "Adagrad",
     dict(lr=0.1, eps=1e-8, weight_decay=0.01)),
    ("rmsprop", RMSProp, dict(lr=0.01), "RMSprop", dict(lr=0.01)),
    ("rmsprop-momentum", RMSProp, dict(lr=0.005, alpha=0.9, momentum=0.9), "RMSprop",
     dict(lr=0.005, alpha=0.9, momentum=0.9)),
    ("rmsprop-wd", RMSProp, dict(lr=0.01, eps=1e-6, weight_decay=0.01, momentum=0.5),
     "RMSprop", dict(lr=0.01, eps=1e-6, weight_decay=0.01, momentum=0.5)),
    ("adam", Adam, dict(lr=0.01), "Adam", dict(lr=0.01)),
    ("adam-betas-wd", Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
     "Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("adamw", AdamW, dict(lr=0.01), "AdamW", dict(lr=0.01)),
    ("adamw-wd", AdamW, dict(lr=0.01, betas=(0.85, 0.995), weight_decay=0.1), "AdamW",
     dict(lr=0.01, betas=(0.85, 0.995), weight_decay=0.1)),
    ("rprop", Rprop, dict(lr=0.01), "Rprop", dict(lr=0.01)),
    ("rprop-etas", Rprop, dict(lr=0.02, etas=(0.4, 1.5), step_sizes=(1e-4, 0.1)), "Rprop",
     dict(lr=0.02, etas=(0.4, 1.5), step_sizes=(1e-4, 0.1))),
]


def make_mlp(seed=0):
    """Linear-Tanh-Linear in float64, weights from a seeded generator."""
    minidl.set_default_dtype("float64")
    rng = minidl.default_rng(seed)
    return Sequential(Linear(N_IN, N_HID, rng=rng), Tanh(), Linear(N_HID, N_OUT, rng=rng))


def make_batches(seed=1, steps=STEPS):
    """Fixed random regression batches, as host arrays: [(x (B, in), y (B, out))]."""
    gen = np.random.default_rng(seed)
    return [(gen.standard_normal((BATCH, N_IN)), gen.standard_normal((BATCH, N_OUT)))
            for _ in range(steps)]


def minidl_step(model, crit, opt, x, y):
    """One training step: forward, loss, backward, optimizer step."""
    out = model.forward(backend.asarray(x))
    crit.forward(out, backend.asarray(y, dtype=out.dtype))
    model.backward(crit.backward())
    opt.step()


def backward_only(model, x, y):
    """Forward, MSE loss and backward on one batch: the gradients, no step."""
    out = model.forward(backend.asarray(x))
    crit = MSELoss()
    crit.forward(out, backend.asarray(y, dtype=out.dtype))
    model.backward(crit.backward())


def host_params(model):
    """{qualified name: host copy} of every parameter."""
    return {name: backend.to_numpy(layer.params[key]).copy()
            for name, layer, key in model.parameters()}


def torch_copy(torch, model):
    """The same MLP in torch, with the minidl weights copied in."""
    tmodel = torch.nn.Sequential(torch.nn.Linear(N_IN, N_HID), torch.nn.Tanh(),
                                 torch.nn.Linear(N_HID, N_OUT)).double()
    with torch.no_grad():
        for i in (0, 2):
            tmodel[i].weight.copy_(torch.from_numpy(backend.to_numpy(model[i].params["W"])))
            tmodel[i].bias.copy_(torch.from_numpy(backend.to_numpy(model[i].params["b"])))
    return tmodel


def torch_params(tmodel):
    return {f"{i}.{k}": getattr(tmodel[i], attr).detach().numpy()
            for i in (0, 2) for k, attr in (("W", "weight"), ("b", "bias"))}


# -- parity with torch.optim --------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_torch_for_50_steps(case):
    torch = torch_or_skip()
    _, cls, kw, tname, tkw = case
    model = make_mlp()
    tmodel = torch_copy(torch, model)
    opt = cls(model, **kw)
    topt = getattr(torch.optim, tname)(tmodel.parameters(), foreach=False, **tkw)
    crit, tcrit = MSELoss(), torch.nn.MSELoss()
    moved = 0.0
    start = host_params(model)
    for x, y in make_batches():
        minidl_step(model, crit, opt, x, y)
        topt.zero_grad()
        tcrit(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
    ours, theirs = host_params(model), torch_params(tmodel)
    for name in ours:
        moved = max(moved, np.abs(ours[name] - start[name]).max())
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-10,
                                   err_msg=f"{name} after {STEPS} steps")
    assert moved > 1e-3, "the parameters hardly moved, so the comparison says little"


def test_lr_changes_take_effect_like_torch():
    """A schedule that sets opt.lr between steps gives torch's sequence too (Adam, SGD)."""
    torch = torch_or_skip()
    for cls, tname, kw in ((SGD, "SGD", dict(lr=0.1, momentum=0.9)), (Adam, "Adam", {})):
        model = make_mlp()
        tmodel = torch_copy(torch, model)
        opt = cls(model, **kw)
        topt = getattr(torch.optim, tname)(tmodel.parameters(), foreach=False, **kw)
        for k, (x, y) in enumerate(make_batches(steps=20)):
            lr = 0.05 / (1 + k)
            opt.lr = lr
            for group in topt.param_groups:
                group["lr"] = lr
            minidl_step(model, MSELoss(), opt, x, y)
            topt.zero_grad()
            torch.nn.MSELoss()(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            topt.step()
        ours, theirs = host_params(model), torch_params(tmodel)
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-10)


def test_clip_grad_norm_matches_torch():
    torch = torch_or_skip()
    model = make_mlp()
    tmodel = torch_copy(torch, model)
    x, y = make_batches(steps=1)[0]
    crit = MSELoss()
    crit.forward(model.forward(x * 10), y)
    model.backward(crit.backward())
    torch.nn.MSELoss()(tmodel(torch.from_numpy(x * 10)), torch.from_numpy(y)).backward()
    norm = clip_grad_norm(model, 0.1)
    tnorm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.1)
    assert norm == pytest.approx(float(tnorm), rel=1e-12)
    assert norm > 0.1
    for i in (0, 2):
        np.testing.assert_allclose(model[i].grads["W"], tmodel[i].weight.grad.numpy(),
                                   rtol=0, atol=1e-14)
    total = np.sqrt(sum((g ** 2).sum() for layer in (model[0], model[2])
                        for g in layer.grads.values()))
    assert total == pytest.approx(0.1, rel=1e-5)


# -- each step equals its formula, restated ---------------------------------------------
def _one_layer(seed=3):
    minidl.set_default_dtype("float64")
    return Sequential(Linear(3, 2, rng=minidl.default_rng(seed)))


def _formula_check(opt_cls, kw, formula, steps=3):
    """Run ``steps`` updates with given gradients; compare to formula(theta, g, s, k)."""
    model = _one_layer()
    layer = model[0]
    opt = opt_cls(model, **kw)
    gen = np.random.default_rng(5)
    theta = {k: v.copy() for k, v in layer.params.items()}
    s = {k: {} for k in theta}
    for k in range(1, steps + 1):
        for key in theta:
            g = gen.standard_normal(theta[key].shape)
            if k == 3:
                g[0] = -g[0]  # a sign flip for Rprop
            layer.grads[key] = g.copy()
            theta[key] = formula(theta[key], g, s[key], k)
        opt.step()
        for key in theta:
            np.testing.assert_allclose(layer.params[key], theta[key], rtol=1e-13, atol=1e-15,
                                       err_msg=f"{opt_cls.__name__} step {k}, {key}")


def test_sgd_formula():
    lr, mu, lam = 0.1, 0.9, 0.01

    def polyak(theta, g, s, k):
        g = g + lam * theta
        s["m"] = mu * s.get("m", 0) + g
        return theta - lr * s["m"]

    def nesterov(theta, g, s, k):
        g = g + lam * theta
        s["m"] = mu * s.get("m", 0) + g
        return theta - lr * (g + mu * s["m"])

    _formula_check(SGD, dict(lr=lr), lambda th, g, s, k: th - lr * g)
    _formula_check(SGD, dict(lr=lr, momentum=mu, weight_decay=lam), polyak)
    _formula_check(SGD, dict(lr=lr, momentum=mu, nesterov=True, weight_decay=lam), nesterov)


def test_adagrad_formula():
    lr, eps = 0.5, 1e-10

    def adagrad(theta, g, s, k):
        s["u"] = s.get("u", 0) + g ** 2
        return theta - lr * g / (np.sqrt(s["u"]) + eps)

    _formula_check(AdaGrad, dict(lr=lr, eps=eps), adagrad)


def test_rmsprop_formula():
    lr, alpha, eps, mu = 0.01, 0.9, 1e-8, 0.5

    def rmsprop(theta, g, s, k):
        s["v"] = alpha * s.get("v", 0) + (1 - alpha) * g ** 2
        return theta - lr * g / (np.sqrt(s["v"]) + eps)

    def rmsprop_momentum(theta, g, s, k):
        s["v"] = alpha * s.get("v", 0) + (1 - alpha) * g ** 2
        s["m"] = mu * s.get("m", 0) + g / (np.sqrt(s["v"]) + eps)
        return theta - lr * s["m"]

    _formula_check(RMSProp, dict(lr=lr, alpha=alpha, eps=eps), rmsprop)
    _formula_check(RMSProp, dict(lr=lr, alpha=alpha, eps=eps, momentum=mu), rmsprop_momentum)


def test_adam_and_adamw_formula():
    lr, b1, b2, eps, lam = 0.01, 0.9, 0.99, 1e-8, 0.1

    def moments(g, s, k):
        s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0) + (1 - b2) * g ** 2
        return s["m"] / (1 - b1 ** k), s["v"] / (1 - b2 ** k)

    def adam(theta, g, s, k):
        mhat, vhat = moments(g + lam * theta, s, k)
        return theta - lr * mhat / (np.sqrt(vhat) + eps)

    def adamw(theta, g, s, k):
        mhat, vhat = moments(g, s, k)
        return (1 - lr * lam) * theta - lr * mhat / (np.sqrt(vhat) + eps)

    _formula_check(Adam, dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=lam), adam)
    _formula_check(AdamW, dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=lam), adamw)


def test_adam_first_step_is_lr_times_sign():
    """With bias correction, Adam's first step is lr * g / (|g| + eps) ~ lr sign(g)."""
    model = _one_layer()
    g = np.array([[1e-3, -2.0, 5.0], [-0.1, 3.0, -1e-2]])
    model[0].grads["W"] = g
    before = model[0].params["W"].copy()
    Adam(model, lr=0.1, eps=0.0).step()
    np.testing.assert_allclose(before - model[0].params["W"], 0.1 * np.sign(g), rtol=1e-12)


def test_rprop_formula():
    lr, em, ep, smin, smax = 0.05, 0.5, 1.2, 1e-3, 0.07

    def rprop(theta, g, s, k):
        gprev = s.get("gprev", np.zeros_like(g))
        eta = s.get("eta", np.full_like(g, lr))
        p = g * gprev
        eta = np.clip(eta * np.where(p > 0, ep, np.where(p < 0, em, 1.0)), smin, smax)
        gbar = np.where(p < 0, 0.0, g)
        s["gprev"], s["eta"] = gbar, eta
        return theta - np.sign(gbar) * eta

    _formula_check(Rprop, dict(lr=lr, etas=(em, ep), step_sizes=(smin, smax)), rprop, steps=5)


# -- convergence on optax's parabola -----------------------------------------------------
PARABOLA = [
    ("sgd", dict(lr=0.1), 200),
    ("momentum", dict(lr=0.05), 200),
    ("nesterov", dict(lr=0.05), 200),
    ("adagrad", dict(lr=0.5), 500),
    ("rmsprop", dict(lr=0.01, momentum=0.5), 1000),
    ("adam", dict(lr=0.05), 1000),
    ("adamw", dict(lr=0.05, weight_decay=1e-4), 1000),
    ("rprop", dict(lr=0.1), 200),
]


def _parabola_grads(model, target):
    """f(theta) = sum ||theta - target||^2 / 2 per array; g = theta - target."""
    for name, layer, key in model.parameters():
        layer.grads[key] = layer.params[key] - target[name]


@pytest.mark.parametrize("name,kw,steps", PARABOLA, ids=[p[0] for p in PARABOLA])
def test_converges_on_parabola(name, kw, steps):
    model = _one_layer()
    target = {"0.W": np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]), "0.b": np.array([2., -3.])}
    opt = make_optimizer(name, model, **kw)
    for _ in range(steps):
        _parabola_grads(model, target)
        opt.step()
    for name_, layer, key in model.parameters():
        # AdamW's decay pulls to a point lr*lambda-close to the target, well inside 1e-2
        np.testing.assert_allclose(layer.params[key], target[name_], atol=1e-2)


# -- checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_state_dict_round_trip_through_npz(case, tmp_path):
    _, cls, kw, _, _ = case
    batches = make_batches(steps=10)
    crit = MSELoss()
    straight = make_mlp()
    opt = cls(straight, **kw)
    for x, y in batches:
        minidl_step(straight, crit, opt, x, y)

    first = make_mlp()
    opt1 = cls(first, **kw)
    for x, y in batches[:5]:
        minidl_step(first, crit, opt1, x, y)
    state = opt1.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float)) for v in state.values())
    assert state["t"] == 5 and "state.0.W.step" in state
    np.savez(tmp_path / "opt.npz", **state)
    np.savez(tmp_path / "model.npz", **first.state_dict())

    second = make_mlp(seed=99)  # different weights, overwritten from the checkpoint
    with np.load(tmp_path / "model.npz") as f:
        second.load_state_dict(dict(f))
    opt2 = cls(second, **kw)
    opt2.lr = 123.0  # restored from the checkpoint
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        opt2.load_state_dict(dict(f))
    assert opt2.t == 5 and opt2.lr == opt1.lr
    for x, y in batches[5:]:
        minidl_step(second, crit, opt2, x, y)
    ours, ref = host_params(second), host_params(straight)
    for name in ref:
        np.testing.assert_array_equal(ours[name], ref[name])


def test_load_state_dict_rejects_mismatches():
    model = make_mlp()
    opt = Adam(model)
    _parabola_grads(model, {n: 0.0 for n, _, _ in model.parameters()})
    opt.step()
    state = opt.state_dict()
    bad = dict(state, **{"state.7.W.m": np.zeros(3)})
    with pytest.raises(ValueError, match="7.W"):
        Adam(make_mlp()).load_state_dict(bad)
    bad = dict(state, **{"state.0.W.m": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="shape"):
        Adam(make_mlp()).load_state_dict(bad)
    with pytest.raises(ValueError, match="state.<parameter name>.<slot>"):
        Adam(make_mlp()).load_state_dict({"bogus": 1})
    fresh = Adam(make_mlp())  # a bad lr: refused before the state and t are replaced
    with pytest.raises(ValueError, match=r"lr must lie in \[0, inf\), got -1.0"):
        fresh.load_state_dict(dict(state, lr=-1.0))
    assert fresh.state == {} and fresh.t == 0 and fresh.lr == 1e-3



@pytest.mark.parametrize("entry,value,match", [
    ("t", 2.5, "'t' must be an integer >= 0"), ("t", -1, "'t' must be an integer >= 0"),
    ("state.0.W.step", 1.5, "'state.0.W.step' must be an integer >= 1"),
    ("state.0.W.step", 0, "'state.0.W.step' must be an integer >= 1"),
])
def test_load_state_dict_refuses_a_count_that_is_not_a_count(entry, value, match):
    """t and the per-parameter step were truncated with int(); step 0 would divide Adam's
    bias correction 1 - beta^0 by zero."""
    model = make_mlp()
    opt = Adam(model)
    _parabola_grads(model, {n: 0.0 for n, _, _ in model.parameters()})
    opt.step()
    fresh = Adam(make_mlp())
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(dict(opt.state_dict(), **{entry: value}))
    assert fresh.state == {} and fresh.t == 0
# each optimizer, its settings (other than lr) and another value for each of them
SETTINGS = [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
     dict(momentum=0.5, nesterov=False, weight_decay=0.0)),
    (AdaGrad, dict(lr=0.1, eps=1e-10, weight_decay=1e-4), dict(eps=1e-8, weight_decay=0.0)),
    (RMSProp, dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.9, weight_decay=1e-4),
     dict(alpha=0.9, eps=1e-6, momentum=0.0, weight_decay=0.0)),
    (Adam, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4),
     dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0)),
    (AdamW, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
     dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0)),
    (Rprop, dict(lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50)),
     dict(etas=(0.4, 1.3), step_sizes=(1e-5, 10))),
]


@pytest.mark.parametrize("cls, settings, others", SETTINGS,
                         ids=[cls.__name__ for cls, _, _ in SETTINGS])
def test_load_state_dict_refuses_state_saved_with_other_settings(cls, settings, others,
                                                                 tmp_path):
    """A momentum buffer made with momentum 0.9 used to load silently into an SGD with
    momentum 0 (and Adam's moments into an Adam with other betas): the run then continued
    as another method. Every setting is saved, through .npz too, and compared."""
    model = make_mlp()
    opt = cls(model, **settings)
    _parabola_grads(model, {n: 0.5 for n, _, _ in model.parameters()})
    opt.step()
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        saved = dict(f)
    same = cls(make_mlp(), **settings).load_state_dict(saved)  # the same settings load
    assert same.t == 1
    for name, value in others.items():
        fresh = cls(make_mlp(), **dict(settings, **{name: value}))
        with pytest.raises(ValueError, match="saved with other settings"):
            fresh.load_state_dict(saved)
        assert fresh.state == {} and fresh.t == 0  # nothing was loaded


def test_load_state_dict_names_the_setting_that_differs():
    model = make_mlp()
    opt = SGD(model, lr=0.1, momentum=0.9)
    _parabola_grads(model, {n: 0.5 for n, _, _ in model.parameters()})
    opt.step()
    with pytest.raises(ValueError, match=r"momentum 0.9 \(this one: 0\)"):
        SGD(make_mlp(), lr=0.1).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="'hyper.beta1' is a setting SGD does not have"):
        SGD(make_mlp(), lr=0.1).load_state_dict({"hyper.beta1": 0.9})


def test_load_state_dict_refuses_another_methods_state():
    """Adam's state (m and v) used to load into SGD, which took Adam's m as its momentum."""
    model = make_mlp()
    adam = Adam(model)
    _parabola_grads(model, {n: 0.5 for n, _, _ in model.parameters()})
    adam.step()
    state = {k: v for k, v in adam.state_dict().items() if not k.startswith("hyper.")}
    sgd = SGD(make_mlp(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="state 'v', which SGD does not keep"):
        sgd.load_state_dict(state)
    assert sgd.state == {}


def test_load_state_dict_accepts_state_without_settings():
    """State saved before the settings were saved (no "hyper." entries) still loads."""
    model = make_mlp()
    opt = SGD(model, lr=0.1, momentum=0.9)
    _parabola_grads(model, {n: 0.5 for n, _, _ in model.parameters()})
    opt.step()
    old = {k: v for k, v in opt.state_dict().items() if not k.startswith("hyper.")}
    fresh = SGD(make_mlp(), lr=0.1, momentum=0.9).load_state_dict(old)
    assert fresh.t == 1 and set(fresh.state) == set(opt.state)


# -- the loop's details --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_parameters_without_gradient_are_skipped(name):
    model = make_mlp()
    opt = make_optimizer(name, model, lr=0.1)
    before = host_params(model)
    model[2].grads["W"] = np.ones_like(model[2].params["W"])  # only this one has a gradient
    opt.step()
    after = host_params(model)
    for key in ("0.W", "0.b", "2.b"):
        np.testing.assert_array_equal(after[key], before[key])
    assert np.abs(after["2.W"] - before["2.W"]).max() > 0
    assert set(opt.state) == {"2.W"}


def test_zero_grad_and_inplace_updates():
    model = make_mlp()
    W = model[0].params["W"]
    opt = SGD(model, lr=0.1)
    x, y = make_batches(steps=1)[0]
    minidl_step(model, MSELoss(), opt, x, y)
    assert model[0].params["W"] is W, "updates must be in place"
    opt.zero_grad()
    for _, layer, key in model.parameters():
        assert not layer.grads[key].any()
    opt.zero_grad(set_to_none=True)
    assert all(not layer.grads for layer in (model[0], model[2]))


def test_dtype_is_kept_in_float32():
    minidl.set_default_dtype("float32")
    model = Sequential(Linear(3, 2, rng=minidl.default_rng(0)))
    for name in sorted(OPTIMIZERS):
        opt = make_optimizer(name, model, lr=0.01)
        _parabola_grads(model, {n: 1.0 for n, _, _ in model.parameters()})
        for _ in range(2):
            opt.step()
        assert model[0].params["W"].dtype == np.float32
        for s in opt.state.values():
            for value in s.values():
                assert not hasattr(value, "dtype") or value.dtype == np.float32, name


def test_registry_and_make_optimizer():
    model = make_mlp()
    assert set(OPTIMIZERS) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
                               "adamw", "rprop"}
    opt = make_optimizer("Momentum", model, lr=0.1)
    assert isinstance(opt, SGD) and opt.momentum == 0.9 and not opt.nesterov
    opt = make_optimizer("nesterov", model, lr=0.1, momentum=0.5)
    assert opt.nesterov and opt.momentum == 0.5
    assert isinstance(make_optimizer("adamw", model), AdamW)
    with pytest.raises(ValueError, match="valid names are adagrad, adam, adamw"):
        make_optimizer("lbfgs", model)
    with pytest.raises(ValueError, match="pass lr"):
        make_optimizer("sgd", model)
    assert "lr=0.1" in repr(make_optimizer("sgd", model, lr=0.1))


# -- bad input ---------------------------------------------------------------------------
BAD = [
    (SGD, dict(lr=-0.1), "lr must lie in"),
    (SGD, dict(lr="fast"), "lr must be a real number"),
    (SGD, dict(lr=float("nan")), "lr must lie in"),
    (SGD, dict(lr=0.1, momentum=-0.5), "momentum"),
    (SGD, dict(lr=0.1, momentum=1.0), r"momentum must lie in \[0, 1\)"),
    (SGD, dict(lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (SGD, dict(lr=0.1, weight_decay=-1), "weight_decay"),
    (Adam, dict(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
    (Adam, dict(betas=(-0.1, 0.9)), r"betas\[0\]"),
    (Adam, dict(betas=0.9), "betas must be a pair"),
    (Adam, dict(eps=-1e-8), "eps"),
    (AdamW, dict(weight_decay=-0.01), "weight_decay"),
    (AdaGrad, dict(lr=-1), "lr"),
    (AdaGrad, dict(eps=-1), "eps"),
    (RMSProp, dict(alpha=1.5), "alpha"),
    (RMSProp, dict(momentum=-0.1), "momentum"),
    (Rprop, dict(etas=(1.5, 1.2)), "eta_minus"),
    (Rprop, dict(etas=(0.5, 0.9)), "eta_plus"),
    (Rprop, dict(step_sizes=(1.0, 0.1)), "eta_max"),
    (Rprop, dict(lr=0.0), "must be > 0"),
]


@pytest.mark.parametrize("cls,kw,match", BAD, ids=[f"{c.__name__}-{m}" for c, _, m in BAD])
def test_bad_hyperparameters(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(make_mlp(), **kw)


def test_bad_lr_assignment_and_model():
    opt = Adam(make_mlp())
    with pytest.raises(ValueError, match="lr must lie in"):
        opt.lr = -1.0
    with pytest.raises(TypeError, match="expects a model"):
        Adam([1, 2, 3])
    with pytest.raises(ValueError, match="no trainable parameters"):
        Adam(Tanh())


def test_gradient_shape_mismatch_is_named():
    model = make_mlp()
    opt = SGD(model, lr=0.1)
    model[0].grads["W"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="0.W"):
        opt.step()


# -- regularisation ----------------------------------------------------------------------
def test_l2_grad_equals_sgd_weight_decay():
    a, b = make_mlp(), make_mlp()
    opt_a, opt_b = SGD(a, lr=0.1, weight_decay=0.03), SGD(b, lr=0.1)
    crit = MSELoss()
    for x, y in make_batches(steps=5):
        minidl_step(a, crit, opt_a, x, y)
        out = b.forward(x)
        crit.forward(out, y)
        b.backward(crit.backward())
        add_l2_grad(b, 0.03, include_bias=True)
        opt_b.step()
    for name, value in host_params(a).items():
        np.testing.assert_allclose(host_params(b)[name], value, rtol=0, atol=1e-15)


def test_l2_grad_equals_adam_weight_decay_but_not_adamw():
    """The module docstring's claim: Adam's weight_decay is the L2 gradient term, AdamW's
    decoupled decay is something else."""
    crit = MSELoss()
    for cls, same in ((Adam, True), (AdamW, False)):
        a, b = make_mlp(), make_mlp()
        opt_a, opt_b = cls(a, lr=0.01, weight_decay=0.03), cls(b, lr=0.01, weight_decay=0.0)
        for x, y in make_batches(steps=5):
            minidl_step(a, crit, opt_a, x, y)
            crit.forward(b.forward(x), y)
            b.backward(crit.backward())
            add_l2_grad(b, 0.03, include_bias=True)
            opt_b.step()
        gap = max(np.abs(host_params(b)[name] - value).max()
                  for name, value in host_params(a).items())
        assert (gap < 1e-15) == same, f"{cls.__name__}: largest difference {gap:g}"


def test_penalties_and_their_gradients():
    model = make_mlp()
    lam = 0.2
    Ws = [model[0].params["W"], model[2].params["W"]]
    bs = [model[0].params["b"], model[2].params["b"]]
    assert l2_penalty(model, lam) == pytest.approx(0.5 * lam * sum((W ** 2).sum() for W in Ws))
    assert l1_penalty(model, lam, include_bias=True) == pytest.approx(
        lam * sum(np.abs(a).sum() for a in Ws + bs))
    model.zero_grad()
    add_l1_grad(model, lam)
    np.testing.assert_array_equal(model[0].grads["W"], lam * np.sign(Ws[0]))
    np.testing.assert_array_equal(model[0].grads["b"], 0.0)  # biases left alone by default
    # the L2 gradient is the derivative of the penalty (central differences)
    model.zero_grad()
    add_l2_grad(model, lam)
    W = model[0].params["W"]
    h = 1e-6
    W[1, 2] += h
    up = l2_penalty(model, lam)
    W[1, 2] -= 2 * h
    down = l2_penalty(model, lam)
    W[1, 2] += h
    assert model[0].grads["W"][1, 2] == pytest.approx((up - down) / (2 * h), rel=1e-6)


def test_l1_makes_weights_sparse():
    """Proximal-free subgradient L1 on a parabola drives small targets to (near) zero."""
    model = _one_layer()
    target = {"0.W": np.array([[0.01, -2.0, 0.02], [3.0, -0.01, -1.0]]), "0.b": np.zeros(2)}
    opt = SGD(model, lr=0.01)
    for _ in range(2000):
        _parabola_grads(model, target)
        add_l1_grad(model, 0.05)
        opt.step()
    W = model[0].params["W"]
    assert np.abs(W[[0, 1, 0], [0, 1, 2]]).max() < 0.02   # small entries pinned near 0
    assert np.abs(W[[0, 1, 1], [1, 0, 2]]).min() > 0.9    # large ones survive (shrunk by lam)


def test_clip_grad_norm_leaves_small_gradients_and_validates():
    model = make_mlp()
    model.zero_grad()
    model[0].grads["W"][0, 0] = 0.3
    before = {k: g.copy() for k, g in model[0].grads.items()}
    assert clip_grad_norm(model, 1.0) == pytest.approx(0.3)
    for k, g in model[0].grads.items():
        np.testing.assert_array_equal(g, before[k])
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(model, 0.0)
    with pytest.raises(ValueError, match="lam"):
        add_l2_grad(model, -1.0)


@pytest.mark.parametrize("dtype,scale", [("float32", 1e20), ("float64", 1e160)])
def test_clip_grad_norm_of_a_huge_but_finite_gradient(dtype, scale):
    """An exploding gradient is what clipping is for: a norm whose square overflows the
    dtype is still finite, so the gradient is scaled down to max_norm, not zeroed."""
    minidl.set_default_dtype(dtype)
    model = Sequential(Linear(2, 2, rng=minidl.default_rng(0)))
    model.zero_grad()
    g = np.array([[3.0, 0.0], [0.0, -4.0]])  # norm 5, times the scale
    model[0].grads["W"][...] = g * scale
    norm = clip_grad_norm(model, 2.0)
    assert norm == pytest.approx(5.0 * scale, rel=1e-6)
    np.testing.assert_allclose(model[0].grads["W"], g * 2.0 / 5.0, rtol=1e-6)
    np.testing.assert_array_equal(model[0].grads["b"], 0.0)


# -- backends ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_runs_on_each_backend(on_backend, name):
    """State lives on the parameters' device; results equal the NumPy run; checkpoints are
    host arrays and load back onto the device."""
    def run(steps):
        minidl.set_default_dtype("float64")
        model = Sequential(Linear(3, 2, rng=minidl.default_rng(0)))
        opt = make_optimizer(name, model, lr=0.05)
        for _ in range(steps):
            for _, layer, key in model.parameters():
                layer.grads[key] = layer.params[key] - 1.0
            opt.step()
        return model, opt

    model, opt = run(5)
    xp = backend.xp()
    for s in opt.state.values():
        for value in s.values():
            assert not backend.is_array(value) or backend.array_module(value) is xp
    state = opt.state_dict()
    assert all(not backend.is_array(v) or isinstance(v, np.ndarray) for v in state.values())
    fresh = make_optimizer(name, model, lr=0.05).load_state_dict(state)
    for key, s in fresh.state.items():
        for slot, value in s.items():
            if backend.is_array(value):
                assert backend.array_module(value) is xp
    result = host_params(model)
    minidl.set_backend("numpy")
    reference, _ = run(5)
    for key, value in host_params(reference).items():
        np.testing.assert_allclose(result[key], value, rtol=1e-12, atol=1e-14)


def test_a_loaded_state_is_a_copy_the_caller_keeps_unchanged():
    """SGD updates its momentum buffer in place; loading a state dict must copy it, or a
    step after loading would change the dict (a checkpoint held in memory) it came from."""
    import numpy as np

    import minidl
    from minidl.layers import Linear
    from minidl.optim import SGD
    rng = minidl.default_rng(0)
    model = Linear(3, 2, rng=rng)
    opt = SGD(model, lr=0.1, momentum=0.9)
    for _ in range(2):
        model.grads = {k: minidl.xp().ones_like(v) for k, v in model.params.items()}
        opt.step()
    saved = opt.state_dict()
    before = {k: np.array(v, copy=True) for k, v in saved.items()}
    opt2 = SGD(model, lr=0.1, momentum=0.9)
    opt2.load_state_dict(saved)
    opt2.step()
    for k, v in saved.items():
        assert np.array_equal(np.asarray(v), before[k]), k


# -- parameters updated side by side ------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_updates_in_threads_equal_the_loop_to_the_last_bit(case, monkeypatch):
    """With two threads allowed, minidl's own optimizers update the parameters in threads
    (``Optimizer._updates_in_threads``): the same bits as one parameter after the other."""
    import threadpoolctl
    from minidl import parallel
    from minidl.optim import base as optim_base
    _, cls, kw, _, _ = case
    results, pieces_seen = [], []
    real_map = parallel.map_pieces

    def spy(work, pieces, like=None):
        pieces_seen.append((len(list(pieces)), parallel.workers(like)))
        return real_map(work, pieces, like=like)

    monkeypatch.setattr(parallel, "map_pieces", spy)
    monkeypatch.setattr(optim_base, "THREADED_UPDATE_VALUES", 0)  # the tiny MLP too
    for threads in (1, 2):
        model = make_mlp()
        opt = cls(model, **kw)
        for x, y in make_batches(steps=5):
            with threadpoolctl.threadpool_limits(1):  # the same gradients on both runs
                backward_only(model, x, y)
            with threadpoolctl.threadpool_limits(threads):
                opt.step()
        results.append((host_params(model), opt.state_dict()))
    assert (4, 2) in pieces_seen, "the two-thread run did not update its 4 parameters in threads"
    (p1, s1), (p2, s2) = results
    for name in p1:
        np.testing.assert_array_equal(p1[name], p2[name])
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])


def test_an_optimizer_of_your_own_updates_one_parameter_after_the_other():
    """A subclass (a student's, say) may share state between parameters in ``update``: it
    gets the plain loop, in the order of ``model.parameters()``, also with threads."""
    import threadpoolctl

    class Counting(SGD):
        def update(self, theta, g, s):
            self.order.append(theta.shape)  # shared between parameters: not thread-safe
            super().update(theta, g, s)

    from minidl.optim import base as optim_base
    optim_base.THREADED_UPDATE_VALUES, saved = 0, optim_base.THREADED_UPDATE_VALUES
    model = make_mlp()
    opt = Counting(model, lr=0.1)
    opt.order = []
    assert not opt._updates_in_threads() and SGD(model, lr=0.1)._updates_in_threads()
    try:
        with threadpoolctl.threadpool_limits(2):
            minidl_step(model, MSELoss(), opt, *make_batches(steps=1)[0])
    finally:
        optim_base.THREADED_UPDATE_VALUES = saved
    assert opt.order == [tuple(layer.params[key].shape) for _, layer, key in model.parameters()]


def test_small_models_update_in_the_plain_loop(monkeypatch):
    """Below ``THREADED_UPDATE_VALUES`` values (the tiny MLP here) the threads would cost
    more than they save: the plain loop runs even with two threads allowed."""
    import threadpoolctl
    from minidl import parallel
    model = make_mlp()
    opt = SGD(model, lr=0.1)
    backward_only(model, *make_batches(steps=1)[0])
    calls = []
    monkeypatch.setattr(parallel, "map_pieces", lambda *a, **k: calls.append(a))
    with threadpoolctl.threadpool_limits(2):
        opt.step()
    assert calls == [] and opt.t == 1


def test_a_bad_gradient_changes_nothing_not_even_earlier_parameters():
    """The shape and device checks run over every parameter before any is updated."""
    model = make_mlp()
    opt = Adam(model, lr=0.1)
    backward_only(model, *make_batches(steps=1)[0])
    before = host_params(model)
    model[2].grads["b"] = np.zeros(7)  # the last parameter's gradient has the wrong shape
    with pytest.raises(ValueError, match="2.b"):
        opt.step()
    after = host_params(model)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    assert opt.t == 0 and opt.state == {}
