"""``minidl assign ...``: hands the rest of the command line to ``minidl.assign.main``."""
import importlib
import sys

from .arguments import EXIT_USAGE


def cmd_assign(argv):
    """Run ``minidl.assign.main(argv)``; one line and status 2 when it cannot be imported."""
    try:
        module = importlib.import_module("minidl.assign")
    except ModuleNotFoundError as err:
        if err.name in (None, "minidl.assign"):
            why = "this minidl has no minidl.assign module (the assignment tools)"
        else:
            why = (f"the assignment tools need the package {err.name!r}: install them with "
                   "pip install 'minidl[assign]'")
        print(f"minidl assign: error: {why}", file=sys.stderr)
        return EXIT_USAGE
    return module.main(list(argv))
