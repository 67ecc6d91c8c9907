"""Mean squared error, as PyTorch's MSELoss.

For predictions x and targets y of the same shape (N, ...) with D = prod(shape[1:])::

    L = c sum_{n,d} (x_nd - y_nd)^2,    c = 1/(N D) for "mean", 1 for "sum"
    dL/dx = 2 c (x - y)
    H_n   = 2 c I_D,     S_n = sqrt(2 c) I_D

The matching probabilistic model is y ~ N(x, I/2), whose negative log-likelihood is
sum_d (y_d - x_d)^2 up to a constant, so ``sample_target`` draws y = x + e / sqrt(2).
"""
from .. import backend
from .base import Loss

__all__ = ["MSELoss"]


class MSELoss(Loss):
    """Squared error between predictions and targets of the same shape."""

    def forward(self, logits, target):
        xp = backend.check_same_device("MSELoss.forward(pred, target)", logits, target)
        c = self._start(logits, getattr(logits, "size", 0))  # 1/(N D) or 1; checks the dtype
        if not backend.is_array(target) or tuple(target.shape) != tuple(logits.shape):
            shape = getattr(target, "shape", type(target).__name__)
            raise ValueError(f"MSELoss expects target of shape {tuple(logits.shape)} "
                             f"(the prediction's), got {shape}")
        diff = logits - target.astype(logits.dtype)  # (N, ...)
        self.cache = {"diff": diff, "c": c, "x": logits, "logits": logits}
        return self._finish(float(xp.sum(diff * diff)) * c, logits, target)

    def backward(self):
        diff = self._need("diff")
        return 2 * self.cache["c"] * diff

    def hvp(self, Rlogits):
        self._need("diff")
        return 2 * self.cache["c"] * Rlogits

    def hessian(self):
        diff = self._need("diff")
        xp = backend.array_module(diff)
        N, D = diff.shape[0], diff.size // max(diff.shape[0], 1)
        eye = xp.eye(D, dtype=diff.dtype)  # (D, D)
        return xp.broadcast_to(2 * self.cache["c"] * eye, (N, D, D)).copy()  # (N, D, D)

    def hessian_sum(self):
        diff = self._need("diff")
        xp = backend.array_module(diff)
        N, D = diff.shape[0], diff.size // max(diff.shape[0], 1)
        return 2 * self.cache["c"] * N * xp.eye(D, dtype=diff.dtype)  # (D, D)

    def hessian_factor(self):
        diff = self._need("diff")
        xp = backend.array_module(diff)
        N, D = diff.shape[0], diff.size // max(diff.shape[0], 1)
        eye = xp.eye(D, dtype=diff.dtype)  # (D, D)
        return xp.broadcast_to((2 * self.cache["c"]) ** 0.5 * eye, (N, D, D)).copy()

    def sample_target(self, rng):
        """y = x + e / sqrt(2), e ~ N(0, I), drawn on the host with ``rng``."""
        x = self._need("x")
        e = rng.standard_normal(x.shape) * 0.5 ** 0.5  # same shape as x
        return x + backend.array_module(x).asarray(e, dtype=x.dtype)
