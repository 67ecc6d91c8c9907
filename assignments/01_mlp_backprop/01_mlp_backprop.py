# %% [raw]
# # ASSIGNMENT CONFIG
# name: 01_mlp_backprop
# export_cell:
#   pdf: false
# check_all_cell: true

# %% [markdown]
# # Assignment 1: backpropagation in a multilayer perceptron
#
# You write the forward and backward passes of a small neural network by hand, in NumPy,
# as `minidl.layers.Layer` subclasses: a `Linear` layer, a `ReLU`, and the softmax
# cross-entropy loss. Then a mini-batch SGD loop, and a training run on MNIST.
# (Seed: the home assignment of the "Deep Learning Optimization" lecture.)
#
# Conventions (PyTorch's and minidl's): a batch `x` has shape `(N, in)`; `Linear` stores
# `W` of shape `(out, in)` and `b` of shape `(out,)` and computes `out = x W^T + b`. The
# loss is the **mean** over the batch, so its gradient carries a factor `1/N`.
#
# `backward(dout)` receives `dL/dout`, fills `self.grads[k]` for every `k` in
# `self.params` (same shape as the parameter), and returns `dL/dx`. Neither pass may
# change the arrays it is given (`x`, `dout`, the logits): the caller may still need them,
# so return new arrays (no `x[x < 0] = 0`, no `-=` on an input).
#
# Run `grader.check("q1")` (etc.) after each question: the public tests print what is
# wrong, including minidl's gradient-check report (which array, which element, how far
# off). Hidden tests run the same checks on other shapes when you submit.

# %%
import numpy as np

import minidl
from minidl.layers import Layer
from minidl.losses import Loss
from minidl.gradcheck import check_layer, check_loss

rng = minidl.default_rng(0)

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 3
# all_or_nothing: true

# %% [markdown]
# **Question 1 (3 points).** Complete `Linear`: the forward pass `out = x W^T + b`
# (cache what the backward pass needs in `self.cache`) and the backward pass
#
# $$\frac{\partial L}{\partial W} = \text{dout}^\top x, \qquad
#   \frac{\partial L}{\partial b} = \sum_n \text{dout}_n, \qquad
#   \frac{\partial L}{\partial x} = \text{dout}\, W .$$

# %% [raw]
# # BEGIN SOLUTION

# %%
class Linear(Layer):
    """Fully connected layer out = x W^T + b; W (out, in), b (out,)."""

    def __init__(self, in_features, out_features, rng):
        super().__init__()
        bound = 1.0 / np.sqrt(in_features)
        self.params["W"] = rng.uniform(-bound, bound, (out_features, in_features))
        self.params["b"] = rng.uniform(-bound, bound, (out_features,))

    def forward(self, x):
        # BEGIN SOLUTION
        self.cache["x"] = x
        return x @ self.params["W"].T + self.params["b"]
        # END SOLUTION

    def backward(self, dout):
        # BEGIN SOLUTION
        x = self.cache["x"]
        self.grads["W"] = dout.T @ x
        self.grads["b"] = dout.sum(axis=0)
        return dout @ self.params["W"]
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [markdown]
# Check it yourself: `check_layer` compares your backward pass with central differences
# in float64 and names the worst element of every array.

# %%
print(check_layer(Linear(5, 3, rng), rng.standard_normal((4, 5))))

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close, assert_gradcheck
_r = minidl.default_rng(1)
_layer = Linear(4, 3, _r)
_x = _r.standard_normal((5, 4))
assert_close("Linear forward", _layer.forward(_x), _x @ _layer.params["W"].T + _layer.params["b"])

