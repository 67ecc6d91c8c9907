"""MBF: the Mini-Block Fisher preconditioner (Bahamou, Goldfarb, Ren; AISTATS 2023).

MBF approximates each layer's block of the empirical Fisher F = E[g g^T] by a block
diagonal of many *small* blocks, keeps a moving average of them and inverts them all at
once with one batched call.

Mini-blocks (g is the mini-batch gradient, the mean over the batch as the loss gives it)::

    Linear  W (n, m), b (n,):  one block per output neuron o over theta_o = [W[o, :], b[o]],
                               F_o is (m+1) x (m+1): the bias sits inside the block.
    Conv2d  W (F, C, k, k):    one block per (output o, input channel c) over vec(W[o, c]),
                               F_oc is k^2 x k^2;  the bias b (F,) gets 1 x 1 blocks v_o.

Algorithm 2 of the paper, as this file runs it (lambda damping, beta decay, mu momentum)::

    every T1 steps:  F_blk <- beta F_blk + (1 - beta) g_blk g_blk^T          (rank one)
                     v_o   <- beta v_o   + (1 - beta) g_o^2                  (conv bias)
    every T2 steps:  P_blk <- (F_blk + lambda I)^{-1}       (ONE batched inverse per layer)
    every step:      m <- mu m + g            (only when momentum=mu > 0; the paper's mu=0.9)
                     d_blk <- P_blk m_blk ;   d_o = m_o / (v_o + lambda)  (conv bias)
                     layer.grads <- d         (then the optimizer steps: theta <- theta - lr d)

Spatial averaging (large dense layers): one shared matrix for all n output neurons of the
layer, the *mean* of their blocks,
``Fbar <- beta Fbar + (1 - beta) (1/n) Ghat^T Ghat`` with ``Ghat = [G_W | G_b]`` (n, m+1),
and ``d_o = (Fbar + lambda I)^{-1} m_o`` for every o. A layer is averaged when
``spatial_average=True``, or when ``spatial_threshold`` is set and the per-neuron blocks
would hold more than that many numbers (n (m+1)^2 > spatial_threshold).

Warm start (the paper: one pass over the data before training, from the TNT code):
``F_blk <- (j-1)/j F_blk + (1/j) g_blk g_blk^T`` for batches j = 1..J, i.e. the plain
average over the epoch; see ``warm_start`` and ``warm_start_step``. Without it the first
steps are about ``lr * g / lambda`` long, because F starts at zero.

Normalisation layers (BatchNorm1d/2d, LayerNorm, GroupNorm, with parameters ``gamma``,
``beta``) get Adam's direction, as in the paper: size-1 blocks, divided by
their square root, ``d = m / (sqrt(v) + norm_eps)`` with v the same moving average of g^2.
``norm_params="skip"`` leaves them to the optimizer instead.

MBF-True (Algorithm 4, ``fisher="true"``): identical, except that the g g^T of the
statistics comes from labels sampled from the model, y ~ p(y | x), through one extra
backward pass (the loss and an explicit ``rng`` are needed). The direction still
preconditions the true-label gradient; grads and caches are restored after the extra pass.

How Algorithm 2 maps onto ``precond.step(); opt.step()``:

* The paper preconditions the momentum, d = P m with m = mu m + g. MBF does exactly that
  when built with ``momentum=0.9`` and paired with momentum-free SGD. The default
  ``momentum=0`` hands d = P g to the optimizer, and ``SGD(momentum=0.9)`` then forms
  sum_k mu^k P_k g_k. The two are equal while P stays fixed (between inverse updates,
  every T2 steps) and differ only slightly when P changes.
* The weight decay is decoupled (SGDW): theta <- (1 - lr gamma) theta - lr d. Momentum-free
  ``SGD(weight_decay=gamma)`` after MBF gives exactly that, because SGD adds gamma theta
  to the direction d *after* preconditioning. So Algorithm 2 is exactly
  ``MBF(momentum=0.9)`` followed by ``SGD(lr, momentum=0, weight_decay=gamma)``.

The learning rates are small (1e-5 ... 1e-3): there is no square root, so the step scales
like g / (g^2 + lambda); where the gradient is small (g^2 << lambda, typical for a mean
loss) d ~ g / lambda, so MBF moves like SGD with learning rate lr / lambda (lr = 3e-4 with
lambda = 3e-3 is SGD at 0.1 there). Defaults: lambda = 3e-3 (the paper's CNN value), beta = 0.9,
T1 = 1, T2 = 20 (the paper's autoencoders; its CNNs used T1 = 10, T2 = 100).

Cost per dense layer: memory n (m+1)^2, inversion O(n (m+1)^3) every T2 steps; per conv
layer: memory F C k^4, inversion O(F C k^6).
"""
from .. import backend
from ..layers.batchnorm import Normalization
from ..layers.conv import Conv2d
from ..layers.linear import Linear
from .base import Preconditioner

