"""`python -m cli ...` is the `soraflow` command."""

import sys

from cli.main import main

sys.exit(main())
