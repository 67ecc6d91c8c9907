"""Setting up and running the training: backend and BLAS threads, the output folder, the
method's optimizer and preconditioner, checkpoints, and the call to ``minidl.train.fit``.

Everything that can be refused is checked before the first epoch: an output folder or
checkpoint that cannot be written, a folder that already holds a run, method settings the
optimizer or preconditioner does not take, and a checkpoint to resume that was written
for another method, other method settings, model or data, or that has already done the
epochs asked for.
"""
import contextlib
import os
import time

from .. import backend
from .arguments import UsageError

__all__ = ["backend_and_threads", "output_folder", "build_method", "check_checkpoint",
           "check_resume", "run_fit"]


@contextlib.contextmanager
def backend_and_threads(args):
    """The chosen backend and dtype, and at most ``--threads`` BLAS threads inside."""
    from threadpoolctl import threadpool_limits
    try:
        backend.set_backend(args.backend)
    except backend.BackendError as err:
        raise UsageError(f"--backend {args.backend}: {err}") from None
    backend.set_default_dtype(args.dtype)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        yield


def _check_writable_folder(path, flag):
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".minidl-write-test")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"{flag} {path!r} cannot be written: {err.strerror or err}") from None


def output_folder(args):
    """The run's folder, made and checked writable now; an existing non-empty one is
    refused, so files of two runs are never mixed."""
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join("runs", f"{args.command}-{stamp}")
        path, i = base, 2
        while os.path.exists(path):
            path, i = f"{base}-{i}", i + 1
        _check_writable_folder(path, "the output folder")
        return path
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is a file; give a folder for the results")
    if os.path.isdir(args.out) and os.listdir(args.out):
        held = ", ".join(sorted(os.listdir(args.out))[:4])
        raise UsageError(f"--out {args.out!r} already holds files ({held}, ...); give a new "
                         "or empty folder (or leave --out out for a fresh runs/... folder), "
                         "so that the results of two runs are not mixed")
    _check_writable_folder(args.out, "--out")
    return args.out


def build_method(name, model, loss, lr, seed, optimizer_kw=None, precond_kw=None):
    """``methods.build`` with its refusals (unknown settings) as one-line usage errors."""
    from .. import methods
    try:
        return methods.build(name, model, loss, lr=lr, rng=backend.default_rng(seed + 2),
                             optimizer_kw=optimizer_kw, precond_kw=precond_kw)
    except (ValueError, TypeError) as err:
        raise UsageError(f"method {name}: {err}") from None


def check_checkpoint(path):
    """``--checkpoint`` must be writable now, not only after the first epoch."""
    from ..checkpoint import CheckpointError, check_writable
    try:
        check_writable(path)
    except CheckpointError as err:
        raise UsageError(f"--checkpoint: {err}") from None


def check_resume(path, run, epochs):
    """A checkpoint to resume: readable, written with the same method, method settings,
    model and data options, and with fewer epochs done than ``epochs``.

    Args:
        path: the checkpoint file.
        run: ``{"method": ..., "lr": ..., "model": ..., ...}`` of this command (the
            ``model_options`` and the method's settings).
        epochs: the ``--epochs`` asked for.
    """
    from ..checkpoint import CheckpointError, read
    if not os.path.isfile(path):
        what = "is a folder, not a checkpoint file" if os.path.isdir(path) else "no such file"
        raise UsageError(f"--resume {path!r}: {what}; give a checkpoint written by "
                         "--checkpoint")
    try:
        ck = read(path)
    except CheckpointError as err:
        raise UsageError(f"--resume: {err}") from None
    history = ck.extra.get("history") if isinstance(ck.extra, dict) else None
    saved = ((history or {}).get("meta") or {}).get("run")
    if not isinstance(saved, dict):
        raise UsageError(f"--resume {path!r}: the checkpoint does not say which method and "
                         "model wrote it (not written by 'minidl train --checkpoint')")
    # (a key a checkpoint of an older minidl did not record is not compared)
    differ = [f"{k} {saved.get(k)!r} (now {v!r})" for k, v in run.items()
              if saved.get(k, v) != v]
    if differ:
        raise UsageError(f"--resume {path!r} was written with other settings: "
                         f"{'; '.join(differ)}; resume with the same options")
    if epochs <= ck.epoch:
        raise UsageError(f"--resume {path!r} has already done {ck.epoch} epochs; ask for "
                         f"more with --epochs N (N > {ck.epoch}; --epochs counts them all)")


def run_fit(model, loss, optimizer, precond, loaders, args, **kw):
    """``minidl.train.fit`` with the command's settings; a bad checkpoint is a usage error."""
    from .. import train
    from ..checkpoint import CheckpointError
    train_loader, test_loader = loaders
    try:
        return train.fit(model, loss, optimizer, train_loader, epochs=args.epochs,
                         precond=precond, val_loader=test_loader, progress=args.progress,
                         log_every=0 if args.quiet else None, **kw)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
