"""The ``minidl`` command (also ``python -m minidl``): train one model, or compare methods.

::

    minidl compare                          # SGD, momentum, Adam, BNP and K-FAC on the
                                            # bundled MNIST subset (see --help for timing)
    minidl compare --methods adam kfac --epochs 10 --lr adam=3e-4 --precond-opt damping=0.1
    minidl train --model cnn5 --method momentum --epochs 3 --checkpoint run.npz
    minidl train --resume run.npz --epochs 6  # continue the same run to epoch 6
    minidl assign release assignments/01_x --out build   # minidl.assign's own command line

``compare`` trains one model with several methods on the same data, from the same initial
weights and with the same order of mini-batches, then prints a table (final training
loss, test loss and accuracy, seconds per epoch, and how a method that diverged did so)
and writes into its output folder ``curves.png``, one history JSON per method in
``histories/``, and ``summary.txt`` / ``summary.json``.

One module per concern: ``arguments`` (parser and checks), ``data`` (data set, loss and
model), ``running`` (threads, folders, methods, checkpoints, ``fit``), ``output`` (table,
files, curves), ``console`` (a standard output whose failure stops nothing), and one per
command (``train_cmd``, ``compare_cmd``, ``assign_cmd``). Bad
arguments print one line saying what is wrong and what would be right, and exit with
status 2 before any training, as argparse does for its own errors.
"""
import os
import sys

from .arguments import EXIT_USAGE, UsageError, build_parser, refuse_unknown_options
from .assign_cmd import cmd_assign
from .compare_cmd import cmd_compare
from .console import guarded_stdout
from .output import format_table
from .train_cmd import cmd_train

__all__ = ["main", "build_parser", "UsageError", "format_table"]

_COMMANDS = {"train": cmd_train, "compare": cmd_compare}


def main(argv=None):
    """Run the command line; returns the exit status (2 for bad arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["assign"]:
        return _guarded("assign", lambda: cmd_assign(argv[1:]))
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            refuse_unknown_options(parser, args.command, extra)
    except SystemExit as stop:  # --help (0) or an argparse error (2): return, not raise
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return _guarded(args.command, lambda: _run(args))


def _run(args):
    try:
        return _COMMANDS[args.command](args)
    except UsageError as err:
        print(f"minidl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"minidl {args.command}: interrupted{_how_to_resume(args)}", file=sys.stderr)
        return 130


def _guarded(command, call):
    """``call()``'s exit status; a standard output that fails stops nothing (``console``),
    but is said on stderr and makes the status 1."""
    with guarded_stdout() as stdout:
        status = call()
    if stdout.error is not None:
        print(f"minidl {command}: standard output failed "
              f"({stdout.error.strerror or stdout.error}), so the rest of what it would have "
              "printed was dropped; the run went on and wrote its files", file=sys.stderr)
        return status or 1
    return status


def _how_to_resume(args):
    """What an interrupted ``minidl train`` can be continued from, or ``""``."""
    path = getattr(args, "checkpoint", None)
    if not path or not os.path.isfile(path):
        return ""
    return (f"; {path} holds the last finished epoch: continue with the same options and "
            f"--resume {path}")
