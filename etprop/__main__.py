"""``python -m etprop``: the same as the ``etprop`` command."""

import sys

from etprop.cli import main

sys.exit(main())
