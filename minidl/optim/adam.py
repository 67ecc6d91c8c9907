"""Adam (bias-corrected adaptive moments) and AdamW (Adam with decoupled weight decay).

Adam is RMSProp plus an exponential moving average of the gradient itself; both averages
start at zero, so they are divided by (1 - beta^k) to remove that bias (lecture 4). For
step k = 1, 2, ... with lr, betas (beta1, beta2), delta (``eps``) and weight decay
lambda::

    g_k     = grad f(theta_{k-1}) + lambda theta_{k-1}     (Adam: L2 decay in the gradient)
    m_k     = beta1 m_{k-1} + (1 - beta1) g_k,              m_0 = 0   first moment
    v_k     = beta2 v_{k-1} + (1 - beta2) g_k o g_k,        v_0 = 0   second moment
    mhat_k  = m_k / (1 - beta1^k),    vhat_k = v_k / (1 - beta2^k)    bias correction
    theta_k = theta_{k-1} - lr mhat_k / (sqrt(vhat_k) + delta)

The step is unit-free and |lr mhat / sqrt(vhat)| <~ lr: Adam never takes huge steps, and
the steps shrink near an optimum where E[g] ~ 0 but E[g^2] > 0.

AdamW decouples the weight decay from the adaptive scaling: the gradient stays the loss's
gradient, and the parameters shrink directly before the Adam step::

    theta'  = (1 - lr lambda) theta_{k-1}
    g_k     = grad f(theta_{k-1})
    m_k, v_k, mhat_k, vhat_k as above
    theta_k = theta' - lr mhat_k / (sqrt(vhat_k) + delta)

(With L2 decay in Adam's gradient, lambda theta is divided by sqrt(vhat) too, so weights
with large gradients are hardly decayed; AdamW decays every weight at the same rate.)
Both match PyTorch's ``torch.optim.Adam`` and ``torch.optim.AdamW`` (amsgrad=False).

References: D. P. Kingma, J. Ba, "Adam: a method for stochastic optimization", ICLR 2015;
I. Loshchilov, F. Hutter, "Decoupled weight decay regularization", ICLR 2019.
"""
import math

from .. import backend
from .base import Optimizer, check_number

__all__ = ["Adam", "AdamW"]


def _check_betas(name, betas):
    """Validate ``betas = (beta1, beta2)``, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2), each in [0, 1), "
                         f"got {betas!r}")
    beta1 = check_number(name, "betas[0]", betas[0], 0.0, 1.0, high_open=True)
    beta2 = check_number(name, "betas[1]", betas[1], 0.0, 1.0, high_open=True)
    return beta1, beta2


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015), with L2 weight decay added to the gradient.

    Args:
        model: the network whose ``parameters()`` are optimised.
        lr: learning rate, >= 0.
        betas: (beta1, beta2), the decays of the first and second moment, each in [0, 1).
        eps: delta >= 0 added to sqrt(vhat).
        weight_decay: lambda >= 0, adds lambda * theta to the gradient (see AdamW for the
            decoupled form).
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        name = type(self).__name__
        self.betas = _check_betas(name, betas)
        self.eps = check_number(name, "eps", eps, low=0.0)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, low=0.0)
        super().__init__(model, lr)

    def init_state(self, theta):
        xp = backend.array_module(theta)
        return {"m": xp.zeros_like(theta),  # same shape as theta
                "v": xp.zeros_like(theta)}  # same shape as theta

    def update(self, theta, g, s):
        if self.weight_decay:
            g = g + self.weight_decay * theta  # same shape as theta
        self.adam_step(theta, g, s)

    def adam_step(self, theta, g, s):
        """m, v and theta of step k = s["step"] from the gradient g, all in place.

        The step lr mhat / (sqrt(vhat) + delta) is computed as PyTorch arranges it,
        (lr / (1 - beta1^k)) m / (sqrt(v) / sqrt(1 - beta2^k) + delta): the same value,
        with the two bias corrections applied to numbers instead of whole arrays.
        """
        xp = backend.array_module(theta)
        beta1, beta2 = self.betas
        k = s["step"]
        m, v = s["m"], s["v"]
        m *= beta1
        m += (1 - beta1) * g                 # m_k = beta1 m_{k-1} + (1 - beta1) g_k
        v *= beta2
        v += (1 - beta2) * (g * g)           # v_k = beta2 v_{k-1} + (1 - beta2) g_k o g_k
        denom = xp.sqrt(v)                   # same shape as theta
        denom /= math.sqrt(1 - beta2 ** k)   # sqrt(vhat_k)
        denom += self.eps                    # sqrt(vhat_k) + delta
        step = xp.divide(m, denom, out=denom)
        step *= self.lr / (1 - beta1 ** k)   # lr mhat_k / (sqrt(vhat_k) + delta)
        theta -= step

    def hyperparameters(self):
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps,
                "weight_decay": self.weight_decay}

    def extra_repr(self):
        return (f"lr={self.lr:g}, betas=({self.betas[0]:g}, {self.betas[1]:g}), "
                f"eps={self.eps:g}, weight_decay={self.weight_decay:g}")


class AdamW(Adam):
    """AdamW (Loshchilov and Hutter 2019): Adam with decoupled weight decay.

    Args:
        model: the network whose ``parameters()`` are optimised.
        lr: learning rate, >= 0.
        betas: (beta1, beta2), each in [0, 1).
        eps: delta >= 0 added to sqrt(vhat).
        weight_decay: lambda >= 0; each step multiplies theta by (1 - lr lambda).
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def update(self, theta, g, s):
        theta *= 1 - self.lr * self.weight_decay
        self.adam_step(theta, g, s)
