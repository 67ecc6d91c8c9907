# %% [raw]
# # ASSIGNMENT CONFIG
# name: 03_normalisation
# export_cell:
#   pdf: false
# check_all_cell: true

# %% [markdown]
# # Assignment 3: normalisation, and preconditioning instead of normalising
#
# You write batch normalisation (forward in training and evaluation mode, and its backward
# pass), layer normalisation, and the gradient transform of Batch Normalization
# Preconditioning (BNP; Lange, Helfrich and Ye, JMLR 2022), which gives a dense layer the
# conditioning that BN would give it without changing the network. Then you compare the
# two with small mini-batches.
#
# Conventions (PyTorch's and minidl's): `BatchNorm1d` normalises each feature of a batch
# `x (N, D)` with the batch mean and the **biased** batch variance, then scales by `gamma`
# and shifts by `beta` (both `(D,)`). In training mode it also updates running estimates
# with `momentum = 0.1`, using the **unbiased** variance for `running_var`; evaluation mode
# normalises with those running estimates. `eps = 1e-5` is added to the variance.

# %%
import numpy as np

import minidl
from minidl.layers import Layer
from minidl.gradcheck import check_layer

rng = minidl.default_rng(0)

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 3
# all_or_nothing: true

# %% [markdown]
# **Question 1 (3 points).** Write `BatchNorm1d.forward` for both modes (`self.training`
# is True after `train()`, False after `eval()`), including the running statistics
#
# $$\mu_{run} \leftarrow (1 - m)\,\mu_{run} + m\,\mu_B, \qquad
#   \sigma^2_{run} \leftarrow (1 - m)\,\sigma^2_{run} + m\,\tfrac{N}{N-1}\sigma^2_B .$$
#
# Cache what the backward pass (Question 2) needs.

# %% [raw]
# # BEGIN SOLUTION

