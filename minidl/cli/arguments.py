"""The argument parser of ``minidl`` and the checks of its values.

Every check here runs before any data is read or any model trained. A bad value raises
``UsageError`` with one line saying what is wrong and what would be right; ``main`` prints
it and exits with status 2, as argparse does for its own errors.
"""
import argparse
import os
import textwrap

from .. import backend
from ..methods import DEFAULT_COMPARE, METHODS, get_method

__all__ = ["UsageError", "EXIT_USAGE", "DEFAULT_THREADS", "build_parser", "check_common",
           "check_method", "check_lr", "parse_lrs", "parse_options", "parse_value",
           "refuse_unknown_options"]

EXIT_USAGE = 2
# BLAS threads: the default models are small (matrices of a few hundred columns), so extra
# threads gain little, and on a machine whose cores are busy they cost a great deal
DEFAULT_THREADS = 1


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
def _add_common(p):
    from ..data import DATASETS
    from ..models import MODELS
    model = p.add_argument_group("model")
    model.add_argument("--model", default="mlp", metavar="NAME",
                       help=f"network: {', '.join(MODELS)}")
    model.add_argument("--hidden", type=int, nargs="+", default=None, metavar="N",
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
    run.add_argument("--epochs", type=int, default=5, help="number of epochs")
    run.add_argument("--batch-size", type=int, default=128, metavar="B",
                     help="examples per mini-batch")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the initial weights, the data subset and the batch order")
    run.add_argument("--backend", choices=("numpy", "cupy"), default=backend.get_backend(),
                     help="array library: numpy (CPU) or cupy (NVIDIA GPU)")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="floating-point precision of weights and data")
    run.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                     help="threads for the CPU backend, set with threadpoolctl: BLAS's, "
                          "and the layers' own pieces of work (minidl.parallel) "
                          f"(default: {DEFAULT_THREADS}, which suits the small default models "
                          "and a shared machine, where threads beyond the free cores stall "
                          "each other; try more on a machine of your own with a large model)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (tqdm) on standard error (default: only on a "
                          "terminal)")
    run.add_argument("--out", metavar="DIR", default=None,
                     help="output folder, new or empty; an existing run folder is refused "
                          "rather than mixed (default: a new runs/<command>-<date>-<time>, "
                          "printed at the end)")
    run.add_argument("--quiet", action="store_true", help="print only the final results")

    method = p.add_argument_group("method settings")
    method.add_argument("--optim-opt", action="append", default=[], metavar="[M:]KEY=VALUE",
                        help="optimizer setting, e.g. momentum=0.8 or weight_decay=1e-4 "
                             "(int, float, true/false or text); repeatable; 'M:' limits it "
                             "to method M in compare")
    method.add_argument("--precond-opt", action="append", default=[],
                        metavar="[M:]KEY=VALUE",
                        help="preconditioner setting, e.g. damping=0.01 or T2=50; repeatable; "
                             "in compare it applies to the methods with a preconditioner "
                             "(or to method M with 'M:')")


def build_parser():
    """The argument parser of ``minidl`` with its ``train``, ``compare`` and ``assign``
    subcommands."""
    parser = _Parser(prog="minidl", formatter_class=_HelpFormatter,
                     description=_wrap("minidl: train a network, compare training methods "
                                       "on one network, or release and grade the course's "
                                       "assignments. 'minidl compare' with no arguments "
                                       "compares five methods on the bundled MNIST digits "
                                       "(11 s on an idle 2-core CPU; 50-57 s on one shared "
                                       "with other jobs)."))
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,assign}")

    train = sub.add_parser(
        "train", formatter_class=_HelpFormatter, help="train one model with one method",
        description=_wrap("Train one model with one method; print one line per epoch, write "
                          "the history (JSON) and curves (PNG) to the output folder, "
                          "optionally a checkpoint after every epoch."),
        epilog=_methods_epilog())
    _add_common(train)
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
    opt.add_argument("--restore-best", action="store_true",
                     help="end with the weights of the epoch with the lowest test loss")
    opt.add_argument("--checkpoint", metavar="PATH", default=None,
                     help="write a checkpoint (.npz) here after every epoch")
    opt.add_argument("--resume", metavar="PATH", default=None,
                     help="continue from this checkpoint (same method and method settings, "
                          "--lr included, same model and data options, --limit and --seed "
                          "included; --epochs counts the epochs already done)")

    compare = sub.add_parser(
        "compare", formatter_class=_HelpFormatter,
        help="train one model with several methods and compare them",
        description=_wrap("Train one model with several methods, on the same data, from the "
                          "same initial weights and with the same batch order; print a table "
                          "and save the curves (loss against epochs and against seconds) and "
                          "histories. With the defaults (an MLP 784-100-100-10, 10,000 "
                          "bundled MNIST digits, 5 epochs, five methods, one BLAS thread) it "
                          "took 50-57 s from start to finish (KFAC 32-34 s of it) in three runs "
                          "on a 2-core CPU shared with about eight busy jobs, using 15 s of "
                          "CPU time (idle, the same CPU took 11 s from start to finish); "
                          "--methods kflr kfra shampoo mbf add slower methods."),
        epilog=_methods_epilog())
    _add_common(compare)
    comp = compare.add_argument_group("methods")
    comp.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                      help="methods to compare (space- or comma-separated); default: "
                           f"{' '.join(DEFAULT_COMPARE)} (those available)")
    comp.add_argument("--lr", action="append", default=[], metavar="[NAME=]LR",
                      help="learning rate for every method (--lr 0.01) or one method "
                           "(--lr adam=3e-4); repeatable; default: each method's own")

    sub.add_parser("assign", add_help=False,
                   help="release and grade assignments (minidl assign --help)")
    parser.commands = {"train": train, "compare": compare}  # for refuse_unknown_options
    return parser


