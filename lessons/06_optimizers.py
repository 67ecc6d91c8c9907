# %% [markdown]
# # Lesson 6: SGD, momentum, Nesterov, AdaGrad, RMSProp, Adam and Rprop
#
# *Seeds: lecture 004 (Ilin: momentum, Rprop, RMSProp, Adam and "why Adam works well")
# and lecture 001 (Ghauch and Ghadikolaei: SGD, momentum, AdaGrad, RMSProp, Adam).*
#
# Every method here is minidl's own (`minidl.optim`, each equal to `torch.optim` step for
# step); the update rules are in their module docstrings:
#
# | method | step |
# |---|---|
# | SGD | theta -= eta g |
# | momentum | v = mu v + g; theta -= eta v |
# | Nesterov | v = mu v + g; theta -= eta (g + mu v) |
# | AdaGrad | s += g^2; theta -= eta g / (sqrt(s) + delta) |
# | RMSProp | s = beta s + (1 - beta) g^2; theta -= eta g / (sqrt(s) + delta) |
# | Adam | m, v = moving averages of g, g^2 (bias-corrected); theta -= eta m / (sqrt(v) + delta) |
# | Rprop | per-weight step size grown x1.2 while sign(g) holds, shrunk x0.5 when it flips; theta -= step * sign(g) |
#
# We race them on a valley and on MNIST, then check three claims of the lectures: Rprop fails
# with mini-batches, Adam's step is bounded by about eta and does not care about the scale
# of the loss, and AdaGrad's step decays faster than RMSProp's.
#
# Run it top to bottom: `python lessons/06_optimizers.py`.

# %%
import matplotlib.pyplot as plt

import minidl
from minidl import curvature, lesson
from minidl.data import DataLoader
from minidl.layers import Linear, ReLU, Sequential
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.optim import SGD, AdaGrad, Adam, RMSProp, Rprop

minidl.set_default_dtype("float64")
xp = minidl.xp()

# %% [markdown]
# ## 1. A valley
# The quadratic 1/2 w'Aw - b'w with curvatures 0.5 and 25 (kappa = 50), axis-aligned,
# through minidl (`lesson.quadratic`: a `Linear` layer under `MSELoss` with Hessian A).
# 60 steps each: SGD at its optimal step 2 / (lambda_1 + lambda_M), momentum at the
# optimum of Goh (2017), Nesterov at the best (eta, mu) of its own 2x2 iteration matrix
# (Goh's momentum setting makes it diverge: try it), the others tuned by hand. The plot
# should show: SGD zig-zags across and crawls along the valley; momentum and Nesterov
# build up speed along it (momentum, at Goh's setting, also overshoots far across the
# valley in its first steps: its panel is taller); the adaptive methods divide each
# coordinate by its own gradient scale, so they head for the minimum almost diagonally
# (but Adam, at a fixed step, keeps circling it); Rprop moves in sign steps.

# %%
A = xp.diag(xp.asarray([0.5, 25.0]))                   # (2, 2)
w_star = xp.asarray([1.0, 0.5])
b = A @ w_star
w0 = xp.asarray([-4.0, 2.0])
mse = MSELoss()
METHODS = {
    "SGD": lambda m: SGD(m, lr=0.078),                 # 2 / (lambda_1 + lambda_M)
    "momentum": lambda m: SGD(m, lr=0.12, momentum=0.56),   # Goh's optimum (exercise 2.2)
    "Nesterov": lambda m: SGD(m, lr=0.05, momentum=0.7, nesterov=True),
    "AdaGrad": lambda m: AdaGrad(m, lr=1.0),
    "RMSProp": lambda m: RMSProp(m, lr=0.1),
    "Adam": lambda m: Adam(m, lr=0.3),
    "Rprop": lambda m: Rprop(m, lr=0.1),
}


def valley_path(make, steps=60):
    model, X, y = lesson.quadratic(A, b)
    model.params["W"][0] = w0
    opt = make(model)
    path, losses = [minidl.to_numpy(model.params["W"][0]).copy()], []
    for _ in range(steps):
        losses.append(mse.forward(model.forward(X), y))
        model.backward(mse.backward())
        opt.step()
        path.append(minidl.to_numpy(model.params["W"][0]).copy())
    return path, losses


