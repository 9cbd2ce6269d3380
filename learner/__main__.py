"""``python -m learner --region R``: the same loop as ``sotto learn``, without typer."""

import sys

from learner.runner import main

sys.exit(main())
