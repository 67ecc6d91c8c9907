# %% [markdown]
# # Lesson 2: gradient descent on quadratics
#
# *Seeds: lecture 004 (Ilin, "Deep Learning Optimization": analysis of convergence, after
# Goh 2017) and the BNP slides 000 (why conditioning matters).*
#
# Near a minimum every smooth loss looks like a quadratic,
#
#     L(w) = 1/2 w'Aw - b'w,      gradient A w - b,   Hessian A,   minimum w* = A^-1 b,
#
# and gradient descent w <- w - eta (A w - b) on it can be solved exactly. Rotate into the
# eigenbasis of A = Q diag(lambda_1 <= ... <= lambda_M) Q' with z = Q'(w - w*): each
# coordinate evolves on its own,
#
#     z_m <- (1 - eta lambda_m) z_m,
#
# so direction m shrinks by |1 - eta lambda_m| per step. The slowest direction sets the
# rate, max_m |1 - eta lambda_m|, which is smallest at eta* = 2 / (lambda_1 + lambda_M),
# where it equals (kappa - 1) / (kappa + 1) with kappa = lambda_M / lambda_1. A step
# eta > 2 / lambda_M makes |1 - eta lambda_M| > 1: divergence.
#
# Every number below is measured by running minidl: the quadratic is a `Linear` layer
# without bias under `MSELoss` (`minidl.lesson.quadratic`: inputs X = sqrt(M/2) A^(1/2),
# so that the MSE's Hessian (2/M) X'X is A, checked with `minidl.curvature.hessian`), and
# the steps are `minidl.optim.SGD`'s.
#
# Run it top to bottom: `python lessons/02_gradient_descent_quadratics.py`.

# %%
import math

import matplotlib.pyplot as plt

import minidl
from minidl import curvature, lesson
from minidl.layers import Linear
from minidl.losses import MSELoss
from minidl.optim import SGD

minidl.set_default_dtype("float64")
xp = minidl.xp()
crit = MSELoss()


def run_gd(A, b, w0, eta, steps):
    """Iterates w_0 .. w_steps of minidl's SGD (full batch = gradient descent)."""
    model, X, y = lesson.quadratic(A, b)   # Linear(M, 1) under MSELoss, Hessian A
    model.params["W"][0] = w0
    opt = SGD(model, lr=eta)
    path = [model.params["W"][0].copy()]
    for _ in range(steps):
        crit.forward(model.forward(X), y)
        model.backward(crit.backward())
        opt.step()
        path.append(model.params["W"][0].copy())
    return xp.stack(path)                               # (steps + 1, M)


def rotation(angle):
    c, s = math.cos(angle), math.sin(angle)
    return xp.asarray([[c, -s], [s, c]])                # (2, 2)


# %% [markdown]
# ## 1. A 2-D quadratic: the Hessian is A, and the eigenbasis
# lambda = (1, 10) (kappa = 10), axes rotated by 30 degrees.

# %%
Q2 = rotation(math.pi / 6)
lam2 = xp.asarray([1.0, 10.0])
A2 = (Q2 * lam2) @ Q2.T                                 # (2, 2)
b2 = A2 @ xp.asarray([1.0, -0.5])                       # so that w* = (1, -0.5)
w_star2 = xp.linalg.solve(A2, b2)
model, X, y = lesson.quadratic(A2, b2)
H = curvature.hessian(model, crit, X, y)                # (2, 2), minidl's R-operator passes
print("Hessian measured by minidl.curvature.hessian:\n", H)
assert float(abs(H - A2).max()) < 1e-12, "the construction must give Hessian = A"

# %% [markdown]
# ## 2. Each eigen-direction shrinks by |1 - eta lambda_m|
# We run gradient descent and rotate the error into the eigenbasis, z_t = Q'(w_t - w*).
# The measured ratio z_m,t+1 / z_m,t should equal 1 - eta lambda_m at every step.

# %%
w0 = xp.asarray([-2.0, 2.0])
for eta in (0.05, 0.15, 0.19):
    path = run_gd(A2, b2, w0, eta, 12)                  # (13, 2)
    z = (path - w_star2) @ Q2                           # (13, 2) eigen-coordinates
    ratio = z[1:] / z[:-1]                              # (12, 2) per-step shrink factors
    predicted = 1 - eta * lam2                          # (2,)
    print(f"eta {eta}: measured ratios {minidl.to_numpy(ratio[-1]).round(6)}, "
          f"1 - eta*lambda = {minidl.to_numpy(predicted).round(6)}")
    assert float(abs(ratio - predicted).max()) < 1e-9

