"""Binary cross-entropy with logits (sigmoid fused in), as PyTorch's BCEWithLogitsLoss.

For logits x and targets y in [0, 1] of the same shape, s = sigmoid(x)::

    l   = max(x, 0) - x y + log(1 + exp(-|x|))      (= -y log s - (1-y) log(1-s), stably)
    L   = c sum l,         c = 1/(number of elements) for "mean", 1 for "sum"
    dL/dx = c (s - y)
    H   = c diag(s (1 - s)),   S = diag(sqrt(c s (1 - s)))

``sample_target`` draws y ~ Bernoulli(s).
"""
from .. import backend
from ..layers.activations import sigmoid
from .base import Loss

__all__ = ["BCEWithLogits"]


class BCEWithLogits(Loss):
    """Sigmoid + binary cross-entropy on logits of any shape (N, ...).

    The cache keeps the target array itself (not a copy, when it already has the logits'
    dtype), as layers keep their input: change it in place between ``forward`` and
    ``backward`` and the gradient changes with it.
    """

    def forward(self, logits, target):
        xp = backend.check_same_device("BCEWithLogits.forward(logits, target)", logits, target)
        c = self._start(logits, getattr(logits, "size", 0))  # 1/(N D) or 1; checks the dtype
        if not backend.is_array(target) or tuple(target.shape) != tuple(logits.shape):
            shape = getattr(target, "shape", type(target).__name__)
            raise ValueError(f"BCEWithLogits expects target of shape {tuple(logits.shape)} "
                             f"(the logits'), got {shape}")
        y = target.astype(logits.dtype, copy=False)
        if y.size and (float(y.min()) < 0 or float(y.max()) > 1):
            raise ValueError("BCEWithLogits expects targets in [0, 1], got values in "
                             f"[{float(y.min())}, {float(y.max())}]")
        x = logits
        # e = exp(-|x|) never overflows; it gives both the sigmoid and the log term,
        # log(1 + exp(-|x|)) = log1p(e)
        e = xp.exp(-xp.abs(x))  # same shape as x
        s = sigmoid(x, e)  # same shape as x
        self.cache = {"s": s, "y": y, "c": c, "logits": x}
        l = xp.maximum(x, 0)  # same shape as x
        l -= x * y
        l += xp.log1p(e, out=e)  # e is not needed any more
        return self._finish(float(l.sum()) * c, logits, target)

    def backward(self):
        s = self._need("s")
        return self.cache["c"] * (s - self.cache["y"])

    def _h(self):
        s = self._need("s")
        return self.cache["c"] * s * (1 - s)  # same shape as the logits

    def hvp(self, Rlogits):
        return self._h() * Rlogits

    def hessian(self):
        h = self._h()
        xp = backend.array_module(h)
        h = h.reshape(h.shape[0], -1)  # (N, K)
        return xp.einsum("nk,kl->nkl", h, xp.eye(h.shape[1], dtype=h.dtype))  # (N, K, K)

    def hessian_sum(self):
        h = self._h()
        xp = backend.array_module(h)
        return xp.diag(h.reshape(h.shape[0], -1).sum(axis=0))  # (K, K)

    def hessian_factor(self):
        h = self._h()
        xp = backend.array_module(h)
        h = xp.sqrt(h.reshape(h.shape[0], -1))  # (N, K)
        return xp.einsum("nk,kl->nkl", h, xp.eye(h.shape[1], dtype=h.dtype))  # (N, K, K)

    def sample_target(self, rng):
        """y ~ Bernoulli(sigmoid(x)), drawn on the host with ``rng``."""
        s = self._need("s")
        u = rng.random(s.shape)  # same shape as the logits
        y = (u < backend.to_numpy(s)).astype("float64")
        return backend.array_module(s).asarray(y, dtype=s.dtype)
