"""MBF: the Mini-Block Fisher preconditioner (Bahamou, Goldfarb, Ren; AISTATS 2023).

MBF approximates each layer's block of the empirical Fisher F = E[g g^T] by a block
diagonal of many *small* blocks, keeps a moving average of them and inverts them all at
once with one batched call.

Mini-blocks (g is the mini-batch gradient, the mean over the batch as the loss gives it)::

    Linear  W (n, m), b (n,):  one block per output neuron o over theta_o = [W[o, :], b[o]],
                               F_o is (m+1) x (m+1): the bias sits inside the block.
    Conv2d  W (F, C, k, k):    one block per (output o, input channel c) over vec(W[o, c]),
                               F_oc is k^2 x k^2;  the bias b (F,) gets 1 x 1 blocks v_o.

Algorithm 2 of the paper, as this file runs it (lambda = ``damping``, beta = ``stat_decay``,
mu = ``momentum``)::

    every T1 steps:  F_blk <- beta F_blk + (1 - beta) g_blk g_blk^T          (rank one)
                     v_o   <- beta v_o   + (1 - beta) g_o^2                  (conv bias)
    every T2 steps:  P_blk <- (F_blk + lambda I)^{-1}       (ONE batched inverse per layer)
    every step:      m <- mu m + g            (only when momentum=mu > 0; the paper's mu=0.9)
                     d_blk <- P_blk m_blk ;   d_o = m_o / (v_o + lambda)  (conv bias)
                     layer.grads <- d         (then the optimizer steps: theta <- theta - lr d)

Spatial averaging (large dense layers, the paper's section 5): one shared matrix for all n
output neurons of the layer, the *mean* of their blocks,
``Fbar <- beta Fbar + (1 - beta) (1/n) Ghat^T Ghat`` with ``Ghat = [G_W | G_b]`` (n, m+1),
and ``d_o = (Fbar + lambda I)^{-1} m_o`` for every o. The per-neuron blocks of a dense
layer hold n (m+1)^2 numbers, m+1 times the layer's weights, and cost O(n (m+1)^3) to
invert; a layer is averaged when ``spatial_average=True`` or when those blocks would hold
more than ``spatial_threshold`` numbers (default 2^20, 8 MiB in float64: the CLI's
784-100-100-10 MLP averages its first layer only, the MNIST autoencoder all layers but
the 30 -> 250 one). Then the layer costs one (m+1)^2 matrix, one inverse of it and two
(n, m+1) x (m+1, m+1) products per step, about what Adam's elementwise work costs at a
batch of a few hundred. ``spatial_threshold=None`` never averages by size.

Warm start (the paper, App. 11.1.5: the blocks are estimated over a pass through the data
before training and the moving average takes over afterwards):
``F_blk <- (j-1)/j F_blk + (1/j) g_blk g_blk^T`` for batches j = 1..J, the plain average.
``warm_start(batches)`` does that pass explicitly (the parameters do not move). Since a
training loop calls only ``step()``, MBF also does it inside its first ``warm_start``
statistics updates (default 10 = 1/(1 - beta)): they average with weight 1/j instead of
1 - beta, and the inverses are recomputed after updates j = 1, 2, 4, 8, ... and the last,
so no block starts from zero and no inverse of a one-batch estimate is kept for T2 steps
(each inverse in use has seen at least half of the batches averaged so far). (Unlike the
paper's pass, the parameters move during these steps.) An explicit pass counts towards
the same number. Without any warm start the first steps are about ``lr * g / lambda``
long, because F starts at zero.

Step bound (KL clipping, as K-FAC; Ba, Grosse & Martens 2017): after all layers are
preconditioned, every direction is scaled by nu = min(1, sqrt(kl_clip / (lr^2 sum <d, m>))),
which bounds lr^2 d^T (F + lambda I) d, the predicted change of the outputs under MBF's
own curvature. At the paper's learning rates (1e-5 ... 1e-3) it rarely acts; it keeps a
learning rate meant for SGD (0.01 - 0.05) from multiplying the directions outside the
statistics' span by 1/lambda. With ``lr`` (a number or the optimizer;
``minidl.methods.build`` passes it) the bound is exact; without it (MBF built by hand and
paired with any optimizer) it is taken as if lr were 1::

    nu = min(1, sqrt(kl_clip / sum <d, m>)),   so   d^T (F + lambda I) d <= kl_clip

and the step lr d changes the outputs by at most lr^2 kl_clip <= kl_clip for every
lr <= 1 (``base.kl_clip_factor``). That keeps SGD's learning rates safe (where d ~ m /
lambda, ||d|| <= sqrt(kl_clip / lambda) ~ 0.6 at the defaults) at the price of shorter
steps than the paper's at its small rates; MBF warns and asks for ``lr=``.

Normalisation layers (BatchNorm1d/2d, LayerNorm, GroupNorm, with parameters ``gamma``,
``beta``) get Adam's direction, as in the paper: size-1 blocks, divided by their square
root, ``d = m / (sqrt(v_hat) + norm_eps)`` with v the moving average of g^2 updated at
every step and v_hat = v / (1 - beta^k) its bias correction (Kingma & Ba;
``bias_correction=False`` drops it). ``norm_params="skip"`` leaves them to the optimizer.

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
lambda = 3e-3 is SGD at 0.1 there). Defaults: lambda = 3e-3 (the paper's CNN value),
beta = 0.9, T1 = 1, T2 = 20 (the paper's autoencoders; its CNNs used T1 = 10, T2 = 100),
kl_clip = 1e-3 (KFAC-Pytorch's), warm start over 10 updates.

Cost per dense layer: memory n (m+1)^2, inversion O(n (m+1)^3) every T2 steps; per conv
layer: memory F C k^4, inversion O(F C k^6).
"""
from .. import backend
from ..layers.batchnorm import Normalization
from .base import (Preconditioner, check_choice, check_lr, check_number, current_lr,
                   kl_clip_factor, sampled_backward, warn_if_kl_clip_has_no_lr)

