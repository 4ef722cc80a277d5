"""``python -m physfm.cli``: the same entry point as the ``physfm`` console script."""

import sys

from physfm.cli.main import main

sys.exit(main())
