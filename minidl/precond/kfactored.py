"""What K-FAC, KFLR and KFRA share: a layer as a matrix product, the Kronecker-factored
curvature block, its damping and the step-size safeguards.

A covered layer has weights W (F, m_in) (a Conv2d kernel (F, C, kh, kw) is seen as
W.reshape(F, C kh kw)) and bias b (F,). Put them side by side as W_hat = [W | b] (F, m),
m = m_in + 1, and append a ones column to the input: a_hat = [a; 1]. Example n's gradient
is the outer product dW_hat_n = delta_n a_hat_n^T (summed over output locations t for a
convolution), with delta the gradient at the layer's output. The layer says how it is seen
this way through two methods (the protocol this module relies on; Linear and Conv2d have
them)::

    layer.kron_inputs()        a_hat (N, T, m)   T = 1 (Linear) or Ho Wo (Conv2d patches)
    layer.kron_output_grads()  dout  (N, T, F)   the share of the reduced loss's gradient

and the gradient as the matrix the factors act on is ``grad_matrix(layer)`` = [dW | db]
(F, m). In the row-major (C order) vec of W_hat the curvature block is approximated by

    block  ~  G kron A,   A = (1/N) sum_{n,t} a_hat a_hat^T  (m, m),   G  (F, F)

where the methods differ only in G (``output_factors``): K-FAC from the output gradients
of the labels (or of sampled labels), KFLR from the loss Hessian's square-root columns,
KFRA from a recursion. (Papers that vec column by column write A kron G; same matrix.)

Moving averages, every ``T1`` steps::

    A <- stat_decay A + (1 - stat_decay) A_batch,    the same for G

starting from ``factor_init``: ``"identity"`` (A = I, G = I, as KFAC-Pytorch does: the
first rank-deficient batch cannot make the inverse explode) or ``"batch"`` (the first
mini-batch's factors; Botev's KFLR/KFRA). Every ``T2`` steps the damped inverse is
prepared, by ``damping_mode``:

* ``"eigen"`` (KFAC-Pytorch): A = Q_A d_A Q_A^T, G = Q_G d_G Q_G^T, and the exact damped
  Kronecker solve V' = Q_G [(Q_G^T V Q_A) / (d_G d_A^T + lambda)] Q_A^T
  = (G kron A + lambda I)^{-1} vec V;
* ``"factored"`` (Martens & Grosse 2015 sec. 6.3, the pi rule; Botev's norm rule):
  V' = (G + sqrt(lambda)/pi I)^{-1} V (A + pi sqrt(lambda) I)^{-1},
  pi = sqrt((tr A / m) / (tr G / F)).

Step-size safeguards, all on the whole step d (every leaf's grads after preconditioning;
uncovered layers keep their gradient) and g (the raw gradient), with G the exact
Gauss-Newton matrix of the mini-batch (one R-operator pass, ``minidl.curvature``):

* ``rescale=True`` (Botev, Ritter & Barber 2017, seed 002): d <- alpha d with
  alpha = g^T d / (d^T G d + lambda d^T d), the minimiser of the damped quadratic model
  along -d; pair it with ``SGD(lr=1)`` as the paper does (lr scales alpha).
* ``adapt_damping=True`` (Levenberg-Marquardt, Martens & Grosse 2015 sec. 6.5): every
  ``adapt_every`` steps, with delta = -lr d the step the optimizer is about to take
  (momentum aside),

      rho = (h(theta + delta) - h(theta)) / M(delta),
      M(delta) = g^T delta + 1/2 delta^T (G + lambda I) delta,

  where h is the mini-batch loss (one extra forward pass); then lambda <- omega lambda if
  rho > 3/4, lambda <- lambda / omega if rho < 1/4, omega = (19/20)^adapt_every. It needs
  the learning rate (``lr=`` a number or the optimizer).

Memory per layer: m^2 + F^2. Cost: factors O(N T (m^2 + F^2)) every T1 steps, two
eigendecompositions (or inverses) O(m^3 + F^3) every T2 steps, the solve O(F m (F + m))
every step; each safeguard adds one R-operator forward pass when it runs (and LM one
ordinary forward pass).
"""
import math
import warnings

from .. import backend
from ..curvature.products import preserved_state
from .base import (Preconditioner, check_choice, check_lr, check_number, check_period,
                   current_lr)
from .linalg import (damped_inverse, damped_kron_solve, kron_solve_factored, pi_damping,
                     sym_eig)

__all__ = ["KroneckerFactored", "grad_matrix", "set_grad_matrix", "check_loss",
           "covariance", "ggn_quadratic", "loss_after_step", "lm_damping_update",
           "model_input"]


