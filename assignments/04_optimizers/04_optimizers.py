# %% [raw]
# # ASSIGNMENT CONFIG
# name: 04_optimizers
# export_cell:
#   pdf: false
# check_all_cell: true

# %% [markdown]
# # Assignment 4: first-order optimizers, and why gradient descent is slow
#
# You write six update rules as `minidl.optim.Optimizer` subclasses (momentum and Nesterov,
# AdaGrad, RMSProp, Adam, Rprop), then study gradient descent on a quadratic, where the
# condition number of the Hessian sets the rate (seeds: the "Deep Learning Optimization"
# lectures).
#
# The base class does the bookkeeping. `step()` visits every parameter `theta` that has a
# gradient `g`, makes its state with your `init_state(theta)` the first time (a dict of
# arrays, plus `s["step"]`), counts `s["step"] = 1, 2, ...`, and calls your
# `update(theta, g, s)`, which must change `theta` **in place** (`theta -= ...`) and may
# update `s`, but must leave `g` as it is (it is the layer's gradient: compute into new
# arrays). Each method must match `torch.optim` (and `minidl.optim`) step for step.

# %%
import numpy as np

import minidl
from minidl.optim import Optimizer

rng = minidl.default_rng(0)

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2
# all_or_nothing: true

# %% [markdown]
# **Question 1 (2 points).** SGD with momentum, PyTorch's form, for step $k$:
#
# $$m_k = \mu\, m_{k-1} + g_k,\quad d_k = \begin{cases} g_k + \mu\, m_k & \text{Nesterov}\\
#   m_k & \text{heavy ball}\end{cases},\quad \theta_k = \theta_{k-1} - \eta\, d_k .$$

# %% [raw]
# # BEGIN SOLUTION

# %%
class Momentum(Optimizer):
    def __init__(self, model, lr, momentum=0.9, nesterov=False):
        self.momentum, self.nesterov = momentum, nesterov
        super().__init__(model, lr)

    def init_state(self, theta):
        return {"m": np.zeros_like(theta)}

    def update(self, theta, g, s):
        # BEGIN SOLUTION
        s["m"] = self.momentum * s["m"] + g
        d = g + self.momentum * s["m"] if self.nesterov else s["m"]
        theta -= self.lr * d
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: Momentum(m, 0.1, 0.9), lambda m: _O.SGD(m, 0.1, momentum=0.9))
assert_same_updates(lambda m: Momentum(m, 0.1, 0.9, nesterov=True), lambda m: _O.SGD(m, 0.1, momentum=0.9, nesterov=True))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: Momentum(m, 0.05, 0.8, nesterov=True), lambda m: _O.SGD(m, 0.05, momentum=0.8, nesterov=True), seed=41)
assert_same_updates(lambda m: Momentum(m, 0.3, 0.5), lambda m: _O.SGD(m, 0.3, momentum=0.5), seed=42)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 2
# all_or_nothing: true

# %% [markdown]
# **Question 2 (2 points).** AdaGrad and RMSProp divide by a running size of the gradient:
#
# $$\text{AdaGrad: } u_k = u_{k-1} + g_k^2,\quad
#   \theta_k = \theta_{k-1} - \eta\, g_k / (\sqrt{u_k} + \epsilon)$$
# $$\text{RMSProp: } v_k = \alpha v_{k-1} + (1-\alpha) g_k^2,\quad
#   \theta_k = \theta_{k-1} - \eta\, g_k / (\sqrt{v_k} + \epsilon)$$

# %% [raw]
# # BEGIN SOLUTION

# %%
class AdaGrad(Optimizer):
    def __init__(self, model, lr=1e-2, eps=1e-10):
        self.eps = eps
        super().__init__(model, lr)

    def init_state(self, theta):
        return {"u": np.zeros_like(theta)}

    def update(self, theta, g, s):
        # BEGIN SOLUTION
        s["u"] = s["u"] + g * g
        theta -= self.lr * g / (np.sqrt(s["u"]) + self.eps)
        # END SOLUTION


