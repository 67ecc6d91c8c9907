"""Learning-rate schedules: lr_k = schedule(k) for the iteration number k = 0, 1, 2, ...

A schedule is a small object called with k, the number of updates taken so far (nanoGPT's
``it``), that returns the learning rate of the next update. Lecture 1 lists step sizes
chosen a priori; lecture 4 anneals the rate towards the end of training. With c the base
rate (the lecture's c, often written alpha_0)::

    Constant(c)                       lr_k = c
    StepDecay(c, step_size, gamma)    lr_k = c gamma^floor(k / step_size)
    InverseSqrt(c, k0=1)              lr_k = c / sqrt(k + k0)   (lecture: c / sqrt(k), k >= 1)
    Inverse(c, k0=1)                  lr_k = c / (k + k0)       (lecture: c / k, k >= 1)
    Cosine(c, total_steps, min_lr=0)  lr_k = min_lr + (c - min_lr) (1 + cos(pi k / T)) / 2
                                      for k <= T = total_steps, min_lr after
    LinearWarmup(after, W)            lr_k = after(0) (k + 1) / (W + 1)   for k < W
                                      lr_k = after(k - W)                 for k >= W

``LinearWarmup`` composes: the rate rises in a straight line from after(0) / (W + 1) at
k = 0 to after(0) at k = W, then ``after`` runs with its clock started at W (so a cosine
decay begins at its peak, as in nanoGPT's get_lr). ``after`` may be a number (a constant).

Apply a schedule by hand, ``opt.lr = schedule(k)`` before each step, or with
``LRScheduler(opt, schedule)``, whose ``step()`` is called after each ``opt.step()``.

References: A. Karpathy, nanoGPT ``train.py`` (get_lr: linear warm-up then cosine decay);
I. Loshchilov, F. Hutter, "SGDR: stochastic gradient descent with warm restarts", ICLR 2017
(cosine annealing); P. Goyal et al., "Accurate, large minibatch SGD", 2017 (warm-up).
"""
import collections.abc
import math
import numbers

__all__ = ["Schedule", "Constant", "StepDecay", "InverseSqrt", "Inverse", "Cosine",
           "LinearWarmup", "LRScheduler", "as_schedule"]


def _number(owner, name, value, low=0.0, strict=False):
    """Validate a real number >= low (> low when strict); return it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a real number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < low or (strict and x == low):
        sign = ">" if strict else ">="
        raise ValueError(f"{owner}: {name} must be a finite number {sign} {low:g}, "
                         f"got {value!r}")
    return x


def _count(owner, name, value, low=1):
    """Validate an integer >= low; return it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


class Schedule:
    """Base class: ``schedule(k) -> lr`` for the iteration number k >= 0."""

    def __call__(self, k):
        k = _count(type(self).__name__, "the iteration number k", k, low=0)
        return self.lr_at(k)

    def lr_at(self, k):
        """The learning rate at iteration ``k`` (an int >= 0, already checked)."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """lr_k = c."""

    def __init__(self, c):
        self.c = _number("Constant", "c", c)

    def lr_at(self, k):
        return self.c


class StepDecay(Schedule):
    """lr_k = c gamma^floor(k / step_size): multiply by gamma every ``step_size`` updates.

    Args:
        c: the initial rate, >= 0.
        step_size: updates between decays, an integer >= 1.
        gamma: the factor, in (0, 1].
    """

    def __init__(self, c, step_size, gamma=0.1):
        self.c = _number("StepDecay", "c", c)
        self.step_size = _count("StepDecay", "step_size", step_size)
        self.gamma = _number("StepDecay", "gamma", gamma, strict=True)
        if self.gamma > 1:
            raise ValueError(f"StepDecay: gamma must lie in (0, 1] (a decay), got {gamma!r}")

    def lr_at(self, k):
        return self.c * self.gamma ** (k // self.step_size)


class InverseSqrt(Schedule):
    """lr_k = c / sqrt(k + k0); k0 = 1 is the lecture's c / sqrt(k) counted from k = 1."""

    def __init__(self, c, k0=1):
        self.c = _number("InverseSqrt", "c", c)
        self.k0 = _number("InverseSqrt", "k0", k0, strict=True)

    def lr_at(self, k):
        return self.c / math.sqrt(k + self.k0)


class Inverse(Schedule):
    """lr_k = c / (k + k0); k0 = 1 is the lecture's c / k counted from k = 1."""

    def __init__(self, c, k0=1):
        self.c = _number("Inverse", "c", c)
        self.k0 = _number("Inverse", "k0", k0, strict=True)

    def lr_at(self, k):
        return self.c / (k + self.k0)


