"""``python -m recon``: see :mod:`recon.cli`."""

import sys

from .cli import main

sys.exit(main())
