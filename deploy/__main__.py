"""`python -m deploy` is the `sotto` command."""

from deploy.cli import app

app(prog_name="sotto")