# %% [markdown]
# ## 3. Zig-zag paths on the contour plot
# The plot should show: a small step crawls along the valley floor (the flat direction
# shrinks by only 1 - 0.05 = 0.95); eta* treats both ends of the spectrum alike; a step
# just under 2 / lambda_max = 0.2 zig-zags across the valley (1 - 0.19 * 10 = -0.9); a
# step just over it flies off.

# %%
w0 = w_star2 - 3.0 * Q2[:, 0] + 1.0 * Q2[:, 1]         # far along the flat direction
eta_star2 = 2 / float(lam2[0] + lam2[1])
settings = [(0.05, "small: slow"), (eta_star2, "eta* = 2/(l1+lM)"),
            (0.19, "just under 2/lM: zig-zag"), (0.205, "over 2/lM: diverges")]
c1, c2 = float(w_star2[0]), float(w_star2[1])
g1, g2 = xp.meshgrid(xp.linspace(c1 - 3.5, c1 + 3.5, 200), xp.linspace(c2 - 3, c2 + 3, 200))
E = xp.stack([g1.ravel() - c1, g2.ravel() - c2], axis=1)   # (40000, 2) offsets from w*
excess = (0.5 * ((E @ A2) * E).sum(axis=1)).reshape(g1.shape)   # (200, 200) L - L(w*)
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
for ax, (eta, title) in zip(axes, settings):
    path = minidl.to_numpy(run_gd(A2, b2, w0, eta, 20))
    ax.contour(minidl.to_numpy(g1), minidl.to_numpy(g2), minidl.to_numpy(xp.sqrt(excess)),
               levels=12, colors="grey", linewidths=0.6)
    ax.plot(path[:, 0], path[:, 1], "o-", ms=3, color="C3", lw=1)
    ax.plot(c1, c2, "k*", ms=10)
    ax.set_xlim(c1 - 3.5, c1 + 3.5)
    ax.set_ylim(c2 - 3, c2 + 3)
    ax.set_aspect("equal")
    ax.set(xlabel="w1", ylabel="w2")
    ax.set_title(f"eta = {eta:.3g}: {title}", fontsize=9)
fig.suptitle("20 steps of gradient descent, lambda = (1, 10)")
fig.tight_layout()
print(lesson.savefig(fig, "02_gradient_descent_quadratics"))

# %% [markdown]
# ## 4. The rate at eta* equals (kappa - 1) / (kappa + 1)
# 10-dimensional quadratics with eigenvalues spread from 1 to kappa (kappa = 10 and 100),
# random eigenvectors. We measure the rate as ||e_{t+1}|| / ||e_t|| once the slowest
# direction dominates (after up to 300 steps), over a range of learning rates, and
# compare with max_m |1 - eta lambda_m|. The plot should show the measured dots on the
# V-shaped theory curve, with its bottom at eta*.
#
# A dot can never lie above the curve: ||(I - eta A) e|| <= max_m |1 - eta lambda_m| ||e||
# for every e. It can lie a little below where two directions shrink at almost the same
# rate, so that neither dominates before the error reaches rounding level: look at the
# dot just left of eta* for kappa = 10, where lambda_1's rate 0.819 and lambda_M's 0.813
# nearly tie and the measured ratio (0.813) falls between them.

# %%
rng = minidl.default_rng(2)
M = 10


def problem(kappa):
    """A (M, M) with eigenvalues log-spaced in [1, kappa], b, w*, a start w0."""
    lam = xp.logspace(0, math.log10(kappa), M)                   # (M,)
    Q, _ = xp.linalg.qr(xp.asarray(rng.standard_normal((M, M))))   # (M, M) random rotation
    A = (Q * lam) @ Q.T                                         # (M, M)
    b = A @ xp.asarray(rng.standard_normal(M))                  # (M,)
    w_star = xp.linalg.solve(A, b)
    w0 = w_star + xp.asarray(rng.standard_normal(M))
    return A, b, w_star, w0, lam


def errors(A, b, w_star, w0, eta, steps=None):
    """||w_t - w*|| for t = 0 .. steps. By default as many steps as it takes the predicted
    rate to shrink the error ~1e-8-fold (at most 300), well above the rounding floor."""
    if steps is None:
        lam = xp.linalg.eigvalsh(A)
        rate = float(xp.abs(1 - eta * lam).max())
        steps = 60 if rate >= 1 else min(300, max(20, int(-18 / math.log(rate))))
    return xp.linalg.norm(run_gd(A, b, w0, eta, steps) - w_star, axis=1)   # (steps + 1,)


fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for ax, kappa in zip(axes, (10.0, 100.0)):
    A, b, w_star, w0, lam = problem(kappa)
    eta_star = 2 / float(lam[0] + lam[-1])
    err = errors(A, b, w_star, w0, eta_star)
    rate_star = float(err[-1] / err[-2])
    theory = (kappa - 1) / (kappa + 1)
    print(f"kappa = {kappa:g}: measured rate at eta* = {rate_star:.6f}, "
          f"(kappa-1)/(kappa+1) = {theory:.6f}")
    assert abs(rate_star - theory) < 1e-5
    lam_max = float(lam[-1])
    etas = xp.linspace(0.02, 2.1, 30) / lam_max
    rates = []
    for eta in etas:
        e = errors(A, b, w_star, w0, float(eta))
        rates.append(float(e[-1] / e[-2]))
        bound = float(xp.abs(1 - eta * lam).max())        # max_m |1 - eta lambda_m|
        assert rates[-1] <= bound + 1e-9, "never above the curve"
        assert rates[-1] > 0.99 * bound, "on the curve, or just below it"
    eta_fine = xp.linspace(0.0, 2.1, 400) / lam_max
    theory_curve = xp.abs(1 - eta_fine[:, None] * lam[None, :]).max(axis=1)   # (400,)
    ax.plot(minidl.to_numpy(eta_fine * lam_max), minidl.to_numpy(theory_curve),
            label="max_m |1 - eta lambda_m|")
    ax.plot(minidl.to_numpy(etas * lam_max), rates, "o", ms=4,
            label="measured ||e_t+1|| / ||e_t||")
    ax.axvline(eta_star * lam_max, color="k", ls=":", label="eta* = 2/(l1+lM)")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("eta * lambda_max")
    ax.set_ylabel("rate per step")
    ax.set_title(f"kappa = {kappa:g}: best rate {theory:.3f}, measured {rate_star:.4f}",
                 fontsize=10)
    ax.legend(fontsize=8)
    if kappa == 100.0:
        err_star = err
        eta_small = 0.25 * eta_star
        err_small = errors(A, b, w_star, w0, eta_small, steps=300)

# %% [markdown]
# ## 5. kappa = 1 converges in one step; eta > 2 / lambda_max diverges
# Same b and start, but A = 3 I (kappa = 1) with eta = 1/3; then the kappa = 100 problem
# with eta = 1.05 * 2 / lambda_max, whose steepest direction is multiplied by
# 1 - 2.1 = -1.1 every step.

# %%
A_round = 3.0 * xp.eye(M)                               # kappa = 1
path = run_gd(A_round, b, w0, 1 / 3.0, 1)
w_star_round = xp.linalg.solve(A_round, b)
one_step = float(xp.linalg.norm(path[1] - w_star_round) / xp.linalg.norm(path[0] - w_star_round))
print(f"kappa = 1, eta = 1/lambda: error after one step / before = {one_step:.1e}")
assert one_step < 1e-12

eta_big = 1.05 * 2 / lam_max
err_big = errors(A, b, w_star, w0, eta_big, steps=100)
growth = float(err_big[-1] / err_big[0])
print(f"eta = 1.05 * 2/lambda_max: the error grew {growth:.3g}x in 100 steps "
      f"(|1 - eta lambda_max|^100 = {abs(1 - eta_big * lam_max) ** 100:.3g})")
assert growth > 100

ax = axes[2]
ax.semilogy(minidl.to_numpy(err_star), label="eta*")
ax.semilogy(minidl.to_numpy(err_small), label="eta*/4")
ax.semilogy(minidl.to_numpy(err_big), label="1.05 * 2/lambda_max")
ax.set_ylim(1e-3, 1e3)
ax.set_xlabel("step")
ax.set_ylabel("||w_t - w*||")
ax.legend(fontsize=8)
ax.set_title("kappa = 100: error against steps", fontsize=10)
fig.tight_layout()
print(lesson.savefig(fig, "02_rates"))

# %% [markdown]
# ## Part II: an ill-conditioned problem, and preconditioners
# Least squares with input features on very different scales is exactly an
# ill-conditioned quadratic. We measure kappa with `minidl.curvature` (exact Hessian, no
# autodiff), check the lecture's optimal step alpha* = g'g / g'Hg, and run tuned SGD
# against BNP, KFAC and KFLR on it.

# %%
import warnings

from minidl.precond import BNP, KFAC, KFLR

rng = minidl.default_rng(0)
N, d = 256, 6
scales = xp.logspace(0, 3, d)                            # (d,) feature scales 1 ... 1000
X = xp.asarray(rng.standard_normal((N, d))) * scales     # (N, d)
w_true = xp.asarray(rng.standard_normal(d)) / scales     # (d,)
y = (X @ w_true + 0.5 + xp.asarray(rng.standard_normal(N)))[:, None]  # (N, 1)
crit = MSELoss()


