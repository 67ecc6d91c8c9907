"""The ``Preconditioner`` protocol shared by BNP, MBF, KFAC, Shampoo, KFRA, KFLR and BDF.

A preconditioner sits between the backward pass and the optimizer::

    loss_value = crit.forward(model.forward(x), y)
    model.backward(crit.backward())
    precond.step()          # reads layer.cache["x"], layer.cache["dout"], layer.grads,
                            # updates its curvature statistics, then overwrites each
                            # covered layer's grads with the preconditioned direction
    opt.step()              # any first-order optimizer (SGD, momentum, Adam, ...)

One ``step()`` for every method, written once here::

    check_ready(); check_finite()            # refuse before any statistic is touched
    step = prepare(stats, inverse)           # per-step values all layers share (a dict)
    if stats:    update_curvature(i, layer, step)   for every covered layer   (every T1)
    if inverse:  update_inverse(i, layer, step)     for every covered layer   (every T2)
    precondition(i, layer, step)                    for every covered layer
    finish(step)                             # global rescaling (KL clipping, ...)

Subclasses write the hooks; what one step computes for all layers (the sampled backward
pass of KFAC and MBF, KFLR's Gbar factors, the running sum <V', V> for KL clipping)
travels in the ``step`` dict, never in attributes. The hooks also run on their own with
``step=None`` (tests call ``update_inverse(i, layer)`` and ``precondition(i, layer)``).

Everything a method keeps lives in ``self.state[i]`` (a dict of arrays for the i-th
covered layer) and ``self.t`` (steps taken), so ``state_dict()`` can write it into a
checkpoint without pickling.

Non-finite values: ``step()`` raises ``minidl.errors.NonFiniteError`` naming the layer and
the array (a gradient, or the recorded input or output gradient its statistics read,
``reads_cache``) *before* any statistic changes,
and an inverse that fails (``LinAlgError``) or a statistic that is not finite is
reported the same way, so a training loop can stop cleanly as "diverged".

Hyperparameters are checked by ``check_number`` (the helper ``minidl.optim`` uses), with
one vocabulary across the methods: ``damping`` (lambda), ``stat_decay`` (the weight of
the old statistic in a moving average), ``T1`` (statistics period), ``T2`` (inverse
period).
"""
import warnings

from .. import backend
from ..curvature.products import preserved_state
from ..errors import NonFiniteError
from ..optim.base import check_number, check_saved_settings, settings_entries

__all__ = ["Preconditioner", "CoverageWarning", "check_number", "check_period", "check_lr",
           "sampled_backward", "kl_clip_factor", "warn_if_kl_clip_has_no_lr", "current_lr"]


class CoverageWarning(UserWarning):
    """Issued by a constructor when some parameterised layers are left to the optimizer."""


def check_period(owner, name, value):
    """``int(value)`` for a positive integer period (T1, T2, ...); ValueError otherwise."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_choice(owner, name, value, choices):
    """``value`` when it is one of ``choices``; a ValueError listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def all_finite(a):
    """True when every entry of ``a`` is finite (one reduction, no boolean copy)."""
    xp = backend.array_module(a)
    with warnings.catch_warnings():  # inf - inf in the sum is the answer, not a problem
        warnings.simplefilter("ignore", RuntimeWarning)
        total = xp.sum(a)
    if bool(xp.isfinite(total)):
        return True
    return bool(xp.isfinite(a).all())  # a finite array whose sum overflowed


def check_finite_array(owner, where, a, unchanged=True):
    """Raise ``NonFiniteError`` naming ``where`` when ``a`` holds NaN or infinity.

    ``unchanged``: the check runs before the statistics are touched (the message says
    they were left unchanged); False for a statistic itself, after its update.
    """
    if not all_finite(a):
        xp = backend.array_module(a)
        bad = int((~xp.isfinite(a)).sum())
        state = ("the preconditioner's statistics were left unchanged" if unchanged else
                 "the statistic itself is not finite (finite inputs too large for its "
                 "dtype overflow in its update), so this preconditioner cannot go on")
        raise NonFiniteError(f"{owner}: {where} holds {bad} non-finite value(s) (NaN or inf) "
                             f"in an array of shape {tuple(a.shape)}; {state} (the run has "
                             "diverged: lower the learning rate or raise the damping)")


