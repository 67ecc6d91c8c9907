# %% [markdown]
# # Lesson 12: regularisation -- weight decay vs L1, dropout, early stopping, augmentation
#
# Seed: 001 (Ghauch and Ghadikolaei, "Large-scale training for deep neural networks"),
# slides "Regularization: parameter norm penalty" and "Overfitting". A regulariser
# changes the problem we solve, f~(w) = f(w) + r(w). The slides make two precise claims
# about the solution w~ = argmin f~ relative to w* = argmin f:
#
# * **Weight decay** (r = lambda/2 ||w||^2): along an eigenvector q_i of the Hessian H of f,
#   w~ keeps the component of w* when lambda_i(H) >> lambda and shrinks it to zero when
#   lambda_i(H) << lambda. For a quadratic f exactly:
#   q_i^T w~ = lambda_i / (lambda_i + lambda) q_i^T w*.
# * **L1** (r = lambda ||w||_1): with a diagonal Hessian, w~_i = sign(w*_i) max(|w*_i| -
#   lambda / H_ii, 0): small weights become zero, large ones move by a constant.
#
# We check both with minidl's own pieces (`SGD(weight_decay=...)`, `optim.add_l1_grad`,
# `curvature.hessian`), then look at the tricks of the slide "Overfitting" on a small MNIST
# training set: weight decay, dropout (`models.mlp(dropout=...)`), early stopping
# (`fit(early_stopping=..., restore_best=True)`) and data augmentation (`data.random_crop`
# as the `DataLoader`'s transform).
#
# Run: `python lessons/12_regularisation.py` (`MINIDL_FAST=1` for the quick version).

# %%
import matplotlib.pyplot as plt

import minidl
from minidl import curvature, data, models
from minidl.layers import Linear
from minidl.lesson import FAST, savefig
from minidl.lesson import mnist as lesson_mnist
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.optim import SGD, add_l1_grad
from minidl.train import evaluate, fit

minidl.set_default_dtype("float64")                 # part 1 and 2 compare to 1e-6
xp = minidl.xp()
rng = minidl.default_rng(0)
crit = MSELoss()

# %% [markdown]
# ## 1. Weight decay acts per Hessian eigen-direction
# Linear least squares f(w) = mean((X w - y)^2) on d = 20 features whose scales span two
# decades, in a random rotation, so H = 2/N X^T X has eigenvalues from about 2e-3 to 20.
# We take the exact unregularised solution w* from `lstsq`, and train w~ with minidl's
# `SGD(model, lr, weight_decay=lam)` by full-batch gradient descent until it has
# converged. Then we compare q_i^T w~ / q_i^T w* with lambda_i / (lambda_i + lambda).
# **Expected plot:** the measured factors lie on the theory curve: ~0 left of lambda,
# ~1 right of it.

# %%
N, d, lam = 400, 20, 0.1
Q, _ = xp.linalg.qr(xp.asarray(rng.standard_normal((d, d))))       # (d, d) rotation
scales = xp.logspace(-1.5, 0.5, d)                                  # (d,)
X = xp.asarray(rng.standard_normal((N, d))) * scales @ Q.T          # (N, d)
y = (X @ xp.asarray(rng.standard_normal(d)) + 0.1 * xp.asarray(rng.standard_normal(N)))
y = y[:, None]                                                      # (N, 1)

model = Linear(d, 1, bias=False, rng=minidl.default_rng(1))
H = curvature.hessian(model, crit, X, y)                            # (d, d) = 2/N X^T X
eig, V = xp.linalg.eigh(H)                                          # ascending, (d,), (d, d)
w_star = xp.linalg.lstsq(X, y, rcond=None)[0][:, 0]                 # (d,)

model.params["W"][:] = 0
opt = SGD(model, lr=1.0 / (float(eig[-1]) + lam), weight_decay=lam)
steps = 6000
for k in range(steps):
    crit.forward(model.forward(X), y)
    model.backward(crit.backward())
    opt.step()
