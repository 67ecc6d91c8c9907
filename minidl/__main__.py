"""``python -m minidl``: the same command line as the ``minidl`` script (see ``minidl.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
