"""Layer normalisation (Ba, Kiros & Hinton 2016): normalise each example over its last dims.

Reference: J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", arXiv 1607.06450.

For ``normalized_shape`` D (the trailing dims of x, e.g. (C, H, W) or (features,)), every
leading index n (an example, or an example and a time step) gets its own statistics over
the M = prod(D) values x[n, ...]::

    mu    = mean(x[n])            var = mean((x[n] - mu)^2)       (biased, as in PyTorch)
    sigma = sqrt(var + eps)       x_hat = (x[n] - mu) / sigma
    out   = gamma * x_hat + beta  gamma, beta of shape D (elementwise affine)

Backward, R-operator passes: exactly BatchNorm's train-mode formulas (batchnorm.py),
with the means over the trailing dims instead of the batch, and dgamma, dbeta summed
over the leading dims::

    dx     = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / sigma,  dx_hat = gamma dout
    dgamma = sum_n dout * x_hat,  dbeta = sum_n dout

There is no running state: train and eval mode compute the same thing.
"""
from .. import backend
from .base import expect_ndim, expect_size
from .batchnorm import Normalization

__all__ = ["LayerNorm"]


class LayerNorm(Normalization):
    """Normalise over the trailing ``normalized_shape`` dims, as PyTorch's ``nn.LayerNorm``.

    Args:
        normalized_shape: int or tuple D; the input's last len(D) dims must equal D.
        eps: added to the variance before the square root.

    Shapes: x and out (*, *D); gamma, beta D.
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__(eps)
        sizes = normalized_shape
        if not hasattr(sizes, "__len__") or isinstance(sizes, (str, bytes)):
            sizes = (sizes,)  # one size
        if not len(sizes):
            raise ValueError(f"LayerNorm expects a positive integer normalized_shape or a "
                             f"sequence of them, got {normalized_shape!r}")
        shape = tuple(expect_size("LayerNorm", "normalized_shape (or each of its sizes)", d)
                      for d in sizes)
        self.normalized_shape = shape
        xp, dtype = backend.xp(), backend.get_default_dtype()
        self.params["gamma"] = xp.ones(shape, dtype=dtype)  # D
        self.params["beta"] = xp.zeros(shape, dtype=dtype)  # D

    def check_input(self, x):
        k = len(self.normalized_shape)
        layout = "(*, " + ", ".join(str(d) for d in self.normalized_shape) + ")"
        expect_ndim(self, x, tuple(range(k, k + 32)), layout)
        if tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ValueError(
                f"LayerNorm expects input whose last {k} dim(s) equal normalized_shape "
                f"{self.normalized_shape}, got input of shape {tuple(x.shape)}")

    def stat_axes(self, x):
        k = len(self.normalized_shape)
        return tuple(range(x.ndim - k, x.ndim))

    def param_view(self, p, x):
        return p  # D broadcasts against the trailing dims

    def param_axes(self, x):
        return tuple(range(x.ndim - len(self.normalized_shape)))

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps:g}"
