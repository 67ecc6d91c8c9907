"""Sharing a layer's work over the CPU's cores: pieces of the batch in threads.

NumPy runs one BLAS product on several threads (``threadpool_limits``), but everything
around it, the copies of im2col, the elementwise passes of BatchNorm and ReLU, runs on
one core. A layer whose work splits over the batch can instead hand its pieces to a few
Python threads: NumPy releases the interpreter lock inside every copy, ufunc and product
on large arrays, so the pieces run at the same time, one core each, each piece small
enough to stay in its core's cache. ``map_pieces`` is that::

    results = map_pieces(work, pieces)     # == [work(p) for p in pieces], in order

It runs the pieces on ``workers()`` threads, the number of BLAS threads allowed right
now (so ``threadpool_limits(2)`` means two cores, for the products and for the rest
alike), with BLAS itself held to one thread meanwhile (two threads each asking BLAS for
two more would oversubscribe the cores). With one thread allowed, on the GPU, or with one
piece, it is the plain loop.

The products of every layer's forward and backward pass go through pieces this way,
Linear's too (``split`` shares a product over the threads), and a single piece still runs
with BLAS held to one thread: after a product that OpenBLAS ran on its own threads, those
threads keep spinning on the other cores for a while (about 0.1 s, see
``OPENBLAS_THREAD_TIMEOUT`` in OpenBLAS's documentation), and pieces that follow would
share the cores with them (measured: a 5-layer CNN training step 1.5x slower with two
threads when its Linear layers let OpenBLAS share their products). Conv2d's ``jvp`` and
``backward_rop`` reuse its chunks; the other curvature passes (Linear's and the
normalisations' ``jvp`` and ``backward_rop``, per-example gradients) and the
preconditioners use plain products, which BLAS shares over its own threads.

Results come back in the order of ``pieces``, so sums over them add in the same order
every run: a layer gives the same bits every time for a given thread count. Where the
pieces do not depend on the thread count (Conv2d's chunks, BatchNorm's, ReLU's and
MaxPool2d's pieces, all sized in values) and every product runs on one BLAS thread, the
bits are the same for any thread count too; Linear's products, split into as many row
blocks as threads, agree to BLAS's rounding.

``work`` must only write to places no other piece writes to (its own slice of an
output array) and return what is to be combined (a partial sum), as the layers do. Each
piece runs in a copy of the caller's context, so settings such as ``numpy.errstate`` (a
context variable since NumPy 2.0) hold inside it as they would in the plain loop. At most
``workers()`` pieces run at once, whatever the size of the thread pool. ``map_pieces``
sets BLAS's thread count to 1 while it runs and back afterwards, so two calls from
different threads at once could leave BLAS at one thread: run one training loop per
process, as usual (a forked child process starts a pool of its own).
"""
import concurrent.futures
import contextvars
import os
import threading

from . import backend

__all__ = ["workers", "map_pieces", "batch_pieces", "pieces_of", "split", "PIECE_VALUES"]

# values in one piece of an elementwise pass (1 MB in float32): small enough to stay in a
# core's cache between the operations of a piece, large enough that handing it to a thread
# costs little (measured: 2^16-value pieces ran no faster in two threads than in one)
PIECE_VALUES = 2**18

_pool = {"executor": None, "size": 0}
_lock = threading.Lock()
_inside = threading.local()  # .piece is True in a thread while it runs a piece


def _forget_pool_after_fork():
    # a forked child has none of the parent's threads: it must not wait on their queue
    _pool["executor"], _pool["size"] = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def workers(like=None):
    """How many threads a layer's CPU work may use now: ``backend.blas_threads()``, or 1
    on the GPU (where ``like``, an array, lives) or inside a piece already running."""
    if like is not None and backend.on_device(like):
        return 1
    if getattr(_inside, "piece", False):
        return 1
    return backend.blas_threads()


def _executor(size):
    with _lock:
        if _pool["size"] < size:
            if _pool["executor"] is not None:
                _pool["executor"].shutdown(wait=False)
            _pool["executor"] = concurrent.futures.ThreadPoolExecutor(
                max_workers=size, thread_name_prefix="minidl")
            _pool["size"] = size
        return _pool["executor"]


def map_pieces(work, pieces, like=None):
    """``[work(p) for p in pieces]``, the pieces shared over ``workers(like)`` threads.

    Args:
        work: a function of one piece (e.g. a slice of the batch); it may write only to
            memory no other piece touches.
        pieces: a list of pieces.
        like: an array of the layer (to tell CPU from GPU).

    Returns:
        the list of results, in the order of ``pieces``. An exception in a piece is raised
        here, once every thread has stopped.
    """
    pieces = list(pieces)
    n = workers(like)
    if n <= 1:
        return [work(piece) for piece in pieces]
    with backend.blas_single_thread():  # also for one piece: no BLAS threads left spinning
        if len(pieces) <= 1:
            return [work(piece) for piece in pieces]
        n = min(n, len(pieces))
        results = [None] * len(pieces)
        order = iter(range(len(pieces)))  # next() on it is atomic: each piece taken once
        lock = threading.Lock()

        def run_pieces():  # one of the n threads: take the next piece until none is left
            _inside.piece = True
            try:
                while True:
                    with lock:
                        i = next(order, None)
                    if i is None:
                        return
                    results[i] = work(pieces[i])
            finally:
                _inside.piece = False

        context = contextvars.copy_context()  # the caller's settings, e.g. numpy.errstate
        futures = [_executor(n).submit(context.copy().run, run_pieces) for _ in range(n)]
        concurrent.futures.wait(futures)
        for future in futures:
            future.result()  # raises the first error, if a piece raised
    return results


def batch_pieces(N, per_example, budget):
    """Slices of a batch of N examples, each holding at most ``budget`` values (at least
    one example), where one example holds ``per_example``; one empty slice when N = 0."""
    if N == 0:
        return [slice(0, 0)]
    n = max(1, budget // max(1, per_example))
    return [slice(i, min(i + n, N)) for i in range(0, N, n)]


def pieces_of(a, budget=None):
    """Slices along the first (batch) axis of ``a`` with about ``budget`` values each
    (default ``PIECE_VALUES``); one piece, ``...`` (all of it), for a 0-d or small array
    and for an array on the GPU (where each piece would cost kernel launches and nothing
    runs side by side)."""
    budget = PIECE_VALUES if budget is None else budget
    if a.ndim == 0 or a.size <= budget or backend.on_device(a):
        return [...]
    return batch_pieces(a.shape[0], a.size // a.shape[0], budget)


def split(n, parts):
    """``parts`` slices of range(n) as equal as can be (fewer when n < parts; one empty
    slice when n = 0): the pieces of a product shared over ``parts`` threads."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]