def fresh_model():
    model = Linear(d, 1, rng=minidl.default_rng(1))
    model.params["W"][:] = 0
    model.params["b"][:] = 0
    return model


# %% [markdown]
# ## 6. Least squares with features on different scales: the Hessian
# For MSE the Hessian is 2/N [X 1]^T [X 1]: constant, so one matrix tells the whole story.

# %%
model = fresh_model()
H = curvature.hessian(model, crit, X, y)                 # (d+1, d+1), flat order [W, b]
eig = xp.linalg.eigvalsh(H)
print(f"Hessian eigenvalues from {float(eig[0]):.3g} to {float(eig[-1]):.3g}: "
      f"kappa = {float(eig[-1] / eig[0]):.3g}")

# %% [markdown]
# ## 7. The optimal step along the gradient
# Along -g the quadratic's minimum is at alpha* = g^T g / g^T H g. It is tiny here: the
# gradient points almost entirely along the steepest (largest-scale) direction.

# %%
alpha = curvature.optimal_step(model, crit, X, y)
print(f"alpha* = {alpha:.3g}   (compare 1 / lambda_max = {1 / float(eig[-1]):.3g})")

# %% [markdown]
# ## 8. What a preconditioner does about it: steps to reach the target
# Target: 99.9% of the way from the starting loss to the least-squares optimum.

# %%
A = xp.concatenate([X, xp.ones((N, 1))], axis=1)         # (N, d+1)
coef = xp.linalg.lstsq(A, y, rcond=None)[0]              # (d+1, 1)
L_opt = float(((A @ coef - y) ** 2).mean())


def steps_to_target(make_precond, lr, cap):
    model = fresh_model()
    pre = make_precond(model) if make_precond else None
    opt = SGD(model, lr=lr)
    L0 = crit.forward(model.forward(X), y)
    for k in range(cap):
        L = crit.forward(model.forward(X), y)
        if L <= L_opt + 1e-3 * (L0 - L_opt):
            return k
        model.backward(crit.backward())
        if pre is not None:
            pre.step()
        opt.step()
    return cap


lam_max = float(eig[-1])
sgd = min(steps_to_target(None, c / lam_max, 2000) for c in (1.0, 1.9))
print(f"SGD, lr tuned up to 1.9/lambda_max: {sgd if sgd < 2000 else '>= 2000'} steps")
counts = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    methods = {
        "BNP (normalise each input)": (
            lambda m: BNP(m, stat_decay=0.0, eps1=0.0, eps2=1e-8), 0.5),
        # factors from the first batch: starting from A = G = I (the default) the running
        # average needs hundreds of steps to forget I on this deterministic problem
        "KFAC (A kron G, empirical)": (
            lambda m: KFAC(m, loss=crit, T1=1, T2=1, damping=1e-4, kl_clip=None,
                           factor_init="batch"), 3.0),
        "KFLR (exact Gauss-Newton factor)": (
            lambda m: KFLR(m, loss=crit, damping=1e-8, damping_mode="eigen"), 1.0),
    }
    for name, (make, lr) in methods.items():
        counts[name] = steps_to_target(make, lr, 300)
        print(f"{name:<34} lr {lr:<4} {counts[name]} steps")
assert sgd >= 2000, "tuned SGD should not reach the target on this problem"
assert counts["KFLR (exact Gauss-Newton factor)"] == 1, "KFLR's step is a Newton step here"
assert max(counts.values()) < 50

# %% [markdown]
# For one Linear layer with MSE, KFLR's factors are the exact Hessian, so its step is a
# Newton step: one step. BNP removes the feature scales, which is all the ill-conditioning
# here. See `tests/test_precond_illconditioned.py` for all seven methods.

# %% [markdown]
# ## Exercises
# 1. Section 4 measured the rate at eta*. Plot the per-direction errors |z_m,t| for all ten
#    directions at eta*: which directions decay fastest, and why do the two extremes
#    decay at the same speed?
# 2. Add momentum (`SGD(model, lr, momentum=beta)`) to the kappa = 100 problem. Goh (2017)
#    gives the best rate (sqrt(kappa) - 1) / (sqrt(kappa) + 1) at
#    eta = (2 / (sqrt(lambda_1) + sqrt(lambda_M)))^2, beta = that rate squared: measure it.
# 3. In part II, standardise the inputs (`minidl.data.Standardise`) before fitting: what
#    are kappa and the SGD step count now? (Lesson 7 goes further, to whitening.)