# %%
from minidl.assign.feedback import assert_gradcheck
assert_gradcheck(Linear(6, 3, minidl.default_rng(2)), minidl.default_rng(3).standard_normal((4, 6)))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L
from minidl.assign.feedback import assert_close, assert_gradcheck
_r = minidl.default_rng(11)
_mine, _ref = Linear(7, 5, _r), _L.Linear(7, 5)
_ref.params["W"], _ref.params["b"] = _mine.params["W"].copy(), _mine.params["b"].copy()
_x, _dout = _r.standard_normal((9, 7)), _r.standard_normal((9, 5))
assert_close("Linear forward", _mine.forward(_x), _ref.forward(_x))
assert_close("dx", _mine.backward(_dout), _ref.backward(_dout))
assert_close("grads['W']", _mine.grads["W"], _ref.grads["W"])
assert_close("grads['b']", _mine.grads["b"], _ref.grads["b"])
assert_gradcheck(Linear(3, 8, _r), _r.standard_normal((2, 3)))

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
# **Question 2 (2 points).** Complete `ReLU`: `out = max(x, 0)` elementwise, for `x` of any
# shape, and its backward pass (the gradient flows where `x > 0`).

# %% [raw]
# # BEGIN SOLUTION

# %%
class ReLU(Layer):
    """Elementwise max(x, 0); no parameters."""

    def forward(self, x):
        # BEGIN SOLUTION
        self.cache["x"] = x
        return np.maximum(x, 0)
        # END SOLUTION

    def backward(self, dout):
        # BEGIN SOLUTION
        return dout * (self.cache["x"] > 0)
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close, assert_gradcheck
_x = np.array([[-2.0, -0.5, 0.5, 3.0]])
_relu = ReLU()
assert_close("ReLU forward", _relu.forward(_x), [[0.0, 0.0, 0.5, 3.0]])
assert np.array_equal(_x, [[-2.0, -0.5, 0.5, 3.0]]), "ReLU.forward changed its input x in place; return a new array and leave x as it was"
_dout = np.array([[1.0, -2.0, 3.0, -4.0]])
assert_close("ReLU dx", _relu.backward(_dout), [[0.0, 0.0, 3.0, -4.0]])
assert np.array_equal(_dout, [[1.0, -2.0, 3.0, -4.0]]), "ReLU.backward changed its input dout in place; return a new array and leave dout as it was"
assert_gradcheck(ReLU(), minidl.default_rng(4).standard_normal((3, 5)))
# elementwise: any shape, e.g. a batch of 3-D feature maps
assert_gradcheck(ReLU(), minidl.default_rng(7).standard_normal((3, 2, 5)))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
from minidl.assign.feedback import assert_close, assert_gradcheck
_r = minidl.default_rng(12)
_x, _dout = _r.standard_normal((6, 4)), _r.standard_normal((6, 4))
_x0, _dout0 = _x.copy(), _dout.copy()
_relu = ReLU()
assert_close("ReLU forward", _relu.forward(_x), np.maximum(_x0, 0))
assert np.array_equal(_x, _x0), "ReLU.forward changed its input x in place; return a new array and leave x as it was"
assert_close("ReLU dx", _relu.backward(_dout), _dout0 * (_x0 > 0))
assert np.array_equal(_dout, _dout0), "ReLU.backward changed its input dout in place; return a new array and leave dout as it was"
assert_gradcheck(ReLU(), _r.standard_normal((2, 3, 4)))

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
# **Question 3 (3 points).** Complete `SoftmaxCrossEntropy`. With
# $p = \mathrm{softmax}(h)$ row by row and integer labels $y_n$,
#
# $$L = -\frac{1}{N}\sum_n \log p_{n, y_n}, \qquad
#   \frac{\partial L}{\partial h} = \frac{1}{N}\left(p - Y\right)$$
#
# where $Y$ is the one-hot matrix of the labels. `forward(logits, y)` returns the loss as
# a Python float; `backward()` returns `dL/dlogits`. Subtract each row's maximum before
# exponentiating, so that logits of 1000 do not overflow.

# %% [raw]
# # BEGIN SOLUTION

# %%
class SoftmaxCrossEntropy(Loss):
    """Mean cross-entropy of softmax(logits) against integer labels."""

    def forward(self, logits, y):
        # BEGIN SOLUTION
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        N = logits.shape[0]
        self.cache = {"p": np.exp(logp), "y": y, "N": N}
        return float(-logp[np.arange(N), y].mean())
        # END SOLUTION

    def backward(self):
        # BEGIN SOLUTION
        p, y, N = self.cache["p"], self.cache["y"], self.cache["N"]
        dlogits = p.copy()
        dlogits[np.arange(N), y] -= 1
        return dlogits / N
        # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
