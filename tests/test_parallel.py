"""minidl.parallel: pieces of a layer's work in threads, and the layers that use it.

The pieces must really run side by side when two threads are allowed, come back in order,
leave BLAS's thread count as it was, and give the layers the same bits as one thread.
"""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import minidl
from minidl import backend, parallel


def test_pieces_run_side_by_side_with_two_threads_and_come_back_in_order():
    barrier = threading.Barrier(2, timeout=10)  # only passes if two pieces run at once
    names = []

    def work(i):
        names.append(threading.current_thread().name)
        if i < 2:
            barrier.wait()
        assert backend.blas_threads() == 1  # BLAS held to one thread inside a piece
        assert parallel.workers() == 1  # no pieces within pieces
        return i * i

    with threadpool_limits(2):
        before = backend.blas_threads()
        assert parallel.map_pieces(work, range(6)) == [i * i for i in range(6)]
        assert backend.blas_threads() == before  # restored
    assert len(set(names)) == 2


def test_one_thread_is_the_plain_loop_in_the_callers_thread():
    names = []
    with threadpool_limits(1):
        out = parallel.map_pieces(lambda i: names.append(threading.current_thread().name)
                                  or i, range(4))
    assert out == [0, 1, 2, 3]
    assert set(names) == {threading.current_thread().name}


def test_an_error_in_a_piece_reaches_the_caller_and_blas_is_restored():
    def work(i):
        if i == 3:
            raise ValueError("piece 3 failed")
        return i

    with threadpool_limits(2):
        before = backend.blas_threads()
        with pytest.raises(ValueError, match="piece 3 failed"):
            parallel.map_pieces(work, range(5))
        assert backend.blas_threads() == before


def test_pieces_see_the_callers_numpy_errstate():
    x = np.zeros(8)

    def work(i):
        return (x[i:i + 1] / x[i:i + 1])[0]  # 0/0: warns unless errstate says otherwise

    with threadpool_limits(2), np.errstate(invalid="ignore"):
        out = parallel.map_pieces(work, range(8))
    assert np.isnan(out).all()
    with threadpool_limits(2), np.errstate(invalid="raise"):
        with pytest.raises(FloatingPointError):
            parallel.map_pieces(work, range(8))


def test_no_more_pieces_at_once_than_threads_allowed_even_after_a_larger_limit():
    """The pool made for 4 threads stays; under a limit of 2 only 2 pieces may run."""
    import time
    running, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i

    with threadpool_limits(4):
        parallel.map_pieces(work, range(8))
    for limit in (2, 1):
        peak[0] = 0
        with threadpool_limits(limit):
            assert parallel.map_pieces(work, range(8)) == list(range(8))
        assert peak[0] <= limit


def test_one_piece_with_threads_allowed_still_holds_blas_to_one_thread():
    seen = []
    with threadpool_limits(2):
        parallel.map_pieces(lambda p: seen.append(backend.blas_threads()), [slice(None)])
        assert backend.blas_threads() == 2
    assert seen == [1]


def test_pieces_of_a_0d_a_small_and_a_large_array():
    assert parallel.pieces_of(np.float32(2.0) * np.ones(())) == [...]
    assert parallel.pieces_of(np.ones((3, 4))) == [...]
    pieces = parallel.pieces_of(np.ones((10, 4)), budget=8)
    assert pieces == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 10)]


def test_batch_pieces_cover_the_batch_once():
    for N, per, budget in ((10, 3, 7), (5, 100, 10), (1, 1, 1), (7, 1, 100)):
        pieces = parallel.batch_pieces(N, per, budget)
        covered = [i for p in pieces for i in range(N)[p]]
        assert covered == list(range(N))
        assert all(len(range(N)[p]) * per <= budget or len(range(N)[p]) == 1 for p in pieces)
    assert parallel.batch_pieces(0, 5, 10) == [slice(0, 0)]