class Cosine(Schedule):
    """Cosine annealing from c at k = 0 to min_lr at k = total_steps, then min_lr.

    Args:
        c: the peak rate, >= min_lr.
        total_steps: T, the number of updates over which the rate decays (>= 1).
        min_lr: the final rate, >= 0.
    """

    def __init__(self, c, total_steps, min_lr=0.0):
        self.c = _number("Cosine", "c", c)
        self.total_steps = _count("Cosine", "total_steps", total_steps)
        self.min_lr = _number("Cosine", "min_lr", min_lr)
        if self.min_lr > self.c:
            raise ValueError(f"Cosine: min_lr ({min_lr!r}) must not exceed c ({c!r})")

    def lr_at(self, k):
        ratio = min(k, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.c - self.min_lr) * (1.0 + math.cos(math.pi * ratio))


def as_schedule(schedule, owner=None):
    """A ``Schedule`` (or any callable of k) unchanged; a number becomes ``Constant``.

    ``owner`` (e.g. ``"fit"``) starts the error message for anything else.
    """
    if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
        return Constant(schedule)
    if callable(schedule):
        return schedule
    where = f"{owner}: schedule must be" if owner else "expected"
    raise ValueError(f"{where} a schedule (a callable k -> lr, e.g. minidl.optim.Cosine(lr, "
                     f"total_steps)) or a number, got {schedule!r} ({type(schedule).__name__})")


class LinearWarmup(Schedule):
    """Linear warm-up over ``warmup_steps`` updates, then ``after`` (shifted by W).

    Args:
        after: the schedule that follows (any callable k -> lr), or a number for a constant.
        warmup_steps: W, an integer >= 0 (0 means no warm-up).
    """

    def __init__(self, after, warmup_steps):
        self.after = as_schedule(after)
        self.warmup_steps = _count("LinearWarmup", "warmup_steps", warmup_steps, low=0)

    def lr_at(self, k):
        W = self.warmup_steps
        if k < W:
            return self.after(0) * (k + 1) / (W + 1)
        return self.after(k - W)


class LRScheduler:
    """Drive ``opt.lr`` from a schedule: set lr_0 now, lr_k after the k-th ``opt.step()``.

    Usage::

        sched = LRScheduler(opt, LinearWarmup(Cosine(3e-4, 5000), 100))
        for x, y in loader:
            ...; opt.step(); sched.step()

    Args:
        optimizer: any object with a settable ``lr`` (a minidl optimizer).
        schedule: a callable k -> lr, or a number for a constant.
    """

    def __init__(self, optimizer, schedule):
        if not hasattr(optimizer, "lr"):
            raise ValueError(f"LRScheduler expects an optimizer with an lr attribute, got "
                             f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.schedule = as_schedule(schedule)
        self.k = 0
        self.optimizer.lr = self.schedule(self.k)

    def step(self):
        """Advance k by one and set the optimizer's lr to schedule(k); returns it."""
        self.k += 1
        self.optimizer.lr = self.schedule(self.k)
        return self.optimizer.lr

    def state_dict(self):
        """``{"k": int}``: the schedule itself is code, rebuilt by the caller."""
        return {"k": int(self.k)}

    def load_state_dict(self, state):
        """Resume at the saved k and set the optimizer's lr to schedule(k).

        Raises:
            ValueError: no ``"k"``, or one that is not an integer >= 0 (a 0-d array from an
                ``.npz`` file is fine); the scheduler and the optimizer are left as they were.
        """
        owner = "LRScheduler.load_state_dict"
        if not isinstance(state, collections.abc.Mapping) or "k" not in state:
            got = (f"one with the entries {sorted(state)}"
                   if isinstance(state, collections.abc.Mapping)
                   else type(state).__name__)
            raise ValueError(f"{owner}: expected a mapping with the entry 'k' (what state_dict "
                             f"wrote), got {got}")
        k = state["k"]
        if getattr(k, "ndim", None) == 0 and hasattr(k, "item"):
            k = k.item()  # a 0-d array, as np.load gives it back
        k = _count(owner, "the saved update count k", k, low=0)
        lr = self.schedule(k)
        self.optimizer.lr = lr  # the optimizer checks it before anything is changed here
        self.k = k
        return self

    def __repr__(self):
        return f"LRScheduler(k={self.k}, schedule={self.schedule!r})"
