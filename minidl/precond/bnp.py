"""BNP: Batch Normalization Preconditioning (Lange, Helfrich, Ye; JMLR 23(72), 2022).

BNP gets what batch normalisation does for the conditioning of a layer without changing
the network: it transforms the gradients of W and b as if the layer's input had been
normalised. For a dense layer with input h (m features), mini-batch of N inputs, and one
output neuron with ``w_hat = [b_o; W[o, :]]``, write ``w_hat = P z`` with::

    P = U D,   U = [[1, -mu^T], [0, I]],   D = diag(1, 1/sigma)       ((m+1) x (m+1))

Then ``w_hat^T [1; h] = z^T [1; (h - mu)/sigma]``: in z the layer sees its input centred
and scaled, and a gradient step on z is the step ``w_hat <- w_hat - lr P P^T grad`` on the
real weights. Written out (the slides' algorithm, G_W (n, m), G_b (n,), per step)::

    1. mu_A = mean_j h_j ;  s2_A = mean_j (h_j - mu_A)^2             (biased, per feature)
    2. mu <- rho mu + (1 - rho) mu_A ;  s2 <- rho s2 + (1 - rho) s2_A  (running statistics)
    3. s2t = s2 + eps1 max(s2) + eps2 ;  q = sqrt(max(m / N, 1))
    4. G_W <- (G_W - G_b mu^T) / s2t / q        (s2t divides each column j)
       G_b <- G_b / q - G_W mu                  (with the NEW G_W)
    5. the optimizer (SGD, momentum, ...) steps with G_W, G_b

Step 4 is ``(1/q) P P^T [G_b; G_W[o]]`` for every neuron o, with sigma^2 = s2t. The factor
1/q evens out the layers: the norm of the normalised input matrix grows like
max(sqrt(m), sqrt(N)), so dividing by q = max(sqrt(m/N), 1) leaves about sqrt(N) for all.

Conv2d (W (F, C, k, k), "mean and variance over the mini-batch and spatial dimensions, as
in BN"): mu_c and s2_c per *input channel* c over (N, H, W) of the layer's input (zero
padding is not counted), and then::

    G_W[o, c] <- (G_W[o, c] - G_b[o] mu_c) / s2t_c / q
    G_b[o]    <- G_b[o] / q - sum_{c,u,v} G_W[o, c, u, v] mu_c

which is step 4 for the im2col view of the layer (each patch is an input row h of
m = C k^2 entries, entry (c, u, v) with mean mu_c and variance s2_c).

Choices where the slides say nothing ([unverified] in the reference; all tunable):

* q for conv: m = C k^2 (the fan-in of one output) and N = batch * H_out * W_out, the number
  of patches (rows of the im2col matrix; batch * H * W for a "same" convolution). q is
  computed from the current batch, so a smaller last batch gets its own q.
* Defaults rho = ``stat_decay`` = 0.9 (BatchNorm's momentum 0.1), eps1 = 1e-2, eps2 = 1e-3:
  not the paper's values, which could not be recovered. eps1 bounds the amplification of
  a feature to 1/eps1 of the layer's largest variance: with 1e-4, a ReLU unit that
  stopped firing once the loss neared zero had its gradient multiplied by up to 1e4, and
  SGD-momentum at lr 0.05 diverged on a small MLP (1 seed in 5); 1e-2 trained all 5.
  eps2 bounds it to 1/eps2 whatever the layer's variances: at initialisation the inputs
  of a deep ReLU network fade layer by layer (to variances near 1e-4 in the last layers
  of the 5-layer CNN on MNIST), and with eps2 = 1e-5 their gradients were multiplied by
  up to 7e3; at lr 2e-3 with momentum 0.9 the loss of that CNN went from 2.3 to 1e3 and
  beyond on 4 seeds of 4 (3e-4: 2 of 4), and that of a 784-100x5-10 MLP on 2 of 2.
  With 1e-3 all 8 seeds of the CNN reached 93-95% test accuracy in 3 epochs of 3,000
  digits; the 784-100-100-10 MLP ended 1-2 points lower than with 1e-5.
* The first batch initialises the running statistics (mu = mu_A, s2 = s2_A) instead of
  starting from mu = 0, s2 = 1, so step 1 is already preconditioned with real statistics.
* Statistics are updated every T1 steps (default 1) and the transform (mu, s2t) is
  refreshed every T2 steps (default 1), as for the other preconditioners.
* A layer without bias has no centring freedom (U needs b): G_W <- G_W / s2t / q.
* BatchNorm, LayerNorm and GroupNorm parameters are not covered: BNP is meant to replace
  normalisation layers, and their gamma/beta keep the optimizer's plain gradient.

Cost: O(m) memory per layer, O(N m + n m) time per step.
"""
from ..layers.conv import Conv2d
from ..layers.linear import Linear
from .base import Preconditioner, check_number

