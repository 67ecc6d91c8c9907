"""The ``minidl`` command (also ``python -m minidl``): train one model, or compare methods.

::

    minidl compare                          # SGD, momentum, Adam (and K-FAC when present)
                                            # on the bundled MNIST subset, about a minute
    minidl compare --methods adam kfac --epochs 10 --lr adam=3e-4
    minidl train --model cnn5 --method momentum --epochs 3 --checkpoint run.npz
    minidl train --resume run.npz --epochs 6  # continue the same run to epoch 6

``compare`` trains one model with several methods on the same data, from the same initial
weights and with the same order of mini-batches, then prints a table (final training
loss, test loss and accuracy, seconds per epoch) and writes into its output folder:
``curves.png`` (loss against epochs and against seconds, test accuracy), one history JSON
per method in ``histories/``, and ``summary.txt`` / ``summary.json``.

Methods (optimizer + optional preconditioner + default learning rate) come from the table
in ``minidl.methods``. Bad arguments print one line saying what is wrong and what would be
right, and exit with status 2, as argparse does for its own errors.
"""
import argparse
import difflib
import json
import os
import sys
import textwrap
import time

from . import backend
from .methods import DEFAULT_COMPARE, METHODS, get_method

__all__ = ["main", "build_parser", "UsageError"]

EXIT_USAGE = 2
# the command line validates on the test split, so its curves say so
_TEST_LABELS = {"val_loss": "test loss", "val_accuracy": "test accuracy"}


