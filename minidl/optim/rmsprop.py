"""RMSProp: divide the gradient by a running root-mean-square of recent gradients.

AdaGrad's sum of squared gradients becomes an exponential moving average, so old gradients
are forgotten and the step size does not decay to zero (Hinton 2012; lectures 1 and 4).
For step k = 1, 2, ... with lr, decay alpha (the lectures' beta), delta (``eps``), momentum
mu and weight decay lambda::

    g_k     = grad f(theta_{k-1}) + lambda theta_{k-1}
    v_k     = alpha v_{k-1} + (1 - alpha) g_k o g_k,      v_0 = 0
    m_k     = mu m_{k-1} + g_k / (sqrt(v_k) + delta),     m_0 = 0
    theta_k = theta_{k-1} - lr m_k

With mu = 0, m_k = g_k / (sqrt(v_k) + delta), the lecture's update. The damping delta is
added after the square root, as in PyTorch's ``torch.optim.RMSprop`` (centered=False),
which this matches step for step; lecture 4 writes sqrt(v_k + delta), which differs only
in how small gradients are damped.

Reference: G. Hinton, Neural Networks for Machine Learning, lecture 6e, 2012.
"""
from .. import backend
from .base import Optimizer, check_number

__all__ = ["RMSProp"]


class RMSProp(Optimizer):
    """RMSProp (Hinton 2012), with optional momentum.

    Args:
        model: the network whose ``parameters()`` are optimised.
        lr: learning rate, >= 0.
        alpha: decay of the moving average of g o g, in [0, 1).
        eps: delta >= 0 added to sqrt(v).
        momentum: mu in [0, 1) on the scaled step; 0 gives plain RMSProp.
        weight_decay: lambda >= 0, adds lambda * theta to the gradient.
    """

    def __init__(self, model, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
        name = type(self).__name__
        self.alpha = check_number(name, "alpha", alpha, 0.0, 1.0, high_open=True)
        self.eps = check_number(name, "eps", eps, low=0.0)
        self.momentum = check_number(name, "momentum", momentum, 0.0, 1.0, high_open=True)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, low=0.0)
        super().__init__(model, lr)

    def init_state(self, theta):
        xp = backend.array_module(theta)
        return {"v": xp.zeros_like(theta),  # same shape as theta
                "m": xp.zeros_like(theta)}  # same shape as theta

    def update(self, theta, g, s):
        xp = backend.array_module(theta)
        if self.weight_decay:
            g = g + self.weight_decay * theta  # same shape as theta
        m, v = s["m"], s["v"]
        v *= self.alpha
        v += (1 - self.alpha) * (g * g)   # v_k = alpha v_{k-1} + (1 - alpha) g_k o g_k
        denom = xp.sqrt(v)                # same shape as theta
        denom += self.eps
        m *= self.momentum
        m += xp.divide(g, denom, out=denom)  # m_k = mu m_{k-1} + g_k / (sqrt(v_k) + delta)
        theta -= self.lr * m

    def hyperparameters(self):
        return {"alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "weight_decay": self.weight_decay}

    def extra_repr(self):
        return (f"lr={self.lr:g}, alpha={self.alpha:g}, eps={self.eps:g}, "
                f"momentum={self.momentum:g}, weight_decay={self.weight_decay:g}")
