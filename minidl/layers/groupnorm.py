"""Group normalisation (Wu & He 2018): normalise each example over groups of channels.

Reference: Y. Wu, K. He, "Group Normalization", ECCV 2018.

The C channels of x (N, C, *S) are split into G groups of C/G consecutive channels. For
example n and group g the statistics run over the M = (C/G) * prod(S) values of that
group (x viewed as (N, G, M))::

    mu    = mean(x[n, g])        var = mean((x[n, g] - mu)^2)      (biased, as in PyTorch)
    sigma = sqrt(var + eps)      x_hat = (x[n, g] - mu) / sigma
    out   = gamma_c * x_hat + beta_c      per-channel gamma, beta of shape (C,)

Backward, R-operator passes: exactly BatchNorm's train-mode formulas (batchnorm.py),
with the means over each (n, g) group, and dgamma, dbeta summed over N and S::

    dx     = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / sigma,  dx_hat = gamma dout
    dgamma = sum_{n, s} dout * x_hat,  dbeta = sum_{n, s} dout

G = 1 is LayerNorm over (C, *S) with per-channel affine; G = C is InstanceNorm.
There is no running state: train and eval mode compute the same thing.
"""
from .. import backend
from .base import expect_dim, expect_ndim, expect_size
from .batchnorm import Normalization

__all__ = ["GroupNorm"]


class GroupNorm(Normalization):
    """Normalise over groups of channels, as PyTorch's ``nn.GroupNorm``.

    Args:
        num_groups: G; must divide num_channels.
        num_channels: C, the size of axis 1 of the input.
        eps: added to the variance before the square root.

    Shapes: x and out (N, C, *S); gamma, beta (C,).
    """

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__(eps)
        G = expect_size("GroupNorm", "num_groups", num_groups)
        C = expect_size("GroupNorm", "num_channels", num_channels)
        if C % G != 0:
            raise ValueError(f"GroupNorm expects num_groups to divide num_channels, got "
                             f"num_groups={G} and num_channels={C} (C % G = {C % G}); "
                             f"pick a divisor of {C}")
        self.num_groups, self.num_channels = G, C
        xp, dtype = backend.xp(), backend.get_default_dtype()
        self.params["gamma"] = xp.ones(C, dtype=dtype)  # (C,)
        self.params["beta"] = xp.zeros(C, dtype=dtype)  # (C,)

    def check_input(self, x):
        expect_ndim(self, x, tuple(range(2, 34)), "(N, C, *)")
        expect_dim(self, x, 1, self.num_channels, "num_channels (channels C)")

    def stat_view(self, a):
        M = self.num_channels // self.num_groups  # values per group: (C/G) * prod(S)
        for d in a.shape[2:]:
            M *= int(d)
        return a.reshape(a.shape[0], self.num_groups, M)  # (N, G, M); N = 0 works too

    def stat_axes(self, x):
        return (2,)

    def param_view(self, p, x):
        return p.reshape((1, -1) + (1,) * (x.ndim - 2))  # (1, C, 1, ...)

    def param_axes(self, x):
        return (0,) + tuple(range(2, x.ndim))

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps:g}"
