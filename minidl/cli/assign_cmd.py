"""``minidl assign ...``: hands the rest of the command line to ``minidl.assign.main``."""
import importlib
import sys

from .arguments import EXIT_USAGE


def cmd_assign(argv):
    """Run ``minidl.assign.main(argv)``; one line and status 2 when it is not there."""
    try:
        module = importlib.import_module("minidl.assign")
    except ModuleNotFoundError as err:
        if err.name not in ("minidl.assign",):
            raise
        print("minidl assign: error: this minidl has no minidl.assign module (the "
              "assignment tools); install a version that has it", file=sys.stderr)
        return EXIT_USAGE
    return module.main(list(argv))
