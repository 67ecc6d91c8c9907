"""``minidl train``: one model, one method; history, curves and checkpoints."""
import os

from ..methods import METHODS
from .arguments import UsageError, check_common, check_lr, check_method, parse_options
from .data import load_data, make_loaders, make_problem, model_options
from .output import format_table, row, write_curves
from .running import (backend_and_threads, build_method, check_checkpoint, check_resume,
                      output_folder, run_fit)


def _check(args):
    """Everything about the arguments that can be refused without reading data."""
    name = check_method(args.method)
    check_common(args)
    if args.lr is not None:
        check_lr(args.lr, "--lr")
    if args.weight_decay is not None and not args.weight_decay >= 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.early_stopping is not None and args.early_stopping < 1:
        raise UsageError(f"--early-stopping must be an integer >= 1, got {args.early_stopping}")
    optim_kw = parse_options(args.optim_opt, "--optim-opt", [name]).get(None, {})
    precond_kw = parse_options(args.precond_opt, "--precond-opt", [name]).get(None, {})
    if args.weight_decay is not None:
        optim_kw["weight_decay"] = args.weight_decay
    # what a resumed run must share with the checkpoint: the model, the data (--limit draws
    # its subset with --seed), the batches (another batch size is another batch order) and
    # the method's settings (the optimizer's saved state, lr included, would otherwise
    # silently win over new ones; a dropped --schedule kept the last scheduled lr, ~0 at
    # the end of a cosine); a cosine is laid out over --epochs, so a resume with more
    # epochs would jump its learning rate back up mid-run
    run = dict(model_options(args), method=name, limit=args.limit, seed=args.seed,
               batch_size=args.batch_size, schedule=args.schedule,
               cosine_epochs=args.epochs if args.schedule == "cosine" else None,
               lr=args.lr if args.lr is not None else METHODS[name].lr,
               optimizer_kw=optim_kw, precond_kw=precond_kw)
    if args.resume is not None:
        check_resume(args.resume, run, args.epochs)
    if args.checkpoint is not None:
        check_checkpoint(args.checkpoint)
    return name, optim_kw, precond_kw, run


def cmd_train(args):
    """Train one model with one method; returns the exit status."""
    from ..optim import Cosine
    name, optim_kw, precond_kw, run = _check(args)
    with backend_and_threads(args):
        x, y, x_test, y_test = load_data(args)
        y, y_test, loss, make_model = make_problem(args, x, y, x_test, y_test)
        model = make_model()
        lr = args.lr if args.lr is not None else METHODS[name].lr
        optimizer, precond = build_method(name, model, loss, lr, args.seed, optim_kw,
                                          precond_kw)
        loaders = make_loaders(args, x, y, x_test, y_test)
        schedule = None
        if args.schedule == "cosine":
            schedule = Cosine(lr, total_steps=args.epochs * len(loaders[0]))
        out = output_folder(args)
        before = _file_id(args.checkpoint)
        if not args.quiet:
            print(f"minidl train: {args.model} ({model.num_params():,} parameters) on "
                  f"{args.data} ({x.shape[0]} training examples) with {name}, lr {lr:g}",
                  flush=True)
        history = run_fit(model, loss, optimizer, precond, loaders, args, schedule=schedule,
                          early_stopping=args.early_stopping, restore_best=args.restore_best,
                          checkpoint=args.checkpoint, resume=args.resume,
                          meta={"label": name, "method": name, "lr": lr, "run": run,
                                "batch_size": args.batch_size, "seed": args.seed,
                                "optimizer_kw": optim_kw, "precond_kw": precond_kw})
    history.to_json(os.path.join(out, "history.json"))
    write_curves(os.path.join(out, "curves.png"), {name: history})
    print(("" if args.quiet else "\n") + format_table([row(name, lr, history)]))
    saved = ""
    if args.checkpoint:  # fit writes none for a run that diverged in its first epoch
        written = _file_id(args.checkpoint) not in (None, before)
        saved = (f"; checkpoint {args.checkpoint}" if written else
                 f"; no checkpoint written to {args.checkpoint} (no epoch of this run "
                 "finished without diverging)")
    print(f"\nresults in {out}/: history.json, curves.png{saved}")
    return 0


def _file_id(path):
    """(inode, modification time) of ``path``, or None: tells whether a run replaced it."""
    try:
        info = os.stat(path)
    except (OSError, TypeError):
        return None
    return info.st_ino, info.st_mtime_ns