w_tilde = model.params["W"][0]                                      # (d,)

measured = (V.T @ w_tilde) / (V.T @ w_star)                          # (d,) per direction
theory = eig / (eig + lam)
err = float(xp.abs(measured - theory).max())
print(f"Hessian eigenvalues {float(eig[0]):.1e} ... {float(eig[-1]):.1e}, lambda = {lam}")
print(f"max |measured - lambda_i/(lambda_i + lambda)| = {err:.1e}")
print(f"||w~|| = {float(xp.linalg.norm(w_tilde)):.3f} <= ||w*|| = "
      f"{float(xp.linalg.norm(w_star)):.3f}")
assert err < 1e-4
small, large = eig < lam / 10, eig > 10 * lam
assert small.sum() >= 2 and large.sum() >= 2
assert float(xp.abs(measured[small]).max()) < 0.1, "flat directions should be shrunk to ~0"
assert float(measured[large].min()) > 0.9, "steep directions should be kept"
assert float(xp.linalg.norm(w_tilde)) <= float(xp.linalg.norm(w_star))

# %% [markdown]
# ## 2. L1 zeroes small weights, L2 only scales them
# To see the slide's formula exactly we make the Hessian diagonal and equal, H = 2 I: the
# columns of X are orthogonal with norm sqrt(N). Then
#
# * L2: w~_i = 2 / (2 + lambda) w*_i  (every weight shrinks by the same factor),
# * L1: w~_i = sign(w*_i) max(|w*_i| - lambda / 2, 0)  (soft thresholding).
#
# For L1 we call `add_l1_grad(model, lam)` (adds lambda sign(w)) between backward and the
# optimizer step: a *subgradient* method. It does not land exactly on 0: a weight that
# should be zero keeps jumping across it by about lr * lambda. We let the learning rate
# decay (an `Inverse` schedule) so the jumps shrink. **Expected plot:** L2 is a straight
# line of slope 2/(2 + lambda); L1 is flat at zero for |w*| < lambda/2, then parallel to
# the diagonal.

# %%
d1, lam1 = 40, 0.6
G, _ = xp.linalg.qr(xp.asarray(rng.standard_normal((N, d1))))     # (N, d1) orthonormal
X1 = G * N ** 0.5                                                   # X1^T X1 = N I
w_true = xp.linspace(-1.0, 1.0, d1)                                 # (d1,)
y1 = (X1 @ w_true + 0.05 * xp.asarray(rng.standard_normal(N)))[:, None]   # (N, 1)
w1_star = xp.linalg.lstsq(X1, y1, rcond=None)[0][:, 0]              # (d1,)
H1 = curvature.hessian(Linear(d1, 1, bias=False, rng=rng), crit, X1, y1)
assert float(xp.abs(H1 - 2 * xp.eye(d1)).max()) < 1e-10           # H = 2 I, as designed


def train_penalised(penalty, steps):
    model = Linear(d1, 1, bias=False, rng=minidl.default_rng(2))
    model.params["W"][:] = 0
    opt = SGD(model, lr=0.25, weight_decay=lam1 if penalty == "l2" else 0.0)
    schedule = minidl.optim.Inverse(0.25 * 20, k0=20)   # lr_k = 0.25 * 20 / (k + 20)
    for k in range(steps):
        opt.lr = schedule(k)
        crit.forward(model.forward(X1), y1)
        model.backward(crit.backward())
        if penalty == "l1":
            add_l1_grad(model, lam1)
        opt.step()
    return model.params["W"][0].copy()


w_l2 = train_penalised("l2", 3000)
w_l1 = train_penalised("l1", 3000)
l2_theory = 2 / (2 + lam1) * w1_star
l1_theory = xp.sign(w1_star) * xp.maximum(xp.abs(w1_star) - lam1 / 2, 0)
should_be_zero = l1_theory == 0
print(f"L2: max |w~ - 2/(2+lambda) w*| = {float(xp.abs(w_l2 - l2_theory).max()):.1e}, "
      f"smallest |w~| = {float(xp.abs(w_l2).min()):.3f}")