class UsageError(Exception):
    """A bad command-line argument; the message says what would be right."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``minidl compare: error: ... (see --help)``, status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the method list's line breaks; appends "(default: X)" where the help lacks it."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == []
        if "default" in text or empty or action.default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def _wrap(text):
    return textwrap.fill(text, width=100)


def _methods_epilog():
    lines = ["methods (name: what it is, default learning rate):"]
    for m in METHODS.values():
        lines.append(f"  {m.name:<10} {m.note} (lr {m.lr:g})")
    return "\n".join(lines)


# -- the parser ----------------------------------------------------------------------------
def _add_common(p, epochs):
    from .data import DATASETS
    from .models import MODELS
    model = p.add_argument_group("model")
    model.add_argument("--model", default="mlp", metavar="NAME",
                       help=f"network: {', '.join(MODELS)}")
    model.add_argument("--hidden", type=int, nargs="+", default=[100, 100], metavar="N",
                       help="hidden widths of --model mlp (default: 100 100)")
    model.add_argument("--batchnorm", action="store_true",
                       help="add BatchNorm after the hidden layers / convolutions")

    data = p.add_argument_group("data")
    data.add_argument("--data", default="mnist-small", metavar="NAME",
                      help=f"data set: {', '.join(DATASETS)}; mnist-small is the 10,000-image "
                           "MNIST subset bundled with minidl (works offline)")
    data.add_argument("--data-dir", metavar="DIR", default=None,
                      help="folder holding the data set files (mnist/, fashion-mnist/, ...); "
                           "default: the MINIDL_DATA environment variable, then the cache")
    data.add_argument("--download", action="store_true",
                      help="download missing data set files from the authors' mirrors")
    data.add_argument("--limit", type=int, default=None, metavar="N",
                      help="use a random subset of N training and at most N test examples")

    run = p.add_argument_group("training")
    run.add_argument("--epochs", type=int, default=epochs, help="number of epochs")
    run.add_argument("--batch-size", type=int, default=128, metavar="B",
                     help="examples per mini-batch")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the initial weights, the data subset and the batch order")
    run.add_argument("--backend", choices=("numpy", "cupy"), default=backend.get_backend(),
                     help="array library: numpy (CPU) or cupy (NVIDIA GPU)")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="floating-point precision of weights and data")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on standard error (default: only on a terminal)")
    run.add_argument("--out", metavar="DIR", default=None,
                     help="output folder (default: runs/<command>-<date>-<time>, printed at "
                          "the end)")
    run.add_argument("--quiet", action="store_true", help="print only the final results")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="BLAS threads for the CPU backend (needs the threadpoolctl package; "
                          "or set OPENBLAS_NUM_THREADS=N before starting). On a busy machine "
                          "1 can be many times faster than the default of one per core")


def build_parser():
    """The argument parser of ``minidl`` with its ``train`` and ``compare`` subcommands."""
    parser = _Parser(prog="minidl", formatter_class=_HelpFormatter,
                     description=_wrap("minidl: train a network, or compare training methods on "
                                       "one network. Run 'minidl compare' with no arguments "
                                       "for a one-minute demonstration on bundled MNIST "
                                       "digits."))
    sub = parser.add_subparsers(dest="command", metavar="{train,compare}")

    train = sub.add_parser(
        "train", formatter_class=_HelpFormatter, help="train one model with one method",
        description=_wrap("Train one model with one method; print one line per epoch, write "
                          "the history (JSON) and curves (PNG) to the output folder, "
                          "optionally a checkpoint after every epoch."),
        epilog=_methods_epilog())
    _add_common(train, epochs=5)
    opt = train.add_argument_group("method")
    opt.add_argument("--method", default="adam", metavar="NAME",
                     help=f"training method: {', '.join(METHODS)}")
    opt.add_argument("--lr", type=float, default=None,
                     help="learning rate (default: the method's, listed below)")
    opt.add_argument("--weight-decay", type=float, default=None, metavar="WD",
                     help="L2 weight decay of the optimizer (default: the method's)")
    opt.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                     help="learning-rate schedule: constant, or cosine decay to 0 over the run")
    opt.add_argument("--early-stopping", type=int, default=None, metavar="P",
                     help="stop when the test loss has not improved for P epochs")
    opt.add_argument("--checkpoint", metavar="PATH", default=None,
                     help="write a checkpoint (.npz) here after every epoch")
    opt.add_argument("--resume", metavar="PATH", default=None,
                     help="continue from this checkpoint (same model and method options)")
    train.set_defaults(func=cmd_train)

    compare = sub.add_parser(
        "compare", formatter_class=_HelpFormatter,
        help="train one model with several methods and compare them",
        description=_wrap("Train one model with several methods, on the same data, from the "
                          "same initial weights and with the same batch order; print a table "
                          "and save the curves (loss against epochs and against seconds) and "
                          "histories."),
        epilog=_methods_epilog())
    _add_common(compare, epochs=5)
    comp = compare.add_argument_group("methods")
    comp.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                      help="methods to compare (space- or comma-separated); default: "
                           f"{' '.join(DEFAULT_COMPARE)} (those available)")
    comp.add_argument("--lr", action="append", default=[], metavar="[NAME=]LR",
                      help="learning rate for every method (--lr 0.01) or one method "
                           "(--lr adam=3e-4); repeatable; default: each method's own")
    compare.set_defaults(func=cmd_compare)
    return parser


# -- checking arguments --------------------------------------------------------------------
def _suggest(name, names):
    close = difflib.get_close_matches(str(name).lower(), list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_common(args):
    from .data import DATASETS
    from .models import MODELS
    if args.model.lower() not in MODELS:
        raise UsageError(f"unknown model {args.model!r}{_suggest(args.model, MODELS)}; "
                         f"choose from {', '.join(MODELS)}")
    key = args.data.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise UsageError(f"unknown data set {args.data!r}{_suggest(key, DATASETS)}; choose "
                         f"from {', '.join(DATASETS)}")
    args.data = key
    for name, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--limit", args.limit, 1)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be an integer >= {low}, got {value}")
    if any(h < 1 for h in args.hidden):
        raise UsageError(f"--hidden widths must be >= 1, got {args.hidden}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir!r} is not a folder; give the folder "
                         "that holds mnist/, fashion-mnist/, ... (or leave it out to use "
                         "the bundled mnist-small)")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is a file; give a folder for the results")


def _check_lr(value, where):
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"{where} must be a positive number, e.g. 0.01, got {value}")


def _check_method(name):
    try:
        return get_method(name).name
    except ValueError as err:
        raise UsageError(str(err)) from None


def _parse_lrs(entries, methods):
    """``--lr`` values: one for all methods, or ``name=value`` for one."""
    common, per_method = None, {}
    for entry in entries:
        name, sep, value = entry.rpartition("=")
        try:
            lr = float(value)
        except ValueError:
            raise UsageError(f"--lr expects a number or NAME=NUMBER (e.g. --lr adam=3e-4), "
                             f"got {entry!r}") from None
        if sep:
            name = _check_method(name)
            if name not in methods:
                raise UsageError(f"--lr {entry}: method {name!r} is not among --methods "
                                 f"({', '.join(methods)})")
            _check_lr(lr, f"--lr {name}=")
            per_method[name] = lr
        else:
            _check_lr(lr, "--lr")
            common = lr
    return {m: per_method.get(m, common) for m in methods}


# -- data and setup ------------------------------------------------------------------------
def _setup_backend(args):
    try:
        backend.set_backend(args.backend)
    except backend.BackendError as err:
        raise UsageError(f"--backend {args.backend}: {err}") from None
    backend.set_default_dtype(args.dtype)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be an integer >= 1, got {args.threads}")
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            raise UsageError("--threads needs the threadpoolctl package (pip install "
                             "threadpoolctl); or set OPENBLAS_NUM_THREADS=N (also "
                             "OMP_NUM_THREADS, MKL_NUM_THREADS) before starting") from None
        threadpool_limits(limits=args.threads, user_api="blas")  # for the rest of the process


def _load_data(args):
    """Normalised train and test arrays (host), a random subset with --limit."""
    from . import data
    if args.data_dir is not None:
        os.environ["MINIDL_DATA"] = os.path.abspath(args.data_dir)
    kw = {} if args.data == "mnist-small" else {"download": args.download}
    try:
        x, y = data.load(args.data, "train", **kw)
        x_test, y_test = data.load(args.data, "test", **kw)
    except data.DataNotFoundError as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"data set {args.data!r} not found ({first}); put its files under "
                         "--data-dir DIR (or MINIDL_DATA), add --download, or use --data "
                         "mnist-small") from None
    if args.limit is not None:
        rng = backend.default_rng(args.seed)
        keep = rng.permutation(x.shape[0])[:args.limit]  # (limit,)
        x, y = x[keep], y[keep]
        keep = rng.permutation(x_test.shape[0])[:args.limit]  # (<= limit,)
        x_test, y_test = x_test[keep], y_test[keep]
    x = data.normalise(x)            # (N, C, H, W) floats in [0, 1]
    x_test = data.normalise(x_test)  # (N_test, C, H, W)
    return x, y, x_test, y_test


def _problem(args, x, y, x_test, y_test):
    """Targets, loss, and a function making the (same) initial model from the seed."""
    from . import models
    from .losses import SoftmaxCrossEntropy
    name = args.model.lower()
    kw = {"batchnorm": True} if args.batchnorm else {}
    if name == "mlp":
        kw["hidden"] = tuple(args.hidden)
    if name.startswith("autoencoder"):
        y = x.reshape(x.shape[0], -1)                      # (N, C*H*W): reconstruct the input
        y_test = x_test.reshape(x_test.shape[0], -1)       # (N_test, C*H*W)
        loss = models.autoencoder_loss(name.split("-", 1)[1])
    else:
        loss = SoftmaxCrossEntropy()
    num_classes = int(max(y.max(), y_test.max())) + 1 if y.ndim == 1 else 0

    def make_model():
        try:
            return models.get_model(name, x.shape[1:], num_classes,
                                    rng=backend.default_rng(args.seed), **kw)
        except ValueError as err:
            raise UsageError(f"--model {name}: {err}") from None
    make_model()  # check now that the model fits the data, before any training
    return y, y_test, loss, make_model


def _loaders(args, x, y, x_test, y_test):
    from .data import DataLoader
    train = DataLoader(x, y, args.batch_size, shuffle=True,
                       rng=backend.default_rng(args.seed + 1))
    test = DataLoader(x_test, y_test, 1000, shuffle=False)
    return train, test


def _out_dir(args):
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
        return args.out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{args.command}-{stamp}")
    path, i = base, 2
    while os.path.exists(path):
        path, i = f"{base}-{i}", i + 1
    os.makedirs(path)
    return path


def _say(args, text):
    if not args.quiet:
        print(text, flush=True)


# -- the table -----------------------------------------------------------------------------
def _row(name, lr, history, error=None):
    last = history.last if history is not None else {}
    epochs = len(history) if history is not None else 0
    per_epoch = last.get("time", float("nan")) / epochs if epochs else float("nan")
    status = error or (history.stop_reason.split(":")[0] if history and history.stop_reason
                       else "ok")
    return {"method": name, "lr": lr, "epochs": epochs,
            "train_loss": last.get("train_loss", float("nan")),
            "test_loss": last.get("val_loss", float("nan")),
            "test_accuracy": last.get("val_accuracy", float("nan")),
            "seconds_per_epoch": per_epoch, "seconds": last.get("time", float("nan")),
            "status": status}


def format_table(rows):
    """The comparison table as text, one method per line."""
    head = (f"{'method':<10} {'lr':>8} {'epochs':>6} {'train loss':>10} {'test loss':>10} "
            f"{'test acc':>8} {'s/epoch':>8} {'total s':>8}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = r["test_accuracy"]
        acc_text = f"{100 * acc:7.2f}%" if acc == acc else f"{'-':>8}"
        lines.append(f"{r['method']:<10} {r['lr']:>8.3g} {r['epochs']:>6d} "
                     f"{r['train_loss']:>10.4f} {r['test_loss']:>10.4f} {acc_text} "
                     f"{r['seconds_per_epoch']:>8.2f} {r['seconds']:>8.1f}  {r['status']}")
    return "\n".join(lines)


def _json_rows(rows):
    def clean(v):
        return None if isinstance(v, float) and v != v else v
    return [{k: clean(v) for k, v in r.items()} for r in rows]


# -- the commands --------------------------------------------------------------------------
def cmd_compare(args):
    """``minidl compare``: every method from the same weights and batches; table and plots."""
    from . import methods as methods_module, plots
    from .train import fit
    names = args.methods
    if names is None:
        names = [m for m in DEFAULT_COMPARE if methods_module.is_available(m)]
    else:
        names = [n for entry in names for n in entry.split(",") if n.strip()]
        names = [_check_method(n) for n in names]
        if len(set(names)) != len(names):
            raise UsageError(f"--methods lists a method twice: {' '.join(names)}")
    lrs = _parse_lrs(args.lr, names)
    _check_common(args)
    _setup_backend(args)
    x, y, x_test, y_test = _load_data(args)
    y, y_test, loss, make_model = _problem(args, x, y, x_test, y_test)
    out = _out_dir(args)
    _say(args, f"minidl compare: {args.model} on {args.data} ({x.shape[0]} training, "
               f"{x_test.shape[0]} test examples), {args.epochs} epochs, batch "
               f"{args.batch_size}, backend {args.backend}, {args.dtype}")
    histories, rows = {}, []
    for name in names:
        model = make_model()  # the same initial weights for every method (same seed)
        lr = lrs[name] if lrs[name] is not None else METHODS[name].lr
        _say(args, f"\n== {name} (lr {lr:g}) ==")
        train_loader, test_loader = _loaders(args, x, y, x_test, y_test)
        try:
            optimizer, precond = methods_module.build(name, model, loss, lr=lr,
                                                      rng=backend.default_rng(args.seed + 2))
            history = fit(model, loss, optimizer, train_loader, epochs=args.epochs,
                          precond=precond, val_loader=test_loader, progress=args.progress,
                          log_every=0 if args.quiet else None,
                          meta={"label": name, "method": name, "lr": lr, "model": args.model,
                                "data": args.data, "batch_size": args.batch_size,
                                "seed": args.seed})
        except (ValueError, RuntimeError, FloatingPointError, MemoryError) as err:
            print(f"minidl compare: method {name} failed: {type(err).__name__}: {err}",
                  file=sys.stderr)
            rows.append(_row(name, lr, None, error="failed"))
            continue
        histories[name] = history
        history.to_json(os.path.join(out, "histories", f"{name}.json"))
        rows.append(_row(name, lr, history))
    table = format_table(rows)
    print("\n" + table)
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "func"},
                   "results": _json_rows(rows)}, f, indent=1)
    if histories:
        keys = ("train_loss", "val_accuracy") if "val_accuracy" in \
            next(iter(histories.values())).keys() else ("train_loss", "val_loss")
        plots.plot_histories(histories, os.path.join(out, "curves.png"), keys=keys,
                             title=f"{args.model} on {args.data}, batch {args.batch_size}",
                             ylabels=_TEST_LABELS)
    print(f"\nresults in {out}/: summary.txt, summary.json, curves.png, histories/*.json")
    return 0 if histories else 1


def cmd_train(args):
    """``minidl train``: one model, one method; history, curves and checkpoints."""
    from . import methods as methods_module, plots
    from .optim import Cosine
    from .train import fit
    name = _check_method(args.method)
    if args.lr is not None:
        _check_lr(args.lr, "--lr")
    if args.weight_decay is not None and not args.weight_decay >= 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.early_stopping is not None and args.early_stopping < 1:
        raise UsageError(f"--early-stopping must be an integer >= 1, got {args.early_stopping}")
    if args.resume is not None and not os.path.isfile(args.resume):
        raise UsageError(f"--resume {args.resume!r}: no such file; give a checkpoint written "
                         "by --checkpoint")
    _check_common(args)
    _setup_backend(args)
    x, y, x_test, y_test = _load_data(args)
    y, y_test, loss, make_model = _problem(args, x, y, x_test, y_test)
    model = make_model()
    lr = args.lr if args.lr is not None else METHODS[name].lr
    overrides = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    optimizer, precond = methods_module.build(name, model, loss, lr=lr,
                                              rng=backend.default_rng(args.seed + 2),
                                              **overrides)
    train_loader, test_loader = _loaders(args, x, y, x_test, y_test)
    schedule = None
    if args.schedule == "cosine":
        schedule = Cosine(lr, total_steps=args.epochs * len(train_loader))
    out = _out_dir(args)
    _say(args, f"minidl train: {args.model} ({model.num_params():,} parameters) on "
               f"{args.data} ({x.shape[0]} training examples) with {name}, lr {lr:g}")
    from .checkpoint import CheckpointError
    try:
        history = fit(model, loss, optimizer, train_loader, epochs=args.epochs,
                      precond=precond, val_loader=test_loader, schedule=schedule,
                      early_stopping=args.early_stopping, progress=args.progress,
                      checkpoint=args.checkpoint, resume=args.resume,
                      log_every=0 if args.quiet else None,
                      meta={"label": name, "method": name, "lr": lr, "model": args.model,
                            "data": args.data, "batch_size": args.batch_size,
                            "seed": args.seed})
    except CheckpointError as err:
        raise UsageError(f"--resume: {err}") from None
    history.to_json(os.path.join(out, "history.json"))
    keys = ("train_loss", "val_accuracy") if "val_accuracy" in history.keys() \
        else ("train_loss", "val_loss")
    plots.plot_histories({name: history}, os.path.join(out, "curves.png"), keys=keys,
                         ylabels=_TEST_LABELS)
    print(("" if args.quiet else "\n") + format_table([_row(name, lr, history)]))
    print(f"\nresults in {out}/: history.json, curves.png"
          + (f"; checkpoint {args.checkpoint}" if args.checkpoint else ""))
    return 0


def main(argv=None):
    """Run the command line; returns the exit status (2 for bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or an argparse error (2): return, not raise
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as err:
        print(f"minidl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"minidl {args.command}: interrupted", file=sys.stderr)
        return 130
