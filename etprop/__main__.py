"""``python -m etprop``: the same as the ``etprop`` command."""

import sys

from etprop.cli import main

if __name__ == "__main__":
    sys.exit(main())