from minidl.assign.feedback import assert_close, assert_loss_gradcheck
_logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
_y = np.array([2, 0])
assert_close("loss", SoftmaxCrossEntropy().forward(_logits, _y), 0.5 * 0.40760596444438)
assert np.array_equal(_logits, [[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]]), "forward changed its input logits in place; compute new arrays and leave logits as they were"
assert_loss_gradcheck(SoftmaxCrossEntropy(), minidl.default_rng(5).standard_normal((4, 3)), np.array([0, 2, 1, 1]))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.losses as _losses
from minidl.assign.feedback import assert_close, assert_loss_gradcheck
_r = minidl.default_rng(13)
_h, _y = 3 * _r.standard_normal((8, 5)), _r.integers(0, 5, 8)
_h0 = _h.copy()
_mine, _ref = SoftmaxCrossEntropy(), _losses.SoftmaxCrossEntropy()
assert_close("loss", _mine.forward(_h, _y), _ref.forward(_h0, _y))
assert np.array_equal(_h, _h0), "forward changed its input logits in place; compute new arrays and leave logits as they were"
assert_close("dL/dlogits", _mine.backward(), _ref.backward())
assert_loss_gradcheck(SoftmaxCrossEntropy(), _r.standard_normal((3, 7)), np.array([6, 0, 3]))

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
# **Question 4 (2 points).** Write one epoch of mini-batch SGD: shuffle the examples with
# `rng.permutation`, and for each batch of `batch_size` run the forward pass of every
# layer in `layers`, the loss, the backward pass in reverse order, and the update
# `p -= lr * g` for every parameter. Return the mean of the batch losses.
# (It is graded with minidl's own layers, so it does not depend on your answers above.)

# %% [raw]
# # BEGIN SOLUTION

# %%
def train_epoch(layers, loss, x, y, lr, batch_size, rng):
    """One epoch of SGD over (x, y); returns the mean batch loss."""
    # BEGIN SOLUTION
    order = rng.permutation(len(x))
    losses = []
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        out = x[idx]
        for layer in layers:
            out = layer.forward(out)
        losses.append(loss.forward(out, y[idx]))
        dout = loss.backward()
        for layer in reversed(layers):
            dout = layer.backward(dout)
        for layer in layers:
            for k in layer.params:
                layer.params[k] -= lr * layer.grads[k]
    return float(np.mean(losses))
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
import minidl.layers as _L, minidl.losses as _losses
_xall, _yall = minidl.data.bundled_mnist("train")
_x = _xall[:500].reshape(500, -1) / 255.0
_r = minidl.default_rng(6)
_net = [_L.Linear(784, 16, rng=_r).astype("float64"), _L.ReLU(),
        _L.Linear(16, 10, rng=_r).astype("float64")]
_first = train_epoch(_net, _losses.SoftmaxCrossEntropy(), _x, _yall[:500], 0.2, 50, _r)
_second = train_epoch(_net, _losses.SoftmaxCrossEntropy(), _x, _yall[:500], 0.2, 50, _r)
assert isinstance(_first, float) and _second < _first, f"mean loss went {_first} -> {_second}"
# with lr = 0 nothing moves, so the mean of the 10 batch losses is the loss of all 500
_state = str(_r.bit_generator.state)
_crit = _losses.SoftmaxCrossEntropy()
_out = _x
for _layer in _net:
    _out = _layer.forward(_out)
_full = _crit.forward(_out, _yall[:500])
_got = train_epoch(_net, _crit, _x, _yall[:500], 0.0, 50, _r)
assert str(_r.bit_generator.state) != _state, "train_epoch did not draw from rng: shuffle the examples with rng.permutation"
assert abs(_got - _full) <= 1e-9 * abs(_full), f"with lr=0 and 10 batches of 50, train_epoch returned {_got}, but the mean of the batch losses is the loss of all 500 examples, {_full} (every batch once? the mean, not the sum or the last one?)"