__all__ = ["BNP"]


class BNP(Preconditioner):
    """Batch Normalization Preconditioning for Linear and Conv2d layers.

    Args:
        model: the network; its Linear and Conv2d layers are preconditioned.
        stat_decay: rho, the weight of the old running mean and variance (0 uses the
            batch statistics only).
        eps1: relative floor of the variance, s2t = s2 + eps1 max(s2) + eps2.
        eps2: absolute floor of the variance.
        T1: update the running statistics every ``T1`` steps.
        T2: refresh the transform (mu, s2t) every ``T2`` steps.
        warn: warn about parameterised layers left to the optimizer.
    """

    name = "bnp"

    def __init__(self, model, stat_decay=0.9, eps1=1e-2, eps2=1e-3, T1=1, T2=1, warn=True):
        self.rho = check_number("BNP", "stat_decay (rho)", stat_decay, 0.0, 1.0, high_open=True)
        self.eps1 = check_number("BNP", "eps1", eps1, low=0.0)
        self.eps2 = check_number("BNP", "eps2", eps2, low=0.0)
        super().__init__(model, T1=T1, T2=T2, warn=warn)

    def covered_types(self):
        return [Linear, Conv2d]

    def hyperparameters(self):
        return dict(super().hyperparameters(), stat_decay=self.rho, eps1=self.eps1,
                    eps2=self.eps2)

    @staticmethod
    def _batch_stats(x):
        """Per input feature (dense, x (N, m)) or per input channel (conv, x (N, C, H, W))."""
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        mu_A = x.mean(axis=axes)  # (m,) or (C,)
        s2_A = x.var(axis=axes)  # (m,) or (C,), biased as in BN
        return mu_A, s2_A

    def update_curvature(self, i, layer, step=None):
        """Running mean and variance of the layer's input (every T1 steps)."""
        s = self.state[i]
        mu_A, s2_A = self._batch_stats(layer.cache["x"])
        if "mu" not in s:
            s["mu"], s["s2"] = mu_A, s2_A  # the first batch initialises the statistics
            return
        s["mu"] = self.rho * s["mu"] + (1 - self.rho) * mu_A  # (m,) or (C,)
        s["s2"] = self.rho * s["s2"] + (1 - self.rho) * s2_A  # (m,) or (C,)

    def update_inverse(self, i, layer, step=None):
        """The transform in use: mu and the floored variance s2t (every T2 steps)."""
        s = self.state[i]
        s["P_mu"] = s["mu"].copy()  # (m,) or (C,)
        s["P_s2t"] = s["s2"] + self.eps1 * s["s2"].max() + self.eps2  # (m,) or (C,)

    def precondition(self, i, layer, step=None):
        """G_W <- (G_W - G_b mu^T) / s2t / q ;  G_b <- G_b / q - G_W mu."""
        s = self.state[i]
        mu, s2t = s["P_mu"], s["P_s2t"]
        G_W = layer.grads["W"]  # (n, m) or (F, C, kh, kw)
        dout = layer.cache["dout"]  # (N, n) or (N, F, H_out, W_out)
        if G_W.ndim == 2:
            m, N = G_W.shape[1], dout.shape[0]
            shape = (1, -1)  # mu, s2t broadcast over the columns j of G_W
        else:
            m, N = G_W[0].size, dout.shape[0] * dout.shape[2] * dout.shape[3]
            shape = (1, -1, 1, 1)  # ... over the input channels c of G_W
        q = max(m / N, 1.0) ** 0.5
        mu_b, s2t_b = mu.reshape(shape), s2t.reshape(shape)
        if "b" not in layer.params:
            layer.grads["W"] = G_W / s2t_b / q  # like W
            return
        G_b = layer.grads["b"]  # (n,) or (F,)
        G_b_b = G_b.reshape((-1,) + (1,) * (G_W.ndim - 1))  # (n, 1) or (F, 1, 1, 1)
        G_W_new = (G_W - G_b_b * mu_b) / s2t_b / q  # like W
        layer.grads["W"] = G_W_new
        axes = tuple(range(1, G_W.ndim))
        layer.grads["b"] = G_b / q - (G_W_new * mu_b).sum(axis=axes)  # (n,) or (F,)
