"""``python -m reports``: the ``report`` command on its own."""

import sys

import typer
from rich.console import Console

from data_schema import StabilityBenchError
from reports.cli import report


def main() -> None:
    try:
        typer.run(report)
    except StabilityBenchError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
