"""``minidl compare``: several methods from the same weights and batches; table and plots.

Ctrl-C stops the method running (and those after it) but keeps the ones that finished:
the table, summary files, histories and curves are written for them, and the status is
130."""
import os
import sys

from .. import methods as methods_module
from ..methods import DEFAULT_COMPARE, METHODS
from .arguments import UsageError, check_common, check_method, parse_lrs, parse_options
from .data import load_data, make_loaders, make_problem
from .output import format_table, row, write_curves, write_summary
from .running import backend_and_threads, build_method, output_folder, run_fit


def _method_names(args):
    if args.methods is None:
        return [m for m in DEFAULT_COMPARE if methods_module.is_available(m)]
    names = [n.strip() for entry in args.methods for n in entry.split(",") if n.strip()]
    if not names:
        given = " ".join(args.methods)
        raise UsageError(f"--methods {given!r} names no method; give one or more, e.g. "
                         f"--methods sgd adam (or leave it out for {' '.join(DEFAULT_COMPARE)})")
    names = [check_method(n) for n in names]
    if len(set(names)) != len(names):
        raise UsageError(f"--methods lists a method twice: {' '.join(names)}")
    return names


def _settings(args, names):
    """``{method: (lr, optimizer_kw, precond_kw)}`` from --lr, --optim-opt, --precond-opt."""
    lrs = parse_lrs(args.lr, names)
    optim = parse_options(args.optim_opt, "--optim-opt", names)
    precond = parse_options(args.precond_opt, "--precond-opt", names)
    if precond.get(None) and all(METHODS[n].precond is None for n in names):
        raise UsageError(f"--precond-opt {sorted(precond[None])}: none of the methods of this "
                         f"run ({', '.join(names)}) has a preconditioner, so the settings "
                         "would apply to nothing")
    out = {}
    for name in names:
        has_precond = METHODS[name].precond is not None
        pkw = dict(precond.get(None, {}) if has_precond else {}, **precond.get(name, {}))
        okw = dict(optim.get(None, {}), **optim.get(name, {}))
        out[name] = (lrs[name] if lrs[name] is not None else METHODS[name].lr, okw, pkw)
    return out


def cmd_compare(args):
    """Train one model with every method and compare them; returns the exit status."""
    names = _method_names(args)
    settings = _settings(args, names)
    check_common(args)
    with backend_and_threads(args):
        x, y, x_test, y_test = load_data(args)
        y, y_test, loss, make_model = make_problem(args, x, y, x_test, y_test)
        for name, (lr, okw, pkw) in settings.items():  # refuse bad settings before training
            build_method(name, make_model(), loss, lr, args.seed, okw, pkw)
        out = output_folder(args)
        if not args.quiet:
            print(f"minidl compare: {args.model} on {args.data} ({x.shape[0]} training, "
                  f"{x_test.shape[0]} test examples), {args.epochs} epochs, batch "
                  f"{args.batch_size}, backend {args.backend}, {args.dtype}, "
                  f"{args.threads} BLAS thread(s)", flush=True)
        histories, rows, interrupted = {}, [], False
        for name, (lr, okw, pkw) in settings.items():
            if interrupted:
                rows.append(row(name, lr, None, error="not run (interrupted)"))
                continue
            if not args.quiet:
                print(f"\n== {name} (lr {lr:g}) ==", flush=True)
            model = make_model()  # the same initial weights for every method (same seed)
            optimizer, precond = build_method(name, model, loss, lr, args.seed, okw, pkw)
            try:  # divergence is a result (fit stops cleanly); anything else fails this one
                histories[name] = run_fit(
                    model, loss, optimizer, precond, make_loaders(args, x, y, x_test, y_test),
                    args, meta={"label": name, "method": name, "lr": lr, "model": args.model,
                                "data": args.data, "batch_size": args.batch_size,
                                "seed": args.seed, "optimizer_kw": okw, "precond_kw": pkw})
            except KeyboardInterrupt:  # Ctrl-C: keep the methods that finished
                interrupted = True
                rows.append(row(name, lr, None, error="interrupted"))
                continue
            except (ValueError, RuntimeError, MemoryError) as err:
                print(f"minidl compare: method {name} failed: {type(err).__name__}: {err}",
                      file=sys.stderr)
                rows.append(row(name, lr, None, error=f"failed ({type(err).__name__})"))
                continue
            rows.append(row(name, lr, histories[name]))
    print("\n" + format_table(rows))
    write_summary(out, args, rows, histories)
    if histories:
        write_curves(os.path.join(out, "curves.png"), histories,
                     title=f"{args.model} on {args.data}, batch {args.batch_size}")
    drawn = ", curves.png, histories/*.json" if histories else ""  # none when all failed
    print(f"\nresults in {out}/: summary.txt, summary.json{drawn}")
    if interrupted:
        print(f"minidl compare: interrupted; the methods that finished are in {out}/",
              file=sys.stderr)
        return 130
    return 0 if histories else 1