def refuse_unknown_options(parser, command, extra):
    """Exit with status 2 naming options ``command`` does not take, as its own parser
    would (argparse leaves them to the top parser: 'minidl: error: ...'), and the other
    command when it is theirs (``--early-stopping`` given to ``compare``)."""
    sub = parser.commands.get(command)
    if sub is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    hint = ""
    for option in (e.split("=")[0] for e in extra if e.startswith("--")):
        owners = [name for name, other in parser.commands.items()
                  if name != command and option in other._option_string_actions]
        if owners:
            hint = f"{option} is an option of 'minidl {owners[0]}'; "
            break
    sub.exit(EXIT_USAGE, f"{sub.prog}: error: unrecognized arguments: {' '.join(extra)} "
                         f"({hint}see '{sub.prog} --help')\n")


# -- checking values -------------------------------------------------------------------------
def _suggest(name, names):
    from ..methods import did_you_mean
    return did_you_mean(name, names)


def check_common(args):
    """Model, data set, numbers and folders of the options both commands share."""
    from ..data import DATASETS
    from ..models import MODELS
    if args.model.lower() not in MODELS:
        raise UsageError(f"unknown model {args.model!r}{_suggest(args.model, MODELS)}; "
                         f"choose from {', '.join(MODELS)}")
    args.model = args.model.lower()
    key = args.data.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise UsageError(f"unknown data set {args.data!r}{_suggest(key, DATASETS)}; choose "
                         f"from {', '.join(DATASETS)}")
    args.data = key
    for name, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--limit", args.limit), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value}")
    if args.seed < 0:  # numpy's generators take seeds >= 0 only
        raise UsageError(f"--seed must be an integer >= 0, got {args.seed}")
    if args.hidden is None:
        args.hidden = [100, 100]
    elif args.model != "mlp":  # it used to be ignored without a word
        raise UsageError(f"--hidden sets the hidden widths of --model mlp only; --model "
                         f"{args.model} has its own, so leave --hidden out")
    if any(h < 1 for h in args.hidden):
        raise UsageError(f"--hidden widths must be >= 1, got {args.hidden}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir!r} is not a folder; give the folder "
                         "that holds mnist/, fashion-mnist/, ... (or leave it out to use "
                         "the bundled mnist-small)")


def check_lr(value, where):
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"{where} must be a positive number, e.g. 0.01, got {value}")


def check_method(name):
    """The method's canonical name; an unknown or unavailable one is a ``UsageError``."""
    try:
        return get_method(name).name
    except ValueError as err:
        raise UsageError(str(err)) from None


def parse_lrs(entries, methods):
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
            name = check_method(name)
            if name not in methods:
                raise UsageError(f"--lr {entry}: method {name!r} is not among --methods "
                                 f"({', '.join(methods)})")
            check_lr(lr, f"--lr {name}=")
            per_method[name] = lr
        else:
            check_lr(lr, "--lr")
            common = lr
    return {m: per_method.get(m, common) for m in methods}


def parse_value(text):
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"true"`` -> True, anything else stays text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(entries, flag, methods):
    """``[METHOD:]KEY=VALUE`` entries -> ``{method or None: {key: value}}``.

    Args:
        entries: the strings given to ``flag``.
        flag: ``"--optim-opt"`` or ``"--precond-opt"`` (for messages).
        methods: the methods of this run; a ``METHOD:`` prefix must name one of them.
    """
    out = {}
    for entry in entries:
        target, colon, setting = entry.partition(":")
        if not colon:
            target, setting = None, entry
        key, eq, value = setting.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise UsageError(f"{flag} expects KEY=VALUE (e.g. {flag} damping=0.01), "
                             f"got {entry!r}")
        if target is not None:
            target = check_method(target)
            if target not in methods:
                raise UsageError(f"{flag} {entry}: method {target!r} is not among the "
                                 f"methods of this run ({', '.join(methods)})")
        out.setdefault(target, {})[key] = parse_value(value)
    return out