print(f"L1: {int(should_be_zero.sum())} of {d1} weights should be zero; their largest |w~| "
      f"is {float(xp.abs(w_l1[should_be_zero]).max()):.1e}; the others are off the "
      f"formula by at most {float(xp.abs(w_l1 - l1_theory)[~should_be_zero].max()):.1e}")
assert float(xp.abs(w_l2 - l2_theory).max()) < 1e-6
assert float(xp.abs(w_l1[should_be_zero]).max()) < 5e-3, "L1 should (nearly) zero them"
assert float(xp.abs(w_l1 - l1_theory).max()) < 5e-3
assert int((xp.abs(w_l2) < 5e-3).sum()) == int((xp.abs(w1_star) < 5e-3).sum())  # L2: none new

# %% [markdown]
# ## 3. Overfitting, and four ways to fight it
# A 784-256-256-10 ReLU MLP on only 500 MNIST digits learns the training set perfectly
# within a few epochs; the validation loss (2,000 test digits) then rises again. We train
# the same net, same SGD-momentum recipe, with
#
# * nothing (plain),
# * weight decay 1e-3 (`SGD(weight_decay=1e-3)`),
# * dropout 0.5 after each hidden layer (`models.mlp(dropout=0.5)`),
# * augmentation: each batch shifted by up to 2 pixels (`data.random_crop` with padding 2,
#   the `DataLoader`'s `transform`),
# * early stopping: plain, but stop when the validation loss has not improved for 5 epochs
#   and put back the best weights (`fit(early_stopping=5, restore_best=True)`).
#
# **Expected plot:** plain's validation loss has a minimum after a few epochs and climbs;
# the regularised curves climb less or not at all; early stopping ends near the minimum.

# %%
minidl.set_default_dtype("float32")
n_small = 500
Xs, Ys, Xv, Yv = lesson_mnist(n_small, 2000, flatten=False)        # (n, 1, 28, 28) in [0, 1]
epochs = 30 if FAST else 60
ce = SoftmaxCrossEntropy()
val_loader = data.DataLoader(Xv, Yv, 500, shuffle=False)


def shift(xb, rng):
    return data.random_crop(xb, 28, rng, padding=2)                # (B, 1, 28, 28)


def run(weight_decay=0.0, dropout=0.0, transform=None, early_stopping=None):
    model = models.mlp([784, 256, 256, 10], dropout=dropout, rng=minidl.default_rng(0))
    opt = SGD(model, lr=0.05, momentum=0.9, weight_decay=weight_decay)
    loader = data.DataLoader(Xs, Ys, 50, rng=minidl.default_rng(1), transform=transform)
    hist = fit(model, ce, opt, loader, epochs=epochs, val_loader=val_loader,
               early_stopping=early_stopping, restore_best=early_stopping is not None,
               log_every=0, progress=False)
    return model, hist


runs = {"plain": run(), "weight decay 1e-3": run(weight_decay=1e-3),
        "dropout 0.5": run(dropout=0.5), "augmentation (shifts)": run(transform=shift),
        "early stopping (5)": run(early_stopping=5)}
print(f"{'':<24}{'train loss':>11}{'val loss':>10}{'min val':>9}{'val acc':>9}{'epochs':>8}")
for name, (model, hist) in runs.items():
    final = evaluate(model, ce, val_loader)       # the weights the run ends with
    print(f"{name:<24}{hist['train_loss'][-1]:>11.3f}{final['loss']:>10.3f}"
          f"{min(hist['val_loss']):>9.3f}{final['accuracy']:>9.1%}{len(hist['val_loss']):>8}")
    runs[name] = (model, hist, final)

