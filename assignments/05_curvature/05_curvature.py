# %% [raw]
# # ASSIGNMENT CONFIG
# name: 05_curvature
# export_cell:
#   pdf: false
# check_all_cell: true

# %% [markdown]
# # Assignment 5: curvature of a neural network
#
# Second-order methods precondition the gradient with an approximation of the curvature.
# You compute three of the objects they are built from, each checked against the exact
# matrix of a tiny network (seeds: "Practical Gauss-Newton Optimisation for Deep Learning",
# and the Mini-Block Fisher paper):
#
# 1. Gauss-Newton-vector products $G v = J^\top H_L J v$ without forming $G$;
# 2. the K-FAC factors of a dense layer, $A$ and $G$ with block $\approx G \otimes A$;
# 3. the mini-blocks of the empirical Fisher of a dense layer (one block per neuron).
#
# Conventions: parameters are flattened in minidl's order (layers in forward order, `W`
# then `b`, each raveled in C order; `minidl.curvature.param_slices(model)` locates them).
# The loss is the **mean** softmax cross-entropy $L = \frac1N \sum_n \ell_n$; the empirical
# Fisher is $\frac1N \sum_n g_n g_n^\top$ with $g_n = \partial \ell_n/\partial\theta$, the
# gradient of example $n$'s **own** loss (so $g_n = N \times$ its share of $\nabla L$).

# %%
import numpy as np

import minidl
from minidl import layers as L
from minidl.curvature import set_rparams, flatten_grads, param_slices

rng = minidl.default_rng(0)

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 3
# all_or_nothing: true

# %% [markdown]
# **Question 1 (3 points).** Write `ggn_vector_product(model, x, y, v)` for a minidl model
# followed by the mean softmax cross-entropy, in three passes:
#
# 1. forward, then the forward-mode derivative $J v$: `set_rparams(model, v)` puts the
#    direction into the layers, and `model.jvp(np.zeros_like(x))` returns $R\{\text{logits}\}
#    = J v$ (the input does not move);
# 2. the loss Hessian at the logits, per example
#    $H_n u = \frac1N\left(p_n \odot u - p_n (p_n^\top u)\right)$, $p_n = \mathrm{softmax}$;
# 3. $J^\top$ of that: `model.backward(...)`, then `flatten_grads(model)`.

# %% [raw]
# # BEGIN SOLUTION

# %%
def ggn_vector_product(model, x, y, v):
    """G v (P,) for the mean softmax cross-entropy of model(x) against labels y."""
    # BEGIN SOLUTION
    logits = model.forward(x)
    N = x.shape[0]
    set_rparams(model, v)
    Rlogits = model.jvp(np.zeros_like(x))
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    HRlogits = (p * Rlogits - p * (p * Rlogits).sum(axis=1, keepdims=True)) / N
    model.backward(HRlogits)
    return flatten_grads(model)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.curvature as _C, minidl.losses as _losses
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(1)
# 2 inputs, 3 classes: the logits are not the shape of x
_model = L.Sequential(L.Linear(2, 4, rng=_r), L.Tanh(), L.Linear(4, 3, rng=_r)).astype("float64")
_x, _y = _r.standard_normal((5, 2)), np.array([0, 2, 1, 1, 0])
_v = _r.standard_normal(_C.num_params(_model))
_expected = _C.ggn_vp(_model, _losses.SoftmaxCrossEntropy(), _x, _y, _v)
assert_close("G v", ggn_vector_product(_model, _x, _y, _v), _expected)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.curvature as _C, minidl.losses as _losses
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(51)
_model = L.Sequential(L.Linear(4, 5, rng=_r), L.ReLU(), L.Linear(5, 2, rng=_r), L.Sigmoid(), L.Linear(2, 3, rng=_r)).astype("float64")
_x, _y = _r.standard_normal((6, 4)), _r.integers(0, 3, 6)
_G = _C.ggn(_model, _losses.SoftmaxCrossEntropy(), _x, _y)
for _k in range(2):
    _v = _r.standard_normal(_C.num_params(_model))
    _Gv = ggn_vector_product(_model, _x, _y, _v)
    assert_close(f"G v (direction {_k + 1})", _Gv, _G @ _v)

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
# **Question 2 (3 points).** K-FAC for a dense layer without bias, `out = x W^T`, `W (F, m)`.
# Example $n$'s gradient is $\delta_n a_n^\top$ with $a_n$ the layer input and
# $\delta_n = N\,\text{dout}_n$ the output gradient of its own loss (`dout` from the mean
# loss carries a $1/N$). In the C-order vec of `W` its Fisher block is approximated by
#
# $$G \otimes A, \qquad A = \frac1N \sum_n a_n a_n^\top \;(m, m), \qquad
#   G = \frac1N \sum_n \delta_n \delta_n^\top \;(F, F).$$
#
# Write `kfac_factors(a, dout)` returning `(A, G)`. For one example the approximation is
# exact: `np.kron(G, A)` **is** the empirical Fisher block.

