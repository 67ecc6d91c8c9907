# %% [markdown]
# # Lesson 14: learning-rate schedules and parameter averaging (EMA)
#
# Seed: 004 (Ilin, "Deep learning optimization"), "model fine-tuning": with a constant
# learning rate, mini-batch SGD does not settle at a minimum -- the noise of the gradient
# keeps the iterate theta_t jittering around it. Two remedies:
#
# * **anneal** the learning rate towards the end of training (step decay, 1/k, cosine...);
# * **average** the parameters: theta'_t = gamma theta'_{t-1} + (1 - gamma) theta_t, an
#   exponential moving average (EMA), and evaluate theta' instead of theta.
#
# The claim we measure: *at a constant learning rate the EMA of the weights is less noisy
# than the last iterate* (and, as a consequence, sits closer to the minimum). We use
# minidl's schedules (`minidl.optim.StepDecay`, `Cosine`, ...), `LRScheduler` and
# `minidl.optim.EMA`.
#
# Run: `python lessons/14_schedules_and_ema.py` (`MINIDL_FAST=1` for the quick version).

# %%
import matplotlib.pyplot as plt

import minidl
from minidl import data, models
from minidl.layers import Linear
from minidl.lesson import FAST, savefig
from minidl.lesson import mnist as lesson_mnist
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.optim import (EMA, SGD, Constant, Cosine, Inverse, InverseSqrt, LinearWarmup,
                          LRScheduler, StepDecay)
from minidl.train import evaluate

xp = minidl.xp()
rng = minidl.default_rng(0)

# %% [markdown]
# ## 1. The schedules
# Each schedule is a function k -> lr_k of the update count k. **Expected plot:** the
# constant line; a staircase (step decay x0.1 every 300 updates); 1/sqrt(k) and 1/k
# decays; a cosine from the peak to 0; and the same cosine after a 100-step linear
# warm-up.

# %%
T = 1000
schedules = {"Constant(0.1)": Constant(0.1),
             "StepDecay(0.1, 300, 0.1)": StepDecay(0.1, 300, 0.1),
             "InverseSqrt(0.1 * 10, k0=100)": InverseSqrt(1.0, k0=100),
             "Inverse(0.1 * 50, k0=50)": Inverse(5.0, k0=50),
             "Cosine(0.1, 1000)": Cosine(0.1, T),
             "LinearWarmup(Cosine(0.1, 900), 100)": LinearWarmup(Cosine(0.1, T - 100), 100)}
curves = {name: [s(k) for k in range(T + 1)] for name, s in schedules.items()}
for name, lrs in curves.items():
    print(f"{name:<38} lr_0 = {lrs[0]:.4f}  lr_500 = {lrs[500]:.4f}  lr_1000 = {lrs[T]:.4f}")
assert curves["StepDecay(0.1, 300, 0.1)"][299] == 0.1
assert abs(curves["StepDecay(0.1, 300, 0.1)"][300] - 0.01) < 1e-12
assert curves["Cosine(0.1, 1000)"][T] == 0.0
assert abs(max(curves["LinearWarmup(Cosine(0.1, 900), 100)"]) - 0.1) < 1e-12

# %% [markdown]
# ## 2. Noisy SGD in two dimensions
# Least squares with two features, y = x^T w_true + noise, trained by SGD with a
# mini-batch of ONE example at a constant learning rate: each step follows one example's
# gradient, so theta_t keeps wandering around the minimiser w* (from `lstsq`). The EMA
# (gamma = 0.99, about the last 100 steps) averages the wandering out. Note the window:
# consecutive SGD iterates are strongly correlated (along the flat direction the pull back
# to w* takes ~1 / (lr lambda_min) = 60 steps), so an average over only ~20 steps
# (gamma = 0.95) smooths the path but barely gets closer to w*. Try it.
# **Expected plot:** on the contours of the full loss, the SGD path is a jittery cloud
# around w*; the EMA path is smooth and stays near the centre of the cloud.

# %%
minidl.set_default_dtype("float64")
N2 = 200
X2 = xp.asarray(rng.standard_normal((N2, 2))) * xp.asarray([1.0, 0.4])    # (N2, 2)
y2 = (X2 @ xp.asarray([1.0, -2.0]) + 0.5 * xp.asarray(rng.standard_normal(N2)))[:, None]
w2_star = xp.linalg.lstsq(X2, y2, rcond=None)[0][:, 0]                    # (2,)
crit = MSELoss()

