"""``python -m generate``: the generate/status commands without the umbrella CLI."""

import sys

import typer

from data_schema import StabilityBenchError
from generate.cli import generate, status

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command()(generate)
app.command()(status)

try:
    app()
except StabilityBenchError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