# %% [raw]
# # BEGIN SOLUTION

# %%
def kfac_factors(a, dout):
    """K-FAC factors (A (m, m), G (F, F)) from inputs a (N, m) and dout (N, F)."""
    # BEGIN SOLUTION
    N = a.shape[0]
    delta = N * dout
    return a.T @ a / N, delta.T @ delta / N
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.curvature as _C, minidl.losses as _losses
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(2)
_model = L.Sequential(L.Linear(3, 4, bias=False, rng=_r)).astype("float64")
_x, _y = _r.standard_normal((1, 3)), np.array([2])
_loss = _losses.SoftmaxCrossEntropy()
_ = _loss.forward(_model.forward(_x), _y)
_ = _model.backward(_loss.backward())
_A, _G = kfac_factors(_x, _model.layers[0].cache["dout"])
_EF = _C.empirical_fisher(_model, _losses.SoftmaxCrossEntropy(), _x, _y)
assert_close("kron(G, A) for one example", np.kron(_G, _A), _EF)
# a batch: the mean over examples, with delta_n = N dout_n
_a, _d = np.array([[1.0, 0.0], [1.0, 2.0], [0.0, -1.0]]), np.array([[0.1], [0.0], [-0.2]])
_A, _G = kfac_factors(_a, _d)
assert_close("A (N = 3)", _A, np.array([[2.0, 2.0], [2.0, 5.0]]) / 3)
assert_close("G (N = 3)", _G, np.array([[(0.3 ** 2 + 0.6 ** 2) / 3]]))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.curvature as _C, minidl.losses as _losses
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(52)
_model = L.Sequential(L.Linear(3, 5, bias=False, rng=_r), L.Tanh(), L.Linear(5, 2, bias=False, rng=_r)).astype("float64")
_x, _y = _r.standard_normal((1, 3)), np.array([1])
_loss = _losses.SoftmaxCrossEntropy()
_ = _loss.forward(_model.forward(_x), _y)
_ = _model.backward(_loss.backward())
_EF = _C.empirical_fisher(_model, _losses.SoftmaxCrossEntropy(), _x, _y)
for (_name, _layer, _key, _s, _e, _shape) in _C.param_slices(_model):
    _A, _G = kfac_factors(_layer.cache["x"], _layer.cache["dout"])
    assert_close(f"kron(G, A) of {_name}", np.kron(_G, _A), _EF[_s:_e, _s:_e])
_a, _d = _r.standard_normal((6, 3)), _r.standard_normal((6, 2))
_A, _G = kfac_factors(_a, _d)
assert_close("A (N = 6)", _A, sum(np.outer(r, r) for r in _a) / 6)
assert_close("G (N = 6)", _G, sum(np.outer(6 * r, 6 * r) for r in _d) / 6)

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
# **Question 3 (3 points).** Mini-Block Fisher for a dense layer with bias: keep, of the
# empirical Fisher, only the block of each output neuron $o$, i.e. of its parameters
# $(W[o, :], b_o)$. With $\hat a_n = [a_n; 1]$ and $\delta_n = N\,\text{dout}_n$, example
# $n$'s gradient for neuron $o$ is $\delta_{n,o}\hat a_n$, so
#
# $$B_o = \frac1N \sum_n \delta_{n,o}^2\; \hat a_n \hat a_n^\top \qquad (m+1, m+1).$$
#
# Write `mbf_blocks(a, dout)` returning all blocks as an array `(F, m+1, m+1)`, with the
# bias last in each block.