class RMSProp(Optimizer):
    def __init__(self, model, lr=1e-2, alpha=0.99, eps=1e-8):
        self.alpha, self.eps = alpha, eps
        super().__init__(model, lr)

    def init_state(self, theta):
        return {"v": np.zeros_like(theta)}

    def update(self, theta, g, s):
        # BEGIN SOLUTION
        s["v"] = self.alpha * s["v"] + (1 - self.alpha) * g * g
        theta -= self.lr * g / (np.sqrt(s["v"]) + self.eps)
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: AdaGrad(m, 0.1), lambda m: _O.AdaGrad(m, 0.1))
assert_same_updates(lambda m: RMSProp(m, 0.01), lambda m: _O.RMSProp(m, 0.01))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: AdaGrad(m, 0.5, eps=1e-6), lambda m: _O.AdaGrad(m, 0.5, eps=1e-6), seed=43)
assert_same_updates(lambda m: RMSProp(m, 0.02, alpha=0.9, eps=1e-6), lambda m: _O.RMSProp(m, 0.02, alpha=0.9, eps=1e-6), seed=44)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 3
# all_or_nothing: true

# %% [markdown]
# **Question 3 (3 points).** Adam: momentum on the gradient and RMSProp's scale, each with
# its bias correction (both moments start at 0, so early averages are too small):
#
# $$m_k = \beta_1 m_{k-1} + (1-\beta_1) g_k,\quad v_k = \beta_2 v_{k-1} + (1-\beta_2) g_k^2,$$
# $$\hat m_k = \frac{m_k}{1-\beta_1^k},\quad \hat v_k = \frac{v_k}{1-\beta_2^k},\quad
#   \theta_k = \theta_{k-1} - \eta\, \frac{\hat m_k}{\sqrt{\hat v_k} + \epsilon}.$$
#
# Use `k = s["step"]`.

# %% [raw]
# # BEGIN SOLUTION

# %%
class Adam(Optimizer):
    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.betas, self.eps = betas, eps
        super().__init__(model, lr)

    def init_state(self, theta):
        return {"m": np.zeros_like(theta), "v": np.zeros_like(theta)}

    def update(self, theta, g, s):
        # BEGIN SOLUTION
        beta1, beta2 = self.betas
        k = s["step"]
        s["m"] = beta1 * s["m"] + (1 - beta1) * g
        s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
        mhat = s["m"] / (1 - beta1 ** k)
        vhat = s["v"] / (1 - beta2 ** k)
        theta -= self.lr * mhat / (np.sqrt(vhat) + self.eps)
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: Adam(m, 0.01), lambda m: _O.Adam(m, 0.01))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: Adam(m, 0.003, betas=(0.8, 0.99), eps=1e-6), lambda m: _O.Adam(m, 0.003, betas=(0.8, 0.99), eps=1e-6), steps=10, seed=45)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: 2
# all_or_nothing: true

# %% [markdown]
# **Question 4 (2 points).** Rprop uses only the sign of the gradient and a step size
# $\eta$ per weight (start: `lr`). With $p = g_k \cdot g_{prev}$ elementwise: where
# $p > 0$ multiply $\eta$ by `eta_plus`, where $p < 0$ by `eta_minus` (clip to
# `[eta_min, eta_max]`); where $p < 0$ also skip this step (use $\bar g = 0$ there,
# $\bar g = g_k$ elsewhere). Then $\theta \leftarrow \theta - \mathrm{sign}(\bar g)\,\eta$
# and $g_{prev} \leftarrow \bar g$.

# %% [raw]
# # BEGIN SOLUTION

# %%
class Rprop(Optimizer):
    def __init__(self, model, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)):
        (self.eta_minus, self.eta_plus), (self.eta_min, self.eta_max) = etas, step_sizes
        super().__init__(model, lr)

    def init_state(self, theta):
        return {"eta": np.full_like(theta, self.lr), "gprev": np.zeros_like(theta)}

    def update(self, theta, g, s):
        # BEGIN SOLUTION
        p = g * s["gprev"]
        factor = np.where(p > 0, self.eta_plus, np.where(p < 0, self.eta_minus, 1.0))
        s["eta"] = np.clip(s["eta"] * factor, self.eta_min, self.eta_max)
        gbar = np.where(p < 0, 0.0, g)
        theta -= np.sign(gbar) * s["eta"]
        s["gprev"] = gbar
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: Rprop(m, 0.01), lambda m: _O.Rprop(m, 0.01))
assert_same_updates(lambda m: Rprop(m, 0.05, step_sizes=(0.02, 0.07)), lambda m: _O.Rprop(m, 0.05, step_sizes=(0.02, 0.07)), steps=8)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.optim as _O
from minidl.assign.feedback import assert_same_updates
assert_same_updates(lambda m: Rprop(m, 0.1, etas=(0.3, 1.5), step_sizes=(0.05, 0.2)), lambda m: _O.Rprop(m, 0.1, etas=(0.3, 1.5), step_sizes=(0.05, 0.2)), steps=10, seed=46)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q5
# points: 2
# all_or_nothing: true