model2 = Linear(2, 1, bias=False, rng=minidl.default_rng(1))
model2.params["W"][:] = xp.asarray([[-1.0, 1.0]])                         # start far away
opt2 = SGD(model2, lr=0.05)
ema2 = EMA(model2, gamma=0.99)
steps2 = 3000
path, path_ema = [], []
for k in range(steps2):
    i = int(rng.integers(N2))
    crit.forward(model2.forward(X2[i:i + 1]), y2[i:i + 1])
    model2.backward(crit.backward())
    opt2.step()
    ema2.update()
    path.append(minidl.to_numpy(model2.params["W"][0]).copy())
    path_ema.append(minidl.to_numpy(ema2.averages[ema2.param_list[0][0]][0]).copy())
path, path_ema = xp.asarray(path), xp.asarray(path_ema)                   # (steps2, 2) each
late = slice(steps2 // 2, None)                                           # after the transient
dist = xp.linalg.norm(path[late] - w2_star, axis=1)
dist_ema = xp.linalg.norm(path_ema[late] - w2_star, axis=1)
print(f"second half: mean ||theta_t - w*|| = {float(dist.mean()):.3f} (last iterate), "
      f"{float(dist_ema.mean()):.3f} (EMA)")
move = float(xp.linalg.norm(xp.diff(path[late], axis=0), axis=1).mean())
move_ema = float(xp.linalg.norm(xp.diff(path_ema[late], axis=0), axis=1).mean())
print(f"second half: mean step-to-step movement {move:.4f} (last iterate), {move_ema:.4f} (EMA)")
assert move_ema < 0.2 * move, "the EMA should move much less from step to step"
assert float(dist_ema.mean()) < 0.7 * float(dist.mean()), "and sit closer to w*"

# %% [markdown]
# ## 3. An MLP on MNIST: constant LR, EMA, and annealing
# A 784-100-10 ReLU MLP, SGD with momentum 0.9 and batch 32, a rather large constant
# learning rate 0.05. Every few updates we evaluate on the same 2,000 held-out digits
# (from MNIST's training split but never trained on, so this is the loss on new data, not
# the training loss SGD minimises) both the last iterate and the EMA (gamma = 0.99,
# `with ema.averaged(): evaluate(...)`). A third run
# uses the same peak rate with a cosine schedule through `LRScheduler`.
#
# Our measure of noise: the standard deviation of the evaluated loss around its own
# smoothed trend over the second half of training (so a curve that is still going down
# is not counted as noisy). **Expected plot:** the constant-LR last iterate jitters; its
# EMA is a smooth curve below it; the cosine run is noisy early and settles as its rate
# goes to 0.

# %%
minidl.set_default_dtype("float32")
n_train = 4000 if FAST else 50000
X_all, Y_all, _, _ = lesson_mnist(n_train + 2000, 1, flatten=False)   # (n + 2000, 1, 28, 28)
X, Y = X_all[:n_train], Y_all[:n_train]               # (n_train, 1, 28, 28) for training
Xe, Ye = X_all[n_train:], Y_all[n_train:]             # (2000, 1, 28, 28) held out
ce = SoftmaxCrossEntropy()
eval_loader = data.DataLoader(Xe, Ye, 1000, shuffle=False)
steps = 1200 if FAST else 6000
eval_every = 20 if FAST else 50


def train(schedule, track_ema):
    model = models.mlp([784, 100, 10], rng=minidl.default_rng(0))
    opt = SGD(model, lr=0.05, momentum=0.9)
    sched = LRScheduler(opt, schedule)
    ema = EMA(model, gamma=0.99) if track_ema else None
    loader = data.DataLoader(X, Y, 32, rng=minidl.default_rng(1))
    at, last, averaged = [], [], []
    k = 0
    while k < steps:
        for xb, yb in loader:
            ce.forward(model.forward(xb), yb)
            model.backward(ce.backward())
            opt.step()
            sched.step()
            if ema is not None:
                ema.update()
            k += 1
            if k % eval_every == 0:
                at.append(k)
                last.append(evaluate(model, ce, eval_loader)["loss"])
                if ema is not None:
                    with ema.averaged():
                        averaged.append(evaluate(model, ce, eval_loader)["loss"])
            if k == steps:
                break
    return at, xp.asarray(last), xp.asarray(averaged)


at, loss_const, loss_ema = train(Constant(0.05), track_ema=True)
_, loss_cos, _ = train(Cosine(0.05, steps), track_ema=False)


def noise(curve, width=5):
    """Std of curve minus its centred moving average (width points), over the second half."""
    kernel = xp.ones(width) / width
    trend = xp.convolve(curve, kernel, mode="same")
    half = slice(len(curve) // 2, len(curve) - width)
    return float((curve - trend)[half].std())


second = slice(len(at) // 2, None)
table = {"constant, last iterate": loss_const, "constant, EMA 0.99": loss_ema,
         "cosine, last iterate": loss_cos}
for name, curve in table.items():
    print(f"{name:<24} mean loss (2nd half) {float(curve[second].mean()):.4f}   "
          f"noise {noise(curve):.4f}   final {float(curve[-1]):.4f}")
assert noise(loss_ema) < 0.5 * noise(loss_const), "the EMA should be much less noisy"
assert float(loss_ema[second].mean()) < float(loss_const[second].mean())
assert float(loss_cos[-1]) < float(loss_const[second].mean()), "annealing should help too"

# %%
fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
for name, lrs in curves.items():
    axes[0].plot(lrs, label=name)
axes[0].set(xlabel="update k", ylabel="learning rate", title="minidl.optim schedules")
axes[0].legend(fontsize=7)

g0 = xp.linspace(float(w2_star[0]) - 2.3, float(w2_star[0]) + 1.0, 80)
g1 = xp.linspace(float(w2_star[1]) - 1.0, float(w2_star[1]) + 3.3, 80)
A, B = xp.meshgrid(g0, g1)                                                # (80, 80) each
Wgrid = xp.stack([A.ravel(), B.ravel()], axis=1)                          # (6400, 2)
Lgrid = (((X2 @ Wgrid.T) - y2) ** 2).mean(axis=0).reshape(A.shape)        # (80, 80)
axes[1].contour(minidl.to_numpy(A), minidl.to_numpy(B), minidl.to_numpy(Lgrid), 20,
                cmap="Greys", linewidths=0.6)
p, pe = minidl.to_numpy(path), minidl.to_numpy(path_ema)
axes[1].plot(p[:, 0], p[:, 1], "-", lw=0.5, color="C0", alpha=0.7, label="SGD, batch 1")
axes[1].plot(pe[:, 0], pe[:, 1], "-", lw=1.8, color="C3", label="EMA, gamma 0.99")
axes[1].plot(*minidl.to_numpy(w2_star), "k*", ms=12, label="w* (lstsq)")
axes[1].set(xlabel="w1", ylabel="w2", title="Constant lr 0.05: iterates vs their EMA")
axes[1].legend(fontsize=8)

axes[2].plot(at, minidl.to_numpy(loss_const), lw=1, label="constant lr, last iterate")
axes[2].plot(at, minidl.to_numpy(loss_ema), lw=2, label="constant lr, EMA 0.99")
axes[2].plot(at, minidl.to_numpy(loss_cos), lw=1, label="cosine lr, last iterate")
axes[2].set(xlabel="update", ylabel="loss on 2,000 held-out digits", yscale="log",
            title="MLP on MNIST, SGD-m 0.05, batch 32")
axes[2].legend(fontsize=8)
fig.tight_layout()
print("saved", savefig(fig, "14_schedules_and_ema", dpi=85))

# %% [markdown]
# ## What we measured
# * In 2-D, the EMA sits markedly closer to w* than the batch-1 SGD iterate it averages.
# * On MNIST at a constant rate, the EMA's loss curve is smooth (noise well under half of
#   the last iterate's) and lower on average; annealing the rate (cosine) brings the last
#   iterate itself down by the end.
# * EMA is not free: it lags. Early in training, when theta moves fast, the average trails
#   behind (look at the first few hundred updates of the EMA curve).
#
# ## Exercises
# 1. Vary gamma in {0.9, 0.99, 0.999}. Where does the lag start to cost more than the
#    smoothing gains? Relate it to 1 / (1 - gamma) steps.
# 2. Combine both remedies: cosine schedule *and* EMA. Is the EMA still better than the
#    last iterate at the very end, when the rate is near zero? Why (not)?
# 3. The EMA starts at the initial weights (theta'_0 = theta_0) with no bias correction.
#    Add Adam-style bias correction theta'_t / (1 - gamma^t) -- careful, that is only
#    correct if the average starts at zero -- and compare the first 200 updates.
