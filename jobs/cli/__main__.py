"""`python -m jobs.cli ...`: the same as `latentmill ...`."""

import sys

from jobs.cli import main

sys.exit(main())