def check_lr(owner, lr):
    """``lr`` when it is None, an optimizer (anything with an ``lr``) or a number > 0.

    The step bounds use lr squared, so a negative rate would otherwise pass unnoticed
    there (and flip the sign of the Levenberg-Marquardt model); a ValueError says so.
    """
    if lr is None or hasattr(lr, "lr"):
        return lr
    check_number(owner, "lr", lr, low=0.0, low_open=True,
                 allowed="(0, inf), an optimizer (its lr is read at every step) or None")
    return lr


def current_lr(lr):
    """The learning rate of ``lr``: a number, an optimizer (its current ``lr``) or None."""
    return getattr(lr, "lr", lr)


def warn_if_kl_clip_has_no_lr(owner, kl_clip, lr):
    """Say once, at construction, that a KL bound without the learning rate is a guess.

    Without ``lr`` the bound of ``kl_clip_factor`` is taken as if lr were 1: safe for every
    lr <= 1, tighter than needed below.
    """
    if kl_clip is not None and lr is None:
        warnings.warn(f"{owner}: kl_clip={kl_clip:g} without the learning rate "
                      "bounds the step as if lr were 1 (safe for every lr <= 1, tighter "
                      "than needed below): pass lr=optimizer for the exact bound "
                      "(minidl.methods.build does), or kl_clip=None for no bound",
                      UserWarning, stacklevel=3)


def kl_clip_factor(kl_clip, lr, vg):
    """nu = min(1, sqrt(kl_clip / (lr^2 vg))) (Ba, Grosse & Martens 2017; KFAC-Pytorch).

    ``vg`` = sum over layers of <V', V> (preconditioned direction times what it came
    from), so lr^2 vg is the predicted change lr^2 V'^T F V' of the model's outputs.

    Without a known learning rate (``lr`` None: a preconditioner built by hand, without
    ``lr=``) the bound is taken as if lr were 1,

        nu = min(1, sqrt(kl_clip / vg)),   so   V'^T F V' <= kl_clip after scaling,

    i.e. the KL bound of KFAC-Pytorch for the largest learning rate these methods are
    paired with (SGD's, lr <= 1; Botev et al. and Anil et al. step with lr = 1). For any
    lr <= 1 the predicted change lr^2 V'^T F V' <= lr^2 kl_clip <= kl_clip then holds
    whatever the optimizer's rate: tighter than needed below lr = 1, never looser.
    Returns 1.0 when clipping is off (``kl_clip`` None) or vg <= 0.
    """
    if kl_clip is None:
        return 1.0
    lr = 1.0 if lr is None else lr
    value = float(lr) ** 2 * float(vg)
    if not value > 0:
        return 1.0
    return min(1.0, (float(kl_clip) / value) ** 0.5)


def sampled_backward(model, loss, layers, rng, read, n_samples=1):
    """Backward passes for targets drawn from the model, y ~ p(y | x).

    For each of ``n_samples`` draws: ``loss.forward(logits, loss.sample_target(rng))``
    and ``model.backward(loss.backward())``, then ``read(layer)`` for every layer of
    ``layers``. Everything the passes change (every leaf's grads, cache, R-slots and
    buffers, the loss's cache) is put back afterwards (``preserved_state``).

    Returns:
        A list with one entry per draw, each a list of ``read(layer)`` in layer order.
    """
    samples = []
    with preserved_state(model, loss):
        logits = loss.logits()  # (N, K)
        for _ in range(int(n_samples)):
            loss.forward(logits, loss.sample_target(rng))
            model.backward(loss.backward())
            samples.append([read(layer) for layer in layers])
    return samples