# -- a layer seen as a matrix product ----------------------------------------------------
def grad_matrix(layer):
    """[dW | db] of shape (F, m): the gradient as the matrix the Kronecker factors act on."""
    gW = layer.grads["W"]
    V = gW.reshape(gW.shape[0], -1)  # (F, m_in)
    if "b" in layer.params:
        xp = backend.array_module(V)
        V = xp.concatenate([V, layer.grads["b"][:, None]], axis=1)  # (F, m)
    return V


def set_grad_matrix(layer, V):
    """Write a direction V (F, m) back into ``layer.grads["W"]`` and ``layer.grads["b"]``."""
    xp = backend.array_module(V)
    W = layer.params["W"]
    m_in = W.size // W.shape[0]
    layer.grads["W"] = xp.ascontiguousarray(V[:, :m_in]).reshape(W.shape)  # W's shape
    if "b" in layer.params:
        layer.grads["b"] = xp.ascontiguousarray(V[:, m_in])  # (F,)


def covariance(a, scale):
    """scale * sum_{n,t} a_nt a_nt^T for a (N, T, D): shape (D, D)."""
    a2 = a.reshape(-1, a.shape[2])  # (N T, D)
    return a2.T @ a2 * scale  # (D, D)


def check_loss(method, loss):
    """Raise a clear error unless ``loss`` is a loss object that ran forward."""
    if loss is None or not hasattr(loss, "hessian_factor"):
        raise ValueError(f"{method} needs the loss object: {method}(model, loss=crit, ...) "
                         f"with crit a minidl.losses loss; got {loss!r}")


# -- the quadratic model of the mini-batch loss -------------------------------------------
def model_input(model):
    """The input x of the last forward pass, read from the first leaf's cache.

    A leading ``Flatten`` keeps only the shape; then x is the next leaf's input reshaped.
    """
    leaves = model.leaves()
    first = leaves[0].cache
    if "x" in first:
        return first["x"]
    if "shape" in first and len(leaves) > 1 and "x" in leaves[1].cache:
        return leaves[1].cache["x"].reshape(first["shape"])
    raise ValueError(f"cannot find the model's input in the cache of its first layer "
                     f"({type(leaves[0]).__name__}); run model.forward(x) first")


def _loss_target(loss):
    """The target of the loss's last forward, as ``loss.forward`` accepts it again."""
    c = loss.cache
    if "Y" in c:  # cross-entropy: the (N, K) target matrix (one-hot or soft)
        return c["Y"]
    if "y" in c:  # BCE with logits
        return c["y"]
    if "diff" in c:  # MSE: diff = prediction - target
        return c["logits"] - c["diff"]
    raise ValueError(f"{type(loss).__name__}: cannot recover the target of the last forward")


def ggn_quadratic(model, loss, directions):
    """d^T G d for the exact Gauss-Newton matrix G of the last mini-batch.

    One R-operator pass: Rz = J d (``model.jvp`` at the cached forward, parameter tangents
    ``directions`` = ``{id(leaf): {key: array}}``, missing ones zero), then
    d^T G d = Rz^T H_L Rz with H_L the loss Hessian (``loss.hvp``). The model and loss are
    left as they were.
    """
    x = model_input(model)
    xp = backend.array_module(x)
    with preserved_state(model, loss):
        for leaf in model.leaves():
            leaf.Rparams = dict(directions.get(id(leaf), {}))
        Rz = model.jvp(xp.zeros_like(x))  # (N, K): J d
        return float((Rz * loss.hvp(Rz)).sum())


def loss_after_step(model, loss, delta):
    """(h(theta), h(theta + delta)) on the last mini-batch, the model left as it was.

    ``delta`` = ``{id(leaf): {key: array}}``; one forward pass at the moved parameters
    (BatchNorm buffers and caches are restored afterwards).
    """
    x = model_input(model)
    target = _loss_target(loss)
    leaves = model.leaves()
    with preserved_state(model, loss):
        h_old = loss.forward(loss.logits(), target)
        saved = [dict(leaf.params) for leaf in leaves]
        try:
            for leaf in leaves:
                for key, step in delta.get(id(leaf), {}).items():
                    leaf.params[key] = leaf.params[key] + step  # a new array
            with warnings.catch_warnings():  # an overflowing trial step is a bad rho
                warnings.simplefilter("ignore", RuntimeWarning)
                h_new = loss.forward(model.forward(x), target)
        finally:
            for leaf, params in zip(leaves, saved):
                leaf.params.clear()
                leaf.params.update(params)  # the original array objects
    return h_old, h_new


def lm_damping_update(damping, rho, adapt_every):
    """Martens & Grosse's rule: omega = (19/20)^adapt_every; shrink above 3/4, grow below 1/4."""
    omega = (19.0 / 20.0) ** adapt_every
    if rho > 0.75:
        return damping * omega
    if rho < 0.25:
        return damping / omega
    return damping


