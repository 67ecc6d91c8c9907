"""``python -m minidl.assign``: the ``minidl assign`` command (see ``minidl.assign.command``)."""
import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m minidl.assign"))