__all__ = ["MBF"]


class MBF(Preconditioner):
    """Mini-Block Fisher preconditioner for Linear and Conv2d layers.

    Args:
        model: the network; its Linear and Conv2d layers (and normalisation layers, see
            ``norm_params``) are preconditioned.
        damping: lambda, added to every mini-block before inversion.
        beta: decay of the moving average of the blocks (0 keeps only the last batch).
        T1: update the blocks every ``T1`` steps.
        T2: recompute the inverses every ``T2`` steps.
        momentum: mu of the paper's m <- mu m + g, preconditioned as d = P m. Leave it 0
            when the optimizer has momentum (see the module docstring).
        spatial_average: share one (mean) block between all neurons of every dense layer.
        spatial_threshold: when set, also average the dense layers whose per-neuron
            blocks would hold more than this many numbers, n (m+1)^2.
        norm_params: ``"adam"`` (the paper: d = m / (sqrt(v) + norm_eps)) or ``"skip"``
            (leave gamma/beta to the optimizer).
        norm_eps: Adam's epsilon for the normalisation parameters.
        fisher: ``"empirical"`` (MBF, true labels) or ``"true"`` (MBF-True, sampled labels).
        loss: the loss object; needed for ``fisher="true"`` and ``warm_start``.
        rng: generator for the sampled labels of MBF-True (``minidl.default_rng(seed)``);
            a fresh unseeded one when None. Its state is not part of ``state_dict``.
        warn: warn about parameterised layers left to the optimizer.
    """

    name = "mbf"

    def __init__(self, model, damping=3e-3, beta=0.9, T1=1, T2=20, momentum=0.0,
                 spatial_average=False, spatial_threshold=None, norm_params="adam",
                 norm_eps=1e-8, fisher="empirical", loss=None, rng=None, warn=True):
        if damping <= 0:
            raise ValueError(f"MBF: damping (lambda) must be > 0 because the rank-one "
                             f"blocks are singular, got {damping!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"MBF: beta must lie in [0, 1), got {beta!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"MBF: momentum must lie in [0, 1), got {momentum!r}")
        if norm_params not in ("adam", "skip"):
            raise ValueError(f"MBF: norm_params must be 'adam' or 'skip', got {norm_params!r}")
        if fisher not in ("empirical", "true"):
            raise ValueError(f"MBF: fisher must be 'empirical' or 'true', got {fisher!r}")
        if fisher == "true" and loss is None:
            raise ValueError("MBF(fisher='true') samples labels from the model and needs the "
                             "loss object: pass loss=crit")
        self.damping, self.beta, self.momentum = float(damping), float(beta), float(momentum)
        self.spatial_average, self.spatial_threshold = bool(spatial_average), spatial_threshold
        self.norm_params, self.norm_eps = norm_params, float(norm_eps)
        self.fisher, self.loss = fisher, loss
        self.rng = rng if rng is not None else backend.default_rng()
        self._sampled = None  # MBF-True: the sampled-label grads of the current step
        super().__init__(model, T1=T1, T2=T2, warn=warn)
        self.kinds = [self._kind(layer) for layer in self.layers]
        for i, layer in enumerate(self.layers):
            self._init_state(i, layer)

    # -- which layers, which blocks --------------------------------------------------------
    def covered_types(self):
        return [Linear, Conv2d] + ([Normalization] if self.norm_params == "adam" else [])

    def _kind(self, layer):
        """``"dense"``, ``"dense_avg"`` (spatial averaging), ``"conv"`` or ``"norm"``."""
        if isinstance(layer, Linear):
            n, m = layer.params["W"].shape
            d = m + ("b" in layer.params)
            big = self.spatial_threshold is not None and n * d * d > self.spatial_threshold
            return "dense_avg" if self.spatial_average or big else "dense"
        if isinstance(layer, Conv2d):
            return "conv"
        return "norm"

    def _init_state(self, i, layer):
        """Zero statistics and inverses from the start, so ``state_dict`` has every key."""
        s, kind = self.state[i], self.kinds[i]
        W = layer.params.get("W")
        if kind in ("dense", "dense_avg"):
            xp = backend.array_module(W)
            n, m = W.shape
            d = m + ("b" in layer.params)  # block size, bias inside
            shape = (n, d, d) if kind == "dense" else (d, d)
            s["F"] = xp.zeros(shape, dtype=W.dtype)  # (n, d, d) or (d, d)
            s["P"] = xp.zeros(shape, dtype=W.dtype)
        elif kind == "conv":
            xp = backend.array_module(W)
            F, C, kh, kw = W.shape
            s["F"] = xp.zeros((F * C, kh * kw, kh * kw), dtype=W.dtype)  # (F C, k^2, k^2)
            s["P"] = xp.zeros((F * C, kh * kw, kh * kw), dtype=W.dtype)
            if "b" in layer.params:
                s["v_b"] = xp.zeros(layer.params["b"].shape, dtype=W.dtype)  # (F,)
                s["p_b"] = xp.zeros(layer.params["b"].shape, dtype=W.dtype)  # (F,)
        else:  # norm: size-1 blocks for every parameter
            for key, p in layer.params.items():
                xp = backend.array_module(p)
                s["v_" + key] = xp.zeros(p.shape, dtype=p.dtype)  # like p
                s["p_" + key] = xp.zeros(p.shape, dtype=p.dtype)
        if self.momentum > 0:
            for key, p in layer.params.items():
                s["m_" + key] = backend.array_module(p).zeros(p.shape, dtype=p.dtype)
        s["n_warm"] = backend.array_module(*layer.params.values()).zeros((), dtype="int64")

    @staticmethod
    def _dense_rows(layer, grads):
        """``Ghat = [G_W | G_b]``: row o is neuron o's block vector, shape (n, m+1)."""
        G = grads["W"]  # (n, m)
        if "b" not in layer.params:
            return G
        xp = backend.array_module(G)
        return xp.concatenate([G, grads["b"][:, None]], axis=1)  # (n, m+1)

    # -- statistics --------------------------------------------------------------------
    def _accumulate(self, i, layer, grads, keep, new):
        """F_blk <- keep F_blk + new g_blk g_blk^T for every block of layer i."""
        s, kind = self.state[i], self.kinds[i]
        if kind == "dense":
            G = self._dense_rows(layer, grads)  # (n, d)
            s["F"] = keep * s["F"] + new * (G[:, :, None] * G[:, None, :])  # (n, d, d)
        elif kind == "dense_avg":
            G = self._dense_rows(layer, grads)  # (n, d)
            s["F"] = keep * s["F"] + new * (G.T @ G) / G.shape[0]  # (d, d), mean of blocks
        elif kind == "conv":
            F, C, kh, kw = grads["W"].shape
            G = grads["W"].reshape(F * C, kh * kw)  # (F C, k^2), one row per (o, c)
            s["F"] = keep * s["F"] + new * (G[:, :, None] * G[:, None, :])  # (F C, k^2, k^2)
            if "b" in layer.params:
                s["v_b"] = keep * s["v_b"] + new * grads["b"] ** 2  # (F,)
        else:
            for key in layer.params:
                s["v_" + key] = keep * s["v_" + key] + new * grads[key] ** 2  # like p

    def update_curvature(self, i, layer):
        """Moving average of the mini-block outer products (every T1 steps)."""
        grads = layer.grads if self._sampled is None else self._sampled[i]
        self._accumulate(i, layer, grads, self.beta, 1.0 - self.beta)

    def update_inverse(self, i, layer):
        """P_blk = (F_blk + lambda I)^{-1}: one batched inverse over the stacked blocks."""
        s, kind = self.state[i], self.kinds[i]
        if kind == "norm":
            for key in layer.params:
                xp = backend.array_module(s["v_" + key])
                s["p_" + key] = 1.0 / (xp.sqrt(s["v_" + key]) + self.norm_eps)  # like p
            return
        xp = backend.array_module(s["F"])
        eye = xp.eye(s["F"].shape[-1], dtype=s["F"].dtype)  # (d, d), broadcast over blocks
        s["P"] = xp.linalg.inv(s["F"] + self.damping * eye)  # (n_blocks, d, d) or (d, d)
        if kind == "conv" and "b" in layer.params:
            s["p_b"] = 1.0 / (s["v_b"] + self.damping)  # (F,), the 1 x 1 bias blocks

    # -- the direction -----------------------------------------------------------------
    def precondition(self, i, layer):
        """d_blk = P_blk m_blk, written into ``layer.grads``."""
        s, kind = self.state[i], self.kinds[i]
        m = dict(layer.grads)
        if self.momentum > 0:
            for key in layer.params:
                s["m_" + key] = self.momentum * s["m_" + key] + layer.grads[key]
                m[key] = s["m_" + key]
        if kind == "dense":
            M = self._dense_rows(layer, m)  # (n, d)
            D = (s["P"] @ M[:, :, None])[:, :, 0]  # (n, d, d) @ (n, d, 1) -> (n, d)
        elif kind == "dense_avg":
            D = self._dense_rows(layer, m) @ s["P"].T  # (n, d) @ (d, d): d_o = P m_o
        elif kind == "conv":
            F, C, kh, kw = m["W"].shape
            M = m["W"].reshape(F * C, kh * kw, 1)  # (F C, k^2, 1)
            layer.grads["W"] = (s["P"] @ M).reshape(F, C, kh, kw)  # (F, C, kh, kw)
            if "b" in layer.params:
                layer.grads["b"] = m["b"] * s["p_b"]  # (F,)
            return
        else:
            for key in layer.params:
                layer.grads[key] = m[key] * s["p_" + key]  # Adam's direction, like p
            return
        n_in = layer.params["W"].shape[1]
        layer.grads["W"] = D[:, :n_in]  # (n, m)
        if "b" in layer.params:
            layer.grads["b"] = D[:, n_in]  # (n,)

    # -- MBF-True: the statistics from sampled labels ----------------------------------
    def step(self):
        """As ``Preconditioner.step``; MBF-True first runs its extra backward pass."""
        if self.fisher == "true" and self.t % self.T1 == 0:
            self._sampled = self._sampled_grads()
        try:
            super().step()
        finally:
            self._sampled = None

    def _sampled_grads(self):
        """Grads of the loss at labels y ~ p(y | x), leaving the model as it was.

        Saves every leaf's grads and cache and the loss's cache, runs
        ``model.backward(dL(logits, y_sampled)/dlogits)``, keeps the covered layers' grads
        and restores everything else.
        """
        for layer, lname in zip(self.layers, self.names):
            if "dout" not in layer.cache or not layer.grads:
                raise RuntimeError(f"MBF.step(): layer {lname} has no gradient yet; call "
                                   "model.backward(...) first")
        leaves = self.model.leaves()
        saved = [({k: v.copy() for k, v in leaf.grads.items()}, dict(leaf.cache))
                 for leaf in leaves]
        saved_loss = dict(self.loss.cache)
        try:
            logits = self.loss.logits()  # (N, K)
            y_sampled = self.loss.sample_target(self.rng)
            self.loss.forward(logits, y_sampled)
            self.model.backward(self.loss.backward())
            sampled = [dict(layer.grads) for layer in self.layers]
        finally:
            for leaf, (grads, cache) in zip(leaves, saved):
                leaf.grads, leaf.cache = grads, cache
            self.loss.cache = saved_loss
        return sampled

    # -- warm start ----------------------------------------------------------------------
    def warm_start_step(self):
        """Add the current gradients to the epoch average: F <- (j-1)/j F + (1/j) g g^T.

        Call it after each ``model.backward`` of the warm-start pass (no optimizer step);
        ``warm_start`` does the whole pass for you.
        """
        if self.fisher == "true":
            self._sampled = self._sampled_grads()
        try:
            for i, layer in enumerate(self.layers):
                s = self.state[i]
                j = int(s["n_warm"]) + 1
                grads = layer.grads if self._sampled is None else self._sampled[i]
                self._accumulate(i, layer, grads, (j - 1) / j, 1.0 / j)
                s["n_warm"] = s["n_warm"] + 1
        finally:
            self._sampled = None

    def warm_start(self, batches, loss=None):
        """Average the blocks over ``batches`` (e.g. one epoch) and invert them.

        Args:
            batches: iterable of ``(x, y)`` mini-batches; the parameters do not change.
            loss: the loss object (default: the ``loss=`` given to the constructor).

        Returns:
            self, so that ``MBF(model, loss=crit).warm_start(loader)`` reads naturally.
        """
        loss = loss if loss is not None else self.loss
        if loss is None:
            raise ValueError("MBF.warm_start needs the loss: pass loss=crit here or to MBF")
        previous, self.loss = self.loss, loss
        try:
            for x, y in batches:
                loss.forward(self.model.forward(x), y)
                self.model.backward(loss.backward())
                self.warm_start_step()
        finally:
            self.loss = previous
        for i, layer in enumerate(self.layers):
            self.update_inverse(i, layer)
        return self