paths = {name: valley_path(make) for name, make in METHODS.items()}
L_star = -0.5 * float(w_star @ A @ w_star)              # up to the constant of the MSE
model, X, y = lesson.quadratic(A, b)
offset = mse.forward(model.forward(X), y)               # the MSE at w = 0 is the constant
gaps = {name: losses[-1] - offset - L_star for name, (_, losses) in paths.items()}
for name, gap in gaps.items():
    print(f"{name:<9} loss - optimum after 60 steps: {gap:.2e}")
assert gaps["momentum"] < 1e-3 * gaps["SGD"], "momentum beats SGD on a valley"
assert gaps["Nesterov"] < 1e-2 * gaps["SGD"]
assert gaps["RMSProp"] < 1e-3 * gaps["SGD"], "so does a per-coordinate scaling here"

# %%
g1, g2 = xp.meshgrid(xp.linspace(-5, 3, 200), xp.linspace(-4.5, 5.5, 400))
E = xp.stack([g1.ravel(), g2.ravel()], axis=1) - w_star   # (80000, 2)
excess = xp.sqrt(0.5 * ((E @ A) * E).sum(axis=1)).reshape(g1.shape)
levels = [0.5 * i for i in range(1, 40)]                   # same spacing in every panel
fig, axes = plt.subplots(2, 4, figsize=(13, 5.6))
for ax, (name, (path, _)) in zip(axes.ravel(), paths.items()):
    ax.contour(minidl.to_numpy(g1), minidl.to_numpy(g2), minidl.to_numpy(excess), levels=levels,
               colors="grey", linewidths=0.5)
    p = xp.asarray(path)
    ax.plot(minidl.to_numpy(p[:, 0]), minidl.to_numpy(p[:, 1]), "o-", ms=2, lw=1, color="C3")
    ax.plot(float(w_star[0]), float(w_star[1]), "k*", ms=9)
    ax.set_xlim(-5, 3)
    # momentum's first steps overshoot across the valley: widen its panel to show them
    ax.set_ylim(min(-1.5, float(p[:, 1].min()) - 0.3), max(2.5, float(p[:, 1].max()) + 0.3))
    ax.set(xlabel="w1", ylabel="w2")
    ax.set_title(f"{name}: L - L* = {gaps[name]:.1e}", fontsize=10)
ax = axes.ravel()[-1]
for name, (_, losses) in paths.items():
    ax.semilogy([l - offset - L_star + 1e-16 for l in losses], label=name)
ax.set_xlabel("step")
ax.set_ylabel("L - L*")
ax.set_title("loss above the optimum", fontsize=10)
ax.legend(fontsize=7)
fig.tight_layout()
print(lesson.savefig(fig, "06_optimizers", dpi=70))

# %% [markdown]
# ## 2. Rprop with mini-batches: lecture 004's +0.1 x9, -0.9 x1 example
# "Consider a weight that gets a gradient of +0.1 on nine mini-batches and -0.9 on the
# tenth: we want it to stay roughly where it is. Rprop would increment the weight nine
# times and decrement it once by about the same amount, so the weight would grow a lot."
#
# One weight w in a `Linear(1, 1, bias=False)`; mini-batch k gives the loss w c_k, so its
# gradient is c_k = +0.1 nine times, then -0.9. The mean gradient is exactly zero.
# (minidl's Rprop is PyTorch's: after a sign flip it even skips the step, so the -0.9 does
# not move the weight back at all.) The plot should show SGD wobbling around 0, Rprop
# running away, and RMSProp and Adam drifting slowly -- the -0.9 enters its own running
# average of g^2 before the step, so it counts a little less than the nine +0.1s.

# %%
def sign_example(make, cycles=100):
    model = Linear(1, 1, bias=False)
    model.params["W"][...] = 0.0
    opt = make(model)
    trace = []
    for step in range(10 * cycles):
        c = 0.1 if step % 10 < 9 else -0.9
        model.forward(xp.asarray([[c]]))                # out = w c
        model.backward(xp.ones((1, 1)))                 # dL/dout = 1, so dL/dw = c
        opt.step()
        trace.append(float(model.params["W"][0, 0]))
    return trace


traces = {"SGD": sign_example(lambda m: SGD(m, lr=0.01)),
          "RMSProp": sign_example(lambda m: RMSProp(m, lr=0.01)),
          "Adam": sign_example(lambda m: Adam(m, lr=0.01)),
          "Rprop": sign_example(lambda m: Rprop(m, lr=0.01))}
for name, t in traces.items():
    print(f"{name:<8} w after 1000 mini-batches: {t[-1]:+.4g}")
