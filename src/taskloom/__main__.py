"""`python -m taskloom` (and `torchrun -m taskloom`) runs the CLI."""

import sys

from taskloom.cli import main

sys.exit(main())
