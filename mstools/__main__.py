"""``python -m mstools <command>`` (and the ``mstools`` console script): see :mod:`mstools.cli`."""
import sys

from mstools.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
