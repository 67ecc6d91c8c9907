"""brute-force references shared by the curvature and preconditioner tests

Everything here is deliberately slow and plain: one backward pass per example (or per output
unit and example), dense matrices, dense solves. Flat vectors use the order of
``model.parameters()``: leaves in order, W then b, C order within each array. Kronecker blocks
are read in the row-major order of [W | b], the order in which G kron A lives.
"""
import io

import numpy as np

from minidl import backend
from minidl.layers import BatchNorm1d, Conv2d, Flatten, Linear, Sequential, Tanh

__all__ = [
    "append_ones", "assert_kron_blocks_equal", "assert_same_params", "block_index",
    "damped_kron_block", "empirical_fisher_loop", "flat_grads", "forward_backward",
    "ggn_brute", "jacobians", "kron_block", "make_data", "mlp", "mlp_with_batchnorm",
    "npz_round_trip", "per_example_grads", "raw_grads", "run_directions",
    "single_location_cnn", "train_step",
]


# -- small models and data -----------------------------------------------------------------
def mlp(rng, sizes=(3, 4, 3), act=Tanh):
    """Linear layers of the given widths with ``act()`` between them (none if act is None)."""
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(Linear(a, b, rng=rng))
        if act is not None:
            layers.append(act())
    return Sequential(*(layers[:-1] if act is not None else layers))


def mlp_with_batchnorm(rng, sizes=(3, 4, 3)):
    """Linear, BatchNorm1d, Tanh, Linear: a layer the Kronecker methods do not cover."""
    a, b, c = sizes
    return Sequential(Linear(a, b, rng=rng), BatchNorm1d(b), Tanh(), Linear(b, c, rng=rng))


def single_location_cnn(rng):
    """Conv2d(2, 3, 3) on (2, 3, 3) inputs: one output location (T = 1), then 2 logits."""
    return Sequential(Conv2d(2, 3, 3, rng=rng), Tanh(), Flatten(), Linear(3, 2, rng=rng))


def make_data(rng, loss_name, N, shape_in, K):
    """A batch (x, y) for loss "ce" (class labels), "mse" (normal) or "bce" (in [0, 1))."""
    x = rng.standard_normal((N,) + shape_in)
    if loss_name == "ce":
        y = rng.integers(0, K, N)
    elif loss_name == "mse":
        y = rng.standard_normal((N, K))
    else:
        y = rng.random((N, K))
    return backend.asarray(x), backend.asarray(y)


def append_ones(a):
    """[a | 1]: the activations with the homogeneous coordinate of the bias."""
    return np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)


# -- passes --------------------------------------------------------------------------------
def forward_backward(model, loss, x, y):
    """One forward and backward pass; the loss value."""
    value = loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    return value


def train_step(model, loss, x, y, *steppers):
    """forward_backward, then ``step()`` of each preconditioner / optimizer in order."""
    value = forward_backward(model, loss, x, y)
    for s in steppers:
        s.step()
    return value


def run_directions(model, loss, precond, batches):
    """The flat preconditioned direction after each step over ``batches``."""
    out = []
    for x, y in batches:
        forward_backward(model, loss, x, y)
        precond.step()
        out.append(flat_grads(model))
    return out


# -- gradients, Jacobians, curvature ---------------------------------------------------------
def flat_grads(model):
    """The gradient in the flat parameter order (leaves in order, W then b, C order)."""
    return np.concatenate([backend.to_numpy(layer.grads[k]).ravel()
                           for _, layer, k in model.parameters()])


def raw_grads(model):
    """Host copies of every leaf's gradients, keyed by id(leaf) then parameter name."""
    return {id(leaf): {k: backend.to_numpy(v).copy() for k, v in leaf.grads.items()}
            for leaf in model.leaves()}


def per_example_grads(model, loss, x, y):
    """(N, P): the gradient of each example's own loss, one backward per example."""
    rows = []
    for n in range(x.shape[0]):
        forward_backward(model, loss, x[n:n + 1], y[n:n + 1])
        rows.append(flat_grads(model))
    return np.stack(rows)


def empirical_fisher_loop(model, loss, x, y):
    """(1/N) sum_n g_n g_n^T from one backward per example, in the flat order."""
    G = per_example_grads(model, loss, x, y)  # (N, P)
    return G.T @ G / G.shape[0]


def jacobians(model, x):
    """(N, K, P): d output_k / d theta for each example, one backward per output unit."""
    out = []
    for n in range(x.shape[0]):
        z = model.forward(x[n:n + 1])
        z2 = backend.to_numpy(z).reshape(1, -1)
        rows = []
        for k in range(z2.shape[1]):
            e = np.zeros_like(z2)
            e[0, k] = 1.0
            model.backward(backend.asarray(e.reshape(z.shape), dtype=z.dtype))
            rows.append(flat_grads(model))
        out.append(np.stack(rows))
    return np.stack(out)


def ggn_brute(model, loss, x, y):
    """sum_n J_n^T H_n J_n of the reduced loss, (P, P); H_n = loss.hessian()[n]."""
    J = jacobians(model, x)  # (N, K, P)
    loss.forward(model.forward(x), y)
    H = backend.to_numpy(loss.hessian())  # (N, K, K)
    return np.einsum("nkp,nkl,nlq->pq", J, H, J)


# -- Kronecker blocks ----------------------------------------------------------------------
def block_index(model, layer):
    """Flat indices of ``layer``'s [W | b] in row-major order (F rows of m entries)."""
    start = 0
    for _, leaf, key in model.parameters():
        if leaf is layer:
            break
        start += leaf.params[key].size
    W = layer.params["W"]
    F, m_in = W.shape[0], W.size // W.shape[0]
    idx = []
    for f in range(F):
        idx.extend(range(start + f * m_in, start + (f + 1) * m_in))
        if "b" in layer.params:
            idx.append(start + W.size + f)
    return np.array(idx)


def kron_block(precond, i):
    """G kron A of the preconditioner's i-th layer, dense."""
    s = precond.state[i]
    return np.kron(backend.to_numpy(s["G"]), backend.to_numpy(s["A"]))


def assert_kron_blocks_equal(precond, model, reference, rtol, atol):
    """Each covered layer's G kron A equals its diagonal block of the dense ``reference``."""
    for i, layer in enumerate(precond.layers):
        idx = block_index(model, layer)
        np.testing.assert_allclose(kron_block(precond, i), reference[np.ix_(idx, idx)],
                                   rtol=rtol, atol=atol)


def damped_kron_block(G, A, lam, mode):
    """The damped curvature block, dense: G kron A + lam I ("eigen"), or the factored
    (G + sqrt(lam)/pi I) kron (A + pi sqrt(lam) I), pi = sqrt(mean eig A / mean eig G)."""
    if mode == "eigen":
        return np.kron(G, A) + lam * np.eye(G.shape[0] * A.shape[0])
    pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(G) / len(G)))
    return np.kron(G + np.sqrt(lam) / pi * np.eye(len(G)),
                   A + pi * np.sqrt(lam) * np.eye(len(A)))


# -- checkpoints ---------------------------------------------------------------------------
def npz_round_trip(state, path=None):
    """``state`` written with np.savez (to ``path``, or to memory) and read back as a dict."""
    target = io.BytesIO() if path is None else path
    np.savez(target, **state)
    if path is None:
        target.seek(0)
    return dict(np.load(target))


def assert_same_params(model_a, model_b):
    """Bitwise-equal parameters, leaf by leaf."""
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(a[1].params[a[2]]),
                                      backend.to_numpy(b[1].params[b[2]]))
