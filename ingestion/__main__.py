"""``python -m ingestion --region R``: the same loop as ``sotto ingest``, without typer."""

import sys

from ingestion.runner import main

sys.exit(main())
