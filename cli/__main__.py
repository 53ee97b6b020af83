"""`python -m soraflow.cli ...` is the `soraflow` command."""

import sys

from soraflow.cli.main import main

sys.exit(main())