# -- the base class -------------------------------------------------------------------------
class KroneckerFactored(Preconditioner):
    """Block ~ G kron A per layer: moving averages, damping, the solve, the safeguards.

    Subclasses write ``output_factors(step)``, returning the mini-batch G of every
    covered layer (called once per statistics update, so a method may run passes through
    the whole model there); A is the same for all of them.

    Args:
        model: the network.
        damping: lambda > 0.
        stat_decay: moving-average weight of the old factors, in [0, 1).
        damping_mode: ``"eigen"`` (exact damped Kronecker inverse) or ``"factored"``.
        factor_init: ``"identity"`` or ``"batch"`` (the first mini-batch's factors).
        rescale: scale the step by Botev's exact Gauss-Newton alpha.
        adapt_damping: Levenberg-Marquardt adaptation of lambda (needs ``lr``).
        adapt_every: the adaptation period (Martens & Grosse: 5).
        lr: the learning rate, a number or the optimizer (its current ``lr``).
        T1, T2, warn: as ``Preconditioner``.
    """

    def __init__(self, model, damping, stat_decay, damping_mode, T1, T2, warn,
                 factor_init="batch", rescale=False, adapt_damping=False, adapt_every=5,
                 lr=None):
        name = type(self).__name__
        self.damping = check_number(name, "damping (lambda)", damping, low=0.0, low_open=True)
        self.stat_decay = check_number(name, "stat_decay", stat_decay, 0.0, 1.0,
                                       high_open=True)
        self.damping_mode = check_choice(name, "damping_mode", damping_mode,
                                         ("eigen", "factored"))
        self.factor_init = check_choice(name, "factor_init", factor_init,
                                        ("identity", "batch"))
        self.rescale = bool(rescale)
        self.adapt_damping = bool(adapt_damping)
        self.adapt_every = check_period(name, "adapt_every", adapt_every)
        self.lr = check_lr(name, lr)
        if self.adapt_damping and lr is None:
            raise ValueError(f"{name}(adapt_damping=True) compares the loss after the step "
                             "-lr d with its quadratic model and needs the learning rate: "
                             "pass lr=optimizer (or a number)")
        if self.rescale or self.adapt_damping:
            check_loss(f"{name}(rescale=True or adapt_damping=True)",
                       getattr(self, "loss", None))
        super().__init__(model, T1=T1, T2=T2, warn=warn)
        if self.factor_init == "identity":
            for s, layer in zip(self.state, self.layers):
                W = layer.params["W"]
                xp = backend.array_module(W)
                m = W.size // W.shape[0] + ("b" in layer.params)
                s["A"] = xp.eye(m, dtype=W.dtype)  # (m, m)
                s["G"] = xp.eye(W.shape[0], dtype=W.dtype)  # (F, F)

    def applies_to(self, layer):
        return hasattr(layer, "kron_inputs") and hasattr(layer, "kron_output_grads")

    def covered_types(self):
        from ..layers.conv import Conv2d
        from ..layers.linear import Linear
        return [Linear, Conv2d]

    def output_factors(self, step):
        """The mini-batch G (F, F) of every covered layer, in order."""
        raise NotImplementedError

    # -- checkpoints: the adapted damping travels with the state ----------------------------
    def state_dict(self):
        out = super().state_dict()
        out["damping"] = backend.host().asarray(self.damping)
        return out

    def load_state_dict(self, state):
        state = dict(state)
        damping = state.pop("damping", None)
        super().load_state_dict(state)  # every check first
        if damping is not None:
            self.damping = float(damping)
        return self

    def hyperparameters(self):
        # not damping: it is state (adapted by adapt_damping), saved and restored above
        return dict(super().hyperparameters(), stat_decay=self.stat_decay,
                    damping_mode=self.damping_mode, factor_init=self.factor_init,
                    rescale=self.rescale, adapt_damping=self.adapt_damping,
                    adapt_every=self.adapt_every)

    # -- the hooks ----------------------------------------------------------------------
    def prepare(self, update_stats, update_inverse):
        step = super().prepare(update_stats, update_inverse)
        step["G"] = self.output_factors(step) if update_stats else None
        step["vg"] = 0.0  # sum over covered layers of <V', V>
        return step

    @staticmethod
    def input_factor(layer):
        """A = (1/N) sum_{n,t} a_hat a_hat^T, shape (m, m)."""
        a = layer.kron_inputs()  # (N, T, m)
        return covariance(a, 1.0 / a.shape[0])  # (m, m)

    def update_curvature(self, i, layer, step=None):
        s = self.state[i]
        new = {"A": self.input_factor(layer), "G": step["G"][i]}
        for key, value in new.items():
            if key in s:
                s[key] = self.stat_decay * s[key] + (1 - self.stat_decay) * value
            else:  # factor_init="batch": the first mini-batch's factors
                s[key] = value

    def update_inverse(self, i, layer, step=None):
        s = self.state[i]
        if self.damping_mode == "eigen":
            s["dA"], s["QA"] = sym_eig(s["A"])  # (m,), (m, m)
            s["dG"], s["QG"] = sym_eig(s["G"])  # (F,), (F, F)
        else:
            gamma_A, gamma_G = pi_damping(s["A"], s["G"], self.damping)
            s["A_inv"] = damped_inverse(s["A"], gamma_A)  # (m, m)
            s["G_inv"] = damped_inverse(s["G"], gamma_G)  # (F, F)

    def damped_block(self, i):
        """The damped Kronecker factors (G_d, A_d) whose product the solve inverts.

        For ``"factored"``: (G + gamma_G I, A + gamma_A I), so the direction is
        (G_d kron A_d)^{-1} vec V. For ``"eigen"``: (G, A), and the direction is
        (G kron A + damping I)^{-1} vec V. Used by tests and for inspection.
        """
        s = self.state[i]
        if self.damping_mode == "eigen":
            return s["G"], s["A"]
        xp = backend.array_module(s["A"])
        gamma_A, gamma_G = pi_damping(s["A"], s["G"], self.damping)
        return (s["G"] + gamma_G * xp.eye(s["G"].shape[0], dtype=s["G"].dtype),
                s["A"] + gamma_A * xp.eye(s["A"].shape[0], dtype=s["A"].dtype))

    def solve(self, i, V):
        """The damped inverse block applied to V (F, m); returns (F, m)."""
        s = self.state[i]
        if self.damping_mode == "eigen":
            return damped_kron_solve(V, s["dG"], s["QG"], s["dA"], s["QA"], self.damping)
        return kron_solve_factored(V, s["G_inv"], s["A_inv"])

    def precondition(self, i, layer, step=None):
        V = grad_matrix(layer)  # (F, m)
        V_new = self.solve(i, V)  # (F, m)
        if step is not None:
            step["vg"] += float((V_new * V).sum())
        set_grad_matrix(layer, V_new)

    def finish(self, step):
        """The global safeguards: ``scale_step`` (KL clipping in K-FAC), then Botev's
        rescaling and the Levenberg-Marquardt damping update when switched on."""
        nu = self.scale_step(step)
        if not (self.rescale or (self.adapt_damping and self.t % self.adapt_every == 0)):
            return
        # g^T d over the whole step: covered layers <V', V> (times the clip factor nu),
        # uncovered layers keep d = g
        covered = {id(layer) for layer in self.layers}
        gd = nu * step["vg"]
        for leaf in self.model.leaves():
            if leaf.params and id(leaf) not in covered:
                gd += sum(float((g * g).sum()) for g in leaf.grads.values())
        direction = {id(leaf): dict(leaf.grads) for leaf in self.model.leaves() if leaf.params}
        dd = sum(float((d * d).sum()) for parts in direction.values() for d in parts.values())
        dGd = ggn_quadratic(self.model, self.loss, direction)
        if self.rescale:
            alpha = gd / (dGd + self.damping * dd) if dGd + self.damping * dd > 0 else 1.0
            self.scale_all(alpha)
            gd, dGd, dd = alpha * gd, alpha ** 2 * dGd, alpha ** 2 * dd
        if self.adapt_damping and self.t % self.adapt_every == 0:
            lr = float(current_lr(self.lr))
            delta = {key: {k: -lr * leaf_d for k, leaf_d in parts.items()}
                     for key, parts in ((id(leaf), leaf.grads) for leaf in self.model.leaves()
                                        if leaf.params)}
            h_old, h_new = loss_after_step(self.model, self.loss, delta)
            model_change = -lr * gd + 0.5 * lr ** 2 * (dGd + self.damping * dd)
            rho = (h_new - h_old) / model_change if model_change < 0 else -math.inf
            if not math.isfinite(h_new):
                rho = -math.inf
            self.damping = lm_damping_update(self.damping, rho, self.adapt_every)

    def scale_step(self, step):
        """Rescale the covered layers' directions before the other safeguards; returns
        the factor used (1 here; K-FAC's KL clipping overrides it)."""
        return 1.0

    def scale_all(self, factor):
        """Multiply every leaf's grads (the whole step) by ``factor``."""
        for leaf in self.model.leaves():
            for key in leaf.params:
                if key in leaf.grads:
                    leaf.grads[key] = leaf.grads[key] * factor