assert abs(traces["Rprop"][-1]) > 1000 * abs(traces["SGD"][-1])
assert abs(traces["Rprop"][-1]) > 100 * max(abs(traces["RMSProp"][-1]),
                                            abs(traces["Adam"][-1]))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, t in traces.items():
    axes[0].plot(t, label=name)
    if name != "Rprop":
        axes[1].plot(t, label=name)
axes[0].set_yscale("symlog", linthresh=0.1)
axes[0].set_title("w under gradients +0.1 (x9), -0.9 (x1): mean 0")
axes[1].set_title("the same without Rprop")
for ax in axes:
    ax.set_xlabel("mini-batch")
    ax.set_ylabel("w")
    ax.legend(fontsize=8)
fig.tight_layout()
print(lesson.savefig(fig, "06_rprop_minibatch"))

# %% [markdown]
# ## 3. The race on MNIST
# A 784-100-10 ReLU network, mini-batches of 100, the same initial weights and batch
# order for every method, learning rates at common values, float32 as in practice. We
# record the mini-batch loss
# and the size of every step, ||Delta theta|| / sqrt(P) (the root-mean-square change per
# parameter), which sections 4 and 5 use.

# %%
minidl.set_default_dtype("float32")
x_train, y_train, _, _ = lesson.mnist(n_train=lesson.choose(20000, 4000), n_test=1)
epochs = lesson.choose(3, 2)
ce = SoftmaxCrossEntropy()


def mnist_net():
    r = minidl.default_rng(0)
    return Sequential(Linear(784, 100, rng=r), ReLU(), Linear(100, 10, rng=r))


def race(make, loss_scale=1.0, steps=None, eta=None):
    """Train a fresh net. Returns the mini-batch losses, the RMS step sizes, per step the
    largest single-weight step and (given ``eta``) the fraction of weights that moved by
    more than eta, and the final parameters."""
    model = mnist_net()
    opt = make(model)
    loader = DataLoader(x_train, y_train, batch_size=100, rng=minidl.default_rng(1))
    P = curvature.num_params(model)
    losses, rms_steps, max_steps, above = [], [], [], []
    for _ in range(epochs):
        for xb, yb in loader:
            before = curvature.flatten_params(model)            # (P,) a copy
            losses.append(ce.forward(model.forward(xb), yb))
            model.backward(loss_scale * ce.backward())          # gradient of scale * loss
            opt.step()
            delta = curvature.flatten_params(model) - before    # (P,)
            rms_steps.append(float(xp.linalg.norm(delta)) / P ** 0.5)
            max_steps.append(float(abs(delta).max()))
            if eta is not None:
                above.append(float((abs(delta) > 1.001 * eta).mean()))
            if steps is not None and len(losses) == steps:
                break
    return losses, rms_steps, (max_steps, above), curvature.flatten_params(model)


RACE = {
    "SGD": lambda m: SGD(m, lr=0.1),
    "momentum": lambda m: SGD(m, lr=0.05, momentum=0.9),
    "Nesterov": lambda m: SGD(m, lr=0.05, momentum=0.9, nesterov=True),
    "AdaGrad": lambda m: AdaGrad(m, lr=0.01),
    "RMSProp": lambda m: RMSProp(m, lr=0.001),
    "Adam": lambda m: Adam(m, lr=0.001),
    "Rprop": lambda m: Rprop(m, lr=0.001),
}
runs = {name: race(make, eta=0.001 if name == "Adam" else None)
        for name, make in RACE.items()}
window = 20
for name, (losses, *_rest) in runs.items():
    print(f"{name:<9} mean loss of the last {window} mini-batches: "
          f"{sum(losses[-window:]) / window:.3f}")
final = {name: sum(r[0][-window:]) / window for name, r in runs.items()}
assert max(final.values()) < 1.0, "every method learns (the start is ln 10 = 2.3)"
rprop_ratio = final["Rprop"] / min(final.values())
print(f"Rprop's loss / the best method's: {rprop_ratio:.2f}")
if lesson.FAST:
    assert rprop_ratio < 2        # measured 1.1 after 80 steps
else:
    assert rprop_ratio > 2        # measured 3.0 after 600 steps