# %% [markdown]
# **Question 5 (2 points).** Gradient descent on $L(w) = \tfrac12 w^\top A w - b^\top w$
# with symmetric positive definite $A$: $w_{t+1} = w_t - \eta (A w_t - b)$. In the
# eigenbasis of $A$ each error component shrinks by $|1 - \eta\lambda_m|$ per step, so the
# best constant step is $\eta^* = 2/(\lambda_{min} + \lambda_{max})$, with rate
# $(\kappa - 1)/(\kappa + 1)$, $\kappa = \lambda_{max}/\lambda_{min}$.
#
# Write `gd(A, b, w0, lr, steps)` returning the iterates as an array `(steps + 1, d)`
# (starting with `w0`), and `best_step(A)` returning `(lr_star, rate)`.

# %% [raw]
# # BEGIN SOLUTION

# %%
def gd(A, b, w0, lr, steps):
    """Iterates w_0 .. w_steps of gradient descent on 0.5 w^T A w - b^T w."""
    # BEGIN SOLUTION
    ws = [np.array(w0, dtype=float)]
    for _ in range(steps):
        ws.append(ws[-1] - lr * (A @ ws[-1] - b))
    return np.array(ws)
    # END SOLUTION


def best_step(A):
    """(2 / (lambda_min + lambda_max), (kappa - 1) / (kappa + 1)) for SPD A."""
    # BEGIN SOLUTION
    lam = np.linalg.eigvalsh(A)
    kappa = lam[-1] / lam[0]
    return 2.0 / (lam[0] + lam[-1]), (kappa - 1) / (kappa + 1)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close
_A = np.diag([1.0, 10.0])
assert_close("best_step(diag(1, 10))", np.array(best_step(_A)), [2 / 11, 9 / 11])
_w = gd(_A, np.zeros(2), [1.0, 1.0], 0.1, 3)
assert_close("gd iterates", _w, [[1.0, 1.0], [0.9, 0.0], [0.81, 0.0], [0.729, 0.0]])
_w = gd(_A, np.array([1.0, 2.0]), [0.0, 0.0], 0.1, 2)
assert_close("gd iterates with b = (1, 2)", _w, [[0.0, 0.0], [0.1, 0.2], [0.19, 0.2]])

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(47)
_Q, _ = np.linalg.qr(_r.standard_normal((4, 4)))
_A = _Q @ np.diag([0.5, 1.0, 3.0, 20.0]) @ _Q.T
_b = _r.standard_normal(4)
_lr, _rate = best_step(_A)
assert_close("best_step", np.array([_lr, _rate]), [2 / 20.5, 39 / 41])
_w = gd(_A, _b, np.zeros(4), _lr, 60)
_err = np.linalg.norm(_w - np.linalg.solve(_A, _b), axis=1)
assert _w.shape == (61, 4), f"gd returned shape {_w.shape}, expected (61, 4)"
assert np.all(_err[1:] <= _rate * _err[:-1] * (1 + 1e-9)), "an error ratio exceeds the rate"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# ## Condition number and the rate (not autograded)
#
# Plot the error $\|w_t - w_*\|$ against $t$ on a log scale for $\kappa = 10, 100, 1000$ with
# the best step, and compare the slopes with $\log((\kappa-1)/(\kappa+1))$. Then run your
# momentum with $\mu = ((\sqrt\kappa - 1)/(\sqrt\kappa + 1))^2$: how does its rate depend on
# $\kappa$? (The autograder skips this cell.)

# %% tags=["otter_ignore"]
import matplotlib.pyplot as plt

for kappa in (10, 100, 1000):
    A = np.diag(np.linspace(1.0, kappa, 5))
    lr, rate = best_step(A)
    w = gd(A, np.ones(5), np.zeros(5), lr, 200)
    plt.semilogy(np.linalg.norm(w - np.linalg.solve(A, np.ones(5)), axis=1),
                 label=f"kappa={kappa}, rate {rate:.3f}")
plt.xlabel("step t")
plt.ylabel("||w_t - w*||")
plt.legend()
plt.show()
