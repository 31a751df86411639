"""``python -m analysis``: the ``analyze`` command on its own."""

import sys

import typer
from rich.console import Console

from analysis.cli import analyze
from data_schema import StabilityBenchError


def main() -> None:
    try:
        typer.run(analyze)
    except StabilityBenchError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