# %% [markdown]
# Measured: mini-batch Rprop keeps up for the first ~100 steps (fast mode: its loss is
# ~1.1x the best method's), then falls behind (full mode, 600 steps: ~3x). The runaway of
# section 2 needs a weight whose gradient sign is mostly one way while its mean is zero;
# early on the gradients mostly agree in sign and sign-steps are fine, later, near a
# minimum, the mini-batch noise decides the signs and Rprop's steps stop following the
# mean gradient.

# %% [markdown]
# ## 4. Adam: steps bounded by ~eta, and blind to the loss's scale
# "In Adam the effective step |Delta| ~ eta |E[g]| / sqrt(E[g^2]) <= eta" (lecture 004); the
# paper's worst case is eta (1 - beta1) / sqrt(1 - beta2) = 3.16 eta for the default betas.
# From the race: the largest change of any single weight in each step, divided by eta.
# Then the same Adam run with the loss multiplied by 1000 and by 1/1000 (the gradients
# scale with it): the parameters should follow the same path, while SGD's steps would
# scale by the same factor.
#
# Measured: the bound eta holds for all but a tiny share of the weight updates (printed
# below), but in most steps *some* weight moves by more than eta -- up to 1.6-2.3 eta in
# our runs, when a gradient suddenly grows and the first moment's average catches up
# faster than the second's. The worst-case bound 3.16 eta is never reached.
#
# The scale invariance holds exactly (to float32 rounding) only when the small constant
# eps = delta in sqrt(vhat) + delta scales with the loss too. With the default eps = 1e-8
# the loss x 1000 run stays within a few percent (0.3% in fast mode, 2.4% in full mode in
# our runs), but the loss / 1000 run drifts by ~10%: its gradients are so small that eps
# is no longer negligible against sqrt(vhat) for the weights with tiny gradients.

# %%
eta = 0.001
_, _, (adam_max, adam_above), _ = runs["Adam"]
ratio = [s / eta for s in adam_max]
share = sum(adam_above) / len(adam_above)
print(f"Adam over {len(ratio)} steps: the largest single-weight step is {max(ratio):.3f} eta "
      f"(median over steps {sorted(ratio)[len(ratio) // 2]:.3f} eta); of all weight "
      f"updates, {100 * share:.3f}% exceed eta")
assert max(ratio) <= 3.17, "never above the worst-case bound (1-beta1)/sqrt(1-beta2)"
assert share < 0.01, "and all but a tiny share of the weight updates are within eta"

theta0 = curvature.flatten_params(mnist_net())
*_, theta_40 = race(RACE["Adam"], steps=40)
travel = float(xp.linalg.norm(theta_40 - theta0))
invariance = {}
for scale in (1e3, 1e-3):
    for eps in (1e-8, 1e-8 * scale):
        *_, theta_scaled = race(lambda m: Adam(m, lr=eta, eps=eps), loss_scale=scale, steps=40)
        invariance[scale, eps] = float(xp.linalg.norm(theta_scaled - theta_40)) / travel
        print(f"loss x {scale:g}, eps {eps:g}: after 40 steps Adam's parameters differ from "
              f"the unscaled run's by {invariance[scale, eps]:.1e} of the distance travelled")
    assert invariance[scale, 1e-8 * scale] < 1e-5, "exactly invariant when eps scales too"
assert invariance[1e3, 1e-8] < 0.05          # measured 0.3% (fast mode), 2.4% (full)
assert invariance[1e-3, 1e-8] < 0.25         # measured 8% (fast), 12% (full)
assert invariance[1e-3, 1e-8] > invariance[1e3, 1e-8], "a small loss suffers more from eps"
sgd_losses, sgd_rms, *_ = race(RACE["SGD"], loss_scale=1e3, steps=20)
print(f"SGD with the loss x 1000: first step {sgd_rms[0] / runs['SGD'][1][0]:.0f}x the "
      f"unscaled one; loss after 20 steps {sgd_losses[-1]:.3g}")

# %% [markdown]
# ## 5. AdaGrad's step decays faster than RMSProp's
# AdaGrad divides by the root of the *sum* of all squared gradients, which only grows, so
# its steps shrink like 1/sqrt(t) even where the gradients do not; RMSProp divides by a
# moving average and keeps its step size. First on gradients that do not change over
# time: a `Linear(20, 1)` at w = 0 fitted by MSE to pure noise (fresh x and y every step),
# so the gradients are zero-mean noise of constant size. The plot should show AdaGrad's
# RMS step falling along 1/sqrt(t) and RMSProp's level after its warm-up.

