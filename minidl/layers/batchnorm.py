"""Batch normalisation (Ioffe & Szegedy 2015): BatchNorm1d and BatchNorm2d.

Reference: S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training
by Reducing Internal Covariate Shift", ICML 2015; notation of the seed BNP/BN slides
(Lange, Helfrich, Ye), where g_j = (h_j - mu_A) / sigma_A.

Forward. For each channel c the statistics run over the M values of that channel in the
batch (M = N for (N, C), M = N*H*W for (N, C, H, W)); "mean" below is the mean over them::

    mu    = mean(x)                          batch mean
    var   = mean((x - mu)^2)                 biased batch variance
    sigma = sqrt(var + eps)
    x_hat = (x - mu) / sigma
    out   = gamma * x_hat + beta

In eval mode mu and var are the running estimates instead, updated in train mode as in
PyTorch: running = (1 - momentum) * running + momentum * batch, where the variance that
enters ``running_var`` is the unbiased one, var * M / (M - 1).

Backward (compact closed form). With dx_hat = gamma * dout, the chain rule through
mu and sigma gives d mu / dx = 1/M and d sigma / dx = x_hat / M, hence::

    dx_hat = gamma * dout
    dx     = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / sigma  =:  P(dx_hat)
    dgamma = sum(dout * x_hat)
    dbeta  = sum(dout)

Derivation: x_hat_i = (x_i - mu) / sigma, so d x_hat_i / d x_k = (delta_ik - 1/M) / sigma
- x_hat_i (x_hat_k / M) / sigma (using d sigma / d x_k = (x_k - mu) / (M sigma)). Contracting
with dx_hat_i gives the line above. P is symmetric: P = (I - 1 1^T / M - x_hat x_hat^T / M)
/ sigma, and it is also the Jacobian of x -> x_hat. In eval mode mu and sigma are constants
and P(v) = v / sigma.

R-operator (curvature tools), with tangents Rx, Rgamma, Rbeta (train mode)::

    Rsigma = mean(x_hat * Rx)                 (d sigma = mean((x - mu) dx) / sigma)
    Rx_hat = P(Rx)
    Rout   = gamma * Rx_hat + Rgamma * x_hat + Rbeta

and for the backward pass, with R{dx_hat} = gamma * Rdout + Rgamma * dout::

    R{dx}     = P(R{dx_hat}) - (Rsigma / sigma) * dx
                - (Rx_hat * mean(x_hat * dx_hat) + x_hat * mean(Rx_hat * dx_hat)) / sigma
    R{dgamma} = sum(Rdout * x_hat + dout * Rx_hat)
    R{dbeta}  = sum(Rdout)

(the second and third terms are R{P} applied to the fixed dx_hat; in eval mode Rsigma = 0
and R{P} = 0, so the layer is affine).

LayerNorm and GroupNorm (layernorm.py, groupnorm.py) are the same maths with the mean
taken over other axes, so they share ``Normalization`` below: one code path for all three.

BatchNorm's forward and backward passes have a faster twin (``_BatchNorm.forward`` and
``backward``) that computes the same formulas in fewer passes over memory: x is viewed as
(N, C, L) with L = H W, every per-channel sum is a sum over the contiguous last axis then
over N, sum((x - mu)^2) and sum(dout * x_hat) are one ``einsum`` each (no temporary
product array), x_hat is made in place from x - mu, and dx is built in place as::

    dx = gamma / sigma * (dout - sum(dout) / M - x_hat * sum(dout * x_hat) / M)

(the closed form above with mean(dx_hat) = gamma sum(dout) / M and mean(dx_hat x_hat) =
gamma sum(dout x_hat) / M). Both passes go over the batch in pieces of a few examples
(``parallel.PIECE_VALUES``), so that each pass of a piece finds it in the CPU cache and
the pieces can run in several threads (``minidl.parallel``); the per-piece means and
squared deviations combine exactly into the batch's (``_batch_stats``). The general
``Normalization`` passes stay the reference; a test checks the two agree. BatchNorm keeps
x_hat, mu and sigma, not x (x = mu + sigma x_hat): backward and the R-operator passes
need only those.
"""
import math

