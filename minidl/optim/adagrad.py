"""AdaGrad: per-coordinate step sizes from the running sum of squared gradients.

Coordinates that have seen large gradients (sensitive directions) get smaller steps; the
scaling 1 / (sqrt(u) + delta) acts as a diagonal preconditioner (lecture 1). For step
k = 1, 2, ... with lr, delta (``eps``) and weight decay lambda::

    g_k     = grad f(theta_{k-1}) + lambda theta_{k-1}
    u_k     = u_{k-1} + g_k o g_k,                 u_0 = 0   (o: elementwise product)
    theta_k = theta_{k-1} - lr g_k / (sqrt(u_k) + delta)       (elementwise sqrt and /)

Its limitation, which RMSProp answers: u_k only grows, so the step size keeps shrinking.
This is PyTorch's ``torch.optim.Adagrad`` with lr_decay = 0 and initial_accumulator_value
= 0.

Reference: J. Duchi, E. Hazan, Y. Singer, "Adaptive subgradient methods for online
learning and stochastic optimization", JMLR 2011.
"""
from .. import backend
from .base import Optimizer, check_number

__all__ = ["AdaGrad"]


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al. 2011).

    Args:
        model: the network whose ``parameters()`` are optimised.
        lr: learning rate, >= 0.
        eps: delta >= 0 added to sqrt(u) to keep the division finite.
        weight_decay: lambda >= 0, adds lambda * theta to the gradient.
    """

    def __init__(self, model, lr=1e-2, eps=1e-10, weight_decay=0.0):
        name = type(self).__name__
        self.eps = check_number(name, "eps", eps, low=0.0)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, low=0.0)
        super().__init__(model, lr)

    def init_state(self, theta):
        xp = backend.array_module(theta)
        return {"u": xp.zeros_like(theta)}  # same shape as theta

    def update(self, theta, g, s):
        xp = backend.array_module(theta)
        if self.weight_decay:
            g = g + self.weight_decay * theta  # same shape as theta
        u = s["u"]
        u += g * g                            # u_k = u_{k-1} + g_k o g_k
        denom = xp.sqrt(u)                    # same shape as theta
        denom += self.eps
        step = xp.divide(g, denom, out=denom)
        step *= self.lr
        theta -= step                         # lr g_k / (sqrt(u_k) + delta)

    def hyperparameters(self):
        return {"eps": self.eps, "weight_decay": self.weight_decay}

    def extra_repr(self):
        return f"lr={self.lr:g}, eps={self.eps:g}, weight_decay={self.weight_decay:g}"