# %%
def noise_steps(make, steps=2000):
    r = minidl.default_rng(7)
    model = Linear(20, 1, bias=False)
    model.params["W"][...] = 0
    opt = make(model)
    sizes = []
    for _ in range(steps):
        xb = xp.asarray(r.standard_normal((10, 20)), dtype="float32")   # (10, 20)
        yb = xp.asarray(r.standard_normal((10, 1)), dtype="float32")    # (10, 1)
        before = model.params["W"].copy()
        mse.forward(model.forward(xb), yb)
        model.backward(mse.backward())
        opt.step()
        sizes.append(float(xp.sqrt(((model.params["W"] - before) ** 2).mean())))
    return sizes


def smoothed(values, k=20):
    return [sum(values[i:i + k]) / k for i in range(0, len(values) - k + 1, k)]


stationary = {"AdaGrad": noise_steps(lambda m: AdaGrad(m, lr=0.01)),
              "RMSProp": noise_steps(lambda m: RMSProp(m, lr=0.01))}
late_over_early = {}
for name, sizes in stationary.items():
    early = sum(sizes[100:200]) / 100
    late = sum(sizes[-100:]) / 100
    late_over_early[name] = late / early
    print(f"{name:<8} stationary noise: RMS step over steps 1900-2000 / over steps 100-200 = "
          f"{late / early:.3f}")
print(f"(a 1/sqrt(t) decay predicts {(150 / 1950) ** 0.5:.3f}, a constant step 1)")
assert late_over_early["AdaGrad"] < 0.4
assert late_over_early["RMSProp"] > 0.8

# %% [markdown]
# On MNIST (section 3's runs) the gradients themselves shrink as the loss falls, so both
# steps shrink; AdaGrad's should still shrink more. RMSProp (no bias correction) starts
# with steps ~10x too large while its average warms up, so we compare from the second
# window of 20 steps on.

# %%
decay = {}
for name in ("AdaGrad", "RMSProp"):
    s = smoothed(runs[name][1])
    decay[name] = [v / s[1] for v in s]
    print(f"{name:<8} MNIST: RMS step, last 20 steps / steps 21-40: {decay[name][-1]:.3f}")
assert decay["AdaGrad"][-1] < decay["RMSProp"][-1]

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for name, (losses, *_rest) in runs.items():
    axes[0].plot([5 * (i + 1) for i in range(len(losses) // 5)], smoothed(losses, 5),
                 label=name)
axes[0].set_xlabel(f"mini-batch ({epochs} epochs)")
axes[0].set_ylabel("training loss (mean of 5 mini-batches)")
axes[0].set_ylim(0, 2.5)
axes[0].set_title("MNIST race")
axes[0].legend(fontsize=8)
axes[1].hist(ratio, bins=60)
axes[1].axvline(1.0, color="k", ls=":", label="eta")
axes[1].axvline(3.16, color="C3", ls="--", label="(1-b1)/sqrt(1-b2) eta")
axes[1].set_xlabel("largest single-weight step / eta")
axes[1].set_title("Adam's steps")
axes[1].legend(fontsize=8)
for name, sizes in stationary.items():
    axes[2].loglog(range(1, len(sizes) + 1), sizes, label=f"{name}, stationary noise", lw=1)
t = xp.arange(1, 2001)
axes[2].loglog(minidl.to_numpy(t), minidl.to_numpy(stationary["AdaGrad"][9] * (10 / t) ** 0.5),
               "k:", label="1/sqrt(t)")
axes[2].set_xlabel("step")
axes[2].set_ylabel("RMS step")
axes[2].set_title("AdaGrad vs RMSProp step size")
axes[2].legend(fontsize=7)
fig.tight_layout()
print(lesson.savefig(fig, "06_mnist_race"))

# %% [markdown]
# ## Exercises
# 1. Rotate the valley of section 1 by 45 degrees (A = Q diag(0.5, 25) Q'). Which methods
#    suffer, and why does a per-coordinate (diagonal) scaling not help any more?
# 2. Run section 2 with full-batch gradients (every step gets the mean gradient, 0):
#    what does each method do? And with RMSProp's `alpha` = 0.5 instead of 0.99?
# 3. Section 4 found Adam's invariance to the loss scale broken by `eps`. Which weights
#    of the 784-100-10 network are most affected (hint: look at the border pixels'
#    gradients), and what does that mean for a loss that is summed rather than averaged
#    over the batch?
