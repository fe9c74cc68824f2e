"""`python -m cxrlearn ...` is the same as the `cxrlearn` command (torchrun needs this form)."""

import sys

from cxrlearn.cli import main

sys.exit(main())
