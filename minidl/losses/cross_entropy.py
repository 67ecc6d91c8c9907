"""Softmax cross-entropy, fused and numerically stable.

For logits x_n (K classes) and a target distribution y_n (one-hot for a label; any
entries >= 0, as PyTorch's probability targets, which need not sum to 1)::

    log p_n = x_n - logsumexp(x_n)          (shifted by max_k x_nk: finite for |x| ~ 1e4)
    l_n     = - sum_k y_nk log p_nk
    L       = (1/N) sum_n l_n   ("mean")   or   sum_n l_n   ("sum")

Gradient and Hessian with respect to the logits (c = 1/N for "mean", 1 for "sum";
s_n = sum_k y_nk, 1 for labels and one-hot targets)::

    dL/dx_n   = c (s_n p_n - y_n)
    H_n       = c s_n (diag(p_n) - p_n p_n^T)
    S_n       = sqrt(c s_n) (diag(sqrt p_n) - p_n sqrt(p_n)^T),   S_n S_n^T = H_n

H_n does not depend on the labels, so the GGN of cross-entropy equals its Fisher.
"""
from .. import backend
from ..layers.base import expect_input
from .base import Loss

__all__ = ["SoftmaxCrossEntropy", "log_softmax", "softmax"]


def log_softmax(x):
    """Stable log-softmax over the last axis."""
    xp = backend.array_module(x)
    shifted = x - x.max(axis=-1, keepdims=True)  # (N, K), max entry 0
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(x):
    """Stable softmax over the last axis."""
    return backend.array_module(x).exp(log_softmax(x))


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(logits) against integer labels or target distributions.

    Args:
        reduction: ``"mean"`` (average over the N examples, as PyTorch) or ``"sum"``.
    """

    def forward(self, logits, target):
        xp = backend.check_same_device("SoftmaxCrossEntropy.forward(logits, target)",
                                       logits, target)
        expect_input(self, logits)  # a floating array (TypeError otherwise), as every loss
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy expects logits of shape (N, K), got "
                             f"{tuple(logits.shape)}")
        N, K = logits.shape
        c = self._start(logits, N)  # 1/N or 1; refuses an empty mean
        Y = self._target_matrix(xp, logits, target)  # (N, K)
        logp = log_softmax(logits)  # (N, K)
        self.cache = {"p": xp.exp(logp), "Y": Y, "c": c, "logits": logits}
        # 0 * log p is 0 even where log p = -inf (a logit of -inf, a masked class): mask
        # log p before multiplying, so that no 0 * (-inf) = NaN is ever made
        total = -(Y * xp.where(Y != 0, logp, 0.0)).sum()
        return self._finish(float(total) * c, logits, target)

    def _target_matrix(self, xp, logits, target):
        N, K = logits.shape
        target = xp.asarray(target)
        if target.ndim == 1:
            if target.dtype.kind not in "iu":
                raise TypeError("SoftmaxCrossEntropy expects integer class labels of shape "
                                f"(N,), got dtype {target.dtype}; use y.astype(int)")
            if target.shape[0] != N:
                raise ValueError(f"SoftmaxCrossEntropy: {N} rows of logits but "
                                 f"{target.shape[0]} labels")
            if N and (int(target.min()) < 0 or int(target.max()) >= K):
                raise ValueError(f"SoftmaxCrossEntropy: labels must lie in [0, {K - 1}] for "
                                 f"{K} classes, got values in [{int(target.min())}, "
                                 f"{int(target.max())}]")
            Y = xp.zeros((N, K), dtype=logits.dtype)  # (N, K) one-hot
            Y[xp.arange(N), target] = 1
            return Y
        if target.shape != logits.shape:
            raise ValueError("SoftmaxCrossEntropy expects labels of shape (N,) or target "
                             f"probabilities of shape {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)}")
        Y = target.astype(logits.dtype)  # (N, K)
        if Y.size and float(Y.min()) < 0:
            row = int(Y.min(axis=1).argmin())
            raise ValueError(
                f"SoftmaxCrossEntropy expects target probabilities >= 0, got a smallest entry "
                f"of {float(Y.min()):g} (in row {row}); with a negative weight on a class the "
                "loss has no minimum. (A row need not sum to 1: its sum scales its loss.)")
        return Y

    def backward(self):
        p, Y, c = self._need("p"), self.cache["Y"], self.cache["c"]
        s = Y.sum(axis=1, keepdims=True)  # (N, 1)
        return c * (s * p - Y)  # (N, K)

    def _scale(self):
        return self.cache["c"] * self.cache["Y"].sum(axis=1)  # (N,)

    def hvp(self, Rlogits):
        p = self._need("p")
        pv = (p * Rlogits).sum(axis=1, keepdims=True)  # (N, 1)
        return self._scale()[:, None] * (p * Rlogits - p * pv)  # (N, K)

    def hessian(self):
        p = self._need("p")
        xp = backend.array_module(p)
        N, K = p.shape
        H = xp.einsum("nk,kl->nkl", p, xp.eye(K, dtype=p.dtype))  # (N, K, K) diag(p)
        H -= p[:, :, None] * p[:, None, :]
        return self._scale()[:, None, None] * H

    def hessian_sum(self):
        p = self._need("p")
        xp = backend.array_module(p)
        w = self._scale()[:, None] * p  # (N, K): c s_n p_n
        return xp.diag(w.sum(axis=0)) - w.T @ p  # (K, K)

    def hessian_factor(self):
        p = self._need("p")
        xp = backend.array_module(p)
        N, K = p.shape
        sqrt_p = xp.sqrt(p)  # (N, K)
        S = xp.einsum("nk,kl->nkl", sqrt_p, xp.eye(K, dtype=p.dtype))  # (N, K, K)
        S -= p[:, :, None] * sqrt_p[:, None, :]
        return xp.sqrt(self._scale())[:, None, None] * S

    def sample_target(self, rng):
        """Labels y_n ~ Categorical(softmax(x_n)), drawn on the host with ``rng``."""
        p = backend.to_numpy(self._need("p")).astype("float64")  # (N, K)
        u = rng.random((p.shape[0], 1))  # (N, 1)
        labels = (p.cumsum(axis=1) < u).sum(axis=1)  # (N,)
        labels = labels.clip(0, p.shape[1] - 1)
        return backend.array_module(self.cache["p"]).asarray(labels)