# %% [raw]
# # BEGIN SOLUTION

# %%
def mbf_blocks(a, dout):
    """Per-neuron empirical Fisher blocks (F, m+1, m+1) of a dense layer with bias."""
    # BEGIN SOLUTION
    N = a.shape[0]
    a_hat = np.concatenate([a, np.ones((N, 1))], axis=1)
    delta = N * dout
    return np.einsum("no,ni,nj->oij", delta ** 2, a_hat, a_hat) / N
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.curvature as _C, minidl.losses as _losses
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(3)
# F = 4 neurons, each a block of m + 1 = 3: W[o, 0], W[o, 1], b[o]
_model = L.Sequential(L.Linear(2, 4, rng=_r)).astype("float64")
_x, _y = _r.standard_normal((4, 2)), np.array([0, 3, 2, 1])
_loss = _losses.SoftmaxCrossEntropy()
_ = _loss.forward(_model.forward(_x), _y)
_ = _model.backward(_loss.backward())
_B = mbf_blocks(_x, _model.layers[0].cache["dout"])
_EF = _C.empirical_fisher(_model, _losses.SoftmaxCrossEntropy(), _x, _y)
_idx = [[0, 1, 8], [2, 3, 9], [4, 5, 10], [6, 7, 11]]
assert_close("mini-blocks", _B, np.array([_EF[np.ix_(i, i)] for i in _idx]))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.curvature as _C, minidl.losses as _losses
from minidl.assign.feedback import assert_close
_r = minidl.default_rng(53)
_model = L.Sequential(L.Linear(3, 4, rng=_r), L.Tanh(), L.Linear(4, 3, rng=_r)).astype("float64")
_x, _y = _r.standard_normal((7, 3)), _r.integers(0, 3, 7)
_loss = _losses.SoftmaxCrossEntropy()
_ = _loss.forward(_model.forward(_x), _y)
_ = _model.backward(_loss.backward())
_EF = _C.empirical_fisher(_model, _losses.SoftmaxCrossEntropy(), _x, _y)
_off = 0
for _layer in (_model.layers[0], _model.layers[2]):
    _F, _m = _layer.params["W"].shape
    _B = mbf_blocks(_layer.cache["x"], _layer.cache["dout"])
    for _o in range(_F):
        _i = [_off + _o * _m + j for j in range(_m)] + [_off + _F * _m + _o]
        assert_close(f"block of neuron {_o} in a layer with W {(_F, _m)}", _B[_o], _EF[np.ix_(_i, _i)])
    _off += _F * _m + _F

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# ## How good are the approximations? (not autograded)
#
# For the two-layer network above with a batch of 32, compare the exact empirical Fisher
# block of the first layer with `np.kron(G, A)` and with the block-diagonal matrix of your
# mini-blocks (relative Frobenius error), and look at the three matrices as images.
# (The autograder skips this cell.)

# %% tags=["otter_ignore"]
import matplotlib.pyplot as plt
from minidl import curvature, losses

model = L.Sequential(L.Linear(3, 4, rng=rng), L.Tanh(), L.Linear(4, 3, rng=rng)).astype("float64")
x, y = rng.standard_normal((32, 3)), rng.integers(0, 3, 32)
EF = curvature.empirical_fisher(model, losses.SoftmaxCrossEntropy(), x, y)
crit = losses.SoftmaxCrossEntropy()
crit.forward(model.forward(x), y)
model.backward(crit.backward())
first = model.layers[0]
A, G = kfac_factors(np.concatenate([first.cache["x"], np.ones((32, 1))], axis=1), first.cache["dout"])
print("A, G of [W | b]:", A.shape, G.shape)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(EF[:16, :16])
axes[0].set_title("exact EF, W of layer 1")
axes[1].imshow(np.kron(G, A[:3, :3]))
axes[1].set_title("K-FAC G kron A")
plt.show()