class Preconditioner:
    """Base class: the covered layers, the step, checkpoints.

    Subclasses write ``covered_types()`` (or ``applies_to``) and the hooks
    ``update_curvature``, ``update_inverse``, ``precondition`` and, when needed,
    ``prepare`` and ``finish`` (see the module docstring).

    Args:
        model: the network (a ``Layer``); its leaves with parameters are considered.
        T1: update the curvature statistics every ``T1`` steps (1 = every step).
        T2: recompute inverses every ``T2`` steps.
        warn: issue a ``CoverageWarning`` naming the layers the method does not cover.
    """

    name = "preconditioner"

    def __init__(self, model, T1=1, T2=1, warn=True):
        owner = type(self).__name__
        self.model = model
        self.T1, self.T2 = check_period(owner, "T1", T1), check_period(owner, "T2", T2)
        self.t = 0
        self.layers = []      # covered leaf layers, forward order
        self.names = []       # their qualified names
        self.uncovered = []   # qualified names of parameterised leaves left alone
        for lname, leaf in model.named_leaves():
            if not leaf.params:
                continue
            if self.applies_to(leaf):
                self.layers.append(leaf)
                self.names.append(lname)
            else:
                self.uncovered.append(f"{lname} ({type(leaf).__name__})")
        if not self.layers:
            raise ValueError(f"{owner} covers none of the model's layers; it handles "
                             f"{[c.__name__ for c in self.covered_types()]}")
        self.state = [dict() for _ in self.layers]
        if warn and self.uncovered:
            warnings.warn(f"{owner} leaves these layers' gradients to the optimizer "
                          f"unchanged: {', '.join(self.uncovered)}",
                          CoverageWarning, stacklevel=3)

    # -- what subclasses write -----------------------------------------------------------
    def covered_types(self):
        """The layer classes this method preconditions."""
        raise NotImplementedError

    def applies_to(self, layer):
        return isinstance(layer, tuple(self.covered_types()))

    def prepare(self, update_stats, update_inverse):
        """Per-step values shared by all layers; returns the ``step`` dict of the hooks."""
        return {"update_stats": update_stats, "update_inverse": update_inverse}

    def update_curvature(self, i, layer, step=None):
        raise NotImplementedError

    def update_inverse(self, i, layer, step=None):
        raise NotImplementedError

    def precondition(self, i, layer, step=None):
        raise NotImplementedError

    def finish(self, step):
        """Called once after every layer is preconditioned (global rescaling)."""

    def schedule(self):
        """(update the statistics?, recompute the inverses?) for step ``t``."""
        return self.t % self.T1 == 0, self.t % self.T2 == 0

    # -- the step ------------------------------------------------------------------------
    def check_ready(self):
        """Raise a clear error when backward has not run since the last forward."""
        for layer, name in zip(self.layers, self.names):
            if "dout" not in layer.cache or not layer.grads:
                raise RuntimeError(f"{type(self).__name__}.step(): layer {name} has no "
                                   "gradient yet; call model.backward(...) first")

    # the cached arrays the statistics read besides the gradients (checked by check_finite)
    reads_cache = ("x", "dout")

    def check_finite(self):
        """``NonFiniteError`` naming the layer when a gradient, or a recorded input or dout
        the statistics read (``reads_cache``), is not finite."""
        owner = f"{type(self).__name__}.step()"
        for layer, name in zip(self.layers, self.names):
            for key, g in layer.grads.items():
                check_finite_array(owner, f"layer {name}: gradient {key!r}", g)
            for key in self.reads_cache:
                a = layer.cache.get(key)
                if a is not None and backend.is_array(a):
                    what = "recorded input x" if key == "x" else "output gradient dout"
                    check_finite_array(owner, f"layer {name}: {what}", a)

    def step(self):
        """Statistics (every T1), inverses (every T2), then precondition in place."""
        self.check_ready()
        self.check_finite()
        update_stats, update_inverse = self.schedule()
        step = self.prepare(update_stats, update_inverse)
        if update_stats:
            for i, layer in enumerate(self.layers):
                self.update_curvature(i, layer, step)
        if update_inverse:
            for i, layer in enumerate(self.layers):
                self.guarded_inverse(i, layer, step)
        for i, layer in enumerate(self.layers):
            self.precondition(i, layer, step)
        self.finish(step)
        self.t += 1

    def guarded_inverse(self, i, layer, step=None):
        """``update_inverse`` with non-finite statistics and LinAlgError as NonFiniteError."""
        owner = f"{type(self).__name__}.step()"
        for key, value in self.state[i].items():
            if backend.is_array(value) and value.dtype.kind == "f":
                check_finite_array(owner, f"layer {self.names[i]}: statistic {key!r}", value,
                                   unchanged=False)
        try:
            self.update_inverse(i, layer, step)
        except Exception as err:  # numpy/cupy LinAlgError ("Eigenvalues did not converge")
            if type(err).__name__ != "LinAlgError":
                raise
            raise NonFiniteError(f"{owner}: the inverse for layer {self.names[i]} failed "
                                 f"({err}); its statistics are ill-conditioned or too "
                                 "large: the run has diverged (lower the learning rate or "
                                 "raise the damping)") from err

    # -- checkpoints ---------------------------------------------------------------------
    def hyperparameters(self):
        """The settings that define the method: ``{name: number, bool, str or None}``.

        ``state_dict`` saves them (``"hyper.<name>"``) and ``load_state_dict`` refuses a
        state saved with other values: KFAC's eigen-basis state read by a KFAC with
        ``damping_mode="factored"``, or Shampoo's blocks by one with another
        ``block_size``, would fail deep inside a later step or silently precondition with
        statistics of another shape. Subclasses add theirs to the periods.
        """
        return {"T1": self.T1, "T2": self.T2}

    def state_dict(self):
        """``{"t": array, "hyper.<name>": setting, "<i>.<key>": host array}``: plain arrays,
        numbers and strings, safe for ``.npz``."""
        out = {"t": backend.host().asarray(self.t)}
        out.update(settings_entries(self.hyperparameters()))
        for i, s in enumerate(self.state):
            for key, value in s.items():
                out[f"{i}.{key}"] = backend.to_numpy(value).copy()
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` wrote, onto the active backend (as copies).

        Raises:
            ValueError: the state was saved with other settings (``hyperparameters``), an
                entry names no covered layer, or an array's shape differs from the one
                this preconditioner already holds under that name (the state of another
                model). Nothing is changed.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        check_saved_settings(owner, self.hyperparameters(), state)
        new = [dict() for _ in self.layers]
        for name, value in state.items():
            if name == "t" or name.startswith("hyper."):
                continue
            i, _, key = name.partition(".")
            if not i.isdigit() or int(i) >= len(self.layers) or not key:
                raise ValueError(f"{owner}: entry {name!r} does not match a covered layer "
                                 f"(there are {len(self.layers)})")
            arr = backend.to_numpy(value)
            have = self.state[int(i)].get(key)
            if backend.is_array(have) and tuple(have.shape) != tuple(arr.shape):
                raise ValueError(f"{owner}: entry {name!r} has shape {tuple(arr.shape)}, but "
                                 f"layer {self.names[int(i)]}'s {key!r} has shape "
                                 f"{tuple(have.shape)} (is it the state of another model?)")
            # a copy: the preconditioner owns its state (Shampoo updates it in place, which
            # must not reach back into the caller's dict)
            new[int(i)][key] = backend.asarray(arr).copy() if arr.dtype.kind in "fiub" else arr
        self.state = new
        self.t = int(state["t"]) if "t" in state else 0
        return self

    def __repr__(self):
        return f"{type(self).__name__}(covers {len(self.layers)} layers: {self.names})"
