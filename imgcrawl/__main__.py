"""``python -m imgcrawl``: the ``imgcrawl`` command."""

import sys

from imgcrawl.cli import main

sys.exit(main())
