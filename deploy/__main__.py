"""`python -m deploy` is the `sotto` command."""

import sys

from deploy.cli import main

sys.exit(main())
