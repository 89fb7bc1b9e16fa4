"""`python -m stratus_cli` is `stratus`."""

from stratus_cli.main import cli

cli()