@pytest.mark.parametrize("make,shape", [
    (lambda: minidl.layers.BatchNorm2d(6), (40, 6, 33, 35)),
    (lambda: minidl.layers.BatchNorm1d(7), (60000, 7)),
    (lambda: minidl.layers.Conv2d(6, 5, 3, padding=1, rng=minidl.default_rng(0)), (40, 6, 30, 30)),
    (lambda: minidl.layers.MaxPool2d(2), (40, 6, 33, 35)),
    (lambda: minidl.layers.MaxPool2d(3, 2), (40, 6, 33, 35)),  # overlapping windows
    (lambda: minidl.layers.ReLU(), (40, 6, 33, 35)),
    (lambda: minidl.layers.Conv2d(4, 8, 3, stride=2, padding=1, rng=minidl.default_rng(0)),
     (40, 4, 31, 30)),
])
def test_layers_give_the_same_bits_with_one_and_two_threads(make, shape):
    """Large enough for several pieces; sums over pieces are added in order. (Whether the
    pieces compute the right thing is for the twin tests in test_fast_paths.py, with many
    pieces; this checks that running them in threads changes no bit.)"""
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal(shape) + 3).astype(np.float32)
    results = []
    for threads in (1, 2):
        layer = make()
        with threadpool_limits(threads):
            out = layer.forward(x)
            dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
            dx = layer.backward(dout)
        results.append([out, dx] + [layer.grads[k] for k in sorted(layer.grads)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_linear_shares_its_products_and_agrees_with_one_thread():
    """Linear splits rows of the batch (out, dx) and rows of W (dW) over the threads; each
    piece is one BLAS product, so the numbers agree with the whole product up to BLAS's
    own rounding order."""
    from minidl.layers import Linear
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 200)).astype(np.float32)
    dout = rng.standard_normal((301, 150)).astype(np.float32)
    results = []
    for threads in (1, 2):
        layer = Linear(200, 150, rng=minidl.default_rng(0))
        with threadpool_limits(threads):
            out = layer.forward(x)
            dx = layer.backward(dout)
        results.append((out, dx, layer.grads["W"], layer.grads["b"]))
    W = np.asarray(layer.params["W"], dtype=np.float64)
    np.testing.assert_allclose(results[0][0], x.astype(np.float64) @ W.T + layer.params["b"],
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_runs_pieces_with_a_pool_of_its_own():
    import os
    import time
    import warnings
    with threadpool_limits(2):
        assert parallel.map_pieces(lambda i: i, range(4)) == [0, 1, 2, 3]  # pool made
        with warnings.catch_warnings():  # Python >= 3.12 warns about fork with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: would wait forever on the parent's (absent) threads
            ok = parallel.map_pieces(lambda i: i + 1, range(4)) == [1, 2, 3, 4]
            os._exit(0 if ok else 1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in map_pieces")
    assert os.waitstatus_to_exitcode(status) == 0


def _conv(C, F, kernel, **kw):
    return lambda: minidl.layers.Conv2d(C, F, kernel, rng=minidl.default_rng(0), **kw)


# every layer whose passes run in minidl.parallel's pieces, on every route it has
PIECE_LAYERS = {
    "conv F>C": (_conv(3, 5, 3, padding=1), (9, 3, 7, 6)),
    "conv F<=C (flipped kernel)": (_conv(5, 3, 3, padding=1), (9, 5, 7, 6)),
    "conv stride 2": (_conv(4, 6, 3, stride=2, padding=1), (9, 4, 7, 9)),
    "conv padding > kernel - 1": (_conv(5, 3, 2, padding=2), (9, 5, 5, 4)),
    "batchnorm2d": (lambda: minidl.layers.BatchNorm2d(4), (9, 4, 5, 3)),
    "batchnorm2d eval": (lambda: minidl.layers.BatchNorm2d(4).eval(), (9, 4, 5, 3)),
    "batchnorm1d": (lambda: minidl.layers.BatchNorm1d(6), (37, 6)),
    "batchnorm1d (N, C, L)": (lambda: minidl.layers.BatchNorm1d(3), (11, 3, 7)),
    "relu": (lambda: minidl.layers.ReLU(), (9, 4, 5, 3)),
    "maxpool2d": (lambda: minidl.layers.MaxPool2d(2), (9, 4, 7, 5)),
    "maxpool2d overlapping": (lambda: minidl.layers.MaxPool2d(3, 2), (9, 4, 7, 9)),
    "linear": (lambda: minidl.layers.Linear(37, 23, rng=minidl.default_rng(0)), (41, 37)),
}


def _passes(make, shape, dtype, threads):
    """Every array forward, backward, jvp and backward_rop give, at ``threads`` threads."""
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal(shape) + 3).astype(dtype)
    layer = make().astype(dtype)
    with threadpool_limits(threads):
        out = layer.forward(x)
        results = [out, layer.backward(rng.standard_normal(out.shape).astype(dtype))]
        results += [layer.grads[k].copy() for k in sorted(layer.grads)]
        if layer.params:
            layer.Rparams = {k: rng.standard_normal(v.shape).astype(dtype)
                             for k, v in layer.params.items()}
        results.append(layer.jvp(rng.standard_normal(x.shape).astype(dtype)))
        results.append(layer.backward_rop(rng.standard_normal(out.shape).astype(dtype)))
        results += [layer.Rgrads[k] for k in sorted(layer.Rgrads)]
    return results


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(PIECE_LAYERS))
def test_every_layer_in_pieces_gives_the_same_bits_every_run(monkeypatch, name, dtype):
    """What minidl.parallel promises, layer by layer, with budgets small enough for many
    pieces (conv chunks of one to four examples, BatchNorm/ReLU/MaxPool pieces of two):
    repeated runs give the same bits at a given thread count, and, where the pieces are
    sized in values (all but Linear, whose row blocks follow the thread count), the same
    bits at 1 and 2 threads."""
    from minidl.layers import conv
    monkeypatch.setattr(conv, "CHUNK_VALUES", 3500)
    monkeypatch.setattr(parallel, "PIECE_VALUES", 130)
    make, shape = PIECE_LAYERS[name]
    runs = {1: [], 2: []}
    for threads in (1, 2, 1, 2, 2, 1):
        runs[threads].append(_passes(make, shape, dtype, threads))
    for threads, results in runs.items():
        for again in results[1:]:
            for i, (a, b) in enumerate(zip(results[0], again)):
                np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads, array {i}")
    for i, (a, b) in enumerate(zip(runs[1][0], runs[2][0])):
        if name == "linear":  # the same sums in blocks of other sizes: BLAS's rounding
            np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == "float32" else 1e-13,
                                       atol=1e-5 if dtype == "float32" else 1e-13)
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"1 against 2 threads, array {i}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("N,out_features,bias", [(1, 5, True), (2, 1, False), (7, 3, True),
                                                 (0, 3, True)])
def test_linear_row_blocks_equal_the_plain_products(N, out_features, bias, threads, dtype):
    """Linear's row blocks (``parallel.split``) against the three products written out,
    where the blocks are awkward: fewer rows than threads, one output, an odd batch, an
    empty batch."""
    from minidl.layers import Linear
    rng = np.random.default_rng(13)
    layer = Linear(4, out_features, bias=bias, rng=minidl.default_rng(0)).astype(dtype)
    x = rng.standard_normal((N, 4)).astype(dtype)
    dout = rng.standard_normal((N, out_features)).astype(dtype)
    with threadpool_limits(threads):
        out = layer.forward(x)
        dx = layer.backward(dout)
    W = layer.params["W"].astype(np.float64)
    x64, dout64 = x.astype(np.float64), dout.astype(np.float64)
    expected = {"out": x64 @ W.T + (layer.params["b"] if bias else 0), "dx": dout64 @ W,
                "dW": dout64.T @ x64}
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-5, atol=1e-5)
    for name, value in (("out", out), ("dx", dx), ("dW", layer.grads["W"])):
        assert value.dtype == np.dtype(dtype) and value.shape == expected[name].shape, name
        np.testing.assert_allclose(value, expected[name], err_msg=name, **tol)
