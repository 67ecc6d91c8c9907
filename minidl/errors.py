"""Errors that more than one part of minidl raises or catches.

``NonFiniteError`` is how any part of a training step says "a value became NaN or
infinite": a preconditioner that finds non-finite gradients or statistics raises it
*before* it changes its own state, and ``minidl.train.fit`` (and the command line) turn it
into a clean "diverged" stop instead of a traceback. It subclasses ``FloatingPointError``
so code that already catches floating-point failures keeps working.
"""

__all__ = ["NonFiniteError", "NonFiniteWarning"]


class NonFiniteError(FloatingPointError):
    """A NaN or infinity reached a place where it would silently spread.

    The message names where it was found (layer, parameter or statistic) and what was
    expected; the object that raised it has not changed its state.
    """


class NonFiniteWarning(UserWarning):
    """A loss came out NaN or infinite; the message names the rows of the batch whose
    logits or targets are not finite (bad data), or says that they all were (an overflow,
    usually a diverging run). The value is still returned, so a training loop can stop
    cleanly as "diverged".

    A ``UserWarning``, not a ``RuntimeWarning``: it is a message for the person running
    the code, and a test configuration that turns NumPy's RuntimeWarnings into errors
    must not turn a clean "diverged" stop of ``fit`` into a crash.
    """