plain_hist, plain_final = runs["plain"][1], runs["plain"][2]
assert plain_hist["train_loss"][-1] < 0.01, "the plain net should fit the 500 digits"
assert plain_final["loss"] > 1.1 * min(plain_hist["val_loss"]), "plain should overfit"
for name in ("weight decay 1e-3", "augmentation (shifts)"):
    assert runs[name][2]["loss"] < plain_final["loss"], f"{name} should end below plain"
assert runs["dropout 0.5"][2]["accuracy"] > plain_final["accuracy"], "dropout should help"
assert runs["augmentation (shifts)"][2]["accuracy"] > plain_final["accuracy"] + 0.02
es_hist, es_final = runs["early stopping (5)"][1], runs["early stopping (5)"][2]
assert len(es_hist["val_loss"]) < epochs, "early stopping should stop before the end"
assert abs(es_final["loss"] - min(es_hist["val_loss"])) < 1e-4, "best weights restored"
assert es_final["loss"] < plain_final["loss"]

# %% [markdown]
# What we measured: weight decay 1e-3 lowers the final validation *loss* (smaller weights,
# less over-confident logits) but hardly changes the accuracy; dropout raises the accuracy
# by 1-2 points, though over a long run (full mode, 60 epochs) its validation loss climbs
# back almost to plain's; shifting the digits by up to 2 pixels helps most, because it is
# the only one that adds information (a digit moved by a pixel is still that digit).
# Early stopping gets the lowest loss of the plain run for free.

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
axes[0].semilogx(minidl.to_numpy(eig), minidl.to_numpy(measured), "o", label="measured (SGD)")
grid = xp.logspace(float(xp.log10(eig[0])) - 0.3, float(xp.log10(eig[-1])) + 0.3, 200)
axes[0].semilogx(minidl.to_numpy(grid), minidl.to_numpy(grid / (grid + lam)), "-",
                 label=r"$\lambda_i / (\lambda_i + \lambda)$")
axes[0].axvline(lam, color="gray", ls=":", label=r"$\lambda$ = %g" % lam)
axes[0].set(xlabel=r"Hessian eigenvalue $\lambda_i$", ylabel=r"$q_i^T \tilde w \,/\, q_i^T w^*$",
            title="Weight decay: shrinkage per eigen-direction")
axes[0].legend()
ws = minidl.to_numpy(w1_star)
axes[1].plot(ws, minidl.to_numpy(w_l2), "s", ms=4, label="L2 (weight decay)")
axes[1].plot(ws, minidl.to_numpy(w_l1), "o", ms=4, label="L1")
axes[1].plot(ws, ws, ":", color="gray", label="no penalty")
axes[1].axvspan(-lam1 / 2, lam1 / 2, color="C1", alpha=0.1, label=r"$|w^*| < \lambda / H_{ii}$")
axes[1].set(xlabel=r"$w^*_i$", ylabel=r"$\tilde w_i$",
            title=f"L1 zeroes small weights, L2 scales all (H = 2I, lambda = {lam1})")
axes[1].legend()
for name, (model, hist, final) in runs.items():
    axes[2].plot(range(1, len(hist["val_loss"]) + 1), hist["val_loss"], label=name)
axes[2].set(xlabel="epoch", ylabel="validation loss", ylim=(0, 1.5),
            title=f"MLP on {n_small} MNIST digits: validation loss")
axes[2].legend(fontsize=8)
fig.tight_layout()
print("saved", savefig(fig, "12_regularisation"))

# %% [markdown]
# ## Exercises
# 1. Replace the subgradient L1 step by the *proximal* step w <- sign(w) max(|w| - lr
#    lambda, 0) after each plain gradient step. Do the weights now become exactly zero?
# 2. In part 1, rotate nothing (Q = I). Which weights does weight decay shrink now? Then
#    give the features equal scales: what happens to the per-direction picture?
# 3. Combine augmentation with dropout, and try 5,000 instead of 500 training digits. Does
#    the ranking of the methods stay the same?
