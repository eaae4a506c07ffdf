"""`python -m ithaca CONFIG`."""

import sys

from .cli import main

sys.exit(main())