# %%
class BatchNorm1d(Layer):
    """Batch normalisation of x (N, D) per feature; gamma, beta (D,)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.params["gamma"] = np.ones(num_features)
        self.params["beta"] = np.zeros(num_features)
        self.buffers["running_mean"] = np.zeros(num_features)
        self.buffers["running_var"] = np.ones(num_features)

    def forward(self, x):
        # BEGIN SOLUTION
        if self.training:
            N = x.shape[0]
            mu, var = x.mean(axis=0), x.var(axis=0)
            m = self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mu
            self.buffers["running_var"] = ((1 - m) * self.buffers["running_var"]
                                           + m * var * N / (N - 1))
        else:
            mu, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = (x - mu) * inv_std
        self.cache["xhat"], self.cache["inv_std"] = xhat, inv_std
        return self.params["gamma"] * xhat + self.params["beta"]
        # END SOLUTION

    def backward(self, dout):
        # BEGIN SOLUTION
        xhat, inv_std = self.cache["xhat"], self.cache["inv_std"]
        self.grads["gamma"] = (dout * xhat).sum(axis=0)
        self.grads["beta"] = dout.sum(axis=0)
        dxhat = dout * self.params["gamma"]
        if not self.training:
            return dxhat * inv_std
        return inv_std * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close
_x = np.array([[1.0, 2.0], [3.0, 6.0]])
_bn = BatchNorm1d(2)
assert_close("BatchNorm1d forward (train)", _bn.forward(_x), [[-1 / np.sqrt(1 + 1e-5), -2 / np.sqrt(4 + 1e-5)], [1 / np.sqrt(1 + 1e-5), 2 / np.sqrt(4 + 1e-5)]])
assert_close("running_mean", _bn.buffers["running_mean"], [0.2, 0.4])
assert_close("running_var", _bn.buffers["running_var"], [0.9 + 0.1 * 2.0, 0.9 + 0.1 * 8.0])
_ = _bn.eval()
assert_close("BatchNorm1d forward (eval)", _bn.forward(_x), (_x - np.array([0.2, 0.4])) / np.sqrt(np.array([1.1, 1.7]) + 1e-5))

# %%
import minidl.layers as _L
from minidl.assign.feedback import assert_close
# against minidl's BatchNorm1d: gamma and beta that are not 1 and 0 (in both modes), two
# batches of 4 examples of 3 features (N != D; the running statistics carry over), and
# features of spread 1, 1e-3 (a variance below eps) and 20
_bn, _lib = BatchNorm1d(3), _L.BatchNorm1d(3).astype("float64")
_bn.params["gamma"], _bn.params["beta"] = np.array([2.0, -0.5, 1.5]), np.array([0.3, 1.0, -2.0])
_lib.params["gamma"], _lib.params["beta"] = _bn.params["gamma"].copy(), _bn.params["beta"].copy()
_g = minidl.default_rng(9)
for _batch in (1, 2):
    _x = _g.standard_normal((4, 3)) * np.array([1.0, 1e-3, 20.0]) + np.array([0.0, 5.0, -3.0])
    assert_close(f"BatchNorm1d forward (train), batch {_batch}", _bn.forward(_x), _lib.forward(_x))
    assert_close(f"running_mean after batch {_batch}", _bn.buffers["running_mean"], _lib.buffers["running_mean"])
    assert_close(f"running_var after batch {_batch}", _bn.buffers["running_var"], _lib.buffers["running_var"])
_ = _bn.eval()
_ = _lib.eval()
_x = _g.standard_normal((3, 3)) * np.array([1.0, 1e-3, 20.0]) + np.array([0.0, 5.0, -3.0])
assert_close("BatchNorm1d forward (eval, gamma and beta not 1 and 0)", _bn.forward(_x), _lib.forward(_x))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(31)
_mine, _ref = BatchNorm1d(4), _L.BatchNorm1d(4).astype("float64")
_mine.params["gamma"] = _r.standard_normal(4)
_mine.params["beta"] = _r.standard_normal(4)
_ref.params["gamma"], _ref.params["beta"] = _mine.params["gamma"].copy(), _mine.params["beta"].copy()
for _k in range(3):
    _x = 2 * _r.standard_normal((6, 4)) + 1
    assert_close(f"train-mode output, batch {_k + 1}", _mine.forward(_x), _ref.forward(_x))
assert_close("running_mean", _mine.buffers["running_mean"], _ref.buffers["running_mean"])
assert_close("running_var", _mine.buffers["running_var"], _ref.buffers["running_var"])
_ = _mine.eval()
_ = _ref.eval()
_x = _r.standard_normal((5, 4))
assert_close("eval-mode output", _mine.forward(_x), _ref.forward(_x))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 3
# all_or_nothing: true

# %% [markdown]
# **Question 2 (3 points).** Write `BatchNorm1d.backward` (in the class above) for training
# mode. With $\hat x = (x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon}$ and
# $d\hat x = \text{dout}\cdot\gamma$, every $x_n$ moves the mean and the variance too:
#
# $$dx = \frac{1}{\sqrt{\sigma_B^2+\epsilon}}\Big(d\hat x - \mathrm{mean}_n(d\hat x)
#   - \hat x\,\mathrm{mean}_n(d\hat x\,\hat x)\Big).$$
#
# Also fill `grads["gamma"]` and `grads["beta"]`. (A gradient check with an all-ones
# upstream gradient cannot see a missing term here: sum(out) does not depend on x.
# `check_layer` uses a random one.)

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_gradcheck
_bn = BatchNorm1d(3)
_bn.params["gamma"] = np.array([1.0, 2.0, -0.5])
assert_gradcheck(_bn, minidl.default_rng(1).standard_normal((5, 3)))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L
from minidl.assign.feedback import assert_close, assert_gradcheck
_r = minidl.default_rng(32)
_mine, _ref = BatchNorm1d(4), _L.BatchNorm1d(4).astype("float64")
_mine.params["gamma"] = _r.standard_normal(4)
_ref.params["gamma"] = _mine.params["gamma"].copy()
_x, _dout = _r.standard_normal((7, 4)), _r.standard_normal((7, 4))
_ = _mine.forward(_x)
_ = _ref.forward(_x)
assert_close("dx", _mine.backward(_dout), _ref.backward(_dout))
assert_close("grads['gamma']", _mine.grads["gamma"], _ref.grads["gamma"])
assert_close("grads['beta']", _mine.grads["beta"], _ref.grads["beta"])
assert_gradcheck(BatchNorm1d(2), _r.standard_normal((3, 2)))

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
# **Question 3 (3 points).** Complete `LayerNorm` over the last axis of `x (N, D)`: the same
# normalisation, but with the statistics of each **row** (no running statistics, the same
# in both modes), and its backward pass.

# %% [raw]
# # BEGIN SOLUTION

# %%
class LayerNorm(Layer):
    """Layer normalisation of each row of x (N, D); gamma, beta (D,)."""

    def __init__(self, D, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.params["gamma"] = np.ones(D)
        self.params["beta"] = np.zeros(D)

    def forward(self, x):
        # BEGIN SOLUTION
        mu = x.mean(axis=1, keepdims=True)
        inv_std = 1.0 / np.sqrt(x.var(axis=1, keepdims=True) + self.eps)
        xhat = (x - mu) * inv_std
        self.cache["xhat"], self.cache["inv_std"] = xhat, inv_std
        return self.params["gamma"] * xhat + self.params["beta"]
        # END SOLUTION

    def backward(self, dout):
        # BEGIN SOLUTION
        xhat, inv_std = self.cache["xhat"], self.cache["inv_std"]
        self.grads["gamma"] = (dout * xhat).sum(axis=0)
        self.grads["beta"] = dout.sum(axis=0)
        dxhat = dout * self.params["gamma"]
        return inv_std * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close, assert_gradcheck
_x = np.array([[1.0, 3.0], [0.0, -4.0]])
assert_close("LayerNorm forward", LayerNorm(2).forward(_x), [[-1 / np.sqrt(1 + 1e-5), 1 / np.sqrt(1 + 1e-5)], [2 / np.sqrt(4 + 1e-5), -2 / np.sqrt(4 + 1e-5)]])
_ln = LayerNorm(4)
_ln.params["gamma"] = np.array([1.0, -2.0, 0.5, 3.0])
assert_gradcheck(_ln, minidl.default_rng(2).standard_normal((3, 4)))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L
from minidl.assign.feedback import assert_close, assert_gradcheck
_r = minidl.default_rng(33)
_mine, _ref = LayerNorm(5), _L.LayerNorm(5).astype("float64")
_mine.params["gamma"], _mine.params["beta"] = _r.standard_normal(5), _r.standard_normal(5)
_ref.params["gamma"], _ref.params["beta"] = _mine.params["gamma"].copy(), _mine.params["beta"].copy()
_x, _dout = _r.standard_normal((4, 5)), _r.standard_normal((4, 5))
assert_close("LayerNorm forward", _mine.forward(_x), _ref.forward(_x))
assert_close("dx", _mine.backward(_dout), _ref.backward(_dout))
assert_close("grads['gamma']", _mine.grads["gamma"], _ref.grads["gamma"])
assert_close("grads['beta']", _mine.grads["beta"], _ref.grads["beta"])
_ln = LayerNorm(3)
_ln.params["gamma"] = _r.standard_normal(3)
assert_gradcheck(_ln, _r.standard_normal((2, 3)))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: 3
# all_or_nothing: true

# %% [markdown]
# **Question 4 (3 points).** BNP's gradient transform for a dense layer (seed slides: BN
# preconditioning). For the layer input `h (N, m)`, the weight gradient `G_W (n, m)` and the
# bias gradient `G_b (n,)`, on the first step (the running statistics are the batch's):
#
# 1. `mu = mean_n h`, `s2 = var_n h` (biased), per input feature;
# 2. `s2t = s2 + eps1 * max(s2) + eps2`, `q = sqrt(max(m / N, 1))`;
# 3. `G_W <- (G_W - G_b mu^T) / s2t / q` (`s2t` divides column `j`), then
#    `G_b <- G_b / q - G_W mu` with the **new** `G_W`.
#
# Return the new `(G_W, G_b)`. This is `(1/q) P P^T` applied to `[G_b; G_W[o]]` for every
# output neuron `o`, with `P = [[1, -mu^T], [0, I]] diag(1, 1/sigma)`.

# %% [raw]
# # BEGIN SOLUTION

# %%
def bnp_direction(h, G_W, G_b, eps1=1e-4, eps2=1e-5):
    """BNP-preconditioned (G_W (n, m), G_b (n,)) for a dense layer with input h (N, m)."""
    # BEGIN SOLUTION
    N, m = h.shape
    mu, s2 = h.mean(axis=0), h.var(axis=0)
    s2t = s2 + eps1 * s2.max() + eps2
    q = np.sqrt(max(m / N, 1.0))
    G_W_new = (G_W - np.outer(G_b, mu)) / s2t / q
    G_b_new = G_b / q - G_W_new @ mu
    return G_W_new, G_b_new
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close
_h = np.array([[1.0, 0.0], [3.0, 2.0]])
_GW, _Gb = bnp_direction(_h, np.array([[1.0, 1.0]]), np.array([0.5]))
_s2t = np.array([1.0, 1.0]) * (1 + 1e-4) + 1e-5
assert_close("G_W", _GW, [[(1 - 0.5 * 2) / _s2t[0], (1 - 0.5) / _s2t[1]]])
assert_close("G_b", _Gb, 0.5 - _GW @ np.array([2.0, 1.0]))
# more inputs than examples (m = 3 > N = 2: q = sqrt(3/2)), and variances that differ
_h = np.array([[0.0, 1.0, 2.0], [2.0, 5.0, 3.0]])
_mu, _s2 = np.array([1.0, 3.0, 2.5]), np.array([1.0, 4.0, 0.25])
_GW, _Gb = bnp_direction(_h, np.array([[1.0, 2.0, -1.0], [0.0, 1.0, 3.0]]), np.array([0.5, -1.0]))
_s2t, _q = _s2 + 1e-4 * 4.0 + 1e-5, np.sqrt(1.5)
_expected = (np.array([[1.0, 2.0, -1.0], [0.0, 1.0, 3.0]]) - np.outer([0.5, -1.0], _mu)) / _s2t / _q
assert_close("G_W (N=2, m=3)", _GW, _expected)
assert_close("G_b (N=2, m=3)", _Gb, np.array([0.5, -1.0]) / _q - _expected @ _mu)

# %%
import minidl.layers as _L, minidl.precond as _P
from minidl.assign.feedback import assert_close
# against minidl's BNP: more examples than inputs (N = 5 > m = 3, so q = 1), eps1 and eps2
# that are not the defaults, and inputs of spread 1, 1e-3 (a variance below eps2) and 3
_g = minidl.default_rng(10)
_net = _L.Sequential(_L.Linear(3, 2, rng=_g)).astype("float64")
_h = _g.standard_normal((5, 3)) * np.array([1.0, 1e-3, 3.0]) + np.array([2.0, -1.0, 0.5])
_ = _net.forward(_h)
_ = _net.backward(_g.standard_normal((5, 2)))
_GW, _Gb = bnp_direction(_h, _net.layers[0].grads["W"].copy(), _net.layers[0].grads["b"].copy(), eps1=1e-3, eps2=1e-2)
_ = _P.BNP(_net, eps1=1e-3, eps2=1e-2, warn=False).step()
assert_close("G_W (N=5, m=3, eps1=1e-3, eps2=1e-2)", _GW, _net.layers[0].grads["W"])
assert_close("G_b (N=5, m=3, eps1=1e-3, eps2=1e-2)", _Gb, _net.layers[0].grads["b"])

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L, minidl.precond as _P
from minidl.assign.feedback import assert_close
for _N, _m, _eps1 in ((8, 5, 1e-4), (3, 6, 1e-2)):
    _r = minidl.default_rng(34 + _N)
    _model = _L.Sequential(_L.Linear(_m, 4, rng=_r)).astype("float64")
    _h = 3 * _r.standard_normal((_N, _m)) + 1
    _ = _model.forward(_h)
    _ = _model.backward(_r.standard_normal((_N, 4)))
    _lin = _model.layers[0]
    _GW, _Gb = bnp_direction(_h, _lin.grads["W"].copy(), _lin.grads["b"].copy(), eps1=_eps1)
    _ = _P.BNP(_model, eps1=_eps1, eps2=1e-5, warn=False).step()
    assert_close(f"G_W (N={_N}, m={_m})", _GW, _lin.grads["W"])
    assert_close(f"G_b (N={_N}, m={_m})", _Gb, _lin.grads["b"])

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# ## Small batches: BN against BNP (not autograded)
#
# BN's statistics come from the mini-batch itself, so with a batch of 4 they are noisy and
# the network trained with them differs from the one used at test time. BNP keeps the
# network unchanged and only transforms the gradients with running statistics. Train the
# same MLP both ways with `batch_size = 4` and compare test accuracy; then try 64.
# (The autograder skips this cell.)

# %% tags=["otter_ignore"]
from minidl import layers as L, losses, optim, precond, data, train

x, y = data.bundled_mnist("train")
x = data.normalise(x).reshape(len(x), -1)[:4000]
y = y[:4000]
xt, yt = data.bundled_mnist("test")
xt = data.normalise(xt).reshape(len(xt), -1)
for batch_size in (4, 64):
    for name in ("BN", "BNP"):
        r = minidl.default_rng(1)
        if name == "BN":
            model = L.Sequential(L.Linear(784, 128, rng=r), L.BatchNorm1d(128), L.ReLU(),
                                 L.Linear(128, 10, rng=r))
        else:
            model = L.Sequential(L.Linear(784, 128, rng=r), L.ReLU(), L.Linear(128, 10, rng=r))
        opt = optim.SGD(model, lr=0.02, momentum=0.9)
        pre = precond.BNP(model, warn=False) if name == "BNP" else None
        crit = losses.SoftmaxCrossEntropy()
        for xb, yb in data.DataLoader(x, y, batch_size, rng=r):
            model.train()
            crit.forward(model.forward(xb), yb)
            model.backward(crit.backward())
            if pre is not None:
                pre.step()
            opt.step()
        model.eval()
        acc = (model.forward(xt).argmax(axis=1) == yt).mean()
        print(f"batch {batch_size:>3}, {name:>3}: test accuracy {acc:.3f}")
