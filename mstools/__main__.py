"""``python -m mstools <command>`` (and the ``mstools`` console script): see :mod:`mstools.apps.cli`."""
import sys

from mstools.apps.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