# %%
import copy
import minidl.layers as _L, minidl.losses as _losses
from minidl.assign.feedback import assert_close
# one batch of all 12 examples: the epoch is one gradient step, so every parameter of every
# layer must move by exactly -lr times its gradient of the loss of all 12
_r = minidl.default_rng(8)
_net = [_L.Linear(4, 5, rng=_r).astype("float64"), _L.ReLU(), _L.Linear(5, 3, rng=_r).astype("float64")]
_x = _r.standard_normal((12, 4)) * np.array([0.01, 1.0, 5.0, 0.3])
_y = _r.integers(0, 3, 12)
_start = _L.Sequential(*copy.deepcopy(_net))
_crit = _losses.SoftmaxCrossEntropy()
_ = _crit.forward(_start.forward(_x), _y)
_ = _start.backward(_crit.backward())
_ = train_epoch(_net, _losses.SoftmaxCrossEntropy(), _x, _y, 0.5, 12, _r)
for _i, _k in ((0, "W"), (0, "b"), (2, "W"), (2, "b")):
    _p0, _g = _start.layers[_i].params[_k], _start.layers[_i].grads[_k]
    assert_close(f"layers[{_i}].params['{_k}'] after one full-batch epoch with lr = 0.5 (expected p - lr * g)", _net[_i].params[_k], _p0 - 0.5 * _g)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import minidl.layers as _L, minidl.losses as _losses
_xall, _yall = minidl.data.bundled_mnist("train")
_x, _y = _xall[:2500].reshape(2500, -1) / 255.0, _yall[:2500]
_r = minidl.default_rng(14)
_net = [_L.Linear(784, 64, rng=_r).astype("float64"), _L.ReLU(),
        _L.Linear(64, 10, rng=_r).astype("float64")]
for _ in range(3):
    _loss = train_epoch(_net, _losses.SoftmaxCrossEntropy(), _x[:2000], _y[:2000], 0.2, 50, _r)
_out = _x[2000:]
for _layer in _net:
    _out = _layer.forward(_out)
_acc = float((_out.argmax(axis=1) == _y[2000:]).mean())
assert _acc >= 0.8, f"after 3 epochs on 2000 digits the held-out accuracy is {_acc:.3f}, expected >= 0.8"
_state = str(_r.bit_generator.state)
_crit = _losses.SoftmaxCrossEntropy()
_full = _crit.forward(_out, _y[2000:])
_got = train_epoch(_net, _crit, _x[2000:], _y[2000:], 0.0, 25, _r)
assert str(_r.bit_generator.state) != _state, "train_epoch did not draw from rng: shuffle the examples with rng.permutation"
assert abs(_got - _full) <= 1e-9 * abs(_full), f"with lr=0 and 20 batches of 25, train_epoch returned {_got}, expected the mean batch loss {_full}"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# ## Your training run (not autograded)
#
# Train `Linear(784, 256) - ReLU - Linear(256, 10)` built from **your** layers with your
# `train_epoch` until the test accuracy is at least 97%. `minidl.data.load_default()` gives
# the full MNIST when `MINIDL_DATA` points at it (the target is for the full set), and the
# bundled 10,000-image subset otherwise (expect about 95-96% there). With `lr=0.1` and
# `batch_size=64` the reference solution passes 97% on the full test set after 6 epochs;
# the 10 below take a few minutes on two cores.
#
# The autograder skips this cell (its tag is `otter_ignore`) so grading stays fast; your
# printed accuracy stays in the notebook you submit.

# %% tags=["otter_ignore"]
x_train, y_train = minidl.data.load_default("train")
x_test, y_test = minidl.data.load_default("test")
x_train = x_train.reshape(len(x_train), -1) / 255.0
x_test = x_test.reshape(len(x_test), -1) / 255.0
net = [Linear(784, 256, rng), ReLU(), Linear(256, 10, rng)]
for epoch in range(10):
    mean_loss = train_epoch(net, SoftmaxCrossEntropy(), x_train, y_train, 0.1, 64, rng)
    out = x_test
    for layer in net:
        out = layer.forward(out)
    print(f"epoch {epoch + 1}: loss {mean_loss:.4f}, "
          f"test accuracy {(out.argmax(axis=1) == y_test).mean():.4f}")
