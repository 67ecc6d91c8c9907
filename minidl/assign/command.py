"""The command line: ``minidl assign release ...`` and ``minidl assign grade ...``.

::

    minidl assign release assignments/01_mlp_backprop --out build/a1
        # -> build/a1/student/01_mlp_backprop.ipynb       (hand this out)
        #    build/a1/autograder/01_mlp_backprop-autograder_<date>.zip   (Gradescope)
        #    build/a1/autograder/01_mlp_backprop.ipynb    (the solution notebook)
    minidl assign grade build/a1/autograder/*.zip alice.ipynb -o alice.json

``main(argv)`` returns the exit status: 0 done, 1 a release that failed its own checks
(Otter's solution check or the leak check), 2 a refusal before any work (bad paths, not a
master, Otter missing), 130 interrupted (Ctrl-C), each said in one line on stderr.
``python -m minidl.assign`` runs the same command; the ``minidl`` command forwards
``minidl assign ...`` here.
"""
import argparse
import sys

from .errors import AssignError, MissingExtraError, is_seconds
from .grade import DEFAULT_TIMEOUT, grade, summary
from .guard import DEFAULT_CELL_TIMEOUT

__all__ = ["main", "build_parser"]

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    if not is_seconds(value):  # nan would disable the cell limit; inf crashes the timer
        raise argparse.ArgumentTypeError(f"expected a finite positive number of seconds, got "
                                         f"{text!r}")
    return value


def build_parser(prog="minidl assign"):
    parser = _Parser(prog=prog, description="Release and grade minidl's Otter-Grader "
                     "assignments (see assignments/README.md).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="{release,grade}")
    rel = sub.add_parser("release", help="master -> OUT/student and OUT/autograder")
    rel.add_argument("assignment", help="the assignment folder, e.g. assignments/01_mlp_backprop")
    rel.add_argument("--out", required=True, help="output folder (gets student/ and autograder/)")
    rel.add_argument("--force", action="store_true",
                     help="replace OUT/student and OUT/autograder if they exist")
    rel.add_argument("--no-run-tests", action="store_true",
                     help="skip Otter's check that the solution notebook gets full marks")
    rel.add_argument("--cell-timeout", type=_positive, default=DEFAULT_CELL_TIMEOUT,
                     help=f"seconds per notebook cell when grading (default "
                     f"{DEFAULT_CELL_TIMEOUT})")
    gr = sub.add_parser("grade", help="grade one notebook locally (Otter Run, no Docker)")
    gr.add_argument("zip", help="the autograder zip (OUT/autograder/*.zip)")
    gr.add_argument("submission", help="the student's notebook (.ipynb)")
    gr.add_argument("-o", "--output", default="results.json",
                    help="results file, Gradescope format (default results.json)")
    gr.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT,
                    help=f"seconds for the whole notebook (default {DEFAULT_TIMEOUT})")
    gr.add_argument("--cell-timeout", type=_positive, default=None,
                    help="seconds per cell (default: the value the release put in the zip)")
    return parser


def main(argv=None, prog="minidl assign"):
    """Run ``minidl assign`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "release":
            from .release import release
            result = release(args.assignment, args.out, run_tests=not args.no_run_tests,
                             cell_timeout=args.cell_timeout, force=args.force)
            print(f"student notebook: {result.notebook}")
            print(f"autograder zip:   {result.zip}")
            print(f"solutions:        {result.solution}")
            return 0
        results = grade(args.zip, args.submission, args.output, timeout=args.timeout,
                        cell_timeout=args.cell_timeout)
        print(f"{args.submission} -> {args.output}")
        print(summary(results))
        return 0
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MissingExtraError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except AssignError as e:
        msg = str(e)
        failed = msg.startswith("release of") or msg.startswith("Otter Assign failed")
        print(f"{prog} {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_FAILED if failed else EXIT_USAGE
