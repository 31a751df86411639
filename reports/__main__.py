"""``python -m reports``: the ``report`` command on its own."""

import typer

from data_schema.errors import exit_on_user_error
from reports.cli import report


def main() -> None:
    exit_on_user_error(lambda: typer.run(report))


if __name__ == "__main__":
    main()
