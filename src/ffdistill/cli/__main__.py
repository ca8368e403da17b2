"""``python -m ffdistill.cli``: the same as the ``ffdistill`` command."""

import sys

from ffdistill.cli import main

sys.exit(main())