from .. import backend, parallel
from .base import (Layer, expect_dim, expect_forward_done, expect_ndim, expect_output_grad,
                   expect_real, expect_size)

__all__ = ["BatchNorm1d", "BatchNorm2d", "Normalization"]


class Normalization(Layer):
    """Shared passes for out = gamma * x_hat + beta with x_hat normalised over some axes.

    Subclasses say where the statistics are taken (``stat_view``, ``stat_axes``), how
    ``gamma``/``beta`` broadcast against x (``param_view``) and which axes of x are summed
    for their gradients (``param_axes``). Statistics are computed in the "stat view" of x,
    a reshape of x (GroupNorm splits channels into groups there); everything else works
    on x's own shape.
    """

    def __init__(self, eps):
        super().__init__()
        eps = expect_real(type(self).__name__, "eps", eps)
        if not eps > 0:
            raise ValueError(f"{type(self).__name__} expects eps > 0, got eps={eps}")
        self.eps = eps

    # -- what subclasses give ----------------------------------------------------------
    def check_input(self, x):
        """Raise ``ValueError`` for an input of the wrong layout."""
        raise NotImplementedError

    def stat_view(self, a):
        """``a`` (shape of x) reshaped so that statistics reduce over ``stat_axes``."""
        return a

    def stat_axes(self, x):
        """Axes of ``stat_view(x)`` the mean and variance run over."""
        raise NotImplementedError

    def param_view(self, p, x):
        """``gamma`` or ``beta`` reshaped to broadcast against x."""
        raise NotImplementedError

    def param_axes(self, x):
        """Axes of x summed to give dgamma and dbeta."""
        raise NotImplementedError

    def fixed_stats(self, x):
        """``(mu, var)`` broadcastable in the stat view, or None to use batch statistics."""
        return None

    def record_batch_stats(self, mu, var, count):
        """Hook for BatchNorm's running statistics; ``count`` values entered each mean."""

    # -- the maths, in the stat view -------------------------------------------------------
    def _mean(self, a):
        return a.mean(axis=self.cache["axes"], keepdims=True)

    def _project(self, v):
        """P(v) = (v - mean(v) - x_hat * mean(x_hat * v)) / sigma, or v / sigma in eval."""
        x_hat, sigma = self.stat_view(self.cache["x_hat"]), self.cache["sigma"]
        vs = self.stat_view(v)  # stat view of v
        if self.cache["batch_stats"]:
            vs = vs - self._mean(vs) - x_hat * self._mean(x_hat * vs)  # stat view
        return (vs / sigma).reshape(v.shape)  # shape of x

    def forward(self, x):
        self.check_input(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        backend.check_same_device(f"{type(self).__name__}.forward(x)", x, gamma)
        xs = self.stat_view(x)  # stat view of x
        axes = self.stat_axes(x)
        stats = self.fixed_stats(x)
        if stats is None:
            mu = xs.mean(axis=axes, keepdims=True)  # stat view, 1 along axes
            var = ((xs - mu) ** 2).mean(axis=axes, keepdims=True)  # same shape as mu
            self.record_batch_stats(mu, var, xs.size // max(mu.size, 1))
        else:
            mu, var = stats
        sigma = (var + self.eps) ** 0.5  # same shape as mu
        x_hat = ((xs - mu) / sigma).reshape(x.shape)  # shape of x
        self.cache = {"x": x, "x_hat": x_hat, "mu": mu, "sigma": sigma, "axes": axes,
                      "batch_stats": stats is None}
        return self.param_view(gamma, x) * x_hat + self.param_view(beta, x)  # shape of x

    def backward(self, dout):
        expect_forward_done(self, dout)
        x = x_hat = self.cache["x_hat"]  # x only for its shape
        expect_output_grad(self, dout, x_hat.shape)
        self.cache["dout"] = dout
        axes = self.param_axes(x)
        gamma_shape = self.params["gamma"].shape
        self.grads["gamma"] = (dout * x_hat).sum(axis=axes).reshape(gamma_shape)  # (C,)
        self.grads["beta"] = dout.sum(axis=axes).reshape(gamma_shape)  # (C,)
        dx_hat = self.param_view(self.params["gamma"], x) * dout  # shape of x
        return self._project(dx_hat)  # shape of x

    def jvp(self, Rx):
        x = x_hat = self.cache["x_hat"]  # x only for its shape
        Rx_hat = self._project(Rx)  # shape of x
        self.cache["Rx"], self.cache["Rx_hat"] = Rx, Rx_hat
        if self.cache["batch_stats"]:
            xs_hat = self.stat_view(x_hat)
            self.cache["Rsigma"] = self._mean(xs_hat * self.stat_view(Rx))  # shape of sigma
        Rout = self.param_view(self.params["gamma"], x) * Rx_hat  # shape of x
        if "gamma" in self.Rparams:
            Rout = Rout + self.param_view(self.Rparams["gamma"], x) * x_hat
        if "beta" in self.Rparams:
            Rout = Rout + self.param_view(self.Rparams["beta"], x)
        return Rout

    def backward_rop(self, Rdout):
        x_hat, dout = self.cache["x_hat"], self.cache["dout"]
        x = x_hat  # only for its shape
        Rx_hat, sigma = self.cache["Rx_hat"], self.cache["sigma"]
        axes = self.param_axes(x)
        gamma = self.param_view(self.params["gamma"], x)
        gamma_shape = self.params["gamma"].shape
        self.Rgrads["gamma"] = (Rdout * x_hat + dout * Rx_hat).sum(axis=axes).reshape(
            gamma_shape)  # (C,)
        self.Rgrads["beta"] = Rdout.sum(axis=axes).reshape(gamma_shape)  # (C,)
        Rdx_hat = gamma * Rdout  # shape of x
        if "gamma" in self.Rparams:
            Rdx_hat = Rdx_hat + self.param_view(self.Rparams["gamma"], x) * dout
        Rdx = self._project(Rdx_hat)  # shape of x
        if not self.cache["batch_stats"]:
            return Rdx
        # R{P} applied to the fixed dx_hat: sigma, x_hat (and so P) move with x
        dx_hat = self.stat_view(gamma * dout)  # stat view
        dx = self.stat_view(self._project(gamma * dout))  # stat view
        xs_hat, Rxs_hat = self.stat_view(x_hat), self.stat_view(Rx_hat)
        RP = (-(self.cache["Rsigma"] / sigma) * dx
              - (Rxs_hat * self._mean(xs_hat * dx_hat)
                 + xs_hat * self._mean(Rxs_hat * dx_hat)) / sigma)  # stat view
        return Rdx + RP.reshape(x.shape)

    def extra_repr(self):
        return f"eps={self.eps:g}"


class _BatchNorm(Normalization):
    """Per-channel statistics over every axis but the channel axis 1."""

    layout = ""
    ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__(eps)
        num_features = expect_size(type(self).__name__, "num_features", num_features)
        momentum = expect_real(type(self).__name__, "momentum", momentum,
                               "momentum=None (PyTorch's cumulative average) is not supported; "
                               "give a number in [0, 1] such as 0.1"
                               if momentum is None else "")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__} expects momentum in [0, 1], got "
                             f"{momentum}; running = (1 - momentum) * running + momentum * batch")
        self.num_features = num_features
        self.momentum = momentum
        xp, dtype = backend.xp(), backend.get_default_dtype()
        self.params["gamma"] = xp.ones(self.num_features, dtype=dtype)  # (C,)
        self.params["beta"] = xp.zeros(self.num_features, dtype=dtype)  # (C,)
        self.buffers["running_mean"] = xp.zeros(self.num_features, dtype=dtype)  # (C,)
        self.buffers["running_var"] = xp.ones(self.num_features, dtype=dtype)  # (C,)

    def check_input(self, x):
        expect_ndim(self, x, self.ndims, self.layout)
        expect_dim(self, x, 1, self.num_features, "num_features (channels C)")
        if self.training:
            count = x.size // x.shape[1]
            if count < 2:
                raise ValueError(
                    f"{type(self).__name__} in train mode expects more than 1 value per "
                    f"channel (N*H*W > 1), got input of shape {tuple(x.shape)}; use a batch "
                    f"of 2 or more, or call .eval() to use the running statistics")

    def stat_axes(self, x):
        return (0,) + tuple(range(2, x.ndim))

    def param_axes(self, x):
        return (0,) + tuple(range(2, x.ndim))  # gamma is per channel, like the statistics

    def param_view(self, p, x):
        return p.reshape((1, -1) + (1,) * (x.ndim - 2))  # (1, C, 1, ...)

    # -- the fast twin of Normalization.forward / backward (see the module doc) -----------
    def _pieces(self, x3):
        """Slices of the batch of x3 (N, C, L) holding about ``parallel.PIECE_VALUES``
        values each (a 1 MB piece stays in the CPU cache through the passes); the whole
        batch at once on the GPU."""
        if backend.on_device(x3):
            return [slice(0, x3.shape[0])]
        return parallel.batch_pieces(x3.shape[0], x3.shape[1] * x3.shape[2],
                                     parallel.PIECE_VALUES)

    def forward(self, x):
        self.check_input(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        backend.check_same_device(f"{type(self).__name__}.forward(x)", x, gamma)
        xp = backend.array_module(x)
        N, C = x.shape[:2]
        L = math.prod(x.shape[2:])  # H W (1 for (N, C) input)
        x3 = x.reshape(N, C, L)  # (N, C, L)
        pieces = self._pieces(x3)
        if self.training:
            mu, var = self._batch_stats(x3, pieces)  # (C,), (C,)
            self.record_batch_stats(mu, var, N * L)
        else:
            backend.check_same_device(f"{type(self).__name__}.forward(x) in eval mode", x,
                                      self.buffers["running_mean"])
            mu, var = self.buffers["running_mean"], self.buffers["running_var"]  # (C,)
        sigma = xp.sqrt(var + self.eps).astype(x.dtype)  # (C,)
        inv_sigma = (1 / sigma)[:, None]  # (C, 1)
        mu_ = mu.astype(x.dtype)[:, None]  # (C, 1)
        x_hat = xp.empty_like(x3)  # (N, C, L)
        out = xp.empty_like(x3)  # (N, C, L)

        def normalise(piece):  # x_hat = (x - mu) / sigma, out = gamma x_hat + beta
            xh = xp.subtract(x3[piece], mu_, out=x_hat[piece])
            xh *= inv_sigma
            o = xp.multiply(xh, gamma[:, None], out=out[piece])
            o += beta[:, None]

        parallel.map_pieces(normalise, pieces, like=x)
        view = (1, C) + (1,) * (x.ndim - 2)  # the statistics' shape in the generic passes
        self.cache = {"x_hat": x_hat.reshape(x.shape), "mu": mu.reshape(view),
                      "sigma": sigma.reshape(view), "axes": self.stat_axes(x),
                      "batch_stats": self.training}
        return out.reshape(x.shape)  # shape of x

    @staticmethod
    def _batch_stats(x3, pieces):
        """Mean and biased variance per channel of x3 (N, C, L), one piece at a time.

        Each piece p (n_p L values per channel) gives its mean m_p and its sum of squared
        deviations S_p = sum (x - m_p)^2 (two passes over a piece that stays in cache);
        they combine exactly (Chan, Golub & LeVeque 1979) as
        mu = sum_p n_p m_p / M and M var = sum_p (S_p + n_p (m_p - mu)^2).
        """
        xp = backend.array_module(x3)
        L = x3.shape[2]

        def piece_stats(piece):
            xs = x3[piece]  # (n, C, L)
            m = xs.sum(axis=2).sum(axis=0) / (xs.shape[0] * L)  # (C,)
            d = xs - m[:, None]  # (n, C, L)
            return xs.shape[0] * L, m, xp.einsum("ncl,ncl->c", d, d)  # count, (C,), (C,)

        stats = parallel.map_pieces(piece_stats, pieces, like=x3)
        M = sum(count for count, _, _ in stats)
        mu = sum(count * m for count, m, _ in stats) / M  # (C,)
        var = sum(S + count * (m - mu) ** 2 for count, m, S in stats) / M  # (C,)
        return mu, var

    def backward(self, dout):
        expect_forward_done(self, dout)
        x_hat, sigma = self.cache["x_hat"], self.cache["sigma"]
        expect_output_grad(self, dout, x_hat.shape)
        self.cache["dout"] = dout
        N, C = dout.shape[:2]
        L = math.prod(dout.shape[2:])
        d3 = dout.reshape(N, C, L)  # (N, C, L)
        xh3 = x_hat.reshape(N, C, L)  # (N, C, L)
        xp = backend.array_module(dout)
        pieces = self._pieces(d3)

        def piece_sums(piece):  # sum(dout), sum(dout * x_hat) over the piece: (C,), (C,)
            return (d3[piece].sum(axis=2).sum(axis=0),
                    xp.einsum("ncl,ncl->c", d3[piece], xh3[piece]))

        sums = parallel.map_pieces(piece_sums, pieces, like=dout)
        dbeta = sum(s for s, _ in sums)  # (C,) sum(dout), pieces added in order
        dgamma = sum(s for _, s in sums)  # (C,) sum(dout * x_hat)
        self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        scale = (self.params["gamma"] / sigma.reshape(-1))[:, None]  # (C, 1) gamma / sigma
        if not self.cache["batch_stats"]:
            return (d3 * scale).reshape(dout.shape)  # eval: an affine map
        M = N * L
        k_hat = (-dgamma / M)[:, None]  # (C, 1)
        k_0 = (dbeta / M)[:, None]  # (C, 1)
        dx = xp.empty_like(d3)  # (N, C, L)

        def input_grad(piece):  # dx = gamma/sigma (dout - sum(dout)/M - x_hat sum(dout x_hat)/M)
            g = xp.multiply(xh3[piece], k_hat, out=dx[piece])
            g += d3[piece]
            g -= k_0
            g *= scale

        parallel.map_pieces(input_grad, pieces, like=dout)
        return dx.reshape(dout.shape)  # shape of x

    def fixed_stats(self, x):
        if self.training:
            return None
        backend.check_same_device(f"{type(self).__name__}.forward(x) in eval mode", x,
                                  self.buffers["running_mean"])
        mu = self.param_view(self.buffers["running_mean"], x)  # (1, C, 1, ...)
        var = self.param_view(self.buffers["running_var"], x)  # (1, C, 1, ...)
        return mu, var

    def record_batch_stats(self, mu, var, count):
        m = self.momentum
        running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
        var_unbiased = var.reshape(-1) * (count / (count - 1))  # (C,)
        # new arrays, not in-place updates: a snapshot of the buffers stays valid
        self.buffers["running_mean"] = ((1 - m) * running_mean + m * mu.reshape(-1)).astype(
            running_mean.dtype)  # (C,)
        self.buffers["running_var"] = ((1 - m) * running_var + m * var_unbiased).astype(
            running_var.dtype)  # (C,)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) features (or (N, C, L) sequences), as PyTorch's.

    Args:
        num_features: number of channels C.
        eps: added to the variance before the square root.
        momentum: weight of the new batch in the running statistics.

    Shapes: x and out (N, C) or (N, C, L); gamma, beta, running_mean, running_var (C,).

    Raises (``forward``):
        TypeError: x is not a floating-point array.
        ValueError: x has another number of dimensions or of channels than (N, C) or (N, C, L)
            with C = num_features, or, in train mode, a channel has one value or none
            (no variance to normalise by: use a larger batch, or ``.eval()``).
    """

    layout = "(N, C) or (N, C, L)"
    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) images, statistics over N, H and W.

    Args:
        num_features: number of channels C.
        eps: added to the variance before the square root.
        momentum: weight of the new batch in the running statistics.

    Shapes: x and out (N, C, H, W); gamma, beta, running_mean, running_var (C,).

    Raises (``forward``):
        TypeError: x is not a floating-point array.
        ValueError: x has another number of dimensions or of channels than (N, C, H, W)
            with C = num_features, or, in train mode, a channel has one value or none
            (no variance to normalise by: use a larger batch, or ``.eval()``).
    """

    layout = "(N, C, H, W)"
    ndims = (4,)
