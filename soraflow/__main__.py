"""`python -m soraflow ...` is the `soraflow` command."""

import sys

from soraflow.cli.main import main

sys.exit(main())
