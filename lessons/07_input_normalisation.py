# %% [markdown]
# # Lesson 7: input normalisation
#
# *Seed: lecture 004 (Ilin, "Deep Learning Optimization": linear regression, its Hessian,
# input normalisation, PCA and ZCA whitening).*
#
# For linear regression L(w) = 1/(2N) sum_n (y_n - w'x_n)^2 the Hessian is the second
# moment of the inputs,
#
#     H = (1/N) sum_n x_n x_n' = C_x,
#
# so by lesson 2 the speed of gradient descent is set by the conditioning of the *data*.
# Inputs with a non-zero mean, different scales or correlated components make C_x
# ill-conditioned; the fixes, each fitted on the training set (`minidl.data`):
#
# * centring, x - mu;
# * scaling each component to unit variance (`Standardise`);
# * PCA whitening, x_PCA = D^-1/2 E'(x - mu) (`PCAWhiten`), with E D E' the eigenvalue
#   decomposition of the covariance: C becomes I;
# * ZCA whitening, x_ZCA = E D^-1/2 E'(x - mu) (`ZCAWhiten`): also C = I, but rotated back
#   so that the whitened signals look like the originals.
#
# We measure the Hessian of a real linear regression (MNIST pixels -> one-hot digit, a
# `Linear` layer with bias under `MSELoss`) with `minidl.curvature.hessian` after each
# preprocessing, and count the gradient descent steps each needs.
#
# Run it top to bottom: `python lessons/07_input_normalisation.py`.

# %%
import math

import matplotlib.pyplot as plt

import minidl
from minidl import curvature, lesson
from minidl.data import PCAWhiten, Standardise, ZCAWhiten
from minidl.layers import AvgPool2d, Flatten, Linear
from minidl.losses import MSELoss
from minidl.optim import SGD

minidl.set_default_dtype("float64")
xp = minidl.xp()

# %% [markdown]
# ## 1. The data
# MNIST digits averaged down to 7 x 7 (`AvgPool2d(4)`), keeping the cells that are not
# blank in every training image (a pixel that never varies has zero curvature: gradient
# descent never moves its weight, so it plays no part in the conditioning). Targets: the
# one-hot digit, so the model is a linear least-squares classifier with 10 outputs.

# %%
n = lesson.choose(10000, 2000)
x_img, labels, _, _ = lesson.mnist(n_train=n, n_test=1, flatten=False)
x_all = Flatten().forward(AvgPool2d(4).forward(x_img))    # (n, 49)
keep = x_all.std(axis=0) > 0.01                            # (49,) cells that vary
x_raw = x_all[:, keep]                                     # (n, D)
Y = xp.eye(10)[labels]                                     # (n, 10) one-hot targets
D = x_raw.shape[1]
print(f"{n} images, {D} of 49 pooled pixels vary")

inputs = {
    "raw [0, 1]": x_raw,
    "centred": x_raw - x_raw.mean(axis=0),
    "standardised": Standardise().fit_transform(x_raw),
    "PCA whitened": PCAWhiten(eps=0.0).fit_transform(x_raw),
    "ZCA whitened": ZCAWhiten(eps=0.0).fit_transform(x_raw),
}

# %% [markdown]
# ## 2. The Hessian before and after
# `curvature.hessian` gives the exact P x P Hessian of the mean squared error in the flat
# parameter order (W row by row, then b); with 10 outputs it is 10 copies of the (D+1) x
# (D+1) second-moment matrix of [x, 1], times 2/10. Its condition number kappa sets
# gradient descent's rate (kappa - 1)/(kappa + 1) at the best constant step.
# The plot should show the raw inputs' spectrum spread over many orders of magnitude,
# each normalisation narrowing it, and the whitened ones flat: kappa = 1.

# %%
crit = MSELoss()


def fresh_model():
    model = Linear(D, 10, rng=minidl.default_rng(0))
    model.params["W"][...] = 0
    model.params["b"][...] = 0
    return model


hessians, spectra, kappas = {}, {}, {}
for name, x in inputs.items():
    H = curvature.hessian(fresh_model(), crit, x, Y)       # (10 (D+1), 10 (D+1))
    eig = xp.linalg.eigvalsh(H)                            # ascending
    hessians[name], spectra[name] = H, minidl.to_numpy(eig)
    kappas[name] = float(eig[-1] / eig[0])
    print(f"{name:<13} Hessian eigenvalues {float(eig[0]):.3g} .. {float(eig[-1]):.3g}, "
          f"kappa = {kappas[name]:.4g}")
assert kappas["PCA whitened"] < 1 + 1e-6 and kappas["ZCA whitened"] < 1 + 1e-6
assert kappas["standardised"] < kappas["centred"] < kappas["raw [0, 1]"]

# %% [markdown]
# ## 3. Steps gradient descent needs
# Full-batch gradient descent (`SGD` on all n examples) from W = 0, b = 0, each at its own
# best constant step eta* = 2 / (lambda_min + lambda_max) from the spectrum above, until
# the loss is within 0.1% of the way from the start to the least-squares optimum (solved
# directly). Lesson 2 gives the worst case: the slowest direction's part of the gap
# shrinks by ((kappa-1)/(kappa+1))^2 per step. The plot should show the same ordering as
# kappa, and whitened inputs done in a single step.

