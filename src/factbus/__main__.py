"""``python -m factbus``."""

import sys

from factbus.cli import main

sys.exit(main())
