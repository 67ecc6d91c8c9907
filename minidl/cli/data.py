"""The data, the loss and the model a command trains, from its arguments.

The data folder is passed to the readers explicitly (``data_dir=``), never through the
environment. When a data set cannot be used, the reader's own message says why (a file
missing, a file whose MD5 does not match: truncated or damaged, the folders searched),
and the command repeats it on one line.
"""
from .. import backend
from .arguments import UsageError

__all__ = ["load_data", "make_problem", "make_loaders"]


def _one_line(text):
    return "; ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _why_not_found(err):
    """One line from a ``DataNotFoundError``: a rejected copy first (wrong MD5: truncated
    or damaged), else what is missing; then where it looked and what to do."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    fields = {}
    for line in lines[1:]:
        key, sep, rest = line.partition(":")
        if sep and key in ("looked in", "rejected", "download"):
            fields[key] = rest.strip()
    advice = " ".join(line for line in lines[1:] if line.startswith("Put "))
    if "rejected" in fields:
        head = (f"rejected {fields['rejected']}: a truncated or damaged copy (its MD5 is not "
                "the published one)")
    else:
        head = f"not found: {lines[0]} download: {fields.get('download', '-')}"
    return (f"{head}; looked in {fields.get('looked in', '-')}; {advice} "
            "(--data-dir DIR names the folder; --download fetches missing files)")


def load_data(args):
    """Normalised train and test arrays (host), a random subset with ``--limit``."""
    from .. import data
    kw = {} if args.data == "mnist-small" else {"download": args.download,
                                                 "data_dir": args.data_dir}
    try:
        x, y = data.load(args.data, "train", **kw)
        x_test, y_test = data.load(args.data, "test", **kw)
    except data.DataNotFoundError as err:
        raise UsageError(f"data set {args.data!r} {_why_not_found(err)}") from None
    except (ValueError, OSError, data.UnsafePickleError) as err:  # a file that does not parse
        raise UsageError(f"data set {args.data!r} cannot be read: {_one_line(err)}") from None
    if args.limit is not None:
        rng = backend.default_rng(args.seed)
        keep = rng.permutation(x.shape[0])[:args.limit]  # (limit,)
        x, y = x[keep], y[keep]
        keep = rng.permutation(x_test.shape[0])[:args.limit]  # (<= limit,)
        x_test, y_test = x_test[keep], y_test[keep]
    x = data.normalise(x)            # (N, C, H, W) floats in [0, 1]
    x_test = data.normalise(x_test)  # (N_test, C, H, W)
    return x, y, x_test, y_test


def model_options(args):
    """The options that decide the model's shape (checked again on ``--resume``)."""
    opts = {"model": args.model, "batchnorm": bool(args.batchnorm), "data": args.data,
            "dtype": args.dtype}
    if args.model == "mlp":
        opts["hidden"] = list(args.hidden)
    return opts


def make_problem(args, x, y, x_test, y_test):
    """Targets, loss, and a function making the (same) initial model from the seed."""
    from .. import models
    from ..losses import SoftmaxCrossEntropy
    name = args.model
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


def make_loaders(args, x, y, x_test, y_test):
    """Training batches shuffled by the seed, test batches of 1000 in order."""
    from ..data import DataLoader
    train = DataLoader(x, y, args.batch_size, shuffle=True,
                       rng=backend.default_rng(args.seed + 1))
    test = DataLoader(x_test, y_test, 1000, shuffle=False)
    return train, test