# %%
cap = lesson.choose(5000, 2000)


def steps_to_target(x, eta):
    A = xp.concatenate([x, xp.ones((x.shape[0], 1))], axis=1)     # (n, D + 1)
    coef = xp.linalg.lstsq(A, Y, rcond=None)[0]                    # (D + 1, 10)
    L_star = float(((A @ coef - Y) ** 2).mean())
    model = fresh_model()
    opt = SGD(model, lr=eta)
    L0 = crit.forward(model.forward(x), Y)
    gaps = []
    for k in range(cap + 1):
        L = crit.forward(model.forward(x), Y)
        gaps.append((L - L_star) / (L0 - L_star))
        if gaps[-1] <= 1e-3:
            return k, gaps
        model.backward(crit.backward())
        opt.step()
    return cap, gaps


steps, curves = {}, {}
for name, x in inputs.items():
    eta = 2 / float(spectra[name][0] + spectra[name][-1])
    steps[name], curves[name] = steps_to_target(x, eta)
    shown = f"{steps[name]}" if steps[name] < cap else f">= {cap}"
    # the slowest direction's share of the gap shrinks by rate^2 per step
    rate = (kappas[name] - 1) / (kappas[name] + 1)
    bound = "1" if rate < 1e-12 else f"{math.log(1e3) / (-2 * math.log(rate)):.0f}"
    print(f"{name:<13} eta* = {eta:9.4g}: {shown:>7} steps   (kappa's worst case: {bound})")
assert steps["PCA whitened"] <= 1 and steps["ZCA whitened"] <= 1, "kappa = 1: one step"
assert steps["standardised"] < steps["centred"] <= steps["raw [0, 1]"]
assert 10 * steps["standardised"] < steps["raw [0, 1]"], "normalising cuts the steps"

# %%
fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), gridspec_kw={"width_ratios": [1.3, 1.3, 1, 1]})
for name, eig in spectra.items():
    axes[0].semilogy(eig[::-1], label=f"{name}: kappa {kappas[name]:.3g}")
axes[0].set_xlabel("eigenvalue index")
axes[0].set_ylabel("Hessian eigenvalue")
axes[0].set_title("spectrum of the Hessian")
axes[0].legend(fontsize=7)
for name, gaps in curves.items():
    shown = f"{steps[name]}" if steps[name] < cap else f"not in {cap}"
    axes[1].semilogy([max(g, 1e-12) for g in gaps], label=f"{name}: {shown} steps")
axes[1].axhline(1e-3, color="k", ls=":", lw=1)
axes[1].set_xscale("symlog", linthresh=10)
axes[1].set_xlim(0, cap)
axes[1].set_xlabel("gradient descent step")
axes[1].set_ylabel("(L - L*) / (L0 - L*)")
axes[1].set_title("gradient descent at eta* = 2/(l_min + l_max)")
axes[1].legend(fontsize=7)
m = D + 1                                                  # the first output's block
for ax, name in zip(axes[2:], ("raw [0, 1]", "ZCA whitened")):
    block = minidl.to_numpy(hessians[name][:m, :m])
    im = ax.imshow(block, cmap="RdBu_r", vmin=-abs(block).max(), vmax=abs(block).max())
    ax.set_title(f"H block of output 0: {name}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046)
fig.tight_layout()
print(lesson.savefig(fig, "07_input_normalisation"))

# %% [markdown]
# ## 4. What ZCA whitening looks like
# PCA whitening rotates the data into its principal axes; ZCA rotates it back, so a
# whitened image is still an image. On full 28 x 28 digits (with eps = 0.1 added to the
# eigenvalues, as is usual for images, so the many near-zero-variance directions are not
# blown up), the plot should show the digits reduced to their edges: whitening removes
# the strong correlation between neighbouring pixels and keeps what is unexpected.

# %%
x_flat = x_img[:lesson.choose(10000, 2000)].reshape(-1, 784)      # (m, 784)
zca = ZCAWhiten(eps=0.1).fit(x_flat)
white = zca.transform(x_flat[:6])                          # (6, 784)
fig, axes = plt.subplots(2, 6, figsize=(10, 3.6))
for i in range(6):
    axes[0, i].imshow(minidl.to_numpy(x_flat[i]).reshape(28, 28), cmap="gray_r")
    axes[1, i].imshow(minidl.to_numpy(white[i]).reshape(28, 28), cmap="gray_r")
    axes[0, i].axis("off")
    axes[1, i].axis("off")
axes[0, 0].set_title("original", fontsize=9, loc="left")
axes[1, 0].set_title("ZCA whitened (eps = 0.1)", fontsize=9, loc="left")
fig.tight_layout()
print(lesson.savefig(fig, "07_zca_digits"))

# %% [markdown]
# ## Exercises
# 1. Add a single input feature with a huge scale (e.g. 100 x a pixel) to the raw data.
#    Predict the new kappa and step count from lesson 2, then measure them.
# 2. Whitening is fitted on the training set. Transform a test set with the *training*
#    statistics and compute the test inputs' covariance: how far from I is it, and why?
# 3. Train the 784-100-10 ReLU network of lesson 1 on raw, standardised and ZCA-whitened
#    (eps = 0.1) inputs with the same SGD settings. Does the ordering of this lesson
#    survive the non-linearity?
