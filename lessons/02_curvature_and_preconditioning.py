# %% [markdown]
# # Lesson 2: why curvature matters, and what a preconditioner does about it
#
# Gradient descent on a quadratic with Hessian H converges at a rate set by the condition
# number kappa = lambda_max / lambda_min: the step must be below 2 / lambda_max, and the
# flattest direction then shrinks by only (1 - 2/kappa) per step. Least squares with input
# features on very different scales is exactly such a problem. We
#
# 1. build it, and measure kappa with `minidl.curvature` (exact Hessian, no autodiff),
# 2. check the lecture's optimal step alpha* = g^T g / g^T H g,
# 3. run tuned SGD against BNP, KFAC and KFLR on it.
#
# Run it top to bottom: `python lessons/02_curvature_and_preconditioning.py`.

# %%
import warnings

import minidl
from minidl import curvature
from minidl.layers import Linear
from minidl.losses import MSELoss
from minidl.optim import SGD
from minidl.precond import BNP, KFAC, KFLR

minidl.set_default_dtype("float64")
rng = minidl.default_rng(0)
xp = minidl.xp()

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
# ## 1. The Hessian and its condition number
# For MSE the Hessian is 2/N [X 1]^T [X 1]: constant, so one matrix tells the whole story.

# %%
model = fresh_model()
H = curvature.hessian(model, crit, X, y)                 # (d+1, d+1), flat order [W, b]
eig = xp.linalg.eigvalsh(H)
print(f"Hessian eigenvalues from {float(eig[0]):.3g} to {float(eig[-1]):.3g}: "
      f"kappa = {float(eig[-1] / eig[0]):.3g}")

# %% [markdown]
# ## 2. The optimal step along the gradient
# Along -g the quadratic's minimum is at alpha* = g^T g / g^T H g. It is tiny here: the
# gradient points almost entirely along the steepest (largest-scale) direction.

# %%
alpha = curvature.optimal_step(model, crit, X, y)
print(f"alpha* = {alpha:.3g}   (compare 1 / lambda_max = {1 / float(eig[-1]):.3g})")

# %% [markdown]
# ## 3. Steps to reach the target
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
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    methods = {
        "BNP (normalise each input)": (lambda m: BNP(m, stat_decay=0.0, eps1=0.0, eps2=1e-8), 0.5),
        "KFAC (A kron G, empirical)": (
            lambda m: KFAC(m, loss=crit, T1=1, T2=1, damping=1e-4, kl_clip=None), 3.0),
        "KFLR (exact Gauss-Newton factor)": (
            lambda m: KFLR(m, loss=crit, damping=1e-8, damping_mode="eigen"), 1.0),
    }
    for name, (make, lr) in methods.items():
        print(f"{name:<34} lr {lr:<4} {steps_to_target(make, lr, 300)} steps")

# %% [markdown]
# For one Linear layer with MSE, KFLR's factors are the exact Hessian, so its step is a
# Newton step: one step. BNP removes the feature scales, which is all the ill-conditioning
# here. See `tests/test_precond_illconditioned.py` for all seven methods.