__all__ = ["MBF"]


class MBF(Preconditioner):
    """Mini-Block Fisher preconditioner for Linear and Conv2d layers.

    Args:
        model: the network; its Linear and Conv2d layers (and normalisation layers, see
            ``norm_params``) are preconditioned.
        damping: lambda, added to every mini-block before inversion (default 3e-3).
        stat_decay: beta, the weight of the old blocks in the moving average (0.9).
        T1: update the blocks every ``T1`` steps (default 1).
        T2: recompute the inverses every ``T2`` steps (default 20).
        momentum: mu of the paper's m <- mu m + g, preconditioned as d = P m. Leave it 0
            when the optimizer has momentum (see the module docstring).
        lr: the learning rate for the step bound: a number, or the optimizer (its
            current ``lr`` is read at every step); None bounds as if lr were 1.
        kl_clip: the bound on lr^2 sum <d, m> (default 1e-3); None disables it.
        warm_start: statistics updates averaged with weight 1/j (default 10).
        spatial_average: share one (mean) block between all neurons of every dense layer.
        spatial_threshold: average the dense layers whose per-neuron blocks would hold
            more than this many numbers, n (m+1)^2 (default 2^20; None: never by size).
        norm_params: ``"adam"`` (the paper: d = m / (sqrt(v_hat) + norm_eps)) or ``"skip"``
            (leave gamma/beta to the optimizer).
        norm_eps: Adam's epsilon for the normalisation parameters.
        bias_correction: divide the normalisation layers' v by 1 - beta^k (default True).
        fisher: ``"empirical"`` (MBF, true labels) or ``"true"`` (MBF-True, sampled labels).
        loss: the loss object; needed for ``fisher="true"`` and ``warm_start(batches)``.
        rng: generator for the sampled labels of MBF-True (``minidl.default_rng(seed)``);
            a fresh unseeded one when None. Its state is not part of ``state_dict``.
        warn: warn about parameterised layers left to the optimizer.
    """

    name = "mbf"
    reads_cache = ()  # the statistics are built from the gradients alone

    def __init__(self, model, damping=3e-3, stat_decay=0.9, T1=1, T2=20, momentum=0.0,
                 lr=None, kl_clip=1e-3, warm_start=10, spatial_average=False,
                 spatial_threshold=2 ** 20, norm_params="adam", norm_eps=1e-8,
                 bias_correction=True, fisher="empirical", loss=None, rng=None, warn=True):
        self.damping = check_number(
            "MBF", "damping (lambda)", damping, low=0.0, low_open=True,
            allowed="(0, inf) (the rank-one blocks are singular without it)")
        self.beta = check_number("MBF", "stat_decay (beta)", stat_decay, 0.0, 1.0, high_open=True)
        self.momentum = check_number("MBF", "momentum", momentum, 0.0, 1.0, high_open=True)
        self.kl_clip = (check_number("MBF", "kl_clip", kl_clip, low=0.0) or None
                        if kl_clip is not None else None)
        if isinstance(warm_start, bool) or int(warm_start) != warm_start or warm_start < 0:
            raise ValueError(f"MBF: warm_start must be an integer >= 0, got {warm_start!r}")
        self.warm_steps = int(warm_start)
        if spatial_threshold is not None:
            check_number("MBF", "spatial_threshold", spatial_threshold, low=0.0)
        self.spatial_average, self.spatial_threshold = bool(spatial_average), spatial_threshold
        self.norm_params = check_choice("MBF", "norm_params", norm_params, ("adam", "skip"))
        self.norm_eps = check_number("MBF", "norm_eps", norm_eps, low=0.0)
        self.bias_correction = bool(bias_correction)
        self.fisher = check_choice("MBF", "fisher", fisher, ("empirical", "true"))
        if fisher == "true" and loss is None:
            raise ValueError("MBF(fisher='true') samples labels from the model and needs the "
                             "loss object: pass loss=crit")
        self.loss, self.lr = loss, check_lr("MBF", lr)
        self.rng = rng if rng is not None else backend.default_rng()
        super().__init__(model, T1=T1, T2=T2, warn=warn)
        warn_if_kl_clip_has_no_lr("MBF", self.kl_clip, lr)
        self.kinds = [self._kind(layer) for layer in self.layers]
        for i, layer in enumerate(self.layers):
            self._init_state(i, layer)

    def hyperparameters(self):
        return dict(super().hyperparameters(), damping=self.damping, stat_decay=self.beta,
                    momentum=self.momentum, kl_clip=self.kl_clip, warm_start=self.warm_steps,
                    spatial_average=self.spatial_average,
                    spatial_threshold=self.spatial_threshold, norm_params=self.norm_params,
                    norm_eps=self.norm_eps, bias_correction=self.bias_correction,
                    fisher=self.fisher)

    # -- which layers, which blocks --------------------------------------------------------
    def covered_types(self):
        from ..layers.conv import Conv2d
        from ..layers.linear import Linear
        return [Linear, Conv2d] + ([Normalization] if self.norm_params == "adam" else [])

    def applies_to(self, layer):
        """Layers seen as a matrix product (``kron_inputs``), and normalisation layers."""
        if hasattr(layer, "kron_inputs") and layer.params.get("W") is not None:
            return layer.params["W"].ndim in (2, 4)
        return self.norm_params == "adam" and isinstance(layer, Normalization)

    def _kind(self, layer):
        """``"dense"``, ``"dense_avg"`` (spatial averaging), ``"conv"`` or ``"norm"``."""
        W = layer.params.get("W")
        if W is not None and W.ndim == 2:
            n, m = W.shape
            d = m + ("b" in layer.params)
            big = self.spatial_threshold is not None and n * d * d > self.spatial_threshold
            return "dense_avg" if self.spatial_average or big else "dense"
        if W is not None and W.ndim == 4:
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
                s["v_" + key] = backend.array_module(p).zeros(p.shape, dtype=p.dtype)  # like p
            # the moving average of the constant 1: 1 - beta^k, Adam's bias correction
            s["bc"] = backend.array_module(*layer.params.values()).zeros((), dtype="float64")
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

    # -- the schedule: the in-step warm start recomputes the inverses ----------------------
    def _warm_inverse_due(self):
        """True when this statistics update is warm-start update j = 1, 2, 4, 8, ... or the
        last one (j = warm_start): each inverse then sees at least half of the batches
        averaged so far, at a few inverses instead of one per update."""
        for s, kind in zip(self.state, self.kinds):
            if kind != "norm":
                j = int(s["n_warm"]) + 1
                return j <= self.warm_steps and (j & (j - 1) == 0 or j == self.warm_steps)
        return False

    def schedule(self):
        update_stats, update_inverse = super().schedule()
        return update_stats, update_inverse or (update_stats and self._warm_inverse_due())

    def prepare(self, update_stats, update_inverse):
        step = super().prepare(update_stats, update_inverse)
        step["vg"] = 0.0  # sum over layers of <d, m>, for the step bound
        step["sampled"] = None
        if update_stats and self.fisher == "true":  # MBF-True: one extra backward pass
            step["sampled"] = sampled_backward(self.model, self.loss, self.layers, self.rng,
                                               lambda layer: dict(layer.grads))[0]
        return step

    # -- statistics --------------------------------------------------------------------
    def _accumulate(self, i, layer, grads, keep, new):
        """F_blk <- keep F_blk + new g_blk g_blk^T for every block of layer i (not norm)."""
        s, kind = self.state[i], self.kinds[i]
        if kind == "dense":
            G = self._dense_rows(layer, grads)  # (n, d)
            s["F"] *= keep
            s["F"] += new * (G[:, :, None] * G[:, None, :])  # (n, d, d)
        elif kind == "dense_avg":
            G = self._dense_rows(layer, grads)  # (n, d)
            s["F"] = keep * s["F"] + (new / G.shape[0]) * (G.T @ G)  # (d, d), mean of blocks
        elif kind == "conv":
            F, C, kh, kw = grads["W"].shape
            G = grads["W"].reshape(F * C, kh * kw)  # (F C, k^2), one row per (o, c)
            s["F"] *= keep
            s["F"] += new * (G[:, :, None] * G[:, None, :])  # (F C, k^2, k^2)
            if "b" in layer.params:
                s["v_b"] = keep * s["v_b"] + new * grads["b"] ** 2  # (F,)

    def _accumulate_norm(self, i, layer, grads, keep, new):
        """v <- keep v + new g^2 for the normalisation parameters, and bc alike."""
        s = self.state[i]
        for key in layer.params:
            s["v_" + key] = keep * s["v_" + key] + new * grads[key] ** 2  # like p
        s["bc"] = keep * s["bc"] + new

    def update_curvature(self, i, layer, step=None):
        """Moving average of the mini-block outer products (every T1 steps); the first
        ``warm_start`` updates average with weight 1/j."""
        if self.kinds[i] == "norm":
            return  # refreshed at every step, in precondition
        s = self.state[i]
        sampled = step.get("sampled") if step else None
        grads = layer.grads if sampled is None else sampled[i]
        j = int(s["n_warm"]) + 1
        if j <= self.warm_steps:
            self._accumulate(i, layer, grads, (j - 1) / j, 1.0 / j)
            s["n_warm"] = s["n_warm"] + 1
        else:
            self._accumulate(i, layer, grads, self.beta, 1.0 - self.beta)

    def update_inverse(self, i, layer, step=None):
        """P_blk = (F_blk + lambda I)^{-1}: one batched inverse over the stacked blocks."""
        s, kind = self.state[i], self.kinds[i]
        if kind == "norm":
            return
        xp = backend.array_module(s["F"])
        eye = xp.eye(s["F"].shape[-1], dtype=s["F"].dtype)  # (d, d), broadcast over blocks
        P = xp.linalg.inv(s["F"] + self.damping * eye)  # (n_blocks, d, d) or (d, d)
        s["P"] = 0.5 * (P + xp.swapaxes(P, -1, -2))  # symmetric to the last bit
        if kind == "conv" and "b" in layer.params:
            s["p_b"] = 1.0 / (s["v_b"] + self.damping)  # (F,), the 1 x 1 bias blocks

    # -- the direction -----------------------------------------------------------------
    def _norm_direction(self, i, layer, m):
        """Adam's direction m / (sqrt(v_hat) + eps), v refreshed at every step."""
        s = self.state[i]
        self._accumulate_norm(i, layer, layer.grads, self.beta, 1.0 - self.beta)
        bc = float(s["bc"]) if self.bias_correction else 1.0
        out = {}
        for key in layer.params:
            xp = backend.array_module(s["v_" + key])
            out[key] = m[key] / (xp.sqrt(s["v_" + key] / bc) + self.norm_eps)  # like p
        return out

    def precondition(self, i, layer, step=None):
        """d_blk = P_blk m_blk, written into ``layer.grads``."""
        s, kind = self.state[i], self.kinds[i]
        m = dict(layer.grads)
        if self.momentum > 0:
            for key in layer.params:
                s["m_" + key] = self.momentum * s["m_" + key] + layer.grads[key]
                m[key] = s["m_" + key]
        bound = step is not None and self.kl_clip is not None
        xp = backend.array_module(*m.values())
        if kind == "norm":
            d = self._norm_direction(i, layer, m)
            vg = sum(float(xp.vdot(d[k].ravel(), m[k].ravel())) for k in d) if bound else 0
        elif kind in ("dense", "dense_avg"):
            M = self._dense_rows(layer, m)  # (n, d)
            if kind == "dense":
                D = (s["P"] @ M[:, :, None])[:, :, 0]  # (n, d, d) @ (n, d, 1) -> (n, d)
            else:
                D = M @ s["P"]  # (n, d) @ (d, d): d_o = P m_o (P symmetric)
            vg = float(xp.vdot(D.ravel(), M.ravel())) if bound else 0.0
            n_in = layer.params["W"].shape[1]
            d = {"W": D[:, :n_in]}  # (n, m)
            if "b" in layer.params:
                d["b"] = D[:, n_in]  # (n,)
        else:  # conv
            F, C, kh, kw = m["W"].shape
            M = m["W"].reshape(F * C, kh * kw, 1)  # (F C, k^2, 1)
            d = {"W": (s["P"] @ M).reshape(F, C, kh, kw)}  # (F, C, kh, kw)
            if "b" in layer.params:
                d["b"] = m["b"] * s["p_b"]  # (F,)
            vg = sum(float(xp.vdot(d[k].ravel(), m[k].ravel())) for k in d) if bound else 0
        if step is not None:
            step["vg"] += vg
        layer.grads.update(d)

    def finish(self, step):
        """The step bound: scale every direction by nu = min(1, sqrt(kl_clip/(lr^2 vg)))."""
        nu = kl_clip_factor(self.kl_clip, current_lr(self.lr), step["vg"])
        if nu < 1.0:
            for layer in self.layers:
                for key in layer.params:
                    layer.grads[key] = layer.grads[key] * nu

    # -- warm start ----------------------------------------------------------------------
    def warm_start_step(self):
        """Add the current gradients to the epoch average: F <- (j-1)/j F + (1/j) g g^T.

        Call it after each ``model.backward`` of the warm-start pass (no optimizer step);
        ``warm_start`` does the whole pass for you.
        """
        self.check_ready()
        self.check_finite()
        sampled = None
        if self.fisher == "true":
            sampled = sampled_backward(self.model, self.loss, self.layers, self.rng,
                                       lambda layer: dict(layer.grads))[0]
        for i, layer in enumerate(self.layers):
            s = self.state[i]
            j = int(s["n_warm"]) + 1
            grads = layer.grads if sampled is None else sampled[i]
            if self.kinds[i] == "norm":
                self._accumulate_norm(i, layer, grads, (j - 1) / j, 1.0 / j)
            else:
                self._accumulate(i, layer, grads, (j - 1) / j, 1.0 / j)
            s["n_warm"] = s["n_warm"] + 1

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
            self.guarded_inverse(i, layer)
        return self
