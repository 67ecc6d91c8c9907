"""Linear (fully connected) layer: out = x W^T + b.

Shapes (PyTorch and seed notation): x (N, in), W (out, in), b (out,), out (N, out).

Backward, for upstream gradient dout = dL/dout of shape (N, out)::

    dW = dout^T x        (out, N) @ (N, in)
    db = sum_n dout_n    (out,)
    dx = dout W          (N, out) @ (out, in)

R-operator (curvature), with tangents Rx, RW, Rb::

    Rout  = Rx W^T + x RW^T + Rb
    Rdx   = Rdout W + dout RW
    RdW   = Rdout^T x + dout^T Rx
    Rdb   = sum_n Rdout_n

With several threads allowed, forward and backward share each product over them
(``minidl.parallel``): rows of the batch for out and dx, rows of W for dW, so that no
partial sums are needed and every piece is one BLAS product on one core.
"""
from .. import backend, init, parallel
from .base import (Layer, expect_dim, expect_forward_done, expect_ndim, expect_output_grad,
                   expect_size)

__all__ = ["Linear"]


class Linear(Layer):
    """Fully connected layer ``out = x @ W.T + b``.

    Args:
        in_features: size m of each input row.
        out_features: size n of each output row.
        bias: learn an additive bias ``b`` (default True).
        rng: generator for the initial weights (``minidl.default_rng(seed)``); a fresh
            unseeded one when None.
        init: initialiser for W (name or function of (shape, rng)); the default is
            U(-1/sqrt(in), 1/sqrt(in)), as in PyTorch. b is drawn from that uniform
            whatever ``init`` is.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, init="uniform"):
        super().__init__()
        self.in_features = expect_size("Linear", "in_features", in_features)
        self.out_features = expect_size("Linear", "out_features", out_features)
        rng = rng if rng is not None else backend.default_rng()
        shape = (self.out_features, self.in_features)
        self.params["W"] = _init_module.get(init)(shape, rng)  # (out, in)
        if bias:
            self.params["b"] = _init_module.uniform_fan_in(
                (self.out_features,), rng, fan_in=self.in_features)  # (out,)

    def forward(self, x):
        expect_ndim(self, x, (2,), "(N, in_features); flatten images first")
        expect_dim(self, x, 1, self.in_features, "in_features")
        W = self.params["W"]
        backend.check_same_device("Linear.forward(x)", x, W)
        self.cache["x"] = x
        xp = backend.array_module(x, W)
        out = xp.empty((x.shape[0], self.out_features), dtype=xp.result_type(x, W))  # (N, out)
        b = self.params.get("b")

        def rows(piece):  # out = x @ W.T + b for some rows of the batch
            o = xp.matmul(x[piece], W.T, out=out[piece])  # (n, in) @ (in, out)
            if b is not None:
                o += b

        parallel.map_pieces(rows, parallel.split(x.shape[0], parallel.workers(x)), like=x)
        return out  # (N, out)

    def backward(self, dout):
        expect_forward_done(self, dout)
        x = self.cache["x"]
        expect_output_grad(self, dout, (x.shape[0], self.out_features))
        W = self.params["W"]
        self.cache["dout"] = dout
        xp = backend.array_module(dout, x, W)
        threads = parallel.workers(x)
        dW = xp.empty(W.shape, dtype=xp.result_type(dout, x))  # (out, in)

        def weight_rows(piece):  # dW = dout.T @ x for some rows of W (no partial sums)
            xp.matmul(dout[:, piece].T, x, out=dW[piece])  # (o, N) @ (N, in)

        parallel.map_pieces(weight_rows, parallel.split(self.out_features, threads), like=x)
        self.grads["W"] = dW  # (out, in)
        if "b" in self.params:
            self.grads["b"] = dout.sum(axis=0)  # (out,)
        if not self.needs_input_grad:
            return None  # the first layer of a model: nobody needs dx (see Sequential)
        dx = xp.empty(x.shape, dtype=xp.result_type(dout, W))  # (N, in)

        def input_rows(piece):  # dx = dout @ W for some rows of the batch
            xp.matmul(dout[piece], W, out=dx[piece])  # (n, out) @ (out, in)

        parallel.map_pieces(input_rows, parallel.split(x.shape[0], threads), like=x)
        return dx  # (N, in)

    def jvp(self, Rx):
        x, W = self.cache["x"], self.params["W"]
        self.cache["Rx"] = Rx
        Rout = Rx @ W.T  # (N, out)
        if "W" in self.Rparams:
            Rout = Rout + x @ self.Rparams["W"].T
        if "b" in self.params and "b" in self.Rparams:
            Rout = Rout + self.Rparams["b"]
        return Rout

    def backward_rop(self, Rdout):
        x, Rx, dout = self.cache["x"], self.cache["Rx"], self.cache["dout"]
        W = self.params["W"]
        self.Rgrads["W"] = Rdout.T @ x + dout.T @ Rx  # (out, in)
        if "b" in self.params:
            self.Rgrads["b"] = Rdout.sum(axis=0)  # (out,)
        Rdx = Rdout @ W  # (N, in)
        if "W" in self.Rparams:
            Rdx = Rdx + dout @ self.Rparams["W"]
        return Rdx

    def per_example_grads(self):
        """Each example's share of ``grads``: ``{"W": (N, out, in), "b": (N, out)}``.

        They sum over n to ``grads``; for a mean loss, multiply by N to get the gradient
        of example n's own loss.
        """
        x, dout = self.cache["x"], self.cache["dout"]
        xp = backend.array_module(x)
        out = {"W": xp.einsum("no,ni->noi", dout, x)}  # (N, out, in)
        if "b" in self.params:
            out["b"] = dout  # (N, out)
        return out


    # -- the layer as a matrix product, for the Kronecker-factored preconditioners --------
    def kron_inputs(self):
        """Inputs with a ones column for the bias: a_hat (N, T, m), T = 1, m = in (+ 1).

        With W_hat = [W | b] (out, m), ``out[n] = W_hat @ a_hat[n, 0]``, the form K-FAC,
        KFLR, KFRA and MBF read a layer in (``minidl.precond.kfactored``).
        """
        x = self.cache["x"]  # (N, in)
        a = x[:, None, :]  # (N, 1, in)
        if "b" in self.params:
            xp = backend.array_module(x)
            a = xp.concatenate([a, xp.ones((x.shape[0], 1, 1), dtype=x.dtype)], axis=2)
        return a  # (N, 1, m)

    def kron_output_grads(self):
        """The gradient at the output as (N, T, out), T = 1 (``cache["dout"]``)."""
        return self.cache["dout"][:, None, :]  # (N, 1, out)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'b' in self.params}")


_init_module = init
